//! `imipd run`, the service: one task per account (a pass, then a wait —
//! IDLE where the server has it, polling otherwise — and again; after an
//! error, a reconnect with capped exponential backoff, spread by a jitter
//! of the account's own so that a restarted server is not stormed), one
//! processor per person that the person's accounts hand their messages to
//! ([`Actor`]), and per person a task that sends the outbox (at once when
//! something was handled, and retries with backoff) and one that answers
//! the edits made in the calendar. Accounts connect gradually at start
//! ([`START_BATCH`] every [`START_STEP`]), so that a thousand accounts do
//! not log in at once. The stop is passed in as a future ([`serve`]), so a
//! test can start and stop the service; the binary passes SIGINT/SIGTERM.
//! The message in hand is finished, nothing is lost. A broken account never
//! stops the others, and neither does a slow server: every account waits
//! on its own connection, every person's messages run on their own
//! blocking thread, and a hanging password command runs off the worker
//! threads, within the account's timeout. The runtime's threads have an
//! [`imap::IMAP_STACK`]-byte stack for imap-proto's recursive parser.
//! SIGHUP reloads the configuration
//! ([`serve_reloading`]): a file that does not validate is reported and the
//! configuration in use goes on; a good one replaces it after the message
//! in hand.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::config::{Config, Shard};
use crate::driver::{self, Actor, AnySource, Options, Reporter};
use crate::outbox::{Sender, Transport};
use crate::shutdown::Shutdown;
use crate::source::imap;
use crate::source::Source;

/// Reconnect backoff: 1 s doubling to 5 minutes.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// At start, this many accounts begin their first pass (and log in) …
pub const START_BATCH: usize = 20;
/// … every this long: 1,000 accounts are all under way after 5 s.
pub const START_STEP: Duration = Duration::from_millis(100);

/// At most this many outboxes are sent at once (they share one server).
const SENDERS: usize = 4;

/// How often `run` looks for changes made in the calendar.
pub const EDITS_EVERY: Duration = Duration::from_secs(2);

/// Run until SIGINT or SIGTERM, reloading the configuration file on
/// SIGHUP (and keeping to `shard` with it). Returns the exit status.
pub fn run(cfg: Config, opts: Options, shard: Option<Shard>) -> anyhow::Result<u8> {
    raise_open_files_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(imap::IMAP_STACK)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    let status = rt.block_on(async {
        let reloads = crate::shutdown::hangups();
        let file = cfg.file.clone();
        let load = move || match &file {
            Some(f) => crate::config::load(f)
                .map(|mut c| {
                    if let Some(s) = shard {
                        c.shard(s);
                    }
                    c
                })
                .map_err(|e| e.to_string()),
            None => Err("the configuration was not read from a file".to_string()),
        };
        serve_reloading(
            Arc::new(cfg),
            opts,
            crate::shutdown::signal(),
            reloads,
            load,
        )
        .await
    })?;
    // Whatever still runs (a task stuck in a system call) is not waited for.
    rt.shutdown_timeout(Duration::from_secs(1));
    tracing::info!("stopped");
    Ok(status)
}

