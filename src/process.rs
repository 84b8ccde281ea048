//! One message, start to end, in two steps. [`Processor::plan`] decides
//! without writing anything: classify the message, tie each iTIP object to
//! the calendar user it speaks for ([`crate::originator`]), let the iTIP
//! engine say what each UID's stored object becomes, gather the policy facts
//! (the costly ones only for what would be answered), pick each policy, and
//! build the answers. [`Processor::execute`] then carries the plan out in
//! the crash-safe order: the store first, then the answers into the durable
//! outbox (keyed, so one request version is answered once), then held and
//! recorded messages. Produces one [`MessageOutcome`] per message, printed
//! as a line for people or as JSON for scripts. With `dry_run` the plan is
//! reported and nothing is written.

use std::path::PathBuf;
use std::sync::Arc;

use calcard::icalendar::{
    ICalendarParameterName as Pn, ICalendarParameterValue, ICalendarProperty as P,
};
use chrono::{DateTime, Utc};

use crate::classify::{self, Classified};
use crate::config::Config;
use crate::engine::{self, Decision, Effect, Input, Instances, Role, Trust};
use crate::gather::Gatherer;
use crate::ical::{self, Node};
use crate::itip::{CalObject, Method};
use crate::mime::Mail;
use crate::originator::{self, MailIdentity, Originator, Proof, Via};
use crate::outbox::Outbox;
use crate::outcome::{ItemOutcome, MessageOutcome, Origin};
use crate::policy::{self, Action, Facts, Verdict};
use crate::recur::{self, Budget};
use crate::state::State;
use crate::store::{self, CalendarStore};
use crate::time::{Instant, Zones};
use crate::{address, reply};

/// Processes messages against one store, state and outbox.
pub struct Processor {
    pub cfg: Arc<Config>,
    pub store: Box<dyn CalendarStore>,
    pub state: State,
    pub outbox: Outbox,
    pub dry_run: bool,
    gather: Gatherer,
}

/// What one message will do: computed without writing, then executed.
#[derive(Default)]
struct Plan {
    results: Vec<ItemOutcome>,
    quarantine: bool,
    /// The new object of each UID (the last one planned wins), with the
    /// index of the iTIP object whose VTIMEZONEs it may copy and of the
    /// results that report the file.
    writes: Vec<Write>,
    answers: Vec<reply::Outgoing>,
    /// iTIP objects to keep until what they refer to arrives.
    holds: Vec<(String, String)>,
    /// Held objects that are now applied or superseded (UID, file).
    drop_held: Vec<(String, PathBuf)>,
    /// Messages kept for a person (method, UID, calendar text).
    attention: Vec<(Method, String, String)>,
}

struct Write {
    uid: String,
    object: Node,
    tz_source: usize,
    results: Vec<usize>,
}

impl Plan {
    /// The object a UID will have after the writes planned so far.
    fn pending(&self, uid: &str) -> Option<&Node> {
        self.writes.iter().find(|w| w.uid == uid).map(|w| &w.object)
    }

    fn write(&mut self, uid: &str, object: Node, tz_source: usize, result: usize) {
        match self.writes.iter_mut().find(|w| w.uid == uid) {
            Some(w) => {
                w.object = object;
                w.tz_source = tz_source;
                w.results.push(result);
            }
            None => self.writes.push(Write {
                uid: uid.to_string(),
                object,
                tz_source,
                results: vec![result],
            }),
        }
    }
}

/// One UID of one iTIP object, between deciding and planning its effects.
struct Item {
    object: usize,
    method: Method,
    uid: String,
    comps: Vec<Node>,
    originator: Result<Originator, String>,
    decision: Decision,
    verdict: Verdict,
}

/// How many times one message is planned again after the store found an
/// event changed between imipd's read and its write; then the message is
/// left for the next pass.
const MAX_CONFLICT_RETRIES: u32 = 5;

/// The property imipd keeps on a held object: who it was from.
const HELD_FROM: &str = "X-IMIPD-HELD-FROM";

