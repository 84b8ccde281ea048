//! The vdir store: one `.ics` file per calendar object (all components of
//! one UID) directly in one folder, as khal, todoman and vdirsyncer read it.
//! Owns safe file names (whatever the UID holds, nothing lands outside the
//! folder), atomic replacement (temp file, fsync, rename, fsync folder; temp
//! files are created new and never through a symbolic link), and the UID →
//! file index that keeps lookups O(1) with many thousands of files.
//!
//! The index knows only the UIDs of top-level scheduling components (VEVENT,
//! VTODO, VJOURNAL, VFREEBUSY directly inside VCALENDAR): a UID inside an
//! alarm (RFC 9074) or an X- component names nothing the store holds. One UID
//! is one file; when a foreign tool wrote two files with one UID, the index
//! picks one deterministically (the name imipd would give it, else the
//! first name in byte order) and imipd never writes a third.
//!
//! Other programs (vdirsyncer, khal, a person) change the folder while
//! `imipd run` is up. The index follows: a lookup that misses, a hit whose
//! file no longer holds the UID, and every new file first make sure the index
//! is fresh (the folder's modification time, then a re-scan that re-reads
//! only the files whose size, time or inode changed).
//!
//! Files that are not `.ics`, and dot-files, are left alone.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::conflict::{Busy, HORIZON_DAYS};
use crate::fsutil::{remove_temp_files, safe_name, write_atomic_shared};
use crate::ical::{self, Node};
use crate::identity::Identity;
use calcard::icalendar::ICalendar;

/// An open vdir collection.
pub struct Vdir {
    dir: PathBuf,
    /// Interior mutability: a lookup through `&Vdir` may re-scan the folder.
    index: RefCell<Index>,
    /// Busy time for the `conflict` matcher, built once and kept up to
    /// date; built again when someone else changed the folder, or a day
    /// passed.
    busy: Option<BusyCache>,
}

struct BusyCache {
    busy: Busy,
    /// [`Vdir::changes`] when it was built.
    changes: u64,
    /// Whose busy time it is (what I declined is not busy).
    identity: Identity,
}

/// What the store knows of its folder.
#[derive(Default)]
struct Index {
    /// UID → file name (not path) of the object that holds it.
    by_uid: HashMap<String, String>,
    /// Every object file name → what it held when last read.
    files: HashMap<String, FileInfo>,
    /// The folder's modification time before the last scan.
    dir_mtime: Option<SystemTime>,
    /// Whether an unchanged modification time proves that nothing changed:
    /// not when the last change came too close to the scan for the file
    /// system's clock to tell them apart.
    trusted: bool,
    /// How many times a scan found files changed by someone else (read
    /// anew, or gone): what was derived from the store must be derived again.
    changes: u64,
}

struct FileInfo {
    stamp: Option<Stamp>,
    /// The UIDs of its top-level scheduling components.
    uids: Vec<String>,
}

/// When a file's content may have changed: size, time, inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: Option<SystemTime>,
    ino: u64,
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            len: m.len(),
            mtime: m.modified().ok(),
            ino: m.ino(),
        }
    }
}

impl Vdir {
    /// Open (and create if needed) the folder, remove the temp files a
    /// killed run left, and index the UIDs of its `.ics` files.
    pub fn open(dir: &Path) -> anyhow::Result<Vdir> {
        fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create store folder {}: {e}", dir.display()))?;
        remove_temp_files(dir);
        let store = Vdir {
            dir: dir.to_path_buf(),
            index: RefCell::new(Index::default()),
            busy: None,
        };
        store.scan(None)?;
        Ok(store)
    }

