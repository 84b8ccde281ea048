//! Small, total helpers over calcard's iCalendar model: read a property's
//! text, date or calendar address; find, add and replace properties and
//! components. calcard stores a calendar as a flat list of components linked by
//! index (`component_ids`); these helpers keep that structure consistent so the
//! iTIP code can think in terms of "the VEVENT with this RECURRENCE-ID".

use calcard::common::PartialDateTime;
use calcard::icalendar::{
    ICalendar, ICalendarComponent, ICalendarComponentType as Ct, ICalendarEntry,
    ICalendarParameter, ICalendarParameterName as Pn, ICalendarParameterValue,
    ICalendarProperty as P, ICalendarValue, ICalendarValueType,
};

use crate::address;

/// Scheduling component types (RFC 5546 §1.4).
pub fn is_scheduling(t: &Ct) -> bool {
    matches!(t, Ct::VEvent | Ct::VTodo | Ct::VJournal | Ct::VFreebusy)
}

pub fn prop<'a>(c: &'a ICalendarComponent, p: &P) -> Option<&'a ICalendarEntry> {
    c.entries.iter().find(|e| &e.name == p)
}

pub fn props<'a>(c: &'a ICalendarComponent, p: &'a P) -> impl Iterator<Item = &'a ICalendarEntry> {
    c.entries.iter().filter(move |e| &e.name == p)
}

pub fn count(c: &ICalendarComponent, p: &P) -> usize {
    c.entries.iter().filter(|e| &e.name == p).count()
}

/// The first value of a property as text (URIs and enumerations included).
pub fn text(c: &ICalendarComponent, p: &P) -> Option<String> {
    prop(c, p).and_then(entry_text)
}

pub fn entry_text(e: &ICalendarEntry) -> Option<String> {
    match e.values.first()? {
        ICalendarValue::PartialDateTime(_) => date_string(e),
        ICalendarValue::Integer(i) => Some(i.to_string()),
        v => v.as_text().map(str::to_string),
    }
}

/// The UID of a component.
pub fn uid(c: &ICalendarComponent) -> Option<String> {
    text(c, &P::Uid).filter(|u| !u.is_empty())
}

/// SEQUENCE as an integer; `None` when absent or not a number.
pub fn sequence(c: &ICalendarComponent) -> Option<i64> {
    let e = prop(c, &P::Sequence)?;
    match e.values.first()? {
        ICalendarValue::Integer(i) => Some(*i),
        ICalendarValue::Text(t) => t.trim().parse().ok(),
        _ => None,
    }
}

/// A date or date-time value as written (`20261201T090000Z`, `20261201`),
/// without its TZID.
pub fn date_string(e: &ICalendarEntry) -> Option<String> {
    match e.values.first()? {
        ICalendarValue::PartialDateTime(dt) => Some(format_date(dt, is_date_value(e, dt))),
        ICalendarValue::Text(t) => Some(t.clone()),
        _ => None,
    }
}

fn is_date_value(e: &ICalendarEntry, dt: &PartialDateTime) -> bool {
    dt.hour.is_none()
        || e.params.iter().any(|p| {
            p.name == Pn::Value
                && matches!(
                    &p.value,
                    ICalendarParameterValue::Value(ICalendarValueType::Date)
                )
        })
}

pub fn format_date(dt: &PartialDateTime, date_only: bool) -> String {
    let mut out = String::with_capacity(16);
    let fmt = if date_only {
        ICalendarValueType::Date
    } else {
        ICalendarValueType::DateTime
    };
    let _ = dt.format_as_ical(&mut out, &fmt);
    out
}

pub fn recurrence_id(c: &ICalendarComponent) -> Option<String> {
    prop(c, &P::RecurrenceId).and_then(date_string)
}

pub fn dtstamp(c: &ICalendarComponent) -> Option<String> {
    prop(c, &P::Dtstamp).and_then(date_string)
}

/// The canonical calendar address of a property value (`mailto:` lower-cased).
pub fn cal_address(e: &ICalendarEntry) -> Option<String> {
    let v = e.values.first()?.as_text()?;
    let v = v.trim();
    if v.is_empty() {
        None
    } else {
        Some(address::canonical(v))
    }
}