impl Processor {
    /// Open the store, the state (taking its lock) and the outbox; for a dry
    /// run, read them only: nothing is created, locked or written.
    pub fn open(cfg: Arc<Config>, dry_run: bool) -> anyhow::Result<Processor> {
        if dry_run {
            return Ok(Processor {
                store: store::open(&cfg.store, true)?,
                outbox: Outbox::open_read_only(&cfg.state)?,
                state: State::open_read_only(&cfg.state),
                dry_run,
                gather: Gatherer::new(policy::needs(&cfg.policies), cfg.address_book.clone()),
                cfg,
            });
        }
        let state = State::open(&cfg.state, cfg.lock_timeout)?;
        Ok(Processor {
            store: store::open(&cfg.store, false)?,
            outbox: Outbox::open(state.dir())?,
            state,
            dry_run,
            gather: Gatherer::new(policy::needs(&cfg.policies), cfg.address_book.clone()),
            cfg,
        })
    }

    /// Handle one raw message from a file or standard input.
    pub fn process(&mut self, raw: &[u8], source: &str) -> MessageOutcome {
        self.process_from(
            raw,
            Origin {
                source,
                ..Origin::default()
            },
        )
    }

    /// Handle one raw message.
    pub fn process_from(&mut self, raw: &[u8], origin: Origin<'_>) -> MessageOutcome {
        let mut c = classify::classify(raw, origin.source, &self.cfg.limits);
        if !origin.problems.is_empty() {
            c.report.valid = false;
            c.report
                .problems
                .splice(0..0, origin.problems.iter().cloned());
        }
        let now = crate::clock::now();
        let mut attempt = 0;
        loop {
            let mut out = MessageOutcome::new(&c, origin.source, self.dry_run);
            let plan = match self.plan(&c, origin, now) {
                Ok(p) => p,
                Err(e) => {
                    out.error = Some(format!("{e:#}"));
                    out.stop = true;
                    return out;
                }
            };
            out.quarantine = plan.quarantine;
            out.results = plan.results.clone();
            if self.dry_run {
                return out;
            }
            match self.execute(plan, &c, raw, origin, now) {
                Ok(locations) => {
                    for (i, l) in locations {
                        if let Some(r) = out.results.get_mut(i) {
                            r.location = Some(l);
                        }
                    }
                }
                // Someone changed an event between the read and the write
                // (a person in their calendar app): nothing of theirs is
                // overwritten; read again and apply the message to what is
                // there now. What this message already wrote is found
                // written, as after a restart.
                Err(e) if store::is_conflict(&e) && attempt < MAX_CONFLICT_RETRIES => {
                    attempt += 1;
                    tracing::info!(source = origin.source, attempt, "{e:#}; reading it again");
                    continue;
                }
                Err(e) => {
                    out.error = Some(format!("{e:#}"));
                    out.stop = true;
                }
            }
            return out;
        }
    }

    /// The stored object for a UID, as the plan so far leaves it.
    fn current(&self, plan: &Plan, uid: &str) -> anyhow::Result<Option<Node>> {
        match plan.pending(uid) {
            Some(n) => Ok(Some(n.clone())),
            None => self.store.get(uid),
        }
    }

