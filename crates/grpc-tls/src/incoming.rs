//! Where a gRPC server takes its connections: its TCP port and, when
//! `listen_unix` is set, a Unix-domain socket beside it.
//!
//! Co-located services (one host, one pod) dial the socket (`unix:/path`
//! endpoints) and skip the kernel's TCP stack on every message. The socket
//! is plain HTTP/2 — its file mode (0660) is the access control — so the
//! configuration refuses it when `internal_tls.enabled` asks for mutual TLS
//! on every connection.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// One accepted connection, from either listener.
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Connected for Conn {
    // The TCP form, so `Request::remote_addr` keeps working for TCP peers;
    // a Unix peer has no address (None).
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            Conn::Tcp(s) => s.connect_info(),
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
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
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

/// Every connection of `tcp` and (when given) `unix`, as one stream for
/// tonic's `serve_with_incoming*`. TCP connections get TCP_NODELAY: a
/// response must not wait on the peer's delayed ACK.
pub fn incoming(
    tcp: TcpListener,
    unix: Option<UnixListener>,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    let tcp = tokio_stream::wrappers::TcpListenerStream::new(tcp).map(|r| {
        r.map(|s| {
            let _ = s.set_nodelay(true);
            Conn::Tcp(s)
        })
    });
    let unix: Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>> = match unix {
        Some(u) => {
            Box::pin(tokio_stream::wrappers::UnixListenerStream::new(u).map(|r| r.map(Conn::Unix)))
        }
        None => Box::pin(tokio_stream::empty()),
    };
    tcp.merge(unix)
}
