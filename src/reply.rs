//! Outgoing iTIP messages and their mail: the REPLY an attendee sends
//! (RFC 5546 §3.2.3), the DECLINECOUNTER and the answer to a REFRESH an
//! organizer sends, each wrapped the way the CalConnect iMIP best practices
//! describe: multipart/mixed { multipart/alternative { text/plain, text/html,
//! text/calendar; method=...; charset=UTF-8 }, application/ics `invite.ics` },
//! with `Auto-Submitted: auto-replied` and threading headers. Building is
//! pure (the time is given); the outbox stores and sends the result.

use calcard::icalendar::{
    ICalendarComponentType as Ct, ICalendarEntry, ICalendarParameterName as Pn,
    ICalendarParameterValue, ICalendarProperty as P, ICalendarValue,
};
use chrono::{DateTime, NaiveDateTime, Utc};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use sha2::{Digest, Sha256};

use crate::address;
use crate::engine::{self, Instances};
use crate::ical::{self, Node};
use crate::mime::Mail;
use crate::time::Instant;

/// A message ready for the outbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Outgoing {
    /// Identifies the answer: the same answer to the same request version
    /// has the same key, so it is queued and sent once.
    pub key: String,
    /// Envelope sender, bare address.
    pub from: String,
    /// Envelope recipients, bare addresses.
    pub to: Vec<String>,
    /// Whom the answer goes to, for the per-organizer cap.
    pub counterpart: String,
    /// What it says, for people ("Bob accepted: Planning, ...").
    pub summary: String,
    /// The iTIP method it carries (REPLY, COUNTER, DECLINECOUNTER, REQUEST);
    /// empty in entries queued by older versions.
    #[serde(default)]
    pub method: String,
    /// The whole RFC 5322 message.
    pub message: String,
}

/// The answer to an invitation.
pub struct ReplyRequest<'a> {
    /// The stored object (root VCALENDAR) after the invitation was applied.
    pub object: &'a Node,
    /// How the object's instances are told apart.
    pub instances: &'a Instances,
    /// Where VTIMEZONEs may be copied from (the invitation).
    pub tz_source: Option<&'a calcard::icalendar::ICalendar>,
    /// My address as the invitation names it (canonical).
    pub me: &'a str,
    pub my_name: Option<&'a str>,
    /// ACCEPTED, DECLINED or TENTATIVE.
    pub partstat: &'a str,
    /// `None` for the whole event, else the instances answered; one REPLY
    /// component each (RFC 5546 §3.2.3 allows several).
    pub recurrence_ids: &'a [Option<Instant>],
    pub comment: Option<&'a str>,
    /// The invitation mail, for threading.
    pub request: Option<&'a Mail>,
    pub now: DateTime<Utc>,
    /// How many times the answer to this version changed before (0 for a
    /// first answer): part of the key, so that a changed answer is a new
    /// message and a repeated one is not.
    pub generation: u32,
}

fn master(root: &Node) -> Option<&Node> {
    root.children
        .iter()
        .find(|c| c.is_scheduling() && c.prop(&P::RecurrenceId).is_none())
}

/// The answer key: hash of what identifies the answered version.
pub fn key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    h.finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where mail to a calendar user goes: its `mailto:` address, else its
/// SENT-BY (an organizer named by a non-mail URI with a mail delegate).
pub fn mail_address(e: &ICalendarEntry) -> Option<String> {
    let a = ical::cal_address(e)?;
    if let Some(bare) = a.strip_prefix("mailto:") {
        return Some(bare.to_string());
    }
    ical::sent_by(e).and_then(|s| s.strip_prefix("mailto:").map(str::to_string))
}

