//! iTIP as the reference servers do it (issue 9), each scenario written from
//! RFC 5545/5546 through `imipd process`: instances compared as instants,
//! overrides imipd derives, answers that cover every component asking me,
//! REPLYs per component and per sender, delegation, real changes, held
//! CANCELs, failed writes, invitations for the past, forwarded invitations,
//! REFRESH answers and folded UTF-8.

use std::path::Path;

use serde_json::Value;

use crate::support::*;

const ALICE: &str = "Alice <alice@example.com>";

/// Accepts every invitation; replies land in `outbox/`.
const ACCEPT: &str = "[outgoing]\ntransport = \"file\"\npath = \"outbox\"\n\
    [[policy]]\nname = \"yes\"\nmethods = [\"REQUEST\", \"ADD\"]\naction = \"accept\"\n";

/// Alice's weekly meeting in Berlin from Tuesday 5 January 2027, 10:00–11:00
/// (09:00–10:00 UTC in winter), inviting Bob.
fn series(uid: &str, seq: u32, stamp: &str, extra: &[&str]) -> String {
    let mut lines = vec![
        format!("UID:{uid}"),
        format!("SEQUENCE:{seq}"),
        format!("DTSTAMP:{stamp}"),
        "DTSTART;TZID=Europe/Berlin:20270105T100000".to_string(),
        "DTEND;TZID=Europe/Berlin:20270105T110000".to_string(),
        "RRULE:FREQ=WEEKLY;COUNT=10".to_string(),
        "SUMMARY:Weekly".to_string(),
        "ORGANIZER;CN=Alice:mailto:alice@example.com".to_string(),
        "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.com".to_string(),
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:alice@example.com".to_string(),
    ];
    lines.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    vevent(&refs)
}

/// One instance of Alice's series (an override), named by `rid_line`.
fn instance(
    uid: &str,
    rid_line: &str,
    seq: u32,
    stamp: &str,
    start: &str,
    summary: &str,
) -> String {
    vevent(&[
        &format!("UID:{uid}"),
        rid_line,
        &format!("SEQUENCE:{seq}"),
        &format!("DTSTAMP:{stamp}"),
        &format!("DTSTART:{start}"),
        "DURATION:PT1H",
        &format!("SUMMARY:{summary}"),
        "ORGANIZER;CN=Alice:mailto:alice@example.com",
        "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.com",
    ])
}

fn stored_vevents(env: &Env, uid: &str) -> Vec<String> {
    vevents_in(&stored(env, uid).unwrap_or_default())
}

fn count_lines(text: &str, prefix: &str) -> usize {
    unfold(text)
        .lines()
        .filter(|l| l.starts_with(prefix))
        .count()
}

/// RFC 5545 §3.8.4.4, RFC 5546 §2.1.5: an instance is named by its original
/// start, however that instant is written; one instance, one component.
#[test]
fn instances_are_instants_not_text() {
    let env = Env::new(ACCEPT);
    let uid = "weekly-1@example.com";
    let o = env.one(&mail(
        ALICE,
        "REQUEST",
        &[series(uid, 0, "20261120T100000Z", &[])],
    ));
    assert_eq!(first(&o)["effect"], "created", "{o}");
    // The 19 January instance, named in UTC, then in Berlin time, then with
    // the Windows name of the same zone: always the same instance.
    for (rid, seq, summary) in [
        ("RECURRENCE-ID:20270119T090000Z", 1, "Moved once"),
        (
            "RECURRENCE-ID;TZID=Europe/Berlin:20270119T100000",
            2,
            "Moved twice",
        ),
        (
            "RECURRENCE-ID;TZID=\"W. Europe Standard Time\":20270119T100000",
            3,
            "Moved thrice",
        ),
    ] {
        let o = env.one(&mail(
            ALICE,
            "REQUEST",
            &[instance(
                uid,
                rid,
                seq,
                &format!("2026112{seq}T100000Z"),
                "20270119T130000Z",
                summary,
            )],
        ));
        assert_eq!(first(&o)["effect"], "updated", "{rid}: {o}");
        let v = stored_vevents(&env, uid);
        assert_eq!(v.len(), 2, "{rid}: one master, one override: {v:#?}");
        assert!(v[1].contains(&format!("SUMMARY:{summary}")), "{v:#?}");
    }
    // The same instance re-sent at the same version, written in UTC: already
    // answered (the answered ledger compares instants too).
    let o = env.one(&mail(
        ALICE,
        "REQUEST",
        &[instance(
            uid,
            "RECURRENCE-ID:20270119T090000Z",
            3,
            "20261123T100000Z",
            "20270119T130000Z",
            "Moved thrice",
        )],
    ));
    assert_eq!(first(&o)["effect"], "unchanged", "{o}");
    assert!(reply_text(first(&o)).contains("already answered"), "{o}");
    assert_eq!(env.sent_in("outbox").len(), 4, "one answer per version");
    // CANCEL of the 26 January instance in Berlin time, then in UTC: one EXDATE.
    let cancel = |rid: &str, stamp: &str| {
        mail(
            ALICE,
            "CANCEL",
            &[vevent(&[
                &format!("UID:{uid}"),
                rid,
                "SEQUENCE:4",
                &format!("DTSTAMP:{stamp}"),
                "ORGANIZER:mailto:alice@example.com",
                "ATTENDEE:mailto:bob@example.com",
            ])],
        )
    };
    let o = env.one(&cancel(
        "RECURRENCE-ID;TZID=Europe/Berlin:20270126T100000",
        "20261124T100000Z",
    ));
    assert_eq!(first(&o)["effect"], "cancelled", "{o}");
    let o = env.one(&cancel(
        "RECURRENCE-ID:20270126T090000Z",
        "20261124T100000Z",
    ));
    assert_eq!(first(&o)["effect"], "unchanged", "{o}");
    let text = stored(&env, uid).unwrap();
    assert_eq!(count_lines(&text, "EXDATE"), 1, "{text}");
    // Invited to that instance again (Windows zone name): the EXDATE goes.
    let o = env.one(&mail(
        ALICE,
        "REQUEST",
        &[instance(
            uid,
            "RECURRENCE-ID;TZID=\"W. Europe Standard Time\":20270126T100000",
            5,
            "20261125T100000Z",
            "20270126T090000Z",
            "Back again",
        )],
    ));
    assert_eq!(first(&o)["effect"], "updated", "{o}");
    let text = stored(&env, uid).unwrap();
    assert_eq!(count_lines(&text, "EXDATE"), 0, "{text}");
}

