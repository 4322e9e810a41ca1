//! Who may call what: one check in front of every RPC of every service.
//!
//! Three kinds of caller (SECURITY.md has the table):
//! - **anyone**: `grpc.health.v1` (probes);
//! - **a service of this deployment**: the auth path and the message path
//!   (sasl-auth Start/Step/Exchange, credential-store GetSecret, relay-queue
//!   Enqueue) — proven by a client certificate from `internal_tls.ca` when
//!   mutual TLS is on, else by the per-deployment token of
//!   `internal.token_file` in the `x-authrelay-internal-token` header. Any
//!   other caller could pose as a frontend and claim any client address
//!   (escaping the per-address limits) or read a user's password hashes;
//! - **an administrator**: everything else (users, queue, sessions) — the
//!   token of `admin.token_file` as `authorization: Bearer`, or, with no
//!   admin token configured, a connection on a Unix socket, whose file mode
//!   is the access control (`authrelay serve`'s private sockets).
//!
//! A method not named in [`caller_for`] is admin-only, so an RPC added
//! later is closed until someone decides otherwise (and the test that
//! calls every RPC of every proto without credentials says so).

use std::sync::Arc;
use std::task::{Context, Poll};

use authrelay_config::Config;
use tonic::transport::server::TcpConnectInfo;

/// Header carrying the internal token.
pub const INTERNAL_TOKEN_HEADER: &str = "x-authrelay-internal-token";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    Anyone,
    Service,
    Admin,
    ServiceOrAdmin,
}

/// Who may call the RPC at `path` (`/package.Service/Method`).
pub fn caller_for(path: &str) -> Caller {
    match path {
        p if p.starts_with("/grpc.health.v1.Health/") => Caller::Anyone,
        "/authrelay.sasl.v1.SaslAuth/ListMechanisms"
        | "/authrelay.sasl.v1.SaslAuth/Start"
        | "/authrelay.sasl.v1.SaslAuth/Step"
        | "/authrelay.sasl.v1.SaslAuth/Exchange"
        | "/authrelay.sasl.v1.SaslAuth/Abort"
        | "/authrelay.credentials.v1.CredentialStore/GetSecret"
        | "/authrelay.queue.v1.RelayQueue/Enqueue" => Caller::Service,
        // ETRN at a frontend, or `authrelay queue flush`.
        "/authrelay.queue.v1.RelayQueue/Flush" => Caller::ServiceOrAdmin,
        _ => Caller::Admin,
    }
}

/// The tokens and the transport this process checks callers against.
pub struct Policy {
    admin: Option<String>,
    internal: Option<String>,
    mtls: bool,
}

impl Policy {
    pub fn new(admin: Option<String>, internal: Option<String>, mtls: bool) -> Self {
        Policy {
            admin,
            internal,
            mtls,
        }
    }

    pub fn from_config(cfg: &Config) -> Result<Self, anyhow::Error> {
        Ok(Policy::new(
            read_token(cfg.admin.token_file.as_deref(), "admin.token_file")?,
            read_token(cfg.internal.token_file.as_deref(), "internal.token_file")?,
            cfg.internal_tls.enabled,
        ))
    }

    /// Whether services can prove themselves to each other at all: a
    /// separate service refuses to start without it.
    pub fn authenticates_services(&self) -> bool {
        self.mtls || self.internal.is_some()
    }

    /// `Ok` when the caller may call `path`; else why not (for the status).
    pub fn check(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        unix_peer: bool,
    ) -> Result<(), &'static str> {
        let service = || {
            self.mtls
                || self.internal.as_deref().is_some_and(|want| {
                    headers
                        .get(INTERNAL_TOKEN_HEADER)
                        .is_some_and(|got| same(got.as_bytes(), want.as_bytes()))
                })
        };
        let admin = || match &self.admin {
            Some(want) => headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|got| same(got.as_bytes(), want.as_bytes())),
            None => unix_peer,
        };
        match caller_for(path) {
            Caller::Anyone => Ok(()),
            Caller::Service if service() => Ok(()),
            Caller::Service => Err(
                "internal API: callers present internal.token_file's token or a client certificate (internal_tls)",
            ),
            Caller::Admin if admin() => Ok(()),
            Caller::Admin => {
                Err("admin credential missing or wrong: present the token of admin.token_file")
            }
            Caller::ServiceOrAdmin if service() || admin() => Ok(()),
            Caller::ServiceOrAdmin => Err("present the admin or the internal token"),
        }
    }
}

