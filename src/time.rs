//! Dates, times and time zones of iCalendar values, in one place: which
//! instant a DATE or DATE-TIME names (TZID resolved through the calendar's
//! own VTIMEZONEs, IANA and Windows zone names included; floating times in
//! a given zone), how to write an instant back in the form another value
//! uses (the master's DTSTART), and the small conversions between calcard's
//! `PartialDateTime` and chrono. Instances of a recurring event are compared
//! as [`Instant`]s, never as text (RFC 5545 §3.8.4.4, RFC 5546 §2.1.5).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use calcard::common::timezone::Tz;
use calcard::common::PartialDateTime;
use calcard::icalendar::{
    ICalendarComponent, ICalendarComponentType as Ct, ICalendarEntry, ICalendarParameterName as Pn,
    ICalendarProperty as P, ICalendarValue,
};
use chrono::{Datelike, NaiveDate, NaiveDateTime, TimeZone, Timelike};

use crate::ical::{self, Node};

/// The point in time an iCalendar DATE or DATE-TIME value names: a whole
/// day for DATE values (compared only with DATE values), else a UTC
/// instant in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Instant {
    Date(NaiveDate),
    At(i64),
}

impl Instant {
    /// The canonical text: `20270119` for a day, `20270119T090000Z` for an
    /// instant. Two ways of writing one instance give the same text.
    pub fn canonical(&self) -> String {
        match self {
            Instant::Date(d) => d.format("%Y%m%d").to_string(),
            Instant::At(t) => chrono::DateTime::from_timestamp(*t, 0)
                .map(|d| d.format("%Y%m%dT%H%M%SZ").to_string())
                .unwrap_or_else(|| t.to_string()),
        }
    }

