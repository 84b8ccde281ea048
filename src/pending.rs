//! `imipd pending` and `show`: what waits for me, read from the store and
//! the state without changing either (no lock taken). Waiting are the
//! invitations where one of my addresses is an ATTENDEE with PARTSTAT
//! NEEDS-ACTION and RSVP not FALSE, not cancelled and not over — one entry
//! per component (the whole event, and each instance that differs) — and
//! the COUNTER, REFRESH and DECLINECOUNTER messages kept for attention.
//! Each entry says why it was not answered (kept by the run that decided,
//! [`crate::mine`]) and which busy events it overlaps.
//!
//! `summary`, `location`, `description` and `comment` are text the sender
//! wrote: a bot that gives them to a language model treats them as
//! untrusted input.

use std::path::{Path, PathBuf};

use calcard::common::timezone::Tz;
use calcard::icalendar::ICalendarProperty as P;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::describe::{self, Attendee, Person, Times};
use crate::engine::{self, Instances};
use crate::ical::{self, Node};
use crate::mine::{self, instances, my_address, rsvp_false, Records};
use crate::recur::{self, Budget};
use crate::store::{BusyQuery, CalendarStore};
use crate::time::Zones;

/// How far ahead conflicts are looked for (occurrences of a series).
const CONFLICT_DAYS: i64 = 90;
/// At most this many conflicting events are named per entry.
const MAX_CONFLICTS: usize = 20;

/// One thing that waits for me (a line of `pending --json`).
#[derive(Debug, Clone, Serialize)]
pub struct PendingItem {
    #[serde(serialize_with = "crate::outcome::schema")]
    pub schema: (),
    /// `invitation`, `counter`, `refresh`, `declinecounter`; `event` for
    /// `show` of an event that waits for nothing.
    pub kind: &'static str,
    pub uid: String,
    /// The instance (RFC 3339 in the event's zone, or a date); `null` for
    /// the whole event.
    pub recurrence_id: Option<String>,
    /// Text the sender wrote (untrusted).
    pub summary: Option<String>,
    #[serde(flatten)]
    pub times: Times,
    /// Text the sender wrote (untrusted).
    pub location: Option<String>,
    /// Text the sender wrote (untrusted).
    pub description: Option<String>,
    /// The RRULE, for a series (its `start`/`end` are the next occurrence).
    pub recurrence: Option<String>,
    pub organizer: Option<Person>,
    pub attendees: Vec<Attendee>,
    /// My address as the event names it.
    pub me: Option<String>,
    /// My PARTSTAT now.
    pub partstat: Option<String>,
    pub sequence: i64,
    /// `false` when the invitation came from someone not shown to be its
    /// organizer (forwarded, relayed): no policy answers it.
    pub verified: bool,
    /// Why it was not answered (or, for the other kinds, what it is).
    pub why: String,
    /// The policy that decided, when one did.
    pub policy: Option<String>,
    /// When that was decided (RFC 3339, UTC).
    pub decided: Option<String>,
    /// Busy events it overlaps.
    pub conflicts: Vec<Conflict>,
    /// For counter, refresh, declinecounter: who sent it.
    pub from: Option<String>,
    /// A COMMENT that came with it (untrusted).
    pub comment: Option<String>,
    /// A time I proposed (COUNTER) for this instance, and whether the
    /// organizer declined it.
    pub proposed: Option<mine::Countered>,
    /// The store file, or the kept message for the other kinds.
    pub file: Option<String>,
}

/// A busy event an entry overlaps.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Conflict {
    pub uid: String,
    pub summary: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
}

impl std::fmt::Display for PendingItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let when = self.times.start.as_deref().unwrap_or("(no time)");
        write!(
            f,
            "{:<14} {:<25} {}{} \"{}\" — {}",
            self.kind,
            when,
            self.uid,
            self.recurrence_id
                .as_ref()
                .map(|r| format!(" [{r}]"))
                .unwrap_or_default(),
            self.summary.as_deref().unwrap_or("(no title)"),
            self.why
        )?;
        if !self.conflicts.is_empty() {
            let names: Vec<String> = self
                .conflicts
                .iter()
                .map(|c| c.summary.clone().unwrap_or_else(|| c.uid.clone()))
                .collect();
            write!(f, "; overlaps {}", names.join(", "))?;
        }
        Ok(())
    }
}

