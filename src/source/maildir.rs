//! The Maildir source: lists the messages of `new/` and `cur/` in delivery
//! order and names each by its unique part (the file name before `:2,`), so a
//! message keeps its identity when a mail client renames it to set flags.
//! imipd only reads here; it never moves, renames or changes a message: what
//! was handled is remembered in a ledger in the state folder (an fsynced
//! line per message, written after the message was handled), so a crash
//! redoes at most the message in hand. With the account's `since`, mail
//! delivered earlier (the name's leading timestamp, else the file's
//! modification time) goes into the ledger without being processed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::outcome::MessageOutcome;
use crate::shutdown::Shutdown;
use crate::state::{maildir_ledger, Ledger};

use super::{Handler, Incoming, PassReport, SourceError};

/// One message file of a Maildir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    /// The stable unique name (without the `:2,flags` info part).
    pub key: String,
}

/// Every message in `new/` and `cur/`, sorted by unique name (the leading
/// timestamp makes that delivery order).
pub fn list(dir: &Path) -> anyhow::Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut found = false;
    for sub in ["new", "cur"] {
        let d = dir.join(sub);
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => anyhow::bail!("cannot read Maildir folder {}: {e}", d.display()),
        };
        found = true;
        for entry in rd {
            let entry = entry
                .map_err(|e| anyhow::anyhow!("cannot read Maildir folder {}: {e}", d.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                continue;
            }
            let key = name.split(':').next().unwrap_or(&name).to_string();
            out.push(Entry {
                path: entry.path(),
                key,
            });
        }
    }
    if !found {
        anyhow::bail!(
            "cannot read Maildir {}: it has neither new/ nor cur/",
            dir.display()
        );
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out.dedup_by(|a, b| a.key == b.key);
    Ok(out)
}

/// One Maildir account as a [`super::Source`].
pub struct MaildirSource {
    name: String,
    path: PathBuf,
    poll_interval: Duration,
    ledger: PathBuf,
    dry_run: bool,
    since: Option<crate::config::Since>,
}

impl MaildirSource {
    pub fn new(
        name: &str,
        path: &Path,
        poll_interval: Duration,
        state_dir: &Path,
        dry_run: bool,
    ) -> MaildirSource {
        MaildirSource {
            name: name.to_string(),
            path: path.to_path_buf(),
            poll_interval,
            ledger: maildir_ledger(state_dir, name),
            dry_run,
            since: None,
        }
    }

    /// Remember mail delivered before `since` as handled, unprocessed.
    pub fn with_since(mut self, since: Option<crate::config::Since>) -> MaildirSource {
        self.since = since;
        self
    }
}

/// When a Maildir message was delivered: the leading timestamp of its
/// unique name (`1768201502.M106P2142.host`, seconds since 1970, as every
/// delivery agent writes it), else the file's modification time.
pub fn delivered(entry: &Entry) -> Option<chrono::DateTime<chrono::Utc>> {
    let lead = entry.key.split('.').next().unwrap_or("");
    if (9..=11).contains(&lead.len()) && lead.chars().all(|c| c.is_ascii_digit()) {
        if let Some(t) = lead
            .parse::<i64>()
            .ok()
            .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        {
            return Some(t);
        }
    }
    let mtime = std::fs::metadata(&entry.path).ok()?.modified().ok()?;
    Some(chrono::DateTime::<chrono::Utc>::from(mtime))
}

impl super::Source for MaildirSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn pass<H: Handler>(
        &mut self,
        handler: &mut H,
        stop: &Shutdown,
    ) -> Result<Vec<PassReport>, SourceError> {
        let other = |e: anyhow::Error| SourceError::other(format!("{e:#}"));
        let mut ledger = Ledger::open(&self.ledger).map_err(other)?;
        let mut rep = PassReport {
            folder: self.path.display().to_string(),
            ..PassReport::default()
        };
        let cutoff = self.since.map(|s| s.cutoff(crate::clock::now()));
        let all = list(&self.path).map_err(other)?;
        let listed = all.len();
        let new: Vec<Entry> = all
            .into_iter()
            .filter(|e| !ledger.contains(&e.key))
            .collect();
        tracing::debug!(
            "{}: {listed} messages in {}, {} not handled yet",
            self.name,
            self.path.display(),
            new.len()
        );
        let mut progress = crate::progress::Progress::start(&self.name, new.len() as u64);
        // Older mail goes into the ledger in batches (one fsync each).
        let mut older: Vec<String> = Vec::new();
        for entry in new {
            if stop.is_set() {
                break;
            }
            progress.inc();
            if let Some(cutoff) = cutoff {
                if delivered(&entry).is_some_and(|t| t < cutoff) {
                    rep.older += 1;
                    if !self.dry_run {
                        older.push(entry.key);
                        if older.len() >= 1000 {
                            ledger.add_all(&older).map_err(other)?;
                            older.clear();
                        }
                    }
                    continue;
                }
            }
            rep.examined += 1;
            let source = format!("{}/{}", self.name, entry.key);
            let outcome: MessageOutcome = match std::fs::read(&entry.path) {
                Ok(raw) => {
                    handler
                        .handle(Incoming {
                            raw,
                            source,
                            account: Some(self.name.clone()),
                            folder: None,
                            can_move: false,
                            problems: Vec::new(),
                        })
                        .await
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // moved meanwhile
                Err(e) => {
                    handler.unreadable(source, format!("cannot read {}: {e}", entry.path.display()))
                }
            };
            if outcome.stop {
                let _ = ledger.add_all(&older);
                // The store or the state cannot be written: stop here, leaving
                // this message and the rest for the next pass.
                return Err(SourceError::other(format!(
                    "{}: {}",
                    outcome.source,
                    outcome
                        .error
                        .as_deref()
                        .unwrap_or("the store or the state cannot be written")
                )));
            }
            if outcome.imip {
                rep.with_calendar += 1;
            }
            if outcome.failed() {
                rep.failed += 1;
            } else if !self.dry_run {
                ledger.add(&entry.key).map_err(other)?;
            }
        }
        drop(progress);
        ledger.add_all(&older).map_err(other)?;
        if rep.older > 0 {
            tracing::info!(
                "{}: {} messages delivered before `since` remembered as handled without being processed",
                self.name,
                rep.older
            );
        }
        Ok(vec![rep])
    }

    async fn wait(&mut self, stop: &Shutdown) -> Result<(), SourceError> {
        tokio::select! {
            _ = tokio::time::sleep(self.poll_interval) => {}
            _ = stop.wait() => {}
        }
        Ok(())
    }

    async fn close(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_in_order_with_stable_keys() {
        let d = tempfile::tempdir().unwrap();
        for s in ["new", "cur", "tmp"] {
            std::fs::create_dir(d.path().join(s)).unwrap();
        }
        std::fs::write(d.path().join("cur/200.M1.h:2,S"), "x").unwrap();
        std::fs::write(d.path().join("new/100.M1.h"), "x").unwrap();
        std::fs::write(d.path().join("tmp/050.M1.h"), "x").unwrap();
        let l = list(d.path()).unwrap();
        assert_eq!(
            l.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
            ["100.M1.h", "200.M1.h"]
        );
        assert!(list(&d.path().join("missing")).is_err());
    }
}