    /// Decide everything one message does, writing nothing.
    fn plan(
        &mut self,
        c: &Classified,
        origin: Origin<'_>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Plan> {
        let mut plan = Plan::default();
        let Some(mail) = &c.mail else {
            return Ok(plan);
        };
        let who = MailIdentity::of(mail, &self.cfg.trusted_authserv_ids);
        let sender_mail: Vec<String> = who.from.iter().chain(who.sender.iter()).cloned().collect();
        // First every decision and every verdict: a quarantine verdict holds
        // the whole message, so nothing is planned before all are known.
        let mut items: Vec<Item> = Vec::new();
        let mut shadow = Plan::default();
        // What recurrences may cost, for the whole message.
        let mut budget = Budget::per_message();
        for (i, obj) in c.objects.iter().enumerate() {
            let root = Node::from_ical(&obj.ical);
            let zones = Zones::of(&root);
            let Some(method) = obj.kind else { continue };
            for (uid, comps) in engine::group_by_uid(&root) {
                let originator = speaker(method, &comps, &who);
                let decision = if obj.fatal {
                    Decision {
                        effect: Effect::Ignored,
                        role: Role::Attendee,
                        reason: format!(
                            "the calendar data is invalid and is not acted on: {}",
                            obj.problems.join("; ")
                        ),
                        object: None,
                        invitation: None,
                        no_answer: None,
                    }
                } else {
                    let stored = self.current(&shadow, &uid)?;
                    let d = engine::apply(
                        stored.as_ref(),
                        &Input {
                            method,
                            uid: &uid,
                            comps: comps.clone(),
                            zones: &zones,
                            originator: &originator,
                            sender_mail: &sender_mail,
                            identity: &self.cfg.identity,
                            trust: Trust {
                                sent_by: &self.cfg.identity.trusted_sent_by,
                            },
                        },
                    );
                    if let Some(o) = &d.object {
                        shadow.write(&uid, o.clone(), i, 0);
                    }
                    d
                };
                let verdict = self.verdict(
                    obj,
                    &root,
                    &uid,
                    &comps,
                    &originator,
                    &decision,
                    mail,
                    origin,
                    now,
                    &mut budget,
                )?;
                items.push(Item {
                    object: i,
                    method,
                    uid,
                    comps,
                    originator,
                    decision,
                    verdict,
                });
            }
        }
        // Objects too broken to split by UID are still reported.
        for (i, obj) in c.objects.iter().enumerate() {
            if items.iter().any(|it| it.object == i) {
                continue;
            }
            let uid = obj
                .components
                .first()
                .and_then(|&k| ical::uid(&obj.ical.components[k]))
                .unwrap_or_default();
            let verdict = match obj.kind {
                Some(method) => {
                    let mut facts = Facts::new(method, &[], now);
                    facts.valid = false;
                    facts.sender = mail.from.as_deref();
                    facts.account = origin.account;
                    facts.folder = origin.folder;
                    policy::decide(&self.cfg.policies, &facts)
                }
                None => policy::decide(&[], &Facts::new(Method::Request, &[], now)),
            };
            plan.results.push(ItemOutcome {
                method: obj.method.clone().unwrap_or_default(),
                uid,
                summary: None,
                role: Role::Attendee,
                effect: Effect::Ignored,
                reason: format!(
                    "the calendar data cannot be acted on safely: {}",
                    obj.problems.join("; ")
                ),
                originator: None,
                policy: verdict.policy.clone(),
                action: verdict.action,
                policy_reason: verdict.why.clone(),
                reply: None,
                location: None,
            });
            if verdict.action == Action::Quarantine {
                plan.quarantine = true;
            }
        }
        if let Some(q) = items
            .iter()
            .find(|it| it.verdict.action == Action::Quarantine)
        {
            let name = q.verdict.policy.clone();
            plan.quarantine = true;
            for it in &items {
                plan.results.push(self.outcome(
                    it,
                    Role::Attendee,
                    Effect::Ignored,
                    format!("quarantined by policy {name}"),
                ));
            }
            return Ok(plan);
        }
        if plan.quarantine {
            for it in &items {
                plan.results.push(self.outcome(
                    it,
                    Role::Attendee,
                    Effect::Ignored,
                    "the message is quarantined".into(),
                ));
            }
            return Ok(plan);
        }
        for mut it in items {
            if it.verdict.action == Action::Ignore {
                plan.results.push(self.outcome(
                    &it,
                    Role::Attendee,
                    Effect::Ignored,
                    "ignored by policy".into(),
                ));
                continue;
            }
            // Decided against the message's earlier items: decide again
            // against what the plan now holds for this UID.
            if !c.objects[it.object].fatal && plan.pending(&it.uid).is_some() {
                let root = Node::from_ical(&c.objects[it.object].ical);
                let zones = Zones::of(&root);
                let stored = self.current(&plan, &it.uid)?;
                it.decision = engine::apply(
                    stored.as_ref(),
                    &Input {
                        method: it.method,
                        uid: &it.uid,
                        comps: it.comps.clone(),
                        zones: &zones,
                        originator: &it.originator,
                        sender_mail: &sender_mail,
                        identity: &self.cfg.identity,
                        trust: Trust {
                            sent_by: &self.cfg.identity.trusted_sent_by,
                        },
                    },
                );
            }
            self.plan_item(&mut plan, c, &mut it, mail, now, &mut budget)?;
        }
        Ok(plan)
    }

