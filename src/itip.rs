//! Calendar part text → iTIP objects. Splits a part into its VCALENDAR
//! objects (junk lines and broken nesting are reported, not fatal), parses
//! each with calcard, and checks what a receiver can check of the MUSTs of
//! RFC 5545, RFC 5546 (§3.2–3.4: the properties each method requires) and
//! RFC 6047 (the `method=` parameter). Also says who may send each method.

use calcard::icalendar::{ICalendar, ICalendarComponentType as Ct, ICalendarProperty as P};

use crate::ical;
use crate::limits::Limits;
use crate::mime::CalendarPart;

/// The iTIP methods of RFC 5546, as written.
pub const METHODS: [&str; 8] = [
    "PUBLISH",
    "REQUEST",
    "REPLY",
    "ADD",
    "CANCEL",
    "REFRESH",
    "COUNTER",
    "DECLINECOUNTER",
];

/// An iTIP method (RFC 5546 §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Publish,
    Request,
    Reply,
    Add,
    Cancel,
    Refresh,
    Counter,
    DeclineCounter,
}

impl Method {
    pub const ALL: [Method; 8] = [
        Method::Publish,
        Method::Request,
        Method::Reply,
        Method::Add,
        Method::Cancel,
        Method::Refresh,
        Method::Counter,
        Method::DeclineCounter,
    ];