pub fn organizer(c: &ICalendarComponent) -> Option<String> {
    prop(c, &P::Organizer).and_then(cal_address)
}

/// A parameter's text value.
pub fn param(e: &ICalendarEntry, name: &Pn) -> Option<String> {
    e.params
        .iter()
        .find(|p| &p.name == name)
        .and_then(|p| p.value.as_text().map(str::to_string))
}

/// SENT-BY of a calendar address property, canonical.
pub fn sent_by(e: &ICalendarEntry) -> Option<String> {
    param(e, &Pn::SentBy).map(|s| address::canonical(&s))
}

/// PARTSTAT of an ATTENDEE, upper-cased; `NEEDS-ACTION` when absent.
pub fn partstat(e: &ICalendarEntry) -> String {
    param(e, &Pn::Partstat)
        .map(|s| s.to_ascii_uppercase())
        .unwrap_or_else(|| "NEEDS-ACTION".to_string())
}

/// The ATTENDEE properties of a component with their canonical addresses.
pub fn attendees(c: &ICalendarComponent) -> impl Iterator<Item = (String, &ICalendarEntry)> {
    props(c, &P::Attendee).filter_map(|e| cal_address(e).map(|a| (a, e)))
}

/// Set (or add) a parameter on an entry.
pub fn set_param(e: &mut ICalendarEntry, name: Pn, value: ICalendarParameterValue) {
    if let Some(p) = e.params.iter_mut().find(|p| p.name == name) {
        p.value = value;
    } else {
        e.params.push(ICalendarParameter { name, value });
    }
}

pub fn remove_param(e: &mut ICalendarEntry, name: &Pn) {
    e.params.retain(|p| &p.name != name);
}

pub fn text_entry(name: P, value: impl Into<String>) -> ICalendarEntry {
    ICalendarEntry {
        name,
        params: Vec::new(),
        values: vec![ICalendarValue::Text(value.into())],
    }
}

pub fn int_entry(name: P, value: i64) -> ICalendarEntry {
    ICalendarEntry {
        name,
        params: Vec::new(),
        values: vec![ICalendarValue::Integer(value)],
    }
}

/// A UTC DATE-TIME entry for a Unix timestamp.
pub fn utc_entry(name: P, when: chrono::DateTime<chrono::Utc>) -> ICalendarEntry {
    use chrono::{Datelike, Timelike};
    ICalendarEntry {
        name,
        params: Vec::new(),
        values: vec![ICalendarValue::PartialDateTime(Box::new(PartialDateTime {
            year: Some(when.year() as u16),
            month: Some(when.month() as u8),
            day: Some(when.day() as u8),
            hour: Some(when.hour() as u8),
            minute: Some(when.minute() as u8),
            second: Some(when.second() as u8),
            tz_hour: Some(0),
            tz_minute: Some(0),
            tz_minus: false,
        }))],
    }
}

