//! Load: one `imipd run` watching many IMAP accounts of one Dovecot (IDLE
//! on each), each account a person of its own (its own identity, store and
//! state, as the rooms and bots of a team are), an invitation arriving in
//! every one of them: all answered, each exactly once, from its own
//! address, into its own store; then SIGTERM. Peak memory (VmHWM) and CPU time
//! (utime + stime of all threads) are read from /proc just before the stop
//! and printed per account, for one account and for N, so that the cost of
//! an account is the difference.
//!
//! `IMIPD_LOAD_ACCOUNTS` sets N (default 10; `scripts/bench-accounts`
//! runs 1,000).

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::chaos::{env_usize, figure, imap_account};
use crate::harness::dovecot::Dovecot;
use crate::support::*;

fn user(i: usize) -> (String, String) {
    (format!("user{i}@example.com"), format!("secret-{i}"))
}

/// Peak and current resident memory (KiB) and CPU seconds of a process.
#[derive(Debug, Clone, Copy)]
struct Usage {
    hwm_kib: u64,
    rss_kib: u64,
    cpu_s: f64,
    threads: u64,
}

fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): state is
    // field 3, utime field 14, stime field 15.
    let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100u64);
    Usage {
        hwm_kib: field("VmHWM:"),
        rss_kib: field("VmRSS:"),
        cpu_s: ticks as f64 / hz as f64,
        threads: field("Threads:"),
    }
}

fn invitation(i: usize, addr: &str) -> String {
    mail(
        "Alice <alice@example.com>",
        "REQUEST",
        &[vevent(&[
            &format!("UID:load-{i}@example.com"),
            "SEQUENCE:0",
            "DTSTAMP:20261120T100000Z",
            &format!("DTSTART;TZID=Europe/Berlin:202612{:02}T100000", 1 + i % 28),
            "DTEND;TZID=Europe/Berlin:20261201T110000",
            &format!("SUMMARY:Load test {i}"),
            "ORGANIZER;CN=Alice:mailto:alice@example.com",
            &format!("ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:{addr}"),
        ])],
    )
}

struct Measured {
    connected: Usage,
    answered: Usage,
    /// From the first delivery to the last answer.
    latency: Duration,
    /// How long delivering them all took (one LMTP session each).
    delivered: Duration,
}

