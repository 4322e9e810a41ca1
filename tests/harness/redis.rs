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