/// DATE instances of an all-day series match DATE values (RFC 5545 §3.8.4.4).
#[test]
fn all_day_instances_are_days() {
    let env = Env::new("");
    let uid = "allday-1@example.com";
    let master = vevent(&[
        &format!("UID:{uid}"),
        "SEQUENCE:0",
        "DTSTAMP:20261120T100000Z",
        "DTSTART;VALUE=DATE:20270105",
        "DTEND;VALUE=DATE:20270106",
        "RRULE:FREQ=WEEKLY;COUNT=5",
        "SUMMARY:Office day",
        "ORGANIZER:mailto:alice@example.com",
        "ATTENDEE:mailto:bob@example.com",
    ]);
    env.one(&mail(ALICE, "REQUEST", &[master]));
    let day = |rid: &str, seq: u32, summary: &str| {
        mail(
            ALICE,
            "REQUEST",
            &[vevent(&[
                &format!("UID:{uid}"),
                rid,
                &format!("SEQUENCE:{seq}"),
                &format!("DTSTAMP:2026112{seq}T100000Z"),
                "DTSTART;VALUE=DATE:20270113",
                &format!("SUMMARY:{summary}"),
                "ORGANIZER:mailto:alice@example.com",
                "ATTENDEE:mailto:bob@example.com",
            ])],
        )
    };
    assert_eq!(
        first(&env.one(&day("RECURRENCE-ID;VALUE=DATE:20270112", 1, "Moved")))["effect"],
        "updated"
    );
    // Outlook names all-day instances by a midnight DATE-TIME: the same day.
    assert_eq!(
        first(&env.one(&day(
            "RECURRENCE-ID;TZID=Europe/Berlin:20270112T000000",
            2,
            "Moved again"
        )))["effect"],
        "updated"
    );
    let v = stored_vevents(&env, uid);
    assert_eq!(v.len(), 2, "{v:#?}");
    let cancel = mail(
        ALICE,
        "CANCEL",
        &[vevent(&[
            &format!("UID:{uid}"),
            "RECURRENCE-ID:20270119T000000Z",
            "SEQUENCE:3",
            "DTSTAMP:20261124T100000Z",
            "ORGANIZER:mailto:alice@example.com",
            "ATTENDEE:mailto:bob@example.com",
        ])],
    );
    assert_eq!(first(&env.one(&cancel))["effect"], "cancelled");
    let text = unfold(&stored(&env, uid).unwrap());
    assert!(text.contains("EXDATE;VALUE=DATE:20270119"), "{text}");
}

/// Bob organizes a weekly meeting in Berlin and invites Erin.
fn bobs_series(uid: &str) -> String {
    mail(
        "bob@example.com",
        "REQUEST",
        &[vevent(&[
            &format!("UID:{uid}"),
            "SEQUENCE:0",
            "DTSTAMP:20261120T100000Z",
            "DTSTART;TZID=Europe/Berlin:20270105T100000",
            "DTEND;TZID=Europe/Berlin:20270105T110000",
            "RRULE:FREQ=WEEKLY;COUNT=10",
            "SUMMARY:Bob's weekly",
            "ORGANIZER:mailto:bob@example.com",
            "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:erin@example.com",
            "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:carol@example.com",
        ])],
    )
}

fn reply_from(who: &str, uid: &str, stamp: &str, comps: &[(&str, Option<&str>)]) -> String {
    let vevents: Vec<String> = comps
        .iter()
        .map(|(partstat, rid)| {
            let mut lines = vec![
                format!("UID:{uid}"),
                "SEQUENCE:0".to_string(),
                format!("DTSTAMP:{stamp}"),
                "ORGANIZER:mailto:bob@example.com".to_string(),
                format!("ATTENDEE;PARTSTAT={partstat}:mailto:{who}"),
            ];
            if let Some(r) = rid {
                lines.push(r.to_string());
            }
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            vevent(&refs)
        })
        .collect();
    mail(who, "REPLY", &vevents)
}

