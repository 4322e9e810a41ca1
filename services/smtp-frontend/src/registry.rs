//! Live sessions, visible across frontends.
//!
//! Each frontend keeps its sessions in memory and publishes a snapshot to
//! the shared store every two seconds under its instance id (one write per
//! frontend, whatever the number of sessions, so 10,000 idle connections
//! cost nothing per connection). `authrelay sessions` merges the snapshots
//! of every frontend. Ending a session is a request queued for the owning
//! instance, which closes it with `421`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use authrelay_proto::frontend::v1 as pb;
use authrelay_state::SharedState;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::admin_error::AdminError;

const PUBLISH_EVERY: Duration = Duration::from_secs(2);
const SNAPSHOT_TTL: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub instance: String,
    pub client_address: String,
    pub listener: String,
    pub tls_version: String,
    pub tls_cipher: String,
    pub auth_id: String,
    pub mechanism: String,
    pub started_at: i64,
}

impl From<SessionRecord> for pb::SessionInfo {
    fn from(r: SessionRecord) -> Self {
        pb::SessionInfo {
            id: r.id,
            instance: r.instance,
            client_address: r.client_address,
            listener: r.listener,
            tls_version: r.tls_version,
            tls_cipher: r.tls_cipher,
            auth_id: r.auth_id,
            mechanism: r.mechanism,
            started_at: r.started_at,
        }
    }
}

struct Live {
    record: SessionRecord,
    end: Arc<Notify>,
    /// The authenticated account (authcid), for closing its sessions.
    account: String,
    ending: Ending,
}

/// The reply a session ends with when it is ended from outside (None:
/// the operator's `sessions end`).
pub type Ending = Arc<Mutex<Option<authrelay_smtp::Reply>>>;

