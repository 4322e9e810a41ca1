//! A private `redis-server` per test, so a test may stop and restart it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Proc, free_port, which};

/// A private redis-server on an ephemeral port.
pub struct Redis {
    proc: Proc,
    pub port: u16,
    dir: PathBuf,
    aclfile: Option<PathBuf>,
}

impl Redis {
    pub fn start(dir: &Path) -> Redis {
        Self::start_free(dir, None)
    }

    /// A Redis that lets nobody in without credentials: its users are
    /// those of `aclfile` (Redis ACL file syntax, e.g. `user default off`).
    pub fn start_with_aclfile(dir: &Path, aclfile: &Path) -> Redis {
        Self::start_free(dir, Some(aclfile))
    }

    /// On a port that was free a moment ago. Tests run in parallel, so
    /// another test's server may take it first: then ours exits (it cannot
    /// bind), and it starts again on another port, rather than the test
    /// talking to the other test's Redis until that one goes away.
    fn start_free(dir: &Path, aclfile: Option<&Path>) -> Redis {
        for _ in 0..5 {
            if let Some(r) = Self::try_start_on(dir, free_port(), aclfile) {
                return r;
            }
        }
        panic!(
            "redis-server could not bind five ephemeral ports in a row (see its logs in {})",
            dir.display()
        );
    }

    fn start_on(dir: &Path, port: u16, aclfile: Option<&Path>) -> Redis {
        Self::try_start_on(dir, port, aclfile)
            .unwrap_or_else(|| panic!("redis-server exited at start on port {port} (taken?)"))
    }

    /// `None`: the server exited before it was ready (the port was taken).
    fn try_start_on(dir: &Path, port: u16, aclfile: Option<&Path>) -> Option<Redis> {
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
        let mut r = Redis {
            proc,
            port,
            dir: dir.to_owned(),
            aclfile: aclfile.map(Path::to_owned),
        };
        r.wait_ready().then_some(r)
    }

    /// Start again on the same port (after `stop`), empty, as a restarted
    /// Redis without persistence comes back.
    pub fn restart(&mut self) {
        self.proc.kill();
        let (dir, acl) = (self.dir.clone(), self.aclfile.clone());
        *self = Self::start_on(&dir, self.port, acl.as_deref());
    }

    /// Ready when the server answering on the port is this one: its
    /// `INFO server` names our process id (or, with an ACL file, it
    /// wants credentials while our process runs). False if ours exited.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        let ours = format!("process_id:{}\r\n", self.proc.pid());
        while Instant::now() < deadline {
            if self.proc.exited() {
                return false;
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"INFO server\r\n");
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got);
                    if text.contains(&ours) {
                        return true;
                    }
                    // NOAUTH: up, and wanting credentials (`start_with_aclfile`).
                    if text.starts_with("-NOAUTH") {
                        return !self.proc.exited();
                    }
                    if text.contains("process_id:") && text.contains("\r\n\r\n") {
                        break; // another test's server: ours has not bound yet
                    }
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

    /// How many times this Redis has run `command` (lower case, e.g.
    /// "zcard") since it started: `INFO commandstats`.
    pub fn calls(&self, command: &str) -> u64 {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "INFO", "commandstats"])
            .output()
            .expect("redis-cli (installed with redis-server)");
        let text = String::from_utf8_lossy(&out.stdout);
        let prefix = format!("cmdstat_{command}:calls=");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().expect("a call count"))
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
