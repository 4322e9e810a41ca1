//! smtp-load: N concurrent clients for D seconds against any SMTP server.
//!
//! Each session is connect → EHLO → [STARTTLS → EHLO] → AUTH MECH →
//! [MAIL/RCPT/DATA of S bytes] → QUIT, over a pool of users. It reports
//! sessions/s, AUTH latency and whole-session latency percentiles, and
//! errors by reply code, as text and JSON. It speaks plain SMTP with the
//! SASL client mechanisms of `authrelay-sasl`, so it runs as well against
//! Postfix or Sendmail as against authrelay.
//!
//! [`idle`] is the other mode: open N connections (greeting and EHLO),
//! hold them, and check at the end that they are still served, so a
//! benchmark can read the server's memory per idle connection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use authrelay_sasl::{ClientCredentials, ClientExchange, ClientStep, Mechanism};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Clone, Debug)]
pub struct Plan {
    pub server: String,
    pub concurrency: usize,
    pub duration: Duration,
    pub mechanism: Option<Mechanism>,
    pub starttls: bool,
    pub implicit_tls: bool,
    /// `{n}` is replaced by the user number, 0..users.
    pub user_template: String,
    pub users: usize,
    pub password: String,
    /// Message body size; 0 = auth-only sessions.
    pub size: usize,
    pub from: String,
    pub to: String,
    /// Sessions a second in all, on a fixed schedule (open loop); `None`:
    /// each client starts its next session when the last ends.
    pub rate: Option<f64>,
}

#[derive(Default)]
struct Tally {
    sessions: u64,
    auth_us: Vec<u32>,
    session_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
}

pub struct Report {
    pub plan: Plan,
    pub elapsed: Duration,
    pub sessions: u64,
    pub auth_us: Vec<u32>,
    pub session_us: Vec<u32>,
    pub errors: BTreeMap<String, u64>,
    /// CPU time this process used during the run (user + system), so a
    /// benchmark can subtract the client's share from the machine's.
    pub cpu: Option<Duration>,
}

/// User + system CPU time of this process, from /proc/self/stat (Linux).
pub fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the ")" that closes the command name: state is field 3,
    // utime and stime are fields 14 and 15 (proc(5)), in clock ticks.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux ABI Rust targets.
    Some(Duration::from_millis(ticks * 10))
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.sessions as f64 / self.elapsed.as_secs_f64()
    }

    pub fn json(&self) -> serde_json::Value {
        let lat = |v: &[u32]| {
            serde_json::json!({
                "p50_ms": pct(v, 0.5), "p90_ms": pct(v, 0.9), "p99_ms": pct(v, 0.99),
                "max_ms": v.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
            })
        };
        serde_json::json!({
            "server": self.plan.server,
            "mechanism": self.plan.mechanism.map(|m| m.name()),
            "concurrency": self.plan.concurrency,
            "size": self.plan.size,
            "starttls": self.plan.starttls,
            "offered_rate": self.plan.rate,
            "seconds": self.elapsed.as_secs_f64(),
            "sessions": self.sessions,
            "sessions_per_sec": self.rate(),
            "auth": lat(&self.auth_us),
            "session": lat(&self.session_us),
            "errors": self.errors,
            "client_cpu_ms": self.cpu.map(|c| c.as_secs_f64() * 1000.0),
        })
    }

    pub fn text(&self) -> String {
        let mut s = format!(
            "{} sessions in {:.1}s = {:.0} sessions/s ({} clients, {}, {} bytes)\n",
            self.sessions,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.plan.concurrency,
            self.plan.mechanism.map_or("no AUTH", |m| m.name()),
            self.plan.size
        );
        for (name, v) in [("AUTH", &self.auth_us), ("session", &self.session_us)] {
            s.push_str(&format!(
                "{name:8} latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}\n",
                pct(v, 0.5),
                pct(v, 0.9),
                pct(v, 0.99),
                v.last().map_or(0.0, |m| f64::from(*m) / 1000.0)
            ));
        }
        if self.errors.is_empty() {
            s.push_str("errors: none\n");
        } else {
            for (k, n) in &self.errors {
                s.push_str(&format!("errors {k}: {n}\n"));
            }
        }
        s
    }
}

