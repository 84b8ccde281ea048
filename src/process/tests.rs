//! The processor's own parts: plan then execute, the dry run, and the
//! small rules (mailing lists, RSVP=FALSE, who speaks).

use super::*;
use crate::mine::rsvp_false;

const CONFIG: &str = "[identity]\naddresses = [\"bob@example.com\"]\n\
    [store]\npath = \"calendar\"\n[state]\npath = \"state\"\n\
    [outgoing]\ntransport = \"file\"\npath = \"outbox\"\n\
    [[policy]]\nname = \"yes\"\nmethods = [\"REQUEST\"]\naction = \"accept\"\n";

fn config(dir: &std::path::Path) -> Arc<Config> {
    let path = dir.join("config.toml");
    std::fs::write(&path, CONFIG).unwrap();
    Arc::new(crate::config::load(&path).unwrap())
}

fn invitation(uid: &str) -> String {
    format!(
        "From: alice@example.com\r\nMessage-ID: <{uid}>\r\nContent-Type: text/calendar; method=REQUEST\r\n\r\n\
         BEGIN:VCALENDAR\r\nVERSION:2.0\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:{uid}\r\n\
         DTSTAMP:20261120T100000Z\r\nDTSTART:20270105T090000Z\r\nDTEND:20270105T100000Z\r\n\
         SUMMARY:Plan\r\nORGANIZER:mailto:alice@example.com\r\n\
         ATTENDEE;RSVP=TRUE:mailto:bob@example.com\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

#[test]
fn a_plan_writes_nothing_and_execute_writes_in_order() {
    let d = tempfile::tempdir().unwrap();
    let mut p = Processor::open(config(d.path()), false).unwrap();
    let raw = invitation("p1@x");
    let c = classify::classify(raw.as_bytes(), "p1", &p.cfg.limits);
    let plan = p.plan(&c, Origin::default(), now()).unwrap();
    assert_eq!(plan.writes.len(), 1);
    assert_eq!(plan.answers.len(), 1);
    assert!(plan.results[0]
        .reply
        .as_ref()
        .unwrap()
        .text
        .starts_with("queued"));
    // Deciding wrote nothing.
    assert!(p.store.get("p1@x").unwrap().is_none());
    assert!(p.outbox.pending().unwrap().is_empty());
    let written = p
        .execute(plan, &c, raw.as_bytes(), Origin::default(), now())
        .unwrap();
    assert_eq!(written.len(), 1);
    let stored = p.store.get("p1@x").unwrap().unwrap();
    // My answer is in my copy, and queued.
    let me = stored.children.iter().find(|c| c.is_scheduling()).unwrap();
    assert!(me.entries.iter().any(|e| ical::cal_address(e).as_deref()
        == Some("mailto:bob@example.com")
        && ical::partstat(e) == "ACCEPTED"));
    assert_eq!(p.outbox.pending().unwrap().len(), 1);
}

#[test]
fn a_dry_run_reports_the_plan_and_creates_nothing() {
    let d = tempfile::tempdir().unwrap();
    let mut p = Processor::open(config(d.path()), true).unwrap();
    let o = p.process(invitation("p2@x").as_bytes(), "p2");
    assert!(o.dry_run);
    assert_eq!(o.results[0].effect, Effect::Created);
    assert!(o.results[0]
        .reply
        .as_ref()
        .unwrap()
        .text
        .starts_with("would be queued"));
    assert!(o.results[0]
        .location
        .as_deref()
        .unwrap()
        .ends_with("p2@x.ics"));
    for sub in ["calendar", "state", "outbox"] {
        assert!(!d.path().join(sub).exists(), "{sub} was created");
    }
}

#[test]
fn the_same_message_twice_is_answered_once() {
    let d = tempfile::tempdir().unwrap();
    let mut p = Processor::open(config(d.path()), false).unwrap();
    let raw = invitation("p3@x");
    p.process(raw.as_bytes(), "a");
    let again = p.process(raw.as_bytes(), "b");
    assert_eq!(again.results[0].effect, Effect::Unchanged);
    assert!(again.results[0]
        .reply
        .as_ref()
        .unwrap()
        .text
        .contains("already answered"));
    assert_eq!(p.outbox.pending().unwrap().len(), 1);
}

#[test]
fn the_organizer_is_the_list_by_list_post_or_list_id() {
    let mut mail = Mail {
        list_post: vec!["team@lists.example.com".into()],
        ..Mail::default()
    };
    assert!(is_the_list(&mail, "mailto:Team@lists.example.com"));
    assert!(!is_the_list(&mail, "mailto:carol@example.com"));
    mail.list_post.clear();
    mail.list_id = Some("team.lists.example.com".into());
    assert!(is_the_list(&mail, "mailto:team@lists.example.com"));
    assert!(!is_the_list(&mail, "mailto:carol@example.com"));
}

#[test]
fn rsvp_false_is_read_for_my_attendee_only() {
    let root = ical::test_root(
        "BEGIN:VEVENT\r\nUID:u\r\nATTENDEE;RSVP=FALSE:mailto:bob@example.com\r\n\
         ATTENDEE;RSVP=TRUE:mailto:carol@example.com\r\nEND:VEVENT\r\n",
    );
    let c = &root.children[0];
    assert!(rsvp_false(c, "mailto:bob@example.com"));
    assert!(!rsvp_false(c, "mailto:carol@example.com"));
}

#[test]
fn the_speaker_of_a_reply_is_the_attendee_who_sent_it() {
    let root = ical::test_root(
        "BEGIN:VEVENT\r\nUID:u\r\nORGANIZER:mailto:bob@example.com\r\n\
         ATTENDEE;PARTSTAT=DECLINED:mailto:carol@example.com\r\n\
         ATTENDEE;PARTSTAT=ACCEPTED:mailto:erin@example.com\r\nEND:VEVENT\r\n",
    );
    let who = MailIdentity {
        from: vec!["erin@example.com".into()],
        single_from: Some("erin@example.com".into()),
        ..MailIdentity::default()
    };
    let o = speaker(Method::Reply, &root.children, &who, None).unwrap();
    assert_eq!(o.address, "mailto:erin@example.com");
    let stranger = MailIdentity {
        from: vec!["mallory@evil.example".into()],
        ..MailIdentity::default()
    };
    assert!(speaker(Method::Reply, &root.children, &stranger, None).is_err());
}
