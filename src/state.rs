//! imipd's own durable state, in the `state` folder (never inside the vdir):
//! the ledger of handled Maildir messages, CANCELs held for events not yet
//! known, iTIP messages kept for a person to act on (COUNTER, REFRESH,
//! DECLINECOUNTER), copies of quarantined mail, and the lock that keeps two
//! imipd processes from working on the same state at once (a second one
//! waits for it, up to `state.lock_timeout`, then gives up with
//! [`LockBusy`]: exit status 75, so that an MTA retries).
//!
//! Everything here holds mail content and is private: the folder is 0700
//! and its files 0600 (tightened on open when an older version left them
//! open), and the lock, the ledgers and temp files are opened without
//! following symbolic links. Every write is atomic or an fsynced append;
//! kept copies get names that never collide (time, method, UID prefix and a
//! counter) and never replace one another.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::fsutil::{create_private_dir, explain_link, open_append, safe_name, write_new};

/// The lock stayed busy for the whole `state.lock_timeout`: another imipd
/// works on this state. The caller should exit with status 75 (EX_TEMPFAIL).
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot lock state folder {}: another imipd holds the lock (waited {} s, state.lock_timeout); try again later",
    dir.display(),
    waited.as_secs()
)]
pub struct LockBusy {
    pub dir: PathBuf,
    pub waited: Duration,
}

/// The state folder.
pub struct State {
    dir: PathBuf,
    /// `None` when opened for reading only (a dry run takes no lock).
    _lock: Option<File>,
}

impl State {
    /// Open the folder (creating it 0700, tightening what an older version
    /// left open) and take the process lock, waiting up to `lock_timeout`
    /// for another imipd to let it go.
    pub fn open(dir: &Path, lock_timeout: Duration) -> anyhow::Result<State> {
        create_private_dir(dir)
            .map_err(|e| anyhow::anyhow!("cannot create state folder {}: {e}", dir.display()))?;
        let lock = take_lock(dir, "lock", lock_timeout)?;
        // `respond` may be writing (it holds only the write lock): clean up
        // under that lock, so that its temp files are not taken for a
        // killed run's.
        let write = take_lock(dir, "write.lock", lock_timeout)?;
        tighten(dir, 0);
        drop(write);
        Ok(State {
            dir: dir.to_path_buf(),
            _lock: Some(lock),
        })
    }

    /// Open the folder for a command that changes the store and the state
    /// now and then beside a running service (`respond`, `counter`, `mcp`):
    /// the process lock is not taken (the service holds it); every change
    /// is made under [`State::write_lock`] instead. Nothing is tightened or
    /// cleaned here: the service may be writing.
    pub fn open_shared(dir: &Path) -> anyhow::Result<State> {
        create_private_dir(dir)
            .map_err(|e| anyhow::anyhow!("cannot create state folder {}: {e}", dir.display()))?;
        Ok(State {
            dir: dir.to_path_buf(),
            _lock: None,
        })
    }

    /// Take the write lock (`STATE/write.lock`), which every imipd holds
    /// while it changes the store, the state or the outbox: the processor
    /// for each message, `respond` and `counter` for their answer. It is
    /// let go when the returned guard is dropped. Waits up to `timeout`
    /// for another imipd ([`LockBusy`] then).
    pub fn write_lock(&self, timeout: Duration) -> anyhow::Result<WriteLock> {
        Ok(WriteLock {
            _file: take_lock(&self.dir, "write.lock", timeout)?,
        })
    }

    /// Open for reading only (a dry run): nothing is created, changed or
    /// locked; a folder that does not exist reads as empty.
    pub fn open_read_only(dir: &Path) -> State {
        State {
            dir: dir.to_path_buf(),
            _lock: None,
        }
    }