/// The PARTSTAT of an attendee in one stored VEVENT.
fn partstat_in(vevent: &str, who: &str) -> String {
    vevent
        .lines()
        .find(|l| {
            l.starts_with("ATTENDEE") && l.to_lowercase().ends_with(&format!(":mailto:{who}"))
        })
        .and_then(|l| l.split(';').find_map(|p| p.strip_prefix("PARTSTAT=")))
        .map(|p| p.split([':', ';']).next().unwrap_or("").to_string())
        .unwrap_or_else(|| "NEEDS-ACTION".to_string())
}

/// RFC 5545 §3.8.5.3: an override imipd derives for a REPLY to an instance
/// starts at the instance's start, written as the master's DTSTART is, and
/// lasts as long as the master.
#[test]
fn a_derived_override_starts_at_the_instance_in_the_master_zone() {
    let env = Env::new("");
    let uid = "bobs-weekly@example.com";
    env.one(&bobs_series(uid));
    let o = env.one(&reply_from(
        "erin@example.com",
        uid,
        "20261121T100000Z",
        &[("DECLINED", Some("RECURRENCE-ID:20270119T090000Z"))],
    ));
    assert_eq!(first(&o)["effect"], "partstat-updated", "{o}");
    let v = stored_vevents(&env, uid);
    assert_eq!(v.len(), 2, "{v:#?}");
    let over = &v[1];
    assert!(
        over.contains("RECURRENCE-ID;TZID=Europe/Berlin:20270119T100000"),
        "{over}"
    );
    assert!(
        over.contains("DTSTART;TZID=Europe/Berlin:20270119T100000"),
        "{over}"
    );
    assert!(
        over.contains("DTEND;TZID=Europe/Berlin:20270119T110000"),
        "{over}"
    );
    assert!(!over.contains("RRULE"), "{over}");
    assert_eq!(partstat_in(over, "erin@example.com"), "DECLINED");
    assert_eq!(partstat_in(&v[0], "erin@example.com"), "NEEDS-ACTION");
    // The same instance named in Berlin time: the same override.
    let o = env.one(&reply_from(
        "erin@example.com",
        uid,
        "20261122T100000Z",
        &[(
            "ACCEPTED",
            Some("RECURRENCE-ID;TZID=Europe/Berlin:20270119T100000"),
        )],
    ));
    assert_eq!(first(&o)["effect"], "partstat-updated", "{o}");
    let v = stored_vevents(&env, uid);
    assert_eq!(v.len(), 2, "{v:#?}");
    assert_eq!(partstat_in(&v[1], "erin@example.com"), "ACCEPTED");
}

/// RFC 5546 §3.2.3 (VEVENT 1+): one REPLY answers every component that asks
/// me, each with its own RECURRENCE-ID and SEQUENCE; an answer to a later
/// instance-only update covers that instance alone.
#[test]
fn one_reply_answers_every_component_that_asks_me() {
    let env = Env::new(
        "[outgoing]\ntransport = \"file\"\npath = \"outbox\"\n\
         [[policy]]\nname = \"single\"\nmethods = [\"REQUEST\"]\nrecurring = false\naction = \"decline\"\n\
         [[policy]]\nname = \"series\"\nmethods = [\"REQUEST\"]\naction = \"accept\"\n",
    );
    let uid = "multi-1@example.com";
    let o = env.one(&mail(
        ALICE,
        "REQUEST",
        &[
            series(uid, 0, "20261120T100000Z", &[]),
            instance(
                uid,
                "RECURRENCE-ID;TZID=Europe/Berlin:20270119T100000",
                1,
                "20261120T100000Z",
                "20270119T130000Z",
                "Moved",
            ),
        ],
    ));
    assert!(reply_text(first(&o)).starts_with("queued"), "{o}");
    let sent = env.sent_in("outbox");
    assert_eq!(sent.len(), 1);
    let v = calendar_vevents(&sent[0]);
    assert_eq!(v.len(), 2, "the master and the moved instance: {v:#?}");
    assert!(
        !v[0].contains("RECURRENCE-ID") && v[0].contains("SEQUENCE:0"),
        "{v:#?}"
    );
    assert!(
        v[1].contains("RECURRENCE-ID;TZID=Europe/Berlin:20270119T100000")
            && v[1].contains("SEQUENCE:1"),
        "{v:#?}"
    );
    assert!(v.iter().all(|c| c.contains("PARTSTAT=ACCEPTED")), "{v:#?}");
    // A later update of that instance alone, declined by policy: the REPLY
    // carries that instance only.
    let o = env.one(&mail(
        ALICE,
        "REQUEST",
        &[instance(
            uid,
            "RECURRENCE-ID:20270119T090000Z",
            2,
            "20261121T100000Z",
            "20270119T140000Z",
            "Moved again",
        )],
    ));
    assert_eq!(first(&o)["policy"], "single", "{o}");
    let sent = env.sent_in("outbox");
    assert_eq!(sent.len(), 2);
    let v = calendar_vevents(&sent[1]);
    assert_eq!(v.len(), 1, "{v:#?}");
    assert!(
        v[0].contains("RECURRENCE-ID") && v[0].contains("PARTSTAT=DECLINED"),
        "{v:#?}"
    );
    // My copy says what I answered, per instance.
    let stored = stored_vevents(&env, uid);
    assert_eq!(partstat_in(&stored[0], "bob@example.com"), "ACCEPTED");
    assert_eq!(partstat_in(&stored[1], "bob@example.com"), "DECLINED");
}

