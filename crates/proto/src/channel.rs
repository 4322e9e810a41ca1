//! Dialling another service. Every service-to-service client goes through
//! here, so timeouts, balancing and mutual TLS are decided once.
//!
//! Balancing is per request (tower's p2c over one connection per replica),
//! not per connection: a Kubernetes ClusterIP would pin each client to the
//! one pod its single connection landed on. Each endpoint host name is
//! re-resolved every few seconds — a headless Service name resolves to every
//! ready pod — and replicas that stop accepting connections leave the set
//! within a second, so requests follow pods as they come and go.
//!
//! A `unix:/path/to.sock` endpoint dials a Unix-domain socket instead: for
//! services on one host or in one pod, where it skips the kernel's TCP
//! stack on every message (Postfix talks to Dovecot's auth the same way).
//! It stands alone — there is nothing to resolve or balance — and is plain
//! HTTP/2: the socket file's permissions are its access control.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tonic::transport::channel::Change;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Uri};

/// How often host names are looked up again (a headless Service's DNS TTL
/// is a few seconds; pods appear in it once ready).
pub const RESOLVE_EVERY: Duration = Duration::from_secs(5);
/// How often each resolved address is checked for accepting connections.
/// A killed pod lingers in DNS until its endpoint is removed; without this,
/// p2c would keep sending it a share of the requests, each failing at once.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The client side of mutual TLS, which may change while the process runs
/// (certificates renewed on disk): the channel asks it again every
/// [`PROBE_EVERY`] and re-dials every replica when the generation changes.
pub trait ClientTlsSource: Send + Sync + 'static {
    /// The settings now (client certificate and CA, no server name), and a
    /// number that changes whenever they do.
    fn current(&self) -> (u64, ClientTlsConfig);
}

/// Settings that never change.
impl ClientTlsSource for ClientTlsConfig {
    fn current(&self) -> (u64, ClientTlsConfig) {
        (0, self.clone())
    }
}

/// A lazily connected channel to one or more replicas of a service, in
/// plain text (`http://` URLs). See [`balanced_channel`].
pub fn lazy_channel(urls: &[String], timeout: Duration) -> Result<Channel, String> {
    balanced_channel(urls, timeout, None)
}

/// A lazily connected channel to every replica behind `urls`.
///
/// Lazy: a service whose peer is down still starts, and calls fail with
/// `Unavailable` until the peer is back, then recover with no restart.
/// `tls` is used for `https://` URLs; the server name checked is the URL's
/// host, also when the connection goes to an address that host resolved to.
pub fn balanced_channel(
    urls: &[String],
    timeout: Duration,
    tls: Option<Arc<dyn ClientTlsSource>>,
) -> Result<Channel, String> {
    match plan(urls, timeout, tls)? {
        Plan::Fixed(channel) => Ok(channel),
        Plan::Discover(targets, settings) => {
            let (channel, tx) = Channel::balance_channel(targets.len() * 4 + 16);
            let mut discovery = Discovery::new(targets, settings, Sink::Balancer(tx));
            discovery.seed()?;
            tokio::spawn(discovery.run());
            Ok(channel)
        }
    }
}

/// How `urls` are dialled.
enum Plan {
    /// One `unix:` socket or one plain address: nothing to balance, follow
    /// or reload.
    Fixed(Channel),
    /// Names to resolve, replicas to probe, TLS to reload.
    Discover(Vec<Target>, Settings),
}