    /// The outcome line of an item.
    fn outcome(&self, it: &Item, role: Role, effect: Effect, reason: String) -> ItemOutcome {
        ItemOutcome {
            method: it.method.to_string(),
            uid: it.uid.clone(),
            summary: it.comps.first().and_then(|c| c.text(&P::Summary)),
            role,
            effect,
            reason,
            originator: it.originator.as_ref().ok().cloned(),
            policy: it.verdict.policy.clone(),
            action: it.verdict.action,
            policy_reason: it.verdict.why.clone(),
            reply: None,
            location: None,
        }
    }

    /// Plan the effects of one decided item: the answer (with my PARTSTAT
    /// in my copy), the store write, held and recorded messages.
    fn plan_item(
        &mut self,
        plan: &mut Plan,
        c: &Classified,
        it: &mut Item,
        mail: &Mail,
        now: DateTime<Utc>,
        budget: &mut Budget,
    ) -> anyhow::Result<()> {
        let obj = &c.objects[it.object];
        let index = plan.results.len();
        let mut out = self.outcome(
            it,
            it.decision.role,
            it.decision.effect,
            it.decision.reason.clone(),
        );
        if it.verdict.action.partstat().is_some() {
            out.reply = Some(self.answer(plan, obj, it, mail, now, budget)?);
        }
        let d = &it.decision;
        match d.effect {
            Effect::Held => {
                let mut root = Node::from_ical(&obj.ical);
                if let Ok(o) = &it.originator {
                    root.set(ical::text_entry(
                        P::Other(HELD_FROM.into()),
                        o.address.clone(),
                    ));
                }
                root.children
                    .retain(|c| !c.is_scheduling() || c.uid().as_deref() == Some(it.uid.as_str()));
                plan.holds
                    .push((it.uid.clone(), ical::to_string(&root.into_ical())));
            }
            Effect::Recorded => {
                plan.attention
                    .push((it.method, it.uid.clone(), ical::to_string(&obj.ical)))
            }
            _ => {}
        }
        if let Some(object) = it.decision.object.clone() {
            let object = self.apply_held(plan, &it.uid, it.method, &it.comps, object)?;
            plan.write(&it.uid, object, it.object, index);
            if self.dry_run {
                out.location = Some(self.store.location(&it.uid));
            }
        }
        plan.results.push(out);
        Ok(())
    }

    /// Re-apply what is held for a UID to the object a message just made of
    /// it: CANCELs that arrived before their REQUEST keep their effect until
    /// a message newer than them arrives (RFC 5546 §5.2.1), and a delegate's
    /// REPLY is applied once its delegator's is.
    fn apply_held(
        &self,
        plan: &mut Plan,
        uid: &str,
        method: Method,
        comps: &[Node],
        mut object: Node,
    ) -> anyhow::Result<Node> {
        let wanted = match method {
            Method::Request | Method::Publish | Method::Add => Method::Cancel,
            Method::Reply => Method::Reply,
            _ => return Ok(object),
        };
        let incoming = engine::newest(comps);
        for (path, text) in self.held_items(uid) {
            if plan.drop_held.iter().any(|(_, p)| *p == path) {
                continue;
            }
            let calcard::Entry::ICalendar(ical) = calcard::Parser::new(&text).entry() else {
                plan.drop_held.push((uid.to_string(), path));
                continue;
            };
            let root = Node::from_ical(&ical);
            let (m, _) = ical::method(&ical);
            let Some(held_method) = m.as_deref().and_then(Method::parse) else {
                plan.drop_held.push((uid.to_string(), path));
                continue;
            };
            if held_method != wanted {
                continue;
            }
            let Some((_, held)) = engine::group_by_uid(&root)
                .into_iter()
                .find(|(u, _)| u == uid)
            else {
                plan.drop_held.push((uid.to_string(), path));
                continue;
            };
            if held_method == Method::Cancel && incoming > engine::newest(&held) {
                // A message newer than the CANCEL supersedes it.
                plan.drop_held.push((uid.to_string(), path));
                continue;
            }
            let from = root
                .text(&P::Other(HELD_FROM.into()))
                .or_else(|| held.iter().find_map(Node::organizer))
                .unwrap_or_default();
            let originator = Ok(Originator {
                mail: address::bare(&from),
                address: address::canonical(&from),
                via: Via::From,
                sent_by: None,
                proof: Proof::From,
            });
            let zones = Zones::of(&root);
            let d = engine::apply(
                Some(&object),
                &Input {
                    method: held_method,
                    uid,
                    comps: held,
                    zones: &zones,
                    originator: &originator,
                    sender_mail: &[],
                    identity: &self.cfg.identity,
                    trust: Trust {
                        sent_by: &self.cfg.identity.trusted_sent_by,
                    },
                },
            );
            tracing::info!(uid, method = %held_method, effect = d.effect.as_str(), "held message applied");
            match (held_method, d.effect) {
                (Method::Reply, Effect::Held) => {}
                (Method::Reply, _) => plan.drop_held.push((uid.to_string(), path)),
                _ => {}
            }
            if let Some(o) = d.object {
                object = o;
            }
        }
        Ok(object)
    }

