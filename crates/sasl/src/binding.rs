//! Channel binding (RFC 5056): what the TLS layer under an exchange gives
//! both sides to bind a SCRAM `-PLUS` exchange to. Shared by the server and
//! the client side, so neither depends on the other.

use std::fmt;

/// A channel binding type (RFC 5056 §7) this TLS session can provide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelBindingType {
    /// `tls-exporter` (RFC 9266): the TLS 1.3 exporter value; rustls has no `tls-unique`.
    TlsExporter,
    /// `tls-server-end-point` (RFC 5929 §4): hash of the server certificate.
    TlsServerEndPoint,
}

impl ChannelBindingType {
    pub const ALL: [ChannelBindingType; 2] = [
        ChannelBindingType::TlsExporter,
        ChannelBindingType::TlsServerEndPoint,
    ];

    /// The registered `cb-name`, as it appears in SCRAM's `p=`.
    pub fn name(self) -> &'static str {
        match self {
            ChannelBindingType::TlsExporter => "tls-exporter",
            ChannelBindingType::TlsServerEndPoint => "tls-server-end-point",
        }
    }

    /// Looks up a `cb-name`; these are compared exactly (RFC 5056 §7).
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }
}

impl fmt::Display for ChannelBindingType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Channel binding data for one type, taken from the TLS session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelBinding {
    pub kind: ChannelBindingType,
    pub data: Vec<u8>,
}
