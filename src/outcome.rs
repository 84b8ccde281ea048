//! What happened to a message, as the processing reports it and the
//! sources and the driver read it: per message ([`MessageOutcome`]) and per
//! UID of each iTIP object ([`ItemOutcome`]), printed as a line for people
//! or as JSON (the `process`/`once`/`run --json` lines). Also where a
//! message comes from ([`Origin`]).

use std::fmt;

use serde::Serialize;

use crate::classify::{Classified, Findings};
use crate::engine::{Effect, Role};
use crate::originator::Originator;
use crate::policy::Action;

/// Where a message comes from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin<'a> {
    /// The file, or `account/folder/uid` for mailbox messages.
    pub source: &'a str,
    pub account: Option<&'a str>,
    pub folder: Option<&'a str>,
    /// The source can move quarantined mail itself (IMAP); otherwise a copy
    /// is kept in `STATE/quarantine/`.
    pub can_move: bool,
    /// What the source found wrong before the message got here (a part over
    /// a limit that was not fetched): each makes the message invalid.
    pub problems: &'a [String],
}

/// What happened to one message.
#[derive(Debug, Clone, Serialize)]
pub struct MessageOutcome {
    pub source: String,
    /// What classification found (flattened into the JSON line).
    #[serde(flatten)]
    pub findings: Findings,
    pub results: Vec<ItemOutcome>,
    /// A policy asked to quarantine the message.
    pub quarantine: bool,
    /// Set when the message could not be handled and must be retried.
    pub error: Option<String>,
    /// The store or the state could not be read or written: the pass stops
    /// here, and this message and every later one are left for the next.
    #[serde(skip)]
    pub stop: bool,
    pub dry_run: bool,
}

/// What happened for one UID of one iTIP object.
#[derive(Debug, Clone, Serialize)]
pub struct ItemOutcome {
    pub method: String,
    pub uid: String,
    pub summary: Option<String>,
    pub role: Role,
    pub effect: Effect,
    pub reason: String,
    /// Who the message speaks for, and how that is proven; `null` when the
    /// sender is not shown to be the calendar user entitled to send it.
    pub originator: Option<Originator>,
    /// The policy that matched (`default` when none did), and why.
    pub policy: String,
    pub action: Action,
    pub policy_reason: String,
    /// The answer: queued, or why none was sent.
    pub reply: Option<String>,
    /// Where the object was stored, if it was: a location string (a file
    /// path for the vdir). In JSON it keeps the name `file`.
    #[serde(rename = "file")]
    pub location: Option<String>,
}

impl std::ops::Deref for MessageOutcome {
    type Target = Findings;
    fn deref(&self) -> &Findings {
        &self.findings
    }
}

impl MessageOutcome {
    /// Whether the message must be tried again later.
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// An outcome that only reports the classification.
    pub fn new(c: &Classified, source: &str, dry_run: bool) -> MessageOutcome {
        MessageOutcome {
            source: source.to_string(),
            findings: c.report.findings.clone(),
            results: Vec::new(),
            quarantine: false,
            error: None,
            stop: false,
            dry_run,
        }
    }

    /// A message that could not even be read.
    pub fn failed_to_read(source: &str, error: String, dry_run: bool) -> MessageOutcome {
        MessageOutcome {
            source: source.to_string(),
            findings: Findings::default(),
            results: Vec::new(),
            quarantine: false,
            error: Some(error),
            stop: false,
            dry_run,
        }
    }
}

impl fmt::Display for MessageOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = if self.dry_run { "[dry-run] " } else { "" };
        if let Some(e) = &self.error {
            return write!(f, "{prefix}{}: error: {e}", self.source);
        }
        if !self.imip {
            write!(f, "{prefix}{}: not an iTIP message", self.source)?;
            if !self.problems.is_empty() {
                write!(f, " ({})", self.problems.join("; "))?;
            }
            return Ok(());
        }
        if self.results.is_empty() {
            return write!(
                f,
                "{prefix}{}: nothing to do ({})",
                self.source,
                self.problems.join("; ")
            );
        }
        for (i, r) in self.results.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{prefix}{}: {} {}{}: {} as {} — {} [policy {}: {}, because {}]",
                self.source,
                r.method,
                r.uid,
                r.summary
                    .as_ref()
                    .map(|s| format!(" \"{s}\""))
                    .unwrap_or_default(),
                r.effect.as_str(),
                match r.role {
                    Role::Attendee => "attendee",
                    Role::Organizer => "organizer",
                },
                r.reason,
                r.policy,
                r.action.as_str(),
                r.policy_reason
            )?;
            if let Some(o) = &r.originator {
                if let Some(by) = o.authenticated_by() {
                    write!(f, "; authenticated by {by}")?;
                } else if let Some(why) = &o.unproven {
                    write!(f, "; not authenticated: {why}")?;
                }
            }
            if let Some(reply) = &r.reply {
                write!(f, "; reply {reply}")?;
            }
        }
        Ok(())
    }
}
