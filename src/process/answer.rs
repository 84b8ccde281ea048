//! Answering an invitation to me, whoever asks: a policy when the mail
//! arrives ([`crate::process`]), `imipd respond` and the MCP server later,
//! or another program that changed my PARTSTAT in the store (khal, a phone
//! through vdirsyncer) or deleted an upcoming invitation from it. One
//! function, [`Processor::answer_invitation`], applies the same rules to
//! all of them — never to myself, never to the past, one answer per
//! request version and answer, the caps — and builds the REPLY with my
//! copy of the event carrying my answer. Also what imipd remembers per
//! invitation afterwards ([`crate::mine`]): done in [`Processor::remember`],
//! after the store and the outbox are written.

use calcard::icalendar::{ICalendar, ICalendarProperty as P};
use chrono::{DateTime, Utc};

use crate::engine::{self, Instances};
use crate::ical::{self, Node};
use crate::mime::Mail;
use crate::mine::{self, my_address, my_partstats, rsvp_false, Answered, Record};
use crate::outcome::ReplyOutcome;
use crate::process::Processor;
use crate::recur::{self, Budget};
use crate::reply::{self, Outgoing};
use crate::time::{Instant, Zones};

/// An answer to an invitation to me, asked for.
pub(crate) struct Ask<'a> {
    pub uid: &'a str,
    /// The object as it is (or will be, once the message is applied).
    pub object: &'a Node,
    /// The incoming components (how the message names its instances);
    /// empty when answering from the store.
    pub comps: &'a [Node],
    pub zones: &'a Zones,
    /// Where VTIMEZONEs may be copied from (the invitation).
    pub tz_source: Option<&'a ICalendar>,
    /// My address as the event names it.
    pub me: &'a str,
    pub partstat: &'a str,
    /// The instances answered (`None`: the whole event).
    pub rids: Vec<Option<Instant>>,
    pub comment: Option<&'a str>,
    /// The invitation mail, for threading.
    pub request: Option<&'a Mail>,
    /// A person's answer (`respond`, an edit of the store) rather than a
    /// policy's: it may change an earlier answer to the same version.
    pub manual: bool,
}

/// What answering comes to.
pub(crate) enum Answer {
    /// Queue this message and store my copy with my answer.
    Queue {
        outgoing: Outgoing,
        after: Node,
        note: Note,
        out: ReplyOutcome,
    },
    /// Answered so before; `after` is my copy as the answer leaves it,
    /// when the store should show it.
    Already {
        after: Option<Node>,
        note: Option<Note>,
        out: ReplyOutcome,
    },
    /// Not sent (a rule forbids it) or held back by a cap.
    No(ReplyOutcome),
}

/// What to remember about an invitation to me once a plan is carried out.
#[derive(Debug, Clone)]
pub(crate) struct Note {
    pub uid: String,
    pub me: String,
    /// Answers queued: instance key → the answer.
    pub answered: Vec<(String, Answered)>,
    /// Why these instances were not answered.
    pub why: Option<(Vec<String>, mine::Why)>,
}

impl Note {
    pub fn why(uid: &str, me: &str, keys: Vec<String>, why: mine::Why) -> Note {
        Note {
            uid: uid.to_string(),
            me: me.to_string(),
            answered: Vec::new(),
            why: Some((keys, why)),
        }
    }
}

/// The version of a component an answer refers to: its SEQUENCE and when
/// it happens (a short hash of the timing).
pub fn version(c: &Node, inst: &Instances) -> String {
    format!(
        "{}@{}",
        c.sequence(),
        reply::key(&[&engine::timing(c, inst)])
    )
}

