//! The `imipd` command line: parses arguments, loads the configuration,
//! runs one command and maps the outcome to the exit status of the contract
//! (0 ok, 1 some messages not handled, 2 bad command line or configuration —
//! for `check` also a store or state folder it cannot write, 3 a server
//! unreachable or refusing the login, 75 the state lock stayed busy).
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use imipd::config::{self, Config};
use std::sync::Arc;

use imipd::driver::{self, Options};
use imipd::{check, classify, service};

#[derive(Parser)]
#[command(
    name = "imipd",
    version,
    about = "Answers calendar invitations that arrive by e-mail (iMIP)",
    after_help = "Who sent an invitation is proven before it is acted on: an S/MIME or PGP \
signature by the organizer (or the replying attendee), the receiving server's DKIM/DMARC \
verdict, or a trusted relay ([trust] and [identity] in the configuration; README.md, \"Trust\"). \
Signed and encrypted mail is verified and opened with the configured keys."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read-only: print one JSON object per message (JSON Lines); changes nothing.
    Classify {
        /// The configuration file (default: $IMIPD_CONFIG, else ~/.config/imipd/config.toml; optional here).
        #[arg(long)]
        config: Option<PathBuf>,
        /// One of my calendar addresses (repeatable); added to the configuration's identity.
        #[arg(long = "me", value_name = "ADDR")]
        me: Vec<String>,
        /// Raw RFC 5322 messages; `-` reads standard input.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<String>,
    },
    /// Treat each message (a file, or `-` for standard input) like one found in a mailbox.
    Process {
        #[command(flatten)]
        run: RunArgs,
        /// The account the messages came to: whose calendar and state to use (needed when the configuration serves several people).
        #[arg(long, value_name = "NAME")]
        account: Option<String>,
        #[arg(value_name = "FILE", default_value = "-")]
        files: Vec<String>,
    },
    /// One pass over every account and folder, then exit.
    Once {
        #[command(flatten)]
        run: RunArgs,
        /// Only the accounts of shard K of N (a stable hash of the account name), so that N processes share one configuration.
        #[arg(long, value_name = "K/N")]
        shard: Option<config::Shard>,
    },
    /// The service: every account, every folder, forever (IDLE where the server has it).
    Run {
        #[command(flatten)]
        run: RunArgs,
        /// Only the accounts of shard K of N (a stable hash of the account name), so that N processes share one configuration.
        #[arg(long, value_name = "K/N")]
        shard: Option<config::Shard>,
    },
    /// What waits for my answer: invitations, and COUNTER, REFRESH, DECLINECOUNTER kept for attention.
    Pending(PendingArgs),
    /// One event in the calendar, as `pending --json` shows it.
    Show(ShowArgs),
    /// Answer an invitation now (accept, decline, tentative): sets my PARTSTAT and sends the REPLY.
    Respond(RespondArgs),
    /// Propose another time for an invitation (an iTIP COUNTER to the organizer).
    Counter(CounterArgs),
    /// A Model Context Protocol server on standard input/output, for assistant bots
    /// (tools: pending, show, respond, counter).
    Mcp(McpArgs),
    /// Validate the configuration.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also log in to every IMAP, SMTP and CalDAV server.
        #[arg(long)]
        connect: bool,
        /// Check only the person of this account.
        #[arg(long, value_name = "NAME")]
        account: Option<String>,
    },
}

/// The options `process`, `once` and `run` share.
#[derive(clap::Args)]
struct RunArgs {
    /// The configuration file (default: $IMIPD_CONFIG, else ~/.config/imipd/config.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Decide and report everything, but write nothing, send nothing, mark nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON object per message outcome on standard output.
    #[arg(long)]
    json: bool,
}