/// The client socket, before or after TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

struct Conn {
    io: BufReader<Stream>,
    line: String,
}

#[derive(Debug)]
enum Fail {
    Io(String),
    Reply(u16, &'static str),
}

impl Conn {
    async fn reply(&mut self) -> Result<(u16, String), Fail> {
        let mut last = String::new();
        loop {
            self.line.clear();
            let n = self
                .io
                .read_line(&mut self.line)
                .await
                .map_err(|e| Fail::Io(e.kind().to_string()))?;
            if n == 0 {
                return Err(Fail::Io("closed".into()));
            }
            let code: u16 = self
                .line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or(Fail::Io("garbled".into()))?;
            last.push_str(&self.line);
            if self.line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, last));
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Fail> {
        self.io
            .get_mut()
            .write_all(bytes)
            .await
            .map_err(|e| Fail::Io(e.kind().to_string()))
    }

    async fn cmd(&mut self, line: &str, want: u16, step: &'static str) -> Result<String, Fail> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        let (code, text) = self.reply().await?;
        if code != want {
            return Err(Fail::Reply(code, step));
        }
        Ok(text)
    }
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    // A load tool measures servers, it does not authenticate them.
    tokio_rustls::TlsConnector::from(Arc::new(authrelay_tls_any::client_config()))
}

async fn handshake(tls: &tokio_rustls::TlsConnector, io: TcpStream) -> Result<Stream, Fail> {
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let s = tls
        .connect(name, io)
        .await
        .map_err(|e| Fail::Io(format!("tls: {}", e.kind())))?;
    Ok(Stream::Tls(Box::new(s)))
}

/// One session; returns the AUTH latency.
async fn session(
    plan: &Plan,
    tls: &tokio_rustls::TlsConnector,
    user: usize,
    body: &[u8],
) -> Result<Option<Duration>, Fail> {
    let tcp = TcpStream::connect(&plan.server)
        .await
        .map_err(|e| Fail::Io(e.kind().to_string()))?;
    let _ = tcp.set_nodelay(true);
    let io = if plan.implicit_tls {
        handshake(tls, tcp).await?
    } else {
        Stream::Plain(tcp)
    };
    let mut c = Conn {
        io: BufReader::new(io),
        line: String::with_capacity(256),
    };
    let (code, _) = c.reply().await?;
    if code != 220 {
        return Err(Fail::Reply(code, "greeting"));
    }
    c.cmd("EHLO load.example", 250, "EHLO").await?;
    if plan.starttls {
        c.cmd("STARTTLS", 220, "STARTTLS").await?;
        let Conn { io, line } = c;
        // The buffered reader is empty here: the server says nothing after 220.
        let Stream::Plain(tcp) = io.into_inner() else {
            return Err(Fail::Io("STARTTLS on TLS".into()));
        };
        c = Conn {
            io: BufReader::new(handshake(tls, tcp).await?),
            line,
        };
        c.cmd("EHLO load.example", 250, "EHLO").await?;
    }
    let mut auth = None;
    if let Some(mech) = plan.mechanism {
        let name = plan.user_template.replace("{n}", &user.to_string());
        let started = Instant::now();
        let mut ex = ClientExchange::new(mech, ClientCredentials::new(name, plan.password.clone()))
            .map_err(|_| Fail::Io("mechanism".into()))?;
        let first = match ex.initial_response() {
            Some(ir) => format!(
                "AUTH {} {}\r\n",
                mech.name(),
                if ir.is_empty() {
                    "=".into()
                } else {
                    B64.encode(ir)
                }
            ),
            None => format!("AUTH {}\r\n", mech.name()),
        };
        c.send(first.as_bytes()).await?;
        loop {
            let (code, text) = c.reply().await?;
            match code {
                235 => break,
                334 => {
                    let challenge = B64
                        .decode(text[4..].trim())
                        .map_err(|_| Fail::Io("bad 334".into()))?;
                    let resp = match ex.step(&challenge) {
                        Ok(ClientStep::Respond(r)) => r,
                        Ok(ClientStep::Done) => Vec::new(),
                        Err(_) => return Err(Fail::Io("server not verified".into())),
                    };
                    c.send(format!("{}\r\n", B64.encode(resp)).as_bytes())
                        .await?;
                }
                other => return Err(Fail::Reply(other, "AUTH")),
            }
        }
        auth = Some(started.elapsed());
    }
    if plan.size > 0 {
        c.cmd(&format!("MAIL FROM:<{}>", plan.from), 250, "MAIL")
            .await?;
        c.cmd(&format!("RCPT TO:<{}>", plan.to), 250, "RCPT")
            .await?;
        c.cmd("DATA", 354, "DATA").await?;
        c.send(body).await?;
        c.cmd(".", 250, "end of DATA").await?;
    }
    c.cmd("QUIT", 221, "QUIT").await?;
    Ok(auth)
}

/// A message body of about `size` bytes, dot-safe, CRLF-terminated (the
/// final "." is sent as its own command).
pub fn body(size: usize) -> Vec<u8> {
    let mut b = b"Subject: load test\r\nFrom: load@load.example\r\n\r\n".to_vec();
    let line = b"abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789\r\n";
    while b.len() + line.len() <= size.max(64) {
        b.extend_from_slice(line);
    }
    b
}

pub async fn run(plan: Plan) -> Report {
    let cpu0 = process_cpu();
    let tls = tls_connector();
    let deadline = Instant::now() + plan.duration;
    let started = Instant::now();
    let plan = Arc::new(plan);
    let body = Arc::new(body(plan.size));
    let mut workers = Vec::new();
    for w in 0..plan.concurrency {
        let (plan, tls, body) = (plan.clone(), tls.clone(), body.clone());
        workers.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let mut i = w;
            let mut k = 0u64;
            while Instant::now() < deadline {
                if let Some(rate) = plan.rate {
                    // Session k of client w is due at (k·c + w) / rate.
                    let due = started
                        + Duration::from_secs_f64(
                            (k as f64 * plan.concurrency as f64 + w as f64) / rate,
                        );
                    if due >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    k += 1;
                }
                let s0 = Instant::now();
                match session(&plan, &tls, i % plan.users.max(1), &body).await {
                    Ok(auth) => {
                        t.sessions += 1;
                        if let Some(a) = auth {
                            t.auth_us
                                .push(a.as_micros().min(u128::from(u32::MAX)) as u32);
                        }
                        t.session_us
                            .push(s0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    }
                    Err(Fail::Reply(code, step)) => {
                        *t.errors.entry(format!("{code} at {step}")).or_default() += 1
                    }
                    Err(Fail::Io(e)) => *t.errors.entry(format!("io {e}")).or_default() += 1,
                }
                i += plan.concurrency;
            }
            t
        }));
    }
    let mut all = Tally::default();
    for w in workers {
        if let Ok(t) = w.await {
            all.sessions += t.sessions;
            all.auth_us.extend(t.auth_us);
            all.session_us.extend(t.session_us);
            for (k, n) in t.errors {
                *all.errors.entry(k).or_default() += n;
            }
        }
    }
    all.auth_us.sort_unstable();
    all.session_us.sort_unstable();
    Report {
        plan: Arc::unwrap_or_clone(plan),
        elapsed: started.elapsed(),
        sessions: all.sessions,
        auth_us: all.auth_us,
        session_us: all.session_us,
        errors: all.errors,
        cpu: process_cpu().zip(cpu0).map(|(b, a)| b.saturating_sub(a)),
    }
}

