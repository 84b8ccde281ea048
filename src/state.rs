//! imipd's own durable state, in the `state` folder (never inside the vdir):
//! the ledger of handled Maildir messages, CANCELs held for events not yet
//! known, iTIP messages kept for a person to act on (COUNTER, REFRESH,
//! DECLINECOUNTER), and the lock that keeps two imipd processes from working
//! on the same state at once. Every write is atomic or an fsynced append.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::store::{safe_name, write_atomic};

/// The state folder.
pub struct State {
    dir: PathBuf,
    _lock: Option<File>,
}

impl State {
    /// Open the folder, creating it, and take the process lock.
    pub fn open(dir: &Path) -> anyhow::Result<State> {
        fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create state folder {}: {e}", dir.display()))?;
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path)
            .map_err(|e| anyhow::anyhow!("cannot create lock file {}: {e}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => anyhow::bail!(
                "cannot lock state folder {}: another imipd is working on it",
                dir.display()
            ),
            Err(fs::TryLockError::Error(e)) => {
                anyhow::bail!("cannot lock state folder {}: {e}", dir.display())
            }
        }
        Ok(State {
            dir: dir.to_path_buf(),
            _lock: Some(lock),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn sub(&self, name: &str) -> anyhow::Result<PathBuf> {
        let d = self.dir.join(name);
        fs::create_dir_all(&d)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", d.display()))?;
        Ok(d)
    }

    /// Keep a CANCEL for a UID that is not in the store yet.
    pub fn hold(&self, uid: &str, calendar_text: &str) -> anyhow::Result<()> {
        let d = self.sub("held")?;
        write_atomic(&d, &safe_name(uid), calendar_text.as_bytes())
    }

    /// The held CANCEL for a UID, if any.
    pub fn held(&self, uid: &str) -> Option<(PathBuf, String)> {
        let p = self.dir.join("held").join(safe_name(uid));
        fs::read_to_string(&p).ok().map(|t| (p, t))
    }

    /// Keep an iTIP message for a person to act on; returns where.
    pub fn record_attention(
        &self,
        method: &str,
        uid: &str,
        calendar_text: &str,
    ) -> anyhow::Result<PathBuf> {
        let d = self.sub("attention")?;
        let stamp = crate::clock::now().format("%Y%m%dT%H%M%S");
        let name = format!("{stamp}-{}-{}", method.to_ascii_lowercase(), safe_name(uid));
        write_atomic(&d, &name, calendar_text.as_bytes())?;
        Ok(d.join(name))
    }

    /// Keep a copy of a quarantined message; returns where.
    pub fn quarantine(&self, source: &str, raw: &[u8]) -> anyhow::Result<PathBuf> {
        let d = self.sub("quarantine")?;
        let stamp = crate::clock::now().format("%Y%m%dT%H%M%S");
        let name = format!("{stamp}-{}", safe_name(source).trim_end_matches(".ics"));
        let name = format!("{name}.eml");
        write_atomic(&d, &name, raw)?;
        Ok(d.join(name))
    }

    /// The ledger of handled messages of one Maildir account.
    pub fn ledger(&self, account: &str) -> anyhow::Result<Ledger> {
        let d = self.sub("maildir")?;
        Ledger::open(&d.join(format!(
            "{}.done",
            safe_name(account).trim_end_matches(".ics")
        )))
    }
}

/// An append-only list of handled message keys; each append is fsynced
/// before the next message is read, so a crash redoes at most one message.
pub struct Ledger {
    path: PathBuf,
    seen: HashSet<String>,
}

impl Ledger {
    pub fn open(path: &Path) -> anyhow::Result<Ledger> {
        let mut seen = HashSet::new();
        match File::open(path) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    let line =
                        line.map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                    if !line.is_empty() {
                        seen.insert(line);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        }
        Ok(Ledger {
            path: path.to_path_buf(),
            seen,
        })
    }

    pub fn contains(&self, key: &str) -> bool {
        self.seen.contains(key)
    }

    pub fn add(&mut self, key: &str) -> anyhow::Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", self.path.display()))?;
        // A torn last line from a crash is harmless: it never equals a key.
        writeln!(f, "{key}")
            .and_then(|_| f.sync_data())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", self.path.display()))?;
        self.seen.insert(key.to_string());
        Ok(())
    }
}
