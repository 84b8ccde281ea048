//! The iTIP engine: given what the store holds for one UID and an incoming
//! iTIP message about that UID, decide what the calendar becomes (RFC 5546).
//! Pure: no I/O; [`apply`] returns a [`Decision`] that the caller executes.
//!
//! The rules that matter most:
//! - identity is UID plus RECURRENCE-ID, and an instance is a point in time:
//!   `20270119T090000Z`, `TZID=Europe/Berlin:20270119T100000` and a Windows
//!   zone name for the same moment are one instance (RFC 5545 §3.8.4.4);
//!   DATE instances match DATE instances;
//! - higher SEQUENCE wins, equal SEQUENCE then later DTSTAMP; older messages
//!   change nothing (§2.1.5); an update that moves the event in time is a
//!   new question to me even when its SEQUENCE did not rise (§2.1.4);
//! - a REQUEST with the master replaces the whole object; instance-only
//!   REQUESTs and CANCELs touch only their instances; CANCEL of an instance
//!   without an override adds an EXDATE; RANGE=THISANDFUTURE truncates;
//! - only the organizer may change or cancel an event: a SENT-BY counts only
//!   when the stored event already names it or the configuration trusts it;
//!   a changed ORGANIZER is refused; mail that merely claims to come from my
//!   own address changes nothing already stored; a new invitation from
//!   someone else (forwarded, relayed) is filed, marked and never answered;
//! - a REPLY changes only the attendee who sent it, per component, who must
//!   be in the event (or be the delegate a delegator named), and only if
//!   newer than that attendee's last answer;
//! - with `[trust] require = "authenticated"`, only a proven originator
//!   (signature, DKIM/DMARC, trusted relay) changes a stored event; an
//!   unproven new invitation is filed, marked and never answered;
//! - the user's own data (VALARM, TRANSP, CLASS, CATEGORIES, X- properties)
//!   survives updates.
//!
//! [`apply`] sends each message to the side that speaks: `organizer.rs`
//! holds what a message from the organizer (PUBLISH, REQUEST, ADD, CANCEL,
//! DECLINECOUNTER) does to my copy, `attendee.rs` what a message from an
//! attendee (REPLY, COUNTER, REFRESH) does to an event I organize. This
//! file keeps the types, how instances are told apart ([`Instances`]), the
//! versions, and the helpers both sides use.

use calcard::common::timezone::Tz;
use calcard::icalendar::{
    ICalendarComponentType as Ct, ICalendarEntry, ICalendarParameterName as Pn,
    ICalendarProperty as P, ICalendarValue,
};
use serde::Serialize;

use crate::address;
use crate::ical::{self, Node};
use crate::identity::Identity;
use crate::itip::Method;
use crate::originator::Originator;
use crate::time::{self, Form, Instant, Zones};

mod attendee;
mod organizer;

/// Which side of the event the user is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Attendee,
    Organizer,
}

/// What happened to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// A new calendar object was filed.
    Created,
    /// An existing object was updated.
    Updated,
    /// The event or some instances were cancelled.
    Cancelled,
    /// An attendee's answer was recorded in an event I organize.
    PartstatUpdated,
    /// Kept until what it refers to arrives (a CANCEL for an unknown
    /// event, a delegate's REPLY before its delegator's).
    Held,
    /// Kept for a person to act on (COUNTER, REFRESH, DECLINECOUNTER).
    Recorded,
    /// Already applied: nothing to do.
    Unchanged,
    /// Older than what the store holds: nothing changed.
    Stale,
    /// Not allowed (wrong sender, organizer change, party crasher).
    Refused,
    /// Not applicable (e.g. a REPLY for an unknown event).
    Ignored,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Created => "created",
            Effect::Updated => "updated",
            Effect::Cancelled => "cancelled",
            Effect::PartstatUpdated => "partstat-updated",
            Effect::Held => "held",
            Effect::Recorded => "recorded",
            Effect::Unchanged => "unchanged",
            Effect::Stale => "stale",
            Effect::Refused => "refused",
            Effect::Ignored => "ignored",
        }
    }

    /// Whether the store changes.
    pub fn writes(self) -> bool {
        matches!(
            self,
            Effect::Created | Effect::Updated | Effect::Cancelled | Effect::PartstatUpdated
        )
    }
}

