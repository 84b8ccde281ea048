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
//!
//! Two more ways the processor answers live beside it: [`answer`] (the one
//! answer function, for policies, `respond` and store edits alike) and
//! [`respond`] (`respond`, `counter`, and the answers the calendar gives:
//! edits and deletions).

pub(crate) mod answer;
pub mod respond;

use std::path::PathBuf;
use std::sync::Arc;

use calcard::icalendar::ICalendarProperty as P;
use chrono::{DateTime, Utc};

use crate::classify::{self, Classified};
use crate::config::Config;
use crate::engine::{self, Decision, Effect, Input, Instances, Role, Trust};
use crate::gather::Gatherer;
use crate::ical::{self, Node};
use crate::itip::{CalObject, Method};
use crate::mime::Mail;
use crate::mine::{self, Records};
use crate::originator::{self, MailIdentity, Originator, Proof, Via};
use crate::outbox::Outbox;
use crate::outcome::{ItemOutcome, MessageOutcome, Origin, ReplyOutcome};
use crate::policy::{self, Action, Facts, Verdict};
use crate::recur::Budget;
use crate::state::State;
use crate::store::{self, CalendarStore};
use crate::time::Zones;
use crate::trust::Require;
use crate::{address, describe, reply};
use answer::{Answer, Ask, Note};

/// Processes messages against one store, state and outbox.
pub struct Processor {
    pub cfg: Arc<Config>,
    pub store: Box<dyn CalendarStore>,
    pub state: State,
    pub outbox: Outbox,
    pub dry_run: bool,
    /// What imipd remembers of the invitations to me it filed.
    pub(crate) records: Records,
    /// Store files looked at for edits, and how they were then (size,
    /// time, inode): an unchanged file is not read again.
    pub(crate) edit_stamps: std::collections::HashMap<String, String>,
    gather: Gatherer,
    hooks: Hooks,
}

/// Decision hooks (`action = "command"`): run at once (`once`, `process`),
/// or, in the service, handed out so that the program runs off the
/// processor and the person's other messages go on meanwhile
/// ([`Processor::defer_hooks`]).
#[derive(Default)]
struct Hooks {
    deferred: bool,
    /// Decisions for the message in hand, by (source, UID).
    answers: std::collections::HashMap<(String, String), crate::hook::Decision>,
    /// The hook the message in hand waits for.
    wanted: Option<HookRequest>,
}

/// A decision hook a message waits for: run it (off the processor), then
/// give the answer back with [`Processor::hook_answered`] and hand the
/// message in again.
pub struct HookRequest {
    hook: policy::Hook,
    input: Vec<u8>,
    key: (String, String),
}

impl HookRequest {
    /// Run the program (blocking, at most its timeout).
    pub fn run(self) -> HookAnswer {
        let decision = crate::hook::run(&self.hook, &self.input);
        HookAnswer {
            key: self.key,
            decision,
        }
    }
}

/// What a decision hook answered, for [`Processor::hook_answered`].
pub struct HookAnswer {
    key: (String, String),
    decision: crate::hook::Decision,
}

/// Planning stopped: the message waits for its decision hook.
#[derive(Debug, thiserror::Error)]
#[error("the message waits for its decision hook")]
struct HookDeferred;

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
    /// What to remember about invitations to me (answers queued, why
    /// none was).
    notes: Vec<Note>,
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
    /// The time zones of its iTIP object.
    zones: Zones,
    method: Method,
    uid: String,
    comps: Vec<Node>,
    originator: Result<Originator, String>,
    decision: Decision,
    verdict: Verdict,
}

/// How often a message is planned again when the calendar changes under it.
const CHANGED_TRIES: usize = 3;
/// How many times one message is planned again after the store found an
/// event changed between imipd's read and its write; then the message is
/// left for the next pass.
const MAX_CONFLICT_RETRIES: u32 = 5;

/// The property imipd keeps on a held object: who it was from.
const HELD_FROM: &str = "X-IMIPD-HELD-FROM";
/// And how that was proven (`smime`, `dkim`, ...; absent: the header only).
const HELD_PROOF: &str = "X-IMIPD-HELD-PROOF";

