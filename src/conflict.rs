//! Time questions about events, for the policies: when an event's
//! occurrences are (RRULEs expanded with calcard, time zones resolved,
//! Windows zone names included), how long it lasts, and whether it overlaps
//! a busy event already in the store (transparent, cancelled and declined
//! events are not busy).

use std::time::Duration;

use calcard::common::timezone::Tz;
use calcard::icalendar::{ICalendarComponentType as Ct, ICalendarProperty as P, ICalendarValue};
use chrono::{DateTime, Utc};

use crate::config::Identity;
use crate::ical::{self, Node};
use crate::store::Store;

/// At most this many occurrences of one event are looked at.
const LIMIT: usize = 1000;
/// Conflicts are looked for this far ahead.
const HORIZON_DAYS: i64 = 400;

/// The occurrences (start, end as Unix seconds) of the components of one
/// UID in a calendar tree, in time order.
pub fn occurrences(root: &Node, uid: &str, _now: DateTime<Utc>) -> Vec<(i64, i64)> {
    spans(root, uid, |_| true)
}

fn spans(root: &Node, uid: &str, keep: impl Fn(&Node) -> bool) -> Vec<(i64, i64)> {
    let mut sub = Node {
        kind: Ct::VCalendar,
        entries: Vec::new(),
        children: Vec::new(),
    };
    for c in &root.children {
        if c.kind == Ct::VTimezone || (c.is_scheduling() && c.uid().as_deref() == Some(uid)) {
            sub.children.push(c.clone());
        }
    }
    let ical = sub.into_ical();
    let expanded = ical.expand_dates(Tz::UTC, LIMIT);
    let mut out: Vec<(i64, i64)> = expanded
        .events
        .iter()
        .filter(|e| {
            ical.components.get(e.comp_id as usize).is_some_and(|c| {
                keep(&Node::from_ical(&calcard::icalendar::ICalendar {
                    components: vec![c.clone()],
                }))
            })
        })
        .map(|e| e.timestamps())
        .collect();
    out.sort_unstable();
    out
}

/// How long one component lasts: DTEND − DTSTART, DURATION, DUE − DTSTART,
/// a day for a date without end, else nothing.
pub fn duration(c: &Node) -> Option<Duration> {
    let start_e = c.prop(&P::Dtstart)?;
    let start = crate::time::to_naive(start_e)?;
    if let Some(end) = c
        .prop(&P::Dtend)
        .or_else(|| c.prop(&P::Due))
        .and_then(crate::time::to_naive)
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

/// Whether a component keeps my time busy.
fn busy(c: &Node, identity: &Identity) -> bool {
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
    !(transparent || cancelled || declined)
}

/// Whether any of the given occurrences (within the horizon from now)
/// overlaps a busy occurrence of another event in the store.
pub fn conflicts(
    store: &Store,
    uid: &str,
    occ: &[(i64, i64)],
    identity: &Identity,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let now = now.timestamp();
    let horizon = now + HORIZON_DAYS * 86400;
    let mine: Vec<(i64, i64)> = occ
        .iter()
        .copied()
        .filter(|(s, e)| *e > now && *s < horizon && e > s)
        .collect();
    if mine.is_empty() {
        return Ok(false);
    }
    let (first, last) = (mine[0].0, mine.iter().map(|o| o.1).max().unwrap_or(0));
    for other in store.uids() {
        if other == uid {
            continue;
        }
        let Some(root) = store.get(&other)? else {
            continue;
        };
        for (s, e) in spans(&root, &other, |c| busy(c, identity)) {
            if e <= first || s >= last || e <= s {
                continue;
            }
            if mine.iter().any(|(ms, me)| s < *me && *ms < e) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(body: &str) -> Node {
        let text = format!("BEGIN:VCALENDAR\r\nVERSION:2.0\r\n{body}END:VCALENDAR\r\n");
        match calcard::Parser::new(&text).entry() {
            calcard::Entry::ICalendar(i) => Node::from_ical(&i),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn weekly_rule_with_windows_zone_expands() {
        let r = root(
            "BEGIN:VEVENT\r\nUID:w\r\nDTSTART;TZID=\"W. Europe Standard Time\":20261201T100000\r\n\
             DTEND;TZID=\"W. Europe Standard Time\":20261201T110000\r\nRRULE:FREQ=WEEKLY;COUNT=3\r\n\
             EXDATE;TZID=\"W. Europe Standard Time\":20261208T100000\r\nEND:VEVENT\r\n",
        );
        let o = occurrences(&r, "w", DateTime::<Utc>::UNIX_EPOCH);
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
        let id = Identity {
            addresses: vec!["bob@example.com".into()],
            name: None,
            trusted_sent_by: Vec::new(),
        };
        let r = root(
            "BEGIN:VEVENT\r\nUID:a\r\nTRANSP:TRANSPARENT\r\nEND:VEVENT\r\n\
             BEGIN:VEVENT\r\nUID:b\r\nSTATUS:CANCELLED\r\nEND:VEVENT\r\n\
             BEGIN:VEVENT\r\nUID:c\r\nATTENDEE;PARTSTAT=DECLINED:mailto:bob@example.com\r\nEND:VEVENT\r\n\
             BEGIN:VEVENT\r\nUID:d\r\nATTENDEE;PARTSTAT=ACCEPTED:mailto:bob@example.com\r\nEND:VEVENT\r\n",
        );
        let b: Vec<bool> = r.children.iter().map(|c| busy(c, &id)).collect();
        assert_eq!(b, [false, false, false, true]);
    }
}
