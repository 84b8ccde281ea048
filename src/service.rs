//! `imipd run`, the service: one task per account (a pass, then a wait —
//! IDLE where the server has it, polling otherwise — and again; after an
//! error, a reconnect with capped exponential backoff), the processor on a
//! thread of its own that every account hands its messages to, and one task
//! that sends the outbox (at once when something was handled, and retries
//! with backoff). The stop is passed in as a future ([`serve`]), so a test
//! can start and stop the service; the binary passes SIGINT/SIGTERM. The
//! message in hand is finished, nothing is lost. A broken account never
//! stops the others, and neither does a hanging password command (it runs
//! off the worker threads, within the account's timeout). The runtime's
//! threads have an [`imap::IMAP_STACK`]-byte stack for imap-proto's
//! recursive parser. SIGHUP reloads the configuration
//! ([`serve_reloading`]): a file that does not validate is reported and the
//! configuration in use goes on; a good one replaces it after the message
//! in hand.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::config::Config;
use crate::driver::{self, Actor, AnySource, Options, Reporter};
use crate::outbox::{Sender, Transport};
use crate::shutdown::Shutdown;
use crate::source::imap;
use crate::source::Source;

/// Reconnect backoff: 1 s doubling to 5 minutes.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Run until SIGINT or SIGTERM, reloading the configuration file on
/// SIGHUP. Returns the exit status.
pub fn run(cfg: Config, opts: Options) -> anyhow::Result<u8> {
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
            Some(f) => crate::config::load(f).map_err(|e| e.to_string()),
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

/// The service with one configuration: the processor thread, a task per
/// account and the outbox task, stopped together.
struct Generation {
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    outbox: tokio::task::JoinHandle<()>,
    handled: Arc<Notify>,
    thread: std::thread::JoinHandle<()>,
}

impl Generation {
    /// Open the processor (the state lock, the store) and start every
    /// account; they stop when `stop` resolves or [`Generation::finish`].
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
        let handled = Arc::new(Notify::new());
        let (actor, thread) = Actor::spawn(cfg.clone(), reporter.clone(), handled.clone())?;
        let mut tasks = Vec::new();
        for source in AnySource::all(&cfg, reporter.opts.dry_run) {
            tasks.push(tokio::spawn(account(
                source,
                actor.clone(),
                reporter.clone(),
                shutdown.clone(),
            )));
        }
        drop(actor);
        let outbox = tokio::spawn(outbox(
            cfg.clone(),
            reporter.clone(),
            shutdown.clone(),
            handled.clone(),
        ));
        Ok(Generation {
            stop: Some(tx),
            tasks,
            outbox,
            handled,
            thread,
        })
    }

    /// Stop: every account finishes the message in hand, the outbox is
    /// sent once more, and the processor thread ends (letting go of the
    /// state lock).
    async fn finish(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        self.handled.notify_one();
        let _ = (&mut self.outbox).await;
        // Every account is done: the processor thread ends with its channel.
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// One account: pass, wait, and again, until the service stops.
async fn account(mut source: AnySource, mut handler: Actor, reporter: Reporter, stop: Shutdown) {
    let mut backoff = Duration::from_secs(1);
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
            Ok(()) => backoff = Duration::from_secs(1),
            Err(e) => {
                reporter.account_error(
                    source.name(),
                    &e,
                    &format!("; trying again in {} s", backoff.as_secs()),
                );
                source.close().await;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait() => break,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    source.close().await;
}

/// Sends what the outbox holds: when something was handled, and every 30
/// seconds for retries (each entry waits out its own backoff).
async fn outbox(cfg: Arc<Config>, reporter: Reporter, stop: Shutdown, handled: Arc<Notify>) {
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