/// The root property that marks an object filed from a sender who was not
/// shown to be its organizer: it is never answered, and the organizer's own
/// message replaces it whatever its version.
pub const UNVERIFIED: &str = "X-IMIPD-UNVERIFIED";

/// Who may speak for others (SENT-BY) without the stored event naming them.
#[derive(Debug, Clone, Copy)]
pub struct Trust<'a> {
    /// Globs of SENT-BY addresses the user trusts (`[identity] trusted_sent_by`).
    pub sent_by: &'a [String],
    /// `[trust] require = "authenticated"`: a change to a stored event needs
    /// a proven originator; an unproven new invitation is filed as
    /// NEEDS-ACTION, marked, and never answered.
    pub require_proof: bool,
}

/// An incoming iTIP message, restricted to the components of one UID.
pub struct Input<'a> {
    pub method: Method,
    pub uid: &'a str,
    /// The scheduling components with this UID (with their VALARMs).
    pub comps: Vec<Node>,
    /// The time zones the message defines.
    pub zones: &'a Zones,
    /// Who the mail shows is speaking (the ORGANIZER or the replying
    /// ATTENDEE), or why nobody entitled is.
    pub originator: &'a Result<Originator, String>,
    /// The mail's From (and Sender) addresses, bare: who forwarded a
    /// delegated request.
    pub sender_mail: &'a [String],
    pub identity: &'a Identity,
    pub trust: Trust<'a>,
}

/// One component of an invitation to me.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// `None` for the master (the whole series), else the instance.
    pub rid: Option<Instant>,
    pub sequence: i64,
}

/// An invitation addressed to me that a policy may answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    /// My calendar address as the event names it.
    pub me: String,
    /// The components that ask me, master first; an answer covers them all.
    pub asked: Vec<Asked>,
}

impl Invitation {
    pub fn rids(&self) -> Vec<Option<Instant>> {
        self.asked.iter().map(|a| a.rid).collect()
    }
}

/// The engine's verdict for one UID.
#[derive(Debug, Clone)]
pub struct Decision {
    pub effect: Effect,
    pub role: Role,
    pub reason: String,
    /// The whole new calendar object (root VCALENDAR) to store.
    pub object: Option<Node>,
    /// Set when the message is an invitation to me that is new or changed
    /// (not stale), or a replay of one: what an answer would refer to.
    pub invitation: Option<Invitation>,
    /// Why an invitation to me must not be answered, whatever the policy
    /// says (the sender is not proven to be the organizer, ...).
    pub no_answer: Option<String>,
}

impl Decision {
    fn new(effect: Effect, role: Role, reason: impl Into<String>) -> Decision {
        Decision {
            effect,
            role,
            reason: reason.into(),
            object: None,
            invitation: None,
            no_answer: None,
        }
    }
}

/// SEQUENCE and DTSTAMP: the version of a component (§2.1.5).
pub fn version(c: &Node) -> (i64, String) {
    (c.sequence(), c.dtstamp())
}

/// The newest version among components.
pub fn newest(comps: &[Node]) -> (i64, String) {
    comps.iter().map(version).max().unwrap_or_default()
}

fn scheduling(root: &Node) -> impl Iterator<Item = &Node> {
    root.children.iter().filter(|c| c.is_scheduling())
}

/// How instances of one stored object are told apart: its time zones and
/// the form of its master's DTSTART (the zone floating times are read in,
/// and whether it is an all-day series).
#[derive(Debug, Clone)]
pub struct Instances {
    zones: Zones,
    floating: Tz,
    all_day: bool,
    /// The form values imipd writes itself take (the master's DTSTART).
    form: Option<Form>,
}

