//! The fact gathering for the policies: the facts that cost I/O or time,
//! gathered only when some policy needs them (see [`crate::policy::needs`])
//! and only for what would be answered — the address book (read once), the
//! next occurrence that has not ended (recurrences expanded), and busy time
//! in the store.

use std::collections::HashSet;
use std::path::PathBuf;

use chrono::DateTime;

use crate::address;
use crate::config::Identity;
use crate::conflict::{self, Busy};
use crate::ical::Node;
use crate::policy::{Facts, Needs};
use crate::recur::{self, Budget};
use crate::store::Store;

/// Gathers the costly facts for one processor.
pub struct Gatherer {
    needs: Needs,
    book_dir: Option<PathBuf>,
    book: Option<HashSet<String>>,
    /// The busy time of the store, built once and kept up to date; built
    /// again when someone else changed the store or the window moved on.
    busy: Option<Cached>,
}

struct Cached {
    busy: Busy,
    /// [`Store::changes`] when it was built.
    changes: u64,
}

/// How far ahead busy time is looked at.
const HORIZON: i64 = conflict::HORIZON_DAYS * 86_400;

impl Gatherer {
    pub fn new(needs: Needs, book_dir: Option<PathBuf>) -> Gatherer {
        Gatherer {
            needs,
            book_dir,
            book: None,
            busy: None,
        }
    }

    /// Fill in what the policies need. `answerable`: the item would be
    /// answered (an invitation to me from its proven organizer, or a
    /// COUNTER/REFRESH to me as organizer); time facts are only worth their
    /// cost then. Recurrences are expanded from now, within the message's
    /// `budget`.
    #[allow(clippy::too_many_arguments)]
    pub fn gather(
        &mut self,
        f: &mut Facts<'_>,
        root: &Node,
        uid: &str,
        store: &Store,
        identity: &Identity,
        answerable: bool,
        budget: &mut Budget,
    ) -> anyhow::Result<()> {
        if self.needs.known_sender {
            if self.book.is_none() {
                self.book = Some(match &self.book_dir {
                    Some(dir) => address_book(dir)?,
                    None => HashSet::new(),
                });
            }
            let book = self.book.as_ref();
            f.known_sender = Some(
                f.organizer()
                    .is_some_and(|o| book.is_some_and(|b| b.contains(&address::bare(&o)))),
            );
        }
        if !answerable || !(self.needs.next || self.needs.conflict) {
            return Ok(());
        }
        let now = f.now.timestamp();
        let series = recur::Series::new(root, uid);
        f.next = series.next_occurrence(now, budget).and_then(|(s, e)| {
            Some((
                DateTime::from_timestamp(s, 0)?,
                DateTime::from_timestamp(e, 0)?,
            ))
        });
        if self.needs.conflict {
            let mine = series.occurrences(now, now.saturating_add(HORIZON), budget, |c| {
                !c.text(&calcard::icalendar::ICalendarProperty::Status)
                    .is_some_and(|s| s.eq_ignore_ascii_case("CANCELLED"))
            });
            let busy = self.busy(store, identity, now)?;
            f.conflict = if mine.spans.is_empty() && !mine.complete {
                None // nothing could be told within the bounds
            } else {
                Some(busy.overlaps(&mine.spans, uid).is_some())
            };
        }
        Ok(())
    }

    /// The store's busy time from about now, built when first needed and
    /// again when the store changed under imipd or a day has passed.
    fn busy(&mut self, store: &Store, identity: &Identity, now: i64) -> anyhow::Result<&Busy> {
        let changes = store.changes();
        let stale = match &self.busy {
            None => true,
            Some(c) => c.changes != changes || now - c.busy.window().0 > 86_400,
        };
        if stale {
            let from = now - 86_400;
            let busy = Busy::build(store, identity, from, now.saturating_add(HORIZON))?;
            self.busy = Some(Cached { busy, changes });
        }
        Ok(&self.busy.as_ref().expect("built above").busy)
    }

    /// After the store wrote (or removed) one UID: its busy time changes.
    pub fn stored(&mut self, uid: &str, root: Option<&Node>, identity: &Identity, store: &Store) {
        if let Some(c) = self.busy.as_mut() {
            c.busy.update(uid, root, identity);
            c.changes = store.changes();
        }
    }
}

/// The e-mail addresses in an address book: every EMAIL of every vCard in
/// the `.vcf` files of a folder (parsed with calcard), lower-cased.
pub fn address_book(dir: &std::path::Path) -> anyhow::Result<std::collections::HashSet<String>> {
    use calcard::vcard::VCardProperty;
    let mut out = std::collections::HashSet::new();
    let rd = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot read address book {}: {e}", dir.display()))?;
    for entry in rd.flatten() {
        let path = entry.path();
        if !path
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("vcf"))
        {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let mut parser = calcard::Parser::new(&text);
        loop {
            match parser.entry() {
                calcard::Entry::VCard(card) => {
                    for e in card
                        .entries
                        .iter()
                        .filter(|e| e.name == VCardProperty::Email)
                    {
                        for v in &e.values {
                            if let Some(t) = v.as_text() {
                                out.insert(address::bare(t));
                            }
                        }
                    }
                }
                calcard::Entry::Eof => break,
                _ => {}
            }
        }
    }
    Ok(out)
}
