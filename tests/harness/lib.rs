//! The end-to-end harness: real binaries as separate processes on ephemeral
//! loopback ports, a real `redis-server` per test (so a test may stop it),
//! an independent sink SMTP server (aiosmtpd), and independent clients
//! (Python's smtplib). Nothing here fakes a part of the system.
//!
//! Missing tools fail loudly with how to get them: `scripts/test.sh`
//! installs and builds everything these tests need.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The directory holding the workspace binaries (target/debug).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/e2e-xxxx → target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`; scripts/test.sh does it)",
        p.display()
    );
    p
}

pub fn support(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("support")
        .join(file)
}

/// A fresh scratch directory per test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("authrelay-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A child process whose stdout lines are collected (to learn the ports it
/// announces) and whose stderr goes to a log file (to grep log lines).
pub struct Proc {
    pub name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .stdin(Stdio::null());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            name: name.to_owned(),
            child,
            lines,
            seen: Vec::new(),
            log,
        }
    }

    /// Wait for a stdout line containing `needle`; returns it.
    pub fn wait_line(&mut self, needle: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "{} did not print {needle:?} within 30s; its log {}:\n{}",
                    self.name,
                    self.log.display(),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }

    /// The address from "… listening on ADDR (what)".
    pub fn addr(&mut self, what: &str) -> SocketAddr {
        let line = self.wait_line(&format!("({what})"));
        line.split("listening on ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The OS process id (for /proc/PID/status readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&mut self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private redis-server on an ephemeral port.
pub struct Redis {
    proc: Proc,
    pub port: u16,
    dir: PathBuf,
    aclfile: Option<PathBuf>,
}

impl Redis {
    pub fn start(dir: &Path) -> Redis {
        Self::start_on(dir, free_port(), None)
    }

    /// A Redis that lets nobody in without credentials: its users are
    /// those of `aclfile` (Redis ACL file syntax, e.g. `user default off`).
    pub fn start_with_aclfile(dir: &Path, aclfile: &Path) -> Redis {
        Self::start_on(dir, free_port(), Some(aclfile))
    }

    fn start_on(dir: &Path, port: u16, aclfile: Option<&Path>) -> Redis {
        let server = which("redis-server").unwrap_or_else(|| {
            panic!("redis-server is not on PATH: install it (`apt-get install redis-server`) or run scripts/test.sh, which does")
        });
        let mut cmd = Command::new(server);
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        // A Unix socket beside the port, for co-located set-ups (`unix_url`).
        .arg("--unixsocket")
        .arg(dir.join(format!("redis-{port}.sock")))
        .args(["--unixsocketperm", "600"]);
        if let Some(acl) = aclfile {
            cmd.arg("--aclfile").arg(acl);
        }
        let proc = Proc::spawn("redis-server", cmd, dir.join(format!("redis-{port}.log")));
        let r = Redis {
            proc,
            port,
            dir: dir.to_owned(),
            aclfile: aclfile.map(Path::to_owned),
        };
        r.wait_ready();
        r
    }

    /// Start again on the same port (after `stop`), empty, as a restarted
    /// Redis without persistence comes back.
    pub fn restart(&mut self) {
        self.proc.kill();
        let (dir, acl) = (self.dir.clone(), self.aclfile.clone());
        *self = Self::start_on(&dir, self.port, acl.as_deref());
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.write_all(b"PING\r\n");
                let mut buf = [0u8; 16];
                if s.read(&mut buf)
                    // NOAUTH: up, and wanting credentials (`start_with_aclfile`).
                    .map(|n| buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
                    .unwrap_or(false)
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not become ready", self.port);
    }

    /// Every key in this Redis (`redis-cli --scan`).
    pub fn keys(&self) -> Vec<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--scan"])
            .output()
            .expect("redis-cli (installed with redis-server)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The same server through its Unix socket.
    pub fn unix_url(&self) -> String {
        format!(
            "unix://{}",
            self.dir.join(format!("redis-{}.sock", self.port)).display()
        )
    }

    pub fn stop(&mut self) {
        self.proc.kill();
    }
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// A port that was free a moment ago (for services that must be restarted
/// on the same address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The sink next hop: aiosmtpd storing each message as JSON.
pub struct Sink {
    _proc: Proc,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl Sink {
    pub fn start(dir: &Path) -> Sink {
        let out = dir.join("sink");
        let mut cmd = Command::new("python3");
        cmd.arg(support("sink.py")).arg(&out);
        let mut proc = Proc::spawn("sink", cmd, dir.join("sink.log"));
        let line = proc.wait_line("sink listening on");
        let addr = line.rsplit(' ').next().unwrap().parse().unwrap();
        Sink {
            _proc: proc,
            addr,
            dir: out,
        }
    }

    /// Messages received so far (JSON objects), waiting up to `within` for `n`.
    pub fn wait_messages(&self, n: usize, within: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + within;
        loop {
            let msgs = self.messages();
            if msgs.len() >= n || Instant::now() > deadline {
                return msgs;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn messages(&self) -> Vec<serde_json::Value> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect()
    }
}

/// Options for a stack of separate service processes.
pub struct StackOptions {
    pub hostname: String,
    pub realm: String,
    pub smarthost: Option<SocketAddr>,
    /// Extra TOML merged into the shared config file.
    pub extra_toml: String,
    /// Extra environment for every service process (e.g. OTEL_*).
    pub env: Vec<(String, String)>,
    /// Co-located: sasl-auth, credential-store and relay-queue also listen
    /// on Unix sockets in the stack's directory, every client dials those
    /// (`unix:` endpoints), and Redis is reached through its socket too.
    pub unix_sockets: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            hostname: "mailserver.foo.com".into(),
            realm: "mailserver.foo.com".into(),
            smarthost: None,
            extra_toml: String::new(),
            env: Vec::new(),
            unix_sockets: false,
        }
    }
}

/// The four services as separate processes sharing one config file, found
/// by each other through the environment (AUTHRELAY__ENDPOINTS__*).
pub struct Stack {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub creds: Proc,
    pub sasl: Proc,
    pub queue: Proc,
    pub frontend: Proc,
    pub submission: SocketAddr,
    pub relay: SocketAddr,
    pub endpoints: Vec<(String, String)>,
    pub queue_addr: SocketAddr,
}

impl Stack {
    pub fn start(dir: &Path, redis: &Redis, opts: StackOptions) -> Stack {
        let config = dir.join("authrelay.toml");
        let (cert, key) = test_certificate(dir, &opts.hostname);
        let exchange_key = exchange_key(dir);
        let smarthost = opts.smarthost.map(|a| a.to_string()).unwrap_or_default();
        let toml = format!(
            r#"hostname = "{host}"
default_realm = "{realm}"
data_dir = "{data}"

[redis]
url = "{redis}"

[sasl]
exchange_key_file = "{exchange_key}"

[sasl_auth]
listen = "127.0.0.1:0"

[credential_store]
listen = "127.0.0.1:0"
# Fast hashing parameters keep the suite quick; production uses the defaults.
argon2_memory_kib = 8192
argon2_iterations = 1

[relay_queue]
listen = "127.0.0.1:0"
smarthost = "{smarthost}"
retry_initial = "1s"
retry_max = "2s"

[frontend]
admin_listen = "127.0.0.1:0"
drain_grace = "10s"

[frontend.tls]
cert = "{cert}"
key = "{key}"

[[frontend.listeners]]
address = "127.0.0.1:0"
role = "submission"

[[frontend.listeners]]
address = "127.0.0.1:0"
role = "relay"
"#,
            host = opts.hostname,
            realm = opts.realm,
            data = dir.join("data").display(),
            redis = if opts.unix_sockets {
                redis.unix_url()
            } else {
                redis.url()
            },
            cert = cert.display(),
            key = key.display(),
            exchange_key = exchange_key.display(),
        );
        let sock = |name: &str| dir.join(format!("{name}.sock")).display().to_string();
        let unix_toml = if opts.unix_sockets {
            format!(
                "[sasl_auth]\nlisten_unix = \"{}\"\n[credential_store]\nlisten_unix = \"{}\"\n\
                 [relay_queue]\nlisten_unix = \"{}\"\n",
                sock("sasl-auth"),
                sock("credential-store"),
                sock("relay-queue")
            )
        } else {
            String::new()
        };
        std::fs::write(
            &config,
            merge_toml(
                &merge_toml(&merge_toml(&toml, &tokens_toml(dir)), &unix_toml),
                &opts.extra_toml,
            ),
        )
        .unwrap();
        // Where clients dial a service: its Unix socket or its TCP address.
        let endpoint = |proc: &mut Proc, name: &str| {
            if opts.unix_sockets {
                proc.wait_line("(grpc unix)");
                format!("unix:{}", sock(name))
            } else {
                format!("http://{}", proc.addr("grpc"))
            }
        };

        let mut creds = spawn_service("credential-store", &config, dir, &opts.env);
        let mut endpoints = opts.env.clone();
        endpoints.push((
            "AUTHRELAY__ENDPOINTS__CREDENTIAL_STORE".to_owned(),
            endpoint(&mut creds, "credential-store"),
        ));
        let mut sasl = spawn_service("sasl-auth", &config, dir, &endpoints);
        endpoints.push((
            "AUTHRELAY__ENDPOINTS__SASL_AUTH".into(),
            endpoint(&mut sasl, "sasl-auth"),
        ));
        let mut queue = spawn_service("relay-queue", &config, dir, &endpoints);
        let queue_addr = queue.addr("grpc");
        endpoints.push((
            "AUTHRELAY__ENDPOINTS__RELAY_QUEUE".into(),
            endpoint(&mut queue, "relay-queue"),
        ));
        let mut frontend = spawn_service("smtp-frontend", &config, dir, &endpoints);
        let submission = frontend.addr("smtp submission");
        let relay = frontend.addr("smtp relay");
        frontend.addr("grpc admin");
        Stack {
            dir: dir.to_owned(),
            config,
            creds,
            sasl,
            queue,
            frontend,
            submission,
            relay,
            endpoints,
            queue_addr,
        }
    }

    /// `authrelay ARGS` against this stack, `stdin` piped in. Returns (status, stdout, stderr).
    pub fn authrelay(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        run_authrelay(&self.config, &self.endpoints, args, stdin)
    }

    pub fn add_user(&self, name: &str, realm: &str, password: &str) {
        let (ok, out, err) = self.authrelay(
            &["user", "add", "--realm", realm, name],
            &format!("{password}\n"),
        );
        assert!(ok, "user add failed: {out} {err}");
    }

    /// Restart relay-queue on the address it had.
    pub fn restart_queue(&mut self) {
        self.queue.kill();
        let mut env = self.endpoints.clone();
        env.push((
            "AUTHRELAY__RELAY_QUEUE__LISTEN".into(),
            self.queue_addr.to_string(),
        ));
        self.queue = spawn_service("relay-queue", &self.config, &self.dir, &env);
        self.queue.addr("grpc");
    }

    /// Start `credential-store`, `sasl-auth` or `relay-queue` again on the
    /// address it had (after its `Proc::kill`), so the others find it again
    /// without being restarted themselves.
    pub fn respawn(&mut self, name: &str) {
        let key = match name {
            "credential-store" => "CREDENTIAL_STORE",
            "sasl-auth" => "SASL_AUTH",
            "relay-queue" => "RELAY_QUEUE",
            other => panic!("respawn: no such service {other}"),
        };
        let addr = self
            .endpoint(&format!("AUTHRELAY__ENDPOINTS__{key}"))
            .trim_start_matches("http://")
            .to_owned();
        let mut env = self.endpoints.clone();
        env.push((format!("AUTHRELAY__{key}__LISTEN"), addr));
        let mut proc = spawn_service(name, &self.config, &self.dir, &env);
        proc.addr("grpc");
        match name {
            "credential-store" => self.creds = proc,
            "sasl-auth" => self.sasl = proc,
            _ => self.queue = proc,
        }
    }

    /// All service logs, for greps.
    pub fn logs(&self) -> String {
        [&self.creds, &self.sasl, &self.queue, &self.frontend]
            .iter()
            .map(|p| p.log_text())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `extra` merged over `base`, table by table (extra wins), so a test can
/// set any key — also in tables the harness already writes — without
/// redefining a TOML table.
/// A fresh key for sealing SASL exchange state (`sasl.exchange_key_file`),
/// shared by every sasl-auth of a test: 64 hex digits from the kernel's
/// random source, in a 0600 file.
pub fn exchange_key(dir: &Path) -> PathBuf {
    token_file(dir, "exchange.key")
}

/// A token file of 64 hex digits under `dir` (made once).
pub fn token_file(dir: &Path, name: &str) -> PathBuf {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    if !path.exists() {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .expect("read /dev/urandom");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("create token file");
        std::io::Write::write_all(&mut f, hex.as_bytes()).unwrap();
    }
    path
}

/// The credentials every separate service of a test deployment needs:
/// the admin token (admin calls over TCP) and the internal token (the
/// services' calls to each other), as TOML to merge into its config.
pub fn tokens_toml(dir: &Path) -> String {
    format!(
        "[admin]\ntoken_file = \"{}\"\n\n[internal]\ntoken_file = \"{}\"\n",
        token_file(dir, "admin.token").display(),
        token_file(dir, "internal.token").display()
    )
}

/// Presents a test deployment's internal token (`tokens_toml`) on every
/// call of a gRPC client, as the services do to each other.
#[derive(Clone)]
pub struct InternalToken(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for InternalToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut()
            .insert("x-authrelay-internal-token", self.0.clone());
        Ok(req)
    }
}

/// Both of a test deployment's tokens on every call: an administrator's
/// client that also speaks to the internal APIs (GetSecret).
#[derive(Clone)]
pub struct AllTokens {
    admin: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    internal: InternalToken,
}

impl tonic::service::Interceptor for AllTokens {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut req = self.internal.call(req)?;
        req.metadata_mut()
            .insert("authorization", self.admin.clone());
        Ok(req)
    }
}

pub fn all_tokens(dir: &Path) -> AllTokens {
    let t = std::fs::read_to_string(token_file(dir, "admin.token")).unwrap();
    AllTokens {
        admin: format!("Bearer {}", t.trim()).parse().unwrap(),
        internal: internal_token(dir),
    }
}

pub fn internal_token(dir: &Path) -> InternalToken {
    let t = std::fs::read_to_string(token_file(dir, "internal.token")).unwrap();
    InternalToken(t.trim().parse().unwrap())
}

/// A gRPC channel to `http://ADDR`.
pub async fn channel_to(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

pub fn merge_toml(base: &str, extra: &str) -> String {
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (k, v) in from {
            match (into.get_mut(&k), v) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (Some(toml::Value::Array(a)), toml::Value::Array(b)) if k == "listeners" => {
                    a.extend(b)
                }
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }
    let mut base: toml::Table = base.parse().expect("harness TOML");
    let extra: toml::Table = extra
        .parse()
        .unwrap_or_else(|e| panic!("extra_toml does not parse: {e}"));
    merge(&mut base, extra);
    toml::to_string(&base).unwrap()
}

/// A self-signed certificate for `host`, made with rcgen, as PEM files.
pub fn test_certificate(dir: &Path, host: &str) -> (PathBuf, PathBuf) {
    let made =
        rcgen::generate_simple_self_signed(vec![host.to_owned(), "localhost".to_owned()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

pub fn spawn_service(name: &str, config: &Path, dir: &Path, env: &[(String, String)]) -> Proc {
    let mut cmd = Command::new(bin(name));
    // RUST_LOG=info unless the test's environment says otherwise.
    cmd.arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .envs(env.iter().cloned());
    Proc::spawn(name, cmd, dir.join(format!("{name}.log")))
}

pub fn run_authrelay(
    config: &Path,
    env: &[(String, String)],
    args: &[&str],
    stdin: &str,
) -> (bool, String, String) {
    let mut child = Command::new(bin("authrelay"))
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(env.iter().cloned())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run authrelay");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run tests/support/client.py (Python's smtplib) with a JSON plan; the
/// password travels in the environment, never in argv.
pub fn smtplib(plan: serde_json::Value, password: &str) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(support("client.py"))
        .arg(plan.to_string())
        .env("SMTP_PASSWORD", password)
        .output()
        .expect("python3 must be installed (scripts/test.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "client.py gave no JSON:\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A raw line-level SMTP client for exact reply codes.
pub struct Raw {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut r = Raw { stream, reader };
        let (code, _) = r.read();
        assert_eq!(code, 220, "greeting");
        r
    }

    /// One reply: (code, full text).
    pub fn read(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return (0, text);
            }
            text.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return (line[..3].parse().unwrap_or(0), text);
            }
        }
    }

    pub fn send(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(line);
        self.read()
    }
}

pub fn b64(s: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A TLS client that accepts any server certificate (the tests' servers
/// use throwaway self-signed ones) — for STARTTLS and implicit-TLS tests.
pub mod tls_client {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, StreamOwned};

    pub fn config() -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(authrelay_tls_any::AnyCertificate::new(provider))
                .with_no_client_auth(),
        )
    }

    /// An SMTP connection over TLS, line oriented like `Raw`.
    pub struct TlsRaw {
        pub stream: BufReader<StreamOwned<ClientConnection, TcpStream>>,
    }

    impl TlsRaw {
        /// Handshake on an already connected socket.
        pub fn handshake(tcp: TcpStream) -> TlsRaw {
            Self::handshake_with(tcp, config())
        }

        /// Handshake presenting a client certificate (DER chain, PKCS#8 key).
        pub fn handshake_with_client_cert(
            tcp: TcpStream,
            chain: Vec<Vec<u8>>,
            key: Vec<u8>,
        ) -> TlsRaw {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let chain = chain.into_iter().map(CertificateDer::from).collect();
            let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.into());
            let cfg = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(authrelay_tls_any::AnyCertificate::new(provider))
                .with_client_auth_cert(chain, key)
                .unwrap();
            Self::handshake_with(tcp, Arc::new(cfg))
        }

        fn handshake_with(tcp: TcpStream, config: Arc<ClientConfig>) -> TlsRaw {
            let conn =
                ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
            let mut s = StreamOwned::new(conn, tcp);
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock).expect("TLS handshake");
            }
            TlsRaw {
                stream: BufReader::new(s),
            }
        }

        /// The server's leaf certificate.
        pub fn peer_cert(&self) -> Vec<u8> {
            self.stream.get_ref().conn.peer_certificates().unwrap()[0]
                .as_ref()
                .to_vec()
        }

        pub fn read(&mut self) -> (u16, String) {
            let mut text = String::new();
            loop {
                let mut line = String::new();
                if self.stream.read_line(&mut line).unwrap_or(0) == 0 {
                    return (0, text);
                }
                text.push_str(&line);
                if line.as_bytes().get(3) != Some(&b'-') {
                    return (line[..3].parse().unwrap_or(0), text);
                }
            }
        }

        pub fn cmd(&mut self, line: &str) -> (u16, String) {
            let s = self.stream.get_mut();
            s.write_all(format!("{line}\r\n").as_bytes()).unwrap();
            s.flush().unwrap();
            self.read()
        }

        pub fn write(&mut self, bytes: &[u8]) {
            let s = self.stream.get_mut();
            s.write_all(bytes).unwrap();
            s.flush().unwrap();
        }

        pub fn read_some(&mut self) -> Vec<u8> {
            let mut buf = vec![0u8; 4096];
            let n = self.stream.read(&mut buf).unwrap_or(0);
            buf.truncate(n);
            buf
        }
    }
}

impl Raw {
    /// Hand the socket over for STARTTLS (after the 220 reply).
    pub fn into_tls(self) -> tls_client::TlsRaw {
        drop(self.reader);
        tls_client::TlsRaw::handshake(self.stream)
    }

    /// STARTTLS handover presenting a client certificate.
    pub fn into_tls_with_client_cert(self, cert: &ClientCert) -> tls_client::TlsRaw {
        drop(self.reader);
        tls_client::TlsRaw::handshake_with_client_cert(
            self.stream,
            vec![cert.cert_der.clone()],
            cert.key_der.clone(),
        )
    }

    /// Connect from a given local address (e.g. 127.0.0.2) to `addr`.
    pub fn connect_from(local: &str, addr: SocketAddr) -> Option<(Raw, u16, String)> {
        let stream = bind_connect(local, addr)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut r = Raw { stream, reader };
        let (code, text) = r.read();
        Some((r, code, text))
    }
}

/// A TCP connection from a chosen loopback source address (std has no
/// bind-before-connect; tokio's TcpSocket does).
fn bind_connect(local: &str, addr: SocketAddr) -> Option<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().ok()?;
        sock.bind(format!("{local}:0").parse().ok()?).ok()?;
        let s = sock.connect(addr).await.ok()?;
        s.into_std().ok()
    })
    .and_then(|s| {
        s.set_nonblocking(false).ok()?;
        Some(s)
    })
}

impl Stack {
    /// Another smtp-frontend process sharing this stack's Redis, sasl-auth
    /// and relay-queue. Returns it with its (submission, relay) addresses.
    pub fn spawn_frontend(&self, name: &str) -> (Proc, SocketAddr, SocketAddr) {
        let mut cmd = Command::new(bin("smtp-frontend"));
        cmd.arg("--config")
            .arg(&self.config)
            .envs(self.endpoints.iter().cloned())
            .env("RUST_LOG", "info");
        let mut p = Proc::spawn(name, cmd, self.dir.join(format!("{name}.log")));
        let sub = p.addr("smtp submission");
        let relay = p.addr("smtp relay");
        p.addr("grpc admin");
        (p, sub, relay)
    }

    /// The frontend's admin gRPC address, for `authrelay sessions`.
    pub fn frontend_admin(&mut self) -> SocketAddr {
        self.frontend.addr("grpc admin")
    }
}

impl Stack {
    /// Another sasl-auth process sharing this stack's Redis and
    /// credential-store: a replica. Returns it with its gRPC address.
    pub fn spawn_sasl_replica(&self, name: &str) -> (Proc, SocketAddr) {
        self.spawn_sasl_replica_env(name, &[])
    }

    /// Another sasl-auth replica with `env` overriding the stack's (say,
    /// other exchange keys).
    pub fn spawn_sasl_replica_env(
        &self,
        name: &str,
        env: &[(String, String)],
    ) -> (Proc, SocketAddr) {
        let mut cmd = Command::new(bin("sasl-auth"));
        cmd.arg("--config")
            .arg(&self.config)
            .envs(self.endpoints.iter().cloned())
            .envs(env.iter().cloned())
            .env("RUST_LOG", "info");
        let mut p = Proc::spawn(name, cmd, self.dir.join(format!("{name}.log")));
        let addr = p.addr("grpc");
        (p, addr)
    }

    /// Another smtp-frontend like [`Stack::spawn_frontend`], with `env`
    /// overriding the stack's (e.g. `AUTHRELAY__ENDPOINTS__SASL_AUTH` listing
    /// two replicas). Returns it with its submission address.
    pub fn spawn_frontend_env(&self, name: &str, env: &[(String, String)]) -> (Proc, SocketAddr) {
        let mut cmd = Command::new(bin("smtp-frontend"));
        cmd.arg("--config")
            .arg(&self.config)
            .envs(self.endpoints.iter().cloned())
            .envs(env.iter().cloned())
            .env("RUST_LOG", "info");
        let mut p = Proc::spawn(name, cmd, self.dir.join(format!("{name}.log")));
        let sub = p.addr("smtp submission");
        p.addr("grpc admin");
        (p, sub)
    }

    /// The endpoint URL the stack's services were given for `key`
    /// (e.g. `AUTHRELAY__ENDPOINTS__SASL_AUTH`).
    pub fn endpoint(&self, key: &str) -> String {
        self.endpoints
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no endpoint {key}"))
    }
}

/// The path of an external client a test drives, or a failure saying how
/// to get it (never a silent skip): scripts/test.sh installs them all.
pub fn require_tool(name: &str, how: &str) -> PathBuf {
    which(name).unwrap_or_else(|| {
        panic!("{name} is not on PATH: install it ({how}) or run scripts/test.sh, which does")
    })
}

/// An OTLP trace receiver on loopback, over gRPC and over HTTP
/// (`http/protobuf`), built from the official OTLP protobuf definitions
/// (opentelemetry-proto): it keeps every span exported to it, with the
/// service name and attributes of the resource that sent it.
pub mod otlp {
    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::trace::v1::Span;

    #[derive(Clone, Debug)]
    pub struct Received {
        pub service: String,
        pub span: Span,
        /// The resource the span came with (service.instance.id, k8s.*, …).
        pub resource: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
    }

    impl Received {
        pub fn resource_attr(&self, key: &str) -> Option<String> {
            self.resource
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
        }
        pub fn attr(&self, key: &str) -> Option<String> {
            self.span
                .attributes
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    Value::IntValue(i) => Some(i.to_string()),
                    Value::BoolValue(b) => Some(b.to_string()),
                    Value::DoubleValue(d) => Some(d.to_string()),
                    _ => None,
                })
        }
        pub fn trace_id(&self) -> String {
            hex(&self.span.trace_id)
        }
        pub fn span_id(&self) -> String {
            hex(&self.span.span_id)
        }
        pub fn parent_id(&self) -> String {
            hex(&self.span.parent_span_id)
        }
    }

    pub fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Received>>>);

    impl Sink {
        fn ingest(&self, req: ExportTraceServiceRequest) {
            let mut out = self.0.lock().unwrap();
            for rs in req.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        out.push(Received {
                            service: service.clone(),
                            span,
                            resource: resource.clone(),
                        });
                    }
                }
            }
        }
    }

    #[tonic::async_trait]
    impl TraceService for Sink {
        async fn export(
            &self,
            req: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            self.ingest(req.into_inner());
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        }
    }

    /// One OTLP/HTTP request (`POST /v1/traces`, protobuf body) on `sock`,
    /// answered the way a collector does.
    async fn http_export(mut sock: tokio::net::TcpStream, sink: Sink) -> std::io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let header = |name: &str| {
            head.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_owned())
        };
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let ok_request = head.starts_with("POST /v1/traces ")
            && header("content-type").as_deref() == Some("application/x-protobuf");
        let decoded = ok_request
            .then(|| {
                <ExportTraceServiceRequest as prost::Message>::decode(
                    &buf[head_end..head_end + len.min(buf.len() - head_end)],
                )
                .ok()
            })
            .flatten();
        let (status, body) = match decoded {
            Some(req) => {
                sink.ingest(req);
                let resp = ExportTraceServiceResponse {
                    partial_success: None,
                };
                ("200 OK", prost::Message::encode_to_vec(&resp))
            }
            None => ("400 Bad Request", Vec::new()),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        sock.write_all(head.as_bytes()).await?;
        sock.write_all(&body).await?;
        sock.shutdown().await
    }

    /// Spans by OTLP/gRPC at `addr` and by OTLP/HTTP at `http_addr`, into
    /// one list.
    pub struct Receiver {
        pub addr: std::net::SocketAddr,
        pub http_addr: std::net::SocketAddr,
        spans: Arc<Mutex<Vec<Received>>>,
        _rt: tokio::runtime::Runtime,
    }

    impl Receiver {
        pub fn start() -> Receiver {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let sink = Sink::default();
            let spans = sink.0.clone();
            let listener = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let addr = listener.local_addr().unwrap();
            let http = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let http_addr = http.local_addr().unwrap();
            let http_sink = sink.clone();
            rt.spawn(async move {
                while let Ok((sock, _)) = http.accept().await {
                    tokio::spawn(http_export(sock, http_sink.clone()));
                }
            });
            rt.spawn(
                tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(sink))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            );
            Receiver {
                addr,
                http_addr,
                spans,
                _rt: rt,
            }
        }

        pub fn endpoint(&self) -> String {
            format!("http://{}", self.addr)
        }

        /// The same receiver over OTLP/HTTP (`http/protobuf`): its base URL,
        /// as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it (`/v1/traces` is added
        /// by the exporter).
        pub fn http_endpoint(&self) -> String {
            format!("http://{}", self.http_addr)
        }

        pub fn spans(&self) -> Vec<Received> {
            self.spans.lock().unwrap().clone()
        }

        /// Everything received, as text, for secret greps.
        pub fn dump(&self) -> String {
            format!("{:?}", self.spans())
        }
    }
}

