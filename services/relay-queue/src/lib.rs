//! relay-queue: takes messages over a gRPC stream, makes them durable before
//! answering, and delivers them to the next hop, retrying with back-off.

pub mod client;
pub mod dsn;
pub mod spool;
pub mod tls;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use authrelay_config::{AuthInfoMap, Config, parse_host_port};
use authrelay_proto::queue::v1 as pb;
use authrelay_proto::queue::v1::relay_queue_server::{RelayQueue, RelayQueueServer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::client::{Hop, RcptOutcome};
use crate::dsn::FailedRecipient;
use crate::spool::{DeliveryState, Envelope, Recipient, Spool, SpoolError};
use crate::tls::OutboundTlsConfigs;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl From<SpoolError> for Status {
    fn from(e: SpoolError) -> Status {
        match e {
            SpoolError::DiskFull => Status::resource_exhausted("spool disk full"),
            SpoolError::NotFound => Status::not_found("no such message"),
            other => Status::unavailable(other.to_string()),
        }
    }
}

/// The queue: spool on disk, schedule in memory (rebuilt from disk on start).
pub struct Queue {
    cfg: Config,
    spool: Spool,
    /// id → next attempt (epoch seconds).
    schedule: Mutex<HashMap<String, i64>>,
    inflight: Mutex<HashSet<String>>,
    wake: Notify,
    slots: Arc<Semaphore>,
    authinfo: AuthInfoMap,
    tls: OutboundTlsConfigs,
    /// Next hops that did not answer: (host, port) → (until, why). Messages
    /// for them wait without connecting (`confTO_HOSTSTATUS`).
    host_status: Mutex<HashMap<(String, u16), (i64, String)>>,
}

impl Queue {
    pub fn open(cfg: Config) -> Result<Arc<Self>, anyhow::Error> {
        let authinfo = cfg.authinfo().map_err(|e| e.to_config_error())?;
        let tls = OutboundTlsConfigs::new(cfg.relay_queue.tls_ca_file.as_deref())?;
        if !authinfo.is_empty() {
            tracing::info!(entries = authinfo.len(), "AuthInfo map loaded");
        }
        let spool = Spool::open(&cfg.spool_dir())?;
        let mut schedule = HashMap::new();
        for id in spool.ids()? {
            let st = spool.state(&id);
            if !st.held {
                schedule.insert(id, st.next_attempt);
            }
        }
        if !schedule.is_empty() {
            tracing::info!(
                messages = schedule.len(),
                "recovered queued messages from the spool"
            );
        }
        let slots = Arc::new(Semaphore::new(cfg.relay_queue.max_deliveries));
        Ok(Arc::new(Queue {
            cfg,
            spool,
            schedule: Mutex::new(schedule),
            inflight: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            slots,
            authinfo,
            tls,
            host_status: Mutex::new(HashMap::new()),
        }))
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn schedule_now(&self, id: &str) {
        Self::lock(&self.schedule).insert(id.to_owned(), 0);
        self.wake.notify_one();
    }

    /// The delivery loop: start every due message, then sleep until woken
    /// (a new message, a flush) or a second has passed.
    pub async fn run(self: Arc<Self>) {
        loop {
            let due: Vec<String> = {
                let t = now();
                let inflight = Self::lock(&self.inflight);
                Self::lock(&self.schedule)
                    .iter()
                    .filter(|(id, at)| **at <= t && !inflight.contains(*id))
                    .map(|(id, _)| id.clone())
                    .collect()
            };
            for id in due {
                let Ok(permit) = self.slots.clone().acquire_owned().await else {
                    return;
                };
                Self::lock(&self.inflight).insert(id.clone());
                let q = self.clone();
                tokio::spawn(async move {
                    q.attempt(&id).await;
                    Self::lock(&q.inflight).remove(&id);
                    drop(permit);
                });
            }
            tokio::select! {
                _ = self.wake.notified() => {},
                _ = tokio::time::sleep(Duration::from_secs(1)) => {},
            }
        }
    }

    /// Where mail for `domain` goes: a route (mailertable), else the smarthost.
    fn next_hop(&self, domain: &str) -> Option<(String, u16)> {
        let d = domain.trim_end_matches('.').to_ascii_lowercase();
        let rq = &self.cfg.relay_queue;
        rq.routes
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&d))
            .map(|(_, v)| v.as_str())
            .or(Some(rq.smarthost.as_str()).filter(|s| !s.is_empty()))
            .and_then(|hop| parse_host_port(hop).ok())
    }

    async fn attempt(&self, id: &str) {
        let (env, body) = match self.spool.read(id) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(queue_id = id, error = %e, "cannot read queued message");
                Self::lock(&self.schedule).remove(id);
                return;
            }
        };
        let mut state = self.spool.state(id);
        if state.held {
            Self::lock(&self.schedule).remove(id);
            return;
        }
        let pending: Vec<&Recipient> = env
            .recipients
            .iter()
            .filter(|r| !state.delivered.contains(&r.address))
            .collect();
        // One connection per next hop carrying all its recipients.
        let mut by_hop: BTreeMap<(String, u16), Vec<&Recipient>> = BTreeMap::new();
        let mut errors = Vec::new();
        for r in pending {
            let domain = r.address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            match self.next_hop(domain) {
                Some(hop) => by_hop.entry(hop).or_default().push(r),
                None => errors.push(format!(
                    "to=<{}>: no route (no smarthost or route for {domain})",
                    r.address
                )),
            }
        }
        let mut failed: Vec<FailedRecipient> = Vec::new();
        let fail = |r: &Recipient, text: &str, host: &str| FailedRecipient {
            address: r.address.clone(),
            orcpt: r.orcpt.clone(),
            diagnostic: text.to_owned(),
            remote_mta: Some(host.to_owned()),
            status: dsn::status_of(text),
        };
        for ((host, port), rcpts) in by_hop {
            let down = self.host_down(&host, port);
            let result = match down {
                Some(why) => Err(client::ClientError::Temporary(format!(
                    "host status: {host}:{port} did not answer recently ({why})"
                ))),
                None => {
                    let hop = Hop {
                        host: &host,
                        port,
                        helo: self.cfg.helo_name(),
                        timeout: self.cfg.relay_queue.connect_timeout,
                        tls: self.cfg.outbound_tls(&host),
                        authinfo: self.authinfo.lookup(&host),
                    };
                    client::deliver(&hop, &self.tls, &env, &rcpts, &body).await
                }
            };
            match &result {
                Err(client::ClientError::Unreachable(why)) => self.mark_down(&host, port, why),
                Ok(_) => {
                    Self::lock(&self.host_status).remove(&(host.clone(), port));
                }
                Err(_) => {}
            }
            match result {
                Ok(outcomes) => {
                    for (r, o) in rcpts.iter().zip(outcomes) {
                        match o {
                            RcptOutcome::Delivered(text) => {
                                tracing::info!(
                                    "{id}: to=<{}>, relay={host}:{port}, stat=Sent ({text})",
                                    r.address
                                );
                                state.delivered.push(r.address.clone());
                            }
                            RcptOutcome::Deferred(text) => {
                                tracing::info!(
                                    "{id}: to=<{}>, relay={host}:{port}, stat=Deferred ({text})",
                                    r.address
                                );
                                errors.push(text);
                            }
                            RcptOutcome::Failed(text) => {
                                tracing::info!(
                                    "{id}: to=<{}>, relay={host}:{port}, stat=Failed ({text})",
                                    r.address
                                );
                                failed.push(fail(r, &text, &host));
                            }
                        }
                    }
                }
                Err(client::ClientError::Permanent(text)) => {
                    for r in &rcpts {
                        tracing::info!(
                            "{id}: to=<{}>, relay={host}:{port}, stat=Failed ({text})",
                            r.address
                        );
                        failed.push(fail(r, &text, &host));
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    for r in &rcpts {
                        tracing::info!(
                            "{id}: to=<{}>, relay={host}:{port}, stat=Deferred ({text})",
                            r.address
                        );
                    }
                    errors.push(text);
                }
            }
        }
        let expired =
            now() - env.queued_at > self.cfg.relay_queue.max_queue_lifetime.as_secs() as i64;
        if expired {
            // RFC 3463 4.4.7: delivery time expired; the last error says why.
            let last = if errors.is_empty() {
                state.last_error.clone()
            } else {
                errors.join("; ")
            };
            for r in &env.recipients {
                let settled = state.delivered.contains(&r.address)
                    || failed.iter().any(|f| f.address == r.address);
                if !settled {
                    tracing::info!("{id}: to=<{}>, stat=Expired ({last})", r.address);
                    failed.push(FailedRecipient {
                        address: r.address.clone(),
                        orcpt: r.orcpt.clone(),
                        diagnostic: format!("queue lifetime exceeded; last error: {last}"),
                        remote_mta: None,
                        status: "4.4.7".into(),
                    });
                }
            }
        }
        if !failed.is_empty() {
            // The bounce is on disk before the failures are recorded: a crash in
            // between retries the recipients (and may bounce twice) but never
            // loses the report.
            if let Err(e) = self.bounce(id, &env, &body, &failed, state.attempts) {
                tracing::error!(queue_id = id, error = %e, "cannot queue DSN; will retry");
                Self::lock(&self.schedule).insert(id.to_owned(), now() + 60);
                return;
            }
            for f in &failed {
                state.delivered.push(f.address.clone());
            }
        }
        let all_done = env
            .recipients
            .iter()
            .all(|r| state.delivered.contains(&r.address));
        if all_done {
            if let Err(e) = self.spool.remove(id) {
                tracing::error!(queue_id = id, error = %e, "cannot remove delivered message");
            }
            Self::lock(&self.schedule).remove(id);
            return;
        }
        state.attempts += 1;
        state.last_error = errors.join("; ");
        state.next_attempt = now() + self.backoff(state.attempts).as_secs() as i64;
        if let Err(e) = self.spool.save_state(id, &state) {
            tracing::error!(queue_id = id, error = %e, "cannot save delivery state");
        }
        Self::lock(&self.schedule).insert(id.to_owned(), state.next_attempt);
    }

    fn host_down(&self, host: &str, port: u16) -> Option<String> {
        let ttl = self.cfg.relay_queue.host_status_ttl;
        if ttl.is_zero() {
            return None;
        }
        let mut status = Self::lock(&self.host_status);
        let key = (host.to_owned(), port);
        match status.get(&key) {
            Some((until, why)) if *until > now() => Some(why.clone()),
            Some(_) => {
                status.remove(&key);
                None
            }
            None => None,
        }
    }

    fn mark_down(&self, host: &str, port: u16, why: &str) {
        let ttl = self.cfg.relay_queue.host_status_ttl;
        if !ttl.is_zero() {
            Self::lock(&self.host_status).insert(
                (host.to_owned(), port),
                (now() + ttl.as_secs() as i64, why.to_owned()),
            );
        }
    }

    /// Queue one DSN for `failed` through the spool, from the null sender.
    /// Its id is derived from the message and attempt, so a retry after a
    /// crash finds it queued instead of making another.
    fn bounce(
        &self,
        id: &str,
        env: &Envelope,
        body: &[u8],
        failed: &[FailedRecipient],
        attempt: u32,
    ) -> Result<(), SpoolError> {
        let report: Vec<FailedRecipient> = failed
            .iter()
            .filter(|f| {
                env.recipients
                    .iter()
                    .find(|r| r.address == f.address)
                    .is_some_and(|r| dsn::wants_failure_report(env, r))
            })
            .cloned()
            .collect();
        if report.is_empty() {
            tracing::info!(
                queue_id = id,
                failed = failed.len(),
                "no DSN (null sender or NOTIFY)"
            );
            return Ok(());
        }
        let prefix: String = id.chars().take(22).collect();
        let bounce_id = format!("{prefix}B{attempt}");
        if self.spool.exists(&bounce_id) {
            return Ok(());
        }
        let message = dsn::bounce(&self.cfg.hostname, id, env, body, &report);
        let bounce_env = Envelope {
            mail_from: String::new(),
            recipients: vec![Recipient {
                address: env.mail_from.clone(),
                notify: Vec::new(),
                orcpt: String::new(),
            }],
            auth_id: String::new(),
            auth_param: String::new(),
            env_id: String::new(),
            ret: String::new(),
            body: if env.body.eq_ignore_ascii_case("8BITMIME") || env.smtputf8 {
                "8BITMIME".into()
            } else {
                String::new()
            },
            smtputf8: env.smtputf8,
            client_address: String::new(),
            session_id: String::new(),
            traceparent: env.traceparent.clone(),
            queued_at: now(),
        };
        let mut writer = self.spool.writer(&bounce_id, &bounce_env)?;
        writer.write(&message)?;
        writer.commit()?;
        tracing::info!(
            "{bounce_id}: from=<>, size={}, nrcpts=1, stat=queued (DSN for {id} to <{}>)",
            message.len(),
            env.mail_from
        );
        self.schedule_now(&bounce_id);
        Ok(())
    }

    /// Exponential back-off with ±25% jitter, capped.
    fn backoff(&self, attempts: u32) -> Duration {
        let rq = &self.cfg.relay_queue;
        let base =
            rq.retry_initial.as_secs_f64() * 2f64.powi(attempts.saturating_sub(1).min(30) as i32);
        let capped = base.min(rq.retry_max.as_secs_f64());
        let jitter = 0.75 + rand::random::<f64>() * 0.5;
        Duration::from_secs_f64((capped * jitter).max(1.0))
    }

    async fn enqueue(&self, mut stream: Streaming<pb::EnqueueRequest>) -> Result<String, Status> {
        use pb::enqueue_request::Part;
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty stream"))??;
        let Some(Part::Envelope(e)) = first.part else {
            return Err(Status::invalid_argument("the envelope must come first"));
        };
        if e.recipients.is_empty() {
            return Err(Status::invalid_argument("no recipients"));
        }
        let id = if spool::valid_id(&e.queue_id) && !self.spool.exists(&e.queue_id) {
            e.queue_id.clone()
        } else {
            spool::new_id()
        };
        let env = Envelope {
            mail_from: e.mail_from,
            recipients: e
                .recipients
                .into_iter()
                .map(|r| Recipient {
                    address: r.address,
                    notify: r.notify,
                    orcpt: r.orcpt,
                })
                .collect(),
            auth_id: e.auth_id,
            auth_param: e.auth_param,
            env_id: e.env_id,
            ret: e.ret,
            body: e.body,
            smtputf8: e.smtputf8,
            client_address: e.client_address,
            session_id: e.session_id,
            traceparent: e.traceparent,
            queued_at: now(),
        };
        let mut writer = self.spool.writer(&id, &env)?;
        // File writes are quick and buffered; each chunk is ≤ 64 KiB.
        while let Some(msg) = stream.next().await {
            match msg?.part {
                Some(Part::Chunk(bytes)) => writer.write(&bytes)?,
                Some(Part::Commit(c)) => {
                    if c.size != writer.body_len() {
                        return Err(Status::data_loss(format!(
                            "size mismatch: announced {}, received {}",
                            c.size,
                            writer.body_len()
                        )));
                    }
                    let size = writer.body_len();
                    tokio::task::block_in_place(|| writer.commit())?;
                    tracing::info!(
                        "{id}: from=<{}>, size={size}, nrcpts={}, authid={}, stat=queued",
                        env.mail_from,
                        env.recipients.len(),
                        if env.auth_id.is_empty() {
                            "-"
                        } else {
                            &env.auth_id
                        }
                    );
                    self.schedule_now(&id);
                    return Ok(id);
                }
                Some(Part::Envelope(_)) => {
                    return Err(Status::invalid_argument("a second envelope"));
                }
                None => return Err(Status::invalid_argument("empty message part")),
            }
        }
        // No commit: the sender gave up (client gone, message too big).
        Err(Status::aborted(
            "stream ended without commit; message discarded",
        ))
    }
}

