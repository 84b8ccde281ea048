//! Busy time, for the `conflict` policy matcher: [`Busy`] expands every
//! stored event once over a window (each UID bounded, see [`crate::recur`])
//! and answers "does this overlap something busy?" with an interval search;
//! which components keep time busy ([`busy`]: not transparent, cancelled,
//! declined by me, nor a to-do or journal); how long a component lasts
//! ([`duration`]). Also the two functions `process` calls today,
//! [`occurrences`] and [`conflicts`], kept on top of the new API until their
//! call sites move to it.

use std::collections::{BTreeSet, HashMap};

use calcard::icalendar::{ICalendarComponentType as Ct, ICalendarProperty as P};

use crate::ical::{self, Node};
use crate::identity::Identity;
use crate::recur::{self, Budget};

/// Conflicts are looked for this far ahead.
pub const HORIZON_DAYS: i64 = 400;
/// The budget of one index build, in [`Budget`] units (an occurrence, or
/// walking a rule's periods: see [`Budget::left`]); each event may spend
/// [`recur::UID_BOUND`] of it. What a bound cuts is reported through
/// [`Busy::incomplete`].
pub const BUSY_MAX_SPANS: usize = 1_000_000;

/// Whether a component keeps my time busy: an event that is not
/// transparent, not cancelled, and not declined by me.
pub fn busy(c: &Node, identity: &Identity) -> bool {
    let transparent = c
        .text(&P::Transp)
        .is_some_and(|t| t.eq_ignore_ascii_case("TRANSPARENT"));
    let cancelled = c
        .text(&P::Status)
        .is_some_and(|t| t.eq_ignore_ascii_case("CANCELLED"));
    let declined = c.entries.iter().any(|e| {
        e.name == P::Attendee
            && ical::cal_address(e).is_some_and(|a| identity.is_me(&a))
            && ical::partstat(e) == "DECLINED"
    });
    c.kind == Ct::VEvent && !(transparent || cancelled || declined)
}

/// The busy time of the store over one window: every busy occurrence of
/// every stored event that overlaps `[from, to)`, sorted by start, with the
/// largest end of each range of them in an implicit segment tree, so that
/// "what overlaps (s, e)?" is a binary search for the spans starting
/// before `e` and a descent to one whose end is after `s`: O(log n), not a
/// scan. Zero-length occurrences take no time and are left out.
#[derive(Debug, Clone)]
pub struct Busy {
    from: i64,
    to: i64,
    /// Sorted by (start, end, uid).
    spans: Vec<Span>,
    /// `tree[1]` is the largest end of all spans; node `i` covers what its
    /// children `2i`, `2i + 1` cover; leaves start at `size`.
    tree: Vec<i64>,
    size: usize,
    uids: Vec<String>,
    ids: HashMap<String, u32>,
    /// UIDs whose busy time may be missing: cut by a bound, a rule refused
    /// as too dense, a start that cannot be read.
    incomplete: BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Span {
    start: i64,
    end: i64,
    uid: u32,
}

impl Busy {
    /// Expand every event in the store over `[from, to)`, once, each UID
    /// within [`recur::UID_BOUND`] occurrences and all within
    /// [`BUSY_MAX_SPANS`].
    /// The stored events are given by their UIDs and a way to read each
    /// (a store's `get`).
    pub fn build(
        mut uids: Vec<String>,
        get: impl Fn(&str) -> anyhow::Result<Option<Node>>,
        identity: &Identity,
        from: i64,
        to: i64,
    ) -> anyhow::Result<Busy> {
        let mut b = Busy {
            from,
            to,
            spans: Vec::new(),
            tree: Vec::new(),
            size: 0,
            uids: Vec::new(),
            ids: HashMap::new(),
            incomplete: BTreeSet::new(),
        };
        let mut budget = Budget::new(BUSY_MAX_SPANS, recur::UID_BOUND);
        uids.sort_unstable();
        for uid in uids {
            let root = get(&uid).map_err(|e| {
                anyhow::anyhow!("cannot read stored event {uid} for busy time: {e:#}")
            })?;
            if let Some(root) = root {
                b.add(&uid, &root, identity, &mut budget);
            }
        }
        b.index();
        Ok(b)
    }

    /// The window this index covers: spans outside it are not known.
    pub fn window(&self) -> (i64, i64) {
        (self.from, self.to)
    }

    /// Busy spans held.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// UIDs whose busy time may be incomplete (see the field).
    pub fn incomplete(&self) -> impl Iterator<Item = &str> {
        self.incomplete.iter().map(String::as_str)
    }