impl Instances {
    /// For a stored object (or the incoming components of a new one), with
    /// the message's VTIMEZONEs as well.
    pub fn of(root: Option<&Node>, incoming: &[Node], extra: &Zones) -> Instances {
        let mut zones = extra.clone();
        if let Some(r) = root {
            zones.add(r);
        }
        let master = root
            .and_then(|r| scheduling(r).find(|c| c.prop(&P::RecurrenceId).is_none()))
            .or_else(|| incoming.iter().find(|c| c.prop(&P::RecurrenceId).is_none()));
        let start = master.and_then(|m| m.prop(&P::Dtstart));
        let form = start.map(|s| Form::of(s, &zones));
        Instances {
            floating: form.as_ref().map(Form::zone).unwrap_or(Tz::UTC),
            all_day: matches!(form, Some(Form::Date)),
            form,
            zones,
        }
    }

    /// The instance a RECURRENCE-ID (or EXDATE/RDATE value) names.
    pub fn instant(&self, e: &ICalendarEntry) -> Option<Instant> {
        self.normalize(e, time::entry_instant(e, &self.zones, self.floating)?)
    }

    /// Every instant of a multi-valued date property.
    pub fn instants(&self, e: &ICalendarEntry) -> Vec<Instant> {
        time::entry_instants(e, &self.zones, self.floating)
            .into_iter()
            .filter_map(|i| self.normalize(e, i))
            .collect()
    }

    /// In an all-day series, a DATE-TIME at midnight names that day.
    fn normalize(&self, e: &ICalendarEntry, i: Instant) -> Option<Instant> {
        match i {
            Instant::At(t) if self.all_day => {
                let zone = Form::of(e, &self.zones).zone();
                let utc = chrono::DateTime::from_timestamp(t, 0)?;
                let local = if zone.is_floating() {
                    utc.naive_utc()
                } else {
                    utc.with_timezone(&zone).naive_local()
                };
                Some(Instant::Date(local.date()))
            }
            other => Some(other),
        }
    }

    /// The instance of a component (`None` for a master).
    pub fn rid(&self, c: &Node) -> Option<Instant> {
        c.prop(&P::RecurrenceId).and_then(|e| self.instant(e))
    }

    /// A date property for an instant, written as the master's DTSTART is.
    fn entry(&self, name: P, at: Instant) -> Option<ICalendarEntry> {
        self.form.as_ref().unwrap_or(&Form::Utc).entry(name, at)
    }

    pub fn find<'a>(&self, root: &'a Node, rid: Option<Instant>) -> Option<&'a Node> {
        scheduling(root).find(|c| self.matches(c, rid))
    }

    fn find_mut<'a>(&self, root: &'a mut Node, rid: Option<Instant>) -> Option<&'a mut Node> {
        root.children
            .iter_mut()
            .find(|c| c.is_scheduling() && self.matches(c, rid))
    }

    fn matches(&self, c: &Node, rid: Option<Instant>) -> bool {
        match (c.prop(&P::RecurrenceId), rid) {
            (None, None) => true,
            (Some(e), Some(r)) => self.instant(e) == Some(r),
            _ => false,
        }
    }

    fn has_exdate(&self, master: &Node, at: Instant) -> bool {
        master
            .entries
            .iter()
            .filter(|e| e.name == P::Exdate)
            .any(|e| self.instants(e).contains(&at))
    }

    fn remove_exdate(&self, master: &mut Node, at: Instant) {
        let mut out = Vec::with_capacity(master.entries.len());
        for mut e in std::mem::take(&mut master.entries) {
            if e.name == P::Exdate {
                let keep: Vec<ICalendarValue> = e
                    .values
                    .iter()
                    .filter(|v| {
                        time::value_instant(&e, v, &self.zones, self.floating)
                            .and_then(|i| self.normalize(&e, i))
                            != Some(at)
                    })
                    .cloned()
                    .collect();
                if keep.is_empty() {
                    continue;
                }
                e.values = keep;
            }
            out.push(e);
        }
        master.entries = out;
    }
}