pub struct QueueService {
    queue: Arc<Queue>,
}

#[tonic::async_trait]
impl RelayQueue for QueueService {
    #[tracing::instrument(name = "relay-queue Enqueue", skip_all)]
    async fn enqueue(
        &self,
        req: Request<Streaming<pb::EnqueueRequest>>,
    ) -> Result<Response<pb::EnqueueResponse>, Status> {
        let queue_id = self.queue.enqueue(req.into_inner()).await?;
        Ok(Response::new(pb::EnqueueResponse { queue_id }))
    }

    async fn list_queue(
        &self,
        _req: Request<pb::ListQueueRequest>,
    ) -> Result<Response<pb::ListQueueResponse>, Status> {
        let q = &self.queue;
        let mut entries = Vec::new();
        for id in q.spool.ids()? {
            let Ok(env) = q.spool.envelope(&id) else {
                continue;
            };
            let st = q.spool.state(&id);
            entries.push(pb::QueueEntry {
                size: q.spool.size(&id),
                mail_from: env.mail_from,
                recipients: env
                    .recipients
                    .into_iter()
                    .map(|r| r.address)
                    .filter(|a| !st.delivered.contains(a))
                    .collect(),
                queued_at: env.queued_at,
                next_attempt: st.next_attempt,
                attempts: st.attempts,
                last_error: st.last_error,
                held: st.held,
                queue_id: id,
            });
        }
        Ok(Response::new(pb::ListQueueResponse { entries }))
    }

