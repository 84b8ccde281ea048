use super::*;
use crate::config::Identity;

fn me() -> Identity {
    Identity {
        addresses: vec!["bob@example.com".into()],
        name: None,
        trusted_sent_by: Vec::new(),
    }
}

fn root(body: &str) -> Node {
    crate::ical::test_root(body)
}

fn event(extra: &str) -> String {
    format!(
        "BEGIN:VEVENT\r\nUID:u1\r\nORGANIZER:mailto:alice@example.com\r\n\
         ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:bob@example.com\r\n\
         ATTENDEE;PARTSTAT=ACCEPTED:mailto:alice@example.com\r\n{extra}END:VEVENT\r\n"
    )
}

/// Alice's weekly series from 1 December 2026, at a version.
fn series(seq: i64, stamp: &str, extra: &str) -> String {
    event(&format!(
        "{MASTER}SEQUENCE:{seq}\r\nDTSTAMP:{stamp}\r\n{extra}"
    ))
}

/// The series filed from its first invitation.
fn filed() -> Node {
    run(None, "REQUEST", &series(0, "20261120T100000Z", ""), true)
        .object
        .unwrap()
}

const MASTER: &str =
    "DTSTART:20261201T100000Z\r\nDTEND:20261201T110000Z\r\nRRULE:FREQ=WEEKLY;COUNT=10\r\n";

/// Apply a message; `entitled`: the mail comes from the calendar user
/// entitled to send it (the ORGANIZER, or the first ATTENDEE of a reply),
/// verified by the receiving server.
fn run(stored: Option<&Node>, method: &str, body: &str, entitled: bool) -> Decision {
    let r = root(body);
    let (uid, comps) = group_by_uid(&r).into_iter().next().unwrap();
    let method = Method::parse(method).unwrap();
    let speaker = match method.entitled_sender() {
        crate::itip::Sender::Organizer => comps[0].organizer(),
        crate::itip::Sender::Attendee => comps[0].prop(&P::Attendee).and_then(ical::cal_address),
    };
    let originator = match (entitled, speaker) {
        (true, Some(a)) => Ok(Originator {
            mail: crate::address::bare(&a),
            address: a,
            via: Via::From,
            sent_by: None,
            proof: crate::originator::Proof::Dkim,
            unproven: None,
        }),
        _ => Err("the sender is someone else".to_string()),
    };
    let id = me();
    let zones = Zones::of(&r);
    let input = Input {
        method,
        uid: &uid,
        comps,
        zones: &zones,
        originator: &originator,
        sender_mail: &[],
        identity: &id,
        trust: Trust {
            sent_by: &[],
            require_proof: false,
        },
    };
    apply(stored, &input)
}

fn master_of(n: &Node) -> &Node {
    scheduling(n)
        .find(|c| c.prop(&P::RecurrenceId).is_none())
        .unwrap()
}

/// The component of an object for an instance written as a UTC RECURRENCE-ID.
fn find<'a>(n: &'a Node, rid: Option<&str>) -> Option<&'a Node> {
    let inst = Instances::of(Some(n), &[], &Zones::default());
    let at = rid.map(|r| instant(&format!("RECURRENCE-ID:{r}")));
    inst.find(n, at)
}

fn instant(line: &str) -> Instant {
    let r = root(&format!("BEGIN:VEVENT\r\n{line}\r\nEND:VEVENT\r\n"));
    let e = r.children[0].entries[0].clone();
    crate::time::entry_instant(&e, &Zones::default(), Tz::UTC).unwrap()
}

fn has_exdate(master: &Node, rid: &str) -> bool {
    let inst = Instances::of(None, std::slice::from_ref(master), &Zones::default());
    inst.has_exdate(master, instant(&format!("RECURRENCE-ID:{rid}")))
}

#[test]
fn new_request_is_created_and_is_an_invitation() {
    let d = run(None, "REQUEST", &series(0, "20261120T100000Z", ""), true);
    assert_eq!(d.effect, Effect::Created);
    let inv = d.invitation.unwrap();
    assert_eq!(inv.me, "mailto:bob@example.com");
    assert_eq!(inv.rids(), vec![None]);
}