/// Build the iTIP REPLY (§3.2.3) and its mail.
pub fn build_reply(r: &ReplyRequest<'_>) -> anyhow::Result<Outgoing> {
    let rids: Vec<Option<Instant>> = if r.recurrence_ids.is_empty() {
        vec![None]
    } else {
        r.recurrence_ids.to_vec()
    };
    let mut root = Node::from_ical(&ical::new_calendar(Some("REPLY")));
    let mut first: Option<Node> = None;
    let mut versions = Vec::new();
    for rid in &rids {
        let Some(src) = r.instances.find(r.object, *rid) else {
            anyhow::bail!(
                "cannot build reply: the event has no component for {}",
                rid.map(|r| r.canonical())
                    .unwrap_or_else(|| "the whole series".into())
            );
        };
        let c = reply_component(src, r)?;
        versions.push(format!(
            "{}@{}@{}",
            rid.map(|r| r.canonical()).unwrap_or_else(|| "*".into()),
            src.sequence(),
            engine::timing(src, r.instances)
        ));
        if first.is_none() {
            first = Some(src.clone());
        }
        root.children.push(c);
    }
    let src = first.unwrap_or_else(|| root.children[0].clone());
    let org = src
        .prop(&P::Organizer)
        .ok_or_else(|| anyhow::anyhow!("cannot build reply: the event has no ORGANIZER"))?;
    let to = mail_address(org)
        .ok_or_else(|| anyhow::anyhow!("cannot build reply: the ORGANIZER has no mail address"))?;
    let mut ical = root.into_ical();
    if let Some(t) = r.tz_source {
        ical::complete_timezones(t, &mut ical);
    } else {
        ical.add_missing_timezones();
    }
    let ics = ical::to_string(&ical);

    let uid = src.uid().unwrap_or_default();
    // One answer per request version (per component: its SEQUENCE and when
    // it happens) and per answer.
    let mut key = key(&["REPLY", &uid, &versions.join(","), r.me, r.partstat]);
    if r.generation > 0 {
        key = self::key(&[&key, &r.generation.to_string()]);
    }
    let verb = match r.partstat {
        "ACCEPTED" => "accepted",
        "DECLINED" => "declined",
        "TENTATIVE" => "tentatively accepted",
        other => other,
    };
    let subject_verb = match r.partstat {
        "ACCEPTED" => "Accepted",
        "DECLINED" => "Declined",
        "TENTATIVE" => "Tentatively accepted",
        other => other,
    };
    let title = src.text(&P::Summary).unwrap_or_else(|| "(no title)".into());
    let who = r
        .my_name
        .map(str::to_string)
        .unwrap_or_else(|| r.me.trim_start_matches("mailto:").to_string());
    let summary = format!("{who} {verb}: {title}, {}", when(&src));
    outgoing(MailParts {
        from: r.me.trim_start_matches("mailto:"),
        from_name: r.my_name,
        to: &to,
        subject: &format!("{subject_verb}: {title}"),
        text: &summary,
        comment: r.comment,
        method: "REPLY",
        ics: &ics,
        key: &key,
        request: r.request,
        now: r.now,
    })
}

/// One component of a REPLY: exactly what §3.2.3 asks for.
fn reply_component(src: &Node, r: &ReplyRequest<'_>) -> anyhow::Result<Node> {
    let mut c = Node {
        kind: src.kind.clone(),
        entries: Vec::new(),
        children: Vec::new(),
    };
    let copy = |c: &mut Node, p: P| {
        for e in src.entries.iter().filter(|e| e.name == p) {
            c.entries.push(e.clone());
        }
    };
    copy(&mut c, P::Uid);
    copy(&mut c, P::RecurrenceId);
    copy(&mut c, P::Sequence);
    c.entries.push(ical::utc_entry(P::Dtstamp, r.now));
    copy(&mut c, P::Organizer);
    let mine = src
        .entries
        .iter()
        .find(|e| e.name == P::Attendee && ical::cal_address(e).as_deref() == Some(r.me))
        .ok_or_else(|| anyhow::anyhow!("cannot build reply: {} is not an attendee", r.me))?;
    let mut att = mine.clone();
    ical::set_param(
        &mut att,
        Pn::Partstat,
        ICalendarParameterValue::Text(r.partstat.to_string()),
    );
    ical::remove_param(&mut att, &Pn::Rsvp);
    engine::strip_private(&mut att);
    c.entries.push(att);
    copy(&mut c, P::Dtstart);
    copy(&mut c, P::Dtend);
    copy(&mut c, P::Duration);
    copy(&mut c, P::Due);
    copy(&mut c, P::Summary);
    if let Some(text) = r.comment {
        c.entries.push(ical::text_entry(P::Comment, text));
    }
    Ok(c)
}