pub struct Registry {
    pub instance: String,
    state: SharedState,
    live: Mutex<HashMap<String, Live>>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Held by a session: unregisters it (and frees its per-address slot) on drop.
pub struct Registration {
    registry: Arc<Registry>,
    id: String,
    ip: IpAddr,
    pub end: Arc<Notify>,
    pub ending: Ending,
}

impl Drop for Registration {
    fn drop(&mut self) {
        Registry::lock(&self.registry.live).remove(&self.id);
        let mut per_ip = Registry::lock(&self.registry.per_ip);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Registry {
    pub fn new(state: SharedState) -> Arc<Self> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let rnd: u32 = rand::random();
        Arc::new(Registry {
            instance: format!("{}-{}-{rnd:08x}", host.trim(), std::process::id()),
            state,
            live: Mutex::new(HashMap::new()),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a new session; None when `ip` already holds `max_per_ip`.
    pub fn register(
        self: &Arc<Self>,
        id: &str,
        peer: std::net::SocketAddr,
        listener: &str,
        max_per_ip: usize,
    ) -> Option<Registration> {
        {
            let mut per_ip = Self::lock(&self.per_ip);
            let n = per_ip.entry(peer.ip()).or_insert(0);
            if *n >= max_per_ip {
                return None;
            }
            *n += 1;
        }
        let end = Arc::new(Notify::new());
        let ending = Ending::default();
        let record = SessionRecord {
            id: id.to_owned(),
            instance: self.instance.clone(),
            client_address: peer.to_string(),
            listener: listener.to_owned(),
            started_at: now(),
            ..Default::default()
        };
        Self::lock(&self.live).insert(
            id.to_owned(),
            Live {
                record,
                end: end.clone(),
                account: String::new(),
                ending: ending.clone(),
            },
        );
        Some(Registration {
            registry: self.clone(),
            id: id.to_owned(),
            ip: peer.ip(),
            end,
            ending,
        })
    }

    pub fn update(&self, id: &str, f: impl FnOnce(&mut SessionRecord)) {
        if let Some(l) = Self::lock(&self.live).get_mut(id) {
            f(&mut l.record);
        }
    }

    /// The account a session authenticated as (its authcid).
    pub fn set_account(&self, id: &str, account: &str) {
        if let Some(l) = Self::lock(&self.live).get_mut(id) {
            l.account = account.to_owned();
        }
    }

    /// End every session of `account` on this frontend with `reply`;
    /// how many there were.
    pub fn end_account(&self, account: &str, reply: authrelay_smtp::Reply) -> usize {
        let live = Self::lock(&self.live);
        let mut n = 0;
        for l in live.values().filter(|l| l.account == account) {
            *Self::lock(&l.ending) = Some(reply.clone());
            l.end.notify_one();
            n += 1;
        }
        n
    }

    pub fn live_count(&self) -> usize {
        Self::lock(&self.live).len()
    }

    fn snapshot_key(instance: &str) -> String {
        format!("fe:instance:{instance}")
    }

    fn kill_key(instance: &str) -> String {
        format!("fe:kill:{instance}")
    }

    /// Publish snapshots and act on end requests until the process stops.
    pub async fn run(self: Arc<Self>) {
        loop {
            let records: Vec<SessionRecord> = Self::lock(&self.live)
                .values()
                .map(|l| l.record.clone())
                .collect();
            if let Ok(bytes) = serde_json::to_vec(&records)
                && let Err(e) = self
                    .state
                    .put(&Self::snapshot_key(&self.instance), &bytes, SNAPSHOT_TTL)
                    .await
            {
                tracing::debug!(error = %e, "cannot publish sessions");
            }
            if let Ok(requests) = self.state.drain(&Self::kill_key(&self.instance)).await {
                let live = Self::lock(&self.live);
                for id in requests {
                    let id = String::from_utf8_lossy(&id).into_owned();
                    if let Some(l) = live.get(&id) {
                        tracing::info!(session = %id, "session ended by operator");
                        l.end.notify_one();
                    }
                }
            }
            tokio::time::sleep(PUBLISH_EVERY).await;
        }
    }

    /// Every frontend's live sessions.
    pub async fn list_all(&self) -> Result<Vec<SessionRecord>, authrelay_state::StateError> {
        let mut out = Vec::new();
        for key in self.state.keys("fe:instance:").await? {
            if let Some(bytes) = self.state.get(&key).await?
                && let Ok(mut records) = serde_json::from_slice::<Vec<SessionRecord>>(&bytes)
            {
                out.append(&mut records);
            }
        }
        out.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
        Ok(out)
    }

    /// Queue an end request for the instance holding `id`.
    pub async fn end(&self, id: &str) -> Result<bool, authrelay_state::StateError> {
        let Some(rec) = self.list_all().await?.into_iter().find(|r| r.id == id) else {
            return Ok(false);
        };
        self.state
            .push(&Self::kill_key(&rec.instance), id.as_bytes(), SNAPSHOT_TTL)
            .await?;
        Ok(true)
    }
}

pub struct SessionsService {
    pub registry: Arc<Registry>,
}

#[tonic::async_trait]
impl pb::sessions_server::Sessions for SessionsService {
    async fn list_sessions(
        &self,
        _req: tonic::Request<pb::ListSessionsRequest>,
    ) -> Result<tonic::Response<pb::ListSessionsResponse>, tonic::Status> {
        let records = self.registry.list_all().await.map_err(AdminError::from)?;
        Ok(tonic::Response::new(pb::ListSessionsResponse {
            sessions: records.into_iter().map(Into::into).collect(),
        }))
    }

    async fn end_session(
        &self,
        req: tonic::Request<pb::EndSessionRequest>,
    ) -> Result<tonic::Response<pb::EndSessionResponse>, tonic::Status> {
        let found = self
            .registry
            .end(&req.into_inner().id)
            .await
            .map_err(AdminError::from)?;
        Ok(tonic::Response::new(pb::EndSessionResponse { found }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ending_an_account_ends_only_its_sessions_and_says_why() {
        let registry = Registry::new(SharedState::in_process());
        let peer: std::net::SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let a = registry.register("A", peer, "submission", 10).unwrap();
        let b = registry.register("B", peer, "submission", 10).unwrap();
        let c = registry.register("C", peer, "submission", 10).unwrap();
        registry.set_account("A", "alice@r");
        registry.set_account("B", "bob@r");
        registry.set_account("C", "alice@r");
        let why = authrelay_smtp::Reply::new(421, "4.7.1", "suspended");
        assert_eq!(registry.end_account("alice@r", why.clone()), 2);
        assert_eq!(a.ending.lock().unwrap().as_ref(), Some(&why));
        assert_eq!(c.ending.lock().unwrap().as_ref(), Some(&why));
        assert!(b.ending.lock().unwrap().is_none());
        assert_eq!(registry.end_account("nobody@r", why), 0);
    }
}