/// RFC 5546 §3.2.3: a REPLY with several components applies each to its own
/// instance, whatever their order.
#[test]
fn a_reply_applies_each_component_to_its_instance_in_any_order() {
    for master_first in [true, false] {
        let env = Env::new("");
        let uid = "bobs-weekly@example.com";
        env.one(&bobs_series(uid));
        let mut comps = vec![
            ("ACCEPTED", None),
            ("DECLINED", Some("RECURRENCE-ID:20270112T090000Z")),
        ];
        if !master_first {
            comps.reverse();
        }
        let o = env.one(&reply_from(
            "erin@example.com",
            uid,
            "20261121T100000Z",
            &comps,
        ));
        assert_eq!(first(&o)["effect"], "partstat-updated", "{o}");
        let v = stored_vevents(&env, uid);
        assert_eq!(v.len(), 2, "{v:#?}");
        let master = v.iter().find(|c| !c.contains("RECURRENCE-ID")).unwrap();
        let over = v.iter().find(|c| c.contains("RECURRENCE-ID")).unwrap();
        assert_eq!(
            partstat_in(master, "erin@example.com"),
            "ACCEPTED",
            "{master_first}"
        );
        assert_eq!(
            partstat_in(over, "erin@example.com"),
            "DECLINED",
            "{master_first}"
        );
    }
}

/// RFC 5546 §3.2.3, §6.1: a REPLY changes only the attendee who sent it. A
/// mail from Erin that lists Carol as DECLINED must not touch Carol.
#[test]
fn a_reply_naming_others_changes_only_its_sender() {
    let env = Env::new("");
    let uid = "bobs-weekly@example.com";
    env.one(&bobs_series(uid));
    let forged = mail(
        "erin@example.com",
        "REPLY",
        &[vevent(&[
            &format!("UID:{uid}"),
            "SEQUENCE:0",
            "DTSTAMP:20261121T100000Z",
            "ORGANIZER:mailto:bob@example.com",
            "ATTENDEE;PARTSTAT=DECLINED:mailto:carol@example.com",
            "ATTENDEE;PARTSTAT=ACCEPTED:mailto:erin@example.com",
        ])],
    );
    let o = env.one(&forged);
    assert_eq!(first(&o)["effect"], "partstat-updated", "{o}");
    assert_eq!(
        first(&o)["originator"]["address"],
        "mailto:erin@example.com",
        "{o}"
    );
    let v = stored_vevents(&env, uid);
    assert_eq!(
        partstat_in(&v[0], "carol@example.com"),
        "NEEDS-ACTION",
        "{v:#?}"
    );
    assert_eq!(partstat_in(&v[0], "erin@example.com"), "ACCEPTED", "{v:#?}");
}

/// RFC 5546 §3.2.2.3, §4.2.5–4.2.6, §5.2.2: delegation as organizer.
#[test]
fn delegation_as_organizer() {
    let env = Env::new("");
    let uid = "bobs-weekly@example.com";
    env.one(&bobs_series(uid));
    // The delegate answers before its delegator: kept until the delegator says so.
    let delegate_reply = mail(
        "dan@example.com",
        "REPLY",
        &[vevent(&[
            &format!("UID:{uid}"),
            "SEQUENCE:0",
            "DTSTAMP:20261122T100000Z",
            "ORGANIZER:mailto:bob@example.com",
            "ATTENDEE;PARTSTAT=ACCEPTED;DELEGATED-FROM=\"mailto:carol@example.com\":mailto:dan@example.com",
            "ATTENDEE;PARTSTAT=DELEGATED;DELEGATED-TO=\"mailto:dan@example.com\":mailto:carol@example.com",
        ])],
    );
    let o = env.one(&delegate_reply);
    assert_eq!(first(&o)["effect"], "held", "{o}");
    assert!(!stored(&env, uid).unwrap().contains("dan@example.com"));
    // Carol delegates to Dan (§4.2.5): her PARTSTAT is DELEGATED with
    // DELEGATED-TO, and Dan joins with DELEGATED-FROM — and his held answer
    // is applied.
    let delegation = mail(
        "carol@example.com",
        "REPLY",
        &[vevent(&[
            &format!("UID:{uid}"),
            "SEQUENCE:0",
            "DTSTAMP:20261121T100000Z",
            "ORGANIZER:mailto:bob@example.com",
            "ATTENDEE;PARTSTAT=DELEGATED;DELEGATED-TO=\"mailto:dan@example.com\":mailto:carol@example.com",
            "ATTENDEE;DELEGATED-FROM=\"mailto:carol@example.com\":mailto:dan@example.com",
        ])],
    );
    let o = env.one(&delegation);
    assert_eq!(first(&o)["effect"], "partstat-updated", "{o}");
    let text = unfold(&stored(&env, uid).unwrap());
    let carol = text
        .lines()
        .find(|l| l.ends_with("mailto:carol@example.com"))
        .unwrap();
    assert!(
        carol.contains("PARTSTAT=DELEGATED") && carol.contains("DELEGATED-TO="),
        "{carol}"
    );
    let dan = text
        .lines()
        .find(|l| l.ends_with("mailto:dan@example.com"))
        .unwrap_or_else(|| panic!("the delegate joined: {text}"));
    assert!(dan.contains("DELEGATED-FROM="), "{dan}");
    assert!(
        dan.contains("PARTSTAT=ACCEPTED"),
        "the held answer applied: {dan}"
    );
    assert!(
        std::fs::read_dir(env.path("state/held")).map_or(true, |mut d| d.next().is_none()),
        "the held REPLY is gone"
    );
    // The delegate's later answer is accepted like any attendee's.
    let o = env.one(&reply_from(
        "dan@example.com",
        uid,
        "20261123T100000Z",
        &[("TENTATIVE", None)],
    ));
    assert_eq!(first(&o)["effect"], "partstat-updated", "{o}");
    // Nobody else may claim to be a delegate.
    let o = env.one(&reply_from(
        "mallory@evil.example",
        uid,
        "20261123T100000Z",
        &[("ACCEPTED", None)],
    ));
    assert_eq!(first(&o)["effect"], "refused", "{o}");
}