/// The direct children of the VCALENDAR (component 0) that are scheduling
/// components, as indexes into `ical.components`.
pub fn scheduling_components(ical: &ICalendar) -> Vec<usize> {
    ical.components
        .first()
        .map(|root| {
            root.component_ids
                .iter()
                .map(|&i| i as usize)
                .filter(|&i| {
                    ical.components
                        .get(i)
                        .is_some_and(|c| is_scheduling(&c.component_type))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The METHOD of a VCALENDAR, upper-cased, and how many METHOD lines it has.
pub fn method(ical: &ICalendar) -> (Option<String>, usize) {
    let Some(root) = ical.components.first() else {
        return (None, 0);
    };
    let n = count(root, &P::Method);
    (
        text(root, &P::Method).map(|m| m.trim().to_ascii_uppercase()),
        n,
    )
}

/// Copy a component and its sub-components (VALARMs) from one calendar into
/// another, under `parent`; returns the new index.
pub fn copy_component(from: &ICalendar, idx: usize, to: &mut ICalendar, parent: usize) -> usize {
    let src = &from.components[idx];
    let new_idx = to.components.len();
    to.components.push(ICalendarComponent {
        component_type: src.component_type.clone(),
        entries: src.entries.clone(),
        component_ids: Vec::new(),
    });
    to.components[parent].component_ids.push(new_idx as u32);
    for &child in &src.component_ids {
        if (child as usize) < from.components.len() && child as usize != idx {
            copy_component(from, child as usize, to, new_idx);
        }
    }
    new_idx
}

/// A new, empty VCALENDAR with PRODID and VERSION.
pub fn new_calendar(method: Option<&str>) -> ICalendar {
    let mut root = ICalendarComponent {
        component_type: Ct::VCalendar,
        entries: vec![
            text_entry(P::Prodid, crate::PRODID),
            text_entry(P::Version, "2.0"),
        ],
        component_ids: Vec::new(),
    };
    if let Some(m) = method {
        root.entries.push(text_entry(P::Method, m));
    }
    ICalendar {
        components: vec![root],
    }
}

/// Copy the VTIMEZONEs of `from` that `to` uses and does not define yet, then
/// generate the ones still missing (calcard knows the IANA and Windows zones).
pub fn complete_timezones(from: &ICalendar, to: &mut ICalendar) {
    let used = used_tzids(to);
    let defined: Vec<String> = defined_tzids(to);
    for (i, c) in from.components.iter().enumerate() {
        if c.component_type == Ct::VTimezone {
            if let Some(id) = text(c, &P::Tzid) {
                if used.contains(&id) && !defined.contains(&id) {
                    copy_component(from, i, to, 0);
                }
            }
        }
    }
    to.add_missing_timezones();
}

pub fn used_tzids(ical: &ICalendar) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in &ical.components {
        if matches!(
            c.component_type,
            Ct::VTimezone | Ct::Standard | Ct::Daylight
        ) {
            continue;
        }
        for e in &c.entries {
            if let Some(t) = e.tz_id() {
                if !out.iter().any(|x| x == t) {
                    out.push(t.to_string());
                }
            }
        }
    }
    out
}

pub fn defined_tzids(ical: &ICalendar) -> Vec<String> {
    ical.components
        .iter()
        .filter(|c| c.component_type == Ct::VTimezone)
        .filter_map(|c| text(c, &P::Tzid))
        .collect()
}

/// Remove VTIMEZONEs no component refers to.
pub fn drop_unused_timezones(ical: &mut ICalendar) {
    let used = used_tzids(ical);
    let unused: Vec<u32> = ical
        .components
        .iter()
        .enumerate()
        .filter(|(_, c)| c.component_type == Ct::VTimezone)
        .filter(|(_, c)| text(c, &P::Tzid).is_none_or(|id| !used.contains(&id)))
        .map(|(i, _)| i as u32)
        .collect();
    if !unused.is_empty() {
        ical.remove_component_ids(&unused);
    }
}

/// Serialize with CRLF line ends (calcard's writer folds at 75 octets).
pub fn to_string(ical: &ICalendar) -> String {
    ical.to_string()
}

/// A calendar component as a tree (calcard keeps a flat list linked by
/// index): easier to edit, converted back with [`Node::into_ical`].
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: Ct,
    pub entries: Vec<ICalendarEntry>,
    pub children: Vec<Node>,
}

impl Node {
    /// The tree of a calendar, from its root (component 0).
    pub fn from_ical(ical: &ICalendar) -> Node {
        fn build(ical: &ICalendar, idx: usize, depth: usize) -> Node {
            let c = &ical.components[idx];
            Node {
                kind: c.component_type.clone(),
                entries: c.entries.clone(),
                children: if depth > 16 {
                    Vec::new()
                } else {
                    c.component_ids
                        .iter()
                        .filter(|&&i| (i as usize) < ical.components.len() && i as usize != idx)
                        .map(|&i| build(ical, i as usize, depth + 1))
                        .collect()
                },
            }
        }
        if ical.components.is_empty() {
            return Node {
                kind: Ct::VCalendar,
                entries: Vec::new(),
                children: Vec::new(),
            };
        }
        build(ical, 0, 0)
    }

    /// The flat calcard form of this tree.
    pub fn into_ical(self) -> ICalendar {
        fn push(node: Node, out: &mut Vec<ICalendarComponent>) -> u32 {
            let idx = out.len();
            out.push(ICalendarComponent {
                component_type: node.kind,
                entries: node.entries,
                component_ids: Vec::new(),
            });
            let ids: Vec<u32> = node.children.into_iter().map(|c| push(c, out)).collect();
            out[idx].component_ids = ids;
            idx as u32
        }
        let mut components = Vec::new();
        push(self, &mut components);
        ICalendar { components }
    }

    pub fn prop(&self, p: &P) -> Option<&ICalendarEntry> {
        self.entries.iter().find(|e| &e.name == p)
    }

    pub fn text(&self, p: &P) -> Option<String> {
        self.prop(p).and_then(entry_text)
    }

    pub fn uid(&self) -> Option<String> {
        self.text(&P::Uid).filter(|u| !u.is_empty())
    }

    pub fn recurrence_id(&self) -> Option<String> {
        self.prop(&P::RecurrenceId).and_then(date_string)
    }

    pub fn sequence(&self) -> i64 {
        let Some(e) = self.prop(&P::Sequence) else {
            return 0;
        };
        match e.values.first() {
            Some(ICalendarValue::Integer(i)) => *i,
            Some(ICalendarValue::Text(t)) => t.trim().parse().unwrap_or(0),
            _ => 0,
        }
    }

    pub fn dtstamp(&self) -> String {
        self.prop(&P::Dtstamp)
            .and_then(date_string)
            .unwrap_or_default()
    }

    pub fn organizer(&self) -> Option<String> {
        self.prop(&P::Organizer).and_then(cal_address)
    }

    pub fn set(&mut self, entry: ICalendarEntry) {
        let name = entry.name.clone();
        let mut entry = Some(entry);
        let mut out = Vec::with_capacity(self.entries.len() + 1);
        for e in self.entries.drain(..) {
            if e.name == name {
                if let Some(new) = entry.take() {
                    out.push(new);
                }
            } else {
                out.push(e);
            }
        }
        if let Some(new) = entry {
            out.push(new);
        }
        self.entries = out;
    }

    pub fn remove(&mut self, p: &P) {
        self.entries.retain(|e| &e.name != p);
    }

    pub fn is_scheduling(&self) -> bool {
        is_scheduling(&self.kind)
    }
}

/// A calendar tree from VCALENDAR body text (components), for tests.
#[cfg(test)]
pub fn test_root(body: &str) -> Node {
    let text = format!("BEGIN:VCALENDAR\r\nVERSION:2.0\r\n{body}END:VCALENDAR\r\n");
    match calcard::Parser::new(&text).entry() {
        calcard::Entry::ICalendar(i) => Node::from_ical(&i),
        other => panic!("cannot parse test calendar: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ICalendar {
        match calcard::Parser::new(s).entry() {
            calcard::Entry::ICalendar(i) => i,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_values_as_written() {
        let ical = parse(
            "BEGIN:VCALENDAR\r\nMETHOD:request\r\nBEGIN:VEVENT\r\nUID:u1\r\nSEQUENCE:3\r\n\
             RECURRENCE-ID;VALUE=DATE:20261201\r\nDTSTAMP:20261120T100000Z\r\n\
             ORGANIZER;SENT-BY=\"mailto:Sec@X.org\":MAILTO:Boss@X.org\r\n\
             ATTENDEE:mailto:a@x.org\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
        );
        assert_eq!(method(&ical), (Some("REQUEST".into()), 1));
        let idx = scheduling_components(&ical);
        let c = &ical.components[idx[0]];
        assert_eq!(uid(c).as_deref(), Some("u1"));
        assert_eq!(sequence(c), Some(3));
        assert_eq!(recurrence_id(c).as_deref(), Some("20261201"));
        assert_eq!(dtstamp(c).as_deref(), Some("20261120T100000Z"));
        assert_eq!(organizer(c).as_deref(), Some("mailto:boss@x.org"));
        assert_eq!(
            sent_by(prop(c, &P::Organizer).unwrap()).as_deref(),
            Some("mailto:sec@x.org")
        );
        let (a, e) = attendees(c).next().unwrap();
        assert_eq!(a, "mailto:a@x.org");
        assert_eq!(partstat(e), "NEEDS-ACTION");
    }
}
