//! Hostile input, end to end: forged and malformed mail delivered to bob
//! through a real Dovecot (LMTP, or IMAP APPEND for exact bytes) and handled
//! by `imipd once --json` with a policy that accepts REQUESTs organized by
//! alice@example.com and answers through the `file` transport, at most
//! `max_replies_per_hour = 10` per organizer.
//!
//! For every item: the run ends normally (exit 0 or 1, never a signal), the
//! store is unchanged where it must be, nothing is written outside the
//! scratch folder (its whole tree is compared before and after), replies
//! are capped, and the JSON outcome says why.
//!
//! `IMIPD_HOSTILE_FLOOD` sets the size of the flood (default 200, full 1000).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

use crate::chaos::{env_usize, figure, imap_account};
use crate::harness::dovecot::Dovecot;
use crate::support::*;

const BOB: (&str, &str) = ("bob@example.com", "bob-secret");

/// A Dovecot with bob's mailbox and an imipd configuration reading it.
struct Hostile {
    d: Dovecot,
    env: Env,
}

/// What one `imipd once --json` said.
struct Run {
    code: i32,
    outcomes: Vec<Value>,
    passes: Vec<Value>,
    stderr: String,
}

impl Run {
    /// The outcome of the message with this Message-ID.
    fn outcome(&self, message_id: &str) -> &Value {
        self.outcomes
            .iter()
            .find(|o| o["message_id"] == format!("<{message_id}>"))
            .unwrap_or_else(|| {
                panic!(
                    "no outcome for <{message_id}>: {:#?}\n{}",
                    self.outcomes, self.stderr
                )
            })
    }

    fn bytes_read(&self) -> u64 {
        self.passes
            .iter()
            .map(|p| p["bytes_read"].as_u64().unwrap())
            .sum()
    }
}

/// The first result of an outcome.
fn result(o: &Value) -> &Value {
    &o["results"][0]
}

/// Every file and folder under `dir`, relative, with the size of files.
fn tree(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            if meta.is_dir() {
                out.insert(rel, 0);
                stack.push(p);
            } else {
                out.insert(rel, meta.len());
            }
        }
    }
    out
}

impl Hostile {
    fn new() -> Hostile {
        let d = Dovecot::start(&[BOB]);
        let env = Env::new(&format!(
            "[outgoing]\ntransport = \"file\"\npath = \"sent\"\nmax_replies_per_hour = 10\n\
             [[policy]]\nname = \"alice\"\nmethods = [\"REQUEST\"]\norganizers = [\"alice@example.com\"]\naction = \"accept\"\n{}",
            imap_account(&d, "bob", BOB, "")
        ));
        Hostile { d, env }
    }

    fn deliver(&self, raw: &[u8]) {
        self.d.deliver_lmtp(BOB.0, raw);
    }

    /// IMAP APPEND: the bytes exactly as given (no headers added).
    fn append(&self, raw: &[u8]) {
        self.d.append_imap(BOB.0, "INBOX", raw, &[]);
    }

    fn once(&self) -> Run {
        let out = imipd()
            .args(["once", "--json", "--config"])
            .arg(&self.env.config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let code = out
            .status
            .code()
            .unwrap_or_else(|| panic!("`imipd once` died of a signal: {}\n{stderr}", out.status));
        assert!(
            code == 0 || code == 1,
            "`imipd once` exited {code}:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        let lines: Vec<Value> = String::from_utf8(out.stdout)
            .expect("the JSON output is UTF-8")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l}: {e}")))
            .collect();
        let outcomes: Vec<Value> = lines
            .iter()
            .filter(|l| l.get("source").is_some())
            .cloned()
            .collect();
        for o in &outcomes {
            assert!(o["error"].is_null(), "a message failed: {o}");
        }
        Run {
            code,
            outcomes,
            passes: lines
                .iter()
                .filter_map(|l| l.get("pass"))
                .cloned()
                .collect(),
            stderr,
        }
    }

    /// Replies written by the file transport.
    fn sent(&self) -> Vec<String> {
        dir_files(&self.env.path("sent"))
            .into_iter()
            .filter(|(n, _)| n.ends_with(".eml"))
            .map(|(_, t)| t)
            .collect()
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            store: self.env.store_files(),
            tree: tree(self.env.dir.path()),
            sent: self.sent().len(),
        }
    }

