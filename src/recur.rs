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
//!   as one from last week (see [`shift`] for why that is exact).
//!
//! calcard does the RRULE arithmetic: its iterator is crate-private, so each
//! run hands `ICalendar::expand_dates` a one-component calendar (DTSTART,
//! the RRULE with its DTSTART-derived parts made explicit, UNTIL capped at
//! the window) in floating time, and this module converts the local times it
//! returns to UTC and applies RDATE, EXDATE and overrides itself, with sorted
//! lists and binary search, so 10,000 RDATEs and EXDATEs cost milliseconds.
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
/// The zone of floating times and dates.
pub const DEFAULT_TZ: Tz = Tz::UTC;

/// Periods one calcard run may walk: below calcard's own give-up (100,000
/// periods in a row without an occurrence), so a run never ends silently.
const CHUNK_PERIODS: i64 = 50_000;
/// calcard stops looking after this many periods without an occurrence.
const CALCARD_GIVE_UP: i64 = 100_000;
/// Walking this many periods costs as much as one occurrence.
const PERIODS_PER_UNIT: i64 = 64;
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

    /// Units left (an occurrence is one unit; walking
    /// `PERIODS_PER_UNIT` (64) periods of a rule is another).
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
}

#[derive(Clone, Copy)]
struct Until {
    /// The bound handed to calcard, in DTSTART's local time (loose for UTC).
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
        let out = self.spans_in(from, to, &mut meter, &keep, true);
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
        loop {
            let to = from.saturating_add(step).min(MAX_TS + 1);
            let got = self.spans_in(from, to, meter, keep, true);
            if let Some(&o) = got.spans.iter().find(|&&(s, e)| !ended(s, e, now)) {
                return Next::Found(o);
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
    /// finite and that is known without expanding it (COUNT: once a run
    /// reached the last instance).
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
                let b = match (&r.until, r.count) {
                    (Some(u), _) => u.bound,
                    (None, Some(_)) => r.count_end.get()?,
                    (None, None) => return None,
                };
                last = last.max(b);
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

    /// The occurrences overlapping `[from, to)`. `ff: false` expands every
    /// rule from DTSTART (the reference the tests compare fast-forward with).
    fn spans_in(
        &self,
        from: i64,
        to: i64,
        meter: &mut Meter,
        keep: &dyn Fn(&Node) -> bool,
        ff: bool,
    ) -> Occurrences {
        let mut spans = Vec::new();
        let mut complete = !self.unknown;
        for o in &self.overrides {
            if keep(o.node) && overlaps(o.start, o.end, from, to) {
                if !meter.spend(1) {
                    complete = false;
                    break;
                }
                spans.push((o.start, o.end));
            }
        }
        let taf_keep: Vec<bool> = self
            .taf
            .iter()
            .map(|&i| keep(self.overrides[i].node))
            .collect();
        let (pos, neg) = self.taf_shifts();
        for m in &self.masters {
            let keep_m = keep(m.node);
            if !keep_m && !taf_keep.contains(&true) {
                continue;
            }
            // The original starts whose (possibly shifted) span can overlap.
            let len = m.len.upper().max(m.rdate_len).max(self.taf_len());
            let lo = from.saturating_sub(len).saturating_sub(pos);
            let hi = to.saturating_add(neg);
            let mut cands: Vec<(i64, Option<i64>)> = Vec::new();
            if m.rules.is_empty() && (lo..hi).contains(&m.start.utc) {
                cands.push((m.start.utc, None));
            }
            for r in &m.rules {
                let run = run_rule(m, r, lo, hi, ff, meter);
                complete &= run.complete;
                if run.fallback && (lo..hi).contains(&m.start.utc) {
                    cands.push((m.start.utc, None));
                }
                cands.extend(run.starts.into_iter().map(|s| (s, None)));
            }
            let first = m.rdates.partition_point(|r| r.0 < lo);
            let n = m.rdates[first..].partition_point(|r| r.0 < hi);
            let take = n.min(meter.left);
            if !meter.spend(n) {
                complete = false;
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
        Occurrences { spans, complete }
    }
}

/// What one rule gave for a window.
struct Run {
    /// Original starts (UTC) in the window, in order.
    starts: Vec<i64>,
    complete: bool,
    /// The rule could not be expanded: DTSTART stands in for it.
    fallback: bool,
}

/// The instances of one rule whose original start is in `[lo, hi)`.
fn run_rule(m: &Master, r: &Rule, lo: i64, hi: i64, ff: bool, meter: &mut Meter) -> Run {
    let mut run = Run {
        starts: Vec::new(),
        complete: true,
        fallback: false,
    };
    if r.dense || r.invalid.get() {
        run.complete = false;
        run.fallback = r.invalid.get();
        return run;
    }
    if r.until.is_some_and(|u| u.bound < lo) || r.count_end.get().is_some_and(|e| e < lo) {
        return run;
    }
    let zone = m.start.zone;
    let (pmin, pmax) = period_secs(r.freq, r.interval);
    // Local-time bounds, loose by two days for any UTC offset.
    let local_lo = naive(lo.saturating_sub(2 * DAY));
    let local_hi = naive(hi.saturating_add(2 * DAY));
    let cap = match r.until {
        Some(u) => u.local.min(local_hi),
        None => local_hi,
    };
    if cap < m.start.local {
        return run;
    }
    let shifting = ff && r.count.is_none();
    let mut start = if shifting {
        shift(
            m.start.local,
            r.freq,
            r.interval,
            sub_secs(local_lo, 2 * pmax),
        )
    } else {
        m.start.local
    };
    let mut done_up_to: Option<NaiveDateTime> = None;
    loop {
        let chunk_end = if shifting {
            add_secs(start, CHUNK_PERIODS.saturating_mul(pmin)).min(cap)
        } else {
            cap
        };
        let allowed = meter.left;
        if allowed == 0 {
            run.complete = false;
            return run;
        }
        let Some(mut got) = calcard_run(start, m.start.date_only, r, chunk_end, allowed + 1) else {
            r.invalid.set(true);
            run.complete = false;
            run.fallback = true;
            return run;
        };
        let cut = got.len() > allowed;
        got.truncate(allowed);
        let counted_out = !cut && r.count.is_some_and(|c| got.len() as u64 == u64::from(c));
        let reached = if cut || counted_out {
            got.last().copied().unwrap_or(chunk_end)
        } else {
            chunk_end
        };
        let periods = (reached - start).num_seconds().max(0) / pmin.max(1);
        let cost = got.len() + (periods / PERIODS_PER_UNIT) as usize;
        if !meter.spend(cost) || cut {
            run.complete = false;
        }
        if counted_out {
            let last = got.last().map(|&l| to_utc(l, zone)).unwrap_or(i64::MIN);
            r.count_end.set(Some(last));
        } else if !cut && !shifting {
            // calcard gives up after 100,000 periods without an occurrence:
            // a gap that long may hide more.
            let last = got.last().copied().unwrap_or(start);
            if (chunk_end - last).num_seconds() / pmin.max(1) >= CALCARD_GIVE_UP - 1 {
                run.complete = false;
            }
        }
        for l in got {
            if done_up_to.is_some_and(|d| l <= d) {
                continue;
            }
            let s = to_utc(l, zone);
            if r.until.and_then(|u| u.exact).is_some_and(|u| s > u) {
                continue;
            }
            if (lo..hi).contains(&s) {
                run.starts.push(s);
            }
        }
        if !run.complete || chunk_end >= cap {
            return run;
        }
        done_up_to = Some(chunk_end);
        start = shift(
            m.start.local,
            r.freq,
            r.interval,
            sub_secs(chunk_end, 2 * pmax),
        );
    }
}

/// One calcard run: the local starts of the rule's instances from `start`
/// up to `until`, at most `limit`; `None` when calcard rejects the rule.
fn calcard_run(
    start: NaiveDateTime,
    date_only: bool,
    r: &Rule,
    until: NaiveDateTime,
    limit: usize,
) -> Option<Vec<NaiveDateTime>> {
    let mut rule = r.rule.clone();
    rule.until = Some(pdt(until, false));
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
        let dense = candidates_per_period(&rule) > MAX_PERIOD_CANDIDATES;
        Some(Rule {
            freq: rule.freq,
            interval: i64::from(rule.interval.unwrap_or(1).max(1)),
            rule,
            count,
            until,
            dense,
            invalid: Cell::new(false),
            count_end: Cell::new(None),
        })
    }
}

/// An upper bound of the candidates calcard builds for one period of a rule
/// (days the BY* lists allow × times of day), from the list lengths alone.
fn candidates_per_period(r: &ICalendarRecurrenceRule) -> u64 {
    fn n<T: PartialEq>(v: &[T]) -> u64 {
        let mut distinct: Vec<&T> = Vec::new();
        for x in v {
            if !distinct.contains(&x) {
                distinct.push(x);
            }
            if distinct.len() > 400 {
                break;
            }
        }
        distinct.len() as u64
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
