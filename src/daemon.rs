//! `imipd run`, the service: one task per account (IDLE on its first folder
//! where the server has it, re-issued before 29 minutes, polling at
//! `poll_interval` otherwise; reconnecting with capped exponential backoff),
//! one task that sends the outbox (at once when a reply is queued, and
//! retries with backoff), and a clean stop on SIGINT/SIGTERM: the message in
//! hand is finished, nothing is lost. A broken account never stops the others.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::config::{Account, Config, Source};
use crate::imap::{self, PassContext};
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
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    rt.block_on(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopping = Arc::new(AtomicBool::new(false));
        let outbox_kick = Arc::new(Notify::new());
        {
            let stopping = stopping.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("stopping: finishing the message in hand");
                stopping.store(true, Ordering::SeqCst);
                let _ = stop_tx.send(true);
            });
        }
        let mut tasks = Vec::new();
        for account in &cfg.accounts {
            tasks.push(tokio::spawn(account_task(
                cfg,
                account,
                processor.clone(),
                stop_rx.clone(),
                stopping.clone(),
                outbox_kick.clone(),
                opts,
            )));
        }
        let outbox = tokio::spawn(outbox_task(
            cfg,
            processor.clone(),
            stop_rx.clone(),
            outbox_kick.clone(),
            opts,
        ));
        for t in tasks {
            let _ = t.await;
        }
        outbox_kick.notify_one();
        let _ = outbox.await;
    });
    tracing::info!("stopped");
    Ok(run::EXIT_OK)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Resolves when the service is asked to stop.
async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
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
    stop_rx: watch::Receiver<bool>,
    stopping: Arc<AtomicBool>,
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
                _ = stopped(stop_rx.clone()) => return,
            }
        },
        Source::Imap(icfg) => {
            let mut backoff = Duration::from_secs(1);
            loop {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let conn = match imap::connect(icfg).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(account = %account.name, "{e}; trying again in {} s", backoff.as_secs());
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stopped(stop_rx.clone()) => return,
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
                    &stop_rx,
                    &stopping,
                    &outbox_kick,
                    opts,
                )
                .await
                {
                    tracing::warn!(account = %account.name, "{e}; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped(stop_rx.clone()) => return,
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
    stop_rx: &watch::Receiver<bool>,
    stopping: &Arc<AtomicBool>,
    outbox_kick: &Arc<Notify>,
    opts: Options,
) -> Result<(), imap::ImapError> {
    loop {
        if stopping.load(Ordering::SeqCst) {
            conn.logout().await;
            return Ok(());
        }
        for folder in &icfg.folders {
            let ctx = PassContext {
                account: &account.name,
                cfg: icfg,
                limits: &cfg.limits,
                state_dir: &cfg.state,
                processor: processor.as_ref(),
                dry_run: opts.dry_run,
                stop: Some(stopping.as_ref()),
            };
            let mut print = |o: &MessageOutcome| report(o, opts);
            let r = conn.pass(folder, &ctx, &mut print).await?;
            if r.with_calendar > 0 {
                outbox_kick.notify_one();
            }
        }
        if stopping.load(Ordering::SeqCst) {
            continue; // logs out at the top
        }
        if conn.caps.idle && icfg.idle {
            let wait = icfg.poll_interval.clamp(Duration::from_secs(1), IDLE_MAX);
            let wait = if icfg.folders.len() > 1 {
                wait
            } else {
                IDLE_MAX
            };
            conn = conn
                .idle(&icfg.folders[0], wait, stopped(stop_rx.clone()))
                .await?;
        } else {
            tokio::select! {
                _ = tokio::time::sleep(icfg.poll_interval) => {}
                _ = stopped(stop_rx.clone()) => {}
            }
        }
    }
}

/// Sends what the outbox holds: when kicked, and every 30 seconds for
/// retries (each entry waits out its own backoff).
async fn outbox_task(
    cfg: &'static Config,
    processor: Arc<Mutex<Processor<'static>>>,
    stop_rx: watch::Receiver<bool>,
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
        let stop_now = *stop_rx.borrow();
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
            _ = stopped(stop_rx.clone()) => {}
        }
    }
}
