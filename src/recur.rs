//! Recurrence expansion for the time questions about one UID (RFC 5545
//! §3.3.10 RECUR, §3.8.5 RRULE/RDATE/EXDATE, §3.8.4.4 RECURRENCE-ID):
//! which occurrences overlap a window ([`occurrences`]), which one comes next
//! ([`next_occurrence`]), whether the event is over ([`is_over`]).
//!
//! This module owns the bounds on that work and where expansion starts:
//!
//! - a [`Budget`] of occurrences shared by all the UIDs of one message
//!   ([`MESSAGE_BUDGET`]), with a bound per UID ([`UID_BOUND`]); what a bound
//!   cuts is reported (`complete: false`, `None`), never silently dropped;
//! - RRULEs whose periods are too dense to build ([`MAX_PERIOD_CANDIDATES`])
//!   are refused up front, reported as unknown;
//! - **fast-forward**: a series without COUNT starts a period or two before
//!   the window, not at DTSTART, so a daily series from 2020 costs the same
//!   as one from last week (see `shift` in the source for why that is exact).
//!
//! calcard does the RRULE arithmetic: its iterator is crate-private, so each
//! run hands `ICalendar::expand_dates` a one-component calendar (DTSTART and
//! the RRULE with its DTSTART-derived parts made explicit) in floating time,
//! with a `limit`; this module converts the local times it returns to UTC,
//! stops at the window, UNTIL or COUNT itself, and applies RDATE, EXDATE and
//! overrides with sorted lists and binary search, so 10,000 RDATEs and
//! EXDATEs cost a fraction of a millisecond. calcard checks UNTIL only
//! against a candidate it found, so a rule that stops matching (BYMONTH=4;
//! BYMONTHDAY=31) walks to year 10,000 or to calcard's give-up after
//! 100,000 empty periods, whatever UNTIL says. So runs stop by `limit`, not
//! UNTIL; a YEARLY, MONTHLY or WEEKLY series runs in a frame moved forward
//! by whole 400-year Gregorian cycles to just before year 10,000 (same
//! dates, same weekdays), where such a walk ends within two cycles and
//! proves the rule never matches again; a BYMONTHDAY no month has is known
//! from the rule alone; what is walked is paid from the budget and
//! remembered per rule, once per [`Series`]. DAILY and finer rules that stop
//! matching still cost calcard's 100,000-period walk (5–9 ms), once.
//!
//! Where it deliberately differs from `expand_dates` (RFC 5545 wins):
//! EXDATE also removes RDATE instances (§3.8.5.1); an override replaces the
//! instance its RECURRENCE-ID names whatever its SEQUENCE (calcard requires
//! equal SEQUENCEs); a local time in a DST gap is taken with the offset
//! before the gap and an ambiguous one as its first occurrence (§3.3.5;
//! calcard falls back to floating time, or drops the event when DTSTART is in
//! a gap); UNTIL in UTC is compared as an instant (calcard compares it with
//! local wall-clock time); a DATE UNTIL on a DATE-TIME series includes its
//! whole day; a DATE-TIME DTSTART without DTEND lasts zero seconds (§3.6.1;
//! calcard: until 23:59:59); DTEND gives an exact duration and DURATION's
//! days are nominal (§3.3.6); RANGE=THISANDFUTURE applies the override's
//! shift and length to every later instance (RDATEs included), looked up by
//! original start. Floating times and dates are read in UTC ([`DEFAULT_TZ`]),
//! as before. Like calcard, a DTSTART that does not match its RRULE is not an
//! occurrence (RFC 5545 leaves that set undefined).

use std::cell::Cell;
use std::collections::HashMap;
use std::str::FromStr;

use calcard::common::timezone::Tz;
use calcard::common::PartialDateTime;
use calcard::icalendar::{
    ICalendar, ICalendarComponent, ICalendarComponentType as Ct, ICalendarDay, ICalendarEntry,
    ICalendarFrequency as Freq, ICalendarMonth, ICalendarParameterName as Pn, ICalendarPeriod,
    ICalendarProperty as P, ICalendarRecurrenceRule, ICalendarValue, ICalendarWeekday,
};
use chrono::{Datelike, NaiveDate, NaiveDateTime, Offset, TimeDelta, TimeZone, Timelike};

use crate::ical::Node;

/// Occurrences one message may have expanded in all, over all its UIDs.
pub const MESSAGE_BUDGET: usize = 20_000;
/// Occurrences one UID may have expanded for one question.
pub const UID_BOUND: usize = 5_000;
/// calcard builds every candidate of a period (a whole year for YEARLY)
/// before it yields the first; a rule whose candidates per period, estimated
/// from its BY* lists, exceed this is refused as too dense.
pub const MAX_PERIOD_CANDIDATES: u64 = 10_000;
/// RRULEs read per component (RFC 5545: SHOULD NOT be more than one);
/// more make the result incomplete.
pub const MAX_RULES: usize = 4;
/// The zone of floating times and dates.
pub const DEFAULT_TZ: Tz = Tz::UTC;

/// calcard stops looking after this many periods without an occurrence.
const CALCARD_GIVE_UP: i64 = 100_000;
/// The cost of walking 8 periods, in units (an occurrence, about 0.1 µs),
/// by FREQ: measured on calcard walking periods without an instance (a
/// YEARLY period 0.6 µs, MONTHLY 0.23, DAILY 0.05, HOURLY 0.09).
fn cost_of_8_periods(freq: Freq) -> i64 {
    match freq {
        Freq::Yearly => 48,
        Freq::Monthly => 16,
        Freq::Weekly => 8,
        Freq::Daily => 4,
        _ => 8,
    }
}
/// The first window [`next_occurrence`] looks in; each next one is 4× wider.
const FIRST_STEP: i64 = 7 * DAY;
const DAY: i64 = 86_400;
/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the instants looked at.
const MIN_TS: i64 = -62_135_596_800;
const MAX_TS: i64 = 253_402_300_799;

/// How many occurrences may still be expanded, in all and per UID. One
/// budget serves one message (all its UIDs and all the questions asked about
/// them); every question about a UID may spend at most `per_uid` of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    left: usize,
    per_uid: usize,
}

impl Budget {
    pub fn new(total: usize, per_uid: usize) -> Budget {
        Budget {
            left: total,
            per_uid,
        }
    }

    /// [`MESSAGE_BUDGET`] in all, [`UID_BOUND`] per UID.
    pub fn per_message() -> Budget {
        Budget::new(MESSAGE_BUDGET, UID_BOUND)
    }

    /// Units left. An occurrence expanded (in the window or not: a series
    /// fast-forwarded to a period or two before it, a COUNT series from
    /// DTSTART) is one unit, about 0.1 µs of work; walking a rule's periods
    /// costs what it takes (a YEARLY period 6 units, MONTHLY 2, WEEKLY 1,
    /// DAILY ½, finer 1).
    pub fn left(&self) -> usize {
        self.left
    }

    pub fn per_uid(&self) -> usize {
        self.per_uid
    }

    fn meter(&self) -> Meter {
        Meter {
            left: self.left.min(self.per_uid),
            used: 0,
        }
    }

    fn settle(&mut self, m: &Meter) {
        self.left = self.left.saturating_sub(m.used);
    }
}

impl Default for Budget {
    fn default() -> Budget {
        Budget::per_message()
    }
}

/// The allowance of one question about one UID.
struct Meter {
    left: usize,
    used: usize,
}

impl Meter {
    /// Spend `n` units; `false` (having spent what was left) when there
    /// were not enough.
    fn spend(&mut self, n: usize) -> bool {
        if n > self.left {
            self.used += self.left;
            self.left = 0;
            false
        } else {
            self.used += n;
            self.left -= n;
            true
        }
    }
}

/// The occurrences of one UID that overlap a window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Occurrences {
    /// (start, end) in Unix seconds, sorted.
    pub spans: Vec<(i64, i64)>,
    /// `false` when some may be missing: a budget cut the expansion, a rule
    /// was refused as too dense or could not be read, a component has no
    /// readable start.
    pub complete: bool,
}

/// The occurrences of the components of `uid` in `root` that overlap
/// `[from, to)` (Unix seconds; a zero-length occurrence overlaps when it
/// starts inside), from the components `keep` accepts. `keep` is asked once
/// per component: an override it refuses hides its instance, a master it
/// refuses hides the instances that are not overridden.
pub fn occurrences(
    root: &Node,
    uid: &str,
    from: i64,
    to: i64,
    budget: &mut Budget,
    keep: impl Fn(&Node) -> bool,
) -> Occurrences {
    Series::new(root, uid).occurrences(from, to, budget, keep)
}

/// The first occurrence (by start) that has not ended at `now`, however far
/// ahead, found without expanding the past; cancelled instances
/// (STATUS:CANCELLED) are skipped. `None` when there is none, or when it
/// cannot be found within the budget.
pub fn next_occurrence(
    root: &Node,
    uid: &str,
    now: i64,
    budget: &mut Budget,
) -> Option<(i64, i64)> {
    Series::new(root, uid).next_occurrence(now, budget)
}

/// `Some(true)` when every occurrence of the event has ended at `now`,
/// `Some(false)` when one has not (an infinite series never is over),
/// `None` when it cannot be told within the budget (or the UID is absent).
pub fn is_over(root: &Node, uid: &str, now: i64, budget: &mut Budget) -> Option<bool> {
    Series::new(root, uid).is_over(now, budget)
}

/// The components of one UID, read once: several questions can be asked of
/// it without reading its RDATEs and EXDATEs again.
pub struct Series<'a> {
    masters: Vec<Master<'a>>,
    /// Sorted by RECURRENCE-ID.
    overrides: Vec<Override<'a>>,
    /// Indexes into `overrides` of the RANGE=THISANDFUTURE ones (sorted by
    /// RECURRENCE-ID as well).
    taf: Vec<usize>,
    /// A component of the UID has no readable start.
    unknown: bool,
    /// The UID has at least one component.
    found: bool,
}

/// A component without RECURRENCE-ID: DTSTART, RRULEs, RDATEs, EXDATEs.
struct Master<'a> {
    node: &'a Node,
    start: When,
    len: Length,
    rules: Vec<Rule>,
    /// RDATE (start, explicit end of a PERIOD), sorted by start.
    rdates: Vec<(i64, Option<i64>)>,
    /// The longest RDATE PERIOD.
    rdate_len: i64,
    /// EXDATE instants, sorted.
    exdates: Vec<i64>,
}

/// A component with RECURRENCE-ID: one instance, moved or changed.
struct Override<'a> {
    node: &'a Node,
    rid: i64,
    this_and_future: bool,
    start: i64,
    end: i64,
}

/// One RRULE, with the parts RFC 5545 derives from DTSTART made explicit.
struct Rule {
    /// As handed to calcard, without UNTIL and COUNT.
    rule: Box<ICalendarRecurrenceRule>,
    freq: Freq,
    interval: i64,
    count: Option<u32>,
    until: Option<Until>,
    dense: bool,
    /// calcard could not use it (a value out of range, UNTIL before DTSTART).
    invalid: Cell<bool>,
    /// With COUNT: the start of the last instance, once a run saw it.
    count_end: Cell<Option<i64>>,
    /// Where calcard found the rule to end, once a run walked there.
    barren: Cell<Option<Barren>>,
    /// Candidates per period, estimated from the BY* lists.
    per_period: u64,
}

#[derive(Clone, Copy)]
struct Until {
    /// In DTSTART's local time: instances after it go (loose for UTC).
    local: NaiveDateTime,
    /// UNTIL as an instant, when given in UTC: instances after it go.
    exact: Option<i64>,
    /// No instance starts after this.
    bound: i64,
}

/// A date or date-time value, with its zone.
#[derive(Clone, Copy, Debug)]
struct When {
    local: NaiveDateTime,
    zone: Tz,
    utc: i64,
    date_only: bool,
}

/// How long an instance lasts: nominal days (the same local time so many
/// days later) plus exact seconds (RFC 5545 §3.3.6).
#[derive(Clone, Copy, Debug, Default)]
struct Length {
    days: i64,
    secs: i64,
}

impl Length {
    fn end(self, start: i64, zone: Tz) -> i64 {
        if self.days == 0 {
            return start.saturating_add(self.secs);
        }
        let local = to_local(start, zone);
        match TimeDelta::try_days(self.days).and_then(|d| local.checked_add_signed(d)) {
            Some(l) => to_utc(l, zone).saturating_add(self.secs),
            None => MAX_TS,
        }
    }

