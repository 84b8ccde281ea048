//! Helpers shared by the integration tests: a scratch environment with a
//! configuration, a way to run the binary, and builders for iMIP mail.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The instant every test runs at (`IMIPD_NOW`): the test events lie in
/// the weeks after it, whatever the real date is.
pub const TEST_NOW: &str = "2026-11-21T10:00:00Z";

/// The `imipd` binary, with the test clock set (overriding any `IMIPD_NOW`
/// of the environment).
pub fn imipd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imipd"));
    c.env("IMIPD_NOW", TEST_NOW);
    c
}

/// A scratch folder with a configuration for bob@example.com.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Env {
    pub fn new(extra: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[identity]\naddresses = [\"bob@example.com\"]\nname = \"Bob Example\"\n\
                 [store]\npath = \"calendar\"\n[state]\npath = \"state\"\n{extra}"
            ),
        )
        .unwrap();
        Env { dir, config }
    }

    /// Run imipd with `args` and this configuration (`--config` last), and
    /// wait for it.
    pub fn run(&self, args: &[&str]) -> Output {
        imipd()
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap()
    }

    /// [`Env::run`] as (exit status, standard output, standard error).
    pub fn run_text(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = self.run(args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Take the state lock as another imipd would; held while the file
    /// returned is open.
    pub fn hold_state_lock(&self) -> std::fs::File {
        std::fs::create_dir_all(self.path("state")).unwrap();
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.path("state/lock"))
            .unwrap();
        lock.lock().unwrap();
        lock
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn store(&self) -> PathBuf {
        self.path("calendar")
    }

    /// Write a message into the scratch folder and return its path.
    pub fn message(&self, name: &str, raw: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, raw).unwrap();
        p
    }

    /// `imipd process --json` over the given files; the outcomes.
    pub fn process(&self, files: &[&Path]) -> (Vec<Value>, Output) {
        let out = imipd()
            .arg("process")
            .arg("--json")
            .arg("--config")
            .arg(&self.config)
            .args(files)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let values = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
            .collect();
        (values, out)
    }

    /// Process messages one per call (in order) and return the effects.
    pub fn effects(&self, raws: &[&str]) -> Vec<String> {
        let mut all = Vec::new();
        for (i, raw) in raws.iter().enumerate() {
            let p = self.message(&format!("m{i}-{}.eml", rand_suffix()), raw);
            let (v, out) = self.process(&[&p]);
            assert!(
                out.status.success() || out.status.code() == Some(1),
                "{out:?}"
            );
            for o in v {
                for r in o["results"].as_array().cloned().unwrap_or_default() {
                    all.push(r["effect"].as_str().unwrap_or("").to_string());
                }
            }
        }
        all
    }

    /// Every file of the store: name → content.
    pub fn store_files(&self) -> BTreeMap<String, String> {
        dir_files(&self.store())
    }
}

pub fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::SeqCst).to_string()
}

pub fn dir_files(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                out.insert(
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(e.path()).unwrap_or_default(),
                );
            }
        }
    }
    out
}

/// A VEVENT from property lines (each without line end).
pub fn vevent(lines: &[&str]) -> String {
    let mut s = String::from("BEGIN:VEVENT\r\n");
    for l in lines {
        s.push_str(l);
        s.push_str("\r\n");
    }
    s.push_str("END:VEVENT\r\n");
    s
}

/// A complete iMIP mail: From, a text/calendar part with method=, and the
/// VCALENDAR with METHOD around the given components.
pub fn mail(from: &str, method: &str, components: &[String]) -> String {
    let id = rand_suffix();
    format!(
        "From: {from}\r\nTo: bob@example.com\r\nSubject: {method}\r\nMessage-ID: <m{id}@test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/calendar; method={method}; charset=UTF-8\r\n\r\n\
         BEGIN:VCALENDAR\r\nPRODID:-//test//EN\r\nVERSION:2.0\r\nMETHOD:{method}\r\n{}END:VCALENDAR\r\n",
        components.concat()
    )
}

/// The stored text for a UID (the store holds exactly one file with it).
pub fn stored(env: &Env, uid: &str) -> Option<String> {
    env.store_files()
        .into_values()
        .find(|t| t.contains(&format!("UID:{uid}\r\n")))
}

impl Env {
    /// Process one raw message with `imipd process --json`; its outcome.
    pub fn one(&self, raw: &str) -> Value {
        let p = self.message(&format!("one-{}.eml", rand_suffix()), raw);
        let (v, out) = self.process(&[&p]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        v.into_iter()
            .find(|v| v.get("results").is_some())
            .unwrap_or_else(|| panic!("no outcome: {}", String::from_utf8_lossy(&out.stderr)))
    }

    /// The mail a `file` transport wrote into `dir`, in sending order.
    pub fn sent_in(&self, dir: &str) -> Vec<String> {
        dir_files(&self.path(dir)).into_values().collect()
    }
}

/// The first result of an outcome.
pub fn first(o: &Value) -> &Value {
    &o["results"][0]
}

/// What a result says about its reply, in words ("queued to …", "not
/// sent: …"); empty when it says nothing.
pub fn reply_text(result: &Value) -> &str {
    result["reply"]["text"].as_str().unwrap_or("")
}

/// The unfolded text of a calendar object (RFC 5545 §3.1), for matching
/// property lines whatever the line length.
pub fn unfold(text: &str) -> String {
    text.replace("\r\n ", "")
        .replace("\r\n\t", "")
        .replace("\n ", "")
}

/// The VEVENT blocks of a text (a stored object or a sent mail's calendar
/// part), unfolded.
pub fn vevents_in(text: &str) -> Vec<String> {
    let text = unfold(text);
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(a) = rest.find("BEGIN:VEVENT") {
        let Some(b) = rest[a..].find("END:VEVENT") else {
            break;
        };
        out.push(rest[a..a + b].to_string());
        rest = &rest[a + b + 10..];
    }
    out
}

/// The first text/calendar part of a sent mail (its VEVENTs, unfolded).
pub fn calendar_vevents(mail: &str) -> Vec<String> {
    let start = mail.find("BEGIN:VCALENDAR").unwrap_or(0);
    let end = mail[start..]
        .find("END:VCALENDAR")
        .map_or(mail.len(), |e| start + e);
    vevents_in(&mail[start..end])
}

/// A small deterministic generator (xorshift64): the same seed, the same
/// sequence, on every machine.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// An index in `0..n`.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
}

/// Send SIGTERM to `child` and wait for it to exit: its status and how long
/// the stop took. Panics (after killing it) if it is still running after
/// `limit`, with its /proc state to show where it hung.
pub fn terminate(child: &mut Child, limit: Duration) -> (ExitStatus, Duration) {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, start.elapsed());
        }
        if start.elapsed() > limit {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let _ = child.kill();
            let _ = child.wait();
            panic!("`imipd` did not stop within {limit:?} of SIGTERM (/proc stat: {stat})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
