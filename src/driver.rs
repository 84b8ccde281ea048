//! The one driver: a pass of any [`Source`] with the processor as its
//! [`Handler`], every outcome reported (a line on standard error, or JSON
//! Lines on standard output with `--json`), and the exit status of the
//! contract. The batch commands `process` (files or standard input) and
//! `once` (every account) are a pass each, then the outbox is sent; `run`
//! ([`crate::service`]) repeats passes with each person's processor behind
//! an [`Actor`]. One processor per person ([`Config::people`]): an
//! account's messages go to its person's processor only.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, Notify};

use crate::config::{Config, Source as SourceConfig};
use crate::outbox::{SendReport, Transport};
use crate::outcome::MessageOutcome;
use crate::process::{HookAnswer, HookRequest, Processor};
use crate::shutdown::Shutdown;
use crate::source::files::FilesSource;
use crate::source::imap::{self, ImapSource};
use crate::source::maildir::MaildirSource;
use crate::source::{Handler, Incoming, PassReport, Source, SourceError};

/// How to run and report.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub dry_run: bool,
    pub json: bool,
}

/// Exit statuses of the contract.
pub const EXIT_OK: u8 = 0;
pub const EXIT_SOME_FAILED: u8 = 1;
pub const EXIT_SERVER: u8 = 3;
/// EX_TEMPFAIL: the state lock stayed busy (another imipd works on the
/// state); the mail server should deliver again later.
pub const EXIT_TEMPFAIL: u8 = 75;

/// One JSON line on standard output (never panicking on a closed pipe).
pub fn print_json(value: &impl serde::Serialize) {
    let line = serde_json::to_string(value).unwrap_or_default();
    crate::say!("{line}");
}

/// How outcomes are shown: the same lines for `once`, `process` and `run`
/// — plain lines on standard error for the batch commands, log records
/// (with time and level) for the service — and JSON Lines on standard
/// output with `--json`. It also keeps the tally for `once`'s summary.
#[derive(Debug, Clone)]
pub struct Reporter {
    pub opts: Options,
    /// In the service, outcomes go to the log (tracing) rather than plain
    /// lines on standard error.
    pub log: bool,
    tally: Arc<Mutex<Tally>>,
}

/// What a batch run did, for its summary line.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Tally {
    /// Folders (and Maildirs) passed over.
    pub folders: usize,
    /// New messages looked at.
    pub messages: usize,
    /// Messages older than the account's `since`, remembered unprocessed.
    pub older: usize,
    /// Messages with calendar data (iTIP).
    pub with_calendar: usize,
    /// What was done, by effect (`created`, `updated`, `refused`, …).
    pub effects: std::collections::BTreeMap<&'static str, usize>,
    pub replies_sent: usize,
    pub replies_not_sent: usize,
    /// Messages that could not be handled, folders or accounts that failed.
    pub errors: usize,
}

impl Tally {
    /// The summary in one line.
    pub fn line(&self, dry_run: bool) -> String {
        let n =
            |k: usize, one: &str, many: &str| format!("{k} {}", if k == 1 { one } else { many });
        let mut s = format!(
            "{}{}, {}",
            if dry_run { "[dry-run] " } else { "" },
            n(self.folders, "folder", "folders"),
            n(self.messages, "new message", "new messages")
        );
        if self.older > 0 {
            s.push_str(&format!(
                " ({} older than `since`, not processed)",
                self.older
            ));
        }
        s.push_str(&format!(", {} with calendar data", self.with_calendar));
        if !self.effects.is_empty() {
            let done: Vec<String> = self
                .effects
                .iter()
                .map(|(e, k)| format!("{k} {e}"))
                .collect();
            s.push_str(&format!(": {}", done.join(", ")));
        }
        s.push_str(&format!(
            "; {}",
            n(self.replies_sent, "reply sent", "replies sent")
        ));
        if self.replies_not_sent > 0 {
            s.push_str(&format!(", {} not sent yet", self.replies_not_sent));
        }
        s.push_str(&format!("; {}", n(self.errors, "error", "errors")));
        s
    }
}

impl Reporter {
    pub fn new(opts: Options, log: bool) -> Reporter {
        Reporter {
            opts,
            log,
            tally: Arc::default(),
        }
    }

