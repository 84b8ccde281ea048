//! An event as scripts, bots and people read it in JSON: its times as RFC
//! 3339 text with the offset of the event's own time zone, the zone's name,
//! the place, the organizer and the attendees with their answers. Used by
//! the outcome lines, `pending`, `show` and the decision hook's input, so
//! that they all say the same thing the same way. Pure: reads components.
//!
//! SUMMARY, LOCATION and DESCRIPTION are text the sender wrote: a program
//! that feeds them to a language model treats them as untrusted input.

use calcard::common::timezone::Tz;
use calcard::icalendar::{ICalendarParameterName as Pn, ICalendarProperty as P, ICalendarValue};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::ical::{self, Node};
use crate::time::{self, Form, Instant, Zones};

/// A calendar user as the event names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Person {
    /// The address, bare (`alice@example.com`), or the URI when it is not mail.
    pub address: String,
    /// CN, when given.
    pub name: Option<String>,
}

/// An attendee and its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attendee {
    pub address: String,
    pub name: Option<String>,
    /// NEEDS-ACTION when the event gives none.
    pub partstat: String,
    /// REQ-PARTICIPANT when the event gives none.
    pub role: String,
}

/// When one occurrence happens, for JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Times {
    /// RFC 3339 with the offset of the event's zone (`2026-12-01T10:00:00+01:00`);
    /// for an all-day event the date alone (`2026-12-01`).
    pub start: Option<String>,
    /// Like `start`; for an all-day event the day after the last one (as
    /// DTEND is written).
    pub end: Option<String>,
    pub all_day: bool,
    /// The TZID of DTSTART as written (an IANA or Windows name), `UTC`, or
    /// `null` for a floating or all-day time.
    pub timezone: Option<String>,
}

/// A bare address for a calendar address (`mailto:` dropped); other URIs as they are.
pub fn address_text(cal_address: &str) -> String {
    match cal_address.strip_prefix("mailto:") {
        Some(a) => a.to_string(),
        None => cal_address.to_string(),
    }
}

/// The ORGANIZER of a component.
pub fn organizer(c: &Node) -> Option<Person> {
    let e = c.prop(&P::Organizer)?;
    Some(Person {
        address: address_text(&ical::cal_address(e)?),
        name: ical::param(e, &Pn::Cn),
    })
}

/// Every ATTENDEE of a component.
pub fn attendees(c: &Node) -> Vec<Attendee> {
    c.entries
        .iter()
        .filter(|e| e.name == P::Attendee)
        .filter_map(|e| {
            Some(Attendee {
                address: address_text(&ical::cal_address(e)?),
                name: ical::param(e, &Pn::Cn),
                partstat: ical::partstat(e),
                role: ical::param(e, &Pn::Role)
                    .map(|r| r.to_ascii_uppercase())
                    .unwrap_or_else(|| "REQ-PARTICIPANT".into()),
            })
        })
        .collect()
}

/// A text property, if given and not empty.
pub fn text(c: &Node, p: P) -> Option<String> {
    c.text(&p).filter(|t| !t.trim().is_empty())
}

/// The zone of a component's DTSTART and its name for JSON.
fn zone_of(c: &Node, zones: &Zones) -> (Tz, Option<String>, bool) {
    let Some(e) = c.prop(&P::Dtstart) else {
        return (Tz::UTC, None, false);
    };
    match Form::of(e, zones) {
        Form::Date => (Tz::UTC, None, true),
        Form::Utc => (Tz::UTC, Some("UTC".into()), false),
        Form::Zone(id, tz) => (tz, Some(id), false),
        Form::Floating => (Tz::Floating, None, false),
    }
}