/// Idle-connection mode: how many, how fast, how long.
#[derive(Clone, Debug)]
pub struct IdlePlan {
    pub server: String,
    pub connections: usize,
    /// Connections being opened at once (connect, greeting, EHLO).
    pub parallel: usize,
    /// How long to hold them all once open.
    pub hold: Duration,
    /// Give up on one connection's opening after this long.
    pub open_timeout: Duration,
}

pub struct IdleReport {
    pub plan: IdlePlan,
    pub open: u64,
    pub open_time: Duration,
    /// Connections that still answered NOOP with 250 after the hold.
    pub still_open: u64,
    pub errors: BTreeMap<String, u64>,
    pub cpu: Option<Duration>,
}

impl IdleReport {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "server": self.plan.server,
            "idle": self.plan.connections,
            "open": self.open,
            "open_seconds": self.open_time.as_secs_f64(),
            "hold_seconds": self.plan.hold.as_secs_f64(),
            "still_open": self.still_open,
            "errors": self.errors,
            "client_cpu_ms": self.cpu.map(|c| c.as_secs_f64() * 1000.0),
        })
    }

    pub fn text(&self) -> String {
        let mut s = format!(
            "{} of {} connections open in {:.1}s; {} still open after {:.0}s held\n",
            self.open,
            self.plan.connections,
            self.open_time.as_secs_f64(),
            self.still_open,
            self.plan.hold.as_secs_f64()
        );
        for (k, n) in &self.errors {
            s.push_str(&format!("errors {k}: {n}\n"));
        }
        s
    }
}