    /// At least as long as any instance lasts.
    fn upper(self) -> i64 {
        self.days
            .saturating_mul(DAY)
            .saturating_add(if self.days > 0 { 2 * 3600 } else { 0 })
            .saturating_add(self.secs)
    }
}

/// What [`Series::first_after`] found.
enum Next {
    Found((i64, i64)),
    NoneLeft,
    Unknown,
}

impl<'a> Series<'a> {
    /// Read the VEVENT, VTODO and VJOURNAL components of `uid` under `root`.
    pub fn new(root: &'a Node, uid: &str) -> Series<'a> {
        let mut zones = Zones::of(root);
        let mut s = Series {
            masters: Vec::new(),
            overrides: Vec::new(),
            taf: Vec::new(),
            unknown: false,
            found: false,
        };
        for c in &root.children {
            if !matches!(c.kind, Ct::VEvent | Ct::VTodo | Ct::VJournal)
                || c.uid().as_deref() != Some(uid)
            {
                continue;
            }
            s.found = true;
            match c.prop(&P::RecurrenceId) {
                Some(rid) => match read_override(c, rid, &mut zones) {
                    Some(o) => s.overrides.push(o),
                    None => s.unknown = true,
                },
                None => match read_master(c, &mut zones) {
                    Ok(Some((m, doubtful))) => {
                        s.unknown |= doubtful;
                        s.masters.push(m);
                    }
                    Ok(None) => {}
                    Err(()) => s.unknown = true,
                },
            }
        }
        s.overrides.sort_by_key(|o| o.rid);
        s.taf = (0..s.overrides.len())
            .filter(|&i| s.overrides[i].this_and_future)
            .collect();
        s
    }

    /// See [`occurrences`].
    pub fn occurrences(
        &self,
        from: i64,
        to: i64,
        budget: &mut Budget,
        keep: impl Fn(&Node) -> bool,
    ) -> Occurrences {
        let (from, to) = (clamp(from), clamp(to));
        if from >= to {
            return Occurrences {
                spans: Vec::new(),
                complete: !self.unknown,
            };
        }
        let mut meter = budget.meter();
        let (out, _) = self.spans_in(from, to, &mut meter, &keep, true);
        budget.settle(&meter);
        out
    }

    /// See [`next_occurrence`].
    pub fn next_occurrence(&self, now: i64, budget: &mut Budget) -> Option<(i64, i64)> {
        let mut meter = budget.meter();
        let next = self.first_after(now, &mut meter, &|c: &Node| !cancelled(c));
        budget.settle(&meter);
        match next {
            Next::Found(o) => Some(o),
            Next::NoneLeft | Next::Unknown => None,
        }
    }

    /// See [`is_over`].
    pub fn is_over(&self, now: i64, budget: &mut Budget) -> Option<bool> {
        if !self.found {
            return None;
        }
        if self.masters.iter().any(|m| {
            m.rules
                .iter()
                .any(|r| r.count.is_none() && r.until.is_none())
        }) {
            return Some(false);
        }
        let mut meter = budget.meter();
        let next = self.first_after(now, &mut meter, &|_: &Node| true);
        budget.settle(&meter);
        match next {
            Next::Found(_) => Some(false),
            Next::NoneLeft => Some(true),
            Next::Unknown => None,
        }
    }

    /// Look in growing windows from `now` for the first occurrence not
    /// ended, until the series is known to end or the budget is spent.
    fn first_after(&self, now: i64, meter: &mut Meter, keep: &dyn Fn(&Node) -> bool) -> Next {
        if !self.found {
            return Next::Unknown;
        }
        let now = clamp(now);
        let mut from = now;
        let mut step = FIRST_STEP;
        // Units a second of rules costs at most: no window wider than half
        // of what is left pays for (a wider one would be cut, and "unknown").
        let rate: f64 = self
            .masters
            .iter()
            .flat_map(|m| &m.rules)
            .filter(|r| !r.dense)
            .map(|r| {
                let (pmin, _) = period_secs(r.freq, r.interval);
                (r.per_period as f64 + cost_of_8_periods(r.freq) as f64 / 8.0) / pmin as f64
            })
            .sum();
        loop {
            if rate > 0.0 {
                let affordable = (meter.left as f64 / 2.0 / rate) as i64;
                step = step.min(affordable.max(3600));
            }
            let to = from.saturating_add(step).min(MAX_TS + 1);
            let (got, missing_from) = self.spans_in(from, to, meter, keep, true);
            if let Some(&o) = got.spans.iter().find(|&&(s, e)| !ended(s, e, now)) {
                // Unless one that may be missing could start earlier.
                return if o.0 < missing_from {
                    Next::Found(o)
                } else {
                    Next::Unknown
                };
            }
            if !got.complete {
                return Next::Unknown;
            }
            if to > MAX_TS || self.finite_end().is_some_and(|end| end < to) {
                return Next::NoneLeft;
            }
            from = to;
            step = step.saturating_mul(4);
        }
    }

    /// An instant no occurrence starts or ends after, when the series is
    /// known to end: by UNTIL, or once a run reached its COUNT or found it
    /// never matches again.
    fn finite_end(&self) -> Option<i64> {
        let mut end = i64::MIN;
        let (pos, _) = self.taf_shifts();
        for m in &self.masters {
            let mut last = if m.rules.is_empty() {
                m.start.utc
            } else {
                i64::MIN
            };
            for r in &m.rules {
                let ends = [
                    r.until.map(|u| u.bound),
                    r.count_end.get(),
                    r.barren.get().filter(|b| b.complete).map(|b| b.after),
                ];
                last = last.max(ends.into_iter().flatten().min()?);
            }
            if let Some(&(s, _)) = m.rdates.last() {
                last = last.max(s);
            }
            let len = m.len.upper().max(m.rdate_len).max(self.taf_len());
            end = end.max(last.saturating_add(pos).saturating_add(len));
        }
        for o in &self.overrides {
            end = end.max(o.end).max(o.start);
        }
        Some(end)
    }

    /// The largest forward and backward shifts of RANGE=THISANDFUTURE.
    fn taf_shifts(&self) -> (i64, i64) {
        let mut pos = 0i64;
        let mut neg = 0i64;
        for &i in &self.taf {
            let d = self.overrides[i]
                .start
                .saturating_sub(self.overrides[i].rid);
            pos = pos.max(d);
            neg = neg.max(d.saturating_neg());
        }
        (pos, neg)
    }

    fn taf_len(&self) -> i64 {
        self.taf
            .iter()
            .map(|&i| self.overrides[i].end - self.overrides[i].start)
            .max()
            .unwrap_or(0)
    }

    /// The RANGE=THISANDFUTURE override in force for an instance whose
    /// original start is `s`: the last one that starts before it.
    fn taf_for(&self, s: i64) -> Option<usize> {
        let n = self.taf.partition_point(|&i| self.overrides[i].rid < s);
        n.checked_sub(1)
    }

    /// The occurrences overlapping `[from, to)`, and the start from which
    /// some may be missing (`i64::MAX`: none is). `ff: false` expands every
    /// rule from DTSTART (the reference the tests compare fast-forward with).
    fn spans_in(
        &self,
        from: i64,
        to: i64,
        meter: &mut Meter,
        keep: &dyn Fn(&Node) -> bool,
        ff: bool,
    ) -> (Occurrences, i64) {
        let mut spans = Vec::new();
        let mut missing_from = if self.unknown { i64::MIN } else { i64::MAX };
        let kept: Vec<bool> = self.overrides.iter().map(|o| keep(o.node)).collect();
        for (o, _) in self.overrides.iter().zip(&kept).filter(|(_, k)| **k) {
            if overlaps(o.start, o.end, from, to) {
                if !meter.spend(1) {
                    missing_from = i64::MIN;
                    break;
                }
                spans.push((o.start, o.end));
            }
        }
        let taf_keep: Vec<bool> = self.taf.iter().map(|&i| kept[i]).collect();
        let (pos, neg) = self.taf_shifts();
        for m in &self.masters {
            let keep_m = keep(m.node);
            if !keep_m && !taf_keep.contains(&true) {
                continue;
            }
            // The original starts whose (possibly shifted) span can overlap;
            // a missing original start t means a span from t − neg on.
            let len = m.len.upper().max(m.rdate_len).max(self.taf_len());
            let lo = from.saturating_sub(len).saturating_sub(pos);
            let hi = to.saturating_add(neg);
            let mut missing = |t: i64| {
                if t != i64::MAX {
                    missing_from = missing_from.min(t.saturating_sub(neg));
                }
            };
            let mut cands: Vec<(i64, Option<i64>)> = Vec::new();
            if m.rules.is_empty() && (lo..hi).contains(&m.start.utc) {
                if meter.spend(1) {
                    cands.push((m.start.utc, None));
                } else {
                    missing(m.start.utc);
                }
            }
            for r in &m.rules {
                let run = run_rule(m, r, lo, hi, ff, meter);
                missing(run.missing_from);
                if run.fallback && (lo..hi).contains(&m.start.utc) {
                    cands.push((m.start.utc, None));
                }
                cands.extend(run.starts.into_iter().map(|s| (s, None)));
            }
            let first = m.rdates.partition_point(|r| r.0 < lo);
            let n = m.rdates[first..].partition_point(|r| r.0 < hi);
            let take = n.min(meter.left);
            if !meter.spend(n) {
                missing(m.rdates[first + take].0);
            }
            cands.extend_from_slice(&m.rdates[first..first + take]);
            cands.sort_unstable();
            cands.dedup_by_key(|c| c.0);
            for (s, explicit_end) in cands {
                if m.exdates.binary_search(&s).is_ok()
                    || self.overrides.binary_search_by_key(&s, |o| o.rid).is_ok()
                {
                    continue;
                }
                let (kept, span) = match self.taf_for(s) {
                    Some(t) => {
                        let o = &self.overrides[self.taf[t]];
                        let start = s.saturating_add(o.start - o.rid);
                        (taf_keep[t], (start, start.saturating_add(o.end - o.start)))
                    }
                    None => (
                        keep_m,
                        (
                            s,
                            explicit_end.unwrap_or_else(|| m.len.end(s, m.start.zone)),
                        ),
                    ),
                };
                if kept && overlaps(span.0, span.1, from, to) {
                    spans.push(span);
                }
            }
        }
        spans.sort_unstable();
        let complete = missing_from == i64::MAX;
        (Occurrences { spans, complete }, missing_from)
    }
}

/// What one rule gave for a window.
struct Run {
    /// Original starts (UTC) in the window, in order.
    starts: Vec<i64>,
    /// Instances with an original start from here on may be missing
    /// (`i64::MAX`: none is).
    missing_from: i64,
    /// The rule could not be expanded: DTSTART stands in for it.
    fallback: bool,
}

impl Run {
    fn missing(&mut self, from: i64) {
        self.missing_from = self.missing_from.min(from);
    }
}

/// The end of a rule found by a run: no instance starts after `after`
/// (`complete: false`: calcard gave up looking, there may be more).
#[derive(Clone, Copy)]
struct Barren {
    after: i64,
    complete: bool,
}

/// The instances of one rule whose original start is in `[lo, hi)`.
///
/// calcard is never given an UNTIL: its iterator checks UNTIL only against
/// a candidate, so a rule with no candidate for a long time (BYMONTH=4;
/// BYMONTHDAY=31) walks on to year 10,000 or to its give-up after 100,000
/// empty periods whatever UNTIL says. Runs stop at `limit` instances
/// instead (doubling from a small number), so every walk ends at an
/// instance this function sees and pays for; one that ends without
/// reaching its limit or COUNT walked to calcard's end, is paid as such and
/// remembered in `Rule::barren`.
fn run_rule(m: &Master, r: &Rule, lo: i64, hi: i64, ff: bool, meter: &mut Meter) -> Run {
    let mut run = Run {
        starts: Vec::new(),
        missing_from: i64::MAX,
        fallback: false,
    };
    if r.invalid.get() {
        run.missing(i64::MIN);
        run.fallback = true;
        return run;
    }
    if r.dense {
        run.missing(i64::MIN);
        return run;
    }
    if r.until.is_some_and(|u| u.bound < lo) || r.count_end.get().is_some_and(|e| e < lo) {
        return run;
    }
    if let Some(b) = r.barren.get().filter(|b| b.after < lo) {
        if !b.complete {
            run.missing(b.after);
        }
        return run;
    }
    let zone = m.start.zone;
    let (pmin, pmax) = period_secs(r.freq, r.interval);
    let weight = cost_of_8_periods(r.freq);
    // Instances are generated in local time: stop two days past `hi`
    // (UTC offsets, DST gaps make local and UTC order differ a little).
    let stop = hi.saturating_add(2 * DAY);
    let shifting = ff && r.count.is_none();
    let from = if shifting {
        shift(
            m.start.local,
            r.freq,
            r.interval,
            sub_secs(naive(lo.saturating_sub(2 * DAY)), 2 * pmax),
        )
    } else {
        m.start.local
    };
    // Run in a frame moved forward by whole 400-year cycles, close to
    // calcard's end at year 10,000: see `cycle_years`.
    let moved = if shifting {
        translation(r.freq, r.interval, naive(stop.saturating_add(2 * DAY)))
    } else {
        0
    };
    let mut start = from;
    let mut seen: Option<NaiveDateTime> = None;
    // Enough for the window when every candidate is an instance; no more
    // than a period's worth (or 32) at first, doubling, so a sparse rule
    // does not walk centuries for a few instances.
    let want = ((stop - to_utc(from, zone)).max(0) / pmin.max(1) + 2)
        .saturating_mul(i64::try_from(r.per_period).unwrap_or(i64::MAX));
    let mut limit = want.clamp(1, i64::try_from(r.per_period.max(32)).unwrap_or(i64::MAX)) as usize;
    // (Local order and UTC order differ by a DST change at most.)
    let after_seen =
        |seen: Option<NaiveDateTime>| seen.map_or(lo, |l| to_utc(l, zone).saturating_sub(DAY));
    loop {
        let allowed = meter.left;
        if allowed == 0 {
            run.missing(after_seen(seen));
            return run;
        }
        let n = limit.min(allowed);
        let got = add_years(start, moved)
            .and_then(|s| calcard_run(s, m.start.date_only, r, n))
            .map(|got| {
                got.into_iter()
                    .filter_map(|l| add_years(l, -moved))
                    .collect::<Vec<_>>()
            });
        let Some(got) = got else {
            r.invalid.set(true);
            run.missing(i64::MIN);
            run.fallback = true;
            return run;
        };
        let counted_out = r.count.is_some_and(|c| got.len() as u64 == u64::from(c));
        let natural_end = got.len() < n && !counted_out;
        let last = got.last().copied();
        // What calcard walked: to the last instance, or to its own end.
        let walked_from = last.unwrap_or(start);
        let mut periods = (walked_from - start).num_seconds().max(0) / pmin.max(1);
        let mut gave_up = false;
        if natural_end {
            // calcard stopped at year 10,000 or gave up after 100,000 empty
            // periods; the latter hides nothing when UNTIL comes first. In a
            // moved frame year 10,000 is at least a whole cycle after the
            // window: nothing in a cycle means nothing ever.
            let walked_to = add_years(walked_from, moved).unwrap_or(walked_from);
            let to_year_end = (naive(MAX_TS) - walked_to).num_seconds().max(0) / pmin.max(1);
            let horizon = add_secs(walked_from, CALCARD_GIVE_UP.saturating_mul(pmin));
            gave_up = to_year_end > CALCARD_GIVE_UP && r.until.is_none_or(|u| u.local > horizon);
            periods = periods.saturating_add(to_year_end.min(CALCARD_GIVE_UP));
        }
        let walk = periods.saturating_mul(weight) / 8;
        let cost = got
            .len()
            .saturating_add(usize::try_from(walk).unwrap_or(usize::MAX));
        // (Work done is paid even when it overdraws: the meter is then
        // empty and the next question about this UID gets nothing.)
        meter.spend(cost);
        let mut passed = false;
        for &l in &got {
            if seen.is_some_and(|p| l <= p) {
                continue;
            }
            if r.until.is_some_and(|u| l > u.local) {
                passed = true;
                break;
            }
            let s = to_utc(l, zone);
            if s >= stop {
                passed = true;
                break;
            }
            if r.until.and_then(|u| u.exact).is_some_and(|u| s > u) {
                continue;
            }
            if (lo..hi).contains(&s) {
                run.starts.push(s);
            }
        }
        if counted_out {
            r.count_end
                .set(Some(last.map(|l| to_utc(l, zone)).unwrap_or(i64::MIN)));
        }
        // (In a moved frame, an end found after the window may be less than
        // a cycle before year 10,000: proof of nothing.)
        if natural_end && !(passed && moved != 0) {
            let after = last.map(|l| to_utc(l, zone)).unwrap_or(m.start.utc);
            r.barren.set(Some(Barren {
                after,
                complete: !gave_up,
            }));
            if gave_up {
                run.missing(after);
            }
        }
        if passed || counted_out || natural_end {
            return run;
        }
        if n < limit {
            // The budget ran out before the window did.
            run.missing(after_seen(last));
            return run;
        }
        // More is needed: go on from the last instance, with a larger limit
        // (a new start a couple of periods back needs the limit to cover them).
        seen = last;
        limit = limit.saturating_mul(2);
        if shifting {
            if let Some(l) = last {
                start = shift(m.start.local, r.freq, r.interval, sub_secs(l, 2 * pmax)).max(start);
            }
        }
    }
}

/// The Gregorian calendar repeats every 400 years (146,097 days, 20,871
/// weeks, 4,800 months): moving a YEARLY, MONTHLY or WEEKLY series by a
/// multiple of 400 years that is also a multiple of FREQ × INTERVAL moves
/// each of its instances by exactly as many years (same date, weekday, week
/// number). This is the shortest such move, when it is at most 2,000 years.
fn cycle_years(freq: Freq, interval: i64) -> Option<i64> {
    fn gcd(a: i64, b: i64) -> i64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let per_cycle = match freq {
        Freq::Yearly => 400,
        Freq::Monthly => 4800,
        Freq::Weekly => 20_871,
        _ => return None,
    };
    let interval = interval.max(1);
    let years = 400i64.checked_mul(interval / gcd(per_cycle, interval))?;
    (years <= 2000).then_some(years)
}

/// How many years to move a series (whole cycles) so that the window ending
/// at local time `stop` ends at least one cycle, and less than two, before
/// year 10,000, where calcard stops walking: a rule that never matches then
/// costs at most two cycles of walking instead of thousands of years
/// (and is known never to match). 0 when that is not possible.
fn translation(freq: Freq, interval: i64, stop: NaiveDateTime) -> i64 {
    let Some(c) = cycle_years(freq, interval) else {
        return 0;
    };
    let room = 9999 - c - i64::from(stop.year());
    if room < c {
        return 0;
    }
    room / c * c
}

/// A date-time so many years later (exact for multiples of 400).
fn add_years(t: NaiveDateTime, years: i64) -> Option<NaiveDateTime> {
    if years == 0 {
        return Some(t);
    }
    t.with_year(i32::try_from(i64::from(t.year()) + years).ok()?)
}

/// One calcard run: the local starts of the first `limit` instances of the
/// rule from `start` on (COUNT still counted from `start`); `None` when
/// calcard rejects the rule.
fn calcard_run(
    start: NaiveDateTime,
    date_only: bool,
    r: &Rule,
    limit: usize,
) -> Option<Vec<NaiveDateTime>> {
    let mut rule = r.rule.clone();
    rule.until = None;
    rule.count = r.count;
    let event = ICalendarComponent {
        component_type: Ct::VEvent,
        entries: vec![
            ICalendarEntry {
                name: P::Dtstart,
                params: Vec::new(),
                values: vec![ICalendarValue::PartialDateTime(Box::new(pdt(
                    start, date_only,
                )))],
            },
            ICalendarEntry {
                name: P::Rrule,
                params: Vec::new(),
                values: vec![ICalendarValue::RecurrenceRule(rule)],
            },
        ],
        component_ids: Vec::new(),
    };
    let root = ICalendarComponent {
        component_type: Ct::VCalendar,
        entries: Vec::new(),
        component_ids: vec![1],
    };
    let ical = ICalendar {
        components: vec![root, event],
    };
    let out = ical.expand_dates(Tz::Floating, limit);
    if !out.errors.is_empty() {
        return None;
    }
    Some(out.events.iter().map(|e| e.start.naive_local()).collect())
}

/// Move a series' start forward by whole periods, to at most `target`, so
/// that its instances from `target` on stay the same (RFC 5545 §3.3.10): the
/// rule parts derived from DTSTART are explicit in the rule (see
/// [`Rule::read`]), so what the rule yields in a period depends only on the
/// period, and the periods after the new start are the same periods
/// (FREQ × INTERVAL apart, counted from DTSTART). DAILY, WEEKLY and the
/// sub-daily frequencies move by a multiple of their length; MONTHLY moves to
/// the first of a month a multiple of INTERVAL months on, YEARLY to the first
/// of January a multiple of INTERVAL years on, both keeping the time of day.
/// The new start need not be an instance; what lies before `target` is
/// dropped by the caller. Never for COUNT (counted from DTSTART).
fn shift(start: NaiveDateTime, freq: Freq, interval: i64, target: NaiveDateTime) -> NaiveDateTime {
    if target <= start {
        return start;
    }
    let interval = interval.max(1);
    let moved = match freq {
        Freq::Yearly => {
            let k = (i64::from(target.year()) - 1 - i64::from(start.year())) / interval;
            if k <= 0 {
                return start;
            }
            i32::try_from(i64::from(start.year()) + k * interval)
                .ok()
                .and_then(|y| NaiveDate::from_ymd_opt(y, 1, 1))
                .map(|d| d.and_time(start.time()))
        }
        Freq::Monthly => {
            let m0 = i64::from(start.year()) * 12 + i64::from(start.month0());
            let mt = i64::from(target.year()) * 12 + i64::from(target.month0()) - 1;
            let k = (mt - m0) / interval;
            if k <= 0 {
                return start;
            }
            let m = m0 + k * interval;
            i32::try_from(m.div_euclid(12))
                .ok()
                .and_then(|y| NaiveDate::from_ymd_opt(y, m.rem_euclid(12) as u32 + 1, 1))
                .map(|d| d.and_time(start.time()))
        }
        _ => {
            let (step, _) = period_secs(freq, interval);
            let k = (target - start).num_seconds() / step.max(1);
            Some(add_secs(start, k.saturating_mul(step)))
        }
    };
    moved
        .filter(|m| *m >= start && *m <= target)
        .unwrap_or(start)
}

/// The shortest and longest length of one period (FREQ × INTERVAL), seconds.
fn period_secs(freq: Freq, interval: i64) -> (i64, i64) {
    let (lo, hi) = match freq {
        Freq::Secondly => (1, 1),
        Freq::Minutely => (60, 60),
        Freq::Hourly => (3600, 3600),
        Freq::Daily => (DAY, DAY),
        Freq::Weekly => (7 * DAY, 7 * DAY),
        Freq::Monthly => (28 * DAY, 31 * DAY),
        Freq::Yearly => (365 * DAY, 366 * DAY),
    };
    (
        lo.saturating_mul(interval.max(1)),
        hi.saturating_mul(interval.max(1)),
    )
}

impl Rule {
    /// Read an RRULE for a series starting at `start`, making explicit what
    /// RFC 5545 (and calcard, the same way) derives from DTSTART: BYMONTH and
    /// BYMONTHDAY for YEARLY, BYMONTHDAY for MONTHLY, BYDAY for WEEKLY when
    /// no BYWEEKNO, BYYEARDAY, BYMONTHDAY or BYDAY is given, and the time of
    /// day (BYHOUR, BYMINUTE, BYSECOND, each finer than FREQ).
    fn read(given: &ICalendarRecurrenceRule, start: &When) -> Option<Rule> {
        let mut rule = Box::new(given.clone());
        let until = rule.until.take();
        let count = rule.count.take();
        let l = start.local;
        if rule.byweekno.is_empty()
            && rule.byyearday.is_empty()
            && rule.bymonthday.is_empty()
            && rule.byday.is_empty()
        {
            match rule.freq {
                Freq::Yearly => {
                    if rule.bymonth.is_empty() {
                        rule.bymonth = vec![ICalendarMonth::new(l.month() as u8, false)];
                    }
                    rule.bymonthday = vec![l.day() as i8];
                }
                Freq::Monthly => rule.bymonthday = vec![l.day() as i8],
                Freq::Weekly => {
                    rule.byday = vec![ICalendarDay {
                        ordwk: None,
                        weekday: weekday(l.weekday()),
                    }]
                }
                _ => {}
            }
        }
        if rule.byhour.is_empty() && rule.freq < Freq::Hourly {
            rule.byhour = vec![l.hour() as u8];
        }
        if rule.byminute.is_empty() && rule.freq < Freq::Minutely {
            rule.byminute = vec![l.minute() as u8];
        }
        if rule.bysecond.is_empty() && rule.freq < Freq::Secondly {
            rule.bysecond = vec![l.second() as u8];
        }
        let until = match until {
            None => None,
            Some(u) => {
                let r = u.to_date_time()?;
                Some(match r.offset {
                    Some(off) => {
                        let exact =
                            r.date_time.and_utc().timestamp() - i64::from(off.local_minus_utc());
                        Until {
                            // Loose: the instant filter is exact.
                            local: to_local(exact.saturating_add(DAY), start.zone),
                            exact: Some(exact),
                            bound: exact,
                        }
                    }
                    None => {
                        // A DATE UNTIL takes its whole day.
                        let local = if u.hour.is_none() {
                            r.date_time.date().and_hms_opt(23, 59, 59)?
                        } else {
                            r.date_time
                        };
                        Until {
                            local,
                            exact: None,
                            bound: to_utc(local, start.zone).saturating_add(2 * DAY),
                        }
                    }
                })
            }
        };
        let per_period = candidates_per_period(&rule);
        let never = no_such_day(&rule);
        let dense = per_period > MAX_PERIOD_CANDIDATES;
        // UNTIL before DTSTART contradicts the first instance: calcard
        // refuses it, and so do we (DTSTART stands in, reported unsure).
        let backwards = until.is_some_and(|u| match u.exact {
            Some(exact) => exact < start.utc,
            None => u.local < start.local,
        });
        Some(Rule {
            freq: rule.freq,
            interval: i64::from(rule.interval.unwrap_or(1).max(1)),
            rule,
            count,
            until,
            dense,
            invalid: Cell::new(backwards),
            count_end: Cell::new(None),
            barren: Cell::new(never.then_some(Barren {
                after: i64::MIN,
                complete: true,
            })),
            per_period,
        })
    }
}

/// Whether the rule's BYMONTHDAY names no day any of its months has (30
/// February, 31 April): calcard would walk to year 10,000 looking for one.
/// (Only for values calcard accepts; the rest it refuses itself.)
fn no_such_day(r: &ICalendarRecurrenceRule) -> bool {
    if r.bymonthday.is_empty()
        || r.bymonthday
            .iter()
            .any(|d| *d == 0 || !(-31..=31).contains(d))
        || r.bymonth.iter().any(|m| !(1..=12).contains(&m.month()))
    {
        return false;
    }
    let longest = |m: u8| match m {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    let months: Vec<u8> = if r.bymonth.is_empty() {
        (1..=12).collect()
    } else {
        r.bymonth.iter().map(|m| m.month()).collect()
    };
    !months
        .iter()
        .any(|&m| r.bymonthday.iter().any(|d| d.unsigned_abs() <= longest(m)))
}

/// An upper bound of the candidates calcard builds for one period of a rule
/// (days the BY* lists allow × times of day), from the list lengths alone.
fn candidates_per_period(r: &ICalendarRecurrenceRule) -> u64 {
    /// Distinct values in a list (sorted copy: no quadratic work on a
    /// hostile list).
    fn n<T: Ord + Copy>(v: &[T]) -> u64 {
        let mut d = v.to_vec();
        d.sort_unstable();
        d.dedup();
        d.len() as u64
    }
    fn or1(k: u64) -> u64 {
        k.max(1)
    }
    let months = if r.bymonth.is_empty() {
        12
    } else {
        n(&r.bymonth)
    };
    let every = r.byday.iter().filter(|d| d.ordwk.is_none()).count() as u64;
    let nth = r.byday.len() as u64 - every;
    let days: u64 = match r.freq {
        Freq::Yearly => {
            let mut d = 366u64;
            if !r.bymonth.is_empty() {
                d = d.min(31 * months);
            }
            if !r.byweekno.is_empty() {
                d = d.min(7 * n(&r.byweekno));
            }
            if !r.byyearday.is_empty() {
                d = d.min(n(&r.byyearday));
            }
            if !r.bymonthday.is_empty() {
                d = d.min(n(&r.bymonthday) * months);
            }
            if !r.byday.is_empty() {
                d = d.min(53 * every.min(7) + 12 * nth);
            }
            d
        }
        Freq::Monthly => {
            let mut d = 31u64;
            if !r.bymonthday.is_empty() {
                d = d.min(n(&r.bymonthday));
            }
            if !r.byday.is_empty() {
                d = d.min(5 * every.min(7) + nth);
            }
            d
        }
        Freq::Weekly => {
            if r.byday.is_empty() {
                7
            } else {
                n(&r.byday).min(7)
            }
        }
        _ => 1,
    };
    let times = match r.freq {
        Freq::Hourly => or1(n(&r.byminute)) * or1(n(&r.bysecond)),
        Freq::Minutely => or1(n(&r.bysecond)),
        Freq::Secondly => 1,
        _ => or1(n(&r.byhour)) * or1(n(&r.byminute)) * or1(n(&r.bysecond)),
    };
    days.max(1) * times
}

fn weekday(w: chrono::Weekday) -> ICalendarWeekday {
    match w {
        chrono::Weekday::Mon => ICalendarWeekday::Monday,
        chrono::Weekday::Tue => ICalendarWeekday::Tuesday,
        chrono::Weekday::Wed => ICalendarWeekday::Wednesday,
        chrono::Weekday::Thu => ICalendarWeekday::Thursday,
        chrono::Weekday::Fri => ICalendarWeekday::Friday,
        chrono::Weekday::Sat => ICalendarWeekday::Saturday,
        chrono::Weekday::Sun => ICalendarWeekday::Sunday,
    }
}

/// A master component, and whether one of its RRULEs could not be read
/// (what can be read is still expanded; DTSTART stands in when none can);
/// `Ok(None)` for a to-do without any date (it takes no time), `Err` when
/// its start cannot be read.
fn read_master<'a>(c: &'a Node, zones: &mut Zones) -> Result<Option<(Master<'a>, bool)>, ()> {
    let (start, start_tzid) = match c.prop(&P::Dtstart) {
        Some(e) => (value_when(e, None, zones).ok_or(())?, e.tz_id()),
        None if c.kind == Ct::VTodo => match c.prop(&P::Due) {
            Some(e) => (value_when(e, None, zones).ok_or(())?, e.tz_id()),
            None => return Ok(None),
        },
        None => return Err(()),
    };
    let len = if c.prop(&P::Dtstart).is_some() {
        length(c, &start, start_tzid, zones)
    } else {
        Length::default()
    };
    let mut rules = Vec::new();
    let mut unreadable_rule = false;
    let mut rdates = Vec::new();
    let mut exdates = Vec::new();
    for e in &c.entries {
        match e.name {
            P::Rrule if rules.len() >= MAX_RULES => unreadable_rule = true,
            P::Rrule => match e.values.first() {
                Some(ICalendarValue::RecurrenceRule(r)) => match Rule::read(r, &start) {
                    Some(r) => rules.push(r),
                    None => unreadable_rule = true,
                },
                _ => unreadable_rule = true,
            },
            P::Rdate => {
                let zone = zones.resolve(e.tz_id().or(start_tzid));
                for v in &e.values {
                    match v {
                        ICalendarValue::PartialDateTime(d) => {
                            if let Some(w) = when(d, zone) {
                                rdates.push((w.utc, None));
                            }
                        }
                        ICalendarValue::Period(ICalendarPeriod::Range { start, end }) => {
                            if let (Some(s), Some(e)) = (when(start, zone), when(end, zone)) {
                                rdates.push((s.utc, Some(e.utc.max(s.utc))));
                            }
                        }
                        ICalendarValue::Period(ICalendarPeriod::Duration { start, duration }) => {
                            if let Some(s) = when(start, zone) {
                                let d = if duration.neg {
                                    0
                                } else {
                                    duration.as_seconds()
                                };
                                rdates.push((s.utc, Some(s.utc.saturating_add(d))));
                            }
                        }
                        _ => {}
                    }
                }
            }
            P::Exdate => {
                let zone = zones.resolve(e.tz_id().or(start_tzid));
                for v in &e.values {
                    if let ICalendarValue::PartialDateTime(d) = v {
                        if let Some(w) = when(d, zone) {
                            exdates.push(w.utc);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    rdates.sort_unstable();
    exdates.sort_unstable();
    exdates.dedup();
    let rdate_len = rdates
        .iter()
        .filter_map(|&(s, e)| e.map(|e| e - s))
        .max()
        .unwrap_or(0);
    Ok(Some((
        Master {
            node: c,
            start,
            len,
            rules,
            rdates,
            rdate_len,
            exdates,
        },
        unreadable_rule,
    )))
}

/// An override: its RECURRENCE-ID and its own span (DTSTART, or the
/// RECURRENCE-ID when it has none).
fn read_override<'a>(c: &'a Node, rid: &ICalendarEntry, zones: &mut Zones) -> Option<Override<'a>> {
    let dtstart = c.prop(&P::Dtstart);
    let tzid = rid.tz_id().or(dtstart.and_then(|e| e.tz_id()));
    let rid_when = value_when(rid, tzid, zones)?;
    let this_and_future = rid.params.iter().any(|p| p.name == Pn::Range);
    let (start, start_tzid) = match dtstart {
        Some(e) => (value_when(e, None, zones)?, e.tz_id()),
        None => (rid_when, tzid),
    };
    let len = length(c, &start, start_tzid, zones);
    Some(Override {
        node: c,
        rid: rid_when.utc,
        this_and_future,
        start: start.utc,
        end: len.end(start.utc, start.zone).max(start.utc),
    })
}

/// DTEND (DUE for a to-do) − DTSTART, exact; DURATION with nominal days; a
/// day for a DATE without end; zero for a DATE-TIME without end.
fn length(c: &Node, start: &When, start_tzid: Option<&str>, zones: &mut Zones) -> Length {
    let end = c.prop(&P::Dtend).or_else(|| {
        if c.kind == Ct::VTodo {
            c.prop(&P::Due)
        } else {
            None
        }
    });
    if let Some(w) = end.and_then(|e| value_when(e, e.tz_id().or(start_tzid), zones)) {
        if start.date_only && w.date_only {
            return Length {
                days: (w.local.date() - start.local.date()).num_days().max(0),
                secs: 0,
            };
        }
        return Length {
            days: 0,
            secs: (w.utc - start.utc).max(0),
        };
    }
    if let Some(ICalendarValue::Duration(d)) = c.prop(&P::Duration).and_then(|e| e.values.first()) {
        if d.neg {
            return Length::default();
        }
        return Length {
            days: i64::from(d.weeks) * 7 + i64::from(d.days),
            secs: i64::from(d.hours) * 3600 + i64::from(d.minutes) * 60 + i64::from(d.seconds),
        };
    }
    if start.date_only {
        Length { days: 1, secs: 0 }
    } else {
        Length::default()
    }
}

/// The time zones of a calendar: its VTIMEZONEs (by TZID, X-LIC-LOCATION or
/// X-MICROSOFT-CDO-TZID, as calcard reads them), then IANA and Windows names.
struct Zones {
    named: HashMap<String, Tz>,
}

impl Zones {
    fn of(root: &Node) -> Zones {
        let mut named = HashMap::new();
        for c in &root.children {
            if c.kind != Ct::VTimezone {
                continue;
            }
            let comp = ICalendarComponent {
                component_type: Ct::VTimezone,
                entries: c.entries.clone(),
                component_ids: Vec::new(),
            };
            if let Some((name, tz)) = comp.timezone() {
                named.insert(name.to_string(), tz);
            }
        }
        Zones { named }
    }

    fn resolve(&mut self, tzid: Option<&str>) -> Tz {
        let Some(id) = tzid else {
            return DEFAULT_TZ;
        };
        if let Some(tz) = self.named.get(id) {
            return *tz;
        }
        let tz = Tz::from_str(id).unwrap_or(DEFAULT_TZ);
        if self.named.len() < 1024 {
            self.named.insert(id.to_string(), tz);
        }
        tz
    }
}

/// The first value of a date or date-time property, in its TZID (or
/// `default_tzid`).
fn value_when(e: &ICalendarEntry, default_tzid: Option<&str>, zones: &mut Zones) -> Option<When> {
    let ICalendarValue::PartialDateTime(d) = e.values.first()? else {
        return None;
    };
    when(d, zones.resolve(e.tz_id().or(default_tzid)))
}

fn when(d: &PartialDateTime, zone: Tz) -> Option<When> {
    let r = d.to_date_time()?;
    let date_only = d.hour.is_none();
    Some(match r.offset {
        Some(off) => {
            let utc = r.date_time.and_utc().timestamp() - i64::from(off.local_minus_utc());
            When {
                local: r.date_time,
                zone: if off.local_minus_utc() == 0 {
                    Tz::UTC
                } else {
                    Tz::Fixed(off)
                },
                utc,
                date_only,
            }
        }
        None => When {
            local: r.date_time,
            zone,
            utc: to_utc(r.date_time, zone),
            date_only,
        },
    })
}

/// A local time in a zone as Unix seconds: an ambiguous time is its first
/// occurrence, a time in a gap is read with the offset before the gap
/// (RFC 5545 §3.3.5); floating time is [`DEFAULT_TZ`].
fn to_utc(local: NaiveDateTime, zone: Tz) -> i64 {
    let zone = if zone.is_floating() { DEFAULT_TZ } else { zone };
    if let Some(t) = zone.from_local_datetime(&local).earliest() {
        return t.timestamp();
    }
    for hours in [1, 2, 3, 6, 12, 25, 49] {
        if let Some(t) = local
            .checked_sub_signed(TimeDelta::hours(hours))
            .and_then(|l| zone.from_local_datetime(&l).earliest())
        {
            let offset = i64::from(t.offset().fix().local_minus_utc());
            return local.and_utc().timestamp() - offset;
        }
    }
    local.and_utc().timestamp()
}

/// Unix seconds as local time in a zone.
fn to_local(utc: i64, zone: Tz) -> NaiveDateTime {
    let zone = if zone.is_floating() { DEFAULT_TZ } else { zone };
    zone.from_utc_datetime(&naive(utc)).naive_local()
}

/// Unix seconds as a UTC naive date-time, within years 1–9999.
fn naive(ts: i64) -> NaiveDateTime {
    chrono::DateTime::from_timestamp(clamp(ts), 0)
        .unwrap_or_default()
        .naive_utc()
}

fn clamp(ts: i64) -> i64 {
    ts.clamp(MIN_TS, MAX_TS)
}

fn add_secs(t: NaiveDateTime, secs: i64) -> NaiveDateTime {
    TimeDelta::try_seconds(secs)
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(NaiveDateTime::MAX)
        .min(naive(MAX_TS))
}

fn sub_secs(t: NaiveDateTime, secs: i64) -> NaiveDateTime {
    TimeDelta::try_seconds(secs)
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(NaiveDateTime::MIN)
        .max(naive(MIN_TS))
}

/// A naive date-time as a floating calcard value (a DATE when `date_only`).
fn pdt(t: NaiveDateTime, date_only: bool) -> PartialDateTime {
    PartialDateTime {
        year: Some(t.year().clamp(1, 9999) as u16),
        month: Some(t.month() as u8),
        day: Some(t.day() as u8),
        hour: (!date_only).then_some(t.hour() as u8),
        minute: (!date_only).then_some(t.minute() as u8),
        second: (!date_only).then_some(t.second() as u8),
        tz_hour: None,
        tz_minute: None,
        tz_minus: false,
    }
}

/// Whether an occurrence overlaps `[from, to)`; one of zero length does when
/// it starts inside.
fn overlaps(s: i64, e: i64, from: i64, to: i64) -> bool {
    s < to && (e > from || (e <= s && s >= from))
}

/// Whether an occurrence has ended at `now`.
fn ended(s: i64, e: i64, now: i64) -> bool {
    !overlaps(s, e, now, i64::MAX)
}

fn cancelled(c: &Node) -> bool {
    c.text(&P::Status)
        .is_some_and(|t| t.eq_ignore_ascii_case("CANCELLED"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(body: &str) -> Node {
        crate::ical::test_root(body)
    }

    fn ev(lines: &str) -> Node {
        root(&format!("BEGIN:VEVENT\r\nUID:u\r\n{lines}END:VEVENT\r\n"))
    }

    fn ts(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    /// The occurrences of `u` in March 2027.
    fn march(r: &Node, b: &mut Budget) -> Occurrences {
        occurrences(
            r,
            "u",
            ts("2027-03-01T00:00:00Z"),
            ts("2027-04-01T00:00:00Z"),
            b,
            all,
        )
    }

    fn all(_: &Node) -> bool {
        true
    }

    fn big() -> Budget {
        Budget::new(usize::MAX, usize::MAX)
    }

    const NOW: &str = "2027-03-01T12:00:00Z";

    #[test]
    fn daily_series_from_2020_next_occurrence_is_after_now() {
        let r = ev("DTSTART:20200106T090000Z\r\nDTEND:20200106T100000Z\r\nRRULE:FREQ=DAILY\r\n");
        let mut b = Budget::per_message();
        let next = next_occurrence(&r, "u", ts(NOW), &mut b);
        assert_eq!(
            next,
            Some((ts("2027-03-02T09:00:00Z"), ts("2027-03-02T10:00:00Z")))
        );
        // Without expanding the seven years before (2,600 occurrences): a
        // couple of weeks' worth.
        assert!(MESSAGE_BUDGET - b.left() < 40, "{}", b.left());
        assert_eq!(is_over(&r, "u", ts(NOW), &mut b), Some(false));
        // And the window from now holds a year of them, not 2020–2022.
        let o = occurrences(&r, "u", ts(NOW), ts("2028-03-01T12:00:00Z"), &mut b, all);
        assert!(o.complete);
        assert_eq!(o.spans.len(), 366);
        assert_eq!(o.spans[0].0, ts("2027-03-02T09:00:00Z"));
    }

    #[test]
    fn count_1000_daily_from_2020_is_over() {
        let r = ev(
            "DTSTART:20200106T090000Z\r\nDTEND:20200106T100000Z\r\nRRULE:FREQ=DAILY;COUNT=1000\r\n",
        );
        let mut b = Budget::per_message();
        assert_eq!(is_over(&r, "u", ts(NOW), &mut b), Some(true));
        assert_eq!(next_occurrence(&r, "u", ts(NOW), &mut b), None);
        // The last one is 2022-10-01; before it, the series is not over.
        assert_eq!(
            is_over(&r, "u", ts("2022-10-01T09:30:00Z"), &mut b),
            Some(false)
        );
        assert_eq!(
            next_occurrence(&r, "u", ts("2022-10-01T09:30:00Z"), &mut b),
            Some((ts("2022-10-01T09:00:00Z"), ts("2022-10-01T10:00:00Z")))
        );
        assert_eq!(
            is_over(&r, "u", ts("2022-10-01T10:00:00Z"), &mut b),
            Some(true)
        );
        // A COUNT beyond the per-UID bound cannot be told.
        let r = ev("DTSTART:20000106T090000Z\r\nRRULE:FREQ=DAILY;COUNT=100000\r\n");
        assert_eq!(is_over(&r, "u", ts(NOW), &mut Budget::per_message()), None);
    }

    #[test]
    fn until_and_infinite_series() {
        let r = ev("DTSTART:20200106T090000Z\r\nRRULE:FREQ=WEEKLY;UNTIL=20260101T000000Z\r\n");
        let mut b = Budget::per_message();
        assert_eq!(is_over(&r, "u", ts(NOW), &mut b), Some(true));
        assert_eq!(
            is_over(&r, "u", ts("2025-12-29T08:00:00Z"), &mut b),
            Some(false)
        );
        let r = ev("DTSTART:20200106T090000Z\r\nRRULE:FREQ=YEARLY\r\n");
        assert_eq!(
            is_over(&r, "u", ts("9000-01-01T00:00:00Z"), &mut b),
            Some(false)
        );
        // Not a known UID: cannot tell.
        assert_eq!(is_over(&r, "other", ts(NOW), &mut b), None);
        // A single event.
        let r = ev("DTSTART:20270301T110000Z\r\nDTEND:20270301T130000Z\r\n");
        assert_eq!(is_over(&r, "u", ts(NOW), &mut b), Some(false));
        assert_eq!(
            is_over(&r, "u", ts("2027-03-01T13:00:00Z"), &mut b),
            Some(true)
        );
    }

    #[test]
    fn next_occurrence_far_ahead_and_rare() {
        // Every 29 February, from 2021: next after 2027-03 is 2028-02-29.
        let r = ev("DTSTART;VALUE=DATE:20210101\r\nRRULE:FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29\r\n");
        let mut b = Budget::per_message();
        let n = next_occurrence(&r, "u", ts(NOW), &mut b).unwrap();
        assert_eq!(n, (ts("2028-02-29T00:00:00Z"), ts("2028-03-01T00:00:00Z")));
        // One event 300 years ahead.
        let r = ev("DTSTART:23270301T110000Z\r\n");
        assert_eq!(
            next_occurrence(&r, "u", ts(NOW), &mut b),
            Some((ts("2327-03-01T11:00:00Z"), ts("2327-03-01T11:00:00Z")))
        );
        // A rule that never matches: nothing, and no hang.
        let r = ev("DTSTART:20200101T090000Z\r\nRRULE:FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30\r\n");
        assert_eq!(
            next_occurrence(&r, "u", ts(NOW), &mut Budget::per_message()),
            None
        );
        assert_eq!(
            is_over(&r, "u", ts(NOW), &mut Budget::per_message()),
            Some(false)
        );
        // Until 2100 it is known to never come again: over.
        let r = ev("DTSTART:20200101T090000Z\r\nRRULE:FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30;UNTIL=21000101T000000Z\r\n");
        assert_eq!(
            is_over(&r, "u", ts(NOW), &mut Budget::per_message()),
            Some(true)
        );
    }

    #[test]
    fn ten_thousand_rdates_and_exdates() {
        // RDATEs every 2 hours from 2027-03-01; EXDATEs on every other one
        // and 5,000 instants that are not instances.
        let start = ts("2027-03-01T00:00:00Z");
        let fmt = |t: i64| naive(t).format("%Y%m%dT%H%M%SZ").to_string();
        let rdates: Vec<String> = (0..10_000).map(|i| fmt(start + i * 7200)).collect();
        let mut exdates: Vec<String> = (0..5_000).map(|i| fmt(start + i * 14_400)).collect();
        exdates.extend((0..5_000).map(|i| fmt(start + 3600 + i * 14_400)));
        let mut lines = String::from("DTSTART:20270301T000000Z\r\nDURATION:PT30M\r\n");
        for r in &rdates {
            lines.push_str(&format!("RDATE:{r}\r\n"));
        }
        lines.push_str(&format!("EXDATE:{}\r\n", exdates.join(",")));
        let r = ev(&lines);
        let o = occurrences(
            &r,
            "u",
            start,
            start + 30 * DAY,
            &mut Budget::per_message(),
            all,
        );
        assert!(o.complete);
        // 360 two-hour slots in 30 days, every other one removed.
        assert_eq!(o.spans.len(), 180);
        assert_eq!(o.spans[0], (start + 7200, start + 7200 + 1800));
        assert!(o.spans.windows(2).all(|w| w[1].0 - w[0].0 == 14_400));
    }

    #[test]
    fn per_uid_and_message_bounds_cut_and_say_so() {
        let start = ts("2027-03-01T00:00:00Z");
        let mut lines = String::from("DTSTART:20270228T000000Z\r\nDURATION:PT30M\r\nRDATE:");
        let values: Vec<String> = (0..24_000)
            .map(|i| naive(start + i * 3600).format("%Y%m%dT%H%M%SZ").to_string())
            .collect();
        lines.push_str(&values.join(","));
        lines.push_str("\r\n");
        let r = ev(&lines);
        let mut b = Budget::per_message();
        let o = occurrences(&r, "u", start, start + 3 * 365 * DAY, &mut b, all);
        assert!(!o.complete);
        assert_eq!(o.spans.len(), UID_BOUND);
        assert_eq!(o.spans[0].0, start);
        assert_eq!(b.left(), MESSAGE_BUDGET - UID_BOUND);
        // The message budget is shared: after four such UIDs nothing is left.
        for _ in 0..3 {
            occurrences(&r, "u", start, start + 3 * 365 * DAY, &mut b, all);
        }
        assert_eq!(b.left(), 0);
        let o = occurrences(&r, "u", start, start + DAY, &mut b, all);
        assert!(!o.complete && o.spans.is_empty());
        // A daily rule cut by a small budget keeps its earliest occurrences.
        let r = ev("DTSTART:20200106T090000Z\r\nRRULE:FREQ=DAILY\r\n");
        let o = occurrences(
            &r,
            "u",
            start,
            start + 365 * DAY,
            &mut Budget::new(100, 50),
            all,
        );
        assert!(!o.complete);
        assert!(!o.spans.is_empty() && o.spans.len() <= 50);
        assert_eq!(o.spans[0].0, ts("2027-03-01T09:00:00Z"));
    }

    const DENSE: &str = "FREQ=YEARLY;BYYEARDAY=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,\
        21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,\
        52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,\
        83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99,100,101,102,103,104,105,106,107,108,109,110,\
        111,112,113,114,115,116,117,118,119,120,121,122,123,124,125,126,127,128,129,130,131,132,133,\
        134,135,136,137,138,139,140,141,142,143,144,145,146,147,148,149,150,151,152,153,154,155,156,\
        157,158,159,160,161,162,163,164,165,166,167,168,169,170,171,172,173,174,175,176,177,178,179,\
        180,181,182,183,184,185,186,187,188,189,190,191,192,193,194,195,196,197,198,199,200,201,202,\
        203,204,205,206,207,208,209,210,211,212,213,214,215,216,217,218,219,220,221,222,223,224,225,\
        226,227,228,229,230,231,232,233,234,235,236,237,238,239,240,241,242,243,244,245,246,247,248,\
        249,250,251,252,253,254,255,256,257,258,259,260,261,262,263,264,265,266,267,268,269,270,271,\
        272,273,274,275,276,277,278,279,280,281,282,283,284,285,286,287,288,289,290,291,292,293,294,\
        295,296,297,298,299,300,301,302,303,304,305,306,307,308,309,310,311,312,313,314,315,316,317,\
        318,319,320,321,322,323,324,325,326,327,328,329,330,331,332,333,334,335,336,337,338,339,340,\
        341,342,343,344,345,346,347,348,349,350,351,352,353,354,355,356,357,358,359,360,361,362,363,\
        364,365,366;BYHOUR=0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23;BYMINUTE=0,\
        1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,\
        35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59;BYSECOND=0,1,2,3,\
        4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,\
        37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59;BYMONTH=1,2,3,4,5,6,7,8,9,\
        10,11,12;BYMONTHDAY=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,\
        29,30,31;BYWEEKNO=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,\
        29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53;WKST=MO";

    #[test]
    fn dense_rule_is_refused_and_reported_incomplete() {
        assert!(DENSE.len() > 2000);
        let r = ev(&format!("DTSTART:20270101T000000Z\r\nRRULE:{DENSE}\r\n"));
        let mut b = Budget::per_message();
        let o = occurrences(&r, "u", ts(NOW), ts("2028-01-01T00:00:00Z"), &mut b, all);
        assert!(!o.complete);
        assert!(o.spans.is_empty());
        assert_eq!(b.left(), MESSAGE_BUDGET);
        assert_eq!(next_occurrence(&r, "u", ts(NOW), &mut b), None);
        // Infinite: never over, dense or not; finite: cannot tell.
        assert_eq!(is_over(&r, "u", ts(NOW), &mut b), Some(false));
        let r = ev(&format!(
            "DTSTART:20270101T000000Z\r\nRRULE:{DENSE};COUNT=5\r\n"
        ));
        assert_eq!(is_over(&r, "u", ts(NOW), &mut b), None);
        // A busy but reasonable rule still expands: weekdays, 9–17 hourly.
        let r = ev(
            "DTSTART:20270101T090000Z\r\nRRULE:FREQ=YEARLY;BYDAY=MO,TU,WE,TH,FR;\
                    BYHOUR=9,10,11,12,13,14,15,16,17\r\n",
        );
        let o = occurrences(&r, "u", ts(NOW), ts(NOW) + 7 * DAY, &mut b, all);
        assert!(o.complete);
        assert_eq!(o.spans.len(), 45);
    }

    #[test]
    fn hostile_rules_do_not_panic() {
        let cases = [
            "DTSTART:20270101T090000Z\r\nRRULE:FREQ=DAILY;UNTIL=20200101T000000Z\r\n",
            "DTSTART:20270101T090000Z\r\nRRULE:FREQ=DAILY;INTERVAL=0\r\n",
            "DTSTART:20270101T090000Z\r\nRRULE:FREQ=DAILY;INTERVAL=4294967295\r\n",
            "DTSTART:20270101T090000Z\r\nRRULE:FREQ=SECONDLY;INTERVAL=65535\r\n",
            "DTSTART:20270101T090000Z\r\nRRULE:FREQ=MONTHLY;BYDAY=FR;BYSETPOS=400\r\n",
            "DTSTART:20270101T090000Z\r\nRRULE:FREQ=MONTHLY;BYDAY=FR;BYSETPOS=-99999999999\r\n",
            "DTSTART:20270101T090000Z\r\nRRULE:FREQ=MONTHLY;BYMONTHDAY=0,99,-99\r\n",
            "DTSTART:20270101T090000Z\r\nRRULE:FREQ=YEARLY;BYWEEKNO=60;BYYEARDAY=-400\r\n",
            "DTSTART:20270101T090000Z\r\nRRULE:FREQ=DAILY;COUNT=4294967295\r\n",
            "DTSTART:20270101T090000Z\r\nRRULE:FREQ=SECONDLY\r\n",
            "DTSTART:20270101T090000Z\r\nRRULE:FREQ=SECONDLY;BYMONTH=6;BYHOUR=9;BYMINUTE=0;BYSECOND=0\r\n",
            "DTSTART:20270101T090000Z\r\nRRULE:FREQ=MINUTELY;BYDAY=MO;BYHOUR=3\r\n",
            "DTSTART:20270101T090000Z\r\nRRULE:garbage\r\n",
            "DTSTART:20270101T090000Z\r\nRRULE:FREQ=WEEKLY;BYMONTHDAY=3\r\n",
            "RRULE:FREQ=DAILY\r\nDTEND:20270101T090000Z\r\n",
            "DTSTART:20270230T090000Z\r\nRRULE:FREQ=DAILY\r\n",
            "DTSTART:99991230T100000Z\r\nRRULE:FREQ=DAILY\r\n",
            "DTSTART:99991230T100000Z\r\nRRULE:FREQ=YEARLY;UNTIL=99991231T235959Z\r\n",
            "DTSTART;VALUE=DATE:99991231\r\nRRULE:FREQ=DAILY;COUNT=10\r\nRDATE;VALUE=DATE:99991231\r\n",
            "DTSTART:00010101T000000Z\r\nRRULE:FREQ=YEARLY;INTERVAL=9999\r\n",
            "DTSTART:20270101T090000Z\r\nDURATION:P4294967295W\r\nRRULE:FREQ=DAILY\r\n",
            "DTSTART:20270101T090000Z\r\nDURATION:-PT1H\r\nDTEND:20200101T000000Z\r\n",
            "DTSTART;TZID=Nowhere/Special:20270101T090000\r\nRRULE:FREQ=DAILY;COUNT=3\r\n",
            "DTSTART:20270101T090000Z\r\nRECURRENCE-ID;RANGE=THISANDFUTURE:99991231T000000Z\r\n",
        ];
        let windows = [
            (i64::MIN, i64::MAX),
            (ts(NOW), ts(NOW) + 400 * DAY),
            (ts("9999-12-01T00:00:00Z"), i64::MAX),
            (i64::MAX, i64::MIN),
        ];
        for c in cases {
            let r = ev(c);
            for (from, to) in windows {
                let mut b = Budget::per_message();
                let o = occurrences(&r, "u", from, to, &mut b, all);
                assert!(o.spans.windows(2).all(|w| w[0] <= w[1]), "{c}");
                assert!(o.spans.len() <= UID_BOUND, "{c}");
                next_occurrence(&r, "u", from, &mut b);
                is_over(&r, "u", from, &mut Budget::per_message());
            }
        }
    }

    #[test]
    fn hostile_rule_results() {
        let mut b = big();
        let w = (ts("2026-12-31T00:00:00Z"), ts("2027-01-10T00:00:00Z"));
        // UNTIL before DTSTART: DTSTART stands alone, and we say we are unsure.
        let r = ev("DTSTART:20270101T090000Z\r\nRRULE:FREQ=DAILY;UNTIL=20200101T000000Z\r\n");
        let o = occurrences(&r, "u", w.0, w.1, &mut b, all);
        assert_eq!(
            o.spans,
            [(ts("2027-01-01T09:00:00Z"), ts("2027-01-01T09:00:00Z"))]
        );
        assert!(!o.complete);
        // BYSETPOS out of range: calcard refuses the rule; the same.
        let r = ev("DTSTART:20270101T090000Z\r\nRRULE:FREQ=MONTHLY;BYDAY=FR;BYSETPOS=400\r\n");
        let o = occurrences(&r, "u", w.0, w.1, &mut b, all);
        assert_eq!(o.spans.len(), 1);
        assert!(!o.complete);
        // Missing DTSTART: nothing known.
        let r = ev("RRULE:FREQ=DAILY\r\n");
        let o = occurrences(&r, "u", w.0, w.1, &mut b, all);
        assert!(o.spans.is_empty() && !o.complete);
        assert_eq!(is_over(&r, "u", ts(NOW), &mut b), None);
        // calcard reads INTERVAL=0 as 1.
        let r = ev("DTSTART:20270101T090000Z\r\nRRULE:FREQ=DAILY;INTERVAL=0\r\n");
        assert_eq!(occurrences(&r, "u", w.0, w.1, &mut b, all).spans.len(), 9);
        // Year 9999: the last instants exist, nothing after.
        let r = ev("DTSTART:99991230T100000Z\r\nRRULE:FREQ=DAILY\r\n");
        let o = occurrences(&r, "u", ts("9999-12-01T00:00:00Z"), i64::MAX, &mut b, all);
        assert_eq!(o.spans.len(), 2);
        assert!(o.complete);
        // SECONDLY: cut by the bound, earliest first.
        let r = ev("DTSTART:20270101T090000Z\r\nRRULE:FREQ=SECONDLY\r\n");
        let o = occurrences(&r, "u", w.0, w.1, &mut Budget::per_message(), all);
        assert!(!o.complete);
        assert!(o.spans.len() > UID_BOUND / 3 && o.spans.len() <= UID_BOUND);
        assert_eq!(o.spans[1].0 - o.spans[0].0, 1);
    }

    #[test]
    fn keep_is_asked_per_component() {
        // Weekly Monday 10:00 UTC; the 8 March one moved to Tuesday 15:00,
        // the 15 March one cancelled, the master transparent.
        let r = root(
            "BEGIN:VEVENT\r\nUID:u\r\nDTSTART:20270301T100000Z\r\nDTEND:20270301T110000Z\r\n\
             RRULE:FREQ=WEEKLY;COUNT=4\r\nTRANSP:TRANSPARENT\r\nEND:VEVENT\r\n\
             BEGIN:VEVENT\r\nUID:u\r\nRECURRENCE-ID:20270308T100000Z\r\nSEQUENCE:3\r\n\
             DTSTART:20270309T150000Z\r\nDTEND:20270309T160000Z\r\nEND:VEVENT\r\n\
             BEGIN:VEVENT\r\nUID:u\r\nRECURRENCE-ID:20270315T100000Z\r\nSTATUS:CANCELLED\r\n\
             DTSTART:20270315T100000Z\r\nDTEND:20270315T110000Z\r\nEND:VEVENT\r\n",
        );
        let w = (ts("2027-03-01T00:00:00Z"), ts("2027-04-01T00:00:00Z"));
        let o = occurrences(&r, "u", w.0, w.1, &mut big(), all);
        assert_eq!(
            o.spans,
            [
                (ts("2027-03-01T10:00:00Z"), ts("2027-03-01T11:00:00Z")),
                (ts("2027-03-09T15:00:00Z"), ts("2027-03-09T16:00:00Z")),
                (ts("2027-03-15T10:00:00Z"), ts("2027-03-15T11:00:00Z")),
                (ts("2027-03-22T10:00:00Z"), ts("2027-03-22T11:00:00Z")),
            ]
        );
        let asked = std::cell::Cell::new(0);
        let busy = |c: &Node| {
            asked.set(asked.get() + 1);
            c.text(&P::Transp).is_none() && !cancelled(c)
        };
        let o = occurrences(&r, "u", w.0, w.1, &mut big(), busy);
        assert_eq!(
            o.spans,
            [(ts("2027-03-09T15:00:00Z"), ts("2027-03-09T16:00:00Z"))]
        );
        assert_eq!(asked.get(), 3);
        // The next occurrence skips the cancelled one.
        let n = next_occurrence(&r, "u", ts("2027-03-10T00:00:00Z"), &mut big());
        assert_eq!(
            n,
            Some((ts("2027-03-22T10:00:00Z"), ts("2027-03-22T11:00:00Z")))
        );
    }

    #[test]
    fn this_and_future_shifts_later_instances() {
        let r = root(
            "BEGIN:VEVENT\r\nUID:u\r\nDTSTART:20270301T100000Z\r\nDTEND:20270301T110000Z\r\n\
             RRULE:FREQ=DAILY;COUNT=5\r\nEND:VEVENT\r\n\
             BEGIN:VEVENT\r\nUID:u\r\nRECURRENCE-ID;RANGE=THISANDFUTURE:20270303T100000Z\r\n\
             DTSTART:20270303T140000Z\r\nDTEND:20270303T160000Z\r\nEND:VEVENT\r\n",
        );
        let o = occurrences(
            &r,
            "u",
            ts("2027-03-01T00:00:00Z"),
            ts("2027-04-01T00:00:00Z"),
            &mut big(),
            all,
        );
        let starts: Vec<String> = o
            .spans
            .iter()
            .map(|s| format!("{}+{}", naive(s.0).format("%d %H"), s.1 - s.0))
            .collect();
        assert_eq!(
            starts,
            [
                "01 10+3600",
                "02 10+3600",
                "03 14+7200",
                "04 14+7200",
                "05 14+7200"
            ]
        );
    }

    #[test]
    fn time_zones_dst_and_all_day() {
        let mut b = big();
        // Weekly 10:00 Berlin across the March change: 09:00Z, then 08:00Z.
        let r = ev("DTSTART;TZID=Europe/Berlin:20270315T100000\r\nDTEND;TZID=Europe/Berlin:20270315T110000\r\n\
                    RRULE:FREQ=WEEKLY;COUNT=3\r\n");
        let o = occurrences(
            &r,
            "u",
            ts("2027-03-01T00:00:00Z"),
            ts("2027-04-30T00:00:00Z"),
            &mut b,
            all,
        );
        assert_eq!(
            o.spans.iter().map(|s| s.0).collect::<Vec<_>>(),
            [
                ts("2027-03-15T09:00:00Z"),
                ts("2027-03-22T09:00:00Z"),
                ts("2027-03-29T08:00:00Z")
            ]
        );
        // 02:30 on 28 March 2027 does not exist in Berlin: read at +01:00.
        // On 31 October it exists twice: the first (+02:00).
        let r = ev("DTSTART;TZID=Europe/Berlin:20270328T023000\r\nRRULE:FREQ=YEARLY;BYMONTH=3,10;BYDAY=-1SU;COUNT=2\r\n");
        let o = occurrences(
            &r,
            "u",
            ts("2027-01-01T00:00:00Z"),
            ts("2028-01-01T00:00:00Z"),
            &mut b,
            all,
        );
        assert_eq!(
            o.spans.iter().map(|s| s.0).collect::<Vec<_>>(),
            [ts("2027-03-28T01:30:00Z"), ts("2027-10-31T00:30:00Z")]
        );
        // All-day series with a DATE EXDATE: whole UTC days.
        let r = ev("DTSTART;VALUE=DATE:20270301\r\nDTEND;VALUE=DATE:20270302\r\nRRULE:FREQ=DAILY;COUNT=3\r\n\
                    EXDATE;VALUE=DATE:20270302\r\n");
        let o = march(&r, &mut b);
        assert_eq!(
            o.spans,
            [
                (ts("2027-03-01T00:00:00Z"), ts("2027-03-02T00:00:00Z")),
                (ts("2027-03-03T00:00:00Z"), ts("2027-03-04T00:00:00Z"))
            ]
        );
        // UNTIL in UTC is an instant: 20:00 New York on 10 March is 01:00Z
        // on the 11th, after UNTIL.
        let r = ev("DTSTART;TZID=America/New_York:20270301T200000\r\nRRULE:FREQ=DAILY;UNTIL=20270310T235959Z\r\n");
        let o = march(&r, &mut b);
        assert_eq!(o.spans.len(), 9);
        // EXDATE removes an RDATE too; DTSTART without DTEND lasts nothing.
        let r = ev("DTSTART:20270301T100000Z\r\nRDATE:20270305T100000Z,20270306T100000Z\r\nEXDATE:20270305T100000Z\r\n");
        let o = march(&r, &mut b);
        assert_eq!(
            o.spans,
            [
                (ts("2027-03-01T10:00:00Z"), ts("2027-03-01T10:00:00Z")),
                (ts("2027-03-06T10:00:00Z"), ts("2027-03-06T10:00:00Z"))
            ]
        );
    }

    #[test]
    fn days_no_month_has_are_known_without_a_walk() {
        for rule in [
            "FREQ=DAILY;BYMONTH=4;BYMONTHDAY=31",
            "FREQ=MONTHLY;BYMONTH=2;BYMONTHDAY=30,-30",
            "FREQ=YEARLY;BYMONTH=2,4;BYMONTHDAY=31",
        ] {
            let r = ev(&format!("DTSTART:20210829T090000Z\r\nRRULE:{rule}\r\n"));
            let mut b = Budget::per_message();
            let o = occurrences(&r, "u", ts(NOW), ts(NOW) + 400 * DAY, &mut b, all);
            assert!(o.spans.is_empty() && o.complete, "{rule}");
            assert_eq!(next_occurrence(&r, "u", ts(NOW), &mut b), None);
            assert_eq!(b.left(), MESSAGE_BUDGET, "{rule}");
        }
        // 29 February exists (in some years), -31 in January.
        let r = ev("DTSTART:20210829T090000Z\r\nRRULE:FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29\r\n");
        assert!(next_occurrence(&r, "u", ts(NOW), &mut Budget::per_message()).is_some());
        let r = ev("DTSTART:20210829T090000Z\r\nRRULE:FREQ=MONTHLY;BYMONTH=1,2;BYMONTHDAY=-31\r\n");
        assert!(next_occurrence(&r, "u", ts(NOW), &mut Budget::per_message()).is_some());
    }

    #[test]
    fn a_rule_that_stops_matching_is_walked_once_and_paid() {
        // The second of one instance a day never comes: calcard walks
        // 100,000 days looking for it.
        let r = ev("DTSTART:20210829T090000Z\r\nRRULE:FREQ=DAILY;BYHOUR=9;BYSETPOS=2\r\n");
        let series = Series::new(&r, "u");
        let mut b = Budget::new(MESSAGE_BUDGET, MESSAGE_BUDGET);
        let o = series.occurrences(ts(NOW), ts(NOW) + 400 * DAY, &mut b, all);
        // calcard gave up: there may be more after 274 years.
        assert!(o.spans.is_empty() && !o.complete);
        let paid = MESSAGE_BUDGET - b.left();
        assert!(paid >= 100_000 / 64, "{paid}");
        // Asked again, the walk is not made again.
        let o = series.occurrences(ts(NOW) + DAY, ts(NOW) + 400 * DAY, &mut b, all);
        assert!(o.spans.is_empty() && !o.complete);
        assert_eq!(MESSAGE_BUDGET - b.left(), paid);
        assert_eq!(series.next_occurrence(ts(NOW), &mut b), None);
        // With UNTIL before calcard's give-up, "never" is known for sure.
        // (29 February in odd years only: never.)
        let r = ev(
            "DTSTART:20210829T090000Z\r\nRRULE:FREQ=YEARLY;INTERVAL=2;BYMONTH=2;BYMONTHDAY=29;\
                    UNTIL=20400101T000000Z\r\n",
        );
        assert_eq!(
            is_over(&r, "u", ts(NOW), &mut Budget::per_message()),
            Some(true)
        );
        // A message of many such UIDs stops at its budget, quickly.
        let mut b = Budget::per_message();
        let answered = (0..50)
            .filter(|_| next_occurrence(&r, "u", ts(NOW), &mut b).is_some())
            .count();
        assert_eq!(answered, 0);
        assert_eq!(b.left(), 0);
    }

    #[test]
    fn windows_select_by_overlap() {
        let r = ev(
            "DTSTART:20270301T100000Z\r\nDTEND:20270301T110000Z\r\nRRULE:FREQ=DAILY;COUNT=3\r\n",
        );
        let mut b = big();
        let at = |from: &str, to: &str, b: &mut Budget| {
            occurrences(&r, "u", ts(from), ts(to), b, all).spans.len()
        };
        assert_eq!(
            at("2027-03-01T11:00:00Z", "2027-03-02T10:00:00Z", &mut b),
            0
        );
        assert_eq!(
            at("2027-03-01T10:59:59Z", "2027-03-02T10:00:01Z", &mut b),
            2
        );
        assert_eq!(
            at("2027-03-02T10:30:00Z", "2027-03-02T10:31:00Z", &mut b),
            1
        );
    }

    // ---- The proof that fast-forward changes nothing: random rules, random
    // windows, against calcard's own full expansion and our own expansion
    // from DTSTART.

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
            &v[self.below(v.len() as u64) as usize]
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// How a generated series writes its dates.
    #[derive(Clone, Copy, Debug)]
    enum Style {
        Utc,
        Tzid(&'static str),
        Floating,
        Date,
    }

    impl Style {
        fn zone(self) -> Tz {
            match self {
                Style::Tzid(id) => Tz::from_str(id).unwrap(),
                _ => Tz::UTC,
            }
        }
        fn prop(self, name: &str, local: NaiveDateTime) -> String {
            match self {
                Style::Utc => format!("{name}:{}Z", local.format("%Y%m%dT%H%M%S")),
                Style::Tzid(id) => {
                    format!("{name};TZID=\"{id}\":{}", local.format("%Y%m%dT%H%M%S"))
                }
                Style::Floating => format!("{name}:{}", local.format("%Y%m%dT%H%M%S")),
                Style::Date => format!("{name};VALUE=DATE:{}", local.format("%Y%m%d")),
            }
        }
    }

    /// calcard's full expansion, sorted; `None` when it rejects the rule
    /// (UNTIL before DTSTART, tested elsewhere).
    fn reference(text: &str, limit: usize) -> Option<Vec<(i64, i64)>> {
        let ical = match calcard::Parser::new(text).entry() {
            calcard::Entry::ICalendar(i) => i,
            other => panic!("{other:?}"),
        };
        let x = ical.expand_dates(Tz::UTC, limit);
        if !x.errors.is_empty() {
            return None;
        }
        let mut v: Vec<(i64, i64)> = x.events.iter().map(|e| e.timestamps()).collect();
        v.sort_unstable();
        Some(v)
    }

    /// The same calendar with infinite RRULEs ending in 2031, after every
    /// window the test looks at: calcard then does not walk to year 10000.
    fn capped(text: &str, style: Style) -> String {
        let until = match style {
            Style::Date => ";UNTIL=20310101",
            _ => ";UNTIL=20310101T000000Z",
        };
        text.split_inclusive("\r\n")
            .map(|l| {
                if l.starts_with("RRULE:") && !l.contains("COUNT=") && !l.contains("UNTIL=") {
                    l.replace("\r\n", &format!("{until}\r\n"))
                } else {
                    l.to_string()
                }
            })
            .collect()
    }

    fn calendar(components: &[String]) -> String {
        format!(
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\n{}END:VCALENDAR\r\n",
            components.concat()
        )
    }

    /// One random series: the master's lines (without EXDATE) and its style.
    fn random_master(g: &mut Rng) -> (String, Style, NaiveDateTime) {
        let style = *g.pick(&[
            Style::Utc,
            Style::Tzid("Europe/Berlin"),
            Style::Tzid("W. Europe Standard Time"),
            Style::Tzid("America/New_York"),
            Style::Floating,
            Style::Date,
        ]);
        let freq = *g.pick(&[
            "DAILY", "WEEKLY", "WEEKLY", "MONTHLY", "MONTHLY", "YEARLY", "YEARLY", "HOURLY",
        ]);
        let date_only = matches!(style, Style::Date);
        let year = 2019 + g.below(5) as i32;
        let month = 1 + g.below(12) as u32;
        let day = if g.chance(15) {
            28 + g.below(4) as u32
        } else {
            1 + g.below(28) as u32
        };
        let date = NaiveDate::from_ymd_opt(year, month, day)
            .unwrap_or_else(|| NaiveDate::from_ymd_opt(year, month, 28).unwrap());
        // Times of day away from DST changes and from UTC midnight.
        let (h, m) = if date_only {
            (0, 0)
        } else {
            (9 + g.below(8) as u32, 15 * g.below(4) as u32)
        };
        let start = date.and_hms_opt(h, m, 0).unwrap();
        let mut rule = format!("FREQ={freq}");
        let days = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"];
        match freq {
            "DAILY" => {
                rule += &format!(";INTERVAL={}", 1 + g.below(3));
                if g.chance(30) {
                    rule += ";BYDAY=MO,TU,WE,TH,FR";
                }
                if g.chance(20) {
                    rule += ";BYMONTH=1,3,5,7,9,11";
                }
                if !date_only && g.chance(20) {
                    rule += ";BYHOUR=9,14;BYMINUTE=0,30";
                }
            }
            "WEEKLY" => {
                rule += &format!(";INTERVAL={}", 1 + g.below(3));
                if g.chance(60) {
                    let mut set: Vec<&str> = (0..1 + g.below(3)).map(|_| *g.pick(&days)).collect();
                    set.sort_unstable();
                    set.dedup();
                    rule += &format!(";BYDAY={}", set.join(","));
                }
                if g.chance(30) {
                    rule += ";WKST=SU";
                }
            }
            "MONTHLY" => {
                rule += &format!(";INTERVAL={}", 1 + g.below(3));
                rule += *g.pick(&[
                    "",
                    ";BYDAY=-1FR",
                    ";BYDAY=2TU,4TU",
                    ";BYMONTHDAY=1,15,-1",
                    ";BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1",
                    ";BYMONTHDAY=31",
                ]);
            }
            "YEARLY" => {
                rule += &format!(";INTERVAL={}", 1 + g.below(2));
                rule += *g.pick(&[
                    "",
                    ";BYMONTH=3,10;BYDAY=-1SU",
                    ";BYMONTH=11;BYDAY=4TH",
                    ";BYYEARDAY=1,100,200,-1",
                    ";BYWEEKNO=1,20;BYDAY=MO",
                    ";BYMONTH=2;BYMONTHDAY=29",
                ]);
            }
            _ => {
                let iv = 7 + g.below(5);
                rule = format!("FREQ=HOURLY;INTERVAL={iv};BYHOUR=9,10,11,12,13,14,15,16,17");
            }
        }
        let style = if freq == "HOURLY" && date_only {
            Style::Utc
        } else {
            style
        };
        match g.below(3) {
            0 => rule += &format!(";COUNT={}", 1 + g.below(300)),
            1 => {
                let u = NaiveDate::from_ymd_opt(
                    2020 + g.below(10) as i32,
                    1 + g.below(12) as u32,
                    1 + g.below(28) as u32,
                )
                .unwrap();
                if matches!(style, Style::Date) {
                    rule += &format!(";UNTIL={}", u.format("%Y%m%d"));
                } else {
                    rule += &format!(";UNTIL={}T235959Z", u.format("%Y%m%d"));
                }
            }
            _ => {}
        }
        let mut lines = style.prop("DTSTART", start) + "\r\n";
        if matches!(style, Style::Date) {
            if g.chance(50) {
                lines += &style.prop("DTEND", start + TimeDelta::days(1 + g.below(3) as i64));
                lines += "\r\n";
            }
        } else if g.chance(50) {
            lines += &style.prop(
                "DTEND",
                start + TimeDelta::minutes(30 * (1 + g.below(8) as i64)),
            );
            lines += "\r\n";
        } else {
            // (Not DTSTART alone: calcard makes that last until 23:59:59.)
            lines += &format!("DURATION:PT{}M\r\n", 15 * (1 + g.below(16)));
        }
        lines += &format!("RRULE:{rule}\r\n");
        (lines, style, start)
    }

    fn local_of(utc: i64, style: Style) -> NaiveDateTime {
        to_local(utc, style.zone())
    }

    /// 250 random series (DAILY, WEEKLY with BYDAY and WKST, MONTHLY with
    /// BYDAY=-1FR, BYSETPOS, BYMONTHDAY=31, YEARLY with BYWEEKNO, BYYEARDAY,
    /// 29 February, HOURLY; UTC, Europe/Berlin, "W. Europe Standard Time",
    /// America/New_York, floating, all-day; COUNT, UNTIL or neither; EXDATEs,
    /// moved instances, RANGE=THISANDFUTURE, RDATEs), 12 windows each: the
    /// fast-forwarded expansion equals calcard's full expansion from
    /// DTSTART restricted to the window, and so does ours from DTSTART; the
    /// next occurrence and is-over agree with it too.
    #[test]
    fn fast_forward_equals_full_expansion() {
        const LIMIT: usize = 20_000;
        // IMIPD_RECUR_SEED runs another sample.
        let seed = std::env::var("IMIPD_RECUR_SEED")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&s| s != 0)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        let mut g = Rng(seed);
        let mut compared = 0usize;
        let mut nonempty = 0usize;
        let mut nexts = 0usize;
        let mut unknown = 0usize;
        // Cases with: EXDATE, a moved instance, THISANDFUTURE, RDATE.
        let mut with = [0usize; 4];
        let lo = ts("2019-01-01T00:00:00Z");
        let hi = ts("2030-01-01T00:00:00Z");
        for case in 0..250 {
            let (mut lines, style, _start) = random_master(&mut g);
            let Some(base) = reference(
                &capped(
                    &calendar(&[format!("BEGIN:VEVENT\r\nUID:u\r\n{lines}END:VEVENT\r\n")]),
                    style,
                ),
                LIMIT,
            ) else {
                continue;
            };
            // Instances to except, move, and maybe shift with THISANDFUTURE.
            let mut extra = Vec::new();
            let picks: Vec<usize> = (0..g.below(5))
                .map(|_| g.below(base.len() as u64) as usize)
                .collect();
            let taf_at = (base.len() > 4 && g.chance(25))
                .then(|| picks.iter().copied().max().unwrap_or(0) + 1);
            let mut used = std::collections::BTreeSet::new();
            let mut exdates = Vec::new();
            for (k, &i) in picks.iter().enumerate() {
                if i >= base.len() || !used.insert(i) || taf_at.is_some_and(|t| i >= t) {
                    continue;
                }
                let (s, e) = base[i];
                let rid = local_of(s, style);
                if k % 2 == 0 {
                    exdates.push(style.prop("EXDATE", rid));
                    with[0] += 1;
                } else {
                    let shift = *g.pick(&[3600, -DAY, 3 * DAY]);
                    let shift = if matches!(style, Style::Date) {
                        -DAY
                    } else {
                        shift
                    };
                    with[1] += 1;
                    extra.push(format!(
                        "BEGIN:VEVENT\r\nUID:u\r\n{}\r\n{}\r\n{}\r\nEND:VEVENT\r\n",
                        style.prop("RECURRENCE-ID", rid),
                        style.prop("DTSTART", local_of(s + shift, style)),
                        style.prop("DTEND", local_of(e + shift, style)),
                    ));
                }
            }
            if let Some(t) = taf_at.filter(|&t| t < base.len()) {
                let (s, e) = base[t];
                let shift = if matches!(style, Style::Date) {
                    -DAY
                } else {
                    *g.pick(&[7200, -DAY])
                };
                let rid = style.prop("RECURRENCE-ID", local_of(s, style)).replacen(
                    "RECURRENCE-ID",
                    "RECURRENCE-ID;RANGE=THISANDFUTURE",
                    1,
                );
                with[2] += 1;
                extra.push(format!(
                    "BEGIN:VEVENT\r\nUID:u\r\n{rid}\r\n{}\r\n{}\r\nEND:VEVENT\r\n",
                    style.prop("DTSTART", local_of(s + shift, style)),
                    style.prop("DTEND", local_of(e + shift, style)),
                ));
            }
            for x in exdates {
                lines += &(x + "\r\n");
            }
            // RDATEs at 07:17 local, never an instance of the rules above
            // (and before any THISANDFUTURE, which calcard does not apply
            // to RDATEs).
            if !matches!(style, Style::Date) && taf_at.is_none() && g.chance(30) {
                for _ in 0..1 + g.below(3) {
                    let t = lo + g.below((hi - lo) as u64) as i64;
                    let l = local_of(t, style).date().and_hms_opt(7, 17, 0).unwrap();
                    lines += &(style.prop("RDATE", l) + "\r\n");
                    with[3] += 1;
                }
            }
            let mut comps = vec![format!("BEGIN:VEVENT\r\nUID:u\r\n{lines}END:VEVENT\r\n")];
            comps.extend(extra);
            let infinite = !lines.contains("COUNT=") && !lines.contains("UNTIL=");
            let text = calendar(&comps);
            let full = reference(&capped(&text, style), LIMIT).expect("calcard expands it");
            // calcard stops after LIMIT rule instances: compare up to there.
            let covered = if full.len() >= LIMIT - 10 {
                full.iter().map(|s| s.0).max().unwrap_or(hi).min(hi)
            } else {
                hi
            };
            let r = root(
                &text["BEGIN:VCALENDAR\r\nVERSION:2.0\r\n".len()
                    ..text.len() - "END:VCALENDAR\r\n".len()],
            );
            let series = Series::new(&r, "u");
            for w in 0..12 {
                let from = match w {
                    0 if !full.is_empty() => full[g.below(full.len() as u64) as usize].1,
                    1 if !full.is_empty() => full[g.below(full.len() as u64) as usize].0,
                    _ => lo + g.below((covered - lo).max(1) as u64) as i64,
                };
                let len = *g.pick(&[3600, DAY, 7 * DAY, 40 * DAY, 400 * DAY, 3 * 365 * DAY]);
                let to = (from + len).min(covered);
                if to <= from {
                    continue;
                }
                let want: Vec<(i64, i64)> = full
                    .iter()
                    .copied()
                    .filter(|&(s, e)| overlaps(s, e, from, to))
                    .collect();
                let got = series.occurrences(from, to, &mut big(), all);
                assert!(got.complete, "case {case}\n{text}");
                assert_eq!(
                    got.spans,
                    want,
                    "case {case} window {} .. {}\n{text}",
                    naive(from),
                    naive(to)
                );
                if w % 4 == 0 {
                    let mut m = Meter {
                        left: usize::MAX,
                        used: 0,
                    };
                    let (slow, _) = series.spans_in(from, to, &mut m, &all, false);
                    assert_eq!(slow.spans, want, "case {case} (from DTSTART)\n{text}");
                }
                compared += 1;
                nonempty += usize::from(!want.is_empty());
                // The next occurrence and whether it is over, from `from`.
                let next = full.iter().copied().find(|&(s, e)| !ended(s, e, from));
                // (Past 2031 an infinite rule's reference was capped.)
                let known = match next {
                    Some(n) => n.0 < covered,
                    None => !infinite && full.len() < LIMIT - 10,
                };
                if known {
                    // Within the per-message budget; a rule that matches
                    // nothing for centuries may be "unknown", never wrong.
                    let mut m = Budget::per_message().meter();
                    match series.first_after(from, &mut m, &|c: &Node| !cancelled(c)) {
                        Next::Found(o) => assert_eq!(
                            Some(o),
                            next,
                            "case {case} next after {}\n{text}",
                            naive(from)
                        ),
                        Next::NoneLeft => {
                            assert_eq!(None, next, "case {case} next after {}\n{text}", naive(from))
                        }
                        Next::Unknown => unknown += 1,
                    }
                    nexts += 1;
                }
                if full.len() < LIMIT - 10 {
                    let over = series.is_over(from, &mut Budget::per_message());
                    if over.is_some() || infinite {
                        assert_eq!(
                            over,
                            Some(next.is_none() && !infinite),
                            "case {case}\n{text}"
                        );
                    }
                }
            }
        }
        eprintln!(
            "compared {compared} windows ({nonempty} not empty), {nexts} next \
             occurrences ({unknown} unknown); EXDATE, moved, THISANDFUTURE, RDATE: {with:?}"
        );
        assert!(
            compared > 2000
                && nonempty > 800
                && nexts > 1500
                && unknown < nexts / 50
                && with.iter().all(|&n| n >= 20),
            "{compared} {nonempty} {nexts} {unknown} {with:?}"
        );
    }
}
