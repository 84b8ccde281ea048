//! The REPLY builder against RFC 5546 §3.2.3, row by row, and the mail
//! structure against the CalConnect best practice. Every built message is
//! parsed back with imipd's own classifier.

use super::*;
use crate::classify::classify;
use crate::config::Limits;

fn stored() -> Node {
    let text = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//x//EN\r\n\
        BEGIN:VTIMEZONE\r\nTZID:Europe/Berlin\r\nBEGIN:STANDARD\r\nDTSTART:19701025T030000\r\n\
        TZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nRRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\r\nEND:STANDARD\r\n\
        BEGIN:DAYLIGHT\r\nDTSTART:19700329T020000\r\nTZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\n\
        RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU\r\nEND:DAYLIGHT\r\nEND:VTIMEZONE\r\n\
        BEGIN:VEVENT\r\nUID:plan-1@example.com\r\nSEQUENCE:2\r\nDTSTAMP:20261120T100000Z\r\n\
        DTSTART;TZID=Europe/Berlin:20261201T100000\r\nDTEND;TZID=Europe/Berlin:20261201T110000\r\n\
        RRULE:FREQ=WEEKLY;COUNT=4\r\nSUMMARY:Planning\r\nDESCRIPTION:secret agenda\r\nLOCATION:Room 1\r\n\
        ORGANIZER;CN=Alice:mailto:alice@example.com\r\n\
        ATTENDEE;CN=Bob;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.com\r\n\
        ATTENDEE;CN=Carol;PARTSTAT=ACCEPTED:mailto:carol@example.com\r\n\
        BEGIN:VALARM\r\nACTION:DISPLAY\r\nTRIGGER:-PT10M\r\nDESCRIPTION:x\r\nEND:VALARM\r\n\
        END:VEVENT\r\n\
        BEGIN:VEVENT\r\nUID:plan-1@example.com\r\nRECURRENCE-ID;TZID=Europe/Berlin:20261208T100000\r\n\
        SEQUENCE:2\r\nDTSTAMP:20261120T100000Z\r\nDTSTART;TZID=Europe/Berlin:20261208T120000\r\n\
        DTEND;TZID=Europe/Berlin:20261208T130000\r\nSUMMARY:Planning (moved)\r\n\
        ORGANIZER;CN=Alice:mailto:alice@example.com\r\nATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:bob@example.com\r\n\
        END:VEVENT\r\nEND:VCALENDAR\r\n";
    match calcard::Parser::new(text).entry() {
        calcard::Entry::ICalendar(i) => Node::from_ical(&i),
        other => panic!("{other:?}"),
    }
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-21T09:30:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// The instant of a Berlin local time, as the stored overrides name them.
fn berlin(local: &str) -> crate::time::Instant {
    let text = format!("BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nRECURRENCE-ID;TZID=Europe/Berlin:{local}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n");
    let calcard::Entry::ICalendar(i) = calcard::Parser::new(&text).entry() else {
        panic!()
    };
    crate::time::entry_instant(
        &i.components[1].entries[0],
        &crate::time::Zones::default(),
        calcard::common::timezone::Tz::UTC,
    )
    .unwrap()
}

fn build(partstat: &str, rids: &[Option<String>], comment: Option<&str>) -> Outgoing {
    let object = stored();
    let instances = Instances::of(Some(&object), &[], &crate::time::Zones::default());
    let rids: Vec<Option<crate::time::Instant>> =
        rids.iter().map(|r| r.as_deref().map(berlin)).collect();
    let rids = &rids[..];
    let request = Mail {
        message_id: Some("<req-1@example.com>".into()),
        references: vec!["<older@example.com>".into()],
        ..Mail::default()
    };
    build_reply(&ReplyRequest {
        object: &object,
        instances: &instances,
        tz_source: None,
        me: "mailto:bob@example.com",
        my_name: Some("Bob Example"),
        partstat,
        recurrence_ids: rids,
        comment,
        request: Some(&request),
        now: now(),
        generation: 0,
    })
    .unwrap()
}

/// The iTIP object of a built mail, as a tree, plus the classifier's view.
fn parse_back(o: &Outgoing) -> (Node, crate::classify::Report) {
    let c = classify(o.message.as_bytes(), "reply.eml", &Limits::default());
    let obj = c
        .objects
        .first()
        .expect("the reply carries one iTIP object");
    (Node::from_ical(&obj.ical), c.report)
}

fn vevents(root: &Node) -> Vec<&Node> {
    root.children
        .iter()
        .filter(|c| c.kind == Ct::VEvent)
        .collect()
}

#[test]
fn vcalendar_rows_method_prodid_version() {
    let (root, report) = parse_back(&build("ACCEPTED", &[None], None));
    assert_eq!(root.text(&P::Method).as_deref(), Some("REPLY"));
    assert!(root.text(&P::Prodid).is_some());
    assert_eq!(root.text(&P::Version).as_deref(), Some("2.0"));
    assert!(
        report.imip && report.valid && !report.suspicious,
        "{:?}",
        report.problems
    );
    assert_eq!(report.messages[0].method, "REPLY");
}

#[test]
fn attendee_row_exactly_one_me_with_partstat() {
    let (root, _) = parse_back(&build("DECLINED", &[None], None));
    let ev = vevents(&root)[0];
    let atts: Vec<_> = ev
        .entries
        .iter()
        .filter(|e| e.name == P::Attendee)
        .collect();
    assert_eq!(atts.len(), 1, "only the replying attendee");
    assert_eq!(
        ical::cal_address(atts[0]).as_deref(),
        Some("mailto:bob@example.com")
    );
    assert_eq!(ical::partstat(atts[0]), "DECLINED");
    assert!(ical::param(atts[0], &Pn::Rsvp).is_none());
    assert_eq!(ical::param(atts[0], &Pn::Cn).as_deref(), Some("Bob"));
}

#[test]
fn dtstamp_row_is_fresh() {
    let (root, _) = parse_back(&build("ACCEPTED", &[None], None));
    assert_eq!(vevents(&root)[0].dtstamp(), "20261121T093000Z");
}

#[test]
fn organizer_uid_sequence_rows_are_copied() {
    let (root, _) = parse_back(&build("ACCEPTED", &[None], None));
    let ev = vevents(&root)[0];
    assert_eq!(ev.organizer().as_deref(), Some("mailto:alice@example.com"));
    assert_eq!(ev.uid().as_deref(), Some("plan-1@example.com"));
    assert_eq!(ev.sequence(), 2);
    assert!(
        ev.recurrence_id().is_none(),
        "no RECURRENCE-ID for the whole series"
    );
}

#[test]
fn recurrence_id_row_only_for_an_instance() {
    let (root, _) = parse_back(&build("TENTATIVE", &[Some("20261208T100000".into())], None));
    let ev = vevents(&root);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].recurrence_id().as_deref(), Some("20261208T100000"));
    assert_eq!(ev[0].text(&P::Summary).as_deref(), Some("Planning (moved)"));
}