    async fn flush(
        &self,
        req: Request<pb::FlushRequest>,
    ) -> Result<Response<pb::FlushResponse>, Status> {
        let domain = req.into_inner().domain.to_ascii_lowercase();
        let q = &self.queue;
        let mut n = 0;
        for id in q.spool.ids()? {
            let Ok(env) = q.spool.envelope(&id) else {
                continue;
            };
            let st = q.spool.state(&id);
            if st.held {
                continue;
            }
            let matches = domain.is_empty()
                || env.recipients.iter().any(|r| {
                    r.address
                        .to_ascii_lowercase()
                        .ends_with(&format!("@{domain}"))
                });
            if matches {
                Queue::lock(&q.schedule).insert(id, 0);
                n += 1;
            }
        }
        // An operator's flush is a request to try now, dead hosts included.
        Queue::lock(&q.host_status).clear();
        q.wake.notify_one();
        Ok(Response::new(pb::FlushResponse { scheduled: n }))
    }

    async fn delete_message(
        &self,
        req: Request<pb::MessageRef>,
    ) -> Result<Response<pb::MessageOpResponse>, Status> {
        let id = req.into_inner().queue_id;
        if !spool::valid_id(&id) {
            return Err(Status::invalid_argument("malformed queue id"));
        }
        self.queue.spool.remove(&id)?;
        Queue::lock(&self.queue.schedule).remove(&id);
        tracing::info!(queue_id = %id, "deleted by operator");
        Ok(Response::new(pb::MessageOpResponse {}))
    }