    /// Nothing outside the store, the state and the transport's folder
    /// changed; nothing new at the top of the scratch folder.
    fn check_nothing_outside(&self, before: &Snapshot) {
        let after = tree(self.env.dir.path());
        for (p, size) in &after {
            let first = p.components().next().unwrap().as_os_str().to_string_lossy();
            assert!(
                ["calendar", "state", "sent", "config.toml"].contains(&first.as_ref()),
                "written outside the store, state and outbox: {}",
                p.display()
            );
            if first == "config.toml" {
                assert_eq!(Some(size), before.tree.get(p), "config.toml changed");
            }
        }
        for f in std::fs::read_dir(self.env.store()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            assert!(
                f.file_type().unwrap().is_file(),
                "not a plain file in the store: {name}"
            );
            assert!(
                name.ends_with(".ics") && !name.starts_with('.'),
                "a store file name that is not safe: {name:?}"
            );
        }
    }
}

struct Snapshot {
    store: BTreeMap<String, String>,
    tree: BTreeMap<PathBuf, u64>,
    sent: usize,
}

fn itip(id: &str, from: &str, method: &str, lines: &[&str]) -> String {
    format!(
        "From: {from}\r\nTo: bob@example.com\r\nSubject: {method}\r\nMessage-ID: <{id}>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/calendar; method={method}; charset=UTF-8\r\n\r\n\
         BEGIN:VCALENDAR\r\nPRODID:-//hostile//EN\r\nVERSION:2.0\r\nMETHOD:{method}\r\n{}END:VCALENDAR\r\n",
        vevent(lines)
    )
}

fn request(id: &str, from: &str, uid: &str, seq: u32, organizer: &str, extra: &[&str]) -> String {
    let mut lines = vec![
        format!("UID:{uid}"),
        format!("SEQUENCE:{seq}"),
        format!("DTSTAMP:2026112{}T100000Z", seq.min(9)),
        "DTSTART:20261201T100000Z".to_string(),
        "DTEND:20261201T110000Z".to_string(),
        format!("SUMMARY:Meeting {uid}"),
        format!("ORGANIZER:mailto:{organizer}"),
        "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.com".to_string(),
    ];
    lines.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    itip(id, from, "REQUEST", &refs)
}

