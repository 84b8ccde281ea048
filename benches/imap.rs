//! The IMAP end-to-end figures (`scripts/bench-imap`, or `cargo bench --bench
//! imap`): a real Dovecot filled with 5,000 generated messages (10%
//! invitations written the way several clients write them, 20% carrying a
//! 2 MB attachment), then, in one run:
//!
//! - cold `imipd once` (time, bytes fetched, peak RSS);
//! - warm `imipd once` on the unchanged mailbox (time, FETCH commands);
//! - the same mailbox read by a naive client that fetches every whole message
//!   and classifies it (time, bytes);
//! - `imipd run` in IDLE: invitation appended → reply written (median of 10).
//!
//! Under `cargo test` (no `--bench` argument) it runs a 100-message smoke
//! version, so the code stays correct without costing CI minutes.

#![allow(dead_code)]

#[path = "../tests/it/harness/mod.rs"]
mod harness;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::dovecot::Dovecot;

const USER: (&str, &str) = ("bob@example.com", "bench-secret");

/// The fixtures' events lie in December 2026: run at a fixed instant before them.
const BENCH_NOW: &str = "2026-11-21T10:00:00Z";

fn imipd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imipd"));
    c.env("IMIPD_NOW", BENCH_NOW);
    c
}

/// The invitation fixtures, by client style.
fn styles() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/classify");
    [
        "google-request.eml",
        "outlook-request.eml",
        "apple-request.eml",
        "thunderbird-request.eml",
        "nextcloud-request-noreply-sender.eml",
        "zoom-request-long-description.eml",
        "exchange-update-single-occurrence.eml",
        "calconnect-best-practice.eml",
    ]
    .iter()
    .map(|n| std::fs::read(dir.join(n)).unwrap())
    .collect()
}

fn attachment_mail(i: usize, size: usize) -> Vec<u8> {
    let mut seed = i as u64 + 1;
    let mut body = String::with_capacity(size * 4 / 3 + size / 38);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let chars = size * 4 / 3;
    for n in 0..chars {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        body.push(alphabet[(seed % 64) as usize] as char);
        if n % 76 == 75 {
            body.push_str("\r\n");
        }
    }
    format!(
        "From: Carol <carol@example.org>\r\nTo: bob@example.com\r\nSubject: Report {i}\r\nMessage-ID: <att{i}@bench>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\nContent-Type: text/plain\r\n\r\n\
         The report is attached.\r\n--b{i}\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"report.pdf\"\r\n\r\n{body}\r\n--b{i}--\r\n"
    )
    .into_bytes()
}

fn plain_mail(i: usize) -> Vec<u8> {
    format!(
        "From: Dave <dave@example.net>\r\nTo: bob@example.com\r\nSubject: Note {i}\r\nMessage-ID: <note{i}@bench>\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n",
        "Just a short note about the project.\r\n".repeat(20)
    )
    .into_bytes()
}

/// Fill the INBOX by writing Maildir files directly (Dovecot indexes them).
fn fill(d: &Dovecot, total: usize, attachment_bytes: usize) -> (usize, usize) {
    let maildir = d.folder_path(USER.0, "INBOX");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    // Dovecot runs as 65534 here: everything it must write belongs to it.
    let mut dir = maildir.clone();
    while dir.starts_with(d.home(USER.0)) {
        let _ = std::os::unix::fs::chown(&dir, Some(65534), Some(65534));
        if !dir.pop() {
            break;
        }
    }
    for sub in ["new", "cur", "tmp"] {
        let _ = std::os::unix::fs::chown(maildir.join(sub), Some(65534), Some(65534));
    }
    let new = maildir.join("new");
    let styles = styles();
    let (mut invitations, mut big) = (0, 0);
    for i in 0..total {
        let raw = if i % 10 == 3 {
            invitations += 1;
            let s = &styles[i % styles.len()];
            // A distinct UID per invitation.
            let text = String::from_utf8_lossy(s).replace("UID:", &format!("UID:bench{i}-"));
            text.into_bytes()
        } else if i % 5 == 1 {
            big += 1;
            attachment_mail(i, attachment_bytes)
        } else {
            plain_mail(i)
        };
        let p = new.join(format!("{}.M{i}P1.bench", 1_700_000_000 + i));
        std::fs::write(&p, raw).unwrap();
        let _ = std::os::unix::fs::chown(&p, Some(65534), Some(65534));
    }
    (invitations, big)
}

