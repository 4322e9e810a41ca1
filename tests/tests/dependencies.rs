//! Broken dependencies: Redis, credential-store, sasl-auth, relay-queue,
//! PostgreSQL and the spool disk fail under a running stack. AUTH fails closed
//! (454 4.7.0, never 235), DATA answers 451/452 (never 250 for a message not
//! kept), and service resumes by itself when the dependency returns — the
//! services that stayed up are never restarted.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use authrelay_e2e::*;
use authrelay_sasl::Mechanism;

const PASSWORD: &str = "dependencies-Secret-3";
const USER: &str = "test@mailserver.foo.com";

fn stack(name: &str, extra: &str) -> (std::path::PathBuf, Redis, Sink, Stack) {
    standard_stack(name, extra, PASSWORD)
}

/// One AUTH on a fresh connection (SCRAM-SHA-256: several steps, each through
/// sasl-auth, Redis and the credential store). 0 when the frontend is unreachable.
fn auth_once(addr: SocketAddr, password: &str) -> u16 {
    let Ok(probe) = TcpStream::connect(addr) else {
        return 0;
    };
    drop(probe);
    let mut c = Raw::connect(addr);
    let (code, _) = c.cmd("EHLO client.example");
    assert_eq!(code, 250);
    let code = auth_raw(&mut c, Mechanism::ScramSha256, USER, password);
    let _ = c.cmd("QUIT");
    code
}

