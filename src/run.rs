//! The batch commands: `process` (messages from files or standard input)
//! and `once` (one pass over every account). Prints one outcome per message
//! (a line on standard error, or JSON Lines on standard output with
//! `--json`), then tries to send everything queued in the outbox, and
//! returns the exit status of the contract.

use std::io::{Read, Write};

use crate::config::{Config, ImapConfig, Source};
use crate::imap::{self, PassContext};
use crate::maildir;
use crate::outbox::{SendReport, Transport};
use crate::process::{MessageOutcome, Origin, Processor};

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
/// EX_TEMPFAIL: the state lock stayed busy (another imipd works on the
/// state); the mail server should deliver again later.
pub const EXIT_TEMPFAIL: u8 = 75;

/// Write one line to standard error, like `eprintln!` but never panicking:
/// a closed or broken standard error (a log pipe whose reader went away)
/// must not kill the service or a pass; the line is lost instead.
#[macro_export]
macro_rules! say_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

pub fn print_json(value: &impl serde::Serialize) {
    let line = serde_json::to_string(value).unwrap_or_default();
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    let _ = writeln!(lock, "{line}");
    let _ = lock.flush();
}

pub fn report(o: &MessageOutcome, opts: Options) {
    if opts.json {
        print_json(o);
        // Messages left for the next pass are named on stderr in any case.
        if let Some(e) = &o.error {
            crate::say_err!("imipd: {}: {e}", o.source);
        }
    } else {
        crate::say_err!("{o}");
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
            Err(e) => MessageOutcome::failed_to_read(
                file,
                format!("cannot read {file}: {e}"),
                opts.dry_run,
            ),
        };
        if outcome.failed() {
            status = EXIT_SOME_FAILED;
        }
        report(&outcome, opts);
        if outcome.stop {
            // The store or the state cannot be written: the rest would be
            // handled against it as it is, and lost. The MTA retries.
            for rest in files.iter().skip_while(|f| *f != file).skip(1) {
                eprintln!(
                    "imipd: {rest}: not handled, because the store or the state cannot be written"
                );
            }
            break;
        }
    }
    Ok(status.max(flush(&mut p, opts)?))
}

/// Send what the outbox holds (everything, whatever its backoff); exit 3
/// when the server could not be reached or refused the login.
pub fn flush(p: &mut Processor<'_>, opts: Options) -> anyhow::Result<u8> {
    if opts.dry_run {
        return Ok(EXIT_OK);
    }
    let Some(outgoing) = &p.cfg.outgoing else {
        let n = p.outbox.pending()?.len();
        if n > 0 {
            crate::say_err!(
                "imipd: {n} message(s) wait in the outbox, but no [outgoing] is configured"
            );
        }
        return Ok(EXIT_OK);
    };
    if p.outbox.pending()?.is_empty() {
        return Ok(EXIT_OK);
    }
    let transport = Transport::from_config(outgoing);
    let rt = runtime()?;
    let reports = rt.block_on(p.outbox.flush(&transport, crate::clock::now(), false))?;
    let mut status = EXIT_OK;
    for r in &reports {
        print_send(r, opts);
        match r.status {
            "failed" => status = status.max(EXIT_SERVER),
            "rejected" => status = status.max(EXIT_SOME_FAILED),
            _ => {}
        }
    }
    Ok(status)
}

fn print_send(r: &SendReport, opts: Options) {
    if opts.json {
        print_json(&serde_json::json!({ "outbox": r }));
    } else {
        match &r.error {
            None => crate::say_err!("sent to {}: {}", r.to.join(", "), r.summary),
            Some(e) if r.status == "rejected" => {
                crate::say_err!(
                    "imipd: rejected for good, kept in outbox-rejected/: {}: {e}",
                    r.summary
                )
            }
            Some(e) => crate::say_err!(
                "imipd: not sent yet, kept in the outbox: {}: {e}",
                r.summary
            ),
        }
    }
}

