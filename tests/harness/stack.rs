//! The fixtures most tests start from: the four services as separate
//! processes sharing one config file ([`Stack`]), and the usual set-up
//! around them ([`standard_stack`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{
    Proc, Redis, Sink, bin, exchange_key, run_authrelay, scratch, spawn_service, test_certificate,
    tokens_toml,
};

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

/// `extra` merged over `base`, table by table (extra wins), so a test can
/// set any key — also in tables the harness already writes — without
/// redefining a TOML table.
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