/// Unix seconds as RFC 3339 in a zone (UTC for a floating or unknown one).
pub fn rfc3339(t: i64, zone: Tz) -> Option<String> {
    let utc = DateTime::<Utc>::from_timestamp(t, 0)?;
    if zone.is_floating() {
        return Some(utc.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    Some(
        utc.with_timezone(&zone)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// An instant (a RECURRENCE-ID) as RFC 3339 in a zone, or the date alone.
pub fn instant_text(i: Instant, zone: Tz) -> Option<String> {
    match i {
        Instant::Date(d) => Some(d.format("%Y-%m-%d").to_string()),
        Instant::At(t) => rfc3339(t, zone),
    }
}

/// The start and end of a component (its DTSTART, and DTEND, DURATION or
/// DUE), in Unix seconds; an all-day start at midnight UTC.
pub fn span(c: &Node, zones: &Zones) -> Option<(i64, i64)> {
    let e = c.prop(&P::Dtstart)?;
    let (zone, _, _) = zone_of(c, zones);
    let start = match time::entry_instant(e, zones, zone)? {
        Instant::At(t) => t,
        Instant::Date(d) => d.and_hms_opt(0, 0, 0)?.and_utc().timestamp(),
    };
    let len = time::duration(c)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    Some((start, start.saturating_add(len)))
}

/// The times of a component, or of one occurrence of it (`at`: start and
/// end in Unix seconds, as the recurrence expansion gives them).
pub fn times(c: &Node, zones: &Zones, at: Option<(i64, i64)>) -> Times {
    let (zone, name, all_day) = zone_of(c, zones);
    let Some((s, e)) = at.or_else(|| span(c, zones)) else {
        return Times {
            start: None,
            end: None,
            all_day,
            timezone: name,
        };
    };
    if all_day {
        let day = |t: i64| {
            DateTime::<Utc>::from_timestamp(t, 0).map(|d| d.format("%Y-%m-%d").to_string())
        };
        return Times {
            start: day(s),
            end: day(e),
            all_day,
            timezone: None,
        };
    }
    Times {
        start: rfc3339(s, zone),
        end: rfc3339(e, zone),
        all_day,
        timezone: name,
    }
}

/// The RRULE of a component as written (`FREQ=WEEKLY;BYDAY=TU`), if any.
pub fn rrule(c: &Node) -> Option<String> {
    let e = c.prop(&P::Rrule)?;
    match e.values.first()? {
        ICalendarValue::RecurrenceRule(r) => Some(r.to_string()),
        v => v.as_text().map(str::to_string),
    }
}

/// The zone a component's times are shown in.
pub fn zone(c: &Node, zones: &Zones) -> Tz {
    zone_of(c, zones).0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(text: &str) -> Node {
        match calcard::Parser::new(text).entry() {
            calcard::Entry::ICalendar(i) => Node::from_ical(&i),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn times_carry_the_offset_of_the_events_zone() {
        let root = node(
            "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:u\r\nDTSTART;TZID=Europe/Berlin:20261201T100000\r\n\
             DTEND;TZID=Europe/Berlin:20261201T110000\r\nORGANIZER;CN=Alice:mailto:Alice@Example.com\r\n\
             ATTENDEE;ROLE=CHAIR:mailto:bob@example.com\r\nRRULE:FREQ=WEEKLY;COUNT=3\r\n\
             END:VEVENT\r\nEND:VCALENDAR\r\n",
        );
        let c = &root.children[0];
        let t = times(c, &Zones::of(&root), None);
        assert_eq!(t.start.as_deref(), Some("2026-12-01T10:00:00+01:00"));
        assert_eq!(t.end.as_deref(), Some("2026-12-01T11:00:00+01:00"));
        assert_eq!(t.timezone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(
            organizer(c),
            Some(Person {
                address: "alice@example.com".into(),
                name: Some("Alice".into())
            })
        );
        assert_eq!(attendees(c)[0].partstat, "NEEDS-ACTION");
        assert_eq!(attendees(c)[0].role, "CHAIR");
        assert!(rrule(c).unwrap().contains("FREQ=WEEKLY"), "{:?}", rrule(c));
    }

    #[test]
    fn all_day_events_give_dates() {
        let root = node(
            "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:u\r\nDTSTART;VALUE=DATE:20261201\r\n\
             DTEND;VALUE=DATE:20261203\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
        );
        let t = times(&root.children[0], &Zones::of(&root), None);
        assert_eq!(t.start.as_deref(), Some("2026-12-01"));
        assert_eq!(t.end.as_deref(), Some("2026-12-03"));
        assert!(t.all_day);
    }
}