    /// A line for people: a log record in the service, a plain line on
    /// standard error otherwise (with `-q`, only problems).
    fn line(&self, problem: bool, line: &str) {
        if self.log {
            // A log record says who wrote it; a plain line says "imipd:".
            let line = line.strip_prefix("imipd: ").unwrap_or(line);
            if problem {
                tracing::warn!("{line}");
            } else {
                tracing::info!("{line}");
            }
        } else if problem || !crate::progress::quiet() {
            crate::say_err!("{line}");
        }
    }

    fn count(&self, f: impl FnOnce(&mut Tally)) {
        if let Ok(mut t) = self.tally.lock() {
            f(&mut t);
        }
    }

    /// What was done so far.
    pub fn tally(&self) -> Tally {
        self.tally.lock().map(|t| t.clone()).unwrap_or_default()
    }

    pub fn outcome(&self, o: &MessageOutcome) {
        self.count(|t| {
            if o.failed() {
                t.errors += 1;
            }
            if o.imip {
                t.with_calendar += 1;
            }
            for r in &o.results {
                *t.effects.entry(r.effect.as_str()).or_default() += 1;
            }
        });
        if self.opts.json {
            print_json(o);
            // Messages left for the next pass are named on stderr in any case.
            if let Some(e) = &o.error {
                self.line(true, &format!("imipd: {}: {e}", o.source));
            }
        } else if !o.imip && o.problems.is_empty() && !o.quarantine && !o.failed() {
            // Mail without calendar data is most mail: counted in the
            // summary, shown with -v.
            tracing::debug!("{o}");
        } else {
            self.line(o.failed(), &o.to_string());
        }
    }

    /// A pass over one folder: counted, a JSON line with `--json` (for
    /// `run`, only when something was looked at), and a folder that could
    /// not be read named.
    pub fn pass(&self, account: &str, r: &PassReport, json_line: bool) {
        self.count(|t| {
            t.folders += 1;
            t.messages += r.examined;
            t.older += r.older;
            if r.error.is_some() {
                t.errors += 1;
            }
        });
        if self.opts.json && json_line {
            print_json(
                &serde_json::json!({ "schema": crate::outcome::SCHEMA, "pass": r, "account": account }),
            );
        }
        if let Some(e) = &r.error {
            self.line(true, &format!("imipd: account {account}: {e}"));
        }
    }

    /// An answer the calendar gave (an edit or a deletion in the store).
    pub fn edit(&self, e: &crate::process::respond::EditOutcome) {
        if self.opts.json {
            print_json(&serde_json::json!({ "schema": crate::outcome::SCHEMA, "edit": e }));
        } else {
            self.line(false, &e.to_string());
        }
    }

    /// A pass or a wait that failed for the whole account.
    pub fn account_error(&self, account: &str, e: &SourceError, then: &str) {
        self.count(|t| t.errors += 1);
        if self.log {
            tracing::warn!(account = %account, "{e}{then}");
        } else {
            self.line(true, &format!("imipd: account {account}: {e}{then}"));
        }
    }

    pub fn sent(&self, r: &SendReport) {
        self.count(|t| match r.status {
            "sent" => t.replies_sent += 1,
            _ => t.replies_not_sent += 1,
        });
        if self.opts.json {
            print_json(&serde_json::json!({ "schema": crate::outcome::SCHEMA, "outbox": r }));
            return;
        }
        let line = match &r.error {
            None => format!("sent to {}: {}", r.to.join(", "), r.summary),
            Some(e) if r.status == "rejected" => {
                format!(
                    "imipd: rejected for good, kept in outbox-rejected/: {}: {e}",
                    r.summary
                )
            }
            Some(e) => format!(
                "imipd: not sent yet, kept in the outbox: {}: {e}",
                r.summary
            ),
        };
        self.line(r.error.is_some(), &line);
    }

    /// `once`'s last line, on standard error (also with `--json`): folders,
    /// new messages, what was done, replies, errors.
    pub fn summary(&self) {
        let t = self.tally();
        if !crate::progress::quiet() {
            crate::say_err!("imipd: {}", t.line(self.opts.dry_run));
        }
    }
}

/// The processor as a handler, in the caller's thread (`once`, `process`).
pub struct Direct<'p> {
    processor: &'p mut Processor,
    reporter: Reporter,
}

