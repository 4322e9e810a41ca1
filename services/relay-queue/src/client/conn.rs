//! The connection to a next hop: commands out, replies in (parsed by
//! [`ReplyReader`]), each read and write under the hop's timeout, and the
//! STARTTLS upgrade (RFC 3207).

use std::sync::Arc;
use std::time::Duration;

use authrelay_sasl::{ChannelBinding, ChannelBindingType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::reply::{Extensions, Reply, ReplyReader};
use crate::error::{DeliveryError, LinkError, TlsError};

pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub(super) struct Conn {
    io: Box<dyn Io>,
    replies: ReplyReader,
    timeout: Duration,
    pub(super) tls: bool,
    pub(super) channel_binding: Option<ChannelBinding>,
}

impl Conn {
    pub(super) fn new(io: Box<dyn Io>, timeout: Duration) -> Conn {
        Conn {
            io,
            replies: ReplyReader::default(),
            timeout,
            tls: false,
            channel_binding: None,
        }
    }

    pub(super) async fn read_reply(&mut self) -> Result<Reply, LinkError> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(reply) = self.replies.next_reply()? {
                return Ok(reply);
            }
            let n = tokio::time::timeout(self.timeout, self.io.read(&mut buf))
                .await
                .map_err(|_| LinkError::ReadTimeout)?
                .map_err(LinkError::Read)?;
            if n == 0 {
                return Err(LinkError::Closed);
            }
            self.replies.feed(&buf[..n]);
        }
    }

    pub(super) async fn send(&mut self, line: &str) -> Result<Reply, LinkError> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply().await
    }

    /// EHLO's reply and what it offers (RFC 5321 §4.1.1.1).
    pub(super) async fn ehlo(&mut self, helo: &str) -> Result<(Reply, Extensions), LinkError> {
        let reply = self.send(&format!("EHLO {helo}")).await?;
        let ext = if reply.is_positive() {
            Extensions::from_ehlo(&reply, self.replies.last_raw())?
        } else {
            Extensions::default()
        };
        Ok((reply, ext))
    }

    pub(super) async fn write(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        let io = &mut self.io;
        let write = async {
            io.write_all(bytes).await?;
            io.flush().await
        };
        tokio::time::timeout(self.timeout, write)
            .await
            .map_err(|_| LinkError::WriteTimeout)?
            .map_err(LinkError::Write)
    }

    /// RFC 3207: after `220` to STARTTLS, the TLS handshake; nothing the hop
    /// sent before it may be kept.
    pub(super) async fn starttls(
        self,
        host: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Conn, DeliveryError> {
        if self.replies.has_pending() {
            return Err(LinkError::DataBeforeTls.into());
        }
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|_| TlsError::ServerName(host.to_owned()))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let stream = tokio::time::timeout(self.timeout, connector.connect(name, self.io))
            .await
            .map_err(|_| TlsError::Timeout)?
            .map_err(TlsError::Handshake)?;
        let channel_binding =
            crate::tls::tls_exporter(stream.get_ref().1).map(|data| ChannelBinding {
                kind: ChannelBindingType::TlsExporter,
                data,
            });
        Ok(Conn {
            io: Box::new(stream),
            replies: ReplyReader::default(),
            timeout: self.timeout,
            tls: true,
            channel_binding,
        })
    }
}
