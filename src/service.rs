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
//! recursive parser.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::Config;
use crate::driver::{self, Actor, AnySource, Options, Reporter};
use crate::outbox::{Sender, Transport};
use crate::shutdown::Shutdown;
use crate::source::imap;
use crate::source::Source;

/// Reconnect backoff: 1 s doubling to 5 minutes.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Run until SIGINT or SIGTERM. Returns the exit status.
pub fn run(cfg: Config, opts: Options) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(imap::IMAP_STACK)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    let status = rt.block_on(serve(Arc::new(cfg), opts, crate::shutdown::signal()))?;
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
    let shutdown = Shutdown::when(stop);
    let reporter = Reporter { opts, log: true };
    let handled = Arc::new(Notify::new());
    let (actor, thread) = Actor::spawn(cfg.clone(), reporter, handled.clone())?;
    let mut tasks = Vec::new();
    for source in AnySource::all(&cfg, opts.dry_run) {
        tasks.push(tokio::spawn(account(
            source,
            actor.clone(),
            reporter,
            shutdown.clone(),
        )));
    }
    let edits = (cfg.answer_edits && !opts.dry_run)
        .then(|| tokio::spawn(edits(actor.clone(), shutdown.clone(), handled.clone())));
    drop(actor);
    let outbox = tokio::spawn(outbox(
        cfg.clone(),
        reporter,
        shutdown.clone(),
        handled.clone(),
    ));
    for t in tasks {
        let _ = t.await;
    }
    if let Some(t) = edits {
        let _ = t.await;
    }
    handled.notify_one();
    let _ = outbox.await;
    // Every account is done: the processor thread ends with its channel.
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    Ok(driver::EXIT_OK)
}

/// One account: pass, wait, and again, until the service stops.
async fn account(mut source: AnySource, mut handler: Actor, reporter: Reporter, stop: Shutdown) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if stop.is_set() {
            break;
        }
        let result = match source.pass(&mut handler, &stop).await {
            Ok(_) => {
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
                if reporter.opts.json {
                    crate::say_err!("imipd: account {}: {e}", source.name());
                }
                tracing::warn!(account = %source.name(), "{e}; trying again in {} s", backoff.as_secs());
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

/// How often `run` looks for changes made in the calendar.
pub const EDITS_EVERY: Duration = Duration::from_secs(2);

/// Answers the changes another program makes in the calendar (`[store]
/// answer_edits`): every [`EDITS_EVERY`], through the processor thread
/// (the one writer), then has the outbox sent.
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