    /// The first (earliest starting) busy span of another UID that overlaps
    /// one of `spans` (by positive time: touching ends do not overlap),
    /// trying `spans` in order.
    pub fn overlaps(&self, spans: &[(i64, i64)], exclude_uid: &str) -> Option<(String, i64, i64)> {
        let exclude = self.ids.get(exclude_uid).copied();
        for &(s, e) in spans {
            if e <= s {
                continue;
            }
            let before = self.spans.partition_point(|b| b.start < e);
            if let Some(i) = self.find(1, 0, self.size, before, s, exclude) {
                let b = self.spans[i];
                return Some((self.uids[b.uid as usize].clone(), b.start, b.end));
            }
        }
        None
    }

    /// Every other UID with a busy span that overlaps one of `spans`, each
    /// once with its first such span (UID, start, end), at most `limit`.
    /// Each found UID costs one search; spans of UIDs found are skipped.
    pub fn overlaps_all(
        &self,
        spans: &[(i64, i64)],
        exclude_uid: &str,
        limit: usize,
    ) -> Vec<(String, i64, i64)> {
        let mut out: Vec<(String, i64, i64)> = Vec::new();
        let exclude = self.ids.get(exclude_uid).copied();
        for &(s, e) in spans {
            if e <= s {
                continue;
            }
            let before = self.spans.partition_point(|b| b.start < e);
            // Walk the candidates from the first overlap on; few events
            // overlap one occurrence.
            for b in self.spans[..before].iter().rev() {
                if out.len() >= limit {
                    return out;
                }
                if b.end > s && Some(b.uid) != exclude {
                    let uid = &self.uids[b.uid as usize];
                    if !out.iter().any(|(u, _, _)| u == uid) {
                        out.push((uid.clone(), b.start, b.end));
                    }
                }
                // Spans sorted by start: once starts are a horizon before
                // s, nothing earlier can reach it (bounded by the window).
                if b.start < s.saturating_sub(HORIZON_DAYS * 86_400) {
                    break;
                }
            }
        }
        out.sort_by_key(|(_, s, _)| *s);
        out
    }

    /// Replace what the index knows of one UID after the store changed it
    /// (`None`: removed). O(n) in the spans held.
    pub fn update(&mut self, uid: &str, root: Option<&Node>, identity: &Identity) {
        if let Some(&id) = self.ids.get(uid) {
            self.spans.retain(|s| s.uid != id);
        }
        self.incomplete.remove(uid);
        if let Some(root) = root {
            let room = BUSY_MAX_SPANS.saturating_sub(self.spans.len());
            let mut budget = Budget::new(room, recur::UID_BOUND);
            self.add(uid, root, identity, &mut budget);
        }
        self.index();
    }

    fn add(&mut self, uid: &str, root: &Node, identity: &Identity, budget: &mut Budget) {
        let got = recur::occurrences(root, uid, self.from, self.to, budget, |c| busy(c, identity));
        if !got.complete {
            self.incomplete.insert(uid.to_string());
        }
        let spans: Vec<(i64, i64)> = got.spans.into_iter().filter(|(s, e)| e > s).collect();
        if spans.is_empty() {
            return;
        }
        let id = match self.ids.get(uid) {
            Some(&id) => id,
            None => {
                let id = self.uids.len() as u32;
                self.uids.push(uid.to_string());
                self.ids.insert(uid.to_string(), id);
                id
            }
        };
        self.spans
            .extend(spans.into_iter().map(|(start, end)| Span {
                start,
                end,
                uid: id,
            }));
    }

    /// Sort the spans and build the tree of largest ends.
    fn index(&mut self) {
        self.spans.sort_unstable();
        self.size = self.spans.len().next_power_of_two();
        self.tree = vec![i64::MIN; 2 * self.size];
        for (i, s) in self.spans.iter().enumerate() {
            self.tree[self.size + i] = s.end;
        }
        for i in (1..self.size).rev() {
            self.tree[i] = self.tree[2 * i].max(self.tree[2 * i + 1]);
        }
    }

