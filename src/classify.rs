//! A whole message → what it means: its distinct iTIP objects (duplicate
//! copies folded), whether it is valid, whether its sender is the calendar
//! user entitled to send each method, and every reason as a sentence. The
//! JSON form of [`Report`] is the `imipd classify` output of the contract.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ical::{self, Node};
use crate::itip::{self, CalObject, Sender};
use crate::limits::Limits;
use crate::mime::{self, Mail, SignatureReport};
use crate::originator::{self, MailIdentity};
use crate::trust::Trust;

/// What classification finds about a message, whatever reports it: the
/// `classify` line, and every outcome of `process`, `once` and `run`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Findings {
    pub message_id: Option<String>,
    pub from: Option<String>,
    pub imip: bool,
    pub valid: bool,
    pub suspicious: bool,
    pub problems: Vec<String>,
    /// Every S/MIME or PGP signature found, verified or not, and why not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<SignatureReport>,
    /// The message was encrypted and opened with my key (`smime`, `pgp`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decrypted: Option<crate::trust::SigMethod>,
}

impl Findings {
    /// A message that could not be read or parsed, and why.
    pub fn unreadable(problem: String) -> Findings {
        Findings {
            problems: vec![problem],
            ..Findings::default()
        }
    }
}

/// One line of `imipd classify` output.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub file: String,
    #[serde(flatten)]
    pub findings: Findings,
    pub messages: Vec<MessageSummary>,
}

impl std::ops::Deref for Report {
    type Target = Findings;
    fn deref(&self) -> &Findings {
        &self.findings
    }
}

impl std::ops::DerefMut for Report {
    fn deref_mut(&mut self) -> &mut Findings {
        &mut self.findings
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash)]
pub struct MessageSummary {
    pub method: String,
    pub components: Vec<ComponentSummary>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash)]
pub struct ComponentSummary {
    #[serde(rename = "type")]
    pub kind: String,
    pub uid: Option<String>,
    pub recurrence_id: Option<String>,
    pub sequence: Option<i64>,
    pub dtstamp: Option<String>,
    pub summary: Option<String>,
    pub organizer: Option<String>,
    pub attendees: BTreeMap<String, String>,
}

/// A classified message: the report plus what later steps act on.
#[derive(Debug, Clone)]
pub struct Classified {
    pub report: Report,
    /// The message's headers and parts; `None` when it could not be parsed.
    pub mail: Option<Mail>,
    /// The distinct iTIP objects, in the order they appear.
    pub objects: Vec<CalObject>,
    /// Per object: why its sender is not entitled, if it is not.
    pub sender_problems: Vec<Option<String>>,
}

/// Classify a raw message without keys (signatures are reported unverified,
/// encrypted parts are not opened). Never fails.
pub fn classify(raw: &[u8], file: &str, limits: &Limits) -> Classified {
    classify_with(raw, file, limits, &Trust::default())
}

/// Classify a raw message, verifying signatures and opening encrypted parts
/// with the keys of `trust`, and counting its trusted relays. Never fails:
/// an unreadable message is a report with `valid: false` and the reason.
pub fn classify_with(raw: &[u8], file: &str, limits: &Limits, trust: &Trust) -> Classified {
    // The parsers are third-party code: should one of them panic on some
    // input (mail-parser has debug assertions that hostile MIME can trip in
    // debug builds), that message is reported as unreadable and the rest
    // goes on.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        classify_inner(raw, file, limits, trust)
    })) {
        Ok(c) => c,
        Err(_) => unreadable(file, "the MIME parser failed on it".to_string()),
    }
}

fn unreadable(file: &str, reason: String) -> Classified {
    Classified {
        report: Report {
            file: file.to_string(),
            findings: Findings::unreadable(format!("cannot parse the message: {reason}")),
            messages: Vec::new(),
        },
        mail: None,
        objects: Vec::new(),
        sender_problems: Vec::new(),
    }
}

fn classify_inner(raw: &[u8], file: &str, limits: &Limits, trust: &Trust) -> Classified {
    match mime::parse_with(raw, limits, &trust.keys) {
        Ok(mail) => classify_mail(mail, file, limits, trust),
        Err(e) => unreadable(file, e.to_string()),
    }
}