impl Processor {
    /// Decide the answer to an invitation to me, with every rule that holds
    /// for automatic and manual answers alike: an organizer who is not me,
    /// RSVP not FALSE, not over, one answer per request version and answer,
    /// never to myself, the caps. `pending` are the answers already planned
    /// in this run (they count against the caps and the keys).
    pub(crate) fn answer_invitation(
        &self,
        pending: &[Outgoing],
        a: &Ask<'_>,
        now: DateTime<Utc>,
        budget: &mut Budget,
    ) -> anyhow::Result<Answer> {
        let inst = Instances::of(Some(a.object), a.comps, a.zones);
        let organizer = a
            .rids
            .iter()
            .filter_map(|r| inst.find(a.object, *r))
            .find_map(Node::organizer)
            .or_else(|| engine::stored_organizer(a.object));
        match organizer.as_deref() {
            None => {
                return Ok(Answer::No(ReplyOutcome::not_sent(
                    "the invitation names no organizer",
                )))
            }
            Some(o) if self.cfg.identity.is_me(o) => {
                return Ok(Answer::No(ReplyOutcome::not_sent("I am the organizer")))
            }
            _ => {}
        }
        // Components that ask for no answer (RSVP=FALSE) are not answered.
        let asked: Vec<Option<Instant>> = a
            .rids
            .iter()
            .copied()
            .filter(|rid| {
                inst.find(a.object, *rid)
                    .is_some_and(|c| !rsvp_false(c, a.me))
            })
            .collect();
        if asked.is_empty() {
            return Ok(Answer::No(ReplyOutcome::not_sent(
                "the organizer asks for no answer (RSVP=FALSE)",
            )));
        }
        // Never answer the past: the event must go on after now
        // (expanded from now, within the budget).
        if recur::is_over(a.object, a.uid, now.timestamp(), budget) == Some(true) {
            return Ok(Answer::No(ReplyOutcome::not_sent(
                "every occurrence of the event is over",
            )));
        }
        let mut answered = a.object.clone();
        set_my_partstat(&mut answered, a.me, a.partstat, &asked, &inst);
        let versions: Vec<(String, String)> = asked
            .iter()
            .map(|rid| {
                let v = inst
                    .find(&answered, *rid)
                    .map(|c| version(c, &inst))
                    .unwrap_or_default();
                (mine::rid_key(*rid), v)
            })
            .collect();
        let record = self.records.get(a.uid)?;
        let last = |k: &str| record.as_ref().and_then(|r| r.answered.get(k));
        let same_version = versions
            .iter()
            .all(|(k, v)| last(k).is_some_and(|l| &l.version == v));
        let same_answer = same_version
            && versions
                .iter()
                .all(|(k, _)| last(k).is_some_and(|l| l.partstat == a.partstat));
        let generation = versions
            .iter()
            .filter_map(|(k, v)| last(k).filter(|l| &l.version == v))
            .map(|l| {
                if same_answer {
                    l.generation
                } else {
                    l.generation + 1
                }
            })
            .max()
            .unwrap_or(0);
        let built = reply::build_reply(&reply::ReplyRequest {
            object: &answered,
            instances: &inst,
            tz_source: a.tz_source,
            me: a.me,
            my_name: self.cfg.identity.name.as_deref(),
            partstat: a.partstat,
            recurrence_ids: &asked,
            comment: a.comment,
            request: a.request,
            now,
            generation,
        });
        // A message that cannot be answered is reported, not retried.
        let outgoing = match built.and_then(|o| self.signed(o)) {
            Ok(o) => o,
            Err(e) => return Ok(Answer::No(ReplyOutcome::not_sent(format!("{e:#}")))),
        };
        if outgoing.to.iter().any(|t| self.cfg.identity.is_me(t)) {
            return Ok(Answer::No(ReplyOutcome::not_sent(
                "it would go to one of my own addresses",
            )));
        }
        let note = Note {
            uid: a.uid.to_string(),
            me: a.me.to_string(),
            answered: versions
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        Answered {
                            partstat: a.partstat.to_string(),
                            version: v.clone(),
                            generation,
                            key: outgoing.key.clone(),
                            at: now.timestamp(),
                        },
                    )
                })
                .collect(),
            why: None,
        };
        let partstat = Some(a.partstat);
        if !a.manual && same_version && !same_answer {
            // A person changed the answer to this version since: a policy
            // never overrides that.
            return Ok(Answer::Already {
                after: None,
                note: None,
                out: ReplyOutcome::already(&outgoing, partstat),
            });
        }
        if same_answer && a.manual {
            let mut out = ReplyOutcome::already(&outgoing, partstat);
            let why = format!(
                "the last answer sent for this version is already {}",
                a.partstat
            );
            out.text = format!("not sent: {why}");
            out.reason = Some(why);
            return Ok(Answer::Already {
                after: Some(answered),
                note: Some(note),
                out,
            });
        }
        if same_answer
            || self.outbox.answered(&outgoing.key)
            || pending.iter().any(|p| p.key == outgoing.key)
        {
            return Ok(Answer::Already {
                after: Some(answered),
                note: Some(note),
                out: ReplyOutcome::already(&outgoing, partstat),
            });
        }
        if let Some(held) = self.cap(pending, &outgoing, partstat, now) {
            return Ok(Answer::No(held));
        }
        Ok(Answer::Queue {
            out: ReplyOutcome::queued(&outgoing, partstat, self.dry_run),
            outgoing,
            after: answered,
            note,
        })
    }

    /// `[outgoing] sign`: the whole mail becomes multipart/signed (S/MIME or
    /// PGP/MIME); unchanged when signing is off.
    pub(crate) fn signed(&self, mut outgoing: Outgoing) -> anyhow::Result<Outgoing> {
        outgoing.message = crate::trust::sign::sign_mail(
            &outgoing.message,
            self.cfg.trust.sign,
            &self.cfg.trust.keys,
        )
        .map_err(anyhow::Error::msg)?;
        Ok(outgoing)
    }

    /// Whether a cap holds an answer back: `outgoing.max_replies_per_hour`
    /// to one counterpart, `outgoing.max_answers_per_hour` in all.
    pub(crate) fn cap(
        &self,
        pending: &[Outgoing],
        outgoing: &Outgoing,
        partstat: Option<&str>,
        now: DateTime<Utc>,
    ) -> Option<ReplyOutcome> {
        let counterpart = crate::address::cap_key(&outgoing.counterpart);
        let recent = self.outbox.recent(&counterpart, now)
            + pending
                .iter()
                .filter(|a| crate::address::cap_key(&a.counterpart) == counterpart)
                .count();
        if recent >= self.cfg.max_replies_per_hour as usize {
            return Some(ReplyOutcome::held(
                format!(
                    "{recent} answers to {counterpart} in the last hour reach outgoing.max_replies_per_hour = {}; the invitation stays unanswered in the store and can be answered later",
                    self.cfg.max_replies_per_hour
                ),
                partstat,
            ));
        }
        let total = self.outbox.recent_all(now) + pending.len();
        if total >= self.cfg.max_answers_per_hour as usize {
            return Some(ReplyOutcome::held(
                format!(
                    "{total} answers in the last hour reach outgoing.max_answers_per_hour = {}; the invitation stays unanswered in the store and can be answered later",
                    self.cfg.max_answers_per_hour
                ),
                partstat,
            ));
        }
        None
    }

    /// Remember, after the store and the outbox are written, what imipd
    /// knows of the invitations to me it touched: my PARTSTATs as written
    /// (`written`: the UIDs whose object imipd just wrote), the answers
    /// queued, why others were not, the proposals declined (`declined`: UIDs
    /// a DECLINECOUNTER came for). Events I organize get no record.
    pub(crate) fn remember(
        &mut self,
        written: &[String],
        notes: &[Note],
        declined: &[&str],
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let mut uids: Vec<&str> = written
            .iter()
            .map(String::as_str)
            .chain(notes.iter().map(|n| n.uid.as_str()))
            .chain(declined.iter().copied())
            .collect();
        uids.sort_unstable();
        uids.dedup();
        for uid in uids {
            let object = self.store.get(uid)?;
            let mut record = self.records.get(uid)?;
            let its: Vec<&Note> = notes.iter().filter(|n| n.uid == uid).collect();
            if let Some(o) = &object {
                if engine::stored_organizer(o).is_some_and(|org| self.cfg.identity.is_me(&org)) {
                    continue;
                }
            }
            let me = its
                .first()
                .map(|n| n.me.clone())
                .or_else(|| record.as_ref().map(|r| r.me.clone()))
                .or_else(|| {
                    object
                        .as_ref()
                        .and_then(|o| my_address(o, &self.cfg.identity))
                });
            let Some(me) = me else { continue };
            let r = record.get_or_insert_with(|| Record::new(uid, &me));
            if let Some(o) = &object {
                if written.iter().any(|w| w == uid) || r.object.is_empty() {
                    r.seen = my_partstats(o, &r.me);
                    r.object = ical::to_string(&o.clone().into_ical());
                }
            }
            for n in its {
                for (k, a) in &n.answered {
                    r.answered.insert(k.clone(), a.clone());
                    r.why.remove(k);
                }
                if let Some((keys, why)) = &n.why {
                    for k in keys {
                        r.why.insert(k.clone(), why.clone());
                    }
                }
            }
            if declined.contains(&uid) {
                for c in r.countered.values_mut() {
                    c.declined.get_or_insert(now.timestamp());
                }
            }
            self.records.put(r)?;
        }
        Ok(())
    }
}

/// Set my PARTSTAT on the components an answer covers.
pub(crate) fn set_my_partstat(
    root: &mut Node,
    me: &str,
    partstat: &str,
    rids: &[Option<Instant>],
    inst: &Instances,
) {
    use calcard::icalendar::{ICalendarParameterName as Pn, ICalendarParameterValue};
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