    /// The held iTIP objects of a UID, oldest first.
    fn held_items(&self, uid: &str) -> Vec<(PathBuf, String)> {
        self.state.held(uid)
    }

    /// The facts the policies match on, for one UID of one object. The
    /// costly ones (recurrences, busy time) only for what would be answered.
    #[allow(clippy::too_many_arguments)]
    fn verdict(
        &mut self,
        obj: &CalObject,
        root: &Node,
        uid: &str,
        comps: &[Node],
        originator: &Result<Originator, String>,
        d: &Decision,
        mail: &Mail,
        origin: Origin<'_>,
        now: DateTime<Utc>,
        budget: &mut Budget,
    ) -> anyhow::Result<Verdict> {
        let Some(method) = obj.kind else {
            return Ok(policy::decide(
                &[],
                &Facts::new(Method::Request, comps, now),
            ));
        };
        let answerable = (d.invitation.is_some() && d.no_answer.is_none())
            || (d.role == Role::Organizer && d.effect == Effect::Recorded);
        let mut facts = Facts::new(method, comps, now);
        facts.sender = mail.from.as_deref();
        facts.originator = originator.as_ref().ok();
        facts.valid = !obj.fatal;
        facts.account = origin.account;
        facts.folder = origin.folder;
        self.gather.gather(
            &mut facts,
            root,
            uid,
            self.store.as_mut(),
            &self.cfg.identity,
            answerable,
            budget,
        )?;
        Ok(policy::decide(&self.cfg.policies, &facts))
    }

