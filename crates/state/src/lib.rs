//! Shared state for authrelay replicas.
//!
//! Everything that must hold across replicas lives here: single-use claims
//! of sealed SASL exchanges, brute-force counters, credential-change
//! announcements (pub/sub), live SMTP session records, connection rates and
//! per-account sending limits with their suspensions ([`account`]).
//! SASL exchange state itself travels sealed (sasl-auth), not here.
//! In a deployment that is Redis; the all-in-one `authrelay serve` may use
//! the in-process store instead, which has the same semantics for one process.
//!
//! Every Redis operation has a deadline: a dead or hung Redis turns into
//! [`StateError::Unavailable`] quickly, and callers fail closed on it
//! (AUTH → `454 4.7.0`), never open.

pub mod account;
mod memory;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use memory::MemoryState;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store cannot be reached or did not answer in time.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error("session store configuration: {0}")]
    Config(String),
    /// Redis refused our credentials (or wants some and we have none): a
    /// configuration mistake that waiting will not fix.
    #[error("Redis refused authrelay's credentials: {0}")]
    Auth(String),
}

pub type Result<T> = std::result::Result<T, StateError>;

/// The shared store: Redis, or in-process for a single all-in-one process.
/// An enum rather than a trait object: two implementations, chosen once at
/// start, and no boxing on the AUTH hot path.
#[derive(Clone)]
pub enum SharedState {
    Redis(RedisState),
    Memory(MemoryState),
}

/// Messages of one channel. [`Subscription::next`] returns `None` when the
/// feed is lost (connection dropped, or an in-process receiver fell
/// behind): messages may have been missed, so subscribe again and treat
/// everything derived from the feed as stale.
pub enum Subscription {
    Redis(std::pin::Pin<Box<dyn futures::Stream<Item = redis::Msg> + Send>>),
    Memory(String, tokio::sync::broadcast::Receiver<(String, Vec<u8>)>),
}

impl Subscription {
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        match self {
            Subscription::Redis(s) => {
                use futures::StreamExt as _;
                s.next().await.map(|m| m.get_payload_bytes().to_vec())
            }
            Subscription::Memory(channel, rx) => loop {
                match rx.recv().await {
                    Ok((ch, msg)) if ch == *channel => return Some(msg),
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            },
        }
    }
}

#[derive(Clone)]
pub struct RedisState {
    client: redis::Client,
    conn: std::sync::Arc<Manager>,
    prefix: String,
    timeout: Duration,
}

/// The multiplexed connection, replaceable. redis-rs' ConnectionManager
/// reconnects after I/O errors only: once Redis has refused a login it
/// keeps answering with that refusal forever, even after the ACL is
/// fixed. So a refused login swaps in a fresh manager, at most once a
/// second (a storm of AUTHs must not become a storm of Redis logins).
struct Manager {
    current: std::sync::RwLock<(ConnectionManager, std::time::Instant)>,
    client: redis::Client,
    config: ConnectionManagerConfig,
}

impl Manager {
    fn new(client: redis::Client, config: ConnectionManagerConfig) -> Result<Self> {
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(|e| StateError::Config(e.to_string()))?;
        Ok(Manager {
            current: std::sync::RwLock::new((conn, std::time::Instant::now())),
            client,
            config,
        })
    }

    fn get(&self) -> ConnectionManager {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    fn login_refused(&self) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.1.elapsed() < Duration::from_secs(1) {
            return;
        }
        if let Ok(fresh) =
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
        {
            *current = (fresh, std::time::Instant::now());
        }
    }
}

