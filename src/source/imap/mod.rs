//! The IMAP source (async-imap over tokio-rustls): connecting and logging in
//! (implicit TLS, STARTTLS or — only when configured — plain; LOGIN,
//! AUTHENTICATE PLAIN, XOAUTH2), and one pass over a folder that touches only
//! what is needed:
//!
//! - one SELECT tells whether anything arrived (UIDVALIDITY, UIDNEXT; the
//!   folder state remembers them, the last UID handled and HIGHESTMODSEQ);
//!   nothing new means no FETCH at all;
//! - new mail is fetched in batches as BODYSTRUCTURE plus a few header
//!   fields (cut at `limits.max_header_bytes` by a partial fetch); only
//!   messages with calendar parts get a second FETCH, of those parts alone
//!   (`BODY.PEEK[n]`), so a 20 MB attachment is never downloaded; a
//!   calendar part inside a `multipart/signed` is fetched as that whole
//!   signed entity (`BODY.PEEK[n.MIME]` and `BODY.PEEK[n]`, the exact bytes
//!   the signature covers), and so is an S/MIME `application/pkcs7-mime` or
//!   a PGP/MIME `multipart/encrypted` entity, whose content cannot be seen
//!   from outside (encrypted ones only when a key of mine can open them);
//! - only the UIDs a FETCH asked for are handled, and only they move the
//!   folder's last UID (a server's unsolicited FETCH never does);
//! - handled iTIP mail gets the keyword `$iMIPProcessed` (or is moved), never
//!   `\Seen` unless configured, and is never deleted;
//! - IDLE: when mail came in between the pass and the SELECT before IDLE, the
//!   caller is told to pass again instead of idling.
//!
//! It also owns what protects imipd from the server's answers: every byte
//! read passes a [`WireGuard`] before async-imap's parser sees it (a literal
//! larger than imipd can need is cut or refused before the parser reserves
//! memory for it; a long quoted string goes on as a literal, which the
//! parser reads in linear time; parentheses nested deeper than
//! [`MAX_NESTING`] are refused), and the IMAP work runs on threads with an
//! [`IMAP_STACK`]-byte stack, on which imap-proto's recursive BODYSTRUCTURE
//! parser fits up to that nesting (it overflows a 2 MiB tokio worker stack
//! at ~350 levels in a release build, ~120 in a debug build).
//!
//! Every network step has a timeout.
//!
//! Where each part lives:
//!
//! - `mod.rs`: [`ImapSource`] (the [`Source`](super::Source): connect when
//!   a pass needs it, every folder, IDLE or polling), [`PassContext`], the
//!   folder state ([`FolderState`], `STATE/imap/ACCOUNT/FOLDER.json`),
//!   [`Seen`] and [`arrived_since`], [`Woke`], [`IDLE_MAX`], and the
//!   [`IMAP_STACK`] threads ([`on_imap_stack`]);
//! - `wire.rs`: the byte stream under the session ([`ImapStream`]: TCP or
//!   TLS) and the [`WireGuard`] every byte passes;
//! - `conn.rs`: connecting, securing and logging in ([`connect`]), a
//!   logged-in [`Connection`], its [`Caps`], and [`ImapError`];
//! - `fetch.rs`: one pass over a folder ([`Connection::pass`]: the batch
//!   FETCH, which UIDs to handle, the FETCH of the calendar parts, marking
//!   or moving) and IDLE ([`Connection::idle`]);
//! - `structure.rs`: the BODYSTRUCTURE walk (which parts and signed or
//!   encrypted entities to fetch: [`structure_of`]) and the message built
//!   from what was fetched ([`synthetic_message`]).

mod conn;
mod fetch;
mod structure;
mod wire;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ImapConfig, Limits};
use crate::fsutil::{safe_name, write_atomic};
use crate::shutdown::Shutdown;

use super::{Handler, PassReport, SourceError};

pub use conn::{connect, Caps, Connection, ImapError, Session};
pub use fetch::{advance_last_uid, plan_batch, split_by_date, uid_set, Fetched};
pub use structure::{
    calendar_parts, structure_of, synthetic_message, synthetic_message_with, CalPart, SecPart,
    Structure,
};
pub use wire::{ImapStream, WireGuard, WireLimits, MAX_NESTING, MAX_STRING, QUOTED_INLINE};

/// The stack of the threads that run IMAP work. imap-proto parses a
/// BODYSTRUCTURE recursively: 1,000 levels take < 8 MiB in a release build
/// and < 32 MiB in a debug build; this leaves room for both. Only the pages
/// touched count against memory.
pub const IMAP_STACK: usize = 64 * 1024 * 1024;