/// RFC 5546 §3.2.2.3: as delegate, a REQUEST the delegator forwards is filed
/// (and answerable) when it shows the delegation both ways; updates still
/// come from the organizer alone.
#[test]
fn delegation_as_delegate() {
    let env = Env::new(ACCEPT);
    let uid = "carols-meeting@example.com";
    let forwarded = mail(
        "carol@example.com",
        "REQUEST",
        &[vevent(&[
            &format!("UID:{uid}"),
            "SEQUENCE:0",
            "DTSTAMP:20261120T100000Z",
            "DTSTART:20270105T090000Z",
            "DTEND:20270105T100000Z",
            "SUMMARY:Planning",
            "ORGANIZER:mailto:alice@example.com",
            "ATTENDEE;PARTSTAT=DELEGATED;DELEGATED-TO=\"mailto:bob@example.com\":mailto:carol@example.com",
            "ATTENDEE;RSVP=TRUE;DELEGATED-FROM=\"mailto:carol@example.com\":mailto:bob@example.com",
        ])],
    );
    let o = env.one(&forwarded);
    assert_eq!(first(&o)["effect"], "created", "{o}");
    assert!(
        first(&o)["reason"].as_str().unwrap().contains("delegated"),
        "{o}"
    );
    assert!(
        reply_text(first(&o)).starts_with("queued to alice@example.com"),
        "{o}"
    );
    // Carol cannot update it: only the organizer can.
    let update = forwarded
        .replace("SEQUENCE:0", "SEQUENCE:1")
        .replace("SUMMARY:Planning", "SUMMARY:Changed by Carol");
    let o = env.one(&update);
    assert_eq!(first(&o)["effect"], "refused", "{o}");
    // A forward without the delegation is filed but never answered.
    let env = Env::new(ACCEPT);
    let o = env.one(&forwarded.replace(
        "ATTENDEE;RSVP=TRUE;DELEGATED-FROM=\"mailto:carol@example.com\":mailto:bob@example.com",
        "ATTENDEE;RSVP=TRUE:mailto:bob@example.com",
    ));
    assert_eq!(first(&o)["effect"], "created", "{o}");
    assert!(reply_text(first(&o)).starts_with("not sent"), "{o}");
    assert!(env.sent_in("outbox").is_empty());
}

/// Carol delegates one instance of a series to me: the forwarded master
/// does not name me, the instance does, both ways. It is a delegation all
/// the same, answered for that instance.
#[test]
fn delegation_of_one_instance() {
    let env = Env::new(ACCEPT);
    let uid = "carols-series@example.com";
    let master = vevent(&[
        &format!("UID:{uid}"),
        "SEQUENCE:0",
        "DTSTAMP:20261120T100000Z",
        "DTSTART:20270105T090000Z",
        "DTEND:20270105T100000Z",
        "RRULE:FREQ=WEEKLY;COUNT=4",
        "SUMMARY:Series",
        "ORGANIZER:mailto:alice@example.com",
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:carol@example.com",
    ]);
    let delegated = vevent(&[
        &format!("UID:{uid}"),
        "RECURRENCE-ID:20270112T090000Z",
        "SEQUENCE:0",
        "DTSTAMP:20261120T100000Z",
        "DTSTART:20270112T090000Z",
        "DTEND:20270112T100000Z",
        "SUMMARY:Series",
        "ORGANIZER:mailto:alice@example.com",
        "ATTENDEE;PARTSTAT=DELEGATED;DELEGATED-TO=\"mailto:bob@example.com\":mailto:carol@example.com",
        "ATTENDEE;RSVP=TRUE;DELEGATED-FROM=\"mailto:carol@example.com\":mailto:bob@example.com",
    ]);
    let o = env.one(&mail("carol@example.com", "REQUEST", &[master, delegated]));
    assert_eq!(first(&o)["effect"], "created", "{o}");
    assert!(
        first(&o)["reason"].as_str().unwrap().contains("delegated"),
        "{o}"
    );
    assert!(
        reply_text(first(&o)).starts_with("queued to alice@example.com"),
        "{o}"
    );
    let sent = env.sent_in("outbox");
    assert_eq!(sent.len(), 1);
    assert!(
        unfold(&sent[0]).contains("RECURRENCE-ID:20270112T090000Z"),
        "{}",
        sent[0]
    );
}