fn config(dir: &Path, d: &Dovecot, poll: u64) -> PathBuf {
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[identity]\naddresses = [\"bob@example.com\"]\n[store]\npath = \"calendar\"\n[state]\npath = \"state\"\n\
             [outgoing]\ntransport = \"file\"\npath = \"outbox\"\nmax_replies_per_hour = 100000\nmax_answers_per_hour = 100000\n\
             [[policy]]\nname = \"yes\"\nmethods = [\"REQUEST\"]\naction = \"accept\"\n\
             [[account]]\nname = \"bob\"\nsource = \"imap\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"implicit\"\n\
             username = \"{}\"\npassword = \"{}\"\nca_file = \"{}\"\npoll_interval = {poll}\n",
            d.imaps_port,
            USER.0,
            USER.1,
            d.certs.ca_pem.display()
        ),
    )
    .unwrap();
    cfg
}

struct OnceRun {
    seconds: f64,
    max_rss_kb: u64,
    bytes: u64,
    fetches: u64,
    outcomes: usize,
}

/// `imipd once` under /usr/bin/time -v, for the peak RSS.
fn once(cfg: &Path) -> OnceRun {
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(env!("CARGO_BIN_EXE_imipd"))
        .env("IMIPD_NOW", BENCH_NOW)
        .args(["once", "--json", "--config"])
        .arg(cfg)
        .output()
        .expect("cannot run /usr/bin/time (apt-get install time)");
    let seconds = start.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "imipd once failed: {err}");
    let max_rss_kb = err
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut r = OnceRun {
        seconds,
        max_rss_kb,
        bytes: 0,
        fetches: 0,
        outcomes: 0,
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(p) = v.get("pass") {
            r.bytes += p["bytes_read"].as_u64().unwrap_or(0);
            r.fetches += p["fetch_commands"].as_u64().unwrap_or(0);
        } else if v.get("source").is_some() {
            r.outcomes += 1;
        }
    }
    r
}

/// A naive client: log in, fetch every whole message, and hand each to the
/// same processing imipd does (same policies, store, outbox and transport),
/// then send the replies. Only the fetching differs from `imipd once`. It
/// reads over plain IMAP, which spares it the TLS work imipd does.
fn naive(d: &Dovecot, dir: &Path) -> (f64, u64, usize) {
    let cfg_path = config(dir, d, 60);
    let cfg = imipd::config::load(&cfg_path).unwrap();
    let start = Instant::now();
    let mut p = imipd::process::Processor::open(std::sync::Arc::new(cfg), false).unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", d.imap_port)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    write!(
        s,
        "a LOGIN {} {}\r\nb SELECT INBOX\r\nc UID FETCH 1:* (BODY.PEEK[])\r\nd LOGOUT\r\n",
        USER.0, USER.1
    )
    .unwrap();
    let (mut bytes, mut imip) = (0u64, 0usize);
    let mut n = 0;
    loop {
        let mut l = Vec::new();
        if r.read_until(b'\n', &mut l).unwrap() == 0 {
            break;
        }
        bytes += l.len() as u64;
        if l.starts_with(b"d OK") {
            break;
        }
        // "* n FETCH (UID x BODY[] {size}"
        if l.ends_with(b"}\r\n") {
            let open = l.iter().rposition(|&b| b == b'{').unwrap();
            let size: usize = std::str::from_utf8(&l[open + 1..l.len() - 3])
                .unwrap()
                .parse()
                .unwrap();
            let mut msg = vec![0u8; size];
            r.read_exact(&mut msg).unwrap();
            bytes += size as u64;
            n += 1;
            let source = format!("naive/INBOX/{n}");
            let o = p.process_from(
                &msg,
                imipd::outcome::Origin {
                    source: &source,
                    account: Some("bob"),
                    folder: Some("INBOX"),
                    can_move: false,
                    problems: &[],
                },
            );
            if o.imip {
                imip += 1;
            }
        }
    }
    imipd::driver::flush(
        &mut p,
        &imipd::driver::Reporter::new(imipd::driver::Options::default(), false),
    )
    .unwrap();
    (start.elapsed().as_secs_f64(), bytes, imip)
}

