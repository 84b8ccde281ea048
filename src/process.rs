//! One message, start to end: classify it, decide per UID with the policies
//! and the iTIP engine, and execute in a crash-safe order — the store first,
//! then the answer into the durable outbox (keyed, so one request version is
//! answered once), then held and recorded messages. Produces one
//! [`MessageOutcome`] per message, printed as a line for people or as JSON
//! for scripts. With `dry_run` every decision is made and reported, and
//! nothing is written.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use calcard::icalendar::{
    ICalendarParameterName as Pn, ICalendarParameterValue, ICalendarProperty as P,
};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::classify::{self, Classified};
use crate::config::{Action, Config};
use crate::engine::{self, Decision, Effect, Input, Role};
use crate::ical::{self, Node};
use crate::itip::CalObject;
use crate::mime::Mail;
use crate::outbox::Outbox;
use crate::policy::{self, Facts, Needs, Verdict};
use crate::state::State;
use crate::store::Store;
use crate::{conflict, reply};

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
    pub source: String,
    pub message_id: Option<String>,
    pub from: Option<String>,
    pub imip: bool,
    pub valid: bool,
    pub suspicious: bool,
    pub problems: Vec<String>,
    pub results: Vec<ItemOutcome>,
    /// A policy asked to quarantine the message.
    pub quarantine: bool,
    /// Set when the message could not be handled and must be retried.
    pub error: Option<String>,
    pub dry_run: bool,
}

/// What happened for one UID of one iTIP object.
#[derive(Debug, Clone, Serialize)]
pub struct ItemOutcome {
    pub method: String,
    pub uid: String,
    pub summary: Option<String>,
    pub role: Role,
    pub effect: Effect,
    pub reason: String,
    /// The policy that matched (`default` when none did), and why.
    pub policy: String,
    pub action: Action,
    pub policy_reason: String,
    /// The answer: queued, or why none was sent.
    pub reply: Option<String>,
    /// The store file written, if any.
    pub file: Option<PathBuf>,
}

impl MessageOutcome {
    /// Whether the message must be tried again later.
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    fn new(c: &Classified, source: &str, dry_run: bool) -> MessageOutcome {
        MessageOutcome {
            source: source.to_string(),
            message_id: c.report.message_id.clone(),
            from: c.report.from.clone(),
            imip: c.report.imip,
            valid: c.report.valid,
            suspicious: c.report.suspicious,
            problems: c.report.problems.clone(),
            results: Vec::new(),
            quarantine: false,
            error: None,
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
            if let Some(reply) = &r.reply {
                write!(f, "; reply {reply}")?;
            }
        }
        Ok(())
    }
}

/// Processes messages against one store, state and outbox.
pub struct Processor<'a> {
    pub cfg: &'a Config,
    pub store: Store,
    pub state: State,
    pub outbox: Outbox,
    pub dry_run: bool,
    needs: Needs,
    address_book: Option<HashSet<String>>,
}

