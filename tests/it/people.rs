//! Several people in one configuration: accounts that carry an identity
//! and a store of their own. Each invitation lands only in its person's
//! store and is answered from that person's address; the answered ledger
//! and the caps of one never affect another; `--account` picks a person
//! for `process` and `check`; `--shard K/N` splits the accounts between
//! processes without overlap; in `run`, a server that never answers holds
//! up nobody else.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::chaos::imap_account;
use crate::harness::dav::{DavServer, Kind};
use crate::harness::dovecot::Dovecot;
use crate::support::*;

const ALICE: &str = "Alice <alice@example.com>";

fn invitation(uid: &str, to: &[&str], start: &str) -> String {
    let mut lines = vec![
        format!("UID:{uid}"),
        "SEQUENCE:0".to_string(),
        "DTSTAMP:20261120T100000Z".to_string(),
        format!("DTSTART:{start}"),
        "DURATION:PT1H".to_string(),
        format!("SUMMARY:Meeting {uid}"),
        "ORGANIZER;CN=Alice:mailto:alice@example.com".to_string(),
    ];
    for a in to {
        lines.push(format!(
            "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:{a}"
        ));
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    mail(ALICE, "REQUEST", &[vevent(&refs)])
}

/// A scratch folder with a configuration file of the test's own.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self, text: &str) -> PathBuf {
        let p = self.path("config.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Put a message into a Maildir's `new/`.
    fn deliver(&self, maildir: &str, name: &str, raw: &str) {
        for d in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(self.path(maildir).join(d)).unwrap();
        }
        std::fs::write(self.path(maildir).join("new").join(name), raw).unwrap();
    }
}

/// A Maildir account for a person of its own.
fn room(name: &str, store: &str) -> String {
    format!(
        "[[account]]\nname = \"{name}\"\nsource = \"maildir\"\npath = \"mail/{name}\"\n\
         identity = {{ addresses = [\"{name}@example.com\"], name = \"Room {name}\" }}\n\
         store = {store}\n"
    )
}

const COMMON: &str = "[state]\npath = \"state\"\n\
    [outgoing]\ntransport = \"file\"\npath = \"sent\"\nmax_replies_per_hour = 2\n\
    [[policy]]\nname = \"alice\"\nmethods = [\"REQUEST\"]\norganizers = [\"alice@example.com\"]\naction = \"accept\"\n";

fn json_lines(out: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn outcomes_of(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|v| v.get("results").is_some())
        .collect()
}

