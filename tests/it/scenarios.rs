//! Scenario tests: sequences of iMIP messages through `imipd process`, and the
//! store they must leave behind.

use crate::support::*;

const ALICE: &str = "Alice <alice@example.com>";

fn invite(seq: u32, stamp: &str, start: &str, summary: &str) -> String {
    mail(
        ALICE,
        "REQUEST",
        &[vevent(&[
            "UID:team-42@example.com",
            &format!("SEQUENCE:{seq}"),
            &format!("DTSTAMP:{stamp}"),
            &format!("DTSTART;TZID=Europe/Berlin:{start}"),
            "DURATION:PT1H",
            "RRULE:FREQ=WEEKLY;COUNT=8",
            &format!("SUMMARY:{summary}"),
            "ORGANIZER;CN=Alice:mailto:alice@example.com",
            "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.com",
            "ATTENDEE;PARTSTAT=ACCEPTED:mailto:alice@example.com",
        ])],
    )
}

fn cancel(from: &str, seq: u32, stamp: &str, rid: Option<&str>) -> String {
    let mut lines = vec![
        "UID:team-42@example.com".to_string(),
        format!("SEQUENCE:{seq}"),
        format!("DTSTAMP:{stamp}"),
        "ORGANIZER;CN=Alice:mailto:alice@example.com".to_string(),
        "ATTENDEE:mailto:bob@example.com".to_string(),
    ];
    if let Some(r) = rid {
        lines.push(format!("RECURRENCE-ID;TZID=Europe/Berlin:{r}"));
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    mail(from, "CANCEL", &[vevent(&refs)])
}

#[test]
fn out_of_order_delivery_ends_like_in_order_delivery() {
    let v1 = invite(0, "20261120T100000Z", "20261201T100000", "Planning");
    let v2 = invite(1, "20261121T100000Z", "20261201T140000", "Planning (moved)");
    let in_order = Env::new("");
    assert_eq!(in_order.effects(&[&v1, &v2]), ["created", "updated"]);
    let reversed = Env::new("");
    assert_eq!(reversed.effects(&[&v2, &v1]), ["created", "stale"]);
    assert_eq!(in_order.store_files(), reversed.store_files());
    let text = stored(&reversed, "team-42@example.com").unwrap();
    assert!(
        text.contains("DTSTART;TZID=Europe/Berlin:20261201T140000"),
        "{text}"
    );
    assert!(
        text.contains("BEGIN:VTIMEZONE\r\nTZID:Europe/Berlin"),
        "a VTIMEZONE for the TZID: {text}"
    );
    assert!(!text.contains("METHOD:"), "no METHOD in the store: {text}");
}

#[test]
fn duplicates_change_nothing_the_second_time() {
    let env = Env::new("");
    let v1 = invite(0, "20261120T100000Z", "20261201T100000", "Planning");
    assert_eq!(env.effects(&[&v1]), ["created"]);
    let before = env.store_files();
    assert_eq!(env.effects(&[&v1, &v1]), ["unchanged", "unchanged"]);
    assert_eq!(before, env.store_files());
}

#[test]
fn spoofed_cancel_changes_nothing() {
    let env = Env::new("");
    env.effects(&[&invite(
        0,
        "20261120T100000Z",
        "20261201T100000",
        "Planning",
    )]);
    let before = env.store_files();
    let spoof = cancel(
        "Mallory <mallory@evil.example>",
        9,
        "20261122T100000Z",
        None,
    );
    let (outcomes, out) = env.process(&[&env.message("spoof.eml", &spoof)]);
    assert!(out.status.success());
    let r = &outcomes[0]["results"][0];
    assert_eq!(r["effect"], "refused");
    assert!(
        r["reason"].as_str().unwrap().contains("not the organizer"),
        "{r}"
    );
    assert_eq!(outcomes[0]["suspicious"], true);
    assert_eq!(before, env.store_files());
}

#[test]
fn organizer_change_is_refused() {
    let env = Env::new("");
    env.effects(&[&invite(
        0,
        "20261120T100000Z",
        "20261201T100000",
        "Planning",
    )]);
    let before = env.store_files();
    let hijack = invite(5, "20261125T100000Z", "20261201T100000", "Mine now")
        .replace("mailto:alice@example.com", "mailto:mallory@evil.example")
        .replace(ALICE, "mallory@evil.example");
    assert_eq!(env.effects(&[&hijack]), ["refused"]);
    assert_eq!(before, env.store_files());
}

#[test]
fn instance_cancel_excludes_the_instance_and_whole_cancel_cancels() {
    let env = Env::new("");
    let effects = env.effects(&[
        &invite(0, "20261120T100000Z", "20261201T100000", "Planning"),
        &cancel(ALICE, 0, "20261121T100000Z", Some("20261208T100000")),
    ]);
    assert_eq!(effects, ["created", "cancelled"]);
    let text = stored(&env, "team-42@example.com").unwrap();
    assert!(
        text.contains("EXDATE;TZID=Europe/Berlin:20261208T100000"),
        "{text}"
    );
    assert!(!text.contains("STATUS:CANCELLED"));
    assert_eq!(
        env.effects(&[&cancel(ALICE, 1, "20261122T100000Z", None)]),
        ["cancelled"]
    );
    let text = stored(&env, "team-42@example.com").unwrap();
    assert!(text.contains("STATUS:CANCELLED"), "{text}");
    // A REQUEST older than the cancel does not bring it back.
    assert_eq!(
        env.effects(&[&invite(
            0,
            "20261123T100000Z",
            "20261201T100000",
            "Planning"
        )]),
        ["stale"]
    );
}

#[test]
fn cancel_before_its_request_is_held_then_applied() {
    let env = Env::new("");
    let effects = env.effects(&[
        &cancel(ALICE, 1, "20261122T100000Z", None),
        &invite(0, "20261120T100000Z", "20261201T100000", "Planning"),
    ]);
    assert_eq!(effects, ["held", "created"]);
    let text = stored(&env, "team-42@example.com").unwrap();
    assert!(
        text.contains("STATUS:CANCELLED"),
        "the held cancel was applied: {text}"
    );
    // RFC 5546 §5.2.1: the held CANCEL keeps its effect until a message
    // newer than it arrives: a re-sent older REQUEST does not undo it ...
    assert_eq!(
        env.effects(&[&invite(
            0,
            "20261121T100000Z",
            "20261201T100000",
            "Planning"
        )]),
        ["stale"]
    );
    let text = stored(&env, "team-42@example.com").unwrap();
    assert!(text.contains("STATUS:CANCELLED"), "still cancelled: {text}");
    // ... a newer one (the organizer invited again after cancelling) does.
    assert_eq!(
        env.effects(&[&invite(
            2,
            "20261123T100000Z",
            "20261201T100000",
            "Planning"
        )]),
        ["updated"]
    );
    let text = stored(&env, "team-42@example.com").unwrap();
    assert!(!text.contains("STATUS:CANCELLED"), "invited again: {text}");
    assert!(
        std::fs::read_dir(env.path("state/held"))
            .unwrap()
            .next()
            .is_none(),
        "the superseded held CANCEL is dropped"
    );
}

#[test]
fn naked_instance_invitation_is_filed_and_extended() {
    let env = Env::new("");
    let instance = |rid: &str, summary: &str| {
        mail(
            ALICE,
            "REQUEST",
            &[vevent(&[
                "UID:series-7@example.com",
                &format!("RECURRENCE-ID:{rid}"),
                &format!("DTSTART:{rid}"),
                "DTEND:20261201T110000Z",
                "SEQUENCE:0",
                "DTSTAMP:20261120T100000Z",
                &format!("SUMMARY:{summary}"),
                "ORGANIZER:mailto:alice@example.com",
                "ATTENDEE:mailto:bob@example.com",
            ])],
        )
    };
    let effects = env.effects(&[
        &instance("20261201T100000Z", "one"),
        &instance("20261208T100000Z", "two"),
        &instance("20261201T100000Z", "one"),
    ]);
    assert_eq!(effects, ["created", "updated", "unchanged"]);
    let text = stored(&env, "series-7@example.com").unwrap();
    assert_eq!(text.matches("BEGIN:VEVENT").count(), 2, "{text}");
    assert!(!text.contains("RRULE"));
}

fn own_event() -> String {
    mail(
        "Bob Example <bob@example.com>",
        "REQUEST",
        &[vevent(&[
            "UID:bob-planning@example.com",
            "SEQUENCE:0",
            "DTSTAMP:20261120T090000Z",
            "DTSTART:20261203T150000Z",
            "DTEND:20261203T160000Z",
            "SUMMARY:Bob's planning",
            "ORGANIZER:mailto:bob@example.com",
            "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:erin@example.com",
            "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:frank@example.com",
        ])],
    )
}

fn reply(from: &str, who: &str, partstat: &str, stamp: &str) -> String {
    mail(
        from,
        "REPLY",
        &[vevent(&[
            "UID:bob-planning@example.com",
            "SEQUENCE:0",
            &format!("DTSTAMP:{stamp}"),
            "ORGANIZER:mailto:bob@example.com",
            &format!("ATTENDEE;PARTSTAT={partstat}:mailto:{who}"),
        ])],
    )
}

#[test]
fn replies_update_the_attendee_and_stale_replies_do_not() {
    let env = Env::new("");
    let effects = env.effects(&[
        &own_event(),
        &reply(
            "erin@example.com",
            "erin@example.com",
            "ACCEPTED",
            "20261121T100000Z",
        ),
        &reply(
            "erin@example.com",
            "erin@example.com",
            "DECLINED",
            "20261120T100000Z",
        ),
    ]);
    assert_eq!(effects, ["created", "partstat-updated", "stale"]);
    let text = stored(&env, "bob-planning@example.com").unwrap();
    assert!(text.contains("PARTSTAT=ACCEPTED"), "{text}");
    assert!(!text.contains("DECLINED"), "{text}");
    assert!(
        text.contains("PARTSTAT=NEEDS-ACTION"),
        "frank unchanged: {text}"
    );
}

#[test]
fn party_crashers_and_forged_replies_change_nothing() {
    let env = Env::new("");
    env.effects(&[&own_event()]);
    let before = env.store_files();
    let effects = env.effects(&[
        // Not an attendee at all.
        &reply(
            "mallory@evil.example",
            "mallory@evil.example",
            "ACCEPTED",
            "20261121T100000Z",
        ),
        // Frank's answer, sent by someone else.
        &reply(
            "mallory@evil.example",
            "frank@example.com",
            "DECLINED",
            "20261121T100000Z",
        ),
    ]);
    assert_eq!(effects, ["refused", "refused"]);
    assert_eq!(before, env.store_files());
}

#[test]
fn hostile_uids_never_write_outside_the_store() {
    let env = Env::new("");
    let long = "x".repeat(500);
    let uids = [
        "../../escape",
        "/etc/passwd-imipd",
        ".hidden",
        "a/../../b",
        long.as_str(),
        "nul\\;byte",
    ];
    for (i, uid) in uids.iter().enumerate() {
        let raw = mail(
            ALICE,
            "REQUEST",
            &[vevent(&[
                &format!("UID:{uid}"),
                &format!("DTSTAMP:2026112{i}T100000Z"),
                "DTSTART:20261201T100000Z",
                "ORGANIZER:mailto:alice@example.com",
                "ATTENDEE:mailto:bob@example.com",
            ])],
        );
        assert_eq!(env.effects(&[&raw]), ["created"], "{uid}");
    }
    let files = env.store_files();
    assert_eq!(files.len(), uids.len());
    for name in files.keys() {
        assert!(!name.starts_with('.') && name.ends_with(".ics"), "{name}");
    }
    // Nothing appeared beside the store, the state and our own messages.
    for e in std::fs::read_dir(env.dir.path()).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        assert!(
            n == "calendar" || n == "state" || n == "config.toml" || n.ends_with(".eml"),
            "unexpected {n}"
        );
    }
    assert!(!std::path::Path::new("/etc/passwd-imipd.ics").exists());
    // Every file can be found again by its UID: re-processing changes nothing.
    let again = env.effects(&[&mail(
        ALICE,
        "REQUEST",
        &[vevent(&[
            "UID:../../escape",
            "DTSTAMP:20261120T100000Z",
            "DTSTART:20261201T100000Z",
            "ORGANIZER:mailto:alice@example.com",
            "ATTENDEE:mailto:bob@example.com",
        ])],
    )]);
    assert_eq!(again, ["unchanged"]);
}

