//! The store and the state folder under attack and under load, end to end
//! through the real binary: UIDs hidden in alarms, ten MTA deliveries at
//! once, kept copies that must never overwrite each other, several held
//! CANCELs, a store that changes under `imipd run`, file modes and symlinks,
//! and what `imipd check` must say about folders it cannot write.

use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const ALICE: &str = "Alice <alice@example.com>";
const MALLORY: &str = "Mallory <mallory@evil.example>";

/// Wait (polling) until `f` holds, or fail naming what did not happen.
fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `imipd process -` with one message on standard input.
fn pipe(env: &Env, raw: &str) -> Output {
    let mut child = spawn_pipe(env);
    let _ = child.stdin.take().unwrap().write_all(raw.as_bytes());
    child.wait_with_output().unwrap()
}

fn spawn_pipe(env: &Env) -> Child {
    imipd()
        .args(["process", "--config"])
        .arg(&env.config)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn invitation(uid: &str, seq: u32, summary: &str) -> String {
    mail(
        ALICE,
        "REQUEST",
        &[vevent(&[
            &format!("UID:{uid}"),
            &format!("SEQUENCE:{seq}"),
            &format!("DTSTAMP:2026112{seq}T100000Z"),
            "DTSTART:20261201T100000Z",
            "DTEND:20261201T110000Z",
            &format!("SUMMARY:{summary}"),
            "ORGANIZER;CN=Alice:mailto:alice@example.com",
            "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.com",
        ])],
    )
}

/// The UIDs of the top-level VEVENTs of a stored file (imipd writes a
/// component's properties before its sub-components).
fn top_level_uids(text: &str) -> Vec<String> {
    text.split("BEGIN:VEVENT\r\n")
        .skip(1)
        .filter_map(|chunk| {
            let own = chunk.split("BEGIN:").next().unwrap_or(chunk);
            let own = own.split("END:VEVENT").next().unwrap_or(own);
            own.split("\r\n")
                .find_map(|l| l.strip_prefix("UID:"))
                .map(str::to_string)
        })
        .collect()
}

/// The calendar files of the store (not the dot-files a write in progress
/// uses, which vdir readers skip): name → content.
fn objects(env: &Env) -> Vec<(String, String)> {
    env.store_files()
        .into_iter()
        .filter(|(n, _)| !n.starts_with('.'))
        .collect()
}

/// The store files whose top-level components carry a UID.
fn files_with_uid(env: &Env, uid: &str) -> Vec<(String, String)> {
    objects(env)
        .into_iter()
        .filter(|(_, t)| top_level_uids(t).iter().any(|u| u == uid))
        .collect()
}

// ---------------------------------------------------------------------------
// 1. UID hijack through the store index.

#[test]
fn uid_hijack_through_the_store_index() {
    let env = Env::new("");
    let meeting = "team-42@example.com";
    assert_eq!(
        env.effects(&[&invitation(meeting, 0, "Planning")]),
        ["created"]
    );
    // A fellow attendee who knows the meeting's UID sends harmless
    // invitations of his own, each with an alarm that carries it (RFC 9074).
    for i in 0..6 {
        let lunch = mail(
            MALLORY,
            "REQUEST",
            &[vevent(&[
                &format!("UID:lunch-{i}@evil.example"),
                "SEQUENCE:0",
                "DTSTAMP:20261120T110000Z",
                "DTSTART:20261205T120000Z",
                "DTEND:20261205T130000Z",
                "SUMMARY:Lunch?",
                "ORGANIZER:mailto:mallory@evil.example",
                "ATTENDEE;RSVP=TRUE:mailto:bob@example.com",
                "BEGIN:VALARM",
                &format!("UID:{meeting}"),
                "ACTION:DISPLAY",
                "DESCRIPTION:Lunch",
                "TRIGGER:-PT10M",
                "END:VALARM",
            ])],
        );
        assert_eq!(env.effects(&[&lunch]), ["created"]);
    }
    let alarms = env
        .store_files()
        .values()
        .filter(|t| t.contains("lunch-") && t.contains(&format!("UID:{meeting}\r\n")))
        .count();
    assert_eq!(alarms, 6, "the attack is set up: the alarms carry the UID");

    // The organizer cancels: the meeting must really be cancelled.
    let cancel = mail(
        ALICE,
        "CANCEL",
        &[vevent(&[
            &format!("UID:{meeting}"),
            "SEQUENCE:1",
            "DTSTAMP:20261122T100000Z",
            "ORGANIZER;CN=Alice:mailto:alice@example.com",
            "ATTENDEE:mailto:bob@example.com",
        ])],
    );
    assert_eq!(env.effects(&[&cancel]), ["cancelled"]);
    // Then the attendee names himself organizer of the meeting.
    let takeover = mail(
        MALLORY,
        "REQUEST",
        &[vevent(&[
            &format!("UID:{meeting}"),
            "SEQUENCE:5",
            "DTSTAMP:20261123T100000Z",
            "DTSTART:20261201T100000Z",
            "DTEND:20261201T110000Z",
            "SUMMARY:Mine now",
            "ORGANIZER:mailto:mallory@evil.example",
            "ATTENDEE;RSVP=TRUE:mailto:bob@example.com",
        ])],
    );
    let effects = env.effects(&[&takeover]);
    assert_ne!(effects, ["created"], "a second object for the meeting");
    assert_ne!(effects, ["updated"], "the meeting taken over");

    let holders = files_with_uid(&env, meeting);
    assert_eq!(holders.len(), 1, "one file holds the meeting: {holders:?}");
    let (name, text) = &holders[0];
    assert_eq!(name, "team-42@example.com.ics");
    assert!(text.contains("STATUS:CANCELLED"), "cancelled: {text}");
    assert!(text.contains("ORGANIZER;CN=Alice:mailto:alice@example.com"));
    assert!(!text.contains("mallory"), "Mallory owns nothing: {text}");
    assert!(!text.contains("Mine now"));
    for (n, t) in env.store_files() {
        if n.starts_with("lunch-") {
            assert!(
                !t.contains("Mine now") && !t.contains("STATUS:CANCELLED"),
                "{t}"
            );
            assert_eq!(top_level_uids(&t).len(), 1, "{t}");
        }
    }
}

// ---------------------------------------------------------------------------
// 2. Concurrent pipe deliveries.

#[test]
fn concurrent_pipe_deliveries_are_all_filed() {
    let env = Env::new("");
    let children: Vec<(usize, Child)> = (0..10)
        .map(|i| {
            let mut c = spawn_pipe(&env);
            let raw = invitation(&format!("concurrent-{i}@example.com"), 0, "Meeting");
            // A process that gave up early has closed its end: its exit
            // status tells.
            let _ = c.stdin.take().unwrap().write_all(raw.as_bytes());
            (i, c)
        })
        .collect();
    for (i, c) in children {
        let out = c.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "delivery {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let files = env.store_files();
    assert_eq!(files.len(), 10, "{:?}", files.keys());
    for i in 0..10 {
        assert_eq!(
            files_with_uid(&env, &format!("concurrent-{i}@example.com")).len(),
            1
        );
    }
}

#[test]
fn concurrent_pipe_delivery_exits_75_while_the_lock_stays_busy() {
    let env = Env::new("lock_timeout = \"1s\"\n");
    // Another imipd (here: the test) holds the state lock.
    let lock = env.hold_state_lock();
    let start = Instant::now();
    let out = pipe(&env, &invitation("busy@example.com", 0, "Busy"));
    let waited = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "EX_TEMPFAIL: {err}");
    assert!(err.contains("another imipd holds the lock"), "{err}");
    assert!(waited >= Duration::from_secs(1), "it waited: {waited:?}");
    assert!(env.store_files().is_empty());

    // `once` waits and gives up the same way.
    let out = env.run(&["once"]);
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Once the lock is free, the MTA's retry goes through.
    drop(lock);
    let out = pipe(&env, &invitation("busy@example.com", 0, "Busy"));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(env.store_files().len(), 1);
}

// ---------------------------------------------------------------------------
// 3. Unique names for kept copies.

fn own_event() -> String {
    mail(
        "bob@example.com",
        "REQUEST",
        &[vevent(&[
            "UID:mine@example.com",
            "SEQUENCE:0",
            "DTSTAMP:20261120T100000Z",
            "DTSTART:20261201T100000Z",
            "DTEND:20261201T110000Z",
            "SUMMARY:Bob's meeting",
            "ORGANIZER:mailto:bob@example.com",
            "ATTENDEE:mailto:erin@example.com",
        ])],
    )
}

fn counter(start: &str) -> String {
    mail(
        "erin@example.com",
        "COUNTER",
        &[vevent(&[
            "UID:mine@example.com",
            "SEQUENCE:0",
            "DTSTAMP:20261121T100000Z",
            &format!("DTSTART:{start}"),
            "ORGANIZER:mailto:bob@example.com",
            "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:erin@example.com",
        ])],
    )
}

#[test]
fn unique_names_for_kept_copies_two_counters_in_one_second() {
    let env = Env::new("");
    assert_eq!(env.effects(&[&own_event()]), ["created"]);
    // Each run starts at the same test instant: the same second.
    assert_eq!(env.effects(&[&counter("20261202T100000Z")]), ["recorded"]);
    assert_eq!(env.effects(&[&counter("20261203T100000Z")]), ["recorded"]);
    let kept = dir_files(&env.path("state/attention"));
    assert_eq!(kept.len(), 2, "{:?}", kept.keys());
    assert!(kept
        .values()
        .any(|t| t.contains("DTSTART:20261202T100000Z")));
    assert!(kept
        .values()
        .any(|t| t.contains("DTSTART:20261203T100000Z")));
    for name in kept.keys() {
        assert!(
            name.contains("counter") && name.contains("mine@example.com"),
            "readable: {name}"
        );
    }
}

#[test]
fn unique_names_for_kept_copies_three_quarantined_stdin_messages() {
    let env = Env::new("[[policy]]\nname = \"hold\"\naction = \"quarantine\"\n");
    for i in 0..3 {
        let out = pipe(
            &env,
            &invitation(&format!("q-{i}@example.com"), 0, &format!("Q{i}")),
        );
        assert!(out.status.success(), "{out:?}");
    }
    let kept = dir_files(&env.path("state/quarantine"));
    assert_eq!(kept.len(), 3, "{:?}", kept.keys());
    for i in 0..3 {
        assert!(
            kept.values().any(|t| t.contains(&format!("SUMMARY:Q{i}"))),
            "Q{i} kept"
        );
    }
    assert!(env.store_files().is_empty());
}

// ---------------------------------------------------------------------------
// 4. Several held CANCELs for one UID.

#[test]
fn several_held_cancels_for_one_uid_are_all_applied() {
    let env = Env::new("");
    let instance_cancel = |rid: &str, stamp: &str| {
        mail(
            ALICE,
            "CANCEL",
            &[vevent(&[
                "UID:weekly-9@example.com",
                &format!("RECURRENCE-ID:{rid}"),
                "SEQUENCE:1",
                &format!("DTSTAMP:{stamp}"),
                "ORGANIZER:mailto:alice@example.com",
                "ATTENDEE:mailto:bob@example.com",
            ])],
        )
    };
    let series = mail(
        ALICE,
        "REQUEST",
        &[vevent(&[
            "UID:weekly-9@example.com",
            "SEQUENCE:1",
            "DTSTAMP:20261120T100000Z",
            "DTSTART:20261201T100000Z",
            "DTEND:20261201T110000Z",
            "RRULE:FREQ=WEEKLY;COUNT=6",
            "SUMMARY:Weekly",
            "ORGANIZER:mailto:alice@example.com",
            "ATTENDEE:mailto:bob@example.com",
        ])],
    );
    let effects = env.effects(&[
        &instance_cancel("20261208T100000Z", "20261121T100000Z"),
        &instance_cancel("20261215T100000Z", "20261121T110000Z"),
        &series,
    ]);
    assert_eq!(effects, ["held", "held", "created"]);
    let holders = files_with_uid(&env, "weekly-9@example.com");
    assert_eq!(holders.len(), 1);
    let text = &holders[0].1;
    let cancelled = |rid: &str| {
        text.contains(&format!("EXDATE:{rid}"))
            || text
                .split("BEGIN:VEVENT")
                .any(|c| c.contains(&format!("RECURRENCE-ID:{rid}")) && c.contains("CANCELLED"))
    };
    assert!(cancelled("20261208T100000Z"), "first instance: {text}");
    assert!(cancelled("20261215T100000Z"), "second instance: {text}");
    let left: Vec<_> = walk(&env.path("state/held"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    // Both are kept: a held CANCEL keeps its effect until a message newer
    // than it arrives (RFC 5546 §5.2.1; see itip::a_held_instance_cancel_keeps_its_effect).
    assert_eq!(left.len(), 2, "both held CANCELs kept: {left:?}");
}

// ---------------------------------------------------------------------------
// 5. The store can change under `run`.

#[test]
fn store_changes_under_run_are_seen() {
    let env = Env::new(
        "[[account]]\nname = \"mail\"\nsource = \"maildir\"\npath = \"Maildir\"\npoll_interval = 1\n",
    );
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(env.path("Maildir").join(sub)).unwrap();
    }
    let deliver = |name: &str, raw: &str| {
        let tmp = env.path("Maildir/tmp").join(name);
        std::fs::write(&tmp, raw).unwrap();
        std::fs::rename(&tmp, env.path("Maildir/new").join(name)).unwrap();
    };
    let mut run = imipd()
        .args(["run", "--config"])
        .arg(&env.config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // `run` is up, with its store open and indexed.
        deliver("1.first", &invitation("first@example.com", 0, "First"));
        wait_until("the first event filed", Duration::from_secs(60), || {
            !files_with_uid(&env, "first@example.com").is_empty()
        });
        // Another program adds an event under a name of its own ...
        let own = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//khal//EN\r\n\
                   BEGIN:VEVENT\r\nUID:added-by-khal@example.com\r\nSEQUENCE:0\r\n\
                   DTSTAMP:20261120T100000Z\r\nDTSTART:20261201T100000Z\r\nDTEND:20261201T110000Z\r\n\
                   SUMMARY:Synced\r\nORGANIZER;CN=Alice:mailto:alice@example.com\r\n\
                   ATTENDEE;PARTSTAT=ACCEPTED:mailto:bob@example.com\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
        std::fs::write(env.store().join("f81d4fae-synced.ics"), own).unwrap();
        // ... and the organizer's update for it arrives.
        deliver(
            "2.update",
            &invitation("added-by-khal@example.com", 1, "Synced (moved)"),
        );
        wait_until("the update filed", Duration::from_secs(60), || {
            objects(&env)
                .iter()
                .any(|(_, t)| t.contains("SUMMARY:Synced (moved)"))
        });
        let holders = files_with_uid(&env, "added-by-khal@example.com");
        let names: Vec<&str> = holders.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["f81d4fae-synced.ics"], "no second file");
        assert!(holders[0].1.contains("SEQUENCE:1"), "{}", holders[0].1);

        // A removed event is seen too: its update files it anew, once.
        std::fs::remove_file(env.store().join("f81d4fae-synced.ics")).unwrap();
        deliver(
            "3.again",
            &invitation("added-by-khal@example.com", 2, "Synced (again)"),
        );
        wait_until("the re-filed event", Duration::from_secs(60), || {
            objects(&env)
                .iter()
                .any(|(_, t)| t.contains("SUMMARY:Synced (again)"))
        });
        assert_eq!(files_with_uid(&env, "added-by-khal@example.com").len(), 1);
    }));
    let (status, _) = crate::support::terminate(&mut run, Duration::from_secs(20));
    if let Err(e) = result {
        let out = run.wait_with_output().unwrap();
        eprintln!("run said: {}", String::from_utf8_lossy(&out.stderr));
        std::panic::resume_unwind(e);
    }
    assert_eq!(status.code(), Some(0));
}