/// Who answers as organizer, and the context of the answer.
pub struct Organizer<'a> {
    /// My calendar address as the event names it.
    pub me: &'a str,
    pub my_name: Option<&'a str>,
    pub comment: Option<&'a str>,
    /// The mail answered, for threading.
    pub request: Option<&'a Mail>,
    pub now: DateTime<Utc>,
}

/// DECLINECOUNTER (§3.2.8): the organizer refuses an attendee's proposal.
pub fn build_declinecounter(
    stored: &Node,
    instances: &Instances,
    counter: &Node,
    proposer: &str,
    o: &Organizer<'_>,
) -> anyhow::Result<Outgoing> {
    let (me, my_name, comment, request, now) = (o.me, o.my_name, o.comment, o.request, o.now);
    let rid = counter.recurrence_id();
    let src = instances
        .find(stored, instances.rid(counter))
        .or_else(|| master(stored))
        .ok_or_else(|| anyhow::anyhow!("cannot build DECLINECOUNTER: the event is empty"))?;
    let att = counter
        .entries
        .iter()
        .find(|e| e.name == P::Attendee && ical::cal_address(e).as_deref() == Some(proposer))
        .ok_or_else(|| {
            anyhow::anyhow!("cannot build DECLINECOUNTER: the COUNTER does not name {proposer}")
        })?;
    let to = mail_address(att).ok_or_else(|| {
        anyhow::anyhow!("cannot build DECLINECOUNTER: the attendee has no mail address")
    })?;
    let mut c = Node {
        kind: src.kind.clone(),
        entries: Vec::new(),
        children: Vec::new(),
    };
    for p in [P::Uid, P::RecurrenceId, P::Sequence] {
        if let Some(e) = src.prop(&p) {
            c.entries.push(e.clone());
        }
    }
    c.entries.push(ical::utc_entry(P::Dtstamp, now));
    if let Some(o) = src.prop(&P::Organizer) {
        c.entries.push(o.clone());
    }
    let mut a = att.clone();
    engine::strip_private(&mut a);
    c.entries.push(a);
    if let Some(text) = comment {
        c.entries.push(ical::text_entry(P::Comment, text));
    }
    let mut root = Node::from_ical(&ical::new_calendar(Some("DECLINECOUNTER")));
    root.children.push(c);
    let ics = ical::to_string(&root.into_ical());
    let title = src.text(&P::Summary).unwrap_or_else(|| "(no title)".into());
    let uid = src.uid().unwrap_or_default();
    let key = key(&[
        "DECLINECOUNTER",
        &uid,
        &rid.unwrap_or_default(),
        &counter.dtstamp(),
        &to,
    ]);
    let who = my_name
        .map(str::to_string)
        .unwrap_or_else(|| me.trim_start_matches("mailto:").to_string());
    let summary = format!(
        "{who} declined the proposed change to: {title}, {}",
        when(src)
    );
    outgoing(MailParts {
        from: me.trim_start_matches("mailto:"),
        from_name: my_name,
        to: &to,
        subject: &format!("Proposal declined: {title}"),
        text: &summary,
        comment,
        method: "DECLINECOUNTER",
        ics: &ics,
        key: &key,
        request,
        now,
    })
}

