//! Raw bytes as a mail message through the whole `process` path on a scratch
//! store: classification, policies (an accepting one, so answers are built
//! and queued), the iTIP engine, the store and the outbox. Must never panic,
//! and never write outside the scratch folder.
#![no_main]

use std::sync::{Mutex, OnceLock};

use imipd::config::{Action, Config, Outgoing, PolicyConfig};
use imipd::process::Processor;
use libfuzzer_sys::fuzz_target;

struct Scratch {
    dir: tempfile::TempDir,
    cfg: &'static Config,
    processor: Processor<'static>,
    runs: usize,
}

fn config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::minimal(&["bob@example.com".to_string()]);
    cfg.store = dir.join("calendar");
    cfg.state = dir.join("state");
    cfg.outgoing = Some(Outgoing::File { path: dir.join("outbox") });
    cfg.max_replies_per_hour = 1_000_000;
    cfg.policies = vec![PolicyConfig {
        name: "accept".into(),
        methods: Some(vec!["REQUEST".into(), "ADD".into()]),
        components: None,
        organizers: None,
        senders: None,
        known_sender: None,
        authenticated: None,
        conflict: Some(false),
        recurring: None,
        max_duration: None,
        booking_window: None,
        accounts: None,
        folders: None,
        action: Action::Accept,
        comment: Some("fuzz".into()),
    }];
    cfg
}

fn scratch() -> Scratch {
    let dir = tempfile::tempdir().unwrap();
    // Made once for the whole run (the processor borrows it for 'static).
    let cfg: &'static Config = Box::leak(Box::new(config(dir.path())));
    let processor = Processor::open(cfg, false).unwrap();
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
        for sub in ["calendar", "state"] {
            let _ = std::fs::remove_dir_all(self.dir.path().join(sub));
        }
        // The old processor (and its state lock) goes before the new one opens.
        self.processor = Processor::open(self.cfg, false).unwrap_or_else(|_| {
            let _ = std::fs::remove_dir_all(self.dir.path().join("state"));
            Processor::open(self.cfg, false).unwrap()
        });
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
    let out = s.processor.process(data, "fuzz.eml");
    assert!(out.error.is_none(), "processing failed: {:?}", out.error);
    for entry in std::fs::read_dir(s.dir.path()).unwrap().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        assert!(name == "calendar" || name == "state", "unexpected {name} beside the store");
    }
});
