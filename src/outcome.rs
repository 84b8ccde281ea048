//! What happened to a message, as the processing reports it and the
//! sources and the driver read it: per message ([`MessageOutcome`]) and per
//! UID of each iTIP object ([`ItemOutcome`]), with the answer it got
//! ([`ReplyOutcome`]), printed as a line for people or as JSON (the
//! `process`/`once`/`run --json` lines, a contract documented in
//! `docs/json.md` and versioned by [`SCHEMA`]). Also where a message comes
//! from ([`Origin`]).

use std::fmt;

use serde::Serialize;

use crate::classify::{Classified, Findings};
use crate::engine::{Effect, Role};
use crate::originator::Originator;
use crate::policy::Action;
use crate::reply::Outgoing;

/// The version of every JSON line imipd prints (`"schema": 1`): a field is
/// only ever added within one version; a change of meaning or a removal
/// gives a new one.
pub const SCHEMA: u32 = 1;

/// Serialize [`SCHEMA`] into a line.
pub fn schema<S: serde::Serializer>(_: &(), s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u32(SCHEMA)
}

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
    /// Always [`SCHEMA`].
    #[serde(serialize_with = "schema")]
    pub schema: (),
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
    /// When the event (its master, or first component) starts and ends:
    /// RFC 3339 with the offset of its zone, a date for all-day events.
    pub start: Option<String>,
    pub end: Option<String>,
    /// LOCATION (text the sender wrote). In JSON `location`; the store's
    /// location is `file`.
    #[serde(rename = "location")]
    pub place: Option<String>,
    /// The ORGANIZER's address, bare.
    pub organizer: Option<String>,
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
    /// The answer: queued, or why none was sent; `null` when the action
    /// does not answer.
    pub reply: Option<ReplyOutcome>,
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
            schema: (),
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
            schema: (),
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
                write!(f, "; reply {}", reply.text)?;
            }
        }
        Ok(())
    }
}

/// What became of the answer to one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplyStatus {
    /// Written to the outbox (sent when the outbox is flushed).
    Queued,
    /// A dry run: it would have been queued.
    WouldQueue,
    /// This answer to this version was queued before: nothing new.
    AlreadyAnswered,
    /// A cap (`max_replies_per_hour`, `max_answers_per_hour`) held it back;
    /// it can be answered later.
    Held,
    /// A rule forbids it, or it cannot be built (`reason` says which).
    NotSent,
}

impl ReplyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyStatus::Queued => "queued",
            ReplyStatus::WouldQueue => "would-queue",
            ReplyStatus::AlreadyAnswered => "already-answered",
            ReplyStatus::Held => "held",
            ReplyStatus::NotSent => "not-sent",
        }
    }
}

/// The answer to one item, as an object: whom it goes to, what it says,
/// and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplyOutcome {
    pub status: ReplyStatus,
    /// REPLY, DECLINECOUNTER, REQUEST (the answer to a REFRESH) or COUNTER.
    pub method: Option<String>,
    /// The answer given (ACCEPTED, DECLINED, TENTATIVE) for a REPLY.
    pub partstat: Option<String>,
    /// The recipients, bare addresses.
    pub to: Vec<String>,
    /// The outbox key (also in the Message-ID: `<imipd.KEY@domain>`).
    pub key: Option<String>,
    /// Why it was not sent (status `held`, `not-sent`, `already-answered`).
    pub reason: Option<String>,
    /// The whole of it in words, as the outcome line says it.
    pub text: String,
}

impl ReplyOutcome {
    /// No answer: a rule forbids it, or nothing asks for one.
    pub fn not_sent(reason: impl Into<String>) -> ReplyOutcome {
        let reason = reason.into();
        ReplyOutcome {
            status: ReplyStatus::NotSent,
            method: None,
            partstat: None,
            to: Vec::new(),
            key: None,
            text: format!("not sent: {reason}"),
            reason: Some(reason),
        }
    }

    /// Held back by a cap.
    pub fn held(reason: impl Into<String>, partstat: Option<&str>) -> ReplyOutcome {
        let reason = reason.into();
        ReplyOutcome {
            status: ReplyStatus::Held,
            method: None,
            partstat: partstat.map(str::to_string),
            to: Vec::new(),
            key: None,
            text: format!("not sent, held back by a cap: {reason}"),
            reason: Some(reason),
        }
    }

    /// Answered before.
    pub fn already(o: &Outgoing, partstat: Option<&str>) -> ReplyOutcome {
        ReplyOutcome {
            status: ReplyStatus::AlreadyAnswered,
            method: Some(o.method.clone()),
            partstat: partstat.map(str::to_string),
            to: o.to.clone(),
            key: Some(o.key.clone()),
            reason: Some("this version was already answered".into()),
            text: "not sent: this version was already answered".into(),
        }
    }

    /// Queued (or, in a dry run, would be).
    pub fn queued(o: &Outgoing, partstat: Option<&str>, dry_run: bool) -> ReplyOutcome {
        let (status, verb) = if dry_run {
            (ReplyStatus::WouldQueue, "would be queued")
        } else {
            (ReplyStatus::Queued, "queued")
        };
        ReplyOutcome {
            status,
            method: Some(o.method.clone()),
            partstat: partstat.map(str::to_string),
            to: o.to.clone(),
            key: Some(o.key.clone()),
            reason: None,
            text: format!("{verb} to {}: {}", o.to.join(", "), o.summary),
        }
    }

    /// Whether it is (or would be) on its way.
    pub fn is_queued(&self) -> bool {
        matches!(self.status, ReplyStatus::Queued | ReplyStatus::WouldQueue)
    }
}

/// A request refused as asked (an unknown UID, an event I am not invited
/// to or organize, one cancelled or over): exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);