    /// Plan the answer a policy asked for, unless a never-answer rule
    /// forbids it; returns what the outcome says about it.
    fn answer(
        &mut self,
        plan: &mut Plan,
        obj: &CalObject,
        it: &mut Item,
        mail: &Mail,
        now: DateTime<Utc>,
        budget: &mut Budget,
    ) -> anyhow::Result<String> {
        let action = it.verdict.action;
        let Some(partstat) = action.partstat() else {
            return Ok(format!("not sent: {} does not answer", action.as_str()));
        };
        let method = it.method;
        let d = &it.decision;
        if mail.auto_submitted_value.as_deref() == Some("auto-replied") {
            return Ok("not sent: the mail is itself an automatic reply (Auto-Submitted: auto-replied), and answering it could start a loop (RFC 3834)".into());
        }
        let me_name = self.cfg.identity.name.as_deref();
        let zones = Zones::of(&Node::from_ical(&obj.ical));
        let (built, object_after) = match (d.role, method, d.effect) {
            (Role::Attendee, Method::Request | Method::Add, _) => {
                let Some(inv) = d.invitation.clone() else {
                    return Ok(match d.effect {
                        Effect::Unchanged | Effect::Stale => {
                            "not sent: this version was already handled".into()
                        }
                        Effect::Refused => "not sent: the message was refused".into(),
                        Effect::Ignored => "not sent: the message changed nothing".into(),
                        _ => "not sent: I am not an attendee of this event".into(),
                    });
                };
                if let Some(why) = &d.no_answer {
                    return Ok(format!("not sent: {why}"));
                }
                let organizer = it.comps.iter().find_map(Node::organizer);
                match organizer.as_deref() {
                    None => return Ok("not sent: the invitation names no organizer".into()),
                    Some(o) if self.cfg.identity.is_me(o) => {
                        return Ok("not sent: I am the organizer".into())
                    }
                    Some(o) if is_the_list(mail, o) => {
                        return Ok(format!(
                            "not sent: the organizer {} is the mailing list the invitation came through; an automatic answer would go to the whole list",
                            address::bare(o)
                        ))
                    }
                    _ => {}
                }
                // Already filed (a replayed message): answer from the store.
                let object = match &d.object {
                    Some(o) => o.clone(),
                    None => match self.current(plan, &it.uid)? {
                        Some(s) => s,
                        None => return Ok("not sent: the event is not in the store".into()),
                    },
                };
                let inst = Instances::of(Some(&object), &it.comps, &zones);
                // Components that ask for no answer (RSVP=FALSE) are not answered.
                let asked: Vec<Option<Instant>> = inv
                    .rids()
                    .into_iter()
                    .filter(|rid| {
                        inst.find(&object, *rid)
                            .is_some_and(|c| !rsvp_false(c, &inv.me))
                    })
                    .collect();
                if asked.is_empty() {
                    return Ok("not sent: the organizer asks for no answer (RSVP=FALSE)".into());
                }
                // Never answer the past: the event must go on after now
                // (expanded from now, within the message's budget).
                if recur::is_over(&object, &it.uid, now.timestamp(), budget) == Some(true) {
                    return Ok("not sent: every occurrence of the event is over".into());
                }
                let mut answered = object.clone();
                set_my_partstat(&mut answered, &inv.me, partstat, &asked, &inst);
                let built = reply::build_reply(&reply::ReplyRequest {
                    object: &answered,
                    instances: &inst,
                    tz_source: Some(&obj.ical),
                    me: &inv.me,
                    my_name: me_name,
                    partstat,
                    recurrence_ids: &asked,
                    comment: it.verdict.comment.as_deref(),
                    request: Some(mail),
                    now,
                });
                (built, Some(answered))
            }
            (Role::Organizer, Method::Counter | Method::Refresh, Effect::Recorded)
                if (method == Method::Counter && action == Action::Decline)
                    || (method == Method::Refresh && action == Action::Accept) =>
            {
                let Some(stored) = self.current(plan, &it.uid)? else {
                    return Ok("not sent: the event is not in the store".into());
                };
                if engine::is_unverified(&stored) {
                    return Ok("not sent: I learned this event from mail that only claimed to come from me, so imipd sends nothing about it".into());
                }
                let Ok(who) = &it.originator else {
                    return Ok("not sent: the sender is not the attendee it speaks for".into());
                };
                let me = engine::stored_organizer(&stored).unwrap_or_default();
                let inst = Instances::of(Some(&stored), &it.comps, &zones);
                let author = reply::Organizer {
                    me: &me,
                    my_name: me_name,
                    comment: it.verdict.comment.as_deref(),
                    request: Some(mail),
                    now,
                };
                let built = if method == Method::Counter {
                    reply::build_declinecounter(&stored, &inst, &it.comps[0], &who.address, &author)
                } else {
                    reply::build_refresh_answer(&stored, &it.comps[0], &who.address, &author)
                };
                (built, None)
            }
            (
                Role::Organizer,
                Method::Request | Method::Add | Method::Publish | Method::Cancel,
                _,
            ) => return Ok("not sent: I am the organizer of this event".into()),
            _ => {
                return Ok(format!(
                    "not sent: a {method} is not answered with {}",
                    action.as_str()
                ))
            }
        };
        // A message that cannot be answered is reported, not retried.
        let outgoing = match built {
            Ok(o) => o,
            Err(e) => return Ok(format!("not sent: {e:#}")),
        };
        if outgoing.to.iter().any(|t| self.cfg.identity.is_me(t)) {
            return Ok("not sent: it would go to one of my own addresses".into());
        }
        if self.outbox.answered(&outgoing.key) || plan.answers.iter().any(|a| a.key == outgoing.key)
        {
            // A replay: make sure my copy still records the answer.
            if let Some(after) = object_after {
                if self.current(plan, &it.uid)?.as_ref() != Some(&after) {
                    it.decision.object = Some(after);
                }
            }
            return Ok("not sent: this version was already answered".into());
        }
        let counterpart = address::cap_key(&outgoing.counterpart);
        let recent = self.outbox.recent(&counterpart, now)
            + plan
                .answers
                .iter()
                .filter(|a| address::cap_key(&a.counterpart) == counterpart)
                .count();
        if recent >= self.cfg.max_replies_per_hour as usize {
            return Ok(format!(
                "not sent, held back by a cap: {recent} answers to {counterpart} in the last hour reach outgoing.max_replies_per_hour = {}; the invitation stays unanswered in the store and can be answered later",
                self.cfg.max_replies_per_hour
            ));
        }
        let total = self.outbox.recent_all(now) + plan.answers.len();
        if total >= self.cfg.max_answers_per_hour as usize {
            return Ok(format!(
                "not sent, held back by a cap: {total} automatic answers in the last hour reach outgoing.max_answers_per_hour = {}; the invitation stays unanswered in the store and can be answered later",
                self.cfg.max_answers_per_hour
            ));
        }
        let text = format!(
            "{} to {}: {}",
            if self.dry_run {
                "would be queued"
            } else {
                "queued"
            },
            outgoing.to.join(", "),
            outgoing.summary
        );
        plan.answers.push(outgoing);
        if let Some(after) = object_after {
            it.decision.object = Some(after);
        }
        Ok(text)
    }

