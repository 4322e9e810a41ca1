//! A cluster on one machine, wired as k8s/ wires it (issue 8, item 4):
//! three smtp-frontends, two sasl-auth replicas, one credential-store, one
//! relay-queue and Redis, each a separate process on its own loopback
//! address (Linux routes all of 127/8 to lo, so every "pod" has its own IP
//! and the same ports, as in a cluster). One shared TOML; per-pod values
//! (listen addresses, certificate paths) come from AUTHRELAY__* variables as
//! in the manifests, and mutual TLS is on (k8s/components/mtls): every gRPC
//! hop presents a certificate from one test CA (rcgen) and checks its peer.
//!
//! Endpoints: credential-store by host name (`https://localhost:PORT`,
//! re-resolved and checked against the certificate's name), the replicated
//! services as comma-separated lists of their pod addresses — what a
//! headless Service name resolves to.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use authrelay_e2e::*;
use authrelay_sasl::{ClientCredentials, ClientExchange, ClientStep, Mechanism};

const REALM: &str = "example.com";
const USER: &str = "alice@example.com";
const PASSWORD: &str = "correct-Horse-battery-9";
const WRONG: &str = "not-the-password";

const FE_IPS: [&str; 3] = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];
const SASL_IPS: [&str; 2] = ["127.0.0.21", "127.0.0.22"];
/// credential-store is dialled as `localhost`, which resolves here.
const CS_IP: &str = "127.0.0.1";
const RQ_IP: &str = "127.0.0.41";

/// Nine processes per cluster on a 2-core machine: one cluster at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// One port per role, free on every address that role listens on (pods
/// share port numbers; their IPs differ).
struct Ports {
    submission: u16,
    fe_admin: u16,
    fe_health: u16,
    sasl: u16,
    sasl_health: u16,
    sasl_metrics: u16,
    cs: u16,
    cs_health: u16,
    rq: u16,
    rq_health: u16,
}

