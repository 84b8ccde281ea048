//! The IMAP hardening issues, each reproduced end to end with the real
//! `imipd` binary against the real Dovecot of the harness:
//!
//! 1. mail that lands between a pass and IDLE is handled at once;
//! 2. reading is linear and bounded: a 2.4 MB invitation built to make the
//!    boundary search quadratic, a BODYSTRUCTURE nested 600 deep, 20
//!    headers of 10 MB, a literal announcing 500 MB;
//! 3. a hanging `password_command` stalls only its own account;
//! 4. a closed standard error kills nothing and SIGTERM still stops `run`;
//! 5. an unsolicited FETCH never moves the folder's last UID.
//!
//! Where the issue needs a moment between two commands of imipd, or an
//! answer Dovecot never gives (nesting past its parser's 100 levels, a lying
//! literal, a UID in an unsolicited FETCH), the connection goes through a
//! [`Tap`] in front of Dovecot: a pause point on the wire, or a rewrite of
//! Dovecot's own answer. No mock server answers in Dovecot's place.

use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::dovecot::{lmtp_deliver, Dovecot};
use crate::harness::tap::{ImapClient, Tap};
use crate::support::*;

const BOB: (&str, &str) = ("bob@example.com", "bob-secret");

fn invitation(uid: &str) -> String {
    mail(
        "Alice <alice@example.com>",
        "REQUEST",
        &[vevent(&[
            &format!("UID:{uid}"),
            "SEQUENCE:0",
            "DTSTAMP:20261120T100000Z",
            "DTSTART;TZID=Europe/Berlin:20261201T100000",
            "DTEND;TZID=Europe/Berlin:20261201T110000",
            "SUMMARY:Planning",
            "ORGANIZER;CN=Alice:mailto:alice@example.com",
            "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.com",
        ])],
    )
}

/// An account section for bob: implicit TLS to Dovecot, or plain text to
/// `port` (a tap) when given.
fn account(d: &Dovecot, name: &str, via: Option<u16>, extra: &str) -> String {
    let (port, tls) = match via {
        Some(p) => (p, "none"),
        None => (d.imaps_port, "implicit"),
    };
    format!(
        "[[account]]\nname = \"{name}\"\nsource = \"imap\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"{tls}\"\n\
         username = \"{}\"\nca_file = \"{}\"\n{extra}",
        BOB.0,
        d.certs.ca_pem.display()
    )
}

fn password() -> String {
    format!("password = \"{}\"\n", BOB.1)
}

/// Accept every REQUEST and answer through the `file` transport.
const ACCEPT: &str = "[outgoing]\ntransport = \"file\"\npath = \"outbox\"\n\
     [[policy]]\nname = \"yes\"\nmethods = [\"REQUEST\"]\naction = \"accept\"\n";

struct Once {
    code: i32,
    lines: Vec<Value>,
    stderr: String,
}

impl Once {
    fn outcome(&self, message_id_part: &str) -> &Value {
        self.lines
            .iter()
            .find(|l| {
                l.get("source").is_some()
                    && l["message_id"]
                        .as_str()
                        .is_some_and(|m| m.contains(message_id_part))
            })
            .unwrap_or_else(|| panic!("no outcome for {message_id_part}: {self:?}"))
    }
}

impl std::fmt::Debug for Once {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n{:#?}\n{}", self.code, self.lines, self.stderr)
    }
}

fn parse_once(out: std::process::Output) -> Once {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out
        .status
        .code()
        .unwrap_or_else(|| panic!("`imipd once` died of a signal: {}\n{stderr}", out.status));
    assert!(!stderr.contains("panicked"), "{stderr}");
    Once {
        code,
        lines: String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect(),
        stderr,
    }
}

fn once(env: &Env) -> Once {
    parse_once(env.run(&["once", "--json"]))
}

