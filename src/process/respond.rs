//! Answers given later, by a person or a program rather than by a policy
//! when the mail arrived: `imipd respond` (accept, decline, tentative),
//! `imipd counter` (propose another time: an iTIP COUNTER, RFC 5546
//! §3.2.7), and the answers the calendar itself gives — my PARTSTAT changed
//! in a stored invitation by another program (khal, a phone through
//! vdirsyncer), or an upcoming invitation deleted from the store, which
//! declines it (the CalConnect iMIP best practices). All of them go through
//! [`Processor::answer_invitation`], the rules automatic answers follow, and
//! the same crash-safe order: my copy in the store first, then the answer in
//! the outbox and its ledger, then what imipd remembers ([`crate::mine`]).
//! Each runs under the state's write lock, so it may run beside `imipd run`.

use std::sync::Arc;

use calcard::common::timezone::Tz;
use calcard::icalendar::ICalendarProperty as P;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::Serialize;

use super::answer::{self, Answer, Ask};
use crate::config::Config;
use crate::describe;
use crate::engine::{self, Instances};
use crate::ical::{self, Node};
use crate::mine::{self, Countered};
use crate::mine::{instances, my_address, my_partstats};
use crate::outcome::{ReplyOutcome, ReplyStatus};
use crate::process::Processor;
use crate::recur::{self, Budget};
use crate::reply;
use crate::time::{self, Instant, Zones};

pub use crate::outcome::Refused;

/// An answer a person gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    Accept,
    Decline,
    Tentative,
}

impl Response {
    pub fn parse(s: &str) -> Option<Response> {
        match s.trim().to_ascii_lowercase().as_str() {
            "accept" | "accepted" | "yes" => Some(Response::Accept),
            "decline" | "declined" | "no" => Some(Response::Decline),
            "tentative" | "maybe" => Some(Response::Tentative),
            _ => None,
        }
    }

    pub fn partstat(self) -> &'static str {
        match self {
            Response::Accept => "ACCEPTED",
            Response::Decline => "DECLINED",
            Response::Tentative => "TENTATIVE",
        }
    }
}

/// What `respond` (or `counter`) did: one JSON line with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct RespondOutcome {
    #[serde(serialize_with = "crate::outcome::schema")]
    pub schema: (),
    /// `respond` or `counter`.
    pub command: &'static str,
    pub uid: String,
    /// The instance answered (RFC 3339, or a date), `null` for the whole event.
    pub recurrence_id: Option<String>,
    /// The answer given (respond), or my PARTSTAT as it stays (counter).
    pub partstat: String,
    pub summary: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub location: Option<String>,
    pub organizer: Option<String>,
    /// Whether my PARTSTAT in the store changed.
    pub changed: bool,
    pub reply: ReplyOutcome,
    /// The store file.
    pub file: Option<String>,
    pub dry_run: bool,
}

impl std::fmt::Display for RespondOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{} {}{}{}: {}",
            if self.dry_run { "[dry-run] " } else { "" },
            self.command,
            self.uid,
            self.recurrence_id
                .as_ref()
                .map(|r| format!(" (instance {r})"))
                .unwrap_or_default(),
            self.summary
                .as_ref()
                .map(|s| format!(" \"{s}\""))
                .unwrap_or_default(),
            self.reply.text
        )
    }
}

/// A change another program made to the store, and the answer it gave.
#[derive(Debug, Clone, Serialize)]
pub struct EditOutcome {
    pub uid: String,
    /// `partstat` (my answer changed in the calendar) or `deleted`.
    pub change: &'static str,
    /// The instances concerned (`null`: the whole event).
    pub recurrence_ids: Vec<Option<String>>,
    pub partstat: String,
    pub summary: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub reply: ReplyOutcome,
}