#[test]
fn regression_fuzz_invited_to_one_instance_only() {
    // Found by the fuzzer: the master does not name me, one override does;
    // the answer covers that instance alone.
    let master = series(0, "20261120T100000Z", "").replace(
        "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:bob@example.com\r\n",
        "",
    );
    let over = event("RECURRENCE-ID:20261208T100000Z\r\nDTSTART:20261208T100000Z\r\nSEQUENCE:0\r\nDTSTAMP:20261120T100000Z\r\n");
    let d = run(None, "REQUEST", &format!("{master}{over}"), true);
    assert_eq!(
        d.invitation.unwrap().rids(),
        vec![Some(instant("RECURRENCE-ID:20261208T100000Z"))]
    );
}

#[test]
fn ordering_sequence_then_dtstamp() {
    let v1 = run(None, "REQUEST", &series(1, "20261120T100000Z", ""), true)
        .object
        .unwrap();
    // Lower sequence, later DTSTAMP: stale.
    let d = run(
        Some(&v1),
        "REQUEST",
        &series(0, "20261125T100000Z", ""),
        true,
    );
    assert_eq!(d.effect, Effect::Stale);
    assert!(d.invitation.is_none());
    // Same sequence, earlier DTSTAMP: stale.
    let d = run(
        Some(&v1),
        "REQUEST",
        &series(1, "20261119T100000Z", ""),
        true,
    );
    assert_eq!(d.effect, Effect::Stale);
    // Same version: unchanged (a duplicate).
    let d = run(
        Some(&v1),
        "REQUEST",
        &series(1, "20261120T100000Z", ""),
        true,
    );
    assert_eq!(d.effect, Effect::Unchanged);
    // Same sequence, later DTSTAMP: applied.
    let d = run(
        Some(&v1),
        "REQUEST",
        &series(1, "20261121T100000Z", "SUMMARY:new\r\n"),
        true,
    );
    assert_eq!(d.effect, Effect::Updated);
    assert_eq!(
        master_of(d.object.as_ref().unwrap())
            .text(&P::Summary)
            .as_deref(),
        Some("new")
    );
}

#[test]
fn request_with_master_replaces_overrides() {
    let body = format!(
        "{}{}",
        series(0, "20261120T100000Z", ""),
        event("RECURRENCE-ID:20261208T100000Z\r\nDTSTART:20261208T120000Z\r\nSEQUENCE:0\r\nDTSTAMP:20261120T100000Z\r\n")
    );
    let v1 = run(None, "REQUEST", &body, true).object.unwrap();
    assert_eq!(scheduling(&v1).count(), 2);
    let v2 = run(
        Some(&v1),
        "REQUEST",
        &series(1, "20261121T100000Z", ""),
        true,
    )
    .object
    .unwrap();
    assert_eq!(
        scheduling(&v2).count(),
        1,
        "the override not in the new REQUEST goes"
    );
}

#[test]
fn naked_instance_request_touches_only_that_instance() {
    let v1 = run(
        None,
        "REQUEST",
        &series(0, "20261120T100000Z", "SUMMARY:series\r\n"),
        true,
    )
    .object
    .unwrap();
    let d = run(Some(&v1), "REQUEST", &event("RECURRENCE-ID:20261208T100000Z\r\nDTSTART:20261208T130000Z\r\nSEQUENCE:1\r\nDTSTAMP:20261121T100000Z\r\nSUMMARY:moved\r\n"), true);
    assert_eq!(d.effect, Effect::Updated);
    let o = d.object.unwrap();
    assert_eq!(master_of(&o).text(&P::Summary).as_deref(), Some("series"));
    assert_eq!(
        find(&o, Some("20261208T100000Z"))
            .unwrap()
            .text(&P::Summary)
            .as_deref(),
        Some("moved")
    );
    assert_eq!(
        d.invitation.unwrap().rids(),
        vec![Some(instant("RECURRENCE-ID:20261208T100000Z"))]
    );
    // A naked invitation with nothing stored is filed as it is.
    let d = run(None, "REQUEST", &event("RECURRENCE-ID:20261208T100000Z\r\nDTSTART:20261208T130000Z\r\nDTSTAMP:20261121T100000Z\r\n"), true);
    assert_eq!(d.effect, Effect::Created);
}

#[test]
fn cancel_of_an_instance_without_override_adds_exdate() {
    let v1 = filed();
    let d = run(
        Some(&v1),
        "CANCEL",
        &event("RECURRENCE-ID:20261208T100000Z\r\nSEQUENCE:0\r\nDTSTAMP:20261121T100000Z\r\n"),
        true,
    );
    assert_eq!(d.effect, Effect::Cancelled);
    let o = d.object.unwrap();
    assert!(has_exdate(master_of(&o), "20261208T100000Z"));
    // Again: nothing more to do.
    let d = run(
        Some(&o),
        "CANCEL",
        &event("RECURRENCE-ID:20261208T100000Z\r\nSEQUENCE:0\r\nDTSTAMP:20261121T100000Z\r\n"),
        true,
    );
    assert_eq!(d.effect, Effect::Unchanged);
}