#[test]
fn hostile_spoofed_cancel_request_and_organizer_change_change_nothing() {
    let h = Hostile::new();
    h.deliver(
        request(
            "legit@a",
            "alice@example.com",
            "h-1@example.com",
            0,
            "alice@example.com",
            &[],
        )
        .as_bytes(),
    );
    let r = h.once();
    assert_eq!(result(r.outcome("legit@a"))["effect"], "created");
    assert_eq!(h.sent().len(), 1);
    let before = h.snapshot();

    // A CANCEL from someone who is not the organizer.
    h.deliver(
        itip(
            "cancel@mallory",
            "Mallory <mallory@evil.example>",
            "CANCEL",
            &[
                "UID:h-1@example.com",
                "SEQUENCE:1",
                "DTSTAMP:20261125T100000Z",
                "ORGANIZER:mailto:alice@example.com",
                "ATTENDEE:mailto:bob@example.com",
                "STATUS:CANCELLED",
            ],
        )
        .as_bytes(),
    );
    // A REQUEST (an update) from someone who is not the organizer.
    h.deliver(
        request(
            "update@mallory",
            "mallory@evil.example",
            "h-1@example.com",
            5,
            "alice@example.com",
            &[],
        )
        .replace(
            "SUMMARY:Meeting h-1@example.com",
            "SUMMARY:Moved to my place",
        )
        .as_bytes(),
    );
    // A new invitation in alice's name from someone else.
    h.deliver(
        request(
            "new@mallory",
            "mallory@evil.example",
            "h-2@example.com",
            0,
            "alice@example.com",
            &[],
        )
        .as_bytes(),
    );
    // An update that changes the ORGANIZER (sent by the new "organizer").
    h.deliver(
        request(
            "takeover@mallory",
            "mallory@evil.example",
            "h-1@example.com",
            6,
            "mallory@evil.example",
            &[],
        )
        .as_bytes(),
    );
    // A CANCEL that changes the ORGANIZER too.
    h.deliver(
        itip(
            "cancel-takeover@mallory",
            "mallory@evil.example",
            "CANCEL",
            &[
                "UID:h-1@example.com",
                "SEQUENCE:7",
                "DTSTAMP:20261126T100000Z",
                "ORGANIZER:mailto:mallory@evil.example",
                "ATTENDEE:mailto:bob@example.com",
            ],
        )
        .as_bytes(),
    );
    let r = h.once();
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The new invitation in alice's name is filed, flagged as not from its
    // organizer, and never answered (issue 9 item 10): it changes no one
    // else's event.
    let o = r.outcome("new@mallory");
    assert_eq!(o["suspicious"], true, "{o}");
    let res = result(o);
    assert_eq!(res["effect"], "created", "{o}");
    assert!(
        res["reply"]["text"]
            .as_str()
            .unwrap()
            .contains("not shown to be its organizer"),
        "{o}"
    );
    let filed = h
        .env
        .store_files()
        .into_iter()
        .find(|(_, t)| t.contains("UID:h-2@example.com"))
        .map(|(_, t)| t)
        .unwrap();
    assert!(filed.contains("X-IMIPD-UNVERIFIED"), "{filed}");
    let mut store = h.env.store_files();
    store.retain(|_, t| !t.contains("UID:h-2@example.com"));
    for (id, why) in [
        ("cancel@mallory", "not the organizer"),
        ("update@mallory", "not the organizer"),
        ("takeover@mallory", "organizer would change"),
        ("cancel-takeover@mallory", "organizer would change"),
    ] {
        let o = r.outcome(id);
        // The takeovers come from the address they name as organizer.
        assert_eq!(o["suspicious"], !id.contains("takeover"), "{o}");
        let res = result(o);
        assert_eq!(res["effect"], "refused", "{id}: {o}");
        assert!(
            res["reason"].as_str().unwrap().contains(why),
            "{id}: the reason should say \"{why}\": {o}"
        );
        assert!(res["file"].is_null(), "{id}: {o}");
        if let Some(reply) = res["reply"]["text"].as_str() {
            assert!(reply.starts_with("not sent"), "{id}: {o}");
        }
    }
    assert_eq!(store, before.store, "the stored events are unchanged");
    assert_eq!(h.sent().len(), before.sent, "no reply to forged mail");
    h.check_nothing_outside(&before);
}

#[test]
fn hostile_forged_replies_change_nothing() {
    let h = Hostile::new();
    // My own event: I organize it, erin is invited.
    h.deliver(
        itip(
            "own@bob",
            "bob@example.com",
            "REQUEST",
            &[
                "UID:own-1@example.com",
                "SEQUENCE:0",
                "DTSTAMP:20261120T100000Z",
                "DTSTART:20261201T100000Z",
                "SUMMARY:My meeting",
                "ORGANIZER:mailto:bob@example.com",
                "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:erin@example.com",
            ],
        )
        .as_bytes(),
    );
    let r = h.once();
    assert_eq!(result(r.outcome("own@bob"))["role"], "organizer");
    let before = h.snapshot();
    let reply = |id: &str, from: &str, attendee: &str| {
        itip(
            id,
            from,
            "REPLY",
            &[
                "UID:own-1@example.com",
                "SEQUENCE:0",
                "DTSTAMP:20261121T100000Z",
                "ORGANIZER:mailto:bob@example.com",
                &format!("ATTENDEE;PARTSTAT=ACCEPTED:mailto:{attendee}"),
            ],
        )
    };
    // Someone who was never invited answers (a party crasher).
    h.deliver(
        reply(
            "crasher@mallory",
            "mallory@evil.example",
            "mallory@evil.example",
        )
        .as_bytes(),
    );
    // Someone answers in erin's name.
    h.deliver(
        reply(
            "as-erin@mallory",
            "mallory@evil.example",
            "erin@example.com",
        )
        .as_bytes(),
    );
    let r = h.once();
    assert_eq!(r.code, 0, "{}", r.stderr);
    for (id, why) in [
        ("crasher@mallory", "not an attendee"),
        ("as-erin@mallory", "not the attendee"),
    ] {
        let o = r.outcome(id);
        // The crasher answers for itself: the sender is right, the
        // attendee is not in the event.
        assert_eq!(o["suspicious"], id != "crasher@mallory", "{o}");
        let res = result(o);
        assert_eq!(res["effect"], "refused", "{id}: {o}");
        assert!(
            res["reason"].as_str().unwrap().contains(why),
            "{id}: the reason should mention \"{why}\": {o}"
        );
    }
    assert!(
        r.outcome("as-erin@mallory")
            .to_string()
            .contains("only the attendee who answers (erin@example.com) may"),
        "the problem names who may answer"
    );
    assert_eq!(h.env.store_files(), before.store, "the store is unchanged");
    assert_eq!(h.sent().len(), 0, "a REPLY is never answered");
    h.check_nothing_outside(&before);
}