/// `imipd pending`.
#[derive(clap::Args)]
struct PendingArgs {
    /// The configuration file (default: $IMIPD_CONFIG, else ~/.config/imipd/config.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// As this account's person sees it.
    #[arg(long, value_name = "NAME")]
    account: Option<String>,
    /// One JSON object per line (see docs/json.md) instead of a table.
    #[arg(long)]
    json: bool,
}

/// `imipd show`.
#[derive(clap::Args)]
struct ShowArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, value_name = "NAME")]
    account: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// The event's UID.
    uid: String,
}

/// `imipd respond`.
#[derive(clap::Args)]
#[command(
    after_help = "Exit status: 0 answered (or nothing to send: the same answer again); 1 held back by a cap or not handled; 2 an unknown UID, an event I am not invited to, one I organize, one cancelled or over; 3 the mail server could not be reached (the REPLY stays queued); 75 another imipd held the state's write lock too long."
)]
struct RespondArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, value_name = "NAME")]
    account: Option<String>,
    /// The event's UID (`imipd pending` lists them).
    uid: String,
    /// Answer one instance of a series: its RECURRENCE-ID (20261201T090000Z)
    /// or start (2026-12-01T10:00:00+01:00).
    #[arg(long, value_name = "RID")]
    instance: Option<String>,
    /// accept, decline or tentative.
    #[arg(value_parser = ["accept", "decline", "tentative"])]
    answer: String,
    /// A comment for the organizer (COMMENT in the REPLY, and in the mail).
    #[arg(long, value_name = "TEXT")]
    comment: Option<String>,
    /// Decide and report, but change nothing and send nothing.
    #[arg(long)]
    dry_run: bool,
    /// One JSON object on standard output (see docs/json.md).
    #[arg(long)]
    json: bool,
}

/// `imipd counter`.
#[derive(clap::Args)]
struct CounterArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, value_name = "NAME")]
    account: Option<String>,
    /// The event's UID.
    uid: String,
    /// Propose for one instance of a series (its RECURRENCE-ID or start).
    #[arg(long, value_name = "RID")]
    instance: Option<String>,
    /// The proposed start: 2026-12-01T15:00:00+01:00, or 2026-12-01T15:00 in the event's zone.
    #[arg(long, value_name = "T")]
    start: String,
    /// The proposed end, written like --start.
    #[arg(long, value_name = "T")]
    end: String,
    /// A comment for the organizer.
    #[arg(long, value_name = "TEXT")]
    comment: Option<String>,
    /// Decide and report, but send nothing.
    #[arg(long)]
    dry_run: bool,
    /// One JSON object on standard output.
    #[arg(long)]
    json: bool,
}

/// `imipd mcp`.
#[derive(clap::Args)]
struct McpArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, value_name = "NAME")]
    account: Option<String>,
}