/// What `pending` and `show` read.
struct View {
    store: Box<dyn CalendarStore>,
    records: Records,
    cfg: Config,
    now: DateTime<Utc>,
}

impl View {
    fn open(cfg: &Config, now: DateTime<Utc>) -> anyhow::Result<View> {
        Ok(View {
            store: crate::store::open(&cfg.store, true)?,
            records: Records::new(&cfg.state),
            cfg: cfg.clone(),
            now,
        })
    }

    /// The busy events other than `uid` that overlap `spans`.
    fn conflicts(
        &mut self,
        uid: &str,
        spans: &[(i64, i64)],
        zone: Tz,
    ) -> anyhow::Result<Vec<Conflict>> {
        if spans.is_empty() {
            return Ok(Vec::new());
        }
        let found = self.store.busy_overlaps(
            &BusyQuery {
                spans,
                exclude_uid: uid,
                identity: &self.cfg.identity,
                now: self.now.timestamp(),
            },
            MAX_CONFLICTS,
        )?;
        let mut out = Vec::new();
        for (other, s, e) in found {
            let summary = self
                .store
                .get(&other)?
                .and_then(|o| o.children.into_iter().find(|c| c.is_scheduling()))
                .and_then(|c| describe::text(&c, P::Summary));
            out.push(Conflict {
                uid: other,
                summary,
                start: describe::rfc3339(s, zone),
                end: describe::rfc3339(e, zone),
            });
        }
        Ok(out)
    }

    /// The entries of one stored event: with `all`, every component that
    /// names me (for `show`), else only those that wait for my answer.
    fn event(&mut self, uid: &str, all: bool) -> anyhow::Result<Vec<PendingItem>> {
        let Some(object) = self.store.get(uid)? else {
            return Ok(Vec::new());
        };
        let now = self.now.timestamp();
        let zones = Zones::of(&object);
        let inst = instances(&object);
        let organizer_is_me =
            engine::stored_organizer(&object).is_some_and(|o| self.cfg.identity.is_me(&o));
        let me = my_address(&object, &self.cfg.identity);
        let record = self.records.get(uid)?;
        let verified = !engine::is_unverified(&object);
        let master_cancelled = inst.find(&object, None).is_some_and(cancelled);
        let mut budget = Budget::per_message();
        let over = recur::is_over(&object, uid, now, &mut budget) == Some(true);
        let mut out = Vec::new();
        for c in object.children.iter().filter(|c| c.is_scheduling()) {
            let rid = inst.rid(c);
            let key = mine::rid_key(rid);
            let mine_entry = me.as_ref().and_then(|m| {
                c.entries
                    .iter()
                    .find(|e| e.name == P::Attendee && ical::cal_address(e).as_deref() == Some(m))
            });
            let partstat = mine_entry.map(ical::partstat);
            let rsvp_false = me.as_ref().is_some_and(|m| rsvp_false(c, m));
            // When it happens: the next occurrence of a series, else itself.
            let span = if rid.is_none() && recur_rule(c) {
                recur::next_occurrence(&object, uid, now, &mut budget)
            } else {
                describe::span(c, &zones).filter(|(_, e)| *e > now)
            };
            let waiting = !organizer_is_me
                && partstat.as_deref() == Some("NEEDS-ACTION")
                && !rsvp_false
                && !master_cancelled
                && !cancelled(c)
                && !over
                && span.is_some();
            if !(waiting || all) {
                continue;
            }
            let zone = describe::zone(c, &zones);
            let spans: Vec<(i64, i64)> = if rid.is_none() && recur_rule(c) {
                recur::occurrences(
                    &object,
                    uid,
                    now,
                    now + CONFLICT_DAYS * 86_400,
                    &mut budget,
                    |x| x.prop(&P::RecurrenceId).is_none() && !cancelled(x),
                )
                .spans
            } else {
                span.into_iter().collect()
            };
            let conflicts = if waiting || all {
                self.conflicts(uid, &spans, zone)?
            } else {
                Vec::new()
            };
            let why = record.as_ref().and_then(|r| r.why.get(&key).cloned());
            let why_text = match (&why, waiting) {
                (Some(w), true) => w.text.clone(),
                (None, true) if !verified => {
                    "the sender is not shown to be its organizer, so no policy answers it".into()
                }
                (None, true) => "not answered yet".into(),
                (_, false) => match (partstat.as_deref(), organizer_is_me) {
                    (_, true) => "I organize this event".into(),
                    (None, _) => "I am not invited to it".into(),
                    (Some(p), _) if cancelled(c) || master_cancelled => {
                        format!("cancelled (my answer: {p})")
                    }
                    (Some(p), _) if span.is_none() || over => format!("over (my answer: {p})"),
                    (Some(_), _) if rsvp_false => {
                        "the organizer asks for no answer (RSVP=FALSE)".into()
                    }
                    (Some(p), _) => format!("answered: {p}"),
                },
            };
            out.push(PendingItem {
                schema: (),
                kind: if waiting { "invitation" } else { "event" },
                uid: uid.to_string(),
                recurrence_id: rid.and_then(|r| describe::instant_text(r, zone)),
                summary: describe::text(c, P::Summary),
                times: describe::times(c, &zones, span),
                location: describe::text(c, P::Location),
                description: describe::text(c, P::Description),
                recurrence: describe::rrule(c),
                organizer: describe::organizer(c),
                attendees: describe::attendees(c),
                me: me.as_deref().map(describe::address_text),
                partstat,
                sequence: c.sequence(),
                verified,
                why: why_text,
                policy: why.as_ref().and_then(|w| w.policy.clone()),
                decided: why.as_ref().and_then(|w| describe::rfc3339(w.at, Tz::UTC)),
                conflicts,
                from: None,
                comment: None,
                proposed: record.as_ref().and_then(|r| r.countered.get(&key).cloned()),
                file: Some(self.store.location(uid)),
            });
        }
        Ok(out)
    }

