//! Everyday use, as a new user meets imipd (issue 12): the first run on an
//! existing mailbox (`since`, a dry run, progress), errors that say what to
//! do, a folder that cannot be selected, `check` telling the truth, the
//! command-line conventions, the logs, SIGHUP, the systemd units. Every
//! test runs the real binary; servers are a real Dovecot and a real SMTP
//! receiver started by the harness.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::dovecot::Dovecot;
use crate::harness::smtp::{SmtpOptions, SmtpServer};
use crate::support::*;

const BOB: (&str, &str) = ("bob@example.com", "bob-secret");

const ACCEPT: &str = "[outgoing]\ntransport = \"file\"\npath = \"outbox\"\n\
     [[policy]]\nname = \"colleagues\"\nmethods = [\"REQUEST\"]\naction = \"accept\"\n";

fn invitation(uid: &str) -> String {
    mail(
        "Alice <alice@example.com>",
        "REQUEST",
        &[vevent(&[
            &format!("UID:{uid}"),
            "SEQUENCE:0",
            "DTSTAMP:20261120T100000Z",
            "DTSTART:20261201T100000Z",
            "DTEND:20261201T110000Z",
            "SUMMARY:Planning",
            "ORGANIZER;CN=Alice:mailto:alice@example.com",
            "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.com",
        ])],
    )
}

/// bob's IMAP account on `d` (implicit TLS unless `extra` says otherwise).
fn imap_account(d: &Dovecot, extra: &str) -> String {
    format!(
        "[[account]]\nname = \"bob\"\nsource = \"imap\"\nhost = \"127.0.0.1\"\nport = {}\n\
         username = \"{}\"\npassword = \"{}\"\nca_file = \"{}\"\ntimeout = 10\n{extra}",
        d.imaps_port,
        BOB.0,
        BOB.1,
        d.certs.ca_pem.display()
    )
}

/// A Maildir account `name` at `path` (relative to the configuration).
fn maildir_account(name: &str, path: &str, extra: &str) -> String {
    format!("[[account]]\nname = \"{name}\"\nsource = \"maildir\"\npath = \"{path}\"\n{extra}")
}

/// Make a Maildir under the scratch folder; deliver messages with
/// [`deliver`].
fn maildir(env: &Env, path: &str) -> PathBuf {
    let m = env.path(path);
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(m.join(sub)).unwrap();
    }
    m
}

/// A message delivered into a Maildir at `unix` seconds (the name's
/// leading timestamp, as delivery agents write it); its key.
fn deliver(m: &Path, unix: i64, raw: &str) -> String {
    let key = format!("{unix}.M{}P1.test", rand_suffix());
    std::fs::write(m.join("new").join(&key), raw).unwrap();
    key
}

/// Seconds since 1970 of an RFC 3339 instant.
fn unix(t: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp()
}

fn run_cmd(env: &Env, args: &[&str]) -> (Option<i32>, String, String) {
    env.run_text(args)
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l}: {e}")))
        .collect()
}

fn outcomes(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l.get("source").is_some()).collect()
}

