//! relay-queue: takes messages over a gRPC stream, makes them durable before
//! answering, and delivers them to the next hop, retrying with back-off.

pub mod client;
pub mod dsn;
pub mod error;
pub mod mx;
pub mod oauth;
pub mod spool;
pub mod tls;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use authrelay_config::{AuthInfoMap, Config, DeliveryMode, parse_host_port};
use authrelay_proto::queue::v1 as pb;
use authrelay_proto::queue::v1::relay_queue_server::{RelayQueue, RelayQueueServer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::client::reply::EnhancedStatus;
use crate::client::{Hop, RcptOutcome};
use crate::dsn::FailedRecipient;
use crate::error::{DeliveryError, Retry};
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
    tokens: oauth::TokenSources,
    tls: OutboundTlsConfigs,
    /// Next hops that did not answer: (host, port) → (until, why). Messages
    /// for them wait without connecting (`confTO_HOSTSTATUS`).
    host_status: Mutex<HashMap<(String, u16), (i64, String)>>,
    mx: mx::MxResolver,
    /// Every spooled message → queued_at, for the queue gauges.
    index: Mutex<HashMap<String, i64>>,
}

/// Where the mail for one recipient domain goes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Destination {
    /// A route (mailertable) or the smarthost.
    Fixed(String, u16),
    /// The domain's MX hosts (or its A/AAAA), on `relay_queue.mx_port`.
    Mx(String),
}

/// A delivery's outcome for metrics (`authrelay_deliveries_total{outcome}`).
fn count_delivery(outcome: &str, n: usize) {
    let family = &authrelay_telemetry::metrics::METRICS.deliveries;
    for _ in 0..n {
        authrelay_telemetry::metrics::outcome(family, outcome);
    }
}

impl Queue {
    pub fn open(cfg: Config) -> Result<Arc<Self>, anyhow::Error> {
        let authinfo = cfg.authinfo().map_err(|e| e.to_config_error())?;
        let tls = OutboundTlsConfigs::new(cfg.relay_queue.tls_ca_file.as_deref())?;
        if !authinfo.is_empty() {
            tracing::info!(entries = authinfo.len(), "AuthInfo map loaded");
        }
        let tokens = oauth::TokenSources::new(&cfg)?;
        for name in tokens.missing_refresh_tokens() {
            tracing::warn!(
                "token_source={name}: no refresh token stored yet; mail for its hops waits until `authrelay authinfo token set HOST` stores one"
            );
        }
        if let Some(name) = authinfo.lookup_default_token_source()
            && cfg.relay_queue.smarthost.is_empty()
        {
            // A bearer token is good at the issuer's every resource server:
            // handing it to whichever MX host offers XOAUTH2 leaks it.
            tracing::warn!(
                "the default AuthInfo entry names token source {name} and there is no smarthost: every MX host without its own entry that offers XOAUTH2/OAUTHBEARER gets its access tokens; give the hub its own entry instead"
            );
        }
        for (key, host) in next_hops_without_authinfo(&cfg, &authinfo) {
            tracing::warn!(
                "{key}: next hop {host} matches no AuthInfo entry: mail to it goes out without AUTH"
            );
        }
        let spool = Spool::open(&cfg.spool_dir())?;
        let dns_servers: Vec<std::net::SocketAddr> = cfg
            .relay_queue
            .dns_servers
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let mx = mx::MxResolver::new(&dns_servers, cfg.relay_queue.connect_timeout)?;
        let background = cfg.relay_queue.delivery_mode == DeliveryMode::Background;
        let mut schedule = HashMap::new();
        let mut index = HashMap::new();
        for id in spool.ids()? {
            if let Ok(env) = spool.envelope(&id) {
                index.insert(id.clone(), env.queued_at);
            }
            let st = spool.state(&id);
            // queue-only: recovered mail waits for a flush, as new mail does.
            if !st.held && background {
                schedule.insert(id, st.next_attempt);
            }
        }
        if !schedule.is_empty() {
            tracing::info!(
                messages = schedule.len(),
                "recovered queued messages from the spool"
            );
        }
        if !background {
            tracing::info!(
                messages = index.len(),
                "delivery_mode=queue-only: messages wait for `queue flush` or ETRN"
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
            tokens,
            tls,
            host_status: Mutex::new(HashMap::new()),
            mx,
            index: Mutex::new(index),
        }))
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn schedule_now(&self, id: &str) {
        Self::lock(&self.schedule).insert(id.to_owned(), 0);
        self.wake.notify_one();
    }

