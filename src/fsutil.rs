//! The file system, safely: atomic replacement (temp file, fsync, rename,
//! fsync of the folder), new files that never replace another, private
//! folders and files, no symbolic link ever followed where imipd writes,
//! safe file names from hostile UIDs, and the clean-up of temp files a kill
//! left behind. The store, the state, the outbox and the IMAP folder state
//! all write through here.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Whether `imipd check` (and a run) can write into a folder: create it
/// as a run would, then create and remove a probe file.
pub fn probe_writable(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    probe_file(dir)
}

/// Create and remove a probe file (named like a temp file, so that one a
/// kill leaves behind is removed on the next start).
pub(crate) fn probe_file(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(format!(".imipd-check.{}.tmp", std::process::id()));
    let f = open_new(&path, 0o600)
        .map_err(|e| anyhow::anyhow!("cannot write into {}: {e}", dir.display()))?;
    drop(f);
    fs::remove_file(&path).map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", path.display()))?;
    Ok(())
}

/// Remove the temp files a killed run left in a folder imipd writes into
/// (only ours: `.NAME.PID.tmp`, see [`write_atomic`]).
pub fn remove_temp_files(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for entry in rd.flatten() {
            if is_our_temp_file(&entry.file_name().to_string_lossy()) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// `.NAME.PID.tmp`, as [`write_atomic`] names its temp files.
pub(crate) fn is_our_temp_file(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.').and_then(|r| r.strip_suffix(".tmp")) else {
        return false;
    };
    rest.rsplit_once('.')
        .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// A file name derived from a UID that is always safe: only `[A-Za-z0-9@._+-]`,
/// no leading dot, at most 120 bytes; UIDs that need changes get a hash
/// suffix so that two different UIDs never share a name.
pub fn safe_name(uid: &str) -> String {
    let clean = !uid.is_empty()
        && uid.len() <= 100
        && !uid.starts_with('.')
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@._+-".contains(&b));
    if clean {
        return format!("{uid}.ics");
    }
    let mut prefix: String = uid
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@_+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    prefix = prefix.trim_matches('_').to_string();
    let hash = Sha256::digest(uid.as_bytes());
    let hex: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
    if prefix.is_empty() {
        format!("{hex}.ics")
    } else {
        format!("{prefix}-{hex}.ics")
    }
}

/// Create a new file for writing, never through a symbolic link and never
/// over an existing file (`O_CREAT | O_EXCL | O_NOFOLLOW`), with `mode`
/// (less the umask).
pub(crate) fn open_new(path: &Path, mode: u32) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Open a file for appending, creating it with `mode`; a symbolic link is
/// refused, not followed.
pub(crate) fn open_append(path: &Path, mode: u32) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(explain_link)
}

/// ELOOP from `O_NOFOLLOW`, said plainly.
pub(crate) fn explain_link(e: std::io::Error) -> std::io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        std::io::Error::new(
            e.kind(),
            "it is a symbolic link, and imipd does not follow links here",
        )
    } else {
        e
    }
}

/// Create the temp file `.NAME.PID.tmp` in `dir`. Something already at that
/// name (a kill's leftover, or a planted symbolic link) is removed — the
/// link itself, never what it points to — and the file created anew.
fn create_temp(dir: &Path, name: &str, mode: u32) -> std::io::Result<(PathBuf, fs::File)> {
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    match open_new(&tmp, mode) {
        Ok(f) => Ok((tmp, f)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            fs::remove_file(&tmp)?;
            open_new(&tmp, mode).map(|f| (tmp, f))
        }
        Err(e) => Err(explain_link(e)),
    }
}

/// How a replaced file's permissions are chosen.
#[derive(Clone, Copy)]
enum Mode {
    /// 0600: imipd's own state and the mail it keeps.
    Private,
    /// What the replaced file had; a new file gets 0666 less the umask
    /// (the calendar, which other programs read).
    Keep,
}

/// Write a private file (0600) so that readers see the old or the new
/// content, never half: a temp file in the same folder, fsync, rename over
/// the target, fsync the folder.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomic_as(dir, name, bytes, Mode::Private)
}

/// [`write_atomic`] for the calendar: a replaced file keeps its mode, a new
/// one gets the usual 0666 less the umask.
pub fn write_atomic_shared(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomic_as(dir, name, bytes, Mode::Keep)
}