/// Run `f` (which drives IMAP work, e.g. `rt.block_on(...)`) on a thread
/// with an [`IMAP_STACK`]-byte stack, and return what it returns.
pub fn on_imap_stack<T: Send>(f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("imap".into())
            .stack_size(IMAP_STACK)
            .spawn_scoped(s, f)
            .map_err(|e| anyhow::anyhow!("cannot start the IMAP thread: {e}"))?;
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("cannot finish the IMAP work: its thread panicked"))
    })
}

/// What imipd remembers about a folder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderState {
    pub uidvalidity: u32,
    /// Every UID up to this one has been handled.
    pub last_uid: u32,
    pub uidnext: u32,
    pub highestmodseq: Option<u64>,
    /// Some message could not be handled: look again next time.
    pub retry: bool,
}

fn state_path(state_dir: &std::path::Path, account: &str, folder: &str) -> (PathBuf, String) {
    let dir = state_dir
        .join("imap")
        .join(safe_name(account).trim_end_matches(".ics"));
    let name = format!("{}.json", safe_name(folder).trim_end_matches(".ics"));
    (dir, name)
}

pub fn load_state(state_dir: &std::path::Path, account: &str, folder: &str) -> FolderState {
    let (dir, name) = state_path(state_dir, account, folder);
    std::fs::read(dir.join(name))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_state(
    state_dir: &std::path::Path,
    account: &str,
    folder: &str,
    s: &FolderState,
) -> anyhow::Result<()> {
    let (dir, name) = state_path(state_dir, account, folder);
    crate::fsutil::create_private_dir(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    write_atomic(&dir, &name, &serde_json::to_vec_pretty(s)?)
}

/// The size of a folder as a pass saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// UIDNEXT of the SELECT (0: the server gave none).
    pub uidnext: u32,
    /// EXISTS of the SELECT, less the messages the pass moved away.
    pub exists: u32,
}

/// Whether mail arrived in a folder between a pass that saw `seen` and a
/// later SELECT that shows `uidnext` and `exists`: UIDNEXT grows with every
/// new message; without UIDNEXT, more messages than the pass left.
pub fn arrived_since(seen: Seen, uidnext: Option<u32>, exists: u32) -> bool {
    match uidnext {
        Some(now) if seen.uidnext != 0 => now > seen.uidnext,
        _ => exists > seen.exists,
    }
}

/// How an [`Connection::idle`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// Mail had arrived before IDLE began (the SELECT showed it): no IDLE
    /// was sent, pass again now.
    Arrived,
    /// The server reported a change, or the time was up: pass again.
    Event,
    /// The service is stopping.
    Stopped,
}

/// Everything one pass needs besides the connection and the handler.
pub struct PassContext<'a> {
    pub account: &'a str,
    pub cfg: &'a ImapConfig,
    pub limits: &'a Limits,
    pub state_dir: &'a std::path::Path,
    pub dry_run: bool,
    /// Set when the service is asked to stop: the pass ends after the
    /// message in hand.
    pub stop: &'a Shutdown,
    /// Mail with an INTERNALDATE before this is remembered as handled
    /// without being processed (the account's `since`).
    pub cutoff: Option<chrono::DateTime<chrono::Utc>>,
}

/// IDLE is re-issued after this long at most (servers drop it after 30 minutes).
pub const IDLE_MAX: Duration = Duration::from_secs(25 * 60);

/// One IMAP account as a [`super::Source`]: connects when a pass needs it,
/// passes over every configured folder, and waits in IDLE on the first
/// folder (where the server has it) or polls.
pub struct ImapSource {
    name: String,
    cfg: ImapConfig,
    limits: Limits,
    state_dir: PathBuf,
    dry_run: bool,
    conn: Option<Connection>,
    /// What the last pass saw of the folder it idles on (for the SELECT
    /// before IDLE).
    seen: Option<Seen>,
    /// Folders the server refused to select, and when to try each again
    /// (the polling interval after the failure).
    unselectable: std::collections::HashMap<String, std::time::Instant>,
    since: Option<crate::config::Since>,
}

impl ImapSource {
    pub fn new(
        name: &str,
        cfg: &ImapConfig,
        limits: &Limits,
        state_dir: &std::path::Path,
        dry_run: bool,
    ) -> ImapSource {
        ImapSource {
            name: name.to_string(),
            cfg: cfg.clone(),
            limits: limits.clone(),
            state_dir: state_dir.to_path_buf(),
            dry_run,
            conn: None,
            seen: None,
            unselectable: Default::default(),
            since: None,
        }
    }

    /// Remember mail delivered before `since` as handled, unprocessed.
    pub fn with_since(mut self, since: Option<crate::config::Since>) -> ImapSource {
        self.since = since;
        self
    }

    /// The folder to IDLE on: the first one the server lets imipd select.
    fn idle_folder(&self) -> Option<&String> {
        self.cfg
            .folders
            .iter()
            .find(|f| !self.unselectable.contains_key(*f))
    }

    fn failed(&mut self, e: ImapError) -> SourceError {
        self.conn = None;
        SourceError {
            server: e.is_server_problem(),
            message: e.to_string(),
        }
    }
}