#[test]
fn hostile_path_traversal_uids_stay_in_the_store() {
    let h = Hostile::new();
    let marker = format!("imipd-pwned-{}", std::process::id());
    let uids = [
        format!("../../../../../../tmp/{marker}"),
        format!("/tmp/{marker}-abs"),
        "..".to_string(),
        ".".to_string(),
        "a/../../b".to_string(),
        "..\\..\\windows".to_string(),
        ".hidden".to_string(),
        "con:nul".to_string(),
        format!("{}@x", "A/".repeat(300)),
        "uid with spaces and ümlauts/ok".to_string(),
    ];
    let before = h.snapshot();
    for (i, uid) in uids.iter().enumerate() {
        h.deliver(
            request(
                &format!("uid-{i}@a"),
                "alice@example.com",
                uid,
                0,
                "alice@example.com",
                &[],
            )
            .as_bytes(),
        );
    }
    let r = h.once();
    assert_eq!(r.code, 0, "{}", r.stderr);
    for (i, uid) in uids.iter().enumerate() {
        let o = r.outcome(&format!("uid-{i}@a"));
        assert_eq!(result(o)["effect"], "created", "{uid:?}: {o}");
        let file = PathBuf::from(result(o)["file"].as_str().unwrap());
        assert_eq!(
            file.parent().unwrap().canonicalize().unwrap(),
            h.env.store().canonicalize().unwrap(),
            "{uid:?} was filed outside the store: {}",
            file.display()
        );
        let text = std::fs::read_to_string(&file).unwrap();
        // The UID as imipd read it (`\.` is no TEXT escape: it reads `.`).
        let read = result(o)["uid"].as_str().unwrap();
        if read != uid {
            println!("UID {uid:?} is read as {read:?}");
        }
        let escaped = read.replace('\\', "\\\\");
        assert!(
            text.replace("\r\n ", "")
                .contains(&format!("UID:{escaped}\r\n")),
            "{uid:?} is in {}: {text}",
            file.display()
        );
    }
    assert_eq!(h.env.store_files().len(), uids.len(), "one file per UID");
    assert!(!Path::new(&format!("/tmp/{marker}")).exists());
    assert!(!Path::new(&format!("/tmp/{marker}-abs")).exists());
    assert!(!Path::new(&format!("/tmp/{marker}.ics")).exists());
    assert!(!Path::new(&format!("/tmp/{marker}-abs.ics")).exists());
    h.check_nothing_outside(&before);
    assert_eq!(h.sent().len(), 10, "answered up to the cap");
}

/// A mail with a multipart body: the given parts (each a full MIME part
/// with headers) inside multipart/mixed.
fn multipart(id: &str, from: &str, parts: &[String]) -> Vec<u8> {
    let mut raw = format!(
        "From: {from}\r\nTo: bob@example.com\r\nSubject: parts\r\nMessage-ID: <{id}>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"BOUNDARY\"\r\n\r\n"
    );
    for p in parts {
        raw.push_str("--BOUNDARY\r\n");
        raw.push_str(p);
        raw.push_str("\r\n");
    }
    raw.push_str("--BOUNDARY--\r\n");
    raw.into_bytes()
}