/// `imipd once --json` under GNU time: what it said, its peak RSS (KiB)
/// and how long it took.
fn once_measured(env: &Env) -> (Once, u64, Duration) {
    let t0 = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(env!("CARGO_BIN_EXE_imipd"))
        .args(["once", "--json", "--config"])
        .arg(&env.config)
        .env("IMIPD_NOW", TEST_NOW)
        .output()
        .expect("cannot run /usr/bin/time (GNU time)");
    let elapsed = t0.elapsed();
    let o = parse_once(out);
    let rss = o
        .stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or_else(|| panic!("no peak RSS from GNU time:\n{}", o.stderr));
    (o, rss, elapsed)
}

/// `imipd once --json`, killed after `limit`: None then.
fn once_within(env: &Env, limit: Duration) -> Option<(Once, Duration)> {
    let t0 = Instant::now();
    let mut child = imipd()
        .args(["once", "--json", "--config"])
        .arg(&env.config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read both pipes meanwhile.
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let took = t0.elapsed();
    let o = parse_once(std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    });
    Some((o, took))
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn replies(env: &Env) -> usize {
    dir_files(&env.path("outbox")).len()
}

/// `imipd run` with its standard error collected as it comes.
struct Service {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Service {
    fn start(env: &Env) -> Service {
        let mut child = imipd()
            .args(["run", "--config"])
            .arg(&env.config)
            .env("IMIPD_LOG", "imipd=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Service { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

/// SIGTERM, then the exit status and how long the stop took (panics after
/// `limit`).
fn terminate(child: &mut Child, limit: Duration) -> (Option<i32>, Duration) {
    let (status, took) = crate::support::terminate(child, limit);
    (status.code(), took)
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a client line is this IMAP command (`TAG COMMAND ...`).
fn is_command(line: &[u8], command: &str) -> bool {
    let text = String::from_utf8_lossy(line).to_ascii_uppercase();
    let mut words = text.split_whitespace();
    words.next();
    let cmd: Vec<&str> = command.split_whitespace().collect();
    words.take(cmd.len()).eq(cmd.iter().copied())
}

// ---------------------------------------------------------------------------
// 1. No mail waits for the IDLE timeout.

#[test]
fn imap_mail_arriving_before_idle_is_handled_at_once() {
    let d = Dovecot::start(&[BOB]);
    d.deliver_lmtp(BOB.0, invitation("gap-1@example.com").as_bytes());
    // The pause point: `run` SELECTs for its pass, then SELECTs again right
    // before IDLE. The second invitation is delivered while that second
    // SELECT is held on the wire, i.e. after the pass and before IDLE: the
    // SELECT counts it, so IDLE never reports it.
    let lmtp = d.lmtp_port;
    let selects = Arc::new(AtomicUsize::new(0));
    let delivered = Arc::new(Mutex::new(None::<Instant>));
    let tap = {
        let selects = selects.clone();
        let delivered = delivered.clone();
        Tap::start(
            d.imap_port,
            move |line| {
                if is_command(line, "SELECT") && selects.fetch_add(1, Ordering::SeqCst) == 1 {
                    let raw = invitation("gap-2@example.com");
                    lmtp_deliver(lmtp, "alice@example.com", &[BOB.0], raw.as_bytes()).unwrap();
                    *delivered.lock().unwrap() = Some(Instant::now());
                }
            },
            |r| r,
        )
    };
    // poll_interval is an hour: only handling the gap explains a quick answer.
    let env = Env::new(&format!(
        "{ACCEPT}{}",
        account(
            &d,
            "bob",
            Some(tap.port),
            &format!("{}poll_interval = 3600\ntimeout = 10\n", password())
        )
    ));
    let mut service = Service::start(&env);
    wait_until("the first reply", Duration::from_secs(15), || {
        replies(&env) >= 1
    });
    wait_until("the delivery in the gap", Duration::from_secs(15), || {
        delivered.lock().unwrap().is_some()
    });
    let t0 = delivered.lock().unwrap().unwrap();
    let start = Instant::now();
    while replies(&env) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "mail delivered between the pass and IDLE was not handled (it waits for the IDLE timeout):\n{}",
            service.stderr()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    let latency = t0.elapsed();
    assert!(
        latency < Duration::from_secs(5),
        "took {latency:?}:\n{}",
        service.stderr()
    );
    assert!(stored(&env, "gap-2@example.com").is_some());
    let (code, _) = terminate(&mut service.child, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", service.stderr());
}

// ---------------------------------------------------------------------------
// 2. Reading is linear and bounded.

/// An invitation whose calendar part is about `size` bytes and holds the
/// base of imipd's own multipart boundary followed by a long run of `x`.
fn boundary_bait(uid: &str, size: usize, run: usize) -> String {
    // The bait comes last: a search that starts over for every `x` scans
    // the whole part each time.
    let bait = format!("DESCRIPTION:imipd-part-boundary{}", "x".repeat(run));
    let pad = format!("X-PAD:{}", "p".repeat(990));
    let n = size / 1000 + 1;
    let mut lines: Vec<&str> = std::iter::repeat_n(pad.as_str(), n).collect();
    lines.push(&bait);
    let mut all = vec![
        format!("UID:{uid}"),
        "SEQUENCE:0".into(),
        "DTSTAMP:20261120T100000Z".into(),
        "DTSTART:20261201T100000Z".into(),
        "DTEND:20261201T110000Z".into(),
        "SUMMARY:Bait".into(),
        "ORGANIZER:mailto:alice@example.com".into(),
        "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.com".into(),
    ];
    all.extend(lines.iter().map(|l| l.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    mail("alice@example.com", "REQUEST", &[vevent(&refs)])
}

#[test]
fn imap_synthetic_message_is_linear_in_mail_size() {
    let d = Dovecot::start(&[BOB]);
    let raw = boundary_bait("bait@example.com", 2_400_000, 50_000);
    assert!(raw.len() > 2_400_000);
    d.append_imap(BOB.0, "INBOX", raw.as_bytes(), &[]);
    let env = Env::new(&account(
        &d,
        "bob",
        None,
        &format!("{}timeout = 10\n", password()),
    ));
    let (o, took) = once_within(&env, Duration::from_secs(60))
        .expect("`imipd once` over one 2.4 MB invitation ran for more than a minute");
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.outcome("@test")["results"][0]["effect"], "created");
    // The same message through `process` (no IMAP) as the yardstick.
    let file = env.message("bait.eml", &raw);
    let t1 = Instant::now();
    let (v, _) = env.process(&[&file]);
    let direct = t1.elapsed();
    assert_eq!(v.len(), 1);
    assert!(
        took < direct * 4 + Duration::from_secs(5),
        "a 2.4 MB invitation took {took:?} over IMAP, {direct:?} from a file"
    );
}

#[test]
fn imap_long_quoted_parameter_is_parsed_in_linear_time() {
    let d = Dovecot::start(&[BOB]);
    // An invitation with an attachment whose name parameter is 8 MB: Dovecot
    // puts it into the BODYSTRUCTURE as one quoted string.
    let name = "n".repeat(8_000_000);
    let inv = invitation("param@example.com");
    let (head, body) = inv.split_once("\r\n\r\n").unwrap();
    let head = head.replace(
        "Content-Type: text/calendar; method=REQUEST; charset=UTF-8",
        "Content-Type: multipart/mixed; boundary=\"XX\"",
    );
    let raw = format!(
        "{head}\r\n\r\n--XX\r\nContent-Type: text/calendar; method=REQUEST; charset=UTF-8\r\n\r\n{body}\r\n--XX\r\n\
         Content-Type: application/pdf; name=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\nQUFB\r\n--XX--\r\n"
    );
    d.append_imap(BOB.0, "INBOX", raw.as_bytes(), &[]);
    let env = Env::new(&account(
        &d,
        "bob",
        None,
        &format!("{}timeout = 120\n", password()),
    ));
    let (o, took) = once_within(&env, Duration::from_secs(30))
        .expect("`imipd once` over one mail with an 8 MB parameter ran for more than 30 s");
    crate::chaos::figure(
        "once over a mail with an 8 MB MIME parameter",
        format!("{:.2} s", took.as_secs_f64()),
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.outcome("@test")["results"][0]["effect"], "created");
}

/// The BODYSTRUCTURE value in a FETCH response: (start, end) of its
/// parenthesised list.
fn bodystructure_span(unit: &[u8]) -> Option<(usize, usize)> {
    let key = b"BODYSTRUCTURE (";
    let start = unit.windows(key.len()).position(|w| w == key)? + key.len() - 1;
    let (mut depth, mut quoted, mut escape) = (0usize, false, false);
    for (i, &b) in unit.iter().enumerate().skip(start) {
        if quoted {
            match b {
                _ if escape => escape = false,
                b'\\' => escape = true,
                b'"' => quoted = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => quoted = true,
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some((start, i + 1));
                }
            }
            _ => {}
        }
    }
    None
}

/// A tap that wraps the BODYSTRUCTURE Dovecot gives for message 1 into
/// `levels` multiparts (Dovecot itself stops at 100).
fn deepening_tap(d: &Dovecot, levels: usize) -> Tap {
    Tap::start(
        d.imap_port,
        |_| {},
        move |unit| {
            if !unit.starts_with(b"* 1 FETCH ") {
                return unit;
            }
            let Some((a, b)) = bodystructure_span(&unit) else {
                return unit;
            };
            let mut out = unit[..a].to_vec();
            out.extend(std::iter::repeat_n(b'(', levels));
            out.extend_from_slice(&unit[a..b]);
            for _ in 0..levels {
                out.extend_from_slice(b" \"mixed\")");
            }
            out.extend_from_slice(&unit[b..]);
            out
        },
    )
}

#[test]
fn imap_bodystructure_nested_600_deep_is_reported_not_a_crash() {
    let d = Dovecot::start(&[BOB]);
    d.deliver_lmtp(BOB.0, invitation("deep@example.com").as_bytes());
    d.deliver_lmtp(BOB.0, invitation("after-deep@example.com").as_bytes());
    let deep_id = {
        let raw = &d.messages(BOB.0, "INBOX")[0];
        let text = String::from_utf8_lossy(raw);
        let line = text
            .lines()
            .find(|l| l.starts_with("Message-ID: "))
            .unwrap();
        line["Message-ID: ".len()..].trim().to_string()
    };
    let after_id = {
        let raw = &d.messages(BOB.0, "INBOX")[1];
        let text = String::from_utf8_lossy(raw);
        let line = text
            .lines()
            .find(|l| l.starts_with("Message-ID: "))
            .unwrap();
        line["Message-ID: ".len()..].trim().to_string()
    };
    let tap = deepening_tap(&d, 600);

    // `once`: reported with limits.max_depth, the next message handled.
    let env = through_tap(&d, tap.port);
    let o = once(&env);
    assert_eq!(o.code, 0, "{o:?}");
    let deep = o.outcome(&deep_id);
    assert!(deep.to_string().contains("limits.max_depth"), "{deep}");
    assert!(stored(&env, "deep@example.com").is_none());
    assert_eq!(o.outcome(&after_id)["results"][0]["effect"], "created");

    // `run` (tokio worker threads): the same, and the service lives on.
    let env = Env::new(&format!(
        "{ACCEPT}{}",
        account(
            &d,
            "bob",
            Some(tap.port),
            &format!("{}timeout = 10\nkeyword = \"$Other\"\n", password())
        )
    ));
    let mut service = Service::start(&env);
    wait_until(
        "the answer after the deep one",
        Duration::from_secs(20),
        || replies(&env) == 1 || service.child.try_wait().unwrap().is_some(),
    );
    assert!(
        service.child.try_wait().unwrap().is_none(),
        "`imipd run` died:\n{}",
        service.stderr()
    );
    assert!(stored(&env, "after-deep@example.com").is_some());
    assert!(service.stderr().contains("limits.max_depth"));
    let (code, _) = terminate(&mut service.child, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", service.stderr());

    // Deeper than any server's real answer: the response is refused, the
    // connection ends with a reason, nothing crashes.
    let tap = deepening_tap(&d, 5000);
    let env = Env::new(&account(
        &d,
        "bob",
        Some(tap.port),
        &format!("{}timeout = 10\n", password()),
    ));
    let o = once(&env);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("nested deeper than 1000 levels"), "{o:?}");
}

#[test]
fn imap_header_fetch_is_bounded_by_limits() {
    let d = Dovecot::start(&[BOB]);
    // 20 invitations with a 10 MB Subject (folded into 1,000-byte lines).
    let subject: String =
        std::iter::repeat_n(format!("{}\r\n ", "s".repeat(998)), 10_000).collect();
    for i in 0..20 {
        let raw = invitation(&format!("huge-{i}@example.com")).replace(
            "Subject: REQUEST\r\n",
            &format!("Subject: {}x\r\n", subject),
        );
        d.append_imap(BOB.0, "INBOX", raw.as_bytes(), &[]);
    }
    let env = Env::new(&account(
        &d,
        "bob",
        None,
        &format!("{}timeout = 30\n", password()),
    ));
    let (o, rss_kib, _) = once_measured(&env);
    crate::chaos::figure(
        "once over 20 invitations with a 10 MB Subject",
        format!("peak RSS {} MiB", rss_kib / 1024),
    );
    assert!(
        rss_kib < 60 * 1024,
        "peak RSS {} MiB: the headers were not bounded",
        rss_kib / 1024
    );
    assert_eq!(o.code, 0, "{o:?}");
    let outcomes: Vec<&Value> = o
        .lines
        .iter()
        .filter(|l| l.get("source").is_some())
        .collect();
    assert_eq!(outcomes.len(), 20);
    for out in outcomes {
        assert_eq!(out["results"][0]["effect"], "created", "{out}");
        assert!(
            out["problems"][0]
                .as_str()
                .is_some_and(|p| p.contains("limits.max_header_bytes")),
            "{out}"
        );
    }
    let read: u64 = o
        .lines
        .iter()
        .filter_map(|l| l.get("pass"))
        .map(|p| p["bytes_read"].as_u64().unwrap())
        .sum();
    assert!(read < 4 * 1024 * 1024, "{read} bytes read");
}

#[test]
fn imap_literal_larger_than_the_limit_is_refused() {
    let d = Dovecot::start(&[BOB]);
    d.deliver_lmtp(BOB.0, invitation("liar@example.com").as_bytes());
    // A lying server: the header literal of the batch FETCH announces
    // 500 MB; what follows is Dovecot's real answer.
    let tap = Tap::start(
        d.imap_port,
        |_| {},
        |unit| {
            let text = String::from_utf8_lossy(&unit);
            if !(text.starts_with("* 1 FETCH ") && text.contains("HEADER.FIELDS")) {
                return unit;
            }
            let head_end = unit.windows(2).position(|w| w == b"\r\n").unwrap();
            let open = unit[..head_end].iter().rposition(|&b| b == b'{').unwrap();
            let mut out = unit[..open].to_vec();
            out.extend_from_slice(b"{500000000}\r\n");
            out.extend_from_slice(&unit[head_end + 2..]);
            out
        },
    );
    let env = Env::new(&account(
        &d,
        "bob",
        Some(tap.port),
        &format!("{}timeout = 20\n", password()),
    ));
    let (o, rss_kib, took) = once_measured(&env);
    crate::chaos::figure(
        "once against a 500 MB literal",
        format!(
            "peak RSS {} MiB, {:.2} s",
            rss_kib / 1024,
            took.as_secs_f64()
        ),
    );
    assert!(
        rss_kib < 100 * 1024,
        "peak RSS {} MiB: memory was reserved for the literal",
        rss_kib / 1024
    );
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr.contains("literal of 500000000 bytes"),
        "the refusal names the literal: {o:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "refused at once, not after the timeout: {took:?}"
    );
}

// ---------------------------------------------------------------------------
// 3. Secrets never stall the service.

/// The processes whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(marker) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn imap_hanging_password_command_fails_only_its_account() {
    let d = Dovecot::start(&[BOB]);
    // A sleep no other test runs (GNU sleep takes fractions).
    let marker = format!("600.{}{}", std::process::id(), rand_suffix());
    let hanging = |name: &str, timeout: u64| {
        account(
            &d,
            name,
            None,
            &format!(
                "password_command = \"sleep {marker}; echo {}\"\ntimeout = {timeout}\n",
                BOB.1
            ),
        )
    };
    // The two hanging accounts come first; one gives up after 2 s and
    // tries again, the other waits its whole 60 s.
    let env = Env::new(&format!(
        "{ACCEPT}{}{}{}",
        hanging("hang-1", 2),
        hanging("hang-2", 60),
        account(
            &d,
            "bob",
            None,
            &format!("{}timeout = 10\nkeyword = \"$Bob\"\n", password())
        )
    ));
    let mut service = Service::start(&env);
    let t0 = Instant::now();
    d.deliver_lmtp(BOB.0, invitation("served@example.com").as_bytes());
    wait_until(
        "the healthy account's reply",
        Duration::from_secs(15),
        || replies(&env) == 1,
    );
    let latency = t0.elapsed();
    assert!(latency < Duration::from_secs(10), "{latency:?}");
    wait_until(
        "the timeout of the first hanging command",
        Duration::from_secs(15),
        || service.stderr().contains("did not finish within 2 s"),
    );
    assert!(!processes_with(&marker).is_empty(), "the commands run");
    let (code, took) = terminate(&mut service.child, Duration::from_secs(5));
    assert_eq!(code, Some(0), "{}", service.stderr());
    assert!(took < Duration::from_secs(3), "SIGTERM took {took:?}");
    wait_until(
        "no hanging password command left",
        Duration::from_secs(5),
        || processes_with(&marker).is_empty(),
    );
    let err = service.stderr();
    assert!(
        err.contains("did not finish within 2 s") && err.contains("account=hang-1"),
        "the failing account is named: {err}"
    );
}

// ---------------------------------------------------------------------------
// 4. A closed standard error is not fatal.

#[test]
fn imap_closed_stderr_is_not_fatal_and_sigterm_stops_run() {
    let d = Dovecot::start(&[BOB]);
    let env = Env::new(&format!(
        "{ACCEPT}{}",
        account(
            &d,
            "bob",
            None,
            &format!("{}timeout = 10\npoll_interval = 3600\n", password())
        )
    ));
    // Standard error is a pipe nobody reads any more: every write fails
    // with EPIPE.
    let mut child = imipd()
        .args(["run", "--json", "--config"])
        .arg(&env.config)
        .env("IMIPD_LOG", "imipd=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    d.deliver_lmtp(BOB.0, invitation("closed-1@example.com").as_bytes());
    let start = Instant::now();
    while replies(&env) < 1 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "`imipd run` died writing to a broken standard error"
        );
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the invitation was not handled with a broken standard error"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    let (code, took) = terminate(&mut child, Duration::from_secs(5));
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(3), "SIGTERM took {took:?}");

    // Standard error closed outright (fd 2 not open at all).
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("exec 2>&-; exec \"$0\" run --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_imipd"))
        .arg(&env.config)
        .env("IMIPD_NOW", TEST_NOW)
        .env("IMIPD_LOG", "imipd=debug")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    d.deliver_lmtp(BOB.0, invitation("closed-2@example.com").as_bytes());
    wait_until(
        "the reply with standard error closed",
        Duration::from_secs(15),
        || replies(&env) == 2,
    );
    let (code, took) = terminate(&mut child, Duration::from_secs(5));
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(3), "SIGTERM took {took:?}");
}

// ---------------------------------------------------------------------------
// 5. An unsolicited FETCH never moves last_uid.

#[test]
fn imap_unsolicited_fetch_never_moves_last_uid() {
    let d = Dovecot::start(&[BOB]);
    // 201 messages: an invitation, then 200 plain ones. imipd reads them in
    // two batches (1:200 and 201:201).
    {
        let mut c = ImapClient::login(d.imap_port, BOB.0, BOB.1);
        let mut append = |raw: &str| {
            let raw = raw.replace("\r\n", "\n").replace('\n', "\r\n");
            c.ok(&format!("APPEND INBOX {{{}+}}\r\n{raw}", raw.len()));
        };
        append(&invitation("first@example.com"));
        for i in 0..200 {
            append(&format!(
                "From: carol@example.org\r\nSubject: plain {i}\r\nMessage-ID: <plain{i}@test>\r\n\r\nno calendar\r\n"
            ));
        }
    }
    let (lmtp, imap) = (d.lmtp_port, d.imap_port);
    let delivered = Arc::new(AtomicBool::new(false));
    let flagged = Arc::new(AtomicBool::new(false));
    let tap = {
        let (delivered, flagged) = (delivered.clone(), flagged.clone());
        Tap::start(
            imap,
            move |line| {
                let text = String::from_utf8_lossy(line);
                // While imipd fetches the first invitation's calendar part,
                // a new invitation arrives (UID 202, after imipd's SELECT):
                // Dovecot tells imipd with "* 202 EXISTS".
                if text.contains("UID FETCH 1 ") && !delivered.swap(true, Ordering::SeqCst) {
                    let raw = invitation("new@example.com");
                    lmtp_deliver(lmtp, "alice@example.com", &[BOB.0], raw.as_bytes()).unwrap();
                }
                // Before imipd's second batch, the user's mail program
                // reads it: Dovecot answers the batch with an unsolicited
                // "* 202 FETCH (FLAGS (\Seen) ...)".
                if text.contains("UID FETCH 201:201 ") && !flagged.swap(true, Ordering::SeqCst) {
                    let mut other = ImapClient::login(imap, BOB.0, BOB.1);
                    other.ok("SELECT INBOX");
                    other.ok("UID STORE 202 +FLAGS (\\Seen)");
                }
            },
            // Dovecot leaves the UID out of such a FETCH; servers that
            // follow RFC 3501 §6.4.8 for UID commands put it in. Add it
            // (message 202 has UID 202: nothing was expunged).
            |unit| {
                if unit.starts_with(b"* 202 FETCH (") && !unit.windows(4).any(|w| w == b"UID ") {
                    let mut out = b"* 202 FETCH (UID 202 ".to_vec();
                    out.extend_from_slice(&unit[b"* 202 FETCH (".len()..]);
                    return out;
                }
                unit
            },
        )
    };
    let env = through_tap(&d, tap.port);
    let o = once(&env);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(delivered.load(Ordering::SeqCst) && flagged.load(Ordering::SeqCst));
    assert!(stored(&env, "first@example.com").is_some());
    let state: Value =
        serde_json::from_slice(&std::fs::read(env.path("state/imap/bob/INBOX.json")).unwrap())
            .unwrap();
    assert_eq!(
        state["last_uid"], 201,
        "the unsolicited FETCH of UID 202 moved the last UID: {state}"
    );
    // The next pass handles the invitation that arrived meanwhile.
    let o = once(&env);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        stored(&env, "new@example.com").is_some(),
        "the invitation that came during the pass was skipped: {o:?}"
    );
}

/// Bob's account (accepting invitations) read through a tap on `port`.
fn through_tap(d: &Dovecot, port: u16) -> Env {
    Env::new(&format!(
        "{ACCEPT}{}",
        account(
            d,
            "bob",
            Some(port),
            &format!("{}timeout = 10\n", password())
        )
    ))
}