    /// The COUNTER, REFRESH and DECLINECOUNTER messages kept for attention
    /// whose event is not over.
    fn attention(&mut self) -> anyhow::Result<Vec<PendingItem>> {
        let dir = self.cfg.state.join("attention");
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "ics"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => anyhow::bail!("cannot read {}: {e}", dir.display()),
        };
        files.sort();
        let mut out = Vec::new();
        for f in files {
            out.extend(self.kept(&f)?);
        }
        Ok(out)
    }

    fn kept(&mut self, file: &Path) -> anyhow::Result<Vec<PendingItem>> {
        let Ok(text) = std::fs::read_to_string(file) else {
            return Ok(Vec::new());
        };
        let calcard::Entry::ICalendar(ical) = calcard::Parser::new(&text).entry() else {
            return Ok(Vec::new());
        };
        let (method, _) = ical::method(&ical);
        let kind = match method.as_deref() {
            Some("COUNTER") => "counter",
            Some("REFRESH") => "refresh",
            Some("DECLINECOUNTER") => "declinecounter",
            _ => return Ok(Vec::new()),
        };
        let root = Node::from_ical(&ical);
        let now = self.now.timestamp();
        let mut out = Vec::new();
        for c in root.children.iter().filter(|c| c.is_scheduling()) {
            let Some(uid) = c.uid() else { continue };
            let stored = self.store.get(&uid)?;
            let mut zones = Zones::of(&root);
            if let Some(s) = &stored {
                zones.add(s);
            }
            let inst = Instances::of(stored.as_ref(), std::slice::from_ref(c), &zones);
            let rid = inst.rid(c);
            let stored_comp = stored
                .as_ref()
                .and_then(|s| inst.find(s, rid).or_else(|| inst.find(s, None)));
            // Done with once the event is over, or a newer version came.
            let mut budget = Budget::per_message();
            if let Some(s) = &stored {
                if recur::is_over(s, &uid, now, &mut budget) == Some(true) {
                    continue;
                }
                if stored_comp.is_some_and(|sc| sc.sequence() > c.sequence()) {
                    continue;
                }
            }
            let from = match kind {
                "declinecounter" => c.organizer().map(|o| describe::address_text(&o)),
                _ => c
                    .entries
                    .iter()
                    .find(|e| e.name == P::Attendee)
                    .and_then(ical::cal_address)
                    .map(|a| describe::address_text(&a)),
            };
            let who = from.clone().unwrap_or_else(|| "someone".into());
            let why = match kind {
                "counter" => format!("{who} proposes another time"),
                "refresh" => format!("{who} asks for the current version of the event"),
                _ => format!("{who} declined the time I proposed"),
            };
            // A COUNTER's own times are the proposal; the others show the event.
            let shown = match (kind, stored_comp) {
                ("counter", _) | (_, None) => c,
                (_, Some(sc)) => sc,
            };
            let zone = describe::zone(shown, &zones);
            let times = describe::times(shown, &zones, None);
            let spans: Vec<(i64, i64)> = describe::span(shown, &zones).into_iter().collect();
            let conflicts = if kind == "counter" {
                self.conflicts(&uid, &spans, zone)?
            } else {
                Vec::new()
            };
            let summary = describe::text(shown, P::Summary)
                .or_else(|| stored_comp.and_then(|s| describe::text(s, P::Summary)));
            let record = self.records.get(&uid)?;
            out.push(PendingItem {
                schema: (),
                kind,
                uid: uid.clone(),
                recurrence_id: rid.and_then(|r| describe::instant_text(r, zone)),
                summary,
                times,
                location: describe::text(shown, P::Location),
                description: None,
                recurrence: None,
                organizer: describe::organizer(shown)
                    .or_else(|| stored_comp.and_then(describe::organizer)),
                attendees: stored_comp.map(describe::attendees).unwrap_or_default(),
                me: None,
                partstat: None,
                sequence: c.sequence(),
                verified: true,
                why,
                policy: None,
                decided: None,
                conflicts,
                from,
                comment: describe::text(c, P::Comment),
                proposed: record.and_then(|r| r.countered.get(&mine::rid_key(rid)).cloned()),
                file: Some(file.display().to_string()),
            });
        }
        Ok(out)
    }
}