/// The answer to a REFRESH (§3.2.6): the current event as a REQUEST, to the
/// attendee who asked.
pub fn build_refresh_answer(
    stored: &Node,
    refresh: &Node,
    requester: &str,
    o: &Organizer<'_>,
) -> anyhow::Result<Outgoing> {
    let (me, my_name, request, now) = (o.me, o.my_name, o.request, o.now);
    let att = refresh
        .entries
        .iter()
        .find(|e| e.name == P::Attendee && ical::cal_address(e).as_deref() == Some(requester))
        .ok_or_else(|| anyhow::anyhow!("cannot answer REFRESH: it does not name {requester}"))?;
    let to = mail_address(att).ok_or_else(|| {
        anyhow::anyhow!("cannot answer REFRESH: the attendee has no mail address")
    })?;
    let mut root = Node::from_ical(&ical::new_calendar(Some("REQUEST")));
    for c in stored.children.iter() {
        let mut c = c.clone();
        if c.is_scheduling() {
            // Only what the requester is invited to (RFC 5546 §3.2.6): an
            // attendee of one instance does not receive the whole series.
            let named = c.entries.iter().any(|e| {
                e.name == P::Attendee && ical::cal_address(e).as_deref() == Some(requester)
            });
            if !named {
                continue;
            }
            c.set(ical::utc_entry(P::Dtstamp, now));
            for e in c.entries.iter_mut().filter(|e| e.name == P::Attendee) {
                engine::strip_private(e);
            }
            c.children.retain(|a| a.kind != Ct::VAlarm);
        }
        root.children.push(c);
    }
    let src = root
        .children
        .iter()
        .find(|c| c.is_scheduling() && c.prop(&P::RecurrenceId).is_none())
        .or_else(|| root.children.iter().find(|c| c.is_scheduling()))
        .cloned()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "cannot answer REFRESH: {requester} is not an attendee of any component"
            )
        })?;
    let src = &src;
    let mut ical = root.into_ical();
    ical::drop_unused_timezones(&mut ical);
    ical.add_missing_timezones();
    let ics = ical::to_string(&ical);
    let title = src.text(&P::Summary).unwrap_or_else(|| "(no title)".into());
    let uid = src.uid().unwrap_or_default();
    let key = key(&["REFRESH", &uid, &refresh.dtstamp(), &to]);
    let summary = format!("Invitation (refreshed): {title}, {}", when(src));
    outgoing(MailParts {
        from: me.trim_start_matches("mailto:"),
        from_name: my_name,
        to: &to,
        subject: &format!("Invitation: {title}"),
        text: &summary,
        comment: None,
        method: "REQUEST",
        ics: &ics,
        key: &key,
        request,
        now,
    })
}

/// A COUNTER: another time I propose for an invitation (§3.2.7).
pub struct CounterRequest<'a> {
    /// The stored object.
    pub object: &'a Node,
    pub instances: &'a Instances,
    /// The instance (`None`: the whole event).
    pub rid: Option<Instant>,
    /// My address as the event names it.
    pub me: &'a str,
    pub my_name: Option<&'a str>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub comment: Option<&'a str>,
    pub now: DateTime<Utc>,
}

