//! Raw bytes as a mail message through the whole `process` path on a scratch
//! store: classification, policies (an accepting one, so answers are built
//! and queued), the iTIP engine, the store and the outbox. Must never panic,
//! and never write outside the scratch folder.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use imipd::config::Config;
use imipd::process::Processor;
use libfuzzer_sys::fuzz_target;

struct Scratch {
    dir: tempfile::TempDir,
    cfg: Arc<Config>,
    processor: Option<Processor>,
    runs: usize,
}

/// Policies that answer (so replies are built and queued) and that need
/// every costly fact: busy time (`conflict`) and the next occurrence
/// (`booking_window`, `max_duration`).
const CONFIG: &str = r#"
[identity]
addresses = ["bob@example.com"]
[store]
path = "calendar"
[state]
path = "state"
lock_timeout = "1s"
[outgoing]
transport = "file"
path = "outbox"
max_replies_per_hour = 1000000
max_answers_per_hour = 1000000
[[policy]]
name = "busy"
methods = ["REQUEST", "ADD"]
conflict = true
booking_window = "60d"
action = "decline"
comment = "fuzz"
[[policy]]
name = "short"
methods = ["REQUEST", "ADD"]
max_duration = "2h"
action = "accept"
[[policy]]
name = "counter"
methods = ["COUNTER"]
action = "decline"
[[policy]]
name = "refresh"
methods = ["REFRESH"]
action = "accept"
[[policy]]
name = "rest"
methods = ["REQUEST", "ADD"]
action = "tentative"
"#;

fn config(dir: &std::path::Path) -> Config {
    let path = dir.join("config.toml");
    std::fs::write(&path, CONFIG).unwrap();
    imipd::config::load(&path).unwrap()
}

fn scratch() -> Scratch {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Arc::new(config(dir.path()));
    let processor = Some(Processor::open(cfg.clone(), false).unwrap());
    Scratch {
        dir,
        cfg,
        processor,
        runs: 0,
    }
}

impl Scratch {
    /// Start again with an empty store and state, so they stay small.
    fn reset(&mut self) {
        // The old processor (and its state lock) goes before the new one opens.
        self.processor = None;
        for sub in ["calendar", "state"] {
            let _ = std::fs::remove_dir_all(self.dir.path().join(sub));
        }
        self.processor = Some(Processor::open(self.cfg.clone(), false).unwrap());
    }
}

static SCRATCH: OnceLock<Mutex<Scratch>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let mut s = SCRATCH.get_or_init(|| Mutex::new(scratch())).lock().unwrap();
    // A fresh store now and then, so it stays small and fast.
    s.runs += 1;
    if s.runs % 5000 == 0 {
        s.reset();
    }
    let out = s
        .processor
        .as_mut()
        .expect("opened at the start and after each reset")
        .process(data, "fuzz.eml");
    assert!(out.error.is_none(), "processing failed: {:?}", out.error);
    for entry in std::fs::read_dir(s.dir.path()).unwrap().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        assert!(
            name == "calendar" || name == "state" || name == "config.toml",
            "unexpected {name} beside the store"
        );
    }
});