#[test]
fn dtstart_dtend_summary_copied_nothing_else() {
    let (root, _) = parse_back(&build("ACCEPTED", &[None], None));
    let ev = vevents(&root)[0];
    assert!(ev.prop(&P::Dtstart).is_some() && ev.prop(&P::Dtend).is_some());
    assert_eq!(ev.text(&P::Summary).as_deref(), Some("Planning"));
    for absent in [P::Description, P::Location, P::Rrule] {
        assert!(
            ev.prop(&absent).is_none(),
            "{absent:?} is not part of a REPLY"
        );
    }
}

#[test]
fn valarm_row_is_absent() {
    let (root, _) = parse_back(&build("ACCEPTED", &[None], None));
    assert!(vevents(&root)[0].children.is_empty());
}

#[test]
fn vtimezone_row_present_for_each_tzid() {
    let (root, _) = parse_back(&build("ACCEPTED", &[None], None));
    let tz: Vec<_> = root
        .children
        .iter()
        .filter(|c| c.kind == Ct::VTimezone)
        .collect();
    assert_eq!(tz.len(), 1);
    assert_eq!(tz[0].text(&P::Tzid).as_deref(), Some("Europe/Berlin"));
}

#[test]
fn comment_goes_into_the_reply() {
    let o = build("DECLINED", &[None], Some("Out of office"));
    let (root, _) = parse_back(&o);
    assert_eq!(
        vevents(&root)[0].text(&P::Comment).as_deref(),
        Some("Out of office")
    );
    assert!(o.message.contains("Out of office"));
}