    /// Whether `imipd check` (and a run) can write the state folder: create
    /// it as a run would, then create and remove a probe file.
    pub fn probe_writable(dir: &Path) -> anyhow::Result<()> {
        create_private_dir(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        crate::fsutil::probe_file(dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn sub(&self, name: &str) -> anyhow::Result<PathBuf> {
        let d = self.dir.join(name);
        create_private_dir(&d)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", d.display()))?;
        Ok(d)
    }

    /// Keep a CANCEL for a UID that is not in the store yet, beside the
    /// others held for it (each instance may have its own); the same CANCEL
    /// twice is kept once. Returns where.
    pub fn hold(&self, uid: &str, calendar_text: &str) -> anyhow::Result<PathBuf> {
        let held = self.held(uid);
        if let Some((p, _)) = held.iter().find(|(_, t)| t == calendar_text) {
            return Ok(p.clone());
        }
        let d = self.sub("held")?.join(held_folder(uid));
        create_private_dir(&d)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", d.display()))?;
        let next = held
            .iter()
            .filter_map(|(p, _)| held_number(p))
            .max()
            .map_or(1, |n| n + 1);
        let name = write_new(&d, calendar_text.as_bytes(), |i| {
            format!("{:06}.ics", next + i as u64)
        })?;
        Ok(d.join(name))
    }

    /// The CANCELs held for a UID, oldest first.
    pub fn held(&self, uid: &str) -> Vec<(PathBuf, String)> {
        let held = self.dir.join("held");
        let mut out = Vec::new();
        // One file per UID, as older versions kept them.
        let legacy = held.join(safe_name(uid));
        if let Ok(t) = fs::read_to_string(&legacy) {
            out.push((legacy, t));
        }
        let mut numbered: Vec<(u64, PathBuf)> = fs::read_dir(held.join(held_folder(uid)))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter_map(|p| held_number(&p).map(|n| (n, p)))
            .collect();
        numbered.sort();
        for (_, p) in numbered {
            if let Ok(t) = fs::read_to_string(&p) {
                out.push((p, t));
            }
        }
        out
    }

    /// Forget held CANCELs once they are applied and the store is written.
    pub fn release_held(&self, uid: &str, paths: &[PathBuf]) {
        for p in paths {
            if let Err(e) = fs::remove_file(p) {
                tracing::warn!("cannot remove held CANCEL {}: {e}", p.display());
            }
        }
        // Gone once empty.
        let _ = fs::remove_dir(self.dir.join("held").join(held_folder(uid)));
    }

    /// Keep an iTIP message for a person to act on, under a name of its own
    /// (`TIME-METHOD-UID-N.ics`); returns where.
    pub fn record_attention(
        &self,
        method: &str,
        uid: &str,
        calendar_text: &str,
    ) -> anyhow::Result<PathBuf> {
        let d = self.sub("attention")?;
        let stamp = crate::clock::now().format("%Y%m%dT%H%M%S");
        let method = method.to_ascii_lowercase();
        let label = short(&safe_name(uid));
        let name = write_new(&d, calendar_text.as_bytes(), |i| {
            format!("{stamp}-{method}-{label}-{}.ics", i + 1)
        })?;
        Ok(d.join(name))
    }

    /// Keep a copy of a quarantined message under a name of its own
    /// (`TIME-SOURCE-N.eml`); returns where.
    pub fn quarantine(&self, source: &str, raw: &[u8]) -> anyhow::Result<PathBuf> {
        let d = self.sub("quarantine")?;
        let stamp = crate::clock::now().format("%Y%m%dT%H%M%S");
        let label = if source == "-" {
            "stdin".to_string()
        } else {
            short(&safe_name(source))
        };
        let name = write_new(&d, raw, |i| format!("{stamp}-{label}-{}.eml", i + 1))?;
        Ok(d.join(name))
    }
}

/// The write lock, held until dropped (see [`State::write_lock`]).
pub struct WriteLock {
    _file: File,
}

/// Take an exclusive lock on `DIR/NAME` (created 0600, never through a
/// symbolic link), waiting up to `timeout` for another imipd to let it go.
pub fn take_lock(dir: &Path, name: &str, timeout: Duration) -> anyhow::Result<File> {
    let lock_path = dir.join(name);
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&lock_path)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot open lock file {}: {}",
                lock_path.display(),
                explain_link(e)
            )
        })?;
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(lock),
            Err(fs::TryLockError::WouldBlock) => {
                let waited = start.elapsed();
                if waited >= timeout {
                    return Err(LockBusy {
                        dir: dir.to_path_buf(),
                        waited,
                    }
                    .into());
                }
                if waited.is_zero() {
                    tracing::debug!(lock = %lock_path.display(), "another imipd holds the lock; waiting");
                }
                std::thread::sleep(pause.min(timeout - waited));
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(fs::TryLockError::Error(e)) => {
                anyhow::bail!("cannot lock state folder {}: {e}", dir.display())
            }
        }
    }
}

/// Where the ledger of a Maildir account's handled messages is kept.
pub fn maildir_ledger(state: &Path, account: &str) -> PathBuf {
    state.join("maildir").join(format!(
        "{}.done",
        safe_name(account).trim_end_matches(".ics")
    ))
}

/// The folder of the CANCELs held for one UID (the `.d` keeps it apart from
/// the one-file-per-UID names of older versions).
fn held_folder(uid: &str) -> String {
    format!("{}.d", safe_name(uid))
}

