//! IMAP against a real Dovecot started by the harness on 127.0.0.1: every
//! TLS mode, a certificate that must be refused, bad credentials, XOAUTH2,
//! reading only what is needed, forwarded invitations read at the section
//! numbers Dovecot gives them, marking, UIDVALIDITY changes, `run` with
//! IDLE and a Dovecot restart, and the full attendee → organizer loop over a
//! real SMTP receiver.

use std::io::Write as _;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::dovecot::Dovecot;
use crate::harness::smtp::{SmtpOptions, SmtpServer, SmtpTls};
use crate::support::*;

const BOB: (&str, &str) = ("bob@example.com", "bob-secret");
const ALICE: (&str, &str) = ("alice@example.com", "alice-secret");

fn invitation(uid: &str, seq: u32, stamp: &str) -> String {
    mail(
        "Alice <alice@example.com>",
        "REQUEST",
        &[vevent(&[
            &format!("UID:{uid}"),
            &format!("SEQUENCE:{seq}"),
            &format!("DTSTAMP:{stamp}"),
            "DTSTART;TZID=Europe/Berlin:20261201T100000",
            "DTEND;TZID=Europe/Berlin:20261201T110000",
            "SUMMARY:Planning",
            "ORGANIZER;CN=Alice:mailto:alice@example.com",
            "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.com",
        ])],
    )
}

/// An account section for bob on the given Dovecot.
fn account(d: &Dovecot, tls: &str, extra: &str) -> String {
    let port = if tls == "implicit" {
        d.imaps_port
    } else {
        d.imap_port
    };
    format!(
        "[[account]]\nname = \"bob\"\nsource = \"imap\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"{tls}\"\n\
         username = \"{}\"\npassword = \"{}\"\nca_file = \"{}\"\ntimeout = 10\n{extra}",
        BOB.0,
        BOB.1,
        d.certs.ca_pem.display()
    )
}

fn once(env: &Env) -> (i32, Vec<Value>, String) {
    let out = imipd()
        .args(["once", "--json", "--config"])
        .arg(&env.config)
        .env("IMIPD_LOG", "imipd=debug")
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn outcomes(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l.get("source").is_some()).collect()
}

fn passes(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter_map(|l| l.get("pass")).collect()
}

#[test]
fn every_tls_mode_reads_and_marks_invitations() {
    let d = Dovecot::start(&[BOB]);
    for tls in ["implicit", "starttls", "none"] {
        let uid = format!("tls-{tls}@example.com");
        d.deliver_lmtp(BOB.0, invitation(&uid, 0, "20261120T100000Z").as_bytes());
        let env = Env::new(&account(&d, tls, ""));
        let (code, lines, err) = once(&env);
        assert_eq!(code, 0, "{tls}: {err}");
        // Earlier invitations carry the keyword now: only the new one is read.
        assert_eq!(outcomes(&lines).len(), 1, "{tls}: {lines:?} {err}");
        assert!(stored(&env, &uid).is_some(), "{tls}: {lines:?} {err}");
    }
    let flags = d.flags(BOB.0, "INBOX");
    assert_eq!(flags.len(), 3, "nothing deleted");
    for f in &flags {
        assert!(f.iter().any(|f| f == "$iMIPProcessed"), "{flags:?}");
        assert!(
            !f.iter().any(|f| f == "\\Seen"),
            "never marked seen unless configured: {flags:?}"
        );
    }
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let d = Dovecot::start(&[BOB]);
    let cfg = account(&d, "implicit", "").replace(
        &d.certs.ca_pem.display().to_string(),
        &d.certs.other_ca_pem.display().to_string(),
    );
    let env = Env::new(&cfg);
    let (code, _, err) = once(&env);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!(
            "cannot connect to IMAP server 127.0.0.1:{}",
            d.imaps_port
        )),
        "{err}"
    );
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

