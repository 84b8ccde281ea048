//! The `imipd` command line: parses arguments, loads the configuration,
//! runs one command and maps the outcome to the exit status of the contract
//! (0 ok, 1 some messages not handled, 2 bad command line or configuration —
//! for `check` also a store or state folder it cannot write, 3 a server
//! unreachable or refusing the login, 75 the state lock stayed busy).
//!
//! The options every command takes (`-c/--config`, `-v`, `-q`) live in
//! [`Global`] and may stand before or after the command's name; each
//! command's own arguments, help and example stay in its variant of
//! [`Command`]. The completions and the man page are generated from these
//! same definitions.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgAction, CommandFactory, Parser, Subcommand};

use imipd::config::{self, Config};
use std::sync::Arc;

use imipd::driver::{self, Options};
use imipd::{check, classify, service};

/// The exit statuses, the environment and an example per command, at the
/// end of `imipd --help` and in the man page.
const AFTER_HELP: &str = "\
Exit status:
  0   all went well
  1   some messages could not be handled (named on standard error, left for the next pass)
  2   bad command line or configuration (the message names the file, the key, the line
      and the column); for `check`, also a store, state or outgoing folder it cannot
      write, a Maildir that does not exist, or no account
  3   a server could not be reached or refused the login
  75  the state lock stayed busy for [state] lock_timeout (another imipd works on the
      same state): a mail server piping into `imipd process` delivers again later

Environment:
  IMIPD_CONFIG  the configuration file when -c/--config is not given
                (else $XDG_CONFIG_HOME/imipd/config.toml, i.e. ~/.config/imipd/config.toml)
  IMIPD_LOG     what the log shows, as a tracing filter: `debug`, `warn`,
                `imipd=debug,info` (default `info`; -v and -q change the default)
  NO_COLOR      set to anything: no colours in the log (there are none anyway unless
                standard error is a terminal)