/// Classify an already parsed message.
pub fn classify_mail(mail: Mail, file: &str, limits: &Limits, trust: &Trust) -> Classified {
    let mut validity: Vec<String> = mail.problems.clone();
    let mut objects: Vec<CalObject> = Vec::new();
    let mut summaries: Vec<MessageSummary> = Vec::new();
    let mut seen: std::collections::HashSet<MessageSummary> = std::collections::HashSet::new();
    let mut found_itip = false;
    let mut budget = limits.max_components;
    for (i, part) in mail.parts.iter().enumerate() {
        // The usual pair: the same text again as application/ics (without
        // method=, or with the same one) adds nothing; do not parse it twice.
        // A signed copy of an unsigned one is read: its signature counts.
        let copy = mail.parts[..i].iter().any(|p| {
            p.text == part.text
                && (part.method_param.is_none() || part.method_param == p.method_param)
                && (part.signed.is_none() || p.signed == part.signed)
        });
        if copy {
            continue;
        }
        let (objs, part_problems) = itip::parse_part(part, limits, &mut budget);
        validity.extend(part_problems);
        for o in objs {
            validity.extend(o.problems.iter().cloned());
            if !o.is_itip() {
                continue;
            }
            found_itip = true;
            if o.broken {
                continue;
            }
            let s = summarize(&o);
            // The usual text/calendar + application/ics pair: count once.
            if !seen.insert(s.clone()) {
                // The same text again, signed: the signature counts for it.
                if let Some(k) = objects.iter().position(|x| {
                    x.signed.as_ref().is_none_or(|g| g.signers.is_err())
                        && summarize(x) == s
                        && mail
                            .parts
                            .iter()
                            .any(|p| p.text == part.text && p.signed.is_none())
                }) {
                    if o.signed.as_ref().is_some_and(|g| g.signers.is_ok()) {
                        objects[k].signed = o.signed.clone();
                    }
                }
                continue;
            }
            summaries.push(s);
            objects.push(o);
        }
    }
    dedup(&mut validity);

    let sender_problems: Vec<Option<String>> = objects
        .iter()
        .map(|o| sender_problem(&mail, o, trust))
        .collect();
    let mut suspicion: Vec<String> = sender_problems.iter().flatten().cloned().collect();
    dedup(&mut suspicion);

    let report = Report {
        file: file.to_string(),
        findings: Findings {
            message_id: mail.message_id.clone(),
            from: mail.from.clone(),
            imip: found_itip,
            valid: validity.is_empty(),
            suspicious: !suspicion.is_empty(),
            problems: validity.into_iter().chain(suspicion).collect(),
            signatures: mail.signatures.clone(),
            decrypted: mail.decrypted,
        },
        messages: summaries,
    };
    Classified {
        report,
        mail: Some(mail),
        objects,
        sender_problems,
    }
}

fn dedup(v: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|p| seen.insert(p.clone()));
}

/// The contract's summary of one iTIP object.
pub fn summarize(o: &CalObject) -> MessageSummary {
    MessageSummary {
        method: o.method.clone().unwrap_or_default(),
        components: o
            .components
            .iter()
            .map(|&i| {
                let c = &o.ical.components[i];
                ComponentSummary {
                    kind: c.component_type.as_str().to_ascii_uppercase(),
                    uid: ical::uid(c),
                    recurrence_id: ical::recurrence_id(c),
                    sequence: ical::sequence(c),
                    dtstamp: ical::dtstamp(c),
                    summary: ical::text(c, &calcard::icalendar::ICalendarProperty::Summary),
                    organizer: ical::organizer(c),
                    attendees: ical::attendees(c)
                        .map(|(a, e)| (a, ical::partstat(e)))
                        .collect(),
                }
            })
            .collect(),
    }
}