// ---------------------------------------------------------------------------
// 6. Private by default.

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.clone());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(walk(&p));
            }
        }
    }
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn private_by_default_state_modes_after_a_run() {
    // A failing `file` transport keeps the answer queued in the outbox.
    let env = Env::new(
        "[outgoing]\ntransport = \"file\"\npath = \"blocked/outbox\"\n\
         [[account]]\nname = \"mail\"\nsource = \"maildir\"\npath = \"Maildir\"\n\
         [[policy]]\nname = \"odd\"\nsenders = [\"mallory@evil.example\"]\naction = \"quarantine\"\n\
         [[policy]]\nname = \"yes\"\nmethods = [\"REQUEST\"]\norganizers = [\"alice@example.com\"]\naction = \"accept\"\n",
    );
    std::fs::write(env.path("blocked"), "a file, not a folder").unwrap();
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(env.path("Maildir").join(sub)).unwrap();
    }
    // A state folder from an older version, open to everyone.
    std::fs::create_dir_all(env.path("state")).unwrap();
    std::fs::set_permissions(env.path("state"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(env.path("state/answered.log"), "").unwrap();
    std::fs::set_permissions(
        env.path("state/answered.log"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();

    let cancel = mail(
        ALICE,
        "CANCEL",
        &[vevent(&[
            "UID:unknown@example.com",
            "SEQUENCE:1",
            "DTSTAMP:20261121T100000Z",
            "ORGANIZER:mailto:alice@example.com",
            "ATTENDEE:mailto:bob@example.com",
        ])],
    );
    let odd = mail(
        MALLORY,
        "REQUEST",
        &[vevent(&[
            "UID:odd@evil.example",
            "DTSTAMP:20261121T100000Z",
            "DTSTART:20261201T100000Z",
            "ORGANIZER:mailto:mallory@evil.example",
            "ATTENDEE:mailto:bob@example.com",
        ])],
    );
    let files = [
        env.message("a.eml", &invitation("answered@example.com", 0, "Yes")),
        env.message("b.eml", &cancel),
        env.message("c.eml", &odd),
        env.message("d.eml", &own_event()),
        env.message("e.eml", &counter("20261202T100000Z")),
    ];
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let (_, out) = env.process(&refs);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the answer stays queued: {out:?}"
    );
    std::fs::write(
        env.path("Maildir/new/1.x"),
        invitation("maildir@example.com", 0, "From the Maildir"),
    )
    .unwrap();
    let out = env.run(&["once"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    let state = env.path("state");
    assert_eq!(mode(&state), 0o700, "the state folder");
    let all = walk(&state);
    for sub in [
        "outbox",
        "held",
        "attention",
        "quarantine",
        "maildir",
        "lock",
        "answered.log",
    ] {
        assert!(
            all.iter()
                .any(|p| p.starts_with(state.join(sub)) && p.is_file()),
            "{sub} has a file: {all:?}"
        );
    }
    for p in all {
        let m = mode(&p);
        if p.is_dir() {
            assert_eq!(m, 0o700, "{}", p.display());
        } else {
            assert_eq!(m, 0o600, "{}", p.display());
        }
    }
}

#[test]
fn private_by_default_imap_folder_state() {
    let d = crate::harness::dovecot::Dovecot::start(&[("bob@example.com", "bob-secret")]);
    let env = Env::new(&format!(
        "[[account]]\nname = \"bob\"\nsource = \"imap\"\nhost = \"127.0.0.1\"\nport = {}\n\
         tls = \"implicit\"\nusername = \"bob@example.com\"\npassword = \"bob-secret\"\n\
         ca_file = \"{}\"\ntimeout = 10\n",
        d.imaps_port,
        d.certs.ca_pem.display()
    ));
    d.deliver_lmtp(
        "bob@example.com",
        invitation("imap-mode@example.com", 0, "IMAP").as_bytes(),
    );
    let once = || {
        let out = env.run(&["once"]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
    };
    once();
    let state = env.path("state");
    let files: Vec<_> = walk(&state.join("imap"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(!files.is_empty(), "the folder state is kept");
    for p in &files {
        assert_eq!(mode(p), 0o600, "{}", p.display());
    }
    assert_eq!(mode(&state), 0o700);
    // Folders inside are closed at the latest when imipd next opens the state.
    once();
    for p in walk(&state) {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&p), want, "{}", p.display());
    }
}

#[test]
fn private_by_default_symlinked_lock_is_not_followed() {
    let env = Env::new("");
    let outside = env.path("precious.txt");
    std::fs::write(&outside, "precious").unwrap();
    std::fs::create_dir_all(env.path("state")).unwrap();
    symlink(&outside, env.path("state/lock")).unwrap();
    let out = pipe(&env, &invitation("lock@example.com", 0, "Lock"));
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("symbolic link"), "{err}");
}

#[test]
fn private_by_default_symlinked_temp_file_is_not_followed() {
    let env = Env::new("");
    let outside = env.path("precious.txt");
    std::fs::write(&outside, "precious").unwrap();
    let mut child = spawn_pipe(&env);
    let pid = child.id();
    // Once the processor is open (the outbox folder is its last step), plant
    // symlinks at the temp names the write of the event would use.
    wait_until("the processor open", Duration::from_secs(30), || {
        env.path("state/outbox").is_dir()
    });
    let uid = "temp-link@example.com";
    symlink(&outside, env.store().join(format!(".{uid}.ics.{pid}.tmp"))).unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(invitation(uid, 0, "Temp").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious");
    assert!(out.status.success(), "{out:?}");
    let holders = files_with_uid(&env, uid);
    assert_eq!(holders.len(), 1);
    let meta = std::fs::symlink_metadata(env.store().join(&holders[0].0)).unwrap();
    assert!(meta.file_type().is_file(), "a real file, not a link");
}

#[test]
fn private_by_default_loose_password_file_is_refused() {
    let env = Env::new(
        "[[account]]\nname = \"work\"\nsource = \"imap\"\nhost = \"127.0.0.1\"\n\
         username = \"bob\"\npassword_file = \"secret\"\n",
    );
    let secret = env.path("secret");
    std::fs::write(&secret, "hunter2\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.run(&["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("password_file") && err.contains(&*secret.to_string_lossy()),
        "{err}"
    );
    assert!(
        err.contains("group or others") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(!err.contains("hunter2"));

    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = env.run(&["check"]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn private_by_default_check_warns_about_passwords_without_tls() {
    let cfg = |host: &str, smtp_host: &str| {
        format!(
            "[outgoing]\ntransport = \"smtp\"\nhost = \"{smtp_host}\"\ntls = \"none\"\n\
             username = \"bob\"\npassword = \"x\"\n\
             [[account]]\nname = \"work\"\nsource = \"imap\"\nhost = \"{host}\"\ntls = \"none\"\n\
             username = \"bob\"\npassword = \"x\"\n"
        )
    };
    let env = Env::new(&cfg("imap.example.com", "smtp.example.com"));
    let out = env.run(&["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a warning, not an error: {err}");
    assert!(
        err.contains("account work")
            && err.contains("imap.example.com")
            && err.contains("without TLS"),
        "{err}"
    );
    assert!(
        err.contains("outgoing") && err.contains("smtp.example.com"),
        "{err}"
    );

    let local = Env::new(&cfg("127.0.0.1", "localhost"));
    let out = local.run(&["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("without TLS"), "loopback is fine: {err}");
}

// ---------------------------------------------------------------------------
// 7. `check` says when the store or the state folder is not writable.

#[test]
fn check_says_when_the_store_or_state_is_not_writable() {
    let env = Env::new("");
    let out = env.run(&["check", "--process-only"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        env.store().is_dir(),
        "check creates the store as a run would"
    );

    // A path whose parent is a regular file cannot be written, even by root.
    let blocked = Env::new("");
    std::fs::write(blocked.path("somefile"), "").unwrap();
    let text = std::fs::read_to_string(&blocked.config)
        .unwrap()
        .replace("path = \"calendar\"", "path = \"somefile/calendar\"");
    std::fs::write(&blocked.config, text).unwrap();
    let out = blocked.run(&["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("store") && err.contains("somefile/calendar"),
        "{err}"
    );

    let text = std::fs::read_to_string(&blocked.config)
        .unwrap()
        .replace("path = \"somefile/calendar\"", "path = \"calendar\"")
        .replace("path = \"state\"", "path = \"somefile/state\"");
    std::fs::write(&blocked.config, text).unwrap();
    let out = blocked.run(&["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("state") && err.contains("somefile/state"),
        "{err}"
    );
}
