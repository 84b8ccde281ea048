//! Policies and replies through `imipd process` with the file transport:
//! what is answered, what never is, the flood cap, the organizer's answers,
//! quarantine and ignore. Every sent message is parsed back.

use std::path::Path;

use serde_json::Value;

use crate::support::*;

const ACCEPT_ALL: &str = "[outgoing]\ntransport = \"file\"\npath = \"outbox\"\n\
    [[policy]]\nname = \"yes\"\nmethods = [\"REQUEST\", \"ADD\"]\naction = \"accept\"\ncomment = \"See you there\"\n";

fn invite(uid: &str, seq: u32, stamp: &str, extra: &[&str]) -> String {
    let mut lines = vec![
        format!("UID:{uid}"),
        format!("SEQUENCE:{seq}"),
        format!("DTSTAMP:{stamp}"),
        "DTSTART;TZID=Europe/Berlin:20261201T100000".to_string(),
        "DTEND;TZID=Europe/Berlin:20261201T110000".to_string(),
        "SUMMARY:Planning".to_string(),
        "ORGANIZER;CN=Alice:mailto:alice@example.com".to_string(),
        "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN=Bob:mailto:bob@example.com".to_string(),
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:alice@example.com".to_string(),
    ];
    lines.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    mail("Alice <alice@example.com>", "REQUEST", &[vevent(&refs)])
}

/// The messages the file transport wrote, in order.
fn sent(env: &Env) -> Vec<String> {
    dir_files(&env.path("outbox")).into_values().collect()
}

