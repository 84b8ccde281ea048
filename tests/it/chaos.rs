//! Chaos: `imipd once` against a real Dovecot holding a few hundred iMIP
//! messages (invitations, updates, instance and whole cancels, forged
//! requests, replies to an event I organize, plain mail), killed with SIGKILL
//! at random moments and restarted, over and over; then the final store and
//! the replies the SMTP receiver got are compared with one uninterrupted run
//! over an identical mailbox: no invitation lost, no reply missing, no reply
//! sent twice. Three variants: plain kills; the SMTP receiver down for a
//! while in the middle; Dovecot restarted in the middle (also under a
//! running `once`).
//!
//! Sizes come from the environment (CI defaults are small; `scripts/reliability`
//! runs the full size): `IMIPD_CHAOS_KILLS` (default 15), `IMIPD_CHAOS_MESSAGES`
//! (default 200), `IMIPD_CHAOS_SMTP_DOWN_SECS` (default 3), `IMIPD_CHAOS_SEED`.
//! Every test prints its figures as `FIGURE name: value` lines.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use imipd::classify::classify;
use imipd::config::Limits;
use serde_json::Value;

use crate::harness::dovecot::Dovecot;
use crate::harness::smtp::{Received, SmtpOptions, SmtpServer};
use crate::support::*;

const BOB: (&str, &str) = ("bob@example.com", "bob-secret");

/// A size from the environment, or the CI default.
pub(crate) fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Print a measured figure in the format `scripts/reliability` collects.
pub(crate) fn figure(name: &str, value: impl std::fmt::Display) {
    println!("FIGURE {name}: {value}");
}

/// An `[[account]]` section for `user` on `d` (implicit TLS, like a real
/// deployment).
pub(crate) fn imap_account(d: &Dovecot, name: &str, user: (&str, &str), extra: &str) -> String {
    format!(
        "[[account]]\nname = \"{name}\"\nsource = \"imap\"\nhost = \"127.0.0.1\"\nport = {}\n\
         tls = \"implicit\"\nusername = \"{}\"\npassword = \"{}\"\nca_file = \"{}\"\ntimeout = 10\n{extra}",
        d.imaps_port,
        user.0,
        user.1,
        d.certs.ca_pem.display()
    )
}

/// An iMIP message with a fixed Message-ID (so that two deliveries of the
/// same list are byte-identical).
fn itip(n: usize, from: &str, method: &str, lines: &[String]) -> String {
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    format!(
        "From: {from}\r\nTo: bob@example.com\r\nSubject: {method} {n}\r\nMessage-ID: <chaos-{n}@test>\r\n\
         Date: Fri, 20 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/calendar; method={method}; charset=UTF-8\r\n\r\n\
         BEGIN:VCALENDAR\r\nPRODID:-//chaos//EN\r\nVERSION:2.0\r\nMETHOD:{method}\r\n{}END:VCALENDAR\r\n",
        vevent(&refs)
    )
}