#[test]
fn wrong_password_and_unreachable_server_exit_3() {
    let d = Dovecot::start(&[BOB]);
    let env = Env::new(&account(&d, "implicit", "").replace(BOB.1, "wrong"));
    let (code, _, err) = once(&env);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("cannot log in to IMAP server") && err.contains("bob@example.com"),
        "{err}"
    );

    let port = crate::harness::free_port();
    let env = Env::new(&account(&d, "implicit", "").replace(
        &format!("port = {}", d.imaps_port),
        &format!("port = {port}"),
    ));
    let (code, _, err) = once(&env);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!("cannot connect to IMAP server 127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn login_plain_with_non_ascii_password_and_xoauth2() {
    let user = ("carol@example.com", "pässwörd-✓");
    let d = Dovecot::start(&[user, BOB]);
    d.deliver_lmtp(
        BOB.0,
        invitation("x-1@example.com", 0, "20261120T100000Z").as_bytes(),
    );
    let plain = account(&d, "implicit", "auth = \"plain\"\n")
        .replace(
            &format!("username = \"{}\"", BOB.0),
            &format!("username = \"{}\"", user.0),
        )
        .replace(
            &format!("password = \"{}\"", BOB.1),
            &format!("password = \"{}\"", user.1),
        );
    let (code, _, err) = once(&Env::new(&plain));
    assert_eq!(
        code, 0,
        "AUTHENTICATE PLAIN with a non-ASCII password: {err}"
    );
    // XOAUTH2 with the token from a command (Dovecot's passwd-file checks it
    // as the password).
    let xoauth = account(
        &d,
        "implicit",
        &format!(
            "auth = \"xoauth2\"\noauth_token_command = \"printf %s {}\"\n",
            BOB.1
        ),
    )
    .replace(&format!("password = \"{}\"\n", BOB.1), "");
    let env = Env::new(&xoauth);
    let (code, lines, err) = once(&env);
    assert_eq!(code, 0, "XOAUTH2: {err}");
    assert_eq!(outcomes(&lines).len(), 1);
}

#[test]
fn unchanged_folder_costs_no_fetch_and_big_attachments_are_not_downloaded() {
    let d = Dovecot::start(&[BOB]);
    // An invitation with a 20 MB attachment beside it.
    let big = "QUFB".repeat(20 * 1024 * 1024 / 4);
    let lines: Vec<String> = big
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let inv = invitation("big-1@example.com", 0, "20261120T100000Z");
    let (head, body) = inv.split_once("\r\n\r\n").unwrap();
    let head = head.replace(
        "Content-Type: text/calendar; method=REQUEST; charset=UTF-8",
        "Content-Type: multipart/mixed; boundary=\"XX\"",
    );
    let raw = format!(
        "{head}\r\n\r\n--XX\r\nContent-Type: text/calendar; method=REQUEST; charset=UTF-8\r\n\r\n{body}\r\n--XX\r\n\
         Content-Type: application/pdf; name=slides.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--XX--\r\n",
        lines.join("\r\n")
    );
    d.append(BOB.0, "INBOX", raw.as_bytes());
    d.deliver_lmtp(
        BOB.0,
        b"From: a@b.c\r\nSubject: plain\r\n\r\nno calendar\r\n",
    );
    let env = Env::new(&account(&d, "implicit", ""));
    let (code, lines, err) = once(&env);
    assert_eq!(code, 0, "{err}");
    let p = passes(&lines);
    assert_eq!(p[0]["with_calendar"], 1);
    assert!(
        p[0]["bytes_read"].as_u64().unwrap() < 512 * 1024,
        "the attachment was downloaded: {}",
        p[0]
    );
    assert!(stored(&env, "big-1@example.com").is_some());
    // Nothing new: one SELECT, no FETCH.
    let (code, lines, _) = once(&env);
    assert_eq!(code, 0);
    let p = passes(&lines);
    assert_eq!(p[0]["unchanged"], true, "{}", p[0]);
    assert_eq!(p[0]["fetch_commands"], 0);
    assert!(outcomes(&lines).is_empty());
}