fn write_atomic_as(dir: &Path, name: &str, bytes: &[u8], mode: Mode) -> anyhow::Result<()> {
    debug_assert!(!name.contains('/'));
    let target = dir.join(name);
    let mut tmp_path = None;
    let result = (|| -> std::io::Result<()> {
        let (tmp, mut f) = match mode {
            Mode::Private => create_temp(dir, name, 0o600)?,
            Mode::Keep => {
                let (tmp, f) = create_temp(dir, name, 0o666)?;
                if let Ok(m) = fs::symlink_metadata(&target) {
                    if m.is_file() {
                        f.set_permissions(fs::Permissions::from_mode(m.mode() & 0o777))?;
                    }
                }
                (tmp, f)
            }
        };
        tmp_path = Some(tmp.clone());
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &target)?;
        tmp_path = None;
        fs::File::open(dir)?.sync_all()?;
        Ok(())
    })();
    result.map_err(|e| {
        if let Some(tmp) = tmp_path {
            let _ = fs::remove_file(tmp);
        }
        anyhow::anyhow!("cannot write {}: {e}", target.display())
    })
}

/// Write a new private file (0600) that never replaces another: the content
/// goes to a temp file first (fsync), which is then linked to the first of
/// `names(0)`, `names(1)`, … that does not exist yet; the folder is fsynced.
/// Returns the name taken.
pub fn write_new(
    dir: &Path,
    bytes: &[u8],
    names: impl Fn(usize) -> String,
) -> anyhow::Result<String> {
    const TRIES: usize = 100_000;
    let first = names(0);
    debug_assert!(!first.contains('/'));
    let (tmp, mut f) = create_temp(dir, &first, 0o600)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", dir.join(&first).display()))?;
    let result = (|| -> anyhow::Result<String> {
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
        for i in 0..TRIES {
            let name = names(i);
            match fs::hard_link(&tmp, dir.join(&name)) {
                Ok(()) => {
                    let _ = fs::File::open(dir).and_then(|d| d.sync_all());
                    return Ok(name);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    // A file system without hard links: create the name
                    // exclusively and write it there.
                    tracing::debug!("cannot link {}: {e}", tmp.display());
                    let mut out = match open_new(&dir.join(&name), 0o600) {
                        Ok(o) => o,
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                        Err(e) => {
                            anyhow::bail!(
                                "cannot write {}: {}",
                                dir.join(&name).display(),
                                explain_link(e)
                            )
                        }
                    };
                    out.write_all(bytes)
                        .and_then(|_| out.sync_all())
                        .and_then(|_| fs::File::open(dir)?.sync_all())
                        .map_err(|e| {
                            anyhow::anyhow!("cannot write {}: {e}", dir.join(&name).display())
                        })?;
                    return Ok(name);
                }
            }
        }
        anyhow::bail!(
            "cannot write into {}: {TRIES} names are taken",
            dir.display()
        )
    })();
    drop(f);
    let _ = fs::remove_file(&tmp);
    result
}

/// Create a folder 0700 (its parents as usual), or make an existing one 0700.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {
            let m = fs::metadata(dir)?.permissions().mode();
            if m & 0o077 != 0 {
                fs::set_permissions(dir, fs::Permissions::from_mode(m & 0o700))?;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_uids_get_safe_names() {
        for uid in [
            "../../etc/passwd",
            "/abs",
            "a/b",
            ".hidden",
            "nul\0byte",
            &"x".repeat(500),
            "",
            "..",
            "é€",
        ] {
            let n = safe_name(uid);
            assert!(
                !n.contains('/') && !n.contains('\0') && !n.starts_with('.'),
                "{uid:?} → {n}"
            );
            assert!(n.len() <= 140, "{n}");
            assert!(n.ends_with(".ics"));
        }
        assert_eq!(safe_name("abc@google.com"), "abc@google.com.ics");
        assert_ne!(safe_name("a/b"), safe_name("a_b"));
    }

    #[test]
    fn writes_keep_modes_and_never_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("target");
        fs::write(&target, "precious").unwrap();
        std::os::unix::fs::symlink(
            &target,
            dir.path()
                .join(format!(".x.ics.{}.tmp", std::process::id())),
        )
        .unwrap();
        write_atomic_shared(dir.path(), "x.ics", b"one").unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
        let meta = fs::symlink_metadata(dir.path().join("x.ics")).unwrap();
        assert!(meta.is_file());
        fs::set_permissions(dir.path().join("x.ics"), fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic_shared(dir.path(), "x.ics", b"two").unwrap();
        let meta = fs::metadata(dir.path().join("x.ics")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640, "mode kept");
        write_atomic(dir.path(), "y", b"private").unwrap();
        let meta = fs::metadata(dir.path().join("y")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // write_new never replaces.
        let a = write_new(dir.path(), b"a", |i| format!("k-{i}")).unwrap();
        let b = write_new(dir.path(), b"b", |i| format!("k-{i}")).unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("k-0", "k-1"));
        assert_eq!(fs::read_to_string(dir.path().join("k-0")).unwrap(), "a");
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| is_our_temp_file(&e.file_name().to_string_lossy()))
            .collect();
        assert!(leftovers.is_empty());
    }
}