fn plan(
    urls: &[String],
    timeout: Duration,
    tls: Option<Arc<dyn ClientTlsSource>>,
) -> Result<Plan, String> {
    if let [one] = urls
        && let Some(path) = unix_path(one)?
    {
        return Ok(Plan::Fixed(unix_channel(path, timeout)));
    }
    let targets = urls
        .iter()
        .map(|u| Target::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    let settings = Settings { timeout, tls };
    match targets.as_slice() {
        [] => Err("no endpoint configured".into()),
        [one] if one.ip.is_some() && !one.https => {
            Ok(Plan::Fixed(settings.endpoint(one, None)?.connect_lazy()))
        }
        _ => Ok(Plan::Discover(targets, settings)),
    }
}

/// One replica as [`replica_set`] publishes it.
#[derive(Clone)]
pub struct Replica {
    /// The address it dials (or the URL while its name resolves to nothing).
    pub name: String,
    /// Unique for the life of the process: a new one means a new channel
    /// (a replica that came back, or one re-dialled with renewed TLS).
    pub id: u64,
    /// Lazily connected, to this replica alone.
    pub channel: Channel,
}

/// The replicas behind `urls` as they come and go, each with a channel of
/// its own: the same set, resolved, probed and re-dialled on renewed TLS,
/// that [`balanced_channel`] balances over, for callers that keep
/// long-lived streams per replica and balance their messages themselves
/// (sasl-auth's Exchange streams). The set is never empty.
pub fn replica_set(
    urls: &[String],
    timeout: Duration,
    tls: Option<Arc<dyn ClientTlsSource>>,
) -> Result<watch::Receiver<Arc<Vec<Replica>>>, String> {
    match plan(urls, timeout, tls)? {
        Plan::Fixed(channel) => {
            let one = Replica {
                name: urls[0].clone(),
                id: next_replica_id(),
                channel,
            };
            // The sender is dropped: the set never changes.
            Ok(watch::channel(Arc::new(vec![one])).1)
        }
        Plan::Discover(targets, settings) => {
            let (tx, rx) = watch::channel(Arc::new(Vec::new()));
            let sink = Sink::Replicas {
                tx,
                held: BTreeMap::new(),
            };
            let mut discovery = Discovery::new(targets, settings, sink);
            discovery.seed()?;
            tokio::spawn(discovery.run());
            Ok(rx)
        }
    }
}

fn next_replica_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// One lazily connected channel per replica behind `urls`, each labelled
/// with the address it dials: for the admin commands that must reach every
/// replica rather than any one (each relay-queue has a spool of its own).
/// A host name is looked up once, now; a `unix:` endpoint stands alone.
pub async fn replica_channels(
    urls: &[String],
    timeout: Duration,
    tls: Option<Arc<dyn ClientTlsSource>>,
) -> Result<Vec<(String, Channel)>, String> {
    if let [one] = urls
        && let Some(path) = unix_path(one)?
    {
        return Ok(vec![(one.clone(), unix_channel(path, timeout))]);
    }
    let settings = Settings { timeout, tls };
    let mut out = Vec::new();
    for url in urls {
        let target = Target::parse(url)?;
        let addrs = match target.ip {
            Some(ip) => vec![SocketAddr::new(ip, target.port)],
            None => {
                let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
                let mut addrs: Vec<SocketAddr> =
                    tokio::time::timeout(Duration::from_secs(5), lookup)
                        .await
                        .map_err(|_| format!("{url}: name lookup timed out"))?
                        .map_err(|e| format!("{url}: {e}"))?
                        .collect();
                addrs.sort();
                addrs.dedup();
                addrs
            }
        };
        for addr in addrs {
            let channel = settings.endpoint(&target, Some(addr))?.connect_lazy();
            out.push((addr.to_string(), channel));
        }
    }
    if out.is_empty() {
        return Err("no endpoint configured".into());
    }
    Ok(out)
}

/// The socket path of a `unix:/path` (or `unix:///path`) endpoint; None for
/// any other URL. Err for a relative path.
pub fn unix_path(url: &str) -> Result<Option<PathBuf>, String> {
    let Some(rest) = url.strip_prefix("unix:") else {
        return Ok(None);
    };
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if !Path::new(path).is_absolute() {
        return Err(format!(
            "bad endpoint {url:?}: a unix: endpoint needs an absolute path, e.g. unix:/run/authrelay/sasl-auth.sock"
        ));
    }
    Ok(Some(PathBuf::from(path)))
}

/// A lazily connected channel over the Unix socket at `path`.
fn unix_channel(path: PathBuf, timeout: Duration) -> Channel {
    // The URI only names the HTTP/2 authority; the connector ignores it.
    Endpoint::from_static("http://localhost")
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
}

/// One configured URL.
#[derive(Clone, Debug)]
struct Target {
    uri: Uri,
    https: bool,
    host: String,
    port: u16,
    /// The host is an address literal: no DNS to follow.
    ip: Option<IpAddr>,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        if url.starts_with("unix:") {
            return Err(format!(
                "bad endpoint {url:?}: a unix: endpoint must be the only one for its service"
            ));
        }
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("bad endpoint {url:?}: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(format!(
                    "bad endpoint {url:?}: must be http://, https:// or unix:/path"
                ));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("bad endpoint {url:?}: no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let ip = host.parse().ok();
        Ok(Target {
            uri,
            https,
            host,
            port,
            ip,
        })
    }
}