/// `imipd once`: every account, every folder, then exit.
pub fn once(cfg: &Config, opts: Options) -> anyhow::Result<u8> {
    let mut p = Processor::open(cfg, opts.dry_run)?;
    let rt = runtime()?;
    let mut status = EXIT_OK;
    for account in &cfg.accounts {
        let result = match &account.source {
            Source::Maildir { path, .. } => once_maildir(&mut p, &account.name, path, opts),
            Source::Imap(icfg) => {
                let locked = std::sync::Mutex::new(p);
                let r = imap::on_imap_stack(|| {
                    rt.block_on(once_imap(cfg, &account.name, icfg, &locked, opts))
                })
                .and_then(|r| r);
                p = locked.into_inner().unwrap_or_else(|e| e.into_inner());
                r
            }
        };
        match result {
            Ok(s) => status = status.max(s),
            Err(e) => {
                crate::say_err!("imipd: account {}: {e:#}", account.name);
                status = status.max(EXIT_SOME_FAILED);
            }
        }
    }
    Ok(status.max(flush(&mut p, opts)?))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

/// One pass over every folder of an IMAP account.
async fn once_imap(
    cfg: &Config,
    account: &str,
    icfg: &ImapConfig,
    p: &std::sync::Mutex<Processor<'_>>,
    opts: Options,
) -> anyhow::Result<u8> {
    let mut conn = match imap::connect(icfg, &cfg.limits).await {
        Ok(c) => c,
        Err(e) => {
            crate::say_err!("imipd: account {account}: {e}");
            return Ok(if e.is_server_problem() {
                EXIT_SERVER
            } else {
                EXIT_SOME_FAILED
            });
        }
    };
    let mut status = EXIT_OK;
    for folder in &icfg.folders {
        let ctx = PassContext {
            account,
            cfg: icfg,
            limits: &cfg.limits,
            state_dir: &cfg.state,
            processor: p,
            dry_run: opts.dry_run,
            stop: None,
        };
        let mut print = |o: &MessageOutcome| report(o, opts);
        match conn.pass(folder, &ctx, &mut print).await {
            Ok(r) => {
                if opts.json {
                    print_json(&serde_json::json!({ "pass": r, "account": account }));
                }
                tracing::debug!(account, folder = %folder, examined = r.examined, calendar = r.with_calendar, unchanged = r.unchanged, fetches = r.fetch_commands, bytes = r.bytes_read, "folder done");
                if r.failed > 0 {
                    status = status.max(EXIT_SOME_FAILED);
                }
            }
            Err(e) => {
                crate::say_err!("imipd: account {account}: {e}");
                status = status.max(if e.is_server_problem() {
                    EXIT_SERVER
                } else {
                    EXIT_SOME_FAILED
                });
                break;
            }
        }
    }
    conn.logout().await;
    Ok(status)
}

/// `imipd check --connect`: log in to every server and say what imipd would use.
pub fn check_connect(cfg: &Config) -> u8 {
    // The servers' answers are parsed on a thread with the IMAP stack.
    imap::on_imap_stack(|| check_connect_here(cfg)).unwrap_or_else(|e| {
        crate::say_err!("imipd: {e:#}");
        EXIT_SOME_FAILED
    })
}

fn check_connect_here(cfg: &Config) -> u8 {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            crate::say_err!("imipd: {e:#}");
            return EXIT_SOME_FAILED;
        }
    };
    let mut status = EXIT_OK;
    for account in &cfg.accounts {
        let Source::Imap(icfg) = &account.source else {
            continue;
        };
        let r: Result<(), imap::ImapError> = rt.block_on(async {
            let mut conn = imap::connect(icfg, &cfg.limits).await?;
            crate::say!(
                "account {}: logged in to {} as {} (IDLE: {}, CONDSTORE: {}, MOVE: {})",
                account.name,
                conn.server,
                icfg.username,
                yes(conn.caps.idle),
                yes(conn.caps.condstore),
                yes(conn.caps.move_)
            );
            for folder in &icfg.folders {
                let m = conn.select(folder).await?;
                crate::say!(
                    "  folder {folder}: {} messages, UIDVALIDITY {}, watched with {}",
                    m.exists,
                    m.uid_validity.unwrap_or(0),
                    if conn.caps.idle && icfg.idle {
                        "IDLE"
                    } else {
                        "polling"
                    }
                );
            }
            conn.logout().await;
            Ok(())
        });
        if let Err(e) = r {
            crate::say_err!("imipd: account {}: {e}", account.name);
            status = status.max(if e.is_server_problem() {
                EXIT_SERVER
            } else {
                EXIT_SOME_FAILED
            });
        }
    }
    if let Some(crate::config::Outgoing::Smtp(s)) = &cfg.outgoing {
        match rt.block_on(crate::outbox::test_smtp(s)) {
            Ok(()) => crate::say!(
                "outgoing: SMTP server {}:{} accepts the connection and login",
                s.host,
                s.port
            ),
            Err(e) => {
                crate::say_err!("imipd: outgoing: {e}");
                status = status.max(EXIT_SERVER);
            }
        }
    }
    status
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

pub fn once_maildir(
    p: &mut Processor<'_>,
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
            Ok(raw) => p.process_from(
                &raw,
                Origin {
                    source: &source,
                    account: Some(account),
                    folder: None,
                    can_move: false,
                    problems: &[],
                },
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // moved meanwhile
            Err(e) => MessageOutcome::failed_to_read(
                &source,
                format!("cannot read {}: {e}", entry.path.display()),
                opts.dry_run,
            ),
        };
        report(&outcome, opts);
        if outcome.stop {
            // The store or the state cannot be written: stop here, leaving
            // this message and the rest for the next pass.
            return Ok(EXIT_SOME_FAILED);
        }
        if outcome.failed() {
            status = EXIT_SOME_FAILED;
        } else if !opts.dry_run {
            ledger.add(&entry.key)?;
        }
    }
    Ok(status)
}