fn passes(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter_map(|l| l.get("pass")).collect()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `imipd run`, its standard error read as it comes (as a user piping the
/// log would).
struct Running {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Running {
    fn start(env: &Env, log_filter: &str) -> Running {
        let mut child = imipd()
            .args(["run", "--config"])
            .arg(&env.config)
            .env("IMIPD_LOG", log_filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Running { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait until the log holds `text` `times` times.
    fn wait_log(&mut self, text: &str, times: usize, timeout: Duration) {
        let start = Instant::now();
        while self.log().matches(text).count() < times {
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!(
                    "imipd run exited ({s}) before logging {text:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {text:?} ×{times} in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM; the exit status.
    fn stop(mut self) -> Option<i32> {
        self.signal("TERM");
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "run did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file and folder under `dir` with its permission bits.
fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            out.push((e.path(), m.permissions().mode() & 0o777));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Run a command on a pseudo-terminal (util-linux `script`) and return
/// what the terminal showed.
fn on_terminal(args: &[&str], envs: &[(&str, &str)]) -> String {
    let quoted: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_imipd"))
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let mut c = Command::new("script");
    c.args(["-qfec", &quoted.join(" "), "/dev/null"])
        .env("IMIPD_NOW", TEST_NOW)
        .env("TERM", "xterm")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().expect("cannot run script(1) (util-linux)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text a terminal line shows: escape sequences taken out, and only
/// what follows the last carriage return (the terminal's own CR before the
/// line feed aside).
fn shown(line: &str) -> String {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c == '\r' {
            out.clear();
            continue;
        }
        out.push(c);
    }
    out
}

/// Whether a text holds an SGR (colour) escape sequence.
fn has_colour(text: &str) -> bool {
    let b = text.as_bytes();
    (0..b.len()).any(|i| {
        b[i] == 0x1b && b.get(i + 1) == Some(&b'[') && {
            let rest = &b[i + 2..];
            let n = rest
                .iter()
                .take_while(|c| c.is_ascii_digit() || **c == b';')
                .count();
            rest.get(n) == Some(&b'm')
        }
    })
}

// ---------------------------------------------------------------------------
// 1. The first run on an existing mailbox.

#[test]
fn since_on_imap_remembers_older_mail_as_handled_without_processing_it() {
    let d = Dovecot::start(&[BOB]);
    // The backlog: three invitations delivered weeks ago; one new.
    for i in 0..3 {
        d.append_dated(
            BOB.0,
            "INBOX",
            invitation(&format!("old-{i}@example.com")).as_bytes(),
            "01-Oct-2026 10:00:00 +0000",
        );
    }
    d.append_dated(
        BOB.0,
        "INBOX",
        invitation("new-1@example.com").as_bytes(),
        "20-Nov-2026 09:00:00 +0000",
    );
    let env = Env::new(&format!(
        "{ACCEPT}{}",
        imap_account(&d, "since = \"14d\"\n")
    ));

    // Step 1 of the walkthrough: what would it do? Nothing is written.
    let (code, out, err) = run_cmd(&env, &["once", "--dry-run", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let lines = json_lines(&out);
    assert_eq!(outcomes(&lines).len(), 1, "only the new invitation: {out}");
    assert_eq!(passes(&lines)[0]["older"], 3, "{out}");
    assert!(
        err.contains("[dry-run] 1 folder, 1 new message (3 older than `since`"),
        "{err}"
    );
    assert!(!env.store().exists() && !env.path("outbox").exists());
    let marked = |d: &Dovecot| {
        d.flags(BOB.0, "INBOX")
            .iter()
            .filter(|f| f.iter().any(|k| k == "$iMIPProcessed"))
            .count()
    };
    assert_eq!(marked(&d), 0, "a dry run marks nothing");

    // Then for real: the backlog is remembered, not answered.
    let (code, out, err) = run_cmd(&env, &["once", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let lines = json_lines(&out);
    let o = outcomes(&lines);
    assert_eq!(o.len(), 1, "{out}");
    assert_eq!(o[0]["results"][0]["uid"], "new-1@example.com");
    assert!(stored(&env, "new-1@example.com").is_some());
    for i in 0..3 {
        assert!(stored(&env, &format!("old-{i}@example.com")).is_none());
    }
    assert_eq!(
        dir_files(&env.path("outbox")).len(),
        1,
        "one reply, to the new one"
    );
    assert!(
        err.contains("imipd: 1 folder, 1 new message (3 older than `since`, not processed), 1 with calendar data: 1 created; 1 reply sent; 0 errors"),
        "{err}"
    );
    // Older mail is left as it was (no keyword); the new one is marked.
    assert_eq!(marked(&d), 1);
    // The next pass has nothing new: remembered, not looked at again.
    let (code, out, _) = run_cmd(&env, &["once", "--json"]);
    assert_eq!(code, Some(0));
    let lines = json_lines(&out);
    assert!(outcomes(&lines).is_empty(), "{out}");
    assert_eq!(passes(&lines)[0]["unchanged"], true, "{out}");
    // The state holds mail: private.
    for (p, m) in modes(&env.path("state")) {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(m, want, "{} is {m:o}", p.display());
    }
}

#[test]
fn since_on_a_maildir_uses_the_delivery_time() {
    let env = Env::new(&format!(
        "{ACCEPT}{}",
        maildir_account("local", "Maildir", "since = 2026-11-01\n")
    ));
    let m = maildir(&env, "Maildir");
    for i in 0..3 {
        deliver(
            &m,
            unix("2026-10-15T10:00:00Z"),
            &invitation(&format!("old-{i}@x")),
        );
    }
    // No timestamp in the name: the file's time counts (set to October).
    let odd = m.join("cur").join("odd-name:2,S");
    std::fs::write(&odd, invitation("old-odd@x")).unwrap();
    let t = Command::new("touch")
        .args(["-d", "2026-10-15 10:00:00 UTC"])
        .arg(&odd)
        .status()
        .unwrap();
    assert!(t.success());
    deliver(&m, unix("2026-11-20T10:00:00Z"), &invitation("new@x"));
    let (code, _, err) = run_cmd(&env, &["once"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(stored(&env, "new@x").is_some());
    assert!(stored(&env, "old-odd@x").is_none() && stored(&env, "old-0@x").is_none());
    assert!(
        err.contains("imipd: 1 folder, 1 new message (4 older than `since`, not processed), 1 with calendar data: 1 created; 1 reply sent; 0 errors"),
        "{err}"
    );
    // Remembered in the ledger: the next pass has nothing new.
    let (code, _, err) = run_cmd(&env, &["once"]);
    assert_eq!(code, Some(0));
    assert!(
        err.contains("imipd: 1 folder, 0 new messages, 0 with calendar data"),
        "{err}"
    );
    // A bare number is refused with the form that is meant.
    let bad = Env::new(&maildir_account("local", "Maildir", "since = \"14\"\n"));
    let (code, _, err) = run_cmd(&bad, &["check"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("\"14d\""), "{err}");
}

#[test]
fn a_long_first_pass_logs_its_progress_and_shows_a_bar_on_a_terminal() {
    let env = Env::new(&maildir_account("local", "Maildir", ""));
    let m = maildir(&env, "Maildir");
    for i in 0..1200 {
        deliver(
            &m,
            unix("2026-11-20T10:00:00Z") + i,
            "From: a@example.com\r\nSubject: plain\r\n\r\nno calendar\r\n",
        );
    }
    // In a log (standard error is a pipe): a line every 500 messages.
    let (code, _, err) = run_cmd(&env, &["once", "--dry-run", "-q"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.is_empty(), "-q prints only problems: {err}");
    let out = env.run(&["once", "--dry-run", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "local: 1200 messages to look at",
        "local: 500 of 1200 messages looked at",
        "local: 1000 of 1200 messages looked at",
        "local: 1200 messages looked at",
    ] {
        assert!(err.contains(want), "{want:?} missing:\n{err}");
    }
    assert!(!has_colour(&err), "no colours in a log: {err}");

    // On a terminal: a bar, and the outcome lines stay whole above it.
    let env = Env::new(&maildir_account("local", "Maildir", ""));
    let m = maildir(&env, "Maildir");
    for i in 0..60 {
        deliver(
            &m,
            unix("2026-11-20T10:00:00Z") + i,
            "From: a@example.com\r\nSubject: plain\r\n\r\nno calendar\r\n",
        );
    }
    let key = deliver(&m, unix("2026-11-20T11:00:00Z"), &invitation("bar@x"));
    let cfg = env.config.display().to_string();
    let screen = on_terminal(&["once", "--config", &cfg], &[]);
    assert!(
        screen.contains("/61 messages"),
        "no progress bar:\n{screen}"
    );
    let line = format!("local/{key}: REQUEST bar@x \"Planning\": created as attendee");
    let lines: Vec<String> = screen.split('\n').map(shown).collect();
    assert!(
        lines.iter().any(|l| l.starts_with(&line)),
        "the outcome line is garbled:\n{lines:#?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("REQUEST bar@x") && l.contains("messages,")),
        "a bar and a line on one line:\n{lines:#?}"
    );
}

// ---------------------------------------------------------------------------
// 2. Errors that say what to do.

#[test]
fn server_errors_name_the_server_and_the_fix() {
    let d = Dovecot::start(&[BOB]);
    // Wrong password.
    let env = Env::new(&imap_account(&d, "").replace(BOB.1, "wrong"));
    let (code, _, err) = run_cmd(&env, &["once"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{}", d.imaps_port))
            && err.contains("the server refused the login for bob@example.com")
            && err.contains("password_command"),
        "{err}"
    );
    // TLS spoken to the plain port.
    let env = Env::new(&imap_account(&d, "").replace(
        &format!("port = {}", d.imaps_port),
        &format!("port = {}", d.imap_port),
    ));
    let (code, _, err) = run_cmd(&env, &["once"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains(&format!("did not answer TLS on port {}", d.imap_port))
            && err.contains("tls = \"starttls\"")
            && err.contains("port 993"),
        "{err}"
    );
    // A certificate nothing here trusts (no ca_file).
    let cfg = imap_account(&d, "");
    let cfg: String = cfg
        .lines()
        .filter(|l| !l.starts_with("ca_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    let env = Env::new(&cfg);
    let (code, _, err) = run_cmd(&env, &["once"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("the certificate of 127.0.0.1 is not trusted") && err.contains("ca_file"),
        "{err}"
    );
    // SMTP: TLS spoken to a plain port, and a login refused.
    let smtp = SmtpServer::start(SmtpOptions::plain().with_auth("bob@example.com", "good"));
    for (tls, creds, want) in [
        ("implicit", "", "did not answer TLS on port"),
        (
            "none",
            "username = \"bob@example.com\"\npassword = \"bad\"\n",
            "the server refused the login for bob@example.com",
        ),
    ] {
        let env = Env::new(&format!(
            "[outgoing]\ntransport = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"{tls}\"\n{creds}timeout = 5\n\
             [[policy]]\nname = \"yes\"\nmethods = [\"REQUEST\"]\naction = \"accept\"\n",
            smtp.port
        ));
        let p = env.message("i.eml", &invitation(&format!("smtp-{tls}@x")));
        let out = imipd()
            .args(["process", "--config"])
            .arg(&env.config)
            .arg(&p)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(
            err.contains(want) && err.contains(&smtp.port.to_string()),
            "{tls}: {err}"
        );
    }
}

#[test]
fn configuration_errors_are_in_words_users_know() {
    let cases: [(&str, &[&str]); 6] = [
        (
            "[store]\npath = \"c\"\n",
            &["missing section [identity]", "addresses = [\"you@example.com\"]"],
        ),
        (
            "[identity]\naddresses = \"bob@example.com\"\n[store]\npath = \"c\"\n",
            &["key `addresses`", "line 2", "a list of strings", "found the string"],
        ),
        (
            "[identity]\naddresses = [\"b@x.org\"]\n[store]\npath = \"c\"\n\
             [[account]]\nname = \"m\"\nsource = \"imap\"\nhost = \"h\"\nport = \"993\"\nusername = \"u\"\npassword = \"p\"\n",
            &["key `port`", "a number from 0 to 65535 (without quotes)", "found the string \"993\""],
        ),
        (
            "[identity]\naddresses = [\"b@x.org\"]\n[store]\npath = \"c\"\n\
             [[account]]\nname = \"m\"\nsource = \"maildir\"\npath = \"m\"\npoll_interval = \"90\"\n",
            &["poll_interval", "no unit", "\"90m\""],
        ),
        (
            "[identity]\naddresses = [\"b@x.org\"]\n[store]\npath = \"c\"\n\
             [[policy]]\nname = \"short\"\nmax_duration = \"90\"\naction = \"file\"\n",
            &["policy.max_duration", "no unit", "\"90m\""],
        ),
        (
            "[identity]\naddresses = [\"b@x.org\"]\n[store]\npath = \"c\"\n[state]\nlock_timeout = true\n",
            &["lock_timeout", "a duration like \"60s\""],
        ),
    ];
    for (text, wants) in cases {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.toml");
        std::fs::write(&cfg, text).unwrap();
        let out = imipd().args(["check", "-c"]).arg(&cfg).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        for w in wants {
            assert!(err.contains(w), "{w:?} missing from:\n{err}");
        }
        for jargon in ["u16", "u64", "a sequence", "struct Raw", "untagged enum"] {
            assert!(!err.contains(jargon), "{jargon:?} in:\n{err}");
        }
    }
}

// ---------------------------------------------------------------------------
// 3. A folder that cannot be selected.

#[test]
fn a_folder_that_cannot_be_selected_is_skipped_and_retried_at_the_poll_interval() {
    let d = Dovecot::start(&[BOB]);
    d.deliver_lmtp(BOB.0, invitation("inbox-1@example.com").as_bytes());
    let env = Env::new(&format!(
        "{ACCEPT}{}",
        imap_account(&d, "folders = [\"Archiv\", \"INBOX\"]\npoll_interval = 2\n")
    ));
    // once: the misspelt folder is named, the other is handled, exit 1.
    let (code, _, err) = run_cmd(&env, &["once"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot select folder Archiv") && err.contains("`folders`"),
        "{err}"
    );
    assert!(stored(&env, "inbox-1@example.com").is_some(), "{err}");

    // run: one login, the folder tried again at the poll interval, and
    // handled once it exists.
    // imipd's logins (over TLS; the harness's own come in plain).
    let logins = |d: &Dovecot| {
        d.log()
            .lines()
            .filter(|l| l.contains("Login: user=<bob@example.com>") && l.contains(", TLS"))
            .count()
    };
    let before = logins(&d);
    let mut run = Running::start(&env, "imipd=debug");
    run.wait_log("cannot select folder Archiv", 1, Duration::from_secs(15));
    // Two more polls (each a debug line), still on the first connection.
    run.wait_log("cannot select folder Archiv", 3, Duration::from_secs(15));
    assert_eq!(logins(&d) - before, 1, "logged in again:\n{}", run.log());
    assert_eq!(
        run.log().matches("WARN").count(),
        1,
        "reported once:\n{}",
        run.log()
    );
    d.deliver_lmtp(BOB.0, invitation("inbox-2@example.com").as_bytes());
    wait_until("the INBOX invitation", Duration::from_secs(15), || {
        stored(&env, "inbox-2@example.com").is_some()
    });
    d.append_imap(
        BOB.0,
        "Archiv",
        invitation("archiv-1@example.com").as_bytes(),
        &[],
    );
    run.wait_log(
        "folder Archiv can be selected again",
        1,
        Duration::from_secs(15),
    );
    wait_until("the Archiv invitation", Duration::from_secs(15), || {
        stored(&env, "archiv-1@example.com").is_some()
    });
    assert_eq!(logins(&d) - before, 1, "logged in again:\n{}", run.log());
    assert_eq!(run.stop(), Some(0));
}

// ---------------------------------------------------------------------------
// 4. `check` tells the truth.

#[test]
fn check_fails_when_imipd_could_not_run_and_lists_what_it_would_do() {
    // No account at all.
    let env = Env::new("");
    let (code, _, err) = run_cmd(&env, &["check"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no [[account]]"), "{err}");
    let (code, _, err) = run_cmd(&env, &["check", "--process-only"]);
    assert_eq!(code, Some(0), "a pipe-only configuration: {err}");
    // A Maildir that does not exist.
    let env = Env::new(&maildir_account("local", "NoSuchMaildir", ""));
    let (code, _, err) = run_cmd(&env, &["check"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("NoSuchMaildir") && err.contains("does not exist"),
        "{err}"
    );
    // A store that cannot be created (a file is in the way) — root may
    // write anywhere, so permissions would not show it.
    let env = Env::new(&maildir_account("local", "Maildir", ""));
    maildir(&env, "Maildir");
    std::fs::write(env.path("calendar"), "a file, not a folder").unwrap();
    let (code, _, err) = run_cmd(&env, &["check"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot use store folder"), "{err}");
    // Each policy by name and action, and the outgoing transport.
    let env = Env::new(&format!(
        "{ACCEPT}[[policy]]\nname = \"the rest\"\naction = \"file\"\n{}",
        maildir_account("local", "Maildir", "since = \"14d\"\n")
    ));
    maildir(&env, "Maildir");
    let (code, out, err) = run_cmd(&env, &["check"]);
    assert_eq!(code, Some(0), "{err}");
    for want in [
        "account local: maildir",
        "mail since the last 14 days",
        "colleagues: accept (when methods)",
        "the rest: file (always)",
        "outgoing: file, into",
    ] {
        assert!(out.contains(want), "{want:?} missing:\n{out}");
    }
}

#[test]
fn check_connect_does_not_claim_a_login_without_a_username() {
    let smtp = SmtpServer::start(SmtpOptions::plain());
    let env = Env::new(&format!(
        "[outgoing]\ntransport = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\ntimeout = 5\n",
        smtp.port
    ));
    let (code, out, err) = run_cmd(&env, &["check", "--connect", "--process-only"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("outgoing: smtp 127.0.0.1"), "{out}");
    assert!(out.contains("no login is configured"), "{out}");
    assert!(
        !out.contains("login as") && !out.contains("and the login"),
        "{out}"
    );
}

// ---------------------------------------------------------------------------
// 5. Command-line conventions.

#[test]
fn the_command_line_follows_the_conventions() {
    let env = Env::new(&maildir_account("local", "Maildir", ""));
    let m = maildir(&env, "Maildir");
    let key = deliver(&m, unix("2026-11-20T10:00:00Z"), &invitation("cli@x"));
    let cfg = env.config.display().to_string();
    // -c before or after the command; -v and -q anywhere.
    for args in [
        vec!["-c", &cfg, "once", "--dry-run"],
        vec!["once", "-c", &cfg, "--dry-run"],
        vec!["once", "--dry-run", "--config", &cfg],
    ] {
        let out = imipd().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(
            err.contains(&format!("local/{key}: REQUEST cli@x")),
            "{args:?}: {err}"
        );
    }
    let out = imipd()
        .args(["-q", "once", "--dry-run", "-c", &cfg])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = imipd()
        .args(["once", "-v", "--dry-run", "-c", &cfg])
        .env_remove("IMIPD_LOG")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("DEBUG"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --help: exit statuses, environment, an example per command.
    let help = imipd().arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8_lossy(&help.stdout);
    for want in [
        "Exit status:",
        "75",
        "IMIPD_CONFIG",
        "IMIPD_LOG",
        "NO_COLOR",
        "Examples:",
    ] {
        assert!(help.contains(want), "{want:?} missing:\n{help}");
    }
    for cmd in [
        "classify",
        "process",
        "once",
        "run",
        "check",
        "init",
        "completions",
        "man",
    ] {
        assert!(
            help.contains(&format!("imipd {cmd}")),
            "no example of {cmd}"
        );
        let h = imipd().args([cmd, "--help"]).output().unwrap();
        let h = String::from_utf8_lossy(&h.stdout);
        assert!(h.contains("Example"), "{cmd} --help:\n{h}");
        assert!(h.contains("--config"), "{cmd} --help:\n{h}");
    }
    // Completions and man pages from the same definitions.
    for (shell, want) in [
        ("bash", "complete -F _imipd"),
        ("zsh", "#compdef imipd"),
        ("fish", "complete -c imipd"),
    ] {
        let out = imipd().args(["completions", shell]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(want),
            "{shell}: {text}"
        );
        assert!(
            text.contains("dry-run") && text.contains("process-only"),
            "{shell}"
        );
    }
    let out = imipd().arg("man").output().unwrap();
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(
        man.starts_with(".ie") || man.contains(".TH imipd 1"),
        "{man}"
    );
    assert!(
        man.contains("IMIPD_LOG") && man.contains("completions"),
        "{man}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = imipd().arg("man").arg(dir.path()).output().unwrap();
    assert!(out.status.success());
    let once = std::fs::read_to_string(dir.path().join("imipd-once.1")).unwrap();
    assert!(once.contains("dry\\-run"), "{once}");
}

#[test]
fn init_writes_a_private_starter_configuration_and_never_overwrites_one() {
    let home = tempfile::tempdir().unwrap();
    let cmd = |args: &[&str]| {
        imipd()
            .args(args)
            .env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_STATE_HOME")
            .env_remove("IMIPD_CONFIG")
            .output()
            .unwrap()
    };
    // No configuration yet: the error says how to make one.
    let out = cmd(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("imipd init"));
    let out = cmd(&["init"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let path = home.path().join(".config/imipd/config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("CHANGE") && text.contains("since = \"14d\""),
        "{text}"
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    // It loads as it is.
    let out = cmd(&["check"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second init changes nothing.
    std::fs::write(&path, format!("{text}# mine\n")).unwrap();
    let out = cmd(&["init"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never replaces"));
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .ends_with("# mine\n"));
    // -c names another file.
    let other = home.path().join("other.toml");
    let out = cmd(&["init", "-c", &other.display().to_string()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(other.exists());
}

// ---------------------------------------------------------------------------
// 6. Logs.

#[test]
fn once_and_run_report_outcomes_the_same_way_and_colour_only_a_terminal() {
    let config = |env: &Env| {
        let m = maildir(env, "Maildir");
        deliver(&m, unix("2026-11-20T10:00:00Z"), &invitation("same@x"))
    };
    let extra = format!(
        "{ACCEPT}{}",
        maildir_account("local", "Maildir", "poll_interval = 1\n")
    );
    let a = Env::new(&extra);
    let key = config(&a);
    let (code, _, err) = run_cmd(&a, &["once"]);
    assert_eq!(code, Some(0), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with(&format!("local/{key}:")))
        .unwrap_or_else(|| panic!("no outcome line:\n{err}"))
        .to_string();
    let sent = err
        .lines()
        .find(|l| l.starts_with("sent to alice@example.com"))
        .unwrap_or_else(|| panic!("no sent line:\n{err}"))
        .to_string();
    assert!(
        err.lines()
            .last()
            .unwrap()
            .starts_with("imipd: 1 folder, 1 new message"),
        "{err}"
    );
    assert!(!has_colour(&err), "{err}");

    // The same message through the service: the same lines, in the log.
    let b = Env::new(&extra);
    let m = maildir(&b, "Maildir");
    std::fs::write(m.join("new").join(&key), invitation("same@x")).unwrap();
    let mut run = Running::start(&b, "info");
    run.wait_log(&line, 1, Duration::from_secs(15));
    run.wait_log(&sent, 1, Duration::from_secs(15));
    assert!(!has_colour(&run.log()), "{}", run.log());
    assert_eq!(run.stop(), Some(0));

    // On a terminal the log has colours, unless NO_COLOR is set.
    let c = Env::new(&maildir_account("local", "Maildir", "since = \"14d\"\n"));
    let m = maildir(&c, "Maildir");
    deliver(&m, unix("2026-10-01T10:00:00Z"), &invitation("old@x"));
    let cfg = c.config.display().to_string();
    let coloured = on_terminal(&["once", "--dry-run", "-c", &cfg], &[]);
    assert!(coloured.contains("before `since`"), "{coloured}");
    assert!(has_colour(&coloured), "{coloured}");
    let plain = on_terminal(&["once", "--dry-run", "-c", &cfg], &[("NO_COLOR", "1")]);
    assert!(
        plain.contains("INFO") && plain.contains("before `since`"),
        "{plain}"
    );
    assert!(!has_colour(&plain), "{plain}");
}

// ---------------------------------------------------------------------------
// 7. SIGHUP reloads the configuration.

#[test]
fn sighup_reloads_a_good_configuration_and_keeps_the_old_one_for_a_bad_one() {
    let first = format!(
        "{ACCEPT}{}",
        maildir_account("a", "MailA", "poll_interval = 1\n")
    );
    let env = Env::new(&first);
    let ma = maildir(&env, "MailA");
    let mb = maildir(&env, "MailB");
    let mut run = Running::start(&env, "info");
    let k1 = deliver(&ma, unix("2026-11-20T10:00:00Z"), &invitation("hup-1@x"));
    run.wait_log(&format!("a/{k1}: REQUEST"), 1, Duration::from_secs(15));

    // A bad file: said why, and the configuration in use goes on.
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("{text}colour = \"blue\"\n")).unwrap();
    run.signal("HUP");
    run.wait_log(
        "keeping the configuration in use",
        1,
        Duration::from_secs(15),
    );
    assert!(run.log().contains("colour"), "{}", run.log());
    let k2 = deliver(&ma, unix("2026-11-20T10:01:00Z"), &invitation("hup-2@x"));
    run.wait_log(&format!("a/{k2}: REQUEST"), 1, Duration::from_secs(15));

    // A good one: a second account appears.
    std::fs::write(
        &env.config,
        format!(
            "{text}{}",
            maildir_account("b", "MailB", "poll_interval = 1\n")
        ),
    )
    .unwrap();
    run.signal("HUP");
    run.wait_log("configuration reloaded", 1, Duration::from_secs(15));
    let k3 = deliver(&mb, unix("2026-11-20T10:02:00Z"), &invitation("hup-3@x"));
    run.wait_log(&format!("b/{k3}: REQUEST"), 1, Duration::from_secs(15));
    assert!(stored(&env, "hup-3@x").is_some());
    wait_until("three replies", Duration::from_secs(15), || {
        dir_files(&env.path("outbox")).len() == 3
    });
    // Nothing was handled twice across the reloads.
    assert_eq!(run.log().matches(": REQUEST").count(), 3, "{}", run.log());
    assert_eq!(run.stop(), Some(0));
}

// ---------------------------------------------------------------------------
// 8. The service units.

#[test]
fn the_systemd_units_verify() {
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut units = Vec::new();
    for e in std::fs::read_dir(&contrib).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(e.path()).unwrap();
        assert!(
            !text
                .lines()
                .any(|l| !l.starts_with('#') && l.contains("network-online.target")),
            "{name}: a user manager has no network-online.target"
        );
        if name.ends_with(".service") {
            assert!(text.contains("UMask=0077"), "{name}");
            assert!(
                text.contains("%h/.cargo/bin") && text.contains("/usr/bin"),
                "{name}"
            );
        }
        // A template is verified as an instance of it.
        let name = name.replace("@.", "@work.");
        std::fs::write(dir.path().join(&name), text).unwrap();
        units.push(dir.path().join(name));
    }
    assert!(units.len() >= 4, "{units:?}");
    let verify = |units: &[PathBuf]| {
        Command::new("systemd-analyze")
            .args(["--user", "verify"])
            .args(units)
            .env("XDG_RUNTIME_DIR", &runtime)
            .output()
            .expect("systemd-analyze is missing (Debian package systemd; scripts/test installs it)")
    };
    let out = verify(&units);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
    // The check catches mistakes: a misspelt key, and a unit for a system
    // manager only.
    let bad = dir.path().join("bad.service");
    std::fs::write(
        &bad,
        "[Service]\nExecStart=/usr/bin/env imipd run\nUmask=0077\n[Install]\nWantedBy=default.target\n",
    )
    .unwrap();
    let out = verify(&[bad]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Umask"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
