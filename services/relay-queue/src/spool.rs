//! The durable spool. A message is one file: a JSON envelope line, then the
//! body. It is written under `tmp/`, fsynced, renamed into `queue/` and the
//! directory fsynced before Enqueue answers — so the frontend's `250` means
//! the message survives a crash or power loss. Delivery state lives beside
//! it in `<id>.state`, replaced atomically the same way. The spool and its
//! directories are 0700 and every file in it 0600, whatever the umask:
//! messages are other people's mail.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use authrelay_telemetry::private_fs;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Recipient {
    pub address: String,
    #[serde(default)]
    pub notify: Vec<String>,
    #[serde(default)]
    pub orcpt: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    pub mail_from: String,
    pub recipients: Vec<Recipient>,
    #[serde(default)]
    pub auth_id: String,
    #[serde(default)]
    pub auth_param: String,
    #[serde(default)]
    pub env_id: String,
    #[serde(default)]
    pub ret: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub smtputf8: bool,
    #[serde(default)]
    pub client_address: String,
    #[serde(default)]
    pub session_id: String,
    #[serde(default)]
    pub traceparent: String,
    /// Seconds since the epoch.
    pub queued_at: i64,
}

/// Per-message delivery progress.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliveryState {
    pub attempts: u32,
    /// Seconds since the epoch; 0 = now.
    pub next_attempt: i64,
    pub last_error: String,
    /// Recipients already delivered (by address), so a retry does not send twice.
    #[serde(default)]
    pub delivered: Vec<String>,
    #[serde(default)]
    pub held: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool disk full")]
    DiskFull,
    #[error("spool I/O: {0}")]
    Io(std::io::Error),
    #[error("no such message")]
    NotFound,
    #[error("corrupt spool file {0}")]
    Corrupt(String),
}

impl From<std::io::Error> for SpoolError {
    fn from(e: std::io::Error) -> Self {
        // ENOSPC / EDQUOT: the frontend answers 452 4.3.1 instead of 451.
        if matches!(e.raw_os_error(), Some(28) | Some(122)) {
            SpoolError::DiskFull
        } else if e.kind() == std::io::ErrorKind::NotFound {
            SpoolError::NotFound
        } else {
            SpoolError::Io(e)
        }
    }
}

#[derive(Clone)]
pub struct Spool {
    root: PathBuf,
    queue_sync: Arc<DirSync>,
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Group commit for the queue directory's fsync. Every commit renames its
/// file into `queue/` and then needs the directory on disk; concurrent
/// commits share one fsync instead of each paying its own: a commit is
/// covered by any fsync that *started* after its rename.
struct DirSync {
    dir: PathBuf,
    /// Tickets handed out, one per rename, in order.
    requested: AtomicU64,
    /// The highest ticket a finished fsync covers; the lock also makes
    /// fsyncs one at a time, so waiters pile up and one fsync serves them.
    covered: Mutex<u64>,
    /// fsyncs done, for tests of the sharing.
    fsyncs: AtomicU64,
}

impl DirSync {
    fn new(dir: PathBuf) -> DirSync {
        DirSync {
            dir,
            requested: AtomicU64::new(0),
            covered: Mutex::new(0),
            fsyncs: AtomicU64::new(0),
        }
    }

    /// Call after the rename; returns once the directory entry is durable.
    fn sync(&self) -> std::io::Result<()> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut covered = self.covered.lock().unwrap_or_else(|p| p.into_inner());
        if *covered >= ticket {
            return Ok(()); // someone's fsync began after our rename
        }
        // Every ticket up to here belongs to a rename already done.
        let upto = self.requested.load(Ordering::SeqCst);
        fsync_dir(&self.dir)?;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        *covered = upto;
        Ok(())
    }
}