/// Connect, read the greeting, EHLO: a client that then says nothing.
async fn open_idle(server: &str) -> Result<Conn, Fail> {
    let tcp = TcpStream::connect(server)
        .await
        .map_err(|e| Fail::Io(e.kind().to_string()))?;
    let mut c = Conn {
        io: BufReader::with_capacity(1024, Stream::Plain(tcp)),
        line: String::new(),
    };
    let (code, _) = c.reply().await?;
    if code != 220 {
        return Err(Fail::Reply(code, "greeting"));
    }
    c.cmd("EHLO load.example", 250, "EHLO").await?;
    c.line = String::new();
    Ok(c)
}

fn count(errors: &mut BTreeMap<String, u64>, f: Fail) {
    let k = match f {
        Fail::Reply(code, step) => format!("{code} at {step}"),
        Fail::Io(e) => format!("io {e}"),
    };
    *errors.entry(k).or_default() += 1;
}

/// Opens `connections` idle SMTP sessions (`parallel` at a time), writes
/// `idle: N open` to stderr once they are all open or failed, holds them
/// for `hold`, then sends NOOP on each and counts the 250s.
pub async fn idle(plan: IdlePlan) -> IdleReport {
    let cpu0 = process_cpu();
    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(plan.parallel.max(1)));
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..plan.connections {
        let (gate, server, limit) = (gate.clone(), plan.server.clone(), plan.open_timeout);
        opening.spawn(async move {
            let _permit = gate.acquire_owned().await;
            match tokio::time::timeout(limit, open_idle(&server)).await {
                Ok(r) => r,
                Err(_) => Err(Fail::Io("open timed out".into())),
            }
        });
    }
    let mut conns = Vec::with_capacity(plan.connections);
    let mut errors = BTreeMap::new();
    while let Some(r) = opening.join_next().await {
        match r {
            Ok(Ok(c)) => conns.push(c),
            Ok(Err(f)) => count(&mut errors, f),
            Err(_) => count(&mut errors, Fail::Io("task".into())),
        }
    }
    let open_time = started.elapsed();
    let open = conns.len() as u64;
    {
        use std::io::Write;
        let mut e = std::io::stderr();
        let _ = writeln!(
            e,
            "idle: {open} open of {} in {:.1}s; holding {:.0}s",
            plan.connections,
            open_time.as_secs_f64(),
            plan.hold.as_secs_f64()
        );
        let _ = e.flush();
    }
    tokio::time::sleep(plan.hold).await;
    let mut checking = tokio::task::JoinSet::new();
    for mut c in conns {
        let gate = gate.clone();
        checking.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let r = tokio::time::timeout(Duration::from_secs(30), c.cmd("NOOP", 250, "NOOP"))
                .await
                .unwrap_or_else(|_| Err(Fail::Io("NOOP timed out".into())));
            if r.is_ok() {
                let _ = c.send(b"QUIT\r\n").await;
            }
            r.map(|_| ())
        });
    }
    let mut still_open = 0;
    while let Some(r) = checking.join_next().await {
        match r {
            Ok(Ok(())) => still_open += 1,
            Ok(Err(f)) => count(&mut errors, f),
            Err(_) => count(&mut errors, Fail::Io("task".into())),
        }
    }
    IdleReport {
        plan,
        open,
        open_time,
        still_open,
        errors,
        cpu: process_cpu().zip(cpu0).map(|(b, a)| b.saturating_sub(a)),
    }
}
