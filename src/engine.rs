//! The iTIP engine: given what the store holds for one UID and an incoming
//! iTIP message about that UID, decide what the calendar becomes (RFC 5546).
//! Pure: no I/O; [`apply`] returns a [`Decision`] that the caller executes.
//!
//! The rules that matter most:
//! - identity is UID plus RECURRENCE-ID; higher SEQUENCE wins, equal SEQUENCE
//!   then later DTSTAMP; older messages change nothing (§2.1.5);
//! - a REQUEST with the master replaces the whole object; instance-only
//!   REQUESTs and CANCELs touch only their instances; CANCEL of an instance
//!   without an override adds an EXDATE; RANGE=THISANDFUTURE truncates;
//! - only the organizer (or its SENT-BY) may change or cancel an event, and a
//!   changed ORGANIZER is refused; a REPLY changes only the replying attendee,
//!   who must be in the event, and only if newer than that attendee's last one;
//! - the user's own data (VALARM, TRANSP, CLASS, CATEGORIES, X- properties)
//!   survives updates.

use calcard::icalendar::{
    ICalendarComponentType as Ct, ICalendarEntry, ICalendarParameterName as Pn,
    ICalendarParameterValue, ICalendarProperty as P, ICalendarStatus, ICalendarValue,
};
use chrono::{NaiveDate, NaiveDateTime, TimeZone};
use serde::Serialize;

use crate::config::Identity;
use crate::ical::{self, Node};

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
    /// A CANCEL for an unknown event, kept until its REQUEST arrives.
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

/// An incoming iTIP message, restricted to the components of one UID.
pub struct Input<'a> {
    pub method: &'a str,
    pub uid: &'a str,
    /// The scheduling components with this UID (with their VALARMs).
    pub comps: Vec<Node>,
    /// Whether the mail's sender is the calendar user entitled to send
    /// this method (classify's sender check, SENT-BY included).
    pub sender_entitled: bool,
    pub identity: &'a Identity,
}

/// An invitation addressed to me that a policy may answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    /// My calendar address as the event names it.
    pub me: String,
    pub sequence: i64,
    /// `None` for the whole event, else the instances concerned.
    pub recurrence_ids: Vec<Option<String>>,
}

/// The engine's verdict for one UID.
#[derive(Debug, Clone)]
pub struct Decision {
    pub effect: Effect,
    pub role: Role,
    pub reason: String,
    /// The whole new calendar object (root VCALENDAR) to store.
    pub object: Option<Node>,
    /// After storing, look for a held CANCEL of this UID.
    pub release_held: bool,
    /// Set when the message is an invitation to me that is new or changed
    /// (not stale, not a duplicate): what an answer would refer to.
    pub invitation: Option<Invitation>,
}

impl Decision {
    fn new(effect: Effect, role: Role, reason: impl Into<String>) -> Decision {
        Decision {
            effect,
            role,
            reason: reason.into(),
            object: None,
            release_held: false,
            invitation: None,
        }
    }
}

/// SEQUENCE and DTSTAMP: the version of a component (§2.1.5).
fn version(c: &Node) -> (i64, String) {
    (c.sequence(), c.dtstamp())
}

fn scheduling(root: &Node) -> impl Iterator<Item = &Node> {
    root.children.iter().filter(|c| c.is_scheduling())
}

fn find<'a>(root: &'a Node, rid: Option<&str>) -> Option<&'a Node> {
    scheduling(root).find(|c| c.recurrence_id().as_deref() == rid)
}

fn find_mut<'a>(root: &'a mut Node, rid: Option<&str>) -> Option<&'a mut Node> {
    root.children
        .iter_mut()
        .find(|c| c.is_scheduling() && c.recurrence_id().as_deref() == rid)
}