impl Handler for Direct<'_> {
    async fn handle(&mut self, m: Incoming) -> MessageOutcome {
        let o = self.processor.process_from(&m.raw, m.origin());
        self.reporter.outcome(&o);
        o
    }

    fn unreadable(&mut self, source: String, error: String) -> MessageOutcome {
        let o = MessageOutcome::failed_to_read(&source, error, self.processor.dry_run);
        self.reporter.outcome(&o);
        o
    }
}

/// What a person's processor is asked to do.
enum Job {
    /// Handle a message.
    Message(Incoming, oneshot::Sender<MessageOutcome>),
    /// Handle a message again, now that its decision hook answered.
    Hooked(Incoming, oneshot::Sender<MessageOutcome>, HookAnswer),
    /// Answer the changes made in the calendar (`[store] answer_edits`).
    Edits(oneshot::Sender<u8>),
}

/// A message that waits for its decision hook, with the hook to run.
type Waiting = (Incoming, oneshot::Sender<MessageOutcome>, HookRequest);

/// One person's processor for the service, shared by that person's
/// accounts through a channel. A task owns it and runs each job on the
/// runtime's blocking threads (so a slow store holds up only this person):
/// one at a time, in the order asked, without a lock around it. A decision
/// hook runs beside it, not on it: its message waits, the person's other
/// messages go on ([`Processor::defer_hooks`]).
#[derive(Clone)]
pub struct Actor {
    jobs: mpsc::Sender<Job>,
    reporter: Reporter,
    dry_run: bool,
    /// Told when a message was handled (the outbox may have something new).
    handled: Arc<Notify>,
}

impl Actor {
    /// Open the processor here, so that a busy lock or a broken store is
    /// reported at once. It is closed (the lock let go) when the last
    /// [`Actor`] of it is dropped and the hooks under way have answered:
    /// the task returned ends then.
    pub fn spawn(
        cfg: Arc<Config>,
        reporter: Reporter,
        handled: Arc<Notify>,
    ) -> anyhow::Result<(Actor, tokio::task::JoinHandle<()>)> {
        let dry_run = reporter.opts.dry_run;
        let mut processor = Processor::open(cfg, dry_run)?;
        processor.defer_hooks();
        let (tx, rx) = mpsc::channel::<Job>(1);
        let task = tokio::spawn(serve_jobs(processor, rx, reporter.clone()));
        Ok((
            Actor {
                jobs: tx,
                reporter,
                dry_run,
                handled,
            },
            task,
        ))
    }
}

/// The processor's task: each job on a blocking thread, in order; each
/// decision hook on a blocking thread of its own, its message handed in
/// again when it answered. Ends when every [`Actor`] is gone and no hook
/// is under way.
async fn serve_jobs(processor: Processor, mut jobs: mpsc::Receiver<Job>, reporter: Reporter) {
    // A hook's answer with its message (`None`: the hook's thread died).
    let (answered_tx, mut answered) = mpsc::unbounded_channel::<Option<Job>>();
    let mut under_way = 0usize;
    let mut open = true;
    let mut slot = Some(processor);
    loop {
        let job = tokio::select! {
            j = jobs.recv(), if open => match j {
                Some(j) => j,
                None => {
                    open = false;
                    continue;
                }
            },
            Some(j) = answered.recv(), if under_way > 0 => {
                under_way -= 1;
                match j {
                    Some(j) => j,
                    None => continue,
                }
            }
            else => break,
        };
        let Some(mut p) = slot.take() else { break };
        let reporter = reporter.clone();
        let back = tokio::task::spawn_blocking(move || {
            let waiting: Option<Waiting> = match job {
                Job::Message(m, reply) => handle(&mut p, m, reply),
                Job::Hooked(m, reply, answer) => {
                    p.hook_answered(answer);
                    handle(&mut p, m, reply)
                }
                Job::Edits(reply) => {
                    let _ = reply.send(edits(&mut p, &reporter));
                    None
                }
            };
            (p, waiting)
        })
        .await;
        // A panic loses the processor (and lets its lock go): the jobs
        // after it are answered "the processor stopped".
        let Ok((p, waiting)) = back else { break };
        slot = Some(p);
        if let Some((m, reply, request)) = waiting {
            under_way += 1;
            let answered_tx = answered_tx.clone();
            tokio::spawn(async move {
                // A thread that died drops the reply: "the processor
                // stopped" for that message, which is tried again later.
                let job = tokio::task::spawn_blocking(move || request.run())
                    .await
                    .ok()
                    .map(|answer| Job::Hooked(m, reply, answer));
                let _ = answered_tx.send(job);
            });
        }
    }
}