/// RFC 5546 §4.2.6: as delegator, the delegate's copy of its REPLY updates
/// the delegate's PARTSTAT in my copy.
#[test]
fn delegation_as_delegator() {
    let env = Env::new("");
    let uid = "alices-meeting@example.com";
    let delegated = vevent(&[
        &format!("UID:{uid}"),
        "SEQUENCE:0",
        "DTSTAMP:20261120T100000Z",
        "DTSTART:20270105T090000Z",
        "DTEND:20270105T100000Z",
        "SUMMARY:Planning",
        "ORGANIZER:mailto:alice@example.com",
        "ATTENDEE;PARTSTAT=DELEGATED;DELEGATED-TO=\"mailto:dan@example.com\":mailto:bob@example.com",
        "ATTENDEE;DELEGATED-FROM=\"mailto:bob@example.com\":mailto:dan@example.com",
    ]);
    env.one(&mail(ALICE, "REQUEST", &[delegated]));
    let copy = mail(
        "dan@example.com",
        "REPLY",
        &[vevent(&[
            &format!("UID:{uid}"),
            "SEQUENCE:0",
            "DTSTAMP:20261121T100000Z",
            "ORGANIZER:mailto:alice@example.com",
            "ATTENDEE;PARTSTAT=ACCEPTED;DELEGATED-FROM=\"mailto:bob@example.com\":mailto:dan@example.com",
        ])],
    );
    let o = env.one(&copy);
    assert_eq!(first(&o)["effect"], "partstat-updated", "{o}");
    let v = stored_vevents(&env, uid);
    assert_eq!(partstat_in(&v[0], "dan@example.com"), "ACCEPTED", "{v:#?}");
    // Someone I did not delegate to changes nothing.
    let o = env.one(&copy.replace("dan@example.com", "eve@example.com"));
    assert_ne!(first(&o)["effect"], "partstat-updated", "{o}");
}

/// RFC 5546 §2.1.4: SEQUENCE alone is not to be relied on. An update that
/// moves the event puts my answer back to NEEDS-ACTION and is answered anew.
#[test]
fn a_moved_event_is_asked_again_even_at_the_same_sequence() {
    let env = Env::new(ACCEPT);
    let uid = "moved-1@example.com";
    env.one(&mail(
        ALICE,
        "REQUEST",
        &[series(uid, 0, "20261120T100000Z", &[])],
    ));
    assert_eq!(env.sent_in("outbox").len(), 1);
    // Re-sent unchanged but later: my answer stays, nothing is sent.
    env.one(&mail(
        ALICE,
        "REQUEST",
        &[series(uid, 0, "20261121T100000Z", &[])],
    ));
    assert_eq!(env.sent_in("outbox").len(), 1);
    assert_eq!(
        partstat_in(&stored_vevents(&env, uid)[0], "bob@example.com"),
        "ACCEPTED"
    );
    // Moved by an hour, SEQUENCE still 0: asked again, answered again.
    let moved = series(uid, 0, "20261122T100000Z", &[])
        .replace("20270105T100000", "20270105T110000")
        .replace("20270105T110000\r\nRRULE", "20270105T120000\r\nRRULE");
    let o = env.one(&mail(ALICE, "REQUEST", &[moved]));
    assert_eq!(first(&o)["effect"], "updated", "{o}");
    assert!(reply_text(first(&o)).starts_with("queued"), "{o}");
    assert_eq!(env.sent_in("outbox").len(), 2);
    // A changed RRULE is a real change too.
    let without_policy = Env::new("");
    without_policy.one(&mail(
        ALICE,
        "REQUEST",
        &[series(uid, 0, "20261120T100000Z", &["X-NOTE:x"])],
    ));
    let accepted = stored(&without_policy, uid).unwrap().replace(
        "PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob",
        "PARTSTAT=ACCEPTED:mailto:bob",
    );
    std::fs::write(without_policy.store().join(format!("{uid}.ics")), accepted).unwrap();
    let rrule = series(uid, 0, "20261121T100000Z", &[]).replace("COUNT=10", "COUNT=12");
    without_policy.one(&mail(ALICE, "REQUEST", &[rrule]));
    assert_eq!(
        partstat_in(&stored_vevents(&without_policy, uid)[0], "bob@example.com"),
        "NEEDS-ACTION"
    );
}