fn calendar_part(body: &str) -> String {
    format!("Content-Type: text/calendar; method=REQUEST; charset=UTF-8\r\n\r\n{body}")
}

/// The VCALENDAR of an invitation (the body of a `request` mail).
fn calendar(uid: &str, extra: &[&str]) -> String {
    let m = request(
        "x@x",
        "alice@example.com",
        uid,
        0,
        "alice@example.com",
        extra,
    );
    m.split_once("\r\n\r\n").unwrap().1.to_string()
}

#[test]
fn hostile_50_mb_parts_are_reported_and_not_downloaded() {
    let h = Hostile::new();
    let mb = 50 * 1024 * 1024;
    // A text/calendar part of 50 MB (a DESCRIPTION folded in 74-byte
    // lines): over limits.max_part_bytes (4 MiB).
    let line = format!("\r\n {}", "x".repeat(73));
    let description = format!("DESCRIPTION:start{}", line.repeat(mb / line.len()));
    let huge_calendar = calendar("big-cal@example.com", &[&description]);
    assert!(huge_calendar.len() > mb);
    let t0 = Instant::now();
    h.deliver(&multipart(
        "big-cal@a",
        "alice@example.com",
        &[
            "Content-Type: text/plain\r\n\r\nSee the invitation.".to_string(),
            calendar_part(&huge_calendar),
        ],
    ));
    // An ordinary invitation with a 50 MB attachment beside it.
    let b64_line = "QUFB".repeat(19);
    let attachment = std::iter::repeat_n(b64_line.as_str(), mb / 78)
        .collect::<Vec<_>>()
        .join("\r\n");
    h.deliver(&multipart(
        "big-attachment@a",
        "alice@example.com",
        &[
            calendar_part(&calendar("with-attachment@example.com", &[])),
            format!(
                "Content-Type: application/octet-stream; name=\"video.bin\"\r\n\
                 Content-Disposition: attachment; filename=\"video.bin\"\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\n{attachment}"
            ),
        ],
    ));
    // And the mail after them is handled as usual.
    h.deliver(
        request(
            "after-big@a",
            "alice@example.com",
            "after-big@example.com",
            0,
            "alice@example.com",
            &[],
        )
        .as_bytes(),
    );
    figure(
        "hostile 2 x 50 MB delivered over LMTP",
        format!("{:.1} s", t0.elapsed().as_secs_f64()),
    );
    let before = h.snapshot();
    let t0 = Instant::now();
    let r = h.once();
    figure(
        "hostile once over 2 x 50 MB messages",
        format!(
            "{:.2} s, {} bytes read",
            t0.elapsed().as_secs_f64(),
            r.bytes_read()
        ),
    );
    let o = r.outcome("big-cal@a");
    let said = o.to_string();
    assert!(
        said.contains("max_part_bytes"),
        "the 50 MB calendar part is reported with the limit it broke: {o}"
    );
    assert!(stored(&h.env, "big-cal@example.com").is_none(), "not filed");
    assert_eq!(result(r.outcome("big-attachment@a"))["effect"], "created");
    assert_eq!(result(r.outcome("after-big@a"))["effect"], "created");
    assert_eq!(h.sent().len(), 2, "the two good invitations are answered");
    h.check_nothing_outside(&before);
    assert!(
        r.bytes_read() < 1024 * 1024,
        "a calendar part over limits.max_part_bytes must not be downloaded: {} bytes read",
        r.bytes_read()
    );
}

