//! Messages from an attendee (RFC 5546 §3.2): REPLY (§3.2.3), REFRESH
//! (§3.2.6) and COUNTER (§3.2.7). Owns recording an attendee's answer in
//! an event I organize (only that attendee's entry, per component, only
//! when newer than the last answer), delegation by a REPLY (the delegate
//! joins; its own answer is held until the delegator's, §5.2.2), and, as
//! delegator, the copy of my delegate's REPLY (§4.2.6). COUNTER and
//! REFRESH are kept for a person to act on.

use calcard::icalendar::{
    ICalendarEntry, ICalendarParameter, ICalendarParameterName as Pn, ICalendarParameterValue,
    ICalendarProperty as P,
};

use super::{
    attendee, attendee_mut, bare, derive_override, my_address, param_addresses, scheduling,
    sent_by_allowed, stored_organizer, strip_private, unproven_why, version, Decision, Effect,
    Input, Instances, Role,
};
use crate::ical::{self, Node};
use crate::itip::Method;
use crate::originator::{Originator, Via};

/// REPLY, COUNTER, REFRESH: an attendee speaks to the organizer.
pub(super) fn from_attendee(stored: Option<&Node>, input: &Input<'_>) -> Decision {
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
    let known = scheduling(stored).any(|c| attendee(c, &who.address).is_some());
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
        let target = inst.find_mut(&mut root, rid)?;
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
                .is_some_and(|m| known_or_delegate(m, &who.address));
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

/// Whether an address is an attendee of a component, or the delegate one of
/// its attendees named.
fn known_or_delegate(c: &Node, who: &str) -> bool {
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