/// Handle one message: its outcome, or the hook it waits for.
fn handle(
    p: &mut Processor,
    m: Incoming,
    reply: oneshot::Sender<MessageOutcome>,
) -> Option<Waiting> {
    let o = p.process_from(&m.raw, m.origin());
    match p.take_hook_request() {
        Some(request) => Some((m, reply, request)),
        None => {
            let _ = reply.send(o);
            None
        }
    }
}

impl Actor {
    /// Have the processor answer the changes made in the calendar; `false`
    /// once the processor has stopped.
    pub async fn edits(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Job::Edits(tx)).await.is_err() {
            return false;
        }
        rx.await.is_ok()
    }
}

impl Handler for Actor {
    async fn handle(&mut self, m: Incoming) -> MessageOutcome {
        let source = m.source.clone();
        let (tx, rx) = oneshot::channel();
        let o = match self.jobs.send(Job::Message(m, tx)).await {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        };
        let o = o.unwrap_or_else(|| {
            let mut o = MessageOutcome::failed_to_read(
                &source,
                "the processor stopped".into(),
                self.dry_run,
            );
            o.stop = true;
            o
        });
        self.reporter.outcome(&o);
        self.handled.notify_one();
        o
    }

    fn unreadable(&mut self, source: String, error: String) -> MessageOutcome {
        let o = MessageOutcome::failed_to_read(&source, error, self.dry_run);
        self.reporter.outcome(&o);
        o
    }
}

/// Every configured account as a source.
pub enum AnySource {
    Imap(Box<ImapSource>),
    Maildir(MaildirSource),
}

impl AnySource {
    pub fn all(cfg: &Config, dry_run: bool) -> Vec<AnySource> {
        cfg.accounts
            .iter()
            .map(|a| match &a.source {
                SourceConfig::Imap(i) => AnySource::Imap(Box::new(
                    ImapSource::new(&a.name, i, &cfg.limits, &cfg.state, dry_run)
                        .with_since(a.since),
                )),
                SourceConfig::Maildir {
                    path,
                    poll_interval,
                } => AnySource::Maildir(
                    MaildirSource::new(&a.name, path, *poll_interval, &cfg.state, dry_run)
                        .with_since(a.since),
                ),
            })
            .collect()
    }
}

impl Source for AnySource {
    fn name(&self) -> &str {
        match self {
            AnySource::Imap(s) => s.name(),
            AnySource::Maildir(s) => s.name(),
        }
    }

    fn reports_passes(&self) -> bool {
        match self {
            AnySource::Imap(s) => s.reports_passes(),
            AnySource::Maildir(s) => s.reports_passes(),
        }
    }

    async fn pass<H: Handler>(
        &mut self,
        handler: &mut H,
        stop: &Shutdown,
    ) -> Result<Vec<PassReport>, SourceError> {
        match self {
            AnySource::Imap(s) => s.pass(handler, stop).await,
            AnySource::Maildir(s) => s.pass(handler, stop).await,
        }
    }

    async fn wait(&mut self, stop: &Shutdown) -> Result<(), SourceError> {
        match self {
            AnySource::Imap(s) => s.wait(stop).await,
            AnySource::Maildir(s) => s.wait(stop).await,
        }
    }

    async fn close(&mut self) {
        match self {
            AnySource::Imap(s) => s.close().await,
            AnySource::Maildir(s) => s.close().await,
        }
    }
}

