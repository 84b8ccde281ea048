//! The fact gathering for the policies: the facts that cost I/O or time,
//! gathered only when some policy needs them (see [`crate::policy::needs`])
//! and only for what would be answered — the address book (read once), the
//! next occurrence that has not ended (recurrences expanded), and busy time
//! in the store.

use std::collections::HashSet;
use std::path::PathBuf;

use chrono::DateTime;

use crate::address;
use crate::conflict;
use crate::ical::Node;
use crate::identity::Identity;
use crate::policy::{Facts, Needs};
use crate::recur::{self, Budget};
use crate::store::{BusyQuery, CalendarStore};

/// Gathers the costly facts for one processor.
pub struct Gatherer {
    needs: Needs,
    book_dir: Option<PathBuf>,
    book: Option<HashSet<String>>,
}

/// How far ahead the invitation's own occurrences are compared with busy time.
const HORIZON: i64 = conflict::HORIZON_DAYS * 86_400;

impl Gatherer {
    pub fn new(needs: Needs, book_dir: Option<PathBuf>) -> Gatherer {
        Gatherer {
            needs,
            book_dir,
            book: None,
        }
    }

    /// Fill in what the policies need. `answerable`: the item would be
    /// answered (an invitation to me from its proven organizer, or a
    /// COUNTER/REFRESH to me as organizer); time facts are only worth their
    /// cost then. Recurrences are expanded from now, within the message's
    /// `budget`; busy time comes from the store.
    #[allow(clippy::too_many_arguments)]
    pub fn gather(
        &mut self,
        f: &mut Facts<'_>,
        root: &Node,
        uid: &str,
        store: &mut dyn CalendarStore,
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
            f.conflict = if mine.spans.is_empty() && !mine.complete {
                None // nothing could be told within the bounds
            } else {
                let q = BusyQuery {
                    spans: &mine.spans,
                    exclude_uid: uid,
                    identity,
                    now,
                };
                Some(store.busy_overlap(&q)?.is_some())
            };
        }
        Ok(())
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