    /// A METHOD value, any case.
    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s.trim()))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Publish => "PUBLISH",
            Method::Request => "REQUEST",
            Method::Reply => "REPLY",
            Method::Add => "ADD",
            Method::Cancel => "CANCEL",
            Method::Refresh => "REFRESH",
            Method::Counter => "COUNTER",
            Method::DeclineCounter => "DECLINECOUNTER",
        }
    }

    /// Who is entitled to send this method: the organizer, or the attendee
    /// who answers (RFC 5546 §1.4, RFC 6047 §3).
    pub fn entitled_sender(self) -> Sender {
        match self {
            Method::Publish
            | Method::Request
            | Method::Add
            | Method::Cancel
            | Method::DeclineCounter => Sender::Organizer,
            Method::Reply | Method::Counter | Method::Refresh => Sender::Attendee,
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is entitled to send a method: the organizer, or the attendee who
/// answers (RFC 5546 §1.4, RFC 6047 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Organizer,
    Attendee,
}

pub fn entitled_sender(method: &str) -> Option<Sender> {
    Method::parse(method).map(Method::entitled_sender)
}

/// One iCalendar object found in a calendar part.
#[derive(Debug, Clone)]
pub struct CalObject {
    /// METHOD, upper-cased; `None`: a plain calendar, not iTIP.
    pub method: Option<String>,
    /// The METHOD when it is an iTIP method.
    pub kind: Option<Method>,
    pub ical: ICalendar,
    /// Indexes of the scheduling components (VEVENT, VTODO, ...) in `ical`.
    pub components: Vec<usize>,
    /// What breaks a MUST (each makes the message invalid).
    pub problems: Vec<String>,
    /// Too broken or too large to act on safely.
    pub unusable: bool,
    /// Breaks a rule that makes acting on it unsafe or ambiguous (method
    /// mismatch, duplicate single-valued properties, two components for one
    /// instance, ...): reported, changes nothing, never answered.
    pub fatal: bool,
    /// Its BEGIN/END structure is broken: reported, but not summarized.
    pub broken: bool,
    pub forwarded: bool,
    /// The signature around the part it came from, if any.
    pub signed: Option<crate::trust::Signature>,
}

impl CalObject {
    pub fn is_itip(&self) -> bool {
        self.method.is_some()
    }

    pub fn component(&self, i: usize) -> &calcard::icalendar::ICalendarComponent {
        &self.ical.components[self.components[i]]
    }
}

/// Split a calendar part into objects and check each. `budget` is how many
/// components the message may still hold (`limits.max_components` for the
/// whole message): objects past it are not parsed at all.
pub fn parse_part(
    part: &CalendarPart,
    limits: &Limits,
    budget: &mut usize,
) -> (Vec<CalObject>, Vec<String>) {
    let scan = scan(&part.text);
    let mut part_problems = Vec::new();
    if scan.junk_lines > 0 && !scan.blocks.is_empty() {
        // Tolerated: stray lines (repeated headers, signatures) around
        // well-formed objects do not make those objects wrong.
        tracing::debug!(
            lines = scan.junk_lines,
            "ignored lines outside any VCALENDAR in a {} part",
            part.content_type
        );
    }
    if scan.blocks.is_empty() {
        part_problems.push(format!(
            "the {} part holds no VCALENDAR object",
            part.content_type
        ));
    }
    let mut objects = Vec::new();
    let mut skipped = 0;
    for block in scan.blocks {
        let text = &part.text[block.range.clone()];
        // Counted before parsing: a huge object costs nothing to refuse.
        let n = begin_lines(text);
        if n > *budget {
            skipped += 1;
            *budget = 0;
            continue;
        }
        *budget -= n;
        objects.push(check_object(part, text, block.problems, limits));
    }
    if skipped > 0 {
        part_problems.push(format!(
            "the message holds more than {} calendar components (limits.max_components); {skipped} calendar object(s) were not read",
            limits.max_components
        ));
    }
    // RFC 6047 §2.4: a text/calendar part carrying iTIP MUST have method=.
    if part.content_type == "text/calendar" && part.method_param.is_none() {
        if let Some(o) = objects.iter_mut().find(|o| o.is_itip()) {
            o.problems.push(
                "the text/calendar part has no method= parameter, which RFC 6047 requires for iTIP"
                    .to_string(),
            );
        }
    }
    (objects, part_problems)
}

/// How many components a calendar text holds: its BEGIN lines.
fn begin_lines(text: &str) -> usize {
    let bytes = text.as_bytes();
    let starts = usize::from(bytes.len() >= 6 && bytes[..6].eq_ignore_ascii_case(b"BEGIN:"));
    starts
        + memchr::memchr_iter(b'\n', bytes)
            .filter(|&i| {
                bytes
                    .get(i + 1..i + 7)
                    .is_some_and(|w| w.eq_ignore_ascii_case(b"BEGIN:"))
            })
            .count()
}

struct Block {
    range: std::ops::Range<usize>,
    problems: Vec<String>,
}

struct Scan {
    blocks: Vec<Block>,
    junk_lines: usize,
}

/// Find the VCALENDAR objects of a text by their BEGIN/END lines, checking
/// that every BEGIN has its END in the right order.
fn scan(text: &str) -> Scan {
    let mut blocks = Vec::new();
    let mut junk_lines = 0;
    let mut stack: Vec<String> = Vec::new();
    let mut current: Option<(usize, Vec<String>)> = None;
    let mut pos = 0;
    for raw_line in text.split_inclusive('\n') {
        let start = pos;
        pos += raw_line.len();
        let line = raw_line.trim_end_matches(['\r', '\n']);
        let line = line.strip_prefix('\u{feff}').unwrap_or(line);
        if line.starts_with([' ', '\t']) {
            continue; // a folded continuation
        }
        let (kind, value) = match line.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("BEGIN") => {
                (Some(true), v.trim().to_ascii_uppercase())
            }
            Some((k, v)) if k.eq_ignore_ascii_case("END") => {
                (Some(false), v.trim().to_ascii_uppercase())
            }
            _ => (None, String::new()),
        };
        if current.is_none() {
            match kind {
                Some(true) if value == "VCALENDAR" => {
                    current = Some((start, Vec::new()));
                    stack.push(value);
                }
                _ if line.trim().is_empty() => {}
                _ => junk_lines += 1,
            }
            continue;
        }
        let Some((block_start, problems)) = current.as_mut() else {
            continue;
        };
        match kind {
            Some(true) if value == "VCALENDAR" => {
                // A new object starts before the old one ended.
                problems.push(
                    "BEGIN:VCALENDAR is never closed (a new BEGIN:VCALENDAR starts inside it)"
                        .to_string(),
                );
                blocks.push(Block {
                    range: *block_start..start,
                    problems: std::mem::take(problems),
                });
                stack.clear();
                stack.push(value);
                *block_start = start;
            }
            Some(true) => stack.push(value),
            Some(false) => {
                match stack.last() {
                    Some(top) if *top == value => {
                        stack.pop();
                    }
                    Some(top) => {
                        problems.push(format!("BEGIN:{top} is closed by END:{value}"));
                        // END:VCALENDAR closes what is open; another END
                        // closes the innermost component (a typo'd name).
                        match stack.iter().rposition(|s| *s == value) {
                            Some(at) if value == "VCALENDAR" => stack.truncate(at),
                            _ => {
                                stack.pop();
                            }
                        }
                    }
                    None => {}
                }
                if stack.is_empty() {
                    let (s, p) = current.take().unwrap_or_default();
                    blocks.push(Block {
                        range: s..pos,
                        problems: p,
                    });
                }
            }
            None => {}
        }
    }
    if let Some((s, mut p)) = current.take() {
        let open: Vec<String> = stack.iter().rev().map(|c| format!("BEGIN:{c}")).collect();
        p.push(format!(
            "{} {} never closed (the calendar data is cut short)",
            open.join(", "),
            if open.len() == 1 { "is" } else { "are" }
        ));
        blocks.push(Block {
            range: s..text.len(),
            problems: p,
        });
    }
    Scan { blocks, junk_lines }
}