/// Why the mail's sender (From or Sender, or a SENT-BY the calendar data
/// names) is not the calendar user entitled to send this object's method;
/// `None` when it is. The same check, in [`crate::originator`], decides what
/// the message may change.
pub fn sender_problem(mail: &Mail, o: &CalObject, trust: &Trust) -> Option<String> {
    let method = o.kind?;
    let who = MailIdentity::of(mail, &trust.authserv_ids, &trust.relays);
    for &i in &o.components {
        let c = &o.ical.components[i];
        let node = Node {
            kind: c.component_type.clone(),
            entries: c.entries.clone(),
            children: Vec::new(),
        };
        let names = match method.entitled_sender() {
            Sender::Organizer => ical::count(c, &calcard::icalendar::ICalendarProperty::Organizer),
            Sender::Attendee => ical::count(c, &calcard::icalendar::ICalendarProperty::Attendee),
        };
        if names == 0 {
            continue; // missing ORGANIZER/ATTENDEE: reported as invalid
        }
        if let Err(why) = originator::originator(method, &node, &who, o.signed.as_ref()) {
            let forwarded = if o.forwarded {
                " (forwarded inside another mail)"
            } else {
                ""
            };
            return Some(format!("{why}{forwarded}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(
        from: &str,
        sender: Option<&str>,
        method: &str,
        organizer: &str,
        attendees: &[&str],
    ) -> String {
        let mut s = format!("From: {from}\r\n");
        if let Some(x) = sender {
            s.push_str(&format!("Sender: {x}\r\n"));
        }
        s.push_str(&format!(
            "Content-Type: text/calendar; method={method}\r\n\r\nBEGIN:VCALENDAR\r\nMETHOD:{method}\r\nBEGIN:VEVENT\r\nUID:u\r\nDTSTAMP:20261120T100000Z\r\nDTSTART:20261201T100000Z\r\nORGANIZER{organizer}\r\n"
        ));
        for a in attendees {
            s.push_str(&format!("ATTENDEE;PARTSTAT=ACCEPTED:{a}\r\n"));
        }
        s.push_str("END:VEVENT\r\nEND:VCALENDAR\r\n");
        s
    }

    fn report(r: &str) -> Report {
        classify(r.as_bytes(), "t.eml", &Limits::default()).report
    }

    #[test]
    fn rule_request_from_organizer_is_not_suspicious() {
        let r = report(&raw(
            "Alice <ALICE@example.com>",
            None,
            "REQUEST",
            ":mailto:alice@example.com",
            &["mailto:bob@example.com"],
        ));
        assert!(!r.suspicious, "{:?}", r.problems);
        assert!(r.valid && r.imip);
    }

    #[test]
    fn rule_request_from_someone_else_is_suspicious() {
        let r = report(&raw(
            "mallory@evil.example",
            None,
            "REQUEST",
            ":mailto:alice@example.com",
            &["mailto:bob@example.com"],
        ));
        assert!(r.suspicious);
        assert!(r.problems[0].contains("mallory@evil.example"));
    }

    #[test]
    fn rule_sent_by_is_entitled() {
        let r = report(&raw(
            "assistant@example.com",
            None,
            "REQUEST",
            ";SENT-BY=\"mailto:assistant@example.com\":mailto:boss@example.com",
            &["mailto:bob@example.com"],
        ));
        assert!(!r.suspicious, "{:?}", r.problems);
    }

    #[test]
    fn rule_sender_header_counts() {
        let r = report(&raw(
            "noreply@example.com",
            Some("alice@example.com"),
            "CANCEL",
            ":mailto:alice@example.com",
            &[],
        ));
        assert!(!r.suspicious, "{:?}", r.problems);
    }

    #[test]
    fn rule_reply_from_the_attendee() {
        let ok = report(&raw(
            "bob@example.com",
            None,
            "REPLY",
            ":mailto:alice@example.com",
            &["mailto:bob@example.com"],
        ));
        assert!(!ok.suspicious);
        let bad = report(&raw(
            "carol@example.com",
            None,
            "REPLY",
            ":mailto:alice@example.com",
            &["mailto:bob@example.com"],
        ));
        assert!(bad.suspicious);
    }

    #[test]
    fn duplicates_count_once() {
        let one = raw(
            "alice@example.com",
            None,
            "REQUEST",
            ":mailto:alice@example.com",
            &["mailto:bob@example.com"],
        );
        let body = one.split_once("\r\n\r\n").unwrap().1;
        let m = format!(
            "From: alice@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/calendar; method=REQUEST\r\n\r\n{body}--b\r\nContent-Type: application/ics\r\n\r\n{body}--b--\r\n"
        );
        let r = report(&m);
        assert_eq!(r.messages.len(), 1);
        assert!(r.valid, "{:?}", r.problems);
    }
}