    /// Unix seconds of the start (a day starts at 00:00 in `zone`).
    pub fn timestamp(&self, zone: Tz) -> Option<i64> {
        match self {
            Instant::At(t) => Some(*t),
            Instant::Date(d) => local_timestamp(d.and_hms_opt(0, 0, 0)?, zone),
        }
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

/// The time zones a calendar defines or names: its VTIMEZONEs (by TZID,
/// understood through their X-LIC-LOCATION or Microsoft ids where the TZID
/// itself is not a known name), and every name calcard knows.
#[derive(Debug, Clone, Default)]
pub struct Zones {
    defined: HashMap<String, Tz>,
}

impl Zones {
    /// The zones of a calendar tree (its VTIMEZONE children).
    pub fn of(root: &Node) -> Zones {
        let mut z = Zones::default();
        z.add(root);
        z
    }

    /// Add the VTIMEZONEs of another calendar (already known TZIDs stay).
    pub fn add(&mut self, root: &Node) {
        for c in root.children.iter().filter(|c| c.kind == Ct::VTimezone) {
            let comp = ICalendarComponent {
                component_type: Ct::VTimezone,
                entries: c.entries.clone(),
                component_ids: Vec::new(),
            };
            if let Some((name, tz)) = comp.timezone() {
                self.defined.entry(name.to_string()).or_insert(tz);
            }
        }
    }

    /// The zone a TZID names, if it can be told.
    pub fn resolve(&self, tzid: &str) -> Option<Tz> {
        self.defined
            .get(tzid)
            .copied()
            .or_else(|| Tz::from_str(tzid).ok())
    }
}

/// A TZID (IANA, Windows or vendor-prefixed) as a time zone, without a calendar.
pub fn resolve_tz(tzid: &str) -> Option<Tz> {
    Tz::from_str(tzid).ok()
}

/// Unix seconds of a local time in a zone (the earlier one in a DST
/// overlap, the time after the gap in a DST gap).
pub fn local_timestamp(local: NaiveDateTime, zone: Tz) -> Option<i64> {
    if zone.is_floating() {
        return Some(local.and_utc().timestamp());
    }
    match zone.from_local_datetime(&local) {
        chrono::LocalResult::Single(d) => Some(d.timestamp()),
        chrono::LocalResult::Ambiguous(a, _) => Some(a.timestamp()),
        chrono::LocalResult::None => zone
            .from_local_datetime(&(local + chrono::Duration::hours(1)))
            .earliest()
            .map(|d| d.timestamp()),
    }
}

/// Whether a property value is a DATE (not a DATE-TIME).
pub fn is_date(e: &ICalendarEntry, dt: &PartialDateTime) -> bool {
    dt.hour.is_none() || ical::param(e, &Pn::Value).is_some_and(|v| v.eq_ignore_ascii_case("DATE"))
}

/// The instant one value of a date property names. `floating` is the zone a
/// time without TZID and without `Z` is read in (the master's zone, so that a
/// floating RECURRENCE-ID matches its floating DTSTART).
pub fn value_instant(
    e: &ICalendarEntry,
    v: &ICalendarValue,
    zones: &Zones,
    floating: Tz,
) -> Option<Instant> {
    let ICalendarValue::PartialDateTime(dt) = v else {
        return None;
    };
    let naive = pdt_naive(dt)?;
    if is_date(e, dt) {
        return Some(Instant::Date(naive.date()));
    }
    if dt.tz_hour.is_some() {
        let offset =
            i64::from(dt.tz_hour.unwrap_or(0)) * 3600 + i64::from(dt.tz_minute.unwrap_or(0)) * 60;
        let offset = if dt.tz_minus { -offset } else { offset };
        return Some(Instant::At(naive.and_utc().timestamp() - offset));
    }
    let zone = match e.tz_id() {
        Some(id) => zones.resolve(id).unwrap_or(Tz::UTC),
        None => floating,
    };
    local_timestamp(naive, zone).map(Instant::At)
}

/// The instant the first value of a date property names.
pub fn entry_instant(e: &ICalendarEntry, zones: &Zones, floating: Tz) -> Option<Instant> {
    value_instant(e, e.values.first()?, zones, floating)
}

/// Every instant a multi-valued date property (EXDATE, RDATE) names.
pub fn entry_instants(e: &ICalendarEntry, zones: &Zones, floating: Tz) -> Vec<Instant> {
    e.values
        .iter()
        .filter_map(|v| value_instant(e, v, zones, floating))
        .collect()
}

/// How a date property is written: as a DATE, in UTC, in a named zone, or
/// floating. Values imipd writes itself (overrides it derives, EXDATEs) take
/// the form of the master's DTSTART.
#[derive(Debug, Clone, PartialEq)]
pub enum Form {
    Date,
    Utc,
    Zone(String, Tz),
    Floating,
}

impl Form {
    /// The form of a date property.
    pub fn of(e: &ICalendarEntry, zones: &Zones) -> Form {
        match e.values.first() {
            Some(ICalendarValue::PartialDateTime(dt)) if is_date(e, dt) => Form::Date,
            Some(ICalendarValue::PartialDateTime(dt)) if dt.tz_hour.is_some() => Form::Utc,
            _ => match e.tz_id() {
                Some(id) => Form::Zone(id.to_string(), zones.resolve(id).unwrap_or(Tz::UTC)),
                None => Form::Floating,
            },
        }
    }

    /// The zone a floating time of this form is read in.
    pub fn zone(&self) -> Tz {
        match self {
            Form::Zone(_, tz) => *tz,
            _ => Tz::UTC,
        }
    }

    /// An entry named `name` for `at`, written in this form.
    pub fn entry(&self, name: P, at: Instant) -> Option<ICalendarEntry> {
        let (value, tzid) = match (self, at) {
            (_, Instant::Date(d)) => (date_pdt(d), None),
            (Form::Date, Instant::At(t)) => {
                let d = chrono::DateTime::from_timestamp(t, 0)?.naive_utc().date();
                (date_pdt(d), None)
            }
            (Form::Utc, Instant::At(t)) => (
                naive_pdt(chrono::DateTime::from_timestamp(t, 0)?.naive_utc(), true),
                None,
            ),
            (Form::Zone(id, tz), Instant::At(t)) => {
                let utc = chrono::DateTime::from_timestamp(t, 0)?;
                let local = if tz.is_floating() {
                    utc.naive_utc()
                } else {
                    utc.with_timezone(tz).naive_local()
                };
                (naive_pdt(local, false), Some(id.clone()))
            }
            (Form::Floating, Instant::At(t)) => (
                naive_pdt(chrono::DateTime::from_timestamp(t, 0)?.naive_utc(), false),
                None,
            ),
        };
        let mut params = Vec::new();
        if let Some(id) = tzid {
            params.push(calcard::icalendar::ICalendarParameter {
                name: Pn::Tzid,
                value: calcard::icalendar::ICalendarParameterValue::Text(id),
            });
        }
        if value.hour.is_none() {
            params.push(calcard::icalendar::ICalendarParameter {
                name: Pn::Value,
                value: calcard::icalendar::ICalendarParameterValue::Value(
                    calcard::icalendar::ICalendarValueType::Date,
                ),
            });
        }
        Some(ICalendarEntry {
            name,
            params,
            values: vec![ICalendarValue::PartialDateTime(Box::new(value))],
        })
    }
}

fn date_pdt(d: NaiveDate) -> PartialDateTime {
    PartialDateTime {
        year: u16::try_from(d.year()).ok(),
        month: Some(d.month() as u8),
        day: Some(d.day() as u8),
        hour: None,
        minute: None,
        second: None,
        tz_hour: None,
        tz_minute: None,
        tz_minus: false,
    }
}

fn naive_pdt(d: NaiveDateTime, utc: bool) -> PartialDateTime {
    PartialDateTime {
        year: u16::try_from(d.year()).ok(),
        month: Some(d.month() as u8),
        day: Some(d.day() as u8),
        hour: Some(d.hour() as u8),
        minute: Some(d.minute() as u8),
        second: Some(d.second() as u8),
        tz_hour: utc.then_some(0),
        tz_minute: utc.then_some(0),
        tz_minus: false,
    }
}

/// A PartialDateTime as a naive date-time (a DATE at midnight).
pub fn pdt_naive(d: &PartialDateTime) -> Option<NaiveDateTime> {
    let date = NaiveDate::from_ymd_opt(i32::from(d.year?), u32::from(d.month?), u32::from(d.day?))?;
    date.and_hms_opt(
        u32::from(d.hour.unwrap_or(0)),
        u32::from(d.minute.unwrap_or(0)),
        u32::from(d.second.unwrap_or(0)),
    )
}

/// A date property's first value as a naive (local or UTC) date-time.
pub fn to_naive(e: &ICalendarEntry) -> Option<NaiveDateTime> {
    match e.values.first()? {
        ICalendarValue::PartialDateTime(d) => pdt_naive(d),
        _ => None,
    }
}

/// A naive date-time as a PartialDateTime (UTC with `Z`, or a DATE).
pub fn pdt(d: NaiveDateTime, utc: bool, date_only: bool) -> PartialDateTime {
    if date_only {
        date_pdt(d.date())
    } else {
        naive_pdt(d, utc)
    }
}

/// The zone a component's DTSTART is in (UTC for UTC, DATE and unknown
/// zones): the zone floating times of that component's instances are read in.
pub fn start_zone(c: &Node, zones: &Zones) -> Tz {
    c.prop(&P::Dtstart)
        .map(|e| Form::of(e, zones).zone())
        .unwrap_or(Tz::UTC)
}

/// How long one component lasts: DTEND − DTSTART, DURATION, DUE − DTSTART,
/// a day for a date without end, else nothing.
pub fn duration(c: &Node) -> Option<Duration> {
    let start_e = c.prop(&P::Dtstart)?;
    let start = to_naive(start_e)?;
    if let Some(end) = c
        .prop(&P::Dtend)
        .or_else(|| c.prop(&P::Due))
        .and_then(to_naive)
    {
        return (end - start).to_std().ok();
    }
    if let Some(ICalendarValue::Duration(d)) = c.prop(&P::Duration).and_then(|e| e.values.first()) {
        return d.to_time_delta().and_then(|t| t.to_std().ok());
    }
    match start_e.values.first() {
        Some(ICalendarValue::PartialDateTime(d)) if d.hour.is_none() => {
            Some(Duration::from_secs(86400))
        }
        _ => Some(Duration::ZERO),
    }
}

/// "90m", "2h", "30d", "1w", "45s", a number of seconds, or an ISO 8601 /
/// RFC 5545 duration such as "PT1H30M" or "P2D".
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Some(rest) = s.strip_prefix(['P', 'p']) {
        let mut secs: u64 = 0;
        let mut num = String::new();
        let mut in_time = false;
        for ch in rest.chars() {
            match ch.to_ascii_uppercase() {
                'T' => in_time = true,
                c if c.is_ascii_digit() => num.push(c),
                unit => {
                    let n: u64 = num.parse().ok()?;
                    num.clear();
                    let mul = match (unit, in_time) {
                        ('W', false) => 7 * 86400,
                        ('D', false) => 86400,
                        ('H', true) => 3600,
                        ('M', true) => 60,
                        ('S', true) => 1,
                        _ => return None,
                    };
                    secs = secs.checked_add(n.checked_mul(mul)?)?;
                }
            }
        }
        return if num.is_empty() {
            Some(Duration::from_secs(secs))
        } else {
            None
        };
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mul = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1,
        "m" | "min" | "mins" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86400,
        "w" | "week" | "weeks" => 7 * 86400,
        _ => return None,
    };
    n.checked_mul(mul).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(line: &str) -> ICalendarEntry {
        let text =
            format!("BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\n{line}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n");
        let calcard::Entry::ICalendar(ical) = calcard::Parser::new(&text).entry() else {
            panic!("cannot parse {line}");
        };
        ical.components[1].entries[0].clone()
    }

    fn at(line: &str) -> Instant {
        entry_instant(&entry(line), &Zones::default(), Tz::UTC).unwrap()
    }

    #[test]
    fn one_instance_written_three_ways_is_one_instant() {
        let utc = at("RECURRENCE-ID:20270119T090000Z");
        assert_eq!(utc, at("RECURRENCE-ID;TZID=Europe/Berlin:20270119T100000"));
        assert_eq!(
            utc,
            at("RECURRENCE-ID;TZID=\"W. Europe Standard Time\":20270119T100000")
        );
        assert_ne!(utc, at("RECURRENCE-ID;TZID=Europe/London:20270119T100000"));
        assert_eq!(utc.canonical(), "20270119T090000Z");
    }

    #[test]
    fn dates_are_days() {
        let d = at("RECURRENCE-ID;VALUE=DATE:20270119");
        assert_eq!(
            d,
            Instant::Date(NaiveDate::from_ymd_opt(2027, 1, 19).unwrap())
        );
        assert_ne!(d, at("RECURRENCE-ID:20270119T000000Z"));
        assert_eq!(d.canonical(), "20270119");
    }

    #[test]
    fn forms_write_back_the_same_instant() {
        let z = Zones::default();
        let start = entry("DTSTART;TZID=Europe/Berlin:20270105T100000");
        let form = Form::of(&start, &z);
        let t = at("RECURRENCE-ID:20270719T080000Z"); // summer time: 10:00 in Berlin
        let e = form.entry(P::Dtstart, t).unwrap();
        assert_eq!(e.tz_id(), Some("Europe/Berlin"));
        assert_eq!(to_naive(&e).unwrap().to_string(), "2027-07-19 10:00:00");
        assert_eq!(entry_instant(&e, &z, Tz::UTC), Some(t));
        let d = Form::Date
            .entry(P::Exdate, at("RECURRENCE-ID;VALUE=DATE:20270119"))
            .unwrap();
        assert_eq!(
            entry_instant(&d, &z, Tz::UTC),
            Some(at("EXDATE;VALUE=DATE:20270119"))
        );
    }

    #[test]
    fn floating_times_are_read_in_the_given_zone() {
        let e = entry("RECURRENCE-ID:20270119T100000");
        let berlin = resolve_tz("Europe/Berlin").unwrap();
        assert_eq!(
            entry_instant(&e, &Zones::default(), berlin),
            Some(at("RECURRENCE-ID:20270119T090000Z"))
        );
    }
}