impl super::Source for ImapSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn reports_passes(&self) -> bool {
        true
    }

    async fn pass<H: Handler>(
        &mut self,
        handler: &mut H,
        stop: &Shutdown,
    ) -> Result<Vec<PassReport>, SourceError> {
        if self.conn.is_none() {
            // A login that waits (a password command, a silent server) is
            // given up at once when the service stops.
            let connected = tokio::select! {
                r = connect(&self.cfg, &self.limits) => r,
                _ = stop.wait() => return Ok(Vec::new()),
            };
            let conn = connected.map_err(|e| self.failed(e))?;
            tracing::info!(account = %self.name, server = %conn.server, idle = conn.caps.idle, "connected");
            self.conn = Some(conn);
        }
        let mut reports = Vec::new();
        let cutoff = self.since.map(|s| s.cutoff(crate::clock::now()));
        for folder in self.cfg.folders.clone() {
            if stop.is_set() {
                break;
            }
            // A folder the server refused is tried again at the polling
            // interval, not at every pass.
            let retry_at = self.unselectable.get(&folder).copied();
            if retry_at.is_some_and(|t| std::time::Instant::now() < t) {
                continue;
            }
            let ctx = PassContext {
                account: &self.name,
                cfg: &self.cfg,
                limits: &self.limits,
                state_dir: &self.state_dir,
                dry_run: self.dry_run,
                stop,
                cutoff,
            };
            let Some(conn) = self.conn.as_mut() else {
                break;
            };
            match conn.pass(&folder, &ctx, handler).await {
                Ok(r) => {
                    tracing::debug!(account = %self.name, folder = %folder, examined = r.examined, calendar = r.with_calendar, unchanged = r.unchanged, fetches = r.fetch_commands, bytes = r.bytes_read, "folder done");
                    if self.unselectable.remove(&folder).is_some() {
                        tracing::info!(account = %self.name, "folder {folder} can be selected again");
                    }
                    reports.push(r);
                }
                Err(e @ ImapError::Folder { .. }) => {
                    let again = std::time::Instant::now() + self.cfg.poll_interval;
                    self.unselectable.insert(folder.clone(), again);
                    if retry_at.is_none() {
                        // Reported once; the other folders go on.
                        reports.push(PassReport {
                            folder: folder.clone(),
                            error: Some(e.to_string()),
                            ..PassReport::default()
                        });
                    } else {
                        tracing::debug!(account = %self.name, "{e}");
                    }
                }
                Err(e) => return Err(self.failed(e)),
            }
        }
        let idle_folder = self.idle_folder().cloned();
        self.seen = reports
            .iter()
            .find(|r| Some(&r.folder) == idle_folder.as_ref() && r.error.is_none())
            .map(|r| r.seen);
        Ok(reports)
    }

    async fn wait(&mut self, stop: &Shutdown) -> Result<(), SourceError> {
        let idle = self
            .conn
            .as_ref()
            .is_some_and(|c| c.caps.idle && self.cfg.idle);
        if !idle {
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.poll_interval) => {}
                _ = stop.wait() => {}
            }
            return Ok(());
        }
        let Some(folder) = self.idle_folder().cloned() else {
            // No folder can be selected: look again at the polling interval.
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.poll_interval) => {}
                _ = stop.wait() => {}
            }
            return Ok(());
        };
        let Some(conn) = self.conn.take() else {
            return Ok(());
        };
        // With several folders (or one the server refused, to be tried
        // again), IDLE on the first one ends at the polling interval so the
        // others are looked at too.
        let wait = if self.cfg.folders.len() > 1 {
            self.cfg
                .poll_interval
                .clamp(Duration::from_secs(1), IDLE_MAX)
        } else {
            IDLE_MAX
        };
        let (conn, woke) = conn
            .idle(&folder, wait, self.seen, stop.wait())
            .await
            .map_err(|e| self.failed(e))?;
        if woke == Woke::Arrived {
            tracing::debug!(account = %self.name, "mail arrived before IDLE: passing again");
        }
        self.conn = Some(conn);
        Ok(())
    }

    async fn close(&mut self) {
        if let Some(c) = self.conn.take() {
            c.logout().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_arrived_since_the_pass() {
        let seen = Seen {
            uidnext: 10,
            exists: 9,
        };
        assert!(!arrived_since(seen, Some(10), 9));
        assert!(!arrived_since(seen, Some(10), 3), "expunged: nothing new");
        assert!(arrived_since(seen, Some(11), 9));
        assert!(arrived_since(seen, Some(11), 8), "one moved away, one came");
        let no_uidnext = Seen {
            uidnext: 0,
            exists: 9,
        };
        assert!(arrived_since(no_uidnext, None, 10));
        assert!(!arrived_since(no_uidnext, None, 9));
    }
}