/// The mailbox: `count` messages. One event I organize (and attendees'
/// REPLYs to it), 60 events from three organizers, each invited again with
/// a higher SEQUENCE later on (updates), instance and whole CANCELs, a few
/// stale re-sends, forged REQUESTs and CANCELs from someone else, plain mail.
fn messages(count: usize) -> Vec<String> {
    let organizers = ["alice@example.com", "carol@example.org", "dave@example.net"];
    let mut out = vec![itip(
        0,
        "bob@example.com",
        "REQUEST",
        &[
            "UID:own@example.com".into(),
            "SEQUENCE:0".into(),
            "DTSTAMP:20261101T000000Z".into(),
            "DTSTART:20261210T100000Z".into(),
            "DTEND:20261210T110000Z".into(),
            "SUMMARY:My own meeting".into(),
            "ORGANIZER:mailto:bob@example.com".into(),
            "ATTENDEE;RSVP=TRUE:mailto:erin@example.com".into(),
            "ATTENDEE;RSVP=TRUE:mailto:frank@example.com".into(),
        ],
    )];
    for i in 0..count.saturating_sub(1) {
        let n = i + 1;
        let org = organizers[i % 3];
        let uid = format!("ev-{}@chaos.test", i % 60);
        let seq = i / 60;
        let stamp = format!(
            "202611{:02}T{:02}{:02}00Z",
            1 + (i / 10) % 28,
            i % 10,
            i % 60
        );
        let base = |seq: usize, stamp: &str| -> Vec<String> {
            vec![
                format!("UID:{uid}"),
                format!("SEQUENCE:{seq}"),
                format!("DTSTAMP:{stamp}"),
                format!("ORGANIZER;CN=Org {}:mailto:{org}", i % 3),
            ]
        };
        let raw = match i % 20 {
            // An instance cancelled.
            7 | 17 => {
                let mut l = base(seq, &stamp);
                l.push("RECURRENCE-ID;TZID=Europe/Berlin:20261208T100000".into());
                l.push("ATTENDEE:mailto:bob@example.com".into());
                itip(n, org, "CANCEL", &l)
            }
            // The whole event cancelled (re-invited later with a higher SEQUENCE).
            13 => {
                let mut l = base(seq, &stamp);
                l.push("ATTENDEE:mailto:bob@example.com".into());
                l.push("STATUS:CANCELLED".into());
                itip(n, org, "CANCEL", &l)
            }
            // An attendee answers my own event.
            9 | 19 => itip(
                n,
                ["erin@example.com", "frank@example.com"][(i / 20) % 2],
                "REPLY",
                &[
                    "UID:own@example.com".into(),
                    "SEQUENCE:0".into(),
                    format!("DTSTAMP:{stamp}"),
                    "ORGANIZER:mailto:bob@example.com".into(),
                    format!(
                        "ATTENDEE;PARTSTAT={}:mailto:{}",
                        ["ACCEPTED", "DECLINED", "TENTATIVE"][i % 3],
                        ["erin@example.com", "frank@example.com"][(i / 20) % 2]
                    ),
                ],
            ),
            // Plain mail: no calendar at all.
            5 => format!(
                "From: {org}\r\nTo: bob@example.com\r\nSubject: plain {n}\r\nMessage-ID: <chaos-{n}@test>\r\n\r\nno calendar here\r\n"
            ),
            // A forged REQUEST (someone else's From) for an existing UID.
            11 => {
                let mut l = base(seq + 5, &stamp);
                l.push("DTSTART:20261224T180000Z".into());
                l.push("SUMMARY:Forged".into());
                l.push("ATTENDEE;RSVP=TRUE:mailto:bob@example.com".into());
                itip(n, "mallory@evil.example", "REQUEST", &l)
            }
            // A stale re-send of an older version.
            15 => {
                let mut l = base(seq.saturating_sub(1), "20261001T000000Z");
                l.push("DTSTART;TZID=Europe/Berlin:20261201T100000".into());
                l.push("DURATION:PT1H".into());
                l.push("SUMMARY:Old version".into());
                l.push("ATTENDEE;RSVP=TRUE:mailto:bob@example.com".into());
                itip(n, org, "REQUEST", &l)
            }
            // An invitation or an update of one.
            _ => {
                let mut l = base(seq, &stamp);
                l.push(format!(
                    "DTSTART;TZID=Europe/Berlin:202612{:02}T{:02}0000",
                    1 + i % 7,
                    8 + seq
                ));
                l.push("DURATION:PT1H".into());
                l.push("RRULE:FREQ=WEEKLY;COUNT=10".into());
                l.push(format!("SUMMARY:Event {} v{seq}", i % 60));
                l.push("ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.com".into());
                l.push(format!("ATTENDEE;PARTSTAT=ACCEPTED:mailto:{org}"));
                itip(n, &format!("Org <{org}>"), "REQUEST", &l)
            }
        };
        out.push(raw);
    }
    out
}

/// One reply as the receiver got it: who to, its Message-ID, and what it
/// answers (UID, RECURRENCE-ID, SEQUENCE, my PARTSTAT).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Reply {
    pub rcpt: String,
    pub message_id: String,
    pub uid: String,
    pub rid: Option<String>,
    pub seq: Option<i64>,
    pub partstat: String,
}

pub(crate) fn parse_replies(received: &[Received]) -> Vec<Reply> {
    let mut out: Vec<Reply> = received
        .iter()
        .map(|r| {
            let rep = classify(&r.data, "received", &Limits::default()).report;
            let comp = rep
                .messages
                .first()
                .and_then(|m| m.components.first())
                .unwrap_or_else(|| panic!("a received message without iTIP: {}", r.data_str()));
            Reply {
                rcpt: r.rcpt_to.join(","),
                message_id: rep.message_id.clone().unwrap_or_default(),
                uid: comp.uid.clone().unwrap_or_default(),
                rid: comp.recurrence_id.clone(),
                seq: comp.sequence,
                partstat: comp
                    .attendees
                    .get("mailto:bob@example.com")
                    .cloned()
                    .unwrap_or_default(),
            }
        })
        .collect();
    out.sort();
    out
}

/// What a run over the mailbox must end with.
struct Reference {
    store: BTreeMap<String, String>,
    replies: Vec<Reply>,
    /// Flags of every message of the mailbox, in UID order.
    flags: Vec<Vec<String>>,
    /// The uninterrupted `once`.
    duration: Duration,
    /// A second `once` on the finished mailbox (connect, SELECT, nothing).
    warm: Duration,
    count: usize,
}

fn message_count() -> usize {
    env_usize("IMIPD_CHAOS_MESSAGES", 200).max(20)
}

fn config(d: &Dovecot, smtp_port: u16) -> String {
    format!(
        "[outgoing]\ntransport = \"smtp\"\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\ntimeout = 5\n\
         max_replies_per_hour = 100000\nmax_answers_per_hour = 100000\n\
         [[policy]]\nname = \"invitations\"\nmethods = [\"REQUEST\", \"ADD\"]\naction = \"accept\"\n{}",
        imap_account(d, "bob", BOB, "")
    )
}

fn deliver_all(d: &Dovecot, msgs: &[String]) {
    for m in msgs {
        d.deliver_lmtp(BOB.0, m.as_bytes());
    }
    assert_eq!(d.folder_count(BOB.0, "INBOX"), msgs.len());
}

/// Start `imipd once --json`, its stdout into `out` (a file, so a killed
/// run's lines can be read and a full pipe never slows it down).
fn spawn_once(env: &Env, out: &Path) -> Child {
    imipd()
        .args(["once", "--json", "--config"])
        .arg(&env.config)
        .stdout(Stdio::from(File::create(out).unwrap()))
        .stderr(Stdio::from(
            File::create(out.with_extension("err")).unwrap(),
        ))
        .spawn()
        .unwrap()
}