impl RunArgs {
    fn options(&self) -> Options {
        Options {
            dry_run: self.dry_run,
            json: self.json,
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // A log line that cannot be written (standard error closed, its pipe
    // broken) is dropped: with internal errors on, the subscriber would
    // report it with eprintln!, which panics on that very standard error.
    // Colours only for a terminal, not for a log file or the journal.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IMIPD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match cli.command {
        Command::Classify { config, me, files } => cmd_classify(config.as_deref(), &me, &files),
        Command::Check {
            config,
            connect,
            account,
        } => cmd_check(config.as_deref(), connect, account.as_deref()),
        Command::Process {
            run: r,
            account,
            files,
        } => match person_config(r.config.as_deref(), account.as_deref()) {
            Ok(cfg) => with_loaded(cfg, |cfg| {
                driver::process(Arc::new(cfg.clone()), &files, r.options())
            }),
            Err(code) => code,
        },
        Command::Once { run: r, shard } => with_config(r.config.as_deref(), |cfg| {
            driver::once(Arc::new(sharded(cfg, shard)), r.options())
        }),
        Command::Run { run: r, shard } => with_config(r.config.as_deref(), |cfg| {
            service::run(sharded(cfg, shard), r.options())
        }),
        Command::Pending(a) => with_config(a.config.as_deref(), |cfg| {
            let cfg = for_account(cfg, a.account.as_deref())?;
            let items = imipd::pending::pending(&cfg, imipd::clock::now())?;
            if a.json {
                items.iter().for_each(driver::print_json);
            } else {
                imipd::say!("{}", imipd::pending::table(&items).trim_end());
            }
            Ok(driver::EXIT_OK)
        }),
        Command::Show(a) => with_config(a.config.as_deref(), |cfg| {
            let cfg = for_account(cfg, a.account.as_deref())?;
            let items = imipd::pending::show(&cfg, &a.uid, imipd::clock::now())?;
            if a.json {
                items.iter().for_each(driver::print_json);
            } else {
                imipd::say!("{}", imipd::pending::table(&items).trim_end());
            }
            Ok(driver::EXIT_OK)
        }),
        Command::Respond(a) => with_config(a.config.as_deref(), |cfg| {
            let cfg = Arc::new(for_account(cfg, a.account.as_deref())?);
            let response = imipd::respond::Response::parse(&a.answer)
                .ok_or_else(|| imipd::respond::Refused(format!("unknown answer `{}`", a.answer)))?;
            let (outcome, mut p) = imipd::respond::with_answering(cfg, a.dry_run, |p| {
                p.respond(
                    &a.uid,
                    a.instance.as_deref(),
                    response,
                    a.comment.as_deref(),
                    imipd::clock::now(),
                )
            })?;
            answered(&outcome, &mut p, a.json)
        }),
        Command::Counter(a) => with_config(a.config.as_deref(), |cfg| {
            let cfg = Arc::new(for_account(cfg, a.account.as_deref())?);
            let (outcome, mut p) = imipd::respond::with_answering(cfg, a.dry_run, |p| {
                p.counter(
                    &a.uid,
                    a.instance.as_deref(),
                    &a.start,
                    &a.end,
                    a.comment.as_deref(),
                    imipd::clock::now(),
                )
            })?;
            answered(&outcome, &mut p, a.json)
        }),
        Command::Mcp(a) => with_config(a.config.as_deref(), |cfg| {
            let cfg = for_account(cfg, a.account.as_deref())?;
            imipd::mcp::serve(Arc::new(cfg))
        }),
    }
}

/// Load the configuration and run a command with it; errors print their
/// whole chain and give exit status 1 (2 for the configuration itself, 75
/// when the state lock stayed busy, so that an MTA delivers again later).
fn with_config(path: Option<&Path>, f: impl FnOnce(&Config) -> anyhow::Result<u8>) -> ExitCode {
    let cfg = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    with_loaded(cfg, f)
}

/// Run a command with a loaded configuration (see [`with_config`]).
fn with_loaded(cfg: Config, f: impl FnOnce(&Config) -> anyhow::Result<u8>) -> ExitCode {
    match f(&cfg) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            imipd::say_err!("imipd: {e:#}");
            if e.chain().any(|c| c.is::<imipd::state::LockBusy>()) {
                ExitCode::from(driver::EXIT_TEMPFAIL)
            } else if e.chain().any(|c| c.is::<imipd::respond::Refused>()) {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// The configuration as `--account NAME` sees it; an unknown name is a
/// usage error (exit status 2).
fn for_account(cfg: &Config, account: Option<&str>) -> anyhow::Result<Config> {
    cfg.for_account(account)
        .map_err(|e| imipd::respond::Refused(format!("{e:#}")).into())
}

/// Report what `respond` or `counter` did, then send the outbox; the exit
/// status (1 when a cap held the answer back, 3 when the server failed).
fn answered(
    outcome: &imipd::respond::RespondOutcome,
    p: &mut imipd::process::Processor,
    json: bool,
) -> anyhow::Result<u8> {
    if json {
        driver::print_json(outcome);
    } else {
        imipd::say_err!("{outcome}");
    }
    let reporter = driver::Reporter {
        opts: Options {
            dry_run: p.dry_run,
            json,
        },
        log: false,
    };
    let sent = driver::flush(p, &reporter)?;
    let held = outcome.reply.status == imipd::outcome::ReplyStatus::Held;
    Ok(sent.max(if held { driver::EXIT_SOME_FAILED } else { 0 }))
}

/// Load the configuration, or print the error and give exit status 2.
fn load_config(given: Option<&Path>) -> Result<Config, ExitCode> {
    let path = config::default_path(given);
    config::load(&path).map_err(|e| {
        imipd::say_err!("imipd: {e}");
        ExitCode::from(2)
    })
}

/// The configuration as one person sees it (`--account NAME`, or the only
/// person there is), or the error and exit status 2.
fn person_config(path: Option<&Path>, account: Option<&str>) -> Result<Config, ExitCode> {
    let cfg = load_config(path)?;
    cfg.for_account(account).map_err(|e| {
        imipd::say_err!("imipd: {e:#}");
        ExitCode::from(2)
    })
}

/// Only the accounts of one shard (`--shard K/N`).
fn sharded(cfg: &Config, shard: Option<config::Shard>) -> Config {
    let mut cfg = cfg.clone();
    if let Some(s) = shard {
        cfg.shard(s);
        tracing::info!(shard = %s, accounts = cfg.accounts.len(), "serving one shard");
    }
    cfg
}

fn cmd_classify(config_path: Option<&Path>, me: &[String], files: &[String]) -> ExitCode {
    // The configuration is optional for classify: use it when it is given or exists.
    let default = config::default_path(config_path);
    let cfg = if config_path.is_some() || default.exists() {
        match load_config(Some(&default)) {
            Ok(mut c) => {
                c.identity
                    .addresses
                    .extend(me.iter().map(|a| imipd::address::bare(a)));
                c
            }
            Err(code) => return code,
        }
    } else {
        Config::minimal(me)
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = false;
    for file in files {
        let raw = if file == "-" {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map(|_| buf)
        } else {
            std::fs::read(file)
        };
        let report = match raw {
            Ok(raw) => classify::classify_with(&raw, file, &cfg.limits, &cfg.trust).report,
            Err(e) => {
                failed = true;
                imipd::say_err!("imipd: cannot read {file}: {e}");
                classify::Report {
                    file: file.clone(),
                    findings: classify::Findings::unreadable(format!("cannot read the file: {e}")),
                    messages: Vec::new(),
                }
            }
        };
        let line = serde_json::to_string(&report).unwrap_or_default();
        if writeln!(out, "{line}").is_err() {
            return ExitCode::from(1);
        }
    }
    ExitCode::from(u8::from(failed))
}

fn cmd_check(config_path: Option<&Path>, connect: bool, account: Option<&str>) -> ExitCode {
    let cfg = match load_config(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    imipd::say!(
        "configuration {} is valid",
        cfg.file.as_deref().unwrap_or(Path::new("?")).display()
    );
    let people = match account {
        Some(name) => match cfg.for_account(Some(name)) {
            Ok(p) => vec![p],
            Err(e) => {
                imipd::say_err!("imipd: {e:#}");
                return ExitCode::from(2);
            }
        },
        None => {
            let mut people = cfg.people();
            if people.is_empty() {
                people.push(cfg.clone());
            }
            people
        }
    };
    let several = people.len() > 1;
    let mut unusable = false;
    let mut status = driver::EXIT_OK;
    for p in &people {
        if several || p.person.is_some() {
            imipd::say!("person {}:", p.person.as_deref().unwrap_or("[identity]"));
        }
        unusable |= check_person(p);
        if connect {
            status = status.max(check::check_connect(p));
        }
    }
    imipd::say!("policies: {}", cfg.policies.len());
    for warning in plain_text_passwords(&cfg) {
        eprintln!("imipd: warning: {warning}");
    }
    if let Some(config::Outgoing::File { path }) = &cfg.outgoing {
        if let Err(e) = imipd::fsutil::probe_writable(path) {
            eprintln!(
                "imipd: cannot use outgoing folder {}: {e:#}",
                path.display()
            );
            unusable = true;
        }
    }
    if connect {
        status = status.max(check::check_outgoing(&cfg));
    }
    if unusable {
        return ExitCode::from(2);
    }
    ExitCode::from(status)
}

/// Say what one person's configuration holds, and make sure its store (a
/// vdir) and state folders can be created and written as a run would;
/// true when one cannot.
fn check_person(cfg: &Config) -> bool {
    imipd::say!("identity: {}", cfg.identity.addresses.join(", "));
    imipd::say!("store: {}", cfg.store);
    imipd::say!("state: {}", cfg.state.display());
    for a in &cfg.accounts {
        match &a.source {
            config::Source::Imap(i) => imipd::say!(
                "account {}: imap {}@{}:{} folders {}",
                a.name,
                i.username,
                i.host,
                i.port,
                i.folders.join(", ")
            ),
            config::Source::Maildir { path, .. } => {
                imipd::say!("account {}: maildir {}", a.name, path.display())
            }
        }
    }
    imipd::say!("trust: {}", imipd::trust::summary(&cfg.trust));
    // The folders a run writes into: created as a run would, then probed.
    let mut unusable = false;
    let mut probe = |what: &str, dir: &Path, r: anyhow::Result<()>| {
        if let Err(e) = r {
            eprintln!("imipd: cannot use {what} {}: {e:#}", dir.display());
            unusable = true;
        }
    };
    if let Some(dir) = cfg.store.vdir_path() {
        probe("store folder", dir, imipd::fsutil::probe_writable(dir));
    }
    probe(
        "state folder",
        &cfg.state,
        imipd::state::State::probe_writable(&cfg.state),
    );
    unusable
}

/// Where a password would travel in plain text (`tls = "none"`) to a host
/// that is not this machine.
fn plain_text_passwords(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let say = |who: String, host: &str| {
        format!(
            "{who}: the password travels without TLS (tls = \"none\") to {host}, which is not this machine; \
             anyone on the way can read it (use tls = \"implicit\" or \"starttls\")"
        )
    };
    for a in &cfg.accounts {
        if let config::Source::Imap(i) = &a.source {
            if i.tls == config::Tls::None && !is_loopback(&i.host) {
                out.push(say(format!("account {}", a.name), &i.host));
            }
        }
    }
    if let Some(config::Outgoing::Smtp(s)) = &cfg.outgoing {
        if s.tls == config::Tls::None && s.secret.is_some() && !is_loopback(&s.host) {
            out.push(say("outgoing".to_string(), &s.host));
        }
    }
    let mut stores = vec![("store".to_string(), &cfg.store)];
    for a in &cfg.accounts {
        if let Some(p) = &a.person {
            stores.push((format!("account {} store", a.name), &p.store));
        }
    }
    for (who, store) in stores {
        if let config::StoreConfig::CalDav(c) = store {
            let uri: Option<http::Uri> = c.url.parse().ok();
            let host = uri
                .as_ref()
                .and_then(|u| u.host())
                .unwrap_or("")
                .to_string();
            if c.secret.is_some()
                && uri.as_ref().and_then(|u| u.scheme_str()) == Some("http")
                && !is_loopback(&host)
            {
                out.push(format!(
                    "{who}: the password travels without TLS (an http:// URL) to {host}, which is not this machine; \
                     anyone on the way can read it (use https://)"
                ));
            }
        }
    }
    out
}

/// `localhost`, a name under `.localhost` (RFC 6761), or a loopback address.
fn is_loopback(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    let bare = h.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h.ends_with(".localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