impl Processor {
    /// Open the store, the state (taking its lock) and the outbox; for a dry
    /// run, read them only: nothing is created, locked or written.
    pub fn open(cfg: Arc<Config>, dry_run: bool) -> anyhow::Result<Processor> {
        if dry_run {
            return Ok(Processor {
                store: store::open(&cfg.store, true)?,
                outbox: Outbox::open_read_only(&cfg.state)?,
                state: State::open_read_only(&cfg.state),
                records: Records::new(&cfg.state),
                edit_stamps: Default::default(),
                dry_run,
                gather: Gatherer::new(policy::needs(&cfg.policies), cfg.address_book.clone()),
                hooks: Hooks::default(),
                cfg,
            });
        }
        let state = State::open(&cfg.state, cfg.lock_timeout)?;
        // Opening removes temp files a killed run left: not those of a
        // `respond` writing beside it.
        let write = state.write_lock(cfg.lock_timeout)?;
        let store = store::open(&cfg.store, false)?;
        let outbox = Outbox::open(state.dir())?;
        drop(write);
        Ok(Processor {
            store,
            outbox,
            records: Records::new(state.dir()),
            edit_stamps: Default::default(),
            state,
            dry_run,
            gather: Gatherer::new(policy::needs(&cfg.policies), cfg.address_book.clone()),
            hooks: Hooks::default(),
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

    /// Open to answer beside a running imipd (`respond`, `counter`, `mcp`):
    /// the store, the state without its process lock, and the outbox.
    /// Call under [`State::write_lock`]: opening removes the store's temp
    /// files.
    pub fn open_shared(cfg: Arc<Config>) -> anyhow::Result<Processor> {
        let state = State::open_shared(&cfg.state)?;
        Ok(Processor {
            store: store::open(&cfg.store, false)?,
            outbox: Outbox::open_shared(state.dir())?,
            records: Records::new(state.dir()),
            edit_stamps: Default::default(),
            state,
            dry_run: false,
            gather: Gatherer::new(policy::needs(&cfg.policies), cfg.address_book.clone()),
            hooks: Hooks::default(),
            cfg,
        })
    }

    /// Take the write lock (nothing for a dry run) and catch up with what
    /// another imipd wrote meanwhile (the answered ledger).
    pub fn lock(&mut self) -> anyhow::Result<Option<crate::state::WriteLock>> {
        if self.dry_run {
            return Ok(None);
        }
        let lock = self.state.write_lock(self.cfg.lock_timeout)?;
        self.outbox.refresh()?;
        Ok(Some(lock))
    }

    /// Handle one raw message.
    pub fn process_from(&mut self, raw: &[u8], origin: Origin<'_>) -> MessageOutcome {
        let out = self.process_once(raw, origin);
        // The hooks' answers were for this message only (a deferred one
        // keeps them for its next try).
        if self.hooks.wanted.is_none() {
            self.hooks.answers.retain(|(s, _), _| s != origin.source);
        }
        out
    }

    /// Run decision hooks off the processor: a message whose policy asks a
    /// hook ends its try at once, [`Processor::take_hook_request`] says
    /// which hook to run, and the message is handed in again after
    /// [`Processor::hook_answered`].
    pub fn defer_hooks(&mut self) {
        self.hooks.deferred = true;
    }

    /// The hook the last message handed in waits for (its outcome is then
    /// no outcome: hand it in again once the hook answered).
    pub fn take_hook_request(&mut self) -> Option<HookRequest> {
        self.hooks.wanted.take()
    }

    /// A hook's answer, for the next try of its message.
    pub fn hook_answered(&mut self, a: HookAnswer) {
        self.hooks.answers.insert(a.key, a.decision);
    }

    fn process_once(&mut self, raw: &[u8], origin: Origin<'_>) -> MessageOutcome {
        let _lock = match self.lock() {
            Ok(l) => l,
            Err(e) => {
                let mut out =
                    MessageOutcome::failed_to_read(origin.source, format!("{e:#}"), self.dry_run);
                out.stop = true;
                return out;
            }
        };
        let mut c = classify::classify_with(raw, origin.source, &self.cfg.limits, &self.cfg.trust);
        if !origin.problems.is_empty() {
            c.report.valid = false;
            c.report
                .problems
                .splice(0..0, origin.problems.iter().cloned());
        }
        let now = crate::clock::now();
        let uids: Vec<String> = c
            .objects
            .iter()
            .flat_map(|o| {
                o.components
                    .iter()
                    .filter_map(|&k| ical::uid(&o.ical.components[k]))
            })
            .collect();
        let (mut attempt, mut conflicts) = (0, 0);
        loop {
            attempt += 1;
            let mut out = MessageOutcome::new(&c, origin.source, self.dry_run);
            // An edit another program made to an event this message is
            // about is answered before the message changes the event.
            if !self.dry_run {
                match self.answer_edits(Some(&uids), now) {
                    Ok(edits) => edits.iter().for_each(|e| tracing::info!("{e}")),
                    Err(e) => {
                        out.error = Some(format!("{e:#}"));
                        out.stop = true;
                        return out;
                    }
                }
            }
            let read: Vec<(String, Option<String>)> = uids
                .iter()
                .map(|u| (u.clone(), respond::file_stamp(&self.store.location(u))))
                .collect();
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
            // Another program edited an event while this message was
            // planned: plan again from what the store holds now.
            let changed = plan.writes.iter().find(|w| {
                let now = respond::file_stamp(&self.store.location(&w.uid));
                read.iter().any(|(u, before)| *u == w.uid && *before != now)
            });
            if let Some(w) = changed {
                if attempt < CHANGED_TRIES {
                    tracing::info!(uid = %w.uid, "the event changed in the calendar while this message was planned; planning again");
                    continue;
                }
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
                Err(e) if store::is_conflict(&e) && conflicts < MAX_CONFLICT_RETRIES => {
                    conflicts += 1;
                    tracing::info!(
                        source = origin.source,
                        attempt = conflicts,
                        "{e:#}; reading it again"
                    );
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
        let who = MailIdentity::of(mail, &self.cfg.trust.authserv_ids, &self.cfg.trust.relays);
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
                let originator = speaker(method, &comps, &who, obj.signed.as_ref());
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
                                require_proof: self.cfg.trust.require == Require::Authenticated,
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
                    zones: zones.clone(),
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
                start: None,
                end: None,
                place: None,
                organizer: None,
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
                            require_proof: self.cfg.trust.require == Require::Authenticated,
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
        let master = it
            .comps
            .iter()
            .find(|c| c.prop(&P::RecurrenceId).is_none())
            .or(it.comps.first());
        let times = master.map(|c| describe::times(c, &it.zones, None));
        ItemOutcome {
            method: it.method.to_string(),
            uid: it.uid.clone(),
            summary: it.comps.first().and_then(|c| c.text(&P::Summary)),
            start: times.as_ref().and_then(|t| t.start.clone()),
            end: times.as_ref().and_then(|t| t.end.clone()),
            place: master.and_then(|c| describe::text(c, P::Location)),
            organizer: master.and_then(describe::organizer).map(|p| p.address),
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
        // Why an invitation to me stays unanswered, kept for `pending`.
        if let (Role::Attendee, Method::Request | Method::Add, Some(inv)) =
            (it.decision.role, it.method, &it.decision.invitation)
        {
            let answered = out.reply.as_ref().is_some_and(|r| {
                r.is_queued() || r.status == crate::outcome::ReplyStatus::AlreadyAnswered
            });
            if !answered {
                let text = match &out.reply {
                    Some(r) => r.reason.clone().unwrap_or_else(|| r.text.clone()),
                    None => match &it.decision.no_answer {
                        Some(why) => why.clone(),
                        None => format!(
                            "no policy answers it (policy {}: {})",
                            it.verdict.policy,
                            it.verdict.action.as_str()
                        ),
                    },
                };
                plan.notes.push(Note::why(
                    &it.uid,
                    &inv.me,
                    inv.rids().into_iter().map(mine::rid_key).collect(),
                    mine::Why {
                        text,
                        policy: Some(it.verdict.policy.clone()),
                        at: now.timestamp(),
                    },
                ));
            }
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
                    if o.proof.is_proven() {
                        root.set(ical::text_entry(
                            P::Other(HELD_PROOF.into()),
                            o.proof.name(),
                        ));
                    }
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
            let proof = root
                .text(&P::Other(HELD_PROOF.into()))
                .and_then(|p| Proof::parse(&p))
                .unwrap_or(Proof::From);
            let originator = Ok(Originator {
                mail: address::bare(&from),
                address: address::canonical(&from),
                via: Via::From,
                sent_by: None,
                proof,
                unproven: None,
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
                        require_proof: self.cfg.trust.require == Require::Authenticated,
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
        let mut v = policy::decide(&self.cfg.policies, &facts);
        if v.action == Action::Command {
            let Some(hook) = v.hook.clone() else {
                v.action = Action::File;
                return Ok(v);
            };
            let key = (origin.source.to_string(), uid.to_string());
            let said = match self.hooks.answers.get(&key) {
                Some(d) => d.clone(),
                None => {
                    let input = self.hook_input(
                        root, uid, comps, originator, d, method, mail, origin, &v, now,
                    )?;
                    if self.hooks.deferred {
                        self.hooks.wanted = Some(HookRequest { hook, input, key });
                        return Err(HookDeferred.into());
                    }
                    crate::hook::run(&hook, &input)
                }
            };
            v.why = match &said.failure {
                None => format!("{}; the hook answered {}", v.why, said.action.as_str()),
                Some(f) => format!("{}; {f}", v.why),
            };
            v.action = said.action;
            if said.comment.is_some() {
                v.comment = said.comment;
            }
        }
        Ok(v)
    }

    /// What a decision hook reads: the invitation as `pending --json` shows
    /// it (as this message leaves it), with `method`, the proven
    /// `originator`, the `policy`, the mail's `from`, `account`, `folder`.
    #[allow(clippy::too_many_arguments)]
    fn hook_input(
        &mut self,
        root: &Node,
        uid: &str,
        comps: &[Node],
        originator: &Result<Originator, String>,
        d: &Decision,
        method: Method,
        mail: &Mail,
        origin: Origin<'_>,
        v: &Verdict,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Vec<u8>> {
        let object = match &d.object {
            Some(o) => o.clone(),
            None => match self.store.get(uid)? {
                Some(o) => o,
                None => {
                    let mut o = Node::from_ical(&ical::new_calendar(None));
                    o.children.extend(comps.iter().cloned());
                    o
                }
            },
        };
        let mut zones = Zones::of(root);
        zones.add(&object);
        let inst = Instances::of(Some(&object), comps, &zones);
        let me = crate::mine::my_address(&object, &self.cfg.identity);
        // The component the message is about: the master, else the first.
        let c = comps
            .iter()
            .find(|c| c.prop(&P::RecurrenceId).is_none())
            .or(comps.first())
            .cloned()
            .unwrap_or_else(|| Node::from_ical(&ical::new_calendar(None)));
        let rid = inst.rid(&c);
        let zone = describe::zone(&c, &zones);
        let spans: Vec<(i64, i64)> = describe::span(&c, &zones).into_iter().collect();
        let mut conflicts = Vec::new();
        for (other, s, e) in self.store.busy_overlaps(
            &crate::store::BusyQuery {
                spans: &spans,
                exclude_uid: uid,
                identity: &self.cfg.identity,
                now: now.timestamp(),
            },
            20,
        )? {
            let summary = self
                .store
                .get(&other)?
                .and_then(|o| o.children.into_iter().find(|x| x.is_scheduling()))
                .and_then(|x| describe::text(&x, P::Summary));
            conflicts.push(crate::pending::Conflict {
                uid: other,
                summary,
                start: describe::rfc3339(s, zone),
                end: describe::rfc3339(e, zone),
            });
        }
        let partstat = me.as_ref().and_then(|m| {
            c.entries
                .iter()
                .find(|e| e.name == P::Attendee && ical::cal_address(e).as_deref() == Some(m))
                .map(ical::partstat)
        });
        let item = crate::pending::PendingItem {
            schema: (),
            kind: match method {
                Method::Counter => "counter",
                Method::Refresh => "refresh",
                Method::DeclineCounter => "declinecounter",
                _ => "invitation",
            },
            uid: uid.to_string(),
            recurrence_id: rid.and_then(|r| describe::instant_text(r, zone)),
            summary: describe::text(&c, P::Summary),
            times: describe::times(&c, &zones, None),
            location: describe::text(&c, P::Location),
            description: describe::text(&c, P::Description),
            recurrence: describe::rrule(&c),
            organizer: describe::organizer(&c),
            attendees: describe::attendees(&c),
            me: me.as_deref().map(describe::address_text),
            partstat,
            sequence: c.sequence(),
            verified: d.no_answer.is_none() && !engine::is_unverified(&object),
            why: "deciding now: this hook decides".into(),
            policy: Some(v.policy.clone()),
            decided: None,
            conflicts,
            from: mail.from.clone(),
            comment: describe::text(&c, P::Comment),
            proposed: None,
            file: None,
        };
        let mut value = serde_json::to_value(&item)?;
        if let Some(o) = value.as_object_mut() {
            o.insert("method".into(), method.as_str().into());
            o.insert(
                "originator".into(),
                serde_json::to_value(originator.as_ref().ok())?,
            );
            o.insert("effect".into(), d.effect.as_str().into());
            o.insert("account".into(), origin.account.into());
            o.insert("folder".into(), origin.folder.into());
            o.insert("dry_run".into(), self.dry_run.into());
        }
        Ok(serde_json::to_vec(&value)?)
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
    ) -> anyhow::Result<ReplyOutcome> {
        let action = it.verdict.action;
        let Some(partstat) = action.partstat() else {
            return Ok(ReplyOutcome::not_sent(format!(
                "{} does not answer",
                action.as_str()
            )));
        };
        let method = it.method;
        let d = &it.decision;
        if self.cfg.trust.require == Require::Authenticated {
            match &it.originator {
                Ok(o) if o.proof.is_proven() => {}
                Ok(o) => {
                    return Ok(ReplyOutcome::not_sent(format!(
                        "{} is not authenticated ({}), and [trust] require = \"authenticated\" answers only a proven originator",
                        o.address.trim_start_matches("mailto:"),
                        o.unproven.as_deref().unwrap_or("only the From header says who sent it")
                    )))
                }
                Err(why) => {
                    return Ok(ReplyOutcome::not_sent(format!(
                        "the originator is not authenticated ({why}), and [trust] require = \"authenticated\""
                    )))
                }
            }
        }
        if mail.auto_submitted_value.as_deref() == Some("auto-replied") {
            return Ok(ReplyOutcome::not_sent("the mail is itself an automatic reply (Auto-Submitted: auto-replied), and answering it could start a loop (RFC 3834)"));
        }
        let me_name = self.cfg.identity.name.as_deref();
        let zones = Zones::of(&Node::from_ical(&obj.ical));
        let built = match (d.role, method, d.effect) {
            (Role::Attendee, Method::Request | Method::Add, _) => {
                let Some(inv) = d.invitation.clone() else {
                    return Ok(ReplyOutcome::not_sent(match d.effect {
                        Effect::Unchanged | Effect::Stale => "this version was already handled",
                        Effect::Refused => "the message was refused",
                        Effect::Ignored => "the message changed nothing",
                        _ => "I am not an attendee of this event",
                    }));
                };
                if let Some(why) = &d.no_answer {
                    return Ok(ReplyOutcome::not_sent(why.clone()));
                }
                if let Some(o) = it.comps.iter().find_map(Node::organizer) {
                    if !self.cfg.identity.is_me(&o) && is_the_list(mail, &o) {
                        return Ok(ReplyOutcome::not_sent(format!(
                            "the organizer {} is the mailing list the invitation came through; an automatic answer would go to the whole list",
                            address::bare(&o)
                        )));
                    }
                }
                // Already filed (a replayed message): answer from the store.
                let object = match &d.object {
                    Some(o) => o.clone(),
                    None => match self.current(plan, &it.uid)? {
                        Some(s) => s,
                        None => return Ok(ReplyOutcome::not_sent("the event is not in the store")),
                    },
                };
                let ask = Ask {
                    uid: &it.uid,
                    object: &object,
                    comps: &it.comps,
                    zones: &zones,
                    tz_source: Some(&obj.ical),
                    me: &inv.me,
                    partstat,
                    rids: inv.rids(),
                    comment: it.verdict.comment.as_deref(),
                    request: Some(mail),
                    manual: false,
                };
                let a = self.answer_invitation(&plan.answers, &ask, now, budget)?;
                return self.take(plan, it, a);
            }
            (Role::Organizer, Method::Counter | Method::Refresh, Effect::Recorded)
                if (method == Method::Counter && action == Action::Decline)
                    || (method == Method::Refresh && action == Action::Accept) =>
            {
                let Some(stored) = self.current(plan, &it.uid)? else {
                    return Ok(ReplyOutcome::not_sent("the event is not in the store"));
                };
                if engine::is_unverified(&stored) {
                    return Ok(ReplyOutcome::not_sent("I learned this event from mail that only claimed to come from me, so imipd sends nothing about it"));
                }
                let Ok(who) = &it.originator else {
                    return Ok(ReplyOutcome::not_sent(
                        "the sender is not the attendee it speaks for",
                    ));
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
                if method == Method::Counter {
                    reply::build_declinecounter(&stored, &inst, &it.comps[0], &who.address, &author)
                } else {
                    reply::build_refresh_answer(&stored, &it.comps[0], &who.address, &author)
                }
            }
            (
                Role::Organizer,
                Method::Request | Method::Add | Method::Publish | Method::Cancel,
                _,
            ) => return Ok(ReplyOutcome::not_sent("I am the organizer of this event")),
            _ => {
                return Ok(ReplyOutcome::not_sent(format!(
                    "a {method} is not answered with {}",
                    action.as_str()
                )))
            }
        };
        // A message that cannot be answered is reported, not retried.
        let outgoing = match built.and_then(|o| self.signed(o)) {
            Ok(o) => o,
            Err(e) => return Ok(ReplyOutcome::not_sent(format!("{e:#}"))),
        };
        if outgoing.to.iter().any(|t| self.cfg.identity.is_me(t)) {
            return Ok(ReplyOutcome::not_sent(
                "it would go to one of my own addresses",
            ));
        }
        if self.outbox.answered(&outgoing.key) || plan.answers.iter().any(|a| a.key == outgoing.key)
        {
            return Ok(ReplyOutcome::already(&outgoing, None));
        }
        if let Some(held) = self.cap(&plan.answers, &outgoing, None, now) {
            return Ok(held);
        }
        let out = ReplyOutcome::queued(&outgoing, None, self.dry_run);
        plan.answers.push(outgoing);
        Ok(out)
    }

    /// Put an answer to an invitation into the plan: the message, my copy
    /// with my answer, and what to remember.
    fn take(&self, plan: &mut Plan, it: &mut Item, a: Answer) -> anyhow::Result<ReplyOutcome> {
        Ok(match a {
            Answer::Queue {
                outgoing,
                after,
                note,
                out,
            } => {
                plan.answers.push(outgoing);
                plan.notes.push(note);
                it.decision.object = Some(after);
                out
            }
            Answer::Already { after, note, out } => {
                // A replay: make sure my copy still records the answer.
                if let Some(after) = after {
                    if self.current(plan, &it.uid)?.as_ref() != Some(&after) {
                        it.decision.object = Some(after);
                    }
                }
                plan.notes.extend(note);
                out
            }
            Answer::No(out) => out,
        })
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
        let written: Vec<String> = plan.writes.iter().map(|w| w.uid.clone()).collect();
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
        let declined: Vec<&str> = plan
            .attention
            .iter()
            .filter(|(m, _, _)| *m == Method::DeclineCounter)
            .map(|(_, uid, _)| uid.as_str())
            .collect();
        self.remember(&written, &plan.notes, &declined, now)?;
        if plan.quarantine && !origin.can_move {
            let p = self.state.quarantine(origin.source, raw)?;
            tracing::info!(file = %p.display(), "message quarantined");
        }
        Ok(files)
    }
}

/// Who a group of components (one UID) speaks for: the ORGANIZER, or the
/// replying ATTENDEE of the first component that names the sender.
fn speaker(
    method: Method,
    comps: &[Node],
    who: &MailIdentity,
    signed: Option<&crate::trust::Signature>,
) -> Result<Originator, String> {
    let mut first_err = None;
    for c in comps {
        match originator::originator(method, c, who, signed) {
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

#[cfg(test)]
mod tests;