/// What a run (killed or not) printed: outcome lines and replies sent.
#[derive(Debug, Default, Clone, Copy)]
struct RunLines {
    outcomes: usize,
    sent: usize,
    failed_sends: usize,
}

fn read_lines(out: &Path) -> RunLines {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let mut r = RunLines::default();
    for l in text.lines() {
        // A killed run may leave half a line.
        let Ok(v) = serde_json::from_str::<Value>(l) else {
            continue;
        };
        if v.get("source").is_some() {
            r.outcomes += 1;
            assert!(
                v["error"].is_null(),
                "a message failed in a run that was not disturbed: {v}"
            );
        }
        match v["outbox"]["status"].as_str() {
            Some("sent") => r.sent += 1,
            Some(_) => r.failed_sends += 1,
            None => {}
        }
    }
    r
}

/// Run `once` to the end; its exit status and lines.
fn once_to_end(env: &Env, scratch: &Path) -> (ExitStatus, RunLines, String) {
    let out = scratch.join(format!("run-{}.jsonl", rand_suffix()));
    let mut child = spawn_once(env, &out);
    let status = wait_with_timeout(&mut child, Duration::from_secs(120))
        .expect("`imipd once` did not finish within 120 s");
    let err = std::fs::read_to_string(out.with_extension("err")).unwrap_or_default();
    let lines = if status.success() {
        read_lines(&out)
    } else {
        RunLines::default()
    };
    (status, lines, err)
}