/// One pass of a source; the exit status it earns.
pub async fn pass<S: Source, H: Handler>(
    source: &mut S,
    handler: &mut H,
    reporter: &Reporter,
    stop: &Shutdown,
) -> u8 {
    match source.pass(handler, stop).await {
        Ok(reports) => {
            let mut status = EXIT_OK;
            for r in &reports {
                reporter.pass(source.name(), r, source.reports_passes());
                if r.failed > 0 || r.error.is_some() {
                    status = EXIT_SOME_FAILED;
                }
            }
            status
        }
        Err(e) => {
            reporter.account_error(source.name(), &e, "");
            if e.server {
                EXIT_SERVER
            } else {
                EXIT_SOME_FAILED
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

/// Answer what changed in the store since the last look (`[store]
/// answer_edits`), under the write lock; the exit status it earns.
pub fn edits(p: &mut Processor, reporter: &Reporter) -> u8 {
    let mut look = || -> anyhow::Result<Vec<crate::process::respond::EditOutcome>> {
        let _lock = p.lock()?;
        p.answer_edits(None, crate::clock::now())
    };
    let result = look();
    match result {
        Ok(edits) => {
            edits.iter().for_each(|e| reporter.edit(e));
            EXIT_OK
        }
        Err(e) => {
            crate::say_err!("imipd: cannot answer the changes made in the calendar: {e:#}");
            EXIT_SOME_FAILED
        }
    }
}

/// Run a batch command's passes on a thread with the IMAP stack; with
/// `edits`, then answer the changes made in the calendar; with `summary`,
/// end with the one-line summary.
fn batch<S: Source>(
    cfg: Arc<Config>,
    opts: Options,
    mut sources: Vec<S>,
    with_edits: bool,
    summary: bool,
) -> anyhow::Result<u8> {
    imap::on_imap_stack(move || -> anyhow::Result<u8> {
        let mut processor = Processor::open(cfg, opts.dry_run)?;
        let reporter = Reporter::new(opts, false);
        let rt = runtime()?;
        let status = rt.block_on(async {
            let mut handler = Direct {
                processor: &mut processor,
                reporter: reporter.clone(),
            };
            let stop = Shutdown::never();
            let mut status = EXIT_OK;
            for s in sources.iter_mut() {
                status = status.max(pass(s, &mut handler, &reporter, &stop).await);
                s.close().await;
            }
            status
        });
        let status = if with_edits {
            status.max(edits(&mut processor, &reporter))
        } else {
            status
        };
        let status = status.max(flush(&mut processor, &reporter)?);
        if summary {
            reporter.summary();
        }
        Ok(status)
    })?
}

/// `imipd once`: every account, every folder, then the outbox; person by
/// person, each with its own processor, state and store. One person that
/// cannot be served (its state locked by another imipd, its store
/// unusable) is reported and the others go on.
pub fn once(cfg: Arc<Config>, opts: Options) -> anyhow::Result<u8> {
    let people = cfg.people();
    if people.len() <= 1 {
        let person = Arc::new(people.into_iter().next().unwrap_or_else(|| (*cfg).clone()));
        let sources = AnySource::all(&person, opts.dry_run);
        return batch(person, opts, sources, true, true);
    }
    let mut status = EXIT_OK;
    for person in people {
        let person = Arc::new(person);
        let sources = AnySource::all(&person, opts.dry_run);
        let who = person.person.clone().unwrap_or_else(|| "[identity]".into());
        match batch(person, opts, sources, true, true) {
            Ok(s) => status = status.max(s),
            Err(e) => {
                crate::say_err!("imipd: {who}: {e:#}");
                status = status.max(if e.chain().any(|c| c.is::<crate::state::LockBusy>()) {
                    EXIT_TEMPFAIL
                } else {
                    EXIT_SOME_FAILED
                });
            }
        }
    }
    Ok(status)
}

/// `imipd process FILE|-...`: each message in the order given, then the outbox.
pub fn process(cfg: Arc<Config>, files: &[String], opts: Options) -> anyhow::Result<u8> {
    batch(cfg, opts, vec![FilesSource::new(files)], false, false)
}

/// Send what the outbox holds (everything, whatever its backoff); exit 3
/// when the server could not be reached or refused the login.
pub fn flush(p: &mut Processor, reporter: &Reporter) -> anyhow::Result<u8> {
    if p.dry_run {
        return Ok(EXIT_OK);
    }
    let Some(outgoing) = &p.cfg.outgoing else {
        let n = p.outbox.pending()?.len();
        if n > 0 {
            crate::say_err!(
                "imipd: {n} message(s) wait in the outbox, but no [outgoing] is configured"
            );
        }
        return Ok(EXIT_OK);
    };
    if p.outbox.pending()?.is_empty() {
        return Ok(EXIT_OK);
    }
    let transport = Transport::from_config(outgoing);
    let rt = runtime()?;
    let reports = rt.block_on(p.outbox.flush(&transport, crate::clock::now(), false))?;
    let mut status = EXIT_OK;
    for r in &reports {
        reporter.sent(r);
        match r.status {
            "failed" => status = status.max(EXIT_SERVER),
            "rejected" => status = status.max(EXIT_SOME_FAILED),
            _ => {}
        }
    }
    Ok(status)
}