#[derive(Clone)]
struct Settings {
    timeout: Duration,
    tls: Option<Arc<dyn ClientTlsSource>>,
}

impl Settings {
    /// The endpoint for `target`, dialling `addr` when given (a resolved
    /// address) while keeping the target's host as HTTP/2 authority and as
    /// the TLS server name, so certificates name services, not pod IPs.
    fn endpoint(&self, target: &Target, addr: Option<SocketAddr>) -> Result<Endpoint, String> {
        let scheme = if target.https { "https" } else { "http" };
        let mut ep = match addr {
            Some(a) => Endpoint::from_shared(format!("{scheme}://{a}"))
                .map_err(|e| format!("bad endpoint {a}: {e}"))?
                .origin(target.uri.clone()),
            None => Endpoint::from(target.uri.clone()),
        };
        if target.https {
            let (_, tls) = self.tls.as_ref().map(|t| t.current()).ok_or_else(|| {
                format!(
                    "endpoint {} is https:// but no client TLS is configured (internal_tls)",
                    target.uri
                )
            })?;
            ep = ep
                .tls_config(tls.domain_name(target.host.clone()))
                .map_err(|e| format!("endpoint {}: TLS: {e}", target.uri))?;
        }
        Ok(ep
            .connect_timeout(self.timeout.min(Duration::from_secs(5)))
            .timeout(self.timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true))
    }
}

/// What the balancer holds: one connection per (configured URL, address),
/// or the URL itself while its name resolves to nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Key {
    Addr(usize, SocketAddr),
    Name(usize),
}

/// The set the balancer should hold. Live addresses when there are any; if
/// no replica accepts connections, every known one (calls then fail fast
/// with `Unavailable` instead of waiting on an empty balancer), and a URL
/// whose name resolved to nothing stands for itself for the same reason.
fn desired(resolved: &[Vec<SocketAddr>], alive: &BTreeMap<SocketAddr, bool>) -> BTreeSet<Key> {
    let all: BTreeSet<Key> = resolved
        .iter()
        .enumerate()
        .flat_map(|(i, addrs)| addrs.iter().map(move |a| Key::Addr(i, *a)))
        .collect();
    let live: BTreeSet<Key> = all
        .iter()
        .copied()
        .filter(|k| match k {
            Key::Addr(_, a) => alive.get(a).copied().unwrap_or(true),
            Key::Name(_) => true,
        })
        .collect();
    if !live.is_empty() {
        return live;
    }
    let mut keep = all;
    keep.extend(
        resolved
            .iter()
            .enumerate()
            .filter(|(_, a)| a.is_empty())
            .map(|(i, _)| Key::Name(i)),
    );
    keep
}

/// Where [`Discovery`] sends the set.
enum Sink {
    /// A tonic balancer, told of each change.
    Balancer(mpsc::Sender<Change<Key, Endpoint>>),
    /// Watchers of the whole set ([`replica_set`]), a channel per replica.
    Replicas {
        tx: watch::Sender<Arc<Vec<Replica>>>,
        held: BTreeMap<Key, Replica>,
    },
}