/// Poll until AUTH with the right password is 235 again.
fn wait_auth_ok(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = 0;
    while Instant::now() < deadline {
        last = auth_once(addr, PASSWORD);
        if last == 235 {
            return;
        }
        assert_eq!(last, 454, "while {what} recovers");
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("AUTH did not recover after {what} returned (last {last})");
}

fn assert_fails_closed(addr: SocketAddr, what: &str) {
    for password in [PASSWORD, "wrong-password"] {
        let code = auth_once(addr, password);
        assert_eq!(code, 454, "{what} down: AUTH gave {code}");
    }
}

/// The credential store (or its database) is down. sasl-auth's secret
/// cache keeps a user it verified recently logging in (Dovecot's auth
/// cache does the same), but nothing it cannot be sure of: a wrong
/// password is looked up again before a 535, and that lookup fails
/// closed with 454; a user it has not cached gets 454 too.
fn assert_store_down_fails_closed(addr: SocketAddr, what: &str) {
    let code = auth_once(addr, "wrong-password");
    assert_eq!(code, 454, "{what} down: a wrong password gave {code}");
    let code = auth_once(addr, PASSWORD);
    assert!(
        code == 235 || code == 454,
        "{what} down: the right password gave {code}"
    );
}

#[test]
fn redis_restarted_under_load_fails_closed_with_454_and_resumes_by_itself() {
    let (_d, mut redis, _s, stack) = stack("dep-redis", "");
    let addr = stack.submission;
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(bool, u16)>>> = Arc::default();
    // Load: two clients with the right password, one with a wrong one.
    let workers: Vec<_> = [true, true, false]
        .into_iter()
        .map(|right| {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let code = auth_once(addr, if right { PASSWORD } else { "wrong-password" });
                    seen.lock().unwrap().push((right, code));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    redis.stop();
    std::thread::sleep(Duration::from_secs(1));
    assert_fails_closed(addr, "Redis");
    std::thread::sleep(Duration::from_secs(2));
    redis.restart();
    wait_auth_ok(addr, "Redis");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let seen = seen.lock().unwrap();
    let count = |right: bool, code: u16| seen.iter().filter(|s| **s == (right, code)).count();
    assert!(
        count(true, 454) > 0,
        "no 454 while Redis was down: {seen:?}"
    );
    assert!(count(true, 235) > 0, "{seen:?}");
    assert_eq!(count(false, 235), 0, "a wrong password got 235: {seen:?}");
    for (right, code) in seen.iter() {
        // An exchange cut in half by the restart may end as 535 (its state
        // is gone); anything else is 235 / 454 / 535 only.
        let allowed: &[u16] = if *right {
            &[235, 454, 535]
        } else {
            &[454, 535]
        };
        assert!(allowed.contains(code), "right={right} got {code}");
    }
}

#[test]
fn credential_store_killed_auth_is_454_and_resumes_after_restart() {
    let (_d, _r, _s, mut stack) = stack("dep-creds", "");
    assert_eq!(auth_once(stack.submission, PASSWORD), 235);
    stack.creds.kill();
    assert_store_down_fails_closed(stack.submission, "credential-store");
    stack.respawn("credential-store");
    wait_auth_ok(stack.submission, "credential-store");
    assert_eq!(auth_once(stack.submission, "wrong-password"), 535);
}

#[test]
fn sasl_auth_killed_auth_is_454_and_resumes_after_restart() {
    let (_d, _r, _s, mut stack) = stack("dep-sasl", "");
    assert_eq!(auth_once(stack.submission, PASSWORD), 235);
    stack.sasl.kill();
    assert_fails_closed(stack.submission, "sasl-auth");
    stack.respawn("sasl-auth");
    wait_auth_ok(stack.submission, "sasl-auth");
    assert_eq!(auth_once(stack.submission, "wrong-password"), 535);
}

/// One authenticated message with a unique subject: the final reply code.
fn send_one(addr: SocketAddr, subject: &str, body_bytes: usize) -> (u16, String) {
    let mut c = Raw::connect(addr);
    c.cmd("EHLO client.example");
    let code = auth_raw(&mut c, Mechanism::ScramSha256, USER, PASSWORD);
    if code != 235 {
        return (code, "auth".into());
    }
    assert_eq!(c.cmd(&format!("MAIL FROM:<{USER}>")).0, 250);
    assert_eq!(c.cmd("RCPT TO:<friend@outside.example>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    let filler = "x".repeat(76);
    let mut body = format!("Subject: {subject}\r\n\r\n");
    while body.len() < body_bytes {
        body.push_str(&filler);
        body.push_str("\r\n");
    }
    body.push_str(".\r\n");
    c.write(body.as_bytes());
    let reply = c.read();
    let _ = c.cmd("QUIT");
    reply
}

fn subjects(sink: &Sink) -> Vec<String> {
    sink.messages()
        .iter()
        .filter_map(|m| {
            let data = m["data"].as_str()?;
            data.lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .map(str::to_owned)
        })
        .collect()
}

#[test]
fn relay_queue_killed_data_is_451_resumes_and_nothing_acknowledged_is_lost() {
    // One user sending without pause: no stolen-account limits here.
    let (_d, _r, sink, mut stack) = stack("dep-queue", "[limits.per_user]\nenabled = false\n");
    let addr = stack.submission;
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<(String, u16, String)>>> = Arc::default();
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (stop, results) = (stop.clone(), results.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let subject = format!("load-{w}-{n}");
                    let (code, text) = send_one(addr, &subject, 20_000);
                    results.lock().unwrap().push((subject, code, text));
                    n += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    stack.queue.kill();
    // While it is down every end of DATA is 451 4.3.0.
    let (code, text) = send_one(addr, "while-down", 1000);
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("451 4.3.0"), "{text}");
    std::thread::sleep(Duration::from_secs(2));
    stack.respawn("relay-queue");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, text) = send_one(addr, "after-restart", 1000);
        if code == 250 {
            break;
        }
        assert_eq!(code, 451, "{text}");
        assert!(Instant::now() < deadline, "DATA did not recover");
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let results = results.lock().unwrap();
    let accepted: Vec<&String> = results
        .iter()
        .filter(|(_, c, _)| *c == 250)
        .map(|(s, _, _)| s)
        .collect();
    for (_, code, text) in results.iter() {
        assert!(matches!(code, 250 | 451), "unexpected {code}: {text}");
    }
    assert!(
        results.iter().any(|(_, c, _)| *c == 451),
        "no 451 during the outage"
    );
    // Every 250 is delivered (the spool survived the kill; the restarted
    // queue delivers what its predecessor acknowledged).
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut missing: Vec<&String> = accepted.clone();
    while !missing.is_empty() && Instant::now() < deadline {
        let got = subjects(&sink);
        missing.retain(|s| !got.contains(s));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    assert!(subjects(&sink).iter().any(|s| s == "after-restart"));
    assert!(!subjects(&sink).iter().any(|s| s == "while-down"));
}

/// A 1 MiB tmpfs, unmounted (lazily) when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount(8) must be installed");
        assert!(
            out.status.success(),
            "this test mounts a 1 MiB tmpfs as the spool and needs root (or CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(dir.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn spool_disk_full_is_452_4_3_1_and_never_250() {
    let dir = scratch("dep-disk-full");
    let spool = dir.join("small-spool");
    let _disk = SmallDisk::mount(&spool);
    let redis = Redis::start(&dir);
    let sink = Sink::start(&dir);
    let stack = Stack::start(
        &dir,
        &redis,
        StackOptions {
            smarthost: Some(sink.addr),
            extra_toml: format!("[relay_queue]\nspool_dir = \"{}\"\n", spool.display()),
            ..Default::default()
        },
    );
    stack.add_user("test", "mailserver.foo.com", PASSWORD);
    let (code, text) = send_one(stack.submission, "too-big-for-the-disk", 2 * 1024 * 1024);
    assert_eq!(code, 452, "{text}");
    assert!(text.starts_with("452 4.3.1"), "{text}");
    // The failed write left no debris that keeps the disk full: a small
    // message is queued and delivered.
    let (code, text) = send_one(stack.submission, "fits", 10_000);
    assert_eq!(code, 250, "{text}");
    let msgs = sink.wait_messages(1, Duration::from_secs(30));
    assert_eq!(msgs.len(), 1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(subjects(&sink), ["fits"]);
}

/// A TCP forwarder in front of PostgreSQL that can be cut (port closed,
/// connections reset) and restored on the same port: PostgreSQL going away
/// and coming back, without touching the shared server.
struct Cuttable {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Cuttable {
    fn start(upstream: SocketAddr) -> Cuttable {
        let port = free_port();
        let c = Cuttable {
            port,
            up: Arc::new(AtomicBool::new(false)),
            conns: Arc::default(),
        };
        c.restore(upstream);
        c
    }

    fn restore(&self, upstream: SocketAddr) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        self.up.store(true, Ordering::SeqCst);
        let (up, conns) = (self.up.clone(), self.conns.clone());
        std::thread::spawn(move || {
            while up.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(upstream) else {
                            continue;
                        };
                        for (mut from, mut to) in [
                            (client.try_clone().unwrap(), server.try_clone().unwrap()),
                            (server.try_clone().unwrap(), client.try_clone().unwrap()),
                        ] {
                            std::thread::spawn(move || {
                                let mut buf = [0u8; 16384];
                                while let Ok(n) = from.read(&mut buf) {
                                    if n == 0 || to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                let _ = to.shutdown(Shutdown::Both);
                            });
                        }
                        conns.lock().unwrap().extend([client, server]);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

#[test]
fn postgresql_unreachable_auth_is_454_and_resumes_when_it_returns() {
    let url = database_url();
    // postgres://user@host:port/db → host:port
    let hostport = url
        .split('@')
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("127.0.0.1:5432")
        .to_owned();
    let upstream: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(&hostport)
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("cannot resolve PostgreSQL at {hostport} from DATABASE_URL"));
    TcpStream::connect(upstream).unwrap_or_else(|e| {
        panic!("this test needs PostgreSQL at {upstream} ({e}); run scripts/test.sh, which starts one, or set DATABASE_URL")
    });
    // A fresh schema, so reruns and parallel tests do not share users.
    let schema = format!("authrelay_e2e_dep_pg_{}", std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {url}: {e}"));
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
            ))
            .await
            .unwrap();
    });
    let proxy = Cuttable::start(upstream);
    let sep = if url.contains('?') { '&' } else { '?' };
    let proxied = format!(
        "{}{sep}options=-csearch_path%3D{schema}",
        url.replacen(&hostport, &format!("127.0.0.1:{}", proxy.port), 1)
    );
    // PostgreSQL takes only a configured key (never one made on local disk).
    let key = token_file(&scratch("dep-postgres-key"), "credential-store.key");
    let (_d, _r, _s, stack) = stack(
        "dep-postgres",
        &format!(
            "[credential_store]\nbackend = \"postgres\"\ndatabase_url = \"{proxied}\"\n\
             encryption_key_file = \"{}\"\n",
            key.display()
        ),
    );
    assert_eq!(auth_once(stack.submission, PASSWORD), 235);
    proxy.cut();
    assert_store_down_fails_closed(stack.submission, "PostgreSQL");
    proxy.restore(upstream);
    wait_auth_ok(stack.submission, "PostgreSQL");
    assert_eq!(auth_once(stack.submission, "wrong-password"), 535);
}