/// The organizer of a stored object (master first).
fn stored_organizer(root: &Node) -> Option<String> {
    find(root, None)
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

fn my_address(c: &Node, identity: &Identity) -> Option<String> {
    attendee_addresses(c)
        .into_iter()
        .find(|a| identity.is_me(a))
}

fn is_cancelled(c: &Node) -> bool {
    c.text(&P::Status)
        .is_some_and(|s| s.eq_ignore_ascii_case("CANCELLED"))
}

/// Decide what an incoming message does to the stored object for its UID.
pub fn apply(stored: Option<&Node>, input: &Input<'_>) -> Decision {
    let method = input.method;
    let Some(first) = input.comps.first() else {
        return Decision::new(
            Effect::Ignored,
            Role::Attendee,
            "no component with this UID",
        );
    };
    let inc_org = first.organizer();
    let me_organizer_incoming = inc_org.as_deref().is_some_and(|o| input.identity.is_me(o));
    let stored_org = stored.and_then(stored_organizer);
    let me_organizer_stored = stored_org
        .as_deref()
        .is_some_and(|o| input.identity.is_me(o));

    match method {
        "REPLY" | "COUNTER" | "REFRESH" => {
            let Some(stored) = stored else {
                return Decision::new(
                    Effect::Ignored,
                    Role::Organizer,
                    format!("no event with UID {} is in the store", input.uid),
                );
            };
            if !me_organizer_stored {
                return Decision::new(
                    Effect::Ignored,
                    Role::Attendee,
                    format!("a {method} is for the organizer, and I do not organize this event"),
                );
            }
            if !input.sender_entitled {
                return Decision::new(
                    Effect::Refused,
                    Role::Organizer,
                    format!("the sender is not the attendee this {method} speaks for"),
                );
            }
            if method == "REPLY" {
                apply_reply(stored, input)
            } else {
                let who = first
                    .prop(&P::Attendee)
                    .and_then(ical::cal_address)
                    .unwrap_or_default();
                if !scheduling(stored).any(|c| attendee_addresses(c).contains(&who)) {
                    return Decision::new(
                        Effect::Refused,
                        Role::Organizer,
                        format!(
                            "{} is not an attendee of this event",
                            who.trim_start_matches("mailto:")
                        ),
                    );
                }
                Decision::new(
                    Effect::Recorded,
                    Role::Organizer,
                    format!(
                        "{method} from {} kept for a person to act on",
                        who.trim_start_matches("mailto:")
                    ),
                )
            }
        }
        "REQUEST" | "PUBLISH" | "ADD" | "CANCEL" | "DECLINECOUNTER" => {
            let role = if me_organizer_incoming || me_organizer_stored {
                Role::Organizer
            } else {
                Role::Attendee
            };
            let Some(inc_org_addr) = &inc_org else {
                return Decision::new(
                    Effect::Refused,
                    role,
                    format!(
                        "this {method} names no ORGANIZER, so nobody can be entitled to send it"
                    ),
                );
            };
            if let (Some(s), i) = (&stored_org, inc_org_addr) {
                if s != i {
                    return Decision::new(
                        Effect::Refused,
                        role,
                        format!(
                            "the organizer would change from {} to {}; RFC 5546 does not allow that in an update",
                            s.trim_start_matches("mailto:"),
                            i.trim_start_matches("mailto:")
                        ),
                    );
                }
            }
            if !input.sender_entitled {
                return Decision::new(
                    Effect::Refused,
                    role,
                    format!("the sender is not the organizer of this event, so its {method} changes nothing"),
                );
            }
            if method == "DECLINECOUNTER" {
                return Decision::new(
                    Effect::Recorded,
                    role,
                    "the organizer declined a counter proposal",
                );
            }
            let mut d = match method {
                "CANCEL" => apply_cancel(stored, input),
                "ADD" => apply_add(stored, input),
                _ => apply_request(stored, input),
            };
            d.role = role;
            if role == Role::Organizer {
                d.invitation = None;
            }
            d
        }
        other => Decision::new(
            Effect::Ignored,
            Role::Attendee,
            format!("METHOD:{other} is not handled"),
        ),
    }
}

/// A REQUEST or PUBLISH.
fn apply_request(stored: Option<&Node>, input: &Input<'_>) -> Decision {
    let has_master = input.comps.iter().any(|c| c.recurrence_id().is_none());
    let mut new_root = match stored {
        Some(s) => s.clone(),
        None => empty_root(),
    };
    let mut changed = false;
    let mut stale = Vec::new();
    let mut unchanged: Vec<Option<String>> = Vec::new();
    let mut rids = Vec::new();

    if has_master {
        let inc_master = input
            .comps
            .iter()
            .find(|c| c.recurrence_id().is_none())
            .cloned();
        let inc_master = inc_master.unwrap_or_else(|| input.comps[0].clone());
        if let Some(old) = stored.and_then(|s| find(s, None)) {
            let (iv, ov) = (version(&inc_master), version(old));
            if iv < ov {
                return Decision::new(
                    Effect::Stale,
                    Role::Attendee,
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
                    Role::Attendee,
                    "this version is already in the store",
                );
                d.invitation = invitation(input, vec![None]);
                return d;
            }
        }
        // The whole object is replaced: the incoming master and overrides.
        let old_root = stored.cloned();
        new_root.children.retain(|c| !c.is_scheduling());
        for inc in &input.comps {
            let rid = inc.recurrence_id();
            let mut comp = inc.clone();
            if let Some(old) = old_root.as_ref().and_then(|s| find(s, rid.as_deref())) {
                keep_local_data(old, &mut comp, input.identity);
            }
            new_root.children.push(comp);
        }
        rids.push(None);
    } else {
        for inc in &input.comps {
            let rid = inc.recurrence_id();
            let existing = find(&new_root, rid.as_deref()).or_else(|| find(&new_root, None));
            if let Some(old) = existing {
                let (iv, ov) = (version(inc), version(old));
                let same_instance = old.recurrence_id() == rid;
                if same_instance && iv == ov {
                    unchanged.push(rid.clone());
                    continue;
                }
                if iv < ov {
                    stale.push(rid.clone().unwrap_or_default());
                    continue;
                }
            }
            let mut comp = inc.clone();
            if let Some(old) = find(&new_root, rid.as_deref()).cloned() {
                keep_local_data(&old, &mut comp, input.identity);
                if let Some(slot) = find_mut(&mut new_root, rid.as_deref()) {
                    *slot = comp;
                }
            } else {
                new_root.children.push(comp);
            }
            // An instance that was excluded comes back when re-invited.
            if let Some(r) = &rid {
                if let Some(master) = find_mut(&mut new_root, None) {
                    remove_exdate(master, r);
                }
            }
            changed = true;
            rids.push(rid);
        }
        if !changed && !unchanged.is_empty() && stale.is_empty() {
            let mut d = Decision::new(
                Effect::Unchanged,
                Role::Attendee,
                "these instances are already in the store",
            );
            d.invitation = invitation(input, unchanged);
            return d;
        }
        if !changed {
            return Decision::new(
                if stored.is_some() {
                    Effect::Stale
                } else {
                    Effect::Unchanged
                },
                Role::Attendee,
                format!(
                    "the instance(s) {} are not newer than the store",
                    stale.join(", ")
                ),
            );
        }
    }
    let effect = if stored.is_some() {
        Effect::Updated
    } else {
        Effect::Created
    };
    let invitation = invitation(input, rids);
    Decision {
        effect,
        role: Role::Attendee,
        reason: match effect {
            Effect::Created => format!("{} filed", input.method),
            _ => format!("{} applied", input.method),
        },
        object: Some(new_root),
        release_held: true,
        invitation,
    }
}

fn invitation(input: &Input<'_>, rids: Vec<Option<String>>) -> Option<Invitation> {
    if input.method != "REQUEST" && input.method != "ADD" {
        return None;
    }
    let c = input.comps.first()?;
    let me = input
        .comps
        .iter()
        .find_map(|c| my_address(c, input.identity))?;
    // Answer only for the components that name me: an invitation to one
    // instance of a series I am otherwise not part of is answered for that
    // instance alone.
    let names_me = |rid: &Option<String>| {
        input
            .comps
            .iter()
            .filter(|c| c.recurrence_id() == *rid)
            .any(|c| attendee_addresses(c).contains(&me))
    };
    let recurrence_ids: Vec<Option<String>> = if rids.contains(&None) && !names_me(&None) {
        input
            .comps
            .iter()
            .filter(|c| c.recurrence_id().is_some() && attendee_addresses(c).contains(&me))
            .map(Node::recurrence_id)
            .collect()
    } else {
        rids.into_iter().filter(|r| names_me(r)).collect()
    };
    if recurrence_ids.is_empty() {
        return None;
    }
    Some(Invitation {
        me,
        sequence: c.sequence(),
        recurrence_ids,
    })
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
    let mut root = stored.clone();
    if find(&root, None).is_none() {
        return Decision::new(
            Effect::Ignored,
            Role::Attendee,
            "an ADD for an event without a master component",
        );
    }
    let mut rids = Vec::new();
    for inc in &input.comps {
        let Some(start) = inc.prop(&P::Dtstart).cloned() else {
            continue;
        };
        let rid_text = ical::date_string(&start).unwrap_or_default();
        if find(&root, Some(&rid_text)).is_some() {
            continue; // already added
        }
        let mut comp = inc.clone();
        let mut rid_entry = start.clone();
        rid_entry.name = P::RecurrenceId;
        comp.set(rid_entry);
        comp.remove(&P::Rrule);
        comp.remove(&P::Rdate);
        comp.remove(&P::Exdate);
        if let Some(master) = find_mut(&mut root, None) {
            let mut rdate = start.clone();
            rdate.name = P::Rdate;
            master.entries.push(rdate);
            if inc.sequence() > master.sequence() {
                master.set(ical::int_entry(P::Sequence, inc.sequence()));
            }
        }
        root.children.push(comp);
        rids.push(Some(rid_text));
    }
    if rids.is_empty() {
        return Decision::new(
            Effect::Unchanged,
            Role::Attendee,
            "these instances were already added",
        );
    }
    Decision {
        effect: Effect::Updated,
        role: Role::Attendee,
        reason: format!("ADD of {} instance(s) applied", rids.len()),
        invitation: invitation(input, rids.clone()),
        object: Some(root),
        release_held: false,
    }
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

/// CANCEL: the whole event, one instance, or this-and-future (§3.2.5).
fn apply_cancel(stored: Option<&Node>, input: &Input<'_>) -> Decision {
    let Some(stored) = stored else {
        return Decision::new(
            Effect::Held,
            Role::Attendee,
            "a CANCEL for an event not in the store; kept in case its REQUEST arrives later (RFC 5546 §5.2.1)",
        );
    };
    let mut root = stored.clone();
    let mut changed = false;
    let mut stale = false;
    for inc in &input.comps {
        let rid = inc.recurrence_id();
        // calcard reads RANGE=THISANDFUTURE as a true boolean.
        let range_future = inc.prop(&P::RecurrenceId).is_some_and(|e| {
            e.params.iter().any(|p| {
                p.name == Pn::Range
                    && (matches!(&p.value, ICalendarParameterValue::Bool(true))
                        || p.value
                            .as_text()
                            .is_some_and(|t| t.eq_ignore_ascii_case("THISANDFUTURE")))
            })
        });
        match rid {
            None => {
                let master_version = find(&root, None).map(version).unwrap_or_default();
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
                    if c.recurrence_id().is_none() {
                        stamp_from(c, inc);
                    }
                }
                changed = true;
            }
            Some(rid) => {
                let reference = find(&root, Some(&rid))
                    .or_else(|| find(&root, None))
                    .map(version);
                if reference.is_some_and(|v| version(inc) < v) {
                    stale = true;
                    continue;
                }
                let rid_entry = inc.prop(&P::RecurrenceId).cloned();
                if range_future {
                    if let Some(e) = &rid_entry {
                        changed |= truncate(&mut root, e);
                    }
                    continue;
                }
                if let Some(over) = find_mut(&mut root, Some(&rid)) {
                    if is_cancelled(over) && version(over) == version(inc) {
                        continue;
                    }
                    over.set(status_cancelled());
                    stamp_from(over, inc);
                    changed = true;
                } else if let (Some(master), Some(e)) = (find_mut(&mut root, None), rid_entry) {
                    if has_exdate(master, &rid) {
                        continue;
                    }
                    let mut ex = e.clone();
                    ex.name = P::Exdate;
                    ical::remove_param(&mut ex, &Pn::Range);
                    master.entries.push(ex);
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
    Decision {
        effect: Effect::Cancelled,
        role: Role::Attendee,
        reason: "CANCEL applied".into(),
        object: Some(root),
        release_held: false,
        invitation: None,
    }
}

fn has_exdate(master: &Node, rid: &str) -> bool {
    master
        .entries
        .iter()
        .filter(|e| e.name == P::Exdate)
        .any(|e| {
            e.values
                .iter()
                .any(|v| value_date(e, v).as_deref() == Some(rid))
        })
}

fn value_date(e: &ICalendarEntry, v: &ICalendarValue) -> Option<String> {
    match v {
        ICalendarValue::PartialDateTime(dt) => Some(ical::format_date(
            dt,
            dt.hour.is_none()
                || ical::param(e, &Pn::Value).is_some_and(|x| x.eq_ignore_ascii_case("DATE")),
        )),
        _ => None,
    }
}

fn remove_exdate(master: &mut Node, rid: &str) {
    for e in master.entries.iter_mut().filter(|e| e.name == P::Exdate) {
        let keep: Vec<ICalendarValue> = e
            .values
            .iter()
            .filter(|v| value_date(e, v).as_deref() != Some(rid))
            .cloned()
            .collect();
        e.values = keep;
    }
    master
        .entries
        .retain(|e| e.name != P::Exdate || !e.values.is_empty());
}

/// RANGE=THISANDFUTURE: end the series before the given instance.
fn truncate(root: &mut Node, rid_entry: &ICalendarEntry) -> bool {
    let Some(rid) = ical::date_string(rid_entry) else {
        return false;
    };
    let Some(cut) = to_naive(rid_entry) else {
        return false;
    };
    let tzid = rid_entry.tz_id().map(str::to_string);
    let mut changed = false;
    // Overrides at or after the cut go.
    let before = root.children.len();
    root.children.retain(|c| {
        !(c.is_scheduling()
            && c.prop(&P::RecurrenceId)
                .and_then(to_naive)
                .is_some_and(|d| d >= cut))
    });
    changed |= root.children.len() != before;
    if let Some(master) = find_mut(root, None) {
        if master
            .prop(&P::Dtstart)
            .and_then(to_naive)
            .is_some_and(|s| s >= cut)
        {
            // The whole series is at or after the cut.
            master.set(status_cancelled());
            return true;
        }
        let until_local = cut - chrono::Duration::seconds(1);
        let date_only = rid.len() == 8;
        let until = if date_only {
            ICalendarValue::PartialDateTime(Box::new(pdt(until_local, false, true)))
        } else {
            let utc = match tzid.as_deref().and_then(resolve_tz) {
                Some(tz) => tz
                    .from_local_datetime(&until_local)
                    .earliest()
                    .map(|d| d.naive_utc())
                    .unwrap_or(until_local),
                None => until_local,
            };
            ICalendarValue::PartialDateTime(Box::new(pdt(utc, true, false)))
        };
        for e in master.entries.iter_mut().filter(|e| e.name == P::Rrule) {
            for v in e.values.iter_mut() {
                if let ICalendarValue::RecurrenceRule(rule) = v {
                    if let ICalendarValue::PartialDateTime(u) = &until {
                        rule.until = Some((**u).clone());
                        rule.count = None;
                        changed = true;
                    }
                }
            }
        }
        for e in master.entries.iter_mut().filter(|e| e.name == P::Rdate) {
            let keep: Vec<ICalendarValue> = e
                .values
                .iter()
                .filter(|v| match v {
                    ICalendarValue::PartialDateTime(d) => pdt_naive(d).is_none_or(|d| d < cut),
                    _ => true,
                })
                .cloned()
                .collect();
            if keep.len() != e.values.len() {
                changed = true;
            }
            e.values = keep;
        }
        master
            .entries
            .retain(|e| e.name != P::Rdate || !e.values.is_empty());
    }
    changed
}

/// A TZID (IANA, Windows or vendor-prefixed) as a time zone.
pub fn resolve_tz(tzid: &str) -> Option<calcard::common::timezone::Tz> {
    tzid.parse::<calcard::common::timezone::Tz>().ok()
}

fn pdt_naive(d: &calcard::common::PartialDateTime) -> Option<NaiveDateTime> {
    let date = NaiveDate::from_ymd_opt(d.year? as i32, d.month? as u32, d.day? as u32)?;
    date.and_hms_opt(
        d.hour.unwrap_or(0) as u32,
        d.minute.unwrap_or(0) as u32,
        d.second.unwrap_or(0) as u32,
    )
}

/// A date or date-time value as a naive (local or UTC) date-time.
pub fn to_naive(e: &ICalendarEntry) -> Option<NaiveDateTime> {
    match e.values.first()? {
        ICalendarValue::PartialDateTime(d) => pdt_naive(d),
        _ => None,
    }
}

fn pdt(d: NaiveDateTime, utc: bool, date_only: bool) -> calcard::common::PartialDateTime {
    use chrono::{Datelike, Timelike};
    calcard::common::PartialDateTime {
        year: Some(d.year() as u16),
        month: Some(d.month() as u8),
        day: Some(d.day() as u8),
        hour: (!date_only).then_some(d.hour() as u8),
        minute: (!date_only).then_some(d.minute() as u8),
        second: (!date_only).then_some(d.second() as u8),
        tz_hour: utc.then_some(0),
        tz_minute: utc.then_some(0),
        tz_minus: false,
    }
}

/// Carry the user's own data from the stored component into its update.
fn keep_local_data(old: &Node, new: &mut Node, identity: &Identity) {
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
    // My answer stays while the organizer's version (SEQUENCE) is the same.
    if new.sequence() == old.sequence() {
        if let Some(me) = my_address(old, identity) {
            let old_ps = old
                .entries
                .iter()
                .find(|e| e.name == P::Attendee && ical::cal_address(e).as_deref() == Some(&me))
                .and_then(|e| e.params.iter().find(|p| p.name == Pn::Partstat).cloned());
            if let Some(ps) = old_ps {
                for e in new.entries.iter_mut() {
                    if e.name == P::Attendee && ical::cal_address(e).as_deref() == Some(&me) {
                        ical::set_param(e, Pn::Partstat, ps.value.clone());
                    }
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

/// REPLY: record one attendee's PARTSTAT in an event I organize (§3.2.3).
fn apply_reply(stored: &Node, input: &Input<'_>) -> Decision {
    let mut root = stored.clone();
    let mut changed = Vec::new();
    let mut refusal = None;
    let mut stale = false;
    for inc in &input.comps {
        let Some(att) = inc.entries.iter().find(|e| e.name == P::Attendee) else {
            continue;
        };
        let Some(who) = ical::cal_address(att) else {
            continue;
        };
        let partstat = ical::partstat(att);
        let rid = inc.recurrence_id();
        let in_master = find(&root, None).is_some_and(|m| attendee_addresses(m).contains(&who));
        if rid.is_some() && find(&root, rid.as_deref()).is_none() {
            if !in_master {
                refusal = Some(format!(
                    "{} is not an attendee of this event",
                    who.trim_start_matches("mailto:")
                ));
                continue;
            }
            if let Some(over) = derive_override(&root, inc) {
                root.children.push(over);
            }
        }
        let Some(target) = find_mut(&mut root, rid.as_deref()).or(None) else {
            refusal = Some("the instance this REPLY answers is not in the event".into());
            continue;
        };
        let Some(entry) = target
            .entries
            .iter_mut()
            .find(|e| e.name == P::Attendee && ical::cal_address(e).as_deref() == Some(&who))
        else {
            refusal = Some(format!(
                "{} is not an attendee of this event (a party crasher); the REPLY changes nothing",
                who.trim_start_matches("mailto:")
            ));
            continue;
        };
        let inc_v = version(inc);
        if let Some(last) = reply_version(entry) {
            if inc_v <= last {
                stale = true;
                continue;
            }
        }
        let event_seq = target.sequence();
        let Some(entry) = target
            .entries
            .iter_mut()
            .find(|e| e.name == P::Attendee && ical::cal_address(e).as_deref() == Some(&who))
        else {
            continue;
        };
        if inc_v.0 < event_seq {
            stale = true;
            continue;
        }
        ical::set_param(
            entry,
            Pn::Partstat,
            ICalendarParameterValue::Text(partstat.clone()),
        );
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
        changed.push(format!(
            "{} {}{}",
            who.trim_start_matches("mailto:"),
            partstat,
            rid.map(|r| format!(" (instance {r})")).unwrap_or_default()
        ));
    }
    if changed.is_empty() {
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
    Decision {
        effect: Effect::PartstatUpdated,
        role: Role::Organizer,
        reason: format!("recorded: {}", changed.join(", ")),
        object: Some(root),
        release_held: false,
        invitation: None,
    }
}

/// An override for one instance, copied from the master (for a REPLY about
/// an instance that has no override yet).
fn derive_override(root: &Node, inc: &Node) -> Option<Node> {
    let master = find(root, None)?;
    let rid_entry = inc.prop(&P::RecurrenceId)?.clone();
    let mut over = master.clone();
    over.children.retain(|c| c.kind != Ct::VAlarm);
    for p in [P::Rrule, P::Rdate, P::Exdate, P::Exrule] {
        over.remove(&p);
    }
    let mut rid = rid_entry.clone();
    ical::remove_param(&mut rid, &Pn::Range);
    over.set(rid.clone());
    let old_start = master.prop(&P::Dtstart).and_then(to_naive);
    let mut start = rid.clone();
    start.name = P::Dtstart;
    if let (Some(os), Some(oe), Some(ns)) = (
        old_start,
        master.prop(&P::Dtend).and_then(to_naive),
        to_naive(&rid),
    ) {
        if let Some(mut end) = master.prop(&P::Dtend).cloned() {
            let date_only = matches!(end.values.first(), Some(ICalendarValue::PartialDateTime(d)) if d.hour.is_none());
            let utc = matches!(end.values.first(), Some(ICalendarValue::PartialDateTime(d)) if d.tz_hour == Some(0));
            end.values = vec![ICalendarValue::PartialDateTime(Box::new(pdt(
                ns.checked_add_signed(oe - os).unwrap_or(ns),
                utc,
                date_only,
            )))];
            over.set(end);
        }
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