impl Sink {
    fn is_closed(&self) -> bool {
        match self {
            Sink::Balancer(tx) => tx.is_closed(),
            Sink::Replicas { tx, .. } => tx.is_closed(),
        }
    }

    /// Err: nobody listens any more.
    async fn insert(&mut self, key: Key, name: String, ep: Endpoint) -> Result<(), ()> {
        match self {
            Sink::Balancer(tx) => tx.send(Change::Insert(key, ep)).await.map_err(|_| ()),
            Sink::Replicas { held, .. } => {
                let channel = ep.connect_lazy();
                let id = next_replica_id();
                held.insert(key, Replica { name, id, channel });
                Ok(())
            }
        }
    }

    async fn remove(&mut self, key: Key) -> Result<(), ()> {
        match self {
            Sink::Balancer(tx) => tx.send(Change::Remove(key)).await.map_err(|_| ()),
            Sink::Replicas { held, .. } => {
                held.remove(&key);
                Ok(())
            }
        }
    }

    /// Watchers see the set once a round of changes is made.
    fn publish(&mut self) {
        if let Sink::Replicas { tx, held } = self {
            let now: Vec<Replica> = held.values().cloned().collect();
            let ids = |v: &[Replica]| v.iter().map(|r| r.id).collect::<Vec<_>>();
            if ids(&now) != ids(&tx.borrow()) {
                tx.send_replace(Arc::new(now));
            }
        }
    }
}

struct Discovery {
    targets: Vec<Target>,
    settings: Settings,
    tx: Sink,
    resolved: Vec<Vec<SocketAddr>>,
    alive: BTreeMap<SocketAddr, bool>,
    current: BTreeSet<Key>,
    /// The TLS settings' generation the current connections were made with.
    tls_generation: u64,
}

impl Discovery {
    fn new(targets: Vec<Target>, settings: Settings, tx: Sink) -> Discovery {
        let resolved = targets
            .iter()
            .map(|t| {
                t.ip.map(|ip| vec![SocketAddr::new(ip, t.port)])
                    .unwrap_or_default()
            })
            .collect();
        let tls_generation = settings.tls.as_ref().map_or(0, |t| t.current().0);
        Discovery {
            targets,
            settings,
            tx,
            resolved,
            alive: BTreeMap::new(),
            current: BTreeSet::new(),
            tls_generation,
        }
    }

    /// The first set, before any lookup: requests made right after start-up
    /// find something to go to (or to fail on) instead of waiting.
    fn seed(&mut self) -> Result<(), String> {
        for key in desired(&self.resolved, &self.alive) {
            let ep = self.endpoint(key)?;
            let name = self.name(key);
            match &mut self.tx {
                Sink::Balancer(tx) => tx
                    .try_send(Change::Insert(key, ep))
                    .map_err(|e| format!("balancer: {e}"))?,
                Sink::Replicas { held, .. } => {
                    let (id, channel) = (next_replica_id(), ep.connect_lazy());
                    held.insert(key, Replica { name, id, channel });
                }
            }
            self.current.insert(key);
        }
        self.tx.publish();
        Ok(())
    }

    fn name(&self, key: Key) -> String {
        match key {
            Key::Addr(_, a) => a.to_string(),
            Key::Name(i) => self.targets[i].uri.to_string(),
        }
    }

    fn endpoint(&self, key: Key) -> Result<Endpoint, String> {
        match key {
            Key::Addr(i, a) => self.settings.endpoint(&self.targets[i], Some(a)),
            Key::Name(i) => self.settings.endpoint(&self.targets[i], None),
        }
    }