/// RFC 5546 §5.2.1: a CANCEL that arrived before its REQUEST keeps its
/// effect until a message newer than it arrives — exactly as in delivery
/// order.
#[test]
fn a_held_instance_cancel_keeps_its_effect() {
    let uid = "held-1@example.com";
    let cancel = mail(
        ALICE,
        "CANCEL",
        &[vevent(&[
            &format!("UID:{uid}"),
            "RECURRENCE-ID;TZID=Europe/Berlin:20270119T100000",
            "SEQUENCE:2",
            "DTSTAMP:20261122T100000Z",
            "ORGANIZER:mailto:alice@example.com",
            "ATTENDEE:mailto:bob@example.com",
        ])],
    );
    let v0 = mail(ALICE, "REQUEST", &[series(uid, 0, "20261120T100000Z", &[])]);
    let v1 = mail(ALICE, "REQUEST", &[series(uid, 1, "20261121T100000Z", &[])]);
    let in_order = Env::new("");
    assert_eq!(
        in_order.effects(&[&v0, &v1, &cancel]),
        ["created", "updated", "cancelled"]
    );
    let out_of_order = Env::new("");
    assert_eq!(
        out_of_order.effects(&[&cancel, &v0, &v1]),
        ["held", "created", "updated"]
    );
    for env in [&in_order, &out_of_order] {
        let text = unfold(&stored(env, uid).unwrap());
        assert!(
            text.contains("EXDATE;TZID=Europe/Berlin:20270119T100000"),
            "{text}"
        );
    }
    // SEQUENCE 3 (the organizer invited again after cancelling) supersedes it.
    let v3 = mail(ALICE, "REQUEST", &[series(uid, 3, "20261123T100000Z", &[])]);
    out_of_order.effects(&[&v3]);
    assert!(!stored(&out_of_order, uid).unwrap().contains("EXDATE"));
}

/// Run `imipd` as the unprivileged user `nobody` (tests run as root, for
/// whom folder permissions stop nothing).
fn as_nobody(env: &Env, args: &[&str]) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_imipd"))
        .env("IMIPD_NOW", TEST_NOW)
        .args(args)
        .arg("--config")
        .arg(&env.config)
        .output()
        .expect("cannot run setpriv (util-linux)")
}

fn chown_tree(p: &Path) {
    std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            chown_tree(&e.path());
        }
    }
}

/// When the store cannot be written, the pass stops with exit status 1 and
/// that message and every later one stay unhandled: the REPLY after a
/// failed REQUEST must not be handled against a store that lacks it.
#[test]
fn a_failed_store_write_stops_the_pass() {
    let env = Env::new("[[account]]\nname = \"mail\"\nsource = \"maildir\"\npath = \"Maildir\"\n");
    let md = env.path("Maildir");
    for d in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(md.join(d)).unwrap();
    }
    let uid = "bobs-weekly@example.com";
    std::fs::write(md.join("new/1000.A.test"), bobs_series(uid)).unwrap();
    std::fs::write(
        md.join("new/1001.B.test"),
        reply_from(
            "erin@example.com",
            uid,
            "20261121T100000Z",
            &[("ACCEPTED", None)],
        ),
    )
    .unwrap();
    once_with_the_store_read_only_then_writable(&env, uid, || {
        assert!(
            std::fs::read_to_string(env.path("state/maildir/mail.done"))
                .unwrap_or_default()
                .is_empty(),
            "nothing is marked handled"
        );
    });
}

/// An invitation whose every occurrence has ended is filed, not answered.
#[test]
fn an_invitation_for_the_past_is_filed_not_answered() {
    let env = Env::new(ACCEPT);
    let past = series("past-1@example.com", 0, "20261120T100000Z", &[])
        .replace("20270105T", "20260105T")
        .replace("COUNT=10", "COUNT=3");
    let o = env.one(&mail(ALICE, "REQUEST", &[past]));
    assert_eq!(first(&o)["effect"], "created", "{o}");
    assert!(reply_text(first(&o)).contains("over"), "{o}");
    assert!(env.sent_in("outbox").is_empty());
    // A series that started long ago and goes on is answered.
    let ongoing = series("ongoing-1@example.com", 0, "20261120T100000Z", &[])
        .replace("20270105T", "20200107T")
        .replace(";COUNT=10", "");
    let o = env.one(&mail(ALICE, "REQUEST", &[ongoing]));
    assert!(reply_text(first(&o)).starts_with("queued"), "{o}");
}