fn invitation(uid: &str) -> String {
    format!(
        "From: Alice <alice@example.com>\r\nTo: bob@example.com\r\nSubject: Invitation\r\nMessage-ID: <{uid}>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/calendar; method=REQUEST; charset=UTF-8\r\n\r\n\
         BEGIN:VCALENDAR\r\nPRODID:-//bench//EN\r\nVERSION:2.0\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:{uid}\r\n\
         DTSTAMP:20261120T100000Z\r\nDTSTART:20261201T100000Z\r\nDTEND:20261201T110000Z\r\nSUMMARY:Quick sync\r\n\
         ORGANIZER:mailto:alice@example.com\r\nATTENDEE;RSVP=TRUE:mailto:bob@example.com\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
}

/// `imipd run` in IDLE: time from delivery to the reply file, `n` times.
fn idle_latency(d: &Dovecot, dir: &Path, n: usize) -> Vec<f64> {
    let cfg = config(dir, d, 3600);
    let outbox = dir.join("outbox");
    let mut child = imipd()
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let count = || std::fs::read_dir(&outbox).map(|r| r.count()).unwrap_or(0);
    // Let it connect, catch up and enter IDLE.
    let start = Instant::now();
    let mut last = usize::MAX;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let c = count();
        if c == last || start.elapsed() > Duration::from_secs(120) {
            break;
        }
        last = c;
    }
    let mut times = Vec::new();
    for i in 0..n {
        let before = count();
        let t0 = Instant::now();
        d.deliver_lmtp(USER.0, invitation(&format!("idle{i}@bench")).as_bytes());
        while count() == before {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no reply within 30 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        times.push(t0.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    times
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (mut total, mut attachment) = if full {
        (5000, 2 * 1024 * 1024)
    } else {
        (100, 64 * 1024)
    };
    // BENCH_TOTAL and BENCH_ATTACHMENT_KIB override the mailbox, for exploring.
    if let Some(n) = std::env::var("BENCH_TOTAL")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        total = n;
    }
    if let Some(n) = std::env::var("BENCH_ATTACHMENT_KIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        attachment = n * 1024;
    }
    imipd::tls::install_provider();
    let d = Dovecot::start(&[USER]);
    let t = Instant::now();
    let (invitations, big) = fill(&d, total, attachment);
    eprintln!("filled {total} messages ({invitations} invitations, {big} with a {} KiB attachment) in {:.1} s", attachment / 1024, t.elapsed().as_secs_f64());
    // Dovecot indexes mail as it is delivered (LMTP, LDA); here the files were
    // written behind its back, so let it build its index first, as it would
    // have done on delivery.
    let t = Instant::now();
    let primed = d.imap(USER.0, &["SELECT INBOX", "UID FETCH 1:* (FLAGS)"]);
    assert!(primed.contains("A2 OK"), "{primed}");
    eprintln!(
        "Dovecot indexed the folder in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let work = tempfile::tempdir().unwrap();
    let cfg = config(work.path(), &d, 60);
    let cold = once(&cfg);
    let warm = once(&cfg);
    let naive_dir = tempfile::tempdir().unwrap();
    let (naive_s, naive_bytes, naive_imip) = naive(&d, naive_dir.path());
    assert_eq!(
        std::fs::read_dir(naive_dir.path().join("calendar"))
            .unwrap()
            .count(),
        std::fs::read_dir(work.path().join("calendar"))
            .unwrap()
            .count(),
        "both ways file the same events"
    );
    assert_eq!(warm.fetches, 0, "a warm pass must not FETCH");
    assert!(
        cold.outcomes >= invitations,
        "cold pass handled {} of {invitations} invitations",
        cold.outcomes
    );
    assert!(naive_imip >= invitations);
    let idle_dir = tempfile::tempdir().unwrap();
    let mut lat = idle_latency(&d, idle_dir.path(), if full { 10 } else { 3 });
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = lat[lat.len() / 2];
    println!("| measurement | value |");
    println!("| --- | --- |");
    println!(
        "| mailbox | {total} messages, {invitations} invitations, {big} with a {} KiB attachment |",
        attachment / 1024
    );
    println!(
        "| cold `imipd once` | {:.2} s, {:.1} MiB fetched, peak RSS {:.1} MiB |",
        cold.seconds,
        cold.bytes as f64 / 1048576.0,
        cold.max_rss_kb as f64 / 1024.0
    );
    println!("| warm `imipd once` (unchanged mailbox) | {:.2} s, {} FETCH commands, {} KiB read, peak RSS {:.1} MiB |", warm.seconds, warm.fetches, warm.bytes / 1024, warm.max_rss_kb as f64 / 1024.0);
    println!(
        "| naive: every whole message fetched, same processing | {:.2} s, {:.1} MiB fetched |",
        naive_s,
        naive_bytes as f64 / 1048576.0
    );
    println!(
        "| cold scan speed-up over naive | {:.1}× faster, {:.0}× fewer bytes |",
        naive_s / cold.seconds,
        naive_bytes as f64 / cold.bytes.max(1) as f64
    );
    println!(
        "| IDLE: invitation delivered → reply written | median {:.0} ms (of {}) |",
        median * 1000.0,
        lat.len()
    );
}
