//! imipd: an agent that answers calendar invitations that arrive by e-mail
//! (iMIP, RFC 6047, carrying iTIP, RFC 5546, in iCalendar, RFC 5545).
//!
//! The flow (ARCHITECTURE.md has it in full): a source finds a message,
//! the processor plans what it means — classify, who speaks, the iTIP
//! engine, the policies — and only then executes the plan in a crash-safe
//! order; the source settles the message by the outcome.
//!
//! ```text
//! source ──► mime ──► itip ──► classify ──► originator ──► engine ──► policy ──► plan ──► execute
//! ```
//!
//! Leaves (no imipd imports, or only leaves):
//! - [`clock`]: the one clock (`IMIPD_NOW` moves it, for tests and replays).
//! - [`limits`]: the `[limits]` that keep hostile mail cheap.
//! - [`address`]: when two calendar addresses are the same person; globs.
//! - [`identity`]: who "me" is: my addresses, my name, whom I trust (SENT-BY).
//! - [`fsutil`]: atomic writes, private files, no followed links, safe names.
//! - [`time`]: instants of DATE/DATE-TIME values, time zones, value forms, durations.
//!
//! Reading mail and calendars:
//! - [`mime`]: raw message → headers and decoded calendar parts.
//! - [`ical`]: helpers over calcard's iCalendar model.
//! - [`itip`]: calendar text → iTIP objects, checked against the RFC MUSTs.
//! - [`trust`]: S/MIME and PGP/MIME: verifying, opening, signing; the `[trust]` rules and keys.
//! - [`originator`]: who an iTIP object speaks for, and how that is proven.
//! - [`classify`]: a message → its distinct iTIP objects, validity, suspicion.
//!
//! Deciding:
//! - [`engine`]: the iTIP rules: what a message does to the stored object (pure).
//! - [`recur`]: recurrence expansion in windows, next occurrence, is-over; budgets.
//! - [`conflict`]: busy time (an interval index), durations.
//! - [`policy`]: the `[[policy]]` rules: facts → first match → action (pure).
//! - [`gather`]: the costly policy facts (address book, occurrences, busy time).
//! - [`hook`]: the decision hook (`action = "command"`): a program decides.
//! - [`reply`]: the REPLY, DECLINECOUNTER, REFRESH and COUNTER messages and their mail.
//! - [`pending`]: `pending` and `show`: what waits for me, read-only.
//! - [`process`]: one message: plan (no I/O but reads), then execute.
//! - [`outcome`]: what happened to a message (the outcome lines).
//! - [`describe`]: an event as JSON shows it (times with offsets, people).
//!
//! Keeping and sending:
//! - [`store`]: the calendar store seam; [`store::vdir`] and [`store::caldav`].
//! - [`state`]: imipd's own state: held CANCELs, attention, quarantine, lock, ledgers.
//! - [`outbox`]: the durable outbox, the answered ledger, SMTP and file transports.
//! - [`mine`]: what imipd remembers per invitation to me (answers, why not, my PARTSTATs).
//!
//! Running:
//! - [`config`]: the TOML configuration, validated once; secrets; the people it serves.
//! - [`source`]: the source seam; IMAP, Maildir, files and standard input.
//! - [`driver`]: one pass of a source through the processor; `once`, `process`.
//! - [`service`]: `run`: every account, the processor thread, the outbox sender.
//! - [`shutdown`]: the stop signal the service's tasks watch.
//! - [`progress`]: standard error shared by lines, the log and progress bars; `-q`.
//! - [`check`]: `check`, `check --connect`.
//! - [`child`]: the programs imipd starts (secret commands, hooks), in process groups of their own.
//! - [`init`]: `init`: the starter configuration.
//! - [`mcp`]: `mcp`, the Model Context Protocol server for assistant bots.
//! - [`tls`]: rustls client configuration (system roots plus a CA file).
#![forbid(unsafe_code)]

pub mod address;
pub mod check;
pub mod child;
pub mod classify;
pub mod clock;
pub mod config;
pub mod conflict;
pub mod describe;
pub mod driver;
pub mod engine;
pub mod fsutil;
pub mod gather;
pub mod hook;
pub mod ical;
pub mod identity;
pub mod init;
pub mod itip;
pub mod limits;
pub mod mcp;
pub mod mime;
pub mod mine;
pub mod originator;
pub mod outbox;
pub mod outcome;
pub mod pending;
pub mod policy;
pub mod process;
pub mod progress;
pub mod recur;
pub mod reply;
pub mod service;
pub mod shutdown;
pub mod source;
pub mod state;
pub mod store;
pub mod time;
pub mod tls;
pub mod trust;

/// `println!` for reports on standard output that does not panic when the
/// reader went away (`imipd check | head`): the write error is ignored.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Write one line to standard error, like `eprintln!` but never panicking:
/// a closed or broken standard error (a log pipe whose reader went away)
/// must not kill the service or a pass; the line is lost instead. Written
/// above any progress bar ([`progress`]).
#[macro_export]
macro_rules! say_err {
    ($($arg:tt)*) => {{
        $crate::progress::line_to_stderr(format_args!($($arg)*));
    }};
}

/// The PRODID imipd writes into the calendars it produces.
pub const PRODID: &str = "-//imipd//imipd 0.1//EN";
