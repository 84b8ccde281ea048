//! What policies match on, for one UID of one iTIP object: the message's own
//! data (read by the matchers themselves from the components, so a new
//! matcher needs no new field here), and the few costly facts that are
//! gathered outside, and only when a policy asks for them ([`Needs`]).

use std::time::Duration;

use calcard::icalendar::ICalendarProperty as P;
use chrono::{DateTime, Utc};

use crate::ical::Node;
use crate::itip::Method;
use crate::originator::Originator;

/// The costly facts some policy needs gathered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// Overlap with busy time in the store.
    pub conflict: bool,
    /// The next occurrence that has not ended (recurrences expanded).
    pub next: bool,
    /// Whether the organizer is in the address book.
    pub known_sender: bool,
}

impl Needs {
    pub fn any(self) -> bool {
        self.conflict || self.next || self.known_sender
    }

    pub fn or(self, o: Needs) -> Needs {
        Needs {
            conflict: self.conflict || o.conflict,
            next: self.next || o.next,
            known_sender: self.known_sender || o.known_sender,
        }
    }
}

/// What is known about one iTIP message (one UID of one object).
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub method: Method,
    /// Its components (master and instances) as the message carries them.
    pub comps: &'a [Node],
    /// The mail's From address, bare.
    pub sender: Option<&'a str>,
    /// Who the message speaks for, when the sender is entitled.
    pub originator: Option<&'a Originator>,
    /// The calendar data breaks no rule that makes acting on it unsafe.
    pub valid: bool,
    pub account: Option<&'a str>,
    pub folder: Option<&'a str>,
    pub now: DateTime<Utc>,
    /// Gathered when asked (`None`: unknown, or not gathered).
    pub known_sender: Option<bool>,
    pub conflict: Option<bool>,
    /// The next occurrence that has not ended (start, end).
    pub next: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

impl<'a> Facts<'a> {
    /// Facts with nothing costly gathered yet.
    pub fn new(method: Method, comps: &'a [Node], now: DateTime<Utc>) -> Facts<'a> {
        Facts {
            method,
            comps,
            sender: None,
            originator: None,
            valid: true,
            account: None,
            folder: None,
            now,
            known_sender: None,
            conflict: None,
            next: None,
        }
    }

    /// The master (or the first component).
    pub fn master(&self) -> Option<&'a Node> {
        self.comps
            .iter()
            .find(|c| c.prop(&P::RecurrenceId).is_none())
            .or(self.comps.first())
    }

    /// VEVENT, VTODO, ...
    pub fn component(&self) -> Option<String> {
        self.comps
            .first()
            .map(|c| c.kind.as_str().to_ascii_uppercase())
    }

    /// The ORGANIZER, canonical (`mailto:` lower-case).
    pub fn organizer(&self) -> Option<String> {
        self.comps.iter().find_map(Node::organizer)
    }

    pub fn recurring(&self) -> bool {
        self.comps
            .iter()
            .any(|c| c.prop(&P::Rrule).is_some() || c.prop(&P::Rdate).is_some())
    }

    /// Proven by more than a header anyone can write.
    pub fn authenticated(&self) -> bool {
        self.originator.is_some_and(|o| o.proof.is_proven())
    }

    /// How long the event lasts (the next occurrence's length when known,
    /// else the master's).
    pub fn duration(&self) -> Option<Duration> {
        if let Some((s, e)) = self.next {
            return (e - s).to_std().ok();
        }
        self.master().and_then(crate::time::duration)
    }
}
