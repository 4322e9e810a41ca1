//! DATA and BDAT: the message streamed to relay-queue as it arrives, and
//! acknowledged only once relay-queue has it on disk.

use authrelay_proto::queue::v1 as qpb;
use authrelay_smtp::Delivery;
use smtp_proto::request::receiver::DataReceiver;
use tokio::io::AsyncReadExt;

use super::{Connection, Flow, new_id};
use crate::received;
use crate::upload::{QueueFailure, Upload};

/// Body bytes forwarded to relay-queue per gRPC message.
const CHUNK: usize = 64 * 1024;

impl Connection {
    fn envelope(&self, queue_id: &str) -> qpb::Envelope {
        let tx = self
            .session
            .transaction()
            .expect("the session asks for uploads in a transaction");
        let auth = self.session.authenticated();
        qpb::Envelope {
            mail_from: tx.from.address.clone(),
            recipients: tx
                .rcpts
                .iter()
                .map(|r| qpb::Recipient {
                    address: r.address.clone(),
                    notify: r.notify.iter().map(|n| (*n).to_owned()).collect(),
                    orcpt: r.orcpt.clone().unwrap_or_default(),
                })
                .collect(),
            auth_id: auth.map(|a| a.authzid.clone()).unwrap_or_default(),
            auth_param: self.session.auth_param(),
            env_id: tx.from.env_id.clone().unwrap_or_default(),
            ret: tx.from.ret.unwrap_or_default().to_owned(),
            body: tx.from.body.unwrap_or_default().to_owned(),
            smtputf8: tx.from.smtputf8,
            client_address: self.peer.to_string(),
            session_id: self.id.clone(),
            // Delivery continues the submission's trace (or the one XTRACE named).
            traceparent: self
                .session
                .xtrace()
                .map(str::to_owned)
                .unwrap_or_else(authrelay_telemetry::traceparent),
            queue_id: queue_id.to_owned(),
        }
    }

    /// Open the stream to relay-queue for the current transaction: the
    /// envelope, then our `Received:` header as the first body bytes.
    async fn begin_upload(&mut self) -> Upload {
        let queue_id = new_id(8);
        let envelope = self.envelope(&queue_id);
        let rcpts = &self
            .session
            .transaction()
            .expect("the session asks for uploads in a transaction")
            .rcpts;
        let helo = self.session.helo();
        let auth = self.session.authenticated();
        let header = received::header(&received::ReceivedInfo {
            helo: helo.map_or("", |h| h.host.as_str()),
            client_ip: self.peer.ip(),
            hostname: &self.shared.cfg.hostname,
            esmtp: helo.is_some_and(|h| h.esmtp),
            tls: self
                .tls
                .as_ref()
                .map(|t| (t.version.as_str(), t.cipher.as_str())),
            auth: auth
                .filter(|_| self.shared.cfg.frontend.received_shows_auth)
                .map(|a| (a.authzid.as_str(), a.mechanism.as_str(), a.bits)),
            authenticated: auth.is_some(),
            id: &queue_id,
            single_recipient: (rcpts.len() == 1).then(|| rcpts[0].address.as_str()),
            date: time::OffsetDateTime::now_utc(),
        });
        Upload::begin(&self.shared, queue_id, envelope, header).await
    }

    /// Log the end of a message and tell the session.
    async fn finish_upload(&mut self, upload: Upload) {
        let size = upload.size;
        let queue_id = upload.queue_id.clone();
        let delivery = if upload.too_big {
            upload.abort();
            tracing::info!(queue_id = %queue_id, size, "message refused: over SIZE");
            Delivery::TooBig
        } else {
            match upload.finish().await {
                Ok(id) => {
                    if let Some(tx) = self.session.transaction() {
                        tracing::info!(
                            "{id}: from=<{}>, size={size}, nrcpts={}, relay=[{}], authid={}",
                            tx.from.address,
                            tx.rcpts.len(),
                            self.peer.ip(),
                            self.session
                                .authenticated()
                                .map_or("-", |a| a.authzid.as_str())
                        );
                    }
                    Delivery::Queued { id }
                }
                Err(QueueFailure { why, disk_full }) => {
                    tracing::warn!(queue_id = %queue_id, reason = %why, "message not queued");
                    if disk_full {
                        Delivery::StorageFull
                    } else {
                        Delivery::Unavailable
                    }
                }
            }
        };
        self.session.message_finished(delivery);
    }