/// Length is not secret (tokens have a fixed length); the bytes are.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A token file, trimmed; at least 16 characters. The error names the key
/// and the file, never the content.
pub fn read_token(
    path: Option<&std::path::Path>,
    key: &str,
) -> Result<Option<String>, anyhow::Error> {
    let Some(path) = path else { return Ok(None) };
    let t = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{key} {}: {e}", path.display()))?;
    let t = t.trim().to_owned();
    if t.len() < 16 {
        anyhow::bail!("{key} {}: token shorter than 16 characters", path.display());
    }
    Ok(Some(t))
}

/// The check as a tower layer in front of a tonic server's routes.
#[derive(Clone)]
pub struct GuardLayer(Arc<Policy>);

impl GuardLayer {
    pub fn new(policy: Policy) -> Self {
        GuardLayer(Arc::new(policy))
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;
    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            policy: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S, B> tower::Service<http::Request<B>> for Guard<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // Our `incoming` gives Unix connections no remote address.
        let unix_peer = req
            .extensions()
            .get::<TcpConnectInfo>()
            .is_some_and(|c| c.remote_addr.is_none());
        match self
            .policy
            .check(req.uri().path(), req.headers(), unix_peer)
        {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(why) => {
                tracing::warn!(rpc = req.uri().path(), "call refused: {why}");
                let resp = tonic::Status::unauthenticated(why).into_http();
                Box::pin(async move { Ok(resp) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    const ADMIN: &str = "admin-token-0123456789";
    const INTERNAL: &str = "internal-token-0123456789";

    #[test]
    fn health_is_open_to_anyone() {
        let p = Policy::new(Some(ADMIN.into()), Some(INTERNAL.into()), false);
        assert!(
            p.check("/grpc.health.v1.Health/Check", &headers(&[]), false)
                .is_ok()
        );
    }

    #[test]
    fn the_auth_path_wants_the_internal_token_not_the_admin_one() {
        let p = Policy::new(Some(ADMIN.into()), Some(INTERNAL.into()), false);
        let start = "/authrelay.sasl.v1.SaslAuth/Start";
        assert!(p.check(start, &headers(&[]), false).is_err());
        assert!(
            p.check(start, &headers(&[]), true).is_err(),
            "a Unix socket is no service proof"
        );
        let bearer = format!("Bearer {ADMIN}");
        assert!(
            p.check(start, &headers(&[("authorization", &bearer)]), false)
                .is_err()
        );
        assert!(
            p.check(
                start,
                &headers(&[(INTERNAL_TOKEN_HEADER, "wrong-token-0123456789")]),
                false
            )
            .is_err()
        );
        assert!(
            p.check(start, &headers(&[(INTERNAL_TOKEN_HEADER, INTERNAL)]), false)
                .is_ok()
        );
    }

    #[test]
    fn mutual_tls_proves_a_service() {
        let p = Policy::new(Some(ADMIN.into()), None, true);
        assert!(
            p.check(
                "/authrelay.credentials.v1.CredentialStore/GetSecret",
                &headers(&[]),
                false
            )
            .is_ok()
        );
        assert!(
            p.check(
                "/authrelay.credentials.v1.CredentialStore/PutUser",
                &headers(&[]),
                false
            )
            .is_err()
        );
    }

    #[test]
    fn admin_calls_want_the_admin_token_or_without_one_a_unix_socket() {
        let put = "/authrelay.credentials.v1.CredentialStore/PutUser";
        let p = Policy::new(Some(ADMIN.into()), Some(INTERNAL.into()), false);
        let bearer = format!("Bearer {ADMIN}");
        assert!(
            p.check(put, &headers(&[("authorization", &bearer)]), false)
                .is_ok()
        );
        assert!(
            p.check(put, &headers(&[(INTERNAL_TOKEN_HEADER, INTERNAL)]), false)
                .is_err()
        );
        assert!(
            p.check(put, &headers(&[]), true).is_err(),
            "a token set is always wanted"
        );
        let open = Policy::new(None, None, false);
        assert!(open.check(put, &headers(&[]), true).is_ok());
        assert!(open.check(put, &headers(&[]), false).is_err());
    }

    #[test]
    fn an_rpc_nobody_listed_is_admin_only() {
        assert_eq!(
            caller_for("/authrelay.queue.v1.RelayQueue/Purge"),
            Caller::Admin
        );
        assert_eq!(
            caller_for("/authrelay.queue.v1.RelayQueue/Flush"),
            Caller::ServiceOrAdmin
        );
    }
}
