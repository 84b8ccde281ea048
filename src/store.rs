//! The vdir store: one `.ics` file per calendar object (all components of
//! one UID) directly in one folder, as khal, todoman and vdirsyncer read it.
//! Owns safe file names (whatever the UID holds, nothing lands outside the
//! folder), atomic replacement (temp file, fsync, rename, fsync folder), and
//! the UID → file index that keeps lookups O(1) with many thousands of files.
//! Files that are not `.ics`, and dot-files, are left alone.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use calcard::icalendar::ICalendar;
use sha2::{Digest, Sha256};

use crate::ical::{self, Node};

/// An open vdir collection.
pub struct Store {
    dir: PathBuf,
    /// UID → file name (not path) of the object that holds it.
    index: HashMap<String, String>,
    /// Every object file name, for choosing free names.
    names: HashSet<String>,
}

impl Store {
    /// Open (and create if needed) the folder, and index the UIDs of its
    /// `.ics` files.
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create store folder {}: {e}", dir.display()))?;
        let mut index = HashMap::new();
        let mut names = HashSet::new();
        let entries = fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("cannot read store folder {}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_our_temp_file(&name) {
                // Left behind by a run that was killed mid-write.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            if !is_object_name(&name) {
                continue;
            }
            let Ok(text) = fs::read(entry.path()) else {
                continue;
            };
            names.insert(name.clone());
            for uid in scan_uids(&text) {
                index.entry(uid).or_insert_with(|| name.clone());
            }
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            index,
            names,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Every UID in the store.
    pub fn uids(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    /// The file holding a UID, if any.
    pub fn path_of(&self, uid: &str) -> Option<PathBuf> {
        self.index.get(uid).map(|n| self.dir.join(n))
    }

    /// The stored object for a UID, as a tree rooted at its VCALENDAR.
    pub fn get(&self, uid: &str) -> anyhow::Result<Option<Node>> {
        let Some(path) = self.path_of(uid) else {
            return Ok(None);
        };
        if !path.exists() {
            return Ok(None);
        }
        let name = self.index.get(uid).cloned().unwrap_or_default();
        let mut root = self.read_root(&name)?;
        // Only the components of this UID (a foreign file may hold several).
        root.children
            .retain(|c| !c.is_scheduling() || c.uid().as_deref() == Some(uid));
        Ok(Some(root))
    }

    /// Store a calendar object for a UID: the root VCALENDAR without METHOD,
    /// with a VTIMEZONE for every TZID it uses. `tz_source` supplies
    /// VTIMEZONEs to copy (the incoming message's).
    pub fn put(
        &mut self,
        uid: &str,
        root: &Node,
        tz_source: Option<&ICalendar>,
    ) -> anyhow::Result<PathBuf> {
        let name = match self.index.get(uid) {
            Some(n) => n.clone(),
            None => self.new_name(uid),
        };
        let shared = self.index.iter().any(|(u, n)| *n == name && u != uid);
        let text = if shared {
            // A file written by another tool with several UIDs: keep theirs.
            let mut merged = self.read_root(&name)?;
            merged
                .children
                .retain(|c| !c.is_scheduling() || c.uid().as_deref() != Some(uid));
            merged
                .children
                .extend(root.children.iter().filter(|c| c.is_scheduling()).cloned());
            render(&merged, tz_source)
        } else {
            render(root, tz_source)
        };
        let path = self.dir.join(&name);
        write_atomic(&self.dir, &name, text.as_bytes())?;
        self.names.insert(name.clone());
        self.index.insert(uid.to_string(), name);
        Ok(path)
    }

    fn read_root(&self, name: &str) -> anyhow::Result<Node> {
        let path = self.dir.join(name);
        let text = fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        match calcard::Parser::new(&text).entry() {
            calcard::Entry::ICalendar(ical) => Ok(Node::from_ical(&ical)),
            _ => anyhow::bail!("cannot parse {}: not an iCalendar object", path.display()),
        }
    }

    /// A free, safe file name for a new UID.
    fn new_name(&self, uid: &str) -> String {
        let base = safe_name(uid);
        let taken = |n: &str| self.names.contains(n) || self.dir.join(n).exists();
        if !taken(&base) {
            return base;
        }
        for i in 1.. {
            let alt = format!("{}-{i}.ics", base.trim_end_matches(".ics"));
            if !taken(&alt) {
                return alt;
            }
        }
        unreachable!()
    }
}

/// The text of a stored object.
pub fn render(root: &Node, tz_source: Option<&ICalendar>) -> String {
    let mut root = root.clone();
    root.remove(&calcard::icalendar::ICalendarProperty::Method);
    if root
        .prop(&calcard::icalendar::ICalendarProperty::Prodid)
        .is_none()
    {
        root.entries.insert(
            0,
            ical::text_entry(calcard::icalendar::ICalendarProperty::Prodid, crate::PRODID),
        );
    }
    if root
        .prop(&calcard::icalendar::ICalendarProperty::Version)
        .is_none()
    {
        root.entries.insert(
            1,
            ical::text_entry(calcard::icalendar::ICalendarProperty::Version, "2.0"),
        );
    }
    // VTIMEZONEs first, as most readers expect.
    root.children.sort_by_key(|c| {
        !matches!(
            c.kind,
            calcard::icalendar::ICalendarComponentType::VTimezone
        )
    });
    let mut ical = root.into_ical();
    ical::drop_unused_timezones(&mut ical);
    if let Some(src) = tz_source {
        ical::complete_timezones(src, &mut ical);
    } else {
        ical.add_missing_timezones();
    }
    ical::to_string(&ical)
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
fn is_our_temp_file(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.').and_then(|r| r.strip_suffix(".tmp")) else {
        return false;
    };
    rest.rsplit_once('.')
        .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether a directory entry is a calendar object file of the store.
pub fn is_object_name(name: &str) -> bool {
    !name.starts_with('.') && name.to_ascii_lowercase().ends_with(".ics")
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

/// The UIDs in an iCalendar file, by a quick line scan (no full parse).
pub fn scan_uids(text: &[u8]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let text = String::from_utf8_lossy(text);
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.trim_end_matches('\r');
        if line.len() < 4
            || !line.as_bytes()[..4].eq_ignore_ascii_case(b"UID:")
                && !line.as_bytes()[..4].eq_ignore_ascii_case(b"UID;")
        {
            continue;
        }
        let Some((_, v)) = line.split_once(':') else {
            continue;
        };
        let mut uid = v.to_string();
        while let Some(next) = lines.peek() {
            if let Some(rest) = next.strip_prefix([' ', '\t']) {
                uid.push_str(rest.trim_end_matches('\r'));
                lines.next();
            } else {
                break;
            }
        }
        let uid = unescape(&uid);
        if !uid.is_empty() && !out.contains(&uid) {
            out.push(uid);
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') | Some('N') => out.push('\n'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Write a file so that readers see the old or the new content, never half:
/// a temp file in the same folder, fsync, rename over the target, fsync the folder.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    debug_assert!(!name.contains('/'));
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &target)?;
        fs::File::open(dir)?.sync_all()?;
        Ok(())
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        anyhow::anyhow!("cannot write {}: {e}", target.display())
    })
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
    fn regression_fuzz_multibyte_uid_prefix() {
        assert!(scan_uids("UIé:x\r\nUI€\r\n".as_bytes()).is_empty());
    }

    #[test]
    fn scans_folded_uids() {
        let t = b"BEGIN:VEVENT\r\nUID:abc\r\n def\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nuid:x\\,y\r\n";
        assert_eq!(scan_uids(t), vec!["abcdef".to_string(), "x,y".to_string()]);
    }

    #[test]
    fn put_get_roundtrip_keeps_foreign_names() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("foreign-name.ics"),
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:u1\r\nDTSTAMP:20260101T000000Z\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
        )
        .unwrap();
        fs::write(dir.path().join("notes.txt"), "keep me").unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        let root = s.get("u1").unwrap().unwrap();
        let p = s.put("u1", &root, None).unwrap();
        assert!(p.ends_with("foreign-name.ics"));
        let p2 = s.put("../x", &root, None).unwrap();
        assert_eq!(p2.parent().unwrap(), dir.path());
        assert_eq!(
            fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
            "keep me"
        );
    }
}