/// AUTH over a plain-text SMTP connection with our own client mechanism
/// (for mechanisms offered before TLS: CRAM-MD5, DIGEST-MD5, SCRAM). Returns
/// the final reply code.
pub fn auth_raw(c: &mut Raw, mech: authrelay_sasl::Mechanism, user: &str, password: &str) -> u16 {
    use authrelay_sasl::{ClientCredentials, ClientExchange, ClientStep};
    use base64::Engine;
    let mut ex = ClientExchange::new(
        mech,
        ClientCredentials::new(user.to_owned(), password.to_owned()),
    )
    .unwrap();
    let (mut code, mut text) = match ex.initial_response() {
        Some(ir) => c.cmd(&format!("AUTH {} {}", mech.name(), b64(&ir))),
        None => c.cmd(&format!("AUTH {}", mech.name())),
    };
    while code == 334 {
        let challenge = base64::engine::general_purpose::STANDARD
            .decode(text[4..].trim())
            .unwrap();
        let resp = match ex.step(&challenge) {
            Ok(ClientStep::Respond(r)) => r,
            Ok(ClientStep::Done) => Vec::new(),
            Err(_) => b"*".to_vec(),
        };
        (code, text) = c.cmd(&b64(&resp));
    }
    code
}

/// A test CA (PEM file, for `frontend.tls.client_ca`) and a client
/// certificate it signed, with subject CN `cn` and e-mail SAN `email`.
pub struct ClientCert {
    pub ca_pem: PathBuf,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

pub fn client_certificate(dir: &Path, cn: &str, email: &str) -> ClientCert {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "authrelay test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .subject_alt_names
        .push(SanType::Rfc822Name(email.try_into().unwrap()));
    let cert = params.signed_by(&key, &issuer).unwrap();
    let ca_pem = dir.join("client-ca.pem");
    std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
    ClientCert {
        ca_pem,
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
    }
}

/// Service-to-service mutual TLS for tests: one CA (rcgen) and a
/// certificate per workload, laid out as cert-manager writes a Secret
/// (`tls.crt`, `tls.key`, `ca.crt`).
pub struct InternalPki {
    dir: PathBuf,
    ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl InternalPki {
    pub fn new(dir: &Path) -> InternalPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "authrelay internal test CA");
        let ca = params.self_signed(&key).unwrap();
        let dir = dir.join("internal-tls");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        InternalPki {
            dir,
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate (PEM file).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A certificate for `workload` valid for `sans` (host names and IP
    /// addresses), made on first use and shared by its replicas (one
    /// Secret per workload); returns the `AUTHRELAY__INTERNAL_TLS__*`
    /// environment that switches mutual TLS on with it, as
    /// k8s/components/mtls does.
    pub fn issue(&self, workload: &str, sans: &[&str]) -> Vec<(String, String)> {
        use rcgen::{CertificateParams, DnType, KeyPair};
        let dir = self.dir.join(workload);
        if !dir.join("tls.crt").exists() {
            // Written beside and renamed into place: a running replica
            // never reads half a file.
            let tmp = self.dir.join(format!(".{workload}.tmp"));
            std::fs::create_dir_all(&tmp).unwrap();
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, workload);
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            std::fs::write(tmp.join("tls.crt"), cert.pem()).unwrap();
            std::fs::write(tmp.join("tls.key"), key.serialize_pem()).unwrap();
            std::fs::write(tmp.join("ca.crt"), &self.ca_pem).unwrap();
            std::fs::rename(&tmp, &dir).unwrap();
        }
        let path = |f: &str| dir.join(f).display().to_string();
        vec![
            ("AUTHRELAY__INTERNAL_TLS__ENABLED".into(), "true".into()),
            ("AUTHRELAY__INTERNAL_TLS__CERT".into(), path("tls.crt")),
            ("AUTHRELAY__INTERNAL_TLS__KEY".into(), path("tls.key")),
            ("AUTHRELAY__INTERNAL_TLS__CA".into(), path("ca.crt")),
        ]
    }
}

impl Raw {
    /// Connect and send `preamble` (e.g. a PROXY header) before reading the
    /// greeting. Returns the greeting code with the connection.
    pub fn connect_with_preamble(addr: SocketAddr, preamble: &[u8]) -> (Raw, u16) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(preamble).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut r = Raw { stream, reader };
        let (code, _) = r.read();
        (r, code)
    }
}

/// The usual set-up of a test: a private Redis, an aiosmtpd sink as the
/// smarthost, the four services with `extra` TOML merged in, and the user
/// test@mailserver.foo.com with `password`.
pub fn standard_stack(name: &str, extra: &str, password: &str) -> (PathBuf, Redis, Sink, Stack) {
    standard_stack_with(
        name,
        StackOptions {
            extra_toml: extra.to_owned(),
            ..Default::default()
        },
        password,
    )
}

/// `standard_stack` with any `opts` (the smarthost is always the sink).
pub fn standard_stack_with(
    name: &str,
    opts: StackOptions,
    password: &str,
) -> (PathBuf, Redis, Sink, Stack) {
    let dir = scratch(name);
    let redis = Redis::start(&dir);
    let sink = Sink::start(&dir);
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            smarthost: Some(sink.addr),
            ..opts
        },
    );
    stack.add_user("test", "mailserver.foo.com", password);
    (dir, redis, sink, stack)
}
