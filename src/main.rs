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
        #[arg(value_name = "FILE", default_value = "-")]
        files: Vec<String>,
    },
    /// One pass over every account and folder, then exit.
    Once {
        #[command(flatten)]
        run: RunArgs,
    },
    /// The service: every account, every folder, forever (IDLE where the server has it).
    Run {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Validate the configuration.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also log in to every IMAP and SMTP server.
        #[arg(long)]
        connect: bool,
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
        Command::Check { config, connect } => cmd_check(config.as_deref(), connect),
        Command::Process { run: r, files } => with_config(r.config.as_deref(), |cfg| {
            driver::process(Arc::new(cfg.clone()), &files, r.options())
        }),
        Command::Once { run: r } => with_config(r.config.as_deref(), |cfg| {
            driver::once(Arc::new(cfg.clone()), r.options())
        }),
        Command::Run { run: r } => with_config(r.config.as_deref(), |cfg| {
            service::run(cfg.clone(), r.options())
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
    match f(&cfg) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            imipd::say_err!("imipd: {e:#}");
            if e.chain().any(|c| c.is::<imipd::state::LockBusy>()) {
                ExitCode::from(driver::EXIT_TEMPFAIL)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// Load the configuration, or print the error and give exit status 2.
fn load_config(given: Option<&Path>) -> Result<Config, ExitCode> {
    let path = config::default_path(given);
    config::load(&path).map_err(|e| {
        imipd::say_err!("imipd: {e}");
        ExitCode::from(2)
    })
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

fn cmd_check(config_path: Option<&Path>, connect: bool) -> ExitCode {
    let cfg = match load_config(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    imipd::say!(
        "configuration {} is valid",
        cfg.file.as_deref().unwrap_or(Path::new("?")).display()
    );
    imipd::say!("identity: {}", cfg.identity.addresses.join(", "));
    imipd::say!("store: {}", cfg.store.display());
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
    imipd::say!("policies: {}", cfg.policies.len());
    imipd::say!("trust: {}", imipd::trust::summary(&cfg.trust));
    for warning in plain_text_passwords(&cfg) {
        eprintln!("imipd: warning: {warning}");
    }
    // The folders a run writes into: created as a run would, then probed.
    let mut unusable = false;
    let mut probe = |what: &str, dir: &Path, r: anyhow::Result<()>| {
        if let Err(e) = r {
            eprintln!("imipd: cannot use {what} {}: {e:#}", dir.display());
            unusable = true;
        }
    };
    probe(
        "store folder",
        &cfg.store,
        imipd::fsutil::probe_writable(&cfg.store),
    );
    probe(
        "state folder",
        &cfg.state,
        imipd::state::State::probe_writable(&cfg.state),
    );
    if let Some(config::Outgoing::File { path }) = &cfg.outgoing {
        probe("outgoing folder", path, imipd::fsutil::probe_writable(path));
    }
    let status = if connect {
        check::check_connect(&cfg)
    } else {
        driver::EXIT_OK
    };
    if unusable {
        return ExitCode::from(2);
    }
    ExitCode::from(status)
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
