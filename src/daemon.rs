//! `imipd run`, the service: one task per account (IDLE on its first folder
//! where the server has it, re-issued before 29 minutes, polling at
//! `poll_interval` otherwise; reconnecting with capped exponential backoff),
//! one task that sends the outbox (at once when a reply is queued, and
//! retries with backoff), and a clean stop on SIGINT/SIGTERM: the message in
//! hand is finished, nothing is lost. A broken account never stops the
//! others, and neither does a hanging password command (it runs off the
//! worker threads, within the account's timeout). The runtime's threads have
//! an [`imap::IMAP_STACK`]-byte stack for imap-proto's recursive parser.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::config::{Account, Config, Source};
use crate::imap::{self, PassContext, Woke};
use crate::outbox::Transport;
use crate::process::{MessageOutcome, Processor};
use crate::run::{self, Options};

/// IDLE is re-issued after this long at most (servers drop it after 30 minutes).
const IDLE_MAX: Duration = Duration::from_secs(25 * 60);
/// Reconnect backoff: 1 s doubling to 5 minutes.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Run until stopped. Returns the exit status.
pub fn run(cfg: Config, opts: Options) -> anyhow::Result<u8> {
    let cfg: &'static Config = Box::leak(Box::new(cfg));
    let processor = Arc::new(Mutex::new(Processor::open(cfg, opts.dry_run)?));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(imap::IMAP_STACK)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    rt.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        let shutdown = Shutdown {
            flag: Arc::new(AtomicBool::new(false)),
            rx: stop_rx,
        };
        let outbox_kick = Arc::new(Notify::new());
        {
            let flag = shutdown.flag.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                // Stop first, then say so: nothing after this point may keep
                // the service from stopping.
                flag.store(true, Ordering::SeqCst);
                let _ = stop_tx.send(true);
                tracing::info!("stopping: finishing the message in hand");
            });
        }
        let mut tasks = Vec::new();
        for account in &cfg.accounts {
            tasks.push(tokio::spawn(account_task(
                cfg,
                account,
                processor.clone(),
                shutdown.clone(),
                outbox_kick.clone(),
                opts,
            )));
        }
        let outbox = tokio::spawn(outbox_task(
            cfg,
            processor.clone(),
            shutdown.clone(),
            outbox_kick.clone(),
            opts,
        ));
        for t in tasks {
            let _ = t.await;
        }
        outbox_kick.notify_one();
        let _ = outbox.await;
    });
    // Whatever still runs (a task stuck in a system call) is not waited for.
    rt.shutdown_timeout(Duration::from_secs(1));
    tracing::info!("stopped");
    Ok(run::EXIT_OK)
}

/// SIGTERM or SIGINT. A signal that cannot be listened for is logged and
/// never arrives (the other may); neither failing makes the service stop.
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind: SignalKind, name: &str| match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!("cannot listen for {name}: {e}");
            None
        }
    };
    let mut term = listen(SignalKind::terminate(), "SIGTERM");
    let mut int = listen(SignalKind::interrupt(), "SIGINT");
    async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
        if let Some(s) = s {
            // `None` from recv: the signal driver is gone; no signal comes.
            if s.recv().await.is_some() {
                return;
            }
        }
        std::future::pending().await
    }
    tokio::select! {
        _ = next(&mut term) => {}
        _ = next(&mut int) => {}
    }
}

/// The service's stop signal, as every task sees it. It counts as given
/// when the signal task set it, and also when that task is gone without
/// setting it: a loop waiting on a closed channel would otherwise spin.
#[derive(Clone)]
struct Shutdown {
    flag: Arc<AtomicBool>,
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst) || *self.rx.borrow() || self.rx.has_changed().is_err()
    }

    /// Resolves when the service is asked to stop.
    async fn wait(&self) {
        let mut rx = self.rx.clone();
        while !self.is_set() {
            if rx.changed().await.is_err() {
                break;
            }
        }
        // The pass loops read the flag; make sure they see it.
        self.flag.store(true, Ordering::SeqCst);
    }
}

fn report(o: &MessageOutcome, opts: Options) {
    if opts.json {
        crate::run::report(o, opts);
    } else if o.failed() {
        tracing::warn!("{o}");
    } else {
        tracing::info!("{o}");
    }
}