#[test]
fn new_uidvalidity_rescans_without_changing_anything_done() {
    let d = Dovecot::start(&[BOB]);
    d.deliver_lmtp(
        BOB.0,
        invitation("v-1@example.com", 0, "20261120T100000Z").as_bytes(),
    );
    let env = Env::new(&format!(
        "[outgoing]\ntransport = \"file\"\npath = \"outbox\"\n[[policy]]\nname = \"yes\"\nmethods = [\"REQUEST\"]\naction = \"accept\"\n{}",
        account(&d, "implicit", "")
    ));
    let (code, _, err) = once(&env);
    assert_eq!(code, 0, "{err}");
    let store = env.store_files();
    assert_eq!(dir_files(&env.path("outbox")).len(), 1);
    d.set_uidvalidity_change(BOB.0, "INBOX");
    let (code, lines, err) = once(&env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        passes(&lines)[0]["unchanged"],
        false,
        "a new UIDVALIDITY is a rescan"
    );
    assert_eq!(env.store_files(), store);
    assert_eq!(dir_files(&env.path("outbox")).len(), 1, "no second reply");
}

#[test]
fn move_and_quarantine_folders() {
    let d = Dovecot::start(&[BOB]);
    d.deliver_lmtp(
        BOB.0,
        invitation("m-1@example.com", 0, "20261120T100000Z").as_bytes(),
    );
    let spoof = invitation("m-2@example.com", 0, "20261120T100000Z").replace(
        "From: Alice <alice@example.com>",
        "From: mallory@evil.example",
    );
    d.deliver_lmtp(BOB.0, spoof.as_bytes());
    d.deliver_lmtp(
        BOB.0,
        b"From: a@b.c\r\nSubject: plain\r\n\r\nstays where it is\r\n",
    );
    let env = Env::new(&format!(
        "[[policy]]\nname = \"q\"\nsenders = [\"evil.example\"]\naction = \"quarantine\"\n{}",
        account(
            &d,
            "starttls",
            "move = \"Calendar\"\nquarantine_folder = \"Quarantine\"\n"
        )
    ));
    let (code, _, err) = once(&env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        d.folder_count(BOB.0, "INBOX"),
        1,
        "only the plain mail stays"
    );
    assert_eq!(d.folder_count(BOB.0, "Calendar"), 1);
    assert_eq!(d.folder_count(BOB.0, "Quarantine"), 1);
    assert!(stored(&env, "m-2@example.com").is_none());
}