fn cancelled(c: &Node) -> bool {
    c.text(&P::Status)
        .is_some_and(|s| s.eq_ignore_ascii_case("CANCELLED"))
}

fn recur_rule(c: &Node) -> bool {
    c.prop(&P::Rrule).is_some() || c.prop(&P::Rdate).is_some()
}

/// Everything that waits for me, soonest first.
pub fn pending(cfg: &Config, now: DateTime<Utc>) -> anyhow::Result<Vec<PendingItem>> {
    let mut view = View::open(cfg, now)?;
    let mut uids = view.store.uids()?;
    uids.sort();
    let mut out = Vec::new();
    for uid in uids {
        out.extend(view.event(&uid, false)?);
    }
    out.extend(view.attention()?);
    out.sort_by(|a, b| {
        a.times
            .start
            .cmp(&b.times.start)
            .then_with(|| a.uid.cmp(&b.uid))
    });
    Ok(out)
}

/// One event in full (every component that names me or not), with the
/// messages kept for attention about it.
pub fn show(cfg: &Config, uid: &str, now: DateTime<Utc>) -> anyhow::Result<Vec<PendingItem>> {
    let mut view = View::open(cfg, now)?;
    let mut out = view.event(uid, true)?;
    out.extend(view.attention()?.into_iter().filter(|i| i.uid == uid));
    if out.is_empty() {
        return Err(crate::outcome::Refused(format!(
            "cannot show {uid}: no event with this UID is in the calendar ({})",
            cfg.store
        ))
        .into());
    }
    Ok(out)
}

/// The human table of `pending`.
pub fn table(items: &[PendingItem]) -> String {
    if items.is_empty() {
        return "nothing waits for an answer\n".into();
    }
    let mut s = String::new();
    for i in items {
        s.push_str(&i.to_string());
        s.push('\n');
    }
    s
}