/// Required properties per method and component type (RFC 5546 §3.2–3.4):
/// (property, minimum count, maximum count or 0 for no maximum).
fn required(method: &str, t: &Ct) -> &'static [(&'static str, usize, usize)] {
    let event_or_todo = matches!(t, Ct::VEvent | Ct::VTodo | Ct::VJournal);
    if !event_or_todo {
        return &[("UID", 1, 1), ("DTSTAMP", 1, 1)];
    }
    match method {
        "PUBLISH" => &[
            ("UID", 1, 1),
            ("DTSTAMP", 1, 1),
            ("DTSTART", 1, 1),
            ("ORGANIZER", 1, 1),
        ],
        "REQUEST" => &[
            ("UID", 1, 1),
            ("DTSTAMP", 1, 1),
            ("DTSTART", 1, 1),
            ("ORGANIZER", 1, 1),
            ("ATTENDEE", 1, 0),
        ],
        "ADD" => &[
            ("UID", 1, 1),
            ("DTSTAMP", 1, 1),
            ("DTSTART", 1, 1),
            ("ORGANIZER", 1, 1),
        ],
        "REPLY" => &[
            ("UID", 1, 1),
            ("DTSTAMP", 1, 1),
            ("ORGANIZER", 1, 1),
            ("ATTENDEE", 1, 1),
        ],
        "CANCEL" => &[("UID", 1, 1), ("DTSTAMP", 1, 1), ("ORGANIZER", 1, 1)],
        "REFRESH" => &[
            ("UID", 1, 1),
            ("DTSTAMP", 1, 1),
            ("ORGANIZER", 1, 1),
            ("ATTENDEE", 1, 1),
        ],
        "COUNTER" => &[
            ("UID", 1, 1),
            ("DTSTAMP", 1, 1),
            ("DTSTART", 1, 1),
            ("ORGANIZER", 1, 1),
            ("ATTENDEE", 1, 0),
        ],
        "DECLINECOUNTER" => &[
            ("UID", 1, 1),
            ("DTSTAMP", 1, 1),
            ("ORGANIZER", 1, 1),
            ("ATTENDEE", 1, 0),
        ],
        _ => &[("UID", 1, 1)],
    }
}

fn property(name: &str) -> P {
    match name {
        "UID" => P::Uid,
        "DTSTAMP" => P::Dtstamp,
        "DTSTART" => P::Dtstart,
        "ORGANIZER" => P::Organizer,
        "ATTENDEE" => P::Attendee,
        _ => P::Other(name.to_string()),
    }
}

/// Properties RFC 5545 §3.6.1/§3.6.2 allows at most once in a VEVENT or VTODO.
const SINGLE: [&str; 16] = [
    "CLASS",
    "CREATED",
    "DESCRIPTION",
    "DTSTART",
    "GEO",
    "LAST-MODIFIED",
    "LOCATION",
    "ORGANIZER",
    "PRIORITY",
    "DTSTAMP",
    "SEQUENCE",
    "STATUS",
    "SUMMARY",
    "URL",
    "RECURRENCE-ID",
    "UID",
];