fn wait_with_timeout(child: &mut Child, t: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + t;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The uninterrupted run, once per test binary (all chaos tests use the
/// same messages), on its own Dovecot and SMTP receiver.
fn reference() -> &'static Reference {
    static REF: OnceLock<Reference> = OnceLock::new();
    REF.get_or_init(|| {
        let count = message_count();
        let msgs = messages(count);
        let d = Dovecot::start(&[BOB]);
        let smtp = SmtpServer::start(SmtpOptions::plain());
        deliver_all(&d, &msgs);
        let env = Env::new(&config(&d, smtp.port));
        let t0 = Instant::now();
        let (status, lines, err) = once_to_end(&env, env.dir.path());
        let duration = t0.elapsed();
        assert!(status.success(), "reference run: {status} {err}");
        let t1 = Instant::now();
        let (status, again, err) = once_to_end(&env, env.dir.path());
        let warm = t1.elapsed();
        assert!(status.success(), "second reference run: {status} {err}");
        assert_eq!(
            again.outcomes + again.sent,
            0,
            "a finished mailbox is not read again"
        );
        let received = smtp.received();
        assert_eq!(received.len(), lines.sent);
        let replies = parse_replies(&received);
        let store = env.store_files();
        assert!(store.len() > 30, "reference store: {} objects", store.len());
        assert!(
            replies.len() > count / 3,
            "reference: only {} replies",
            replies.len()
        );
        figure("chaos reference messages", count);
        figure("chaos reference store objects", store.len());
        figure("chaos reference replies", replies.len());
        let build = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        figure(
            "chaos reference once, uninterrupted",
            format!("{} ms ({build} build)", duration.as_millis()),
        );
        figure(
            "chaos reference once again, nothing new",
            format!("{} ms", warm.as_millis()),
        );
        Reference {
            store,
            replies,
            flags: d.flags(BOB.0, "INBOX"),
            duration,
            warm,
            count,
        }
    })
}

/// One chaos run: a Dovecot that gets the same messages as the reference
/// (40% at the start, the rest in chunks while the runs are being killed:
/// mail keeps arriving), a receiver, and the bookkeeping of kills.
struct Chaos {
    name: &'static str,
    d: Dovecot,
    smtp: SmtpServer,
    env: Env,
    rng: Rng,
    /// Messages still to arrive, and how many arrive before each run.
    pending: std::collections::VecDeque<String>,
    chunk: usize,
    /// A kill comes `startup` plus a uniformly random part of `window`
    /// after the start of a run.
    startup: Duration,
    window: Duration,
    kills: usize,
    /// Killed runs that had handled a message (printed an outcome).
    kills_processing: usize,
    /// Killed runs during which the receiver got a reply.
    kills_sending: usize,
    completed_runs: usize,
    exit_codes: BTreeMap<i32, usize>,
    scratch: PathBuf,
    /// Dovecot itself was SIGKILLed: it may lose the name of a keyword it
    /// was storing (the message keeps the keyword's bit, and IMAP shows it
    /// as `unknown-N`), which no client can prevent.
    server_killed: bool,
}

impl Chaos {
    fn new(name: &'static str, seed: u64) -> Chaos {
        let r = reference();
        let d = Dovecot::start(&[BOB]);
        let smtp = SmtpServer::start(SmtpOptions::plain());
        let mut pending: std::collections::VecDeque<String> = messages(r.count).into();
        let first: Vec<String> = pending.drain(..r.count * 2 / 5).collect();
        deliver_all(&d, &first);
        let env = Env::new(&config(&d, smtp.port));
        let kills = env_usize("IMIPD_CHAOS_KILLS", 15).max(1);
        // The rest arrives over the first half of the kills.
        let chunk = pending.len().div_ceil((kills / 2).max(1));
        // Kills at uniformly random moments of the work: after the
        // start-up (process, TLS, login, SELECT), a random part of 1.6/K of
        // the uninterrupted run's work, so that K kills are spread over the
        // whole job (the messages, then the replies being sent) and most
        // often all land before the job is done.
        let work = r.duration.saturating_sub(r.warm);
        let window = work * 8 / (5 * kills as u32);
        let seed = std::env::var("IMIPD_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(seed);
        figure(&format!("chaos {name} seed (IMIPD_CHAOS_SEED)"), seed);
        let scratch = env.path("runs");
        std::fs::create_dir_all(&scratch).unwrap();
        Chaos {
            name,
            d,
            smtp,
            env,
            rng: Rng(seed | 1),
            pending,
            chunk,
            startup: r.warm,
            window,
            kills: 0,
            kills_processing: 0,
            kills_sending: 0,
            completed_runs: 0,
            exit_codes: BTreeMap::new(),
            scratch,
            server_killed: false,
        }
    }

    fn random_delay(&mut self) -> Duration {
        self.startup + Duration::from_micros(self.rng.below(self.window.as_micros() as u64 + 1))
    }

    /// The next chunk of mail arrives.
    fn arrive(&mut self) {
        if !self.d.is_running() {
            return; // no delivery while Dovecot is down
        }
        for _ in 0..self.chunk {
            match self.pending.pop_front() {
                Some(m) => self.d.deliver_lmtp(BOB.0, m.as_bytes()),
                None => break,
            }
        }
    }

    /// Mail arrives, `once` starts, and is SIGKILLed at a random moment if
    /// it is still running. `Some(exit code)` when it ended by itself first.
    fn cycle(&mut self) -> Option<i32> {
        self.arrive();
        let delay = self.random_delay();
        let out = self.scratch.join(format!("run-{}.jsonl", rand_suffix()));
        let received_before = self.smtp.received().len();
        let mut child = spawn_once(&self.env, &out);
        let deadline = Instant::now() + delay;
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_micros(500).min(deadline - Instant::now()));
        }
        let result = child.try_wait().unwrap();
        if result.is_none() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
        let lines = read_lines(&out);
        let received = self.smtp.received().len();
        if std::env::var("IMIPD_CHAOS_VERBOSE").is_ok_and(|v| v == "1") {
            println!(
                "{}: {} ms: {}, {} outcomes printed, receiver has {received}",
                self.name,
                delay.as_millis(),
                match result {
                    Some(s) => format!("ended by itself ({s})"),
                    None => "killed".into(),
                },
                lines.outcomes,
            );
        }
        match result {
            Some(status) => {
                let code = status
                    .code()
                    .unwrap_or_else(|| panic!("`imipd once` died of a signal: {status}"));
                assert!(
                    code == 0 || code == 3,
                    "{}: an undisturbed run exited {code}: {}",
                    self.name,
                    std::fs::read_to_string(out.with_extension("err")).unwrap_or_default()
                );
                *self.exit_codes.entry(code).or_default() += 1;
                self.completed_runs += 1;
                // The run was faster than the calibration (a machine whose
                // load changed): kill sooner from now on, so that the kills
                // asked for happen whatever the machine is doing.
                self.window /= 2;
                self.startup /= 2;
                Some(code)
            }
            None => {
                self.kills += 1;
                if lines.outcomes > 0 {
                    self.kills_processing += 1;
                }
                if received > received_before {
                    self.kills_sending += 1;
                }
                None
            }
        }
    }

    /// Cycle until `n` runs were killed, or the job is done (a run ended
    /// by itself with exit 0 and all mail has arrived), or a run ended by
    /// itself with exit 3 (the receiver is down: only sending is left).
    fn kill_runs(&mut self, n: usize) {
        let target = self.kills + n;
        while self.kills < target {
            match self.cycle() {
                Some(0) if self.pending.is_empty() => return,
                Some(3) => return,
                _ => {}
            }
        }
    }

    /// Run `once` undisturbed until it exits 0 (the outbox is empty then).
    fn finish(&mut self) {
        while !self.pending.is_empty() {
            self.arrive();
        }
        // A Dovecot killed in the middle of writing a folder may leave a
        // lock behind that makes SELECT wait until it is stale (Dovecot's
        // dotlocks go stale after two minutes): keep trying that long.
        let start = Instant::now();
        let mut failed = 0;
        while start.elapsed() < Duration::from_secs(150) {
            let (status, _, err) = once_to_end(&self.env, &self.scratch);
            *self
                .exit_codes
                .entry(status.code().unwrap_or(-1))
                .or_default() += 1;
            if status.success() {
                if failed > 0 {
                    figure(
                        &format!("chaos {} finishing runs that failed first", self.name),
                        format!("{failed} ({:.0} s)", start.elapsed().as_secs_f64()),
                    );
                }
                return;
            }
            failed += 1;
            eprintln!("{}: finishing run exited {status}: {err}", self.name);
            std::thread::sleep(Duration::from_millis(500));
        }
        let log = self.d.log();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        panic!(
            "{}: `imipd once` does not finish; Dovecot's log ends with:\n{}",
            self.name,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    /// Compare with the reference and print the figures.
    fn check(&mut self, started: Instant) {
        let r = reference();
        let n = self.name;
        // One more pass: nothing left to do.
        let (status, lines, err) = once_to_end(&self.env, &self.scratch);
        assert!(status.success(), "{n}: {err}");
        assert_eq!(
            lines.outcomes + lines.sent,
            0,
            "{n}: a finished mailbox is not read again"
        );
        let state = self.env.path("state");
        let (queued, temps): (Vec<String>, Vec<String>) = dir_files(&state.join("outbox"))
            .into_keys()
            .partition(|n| !n.starts_with('.'));
        assert!(queued.is_empty(), "{n}: the outbox is empty: {queued:?}");
        let store_temps: Vec<String> = self
            .env
            .store_files()
            .into_keys()
            .filter(|n| n.starts_with('.'))
            .collect();
        figure(
            &format!("chaos {n} temp files left by kills (outbox, store)"),
            format!("{}, {}", temps.len(), store_temps.len()),
        );
        assert_eq!(
            dir_files(&state.join("outbox-rejected")).len(),
            0,
            "{n}: nothing rejected"
        );

        let received = self.smtp.received();
        let got = parse_replies(&received);
        let count = |v: &[Reply]| {
            let mut m: BTreeMap<Reply, usize> = BTreeMap::new();
            for x in v {
                *m.entry(x.clone()).or_default() += 1;
            }
            m
        };
        let want = count(&r.replies);
        let have = count(&got);
        let missing: Vec<&Reply> = want.keys().filter(|k| !have.contains_key(*k)).collect();
        let unexpected: Vec<&Reply> = have.keys().filter(|k| !want.contains_key(*k)).collect();
        let duplicates: Vec<(&Reply, usize)> = have
            .iter()
            .filter(|(k, n)| **n > want.get(*k).copied().unwrap_or(0))
            .map(|(k, n)| (k, *n))
            .collect();
        // The same answer (recipient, UID, RECURRENCE-ID, SEQUENCE,
        // PARTSTAT) twice under different Message-IDs would be a real
        // second reply, not a resent copy.
        type Answer<'a> = (&'a str, &'a str, &'a Option<String>, Option<i64>, &'a str);
        let mut by_answer: BTreeMap<Answer, Vec<&str>> = BTreeMap::new();
        for x in &got {
            by_answer
                .entry((&x.rcpt, &x.uid, &x.rid, x.seq, &x.partstat))
                .or_default()
                .push(&x.message_id);
        }
        let answered_twice_differently: Vec<_> = by_answer
            .iter()
            .filter(|(_, ids)| ids.iter().any(|i| *i != ids[0]))
            .collect();

        figure(&format!("chaos {n} kills"), self.kills);
        figure(
            &format!("chaos {n} kills while handling messages"),
            self.kills_processing,
        );
        figure(
            &format!("chaos {n} kills while sending replies"),
            self.kills_sending,
        );
        figure(
            &format!("chaos {n} runs that ended by themselves (exit status: count)"),
            format!("{} {:?}", self.completed_runs, self.exit_codes),
        );
        figure(
            &format!("chaos {n} kill moment"),
            format!(
                "{} ms + uniform 0..{} ms after start",
                self.startup.as_millis(),
                self.window.as_millis()
            ),
        );
        figure(
            &format!("chaos {n} replies received / expected"),
            format!("{} / {}", got.len(), r.replies.len()),
        );
        figure(&format!("chaos {n} replies missing"), missing.len());
        figure(
            &format!("chaos {n} replies received twice (same Message-ID)"),
            duplicates.len(),
        );
        figure(
            &format!("chaos {n} answers sent twice with different Message-IDs"),
            answered_twice_differently.len(),
        );

        let store = self.env.store_files();
        let lost: Vec<&String> = r.store.keys().filter(|k| !store.contains_key(*k)).collect();
        let differ: Vec<&String> = r
            .store
            .keys()
            .filter(|k| store.get(*k).is_some_and(|v| v != &r.store[*k]))
            .collect();
        let extra: Vec<&String> = store.keys().filter(|k| !r.store.contains_key(*k)).collect();
        figure(&format!("chaos {n} store objects lost"), lost.len());
        figure(&format!("chaos {n} store objects different"), differ.len());
        figure(
            &format!("chaos {n} time"),
            format!("{:.1} s", started.elapsed().as_secs_f64()),
        );
        if !duplicates.is_empty() {
            println!(
                "{n}: received twice with the same Message-ID (killed after the receiver \
                 had the whole message, before the outbox entry was removed): {duplicates:?}"
            );
        }
        let kills = env_usize("IMIPD_CHAOS_KILLS", 15).max(1);
        assert!(
            self.kills * 2 >= kills,
            "{n}: only {} of {kills} runs were killed before the job was done",
            self.kills
        );
        assert!(
            lost.is_empty() && differ.is_empty() && extra.is_empty(),
            "{n}: the store differs from the uninterrupted run after {} kills: lost {lost:?}, different {differ:?}, extra {extra:?}",
            self.kills
        );
        assert!(
            missing.is_empty(),
            "{n}: {} replies missing after {} kills: {missing:#?}",
            missing.len(),
            self.kills
        );
        assert!(
            unexpected.is_empty(),
            "{n}: replies nobody expected: {unexpected:#?}"
        );
        assert!(
            answered_twice_differently.is_empty(),
            "{n}: one answer sent twice under different Message-IDs: {answered_twice_differently:#?}"
        );
        // A kill after the receiver has the whole message and before the
        // outbox entry is removed sends it again at the next start, with the
        // same Message-ID (at least once). IMIPD_CHAOS_STRICT=1 fails on it.
        if std::env::var("IMIPD_CHAOS_STRICT").is_ok_and(|v| v == "1") {
            assert!(
                duplicates.is_empty(),
                "{n}: replies received twice (same Message-ID): {duplicates:#?}"
            );
        }
        let mut flags = self.d.flags(BOB.0, "INBOX");
        if self.server_killed {
            // The only keyword this mailbox ever gets is imipd's.
            let mut renamed = 0;
            for f in flags.iter_mut().flatten() {
                if f.starts_with("unknown-") {
                    *f = "$iMIPProcessed".to_string();
                    renamed += 1;
                }
            }
            figure(
                &format!("chaos {n} keywords whose name the killed Dovecot lost"),
                renamed,
            );
        }
        assert_eq!(
            flags, r.flags,
            "{n}: the mailbox flags differ from the uninterrupted run"
        );
    }
}

#[test]
fn chaos_sigkill_at_random_moments() {
    let started = Instant::now();
    let mut c = Chaos::new("sigkill", 0x9e37_79b9_7f4a_7c15);
    let kills = env_usize("IMIPD_CHAOS_KILLS", 15).max(1);
    c.kill_runs(kills);
    c.finish();
    c.check(started);
}

#[test]
fn chaos_sigkill_with_the_smtp_receiver_down_for_a_while() {
    let started = Instant::now();
    let mut c = Chaos::new("smtp-down", 0x2545_f491_4f6c_dd1d);
    let kills = env_usize("IMIPD_CHAOS_KILLS", 15).max(3);
    let down = Duration::from_secs(env_usize("IMIPD_CHAOS_SMTP_DOWN_SECS", 3) as u64);
    c.kill_runs(kills / 3);
    c.smtp.stop();
    // Counted after the stop: a run killed just before may still have got
    // its last message through (the kernel sends what it had buffered).
    let sent_before = c.smtp.received().len();
    let down_at = Instant::now();
    // Kills while the receiver is down (mail keeps arriving): replies pile
    // up in the outbox.
    c.kill_runs(kills / 3);
    // Undisturbed runs keep trying until it is back: exit 3, all kept.
    loop {
        c.arrive();
        let (status, _, err) = once_to_end(&c.env, &c.scratch);
        let code = status.code().unwrap_or(-1);
        assert_eq!(
            code, 3,
            "with the SMTP receiver down, once exits 3: {status} {err}"
        );
        *c.exit_codes.entry(code).or_default() += 1;
        let left = down.saturating_sub(down_at.elapsed());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1000).min(left));
    }
    let queued = dir_files(&c.env.path("state/outbox"))
        .into_keys()
        .filter(|n| !n.starts_with('.'))
        .count();
    assert_eq!(
        c.smtp.received().len(),
        sent_before,
        "nothing arrives while it is down"
    );
    figure(
        "chaos smtp-down receiver down for",
        format!("{:.1} s", down_at.elapsed().as_secs_f64()),
    );
    figure("chaos smtp-down replies queued when it came back", queued);
    assert!(
        queued > 0,
        "replies were queued while the receiver was down"
    );
    c.smtp.restart();
    // Kills while the backlog is being sent.
    let rest = kills.saturating_sub(c.kills).max(1);
    c.kill_runs(rest);
    c.finish();
    c.check(started);
}