async fn account_task(
    cfg: &'static Config,
    account: &'static Account,
    processor: Arc<Mutex<Processor<'static>>>,
    shutdown: Shutdown,
    outbox_kick: Arc<Notify>,
    opts: Options,
) {
    match &account.source {
        Source::Maildir {
            path,
            poll_interval,
        } => loop {
            {
                let mut p = processor.lock().unwrap_or_else(|e| e.into_inner());
                match run::once_maildir(&mut p, &account.name, path, opts) {
                    Ok(_) => {}
                    Err(e) => tracing::warn!(account = %account.name, "{e:#}"),
                }
            }
            outbox_kick.notify_one();
            tokio::select! {
                _ = tokio::time::sleep(*poll_interval) => {}
                _ = shutdown.wait() => return,
            }
        },
        Source::Imap(icfg) => {
            let mut backoff = Duration::from_secs(1);
            loop {
                if shutdown.is_set() {
                    return;
                }
                // A login that waits (a password command, a silent server)
                // is given up at once on SIGTERM.
                let connected = tokio::select! {
                    r = imap::connect(icfg, &cfg.limits) => r,
                    _ = shutdown.wait() => return,
                };
                let conn = match connected {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(account = %account.name, "{e}; trying again in {} s", backoff.as_secs());
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.wait() => return,
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                };
                tracing::info!(account = %account.name, server = %conn.server, idle = conn.caps.idle, "connected");
                backoff = Duration::from_secs(1);
                if let Err(e) = serve(
                    cfg,
                    account,
                    icfg,
                    conn,
                    &processor,
                    &shutdown,
                    &outbox_kick,
                    opts,
                )
                .await
                {
                    tracing::warn!(account = %account.name, "{e}; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.wait() => return,
                    }
                } else {
                    return; // stopped cleanly
                }
            }
        }
    }
}

/// Passes and waits on one connection until it breaks (Err) or the service
/// stops (Ok).
#[allow(clippy::too_many_arguments)]
async fn serve(
    cfg: &'static Config,
    account: &'static Account,
    icfg: &'static crate::config::ImapConfig,
    mut conn: imap::Connection,
    processor: &Arc<Mutex<Processor<'static>>>,
    shutdown: &Shutdown,
    outbox_kick: &Arc<Notify>,
    opts: Options,
) -> Result<(), imap::ImapError> {
    loop {
        if shutdown.is_set() {
            conn.logout().await;
            return Ok(());
        }
        let mut first = None;
        for folder in &icfg.folders {
            let ctx = PassContext {
                account: &account.name,
                cfg: icfg,
                limits: &cfg.limits,
                state_dir: &cfg.state,
                processor: processor.as_ref(),
                dry_run: opts.dry_run,
                stop: Some(shutdown.flag.as_ref()),
            };
            let mut print = |o: &MessageOutcome| report(o, opts);
            let r = conn.pass(folder, &ctx, &mut print).await?;
            if r.with_calendar > 0 {
                outbox_kick.notify_one();
            }
            first.get_or_insert(r.seen);
        }
        if shutdown.is_set() {
            continue; // logs out at the top
        }
        if conn.caps.idle && icfg.idle {
            let wait = icfg.poll_interval.clamp(Duration::from_secs(1), IDLE_MAX);
            let wait = if icfg.folders.len() > 1 {
                wait
            } else {
                IDLE_MAX
            };
            let (c, woke) = conn
                .idle(&icfg.folders[0], wait, first, shutdown.wait())
                .await?;
            conn = c;
            if woke == Woke::Arrived {
                tracing::debug!(account = %account.name, "mail arrived before IDLE: passing again");
            }
        } else {
            tokio::select! {
                _ = tokio::time::sleep(icfg.poll_interval) => {}
                _ = shutdown.wait() => {}
            }
        }
    }
}

/// Sends what the outbox holds: when kicked, and every 30 seconds for
/// retries (each entry waits out its own backoff).
async fn outbox_task(
    cfg: &'static Config,
    processor: Arc<Mutex<Processor<'static>>>,
    shutdown: Shutdown,
    kick: Arc<Notify>,
    opts: Options,
) {
    let Some(outgoing) = &cfg.outgoing else {
        return;
    };
    if opts.dry_run {
        return;
    }
    let transport = Transport::from_config(outgoing);
    loop {
        let stop_now = shutdown.is_set();
        // Send outside the processor's lock: handling goes on meanwhile.
        let sender = {
            let p = processor.lock().unwrap_or_else(|e| e.into_inner());
            p.outbox.sender()
        };
        if sender.pending().map(|v| !v.is_empty()).unwrap_or(false) {
            match sender
                .flush(&transport, crate::clock::now(), !stop_now)
                .await
            {
                Ok(reports) => {
                    for r in reports {
                        match &r.error {
                            None => tracing::info!(to = %r.to.join(", "), "sent: {}", r.summary),
                            Some(e) => tracing::warn!("{}: {e}", r.summary),
                        }
                    }
                }
                Err(e) => tracing::warn!("{e:#}"),
            }
        }
        if stop_now {
            return;
        }
        tokio::select! {
            _ = kick.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = shutdown.wait() => {}
        }
    }
}