#[test]
fn check_connect_lists_folders_and_capabilities() {
    let d = Dovecot::start(&[BOB]);
    let env = Env::new(&account(&d, "implicit", "folders = [\"INBOX\"]\n"));
    let out = env.run(&["check", "--connect"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("IDLE: yes") && text.contains("CONDSTORE: yes") && text.contains("MOVE: yes"),
        "{text}"
    );
    assert!(text.contains("folder INBOX"), "{text}");
}

struct Service(Child);

impl Service {
    fn start(env: &Env) -> Service {
        Service(
            imipd()
                .args(["run", "--config"])
                .arg(&env.config)
                .env("IMIPD_LOG", "imipd=info")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    fn stop(mut self) -> (Option<i32>, String) {
        let (status, _) = crate::support::terminate(&mut self.0, Duration::from_secs(10));
        let mut err = String::new();
        use std::io::Read;
        let _ = self.0.stderr.take().unwrap().read_to_string(&mut err);
        (status.code(), err)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn run_answers_in_idle_survives_a_dovecot_restart_and_stops_on_sigterm() {
    let mut d = Dovecot::start(&[BOB]);
    let env = Env::new(&format!(
        "[outgoing]\ntransport = \"file\"\npath = \"outbox\"\n[[policy]]\nname = \"yes\"\nmethods = [\"REQUEST\"]\naction = \"accept\"\n{}",
        account(&d, "implicit", "poll_interval = 600\n")
    ));
    let service = Service::start(&env);
    std::thread::sleep(Duration::from_millis(500)); // connected and in IDLE
    let t0 = Instant::now();
    d.append(
        BOB.0,
        "INBOX",
        invitation("idle-1@example.com", 0, "20261120T100000Z").as_bytes(),
    );
    wait_until(
        "the reply to the first invitation",
        Duration::from_secs(10),
        || dir_files(&env.path("outbox")).len() == 1,
    );
    let latency = t0.elapsed();
    assert!(
        latency < Duration::from_secs(5),
        "IDLE should react at once, took {latency:?}"
    );

    // Dovecot dies and comes back: the service reconnects and loses nothing.
    d.stop();
    std::thread::sleep(Duration::from_millis(300));
    d.restart();
    d.append(
        BOB.0,
        "INBOX",
        invitation("idle-2@example.com", 0, "20261120T100000Z").as_bytes(),
    );
    // The reconnect backs off (1, 2, 4, 8, 16 s, each spread by ×0.5–1.5):
    // a restart that is slow under load can cost several of those.
    wait_until(
        "the reply after the restart",
        Duration::from_secs(60),
        || dir_files(&env.path("outbox")).len() == 2,
    );
    let (code, err) = service.stop();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        stored(&env, "idle-1@example.com").is_some()
            && stored(&env, "idle-2@example.com").is_some()
    );
}

#[test]
fn full_loop_attendee_replies_and_organizer_records_it() {
    let d = Dovecot::start(&[BOB, ALICE]);
    let smtp = SmtpServer::start(SmtpOptions {
        tls: SmtpTls::StartTls,
        auth: Some(("bob@example.com".into(), "smtp-pass".into())),
        lmtp_forward: Some((d.lmtp_port, vec![])),
    });
    // Alice's own copy of her invitation is in her calendar.
    let organizer = Env::new(
        &account(&d, "implicit", "")
            .replace("name = \"bob\"", "name = \"alice\"")
            .replace(
                &format!("username = \"{}\"", BOB.0),
                &format!("username = \"{}\"", ALICE.0),
            )
            .replace(
                &format!("password = \"{}\"", BOB.1),
                &format!("password = \"{}\"", ALICE.1),
            ),
    );
    let mut cfg = std::fs::read_to_string(&organizer.config).unwrap();
    cfg = cfg.replace(
        "addresses = [\"bob@example.com\"]",
        "addresses = [\"alice@example.com\"]",
    );
    std::fs::write(&organizer.config, cfg).unwrap();
    let invite = invitation("loop-1@example.com", 0, "20261120T100000Z");
    let p = organizer.message("own.eml", &invite);
    let (v, _) = organizer.process(&[&p]);
    assert_eq!(v[0]["results"][0]["role"], "organizer");

    // Bob's side: IMAP in, SMTP (STARTTLS + AUTH) out, accepting.
    let mut pw = tempfile::NamedTempFile::new().unwrap();
    writeln!(pw, "smtp-pass").unwrap();
    let attendee = Env::new(&format!(
        "[outgoing]\ntransport = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\n\
         username = \"bob@example.com\"\npassword_file = \"{}\"\nca_file = \"{}\"\ntimeout = 10\n\
         [[policy]]\nname = \"yes\"\nmethods = [\"REQUEST\"]\naction = \"accept\"\n{}",
        smtp.port,
        pw.path().display(),
        smtp.ca_pem().display(),
        account(&d, "implicit", "")
    ));
    d.deliver_lmtp(BOB.0, invite.as_bytes());
    let (code, _, err) = once(&attendee);
    assert_eq!(code, 0, "{err}");
    let received = smtp.wait_for(1, Duration::from_secs(10));
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].rcpt_to, ["alice@example.com"]);
    assert_eq!(received[0].auth_user.as_deref(), Some("bob@example.com"));
    wait_until(
        "the reply in alice's INBOX",
        Duration::from_secs(10),
        || d.folder_count(ALICE.0, "INBOX") == 1,
    );

    // Alice's side reads her INBOX and records Bob's answer.
    let (code, lines, err) = once(&organizer);
    assert_eq!(code, 0, "{err}");
    let o = outcomes(&lines);
    assert_eq!(o[0]["results"][0]["effect"], "partstat-updated", "{}", o[0]);
    let text = stored(&organizer, "loop-1@example.com").unwrap();
    assert!(
        text.contains("PARTSTAT=ACCEPTED") && text.contains("mailto:bob@example.com"),
        "{text}"
    );
}

#[test]
fn a_broken_account_never_stops_the_others() {
    let d = Dovecot::start(&[BOB, ALICE]);
    let broken = account(&d, "implicit", "")
        .replace("name = \"bob\"", "name = \"broken\"")
        .replace(&format!("password = \"{}\"", BOB.1), "password = \"wrong\"");
    let env = Env::new(&format!(
        "[outgoing]\ntransport = \"file\"\npath = \"outbox\"\n[[policy]]\nname = \"yes\"\nmethods = [\"REQUEST\"]\naction = \"accept\"\n{broken}{}",
        account(&d, "implicit", "")
    ));
    let service = Service::start(&env);
    d.deliver_lmtp(
        BOB.0,
        invitation("broken-1@example.com", 0, "20261120T100000Z").as_bytes(),
    );
    wait_until("the good account's reply", Duration::from_secs(15), || {
        dir_files(&env.path("outbox")).len() == 1
    });
    let (code, err) = service.stop();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("cannot log in to IMAP server"),
        "the broken account is reported: {err}"
    );
}

/// `invitation` forwarded by carol: as the whole message (`message/rfc822`
/// as the message's own type, "forward as attachment" with nothing beside
/// it) or after a text part; the invitation's body as it is or (`mixed`)
/// inside a multipart/mixed after a text part.
fn forwarded(uid: &str, whole: bool, mixed: bool) -> String {
    let inv = invitation(uid, 0, "20261120T100000Z");
    let inner = if mixed {
        let (head, body) = inv.split_once("\r\n\r\n").unwrap();
        let head = head.replace(
            "Content-Type: text/calendar; method=REQUEST; charset=UTF-8",
            "Content-Type: multipart/mixed; boundary=\"in\"",
        );
        format!(
            "{head}\r\n\r\n--in\r\nContent-Type: text/plain\r\n\r\nSee the invitation.\r\n--in\r\n\
             Content-Type: text/calendar; method=REQUEST; charset=UTF-8\r\n\r\n{body}--in--\r\n"
        )
    } else {
        inv
    };
    let head = format!(
        "From: Carol <carol@example.com>\r\nTo: bob@example.com\r\nSubject: Fwd: Planning\r\n\
         Message-ID: <fwd-{uid}>\r\nMIME-Version: 1.0\r\n"
    );
    if whole {
        format!("{head}Content-Type: message/rfc822\r\n\r\n{inner}")
    } else {
        format!(
            "{head}Content-Type: multipart/mixed; boundary=\"out\"\r\n\r\n--out\r\n\
             Content-Type: text/plain\r\n\r\nFYI\r\n--out\r\nContent-Type: message/rfc822\r\n\r\n\
             {inner}\r\n--out--\r\n"
        )
    }
}

#[test]
fn forwarded_invitations_are_read_at_their_section_numbers() {
    // RFC 3501 §6.4.5: the parts of a forwarded message are numbered under
    // its own (2.1, 2.2, …); a message that is a message/rfc822 as a whole
    // has it as part 1, so its parts are 1.1, 1.2, … Those were asked for
    // as 1 and 2: the whole inner message (its header read as calendar
    // lines), and nothing ("holds no VCALENDAR object").
    let d = Dovecot::start(&[BOB]);
    let cases = [
        ("fwd-whole@example.com", true, false),
        ("fwd-whole-mixed@example.com", true, true),
        ("fwd-part@example.com", false, false),
        ("fwd-part-mixed@example.com", false, true),
    ];
    let files = Env::new("");
    for (uid, whole, mixed) in cases {
        let raw = forwarded(uid, whole, mixed);
        d.append(BOB.0, "INBOX", raw.as_bytes());
        // Read from a file: filed (forwarded, so never answered).
        files.one(&raw);
        assert!(stored(&files, uid).is_some(), "{uid} from a file");
    }
    let env = Env::new(&account(&d, "implicit", ""));
    let (code, lines, err) = once(&env);
    assert_eq!(code, 0, "{err}");
    let outs = outcomes(&lines);
    assert_eq!(outs.len(), cases.len(), "{lines:?} {err}");
    for o in &outs {
        assert_eq!(o["problems"].as_array().map(Vec::len), Some(1), "{o}");
        assert!(o["problems"][0]
            .as_str()
            .is_some_and(|p| p.contains("forwarded inside another mail")));
    }
    for (uid, _, _) in cases {
        assert_eq!(
            stored(&env, uid),
            stored(&files, uid),
            "{uid}: {lines:?} {err}"
        );
    }
    assert!(
        !err.contains("outside any VCALENDAR"),
        "only the calendar part was read: {err}"
    );
}