#[test]
fn hostile_10000_attendees() {
    let h = Hostile::new();
    let many: Vec<String> = (0..10_000)
        .map(|i| format!("ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:guest{i}@example.org"))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    h.deliver(
        request(
            "many@a",
            "alice@example.com",
            "many@example.com",
            0,
            "alice@example.com",
            &refs,
        )
        .as_bytes(),
    );
    // The same crowd without me.
    let without_me = request(
        "many-not-me@a",
        "alice@example.com",
        "many-not-me@example.com",
        0,
        "alice@example.com",
        &refs,
    )
    .replace(
        "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.com\r\n",
        "",
    );
    h.deliver(without_me.as_bytes());
    let before = h.snapshot();
    let t0 = Instant::now();
    let r = h.once();
    figure(
        "hostile once over two 10,000-attendee invitations",
        format!("{:.2} s", t0.elapsed().as_secs_f64()),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let o = r.outcome("many@a");
    assert_eq!(result(o)["effect"], "created", "{o}");
    let o = r.outcome("many-not-me@a");
    assert!(
        result(o)["reply"]["text"]
            .as_str()
            .is_some_and(|s| s.contains("not an attendee")),
        "{o}"
    );
    let text = stored(&h.env, "many@example.com").unwrap();
    assert_eq!(text.matches("ATTENDEE").count(), 10_001);
    let sent = h.sent();
    assert_eq!(sent.len(), 1, "one reply, to the organizer only");
    let cal = sent[0].split("BEGIN:VCALENDAR").nth(1).unwrap();
    assert_eq!(
        cal.split("END:VCALENDAR")
            .next()
            .unwrap()
            .matches("ATTENDEE")
            .count(),
        1,
        "a REPLY names exactly one ATTENDEE"
    );
    assert!(sent[0].contains("To: alice@example.com"));
    h.check_nothing_outside(&before);
}

/// A calendar part inside `levels` nested multiparts.
fn nested(id: &str, uid: &str, levels: usize) -> String {
    let mut raw = format!(
        "From: alice@example.com\r\nTo: bob@example.com\r\nSubject: deep\r\nMessage-ID: <{id}>\r\nMIME-Version: 1.0\r\n"
    );
    for i in 0..levels {
        raw.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
        ));
    }
    raw.push_str(&calendar_part(&calendar(uid, &[])));
    raw.push_str("\r\n");
    for i in (0..levels).rev() {
        raw.push_str(&format!("--b{i}--\r\n"));
    }
    raw
}