#[test]
fn cancel_whole_event_marks_it_cancelled_and_stale_cancel_changes_nothing() {
    let v1 = run(None, "REQUEST", &series(2, "20261120T100000Z", ""), true)
        .object
        .unwrap();
    let d = run(
        Some(&v1),
        "CANCEL",
        &event("SEQUENCE:1\r\nDTSTAMP:20261122T100000Z\r\n"),
        true,
    );
    assert_eq!(d.effect, Effect::Stale);
    let d = run(
        Some(&v1),
        "CANCEL",
        &event("SEQUENCE:3\r\nDTSTAMP:20261122T100000Z\r\n"),
        true,
    );
    assert_eq!(d.effect, Effect::Cancelled);
    let o = d.object.unwrap();
    assert!(is_cancelled(master_of(&o)));
    assert_eq!(master_of(&o).sequence(), 3);
}

#[test]
fn cancel_this_and_future_truncates() {
    let v1 = filed();
    let d = run(Some(&v1), "CANCEL", &event("RECURRENCE-ID;RANGE=THISANDFUTURE:20261215T100000Z\r\nSEQUENCE:1\r\nDTSTAMP:20261122T100000Z\r\n"), true);
    assert_eq!(d.effect, Effect::Cancelled);
    let o = d.object.unwrap();
    let rrule = master_of(&o).prop(&P::Rrule).unwrap();
    let text = ical::to_string(
        &Node {
            kind: Ct::VCalendar,
            entries: vec![rrule.clone()],
            children: vec![],
        }
        .into_ical(),
    );
    assert!(text.contains("UNTIL=20261215T095959Z"), "{text}");
    assert!(!text.contains("COUNT"), "{text}");
}

#[test]
fn cancel_for_unknown_uid_is_held() {
    let d = run(
        None,
        "CANCEL",
        &event("SEQUENCE:1\r\nDTSTAMP:20261122T100000Z\r\n"),
        true,
    );
    assert_eq!(d.effect, Effect::Held);
}

#[test]
fn wrong_sender_and_organizer_change_are_refused() {
    let v1 = filed();
    let d = run(
        Some(&v1),
        "CANCEL",
        &event("SEQUENCE:1\r\nDTSTAMP:20261122T100000Z\r\n"),
        false,
    );
    assert_eq!(d.effect, Effect::Refused);
    assert!(d.object.is_none());
    let changed = series(1, "20261122T100000Z", "").replace(
        "ORGANIZER:mailto:alice@example.com",
        "ORGANIZER:mailto:mallory@evil.example",
    );
    let d = run(Some(&v1), "REQUEST", &changed, true);
    assert_eq!(d.effect, Effect::Refused);
    assert!(d.reason.contains("organizer would change"), "{}", d.reason);
}

#[test]
fn local_data_survives_updates() {
    let v1 = filed();
    // The user adds an alarm, TRANSP, CATEGORIES and an X- property, and accepts.
    let mut mine = v1.clone();
    {
        let m = mine
            .children
            .iter_mut()
            .find(|c| c.is_scheduling() && c.prop(&P::RecurrenceId).is_none())
            .unwrap();
        m.entries.push(ical::text_entry(P::Transp, "TRANSPARENT"));
        m.entries.push(ical::text_entry(P::Categories, "Work"));
        m.entries.push(ical::text_entry(
            P::Other("X-MY-NOTE".into()),
            "bring slides",
        ));
        for e in m.entries.iter_mut().filter(|e| e.name == P::Attendee) {
            if ical::cal_address(e).as_deref() == Some("mailto:bob@example.com") {
                ical::set_param(
                    e,
                    Pn::Partstat,
                    ICalendarParameterValue::Text("ACCEPTED".into()),
                );
            }
        }
        m.children.push(Node {
            kind: Ct::VAlarm,
            entries: vec![
                ical::text_entry(P::Action, "DISPLAY"),
                ical::text_entry(P::Trigger, "-PT15M"),
            ],
            children: vec![],
        });
    }
    // Same SEQUENCE, later DTSTAMP (a re-send): my answer stays.
    let d = run(
        Some(&mine),
        "REQUEST",
        &series(0, "20261121T100000Z", "TRANSP:OPAQUE\r\n"),
        true,
    );
    let o = d.object.unwrap();
    let m = master_of(&o);
    assert_eq!(m.text(&P::Transp).as_deref(), Some("TRANSPARENT"));
    assert_eq!(m.text(&P::Categories).as_deref(), Some("Work"));
    assert_eq!(
        m.text(&P::Other("X-MY-NOTE".into())).as_deref(),
        Some("bring slides")
    );
    assert_eq!(
        m.children.iter().filter(|c| c.kind == Ct::VAlarm).count(),
        1
    );
    let bob = m
        .entries
        .iter()
        .find(|e| ical::cal_address(e).as_deref() == Some("mailto:bob@example.com"))
        .unwrap();
    assert_eq!(ical::partstat(bob), "ACCEPTED");
}