fn vdir_uids(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = dir_files(dir)
        .values()
        .filter_map(|t| {
            unfold(t)
                .lines()
                .find_map(|l| l.strip_prefix("UID:").map(|u| u.trim().to_string()))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn people_three_accounts_three_people_each_answered_apart() {
    let dav = DavServer::start(Kind::Radicale);
    let s = Scratch::new();
    let cfg = s.config(&format!(
        "{COMMON}{}{}{}",
        room("room-101", "{ path = \"cal/101\" }"),
        room("room-102", "{ path = \"cal/102\" }"),
        room("room-103", &dav.store_toml()),
    ));
    let all = [
        "room-101@example.com",
        "room-102@example.com",
        "room-103@example.com",
    ];
    // One invitation to all three rooms, delivered to each mailbox.
    for r in ["room-101", "room-102", "room-103"] {
        s.deliver(
            &format!("mail/{r}"),
            "1.shared",
            &invitation("shared-1", &all, "20261201T100000Z"),
        );
    }
    // Two more for room-101: the second of them is over room-101's cap of
    // 2 answers per organizer and hour. One more for room-102: still
    // answered (its cap is its own).
    s.deliver(
        "mail/room-101",
        "2.a",
        &invitation("only-101-a", &all[..1], "20261202T100000Z"),
    );
    s.deliver(
        "mail/room-101",
        "3.b",
        &invitation("only-101-b", &all[..1], "20261203T100000Z"),
    );
    s.deliver(
        "mail/room-102",
        "2.c",
        &invitation("only-102", &all[1..2], "20261204T100000Z"),
    );
    let out = imipd()
        .args(["once", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    let outcomes = outcomes_of(&lines);
    assert_eq!(outcomes.len(), 6, "{lines:#?}");
    for o in &outcomes {
        assert_eq!(o["results"][0]["effect"], "created", "{o}");
    }
    let capped: Vec<&&Value> = outcomes
        .iter()
        .filter(|o| reply_text(&o["results"][0]).contains("held back by a cap"))
        .collect();
    assert_eq!(
        capped.len(),
        1,
        "only room-101's third answer is capped: {outcomes:#?}"
    );
    assert_eq!(capped[0]["results"][0]["uid"], "only-101-b");

    // Each invitation only in its person's store.
    assert_eq!(
        vdir_uids(&s.path("cal/101")),
        ["only-101-a", "only-101-b", "shared-1"]
    );
    assert_eq!(vdir_uids(&s.path("cal/102")), ["only-102", "shared-1"]);
    let on_dav: Vec<String> = dav
        .objects()
        .values()
        .map(|t| {
            unfold(&t.replace("\r\n", "\n"))
                .lines()
                .find_map(|l| l.strip_prefix("UID:").map(str::to_string))
                .unwrap()
        })
        .collect();
    assert_eq!(on_dav, ["shared-1"]);

    // Answered from each person's own address, naming only that person.
    let sent: Vec<String> = dir_files(&s.path("sent")).into_values().collect();
    assert_eq!(sent.len(), 5, "3 × shared-1, only-101-a, only-102");
    for (room, n) in [("room-101", 2), ("room-102", 2), ("room-103", 1)] {
        let mine: Vec<&String> = sent
            .iter()
            .filter(|m| m.contains(&format!("From: \"Room {room}\" <{room}@example.com>")))
            .collect();
        assert_eq!(mine.len(), n, "{room}: {sent:#?}");
        for m in mine {
            let vevents = calendar_vevents(m);
            for v in vevents {
                let attendees: Vec<&str> =
                    v.lines().filter(|l| l.starts_with("ATTENDEE")).collect();
                assert_eq!(attendees.len(), 1, "{v}");
                assert!(
                    attendees[0].ends_with(&format!("mailto:{room}@example.com")),
                    "{v}"
                );
            }
        }
    }
    // Each person's state apart; the global state holds no person's ledger.
    for room in ["room-101", "room-102", "room-103"] {
        let ledger =
            std::fs::read_to_string(s.path(&format!("state/people/{room}/answered.log"))).unwrap();
        assert!(!ledger.is_empty(), "{room}");
    }
    assert!(!s.path("state/answered.log").exists());

    // A ledger entry of one never affects another: room-103 answers the
    // invitation room-101 already answered, room-101 does not answer twice.
    let again = invitation(
        "only-101-a",
        &["room-101@example.com", "room-103@example.com"],
        "20261202T100000Z",
    );
    let p = s.path("again.eml");
    std::fs::write(&p, &again).unwrap();
    let run = |account: &str| {
        let out = imipd()
            .args(["process", "--json", "--account", account, "--config"])
            .arg(&cfg)
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        outcomes_of(&json_lines(&out))[0]["results"][0]["reply"]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(run("room-101").contains("already answered"));
    let r = run("room-103");
    assert!(
        r.starts_with("queued to alice@example.com"),
        "room-103 answers for itself: {r}"
    );
    assert_eq!(dav.objects().len(), 2);
    assert_eq!(vdir_uids(&s.path("cal/102")), ["only-102", "shared-1"]);

    // Without --account, `process` cannot tell whose calendar it is.
    let out = imipd()
        .args(["process", "--config"])
        .arg(&cfg)
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--account") && stderr.contains("room-101, room-102, room-103"),
        "{stderr}"
    );

    // `check --account` looks at one person (and logs in to its CalDAV store).
    let out = imipd()
        .args(["check", "--connect", "--account", "room-103", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("identity: room-103@example.com"),
        "{stdout}"
    );
    assert!(stdout.contains("calendar \"Calendar\""), "{stdout}");
    assert!(!stdout.contains("room-101"), "{stdout}");
}

#[test]
fn people_shards_split_accounts_without_overlap() {
    let s = Scratch::new();
    let names: Vec<String> = (0..9).map(|i| format!("bot-{i}")).collect();
    let mut text = COMMON.replace("max_replies_per_hour = 2", "max_replies_per_hour = 10");
    for n in &names {
        text.push_str(&room(n, &format!("{{ path = \"cal/{n}\" }}")));
        s.deliver(
            &format!("mail/{n}"),
            "1.x",
            &invitation(
                &format!("for-{n}"),
                &[&format!("{n}@example.com")],
                "20261201T100000Z",
            ),
        );
    }
    let cfg = s.config(&text);
    let mut handled: Vec<String> = Vec::new();
    for k in 1..=3 {
        let out = imipd()
            .args(["once", "--json", "--shard", &format!("{k}/3"), "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines = json_lines(&out);
        let uids: Vec<String> = outcomes_of(&lines)
            .iter()
            .map(|o| o["results"][0]["uid"].as_str().unwrap().to_string())
            .collect();
        assert!(
            uids.len() < names.len(),
            "shard {k}/3 took only its share: {uids:?}"
        );
        handled.extend(uids);
    }
    handled.sort();
    let mut want: Vec<String> = names.iter().map(|n| format!("for-{n}")).collect();
    want.sort();
    assert_eq!(handled, want, "every account in exactly one shard");
    assert_eq!(
        dir_files(&s.path("sent")).len(),
        names.len(),
        "each answered once"
    );
    // A shard run again finds nothing new.
    let out = imipd()
        .args(["once", "--json", "--shard", "2/3", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(outcomes_of(&json_lines(&out)).is_empty());
    assert_eq!(dir_files(&s.path("sent")).len(), names.len());
    // A bad shard is a command-line error.
    let out = imipd()
        .args(["once", "--shard", "4/3", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 ≤ K ≤ N"));
}

#[test]
fn people_a_server_that_never_answers_delays_no_one_else() {
    let d = Dovecot::start(&[("fast@example.com", "pw")]);
    // Accepts connections and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let s = Scratch::new();
    let mut text = COMMON.to_string();
    text.push_str(&imap_account(
        &d,
        "fast",
        ("fast@example.com", "pw"),
        "identity = { addresses = [\"fast@example.com\"] }\nstore = { path = \"cal/fast\" }\n",
    ));
    text.push_str(&format!(
        "[[account]]\nname = \"stuck\"\nsource = \"imap\"\nhost = \"127.0.0.1\"\nport = {silent_port}\n\
         tls = \"none\"\nusername = \"stuck\"\npassword = \"pw\"\ntimeout = 120\n\
         identity = {{ addresses = [\"stuck@example.com\"] }}\nstore = {{ path = \"cal/stuck\" }}\n"
    ));
    let cfg = s.config(&text);
    let log = s.path("run.log");
    let mut child = imipd()
        .args(["run", "--config"])
        .arg(&cfg)
        .env("IMIPD_LOG", "imipd=info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let wait = |what: &str, limit: Duration, f: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < limit,
                "timed out waiting for {what}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        start.elapsed()
    };
    wait(
        "the fast account to connect",
        Duration::from_secs(30),
        &|| {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("connected")
        },
    );
    d.deliver_lmtp(
        "fast@example.com",
        invitation("fast-1", &["fast@example.com"], "20261201T100000Z").as_bytes(),
    );
    let took = wait(
        "the fast account's answer",
        Duration::from_secs(30),
        &|| !dir_files(&s.path("sent")).is_empty(),
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    assert_eq!(vdir_uids(&s.path("cal/fast")), ["fast-1"]);
    drop(silent);
}

/// A shard moves to another machine: a fresh state folder, the same
/// mailbox and the same CalDAV calendar. Mail the first machine handled
/// carries the IMAP keyword on the server, so the second answers nothing
/// again; new mail it answers.
#[test]
fn people_a_shard_moves_to_another_machine_without_double_answers() {
    let d = Dovecot::start(&[("room@example.com", "pw")]);
    let dav = DavServer::start(Kind::Xandikos);
    let s = Scratch::new();
    let config = |machine: &str| {
        let mut text = COMMON.replace("path = \"state\"", &format!("path = \"{machine}/state\""));
        text = text.replace("path = \"sent\"", &format!("path = \"{machine}/sent\""));
        text.push_str(&imap_account(
            &d,
            "room",
            ("room@example.com", "pw"),
            &format!(
                "identity = {{ addresses = [\"room@example.com\"] }}\nstore = {}\n",
                dav.store_toml()
            ),
        ));
        s.config(&text)
    };
    let once = |cfg: &Path| {
        let out = imipd()
            .args(["once", "--json", "--shard", "1/1", "--config"])
            .arg(cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        outcomes_of(&json_lines(&out)).len()
    };
    d.deliver_lmtp(
        "room@example.com",
        invitation("first", &["room@example.com"], "20261201T100000Z").as_bytes(),
    );
    assert_eq!(once(&config("machine-a")), 1);
    assert_eq!(dir_files(&s.path("machine-a/sent")).len(), 1);
    // The shard now runs on machine B, with nothing of machine A's state.
    let b = config("machine-b");
    assert_eq!(once(&b), 0, "the keyword on the server says it was handled");
    assert!(
        dir_files(&s.path("machine-b/sent")).is_empty(),
        "no second answer"
    );
    d.deliver_lmtp(
        "room@example.com",
        invitation("second", &["room@example.com"], "20261202T100000Z").as_bytes(),
    );
    assert_eq!(once(&b), 1);
    assert_eq!(dir_files(&s.path("machine-b/sent")).len(), 1);
    assert_eq!(dav.objects().len(), 2, "both in the shared calendar");
}
