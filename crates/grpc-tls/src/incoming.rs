//! Where a gRPC server takes its connections: its TCP port and, when
//! `listen_unix` is set, a Unix-domain socket beside it.
//!
//! Co-located services (one host, one pod) dial the socket (`unix:/path`
//! endpoints) and skip the kernel's TCP stack on every message. The socket
//! is plain HTTP/2 — its file mode (0660) is the access control — so the
//! configuration refuses it when `internal_tls.enabled` asks for mutual TLS
//! on every connection. With it on, TCP connections are handed over only
//! after the handshake, made here with the certificate files of the moment
//! (see the crate's documentation on renewals).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::{HANDSHAKE_TIMEOUT, InternalTls};

/// One accepted connection, from either listener.
pub enum Conn {
    Tcp(TcpStream),
    /// A TCP connection after the mutual-TLS handshake (`internal_tls`).
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Unix(UnixStream),
}

/// Every I/O method of [`Conn`], passed to the stream inside.
macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Conn::Tcp($s) => $e,
            Conn::Tls($s) => $e,
            Conn::Unix($s) => $e,
        }
    };
}

impl Connected for Conn {
    // The TCP form, so `Request::remote_addr` keeps working for TCP peers;
    // a Unix peer has no address (None).
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            Conn::Tcp(s) => s.connect_info(),
            Conn::Tls(s) => s.get_ref().0.connect_info(),
            Conn::Unix(_) => TcpConnectInfo {
                local_addr: None,
                remote_addr: None,
            },
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        each!(self, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

/// Why the Unix socket could not be bound; names the key.
#[derive(Debug, thiserror::Error)]
#[error("configuration key `{key}` = {path:?}: {why}")]
pub struct UnixBindError {
    pub key: &'static str,
    pub path: std::path::PathBuf,
    pub why: String,
}

/// Bind `path` (the value of configuration key `key`), replacing a socket
/// left by an earlier run but never any other kind of file, with mode 0660.
pub fn bind_unix(key: &'static str, path: &Path) -> Result<UnixListener, UnixBindError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let err = |why: String| UnixBindError {
        key,
        path: path.to_owned(),
        why,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| err(format!("cannot replace: {e}")))?
        }
        Ok(_) => return Err(err("exists and is not a socket".into())),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| err(format!("cannot set its mode: {e}")))?;
    Ok(listener)
}

/// `bind_unix` when `path` is set, announced as `SERVICE listening on
/// unix:PATH (grpc unix)`.
pub fn listen_unix(
    service: &str,
    key: &'static str,
    path: Option<&Path>,
) -> Result<Option<UnixListener>, UnixBindError> {
    let Some(path) = path else { return Ok(None) };
    let listener = bind_unix(key, path)?;
    authrelay_telemetry::announce(service, "grpc unix", format!("unix:{}", path.display()));
    Ok(Some(listener))
}

/// Every connection of `tcp` and `unix` (each when given), as one stream for
/// tonic's `serve_with_incoming*`. TCP connections get TCP_NODELAY: a
/// response must not wait on the peer's delayed ACK. With `tls` (mutual TLS
/// on), TCP connections come out after their handshake, made with the
/// settings current when they arrived, each in a task of its own so a slow
/// or silent client holds up no one; one that fails or takes longer than
/// [`HANDSHAKE_TIMEOUT`] is dropped and logged.
pub fn incoming(
    tcp: impl Into<Option<TcpListener>>,
    unix: Option<UnixListener>,
    tls: Option<Arc<InternalTls>>,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    let tcp: Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>> = match (tcp.into(), tls) {
        (None, _) => Box::pin(tokio_stream::empty()),
        (Some(tcp), None) => Box::pin(tokio_stream::wrappers::TcpListenerStream::new(tcp).map(
            |r| {
                r.map(|s| {
                    let _ = s.set_nodelay(true);
                    Conn::Tcp(s)
                })
            },
        )),
        (Some(tcp), Some(tls)) => Box::pin(tls_accepted(tcp, tls)),
    };
    let unix: Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>> = match unix {
        Some(u) => {
            Box::pin(tokio_stream::wrappers::UnixListenerStream::new(u).map(|r| r.map(Conn::Unix)))
        }
        None => Box::pin(tokio_stream::empty()),
    };
    tcp.merge(unix)
}

/// Accept on `tcp` and hand over each connection once its handshake is
/// done. Ends (and closes the listener) when the server drops the stream.
fn tls_accepted(
    tcp: TcpListener,
    tls: Arc<InternalTls>,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Conn>>(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = tx.closed() => return,
                accepted = tcp.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(Conn::Tls(Box::new(s)))).await;
                    }
                    // Closed before a word: our clients' liveness probes
                    // (a TCP connect every second) — not worth a line.
                    Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        tracing::debug!(%peer, "connection closed before the TLS handshake")
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "internal TLS handshake refused")
                    }
                    Err(_) => tracing::info!(%peer, "internal TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