Trust:
  Who sent an invitation is proven before it is acted on: an S/MIME or PGP signature by
  the organizer (or the replying attendee), the receiving server's DKIM/DMARC verdict, or
  a trusted relay ([trust] and [identity] in the configuration; README.md, \"Trust\").
  Signed and encrypted mail is verified and opened with the configured keys.

Examples:
  imipd init                          write a commented starter configuration
  imipd check --connect               validate it, log in to every server
  imipd once --dry-run                what one pass would do, changing nothing
  imipd once                          one pass over every account (cron, timers)
  imipd run                           the service (contrib/imipd.service); SIGHUP reloads
  imipd process < invitation.eml      one message from a mail server pipe
  imipd pending                       what waits for my answer
  imipd respond UID accept            answer one now (sets my PARTSTAT, sends the REPLY)
  imipd classify --me me@example.com message.eml
  imipd completions bash > ~/.local/share/bash-completion/completions/imipd
  imipd man > imipd.1";

#[derive(Parser)]
#[command(
    name = "imipd",
    version,
    about = "Answers calendar invitations that arrive by e-mail (iMIP)",
    long_about = "Answers calendar invitations that arrive by e-mail (iMIP): reads them \
                  from IMAP, a Maildir or a pipe, files the events into a vdir calendar \
                  and, where the configuration's policies say so, accepts, declines or \
                  tentatively accepts them with an iTIP REPLY.",
    after_help = AFTER_HELP,
    subcommand_required = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// The options every command takes, before or after its name
/// (`imipd -c F once` and `imipd once -c F` are the same).
#[derive(clap::Args)]
struct Global {
    /// The configuration file [default: $IMIPD_CONFIG, else ~/.config/imipd/config.toml]
    #[arg(short = 'c', long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// More detail in the log: -v debug, -vv trace (IMIPD_LOG, when set, decides)
    #[arg(short = 'v', long, global = true, action = ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Only problems: no line per message handled, no summary, no progress; warnings and errors
    #[arg(short = 'q', long, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Read-only: print one JSON object per message (JSON Lines); changes nothing.
    #[command(
        after_help = "Example:\n  imipd classify --me bob@example.com invitation.eml other.eml"
    )]
    Classify {
        /// One of my calendar addresses (repeatable); added to the configuration's identity
        #[arg(long = "me", value_name = "ADDR")]
        me: Vec<String>,
        /// Raw RFC 5322 messages; `-` reads standard input
        #[arg(required = true, value_name = "FILE")]
        files: Vec<String>,
    },
    /// Treat each message (a file, or `-` for standard input) like one found in a mailbox.
    #[command(
        long_about = "Treat each raw message (a file, or `-` for standard input) like one found \
                      in a mailbox: classify, apply, update the store, send the answers. For a \
                      mail server pipe, procmail or a Sieve `pipe`; it waits for the state lock \
                      up to [state] lock_timeout, then exits 75 (deliver again later).",
        after_help = "Example:\n  imipd process < invitation.eml\n  imipd process --dry-run --json a.eml b.eml"
    )]
    Process {
        #[command(flatten)]
        run: RunArgs,
        /// The account the messages came to: whose calendar and state to use (needed when the configuration serves several people)
        #[arg(long, value_name = "NAME")]
        account: Option<String>,
        /// Raw RFC 5322 messages, handled in the order given; `-` reads standard input
        #[arg(value_name = "FILE", default_value = "-")]
        files: Vec<String>,
    },
    /// One pass over every account and folder, then send the outbox and exit.
    #[command(
        long_about = "One pass over every account and folder, then send what the outbox holds \
                      and exit, with a one-line summary (cron, systemd timers). Use --dry-run \
                      first on an existing mailbox to see what it would do.",
        after_help = "Example:\n  imipd once --dry-run      # what it would do, changing nothing\n  imipd once"
    )]
    Once {
        #[command(flatten)]
        run: RunArgs,
        /// Only the accounts of shard K of N (a stable hash of the account name), so that N processes share one configuration
        #[arg(long, value_name = "K/N")]
        shard: Option<config::Shard>,
    },
    /// The service: every account, every folder, forever (IDLE where the server has it).
    #[command(
        long_about = "The service: every account, every folder, forever; IMAP IDLE where the \
                      server has it, polling otherwise. SIGHUP reloads the configuration (a file \
                      that does not validate is reported and the one in use goes on); SIGINT and \
                      SIGTERM finish the message in hand and exit.",
        after_help = "Example:\n  imipd run\n  systemctl --user enable --now imipd.service   # see contrib/"
    )]
    Run {
        #[command(flatten)]
        run: RunArgs,
        /// Only the accounts of shard K of N (a stable hash of the account name), so that N processes share one configuration
        #[arg(long, value_name = "K/N")]
        shard: Option<config::Shard>,
    },
    /// What waits for my answer: invitations, and COUNTER, REFRESH, DECLINECOUNTER kept for attention.
    #[command(after_help = "Example:\n  imipd pending\n  imipd pending --json --account work")]
    Pending(PendingArgs),
    /// One event in the calendar, as `pending --json` shows it.
    #[command(after_help = "Example:\n  imipd show 040000008200E00074C5B7101A82E008@example.com")]
    Show(ShowArgs),
    /// Answer an invitation now (accept, decline, tentative): sets my PARTSTAT and sends the REPLY.
    Respond(RespondArgs),
    /// Propose another time for an invitation (an iTIP COUNTER to the organizer).
    #[command(
        after_help = "Example:\n  imipd counter UID --start 2026-12-01T15:00 --end 2026-12-01T16:00 --comment \"afternoon?\""
    )]
    Counter(CounterArgs),
    /// A Model Context Protocol server on standard input/output, for assistant bots
    /// (tools: pending, show, respond, counter).
    #[command(
        after_help = "Example (an MCP client's server entry):\n  {\"command\": \"imipd\", \"args\": [\"mcp\"]}"
    )]
    Mcp(McpArgs),
    /// Validate the configuration and print what imipd would do.
    #[command(
        long_about = "Validate the configuration and print what imipd would do: the accounts, \
                      each policy by name and action, the outgoing transport. Fails (exit 2) \
                      when the store, the state or a `file` transport's folder cannot be \
                      written, a Maildir does not exist, or there is no account.",
        after_help = "Example:\n  imipd check --connect"
    )]
    Check {
        /// Also log in to every IMAP, SMTP and CalDAV server and list the folders imipd would watch
        #[arg(long)]
        connect: bool,
        /// Check only the person of this account
        #[arg(long, value_name = "NAME")]
        account: Option<String>,
        /// The configuration is only used by `imipd process` (a mail server pipe): no account needed
        #[arg(long)]
        process_only: bool,
    },
    /// Write a commented starter configuration (never overwriting one).
    #[command(
        long_about = "Write a commented starter configuration to the configuration file \
                      (-c/--config, else $IMIPD_CONFIG, else ~/.config/imipd/config.toml), \
                      private to you (0600). An existing file is never overwritten.",
        after_help = "Example:\n  imipd init && $EDITOR ~/.config/imipd/config.toml && imipd check --connect"
    )]
    Init,
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  imipd completions bash > ~/.local/share/bash-completion/completions/imipd\n  imipd completions zsh > ~/.zfunc/_imipd\n  imipd completions fish > ~/.config/fish/completions/imipd.fish"
    )]
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into a folder.
    #[command(
        after_help = "Example:\n  imipd man > imipd.1 && man ./imipd.1\n  imipd man /usr/local/share/man/man1"
    )]
    Man {
        /// Write imipd.1 and imipd-COMMAND.1 into this folder instead of printing imipd.1
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// The options `process`, `once` and `run` share.
#[derive(clap::Args)]
struct RunArgs {
    /// Decide and report everything, but write nothing, send nothing, mark nothing
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON object per message outcome (and per sent answer) on standard output
    #[arg(long)]
    json: bool,
}

/// `imipd pending`.
#[derive(clap::Args)]
struct PendingArgs {
    /// As this account's person sees it.
    /// As this account's person sees it (needed when the configuration serves several people)
    #[arg(long, value_name = "NAME")]
    account: Option<String>,
    /// One JSON object per line (see docs/json.md) instead of a table.
    #[arg(long)]
    json: bool,
}

/// `imipd show`.
#[derive(clap::Args)]
struct ShowArgs {
    /// As this account's person sees it (needed when the configuration serves several people)
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
    after_help = "Example:\n  imipd respond 040000008200E00074C5B7101A82E008@example.com accept --comment \"see you there\"\n\nExit status: 0 answered (or nothing to send: the same answer again); 1 held back by a cap or not handled; 2 an unknown UID, an event I am not invited to, one I organize, one cancelled or over; 3 the mail server could not be reached (the REPLY stays queued); 75 another imipd held the state's write lock too long."
)]
struct RespondArgs {
    /// As this account's person sees it (needed when the configuration serves several people)
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
    /// As this account's person sees it (needed when the configuration serves several people)
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
    /// As this account's person sees it (needed when the configuration serves several people)
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
    init_log(&cli.global);
    let config = cli.global.config.as_deref();
    match cli.command {
        Command::Classify { me, files } => cmd_classify(config, &me, &files),
        Command::Check {
            connect,
            process_only,
            account,
        } => cmd_check(
            config,
            check::Ask {
                account: account.as_deref(),
                connect,
                process_only,
            },
        ),
        Command::Process {
            run: r,
            account,
            files,
        } => match person_config(config, account.as_deref()) {
            Ok(cfg) => with_loaded(cfg, |cfg| {
                driver::process(Arc::new(cfg.clone()), &files, r.options())
            }),
            Err(code) => code,
        },
        Command::Once { run: r, shard } => with_config(config, |cfg| {
            driver::once(Arc::new(sharded(cfg, shard)), r.options())
        }),
        Command::Run { run: r, shard } => with_config(config, |cfg| {
            service::run(sharded(cfg, shard), r.options(), shard)
        }),
        Command::Pending(a) => with_config(config, |cfg| {
            let cfg = for_account(cfg, a.account.as_deref())?;
            let items = imipd::pending::pending(&cfg, imipd::clock::now())?;
            if a.json {
                items.iter().for_each(driver::print_json);
            } else {
                imipd::say!("{}", imipd::pending::table(&items).trim_end());
            }
            Ok(driver::EXIT_OK)
        }),
        Command::Show(a) => with_config(config, |cfg| {
            let cfg = for_account(cfg, a.account.as_deref())?;
            let items = imipd::pending::show(&cfg, &a.uid, imipd::clock::now())?;
            if a.json {
                items.iter().for_each(driver::print_json);
            } else {
                imipd::say!("{}", imipd::pending::table(&items).trim_end());
            }
            Ok(driver::EXIT_OK)
        }),
        Command::Respond(a) => with_config(config, |cfg| {
            let cfg = Arc::new(for_account(cfg, a.account.as_deref())?);
            let response =
                imipd::process::respond::Response::parse(&a.answer).ok_or_else(|| {
                    imipd::process::respond::Refused(format!("unknown answer `{}`", a.answer))
                })?;
            let (outcome, mut p) = imipd::process::respond::with_answering(cfg, a.dry_run, |p| {
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
        Command::Counter(a) => with_config(config, |cfg| {
            let cfg = Arc::new(for_account(cfg, a.account.as_deref())?);
            let (outcome, mut p) = imipd::process::respond::with_answering(cfg, a.dry_run, |p| {
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
        Command::Mcp(a) => with_config(config, |cfg| {
            let cfg = for_account(cfg, a.account.as_deref())?;
            imipd::mcp::serve(Arc::new(cfg))
        }),
        Command::Init => cmd_init(config),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "imipd", &mut out);
            write_stdout(&out)
        }
        Command::Man { dir } => cmd_man(dir.as_deref()),
    }
}

/// The log: `IMIPD_LOG` when set, else `info` (`-v` debug, `-vv` trace,
/// `-q` warnings and errors). Colours only for a terminal and never with
/// `NO_COLOR`. Lines are written above any progress bar.
fn init_log(g: &Global) {
    imipd::progress::set_quiet(g.quiet);
    let default = if g.quiet {
        "warn"
    } else {
        match g.verbose {
            0 => "info",
            1 => "info,imipd=debug",
            _ => "debug,imipd=trace",
        }
    };
    let mut bad_filter = None;
    let filter = match std::env::var("IMIPD_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            tracing_subscriber::EnvFilter::try_new(&v).unwrap_or_else(|e| {
                bad_filter = Some(format!(
                    "IMIPD_LOG={v} is not a log filter ({e}); using {default}"
                ));
                tracing_subscriber::EnvFilter::new(default)
            })
        }
        _ => tracing_subscriber::EnvFilter::new(default),
    };
    // A log line that cannot be written (standard error closed, its pipe
    // broken) is dropped: with internal errors on, the subscriber would
    // report it with eprintln!, which panics on that very standard error.
    tracing_subscriber::fmt()
        .with_writer(imipd::progress::LogWriter)
        .with_ansi(imipd::progress::colours())
        .with_target(false)
        .log_internal_errors(false)
        .with_env_filter(filter)
        .init();
    if let Some(w) = bad_filter {
        tracing::warn!("{w}");
    }
}

/// Bytes to standard output; a reader that went away is not an error.
fn write_stdout(bytes: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes).and_then(|_| out.flush());
    ExitCode::SUCCESS
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

/// Run a command with a loaded configuration (see [`with_config`]); a
/// request refused (`respond` for an unknown UID, an unknown account) is
/// exit status 2.
fn with_loaded(cfg: Config, f: impl FnOnce(&Config) -> anyhow::Result<u8>) -> ExitCode {
    match f(&cfg) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            imipd::say_err!("imipd: {e:#}");
            if e.chain().any(|c| c.is::<imipd::state::LockBusy>()) {
                ExitCode::from(driver::EXIT_TEMPFAIL)
            } else if e
                .chain()
                .any(|c| c.is::<imipd::process::respond::Refused>())
            {
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
        .map_err(|e| imipd::process::respond::Refused(format!("{e:#}")).into())
}

/// Report what `respond` or `counter` did, then send the outbox; the exit
/// status (1 when a cap held the answer back, 3 when the server failed).
fn answered(
    outcome: &imipd::process::respond::RespondOutcome,
    p: &mut imipd::process::Processor,
    json: bool,
) -> anyhow::Result<u8> {
    if json {
        driver::print_json(outcome);
    } else {
        imipd::say_err!("{outcome}");
    }
    let reporter = driver::Reporter::new(
        Options {
            dry_run: p.dry_run,
            json,
        },
        false,
    );
    let sent = driver::flush(p, &reporter)?;
    let held = outcome.reply.status == imipd::outcome::ReplyStatus::Held;
    Ok(sent.max(if held { driver::EXIT_SOME_FAILED } else { 0 }))
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

/// Load the configuration, or print the error and give exit status 2.
fn load_config(given: Option<&Path>) -> Result<Config, ExitCode> {
    let path = config::default_path(given);
    config::load(&path).map_err(|e| {
        imipd::say_err!("imipd: {e}");
        if given.is_none() && !path.exists() {
            imipd::say_err!(
                "imipd: there is no configuration yet: `imipd init` writes a commented one to {}",
                path.display()
            );
        }
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

fn cmd_check(config_path: Option<&Path>, ask: check::Ask<'_>) -> ExitCode {
    let cfg = match load_config(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    ExitCode::from(check::check(&cfg, ask))
}

/// `imipd init`: the starter configuration at the configuration path,
/// created new (never replacing a file), private to the user.
fn cmd_init(config_path: Option<&Path>) -> ExitCode {
    let path = config::default_path(config_path);
    match imipd::init::write_starter(&path) {
        Ok(()) => {
            imipd::say!("wrote {}", path.display());
            imipd::say!(
                "next: put your address, your mail server and your policies into it, then run\n  \
                 imipd check --connect\n  imipd once --dry-run\n  \
                 imipd run   (or: systemctl --user enable --now imipd.service)"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            imipd::say_err!("imipd: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `imipd man`: the man page of imipd (to standard output), or one page
/// per command written into `dir`.
fn cmd_man(dir: Option<&Path>) -> ExitCode {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        let mut out = Vec::new();
        if let Err(e) = clap_mangen::Man::new(cmd).render(&mut out) {
            imipd::say_err!("imipd: cannot render the man page: {e}");
            return ExitCode::from(1);
        }
        return write_stdout(&out);
    };
    let mut pages = vec![("imipd.1".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let page = sub
            .clone()
            .display_name(format!("imipd-{}", sub.get_name()))
            .bin_name(format!("imipd {}", sub.get_name()));
        pages.push((format!("imipd-{}.1", sub.get_name()), page));
    }
    for (file, page) in pages {
        let mut text = Vec::new();
        let path = dir.join(&file);
        let r = clap_mangen::Man::new(page)
            .render(&mut text)
            .and_then(|_| std::fs::write(&path, &text));
        if let Err(e) = r {
            imipd::say_err!("imipd: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
        imipd::say!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