#[test]
fn hostile_100_levels_of_nesting_are_reported_and_the_rest_goes_on() {
    let h = Hostile::new();
    // 100 levels (the case), and 30 and 70 (over limits.max_depth
    // = 24; under and over the 64 levels the IMAP BODYSTRUCTURE walk goes).
    let levels = [100, 30, 70];
    for n in levels {
        h.deliver(nested(&format!("deep-{n}@a"), &format!("deep-{n}@example.com"), n).as_bytes());
    }
    h.deliver(
        request(
            "after-deep@a",
            "alice@example.com",
            "after-deep@example.com",
            0,
            "alice@example.com",
            &[],
        )
        .as_bytes(),
    );
    let before = h.snapshot();
    let r = h.once();
    assert_eq!(result(r.outcome("after-deep@a"))["effect"], "created");
    h.check_nothing_outside(&before);
    // The same messages through `imipd process` (as from a Maildir or a pipe).
    let piped = Env::new("");
    let mut problems = Vec::new();
    for n in levels {
        let id = format!("<deep-{n}@a>");
        let uid = format!("deep-{n}@example.com");
        let file = piped.message(
            &format!("deep-{n}.eml"),
            &nested(&id[1..id.len() - 1], &uid, n),
        );
        let (v, _) = piped.process(&[&file]);
        let via_process = if v[0].to_string().contains("max_depth") {
            "reported with limits.max_depth"
        } else {
            "NOT reported with limits.max_depth"
        };
        let via_imap = match r.outcomes.iter().find(|o| o["message_id"] == id) {
            None => "no outcome at all (skipped silently)".to_string(),
            Some(o) if o.to_string().contains("max_depth") => {
                "reported with limits.max_depth".to_string()
            }
            Some(o) => format!(
                "not reported with limits.max_depth but {}: {}",
                result(o)["effect"],
                result(o)["reply"]
            ),
        };
        let filed = stored(&h.env, &uid).is_some();
        figure(
            &format!("hostile {n}-level nesting"),
            format!("process: {via_process}; IMAP: {via_imap}; filed from IMAP: {filed}"),
        );
        if !via_imap.starts_with("reported") || filed {
            problems.push(format!(
                "{n} levels: via process {via_process}; via IMAP {via_imap}{}",
                if filed { "; filed into the store" } else { "" }
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "mail nested deeper than limits.max_depth (24) must be reported with that limit and change nothing:\n{}",
        problems.join("\n")
    );
}

#[test]
fn hostile_invalid_utf8_is_read_lossily() {
    let h = Hostile::new();
    // Invalid UTF-8 in the Subject, in the From name and in the calendar
    // data (SUMMARY and an X- property), and Latin-1 declared as UTF-8.
    let mut raw = b"From: \xff\xfe Alice \xc3 <alice@example.com>\r\nTo: bob@example.com\r\nSubject: caf\xe9 \xff\r\n\
Message-ID: <utf8@a>\r\nMIME-Version: 1.0\r\nContent-Type: text/calendar; method=REQUEST; charset=UTF-8\r\n\r\n"
        .to_vec();
    raw.extend_from_slice(
        calendar("utf8@example.com", &["X-JUNK:\u{1}\u{0}"])
            .replace(
                "SUMMARY:Meeting utf8@example.com",
                "SUMMARY:Caf\u{e9}-PLACEHOLDER",
            )
            .as_bytes(),
    );
    let at = raw
        .windows(b"-PLACEHOLDER".len())
        .position(|w| w == b"-PLACEHOLDER")
        .unwrap();
    raw.splice(
        at..at + b"-PLACEHOLDER".len(),
        b" \xff\xfe\xc3\x28 \xe9t\xe9".iter().copied(),
    );
    h.append(&raw);
    h.deliver(
        request(
            "after-utf8@a",
            "alice@example.com",
            "after-utf8@example.com",
            0,
            "alice@example.com",
            &[],
        )
        .as_bytes(),
    );
    let before = h.snapshot();
    let r = h.once();
    let o = r.outcome("utf8@a");
    assert!(
        ["created", "ignored", "refused"].contains(&result(o)["effect"].as_str().unwrap_or("")),
        "{o}"
    );
    assert_eq!(result(r.outcome("after-utf8@a"))["effect"], "created");
    for f in std::fs::read_dir(h.env.store()).unwrap().flatten() {
        let bytes = std::fs::read(f.path()).unwrap();
        assert!(
            std::str::from_utf8(&bytes).is_ok(),
            "{} is not UTF-8",
            f.path().display()
        );
    }
    h.check_nothing_outside(&before);
}

#[test]
fn hostile_flood_from_one_organizer_is_capped() {
    let n = env_usize("IMIPD_HOSTILE_FLOOD", 200).max(11);
    let h = Hostile::new();
    let t0 = Instant::now();
    for i in 0..n {
        h.deliver(
            request(
                &format!("flood-{i}@a"),
                "alice@example.com",
                &format!("flood-{i}@example.com"),
                0,
                "alice@example.com",
                &[],
            )
            .as_bytes(),
        );
    }
    let delivered = t0.elapsed();
    let before = h.snapshot();
    let t0 = Instant::now();
    let r = h.once();
    let took = t0.elapsed();
    figure("hostile flood invitations", n);
    figure(
        "hostile flood delivery over LMTP",
        format!("{:.1} s", delivered.as_secs_f64()),
    );
    figure(
        "hostile flood once",
        format!(
            "{:.2} s ({:.1} ms per invitation)",
            took.as_secs_f64(),
            took.as_secs_f64() * 1000.0 / n as f64
        ),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.outcomes.len(), n);
    let sent = h.sent();
    figure("hostile flood replies sent (cap 10)", sent.len());
    assert_eq!(sent.len(), 10, "exactly max_replies_per_hour replies");
    let capped: Vec<&Value> = r
        .outcomes
        .iter()
        .filter(|o| {
            result(o)["reply"]["text"]
                .as_str()
                .is_some_and(|s| s.contains("max_replies_per_hour"))
        })
        .collect();
    assert_eq!(capped.len(), n - 10, "every capped one says why");
    for o in &r.outcomes {
        assert_eq!(result(o)["effect"], "created", "all are filed: {o}");
    }
    assert_eq!(h.env.store_files().len(), n, "all are filed");
    h.check_nothing_outside(&before);
    // A second pass sends nothing more.
    let r = h.once();
    assert!(r.outcomes.is_empty());
    assert_eq!(h.sent().len(), 10);
}