/// Queue ids: 8-32 of [0-9A-Z], so they are safe as file names.
pub fn valid_id(id: &str) -> bool {
    (8..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

pub fn new_id() -> String {
    let raw: [u8; 8] = rand::random();
    hex::encode_upper(raw)
}

impl Spool {
    pub fn open(root: &Path) -> Result<Self, SpoolError> {
        private_fs::private_dir(root)?;
        for d in ["tmp", "queue"] {
            private_fs::private_dir(&root.join(d))?;
        }
        let spool = Spool {
            root: root.to_owned(),
            queue_sync: Arc::new(DirSync::new(root.join("queue"))),
        };
        // Leftovers of enqueues that never committed: not acknowledged, so drop.
        for entry in fs::read_dir(root.join("tmp"))? {
            let _ = fs::remove_file(entry?.path());
        }
        Ok(spool)
    }

    fn msg_path(&self, id: &str) -> PathBuf {
        self.root.join("queue").join(format!("{id}.msg"))
    }

    fn state_path(&self, id: &str) -> PathBuf {
        self.root.join("queue").join(format!("{id}.state"))
    }

    pub fn exists(&self, id: &str) -> bool {
        self.msg_path(id).exists()
    }

    /// Start writing a message; nothing is visible until [`Writer::commit`].
    pub fn writer(&self, id: &str, envelope: &Envelope) -> Result<Writer, SpoolError> {
        let tmp = self.root.join("tmp").join(format!("{id}.msg"));
        let mut file = private_fs::create_private_file(&tmp)?;
        let mut line =
            serde_json::to_vec(envelope).map_err(|e| SpoolError::Corrupt(e.to_string()))?;
        line.push(b'\n');
        file.write_all(&line)?;
        Ok(Writer {
            file: Some(std::io::BufWriter::with_capacity(64 * 1024, file)),
            tmp,
            dest: self.msg_path(id),
            body_len: 0,
            queue_sync: self.queue_sync.clone(),
        })
    }

    pub fn ids(&self) -> Result<Vec<String>, SpoolError> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(self.root.join("queue"))? {
            let name = entry?.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".msg"))
                && valid_id(id)
            {
                ids.push(id.to_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }

    pub fn envelope(&self, id: &str) -> Result<Envelope, SpoolError> {
        let mut r = BufReader::new(File::open(self.msg_path(id))?);
        let mut line = String::new();
        r.read_line(&mut line)?;
        serde_json::from_str(&line).map_err(|_| SpoolError::Corrupt(id.to_owned()))
    }

    /// Envelope and body.
    pub fn read(&self, id: &str) -> Result<(Envelope, Vec<u8>), SpoolError> {
        let mut r = BufReader::new(File::open(self.msg_path(id))?);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let env = serde_json::from_str(&line).map_err(|_| SpoolError::Corrupt(id.to_owned()))?;
        let mut body = Vec::new();
        r.read_to_end(&mut body)?;
        Ok((env, body))
    }

    pub fn size(&self, id: &str) -> u64 {
        fs::metadata(self.msg_path(id))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    pub fn state(&self, id: &str) -> DeliveryState {
        fs::read(self.state_path(id))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save_state(&self, id: &str, state: &DeliveryState) -> Result<(), SpoolError> {
        let tmp = self.root.join("tmp").join(format!("{id}.state"));
        let bytes = serde_json::to_vec(state).map_err(|e| SpoolError::Corrupt(e.to_string()))?;
        {
            let mut f = private_fs::open_private_file(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, self.state_path(id))?;
        fsync_dir(&self.root.join("queue"))?;
        Ok(())
    }

    /// Delivered or given up: remove the message, then its state.
    pub fn remove(&self, id: &str) -> Result<(), SpoolError> {
        fs::remove_file(self.msg_path(id))?;
        let _ = fs::remove_file(self.state_path(id));
        fsync_dir(&self.root.join("queue"))?;
        Ok(())
    }
}

pub struct Writer {
    file: Option<std::io::BufWriter<File>>,
    tmp: PathBuf,
    dest: PathBuf,
    body_len: u64,
    queue_sync: Arc<DirSync>,
}

impl Writer {
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), SpoolError> {
        self.body_len += chunk.len() as u64;
        self.file
            .as_mut()
            .expect("open until commit")
            .write_all(chunk)?;
        Ok(())
    }

    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// fsync the file, rename it into the queue, fsync the directory (shared
    /// with concurrent commits, see `DirSync`).
    /// Only after this returns may anyone be told the message is queued.
    pub fn commit(mut self) -> Result<(), SpoolError> {
        let file = self.file.take().expect("commit once");
        let file = file
            .into_inner()
            .map_err(|e| SpoolError::from(e.into_error()))?;
        file.sync_all()?;
        drop(file);
        fs::rename(&self.tmp, &self.dest)?;
        self.queue_sync.sync()?;
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Not committed: the message was never acknowledged; leave nothing.
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Envelope {
        Envelope {
            mail_from: "a@b.example".into(),
            recipients: vec![Recipient {
                address: "c@d.example".into(),
                notify: vec![],
                orcpt: String::new(),
            }],
            auth_id: String::new(),
            auth_param: String::new(),
            env_id: String::new(),
            ret: String::new(),
            body: String::new(),
            smtputf8: false,
            client_address: String::new(),
            session_id: String::new(),
            traceparent: String::new(),
            queued_at: 1,
        }
    }

    fn spool() -> (Spool, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "authrelay-spool-{}-{}",
            std::process::id(),
            new_id()
        ));
        (Spool::open(&dir).unwrap(), dir)
    }

    #[test]
    fn committed_message_reads_back_whole() {
        let (s, _d) = spool();
        let mut w = s.writer("ABCDEF0123", &env()).unwrap();
        w.write(b"Subject: x\r\n\r\nhello\r\n").unwrap();
        w.commit().unwrap();
        let (e, body) = s.read("ABCDEF0123").unwrap();
        assert_eq!(e, env());
        assert_eq!(body, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(s.ids().unwrap(), ["ABCDEF0123"]);
    }

    #[test]
    fn uncommitted_message_leaves_nothing() {
        let (s, d) = spool();
        {
            let mut w = s.writer("ABCDEF0124", &env()).unwrap();
            w.write(b"partial").unwrap();
        }
        assert!(s.ids().unwrap().is_empty());
        assert_eq!(fs::read_dir(d.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn state_replaced_atomically_and_removed_with_message() {
        let (s, _d) = spool();
        let w = s.writer("ABCDEF0125", &env()).unwrap();
        w.commit().unwrap();
        let st = DeliveryState {
            attempts: 2,
            last_error: "451 later".into(),
            ..Default::default()
        };
        s.save_state("ABCDEF0125", &st).unwrap();
        assert_eq!(s.state("ABCDEF0125"), st);
        s.remove("ABCDEF0125").unwrap();
        assert!(s.ids().unwrap().is_empty());
        assert_eq!(s.state("ABCDEF0125"), DeliveryState::default());
    }

    #[test]
    fn concurrent_commits_share_one_directory_fsync() {
        let (s, _dir) = spool();
        // Hold the directory lock as an fsync in progress would: every
        // commit renames its file, takes its ticket and waits behind it.
        let guard = s.queue_sync.covered.lock().unwrap();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let mut w = s.writer(&format!("GROUP{i:05}"), &env()).unwrap();
                    w.write(b"body\r\n").unwrap();
                    w.commit().unwrap();
                })
            })
            .collect();
        while s.queue_sync.requested.load(Ordering::SeqCst) < 8 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(guard);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.queue_sync.fsyncs.load(Ordering::Relaxed), 1);
        assert_eq!(s.ids().unwrap().len(), 8);
        // Alone, a commit pays its own fsync.
        let w = s.writer("ALONE00001", &env()).unwrap();
        w.commit().unwrap();
        assert_eq!(s.queue_sync.fsyncs.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn spool_directories_are_0700_and_messages_and_states_0600() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let (s, d) = spool();
        let mut w = s.writer("MODES00001", &env()).unwrap();
        // Before the commit, under tmp/, already private.
        assert_eq!(mode(&d.join("tmp/MODES00001.msg")), 0o600);
        w.write(b"Subject: private\r\n\r\nmail\r\n").unwrap();
        w.commit().unwrap();
        s.save_state("MODES00001", &DeliveryState::default())
            .unwrap();
        for dir in [d.clone(), d.join("tmp"), d.join("queue")] {
            assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        }
        for f in ["MODES00001.msg", "MODES00001.state"] {
            assert_eq!(mode(&d.join("queue").join(f)), 0o600, "{f}");
        }
        // A spool left open by an older version is tightened when opened.
        fs::set_permissions(d.join("queue"), fs::Permissions::from_mode(0o755)).unwrap();
        Spool::open(&d).unwrap();
        assert_eq!(mode(&d.join("queue")), 0o700);
    }

    #[test]
    fn ids_are_file_name_safe() {
        assert!(valid_id("0123456789ABCDEF"));
        assert!(!valid_id("../../etc"));
        assert!(!valid_id("abc"));
        assert!(valid_id(&new_id()));
    }
}
