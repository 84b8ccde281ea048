//! The mail sources, and the seam between them and the rest of imipd. A
//! [`Source`] finds what is new, hands each message to a [`Handler`] (the
//! processor, through the driver), and settles it by the outcome: marks it
//! handled, moves or quarantines it, or leaves it for the next pass; then it
//! waits for more. IMAP ([`imap`]), a Maildir ([`maildir`]) and files or
//! standard input ([`files`]) implement it; [`crate::driver`] runs a pass
//! for `once`, `process` and `run` alike. No source knows the processor.

pub mod files;
pub mod imap;
pub mod maildir;

use std::future::Future;

use serde::Serialize;

use crate::outcome::{MessageOutcome, Origin};
use crate::shutdown::Shutdown;

/// One message a source found, with where it comes from.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The raw message (for IMAP: its headers and calendar parts only).
    pub raw: Vec<u8>,
    /// The file, or `account/folder/uid` for mailbox messages.
    pub source: String,
    pub account: Option<String>,
    pub folder: Option<String>,
    /// The source can move quarantined mail itself (IMAP with a
    /// `quarantine_folder`); otherwise a copy is kept in the state.
    pub can_move: bool,
    /// What the source found wrong before the message got here (a part over
    /// a limit that was not fetched): each makes the message invalid.
    pub problems: Vec<String>,
}

impl Incoming {
    /// The processor's view of where the message comes from.
    pub fn origin(&self) -> Origin<'_> {
        Origin {
            source: &self.source,
            account: self.account.as_deref(),
            folder: self.folder.as_deref(),
            can_move: self.can_move,
            problems: &self.problems,
        }
    }
}

/// What handles the messages a source finds (the processor, with the
/// driver's reporting around it).
pub trait Handler: Send {
    fn handle(&mut self, m: Incoming) -> impl Future<Output = MessageOutcome> + Send;

    /// A message the source found but could not read: reported like an
    /// outcome that failed, and left for the next pass.
    fn unreadable(&mut self, source: String, error: String) -> MessageOutcome;
}

/// Counters of one pass over one folder (or Maildir, or set of files).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PassReport {
    pub folder: String,
    pub unchanged: bool,
    pub examined: usize,
    pub with_calendar: usize,
    pub failed: usize,
    /// UID FETCH commands sent (0 for an unchanged folder; IMAP only).
    pub fetch_commands: usize,
    /// Bytes read from the server during the pass (IMAP only).
    pub bytes_read: u64,
    /// Messages delivered before the account's `since`: remembered as
    /// handled without being processed.
    pub older: usize,
    /// The folder could not be read (it does not exist, or cannot be
    /// selected); the account's other folders went on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the pass's SELECT showed, so that the SELECT before IDLE can
    /// tell whether mail arrived since (IMAP only).
    #[serde(skip)]
    pub seen: imap::Seen,
}

/// Why a pass or a wait failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    pub message: String,
    /// The server could not be reached or refused the login (exit 3).
    pub server: bool,
}

impl SourceError {
    pub fn other(message: impl Into<String>) -> SourceError {
        SourceError {
            message: message.into(),
            server: false,
        }
    }
}

/// A mail source.
pub trait Source: Send {
    /// The account (or file list) this source reads, for messages.
    fn name(&self) -> &str;

    /// Whether `once --json` prints a line per folder pass (IMAP).
    fn reports_passes(&self) -> bool {
        false
    }

    /// One pass: every new message to `handler`, in order, each settled by
    /// its outcome. After `stop` is set, the pass ends with the message in
    /// hand. When the outcome says the store or the state cannot be written
    /// (`stop` on the outcome), the pass ends with an error and that message
    /// and every later one stay for the next pass.
    fn pass<H: Handler>(
        &mut self,
        handler: &mut H,
        stop: &Shutdown,
    ) -> impl Future<Output = Result<Vec<PassReport>, SourceError>> + Send;

    /// Wait until new mail may be there (IDLE, or the polling interval), or
    /// the service stops.
    fn wait(&mut self, stop: &Shutdown) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// Let go of connections (after an error, or at the end).
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}
