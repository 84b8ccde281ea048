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

use calcard::common::timezone::Tz;
use calcard::icalendar::{
    ICalendarComponentType as Ct, ICalendarEntry, ICalendarParameter, ICalendarParameterName as Pn,
    ICalendarParameterValue, ICalendarProperty as P, ICalendarStatus, ICalendarValue,
};
use serde::Serialize;

use crate::address;
use crate::ical::{self, Node};
use crate::identity::Identity;
use crate::itip::Method;
use crate::originator::{Originator, Via};
use crate::time::{self, Form, Instant, Zones};

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

fn mark_unverified(root: &mut Node, why: &str) {
    root.set(ical::text_entry(P::Other(UNVERIFIED.into()), why));
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
        Method::Reply | Method::Counter | Method::Refresh => from_attendee(stored, input),
        Method::Request
        | Method::Publish
        | Method::Add
        | Method::Cancel
        | Method::DeclineCounter => from_organizer(stored, input),
    }
}

/// REPLY, COUNTER, REFRESH: an attendee speaks to the organizer.
fn from_attendee(stored: Option<&Node>, input: &Input<'_>) -> Decision {
    let method = input.method;
    let Some(stored) = stored else {
        return Decision::new(
            Effect::Ignored,
            Role::Organizer,
            format!("no event with UID {} is in the store", input.uid),
        );
    };
    let me_organizer = stored_organizer(stored).is_some_and(|o| input.identity.is_me(&o));
    let who = match input.originator {
        Ok(o) => o,
        Err(why) => {
            let role = if me_organizer {
                Role::Organizer
            } else {
                Role::Attendee
            };
            return Decision::new(
                Effect::Refused,
                role,
                format!("the sender is not the attendee this {method} speaks for: {why}"),
            );
        }
    };
    if !me_organizer {
        // As delegator: the delegate's copy of its REPLY to me (RFC 5546 §4.2.6).
        if method == Method::Reply {
            if let Some(d) = delegate_reply_to_delegator(stored, input, who) {
                return d;
            }
        }
        return Decision::new(
            Effect::Ignored,
            Role::Attendee,
            format!("a {method} is for the organizer, and I do not organize this event"),
        );
    }
    if who.via == Via::SentBy && !sent_by_allowed(Some(stored), who, input.trust) {
        return Decision::new(
            Effect::Refused,
            Role::Organizer,
            format!(
                "{} answers for {} (SENT-BY), but the event does not name it as acting for them and [identity] trusted_sent_by does not trust it",
                who.mail,
                bare(&who.address)
            ),
        );
    }
    if method == Method::Reply {
        if input.trust.require_proof && !who.proof.is_proven() {
            return Decision::new(
                Effect::Refused,
                Role::Organizer,
                format!(
                    "the REPLY of {} is not authenticated ({}), and [trust] require = \"authenticated\" lets only a proven originator change a stored event",
                    bare(&who.address),
                    unproven_why(who)
                ),
            );
        }
        return apply_reply(stored, input, who);
    }
    let inst = Instances::of(Some(stored), &input.comps, input.zones);
    let known = scheduling(stored).any(|c| attendee(c, &who.address).is_some());
    let _ = &inst;
    if !known {
        return Decision::new(
            Effect::Refused,
            Role::Organizer,
            format!("{} is not an attendee of this event", bare(&who.address)),
        );
    }
    Decision::new(
        Effect::Recorded,
        Role::Organizer,
        format!(
            "{method} from {} kept for a person to act on",
            bare(&who.address)
        ),
    )
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

/// PUBLISH, REQUEST, ADD, CANCEL, DECLINECOUNTER: the organizer speaks.
fn from_organizer(stored: Option<&Node>, input: &Input<'_>) -> Decision {
    let method = input.method;
    let inc_org = {
        let mut orgs: Vec<String> = input.comps.iter().filter_map(Node::organizer).collect();
        orgs.dedup();
        if orgs.len() > 1 {
            return Decision::new(
                Effect::Refused,
                Role::Attendee,
                format!(
                    "the components of this {method} name different organizers ({})",
                    orgs.iter().map(|o| bare(o)).collect::<Vec<_>>().join(", ")
                ),
            );
        }
        orgs.pop()
    };
    let stored_org = stored.and_then(stored_organizer);
    let me_organizer = inc_org
        .as_deref()
        .or(stored_org.as_deref())
        .is_some_and(|o| input.identity.is_me(o));
    let role = if me_organizer {
        Role::Organizer
    } else {
        Role::Attendee
    };
    let Some(inc_org) = inc_org else {
        return Decision::new(
            Effect::Refused,
            role,
            format!("this {method} names no ORGANIZER, so nobody can be entitled to send it"),
        );
    };
    if let Some(s) = &stored_org {
        if *s != inc_org {
            return Decision::new(
                Effect::Refused,
                role,
                format!(
                    "the organizer would change from {} to {}; RFC 5546 does not allow that in an update",
                    bare(s),
                    bare(&inc_org)
                ),
            );
        }
    }
    // Is the sender the organizer (or someone the organizer may act through)?
    let unverified_copy = stored.is_some_and(is_unverified);
    let entitled: Result<&Originator, String> = match input.originator {
        Ok(o) if o.address != inc_org => Err(format!(
            "the sender speaks for {}, not for the organizer {}",
            bare(&o.address),
            bare(&inc_org)
        )),
        Ok(o) if o.via == Via::SentBy && !sent_by_allowed(stored, o, input.trust) => Err(format!(
            "{} sends for {} (SENT-BY), but {} and [identity] trusted_sent_by does not trust it",
            o.mail,
            bare(&o.address),
            if stored.is_some() {
                "the stored event does not name it as acting for them"
            } else {
                "nothing shows it may act for them"
            }
        )),
        Ok(o) => Ok(o),
        Err(e) => Err(e.clone()),
    };
    // Mail from my own address proves nothing unless the receiving server
    // verified it: it may only teach imipd a new event I organize.
    let from_me_unproven = me_organizer
        && entitled
            .as_ref()
            .map(|o| !o.proof.is_proven())
            .unwrap_or(true);
    if me_organizer {
        if let Some(s) = stored {
            if from_me_unproven && !is_unverified(s) {
                return Decision::new(
                    Effect::Refused,
                    role,
                    format!(
                        "this {method} claims to come from my own address {}, which anyone can write; without a verified signature (DKIM/DMARC from a trusted server) it changes nothing in the store",
                        bare(&inc_org)
                    ),
                );
            }
        }
    }
    if let Err(why) = &entitled {
        {
            // Updates and cancels of a stored event come only from its organizer.
            if stored.is_some() && !unverified_copy {
                return Decision::new(
                    Effect::Refused,
                    role,
                    format!("the sender is not the organizer of this event, so its {method} changes nothing ({why})"),
                );
            }
            if stored.is_some() {
                return Decision::new(
                    Effect::Refused,
                    role,
                    format!("the event was filed from an unproven sender and this {method} is not from its organizer either ({why})"),
                );
            }
            match method {
                Method::Request | Method::Publish => {
                    // A new invitation forwarded by an attendee or relayed by
                    // a platform: filed, marked, never answered. A REQUEST a
                    // delegator forwarded to me is a proper invitation.
                    if let Some(d) = delegated_to_me(input) {
                        return d;
                    }
                    let mut d = apply_request(None, input, role);
                    if let Some(o) = d.object.as_mut() {
                        mark_unverified(o, why);
                    }
                    d.reason = format!(
                        "{} filed, but its sender is not shown to be the organizer ({why}); it will not be answered automatically",
                        method
                    );
                    d.no_answer = Some(format!("the sender is not shown to be its organizer: {why}"));
                    return d;
                }
                _ => {
                    return Decision::new(
                        Effect::Refused,
                        role,
                        format!("the sender is not the organizer of this event, so its {method} changes nothing ({why})"),
                    )
                }
            }
        }
    }
    if method == Method::DeclineCounter {
        return Decision::new(
            Effect::Recorded,
            role,
            "the organizer declined a counter proposal",
        );
    }
    if let (true, Ok(o)) = (input.trust.require_proof, &entitled) {
        if !o.proof.is_proven() {
            let why = format!(
                "its originator {} is not authenticated ({}), and [trust] require = \"authenticated\"",
                bare(&o.address),
                unproven_why(o)
            );
            if stored.is_some() {
                return Decision::new(
                    Effect::Refused,
                    role,
                    format!("this {method} changes nothing: {why} lets only a proven originator change a stored event"),
                );
            }
            if matches!(method, Method::Request | Method::Publish) {
                let mut d = apply_request(None, input, role);
                if let Some(o) = d.object.as_mut() {
                    mark_unverified(o, &why);
                }
                d.reason = format!(
                    "{method} filed as NEEDS-ACTION only: {why}; it will not be answered automatically"
                );
                d.no_answer = Some(format!("{why}, so no automatic answer is sent"));
                return d;
            }
            return Decision::new(
                Effect::Refused,
                role,
                format!("this {method} changes nothing: {why}"),
            );
        }
    }
    // The organizer's own invitation replaces a copy filed from an unproven
    // sender, whatever versions the two carry.
    let replace = unverified_copy && matches!(method, Method::Request | Method::Publish);
    let base = if replace { None } else { stored };
    let mut d = match method {
        Method::Cancel => apply_cancel(base, input),
        Method::Add => apply_add(base, input),
        _ => apply_request(base, input, role),
    };
    if replace && d.effect == Effect::Created {
        d.effect = Effect::Updated;
        d.reason =
            format!("{method} from the organizer replaces the copy filed from an unproven sender");
    }
    d.role = role;
    if let (true, Some(o)) = (from_me_unproven, d.object.as_mut()) {
        mark_unverified(
            o,
            "my own address in From, not verified by the receiving server",
        );
    }
    if role == Role::Organizer {
        d.invitation = None;
    }
    d
}

/// A new REQUEST a delegator forwarded to me (RFC 5546 §3.2.2.3): the
/// request shows the sender as an ATTENDEE delegating to me, and me as
/// delegated from the sender.
fn delegated_to_me(input: &Input<'_>) -> Option<Decision> {
    if input.method != Method::Request {
        return None;
    }
    let from = delegator_in(input)?;
    let mut d = apply_request(None, input, Role::Attendee);
    d.reason = format!(
        "REQUEST filed: {} delegated this event to me (RFC 5546 §3.2.2.3)",
        bare(&from)
    );
    Some(d)
}

/// The delegator of a forwarded request: an ATTENDEE the sender is (From),
/// with DELEGATED-TO naming me, while my ATTENDEE has DELEGATED-FROM it.
fn delegator_in(input: &Input<'_>) -> Option<String> {
    let sender_mail = input.sender_mail;
    for c in &input.comps {
        let me = my_address(c, input.identity)?;
        let my_entry = attendee(c, &me)?;
        for from in param_addresses(my_entry, &Pn::DelegatedFrom) {
            if !sender_mail.iter().any(|m| format!("mailto:{m}") == from) {
                continue;
            }
            let Some(delegator) = attendee(c, &from) else {
                continue;
            };
            if param_addresses(delegator, &Pn::DelegatedTo).contains(&me) {
                return Some(from);
            }
        }
    }
    None
}

/// As delegator: the delegate's REPLY, copied to me, updates the delegate's
/// PARTSTAT in my copy of the event.
fn delegate_reply_to_delegator(
    stored: &Node,
    input: &Input<'_>,
    who: &Originator,
) -> Option<Decision> {
    let inst = Instances::of(Some(stored), &input.comps, input.zones);
    let mut root = stored.clone();
    let mut changed = Vec::new();
    for inc in &input.comps {
        let rid = inst.rid(inc);
        let target = inst.find_mut(&mut root, rid).or(None)?;
        let me = my_address(target, input.identity)?;
        let delegated = attendee(target, &me)
            .map(|e| param_addresses(e, &Pn::DelegatedTo))
            .unwrap_or_default();
        if !delegated.contains(&who.address) {
            return None;
        }
        let partstat = attendee(inc, &who.address).map(ical::partstat)?;
        match attendee_mut(target, &who.address) {
            Some(e) => set_partstat(e, &partstat),
            None => {
                let mut e = attendee(inc, &who.address)?.clone();
                strip_private(&mut e);
                target.entries.push(e);
            }
        }
        changed.push(format!("{} {partstat}", bare(&who.address)));
    }
    if changed.is_empty() {
        return None;
    }
    Some(Decision {
        effect: Effect::PartstatUpdated,
        role: Role::Attendee,
        reason: format!("recorded the answer of my delegate: {}", changed.join(", ")),
        object: Some(root),
        invitation: None,
        no_answer: None,
    })
}

/// A REQUEST or PUBLISH.
fn apply_request(stored: Option<&Node>, input: &Input<'_>, role: Role) -> Decision {
    let inst = Instances::of(stored, &input.comps, input.zones);
    let has_master = input
        .comps
        .iter()
        .any(|c| c.prop(&P::RecurrenceId).is_none());
    let mut new_root = match stored {
        Some(s) => s.clone(),
        None => empty_root(),
    };
    new_root.remove(&P::Other(UNVERIFIED.into()));
    if has_master {
        let inc_master = input
            .comps
            .iter()
            .find(|c| c.prop(&P::RecurrenceId).is_none())
            .cloned()
            .unwrap_or_else(|| input.comps[0].clone());
        if let Some(old) = stored.and_then(|s| inst.find(s, None)) {
            let (iv, ov) = (version(&inc_master), version(old));
            if iv < ov {
                return Decision::new(
                    Effect::Stale,
                    role,
                    format!(
                        "this {} (SEQUENCE {}, DTSTAMP {}) is older than the stored event (SEQUENCE {}, DTSTAMP {})",
                        input.method, iv.0, iv.1, ov.0, ov.1
                    ),
                );
            }
            if iv == ov {
                // Already applied. The invitation is still reported: if a
                // crash came between filing it and queueing its answer, the
                // answer is queued now (the outbox key stops a second one).
                let mut d = Decision::new(
                    Effect::Unchanged,
                    role,
                    "this version is already in the store",
                );
                d.invitation = invitation(input, &inst, None);
                return d;
            }
        }
        // The whole object is replaced: the incoming master and overrides.
        let old_root = stored.cloned();
        new_root.children.retain(|c| !c.is_scheduling());
        for inc in &input.comps {
            let rid = inst.rid(inc);
            let mut comp = inc.clone();
            if let Some(old) = old_root.as_ref().and_then(|s| inst.find(s, rid)) {
                keep_local_data(old, &mut comp, input.identity, &inst);
            }
            new_root.children.push(comp);
        }
    } else {
        let mut changed = false;
        let mut stale = Vec::new();
        let mut unchanged = false;
        for inc in &input.comps {
            let rid = inst.rid(inc);
            let existing = inst
                .find(&new_root, rid)
                .or_else(|| inst.find(&new_root, None));
            if let Some(old) = existing {
                let (iv, ov) = (version(inc), version(old));
                let same_instance = inst.rid(old) == rid;
                if same_instance && iv == ov {
                    unchanged = true;
                    continue;
                }
                if iv < ov {
                    stale.push(
                        rid.map(|r| r.canonical())
                            .unwrap_or_else(|| "the master".into()),
                    );
                    continue;
                }
            }
            let mut comp = inc.clone();
            if let Some(old) = inst.find(&new_root, rid).cloned() {
                keep_local_data(&old, &mut comp, input.identity, &inst);
                if let Some(slot) = inst.find_mut(&mut new_root, rid) {
                    *slot = comp;
                }
            } else {
                new_root.children.push(comp);
            }
            // An instance that was excluded comes back when re-invited.
            if let Some(r) = rid {
                if let Some(master) = inst.find_mut(&mut new_root, None) {
                    inst.remove_exdate(master, r);
                }
            }
            changed = true;
        }
        if !changed {
            let mut d = Decision::new(
                if unchanged || stored.is_none() {
                    Effect::Unchanged
                } else {
                    Effect::Stale
                },
                role,
                if stale.is_empty() {
                    "these instances are already in the store".to_string()
                } else {
                    format!(
                        "the instance(s) {} are not newer than the store",
                        stale.join(", ")
                    )
                },
            );
            if unchanged && stale.is_empty() {
                d.invitation = invitation(input, &inst, None);
            }
            return d;
        }
    }
    let effect = if stored.is_some() {
        Effect::Updated
    } else {
        Effect::Created
    };
    let mut d = Decision::new(
        effect,
        role,
        match effect {
            Effect::Created => format!("{} filed", input.method),
            _ => format!("{} applied", input.method),
        },
    );
    d.invitation = invitation(input, &inst, Some(&new_root));
    d.object = Some(new_root);
    d
}

/// The components of a REQUEST or ADD that ask me (name me as ATTENDEE), as
/// an invitation; `None` when none does.
fn invitation(input: &Input<'_>, inst: &Instances, _new: Option<&Node>) -> Option<Invitation> {
    if !matches!(input.method, Method::Request | Method::Add) {
        return None;
    }
    let me = input
        .comps
        .iter()
        .find_map(|c| my_address(c, input.identity))?;
    let mut asked: Vec<Asked> = Vec::new();
    for c in &input.comps {
        if !attendee_addresses(c).contains(&me) {
            continue;
        }
        let rid = if input.method == Method::Add {
            // ADD names its instances by DTSTART.
            c.prop(&P::Dtstart).and_then(|e| inst.instant(e))
        } else {
            inst.rid(c)
        };
        if asked.iter().any(|a| a.rid == rid) {
            continue;
        }
        asked.push(Asked {
            rid,
            sequence: c.sequence(),
        });
    }
    asked.sort_by_key(|a| a.rid.is_some());
    if asked.is_empty() {
        return None;
    }
    Some(Invitation { me, asked })
}

/// ADD: new instances of an existing recurring event (§3.2.4).
fn apply_add(stored: Option<&Node>, input: &Input<'_>) -> Decision {
    let Some(stored) = stored else {
        return Decision::new(
            Effect::Ignored,
            Role::Attendee,
            "an ADD for an event that is not in the store (the organizer must send the whole event)",
        );
    };
    let inst = Instances::of(Some(stored), &input.comps, input.zones);
    let mut root = stored.clone();
    if inst.find(&root, None).is_none() {
        return Decision::new(
            Effect::Ignored,
            Role::Attendee,
            "an ADD for an event without a master component",
        );
    }
    let mut added = 0;
    let mut already = 0;
    for inc in &input.comps {
        let Some(start) = inc.prop(&P::Dtstart).cloned() else {
            continue;
        };
        let Some(at) = inst.instant(&start) else {
            continue;
        };
        if inst.find(&root, Some(at)).is_some() {
            already += 1;
            continue; // already added
        }
        let mut comp = inc.clone();
        let mut rid_entry = start.clone();
        rid_entry.name = P::RecurrenceId;
        comp.set(rid_entry);
        comp.remove(&P::Rrule);
        comp.remove(&P::Rdate);
        comp.remove(&P::Exdate);
        if let Some(master) = inst.find_mut(&mut root, None) {
            let mut rdate = start.clone();
            rdate.name = P::Rdate;
            master.entries.push(rdate);
            if inc.sequence() > master.sequence() {
                master.set(ical::int_entry(P::Sequence, inc.sequence()));
            }
        }
        root.children.push(comp);
        added += 1;
    }
    if added == 0 {
        let mut d = Decision::new(
            Effect::Unchanged,
            Role::Attendee,
            "these instances were already added",
        );
        if already > 0 {
            d.invitation = invitation(input, &inst, None);
        }
        return d;
    }
    let mut d = Decision::new(
        Effect::Updated,
        Role::Attendee,
        format!("ADD of {added} instance(s) applied"),
    );
    d.invitation = invitation(input, &inst, Some(&root));
    d.object = Some(root);
    d
}

fn status_cancelled() -> ICalendarEntry {
    ICalendarEntry {
        name: P::Status,
        params: Vec::new(),
        values: vec![ICalendarValue::Status(ICalendarStatus::Cancelled)],
    }
}

fn stamp_from(target: &mut Node, inc: &Node) {
    target.set(ical::int_entry(P::Sequence, inc.sequence()));
    if let Some(d) = inc.prop(&P::Dtstamp) {
        target.set(d.clone());
    }
}

/// Whether a RECURRENCE-ID says RANGE=THISANDFUTURE (calcard reads it as a
/// true boolean).
fn this_and_future(e: &ICalendarEntry) -> bool {
    e.params.iter().any(|p| {
        p.name == Pn::Range
            && (matches!(&p.value, ICalendarParameterValue::Bool(true))
                || p.value
                    .as_text()
                    .is_some_and(|t| t.eq_ignore_ascii_case("THISANDFUTURE")))
    })
}

/// CANCEL: the whole event, one instance, or this-and-future (§3.2.5).
fn apply_cancel(stored: Option<&Node>, input: &Input<'_>) -> Decision {
    let Some(stored) = stored else {
        return Decision::new(
            Effect::Held,
            Role::Attendee,
            "a CANCEL for an event not in the store; kept in case its REQUEST arrives later (RFC 5546 §5.2.1)",
        );
    };
    let inst = Instances::of(Some(stored), &input.comps, input.zones);
    let mut root = stored.clone();
    let mut changed = false;
    let mut stale = false;
    for inc in &input.comps {
        let rid_entry = inc.prop(&P::RecurrenceId).cloned();
        let rid = inst.rid(inc);
        match (rid_entry, rid) {
            (None, _) => {
                let master_version = inst.find(&root, None).map(version).unwrap_or_default();
                if version(inc) < master_version {
                    stale = true;
                    continue;
                }
                let all_cancelled = scheduling(&root).all(is_cancelled);
                if all_cancelled && version(inc) == master_version {
                    continue;
                }
                for c in root.children.iter_mut().filter(|c| c.is_scheduling()) {
                    c.set(status_cancelled());
                    if c.prop(&P::RecurrenceId).is_none() {
                        stamp_from(c, inc);
                    }
                }
                changed = true;
            }
            (Some(_), None) => continue, // an unreadable RECURRENCE-ID
            (Some(e), Some(at)) => {
                let reference = inst
                    .find(&root, Some(at))
                    .or_else(|| inst.find(&root, None))
                    .map(version);
                if reference.is_some_and(|v| version(inc) < v) {
                    stale = true;
                    continue;
                }
                if this_and_future(&e) {
                    changed |= truncate(&mut root, at, &inst);
                    continue;
                }
                if let Some(over) = inst.find_mut(&mut root, Some(at)) {
                    if is_cancelled(over) && version(over) >= version(inc) {
                        continue;
                    }
                    over.set(status_cancelled());
                    stamp_from(over, inc);
                    changed = true;
                } else if inst.find(&root, None).is_some() {
                    if inst
                        .find(&root, None)
                        .is_some_and(|m| inst.has_exdate(m, at))
                    {
                        continue;
                    }
                    let Some(ex) = inst.entry(P::Exdate, at) else {
                        continue;
                    };
                    if let Some(m) = inst.find_mut(&mut root, None) {
                        m.entries.push(ex);
                    }
                    changed = true;
                } else {
                    // Neither an override nor a master: keep the cancelled instance.
                    let mut c = inc.clone();
                    c.set(status_cancelled());
                    root.children.push(c);
                    changed = true;
                }
            }
        }
    }
    if !changed {
        return if stale {
            Decision::new(
                Effect::Stale,
                Role::Attendee,
                "this CANCEL is older than the stored event",
            )
        } else {
            Decision::new(Effect::Unchanged, Role::Attendee, "already cancelled")
        };
    }
    let mut d = Decision::new(Effect::Cancelled, Role::Attendee, "CANCEL applied");
    d.object = Some(root);
    d
}

/// RANGE=THISANDFUTURE: end the series before the given instance.
fn truncate(root: &mut Node, cut: Instant, inst: &Instances) -> bool {
    let zone = inst.floating;
    let Some(cut_ts) = cut.timestamp(zone) else {
        return false;
    };
    let at_or_after = |e: &ICalendarEntry| {
        inst.instant(e)
            .and_then(|i| i.timestamp(zone))
            .is_some_and(|t| t >= cut_ts)
    };
    let mut changed = false;
    // Overrides at or after the cut go.
    let before = root.children.len();
    root.children
        .retain(|c| !(c.is_scheduling() && c.prop(&P::RecurrenceId).is_some_and(at_or_after)));
    changed |= root.children.len() != before;
    let Some(master) = inst.find_mut(root, None) else {
        return changed;
    };
    if master.prop(&P::Dtstart).is_some_and(at_or_after) {
        // The whole series is at or after the cut.
        master.set(status_cancelled());
        return true;
    }
    // UNTIL is the last instant before the cut: a DATE for all-day series,
    // else UTC (RFC 5545 §3.3.10 requires UTC when DTSTART has a zone).
    let until = match cut {
        Instant::Date(d) => d
            .pred_opt()
            .map(|p| time::pdt(p.and_hms_opt(0, 0, 0).unwrap_or_default(), false, true)),
        Instant::At(t) => chrono::DateTime::from_timestamp(t - 1, 0)
            .map(|d| time::pdt(d.naive_utc(), inst.form != Some(Form::Floating), false)),
    };
    if let Some(until) = until {
        for e in master.entries.iter_mut().filter(|e| e.name == P::Rrule) {
            for v in e.values.iter_mut() {
                if let ICalendarValue::RecurrenceRule(rule) = v {
                    rule.until = Some(until.clone());
                    rule.count = None;
                    changed = true;
                }
            }
        }
    }
    let mut out = Vec::with_capacity(master.entries.len());
    for mut e in std::mem::take(&mut master.entries) {
        if e.name == P::Rdate {
            let before = e.values.len();
            let keep: Vec<ICalendarValue> = e
                .values
                .iter()
                .filter(|v| {
                    time::value_instant(&e, v, &inst.zones, inst.floating)
                        .and_then(|i| i.timestamp(zone))
                        .is_none_or(|t| t < cut_ts)
                })
                .cloned()
                .collect();
            changed |= keep.len() != before;
            if keep.is_empty() {
                continue;
            }
            e.values = keep;
        }
        out.push(e);
    }
    master.entries = out;
    changed
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

/// Carry the user's own data from the stored component into its update.
fn keep_local_data(old: &Node, new: &mut Node, identity: &Identity, inst: &Instances) {
    // Alarms: the user's, when there are any.
    let old_alarms: Vec<Node> = old
        .children
        .iter()
        .filter(|c| c.kind == Ct::VAlarm)
        .cloned()
        .collect();
    if !old_alarms.is_empty() {
        new.children.retain(|c| c.kind != Ct::VAlarm);
        new.children.extend(old_alarms);
    }
    for p in [P::Transp, P::Class, P::Categories] {
        let olds: Vec<ICalendarEntry> = old
            .entries
            .iter()
            .filter(|e| e.name == p)
            .cloned()
            .collect();
        if !olds.is_empty() {
            new.entries.retain(|e| e.name != p);
            new.entries.extend(olds);
        }
    }
    for e in &old.entries {
        if let P::Other(name) = &e.name {
            if name.to_ascii_uppercase().starts_with("X-")
                && !new.entries.iter().any(|n| n.name == e.name)
            {
                new.entries.push(e.clone());
            }
        }
    }
    // My answer stays while the organizer's version (SEQUENCE) is the same
    // and the event was not moved (RFC 5546 §2.1.4: SEQUENCE alone is not
    // to be relied on).
    if new.sequence() == old.sequence() && timing(new, inst) == timing(old, inst) {
        if let Some(me) = my_address(old, identity) {
            let old_ps = attendee(old, &me)
                .and_then(|e| e.params.iter().find(|p| p.name == Pn::Partstat).cloned());
            if let Some(ps) = old_ps {
                if let Some(e) = attendee_mut(new, &me) {
                    ical::set_param(e, Pn::Partstat, ps.value.clone());
                }
            }
        }
    }
}

const REPLY_SEQ: &str = "X-IMIPD-REPLY-SEQUENCE";
const REPLY_STAMP: &str = "X-IMIPD-REPLY-DTSTAMP";

fn reply_version(e: &ICalendarEntry) -> Option<(i64, String)> {
    let seq = ical::param(e, &Pn::Other(REPLY_SEQ.into()))?.parse().ok()?;
    let stamp = ical::param(e, &Pn::Other(REPLY_STAMP.into())).unwrap_or_default();
    Some((seq, stamp))
}

fn set_partstat(e: &mut ICalendarEntry, partstat: &str) {
    ical::set_param(
        e,
        Pn::Partstat,
        ICalendarParameterValue::Text(partstat.to_string()),
    );
}

/// Parameters imipd keeps for itself, which never travel.
pub fn strip_private(e: &mut ICalendarEntry) {
    e.params.retain(
        |p| !matches!(&p.name, Pn::Other(n) if n.to_ascii_uppercase().starts_with("X-IMIPD")),
    );
}

/// REPLY: record the answer of the attendee who sent it, per component, in
/// an event I organize (§3.2.3). Nobody else's entry changes, whatever the
/// REPLY lists.
fn apply_reply(stored: &Node, input: &Input<'_>, who: &Originator) -> Decision {
    let inst = Instances::of(Some(stored), &input.comps, input.zones);
    let mut root = stored.clone();
    let mut changed = Vec::new();
    let mut refusal: Option<String> = None;
    let mut stale = false;
    let mut held = false;
    for inc in &input.comps {
        let Some(att) = attendee(inc, &who.address) else {
            continue;
        };
        let partstat = ical::partstat(att);
        let rid = inst.rid(inc);
        if inc.prop(&P::RecurrenceId).is_some() && rid.is_none() {
            refusal = Some("the REPLY names an instance that cannot be read".into());
            continue;
        }
        // The instance answered may have no override yet: derive one.
        if rid.is_some() && inst.find(&root, rid).is_none() {
            let in_master = inst
                .find(&root, None)
                .is_some_and(|m| known_or_delegate(m, &who.address, att));
            if !in_master {
                refusal = Some(format!(
                    "{} is not an attendee of this event",
                    bare(&who.address)
                ));
                continue;
            }
            match derive_override(&root, rid, &inst) {
                Some(over) => root.children.push(over),
                None => {
                    refusal = Some("the instance this REPLY answers is not in the event".into());
                    continue;
                }
            }
        }
        let Some(target) = inst.find_mut(&mut root, rid) else {
            refusal = Some("the instance this REPLY answers is not in the event".into());
            continue;
        };
        if attendee(target, &who.address).is_none() {
            // A delegate answers: accepted once its delegator said so.
            match delegated_by(target, &who.address) {
                Some(delegator) => {
                    let mut e = att.clone();
                    strip_private(&mut e);
                    ical::remove_param(&mut e, &Pn::DelegatedFrom);
                    e.params.push(ICalendarParameter {
                        name: Pn::DelegatedFrom,
                        value: ICalendarParameterValue::Text(delegator),
                    });
                    target.entries.push(e);
                }
                None if !param_addresses(att, &Pn::DelegatedFrom).is_empty() => {
                    // RFC 5546 §5.2.2: a delegate's answer may arrive before
                    // its delegator's; keep it until then.
                    held = true;
                    continue;
                }
                None => {
                    refusal = Some(format!(
                        "{} is not an attendee of this event (a party crasher); the REPLY changes nothing",
                        bare(&who.address)
                    ));
                    continue;
                }
            }
        }
        let inc_v = version(inc);
        let event_seq = target.sequence();
        let Some(entry) = attendee_mut(target, &who.address) else {
            continue;
        };
        if reply_version(entry).is_some_and(|last| inc_v <= last) || inc_v.0 < event_seq {
            stale = true;
            continue;
        }
        set_partstat(entry, &partstat);
        ical::set_param(
            entry,
            Pn::Other(REPLY_SEQ.into()),
            ICalendarParameterValue::Text(inc_v.0.to_string()),
        );
        ical::set_param(
            entry,
            Pn::Other(REPLY_STAMP.into()),
            ICalendarParameterValue::Text(inc_v.1.clone()),
        );
        ical::remove_param(entry, &Pn::Rsvp);
        // Delegation: the delegator names the delegate, who joins the event.
        let mut joined = Vec::new();
        if partstat == "DELEGATED" {
            let to = param_addresses(att, &Pn::DelegatedTo);
            ical::remove_param(entry, &Pn::DelegatedTo);
            for d in &to {
                entry.params.push(ICalendarParameter {
                    name: Pn::DelegatedTo,
                    value: ICalendarParameterValue::Text(d.clone()),
                });
            }
            for d in to {
                if attendee(target, &d).is_some() {
                    if let Some(e) = attendee_mut(target, &d) {
                        if param_addresses(e, &Pn::DelegatedFrom).is_empty() {
                            e.params.push(ICalendarParameter {
                                name: Pn::DelegatedFrom,
                                value: ICalendarParameterValue::Text(who.address.clone()),
                            });
                        }
                    }
                    continue;
                }
                let mut e = inc
                    .entries
                    .iter()
                    .find(|e| {
                        e.name == P::Attendee && ical::cal_address(e).as_deref() == Some(d.as_str())
                    })
                    .cloned()
                    .unwrap_or_else(|| ical::text_entry(P::Attendee, d.clone()));
                strip_private(&mut e);
                ical::remove_param(&mut e, &Pn::DelegatedFrom);
                ical::remove_param(&mut e, &Pn::Partstat);
                e.params.push(ICalendarParameter {
                    name: Pn::DelegatedFrom,
                    value: ICalendarParameterValue::Text(who.address.clone()),
                });
                set_partstat(&mut e, "NEEDS-ACTION");
                target.entries.push(e);
                joined.push(bare(&d).to_string());
            }
        }
        changed.push(format!(
            "{} {}{}{}",
            bare(&who.address),
            partstat,
            rid.map(|r| format!(" (instance {r})")).unwrap_or_default(),
            if joined.is_empty() {
                String::new()
            } else {
                format!(", delegate {} added", joined.join(", "))
            }
        ));
    }
    if changed.is_empty() {
        if held {
            return Decision::new(
                Effect::Held,
                Role::Organizer,
                format!(
                    "{} answers as a delegate, but its delegator has not said so yet; kept until then (RFC 5546 §5.2.2)",
                    bare(&who.address)
                ),
            );
        }
        if let Some(r) = refusal {
            return Decision::new(Effect::Refused, Role::Organizer, r);
        }
        return Decision::new(
            if stale {
                Effect::Stale
            } else {
                Effect::Unchanged
            },
            Role::Organizer,
            "this REPLY is not newer than the attendee's last answer or the event",
        );
    }
    let mut d = Decision::new(
        Effect::PartstatUpdated,
        Role::Organizer,
        format!("recorded: {}", changed.join(", ")),
    );
    d.object = Some(root);
    d
}

/// Whether an address is an attendee of a component, or the delegate one of
/// its attendees named.
fn known_or_delegate(c: &Node, who: &str, _att: &ICalendarEntry) -> bool {
    attendee(c, who).is_some() || delegated_by(c, who).is_some()
}

/// The attendee of a component that delegated to `who` (DELEGATED-TO).
fn delegated_by(c: &Node, who: &str) -> Option<String> {
    c.entries
        .iter()
        .filter(|e| e.name == P::Attendee)
        .find(|e| {
            param_addresses(e, &Pn::DelegatedTo)
                .iter()
                .any(|d| d == who)
        })
        .and_then(ical::cal_address)
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

fn empty_root() -> Node {
    Node::from_ical(&ical::new_calendar(None))
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

#[cfg(test)]
mod tests;
