//! What imipd remembers about each invitation to me that it filed: one
//! record per UID in `STATE/mine/` (private, written atomically). It holds
//! my PARTSTAT of each instance as imipd last wrote it into the store (so
//! that a change another program makes — khal, a phone through vdirsyncer —
//! is told apart from imipd's own writes), the last answer queued for each
//! instance (so that `respond` knows a repeated answer from a changed one),
//! why an invitation was not answered (so that `pending` can say so long
//! after the run that decided it), the times I proposed with COUNTER, and
//! the object as last written (so that an invitation deleted from the store
//! can still be declined).
//!
//! Instances are keyed by their RECURRENCE-ID as an instant
//! ([`rid_key`]: `*` for the whole event), never by the text as written.
//! Beside the records, how I appear in a stored object ([`my_address`],
//! [`my_partstats`], [`rsvp_false`]).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use calcard::icalendar::{ICalendarParameterName, ICalendarProperty as P};
use serde::{Deserialize, Serialize};

use crate::engine::Instances;
use crate::fsutil::{create_private_dir, safe_name, write_atomic};
use crate::ical::{self, Node};
use crate::identity::Identity;
use crate::time::{Instant, Zones};

/// The key of an instance in a record: `*` for the whole event (the
/// master), else the canonical instant (`20270119T090000Z`, `20270119`).
pub fn rid_key(rid: Option<Instant>) -> String {
    rid.map(|r| r.canonical()).unwrap_or_else(|| "*".into())
}

/// My address in an object: the first ATTENDEE of a scheduling component
/// that is one of mine.
pub fn my_address(object: &Node, identity: &Identity) -> Option<String> {
    object
        .children
        .iter()
        .filter(|c| c.is_scheduling())
        .flat_map(|c| c.entries.iter())
        .filter(|e| e.name == P::Attendee)
        .filter_map(ical::cal_address)
        .find(|a| identity.is_me(a))
}

/// How the instances of a stored object are told apart.
pub fn instances(object: &Node) -> Instances {
    Instances::of(Some(object), &[], &Zones::of(object))
}

/// My PARTSTAT in each component of an object that names me, by instance key.
pub fn my_partstats(object: &Node, me: &str) -> BTreeMap<String, String> {
    let inst = instances(object);
    object
        .children
        .iter()
        .filter(|c| c.is_scheduling())
        .filter_map(|c| {
            let e = c
                .entries
                .iter()
                .find(|e| e.name == P::Attendee && ical::cal_address(e).as_deref() == Some(me))?;
            Some((rid_key(inst.rid(c)), ical::partstat(e)))
        })
        .collect()
}

/// Whether my ATTENDEE in a component says RSVP=FALSE.
pub fn rsvp_false(c: &Node, me: &str) -> bool {
    c.entries.iter().any(|e| {
        e.name == P::Attendee
            && ical::cal_address(e).as_deref() == Some(me)
            && ical::param(e, &ICalendarParameterName::Rsvp)
                .is_some_and(|v| v.eq_ignore_ascii_case("FALSE"))
    })
}

/// What imipd remembers of one invitation to me.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub uid: String,
    /// My calendar address as the event names it (`mailto:`, lower case).
    pub me: String,
    /// Instance → my PARTSTAT in the store as imipd last wrote it (or
    /// last acted on a change to it).
    #[serde(default)]
    pub seen: BTreeMap<String, String>,
    /// Instance → the last answer queued for it.
    #[serde(default)]
    pub answered: BTreeMap<String, Answered>,
    /// Instance → why it was not answered, until it is.
    #[serde(default)]
    pub why: BTreeMap<String, Why>,
    /// Instance → the time I proposed instead (COUNTER).
    #[serde(default)]
    pub countered: BTreeMap<String, Countered>,
    /// The object (the store's text for the UID) as imipd last wrote it.
    #[serde(default)]
    pub object: String,
}

/// An answer queued for one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answered {
    pub partstat: String,
    /// The version answered: SEQUENCE and timing of the component.
    pub version: String,
    /// How many times the answer to this version changed before this one:
    /// the answer key of a changed answer includes it, so that accept,
    /// decline, accept sends three REPLYs and accept, accept one.
    pub generation: u32,
    pub key: String,
    /// Unix seconds.
    pub at: i64,
}

/// Why an invitation (one instance) was not answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Why {
    pub text: String,
    /// The policy that decided (`default` when none matched).
    pub policy: Option<String>,
    /// Unix seconds.
    pub at: i64,
}

/// A time I proposed instead (an iTIP COUNTER I sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Countered {
    /// RFC 3339.
    pub start: String,
    pub end: String,
    pub comment: Option<String>,
    /// Unix seconds.
    pub at: i64,
    /// When the organizer declined it (DECLINECOUNTER), Unix seconds.
    pub declined: Option<i64>,
}

impl Record {
    pub fn new(uid: &str, me: &str) -> Record {
        Record {
            uid: uid.to_string(),
            me: me.to_string(),
            ..Record::default()
        }
    }
}

/// The records of a state folder.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn new(state: &Path) -> Records {
        Records {
            dir: state.join("mine"),
        }
    }

    fn name(uid: &str) -> String {
        format!("{}.json", safe_name(uid).trim_end_matches(".ics"))
    }

    /// The record of a UID; `None` when imipd keeps none. A record that
    /// cannot be read as one is reported and treated as absent.
    pub fn get(&self, uid: &str) -> anyhow::Result<Option<Record>> {
        let path = self.dir.join(Self::name(uid));
        match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Record>(&bytes) {
                Ok(r) if r.uid == uid => Ok(Some(r)),
                Ok(_) => Ok(None),
                Err(e) => {
                    tracing::warn!(file = %path.display(), "cannot read record: {e}; ignoring it");
                    Ok(None)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        }
    }

    /// Write a record (atomically, private).
    pub fn put(&self, r: &Record) -> anyhow::Result<()> {
        create_private_dir(&self.dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", self.dir.display()))?;
        let json = serde_json::to_vec_pretty(r)?;
        write_atomic(&self.dir, &Self::name(&r.uid), &json)
    }

    /// Forget a UID.
    pub fn remove(&self, uid: &str) -> anyhow::Result<()> {
        let path = self.dir.join(Self::name(uid));
        match fs::remove_file(&path) {
            Ok(()) => {
                let _ = fs::File::open(&self.dir).and_then(|d| d.sync_all());
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => anyhow::bail!("cannot remove {}: {e}", path.display()),
        }
    }

    /// Every record, in UID order.
    pub fn all(&self) -> anyhow::Result<Vec<Record>> {
        let mut out = Vec::new();
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => anyhow::bail!("cannot read {}: {e}", self.dir.display()),
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let Ok(bytes) = fs::read(entry.path()) else {
                continue;
            };
            match serde_json::from_slice::<Record>(&bytes) {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), "cannot read record: {e}; ignoring it")
                }
            }
        }
        out.sort_by(|a, b| a.uid.cmp(&b.uid));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_under_safe_names() {
        let dir = tempfile::tempdir().unwrap();
        let rs = Records::new(dir.path());
        assert!(rs.get("../x").unwrap().is_none());
        let mut r = Record::new("../x", "mailto:bob@example.com");
        r.seen.insert("*".into(), "ACCEPTED".into());
        rs.put(&r).unwrap();
        assert_eq!(rs.get("../x").unwrap(), Some(r.clone()));
        assert_eq!(rs.all().unwrap(), vec![r]);
        assert!(dir.path().join("mine").read_dir().unwrap().count() == 1);
        rs.remove("../x").unwrap();
        assert!(rs.get("../x").unwrap().is_none());
    }
}
