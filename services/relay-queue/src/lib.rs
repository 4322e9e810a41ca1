//! relay-queue: takes messages over a gRPC stream, makes them durable before
//! answering, and delivers them to the next hop, retrying with back-off.

pub mod client;
pub mod spool;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use authrelay_config::{Config, parse_host_port};
use authrelay_proto::queue::v1 as pb;
use authrelay_proto::queue::v1::relay_queue_server::{RelayQueue, RelayQueueServer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::client::RcptOutcome;
use crate::spool::{DeliveryState, Envelope, Recipient, Spool, SpoolError};

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
}

impl Queue {
    pub fn open(cfg: Config) -> Result<Arc<Self>, anyhow::Error> {
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
        let mut failed: Vec<(String, String)> = Vec::new();
        for ((host, port), rcpts) in by_hop {
            let result = client::deliver(
                &host,
                port,
                self.cfg.helo_name(),
                &env,
                &rcpts,
                &body,
                self.cfg.relay_queue.connect_timeout,
            )
            .await;
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
                                state.delivered.push(r.address.clone());
                                failed.push((r.address.clone(), text));
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
                        state.delivered.push(r.address.clone());
                        failed.push((r.address.clone(), text.clone()));
                    }
                }
                Err(client::ClientError::Temporary(text)) => {
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
        if !failed.is_empty() {
            // DSN bounces come with the bounce work; until then the failure is logged.
            tracing::warn!(
                queue_id = id,
                failed = failed.len(),
                "recipients failed permanently"
            );
        }
        let all_done = env
            .recipients
            .iter()
            .all(|r| state.delivered.contains(&r.address));
        let expired =
            now() - env.queued_at > self.cfg.relay_queue.max_queue_lifetime.as_secs() as i64;
        if all_done || expired {
            if expired && !all_done {
                tracing::warn!(queue_id = id, "queue lifetime exceeded; giving up");
            }
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
    serve(cfg, listener, authrelay_telemetry::shutdown_signal()).await
}