impl<'a> Processor<'a> {
    pub fn open(cfg: &'a Config, dry_run: bool) -> anyhow::Result<Processor<'a>> {
        let state = State::open(&cfg.state, cfg.lock_timeout)?;
        Ok(Processor {
            cfg,
            store: Store::open(&cfg.store)?,
            outbox: Outbox::open(state.dir())?,
            state,
            dry_run,
            needs: policy::needs(&cfg.policies),
            address_book: None,
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
        let mut out = MessageOutcome::new(&c, origin.source, self.dry_run);
        if let Err(e) = self.apply_all(&c, raw, origin, &mut out) {
            out.error = Some(format!("{e:#}"));
        }
        out
    }

    fn apply_all(
        &mut self,
        c: &Classified,
        raw: &[u8],
        origin: Origin<'_>,
        out: &mut MessageOutcome,
    ) -> anyhow::Result<()> {
        let Some(mail) = &c.mail else { return Ok(()) };
        let now = crate::clock::now();
        let authenticated = policy::authenticated(
            &mail.authentication_results,
            &self.cfg.trusted_authserv_ids,
            mail.from.as_deref(),
        );
        // Decide first, for every item: a quarantine verdict holds the whole message.
        let mut plan: Vec<(usize, String, Vec<Node>, Verdict)> = Vec::new();
        for (i, obj) in c.objects.iter().enumerate() {
            let root = Node::from_ical(&obj.ical);
            for (uid, comps) in engine::group_by_uid(&root) {
                let facts =
                    self.facts(obj, &root, &uid, &comps, mail, authenticated, origin, now)?;
                let verdict = policy::decide(&self.cfg.policies, &facts);
                plan.push((i, uid, comps, verdict));
            }
        }
        if let Some((_, _, _, v)) = plan.iter().find(|p| p.3.action == Action::Quarantine) {
            out.quarantine = true;
            if !self.dry_run && !origin.can_move {
                let p = self.state.quarantine(origin.source, raw)?;
                tracing::info!(file = %p.display(), "message quarantined");
            }
            for (i, uid, comps, _) in &plan {
                out.results.push(self.item(
                    &c.objects[*i],
                    uid,
                    comps,
                    Role::Attendee,
                    Effect::Ignored,
                    format!("quarantined by policy {}", v.policy),
                    v,
                ));
            }
            return Ok(());
        }
        for (i, obj) in c.objects.iter().enumerate() {
            let entitled = c.sender_problems.get(i).is_some_and(Option::is_none);
            if obj.unusable {
                let v = plan
                    .iter()
                    .find(|p| p.0 == i)
                    .map(|p| p.3.clone())
                    .unwrap_or_else(|| policy::decide(&[], &Facts::default()));
                let uid = obj
                    .components
                    .first()
                    .and_then(|&k| ical::uid(&obj.ical.components[k]))
                    .unwrap_or_default();
                out.results.push(self.item(
                    obj,
                    &uid,
                    &[],
                    Role::Attendee,
                    Effect::Ignored,
                    format!(
                        "the calendar data cannot be acted on safely: {}",
                        obj.problems.join("; ")
                    ),
                    &v,
                ));
                continue;
            }
            for (_, uid, comps, verdict) in plan.iter().filter(|p| p.0 == i) {
                let item =
                    self.apply_item(obj, uid, comps.clone(), entitled, verdict, mail, now)?;
                out.results.push(item);
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn item(
        &self,
        obj: &CalObject,
        uid: &str,
        comps: &[Node],
        role: Role,
        effect: Effect,
        reason: String,
        v: &Verdict,
    ) -> ItemOutcome {
        ItemOutcome {
            method: obj.method.clone().unwrap_or_default(),
            uid: uid.to_string(),
            summary: comps.first().and_then(|c| c.text(&P::Summary)),
            role,
            effect,
            reason,
            policy: v.policy.clone(),
            action: v.action,
            policy_reason: v.why.clone(),
            reply: None,
            file: None,
        }
    }

    /// The facts the policies match on, for one UID of one object.
    #[allow(clippy::too_many_arguments)]
    fn facts(
        &mut self,
        obj: &CalObject,
        root: &Node,
        uid: &str,
        comps: &[Node],
        mail: &Mail,
        authenticated: bool,
        origin: Origin<'_>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Facts> {
        let first = comps.first();
        let master = comps.iter().find(|c| c.recurrence_id().is_none()).or(first);
        let organizer = comps.iter().find_map(Node::organizer);
        // Expanding recurrences costs; only the rules that look at time need it.
        let occurrences = if self.needs.start || self.needs.conflict {
            conflict::occurrences(root, uid, now)
        } else {
            Vec::new()
        };
        let mut facts = Facts {
            method: obj.method.clone().unwrap_or_default(),
            component: first
                .map(|c| c.kind.as_str().to_ascii_uppercase())
                .unwrap_or_default(),
            organizer: organizer.clone(),
            sender: mail.from.clone(),
            known_sender: None,
            authenticated,
            conflict: None,
            recurring: comps
                .iter()
                .any(|c| c.prop(&P::Rrule).is_some() || c.prop(&P::Rdate).is_some()),
            duration: master.and_then(conflict::duration),
            start: occurrences
                .iter()
                .find(|(_, end)| *end > now.timestamp())
                .or(occurrences.first())
                .and_then(|(s, _)| DateTime::from_timestamp(*s, 0)),
            now,
            account: origin.account.map(str::to_string),
            folder: origin.folder.map(str::to_string),
        };
        if self.needs.known_sender {
            if self.address_book.is_none() {
                self.address_book = Some(match &self.cfg.address_book {
                    Some(dir) => policy::address_book(dir)?,
                    None => HashSet::new(),
                });
            }
            let book = self.address_book.as_ref();
            facts.known_sender = Some(
                organizer
                    .as_deref()
                    .is_some_and(|o| book.is_some_and(|b| b.contains(&crate::address::bare(o)))),
            );
        }
        if self.needs.conflict {
            facts.conflict = Some(conflict::conflicts(
                &self.store,
                uid,
                &occurrences,
                &self.cfg.identity,
                now,
            )?);
        }
        Ok(facts)
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_item(
        &mut self,
        obj: &CalObject,
        uid: &str,
        comps: Vec<Node>,
        sender_entitled: bool,
        verdict: &Verdict,
        mail: &Mail,
        now: DateTime<Utc>,
    ) -> anyhow::Result<ItemOutcome> {
        let method = obj.method.clone().unwrap_or_default();
        if verdict.action == Action::Ignore {
            return Ok(self.item(
                obj,
                uid,
                &comps,
                Role::Attendee,
                Effect::Ignored,
                "ignored by policy".into(),
                verdict,
            ));
        }
        let input = Input {
            method: &method,
            uid,
            comps: comps.clone(),
            sender_entitled,
            identity: &self.cfg.identity,
        };
        let stored = self.store.get(uid)?;
        let mut decision = engine::apply(stored.as_ref(), &input);
        let partstat = match verdict.action {
            Action::Accept => Some("ACCEPTED"),
            Action::Decline => Some("DECLINED"),
            Action::Tentative => Some("TENTATIVE"),
            _ => None,
        };
        // My answer goes into my copy of the event.
        if let (Some(ps), Some(inv), Some(object), Role::Attendee) = (
            partstat,
            &decision.invitation,
            decision.object.as_mut(),
            decision.role,
        ) {
            set_my_partstat(object, &inv.me, ps, &inv.recurrence_ids);
        }
        let file = self.execute(uid, &method, &decision, obj)?;
        let mut item = self.item(
            obj,
            uid,
            &comps,
            decision.role,
            decision.effect,
            decision.reason.clone(),
            verdict,
        );
        item.file = file;
        if let Some(ps) = partstat {
            item.reply = self.answer(&method, ps, &decision, &comps, verdict, obj, mail, now)?;
        }
        Ok(item)
    }

    /// Queue the answer a policy asked for, unless a never-answer rule forbids it.
    #[allow(clippy::too_many_arguments)]
    fn answer(
        &mut self,
        method: &str,
        partstat: &str,
        d: &Decision,
        comps: &[Node],
        verdict: &Verdict,
        obj: &CalObject,
        mail: &Mail,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<String>> {
        let me_name = self.cfg.identity.name.as_deref();
        let built: anyhow::Result<reply::Outgoing> = match (d.role, method, d.effect) {
            (Role::Attendee, "REQUEST" | "ADD", _) => {
                let Some(inv) = &d.invitation else {
                    return Ok(Some(match d.effect {
                        Effect::Unchanged | Effect::Stale => {
                            "not sent: this version was already handled".into()
                        }
                        Effect::Refused => "not sent: the message was refused".into(),
                        _ => "not sent: I am not an attendee of this event".into(),
                    }));
                };
                // Already filed (a replayed message): answer from the store.
                let stored;
                let object = match &d.object {
                    Some(o) => o,
                    None => match self.store.get(&inv_uid(comps))? {
                        Some(s) => {
                            stored = s;
                            &stored
                        }
                        None => return Ok(None),
                    },
                };
                if let Some(reason) = self.never_answer(inv, comps) {
                    return Ok(Some(format!("not sent: {reason}")));
                }
                reply::build_reply(&reply::ReplyRequest {
                    object,
                    tz_source: Some(&obj.ical),
                    me: &inv.me,
                    my_name: me_name,
                    partstat,
                    recurrence_ids: &inv.recurrence_ids,
                    comment: verdict.comment.as_deref(),
                    request: Some(mail),
                    now,
                })
            }
            (Role::Organizer, "COUNTER" | "REFRESH", Effect::Recorded)
                if (method == "COUNTER" && partstat == "DECLINED")
                    || (method == "REFRESH" && partstat == "ACCEPTED") =>
            {
                let uid = comps[0].uid().unwrap_or_default();
                let Some(stored) = self.store.get(&uid)? else {
                    return Ok(None);
                };
                let me = stored_organizer(&stored).unwrap_or_default();
                if method == "COUNTER" {
                    reply::build_declinecounter(
                        &stored,
                        &comps[0],
                        &me,
                        me_name,
                        verdict.comment.as_deref(),
                        Some(mail),
                        now,
                    )
                } else {
                    reply::build_refresh_answer(&stored, &comps[0], &me, me_name, Some(mail), now)
                }
            }
            (Role::Organizer, "REQUEST" | "ADD" | "PUBLISH" | "CANCEL", _) => {
                return Ok(Some("not sent: I am the organizer of this event".into()))
            }
            _ => {
                return Ok(Some(format!(
                    "not sent: a {method} is not answered with {}",
                    verdict.action.as_str()
                )))
            }
        };
        // A message that cannot be answered is reported, not retried.
        let outgoing = match built {
            Ok(o) => o,
            Err(e) => return Ok(Some(format!("not sent: {e:#}"))),
        };
        if outgoing.to.iter().any(|t| self.cfg.identity.is_me(t)) {
            return Ok(Some(
                "not sent: it would go to one of my own addresses".into(),
            ));
        }
        if self.outbox.answered(&outgoing.key) {
            return Ok(Some("not sent: this version was already answered".into()));
        }
        let recent = self.outbox.recent(&outgoing.counterpart, now);
        if recent >= self.cfg.max_replies_per_hour as usize {
            return Ok(Some(format!(
                "not sent: {} answers to {} in the last hour reach the cap (outgoing.max_replies_per_hour = {})",
                recent, outgoing.counterpart, self.cfg.max_replies_per_hour
            )));
        }
        if self.dry_run {
            return Ok(Some(format!(
                "would be queued to {}: {}",
                outgoing.to.join(", "),
                outgoing.summary
            )));
        }
        let text = format!("queued to {}: {}", outgoing.to.join(", "), outgoing.summary);
        self.outbox.enqueue(outgoing, now)?;
        Ok(Some(text))
    }

    /// Why an invitation to me must not be answered, if it must not.
    fn never_answer(&self, inv: &engine::Invitation, comps: &[Node]) -> Option<String> {
        let organizer = comps.iter().find_map(Node::organizer);
        match organizer.as_deref() {
            None => return Some("the invitation names no organizer".into()),
            Some(o) if self.cfg.identity.is_me(o) => return Some("I am the organizer".into()),
            _ => {}
        }
        let rsvp_false = comps.iter().any(|c| {
            c.entries.iter().any(|e| {
                e.name == P::Attendee
                    && ical::cal_address(e).as_deref() == Some(inv.me.as_str())
                    && ical::param(e, &Pn::Rsvp).is_some_and(|v| v.eq_ignore_ascii_case("FALSE"))
            })
        });
        if rsvp_false {
            return Some("the organizer asks for no answer (RSVP=FALSE)".into());
        }
        None
    }

    /// Carry out a decision: store first, then held and recorded messages.
    fn execute(
        &mut self,
        uid: &str,
        method: &str,
        d: &Decision,
        obj: &CalObject,
    ) -> anyhow::Result<Option<PathBuf>> {
        if self.dry_run {
            return Ok(d.object.as_ref().map(|_| {
                self.store
                    .path_of(uid)
                    .unwrap_or_else(|| self.store.dir().join(crate::store::safe_name(uid)))
            }));
        }
        let mut written = None;
        if let Some(object) = &d.object {
            let mut object = object.clone();
            let mut held_paths = Vec::new();
            if d.release_held {
                // Every CANCEL held for this UID, oldest first.
                for (path, text) in self.state.held(uid) {
                    if let Some(after) = self.apply_held(uid, &object, &text) {
                        object = after;
                    }
                    held_paths.push(path);
                }
            }
            written = Some(self.store.put(uid, &object, Some(&obj.ical))?);
            if !held_paths.is_empty() {
                self.state.release_held(uid, &held_paths);
            }
        }
        match d.effect {
            Effect::Held => {
                self.state.hold(uid, &ical::to_string(&obj.ical))?;
            }
            Effect::Recorded => {
                let p = self
                    .state
                    .record_attention(method, uid, &ical::to_string(&obj.ical))?;
                tracing::info!(uid, method, file = %p.display(), "kept for a person to act on");
            }
            _ => {}
        }
        Ok(written)
    }

    /// Apply a held CANCEL to a just-arrived object.
    fn apply_held(&self, uid: &str, object: &Node, text: &str) -> Option<Node> {
        let calcard::Entry::ICalendar(ical) = calcard::Parser::new(text).entry() else {
            return None;
        };
        let root = Node::from_ical(&ical);
        let (_, comps) = engine::group_by_uid(&root)
            .into_iter()
            .find(|(u, _)| u == uid)?;
        let input = Input {
            method: "CANCEL",
            uid,
            comps,
            // Held only when its sender was its organizer; the engine still
            // checks that this organizer is the event's.
            sender_entitled: true,
            identity: &self.cfg.identity,
        };
        let d = engine::apply(Some(object), &input);
        tracing::info!(
            uid,
            effect = d.effect.as_str(),
            "held CANCEL applied to the arriving event"
        );
        d.object
    }
}

fn inv_uid(comps: &[Node]) -> String {
    comps.first().and_then(Node::uid).unwrap_or_default()
}

fn stored_organizer(root: &Node) -> Option<String> {
    root.children
        .iter()
        .filter(|c| c.is_scheduling())
        .find_map(Node::organizer)
}

/// Set my PARTSTAT on the components an answer covers.
fn set_my_partstat(root: &mut Node, me: &str, partstat: &str, rids: &[Option<String>]) {
    let whole = rids.iter().any(Option::is_none);
    for c in root.children.iter_mut().filter(|c| c.is_scheduling()) {
        if !whole && !rids.contains(&c.recurrence_id()) {
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
