//! SMTP replies with enhanced status codes (RFC 3463, RFC 2034), rendered
//! once here so every reply in the server carries one.

use std::borrow::Cow;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code ("5.7.1"); empty only for 220/221 greetings and 334.
    pub status: &'static str,
    pub lines: Vec<Cow<'static, str>>,
}

impl Reply {
    pub fn new(code: u16, status: &'static str, text: impl Into<Cow<'static, str>>) -> Self {
        Reply {
            code,
            status,
            lines: vec![text.into()],
        }
    }

    pub fn multi(code: u16, status: &'static str, lines: Vec<Cow<'static, str>>) -> Self {
        Reply {
            code,
            status,
            lines,
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Wire form: `CODE-text` for all but the last line, `CODE text` last.
    /// The enhanced code is prefixed on every line (RFC 2034 §4).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let n = self.lines.len().max(1);
        for i in 0..n {
            let text = self.lines.get(i).map(|c| c.as_ref()).unwrap_or("");
            let sep = if i + 1 == n { ' ' } else { '-' };
            out.extend_from_slice(self.code.to_string().as_bytes());
            out.push(sep as u8);
            if !self.status.is_empty() {
                out.extend_from_slice(self.status.as_bytes());
                if !text.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v);
        v
    }

    /// A `334` SASL challenge: base64 text, no enhanced code (RFC 4954 §4).
    pub fn challenge(b64: String) -> Self {
        Reply {
            code: 334,
            status: "",
            lines: vec![b64.into()],
        }
    }
}

/// The replies the server uses, named for what they say.
impl Reply {
    pub fn ok() -> Reply {
        Reply::new(250, "2.0.0", "OK")
    }
    pub fn syntax(text: &'static str) -> Reply {
        Reply::new(501, "5.5.4", text)
    }
    pub fn unrecognized() -> Reply {
        Reply::new(500, "5.5.1", "Command unrecognized")
    }
    pub fn line_too_long() -> Reply {
        Reply::new(500, "5.5.2", "Line too long")
    }
    pub fn bad_sequence(text: &'static str) -> Reply {
        Reply::new(503, "5.5.1", text)
    }
    pub fn auth_required() -> Reply {
        Reply::new(530, "5.7.0", "Authentication required")
    }
    pub fn relaying_denied() -> Reply {
        Reply::new(550, "5.7.1", "Relaying denied")
    }
    pub fn too_many_errors() -> Reply {
        Reply::new(421, "4.7.0", "Too many errors, closing connection")
    }
    pub fn timeout(host: &str) -> Reply {
        Reply::new(
            421,
            "4.4.2",
            format!("{host} Timeout waiting for command, closing connection"),
        )
    }
    pub fn shutting_down(host: &str) -> Reply {
        Reply::new(
            421,
            "4.3.2",
            format!("{host} Service shutting down, closing connection"),
        )
    }
    pub fn auth_temporary() -> Reply {
        Reply::new(454, "4.7.0", "Temporary authentication failure")
    }
    pub fn auth_invalid() -> Reply {
        Reply::new(535, "5.7.8", "Authentication credentials invalid")
    }
    /// RFC 4954's 535 5.7.8, with the reason: a protocol failure of
    /// SCRAM-PLUS, which says nothing about the user or the password.
    pub fn auth_channel_binding() -> Reply {
        Reply::new(
            535,
            "5.7.8",
            "Authentication failed: channel binding mismatch",
        )
    }
    pub fn auth_cancelled() -> Reply {
        Reply::new(501, "5.0.0", "Authentication cancelled")
    }
    pub fn auth_malformed() -> Reply {
        Reply::new(501, "5.5.2", "Cannot decode response")
    }
    pub fn auth_unsupported() -> Reply {
        Reply::new(504, "5.5.4", "Unrecognized authentication type")
    }
    pub fn auth_encryption_required() -> Reply {
        Reply::new(
            538,
            "5.7.11",
            "Encryption required for requested authentication mechanism",
        )
    }
    pub fn auth_ok() -> Reply {
        Reply::new(235, "2.7.0", "Authentication successful")
    }
    pub fn queue_unavailable() -> Reply {
        Reply::new(
            451,
            "4.3.0",
            "Temporary failure queueing message, try again later",
        )
    }
    pub fn too_big() -> Reply {
        Reply::new(
            552,
            "5.3.4",
            "Message size exceeds fixed maximum message size",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_has_enhanced_code() {
        assert_eq!(
            Reply::relaying_denied().to_bytes(),
            b"550 5.7.1 Relaying denied\r\n"
        );
    }

    #[test]
    fn multi_line_uses_dash_until_last() {
        let rep = Reply::multi(250, "", vec!["a".into(), "b".into(), "c".into()]);
        assert_eq!(rep.to_bytes(), b"250-a\r\n250-b\r\n250 c\r\n");
    }

    #[test]
    fn challenge_has_no_enhanced_code() {
        assert_eq!(
            Reply::challenge("VXNlcm5hbWU6".into()).to_bytes(),
            b"334 VXNlcm5hbWU6\r\n"
        );
        assert_eq!(Reply::challenge(String::new()).to_bytes(), b"334 \r\n");
    }
}