#[test]
fn user_data_survives_an_update() {
    let env = Env::new("");
    env.effects(&[&invite(
        0,
        "20261120T100000Z",
        "20261201T100000",
        "Planning",
    )]);
    let (name, text) = env.store_files().into_iter().next().unwrap();
    let edited = text.replacen(
        "END:VEVENT",
        "TRANSP:TRANSPARENT\r\nCATEGORIES:Work\r\nX-MY-NOTE:bring slides\r\nBEGIN:VALARM\r\nACTION:DISPLAY\r\nDESCRIPTION:soon\r\nTRIGGER:-PT15M\r\nEND:VALARM\r\nEND:VEVENT",
        1,
    );
    std::fs::write(env.store().join(&name), edited).unwrap();
    assert_eq!(
        env.effects(&[&invite(
            1,
            "20261121T100000Z",
            "20261201T110000",
            "Planning v2"
        )]),
        ["updated"]
    );
    let text = env
        .store_files()
        .remove(&name)
        .expect("same file name after the update");
    for kept in [
        "TRANSP:TRANSPARENT",
        "CATEGORIES:Work",
        "X-MY-NOTE:bring slides",
        "BEGIN:VALARM",
        "TRIGGER:-PT15M",
        "SUMMARY:Planning v2",
    ] {
        assert!(text.contains(kept), "{kept} missing from {text}");
    }
}