impl std::fmt::Display for EditOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.change {
            "deleted" => "deleted from the calendar, so declined".to_string(),
            _ => format!("my answer changed to {} in the calendar", self.partstat),
        };
        write!(
            f,
            "calendar edit: {}{}: {what}; reply {}",
            self.uid,
            self.summary
                .as_ref()
                .map(|s| format!(" \"{s}\""))
                .unwrap_or_default(),
            self.reply.text
        )
    }
}

/// When a file may have changed: its size, time and inode.
pub(crate) fn file_stamp(path: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(format!(
        "{}:{}:{}",
        m.len(),
        m.mtime_nsec() + m.mtime() * 1_000_000_000,
        m.ino()
    ))
}

/// Read an instance as the user may write it: `20261201T090000Z`,
/// `20261201T100000` or `2026-12-01T10:00` (in the event's zone),
/// `2026-12-01T10:00:00+01:00`, `20261201` or `2026-12-01` (a day).
pub fn parse_when(text: &str, zone: Tz) -> Option<Instant> {
    let t = text.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Some(Instant::At(d.timestamp()));
    }
    for f in ["%Y%m%d", "%Y-%m-%d"] {
        if let Ok(d) = NaiveDate::parse_from_str(t, f) {
            return Some(Instant::Date(d));
        }
    }
    if let Some(utc) = t.strip_suffix(['Z', 'z']) {
        for f in ["%Y%m%dT%H%M%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"] {
            if let Ok(d) = NaiveDateTime::parse_from_str(utc, f) {
                return Some(Instant::At(d.and_utc().timestamp()));
            }
        }
    }
    for f in [
        "%Y%m%dT%H%M%S",
        "%Y%m%dT%H%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(d) = NaiveDateTime::parse_from_str(t, f) {
            return time::local_timestamp(d, zone).map(Instant::At);
        }
    }
    None
}

/// The object of a UID in the store, or why it cannot be answered.
struct Target {
    object: Node,
    me: String,
    inst: Instances,
    zone: Tz,
}

fn is_cancelled(c: &Node) -> bool {
    c.text(&P::Status)
        .is_some_and(|s| s.eq_ignore_ascii_case("CANCELLED"))
}

impl Processor {
    fn target(&self, uid: &str, what: &str) -> anyhow::Result<Target> {
        let Some(object) = self.store.get(uid)? else {
            return Err(Refused(format!(
                "cannot {what} {uid}: no event with this UID is in the calendar ({}); `imipd pending` lists the invitations waiting for an answer",
                self.cfg.store
            ))
            .into());
        };
        if engine::stored_organizer(&object).is_some_and(|o| self.cfg.identity.is_me(&o)) {
            return Err(Refused(format!(
                "cannot {what} {uid}: I organize this event; an organizer does not answer its own invitation"
            ))
            .into());
        }
        let Some(me) = my_address(&object, &self.cfg.identity) else {
            return Err(Refused(format!(
                "cannot {what} {uid}: I am not invited to it (none of {} is an ATTENDEE)",
                self.cfg.identity.addresses.join(", ")
            ))
            .into());
        };
        let inst = instances(&object);
        let zone = object
            .children
            .iter()
            .find(|c| c.is_scheduling() && c.prop(&P::RecurrenceId).is_none())
            .map(|m| time::start_zone(m, &Zones::of(&object)))
            .unwrap_or(Tz::UTC);
        Ok(Target {
            object,
            me,
            inst,
            zone,
        })
    }