/// The organizer of a stored object (master first).
pub fn stored_organizer(root: &Node) -> Option<String> {
    scheduling(root)
        .find(|c| c.prop(&P::RecurrenceId).is_none())
        .and_then(Node::organizer)
        .or_else(|| scheduling(root).find_map(Node::organizer))
}

fn attendee_addresses(c: &Node) -> Vec<String> {
    c.entries
        .iter()
        .filter(|e| e.name == P::Attendee)
        .filter_map(ical::cal_address)
        .collect()
}

fn attendee<'a>(c: &'a Node, who: &str) -> Option<&'a ICalendarEntry> {
    c.entries
        .iter()
        .find(|e| e.name == P::Attendee && ical::cal_address(e).as_deref() == Some(who))
}

fn attendee_mut<'a>(c: &'a mut Node, who: &str) -> Option<&'a mut ICalendarEntry> {
    c.entries
        .iter_mut()
        .find(|e| e.name == P::Attendee && ical::cal_address(e).as_deref() == Some(who))
}

fn my_address(c: &Node, identity: &Identity) -> Option<String> {
    attendee_addresses(c)
        .into_iter()
        .find(|a| identity.is_me(a))
}

/// The addresses a parameter (DELEGATED-TO, DELEGATED-FROM) names, canonical.
fn param_addresses(e: &ICalendarEntry, name: &Pn) -> Vec<String> {
    e.params
        .iter()
        .filter(|p| &p.name == name)
        .filter_map(|p| p.value.as_text())
        .flat_map(|v| v.split(','))
        .map(|v| address::canonical(v.trim().trim_matches('"')))
        .filter(|v| !v.is_empty())
        .collect()
}

fn is_cancelled(c: &Node) -> bool {
    c.text(&P::Status)
        .is_some_and(|s| s.eq_ignore_ascii_case("CANCELLED"))
}

/// Whether a stored object was filed from a sender not shown to be its organizer.
pub fn is_unverified(root: &Node) -> bool {
    root.prop(&P::Other(UNVERIFIED.into())).is_some()
}

/// Why an originator is not proven, in words.
fn unproven_why(o: &Originator) -> String {
    o.unproven
        .clone()
        .unwrap_or_else(|| "only the From header says who sent it".into())
}

fn bare(a: &str) -> &str {
    a.trim_start_matches("mailto:")
}

/// Whether a SENT-BY may act for the calendar user it names: the stored
/// event already names that SENT-BY for that user, or the user trusts it.
fn sent_by_allowed(stored: Option<&Node>, who: &Originator, trust: Trust<'_>) -> bool {
    let Some(sent_by) = &who.sent_by else {
        return true;
    };
    if trust
        .sent_by
        .iter()
        .any(|g| address::glob_matches(g, sent_by))
    {
        return true;
    }
    stored.into_iter().flat_map(scheduling).any(|c| {
        c.entries
            .iter()
            .filter(|e| e.name == P::Organizer || e.name == P::Attendee)
            .any(|e| {
                ical::cal_address(e).as_deref() == Some(who.address.as_str())
                    && ical::sent_by(e).as_deref() == Some(sent_by.as_ref())
            })
    })
}

/// Decide what an incoming message does to the stored object for its UID.
pub fn apply(stored: Option<&Node>, input: &Input<'_>) -> Decision {
    if input.comps.is_empty() {
        return Decision::new(
            Effect::Ignored,
            Role::Attendee,
            "no component with this UID",
        );
    }
    match input.method {
        Method::Reply | Method::Counter | Method::Refresh => attendee::from_attendee(stored, input),
        Method::Request
        | Method::Publish
        | Method::Add
        | Method::Cancel
        | Method::DeclineCounter => organizer::from_organizer(stored, input),
    }
}

/// The properties that say when an event happens: a change to any of them
/// reschedules it (RFC 5546 §3.2.2.1), and my earlier answer no longer holds.
const TIMING: [P; 7] = [
    P::Dtstart,
    P::Dtend,
    P::Due,
    P::Duration,
    P::Rrule,
    P::Rdate,
    P::Exdate,
];