    async fn run(mut self) {
        let mut last_resolve: Option<tokio::time::Instant> = None;
        loop {
            if self.tx.is_closed() {
                return; // every clone of the channel is gone
            }
            if last_resolve.is_none_or(|t| t.elapsed() >= RESOLVE_EVERY) {
                self.resolve().await;
                last_resolve = Some(tokio::time::Instant::now());
            }
            self.probe().await;
            if self.apply().await.is_err() || self.retls().await.is_err() {
                return;
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    /// Look every host name up again. A failed lookup keeps what the name
    /// resolved to before: a DNS hiccup must not empty the balancer.
    async fn resolve(&mut self) {
        for (i, t) in self.targets.iter().enumerate() {
            if t.ip.is_some() {
                continue;
            }
            let lookup = tokio::net::lookup_host((t.host.as_str(), t.port));
            match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                Ok(Ok(addrs)) => {
                    let mut addrs: Vec<SocketAddr> = addrs.collect();
                    addrs.sort();
                    addrs.dedup();
                    if addrs != self.resolved[i] {
                        tracing::info!(host = %t.host, addresses = ?addrs, "endpoint resolved");
                    }
                    self.resolved[i] = addrs;
                }
                Ok(Err(e)) => {
                    tracing::debug!(host = %t.host, error = %e, "endpoint lookup failed")
                }
                Err(_) => tracing::debug!(host = %t.host, "endpoint lookup timed out"),
            }
        }
    }

    /// Does each address accept a TCP connection? Refused (a killed or
    /// stopped replica) answers at once; a silent one gets a second.
    async fn probe(&mut self) {
        let addrs: BTreeSet<SocketAddr> = self.resolved.iter().flatten().copied().collect();
        let mut set = tokio::task::JoinSet::new();
        for a in addrs {
            set.spawn(async move {
                let ok =
                    tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(a))
                        .await
                        .is_ok_and(|r| r.is_ok());
                (a, ok)
            });
        }
        let mut alive = BTreeMap::new();
        while let Some(Ok((a, ok))) = set.join_next().await {
            if self.alive.get(&a).is_some_and(|was| *was != ok) {
                tracing::info!(address = %a, accepting = ok, "endpoint changed");
            }
            alive.insert(a, ok);
        }
        self.alive = alive;
    }

    /// Tell the balancer what changed. Err: the balancer is gone.
    async fn apply(&mut self) -> Result<(), ()> {
        let want = desired(&self.resolved, &self.alive);
        for key in self.current.difference(&want).copied().collect::<Vec<_>>() {
            self.tx.remove(key).await?;
            self.current.remove(&key);
        }
        for key in want.difference(&self.current).copied().collect::<Vec<_>>() {
            match self.endpoint(key) {
                Ok(ep) => {
                    let name = self.name(key);
                    self.tx.insert(key, name, ep).await?;
                    self.current.insert(key);
                }
                Err(e) => tracing::warn!(error = %e, "endpoint skipped"),
            }
        }
        self.tx.publish();
        Ok(())
    }

    /// Renewed TLS files: dial every replica again with them. Inserting a
    /// key the balancer holds replaces its connection once the new one is
    /// ready; calls in flight finish on the old.
    async fn retls(&mut self) -> Result<(), ()> {
        let Some(generation) = self.settings.tls.as_ref().map(|t| t.current().0) else {
            return Ok(());
        };
        if generation == self.tls_generation {
            return Ok(());
        }
        self.tls_generation = generation;
        tracing::info!("internal_tls renewed: reconnecting to every replica");
        for key in self.current.iter().copied().collect::<Vec<_>>() {
            match self.endpoint(key) {
                Ok(ep) => {
                    let name = self.name(key);
                    self.tx.insert(key, name, ep).await?
                }
                Err(e) => tracing::warn!(error = %e, "endpoint kept on its old TLS settings"),
            }
        }
        self.tx.publish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn unix_endpoints_name_an_absolute_socket_path_and_stand_alone() {
        assert_eq!(
            unix_path("unix:/run/a.sock").unwrap(),
            Some(PathBuf::from("/run/a.sock"))
        );
        assert_eq!(
            unix_path("unix:///run/a.sock").unwrap(),
            Some(PathBuf::from("/run/a.sock"))
        );
        assert_eq!(unix_path("http://127.0.0.1:1").unwrap(), None);
        assert!(
            unix_path("unix:run/a.sock")
                .unwrap_err()
                .contains("absolute")
        );
        let err = balanced_channel(
            &["unix:/run/a.sock".into(), "http://127.0.0.1:1".into()],
            Duration::from_secs(1),
            None,
        )
        .unwrap_err();
        assert!(err.contains("only one"), "{err}");
    }

    #[test]
    fn dead_replicas_leave_the_set_while_one_lives() {
        let resolved = vec![vec![a("127.0.0.1:1"), a("127.0.0.2:1")], vec![]];
        let alive = BTreeMap::from([(a("127.0.0.1:1"), false), (a("127.0.0.2:1"), true)]);
        assert_eq!(
            desired(&resolved, &alive),
            BTreeSet::from([Key::Addr(0, a("127.0.0.2:1"))])
        );
    }

    #[test]
    fn with_no_live_replica_every_known_one_stays_so_calls_fail_fast() {
        let resolved = vec![vec![a("127.0.0.1:1")], vec![]];
        let alive = BTreeMap::from([(a("127.0.0.1:1"), false)]);
        assert_eq!(
            desired(&resolved, &alive),
            BTreeSet::from([Key::Addr(0, a("127.0.0.1:1")), Key::Name(1)])
        );
        assert_eq!(
            desired(&[vec![]], &BTreeMap::new()),
            BTreeSet::from([Key::Name(0)])
        );
    }

    #[test]
    fn unprobed_addresses_count_as_live() {
        let resolved = vec![vec![a("[::1]:7"), a("127.0.0.1:7")]];
        assert_eq!(desired(&resolved, &BTreeMap::new()).len(), 2);
    }

    #[test]
    fn endpoint_dials_the_address_but_keeps_the_host_name() {
        let t = Target::parse("https://sasl-auth-headless:7341").unwrap();
        assert_eq!(t.host, "sasl-auth-headless");
        assert!(t.ip.is_none());
        let s = Settings {
            timeout: Duration::from_secs(1),
            tls: Some(Arc::new(ClientTlsConfig::new())),
        };
        let ep = s.endpoint(&t, Some(a("10.0.0.7:7341"))).unwrap();
        assert_eq!(ep.uri().to_string(), "https://10.0.0.7:7341/");
        let no_tls = Settings {
            timeout: Duration::from_secs(1),
            tls: None,
        };
        assert!(no_tls.endpoint(&t, None).is_err(), "https without TLS");
        let v6 = Target::parse("http://[::1]:7341").unwrap();
        assert_eq!(v6.ip, Some("::1".parse().unwrap()));
    }

    /// Real name resolution and real listeners: `localhost` resolves (to
    /// 127.0.0.1 and/or ::1), each address with a listener joins the set,
    /// a replica that stops listening leaves it, and comes back when it
    /// listens again.
    #[tokio::test]
    async fn localhost_is_resolved_and_replicas_follow_their_listeners() {
        let first = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p1 = first.local_addr().unwrap().port();
        let second = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p2 = second.local_addr().unwrap().port();
        let urls = [
            format!("http://localhost:{p1}"),
            format!("http://localhost:{p2}"),
        ];
        let targets: Vec<Target> = urls.iter().map(|u| Target::parse(u).unwrap()).collect();
        let (tx, mut rx) = mpsc::channel(64);
        let settings = Settings {
            timeout: Duration::from_secs(1),
            tls: None,
        };
        let mut d = Discovery::new(targets, settings, Sink::Balancer(tx));
        d.seed().unwrap();
        let seeded: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert!(
            matches!(
                seeded.as_slice(),
                [
                    Change::Insert(Key::Name(0), _),
                    Change::Insert(Key::Name(1), _)
                ]
            ),
            "before the first lookup each name stands for itself: {:?}",
            seeded.iter().map(describe).collect::<Vec<_>>()
        );

        let localhost: Vec<IpAddr> = tokio::net::lookup_host(("localhost", 0))
            .await
            .unwrap()
            .map(|a| a.ip())
            .collect();
        assert!(
            localhost.iter().any(IpAddr::is_ipv4),
            "localhost resolves to no IPv4 address: {localhost:?}"
        );
        d.resolve().await;
        d.probe().await;
        d.apply().await.unwrap();
        let live = |p: u16| {
            localhost
                .iter()
                .filter(|ip| ip.is_ipv4())
                .map(move |ip| SocketAddr::new(*ip, p))
        };
        let mut expect: BTreeSet<Key> = live(p1).map(|a| Key::Addr(0, a)).collect();
        expect.extend(live(p2).map(|a| Key::Addr(1, a)));
        assert_eq!(d.current, expect, "only addresses with a listener");
        let changes: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|c| describe(&c))
            .collect();
        assert!(
            changes.contains(&"remove Name(0)".to_owned()),
            "{changes:?}"
        );
        assert!(
            changes.contains(&format!(
                "insert Addr(1, 127.0.0.1:{p2}) http://127.0.0.1:{p2}/"
            )),
            "{changes:?}"
        );

        // The second replica stops: it leaves the set, the first stays.
        drop(second);
        d.probe().await;
        d.apply().await.unwrap();
        let changes: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|c| describe(&c))
            .collect();
        assert_eq!(changes, [format!("remove Addr(1, 127.0.0.1:{p2})")]);

        // It comes back on the same address: it rejoins.
        let _again = tokio::net::TcpListener::bind(("127.0.0.1", p2))
            .await
            .unwrap();
        d.probe().await;
        d.apply().await.unwrap();
        let changes: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|c| describe(&c))
            .collect();
        assert_eq!(
            changes,
            [format!(
                "insert Addr(1, 127.0.0.1:{p2}) http://127.0.0.1:{p2}/"
            )]
        );
        drop(first);
    }

    /// The replica set for streams per replica: the same live addresses,
    /// each with a channel of its own, published when they change, and a
    /// replica that stops listening leaves it; one that stays keeps its id
    /// (so its streams are kept).
    #[tokio::test]
    async fn the_replica_set_follows_listeners_and_keeps_a_staying_replica() {
        let first = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a1 = first.local_addr().unwrap();
        let second = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a2 = second.local_addr().unwrap();
        let urls = [format!("http://{a1}"), format!("http://{a2}")];
        let targets: Vec<Target> = urls.iter().map(|u| Target::parse(u).unwrap()).collect();
        let (tx, rx) = watch::channel(Arc::new(Vec::new()));
        let settings = Settings {
            timeout: Duration::from_secs(1),
            tls: None,
        };
        let sink = Sink::Replicas {
            tx,
            held: BTreeMap::new(),
        };
        let mut d = Discovery::new(targets, settings, sink);
        d.seed().unwrap();
        let names = |rx: &watch::Receiver<Arc<Vec<Replica>>>| {
            rx.borrow()
                .iter()
                .map(|r| (r.name.clone(), r.id))
                .collect::<Vec<_>>()
        };
        let seeded = names(&rx);
        assert_eq!(
            seeded.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            [a1.to_string(), a2.to_string()]
        );
        drop(second);
        d.probe().await;
        d.apply().await.unwrap();
        assert_eq!(names(&rx), [seeded[0].clone()], "the stopped replica left");
    }

    fn describe(c: &Change<Key, Endpoint>) -> String {
        match c {
            Change::Insert(k, ep) => format!("insert {k:?} {}", ep.uri()),
            Change::Remove(k) => format!("remove {k:?}"),
        }
    }
}