    /// The instances an answer covers: the one asked for (an override is
    /// made for it when the series has none), else every component that
    /// names me. Refuses a cancelled or ended event or instance.
    fn instances_to_answer(
        &self,
        uid: &str,
        t: &mut Target,
        instance: Option<&str>,
        what: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Vec<Option<Instant>>> {
        let mut budget = Budget::per_message();
        let names_me = |c: &Node| {
            c.entries
                .iter()
                .any(|e| e.name == P::Attendee && ical::cal_address(e).as_deref() == Some(&t.me))
        };
        let Some(text) = instance else {
            let master_cancelled = t.inst.find(&t.object, None).is_some_and(is_cancelled);
            if master_cancelled
                || t.object
                    .children
                    .iter()
                    .filter(|c| c.is_scheduling())
                    .all(is_cancelled)
            {
                return Err(
                    Refused(format!("cannot {what} {uid}: the organizer cancelled it")).into(),
                );
            }
            if recur::is_over(&t.object, uid, now.timestamp(), &mut budget) == Some(true) {
                return Err(Refused(format!(
                    "cannot {what} {uid}: every occurrence is over; imipd never answers the past"
                ))
                .into());
            }
            return Ok(t
                .object
                .children
                .iter()
                .filter(|c| c.is_scheduling() && names_me(c) && !is_cancelled(c))
                .map(|c| t.inst.rid(c))
                .collect());
        };
        let Some(mut rid) = parse_when(text, t.zone) else {
            return Err(Refused(format!(
                "cannot {what} {uid}: `{text}` is not an instance (write it as the RECURRENCE-ID, 20261201T090000Z, or 2026-12-01T10:00:00+01:00)"
            ))
            .into());
        };
        // An all-day series names its instances by day.
        let all_day = t
            .inst
            .find(&t.object, None)
            .and_then(|m| m.prop(&P::Dtstart))
            .is_some_and(|e| matches!(time::Form::of(e, &Zones::of(&t.object)), time::Form::Date));
        if let (true, Instant::At(ts)) = (all_day, rid) {
            if let Some(d) = DateTime::from_timestamp(ts, 0) {
                rid = Instant::Date(d.naive_utc().date());
            }
        }
        let start = rid.timestamp(t.zone).unwrap_or_default();
        let comp = match t.inst.find(&t.object, Some(rid)) {
            Some(c) => c.clone(),
            None => {
                // An instance of the series without an override of its own.
                let occurs =
                    recur::occurrences(&t.object, uid, start - 1, start + 1, &mut budget, |_| true)
                        .spans
                        .iter()
                        .any(|(s, _)| *s == start);
                let over = occurs
                    .then(|| engine::derive_override(&t.object, Some(rid), &t.inst))
                    .flatten();
                let Some(over) = over else {
                    return Err(Refused(format!(
                        "cannot {what} {uid}: the event has no instance at {text}"
                    ))
                    .into());
                };
                t.object.children.push(over.clone());
                over
            }
        };
        if !names_me(&comp) {
            return Err(Refused(format!(
                "cannot {what} {uid}: I am not invited to the instance at {text}"
            ))
            .into());
        }
        if is_cancelled(&comp) || t.inst.find(&t.object, None).is_some_and(is_cancelled) {
            return Err(Refused(format!(
                "cannot {what} {uid}: the organizer cancelled the instance at {text}"
            ))
            .into());
        }
        let end = describe::span(&comp, &Zones::of(&t.object)).map(|(_, e)| e);
        if end.is_some_and(|e| e <= now.timestamp()) {
            return Err(Refused(format!(
                "cannot {what} {uid}: the instance at {text} is over; imipd never answers the past"
            ))
            .into());
        }
        Ok(vec![Some(rid)])
    }

    /// `imipd respond`: set my PARTSTAT in the store and queue the REPLY,
    /// by the rules of automatic answers. Repeating the answer given last
    /// sends nothing; changing it sends a new REPLY. Call under the write
    /// lock (see [`respond`]).
    pub fn respond(
        &mut self,
        uid: &str,
        instance: Option<&str>,
        response: Response,
        comment: Option<&str>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<RespondOutcome> {
        let mut t = self.target(uid, "answer")?;
        let rids = self.instances_to_answer(uid, &mut t, instance, "answer", now)?;
        let partstat = response.partstat();
        if rids.is_empty() {
            return Err(Refused(format!(
                "cannot answer {uid}: no component of it that names me is still on"
            ))
            .into());
        }
        let zones = Zones::of(&t.object);
        let tz = t.object.clone().into_ical();
        let before = my_partstats(&t.object, &t.me);
        let ask = Ask {
            uid,
            object: &t.object,
            comps: &[],
            zones: &zones,
            tz_source: Some(&tz),
            me: &t.me,
            partstat,
            rids: rids.clone(),
            comment,
            request: None,
            manual: true,
        };
        let mut budget = Budget::per_message();
        let a = self.answer_invitation(&[], &ask, now, &mut budget)?;
        let (after, note, outgoing, reply) = match a {
            Answer::Queue {
                outgoing,
                after,
                note,
                out,
            } => (Some(after), Some(note), Some(outgoing), out),
            Answer::Already { after, note, out } => (after, note, None, out),
            Answer::No(out) => {
                if out.status == ReplyStatus::NotSent {
                    return Err(Refused(format!(
                        "cannot answer {uid}: {}",
                        out.reason.clone().unwrap_or_default()
                    ))
                    .into());
                }
                (None, None, None, out)
            }
        };
        let changed = after
            .as_ref()
            .is_some_and(|a| my_partstats(a, &t.me) != before);
        let mut file = Some(self.store.location(uid));
        if !self.dry_run {
            // The crash-safe order: my copy, the answer, what to remember.
            if let Some(a) = after.as_ref().filter(|_| changed) {
                file = Some(self.store.put(uid, a, Some(&tz))?);
            }
            if let Some(o) = outgoing {
                self.outbox.enqueue(o, now)?;
            }
            let written: Vec<String> = if changed {
                vec![uid.to_string()]
            } else {
                Vec::new()
            };
            let notes: Vec<answer::Note> = note.into_iter().collect();
            if changed || !notes.is_empty() {
                self.remember(&written, &notes, &[], now)?;
            }
        }
        let shown = after.as_ref().unwrap_or(&t.object);
        let comp = rids
            .first()
            .and_then(|r| t.inst.find(shown, *r))
            .or_else(|| t.inst.find(shown, None));
        Ok(self.respond_outcome(
            "respond",
            uid,
            rids.first().copied().flatten(),
            partstat,
            comp,
            &zones,
            t.zone,
            changed,
            reply,
            file,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn respond_outcome(
        &self,
        command: &'static str,
        uid: &str,
        rid: Option<Instant>,
        partstat: &str,
        comp: Option<&Node>,
        zones: &Zones,
        zone: Tz,
        changed: bool,
        reply: ReplyOutcome,
        file: Option<String>,
    ) -> RespondOutcome {
        let times = comp.map(|c| describe::times(c, zones, None));
        RespondOutcome {
            schema: (),
            command,
            uid: uid.to_string(),
            recurrence_id: rid.and_then(|r| describe::instant_text(r, zone)),
            partstat: partstat.to_string(),
            summary: comp.and_then(|c| describe::text(c, P::Summary)),
            start: times.as_ref().and_then(|t| t.start.clone()),
            end: times.as_ref().and_then(|t| t.end.clone()),
            location: comp.and_then(|c| describe::text(c, P::Location)),
            organizer: comp.and_then(describe::organizer).map(|p| p.address),
            changed,
            reply,
            file,
            dry_run: self.dry_run,
        }
    }

    /// `imipd counter`: propose another time to the organizer (an iTIP
    /// COUNTER). My copy of the event does not change; the proposal is
    /// remembered, and a DECLINECOUNTER that comes back is listed by
    /// `pending`. Call under the write lock.
    #[allow(clippy::too_many_arguments)]
    pub fn counter(
        &mut self,
        uid: &str,
        instance: Option<&str>,
        start: &str,
        end: &str,
        comment: Option<&str>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<RespondOutcome> {
        let mut t = self.target(uid, "propose a new time for")?;
        let rids =
            self.instances_to_answer(uid, &mut t, instance, "propose a new time for", now)?;
        let rid = if instance.is_some() {
            rids.first().copied().flatten()
        } else {
            None
        };
        let parse = |what: &str, text: &str| -> anyhow::Result<i64> {
            match parse_when(text, t.zone) {
                Some(Instant::At(ts)) => Ok(ts),
                Some(Instant::Date(d)) => Ok(time::local_timestamp(
                    d.and_hms_opt(0, 0, 0).unwrap_or_default(),
                    t.zone,
                )
                .unwrap_or_default()),
                None => Err(Refused(format!(
                    "cannot propose a new time for {uid}: --{what} `{text}` is not a time (write 2026-12-01T15:00:00+01:00, or 2026-12-01T15:00 in the event's zone)"
                ))
                .into()),
            }
        };
        let s = parse("start", start)?;
        let e = parse("end", end)?;
        if e <= s {
            return Err(Refused(format!(
                "cannot propose a new time for {uid}: --end must come after --start"
            ))
            .into());
        }
        if s < now.timestamp() {
            return Err(Refused(format!(
                "cannot propose a new time for {uid}: the proposed start is in the past"
            ))
            .into());
        }
        let to_utc = |ts: i64| DateTime::<Utc>::from_timestamp(ts, 0).unwrap_or(now);
        let built = reply::build_counter(&reply::CounterRequest {
            object: &t.object,
            instances: &t.inst,
            rid,
            me: &t.me,
            my_name: self.cfg.identity.name.as_deref(),
            start: to_utc(s),
            end: to_utc(e),
            comment,
            now,
        });
        let zones = Zones::of(&t.object);
        let comp = t
            .inst
            .find(&t.object, rid)
            .or_else(|| t.inst.find(&t.object, None))
            .cloned();
        let my = comp
            .as_ref()
            .and_then(|c| {
                c.entries.iter().find(|e| {
                    e.name == P::Attendee && ical::cal_address(e).as_deref() == Some(&t.me)
                })
            })
            .map(ical::partstat)
            .unwrap_or_else(|| "NEEDS-ACTION".into());
        let outgoing = match built.and_then(|o| self.signed(o)) {
            Ok(o) => o,
            Err(err) => {
                return Err(Refused(format!("cannot propose a new time for {uid}: {err:#}")).into())
            }
        };
        if outgoing.to.iter().any(|a| self.cfg.identity.is_me(a)) {
            return Err(Refused(format!(
                "cannot propose a new time for {uid}: it would go to one of my own addresses"
            ))
            .into());
        }
        let reply = if self.outbox.answered(&outgoing.key) {
            ReplyOutcome::already(&outgoing, None)
        } else if let Some(held) = self.cap(&[], &outgoing, None, now) {
            held
        } else {
            let out = ReplyOutcome::queued(&outgoing, None, self.dry_run);
            if !self.dry_run {
                self.outbox.enqueue(outgoing, now)?;
                let mut r = self
                    .records
                    .get(uid)?
                    .unwrap_or_else(|| mine::Record::new(uid, &t.me));
                if r.object.is_empty() {
                    r.seen = my_partstats(&t.object, &t.me);
                    r.object = ical::to_string(&t.object.clone().into_ical());
                }
                r.countered.insert(
                    mine::rid_key(rid),
                    Countered {
                        start: describe::rfc3339(s, t.zone).unwrap_or_default(),
                        end: describe::rfc3339(e, t.zone).unwrap_or_default(),
                        comment: comment.map(str::to_string),
                        at: now.timestamp(),
                        declined: None,
                    },
                );
                self.records.put(&r)?;
            }
            out
        };
        let file = Some(self.store.location(uid));
        Ok(self.respond_outcome(
            "counter",
            uid,
            rid,
            &my,
            comp.as_ref(),
            &zones,
            t.zone,
            false,
            reply,
            file,
        ))
    }

    /// Answers the calendar itself gives (`[store] answer_edits`): for each
    /// invitation imipd filed, my PARTSTAT changed in the store by another
    /// program is answered with a REPLY, and an upcoming invitation deleted
    /// from the store is declined. imipd's own writes are told apart by the
    /// record of what it wrote ([`crate::mine`]). `only`: look at these
    /// UIDs alone (before a message about them is applied, so that an
    /// edit is never overwritten unanswered). Call under the write lock.
    pub fn answer_edits(
        &mut self,
        only: Option<&[String]>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Vec<EditOutcome>> {
        let mut out = Vec::new();
        if !self.cfg.answer_edits {
            return Ok(out);
        }
        let records = match only {
            None => self.records.all()?,
            Some(uids) => {
                let mut v = Vec::new();
                for u in uids {
                    v.extend(self.records.get(u)?);
                }
                v
            }
        };
        if records.is_empty() {
            return Ok(out);
        }
        // A calendar folder that is gone, or is not the folder imipd filed
        // into (replaced, or a mount point without its file system), deletes
        // nothing: declining every invitation would be the wrong answer.
        let store_usable = self.same_store_folder();
        let mut planned: Vec<reply::Outgoing> = Vec::new();
        for record in records {
            let uid = record.uid.clone();
            let mut budget = Budget::per_message();
            // An unchanged file has nothing new to say.
            let stamp = file_stamp(&self.store.location(&uid));
            if only.is_none() && stamp.is_some() && self.edit_stamps.get(&uid) == stamp.as_ref() {
                continue;
            }
            match self.store.get(&uid)? {
                Some(object) => {
                    if engine::stored_organizer(&object)
                        .is_some_and(|o| self.cfg.identity.is_me(&o))
                    {
                        continue;
                    }
                    let current = my_partstats(&object, &record.me);
                    if current == record.seen {
                        if let Some(st) = stamp {
                            self.edit_stamps.insert(uid.clone(), st);
                        }
                        continue;
                    }
                    let answers = ["ACCEPTED", "DECLINED", "TENTATIVE"];
                    let changed: Vec<(String, String)> = current
                        .iter()
                        .filter(|(k, v)| {
                            record.seen.get(*k) != Some(v) && answers.contains(&v.as_str())
                        })
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    let inst = instances(&object);
                    let over =
                        recur::is_over(&object, &uid, now.timestamp(), &mut budget) == Some(true);
                    let cancelled = inst.find(&object, None).is_some_and(is_cancelled);
                    if changed.is_empty() || over || cancelled {
                        // Nothing to answer (an answer taken back, the past,
                        // a cancelled event): just remember what is there.
                        self.resee(&uid, &object, &record.me)?;
                        continue;
                    }
                    // The whole event when every component that names me
                    // changed to one answer; else each instance on its own.
                    let all_same = changed.len() == current.len()
                        && changed.iter().all(|(_, p)| *p == changed[0].1);
                    let groups: Vec<(Vec<Option<Instant>>, String)> = if all_same {
                        vec![(
                            object
                                .children
                                .iter()
                                .filter(|c| c.is_scheduling())
                                .filter(|c| current.contains_key(&mine::rid_key(inst.rid(c))))
                                .map(|c| inst.rid(c))
                                .collect(),
                            changed[0].1.clone(),
                        )]
                    } else {
                        changed
                            .iter()
                            .filter_map(|(k, p)| {
                                let c = object.children.iter().find(|c| {
                                    c.is_scheduling() && mine::rid_key(inst.rid(c)) == *k
                                })?;
                                Some((vec![inst.rid(c)], p.clone()))
                            })
                            .collect()
                    };
                    let zones = Zones::of(&object);
                    let tz = object.clone().into_ical();
                    let mut held = false;
                    for (rids, partstat) in groups {
                        let ask = Ask {
                            uid: &uid,
                            object: &object,
                            comps: &[],
                            zones: &zones,
                            tz_source: Some(&tz),
                            me: &record.me,
                            partstat: &partstat,
                            rids: rids.clone(),
                            comment: None,
                            request: None,
                            manual: true,
                        };
                        let a = self.answer_invitation(&planned, &ask, now, &mut budget)?;
                        let (note, reply) = match a {
                            Answer::Queue {
                                outgoing,
                                note,
                                out,
                                ..
                            } => {
                                if !self.dry_run {
                                    self.outbox.enqueue(outgoing.clone(), now)?;
                                }
                                planned.push(outgoing);
                                (Some(note), out)
                            }
                            Answer::Already { note, out, .. } => (note, out),
                            Answer::No(out) => {
                                held |= out.status == ReplyStatus::Held;
                                let why = answer::Note::why(
                                    &uid,
                                    &record.me,
                                    rids.iter().map(|r| mine::rid_key(*r)).collect(),
                                    mine::Why {
                                        text: out.reason.clone().unwrap_or_default(),
                                        policy: None,
                                        at: now.timestamp(),
                                    },
                                );
                                (Some(why), out)
                            }
                        };
                        if !self.dry_run {
                            self.remember(&[], &note.into_iter().collect::<Vec<_>>(), &[], now)?;
                        }
                        let comp = rids.first().and_then(|r| inst.find(&object, *r));
                        let times = comp.map(|c| describe::times(c, &zones, None));
                        let zone = comp.map(|c| describe::zone(c, &zones)).unwrap_or(Tz::UTC);
                        out.push(EditOutcome {
                            uid: uid.clone(),
                            change: "partstat",
                            recurrence_ids: rids
                                .iter()
                                .map(|r| r.and_then(|r| describe::instant_text(r, zone)))
                                .collect(),
                            partstat,
                            summary: comp.and_then(|c| describe::text(c, P::Summary)),
                            start: times.as_ref().and_then(|t| t.start.clone()),
                            end: times.as_ref().and_then(|t| t.end.clone()),
                            reply,
                        });
                    }
                    // What a cap held back is tried again on the next look.
                    if !held {
                        self.resee(&uid, &object, &record.me)?;
                    }
                }
                None => {
                    if !store_usable {
                        tracing::warn!(uid, store = %self.cfg.store, "the calendar folder is missing or is not the one imipd filed into (replaced, or not mounted); an invitation missing from it is not declined (decline it with `imipd respond`)");
                        continue;
                    }
                    let o = self.deleted(&record, &mut planned, now, &mut budget)?;
                    out.extend(o);
                }
            }
        }
        Ok(out)
    }

    /// Whether the calendar folder is the one imipd filed into: its device
    /// and inode, kept in `STATE/mine/.folder` the first time.
    fn same_store_folder(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        // Only a vdir follows edits ([`crate::config`] refuses
        // `answer_edits` on any other store).
        let Some(folder) = self.cfg.store.vdir_path() else {
            return false;
        };
        let Ok(meta) = std::fs::metadata(folder) else {
            return false;
        };
        if !meta.is_dir() {
            return false;
        }
        let id = format!("{}:{}", meta.dev(), meta.ino());
        let dir = self.cfg.state.join("mine");
        match std::fs::read_to_string(dir.join(".folder")) {
            Ok(known) => known.trim() == id,
            Err(_) => {
                if !self.dry_run {
                    if let Err(e) = crate::fsutil::write_atomic(&dir, ".folder", id.as_bytes()) {
                        tracing::warn!("{e:#}");
                    }
                }
                true
            }
        }
    }

    /// Take what the store holds as what imipd knows (no answer due).
    fn resee(&mut self, uid: &str, object: &Node, me: &str) -> anyhow::Result<()> {
        if self.dry_run {
            return Ok(());
        }
        if let Some(mut r) = self.records.get(uid)? {
            r.seen = my_partstats(object, me);
            r.object = ical::to_string(&object.clone().into_ical());
            self.records.put(&r)?;
        }
        Ok(())
    }

    /// An invitation deleted from the store: declined if it is upcoming and
    /// not declined already, then forgotten.
    fn deleted(
        &mut self,
        record: &mine::Record,
        planned: &mut Vec<reply::Outgoing>,
        now: DateTime<Utc>,
        budget: &mut Budget,
    ) -> anyhow::Result<Option<EditOutcome>> {
        let uid = record.uid.as_str();
        let object = match calcard::Parser::new(&record.object).entry() {
            calcard::Entry::ICalendar(i) => Node::from_ical(&i),
            _ => {
                if !self.dry_run {
                    self.records.remove(uid)?;
                }
                return Ok(None);
            }
        };
        let inst = instances(&object);
        let declined_already =
            !record.seen.is_empty() && record.seen.values().all(|p| p == "DECLINED");
        let cancelled = inst.find(&object, None).is_some_and(is_cancelled);
        let over = recur::is_over(&object, uid, now.timestamp(), budget) != Some(false);
        let mine_to_answer =
            engine::stored_organizer(&object).is_some_and(|o| !self.cfg.identity.is_me(&o));
        if declined_already || cancelled || over || !mine_to_answer {
            if !self.dry_run {
                self.records.remove(uid)?;
            }
            return Ok(None);
        }
        let rids: Vec<Option<Instant>> = object
            .children
            .iter()
            .filter(|c| c.is_scheduling() && !is_cancelled(c))
            .filter(|c| {
                c.entries.iter().any(|e| {
                    e.name == P::Attendee && ical::cal_address(e).as_deref() == Some(&record.me)
                })
            })
            .map(|c| inst.rid(c))
            .collect();
        let zones = Zones::of(&object);
        let tz = object.clone().into_ical();
        let ask = Ask {
            uid,
            object: &object,
            comps: &[],
            zones: &zones,
            tz_source: Some(&tz),
            me: &record.me,
            partstat: "DECLINED",
            rids: rids.clone(),
            comment: None,
            request: None,
            manual: true,
        };
        let a = self.answer_invitation(planned, &ask, now, budget)?;
        let (forget, reply) = match a {
            Answer::Queue { outgoing, out, .. } => {
                if !self.dry_run {
                    self.outbox.enqueue(outgoing.clone(), now)?;
                }
                planned.push(outgoing);
                (true, out)
            }
            Answer::Already { out, .. } => (true, out),
            // Held back by a cap: tried again on the next look.
            Answer::No(out) => (out.status != ReplyStatus::Held, out),
        };
        if forget && !self.dry_run {
            self.records.remove(uid)?;
        }
        let comp = inst
            .find(&object, None)
            .or_else(|| object.children.iter().find(|c| c.is_scheduling()));
        let times = comp.map(|c| describe::times(c, &zones, None));
        let zone = comp.map(|c| describe::zone(c, &zones)).unwrap_or(Tz::UTC);
        Ok(Some(EditOutcome {
            uid: uid.to_string(),
            change: "deleted",
            recurrence_ids: rids
                .iter()
                .map(|r| r.and_then(|r| describe::instant_text(r, zone)))
                .collect(),
            partstat: "DECLINED".into(),
            summary: comp.and_then(|c| describe::text(c, P::Summary)),
            start: times.as_ref().and_then(|t| t.start.clone()),
            end: times.as_ref().and_then(|t| t.end.clone()),
            reply,
        }))
    }
}

/// Open beside whatever else runs, under the write lock, and answer.
pub fn with_answering<T>(
    cfg: Arc<Config>,
    dry_run: bool,
    f: impl FnOnce(&mut Processor) -> anyhow::Result<T>,
) -> anyhow::Result<(T, Processor)> {
    if dry_run {
        let mut p = Processor::open(cfg, true)?;
        let v = f(&mut p)?;
        return Ok((v, p));
    }
    let state = crate::state::State::open_shared(&cfg.state)?;
    let lock = state.write_lock(cfg.lock_timeout)?;
    let mut p = Processor::open_shared(cfg)?;
    let v = f(&mut p);
    drop(lock);
    Ok((v?, p))
}