    fn background(&self) -> bool {
        self.cfg.relay_queue.delivery_mode == DeliveryMode::Background
    }

    /// A new message is on disk: deliver it now, unless queue-only.
    fn queued(&self, id: &str, queued_at: i64) {
        Self::lock(&self.index).insert(id.to_owned(), queued_at);
        if self.background() {
            self.schedule_now(id);
        }
    }

    fn forget(&self, id: &str) {
        Self::lock(&self.schedule).remove(id);
        Self::lock(&self.index).remove(id);
    }

    /// The queue gauges, from the in-memory index (no disk reads).
    fn update_gauges(&self) {
        let index = Self::lock(&self.index);
        let m = &authrelay_telemetry::metrics::METRICS;
        m.queue_messages.set(index.len() as i64);
        let oldest = index.values().min().map_or(0, |t| (now() - t).max(0));
        m.queue_oldest_age.set(oldest);
    }

    /// The delivery loop: start every due message, then sleep until woken
    /// (a new message, a flush) or a second has passed.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.update_gauges();
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

    /// Where mail for `domain` goes: a route (mailertable), else the
    /// smarthost, else the domain's MX (RFC 5321 §5.1).
    fn route(&self, domain: &str) -> Destination {
        let d = domain.trim_end_matches('.').to_ascii_lowercase();
        let rq = &self.cfg.relay_queue;
        rq.routes
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&d))
            .map(|(_, v)| v.as_str())
            .or(Some(rq.smarthost.as_str()).filter(|s| !s.is_empty()))
            .and_then(|hop| parse_host_port(hop).ok())
            .map_or(Destination::Mx(d), |(h, p)| Destination::Fixed(h, p))
    }

    /// One connection to one host, as one `relay-queue deliver` span in the
    /// trace of the submission that queued the message.
    #[allow(clippy::too_many_arguments)]
    async fn deliver_to(
        &self,
        id: &str,
        host: &str,
        port: u16,
        addr: Option<std::net::IpAddr>,
        env: &Envelope,
        rcpts: &[&Recipient],
        body: &[u8],
    ) -> Result<Vec<RcptOutcome>, DeliveryError> {
        let span = tracing::info_span!(
            "deliver",
            otel.name = "relay-queue deliver",
            otel.kind = "producer",
            server.address = %host,
            server.port = port,
            network.peer.address = tracing::field::Empty,
            messaging.system = "smtp",
            messaging.operation.type = "send",
            messaging.operation.name = "deliver",
            messaging.message.id = %id,
            messaging.message.body.size = body.len(),
            messaging.batch.message_count = rcpts.len(),
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        // Its parent is the attempt's span, in the submission's trace.
        if let Some(ip) = addr {
            span.record("network.peer.address", tracing::field::display(ip));
        }
        let authinfo = self.authinfo.lookup(host);
        let hop = Hop {
            host,
            port,
            addr,
            helo: self.cfg.helo_name(),
            timeout: self.cfg.relay_queue.connect_timeout,
            tls: self.cfg.outbound_tls(host),
            authinfo,
            tokens: authinfo
                .and_then(|a| a.token_source())
                .and_then(|name| self.tokens.get(name))
                .map(|s| &**s),
        };
        let result = client::deliver(&hop, &self.tls, env, rcpts, body)
            .instrument(span.clone())
            .await;
        match &result {
            Err(e) if e.hop_unreachable() => self.mark_down(host, port, &e.to_string()),
            Ok(_) => {
                Self::lock(&self.host_status).remove(&(host.to_owned(), port));
            }
            Err(_) => {}
        }
        let outcome = match &result {
            Ok(o) if o.iter().all(|o| matches!(o, RcptOutcome::Delivered(_))) => "sent",
            Ok(_) => "partial",
            Err(e) if e.verdict().retry == Retry::Never => "failed",
            Err(_) => "deferred",
        };
        span.record("outcome", outcome);
        if outcome != "sent" {
            span.record("otel.status_code", "ERROR");
        }
        result
    }

    /// Deliver to a destination; returns the relay named in the log and DSN.
    async fn deliver_group(
        &self,
        id: &str,
        dest: &Destination,
        env: &Envelope,
        rcpts: &[&Recipient],
        body: &[u8],
    ) -> (String, Result<Vec<RcptOutcome>, DeliveryError>) {
        match dest {
            Destination::Fixed(host, port) => {
                let relay = format!("{host}:{port}");
                if let Some(why) = self.host_down(host, *port) {
                    let err = DeliveryError::HostDown {
                        host: host.clone(),
                        port: *port,
                        why,
                    };
                    return (relay, Err(err));
                }
                let r = self
                    .deliver_to(id, host, *port, None, env, rcpts, body)
                    .await;
                (relay, r)
            }
            Destination::Mx(domain) => {
                let candidates = match self.mx.candidates(domain).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::info!("{id}: domain={domain}, {e}");
                        return (domain.clone(), Err(e.into()));
                    }
                };
                let port = self.cfg.relay_queue.mx_port;
                let mut tried = Vec::new();
                // §5.1: on to the next MX host when one cannot be reached.
                for c in candidates {
                    let relay = format!("{}[{}]:{port}", c.host, c.addr);
                    if let Some(why) = self.host_down(&c.host, port) {
                        tried.push(format!("{relay}: host status ({why})"));
                        continue;
                    }
                    match self
                        .deliver_to(id, &c.host, port, Some(c.addr), env, rcpts, body)
                        .await
                    {
                        Err(e) if e.hop_unreachable() => {
                            tracing::info!("{id}: relay={relay}, {e}; trying the next MX host");
                            tried.push(format!("{relay}: {e}"));
                        }
                        other => return (relay, other),
                    }
                }
                let err = DeliveryError::NoMxAnswered {
                    domain: domain.clone(),
                    tried,
                };
                (domain.clone(), Err(err))
            }
        }
    }

    async fn attempt(&self, id: &str) {
        let (env, body) = match self.spool.read(id) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(queue_id = id, error = %e, "cannot read queued message");
                self.forget(id);
                return;
            }
        };
        let state = self.spool.state(id);
        if state.held {
            Self::lock(&self.schedule).remove(id);
            return;
        }
        // One attempt is one unit of work in the submission's trace: its
        // deliveries are children, and every log line it writes (stat=Sent,
        // Deferred, Failed, Expired, the DSN) carries that trace's ids.
        let span = tracing::info_span!(
            "attempt",
            otel.name = "relay-queue attempt",
            messaging.system = "smtp",
            messaging.operation.type = "process",
            messaging.message.id = %id,
            attempt = state.attempts + 1,
        );
        if let Some(cx) = authrelay_telemetry::context_from_traceparent(&env.traceparent) {
            let _ = span.set_parent(cx);
        }
        self.attempt_traced(id, env, body, state)
            .instrument(span)
            .await
    }

    async fn attempt_traced(
        &self,
        id: &str,
        env: Envelope,
        body: Vec<u8>,
        mut state: spool::DeliveryState,
    ) {
        let pending: Vec<&Recipient> = env
            .recipients
            .iter()
            .filter(|r| !state.delivered.contains(&r.address))
            .collect();
        // One connection per next hop carrying all its recipients.
        let mut by_hop: BTreeMap<Destination, Vec<&Recipient>> = BTreeMap::new();
        let mut errors = Vec::new();
        for r in pending {
            let domain = r.address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            by_hop.entry(self.route(domain)).or_default().push(r);
        }
        let mut failed: Vec<FailedRecipient> = Vec::new();
        let fail =
            |r: &Recipient, text: String, status: EnhancedStatus, host: &str| FailedRecipient {
                address: r.address.clone(),
                orcpt: r.orcpt.clone(),
                diagnostic: text,
                remote_mta: Some(host.to_owned()),
                status,
            };
        for (dest, rcpts) in by_hop {
            let (host, result) = self.deliver_group(id, &dest, &env, &rcpts, &body).await;
            match result {
                Ok(outcomes) => {
                    for (r, o) in rcpts.iter().zip(outcomes) {
                        match o {
                            RcptOutcome::Delivered(reply) => {
                                count_delivery("sent", 1);
                                tracing::info!(
                                    "{id}: to=<{}>, relay={host}, stat=Sent ({reply})",
                                    r.address
                                );
                                state.delivered.push(r.address.clone());
                            }
                            RcptOutcome::Refused(reply) => {
                                let verdict = reply.verdict();
                                if verdict.retry == Retry::Later {
                                    count_delivery("deferred", 1);
                                    tracing::info!(
                                        "{id}: to=<{}>, relay={host}, stat=Deferred ({reply})",
                                        r.address
                                    );
                                    errors.push(reply.to_string());
                                } else {
                                    count_delivery("failed", 1);
                                    tracing::info!(
                                        "{id}: to=<{}>, relay={host}, stat=Failed ({reply})",
                                        r.address
                                    );
                                    failed.push(fail(r, reply.to_string(), verdict.status, &host));
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    let verdict = e.verdict();
                    let (stat, outcome) = match verdict.retry {
                        Retry::Never => ("Failed", "failed"),
                        Retry::Later => ("Deferred", "deferred"),
                    };
                    count_delivery(outcome, rcpts.len());
                    for r in &rcpts {
                        tracing::info!(
                            "{id}: to=<{}>, relay={host}, stat={stat} ({text})",
                            r.address
                        );
                        if verdict.retry == Retry::Never {
                            failed.push(fail(r, text.clone(), verdict.status, &host));
                        }
                    }
                    if verdict.retry == Retry::Later {
                        errors.push(text);
                    }
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
                    count_delivery("expired", 1);
                    failed.push(FailedRecipient {
                        address: r.address.clone(),
                        orcpt: r.orcpt.clone(),
                        diagnostic: format!("queue lifetime exceeded; last error: {last}"),
                        remote_mta: None,
                        status: EnhancedStatus::new(4, 4, 7),
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
            self.forget(id);
            return;
        }
        state.attempts += 1;
        state.last_error = errors.join("; ");
        state.next_attempt = now() + self.backoff(state.attempts).as_secs() as i64;
        if let Err(e) = self.spool.save_state(id, &state) {
            tracing::error!(queue_id = id, error = %e, "cannot save delivery state");
        }
        if self.background() {
            Self::lock(&self.schedule).insert(id.to_owned(), state.next_attempt);
        } else {
            // queue-only: a flushed message that is deferred waits for the
            // next flush, as it would for sendmail's next queue run.
            Self::lock(&self.schedule).remove(id);
        }
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
        self.queued(&bounce_id, bounce_env.queued_at);
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

    async fn enqueue<S>(&self, mut stream: S) -> Result<String, Status>
    where
        S: tokio_stream::Stream<Item = Result<pb::EnqueueRequest, Status>> + Unpin + Send,
    {
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
        let span = tracing::info_span!(
            "enqueue",
            otel.name = "relay-queue enqueue",
            otel.kind = "consumer",
            messaging.system = "smtp",
            messaging.operation.type = "receive",
            messaging.operation.name = "enqueue",
            messaging.message.id = %id,
            messaging.batch.message_count = env.recipients.len(),
        );
        // The envelope names the submission's trace; a caller that did not
        // propagate it in gRPC metadata still gets its enqueue in that trace.
        if let Some(cx) = authrelay_telemetry::context_from_traceparent(&env.traceparent) {
            use opentelemetry::trace::TraceContextExt as _;
            let here = tracing::Span::current().context();
            if here.span().span_context().trace_id() != cx.span().span_context().trace_id() {
                let _ = span.set_parent(cx);
            }
        }
        self.store(id, env, stream).instrument(span).await
    }

    /// Write the body as it streams in; on Commit, make it durable and answer.
    async fn store<S>(&self, id: String, env: Envelope, mut stream: S) -> Result<String, Status>
    where
        S: tokio_stream::Stream<Item = Result<pb::EnqueueRequest, Status>> + Unpin + Send,
    {
        use pb::enqueue_request::Part;
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
                    self.queued(&id, env.queued_at);
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

impl QueueService {
    pub fn new(queue: Arc<Queue>) -> Self {
        QueueService { queue }
    }
}

/// The frontend's calls, in the same process (`authrelay serve`).
#[tonic::async_trait]
impl authrelay_grpc_tls::api::LocalQueue for QueueService {
    async fn enqueue(
        &self,
        parts: tokio_stream::wrappers::ReceiverStream<pb::EnqueueRequest>,
    ) -> Result<pb::EnqueueResponse, Status> {
        let queue_id = self.queue.enqueue(parts.map(Ok)).await?;
        Ok(pb::EnqueueResponse { queue_id })
    }

    async fn flush(&self, r: pb::FlushRequest) -> Result<pb::FlushResponse, Status> {
        RelayQueue::flush(self, Request::new(r))
            .await
            .map(Response::into_inner)
    }
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
        self.queue.forget(&id);
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
        } else if self.queue.background() {
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
    let guard = authrelay_grpc_tls::guard(&cfg)?;
    let queue = Queue::open(cfg.clone())?;
    serve_queue(
        cfg,
        Some(listener),
        Arc::new(QueueService::new(queue)),
        guard,
        shutdown,
    )
    .await
}

/// Run `service`'s delivery and serve it over gRPC on `listener` and
/// `relay_queue.listen_unix` (either may be absent) until `shutdown`.
pub async fn serve_queue(
    cfg: Config,
    listener: Option<TcpListener>,
    service: Arc<QueueService>,
    guard: authrelay_grpc_tls::guard::GuardLayer,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), anyhow::Error> {
    let unix = authrelay_grpc_tls::listen_unix(
        "relay-queue",
        "relay_queue.listen_unix",
        cfg.relay_queue.listen_unix.as_deref(),
    )?;
    let (grpc, tls, health_listen) = (
        authrelay_grpc_tls::server(),
        authrelay_grpc_tls::server_tls(&cfg)?,
        cfg.internal_tls.health_listen,
    );
    let runner = tokio::spawn(service.queue.clone().run());
    let (reporter, health) = tonic_health::server::health_reporter();
    authrelay_grpc_tls::serve_plain_health("relay-queue", health_listen, health.clone()).await?;
    reporter
        .set_serving::<RelayQueueServer<QueueService>>()
        .await;
    let result = grpc
        .layer(authrelay_telemetry::grpc::TraceLayer)
        .layer(guard)
        .add_service(health)
        .add_service(RelayQueueServer::from_arc(service))
        .serve_with_incoming_shutdown(authrelay_grpc_tls::incoming(listener, unix, tls), shutdown)
        .await;
    runner.abort();
    result?;
    Ok(())
}

/// Bind the configured address, announce it, and serve until SIGTERM/SIGINT.
pub async fn main_with(cfg: Config) -> Result<(), anyhow::Error> {
    // Before anything else: a SIGTERM during start-up waits for it to finish.
    let shutdown = authrelay_telemetry::shutdown_signal();
    let listener = TcpListener::bind(cfg.relay_queue.listen).await?;
    authrelay_telemetry::announce("relay-queue", "grpc", listener.local_addr()?);
    if let Some(addr) = cfg.telemetry.metrics_listen {
        authrelay_telemetry::announce(
            "relay-queue",
            "metrics",
            authrelay_telemetry::metrics::serve(addr).await?,
        );
    }
    serve(cfg, listener, shutdown).await
}

/// Configured next hops (smarthost, routes) that no AuthInfo entry covers,
/// when there is an AuthInfo map at all: the operator wrote credentials for
/// some hub, so a hop without any is most likely a typo in a host name,
/// and the relay would go out unauthenticated (and be refused) silently.
fn next_hops_without_authinfo(
    cfg: &Config,
    authinfo: &authrelay_config::AuthInfoMap,
) -> Vec<(String, String)> {
    if authinfo.is_empty() {
        return Vec::new();
    }
    let rq = &cfg.relay_queue;
    std::iter::once(("relay_queue.smarthost".to_owned(), rq.smarthost.as_str()))
        .chain(
            rq.routes
                .iter()
                .map(|(domain, hop)| (format!("relay_queue.routes.\"{domain}\""), hop.as_str())),
        )
        .filter(|(_, hop)| !hop.is_empty())
        .filter_map(|(key, hop)| {
            let host = authrelay_config::parse_host_port(hop).map_or(hop.to_owned(), |(h, _)| h);
            authinfo.lookup(&host).is_none().then_some((key, host))
        })
        .collect()
}

#[cfg(test)]
mod next_hop_tests {
    use super::*;

    #[test]
    fn a_next_hop_no_authinfo_entry_covers_is_reported() {
        let mut cfg = Config::default();
        cfg.relay_queue.smarthost = "mailhub.example.com:587".into();
        cfg.relay_queue
            .routes
            .insert("other.example".into(), "mx.other.example:25".into());
        let map = authrelay_config::AuthInfoMap::parse(
            "AuthInfo:mailhub.example.com \"U:relay\" \"P:secret-pw\" \"M:PLAIN\"\n",
            std::path::Path::new("authinfo"),
        )
        .unwrap();
        let missing = next_hops_without_authinfo(&cfg, &map);
        assert_eq!(
            missing,
            vec![(
                "relay_queue.routes.\"other.example\"".to_owned(),
                "mx.other.example".to_owned()
            )]
        );
        // Without any AuthInfo map, relaying unauthenticated is the intent.
        let empty = authrelay_config::AuthInfoMap::default();
        assert!(next_hops_without_authinfo(&cfg, &empty).is_empty());
    }
}