/// A fingerprint of when a component happens, comparing instants rather
/// than how they are written.
pub fn timing(c: &Node, inst: &Instances) -> String {
    let mut parts = Vec::new();
    for p in TIMING {
        let mut vals: Vec<String> = c
            .entries
            .iter()
            .filter(|e| e.name == p)
            .flat_map(|e| match p {
                P::Dtstart | P::Dtend | P::Due | P::Rdate | P::Exdate => {
                    let v = inst.instants(e);
                    if v.is_empty() {
                        vec![ical::entry_text(e).unwrap_or_default()]
                    } else {
                        v.iter().map(Instant::canonical).collect()
                    }
                }
                _ => vec![ical::to_string(
                    &Node {
                        kind: Ct::VEvent,
                        entries: vec![e.clone()],
                        children: Vec::new(),
                    }
                    .into_ical(),
                )],
            })
            .collect();
        vals.sort();
        parts.push(format!("{}={}", p.as_str(), vals.join(",")));
    }
    parts.join(";")
}

/// Parameters imipd keeps for itself, which never travel.
pub fn strip_private(e: &mut ICalendarEntry) {
    e.params.retain(
        |p| !matches!(&p.name, Pn::Other(n) if n.to_ascii_uppercase().starts_with("X-IMIPD")),
    );
}

/// An override for one instance that has none yet (a REPLY or CANCEL for
/// it): a copy of the master without its recurrence, starting at the
/// instance's original start written as the master's DTSTART is, and
/// lasting as long as the master (RFC 5545 §3.8.5.3).
pub fn derive_override(root: &Node, rid: Option<Instant>, inst: &Instances) -> Option<Node> {
    let rid = rid?;
    let master = inst.find(root, None)?;
    let mut over = master.clone();
    over.children.retain(|c| c.kind != Ct::VAlarm);
    // The instance's answers start from the series' answers, but each
    // attendee may still answer for the instance itself.
    for e in over.entries.iter_mut().filter(|e| e.name == P::Attendee) {
        strip_private(e);
    }
    for p in [P::Rrule, P::Rdate, P::Exdate, P::Exrule] {
        over.remove(&p);
    }
    over.set(inst.entry(P::RecurrenceId, rid)?);
    let start_entry = master.prop(&P::Dtstart)?;
    let zone = inst.floating;
    let old_start = inst.instant(start_entry)?;
    let start = inst.entry(P::Dtstart, rid)?;
    if let Some(end_entry) = master.prop(&P::Dtend).or_else(|| master.prop(&P::Due)) {
        let end_form = Form::of(end_entry, &inst.zones);
        let old_end = time::entry_instant(end_entry, &inst.zones, inst.floating)?;
        let end = match (old_start, old_end, rid) {
            (Instant::Date(s), Instant::Date(e), Instant::Date(r)) => {
                Instant::Date(r.checked_add_signed(e - s)?)
            }
            _ => {
                let len = old_end.timestamp(zone)? - old_start.timestamp(zone)?;
                Instant::At(rid.timestamp(zone)?.checked_add(len)?)
            }
        };
        over.set(end_form.entry(end_entry.name.clone(), end)?);
    }
    over.set(start);
    Some(over)
}

/// Split an incoming iTIP object into per-UID component lists (with their
/// sub-components), in order of first appearance.
pub fn group_by_uid(root: &Node) -> Vec<(String, Vec<Node>)> {
    let mut out: Vec<(String, Vec<Node>)> = Vec::new();
    for c in root.children.iter().filter(|c| c.is_scheduling()) {
        let Some(uid) = c.uid() else { continue };
        match out.iter_mut().find(|(u, _)| *u == uid) {
            Some((_, v)) => v.push(c.clone()),
            None => out.push((uid, vec![c.clone()])),
        }
    }
    out
}

// What the tests (`use super::*`) need beyond what this file uses.
#[cfg(test)]
use {crate::originator::Via, calcard::icalendar::ICalendarParameterValue};

#[cfg(test)]
mod tests;