fn organized_by_me() -> Node {
    let body = "BEGIN:VEVENT\r\nUID:u1\r\nORGANIZER:mailto:bob@example.com\r\n\
        ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:erin@example.com\r\n\
        DTSTART:20261201T100000Z\r\nDTEND:20261201T110000Z\r\nRRULE:FREQ=DAILY;COUNT=5\r\n\
        SEQUENCE:1\r\nDTSTAMP:20261120T100000Z\r\nEND:VEVENT\r\n";
    run(None, "REQUEST", body, true).object.unwrap()
}

fn reply(who: &str, partstat: &str, seq: i64, stamp: &str, rid: Option<&str>) -> String {
    format!(
        "BEGIN:VEVENT\r\nUID:u1\r\nORGANIZER:mailto:bob@example.com\r\nATTENDEE;PARTSTAT={partstat}:mailto:{who}\r\n\
         SEQUENCE:{seq}\r\nDTSTAMP:{stamp}\r\n{}END:VEVENT\r\n",
        rid.map(|r| format!("RECURRENCE-ID:{r}\r\n")).unwrap_or_default()
    )
}

fn partstat_of(o: &Node, rid: Option<&str>, who: &str) -> String {
    let c = find(o, rid).unwrap();
    ical::partstat(
        c.entries
            .iter()
            .find(|e| ical::cal_address(e).as_deref() == Some(who))
            .unwrap(),
    )
}

#[test]
fn reply_updates_only_that_attendee_and_older_replies_change_nothing() {
    let o = organized_by_me();
    let d = run(
        Some(&o),
        "REPLY",
        &reply("erin@example.com", "ACCEPTED", 1, "20261121T100000Z", None),
        true,
    );
    assert_eq!(d.effect, Effect::PartstatUpdated);
    assert_eq!(d.role, Role::Organizer);
    let o2 = d.object.unwrap();
    assert_eq!(
        partstat_of(&o2, None, "mailto:erin@example.com"),
        "ACCEPTED"
    );
    // An older reply (earlier DTSTAMP) arriving late changes nothing.
    let d = run(
        Some(&o2),
        "REPLY",
        &reply("erin@example.com", "DECLINED", 1, "20261120T200000Z", None),
        true,
    );
    assert_eq!(d.effect, Effect::Stale);
    // A reply to an older SEQUENCE changes nothing either.
    let d = run(
        Some(&o2),
        "REPLY",
        &reply("erin@example.com", "DECLINED", 0, "20261122T100000Z", None),
        true,
    );
    assert_eq!(d.effect, Effect::Stale);
    // A newer one does.
    let d = run(
        Some(&o2),
        "REPLY",
        &reply("erin@example.com", "DECLINED", 1, "20261122T100000Z", None),
        true,
    );
    assert_eq!(
        partstat_of(d.object.as_ref().unwrap(), None, "mailto:erin@example.com"),
        "DECLINED"
    );
}

#[test]
fn reply_for_one_instance_creates_the_override() {
    let o = organized_by_me();
    let d = run(
        Some(&o),
        "REPLY",
        &reply(
            "erin@example.com",
            "DECLINED",
            1,
            "20261121T100000Z",
            Some("20261203T100000Z"),
        ),
        true,
    );
    assert_eq!(d.effect, Effect::PartstatUpdated);
    let o2 = d.object.unwrap();
    assert_eq!(
        partstat_of(&o2, Some("20261203T100000Z"), "mailto:erin@example.com"),
        "DECLINED"
    );
    assert_eq!(
        partstat_of(&o2, None, "mailto:erin@example.com"),
        "NEEDS-ACTION"
    );
    let over = find(&o2, Some("20261203T100000Z")).unwrap();
    assert_eq!(
        over.prop(&P::Dtend).and_then(ical::date_string).as_deref(),
        Some("20261203T110000Z")
    );
    assert!(over.prop(&P::Rrule).is_none());
}