    /// The first span with index below `before`, end after `after` and a
    /// UID other than `exclude`, under node `node` covering `[lo, hi)`.
    fn find(
        &self,
        node: usize,
        lo: usize,
        hi: usize,
        before: usize,
        after: i64,
        exclude: Option<u32>,
    ) -> Option<usize> {
        if lo >= before || node >= self.tree.len() || self.tree[node] <= after {
            return None;
        }
        if hi - lo == 1 {
            return (Some(self.spans[lo].uid) != exclude).then_some(lo);
        }
        let mid = lo + (hi - lo) / 2;
        self.find(2 * node, lo, mid, before, after, exclude)
            .or_else(|| self.find(2 * node + 1, mid, hi, before, after, exclude))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::duration;
    use chrono::DateTime;
    use std::time::Duration;

    fn root(body: &str) -> Node {
        crate::ical::test_root(body)
    }

    fn me() -> Identity {
        Identity {
            addresses: vec!["bob@example.com".into()],
            name: None,
            trusted_sent_by: Vec::new(),
        }
    }

    fn ts(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    #[test]
    fn weekly_rule_with_windows_zone_expands() {
        let r = root(
            "BEGIN:VEVENT\r\nUID:w\r\nDTSTART;TZID=\"W. Europe Standard Time\":20261201T100000\r\n\
             DTEND;TZID=\"W. Europe Standard Time\":20261201T110000\r\nRRULE:FREQ=WEEKLY;COUNT=3\r\n\
             EXDATE;TZID=\"W. Europe Standard Time\":20261208T100000\r\nEND:VEVENT\r\n",
        );
        let from = ts("2026-11-01T00:00:00Z");
        let o = recur::occurrences(
            &r,
            "w",
            from,
            from + 400 * 86_400,
            &mut Budget::per_message(),
            |_| true,
        )
        .spans;
        assert_eq!(o.len(), 2);
        // 10:00 Berlin in December is 09:00 UTC.
        assert_eq!(
            DateTime::from_timestamp(o[0].0, 0).unwrap().to_rfc3339(),
            "2026-12-01T09:00:00+00:00"
        );
        assert_eq!(o[0].1 - o[0].0, 3600);
    }

    #[test]
    fn durations() {
        let r = root(
            "BEGIN:VEVENT\r\nUID:d\r\nDTSTART:20261201T100000Z\r\nDURATION:PT90M\r\nEND:VEVENT\r\n",
        );
        assert_eq!(duration(&r.children[0]), Some(Duration::from_secs(5400)));
        let r = root("BEGIN:VEVENT\r\nUID:d\r\nDTSTART;VALUE=DATE:20261201\r\nEND:VEVENT\r\n");
        assert_eq!(duration(&r.children[0]), Some(Duration::from_secs(86400)));
    }

    #[test]
    fn busy_rules() {
        let r = root(
            "BEGIN:VEVENT\r\nUID:a\r\nTRANSP:TRANSPARENT\r\nEND:VEVENT\r\n\
             BEGIN:VEVENT\r\nUID:b\r\nSTATUS:CANCELLED\r\nEND:VEVENT\r\n\
             BEGIN:VEVENT\r\nUID:c\r\nATTENDEE;PARTSTAT=DECLINED:mailto:bob@example.com\r\nEND:VEVENT\r\n\
             BEGIN:VEVENT\r\nUID:d\r\nATTENDEE;PARTSTAT=ACCEPTED:mailto:bob@example.com\r\nEND:VEVENT\r\n\
             BEGIN:VTODO\r\nUID:e\r\nEND:VTODO\r\n",
        );
        let b: Vec<bool> = r.children.iter().map(|c| busy(c, &me())).collect();
        assert_eq!(b, [false, false, false, true, false]);
    }

    fn store_with(events: &[(&str, &str)]) -> (tempfile::TempDir, crate::store::Vdir) {
        let dir = tempfile::tempdir().unwrap();
        for (uid, body) in events {
            let text = format!(
                "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:{uid}\r\n\
                 DTSTAMP:20261120T100000Z\r\n{body}END:VEVENT\r\nEND:VCALENDAR\r\n"
            );
            std::fs::write(dir.path().join(format!("{uid}.ics")), text).unwrap();
        }
        let store = crate::store::Vdir::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn busy_index_finds_overlaps_and_skips_free_time() {
        let (_dir, store) = store_with(&[
            // Weekly since 2019 (fast-forwarded), Tuesdays 10:00–11:00 UTC.
            (
                "weekly",
                "DTSTART:20190101T100000Z\r\nDTEND:20190101T110000Z\r\nRRULE:FREQ=WEEKLY\r\n",
            ),
            // A year-long all-day "event" I declined: not busy.
            (
                "declined",
                "DTSTART;VALUE=DATE:20270101\r\nDTEND;VALUE=DATE:20280101\r\n\
                 ATTENDEE;PARTSTAT=DECLINED:mailto:bob@example.com\r\n",
            ),
            // A long busy one, to make sure long spans are found.
            (
                "long",
                "DTSTART:20270501T000000Z\r\nDTEND:20270601T000000Z\r\n",
            ),
            (
                "transparent",
                "DTSTART:20270302T120000Z\r\nDTEND:20270302T130000Z\r\nTRANSP:TRANSPARENT\r\n",
            ),
            // No start: its busy time is unknown, and the index says so.
            ("nostart", "DTEND:20270302T130000Z\r\n"),
        ]);
        let from = ts("2027-03-01T00:00:00Z");
        let busy = store.busy(&me(), from, from + 400 * 86_400).unwrap();
        assert_eq!(busy.incomplete().collect::<Vec<_>>(), ["nostart"]);
        // 2027-03-02 is a Tuesday.
        let tue = (ts("2027-03-02T10:30:00Z"), ts("2027-03-02T10:45:00Z"));
        assert_eq!(
            busy.overlaps(&[tue], "other"),
            Some((
                "weekly".into(),
                ts("2027-03-02T10:00:00Z"),
                ts("2027-03-02T11:00:00Z")
            ))
        );
        assert_eq!(busy.overlaps(&[tue], "weekly"), None);
        // Touching is not overlapping; transparent time is free.
        let after = (ts("2027-03-02T11:00:00Z"), ts("2027-03-02T13:00:00Z"));
        assert_eq!(busy.overlaps(&[after], "other"), None);
        let in_may = (ts("2027-05-20T08:00:00Z"), ts("2027-05-20T09:00:00Z"));
        assert_eq!(busy.overlaps(&[after, in_may], "other").unwrap().0, "long");
    }

    #[test]
    fn busy_index_updates_one_uid() {
        let (_dir, store) = store_with(&[(
            "a",
            "DTSTART:20270302T100000Z\r\nDTEND:20270302T110000Z\r\n",
        )]);
        let from = ts("2027-03-01T00:00:00Z");
        let mut busy = store.busy(&me(), from, from + 30 * 86_400).unwrap();
        let q = [(ts("2027-03-02T10:00:00Z"), ts("2027-03-02T10:30:00Z"))];
        let later = [(ts("2027-03-03T10:00:00Z"), ts("2027-03-03T10:30:00Z"))];
        assert!(busy.overlaps(&q, "x").is_some());
        let moved = root(
            "BEGIN:VEVENT\r\nUID:a\r\nDTSTART:20270303T100000Z\r\nDTEND:20270303T110000Z\r\nEND:VEVENT\r\n",
        );
        busy.update("a", Some(&moved), &me());
        assert!(busy.overlaps(&q, "x").is_none());
        assert!(busy.overlaps(&later, "x").is_some());
        busy.update("a", None, &me());
        assert!(busy.is_empty() && busy.overlaps(&later, "x").is_none());
    }

    #[test]
    fn busy_index_excluded_uid_does_not_hide_others() {
        // Many spans of the excluded UID around the query, one of another.
        let (_dir, store) = store_with(&[
            (
                "mine",
                "DTSTART:20270301T000000Z\r\nDTEND:20270301T010000Z\r\nRRULE:FREQ=HOURLY;COUNT=100\r\n",
            ),
            ("other", "DTSTART:20270302T003000Z\r\nDTEND:20270302T004500Z\r\n"),
        ]);
        let from = ts("2027-03-01T00:00:00Z");
        let busy = store.busy(&me(), from, from + 30 * 86_400).unwrap();
        let q = [(from, from + 3 * 86_400)];
        assert_eq!(busy.overlaps(&q, "mine").unwrap().0, "other");
        assert_eq!(busy.overlaps(&q, "other").unwrap().0, "mine");
    }

    #[test]
    fn a_series_since_2019_is_busy_now() {
        let (_dir, store) = store_with(&[(
            "weekly",
            "DTSTART:20190101T100000Z\r\nDTEND:20190101T110000Z\r\nRRULE:FREQ=WEEKLY\r\n",
        )]);
        let now = ts("2027-03-01T00:00:00Z");
        let busy = store.busy(&me(), now, now + 400 * 86_400).unwrap();
        let clash = [(ts("2027-03-09T10:30:00Z"), ts("2027-03-09T11:30:00Z"))];
        let free = [(ts("2027-03-10T10:30:00Z"), ts("2027-03-10T11:30:00Z"))];
        assert!(busy.overlaps(&clash, "new").is_some());
        assert!(busy.overlaps(&free, "new").is_none());
        assert!(busy.overlaps(&clash, "weekly").is_none());
    }
}