#[test]
fn chaos_sigkill_with_dovecot_restarted_in_the_middle() {
    let started = Instant::now();
    let mut c = Chaos::new("dovecot-restart", 0x0123_4567_89ab_cdef);
    c.server_killed = true;
    let kills = env_usize("IMIPD_CHAOS_KILLS", 15).max(2);
    let uidvalidity = c.d.uidvalidity(BOB.0, "INBOX");
    // Dovecot dies under a running `once` (just after new mail arrived, so
    // it is reading it) and comes back: at the start (that run must end by
    // itself: no hang, no crash), and after a third of the kills (that run
    // is killed too if it is still sending). While Dovecot is down the runs
    // go on (and are killed): they can only send, and end with exit 3.
    for round in 0..2 {
        c.arrive();
        let out = c.scratch.join(format!("run-{}.jsonl", rand_suffix()));
        let mut child = spawn_once(&c.env, &out);
        let delay = c.startup + Duration::from_millis(c.rng.below(100));
        std::thread::sleep(delay);
        c.d.stop();
        if round == 1 {
            let delay = c.random_delay();
            std::thread::sleep(delay);
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                child.wait().unwrap();
                c.kills += 1;
            }
        }
        match wait_with_timeout(&mut child, Duration::from_secs(60)) {
            None => panic!("`imipd once` hangs when Dovecot dies under it"),
            Some(status) => match status.code() {
                Some(code) => {
                    assert!(
                        [0, 1, 3].contains(&code),
                        "Dovecot killed under `once`: exit {code}: {}",
                        std::fs::read_to_string(out.with_extension("err")).unwrap_or_default()
                    );
                    *c.exit_codes.entry(code).or_default() += 1;
                }
                None => assert_eq!(round, 1, "`imipd once` died of a signal: {status}"),
            },
        }
        for _ in 0..2 {
            if let Some(code) = c.cycle() {
                assert_eq!(code, 3, "with the IMAP server down, once exits 3");
            }
        }
        c.d.restart();
        if round == 0 {
            c.kill_runs(kills / 3);
        }
    }
    assert_eq!(
        c.d.uidvalidity(BOB.0, "INBOX"),
        uidvalidity,
        "a restart keeps UIDVALIDITY"
    );
    let rest = kills.saturating_sub(c.kills);
    c.kill_runs(rest);
    c.finish();
    c.check(started);
}