#[test]
fn dry_run_writes_nothing_and_reports_the_decision() {
    let env = Env::new("");
    let p = env.message(
        "a.eml",
        &invite(0, "20261120T100000Z", "20261201T100000", "Planning"),
    );
    let out = imipd()
        .args(["process", "--dry-run", "--json", "--config"])
        .arg(&env.config)
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["results"][0]["effect"], "created");
    assert_eq!(v["dry_run"], true);
    assert!(env.store_files().is_empty());
    // Nothing at all: no store folder, no state folder, no lock.
    assert!(!env.store().exists(), "the store folder was created");
    assert!(!env.path("state").exists(), "the state folder was created");
}

#[test]
fn once_dry_run_on_a_maildir_creates_nothing() {
    let env = Env::new("[[account]]\nname = \"mail\"\nsource = \"maildir\"\npath = \"Maildir\"\n");
    for d in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(env.path("Maildir").join(d)).unwrap();
    }
    std::fs::write(
        env.path("Maildir/new/1.A.test"),
        invite(0, "20261120T100000Z", "20261201T100000", "Planning"),
    )
    .unwrap();
    let out = env.run(&["once", "--dry-run", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["results"][0]["effect"], "created", "{v}");
    assert!(!env.store().exists() && !env.path("state").exists());
}

#[test]
fn stdin_and_outcome_lines() {
    let env = Env::new("");
    let mut child = imipd()
        .args(["process", "--config"])
        .arg(&env.config)
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(invite(0, "20261120T100000Z", "20261201T100000", "Planning").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("-: REQUEST team-42@example.com \"Planning\": created as attendee"),
        "{err}"
    );
    assert_eq!(env.store_files().len(), 1);
}

#[test]
fn mail_without_calendar_is_reported_and_left_alone() {
    let env = Env::new("");
    let p = env.message("plain.eml", "From: a@b.c\r\nSubject: hi\r\n\r\nhello\r\n");
    let (v, out) = env.process(&[&p]);
    assert!(out.status.success());
    assert_eq!(v[0]["imip"], false);
    assert!(v[0]["results"].as_array().unwrap().is_empty());
    assert!(env.store_files().is_empty());
}
