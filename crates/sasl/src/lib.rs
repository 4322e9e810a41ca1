//! SASL mechanisms for authrelay, as sans-IO state machines.
//!
//! The server side ([`ServerExchange`]) is fed the client's decoded responses and answers with
//! a [`Step`]: a challenge to send, a request for the user's stored secret, or the outcome. It
//! never touches a socket or a database, and its state serialises (serde) so that `sasl-auth`
//! can keep an exchange in Redis between SMTP round trips. That serialised state never holds a
//! password or anything derived from one: secrets are passed into [`ServerExchange::resume`]
//! and dropped.
//!
//! The client side ([`ClientExchange`]) is what the relay uses towards a next hop, and what the
//! load tool uses towards us.
//!
//! Base64 is the SMTP layer's business (RFC 4954 §4): every challenge and response here is raw
//! bytes.
//!
//! # Which module may use which
//!
//! Dependencies point one way, down this list (unit tests aside); nothing imports a module
//! above it:
//!
//! 1. [`mechanism`] — what a mechanism is and the facts about it (names, strength, the
//!    [`SecretFamily`] that verifies it, LOGIN's fixed prompts), and `binding` — the channel
//!    binding data TLS gives both sides. They import nothing of this crate.
//! 2. `md5ctx`, `digest`, `scram`, [`oauth`] — the primitives and wire formats of each family
//!    (HMAC-MD5 contexts, DIGEST-MD5 directives, SCRAM attributes and keys, the RFC 7628 GS2
//!    messages); `digest` uses `md5ctx`, `scram` uses `mechanism`, `oauth` uses `scram`.
//! 3. [`secret`] — what the credential store keeps and how it is derived from a password.
//! 4. [`server`] and [`client`] — the two sides of an exchange, built on all of the above and
//!    never on each other.

pub mod client;
pub mod mechanism;
pub mod oauth;
pub mod secret;
pub mod server;

mod binding;
mod digest;
mod md5ctx;
mod scram;

pub use binding::{ChannelBinding, ChannelBindingType};
pub use client::{ClientCredentials, ClientError, ClientExchange, ClientStep, set_scram_cache};
pub use mechanism::{Mechanism, SecretFamily, UnknownMechanism};
pub use secret::{
    SecretParams, StoredSecret, derive_scram_secret, derive_secret, dummy_secret, set_dummy_params,
    verify_password,
};
pub use server::{Failure, Outcome, SecretRequest, ServerConfig, ServerExchange, Step};

/// The attribute parsers inside the mechanisms, reachable for the fuzz targets (`fuzz/`) and
/// the property tests. Not an API: the mechanisms are.
#[doc(hidden)]
pub mod fuzzing {
    /// DIGEST-MD5 `#rule` directive list (RFC 2831 §7.1).
    pub fn digest_directives(input: &str) -> Result<Vec<(String, String)>, &'static str> {
        crate::digest::parse_directives(input)
    }

    /// An RFC 2616 quoted-string, as DIGEST-MD5 writes values.
    pub fn digest_quote(value: &str) -> String {
        crate::digest::quote(value)
    }

    /// RFC 5802 `saslname` encoding.
    pub fn scram_escape_saslname(name: &str) -> String {
        crate::scram::escape_saslname(name)
    }

    /// RFC 5802 `saslname` decoding (`=2C`, `=3D`; anything else after `=` fails).
    pub fn scram_unescape_saslname(s: &str) -> Result<String, &'static str> {
        crate::scram::unescape_saslname(s)
    }
}