/// COUNTER (§3.2.7): the component as I would have it, with the proposed
/// DTSTART and DTEND (in UTC), a fresh DTSTAMP, the organizer's SEQUENCE,
/// and me as the one ATTENDEE, to the organizer.
pub fn build_counter(r: &CounterRequest<'_>) -> anyhow::Result<Outgoing> {
    let derived;
    let src = match r.instances.find(r.object, r.rid) {
        Some(c) => c,
        None => {
            derived = engine::derive_override(r.object, r.rid, r.instances).ok_or_else(|| {
                anyhow::anyhow!("cannot build COUNTER: the event has no such instance")
            })?;
            &derived
        }
    };
    let mine = src
        .entries
        .iter()
        .find(|e| e.name == P::Attendee && ical::cal_address(e).as_deref() == Some(r.me))
        .ok_or_else(|| anyhow::anyhow!("cannot build COUNTER: {} is not an attendee", r.me))?;
    let org = src
        .prop(&P::Organizer)
        .ok_or_else(|| anyhow::anyhow!("cannot build COUNTER: the event has no ORGANIZER"))?;
    let to = mail_address(org).ok_or_else(|| {
        anyhow::anyhow!("cannot build COUNTER: the ORGANIZER has no mail address")
    })?;
    let mut c = Node {
        kind: src.kind.clone(),
        entries: Vec::new(),
        children: Vec::new(),
    };
    for e in &src.entries {
        let skip = matches!(
            e.name,
            P::Dtstart | P::Dtend | P::Duration | P::Dtstamp | P::Attendee | P::Comment
        ) || matches!(&e.name, P::Other(n) if n.to_ascii_uppercase().starts_with("X-IMIPD"))
            || (r.rid.is_some() && matches!(e.name, P::Rrule | P::Rdate | P::Exdate | P::Exrule));
        if !skip {
            c.entries.push(e.clone());
        }
    }
    c.entries.push(ical::utc_entry(P::Dtstamp, r.now));
    c.entries.push(ical::utc_entry(P::Dtstart, r.start));
    c.entries.push(ical::utc_entry(P::Dtend, r.end));
    let mut att = mine.clone();
    ical::remove_param(&mut att, &Pn::Rsvp);
    engine::strip_private(&mut att);
    c.entries.push(att);
    if let Some(text) = r.comment {
        c.entries.push(ical::text_entry(P::Comment, text));
    }
    let mut root = Node::from_ical(&ical::new_calendar(Some("COUNTER")));
    root.children.push(c);
    let mut ical = root.into_ical();
    ical.add_missing_timezones();
    let ics = ical::to_string(&ical);
    let uid = src.uid().unwrap_or_default();
    let title = src.text(&P::Summary).unwrap_or_else(|| "(no title)".into());
    let key = key(&[
        "COUNTER",
        &uid,
        &r.rid.map(|i| i.canonical()).unwrap_or_default(),
        &src.sequence().to_string(),
        &r.start.timestamp().to_string(),
        &r.end.timestamp().to_string(),
        r.me,
    ]);
    let who = r
        .my_name
        .map(str::to_string)
        .unwrap_or_else(|| r.me.trim_start_matches("mailto:").to_string());
    let proposed = format!(
        "{} – {} UTC",
        r.start.format("%a %-d %b %Y %H:%M"),
        r.end.format("%a %-d %b %Y %H:%M")
    );
    let summary = format!("{who} proposes a new time for: {title}, {proposed}");
    outgoing(MailParts {
        from: r.me.trim_start_matches("mailto:"),
        from_name: r.my_name,
        to: &to,
        subject: &format!("New time proposed: {title}"),
        text: &summary,
        comment: r.comment,
        method: "COUNTER",
        ics: &ics,
        key: &key,
        request: None,
        now: r.now,
    })
}

struct MailParts<'a> {
    from: &'a str,
    from_name: Option<&'a str>,
    to: &'a str,
    subject: &'a str,
    text: &'a str,
    comment: Option<&'a str>,
    method: &'a str,
    ics: &'a str,
    key: &'a str,
    request: Option<&'a Mail>,
    now: DateTime<Utc>,
}

/// The message and what the outbox needs to know about it.
fn outgoing(p: MailParts<'_>) -> anyhow::Result<Outgoing> {
    let message = mail(&p)?;
    Ok(Outgoing {
        key: p.key.to_string(),
        from: p.from.to_string(),
        to: vec![p.to.to_string()],
        counterpart: p.to.to_string(),
        summary: p.text.to_string(),
        method: p.method.to_string(),
        message,
    })
}