/// Who authrelay is to Redis. The password only ever goes into redis-rs'
/// connection settings (whose `Debug` redacts it), never into an error.
#[derive(Clone, Default)]
pub struct RedisAuth {
    /// ACL user; `None` is Redis' `default` user (plain `AUTH password`).
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl SharedState {
    /// The store `[redis]` describes: in-process without `url`, else Redis
    /// with `username` and the password from `password_file`. Tries Redis
    /// once: credentials it refuses stop the start with a clear error (a
    /// wrong password does not heal by waiting); a Redis that is merely
    /// down or slow is left to the lazy connection and readiness.
    pub async fn connect(cfg: &authrelay_config::RedisConfig) -> Result<Self> {
        if cfg.url.is_empty() {
            return Ok(Self::in_process());
        }
        let auth = RedisAuth {
            username: (!cfg.username.is_empty()).then(|| cfg.username.clone()),
            password: cfg.read_password().map_err(StateError::Config)?,
        };
        let state = Self::redis_with_auth(&cfg.url, &auth, &cfg.key_prefix, cfg.timeout)?;
        if let SharedState::Redis(r) = &state {
            let mut c = r.conn();
            let ping = redis::cmd("PING");
            let ping = ping.query_async::<String>(&mut c);
            if let Ok(Err(e)) = tokio::time::timeout(r.timeout, ping).await {
                if let Some(why) = auth_refusal(&e, &auth) {
                    return Err(StateError::Auth(why));
                }
                tracing::warn!(error = %e, "Redis not reachable at start; retrying on use");
            }
        }
        Ok(state)
    }

    /// Connects lazily: a Redis that is down at start makes operations fail
    /// (and readiness report not-ready) until it is back, with no restart.
    pub fn redis(url: &str, prefix: &str, timeout: Duration) -> Result<Self> {
        Self::redis_with_auth(url, &RedisAuth::default(), prefix, timeout)
    }

    /// [`SharedState::redis`] logging in with `auth` on every connection
    /// (commands and pub/sub alike: both come from the one `Client`).
    pub fn redis_with_auth(
        url: &str,
        auth: &RedisAuth,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self> {
        use redis::IntoConnectionInfo as _;
        let info = url
            .into_connection_info()
            .map_err(|e| StateError::Config(e.to_string()))?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &auth.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &auth.password {
            settings = settings.set_password(password);
        }
        let info = info
            .set_redis_settings(settings)
            // redis-rs leaves Nagle on. Requests from many sessions share
            // one multiplexed connection, so a small write behind one still
            // unacknowledged would wait for the ACK: a latency tail on
            // every AUTH for nothing saved.
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(|e| StateError::Config(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = std::sync::Arc::new(Manager::new(client.clone(), config)?);
        Ok(SharedState::Redis(RedisState {
            client,
            conn,
            prefix: prefix.to_owned(),
            timeout,
        }))
    }

    pub fn in_process() -> Self {
        SharedState::Memory(MemoryState::default())
    }

    pub fn kind(&self) -> &'static str {
        match self {
            SharedState::Redis(_) => "redis",
            SharedState::Memory(_) => "in-process",
        }
    }

    pub async fn ping(&self) -> Result<()> {
        match self {
            SharedState::Redis(r) => {
                let mut c = r.conn();
                r.run("PING", async move {
                    redis::cmd("PING").query_async::<String>(&mut c).await
                })
                .await
                .map(|_| ())
            }
            SharedState::Memory(_) => Ok(()),
        }
    }

    /// Store `value` under `key` for `ttl`.
    pub async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<()> {
        match self {
            SharedState::Redis(r) => {
                let mut c = r.conn();
                let k = r.key(key);
                let ms = ttl.as_millis().max(1) as u64;
                r.run(
                    "SET",
                    async move { c.pset_ex::<_, _, ()>(k, value, ms).await },
                )
                .await
            }
            SharedState::Memory(m) => {
                m.put(key, value, ttl);
                Ok(())
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self {
            SharedState::Redis(r) => {
                let mut c = r.conn();
                let k = r.key(key);
                r.run("GET", async move { c.get::<_, Option<Vec<u8>>>(k).await })
                    .await
            }
            SharedState::Memory(m) => Ok(m.get(key)),
        }
    }

    /// Set `key` only if absent (SET NX PX): true when this caller claimed it.
    pub async fn claim(&self, key: &str, ttl: Duration) -> Result<bool> {
        match self {
            SharedState::Redis(r) => {
                let mut c = r.conn();
                let k = r.key(key);
                let ms = ttl.as_millis().max(1) as u64;
                r.run("SET NX", async move {
                    redis::cmd("SET")
                        .arg(k)
                        .arg(1)
                        .arg("NX")
                        .arg("PX")
                        .arg(ms)
                        .query_async::<Option<String>>(&mut c)
                        .await
                })
                .await
                .map(|v| v.is_some())
            }
            SharedState::Memory(m) => Ok(m.claim(key, ttl)),
        }
    }

    /// Record one event in a sliding window and return how many events the
    /// window now holds (this one included). One atomic round trip.
    pub async fn record_event(&self, key: &str, window: Duration) -> Result<u64> {
        self.window_op(key, window, true).await
    }

    /// Events in the sliding window, without recording one.
    pub async fn count_events(&self, key: &str, window: Duration) -> Result<u64> {
        self.window_op(key, window, false).await
    }

    /// The events in each sliding window of `keys` and, when given, a
    /// single-use `claim` of (key, ttl) — all in one round trip (a Redis
    /// pipeline). An AUTH step that verifies a credential reads the
    /// per-address and per-user failure counts and claims its sealed
    /// exchange together instead of one after the other. The flag is false
    /// when the claim was already taken (a replayed step).
    pub async fn count_events_and_claim(
        &self,
        keys: &[&str],
        window: Duration,
        claim: Option<(&str, Duration)>,
    ) -> Result<(Vec<u64>, bool)> {
        if keys.is_empty() && claim.is_none() {
            return Ok((Vec::new(), true));
        }
        match self {
            SharedState::Redis(r) => {
                let mut c = r.conn();
                let from = now_micros().saturating_sub(window.as_micros() as u64);
                let mut pipe = redis::pipe();
                for k in keys {
                    let k = r.key(k);
                    pipe.cmd("ZREMRANGEBYSCORE")
                        .arg(&k)
                        .arg("-inf")
                        .arg(format!("({from}"))
                        .ignore();
                    pipe.cmd("ZCARD").arg(&k);
                }
                if let Some((k, ttl)) = claim {
                    pipe.cmd("SET")
                        .arg(r.key(k))
                        .arg(1)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl.as_millis().max(1) as u64);
                }
                let values = r
                    .run("ZCARD pipeline", async move {
                        pipe.query_async::<Vec<redis::Value>>(&mut c).await
                    })
                    .await?;
                let mut counts = Vec::with_capacity(keys.len());
                let mut claimed = true;
                for (i, v) in values.into_iter().enumerate() {
                    if i < keys.len() {
                        counts.push(redis::from_redis_value::<u64>(v).map_err(|e| {
                            StateError::Unavailable(format!("unexpected ZCARD reply: {e}"))
                        })?);
                    } else {
                        claimed = !matches!(v, redis::Value::Nil);
                    }
                }
                Ok((counts, claimed))
            }
            SharedState::Memory(m) => {
                let counts = keys.iter().map(|k| m.window(k, window, false)).collect();
                let claimed = claim.is_none_or(|(k, ttl)| m.claim(k, ttl));
                Ok((counts, claimed))
            }
        }
    }

    /// Announce `message` on `channel` to every subscriber (Redis PUBLISH;
    /// in-process, a broadcast). Best effort by nature: a subscriber that
    /// is not connected misses it, which is why [`Subscription::next`]
    /// reports a lost feed.
    pub async fn publish(&self, channel: &str, message: &[u8]) -> Result<()> {
        match self {
            SharedState::Redis(r) => {
                let mut c = r.conn();
                let ch = r.key(channel);
                r.run("PUBLISH", async move {
                    c.publish::<_, _, ()>(ch, message).await
                })
                .await
            }
            SharedState::Memory(m) => {
                m.publish(channel, message);
                Ok(())
            }
        }
    }

    /// Subscribe to `channel` on a connection of its own.
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription> {
        match self {
            SharedState::Redis(r) => {
                let ch = r.key(channel);
                let client = r.client.clone();
                let sub = tokio::time::timeout(r.timeout, async move {
                    let mut ps = client.get_async_pubsub().await?;
                    ps.subscribe(ch).await?;
                    Ok::<_, redis::RedisError>(ps.into_on_message())
                })
                .await
                .map_err(|_| StateError::Unavailable("SUBSCRIBE: no answer in time".into()))?
                .map_err(|e| StateError::Unavailable(e.to_string()))?;
                Ok(Subscription::Redis(Box::pin(sub)))
            }
            SharedState::Memory(m) => Ok(Subscription::Memory(channel.to_owned(), m.subscribe())),
        }
    }

    async fn window_op(&self, key: &str, window: Duration, add: bool) -> Result<u64> {
        match self {
            SharedState::Redis(r) => {
                let mut c = r.conn();
                let k = r.key(key);
                let now = now_micros();
                let from = now.saturating_sub(window.as_micros() as u64);
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("ZREMRANGEBYSCORE")
                    .arg(&k)
                    .arg("-inf")
                    .arg(format!("({from}"))
                    .ignore();
                if add {
                    // The member must be unique per event; the score is the time.
                    let member = format!("{now}:{}", unique_suffix());
                    pipe.cmd("ZADD").arg(&k).arg(now).arg(member).ignore();
                    pipe.cmd("PEXPIRE")
                        .arg(&k)
                        .arg(window.as_millis().max(1) as u64)
                        .ignore();
                }
                pipe.cmd("ZCARD").arg(&k);
                r.run("ZSET window", async move {
                    pipe.query_async::<(u64,)>(&mut c).await
                })
                .await
                .map(|(n,)| n)
            }
            SharedState::Memory(m) => Ok(m.window(key, window, add)),
        }
    }

    /// Append `value` to the list under `key` (expiring after `ttl`).
    pub async fn push(&self, key: &str, value: &[u8], ttl: Duration) -> Result<()> {
        match self {
            SharedState::Redis(r) => {
                let mut c = r.conn();
                let k = r.key(key);
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("RPUSH")
                    .arg(&k)
                    .arg(value)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&k)
                    .arg(ttl.as_millis().max(1) as u64)
                    .ignore();
                r.run("RPUSH", async move { pipe.query_async::<()>(&mut c).await })
                    .await
            }
            SharedState::Memory(m) => {
                m.push(key, value, ttl);
                Ok(())
            }
        }
    }

    /// Take every value of the list under `key`, atomically (LRANGE + DEL).
    pub async fn drain(&self, key: &str) -> Result<Vec<Vec<u8>>> {
        match self {
            SharedState::Redis(r) => {
                let mut c = r.conn();
                let k = r.key(key);
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("LRANGE")
                    .arg(&k)
                    .arg(0)
                    .arg(-1)
                    .cmd("DEL")
                    .arg(&k)
                    .ignore();
                r.run("LRANGE+DEL", async move {
                    pipe.query_async::<(Vec<Vec<u8>>,)>(&mut c).await
                })
                .await
                .map(|(v,)| v)
            }
            SharedState::Memory(m) => Ok(m.drain(key)),
        }
    }

    /// Keys under `prefix` (without the deployment prefix), for listings.
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        match self {
            SharedState::Redis(r) => {
                let mut c = r.conn();
                let pattern = format!("{}*", r.key(prefix));
                let strip = r.prefix.len();
                let keys = r
                    .run("SCAN", async move {
                        let mut out = Vec::new();
                        let mut iter = c.scan_match::<_, String>(pattern).await?;
                        while let Some(k) = futures_next(&mut iter).await {
                            out.push(k);
                        }
                        Ok(out)
                    })
                    .await?;
                Ok(keys.into_iter().map(|k| k[strip..].to_owned()).collect())
            }
            SharedState::Memory(m) => Ok(m.keys(prefix)),
        }
    }
}

/// The account-limit operations (see [`account`]).
impl SharedState {
    /// Count `req.amount` events for an account in one atomic round trip.
    pub async fn count_account(
        &self,
        req: &account::CountRequest<'_>,
    ) -> Result<account::CountOutcome> {
        use account::{CountOutcome, keys};
        let now_ms = now_micros() / 1000;
        let since = (now_ms / 1000) as i64;
        match self {
            SharedState::Redis(r) => {
                static SCRIPT: std::sync::LazyLock<redis::Script> =
                    std::sync::LazyLock::new(|| redis::Script::new(account::COUNT_SCRIPT));
                let mut inv = SCRIPT.prepare_invoke();
                inv.key(r.key(keys::SUSPENDED))
                    .key(r.key(&keys::overrides(req.account)))
                    .arg(req.account)
                    .arg(req.amount)
                    .arg(req.suspend_factor)
                    .arg(since)
                    .arg(req.relay);
                for w in req.windows {
                    let (b, weight) = account::bucket(now_ms, w.window);
                    let prev = b.saturating_sub(1);
                    for (kind, bucket) in [("acc", b), ("acc", prev), ("att", b), ("att", prev)] {
                        inv.key(r.key(&keys::counter(kind, req.account, &w.name, bucket)));
                    }
                    inv.arg(&w.name)
                        .arg(w.limit)
                        .arg(format!("{weight:.6}"))
                        .arg((w.window * 2).as_millis() as u64);
                }
                let mut c = r.conn();
                let (status, index, count, limit): (u8, usize, u64, u64) = r
                    .run("EVALSHA account limits", async move {
                        inv.invoke_async(&mut c).await
                    })
                    .await?;
                let name = || {
                    index
                        .checked_sub(1)
                        .and_then(|i| req.windows.get(i))
                        .map(|w| w.name.clone())
                        .unwrap_or_default()
                };
                Ok(match status {
                    0 => CountOutcome::Accepted,
                    1 => CountOutcome::Refused {
                        limit: name(),
                        count,
                        max: limit,
                    },
                    2 => CountOutcome::SuspendedNow {
                        limit: name(),
                        attempts: count,
                        threshold: limit,
                    },
                    _ => CountOutcome::Suspended,
                })
            }
            SharedState::Memory(m) => Ok(m.count_account(req, now_ms, since)),
        }
    }

    /// The account's suspension, if it is suspended.
    pub async fn suspension(&self, account: &str) -> Result<Option<account::Suspension>> {
        let raw = match self {
            SharedState::Redis(r) => {
                let mut c = r.conn();
                let k = r.key(account::keys::SUSPENDED);
                let field = account.to_owned();
                r.run("HGET", async move {
                    c.hget::<_, _, Option<Vec<u8>>>(k, field).await
                })
                .await?
            }
            SharedState::Memory(m) => m.hget(account::keys::SUSPENDED, account),
        };
        Ok(raw.map(|b| serde_json::from_slice(&b).unwrap_or_default()))
    }

    /// Every suspended account, sorted by name.
    pub async fn suspensions(&self) -> Result<Vec<(String, account::Suspension)>> {
        let all = match self {
            SharedState::Redis(r) => {
                let mut c = r.conn();
                let k = r.key(account::keys::SUSPENDED);
                r.run("HGETALL", async move {
                    c.hgetall::<_, std::collections::BTreeMap<String, Vec<u8>>>(k)
                        .await
                })
                .await?
            }
            SharedState::Memory(m) => m.hget_all(account::keys::SUSPENDED),
        };
        Ok(all
            .into_iter()
            .map(|(k, v)| (k, serde_json::from_slice(&v).unwrap_or_default()))
            .collect())
    }

    /// Record a suspension as it was (restoring saved state).
    pub async fn restore_suspension(&self, account: &str, s: &account::Suspension) -> Result<()> {
        let record = serde_json::to_vec(s).map_err(|e| StateError::Config(e.to_string()))?;
        match self {
            SharedState::Redis(r) => {
                let mut c = r.conn();
                let k = r.key(account::keys::SUSPENDED);
                let field = account.to_owned();
                r.run("HSET", async move {
                    c.hset::<_, _, _, ()>(k, field, record).await
                })
                .await
            }
            SharedState::Memory(m) => {
                m.hupdate(
                    account::keys::SUSPENDED,
                    &[(account.to_owned(), record)],
                    &[],
                    false,
                );
                Ok(())
            }
        }
    }

    /// Lift a suspension and forget the account's counts (the counters
    /// `counters`), atomically; true when it was suspended.
    pub async fn unlock_account(&self, account: &str, counters: &[String]) -> Result<bool> {
        match self {
            SharedState::Redis(r) => {
                let mut c = r.conn();
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("HDEL")
                    .arg(r.key(account::keys::SUSPENDED))
                    .arg(account);
                if !counters.is_empty() {
                    let mut del = redis::cmd("DEL");
                    for k in counters {
                        del.arg(r.key(k));
                    }
                    pipe.add_command(del).ignore();
                }
                r.run("HDEL+DEL", async move {
                    pipe.query_async::<(u64,)>(&mut c).await
                })
                .await
                .map(|(n,)| n > 0)
            }
            SharedState::Memory(m) => {
                Ok(m.hdel_and_clear(account::keys::SUSPENDED, account, counters))
            }
        }
    }

    /// The account's overrides: limit name → value.
    pub async fn account_overrides(
        &self,
        account: &str,
    ) -> Result<std::collections::BTreeMap<String, u64>> {
        let key = account::keys::overrides(account);
        let raw = match self {
            SharedState::Redis(r) => {
                let mut c = r.conn();
                let k = r.key(&key);
                r.run("HGETALL", async move {
                    c.hgetall::<_, std::collections::BTreeMap<String, Vec<u8>>>(k)
                        .await
                })
                .await?
            }
            SharedState::Memory(m) => m.hget_all(&key),
        };
        Ok(raw
            .into_iter()
            .filter_map(|(k, v)| Some((k, std::str::from_utf8(&v).ok()?.parse().ok()?)))
            .collect())
    }

    /// Set the overrides in `set`, remove those in `remove` (or all first,
    /// with `clear`), atomically. They are kept until changed: no expiry.
    pub async fn set_account_overrides(
        &self,
        account: &str,
        set: &[(String, u64)],
        remove: &[String],
        clear: bool,
    ) -> Result<()> {
        let key = account::keys::overrides(account);
        match self {
            SharedState::Redis(r) => {
                let mut c = r.conn();
                let k = r.key(&key);
                let mut pipe = redis::pipe();
                pipe.atomic();
                if clear {
                    pipe.cmd("DEL").arg(&k).ignore();
                }
                for f in remove {
                    pipe.cmd("HDEL").arg(&k).arg(f).ignore();
                }
                for (f, v) in set {
                    pipe.cmd("HSET").arg(&k).arg(f).arg(*v).ignore();
                }
                r.run("HSET overrides", async move {
                    pipe.query_async::<()>(&mut c).await
                })
                .await
            }
            SharedState::Memory(m) => {
                let set: Vec<(String, Vec<u8>)> = set
                    .iter()
                    .map(|(f, v)| (f.clone(), v.to_string().into_bytes()))
                    .collect();
                m.hupdate(&key, &set, remove, clear);
                Ok(())
            }
        }
    }

    /// What an account has used of each window (sliding estimates), with
    /// the effective limits (overrides applied).
    pub async fn account_usage(
        &self,
        account: &str,
        windows: &[account::WindowLimit],
    ) -> Result<Vec<account::WindowCounts>> {
        use account::keys;
        let now_ms = now_micros() / 1000;
        let mut names = Vec::new();
        for w in windows {
            let (b, _) = account::bucket(now_ms, w.window);
            let prev = b.saturating_sub(1);
            for (kind, bucket) in [("acc", b), ("acc", prev), ("att", b), ("att", prev)] {
                names.push(keys::counter(kind, account, &w.name, bucket));
            }
        }
        let values: Vec<u64> = match self {
            SharedState::Redis(r) => {
                let mut c = r.conn();
                let ks: Vec<String> = names.iter().map(|k| r.key(k)).collect();
                r.run("MGET", async move {
                    redis::cmd("MGET")
                        .arg(ks)
                        .query_async::<Vec<Option<u64>>>(&mut c)
                        .await
                })
                .await?
                .into_iter()
                .map(|v| v.unwrap_or(0))
                .collect()
            }
            SharedState::Memory(m) => m.counters(&names),
        };
        let overrides = self.account_overrides(account).await?;
        Ok(windows
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let (_, weight) = account::bucket(now_ms, w.window);
                let v = &values[i * 4..i * 4 + 4];
                account::WindowCounts {
                    accepted: account::estimate(v[0], v[1], weight),
                    attempts: account::estimate(v[2], v[3], weight),
                    limit: overrides.get(&w.name).copied().unwrap_or(w.limit),
                }
            })
            .collect())
    }