/// Serve every account until `stop` resolves.
pub async fn serve(
    cfg: Arc<Config>,
    opts: Options,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<u8> {
    let (_never, reloads) = mpsc::unbounded_channel();
    serve_reloading(cfg, opts, stop, reloads, || {
        Err("reloading is not available here".to_string())
    })
    .await
}

/// Serve every account until `stop` resolves; on each message of
/// `reloads`, `load` the configuration again (which validates it): a good
/// one replaces the one in use — the accounts finish the message in hand,
/// the processor lets go of the state, and everything starts again with
/// the new configuration —, a bad one is reported and the one in use goes
/// on. A new configuration that cannot start (its store or state cannot be
/// opened) is reported, and the previous one starts again.
pub async fn serve_reloading(
    cfg: Arc<Config>,
    opts: Options,
    stop: impl Future<Output = ()> + Send + 'static,
    mut reloads: mpsc::UnboundedReceiver<()>,
    load: impl Fn() -> Result<Config, String>,
) -> anyhow::Result<u8> {
    // The stop, for every generation of the service to watch.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        // A closed channel counts as the stop too.
        let _ = rx.wait_for(|s| *s).await;
    };
    let reporter = Reporter::new(opts, true);
    let mut cfg = cfg;
    let mut running = Generation::start(cfg.clone(), &reporter, stopped(stop_rx.clone()))?;
    let mut reloads_open = true;
    loop {
        let new_cfg = tokio::select! {
            _ = stopped(stop_rx.clone()) => None,
            r = reloads.recv(), if reloads_open => match r {
                None => {
                    reloads_open = false;
                    continue;
                }
                Some(()) => match load() {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::error!("SIGHUP: {e}; keeping the configuration in use");
                        continue;
                    }
                },
            },
        };
        let Some(new_cfg) = new_cfg else {
            running.finish().await;
            return Ok(driver::EXIT_OK);
        };
        tracing::info!(
            "SIGHUP: reloading the configuration from {} ({} accounts); finishing the message in hand first",
            new_cfg.file.as_deref().unwrap_or(std::path::Path::new("?")).display(),
            new_cfg.accounts.len()
        );
        running.finish().await;
        let new_cfg = Arc::new(new_cfg);
        running = match Generation::start(new_cfg.clone(), &reporter, stopped(stop_rx.clone())) {
            Ok(g) => {
                tracing::info!("configuration reloaded");
                cfg = new_cfg;
                g
            }
            Err(e) => {
                tracing::error!(
                    "cannot start with the new configuration: {e:#}; going on with the previous one"
                );
                Generation::start(cfg.clone(), &reporter, stopped(stop_rx.clone()))?
            }
        };
    }
}

/// The service with one configuration: per person a processor, a task per
/// account, the outbox task and the edits task, stopped together.
struct Generation {
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    edits: Vec<tokio::task::JoinHandle<()>>,
    outboxes: Vec<tokio::task::JoinHandle<()>>,
    handled: Vec<Arc<Notify>>,
    processors: Vec<tokio::task::JoinHandle<()>>,
}

impl Generation {
    /// Open each person's processor (the state lock, the store) and start
    /// every account; they stop when `stop` resolves or
    /// [`Generation::finish`]. With several people, one whose processor
    /// cannot open (a broken store, a busy state) is reported and the
    /// others are served.
    fn start(
        cfg: Arc<Config>,
        reporter: &Reporter,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Generation> {
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown = Shutdown::when(async move {
            tokio::select! {
                _ = stop => {}
                _ = rx => {}
            }
        });
        let dry_run = reporter.opts.dry_run;
        let mut people = cfg.people();
        if people.is_empty() && cfg.has_global_person {
            // No account: the outbox is still sent.
            people.push((*cfg).clone());
        }
        let several = people.len() > 1;
        let senders = Arc::new(tokio::sync::Semaphore::new(SENDERS));
        let mut g = Generation {
            stop: Some(tx),
            tasks: Vec::new(),
            edits: Vec::new(),
            outboxes: Vec::new(),
            handled: Vec::new(),
            processors: Vec::new(),
        };
        let mut started = 0usize;
        for person in people {
            let person = Arc::new(person);
            let handled = Arc::new(Notify::new());
            let actor = match Actor::spawn(person.clone(), reporter.clone(), handled.clone()) {
                Ok((a, task)) => {
                    g.processors.push(task);
                    a
                }
                // One person's broken store or busy state stops only them.
                Err(e) if several => {
                    let who = person.person.clone().unwrap_or_else(|| "[identity]".into());
                    if reporter.opts.json {
                        crate::say_err!("imipd: {who}: {e:#}");
                    }
                    tracing::error!(person = %who, "{e:#}; its accounts are not watched");
                    continue;
                }
                Err(e) => {
                    // What started already lets go of its state.
                    drop(g.stop.take());
                    return Err(e);
                }
            };
            for source in AnySource::all(&person, dry_run) {
                let delay = START_STEP * (started / START_BATCH) as u32;
                started += 1;
                g.tasks.push(tokio::spawn(account(
                    source,
                    actor.clone(),
                    reporter.clone(),
                    shutdown.clone(),
                    delay,
                )));
            }
            if person.answer_edits && !dry_run {
                g.edits.push(tokio::spawn(edits(
                    actor.clone(),
                    shutdown.clone(),
                    handled.clone(),
                )));
            }
            drop(actor);
            g.outboxes.push(tokio::spawn(outbox(
                person.clone(),
                reporter.clone(),
                shutdown.clone(),
                handled.clone(),
                senders.clone(),
            )));
            g.handled.push(handled);
        }
        Ok(g)
    }

    /// Stop: every account finishes the message in hand, each outbox is
    /// sent once more, and each processor ends (letting go of its state
    /// lock).
    async fn finish(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        for t in self.tasks.drain(..).chain(self.edits.drain(..)) {
            let _ = t.await;
        }
        self.handled.iter().for_each(|n| n.notify_one());
        for o in self.outboxes.drain(..) {
            let _ = o.await;
        }
        // Every account is done: each processor ends with its last handle.
        for p in self.processors.drain(..) {
            let _ = p.await;
        }
    }
}

/// Let this process open as many files as it may (the hard limit): every
/// account holds a connection and every person a lock file, and the usual
/// soft limit of 1,024 is too few for a thousand accounts.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open files"),
        Err(e) => tracing::debug!("cannot raise the open files limit: {e}"),
    }
}

