//! Messages from the organizer (RFC 5546 §3.2): PUBLISH (§3.2.1), REQUEST
//! (§3.2.2, with a request a delegator forwarded to me, §3.2.2.3), ADD
//! (§3.2.4), CANCEL (§3.2.5, held when it comes before its REQUEST,
//! §5.2.1) and DECLINECOUNTER (§3.2.8). Owns who is entitled to speak as
//! the organizer, what is filed from a sender who is not, how an update
//! replaces or touches the stored object (newer versions only, §2.1.5)
//! while the user's own data survives, and the invitation to me that a
//! policy may answer.

use calcard::icalendar::{
    ICalendarComponentType as Ct, ICalendarEntry, ICalendarParameterName as Pn,
    ICalendarParameterValue, ICalendarProperty as P, ICalendarStatus, ICalendarValue,
};

use super::{
    attendee, attendee_addresses, attendee_mut, bare, is_cancelled, is_unverified, my_address,
    param_addresses, scheduling, sent_by_allowed, stored_organizer, timing, unproven_why, version,
    Asked, Decision, Effect, Input, Instances, Invitation, Role, UNVERIFIED,
};
use crate::ical::{self, Node};
use crate::identity::Identity;
use crate::itip::Method;
use crate::originator::{Originator, Via};
use crate::time::{self, Form, Instant};

/// PUBLISH, REQUEST, ADD, CANCEL, DECLINECOUNTER: the organizer speaks.
pub(super) fn from_organizer(stored: Option<&Node>, input: &Input<'_>) -> Decision {
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

fn mark_unverified(root: &mut Node, why: &str) {
    root.set(ical::text_entry(P::Other(UNVERIFIED.into()), why));
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
    // One delegated instance of a series is a delegation too: a component
    // that does not name me (the master) is passed over.
    for c in &input.comps {
        let Some(me) = my_address(c, input.identity) else {
            continue;
        };
        let Some(my_entry) = attendee(c, &me) else {
            continue;
        };
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
                d.invitation = invitation(input, &inst);
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
                d.invitation = invitation(input, &inst);
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
    d.invitation = invitation(input, &inst);
    d.object = Some(new_root);
    d
}

fn empty_root() -> Node {
    Node::from_ical(&ical::new_calendar(None))
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

/// The components of a REQUEST or ADD that ask me (name me as ATTENDEE), as
/// an invitation; `None` when none does.
fn invitation(input: &Input<'_>, inst: &Instances) -> Option<Invitation> {
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
            d.invitation = invitation(input, &inst);
        }
        return d;
    }
    let mut d = Decision::new(
        Effect::Updated,
        Role::Attendee,
        format!("ADD of {added} instance(s) applied"),
    );
    d.invitation = invitation(input, &inst);
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