/// The crash-safety claim checked at every step instead of at random
/// moments: `imipd process` with an invitation and its update is killed
/// (SIGKILL injected with strace) at the k-th fsync, fdatasync, rename or
/// unlink, for every k and each of these in turn, and run again; each time
/// the store must equal an uninterrupted run's and both invitations must be
/// answered, once each.
#[test]
fn a_kill_at_every_durable_step_loses_no_answer() {
    // scripts/test installs strace; without it this test fails, it never
    // passes by skipping.
    assert!(
        std::process::Command::new("strace")
            .arg("-V")
            .output()
            .is_ok(),
        "strace is not installed (apt-get install strace; scripts/test does it)"
    );
    let cfg = "[outgoing]\ntransport = \"file\"\npath = \"sent\"\n\
               [[policy]]\nname = \"invitations\"\nmethods = [\"REQUEST\"]\naction = \"accept\"\n";
    let invite = |seq: usize, n: usize| {
        itip(
            n,
            "Alice <alice@example.com>",
            "REQUEST",
            &[
                "UID:steps@example.com".into(),
                format!("SEQUENCE:{seq}"),
                format!("DTSTAMP:2026112{seq}T100000Z"),
                format!("DTSTART;TZID=Europe/Berlin:2026120{}T100000", seq + 1),
                "DURATION:PT1H".into(),
                "SUMMARY:Steps".into(),
                "ORGANIZER:mailto:alice@example.com".into(),
                "ATTENDEE;RSVP=TRUE:mailto:bob@example.com".into(),
            ],
        )
    };
    let msgs = [invite(0, 9001), invite(1, 9002)];
    let put = |env: &Env| -> Vec<PathBuf> {
        msgs.iter()
            .enumerate()
            .map(|(i, m)| env.message(&format!("m{i}.eml"), m))
            .collect()
    };
    // Sent replies: the .eml files of the file transport (a crash may
    // leave a dot-file temp beside them; those are counted apart).
    let sent = |env: &Env| -> (usize, Vec<String>) {
        let names: Vec<String> = dir_files(&env.path("sent")).into_keys().collect();
        let eml = names.iter().filter(|n| !n.starts_with('.')).count();
        (
            eml,
            names.into_iter().filter(|n| n.starts_with('.')).collect(),
        )
    };
    let clean = Env::new(cfg);
    let files = put(&clean);
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (_, out) = clean.process(&refs);
    assert!(out.status.success());
    let want_store = clean.store_files();
    assert_eq!(sent(&clean).0, 2, "both versions are answered");

    let mut failures = Vec::new();
    let mut leftovers = Vec::new();
    let mut steps = 0;
    for syscall in DURABLE_STEPS {
        for k in 1.. {
            let env = Env::new(cfg);
            let files = put(&env);
            let names: Vec<&str> = files.iter().map(|f| f.to_str().unwrap()).collect();
            let args = [
                &["process", "--config", env.config.to_str().unwrap()][..],
                &names,
            ]
            .concat();
            if let Some(status) = run_killed_at(syscall, k, &args) {
                assert!(status.success(), "{syscall} #{k}: {status}");
                break;
            }
            steps += 1;
            // The restart: the same messages again (a mailbox shows them
            // again until they are marked handled).
            let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
            let (outcomes, out) = env.process(&refs);
            assert!(
                out.status.success(),
                "restart after a kill at {syscall} #{k}: {out:?}"
            );
            let (n, temps) = sent(&env);
            if !temps.is_empty() {
                leftovers.push(format!("{syscall} #{k}: {temps:?}"));
            }
            let store_ok = env.store_files() == want_store;
            if n != 2 || !store_ok {
                let said: Vec<String> = outcomes
                    .iter()
                    .flat_map(|o| o["results"].as_array().cloned().unwrap_or_default())
                    .map(|r| format!("{}: {}", r["effect"], r["reply"]))
                    .collect();
                failures.push(format!(
                    "killed at {syscall} #{k}: {n} of 2 answers sent, store {}; the restart said {said:?}",
                    if store_ok { "as expected" } else { "DIFFERENT" }
                ));
            }
            assert!(k < 100, "more than 100 {syscall} calls for two messages?");
        }
    }
    figure("crash steps: durable steps killed at", steps);
    figure(
        "crash steps: kills after which an answer was lost or the store differed",
        failures.len(),
    );
    figure(
        "crash steps: kills that left a temp file in the file transport's folder",
        leftovers.len(),
    );
    for l in &leftovers {
        println!("temp file left in the file transport's folder after a kill at {l}");
    }
    assert!(
        failures.is_empty(),
        "a kill at these steps loses something:\n{}",
        failures.join("\n")
    );
}