/// A number in [0.5, 1.5) of an account's own, for spreading retries.
fn jitter(name: &str, attempt: u32) -> f64 {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{name}/{attempt}").as_bytes());
    0.5 + f64::from(u16::from_be_bytes([h[0], h[1]])) / 65_536.0
}

/// One account: pass, wait, and again, until the service stops.
async fn account(
    mut source: AnySource,
    mut handler: Actor,
    reporter: Reporter,
    stop: Shutdown,
    start_delay: Duration,
) {
    if !start_delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(start_delay) => {}
            _ = stop.wait() => return,
        }
    }
    let mut backoff = Duration::from_secs(1);
    let mut attempt = 0u32;
    loop {
        if stop.is_set() {
            break;
        }
        let result = match source.pass(&mut handler, &stop).await {
            Ok(reports) => {
                for r in &reports {
                    let worth_a_line = !r.unchanged || r.error.is_some();
                    reporter.pass(source.name(), r, worth_a_line && source.reports_passes());
                }
                if stop.is_set() {
                    break;
                }
                source.wait(&stop).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                backoff = Duration::from_secs(1);
                attempt = 0;
            }
            Err(e) => {
                attempt += 1;
                let wait = backoff.mul_f64(jitter(source.name(), attempt));
                reporter.account_error(
                    source.name(),
                    &e,
                    &format!("; trying again in {:.1} s", wait.as_secs_f64()),
                );
                source.close().await;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait() => break,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    source.close().await;
}

/// Answers the changes another program makes in one person's calendar
/// (`[store] answer_edits`): every [`EDITS_EVERY`], through the person's
/// processor (the one writer), then has the outbox sent.
async fn edits(actor: Actor, stop: Shutdown, handled: Arc<Notify>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EDITS_EVERY) => {}
            _ = stop.wait() => return,
        }
        if stop.is_set() || !actor.edits().await {
            return;
        }
        handled.notify_one();
    }
}

/// Sends what one person's outbox holds: when something was handled, and
/// every 30 seconds for retries (each entry waits out its own backoff).
async fn outbox(
    cfg: Arc<Config>,
    reporter: Reporter,
    stop: Shutdown,
    handled: Arc<Notify>,
    senders: Arc<tokio::sync::Semaphore>,
) {
    let Some(outgoing) = &cfg.outgoing else {
        return;
    };
    if reporter.opts.dry_run {
        return;
    }
    let transport = Transport::from_config(outgoing);
    let sender = Sender::new(&cfg.state);
    loop {
        let stop_now = stop.is_set();
        if sender.pending().map(|v| !v.is_empty()).unwrap_or(false) {
            let _permit = senders.acquire().await;
            match sender
                .flush(&transport, crate::clock::now(), !stop_now)
                .await
            {
                Ok(reports) => reports.iter().for_each(|r| reporter.sent(r)),
                Err(e) => tracing::warn!("{e:#}"),
            }
        }
        if stop_now {
            return;
        }
        tokio::select! {
            _ = handled.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = stop.wait() => {}
        }
    }
}