/// `imipd run` over `n` accounts: wait until all are logged in, deliver
/// one invitation to each, wait for all replies, measure, SIGTERM.
fn measure(n: usize) -> Measured {
    let users: Vec<(String, String)> = (0..n).map(user).collect();
    let refs: Vec<(&str, &str)> = users
        .iter()
        .map(|(u, p)| (u.as_str(), p.as_str()))
        .collect();
    let d = Dovecot::start(&refs);
    let mut cfg = String::from(
        "[outgoing]\ntransport = \"file\"\npath = \"sent\"\nmax_replies_per_hour = 1000\nmax_answers_per_hour = 100000\n\
         [[policy]]\nname = \"alice\"\nmethods = [\"REQUEST\"]\norganizers = [\"alice@example.com\"]\naction = \"accept\"\n",
    );
    for (i, (u, p)) in users.iter().enumerate() {
        cfg.push_str(&imap_account(
            &d,
            &format!("acct{i}"),
            (u, p),
            &format!(
                "poll_interval = 600\nidentity = {{ addresses = [\"{u}\"], name = \"User {i}\" }}\n\
                 store = {{ path = \"people/acct{i}\" }}\n"
            ),
        ));
    }
    let env = Env::new(&cfg);

    let log = env.path("run.log");
    let mut child: Child = imipd()
        .args(["run", "--config"])
        .arg(&env.config)
        .env("IMIPD_LOG", "imipd=info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let pid = child.id();
    let wait = |what: &str, t: Duration, f: &mut dyn FnMut() -> bool| {
        let start = Instant::now();
        while !f() {
            if start.elapsed() > t {
                panic!(
                    "timed out waiting for {what}; imipd log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Every account connected (and, a moment later, in IDLE).
    wait(
        "all accounts to connect",
        Duration::from_secs(60 + n as u64 / 10),
        &mut || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches(" connected")
                .count()
                >= n
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let connected = usage(pid);

    let t0 = Instant::now();
    for (i, (u, _)) in users.iter().enumerate() {
        d.deliver_lmtp(u, invitation(i, u).as_bytes());
    }
    let delivered = t0.elapsed();
    let sent_dir = env.path("sent");
    wait(
        "all replies",
        Duration::from_secs(120 + n as u64 / 5),
        &mut || {
            dir_files(&sent_dir)
                .keys()
                .filter(|k| k.ends_with(".eml"))
                .count()
                >= n
        },
    );
    let latency = t0.elapsed();
    // A moment for anything that would come twice.
    std::thread::sleep(Duration::from_millis(300));
    let answered = usage(pid);

    let (status, _) = crate::support::terminate(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "run exits 0 on SIGTERM");

    // All answered, each exactly once, from the right address.
    let sent = dir_files(&sent_dir);
    let replies: Vec<&String> = sent
        .iter()
        .filter(|(k, _)| k.ends_with(".eml"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(replies.len(), n, "one reply per account");
    for (i, (u, _)) in users.iter().enumerate() {
        let uid = format!("UID:load-{i}@example.com\r\n");
        let matching: Vec<&&String> = replies.iter().filter(|r| r.contains(&uid)).collect();
        assert_eq!(matching.len(), 1, "account {i}: exactly one reply");
        assert!(
            matching[0].contains(&format!("From: \"User {i}\" <{u}>")),
            "account {i}: the reply comes from {u}: {}",
            matching[0]
        );
        let mine = dir_files(&env.path(&format!("people/acct{i}")));
        assert_eq!(
            mine.len(),
            1,
            "account {i}: only its own invitation in its store"
        );
        assert!(mine
            .values()
            .any(|t| t.contains(&format!("UID:load-{i}@example.com"))));
        let flags = d.flags(u, "INBOX");
        assert!(
            flags[0].iter().any(|f| f == "$iMIPProcessed"),
            "account {i}: {flags:?}"
        );
    }
    Measured {
        connected,
        answered,
        latency,
        delivered,
    }
}

#[test]
fn load_many_accounts_in_one_run_all_answered_once() {
    let n = env_usize("IMIPD_LOAD_ACCOUNTS", 10).max(2);
    let one = measure(1);
    let many = measure(n);
    let mib = |k: u64| k as f64 / 1024.0;
    for (label, k, m) in [("1 account", 1, &one), ("N accounts", n, &many)] {
        figure(
            &format!("load {label} (N = {k}): all invitations answered after"),
            format!(
                "{} ms (delivering them took {} ms)",
                m.latency.as_millis(),
                m.delivered.as_millis()
            ),
        );
        figure(
            &format!("load {label} (N = {k}): peak RSS"),
            format!(
                "{:.1} MiB (connected and idle: {:.1} MiB RSS)",
                mib(m.answered.hwm_kib),
                mib(m.connected.rss_kib)
            ),
        );
        figure(
            &format!("load {label} (N = {k}): CPU time"),
            format!(
                "{:.2} s ({:.2} s to start and connect, {:.2} s for the invitations)",
                m.answered.cpu_s,
                m.connected.cpu_s,
                m.answered.cpu_s - m.connected.cpu_s
            ),
        );
        figure(
            &format!("load {label} (N = {k}): threads"),
            m.answered.threads,
        );
    }
    let extra = (n - 1) as f64;
    figure(
        &format!("load per account (N = {n})"),
        format!(
            "peak RSS {:.0} KiB, RSS connected {:.0} KiB, CPU {:.1} ms to connect, {:.1} ms per invitation answered (marginal: (N accounts - 1 account) / (N - 1))",
            (many.answered.hwm_kib as f64 - one.answered.hwm_kib as f64) / extra,
            (many.connected.rss_kib as f64 - one.connected.rss_kib as f64) / extra,
            (many.connected.cpu_s - one.connected.cpu_s) * 1000.0 / extra,
            ((many.answered.cpu_s - many.connected.cpu_s) - (one.answered.cpu_s - one.connected.cpu_s))
                * 1000.0
                / extra
        ),
    );
    figure(
        &format!("load average per account (N = {n})"),
        format!(
            "peak RSS {:.2} MiB, CPU {:.1} ms",
            mib(many.answered.hwm_kib) / n as f64,
            many.answered.cpu_s * 1000.0 / n as f64
        ),
    );
    assert!(
        many.answered.hwm_kib < 200 * 1024,
        "peak RSS {} KiB for {n} accounts",
        many.answered.hwm_kib
    );
}
