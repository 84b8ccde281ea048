//! The batch commands: `process` (messages from files or standard input)
//! and `once` (one pass over every account). Prints one outcome per message
//! (a line on standard error, or JSON Lines on standard output with
//! `--json`) and returns the exit status of the contract.

use std::io::{Read, Write};

use crate::config::{Config, Source};
use crate::process::{MessageOutcome, Processor};
use crate::{maildir, process};

/// How to run and report.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub dry_run: bool,
    pub json: bool,
}

/// Exit statuses of the contract.
pub const EXIT_OK: u8 = 0;
pub const EXIT_SOME_FAILED: u8 = 1;
pub const EXIT_SERVER: u8 = 3;

fn report(o: &MessageOutcome, opts: Options) {
    if opts.json {
        let line = serde_json::to_string(o).unwrap_or_default();
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        let _ = writeln!(lock, "{line}");
        let _ = lock.flush();
    } else {
        eprintln!("{o}");
    }
}

/// `imipd process FILE|-...`
pub fn process_files(cfg: &Config, files: &[String], opts: Options) -> anyhow::Result<u8> {
    let mut p = Processor::open(cfg, opts.dry_run)?;
    let mut status = EXIT_OK;
    for file in files {
        let raw = if file == "-" {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).map(|_| buf)
        } else {
            std::fs::read(file)
        };
        let outcome = match raw {
            Ok(raw) => p.process(&raw, file),
            Err(e) => failed(file, format!("cannot read {file}: {e}"), opts.dry_run),
        };
        if outcome.failed() {
            status = EXIT_SOME_FAILED;
        }
        report(&outcome, opts);
    }
    Ok(status)
}

fn failed(source: &str, error: String, dry_run: bool) -> MessageOutcome {
    MessageOutcome {
        source: source.to_string(),
        message_id: None,
        from: None,
        imip: false,
        valid: false,
        suspicious: false,
        problems: Vec::new(),
        results: Vec::new(),
        error: Some(error),
        dry_run,
    }
}

/// `imipd once`: every account, every folder, then exit.
pub fn once(cfg: &Config, opts: Options) -> anyhow::Result<u8> {
    let mut p = Processor::open(cfg, opts.dry_run)?;
    let mut status = EXIT_OK;
    for account in &cfg.accounts {
        let result = match &account.source {
            Source::Maildir { path } => once_maildir(&mut p, &account.name, path, opts),
            Source::Imap(_) => {
                eprintln!(
                    "imipd: account {}: IMAP accounts are not supported by this build yet",
                    account.name
                );
                Ok(EXIT_SOME_FAILED)
            }
        };
        match result {
            Ok(s) => status = status.max(s),
            Err(e) => {
                eprintln!("imipd: account {}: {e:#}", account.name);
                status = status.max(EXIT_SOME_FAILED);
            }
        }
    }
    Ok(status)
}

fn once_maildir(
    p: &mut process::Processor<'_>,
    account: &str,
    path: &std::path::Path,
    opts: Options,
) -> anyhow::Result<u8> {
    let mut ledger = p.state.ledger(account)?;
    let mut status = EXIT_OK;
    for entry in maildir::list(path)? {
        if ledger.contains(&entry.key) {
            continue;
        }
        let source = format!("{account}/{}", entry.key);
        let outcome = match std::fs::read(&entry.path) {
            Ok(raw) => p.process(&raw, &source),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // moved meanwhile
            Err(e) => failed(
                &source,
                format!("cannot read {}: {e}", entry.path.display()),
                opts.dry_run,
            ),
        };
        report(&outcome, opts);
        if outcome.failed() {
            status = EXIT_SOME_FAILED;
        } else if !opts.dry_run {
            ledger.add(&entry.key)?;
        }
    }
    Ok(status)
}