    /// Open for reading only (a dry run): nothing is created or removed; a
    /// folder that does not exist is an empty store.
    pub fn open_read_only(dir: &Path) -> anyhow::Result<Vdir> {
        let store = Vdir {
            dir: dir.to_path_buf(),
            index: RefCell::new(Index::default()),
            busy: None,
        };
        if dir.exists() {
            store.scan(None)?;
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A number that grows whenever someone else changed the folder (files
    /// added, edited or removed): what was derived from the store (the busy
    /// time of the `conflict` matcher) is derived again when it changed.
    pub fn changes(&self) -> u64 {
        self.refresh();
        self.index.borrow().changes
    }

    pub fn len(&self) -> usize {
        self.refresh();
        self.index.borrow().by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every UID in the store.
    pub fn uids(&self) -> Vec<String> {
        self.refresh();
        self.index.borrow().by_uid.keys().cloned().collect()
    }

    /// The file holding a UID, if any.
    pub fn path_of(&self, uid: &str) -> Option<PathBuf> {
        let path = self.dir.join(self.lookup(uid)?);
        if path.exists() {
            return Some(path);
        }
        // Removed or renamed under us.
        if let Err(e) = self.scan(None) {
            tracing::warn!("{e:#}");
        }
        self.index
            .borrow()
            .by_uid
            .get(uid)
            .map(|n| self.dir.join(n))
    }

    /// The stored object for a UID, as a tree rooted at its VCALENDAR with
    /// only that UID's components (and the time zones): `None` when no file
    /// holds a scheduling component with that UID.
    pub fn get(&self, uid: &str) -> anyhow::Result<Option<Node>> {
        let Some(name) = self.lookup(uid) else {
            return Ok(None);
        };
        if let Some(root) = self.read_object(&name, uid)? {
            return Ok(Some(root));
        }
        // Changed under us (removed, renamed, edited): look again.
        self.scan(Some(&name))?;
        match self.index.borrow().by_uid.get(uid).cloned() {
            Some(other) => self.read_object(&other, uid),
            None => Ok(None),
        }
    }

    /// Store a calendar object for a UID: the root VCALENDAR without METHOD,
    /// with a VTIMEZONE for every TZID it uses. `tz_source` supplies
    /// VTIMEZONEs to copy (the incoming message's). Writes the file that
    /// holds the UID, or a new one when no file in the folder does.
    pub fn put(
        &mut self,
        uid: &str,
        root: &Node,
        tz_source: Option<&ICalendar>,
    ) -> anyhow::Result<PathBuf> {
        // The file that holds the UID now: another program may have removed,
        // renamed or edited the one the index names.
        let mut found = self.lookup(uid).map(|n| {
            let uids = fs::read(self.dir.join(&n)).map(|t| scan_uids(&t));
            (n, uids)
        });
        if let Some((n, uids)) = &found {
            if !uids.as_ref().is_ok_and(|u| u.iter().any(|x| x == uid)) {
                self.scan(Some(n))?;
                let again = self.index.borrow().by_uid.get(uid).cloned();
                found = again.map(|n| {
                    let uids = fs::read(self.dir.join(&n)).map(|t| scan_uids(&t));
                    (n, uids)
                });
            }
        }
        let (name, shared) = match found {
            // A file written by another tool may hold other UIDs too.
            Some((n, uids)) => {
                let shared = uids.is_ok_and(|u| u.iter().any(|x| x != uid));
                (n, shared)
            }
            None => (self.new_name(uid), false),
        };
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
        // Whether the index knew the whole folder just before this write:
        // then this write is the only change, and the folder need not be
        // read again because of it (a burst of writes stays cheap).
        let fresh = {
            let index = self.index.borrow();
            index.trusted && index.dir_mtime.is_some() && dir_mtime(&self.dir) == index.dir_mtime
        };
        write_atomic_shared(&self.dir, &name, text.as_bytes())?;
        let uids = scan_uids(text.as_bytes());
        let mut index = self.index.borrow_mut();
        if fresh {
            index.dir_mtime = dir_mtime(&self.dir);
        }
        if uids.iter().any(|u| u == uid) {
            index.by_uid.insert(uid.to_string(), name.clone());
        } else {
            tracing::warn!(uid, file = %path.display(), "the object written holds no component with its UID");
            index.by_uid.remove(uid);
        }
        let stamp = fs::metadata(&path).ok().map(|m| Stamp::of(&m));
        index.files.insert(name, FileInfo { stamp, uids });
        Ok(path)
    }

    /// The busy time of every stored event over `[from, to)`.
    pub fn busy(&self, identity: &Identity, from: i64, to: i64) -> anyhow::Result<Busy> {
        Busy::build(self.uids(), |uid| self.get(uid), identity, from, to)
    }

    /// Remove the file of a UID (a file that holds other UIDs too keeps
    /// them); `false` when no file holds it.
    pub fn remove(&mut self, uid: &str) -> anyhow::Result<bool> {
        let Some(name) = self.lookup(uid) else {
            return Ok(false);
        };
        let path = self.dir.join(&name);
        let uids = fs::read(&path).map(|t| scan_uids(&t)).unwrap_or_default();
        if uids.iter().any(|u| u != uid) {
            let mut rest = self.read_root(&name)?;
            rest.children
                .retain(|c| !c.is_scheduling() || c.uid().as_deref() != Some(uid));
            write_atomic_shared(&self.dir, &name, render(&rest, None).as_bytes())?;
        } else {
            fs::remove_file(&path)
                .map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", path.display()))?;
            let _ = fs::File::open(&self.dir).and_then(|d| d.sync_all());
        }
        self.scan(None)?;
        if let Some(c) = self.busy.as_mut() {
            c.busy.update(uid, None, &c.identity);
            c.changes = self.index.borrow().changes;
        }
        Ok(true)
    }

    /// The file name for a UID, making sure the index is fresh before
    /// saying there is none.
    fn lookup(&self, uid: &str) -> Option<String> {
        if let Some(n) = self.index.borrow().by_uid.get(uid) {
            return Some(n.clone());
        }
        self.refresh();
        self.index.borrow().by_uid.get(uid).cloned()
    }

    /// Re-scan the folder if it changed since the last scan.
    fn refresh(&self) {
        let fresh = {
            let index = self.index.borrow();
            index.trusted && index.dir_mtime.is_some() && dir_mtime(&self.dir) == index.dir_mtime
        };
        if !fresh {
            // A store not created yet (a first dry run) is empty, not a problem.
            if let Err(e) = self.scan(None) {
                if self.dir.exists() {
                    tracing::warn!("{e:#}");
                } else {
                    tracing::debug!("{e:#}");
                }
            }
        }
    }

    /// Read the folder: every object file's UIDs (re-read only when the
    /// file changed, or when it is `reread`), then rebuild the index.
    fn scan(&self, reread: Option<&str>) -> anyhow::Result<()> {
        let before = dir_mtime(&self.dir);
        let started = SystemTime::now();
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| anyhow::anyhow!("cannot read store folder {}: {e}", self.dir.display()))?;
        let mut index = self.index.borrow_mut();
        let mut files = HashMap::with_capacity(index.files.len());
        let mut changed = false;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_object_name(&name) {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let stamp = Stamp::of(&meta);
            if reread != Some(name.as_str()) {
                if let Some(known) = index.files.remove(&name) {
                    if known.stamp == Some(stamp) {
                        files.insert(name, known);
                        continue;
                    }
                }
            }
            let Ok(text) = fs::read(&path) else {
                continue;
            };
            changed = true;
            let uids = scan_uids(&text);
            files.insert(
                name,
                FileInfo {
                    stamp: Some(stamp),
                    uids,
                },
            );
        }
        changed |= !index.files.is_empty(); // files that are gone
        if changed {
            index.changes += 1;
        }
        index.by_uid = pick_files(&files);
        index.files = files;
        index.dir_mtime = before;
        index.trusted = before.is_some_and(|m| !racy(m, started));
        Ok(())
    }

    /// The object of one UID in a file; `None` when the file is gone or
    /// holds no scheduling component with that UID.
    fn read_object(&self, name: &str, uid: &str) -> anyhow::Result<Option<Node>> {
        let mut root = match self.read_root(name) {
            Ok(r) => r,
            Err(e) if !self.dir.join(name).exists() => {
                tracing::debug!("{e:#}");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        // Only the components of this UID (a foreign file may hold several).
        root.children
            .retain(|c| !c.is_scheduling() || c.uid().as_deref() == Some(uid));
        if !root.children.iter().any(|c| c.is_scheduling()) {
            return Ok(None);
        }
        Ok(Some(root))
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
        let index = self.index.borrow();
        let taken =
            |n: &str| index.files.contains_key(n) || fs::symlink_metadata(self.dir.join(n)).is_ok();
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

/// UID → file, one file per UID: the name imipd would give the UID when a
/// file of that name holds it, else the first name in byte order.
fn pick_files(files: &HashMap<String, FileInfo>) -> HashMap<String, String> {
    let mut by_uid: HashMap<String, String> = HashMap::new();
    for (name, info) in files {
        for uid in &info.uids {
            match by_uid.get_mut(uid) {
                None => {
                    by_uid.insert(uid.clone(), name.clone());
                }
                Some(current) => {
                    let canonical = safe_name(uid);
                    let better = if *current == canonical {
                        false
                    } else {
                        *name == canonical || name < current
                    };
                    if better {
                        *current = name.clone();
                    }
                }
            }
        }
    }
    by_uid
}

fn dir_mtime(dir: &Path) -> Option<SystemTime> {
    fs::metadata(dir).and_then(|m| m.modified()).ok()
}

/// Whether a change at `mtime` and one just after it could carry the same
/// time: when the scan started within the file system's clock step of it
/// (fine-grained times: a few kernel ticks; whole seconds: two seconds).
fn racy(mtime: SystemTime, started: SystemTime) -> bool {
    let nanos = mtime
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let step = if nanos == 0 {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(50)
    };
    started.duration_since(mtime).map_or(true, |d| d < step)
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

/// Whether a directory entry is a calendar object file of the store.
pub fn is_object_name(name: &str) -> bool {
    !name.starts_with('.') && name.to_ascii_lowercase().ends_with(".ics")
}

/// The UIDs of the top-level scheduling components (VEVENT, VTODO,
/// VJOURNAL, VFREEBUSY directly inside VCALENDAR) of an iCalendar file, by a
/// quick line scan that unfolds lines and follows BEGIN/END nesting (no full
/// parse). The UID of an alarm (RFC 9074) or of any other nested or unknown
/// component is not one of them.
pub fn scan_uids(text: &[u8]) -> Vec<String> {
    /// Deeper nesting is hostile; its UIDs are not top-level anyway.
    const MAX_DEPTH: usize = 64;
    let mut out: Vec<String> = Vec::new();
    let text = String::from_utf8_lossy(text);
    // The open components, upper-cased; beyond MAX_DEPTH only counted.
    let mut stack: Vec<String> = Vec::new();
    let mut depth = 0usize;
    let mut lines = text.split('\n').peekable();
    let mut unfolded = String::new();
    while let Some(line) = lines.next() {
        let mut line = line.trim_end_matches('\r');
        // Unfold (a fold may fall anywhere, even inside a name); most lines
        // have no continuation and are not copied.
        if lines.peek().is_some_and(|n| n.starts_with([' ', '\t'])) {
            unfolded.clear();
            unfolded.push_str(line);
            while let Some(rest) = lines.peek().and_then(|n| n.strip_prefix([' ', '\t'])) {
                unfolded.push_str(rest.trim_end_matches('\r'));
                lines.next();
            }
            line = &unfolded;
        }
        let name_end = line.find([':', ';']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !["BEGIN", "END", "UID"]
            .iter()
            .any(|w| name.eq_ignore_ascii_case(w))
        {
            continue;
        }
        let Some((_, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("BEGIN") {
            if depth < MAX_DEPTH {
                stack.push(value.trim().to_ascii_uppercase());
            }
            depth += 1;
        } else if name.eq_ignore_ascii_case("END") {
            let value = value.trim().to_ascii_uppercase();
            if depth > MAX_DEPTH {
                depth -= 1;
            } else if let Some(pos) = stack.iter().rposition(|c| *c == value) {
                // A missing END closes the components opened after it.
                stack.truncate(pos);
                depth = pos;
            }
        } else if depth == 2
            && stack[0] == "VCALENDAR"
            && matches!(
                stack[1].as_str(),
                "VEVENT" | "VTODO" | "VJOURNAL" | "VFREEBUSY"
            )
        {
            let uid = unescape(value);
            if !uid.is_empty() && !out.contains(&uid) {
                out.push(uid);
            }
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

/// The busy time is looked at from a day before now to this far ahead.
const BUSY_AHEAD: i64 = HORIZON_DAYS * 86_400;

impl super::CalendarStore for Vdir {
    fn get(&self, uid: &str) -> anyhow::Result<Option<Node>> {
        Vdir::get(self, uid)
    }

    fn put(
        &mut self,
        uid: &str,
        object: &Node,
        tz_source: Option<&ICalendar>,
    ) -> anyhow::Result<String> {
        let path = Vdir::put(self, uid, object, tz_source)?;
        let changes = self.index.borrow().changes;
        if let Some(c) = self.busy.as_mut() {
            c.busy.update(uid, Some(object), &c.identity);
            c.changes = changes;
        }
        Ok(path.display().to_string())
    }

    fn delete(&mut self, uid: &str) -> anyhow::Result<bool> {
        self.remove(uid)
    }

    fn location(&self, uid: &str) -> String {
        self.path_of(uid)
            .unwrap_or_else(|| self.dir.join(safe_name(uid)))
            .display()
            .to_string()
    }

    fn uids(&self) -> anyhow::Result<Vec<String>> {
        Ok(Vdir::uids(self))
    }

    fn busy_overlap(
        &mut self,
        q: &super::BusyQuery<'_>,
    ) -> anyhow::Result<Option<super::BusySpan>> {
        self.busy_index(q.identity, q.now)?;
        Ok(self
            .busy
            .as_ref()
            .and_then(|c| c.busy.overlaps(q.spans, q.exclude_uid)))
    }

    fn busy_overlaps(
        &mut self,
        q: &super::BusyQuery<'_>,
        limit: usize,
    ) -> anyhow::Result<Vec<super::BusySpan>> {
        self.busy_index(q.identity, q.now)?;
        Ok(self
            .busy
            .as_ref()
            .map(|c| c.busy.overlaps_all(q.spans, q.exclude_uid, limit))
            .unwrap_or_default())
    }
}

impl Vdir {
    /// Build the busy index, or again when the store changed under it.
    fn busy_index(&mut self, identity: &Identity, now: i64) -> anyhow::Result<()> {
        let changes = self.changes();
        let stale = match &self.busy {
            None => true,
            Some(c) => {
                c.changes != changes
                    || c.identity.addresses != identity.addresses
                    || now - c.busy.window().0 > 2 * 86_400
            }
        };
        if stale {
            let busy = self.busy(identity, now - 86_400, now.saturating_add(BUSY_AHEAD))?;
            self.busy = Some(BusyCache {
                busy,
                changes,
                identity: identity.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_fuzz_multibyte_uid_prefix() {
        assert!(scan_uids("UIé:x\r\nUI€\r\n".as_bytes()).is_empty());
    }

    #[test]
    fn scans_folded_uids() {
        // Only components inside a VCALENDAR count (see below).
        let t = b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:abc\r\n def\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nuid:x\\,y\r\n";
        assert_eq!(scan_uids(t), vec!["abcdef".to_string(), "x,y".to_string()]);
    }

    #[test]
    fn scan_uids_sees_only_top_level_scheduling_components() {
        let t = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nUID:calendar-level\r\n\
                 BEGIN:VTIMEZONE\r\nTZID:X\r\nUID:in-timezone\r\nEND:VTIMEZONE\r\n\
                 BEGIN:VEVENT\r\nUID:event\r\nBEGIN:VALARM\r\nUID:in-alarm\r\nEND:VALARM\r\n\
                 BEGIN:X-THING\r\nUID:in-x\r\nEND:X-THING\r\nEND:VEVENT\r\n\
                 BEGIN:X-WRAP\r\nBEGIN:VEVENT\r\nUID:wrapped\r\nEND:VEVENT\r\nEND:X-WRAP\r\n\
                 begin:vtodo\r\nuid:todo\r\nend:vtodo\r\nBEGIN:VJOURNAL\r\nUID:journal\r\nEND:VJOURNAL\r\n\
                 BEG\r\n IN:VFREEBUSY\r\nUID;X-P=1:busy\r\nEND:VFREEBUSY\r\nEND:VCALENDAR\r\n\
                 BEGIN:VEVENT\r\nUID:outside\r\nEND:VEVENT\r\n";
        assert_eq!(
            scan_uids(t.as_bytes()),
            ["event", "todo", "journal", "busy"]
        );
        // A missing END closes what was opened after it; hostile depth is bounded.
        let t = "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nBEGIN:VALARM\r\nEND:VEVENT\r\nBEGIN:VTODO\r\nUID:t\r\nEND:VTODO\r\nEND:VCALENDAR\r\n";
        assert_eq!(scan_uids(t.as_bytes()), ["t"]);
        let deep = format!(
            "BEGIN:VCALENDAR\r\n{}{}BEGIN:VEVENT\r\nUID:after\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
            "BEGIN:X\r\nUID:deep\r\n".repeat(200),
            "END:X\r\n".repeat(200)
        );
        assert_eq!(scan_uids(deep.as_bytes()), ["after"]);
    }

    fn event(uid: &str, extra: &str) -> String {
        format!(
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:{uid}\r\n\
             DTSTAMP:20260101T000000Z\r\nDTSTART:20260102T100000Z\r\n{extra}END:VEVENT\r\nEND:VCALENDAR\r\n"
        )
    }

    fn ics_names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| is_object_name(n))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn an_alarm_uid_does_not_point_at_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let alarm =
            "BEGIN:VALARM\r\nUID:victim\r\nACTION:DISPLAY\r\nTRIGGER:-PT5M\r\nEND:VALARM\r\n";
        fs::write(dir.path().join("attacker.ics"), event("attacker", alarm)).unwrap();
        let mut s = Vdir::open(dir.path()).unwrap();
        assert_eq!(s.uids(), ["attacker"]);
        assert!(s.get("victim").unwrap().is_none());
        let root = Node::from_ical(&match calcard::Parser::new(&event("victim", "")).entry() {
            calcard::Entry::ICalendar(i) => i,
            _ => unreachable!(),
        });
        let p = s.put("victim", &root, None).unwrap();
        assert!(p.ends_with("victim.ics"), "{}", p.display());
        assert!(s.get("victim").unwrap().is_some());
        assert_eq!(
            fs::read_to_string(dir.path().join("attacker.ics")).unwrap(),
            event("attacker", alarm),
            "the attacker's file is untouched"
        );
    }

    #[test]
    fn two_files_with_one_uid_pick_one_and_never_a_third() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("b-copy.ics"), event("dup", "SUMMARY:b\r\n")).unwrap();
        fs::write(dir.path().join("a-copy.ics"), event("dup", "SUMMARY:a\r\n")).unwrap();
        let mut s = Vdir::open(dir.path()).unwrap();
        assert!(
            s.path_of("dup").unwrap().ends_with("a-copy.ics"),
            "first in byte order"
        );
        let root = s.get("dup").unwrap().unwrap();
        s.put("dup", &root, None).unwrap();
        assert_eq!(ics_names(dir.path()), ["a-copy.ics", "b-copy.ics"]);
        // The name imipd would give the UID wins over byte order.
        fs::write(dir.path().join("dup.ics"), event("dup", "SUMMARY:c\r\n")).unwrap();
        let s = Vdir::open(dir.path()).unwrap();
        assert!(s.path_of("dup").unwrap().ends_with("dup.ics"));
    }

    #[test]
    fn get_is_none_when_the_file_no_longer_holds_the_uid() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("x.ics"), event("u1", "")).unwrap();
        let s = Vdir::open(dir.path()).unwrap();
        assert!(s.get("u1").unwrap().is_some());
        // Edited in place by a person: the UID is gone, another came.
        fs::write(dir.path().join("x.ics"), event("u2", "SUMMARY:now u2\r\n")).unwrap();
        assert!(s.get("u1").unwrap().is_none());
        assert!(s.get("u2").unwrap().is_some());
    }

    #[test]
    fn files_added_removed_and_renamed_after_open_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("one.ics"), event("one", "")).unwrap();
        let mut s = Vdir::open(dir.path()).unwrap();
        assert_eq!(s.len(), 1);
        // Added by another program under a name of its own.
        fs::write(dir.path().join("synced-123.ics"), event("two", "")).unwrap();
        assert!(s.get("two").unwrap().is_some());
        assert_eq!(s.len(), 2);
        let root = s.get("two").unwrap().unwrap();
        let p = s.put("two", &root, None).unwrap();
        assert!(
            p.ends_with("synced-123.ics"),
            "no second file: {}",
            p.display()
        );
        // Added, never looked up, then written: still no second file.
        fs::write(dir.path().join("synced-456.ics"), event("three", "")).unwrap();
        let p = s.put("three", &root, None).unwrap();
        assert!(p.ends_with("synced-456.ics"), "{}", p.display());
        // Renamed.
        fs::rename(dir.path().join("one.ics"), dir.path().join("renamed.ics")).unwrap();
        assert!(s.path_of("one").unwrap().ends_with("renamed.ics"));
        assert!(s.get("one").unwrap().is_some());
        // Removed.
        fs::remove_file(dir.path().join("renamed.ics")).unwrap();
        assert!(s.get("one").unwrap().is_none());
        assert!(!s.uids().contains(&"one".to_string()));
        assert_eq!(ics_names(dir.path()), ["synced-123.ics", "synced-456.ics"]);
    }

    #[test]
    fn put_follows_files_changed_under_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.ics"), event("a", "")).unwrap();
        fs::write(dir.path().join("b.ics"), event("b", "")).unwrap();
        let mut s = Vdir::open(dir.path()).unwrap();
        let root_a = s.get("a").unwrap().unwrap();
        let root_b = s.get("b").unwrap().unwrap();
        // Renamed by another program: the write goes to the new name.
        fs::rename(dir.path().join("a.ics"), dir.path().join("a-renamed.ics")).unwrap();
        let p = s.put("a", &root_a, None).unwrap();
        assert!(p.ends_with("a-renamed.ics"), "{}", p.display());
        // Edited in place to hold another event: that event is left alone
        // and ours gets a file of its own.
        fs::write(dir.path().join("b.ics"), event("other", "")).unwrap();
        let p = s.put("b", &root_b, None).unwrap();
        assert!(!p.ends_with("b.ics"), "{}", p.display());
        assert_eq!(
            fs::read_to_string(dir.path().join("b.ics")).unwrap(),
            event("other", "")
        );
        assert!(s.get("b").unwrap().is_some() && s.get("other").unwrap().is_some());
    }

    #[test]
    fn an_unchanged_folder_is_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("one.ics"), event("one", "")).unwrap();
        // Old enough that an unchanged time proves nothing changed.
        let old = SystemTime::now() - Duration::from_secs(60);
        fs::File::open(dir.path())
            .unwrap()
            .set_modified(old)
            .unwrap();
        let s = Vdir::open(dir.path()).unwrap();
        assert!(s.index.borrow().trusted);
        // A file the scan would pick up, slipped in without a trace in the
        // folder's time: only a re-scan would see it.
        fs::write(dir.path().join("two.ics"), event("two", "")).unwrap();
        fs::File::open(dir.path())
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(s.get("two").unwrap().is_none(), "no re-scan");
        assert_eq!(s.len(), 1);
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
        let mut s = Vdir::open(dir.path()).unwrap();
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
