//! imipd: an agent that answers calendar invitations that arrive by e-mail
//! (iMIP, RFC 6047, carrying iTIP, RFC 5546, in iCalendar, RFC 5545).
//!
//! The flow, one module a step; only the sources and `execute` touch the
//! outside world:
//!
//! ```text
//! source ──► mime ──► itip ──► classify ──► policy ──► plan ──► execute
//! ```
//!
//! - [`clock`]: the one clock (`IMIPD_NOW` moves it, for tests and replays).
//! - [`config`]: the TOML configuration, validated once; secrets.
//! - [`address`]: when two calendar addresses are the same person; globs.
//! - [`limits`]: the `[limits]` that keep hostile mail cheap (a leaf).
//! - [`mime`]: raw message → headers and decoded calendar parts.
//! - [`ical`]: helpers over calcard's iCalendar model.
//! - [`itip`]: calendar text → iTIP objects, checked against the RFC MUSTs.
//! - [`originator`]: who an iTIP object speaks for, and how that is proven.
//! - [`classify`]: a message → its distinct iTIP objects, validity, suspicion.
//! - [`time`]: instants of DATE/DATE-TIME values, time zones, value forms.
//! - [`recur`]: recurrence expansion in windows, next occurrence, is-over; budgets.
//! - [`conflict`]: busy time of the store (an interval index), durations.
//! - [`daemon`]: the `run` service: IDLE/poll per account, outbox sender, signals.
//! - [`engine`]: the iTIP rules: what a message does to the stored object.
//! - [`outbox`]: the durable outbox, the answered ledger, SMTP and file transports.
//! - [`policy`]: the `[[policy]]` rules: facts → first match → action (pure).
//! - [`gather`]: the costly policy facts (address book, occurrences, busy time).
//! - [`reply`]: the REPLY, DECLINECOUNTER and REFRESH answers and their mail.
//! - [`fsutil`]: atomic writes, private files, no followed links, safe names.
//! - [`store`]: the vdir: safe names, atomic writes, lookup by UID.
//! - [`state`]: imipd's own state: handled-mail ledger, held CANCELs, lock.
//! - [`process`]: one message end to end, in a crash-safe order; outcomes.
//! - [`tls`]: rustls client configuration (system roots plus a CA file).
//! - [`imap`]: the IMAP source: connect, one pass over a folder, marking.
//! - [`maildir`]: the Maildir source.
//! - [`run`]: the `process` and `once` commands over files and accounts.
#![forbid(unsafe_code)]

pub mod address;
pub mod classify;
pub mod clock;
pub mod config;
pub mod conflict;
pub mod daemon;
pub mod engine;
pub mod fsutil;
pub mod gather;
pub mod ical;
pub mod imap;
pub mod itip;
pub mod limits;
pub mod maildir;
pub mod mime;
pub mod originator;
pub mod outbox;
pub mod policy;
pub mod process;
pub mod recur;
pub mod reply;
pub mod run;
pub mod state;
pub mod store;
pub mod time;
pub mod tls;

/// `println!` for reports on standard output that does not panic when the
/// reader went away (`imipd check | head`): the write error is ignored.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// The PRODID imipd writes into the calendars it produces.
pub const PRODID: &str = "-//imipd//imipd 0.1//EN";