fn run(env: &Env, raws: &[&str]) -> Vec<Value> {
    let mut all = Vec::new();
    for (i, raw) in raws.iter().enumerate() {
        let p = env.message(&format!("r{i}-{}.eml", rand_suffix()), raw);
        let (v, out) = env.process(&[&p]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        all.extend(v.into_iter().filter(|v| v.get("results").is_some()));
    }
    all
}

fn reply_of(v: &Value) -> String {
    reply_text(&v["results"][0]).to_string()
}

fn classify_file(path: &Path) -> Value {
    let out = imipd().arg("classify").arg(path).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn accepted_invitation_is_answered_once_with_a_conforming_reply() {
    let env = Env::new(ACCEPT_ALL);
    let v1 = invite("p1@example.com", 0, "20261120T100000Z", &[]);
    let out = run(&env, &[&v1]);
    assert!(
        reply_of(&out[0]).starts_with("queued to alice@example.com"),
        "{}",
        out[0]
    );
    assert_eq!(out[0]["results"][0]["policy"], "yes");
    let msgs = sent(&env);
    assert_eq!(msgs.len(), 1);
    // Parse it back with the classifier: a valid REPLY from the attendee.
    let file = env.path("sent-back.eml");
    std::fs::write(&file, &msgs[0]).unwrap();
    let c = classify_file(&file);
    assert_eq!(c["imip"], true);
    assert_eq!(c["valid"], true, "{c}");
    assert_eq!(c["suspicious"], false, "{c}");
    assert_eq!(c["from"], "bob@example.com");
    let comp = &c["messages"][0]["components"][0];
    assert_eq!(c["messages"][0]["method"], "REPLY");
    assert_eq!(comp["uid"], "p1@example.com");
    assert_eq!(
        comp["attendees"],
        serde_json::json!({"mailto:bob@example.com": "ACCEPTED"})
    );
    assert_eq!(comp["organizer"], "mailto:alice@example.com");
    assert!(msgs[0].contains("Auto-Submitted: auto-replied"));
    assert!(msgs[0].contains("COMMENT:See you there"));
    assert!(
        msgs[0].contains("In-Reply-To: <m"),
        "threaded to the invitation"
    );
    // My copy says ACCEPTED.
    assert!(
        stored(&env, "p1@example.com")
            .unwrap()
            .contains("PARTSTAT=ACCEPTED;CN=Bob:mailto:bob@example.com")
            || stored(&env, "p1@example.com")
                .unwrap()
                .contains("PARTSTAT=ACCEPTED")
    );

    // The same version again (a duplicate, and a re-send with a later
    // DTSTAMP): no second reply.
    let resent = invite("p1@example.com", 0, "20261121T100000Z", &[]);
    let out = run(&env, &[&v1, &resent]);
    assert!(reply_of(&out[0]).contains("already answered"), "{}", out[0]);
    assert!(reply_of(&out[1]).contains("already answered"), "{}", out[1]);
    assert_eq!(sent(&env).len(), 1);
    // A new version (SEQUENCE 1) is answered again.
    let v2 = invite("p1@example.com", 1, "20261122T100000Z", &[]);
    run(&env, &[&v2]);
    assert_eq!(sent(&env).len(), 2);
}

#[test]
fn never_answer_rules() {
    let env = Env::new(ACCEPT_ALL);
    let not_invited = invite("n1@example.com", 0, "20261120T100000Z", &[]).replace(
        "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN=Bob:mailto:bob@example.com\r\n",
        "",
    );
    let rsvp_false =
        invite("n2@example.com", 0, "20261120T100000Z", &[]).replace("RSVP=TRUE", "RSVP=FALSE");
    let own = mail(
        "bob@example.com",
        "REQUEST",
        &[vevent(&[
            "UID:n3@example.com",
            "DTSTAMP:20261120T100000Z",
            "DTSTART:20261201T100000Z",
            "ORGANIZER:mailto:bob@example.com",
            "ATTENDEE:mailto:bob@example.com",
            "ATTENDEE:mailto:erin@example.com",
        ])],
    );
    let spoofed = invite("n4@example.com", 0, "20261120T100000Z", &[]).replace(
        "From: Alice <alice@example.com>",
        "From: mallory@evil.example",
    );
    let a_reply = mail(
        "erin@example.com",
        "REPLY",
        &[vevent(&[
            "UID:n3@example.com",
            "DTSTAMP:20261121T100000Z",
            "ORGANIZER:mailto:bob@example.com",
            "ATTENDEE;PARTSTAT=ACCEPTED:mailto:erin@example.com",
        ])],
    );
    let out = run(&env, &[&not_invited, &rsvp_false, &own, &spoofed, &a_reply]);
    assert!(reply_of(&out[0]).contains("not an attendee"), "{}", out[0]);
    assert!(reply_of(&out[1]).contains("RSVP=FALSE"), "{}", out[1]);
    assert!(
        reply_of(&out[2]).contains("I am the organizer"),
        "{}",
        out[2]
    );
    // A new invitation whose sender is not its organizer is filed, flagged
    // and never answered (forwarded, relayed, or forged).
    assert!(
        reply_of(&out[3]).contains("not shown to be its organizer"),
        "{}",
        out[3]
    );
    assert_eq!(out[3]["results"][0]["effect"], "created", "{}", out[3]);
    assert!(
        out[4]["results"][0]["reply"].is_null(),
        "a REPLY is never answered: {}",
        out[4]
    );
    assert_eq!(out[4]["results"][0]["effect"], "partstat-updated");
    assert!(
        sent(&env).is_empty(),
        "nothing may be sent: {:?}",
        sent(&env)
    );
    assert!(!env.path("state/outbox").read_dir().unwrap().any(|_| true));
}

#[test]
fn file_policy_and_default_answer_nothing() {
    let env = Env::new("[outgoing]\ntransport = \"file\"\npath = \"outbox\"\n");
    let out = run(
        &env,
        &[&invite("f1@example.com", 0, "20261120T100000Z", &[])],
    );
    assert_eq!(out[0]["results"][0]["policy"], "default");
    assert_eq!(out[0]["results"][0]["action"], "file");
    assert!(out[0]["results"][0]["reply"].is_null());
    assert!(sent(&env).is_empty());
    assert!(stored(&env, "f1@example.com")
        .unwrap()
        .contains("PARTSTAT=NEEDS-ACTION"));
}

#[test]
fn flood_of_invitations_is_capped_per_organizer() {
    let env = Env::new(&ACCEPT_ALL.replace(
        "path = \"outbox\"\n",
        "path = \"outbox\"\nmax_replies_per_hour = 3\n",
    ));
    let invites: Vec<String> = (0..6)
        .map(|i| {
            invite(
                &format!("flood-{i}@example.com"),
                0,
                "20261120T100000Z",
                &[],
            )
        })
        .collect();
    let refs: Vec<&str> = invites.iter().map(String::as_str).collect();
    let out = run(&env, &refs);
    assert_eq!(sent(&env).len(), 3);
    assert!(reply_of(&out[5]).contains("cap"), "{}", out[5]);
    // All six are filed nonetheless.
    assert_eq!(env.store_files().len(), 6);
}

#[test]
fn decline_and_tentative_set_partstat() {
    let env = Env::new(
        "[outgoing]\ntransport = \"file\"\npath = \"outbox\"\n\
         [[policy]]\nname = \"long\"\nmax_duration = \"30m\"\nmethods = [\"REQUEST\"]\naction = \"tentative\"\n\
         [[policy]]\nname = \"no\"\nmethods = [\"REQUEST\"]\naction = \"decline\"\n",
    );
    let short = invite("s1@example.com", 0, "20261120T100000Z", &[])
        .replace("DTEND;TZID=Europe/Berlin:20261201T110000", "DURATION:PT20M");
    let long = invite("l1@example.com", 0, "20261120T100000Z", &[]);
    let out = run(&env, &[&short, &long]);
    assert_eq!(out[0]["results"][0]["policy"], "long");
    assert_eq!(out[1]["results"][0]["policy"], "no");
    let msgs = sent(&env).join("\n");
    assert!(
        msgs.contains("PARTSTAT=TENTATIVE") && msgs.contains("PARTSTAT=DECLINED"),
        "{msgs}"
    );
    assert!(stored(&env, "l1@example.com")
        .unwrap()
        .contains("PARTSTAT=DECLINED"));
}

#[test]
fn conflict_matcher_declines_overlapping_invitations() {
    let env = Env::new(
        "[outgoing]\ntransport = \"file\"\npath = \"outbox\"\n\
         [[policy]]\nname = \"busy\"\nmethods = [\"REQUEST\"]\nconflict = true\naction = \"decline\"\n\
         [[policy]]\nname = \"free\"\nmethods = [\"REQUEST\"]\naction = \"accept\"\n",
    );
    // A weekly series on Tuesdays 10:00 Berlin; the second invitation falls on
    // its third occurrence (UTC, 09:30–10:30), the third is transparent time.
    let weekly = invite(
        "w@example.com",
        0,
        "20261120T100000Z",
        &["RRULE:FREQ=WEEKLY;COUNT=5"],
    );
    let clash = invite("c@example.com", 0, "20261120T100000Z", &[])
        .replace(
            "DTSTART;TZID=Europe/Berlin:20261201T100000",
            "DTSTART:20261215T093000Z",
        )
        .replace(
            "DTEND;TZID=Europe/Berlin:20261201T110000",
            "DTEND:20261215T103000Z",
        );
    let later = invite("x@example.com", 0, "20261120T100000Z", &[])
        .replace(
            "DTSTART;TZID=Europe/Berlin:20261201T100000",
            "DTSTART:20261215T120000Z",
        )
        .replace(
            "DTEND;TZID=Europe/Berlin:20261201T110000",
            "DTEND:20261215T130000Z",
        );
    let out = run(&env, &[&weekly, &clash, &later]);
    let policies: Vec<&str> = out
        .iter()
        .map(|o| o["results"][0]["policy"].as_str().unwrap())
        .collect();
    assert_eq!(policies, ["free", "busy", "free"]);
}

#[test]
fn organizer_declines_counters_and_answers_refresh() {
    let env = Env::new(
        "[authentication]\ntrusted_authserv_ids = [\"mx.example.com\"]\n\
         [outgoing]\ntransport = \"file\"\npath = \"outbox\"\n\
         [[policy]]\nname = \"no counters\"\nmethods = [\"COUNTER\"]\naction = \"decline\"\ncomment = \"The time is fixed\"\n\
         [[policy]]\nname = \"refresh\"\nmethods = [\"REFRESH\"]\naction = \"accept\"\n",
    );
    // My own copy of an event I organize, verified by my mail server: mail
    // that only claims to come from me would make imipd send nothing.
    let own = "Authentication-Results: mx.example.com; dkim=pass header.d=example.com; dmarc=pass header.from=example.com\r\n".to_string() + &mail(
        "bob@example.com",
        "REQUEST",
        &[vevent(&[
            "UID:mine@example.com",
            "SEQUENCE:0",
            "DTSTAMP:20261120T100000Z",
            "DTSTART:20261201T100000Z",
            "SUMMARY:Bob's meeting",
            "ORGANIZER:mailto:bob@example.com",
            "ATTENDEE:mailto:erin@example.com",
        ])],
    );
    let counter = mail(
        "erin@example.com",
        "COUNTER",
        &[vevent(&[
            "UID:mine@example.com",
            "SEQUENCE:0",
            "DTSTAMP:20261121T100000Z",
            "DTSTART:20261202T100000Z",
            "ORGANIZER:mailto:bob@example.com",
            "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:erin@example.com",
        ])],
    );
    let refresh = mail(
        "erin@example.com",
        "REFRESH",
        &[vevent(&[
            "UID:mine@example.com",
            "DTSTAMP:20261122T100000Z",
            "ORGANIZER:mailto:bob@example.com",
            "ATTENDEE:mailto:erin@example.com",
        ])],
    );
    let out = run(&env, &[&own, &counter, &refresh]);
    assert_eq!(out[1]["results"][0]["effect"], "recorded");
    let msgs = sent(&env);
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(msgs[0].contains("METHOD:DECLINECOUNTER") && msgs[0].contains("The time is fixed"));
    assert!(msgs[1].contains("METHOD:REQUEST") && msgs[1].contains("SUMMARY:Bob's meeting"));
    assert!(msgs.iter().all(|m| m.contains("To: erin@example.com")));
    let attention = std::fs::read_dir(env.path("state/attention"))
        .unwrap()
        .count();
    assert_eq!(attention, 2, "COUNTER and REFRESH kept for a person");
}

#[test]
fn quarantine_and_ignore_change_nothing() {
    let env = Env::new(
        "[[policy]]\nname = \"suspect\"\nsenders = [\"evil.example\"]\naction = \"quarantine\"\n\
         [[policy]]\nname = \"hush\"\nmethods = [\"PUBLISH\"]\naction = \"ignore\"\n",
    );
    let from_evil = invite("q@example.com", 0, "20261120T100000Z", &[]).replace(
        "From: Alice <alice@example.com>",
        "From: mallory@evil.example",
    );
    let publish = mail(
        "news@example.org",
        "PUBLISH",
        &[vevent(&[
            "UID:pub@example.org",
            "DTSTAMP:20261120T100000Z",
            "DTSTART:20261201T100000Z",
            "ORGANIZER:mailto:news@example.org",
        ])],
    );
    let out = run(&env, &[&from_evil, &publish]);
    assert_eq!(out[0]["quarantine"], true);
    assert_eq!(out[1]["results"][0]["effect"], "ignored");
    assert!(env.store_files().is_empty());
    let q: Vec<_> = std::fs::read_dir(env.path("state/quarantine"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(q.len(), 1);
    assert_eq!(
        std::fs::read_to_string(q[0].path()).unwrap(),
        from_evil,
        "the quarantined copy is the message as received"
    );
}

#[test]
fn dry_run_decides_but_queues_nothing() {
    let env = Env::new(ACCEPT_ALL);
    let p = env.message(
        "d.eml",
        &invite("d1@example.com", 0, "20261120T100000Z", &[]),
    );
    let out = imipd()
        .args(["process", "--dry-run", "--json", "--config"])
        .arg(&env.config)
        .arg(&p)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(reply_of(&v).starts_with("would be queued"), "{v}");
    assert!(sent(&env).is_empty() && env.store_files().is_empty());
    assert!(
        !env.path("state/outbox").exists()
            || std::fs::read_dir(env.path("state/outbox")).unwrap().count() == 0
    );
}

#[test]
fn answering_policy_without_outgoing_is_a_configuration_error() {
    let env = Env::new("[[policy]]\nname = \"yes\"\naction = \"accept\"\n");
    let out = env.run(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[outgoing]"));
}

/// Found by the chaos suite: a kill after the event was filed and before its
/// answer was queued lost the answer, because the replay saw the event
/// already in the store. The replay must queue it (once).
#[test]
fn regression_chaos_kill_between_filing_and_queueing_keeps_the_answer() {
    let env = Env::new(
        ACCEPT_ALL
            .replace("path = \"outbox\"", "path = \"sent\"")
            .as_str(),
    );
    let raw = invite("k1@example.com", 0, "20261120T100000Z", &[]);
    // The state a kill leaves: the event filed with my answer, nothing queued.
    let dry = Env::new(ACCEPT_ALL);
    run(&dry, &[&raw]);
    std::fs::create_dir_all(env.store()).unwrap();
    for (name, text) in dry.store_files() {
        std::fs::write(env.store().join(name), text).unwrap();
    }
    let out = run(&env, &[&raw]);
    assert_eq!(out[0]["results"][0]["effect"], "unchanged");
    assert!(reply_of(&out[0]).starts_with("queued"), "{}", out[0]);
    assert_eq!(dir_files(&env.path("sent")).len(), 1);
    // And only once.
    let out = run(&env, &[&raw]);
    assert!(reply_of(&out[0]).contains("already answered"), "{}", out[0]);
    assert_eq!(dir_files(&env.path("sent")).len(), 1);
}