    /// Carry out a plan in the crash-safe order: store, outbox and answered
    /// ledger, held and recorded messages, quarantine copy. Returns the file
    /// written for each result.
    fn execute(
        &mut self,
        plan: Plan,
        c: &Classified,
        raw: &[u8],
        origin: Origin<'_>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Vec<(usize, String)>> {
        let mut files = Vec::new();
        for w in plan.writes {
            let tz = c.objects.get(w.tz_source).map(|o| &o.ical);
            let location = self.store.put(&w.uid, &w.object, tz)?;
            files.extend(w.results.into_iter().map(|i| (i, location.clone())));
        }
        for a in plan.answers {
            self.outbox.enqueue(a, now)?;
        }
        for (uid, text) in &plan.holds {
            self.state.hold(uid, text)?;
        }
        for (uid, p) in &plan.drop_held {
            self.state.release_held(uid, std::slice::from_ref(p));
        }
        for (method, uid, text) in &plan.attention {
            let p = self.state.record_attention(method.as_str(), uid, text)?;
            tracing::info!(uid, %method, file = %p.display(), "kept for a person to act on");
        }
        if plan.quarantine && !origin.can_move {
            let p = self.state.quarantine(origin.source, raw)?;
            tracing::info!(file = %p.display(), "message quarantined");
        }
        Ok(files)
    }
}

/// Who a group of components (one UID) speaks for: the ORGANIZER, or the
/// replying ATTENDEE of the first component that names the sender.
fn speaker(method: Method, comps: &[Node], who: &MailIdentity) -> Result<Originator, String> {
    let mut first_err = None;
    for c in comps {
        match originator::originator(method, c, who) {
            Ok(o) => return Ok(o),
            Err(e) => {
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        }
    }
    Err(first_err.unwrap_or_else(|| "the message names nobody".into()))
}

/// Whether the organizer is the mailing list the mail came through
/// (List-Post, or the address List-Id stands for).
fn is_the_list(mail: &Mail, organizer: &str) -> bool {
    let org = address::bare(organizer);
    if mail.list_post.contains(&org) {
        return true;
    }
    let Some(id) = &mail.list_id else {
        return false;
    };
    match org.split_once('@') {
        Some((local, domain)) => *id == format!("{local}.{domain}") || *id == org,
        None => false,
    }
}

/// Whether my ATTENDEE in a component says RSVP=FALSE.
fn rsvp_false(c: &Node, me: &str) -> bool {
    c.entries.iter().any(|e| {
        e.name == P::Attendee
            && ical::cal_address(e).as_deref() == Some(me)
            && ical::param(e, &Pn::Rsvp).is_some_and(|v| v.eq_ignore_ascii_case("FALSE"))
    })
}

/// Set my PARTSTAT on the components an answer covers.
fn set_my_partstat(
    root: &mut Node,
    me: &str,
    partstat: &str,
    rids: &[Option<Instant>],
    inst: &Instances,
) {
    for c in root.children.iter_mut().filter(|c| c.is_scheduling()) {
        if !rids.contains(&inst.rid(c)) {
            continue;
        }
        for e in c.entries.iter_mut().filter(|e| e.name == P::Attendee) {
            if ical::cal_address(e).as_deref() == Some(me) {
                ical::set_param(
                    e,
                    Pn::Partstat,
                    ICalendarParameterValue::Text(partstat.to_string()),
                );
                ical::remove_param(e, &Pn::Rsvp);
            }
        }
    }
}
