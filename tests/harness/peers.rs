//! Independent peers the services talk to: the next hop (an aiosmtpd
//! sink, `tests/support/sink.py`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Proc, support};

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