    /// The current time in ms, as the counters see it (for key names).
    pub fn now_ms() -> u64 {
        now_micros() / 1000
    }
}

async fn futures_next(iter: &mut redis::AsyncIter<'_, String>) -> Option<String> {
    match iter.next_item().await {
        Some(Ok(k)) => Some(k),
        _ => None,
    }
}

impl RedisState {
    fn key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(&self.prefix);
        k.push_str(key);
        k
    }

    /// One store operation with its deadline, its span (OpenTelemetry
    /// database conventions) and its latency metric.
    fn conn(&self) -> ConnectionManager {
        self.conn.get()
    }

    async fn run<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        use tracing::Instrument;
        let span = tracing::info_span!("redis", otel.name = %format!("redis {op}"), otel.kind = "client", db.system = "redis", db.operation = op);
        let started = std::time::Instant::now();
        let res = tokio::time::timeout(self.timeout, fut)
            .instrument(span)
            .await;
        authrelay_telemetry::metrics::observe(
            &authrelay_telemetry::metrics::METRICS.redis_duration,
            op,
            started.elapsed(),
        );
        match res {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.kind() == redis::ErrorKind::AuthenticationFailed {
                    self.conn.login_refused();
                }
                Err(StateError::Unavailable(e.to_string()))
            }
            Err(_) => Err(StateError::Unavailable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }
}

/// Why Redis refused to let us in, when that is what `e` says: a wrong
/// user or password, or a Redis that wants credentials we were not given.
/// The message names the settings to fix, never the password.
fn auth_refusal(e: &redis::RedisError, auth: &RedisAuth) -> Option<String> {
    let user = auth.username.as_deref().unwrap_or("default");
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOPERM"))
    {
        Some(format!(
            "user `{user}`: {e} (check redis.username, redis.password_file and the Redis ACL)"
        ))
    } else if e.code() == Some("NOAUTH") {
        Some(format!(
            "{e} (Redis requires a password: set redis.password_file{})",
            if auth.password.is_some() {
                ", and check the Redis ACL"
            } else {
                ""
            }
        ))
    } else {
        None
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // Process id in the high bits keeps members distinct across replicas.
    (u64::from(std::process::id()) << 32) | (COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff)
}

#[cfg(test)]
mod tests;