fn check_object(
    part: &CalendarPart,
    text: &str,
    mut problems: Vec<String>,
    limits: &Limits,
) -> CalObject {
    let ical = match calcard::Parser::new(text).entry() {
        calcard::Entry::ICalendar(i) => i,
        other => {
            problems.push(format!(
                "the calendar object cannot be parsed ({})",
                describe(&other)
            ));
            return CalObject {
                method: None,
                kind: None,
                ical: ICalendar {
                    components: Vec::new(),
                },
                components: Vec::new(),
                problems,
                unusable: true,
                fatal: true,
                broken: true,
                forwarded: part.forwarded,
                signed: part.signed.clone(),
            };
        }
    };
    let (method, method_lines) = ical::method(&ical);
    let kind = method.as_deref().and_then(Method::parse);
    let components = ical::scheduling_components(&ical);
    if !problems.is_empty() {
        // Broken nesting: what calcard recovered cannot be trusted, so the
        // object is reported, not read further.
        return CalObject {
            method,
            kind,
            ical,
            components,
            problems,
            unusable: true,
            fatal: true,
            broken: true,
            forwarded: part.forwarded,
            signed: part.signed.clone(),
        };
    }
    let mut unusable = false;
    let mut fatal = false;
    // A problem that makes acting on the object unsafe.
    let mut severe = |problems: &mut Vec<String>, p: String| {
        problems.push(p);
        fatal = true;
    };
    if ical.components.len() > limits.max_components {
        problems.push(format!(
            "the calendar object has {} components, more than the limit of {} (limits.max_components)",
            ical.components.len(),
            limits.max_components
        ));
        unusable = true;
    }
    if method_lines > 1 {
        severe(
            &mut problems,
            format!(
                "the calendar object has {method_lines} METHOD properties; RFC 5545 allows one"
            ),
        );
    }
    match (&method, &part.method_param) {
        (Some(m), Some(p)) if m != p => severe(
            &mut problems,
            format!("the Content-Type says method={p} but the calendar object says METHOD:{m}"),
        ),
        (None, Some(p)) => problems.push(format!(
            "the Content-Type says method={p} but the calendar object has no METHOD"
        )),
        _ => {}
    }
    if let Some(m) = &method {
        if kind.is_none() {
            problems.push(format!("METHOD:{m} is not an iTIP method"));
            unusable = true;
        }
        if components.is_empty() {
            problems.push(format!(
                "the {m} object holds no VEVENT, VTODO, VJOURNAL or VFREEBUSY"
            ));
            unusable = true;
        }
        let mut types: Vec<&str> = components
            .iter()
            .map(|&i| ical.components[i].component_type.as_str())
            .collect();
        types.sort_unstable();
        types.dedup();
        if types.len() > 1 {
            severe(
                &mut problems,
                format!(
                    "the {m} object mixes component types ({}); RFC 5546 allows one type per iTIP message",
                    types.join(", ")
                ),
            );
        }
        let mut ids: Vec<(Option<String>, Option<String>)> = Vec::new();
        for &i in &components {
            let c = &ical.components[i];
            let t = c.component_type.as_str();
            for &(name, min, max) in required(m, &c.component_type) {
                let n = ical::count(c, &property(name));
                if n < min {
                    problems.push(if min == 1 && max == 1 {
                        format!("a {t} in a {m} has no {name}, which RFC 5546 requires")
                    } else {
                        format!("a {t} in a {m} needs at least {min} {name}, it has {n}")
                    });
                } else if max > 0 && n > max {
                    if name == "ATTENDEE" {
                        // A delegation REPLY names the delegator and the
                        // delegate (RFC 5546 §4.2.5–4.2.6); anything else
                        // is reported. Only the sender's answer is applied.
                        if !delegation_pair(c) {
                            problems.push(format!(
                                "a {t} in a {m} must name exactly one ATTENDEE (the one who answers), it names {n}"
                            ));
                        }
                    } else if name != "ORGANIZER"
                        && name != "UID"
                        && name != "DTSTAMP"
                        && name != "DTSTART"
                    {
                        problems.push(format!(
                            "a {t} in a {m} has {n} {name} properties, RFC 5546 allows {max}"
                        ));
                    }
                }
            }
            if matches!(c.component_type, Ct::VEvent | Ct::VTodo | Ct::VJournal) {
                for name in SINGLE {
                    let n = ical::count(c, &property(name));
                    if n > 1 {
                        severe(
                            &mut problems,
                            format!("a {t} has {n} {name} properties; RFC 5545 allows one"),
                        );
                    }
                }
            }
            if ical::prop(c, &P::Sequence).is_some() && ical::sequence(c).is_none() {
                severe(
                    &mut problems,
                    format!("a {t} has a SEQUENCE that is not a whole number"),
                );
            }
            if let Some(e) = ical::prop(c, &P::Dtstamp) {
                if !matches!(
                    e.values.first(),
                    Some(calcard::icalendar::ICalendarValue::PartialDateTime(_))
                ) {
                    problems.push(format!("a {t} has a DTSTAMP that is not a date-time"));
                }
            }
            let id = (ical::uid(c), ical::recurrence_id(c));
            if id.0.is_some() && ids.contains(&id) {
                severe(
                    &mut problems,
                    format!(
                        "two {t}s share UID {} and the same RECURRENCE-ID",
                        id.0.as_deref().unwrap_or_default()
                    ),
                );
            }
            ids.push(id);
        }
        if components
            .iter()
            .any(|&i| ical::uid(&ical.components[i]).is_none())
        {
            unusable = true;
        }
    }
    CalObject {
        method,
        kind,
        ical,
        components,
        problems,
        unusable,
        fatal: fatal || unusable,
        broken: false,
        forwarded: part.forwarded,
        signed: part.signed.clone(),
    }
}