fn port_free_on(ips: &[&str]) -> u16 {
    loop {
        let first = std::net::TcpListener::bind((ips[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let rest: Vec<_> = ips[1..]
            .iter()
            .map(|ip| std::net::TcpListener::bind((*ip, port)))
            .collect();
        if rest.iter().all(Result::is_ok) {
            return port;
        }
    }
}

/// What every pod of the cluster is made from: the shared config, the CA,
/// the ports, the endpoints.
struct Pods {
    dir: PathBuf,
    pki: InternalPki,
    config: PathBuf,
    ports: Ports,
    endpoints: Vec<(String, String)>,
}

struct Cluster {
    pods: Pods,
    _redis: Redis,
    sink: Sink,
    creds: Proc,
    sasl: Vec<Proc>,
    queue: Proc,
    frontends: Vec<Proc>,
}

impl std::ops::Deref for Cluster {
    type Target = Pods;
    fn deref(&self) -> &Pods {
        &self.pods
    }
}

impl Cluster {
    fn start(name: &str, extra_toml: &str) -> Cluster {
        let dir = scratch(name);
        let redis = Redis::start(&dir);
        let sink = Sink::start(&dir);
        let pki = InternalPki::new(&dir);
        let ports = Ports {
            submission: port_free_on(&FE_IPS),
            fe_admin: port_free_on(&FE_IPS),
            fe_health: port_free_on(&FE_IPS),
            sasl: port_free_on(&SASL_IPS),
            sasl_health: port_free_on(&SASL_IPS),
            sasl_metrics: port_free_on(&SASL_IPS),
            cs: port_free_on(&[CS_IP]),
            cs_health: port_free_on(&[CS_IP]),
            rq: port_free_on(&[RQ_IP]),
            rq_health: port_free_on(&[RQ_IP]),
        };
        let (cert, key) = test_certificate(&dir, "mail.example.com");
        let list = |ips: &[&str], port: u16| {
            ips.iter()
                .map(|ip| format!("https://{ip}:{port}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let endpoints = vec![
            (
                "AUTHRELAY__ENDPOINTS__SASL_AUTH".to_owned(),
                list(&SASL_IPS, ports.sasl),
            ),
            (
                "AUTHRELAY__ENDPOINTS__CREDENTIAL_STORE".to_owned(),
                format!("https://localhost:{}", ports.cs),
            ),
            (
                "AUTHRELAY__ENDPOINTS__RELAY_QUEUE".to_owned(),
                list(&[RQ_IP], ports.rq),
            ),
            (
                "AUTHRELAY__ENDPOINTS__FRONTEND".to_owned(),
                list(&FE_IPS, ports.fe_admin),
            ),
        ];
        let toml = format!(
            r#"hostname = "mail.example.com"
default_realm = "{REALM}"
data_dir = "{data}"

[redis]
url = "{redis}"

[sasl]
exchange_key_file = "{exchange_key}"

[credential_store]
# Fast hashing parameters keep the suite quick; production uses the defaults.
argon2_memory_kib = 8192
argon2_iterations = 1

[relay_queue]
smarthost = "{sink}"
retry_initial = "1s"
retry_max = "2s"

[frontend]
drain_grace = "10s"

[frontend.tls]
cert = "{cert}"
key = "{key}"
"#,
            data = dir.join("data").display(),
            redis = redis.url(),
            sink = sink.addr,
            cert = cert.display(),
            key = key.display(),
            exchange_key = exchange_key(&dir).display(),
        );
        let config = dir.join("authrelay.toml");
        std::fs::write(
            &config,
            merge_toml(&merge_toml(&toml, &tokens_toml(&dir)), extra_toml),
        )
        .unwrap();

        let pods = Pods {
            dir,
            pki,
            config,
            ports,
            endpoints,
        };
        let c = Cluster {
            creds: pods.spawn_creds(),
            sasl: (0..SASL_IPS.len()).map(|i| pods.spawn_sasl(i)).collect(),
            queue: pods.spawn_queue(),
            frontends: (0..FE_IPS.len()).map(|i| pods.spawn_frontend(i)).collect(),
            pods,
            _redis: redis,
            sink,
        };
        let (ok, out, err) = run_authrelay(
            &c.config,
            &c.admin_env(),
            &["user", "add", "--realm", REALM, "alice"],
            &format!("{PASSWORD}\n"),
        );
        assert!(ok, "user add over mutual TLS failed: {out} {err}");
        c
    }

    fn logs(&self) -> String {
        std::iter::once(&self.creds)
            .chain(&self.sasl)
            .chain(std::iter::once(&self.queue))
            .chain(&self.frontends)
            .map(|p| format!("==== {}\n{}", p.name, p.log_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Subjects of the messages the sink has, waiting for `want` of them.
    fn delivered(&self, want: &BTreeSet<String>, within: Duration) -> BTreeSet<String> {
        let deadline = Instant::now() + within;
        loop {
            let got: BTreeSet<String> = self
                .sink
                .messages()
                .iter()
                .filter_map(|m| subject(m["data"].as_str().unwrap_or("")))
                .collect();
            if want.is_subset(&got) || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Pods {
    fn spawn(
        &self,
        binary: &str,
        instance: &str,
        config: &Path,
        env: Vec<(String, String)>,
    ) -> Proc {
        let mut cmd = std::process::Command::new(bin(binary));
        cmd.arg("--config")
            .arg(config)
            .envs(self.endpoints.iter().cloned())
            .envs(env)
            .env("RUST_LOG", "info");
        Proc::spawn(instance, cmd, self.dir.join(format!("{instance}.log")))
    }

    fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (format!("AUTHRELAY__{k}"), v.clone()))
            .collect()
    }

    fn spawn_creds(&self) -> Proc {
        let mut env = self.pki.issue(
            "credential-store",
            &["credential-store-headless", "localhost", CS_IP],
        );
        env.extend(Self::env(&[
            (
                "CREDENTIAL_STORE__LISTEN",
                format!("{CS_IP}:{}", self.ports.cs),
            ),
            (
                "INTERNAL_TLS__HEALTH_LISTEN",
                format!("{CS_IP}:{}", self.ports.cs_health),
            ),
        ]));
        let mut p = self.spawn("credential-store", "credential-store", &self.config, env);
        p.addr("grpc");
        p
    }

    fn spawn_sasl(&self, i: usize) -> Proc {
        let ip = SASL_IPS[i];
        // One certificate per workload, as one Secret per Deployment.
        let mut env = self.pki.issue(
            "sasl-auth",
            &["sasl-auth-headless", SASL_IPS[0], SASL_IPS[1]],
        );
        env.extend(Self::env(&[
            ("SASL_AUTH__LISTEN", format!("{ip}:{}", self.ports.sasl)),
            (
                "INTERNAL_TLS__HEALTH_LISTEN",
                format!("{ip}:{}", self.ports.sasl_health),
            ),
            (
                "TELEMETRY__METRICS_LISTEN",
                format!("{ip}:{}", self.ports.sasl_metrics),
            ),
        ]));
        let mut p = self.spawn("sasl-auth", &format!("sasl-auth-{i}"), &self.config, env);
        p.addr("grpc");
        p
    }

    fn spawn_queue(&self) -> Proc {
        let mut env = self
            .pki
            .issue("relay-queue", &["relay-queue-headless", RQ_IP]);
        env.extend(Self::env(&[
            ("RELAY_QUEUE__LISTEN", format!("{RQ_IP}:{}", self.ports.rq)),
            (
                "INTERNAL_TLS__HEALTH_LISTEN",
                format!("{RQ_IP}:{}", self.ports.rq_health),
            ),
        ]));
        let mut p = self.spawn("relay-queue", "relay-queue", &self.config, env);
        p.addr("grpc");
        p
    }

    /// Frontend `i` on its own address. Its listener is the one key that
    /// differs per pod and has no variable (a TOML array): a per-pod file
    /// merged over the shared one. In the cluster every pod binds 0.0.0.0.
    fn spawn_frontend(&self, i: usize) -> Proc {
        let ip = FE_IPS[i];
        let config = self.dir.join(format!("smtp-frontend-{i}.toml"));
        let shared = std::fs::read_to_string(&self.config).unwrap();
        let listener = format!(
            "[[frontend.listeners]]\naddress = \"{ip}:{}\"\nrole = \"submission\"\n",
            self.ports.submission
        );
        std::fs::write(&config, merge_toml(&shared, &listener)).unwrap();
        let mut env = self.pki.issue(
            "smtp-frontend",
            &["smtp-frontend-admin", FE_IPS[0], FE_IPS[1], FE_IPS[2]],
        );
        env.extend(Self::env(&[
            (
                "FRONTEND__ADMIN_LISTEN",
                format!("{ip}:{}", self.ports.fe_admin),
            ),
            (
                "INTERNAL_TLS__HEALTH_LISTEN",
                format!("{ip}:{}", self.ports.fe_health),
            ),
        ]));
        let mut p = self.spawn("smtp-frontend", &format!("smtp-frontend-{i}"), &config, env);
        p.addr("smtp submission");
        p.addr("grpc admin");
        p
    }

    fn admin_env(&self) -> Vec<(String, String)> {
        let mut env = self.endpoints.clone();
        env.extend(self.pki.issue("authrelay-admin", &["authrelay-admin"]));
        env
    }

    fn submission(&self, i: usize) -> SocketAddr {
        format!("{}:{}", FE_IPS[i], self.ports.submission)
            .parse()
            .unwrap()
    }
}

fn subject(data: &str) -> Option<String> {
    data.lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .map(|s| s.trim().to_owned())
}

/// A line-level SMTP client whose every step can fail (servers die in
/// these tests): errors are values, not panics.
struct Smtp {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

type Io<T> = std::io::Result<T>;

impl Smtp {
    /// Connect and read the greeting; Ok only for 220.
    fn connect(addr: SocketAddr) -> Io<Smtp> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut s = Smtp {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        };
        match s.read()? {
            (220, _) => Ok(s),
            (code, text) => Err(std::io::Error::other(format!("greeting {code} {text}"))),
        }
    }

    fn read(&mut self) -> Io<(u16, String)> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            text.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Ok((code, text));
            }
        }
    }

    fn cmd(&mut self, line: &str) -> Io<(u16, String)> {
        self.stream.write_all(format!("{line}\r\n").as_bytes())?;
        self.read()
    }

    /// EHLO and a whole AUTH exchange; the final reply code.
    fn login(&mut self, mech: Mechanism, password: &str) -> Io<u16> {
        self.cmd("EHLO client.example")?;
        let (ex, code, text) = self.auth_begin(mech, password)?;
        self.auth_finish(ex, code, text)
    }

    /// The AUTH command (with an initial response where the mechanism has one).
    fn auth_begin(&mut self, mech: Mechanism, password: &str) -> Io<(ClientExchange, u16, String)> {
        // DIGEST-MD5 carries the realm in its own directive (RFC 2831
        // §2.1.2), so its username is the bare name.
        let user = if mech == Mechanism::DigestMd5 {
            "alice"
        } else {
            USER
        };
        let mut ex = ClientExchange::new(
            mech,
            ClientCredentials::new(user.to_owned(), password.to_owned()),
        )
        .unwrap();
        let (code, text) = match ex.initial_response() {
            Some(ir) => self.cmd(&format!("AUTH {} {}", mech.name(), b64(&ir)))?,
            None => self.cmd(&format!("AUTH {}", mech.name()))?,
        };
        Ok((ex, code, text))
    }

    /// Answer challenges until the server's verdict.
    fn auth_finish(&mut self, mut ex: ClientExchange, mut code: u16, mut text: String) -> Io<u16> {
        use base64::Engine;
        while code == 334 {
            let challenge = base64::engine::general_purpose::STANDARD
                .decode(text[4..].trim())
                .map_err(std::io::Error::other)?;
            let resp = match ex.step(&challenge) {
                Ok(ClientStep::Respond(r)) => r,
                Ok(ClientStep::Done) => Vec::new(),
                Err(_) => b"*".to_vec(),
            };
            (code, text) = self.cmd(&b64(&resp))?;
        }
        Ok(code)
    }

    /// One message with `Subject: id`; the reply to the final dot.
    fn send(&mut self, id: &str) -> Io<u16> {
        for (line, want) in [
            (format!("MAIL FROM:<{USER}>"), 250),
            ("RCPT TO:<bob@example.net>".to_owned(), 250),
            ("DATA".to_owned(), 354),
        ] {
            let (code, text) = self.cmd(&line)?;
            if code != want {
                return Err(std::io::Error::other(format!("{line}: {text}")));
            }
        }
        self.stream.write_all(
            format!("Subject: {id}\r\nFrom: <{USER}>\r\n\r\nhello from {id}\r\n.\r\n").as_bytes(),
        )?;
        Ok(self.read()?.0)
    }
}

fn metric_sum(addr: &str, name: &str) -> f64 {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return -1.0;
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn clients_spread_over_three_frontends_authenticate_with_every_mechanism_and_relay() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start("cluster-spread", "");
    let mut want = BTreeSet::new();
    for (i, ip) in FE_IPS.iter().enumerate() {
        // PLAIN after STARTTLS, by Python's smtplib.
        let id = format!("spread-{i}-PLAIN");
        let r = smtplib(
            serde_json::json!({
                "host": ip, "port": c.ports.submission, "starttls": true,
                "mech": "PLAIN", "user": USER, "from": USER, "to": ["bob@example.net"],
                "body": format!("Subject: {id}\r\n\r\nhello\r\n"),
            }),
            PASSWORD,
        );
        assert_eq!(r["auth"][0], 235, "frontend {i}: {r}");
        assert_eq!(r["send"]["ok"], true, "frontend {i}: {r}");
        want.insert(id);
        // The challenge-response mechanisms, before TLS, by our client.
        for mech in [
            Mechanism::CramMd5,
            Mechanism::DigestMd5,
            Mechanism::ScramSha1,
            Mechanism::ScramSha256,
        ] {
            let id = format!("spread-{i}-{}", mech.name());
            let mut s = Smtp::connect(c.submission(i)).unwrap();
            assert_eq!(s.login(mech, PASSWORD).unwrap(), 235, "{id}");
            assert_eq!(s.send(&id).unwrap(), 250, "{id}");
            let _ = s.cmd("QUIT");
            want.insert(id);
        }
    }
    let got = c.delivered(&want, Duration::from_secs(60));
    assert!(
        want.is_subset(&got),
        "missing at the sink: {:?}\n{}",
        want.difference(&got).collect::<Vec<_>>(),
        c.logs()
    );
    // Per-request balancing: both sasl-auth replicas took exchange steps
    // (15 AUTHs, ~35 calls: one replica alone would be a 2^-34 chance).
    for ip in SASL_IPS {
        let addr = format!("{ip}:{}", c.ports.sasl_metrics);
        let n = metric_sum(&addr, "authrelay_redis_duration_seconds_count");
        eprintln!("sasl-auth {ip}: {n} Redis operations");
        assert!(
            n > 0.0,
            "sasl-auth at {ip} did no work ({n}): not balanced per request"
        );
    }
}

#[test]
fn a_grpc_call_without_a_client_certificate_is_refused_and_probes_read_the_plain_health_port() {
    use authrelay_proto::credentials::v1::ListUsersRequest;
    use authrelay_proto::credentials::v1::credential_store_client::CredentialStoreClient;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start("cluster-mtls", "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cs = format!("https://localhost:{}", c.ports.cs);
    // As the administrator: a certificate of our CA, and the admin token.
    let admin = all_tokens(&c.dir);
    let list = |tls: Option<ClientTlsConfig>, url: String| {
        let admin = admin.clone();
        rt.block_on(async move {
            let mut ep = Endpoint::from_shared(url).unwrap();
            if let Some(tls) = tls {
                ep = ep.tls_config(tls).unwrap();
            }
            CredentialStoreClient::with_interceptor(ep.connect_lazy(), admin)
                .list_users(ListUsersRequest::default())
                .await
        })
    };
    let ca = Certificate::from_pem(c.pki.ca_pem());
    // Trusts the server, presents nothing: refused in the handshake.
    let err = list(
        Some(
            ClientTlsConfig::new()
                .ca_certificate(ca.clone())
                .domain_name("localhost"),
        ),
        cs.clone(),
    )
    .unwrap_err();
    // Refused in the TLS layer (the alert, or the close after it, depending
    // on which the client reads first), never by a gRPC handler.
    let refused_by_tls = |e: &tonic::Status| {
        let text = format!("{e:?}");
        text.contains("tonic::transport::Error") && !text.contains("PermissionDenied")
    };
    assert!(refused_by_tls(&err), "{err:?}");
    // Plain text: no answer either.
    let err = list(None, format!("http://{CS_IP}:{}", c.ports.cs)).unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);
    // A certificate from another CA: refused.
    let rogue = InternalPki::new(&c.dir.join("rogue"));
    let env = rogue.issue("intruder", &["intruder"]);
    let file =
        |k: &str| std::fs::read(&env.iter().find(|(n, _)| n.ends_with(k)).unwrap().1).unwrap();
    let err = list(
        Some(
            ClientTlsConfig::new()
                .ca_certificate(ca.clone())
                .domain_name("localhost")
                .identity(Identity::from_pem(file("__CERT"), file("__KEY"))),
        ),
        cs.clone(),
    )
    .unwrap_err();
    assert!(refused_by_tls(&err), "{err:?}");
    // The admin's certificate from our CA: served.
    let env = c.pki.issue("authrelay-admin", &["authrelay-admin"]);
    let file =
        |k: &str| std::fs::read(&env.iter().find(|(n, _)| n.ends_with(k)).unwrap().1).unwrap();
    let users = list(
        Some(
            ClientTlsConfig::new()
                .ca_certificate(ca)
                .domain_name("localhost")
                .identity(Identity::from_pem(file("__CERT"), file("__KEY"))),
        ),
        cs,
    )
    .expect("a certificate from the internal CA is served")
    .into_inner();
    assert!(format!("{users:?}").contains("alice"), "{users:?}");

    // Probes read the plain-text port, which serves health and nothing else.
    let health = |addr: String, service: &str| {
        let service = service.to_owned();
        rt.block_on(async move {
            let ch = Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_lazy();
            HealthClient::new(ch)
                .check(HealthCheckRequest { service })
                .await
                .map(|r| r.into_inner().status())
        })
    };
    let cs_health = format!("{CS_IP}:{}", c.ports.cs_health);
    assert_eq!(
        health(
            cs_health.clone(),
            "authrelay.credentials.v1.CredentialStore"
        )
        .unwrap(),
        ServingStatus::Serving
    );
    let err = list(None, format!("http://{cs_health}")).unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");

    // A frontend's readiness follows relay-queue: down → NOT_SERVING (the
    // load balancer stops sending it clients), back → SERVING.
    let fe_health = format!("{}:{}", FE_IPS[0], c.ports.fe_health);
    assert_eq!(
        health(fe_health.clone(), "").unwrap(),
        ServingStatus::Serving
    );
    c.queue.kill();
    wait_for(
        "frontend NOT_SERVING without relay-queue",
        Duration::from_secs(30),
        || health(fe_health.clone(), "").ok() == Some(ServingStatus::NotServing),
    );
    c.queue = c.spawn_queue();
    wait_for("frontend SERVING again", Duration::from_secs(30), || {
        health(fe_health.clone(), "").ok() == Some(ServingStatus::Serving)
    });
}

#[test]
fn sigkill_of_one_frontend_drops_only_its_connections_and_its_clients_carry_on_elsewhere() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start("cluster-sigkill", "");
    // Two authenticated sessions on each frontend.
    let mut sessions: Vec<(usize, Smtp)> = Vec::new();
    for i in 0..FE_IPS.len() {
        for _ in 0..2 {
            let mut s = Smtp::connect(c.submission(i)).unwrap();
            assert_eq!(s.login(Mechanism::ScramSha256, PASSWORD).unwrap(), 235);
            sessions.push((i, s));
        }
    }
    let victim = 1;
    c.frontends[victim].kill(); // SIGKILL: no drain, no goodbye
    let mut want = BTreeSet::new();
    for (n, (i, s)) in sessions.iter_mut().enumerate() {
        let id = format!("sigkill-{n}-fe{i}");
        let r = s.send(&id);
        if *i == victim {
            assert!(
                r.is_err(),
                "a session on the killed frontend still answered: {r:?}"
            );
            // The client reconnects to another frontend and carries on.
            let other = if n % 2 == 0 { 0 } else { 2 };
            let mut again = Smtp::connect(c.submission(other)).unwrap();
            assert_eq!(again.login(Mechanism::DigestMd5, PASSWORD).unwrap(), 235);
            let id = format!("sigkill-{n}-again-fe{other}");
            assert_eq!(again.send(&id).unwrap(), 250, "{id}");
            want.insert(id);
        } else {
            assert_eq!(r.unwrap(), 250, "session {n} on surviving frontend {i}");
            want.insert(id);
        }
    }
    let got = c.delivered(&want, Duration::from_secs(60));
    assert!(want.is_subset(&got), "{want:?} vs {got:?}\n{}", c.logs());
    assert_eq!(want.len(), 6);
}

#[test]
fn killing_a_sasl_auth_replica_mid_exchange_lets_digest_md5_and_scram_finish_on_the_other() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start("cluster-sasl-kill", "");
    // Six exchanges on the three frontends, each stopped after its first
    // challenge; their state is in Redis. With per-request balancing some
    // of them began on the replica about to die.
    let mechs = [
        Mechanism::DigestMd5,
        Mechanism::ScramSha256,
        Mechanism::DigestMd5,
        Mechanism::ScramSha1,
        Mechanism::ScramSha256,
        Mechanism::DigestMd5,
    ];
    let mut pending = Vec::new();
    for (n, mech) in mechs.into_iter().enumerate() {
        let mut s = Smtp::connect(c.submission(n % 3)).unwrap();
        s.cmd("EHLO client.example").unwrap();
        let (ex, code, text) = s.auth_begin(mech, PASSWORD).unwrap();
        assert_eq!(code, 334, "{}: {text}", mech.name());
        pending.push((n, mech, s, ex, code, text));
    }
    c.sasl[0].kill();
    let dead = format!("{}:{}", SASL_IPS[0], c.ports.sasl);
    // Each frontend's channel drops the replica once it stops accepting
    // connections (checked every second); wait for that, by its log.
    for fe in &c.frontends {
        wait_for(
            &format!("{} to drop {dead}", fe.name),
            Duration::from_secs(30),
            || {
                fe.log_text().lines().any(|l| {
                    l.contains("endpoint changed")
                        && l.contains(&dead)
                        && l.contains("accepting=false")
                })
            },
        );
    }
    let mut want = BTreeSet::new();
    for (n, mech, mut s, ex, code, text) in pending {
        let verdict = s.auth_finish(ex, code, text).unwrap();
        assert_eq!(
            verdict,
            235,
            "{} exchange {n} after the replica died\n{}",
            mech.name(),
            c.logs()
        );
        let id = format!("sasl-kill-{n}-{}", mech.name());
        assert_eq!(s.send(&id).unwrap(), 250);
        want.insert(id);
    }
    let got = c.delivered(&want, Duration::from_secs(60));
    assert!(want.is_subset(&got), "{want:?} vs {got:?}");
    // New exchanges keep working on the survivor alone.
    let mut s = Smtp::connect(c.submission(0)).unwrap();
    assert_eq!(s.login(Mechanism::ScramSha256, PASSWORD).unwrap(), 235);
}

#[test]
fn a_brute_force_limit_trips_on_failures_spread_over_all_frontends() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start(
        "cluster-bruteforce",
        "[sasl.limits]\nwindow = \"60s\"\nmax_failures_per_ip = 100\nmax_failures_per_user = 6\nblock_delay = \"1s\"\n",
    );
    // Six wrong guesses, two per frontend, each over a fresh connection.
    for n in 0..6 {
        let mut s = Smtp::connect(c.submission(n % 3)).unwrap();
        assert_eq!(
            s.login(Mechanism::CramMd5, WRONG).unwrap(),
            535,
            "guess {n}"
        );
    }
    // No frontend alone saw more than two: the limit is shared through Redis.
    for i in 0..FE_IPS.len() {
        let mut s = Smtp::connect(c.submission(i)).unwrap();
        s.cmd("EHLO client.example").unwrap();
        let (ex, code, text) = s.auth_begin(Mechanism::CramMd5, PASSWORD).unwrap();
        let (code, text) = if code == 334 {
            let verdict = s.auth_finish(ex, code, text).unwrap();
            (verdict, String::new())
        } else {
            (code, text)
        };
        assert_eq!(
            code, 454,
            "frontend {i}: the right password while blocked: {text}"
        );
    }
}

#[test]
fn a_rolling_restart_of_every_frontend_under_load_loses_no_acknowledged_message() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // One user sending without pause: no stolen-account limits here.
    let mut c = Cluster::start("cluster-rolling", "[limits.per_user]\nenabled = false\n");
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let addrs: Vec<SocketAddr> = (0..FE_IPS.len()).map(|i| c.submission(i)).collect();
    let clients: Vec<_> = (0..3)
        .map(|k| {
            let (stop, acked, refused, addrs) =
                (stop.clone(), acked.clone(), refused.clone(), addrs.clone());
            std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let id = format!("rolling-c{k}-{n}");
                    let attempt = || -> Io<u16> {
                        let mut s = Smtp::connect(addrs[(n + k) % addrs.len()])?;
                        if s.login(Mechanism::CramMd5, PASSWORD)? != 235 {
                            return Ok(0);
                        }
                        let code = s.send(&id)?;
                        let _ = s.cmd("QUIT");
                        Ok(code)
                    };
                    match attempt() {
                        Ok(250) => acked.lock().unwrap().push(id),
                        _ => {
                            // Not acknowledged: the client tries again
                            // elsewhere; nothing is owed for this one.
                            refused.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            })
        })
        .collect();
    let count = |a: &Arc<Mutex<Vec<String>>>| a.lock().unwrap().len();
    wait_for(
        "traffic before the restart",
        Duration::from_secs(60),
        || count(&acked) >= 6,
    );
    for i in 0..FE_IPS.len() {
        let before = count(&acked);
        c.frontends[i].signal("TERM");
        let status = c.frontends[i].wait_exit(Duration::from_secs(30));
        assert!(
            status.is_some(),
            "frontend {i} did not drain and exit within 30s"
        );
        assert!(
            c.frontends[i].log_text().contains("draining"),
            "frontend {i} exited without draining"
        );
        c.frontends[i] = c.spawn_frontend(i);
        wait_for(
            &format!("traffic after restarting frontend {i}"),
            Duration::from_secs(60),
            || count(&acked) >= before + 6,
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.join().unwrap();
    }
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let got = c.delivered(&acked, Duration::from_secs(120));
    let lost: Vec<_> = acked.difference(&got).collect();
    eprintln!(
        "rolling restart: {} acknowledged, {} attempts not acknowledged, {} lost",
        acked.len(),
        refused.load(Ordering::Relaxed),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}\n{}",
        c.logs()
    );
    assert!(
        acked.len() >= 24,
        "too little traffic to mean anything: {}",
        acked.len()
    );
}
