//! Crash safety: `imipd once` over a Maildir of 200 messages, killed with
//! SIGKILL at many moments and restarted, must leave exactly the store an
//! uninterrupted run leaves.

use std::path::Path;
use std::time::Duration;

use crate::support::*;

/// 200 messages: invitations, updates, instance and whole cancels, an own
/// event and replies to it, and some plain mail.
fn fill(maildir: &Path) {
    for d in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(maildir.join(d)).unwrap();
    }
    let organizers = ["alice@example.com", "carol@example.org", "dave@example.net"];
    let mut n = 0;
    let mut put = |raw: String| {
        n += 1;
        let name = format!("{}.M{n}P1.test", 1_763_000_000 + n);
        let sub = if n % 3 == 0 { "cur" } else { "new" };
        let name = if sub == "cur" {
            format!("{name}:2,S")
        } else {
            name
        };
        std::fs::write(maildir.join(sub).join(name), raw).unwrap();
    };
    put(mail(
        "bob@example.com",
        "REQUEST",
        &[vevent(&[
            "UID:own@example.com",
            "SEQUENCE:0",
            "DTSTAMP:20261101T000000Z",
            "DTSTART:20261210T100000Z",
            "ORGANIZER:mailto:bob@example.com",
            "ATTENDEE:mailto:erin@example.com",
            "ATTENDEE:mailto:frank@example.com",
        ])],
    ));
    for i in 0..199 {
        let org = organizers[i % 3];
        let uid = format!("ev-{}@test", i % 60);
        let seq = i / 60;
        let stamp = format!("202611{:02}T{:02}0000Z", 1 + i / 10, i % 10);
        let raw = match i % 10 {
            7 => mail(
                org,
                "CANCEL",
                &[vevent(&[
                    &format!("UID:{uid}"),
                    &format!("SEQUENCE:{seq}"),
                    &format!("DTSTAMP:{stamp}"),
                    &format!("ORGANIZER:mailto:{org}"),
                    "RECURRENCE-ID:20261208T100000Z",
                ])],
            ),
            9 => mail(
                "erin@example.com",
                "REPLY",
                &[vevent(&[
                    "UID:own@example.com",
                    "SEQUENCE:0",
                    &format!("DTSTAMP:{stamp}"),
                    "ORGANIZER:mailto:bob@example.com",
                    &format!(
                        "ATTENDEE;PARTSTAT={}:mailto:erin@example.com",
                        ["ACCEPTED", "DECLINED", "TENTATIVE"][i % 3]
                    ),
                ])],
            ),
            5 => format!("From: {org}\r\nSubject: plain {i}\r\n\r\nno calendar here\r\n"),
            _ => mail(
                org,
                "REQUEST",
                &[vevent(&[
                    &format!("UID:{uid}"),
                    &format!("SEQUENCE:{seq}"),
                    &format!("DTSTAMP:{stamp}"),
                    "DTSTART;TZID=Europe/Berlin:20261201T100000",
                    "DURATION:PT1H",
                    "RRULE:FREQ=WEEKLY;COUNT=10",
                    &format!("SUMMARY:Event {i}"),
                    &format!("ORGANIZER:mailto:{org}"),
                    "ATTENDEE:mailto:bob@example.com",
                ])],
            ),
        };
        put(raw);
    }
}

fn once(env: &Env) -> std::process::Child {
    imipd()
        .args(["once", "--config"])
        .arg(&env.config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Lines in the Maildir ledger: how many messages a run has finished.
fn handled(env: &Env) -> usize {
    std::fs::read_to_string(env.path("state/maildir/mail.done"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn kill_9_at_any_moment_loses_nothing() {
    let maildir_cfg = "[[account]]\nname = \"mail\"\nsource = \"maildir\"\npath = \"Maildir\"\n";
    let reference = Env::new(maildir_cfg);
    fill(&reference.path("Maildir"));
    assert!(once(&reference).wait().unwrap().success());
    let expected = reference.store_files();
    assert!(
        expected.len() > 40,
        "the reference run filed {} objects",
        expected.len()
    );

    // Each run is killed once it has finished a chosen number (1 to 6) of
    // messages more than the run before, wherever it is then: inside the
    // next message, between its durable steps, or in between messages.
    // Counting progress instead of waiting a random time makes the number
    // of runs killed mid-way the same on a busy machine as on an idle one.
    let env = Env::new(maildir_cfg);
    fill(&env.path("Maildir"));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut kills = 0;
    loop {
        let target = handled(&env) + 1 + rng.index(6);
        let mut child = once(&env);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if handled(&env) >= target {
                break None;
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        match status {
            Some(status) => {
                assert!(
                    status.success(),
                    "a run that was not killed failed: {status}"
                );
                break; // everything is done
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
            }
        }
    }
    // Once more: nothing left to do.
    assert!(once(&env).wait().unwrap().success());
    // 200 messages, at most 6 a run: at least 33 runs die mid-way.
    assert!(kills >= 30, "only {kills} runs were killed mid-way");
    assert_eq!(env.store_files(), expected, "after {kills} kills");
    let out = env.run(&["once", "--json"]);
    assert!(out.status.success());
    assert!(
        out.stdout.is_empty(),
        "a finished Maildir is not read again"
    );
}