#[test]
fn party_crasher_and_spoofed_reply_are_refused() {
    let o = organized_by_me();
    let d = run(
        Some(&o),
        "REPLY",
        &reply(
            "mallory@evil.example",
            "ACCEPTED",
            1,
            "20261121T100000Z",
            None,
        ),
        true,
    );
    assert_eq!(d.effect, Effect::Refused);
    assert!(d.reason.contains("party crasher"), "{}", d.reason);
    let d = run(
        Some(&o),
        "REPLY",
        &reply("erin@example.com", "ACCEPTED", 1, "20261121T100000Z", None),
        false,
    );
    assert_eq!(d.effect, Effect::Refused);
}

#[test]
fn reply_for_an_event_i_do_not_organize_is_ignored() {
    let v1 = filed();
    let body = reply("carol@example.com", "ACCEPTED", 0, "20261121T100000Z", None).replace(
        "ORGANIZER:mailto:bob@example.com",
        "ORGANIZER:mailto:alice@example.com",
    );
    assert_eq!(run(Some(&v1), "REPLY", &body, true).effect, Effect::Ignored);
    assert_eq!(run(None, "REPLY", &body, true).effect, Effect::Ignored);
}

#[test]
fn counter_and_refresh_are_recorded_for_attendees_only() {
    let o = organized_by_me();
    let counter = reply(
        "erin@example.com",
        "NEEDS-ACTION",
        1,
        "20261121T100000Z",
        None,
    );
    assert_eq!(
        run(Some(&o), "COUNTER", &counter, true).effect,
        Effect::Recorded
    );
    assert_eq!(
        run(Some(&o), "REFRESH", &counter, true).effect,
        Effect::Recorded
    );
    let stranger = reply(
        "zed@example.com",
        "NEEDS-ACTION",
        1,
        "20261121T100000Z",
        None,
    );
    assert_eq!(
        run(Some(&o), "REFRESH", &stranger, true).effect,
        Effect::Refused
    );
}

#[test]
fn my_own_request_is_filed_as_organizer_without_invitation() {
    let body = "BEGIN:VEVENT\r\nUID:u9\r\nORGANIZER:mailto:bob@example.com\r\nATTENDEE:mailto:bob@example.com\r\n\
        ATTENDEE:mailto:erin@example.com\r\nDTSTART:20261201T100000Z\r\nDTSTAMP:20261120T100000Z\r\nEND:VEVENT\r\n";
    let d = run(None, "REQUEST", body, true);
    assert_eq!(d.effect, Effect::Created);
    assert_eq!(d.role, Role::Organizer);
    assert!(d.invitation.is_none());
}

#[test]
fn add_adds_an_instance() {
    let v1 = filed();
    let d = run(Some(&v1), "ADD", &event("DTSTART:20261224T100000Z\r\nDTEND:20261224T110000Z\r\nSEQUENCE:1\r\nDTSTAMP:20261121T100000Z\r\n"), true);
    assert_eq!(d.effect, Effect::Updated);
    let o = d.object.unwrap();
    assert!(find(&o, Some("20261224T100000Z")).is_some());
    assert!(master_of(&o).prop(&P::Rdate).is_some());
    assert_eq!(
        run(
            Some(&o),
            "ADD",
            &event("DTSTART:20261224T100000Z\r\nSEQUENCE:1\r\nDTSTAMP:20261121T100000Z\r\n"),
            true
        )
        .effect,
        Effect::Unchanged
    );
}

#[test]
fn an_organizer_method_without_organizer_is_refused() {
    let v1 = run(None, "REQUEST", &series(0, "20261120T100000Z", ""), true)
        .object
        .unwrap();
    let body = event("SEQUENCE:5\r\nDTSTAMP:20261122T100000Z\r\n")
        .replace("ORGANIZER:mailto:alice@example.com\r\n", "");
    let d = run(Some(&v1), "CANCEL", &body, true);
    assert_eq!(d.effect, Effect::Refused);
    assert!(d.reason.contains("no ORGANIZER"), "{}", d.reason);
}