/// RFC 5546 §3.2.6: the answer to a REFRESH carries only the components in
/// which the requester is an ATTENDEE.
#[test]
fn a_refresh_answer_carries_only_the_requesters_components() {
    let env = Env::new(
        "[authentication]\ntrusted_authserv_ids = [\"mx.example.com\"]\n\
         [outgoing]\ntransport = \"file\"\npath = \"outbox\"\n\
         [[policy]]\nname = \"refresh\"\nmethods = [\"REFRESH\"]\naction = \"accept\"\n",
    );
    let uid = "bobs-2@example.com";
    let own = "Authentication-Results: mx.example.com; dmarc=pass header.from=example.com\r\n"
        .to_string()
        + &mail(
            "bob@example.com",
            "REQUEST",
            &[
                vevent(&[
                    &format!("UID:{uid}"),
                    "SEQUENCE:0",
                    "DTSTAMP:20261120T100000Z",
                    "DTSTART:20270105T090000Z",
                    "DTEND:20270105T100000Z",
                    "RRULE:FREQ=WEEKLY;COUNT=4",
                    "SUMMARY:Series",
                    "ORGANIZER:mailto:bob@example.com",
                    "ATTENDEE:mailto:erin@example.com",
                ]),
                vevent(&[
                    &format!("UID:{uid}"),
                    "RECURRENCE-ID:20270112T090000Z",
                    "SEQUENCE:0",
                    "DTSTAMP:20261120T100000Z",
                    "DTSTART:20270112T090000Z",
                    "DTEND:20270112T100000Z",
                    "SUMMARY:Special",
                    "ORGANIZER:mailto:bob@example.com",
                    "ATTENDEE:mailto:erin@example.com",
                    "ATTENDEE:mailto:guest@example.com",
                ]),
            ],
        );
    env.one(&own);
    let refresh = mail(
        "guest@example.com",
        "REFRESH",
        &[vevent(&[
            &format!("UID:{uid}"),
            "DTSTAMP:20261122T100000Z",
            "ORGANIZER:mailto:bob@example.com",
            "ATTENDEE:mailto:guest@example.com",
        ])],
    );
    let o = env.one(&refresh);
    assert!(reply_text(first(&o)).starts_with("queued"), "{o}");
    let sent = env.sent_in("outbox");
    let v = calendar_vevents(&sent[0]);
    assert_eq!(
        v.len(),
        1,
        "the instance the guest is invited to, not the series: {v:#?}"
    );
    assert!(v[0].contains("SUMMARY:Special"), "{v:#?}");
}

/// RFC 5545 §3.1: unfold first, then decode. An 8bit calendar part whose
/// fold splits a multi-byte character yields the exact text.
#[test]
fn folded_utf8_in_an_8bit_part_is_exact() {
    let env = Env::new("");
    let mut raw = b"From: alice@example.com\r\nTo: bob@example.com\r\nMessage-ID: <u8@test>\r\n\
        MIME-Version: 1.0\r\nContent-Type: text/calendar; method=REQUEST; charset=UTF-8\r\n\
        Content-Transfer-Encoding: 8bit\r\n\r\nBEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\n\
        METHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:utf8-1@example.com\r\nDTSTAMP:20261120T100000Z\r\n\
        DTSTART:20270105T090000Z\r\nORGANIZER:mailto:alice@example.com\r\nATTENDEE:mailto:bob@example.com\r\n\
        SUMMARY:Caf"
        .to_vec();
    // "é" is C3 A9: the fold falls between its two bytes.
    raw.extend_from_slice(b"\xc3\r\n \xa9 cr\xc3\xa8me\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n");
    let p = env.path("u8.eml");
    std::fs::write(&p, &raw).unwrap();
    let (v, _) = env.process(&[&p]);
    let o: &Value = &v[0];
    assert_eq!(first(o)["summary"], "Café crème", "{o}");
    assert!(stored(&env, "utf8-1@example.com")
        .unwrap()
        .contains("SUMMARY:Café crème"));
}

/// The same through IMAP: the pass stops, nothing is marked, and the next
/// pass handles both messages.
#[test]
fn a_failed_store_write_stops_the_imap_pass() {
    use crate::chaos::imap_account;
    use crate::harness::dovecot::Dovecot;
    let user = ("bob@example.com", "bob-secret");
    let d = Dovecot::start(&[user]);
    let uid = "bobs-weekly@example.com";
    d.append(user.0, "INBOX", bobs_series(uid).as_bytes());
    d.append(
        user.0,
        "INBOX",
        reply_from(
            "erin@example.com",
            uid,
            "20261121T100000Z",
            &[("ACCEPTED", None)],
        )
        .as_bytes(),
    );
    let env = Env::new(&imap_account(&d, "mail", user, ""));
    once_with_the_store_read_only_then_writable(&env, uid, || {
        let flags = d.flags(user.0, "INBOX");
        assert!(
            flags
                .iter()
                .all(|f| !f.iter().any(|x| x == "$iMIPProcessed")),
            "nothing is marked: {flags:?}"
        );
    });
}

/// `once` as nobody with the store read-only: exit status 1, and
/// `unmarked` checks that nothing was marked handled; then with the store
/// writable again: both messages are handled and Erin's REPLY is on the
/// stored series.
fn once_with_the_store_read_only_then_writable(env: &Env, uid: &str, unmarked: impl Fn()) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(env.store()).unwrap();
    std::fs::create_dir_all(env.path("state")).unwrap();
    std::fs::set_permissions(env.dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    chown_tree(env.dir.path());
    std::fs::set_permissions(env.store(), PermissionsExt::from_mode(0o555)).unwrap();
    let out = as_nobody(env, &["once"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    unmarked();
    std::fs::set_permissions(env.store(), PermissionsExt::from_mode(0o755)).unwrap();
    let out = as_nobody(env, &["once"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = stored_vevents(env, uid);
    assert_eq!(partstat_in(&v[0], "erin@example.com"), "ACCEPTED", "{v:#?}");
}