/// Whether the ATTENDEEs of a component are a delegator and delegates
/// naming each other (DELEGATED-TO / DELEGATED-FROM).
fn delegation_pair(c: &calcard::icalendar::ICalendarComponent) -> bool {
    use calcard::icalendar::ICalendarParameterName as Pn;
    let atts: Vec<_> = ical::attendees(c).collect();
    atts.len() > 1
        && atts.iter().all(|(addr, e)| {
            let linked = |name: Pn| {
                e.params
                    .iter()
                    .filter(|p| p.name == name)
                    .filter_map(|p| p.value.as_text())
                    .map(crate::address::canonical)
                    .any(|other| other != *addr && atts.iter().any(|(a, _)| *a == other))
            };
            linked(Pn::DelegatedTo) || linked(Pn::DelegatedFrom)
        })
}

fn describe(e: &calcard::Entry) -> String {
    match e {
        calcard::Entry::VCard(_) => "it is a vCard".into(),
        calcard::Entry::InvalidLine(l) => {
            format!("invalid line `{}`", l.chars().take(60).collect::<String>())
        }
        calcard::Entry::UnexpectedComponentEnd { expected, found } => {
            format!(
                "END:{} where END:{} was expected",
                found.as_str(),
                expected.as_str()
            )
        }
        calcard::Entry::UnterminatedComponent(c) => format!("{c} is not terminated"),
        calcard::Entry::TooManyComponents => "too many components".into(),
        _ => "no content".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(ct: &str, method: Option<&str>, text: &str) -> CalendarPart {
        CalendarPart {
            content_type: ct.into(),
            method_param: method.map(str::to_string),
            text: text.into(),
            forwarded: false,
            signed: None,
        }
    }

    fn objects(method: Option<&str>, body: &str) -> Vec<CalObject> {
        parse_part(
            &part("text/calendar", method, body),
            &Limits::default(),
            &mut 2000,
        )
        .0
    }

    const REQUEST: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\n\
        UID:u1\r\nDTSTAMP:20261120T100000Z\r\nDTSTART:20261201T100000Z\r\n\
        ORGANIZER:mailto:alice@example.com\r\nATTENDEE:mailto:bob@example.com\r\n\
        SUMMARY:x\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";

    #[test]
    fn a_clean_request_has_no_problem() {
        let o = objects(Some("REQUEST"), REQUEST);
        assert_eq!(o.len(), 1);
        assert!(o[0].problems.is_empty(), "{:?}", o[0].problems);
        assert_eq!(o[0].method.as_deref(), Some("REQUEST"));
    }

    #[test]
    fn rule_method_parameter_must_agree() {
        let o = objects(Some("CANCEL"), REQUEST);
        assert!(
            o[0].problems[0].contains("method=CANCEL"),
            "{:?}",
            o[0].problems
        );
    }

    #[test]
    fn rule_text_calendar_needs_method_parameter() {
        let o = objects(None, REQUEST);
        assert!(o[0].problems[0].contains("no method= parameter"));
        let (o, _) = parse_part(
            &part("application/ics", None, REQUEST),
            &Limits::default(),
            &mut 2000,
        );
        assert!(
            o[0].problems.is_empty(),
            "application/ics without method= is fine"
        );
    }

    #[test]
    fn rule_uid_required() {
        let o = objects(Some("REQUEST"), &REQUEST.replace("UID:u1\r\n", ""));
        assert!(o[0].problems.iter().any(|p| p.contains("no UID")));
        assert!(o[0].unusable);
    }

    #[test]
    fn rule_request_needs_organizer_dtstart_attendee() {
        let body = REQUEST
            .replace("ORGANIZER:mailto:alice@example.com\r\n", "")
            .replace("DTSTART:20261201T100000Z\r\n", "")
            .replace("ATTENDEE:mailto:bob@example.com\r\n", "");
        let p = &objects(Some("REQUEST"), &body)[0].problems;
        assert_eq!(p.len(), 3, "{p:?}");
    }

    #[test]
    fn rule_reply_exactly_one_attendee() {
        let body = REQUEST
            .replace("METHOD:REQUEST", "METHOD:REPLY")
            .replace("SUMMARY:x", "ATTENDEE:mailto:carol@example.com");
        let p = &objects(Some("REPLY"), &body)[0].problems;
        assert!(p[0].contains("exactly one ATTENDEE"), "{p:?}");
    }

    #[test]
    fn rule_begin_end_mismatch() {
        let body = REQUEST.replace("END:VEVENT", "END:VTODO");
        let p = &objects(Some("REQUEST"), &body)[0].problems;
        assert!(
            p.iter()
                .any(|p| p.contains("BEGIN:VEVENT is closed by END:VTODO")),
            "{p:?}"
        );
    }

    #[test]
    fn rule_unterminated() {
        let body = REQUEST.replace("END:VCALENDAR\r\n", "");
        let p = &objects(Some("REQUEST"), &body)[0].problems;
        assert!(p.iter().any(|p| p.contains("never closed")), "{p:?}");
    }

    #[test]
    fn rule_one_component_type() {
        let body = REQUEST.replace(
            "END:VCALENDAR",
            "BEGIN:VTODO\r\nUID:t\r\nDTSTAMP:20261120T100000Z\r\nDTSTART:20261201T100000Z\r\nORGANIZER:mailto:a@x\r\nATTENDEE:mailto:b@x\r\nEND:VTODO\r\nEND:VCALENDAR",
        );
        let p = &objects(Some("REQUEST"), &body)[0].problems;
        assert!(
            p.iter().any(|p| p.contains("mixes component types")),
            "{p:?}"
        );
    }

    #[test]
    fn rule_unknown_method() {
        let body = REQUEST.replace("METHOD:REQUEST", "METHOD:INVITE");
        let o = &objects(None, &body)[0];
        assert!(o.problems.iter().any(|p| p.contains("not an iTIP method")));
    }

    #[test]
    fn lower_case_method_is_fine() {
        let o = objects(
            Some("REQUEST"),
            &REQUEST.replace("METHOD:REQUEST", "METHOD:request"),
        );
        assert!(o[0].problems.is_empty(), "{:?}", o[0].problems);
    }

    #[test]
    fn several_objects_and_junk() {
        let body = format!("junk\r\n{REQUEST}{}", REQUEST.replace("u1", "u2"));
        let (o, p) = parse_part(
            &part("text/calendar", Some("REQUEST"), &body),
            &Limits::default(),
            &mut 2000,
        );
        assert_eq!(o.len(), 2);
        assert!(p.is_empty(), "junk around good objects is tolerated: {p:?}");
        let (o, p) = parse_part(
            &part("text/calendar", Some("REQUEST"), "junk only\r\n"),
            &Limits::default(),
            &mut 2000,
        );
        assert!(o.is_empty());
        assert!(p[0].contains("no VCALENDAR"), "{p:?}");
    }

    #[test]
    fn plain_calendar_is_not_itip() {
        let o = objects(None, &REQUEST.replace("METHOD:REQUEST\r\n", ""));
        assert!(!o[0].is_itip());
        assert!(o[0].problems.is_empty());
    }
}
