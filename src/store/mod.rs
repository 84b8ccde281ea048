//! The calendar store seam: what the iTIP engine, the policies and the
//! commands need from wherever the user's calendar lives — get an object by
//! UID, put one (atomically), delete one, list the UIDs, and busy time in a
//! window (the `conflict` matcher asks the store, so a server can answer
//! with a time-range query). Objects are named by a location string (a file
//! path for the vdir, a URL for CalDAV). [`vdir::Vdir`] and
//! [`caldav::CalDav`] implement it; [`open`] opens the one a person's
//! configuration names. A store that can tell that someone else changed an
//! object between imipd's read and its write refuses the write with
//! [`Conflict`]; the processor then reads again and re-applies the message.

pub mod caldav;
pub mod vdir;

use calcard::icalendar::ICalendar;

use crate::ical::Node;
use crate::identity::Identity;

pub use vdir::{render, scan_uids, Vdir};

use crate::config::StoreConfig;

/// A write refused because the object changed since imipd read it (a
/// person edited it in their calendar app; CalDAV's 412 Precondition
/// Failed). Nothing was written: read the object again, apply the message
/// to what is there now, and write again.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the event {uid}: it was changed by someone else since imipd read it")]
pub struct Conflict {
    pub uid: String,
}

/// Whether an error is (or was caused by) a [`Conflict`].
pub fn is_conflict(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Conflict>())
}

/// Open the store a configuration names; `read_only` for a dry run
/// (nothing is created or written).
pub fn open(cfg: &StoreConfig, read_only: bool) -> anyhow::Result<Box<dyn CalendarStore>> {
    Ok(match cfg {
        StoreConfig::Vdir { path } if read_only => Box::new(Vdir::open_read_only(path)?),
        StoreConfig::Vdir { path } => Box::new(Vdir::open(path)?),
        StoreConfig::CalDav(c) => Box::new(caldav::CalDav::open(c, read_only)),
    })
}

/// Where the user's calendar lives.
pub trait CalendarStore: Send {
    /// The object stored for a UID: a VCALENDAR with that UID's scheduling
    /// components (master and overrides) and its time zones; `None` when no
    /// object holds the UID.
    fn get(&self, uid: &str) -> anyhow::Result<Option<Node>>;

    /// Store an object for a UID, replacing what was there atomically (a
    /// reader sees the old or the new one, never half). `tz_source` offers
    /// VTIMEZONEs to copy (the incoming message's). Returns its location.
    /// What is replaced is what the last [`CalendarStore::get`] of the UID
    /// saw: a store that can tell it changed since (CalDAV's ETag) refuses
    /// with [`Conflict`].
    fn put(
        &mut self,
        uid: &str,
        object: &Node,
        tz_source: Option<&ICalendar>,
    ) -> anyhow::Result<String>;

    /// Remove the object of a UID; `false` when there was none.
    fn delete(&mut self, uid: &str) -> anyhow::Result<bool>;

    /// Where the object of a UID is, or would be put.
    fn location(&self, uid: &str) -> String;

    /// Every UID the store holds.
    fn uids(&self) -> anyhow::Result<Vec<String>>;

    /// A busy span of another event that overlaps one of the query's
    /// spans. Busy: not transparent, not cancelled, not declined by me.
    /// Looked at from about the query's `now` to a year ahead.
    fn busy_overlap(&mut self, q: &BusyQuery<'_>) -> anyhow::Result<Option<BusySpan>>;

    /// Every other event with busy time that overlaps one of the query's
    /// spans, each once with its first such span, at most `limit` of them.
    fn busy_overlaps(&mut self, q: &BusyQuery<'_>, limit: usize) -> anyhow::Result<Vec<BusySpan>>;
}

/// What [`CalendarStore::busy_overlap`] is asked.
#[derive(Debug, Clone, Copy)]
pub struct BusyQuery<'a> {
    /// The spans to check (start, end; Unix seconds).
    pub spans: &'a [(i64, i64)],
    /// The event asking, whose own time is not busy for it.
    pub exclude_uid: &'a str,
    /// Whose busy time (what I declined is not busy).
    pub identity: &'a Identity,
    pub now: i64,
}

/// A busy span found: the UID of its event, its start and end.
pub type BusySpan = (String, i64, i64);