#[test]
fn mail_structure_follows_the_best_practice() {
    let o = build("ACCEPTED", &[None], None);
    let m = mail_parser::MessageParser::new()
        .parse(o.message.as_bytes())
        .unwrap();
    use mail_parser::MimeHeaders;
    let root = m.root_part();
    assert!(root.content_type().unwrap().subtype() == Some("mixed"));
    let kinds: Vec<String> = m
        .parts
        .iter()
        .map(|p| {
            let ct = p.content_type().unwrap();
            format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "multipart/mixed",
            "multipart/alternative",
            "text/plain",
            "text/html",
            "text/calendar",
            "application/ics"
        ]
    );
    let cal = m.parts[4].content_type().unwrap();
    assert_eq!(cal.attribute("method"), Some("REPLY"));
    assert!(cal
        .attribute("charset")
        .unwrap()
        .eq_ignore_ascii_case("utf-8"));
    assert_eq!(m.parts[5].attachment_name(), Some("invite.ics"));
    assert_eq!(
        m.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-replied")
    );
    assert_eq!(m.in_reply_to().as_text(), Some("req-1@example.com"));
    let refs = m.references().as_text_list().unwrap();
    assert_eq!(refs, ["older@example.com", "req-1@example.com"]);
    assert!(m.message_id().is_some());
    assert_eq!(
        m.from().unwrap().first().unwrap().address(),
        Some("bob@example.com")
    );
    assert_eq!(
        m.to().unwrap().first().unwrap().address(),
        Some("alice@example.com")
    );
    assert_eq!(m.subject(), Some("Accepted: Planning"));
    let text = m.body_text(0).unwrap();
    assert!(
        text.contains("Bob Example accepted: Planning, Tue 1 Dec 2026 10:00–11:00 Europe/Berlin"),
        "{text}"
    );
    assert_eq!(o.to, ["alice@example.com"]);
}

#[test]
fn the_same_answer_has_the_same_key_and_a_new_version_a_new_one() {
    let a = build("ACCEPTED", &[None], None);
    let b = build("ACCEPTED", &[None], None);
    assert_eq!(a.key, b.key);
    let c = build("ACCEPTED", &[Some("20261208T100000".into())], None);
    assert_ne!(a.key, c.key);
}

#[test]
fn not_an_attendee_cannot_reply() {
    let object = stored();
    let instances = Instances::of(Some(&object), &[], &crate::time::Zones::default());
    let r = build_reply(&ReplyRequest {
        object: &object,
        instances: &instances,
        tz_source: None,
        me: "mailto:zed@example.com",
        my_name: None,
        partstat: "ACCEPTED",
        recurrence_ids: &[None],
        comment: None,
        request: None,
        now: now(),
        generation: 0,
    });
    assert!(r.is_err());
}

#[test]
fn declinecounter_and_refresh_answers() {
    let object = stored();
    let counter = Node {
        kind: Ct::VEvent,
        entries: vec![
            ical::text_entry(P::Uid, "plan-1@example.com"),
            ical::text_entry(P::Attendee, "mailto:carol@example.com"),
            ical::utc_entry(P::Dtstamp, now()),
        ],
        children: vec![],
    };
    let instances = Instances::of(Some(&object), &[], &crate::time::Zones::default());
    let d = build_declinecounter(
        &object,
        &instances,
        &counter,
        "mailto:carol@example.com",
        &Organizer {
            me: "mailto:alice@example.com",
            my_name: None,
            comment: Some("No"),
            request: None,
            now: now(),
        },
    )
    .unwrap();
    let (root, report) = parse_back(&d);
    assert_eq!(root.text(&P::Method).as_deref(), Some("DECLINECOUNTER"));
    assert_eq!(d.to, ["carol@example.com"]);
    assert!(report.valid, "{:?}", report.problems);
    let r = build_refresh_answer(
        &object,
        &counter,
        "mailto:carol@example.com",
        &Organizer {
            me: "mailto:alice@example.com",
            my_name: None,
            comment: None,
            request: None,
            now: now(),
        },
    )
    .unwrap();
    let (root, report) = parse_back(&r);
    assert_eq!(root.text(&P::Method).as_deref(), Some("REQUEST"));
    // RFC 5546 §3.2.6: only what carol is invited to — the series, not the
    // moved instance that names bob alone.
    assert_eq!(vevents(&root).len(), 1);
    assert!(report.valid && !report.suspicious, "{:?}", report.problems);
    assert!(!r.message.contains("BEGIN:VALARM"));
}

#[test]
fn when_reads_like_a_person_wrote_it() {
    let s = stored();
    assert_eq!(
        when(master(&s).unwrap()),
        "Tue 1 Dec 2026 10:00–11:00 Europe/Berlin"
    );
    let all_day = Node {
        kind: Ct::VEvent,
        entries: vec![{
            let mut e = ical::utc_entry(P::Dtstart, now());
            if let ICalendarValue::PartialDateTime(d) = &mut e.values[0] {
                d.hour = None;
                d.minute = None;
                d.second = None;
                d.tz_hour = None;
                d.tz_minute = None;
            }
            e
        }],
        children: vec![],
    };
    assert_eq!(when(&all_day), "Sat 21 Nov 2026 (all day)");
}

#[test]
fn a_huge_duration_does_not_overflow() {
    let text = "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:x\r\nDTSTART:20261201T100000Z\r\nDURATION:P99999999W\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let calcard::Entry::ICalendar(i) = calcard::Parser::new(text).entry() else {
        panic!()
    };
    let root = Node::from_ical(&i);
    assert!(when(&root.children[0]).starts_with("Tue 1 Dec 2026 10:00"));
}