/// The CalConnect best-practice structure around an iTIP object.
fn mail(p: &MailParts<'_>) -> anyhow::Result<String> {
    let from: Mailbox = Mailbox::new(
        p.from_name.map(str::to_string),
        p.from
            .parse()
            .map_err(|e| anyhow::anyhow!("cannot use {} as sender address: {e}", p.from))?,
    );
    let to: Mailbox = Mailbox::new(
        None,
        p.to.parse()
            .map_err(|e| anyhow::anyhow!("cannot use {} as recipient address: {e}", p.to))?,
    );
    let domain = address::domain(p.from).unwrap_or_else(|| "imipd.invalid".into());
    let mut text = format!("{}\n", p.text);
    let mut html = format!("<p>{}</p>\n", escape_html(p.text));
    if let Some(c) = p.comment {
        text.push_str(&format!("\n{c}\n"));
        html.push_str(&format!("<p>{}</p>\n", escape_html(c)));
    }
    text.push_str("\n-- \nSent automatically by imipd.\n");
    html.push_str("<p style=\"color:#666\">Sent automatically by imipd.</p>\n");
    let html = format!("<!DOCTYPE html>\n<html><body>\n{html}</body></html>\n");
    let calendar_type = ContentType::parse(&format!(
        "text/calendar; method={}; charset=UTF-8",
        p.method
    ))
    .map_err(|e| anyhow::anyhow!("cannot build content type: {e}"))?;
    let ics_type = ContentType::parse("application/ics; name=\"invite.ics\"")
        .map_err(|e| anyhow::anyhow!("cannot build content type: {e}"))?;
    let mut b = lettre::Message::builder()
        .from(from)
        .to(to)
        .subject(p.subject)
        .date(std::time::SystemTime::from(p.now))
        .message_id(Some(format!("<imipd.{}@{domain}>", p.key)))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-replied".to_string(),
        ));
    if let Some(req) = p.request {
        if let Some(id) = &req.message_id {
            b = b.in_reply_to(id.clone());
            let mut refs = req.references.clone();
            refs.push(id.clone());
            b = b.references(refs.join(" "));
        }
    }
    let m = b
        .multipart(
            MultiPart::mixed()
                .multipart(
                    MultiPart::alternative()
                        .singlepart(SinglePart::plain(text))
                        .singlepart(SinglePart::html(html))
                        .singlepart(
                            SinglePart::builder()
                                .header(calendar_type)
                                .body(p.ics.to_string()),
                        ),
                )
                .singlepart(
                    Attachment::new("invite.ics".to_string()).body(p.ics.to_string(), ics_type),
                ),
        )
        .map_err(|e| anyhow::anyhow!("cannot build the reply mail: {e}"))?;
    String::from_utf8(m.formatted())
        .map_err(|_| anyhow::anyhow!("cannot build the reply mail: not UTF-8"))
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// When an event happens, for people: "Tue 1 Dec 2026 10:00–11:00 Europe/Berlin".
pub fn when(c: &Node) -> String {
    let Some(start_e) = c.prop(&P::Dtstart).or_else(|| c.prop(&P::RecurrenceId)) else {
        return "time not given".into();
    };
    let Some(start) = crate::time::to_naive(start_e) else {
        return "time not given".into();
    };
    let date_only = matches!(start_e.values.first(), Some(ICalendarValue::PartialDateTime(d)) if d.hour.is_none());
    let zone = zone_name(start_e);
    let end = c
        .prop(&P::Dtend)
        .or_else(|| c.prop(&P::Due))
        .and_then(crate::time::to_naive)
        .or_else(|| {
            let d = c.prop(&P::Duration)?;
            match d.values.first()? {
                ICalendarValue::Duration(d) => {
                    d.to_time_delta().and_then(|t| start.checked_add_signed(t))
                }
                _ => None,
            }
        });
    let day = |d: NaiveDateTime| d.format("%a %-d %b %Y").to_string();
    if date_only {
        return match end {
            Some(e) if e - start > chrono::Duration::days(1) => {
                format!(
                    "{} – {} (all day)",
                    day(start),
                    day(e - chrono::Duration::days(1))
                )
            }
            _ => format!("{} (all day)", day(start)),
        };
    }
    match end {
        Some(e) if e.date() == start.date() => format!(
            "{} {}–{} {zone}",
            day(start),
            start.format("%H:%M"),
            e.format("%H:%M")
        ),
        Some(e) => format!(
            "{} {} – {} {} {zone}",
            day(start),
            start.format("%H:%M"),
            day(e),
            e.format("%H:%M")
        ),
        None => format!("{} {} {zone}", day(start), start.format("%H:%M")),
    }
}

fn zone_name(e: &ICalendarEntry) -> String {
    if let Some(t) = e.tz_id() {
        return t.to_string();
    }
    match e.values.first() {
        Some(ICalendarValue::PartialDateTime(d)) if d.tz_hour == Some(0) => "UTC".into(),
        _ => "(floating time)".into(),
    }
}

#[cfg(test)]
mod tests;