/// The number of a held CANCEL file (`000001.ics`).
fn held_number(p: &Path) -> Option<u64> {
    let name = p.file_name()?.to_str()?;
    let n = name.strip_suffix(".ics")?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// A safe name without `.ics`, cut to a readable length.
fn short(safe: &str) -> String {
    let s = safe.trim_end_matches(".ics");
    // Safe names are ASCII: any byte is a character boundary.
    s[..s.len().min(60)].to_string()
}

/// Close what an older version (or an umask) left open to group and
/// others, and remove the temp files a killed run left. Symbolic links are
/// neither followed nor changed.
fn tighten(dir: &Path, depth: usize) {
    const MAX_DEPTH: usize = 4;
    let Ok(rd) = fs::read_dir(dir) else { return };
    for entry in rd.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.is_file() && crate::fsutil::is_our_temp_file(&entry.file_name().to_string_lossy()) {
            let _ = fs::remove_file(&path);
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            if let Err(e) = fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o700)) {
                tracing::warn!("cannot make {} private: {e}", path.display());
            }
        }
        if meta.is_dir() && depth < MAX_DEPTH {
            tighten(&path, depth + 1);
        }
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
        if let Some(dir) = self.path.parent() {
            create_private_dir(dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
        let mut f = open_append(&self.path, 0o600)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", self.path.display()))?;
        // A torn last line from a crash is harmless: it never equals a key.
        writeln!(f, "{key}")
            .and_then(|_| f.sync_data())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", self.path.display()))?;
        self.seen.insert(key.to_string());
        Ok(())
    }

    /// Add many keys with one write and one fsync (mail remembered without
    /// being processed: a crash before the fsync only means they are
    /// looked at again).
    pub fn add_all(&mut self, keys: &[String]) -> anyhow::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        if let Some(dir) = self.path.parent() {
            create_private_dir(dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
        let mut f = open_append(&self.path, 0o600)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", self.path.display()))?;
        let text: String = keys.iter().map(|k| format!("{k}\n")).collect();
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", self.path.display()))?;
        self.seen.extend(keys.iter().cloned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_messages_are_kept_in_order_once_and_released() {
        let d = tempfile::tempdir().unwrap();
        let s = State::open(d.path(), Duration::from_secs(1)).unwrap();
        let a = s.hold("u@x", "first").unwrap();
        let b = s.hold("u@x", "second").unwrap();
        assert_eq!(
            s.hold("u@x", "first").unwrap(),
            a,
            "the same text is kept once"
        );
        s.hold("other@x", "else").unwrap();
        let held: Vec<String> = s.held("u@x").into_iter().map(|(_, t)| t).collect();
        assert_eq!(held, ["first", "second"]);
        s.release_held("u@x", &[a]);
        assert_eq!(s.held("u@x"), vec![(b.clone(), "second".to_string())]);
        s.release_held("u@x", &[b]);
        assert!(s.held("u@x").is_empty());
        assert_eq!(s.held("other@x").len(), 1);
    }

    #[test]
    fn kept_copies_never_replace_each_other() {
        let d = tempfile::tempdir().unwrap();
        let s = State::open(d.path(), Duration::from_secs(1)).unwrap();
        let a = s.record_attention("COUNTER", "u@x", "one").unwrap();
        let b = s.record_attention("COUNTER", "u@x", "two").unwrap();
        assert_ne!(a, b);
        assert_eq!(std::fs::read_to_string(a).unwrap(), "one");
        let q1 = s.quarantine("-", b"m1").unwrap();
        let q2 = s.quarantine("-", b"m2").unwrap();
        assert_ne!(q1, q2);
    }

    #[test]
    fn the_lock_is_exclusive_and_waits_its_timeout() {
        let d = tempfile::tempdir().unwrap();
        let _held = State::open(d.path(), Duration::from_secs(1)).unwrap();
        let e = match State::open(d.path(), Duration::from_millis(50)) {
            Err(e) => e,
            Ok(_) => panic!("two states opened the same folder"),
        };
        assert!(e.is::<LockBusy>(), "{e:#}");
    }

    #[test]
    fn read_only_state_creates_nothing() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        let s = State::open_read_only(&dir);
        assert!(s.held("u@x").is_empty());
        assert!(!dir.exists());
    }

    #[test]
    fn the_ledger_remembers_across_opens() {
        let d = tempfile::tempdir().unwrap();
        let path = maildir_ledger(d.path(), "mail");
        let mut l = Ledger::open(&path).unwrap();
        assert!(!l.contains("k1"));
        l.add("k1").unwrap();
        l.add("k2").unwrap();
        let l = Ledger::open(&path).unwrap();
        assert!(l.contains("k1") && l.contains("k2") && !l.contains("k3"));
    }
}
