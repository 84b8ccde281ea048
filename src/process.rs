//! One message, start to end: classify it, decide per UID with the iTIP
//! engine, and execute in a crash-safe order (store first, then held and
//! recorded messages). Produces one [`MessageOutcome`] per message, printed
//! as a line for people or as JSON for scripts. With `dry_run` every
//! decision is made and reported, and nothing is written.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::classify::{self, Classified};
use crate::config::Config;
use crate::engine::{self, Decision, Effect, Input, Role};
use crate::ical::{self, Node};
use crate::itip::CalObject;
use crate::state::State;
use crate::store::Store;

/// What happened to one message.
#[derive(Debug, Clone, Serialize)]
pub struct MessageOutcome {
    /// The file, or `account/folder/uid` for mailbox messages.
    pub source: String,
    pub message_id: Option<String>,
    pub from: Option<String>,
    pub imip: bool,
    pub valid: bool,
    pub suspicious: bool,
    pub problems: Vec<String>,
    pub results: Vec<ItemOutcome>,
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
    /// The policy that matched, and its action.
    pub policy: Option<String>,
    pub action: String,
    /// The store file written, if any.
    pub file: Option<PathBuf>,
}

impl MessageOutcome {
    /// Whether the message must be tried again later.
    pub fn failed(&self) -> bool {
        self.error.is_some()
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
                "{prefix}{}: {} {}{}: {} as {} — {}",
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
                r.reason
            )?;
            if let Some(p) = &r.policy {
                write!(f, " [policy {p}: {}]", r.action)?;
            }
        }
        Ok(())
    }
}

/// Processes messages against one store and state.
pub struct Processor<'a> {
    pub cfg: &'a Config,
    pub store: Store,
    pub state: State,
    pub dry_run: bool,
}

impl<'a> Processor<'a> {
    pub fn open(cfg: &'a Config, dry_run: bool) -> anyhow::Result<Processor<'a>> {
        Ok(Processor {
            cfg,
            store: Store::open(&cfg.store)?,
            state: State::open(&cfg.state)?,
            dry_run,
        })
    }

    /// Handle one raw message.
    pub fn process(&mut self, raw: &[u8], source: &str) -> MessageOutcome {
        let c = classify::classify(raw, source, &self.cfg.limits);
        let mut out = MessageOutcome {
            source: source.to_string(),
            message_id: c.report.message_id.clone(),
            from: c.report.from.clone(),
            imip: c.report.imip,
            valid: c.report.valid,
            suspicious: c.report.suspicious,
            problems: c.report.problems.clone(),
            results: Vec::new(),
            error: None,
            dry_run: self.dry_run,
        };
        if let Err(e) = self.apply_all(&c, &mut out) {
            out.error = Some(format!("{e:#}"));
        }
        out
    }

    fn apply_all(&mut self, c: &Classified, out: &mut MessageOutcome) -> anyhow::Result<()> {
        for (i, obj) in c.objects.iter().enumerate() {
            let entitled = c.sender_problems.get(i).is_some_and(Option::is_none);
            self.apply_object(obj, entitled, out)?;
        }
        Ok(())
    }

    fn apply_object(
        &mut self,
        obj: &CalObject,
        sender_entitled: bool,
        out: &mut MessageOutcome,
    ) -> anyhow::Result<()> {
        let method = obj.method.clone().unwrap_or_default();
        if obj.unusable {
            out.results.push(ItemOutcome {
                method: method.clone(),
                uid: obj
                    .components
                    .first()
                    .and_then(|&i| ical::uid(&obj.ical.components[i]))
                    .unwrap_or_default(),
                summary: None,
                role: Role::Attendee,
                effect: Effect::Ignored,
                reason: format!(
                    "the calendar data cannot be acted on safely: {}",
                    obj.problems.join("; ")
                ),
                policy: None,
                action: "none".into(),
                file: None,
            });
            return Ok(());
        }
        let root = Node::from_ical(&obj.ical);
        for (uid, comps) in engine::group_by_uid(&root) {
            let summary = comps
                .first()
                .and_then(|c| c.text(&calcard::icalendar::ICalendarProperty::Summary));
            let input = Input {
                method: &method,
                uid: &uid,
                comps,
                sender_entitled,
                identity: &self.cfg.identity,
            };
            let stored = self.store.get(&uid)?;
            let decision = engine::apply(stored.as_ref(), &input);
            let file = self.execute(&uid, &method, &decision, obj)?;
            out.results.push(ItemOutcome {
                method: method.clone(),
                uid,
                summary,
                role: decision.role,
                effect: decision.effect,
                reason: decision.reason,
                policy: None,
                action: "file".into(),
                file,
            });
        }
        Ok(())
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
            let mut held_path = None;
            if d.release_held {
                if let Some((path, text)) = self.state.held(uid) {
                    if let Some(after) = self.apply_held(uid, &object, &text) {
                        object = after;
                    }
                    held_path = Some(path);
                }
            }
            written = Some(self.store.put(uid, &object, Some(&obj.ical))?);
            if let Some(p) = held_path {
                let _ = std::fs::remove_file(p);
            }
        }
        match d.effect {
            Effect::Held => self.state.hold(uid, &ical::to_string(&obj.ical))?,
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