    async fn hold_message(
        &self,
        req: Request<pb::MessageRef>,
    ) -> Result<Response<pb::MessageOpResponse>, Status> {
        self.set_held(req.into_inner().queue_id, true)
    }

    async fn release_message(
        &self,
        req: Request<pb::MessageRef>,
    ) -> Result<Response<pb::MessageOpResponse>, Status> {
        self.set_held(req.into_inner().queue_id, false)
    }
}

impl QueueService {
    fn set_held(&self, id: String, held: bool) -> Result<Response<pb::MessageOpResponse>, Status> {
        if !spool::valid_id(&id) || !self.queue.spool.exists(&id) {
            return Err(Status::not_found("no such message"));
        }
        let mut st: DeliveryState = self.queue.spool.state(&id);
        st.held = held;
        if !held {
            st.next_attempt = 0;
        }
        self.queue.spool.save_state(&id, &st)?;
        if held {
            Queue::lock(&self.queue.schedule).remove(&id);
        } else {
            self.queue.schedule_now(&id);
        }
        Ok(Response::new(pb::MessageOpResponse {}))
    }
}

/// Serve on `listener` until `shutdown`; deliveries run alongside.
pub async fn serve(
    cfg: Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), anyhow::Error> {
    let queue = Queue::open(cfg)?;
    let runner = tokio::spawn(queue.clone().run());
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<RelayQueueServer<QueueService>>()
        .await;
    let result = tonic::transport::Server::builder()
        .layer(authrelay_telemetry::grpc::TraceLayer)
        .add_service(health)
        .add_service(RelayQueueServer::new(QueueService { queue }))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await;
    runner.abort();
    result?;
    Ok(())
}

/// Bind the configured address, announce it, and serve until SIGTERM/SIGINT.
pub async fn main_with(cfg: Config) -> Result<(), anyhow::Error> {
    let listener = TcpListener::bind(cfg.relay_queue.listen).await?;
    authrelay_telemetry::announce("relay-queue", "grpc", listener.local_addr()?);
    if let Some(addr) = cfg.telemetry.metrics_listen {
        authrelay_telemetry::announce(
            "relay-queue",
            "metrics",
            authrelay_telemetry::metrics::serve(addr).await?,
        );
    }
    serve(cfg, listener, authrelay_telemetry::shutdown_signal()).await
}