    pub(super) async fn data(&mut self) -> Flow {
        let mut upload = self.begin_upload().await;
        if self.flush().await.is_err() {
            upload.abort();
            return Flow::Close;
        }
        // Stream to relay-queue while the client sends: the body is never
        // held whole in memory, and SIZE is enforced as it arrives. Only
        // CRLF.CRLF ends the data (smtp-proto's receiver): a bare-LF or
        // bare-CR "end" is content, which stops SMTP smuggling.
        let mut receiver = DataReceiver::new();
        let mut body = Vec::with_capacity(CHUNK + 4096);
        let mut pending = self.lines.take_rest();
        let mut read_buf = vec![0u8; 16 * 1024];
        loop {
            let mut iter = pending.iter();
            let done = receiver.ingest(&mut iter, &mut body);
            let rest = iter.as_slice().to_vec();
            if body.len() >= CHUNK || done {
                // Keep the last two bytes back until the end: the receiver
                // may still take back a trailing CR when it sees CRLF.CRLF.
                let keep = if done { 0 } else { 2.min(body.len()) };
                let out: Vec<u8> = body.drain(..body.len() - keep).collect();
                upload.push(out).await;
            }
            if done {
                self.lines.push(&rest);
                break;
            }
            let timeout = self.shared.cfg.frontend.timeouts.data_block;
            self.idle();
            let read = tokio::time::timeout(timeout, self.stream.read(&mut read_buf)).await;
            self.working();
            let n = match read {
                Ok(Ok(n)) if n > 0 => n,
                _ => {
                    // Client gone or silent: no commit, so the queue discards it.
                    tracing::info!(queue_id = %upload.queue_id, "connection lost during DATA");
                    upload.abort();
                    return Flow::Close;
                }
            };
            pending = read_buf[..n].to_vec();
        }
        self.finish_upload(upload).await;
        Flow::Continue
    }

    /// RFC 3030: a BDAT chunk the session accepted goes into the message's
    /// upload (opened with its first chunk).
    pub(super) async fn chunk(&mut self, size: usize, last: bool, begin: bool) -> Flow {
        if begin {
            self.bdat = Some(self.begin_upload().await);
        }
        if !self.read_chunk(size).await {
            return Flow::Close;
        }
        if last {
            match self.bdat.take() {
                Some(upload) => self.finish_upload(upload).await,
                None => self.session.message_finished(Delivery::Unavailable),
            }
        } else {
            let too_big = self.bdat.as_ref().is_some_and(|u| u.too_big);
            if too_big {
                // The rest of its chunks are read and dropped.
                self.discard_upload();
            }
            self.session.chunk_received(size, too_big);
        }
        Flow::Continue
    }

    /// Read exactly `size` octets, into the BDAT upload if one is open.
    /// False (and the upload aborted) when the client went away.
    pub(super) async fn read_chunk(&mut self, size: usize) -> bool {
        let mut left = size;
        let mut read_buf = vec![0u8; 16 * 1024];
        while left > 0 {
            let chunk = self.lines.take(left.min(CHUNK));
            if chunk.is_empty() {
                let timeout = self.shared.cfg.frontend.timeouts.data_block;
                self.idle();
                let read = tokio::time::timeout(timeout, self.stream.read(&mut read_buf)).await;
                self.working();
                match read {
                    Ok(Ok(n)) if n > 0 => self.lines.push(&read_buf[..n]),
                    _ => {
                        self.discard_upload();
                        return false;
                    }
                }
                continue;
            }
            left -= chunk.len();
            if let Some(u) = self.bdat.as_mut() {
                u.push(chunk).await;
            }
        }
        true
    }
}