/// The same claim for `imipd respond` (issue 14): killed at every fsync,
/// fdatasync, rename and unlink in turn — while answering an invitation
/// the first time, and while changing that answer — then run again, and
/// followed by `once` (which answers edits made in the calendar). Each time
/// exactly one REPLY per answer is sent (none lost, none twice) and my
/// copy in the store says the last answer.
#[test]
fn a_kill_at_every_durable_step_of_respond_sends_one_reply() {
    assert!(
        std::process::Command::new("strace")
            .arg("-V")
            .output()
            .is_ok(),
        "strace is not installed (apt-get install strace; scripts/test does it)"
    );
    let cfg = "[outgoing]\ntransport = \"file\"\npath = \"sent\"\n";
    let invite = itip(
        9101,
        "Alice <alice@example.com>",
        "REQUEST",
        &[
            "UID:respond-steps@example.com".into(),
            "SEQUENCE:0".into(),
            "DTSTAMP:20261120T100000Z".into(),
            "DTSTART;TZID=Europe/Berlin:20261201T100000".into(),
            "DURATION:PT1H".into(),
            "SUMMARY:Steps".into(),
            "ORGANIZER:mailto:alice@example.com".into(),
            "ATTENDEE;RSVP=TRUE:mailto:bob@example.com".into(),
        ],
    );
    let uid = "respond-steps@example.com";
    // The answers sent: the PARTSTAT of each .eml of the file transport.
    let sent = |env: &Env| -> Vec<String> {
        dir_files(&env.path("sent"))
            .into_iter()
            .filter(|(n, _)| !n.starts_with('.'))
            .map(|(_, m)| {
                calendar_vevents(&m)
                    .first()
                    .and_then(|v| {
                        ["ACCEPTED", "DECLINED", "TENTATIVE"]
                            .into_iter()
                            .find(|p| v.contains(&format!("PARTSTAT={p}")))
                    })
                    .unwrap_or("?")
                    .to_string()
            })
            .collect()
    };
    let respond = |env: &Env, answer: &str| {
        imipd()
            .args(["respond", "--config"])
            .arg(&env.config)
            .args([uid, answer])
            .output()
            .unwrap()
    };
    let mut failures = Vec::new();
    let mut steps = 0;
    // (answers given before, the answer killed, what must be sent in all)
    for (before, answer, want) in [
        (vec![], "accept", vec!["ACCEPTED"]),
        (vec!["accept"], "decline", vec!["ACCEPTED", "DECLINED"]),
    ] {
        for syscall in DURABLE_STEPS {
            for k in 1.. {
                let env = Env::new(cfg);
                let m = env.message("invite.eml", &invite);
                let (_, out) = env.process(&[&m]);
                assert!(out.status.success());
                for b in &before {
                    assert!(respond(&env, b).status.success());
                }
                let config = env.config.to_str().unwrap();
                if let Some(status) =
                    run_killed_at(syscall, k, &["respond", "--config", config, uid, answer])
                {
                    assert!(status.success(), "{answer} {syscall} #{k}: {status}");
                    break;
                }
                steps += 1;
                // The restart: the person (or bot) answers again, and the
                // next pass looks at the calendar.
                let again = respond(&env, answer);
                let once = env.run(&["once"]);
                let got = sent(&env);
                let mut sorted = got.clone();
                sorted.sort();
                let mut want_sorted: Vec<String> = want.iter().map(|s| s.to_string()).collect();
                want_sorted.sort();
                let last = want.last().unwrap();
                let store_ok =
                    stored(&env, uid).is_some_and(|t| t.contains(&format!("PARTSTAT={last}")));
                if sorted != want_sorted
                    || !store_ok
                    || !again.status.success()
                    || !once.status.success()
                {
                    failures.push(format!(
                        "{answer} killed at {syscall} #{k}: sent {got:?} (want {want:?}), store {}; the rerun said {}",
                        if store_ok { "as expected" } else { "DIFFERENT" },
                        String::from_utf8_lossy(&again.stderr).trim()
                    ));
                }
                assert!(k < 100, "more than 100 {syscall} calls for one answer?");
            }
        }
    }
    figure("respond crash steps: durable steps killed at", steps);
    figure(
        "respond crash steps: kills after which a REPLY was lost, sent twice, or the store differed",
        failures.len(),
    );
    assert!(steps > 0, "no durable step was killed");
    assert!(
        failures.is_empty(),
        "a kill at these steps loses or repeats something:\n{}",
        failures.join("\n")
    );
}

/// The system calls after which something is durable: a kill is injected
/// at each of them in turn.
const DURABLE_STEPS: [&str; 4] = [
    "fsync",
    "fdatasync",
    "rename,renameat,renameat2",
    "unlink,unlinkat",
];

/// Run imipd with `args` under strace, SIGKILLed at the `k`-th `syscall`;
/// `None` when it was killed there, else how it ended (it never got that
/// far).
fn run_killed_at(syscall: &str, k: usize, args: &[&str]) -> Option<ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    let status = std::process::Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e"])
        .arg(format!("trace={syscall}"))
        .arg("-e")
        .arg(format!("inject={syscall}:signal=KILL:when={k}"))
        .arg(env!("CARGO_BIN_EXE_imipd"))
        .env("IMIPD_NOW", TEST_NOW)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let killed = status.signal() == Some(9) || status.code() == Some(137);
    (!killed).then_some(status)
}
