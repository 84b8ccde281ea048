//! The stop signal every task of the service watches: given as a future
//! (SIGINT/SIGTERM in the binary, anything a test likes), seen by loops as a
//! flag they check between messages and as a future they can wait on. It
//! counts as given when its sender is gone without giving it: a loop waiting
//! on a closed channel would otherwise spin. Also SIGHUP, which asks the
//! service to reload its configuration ([`hangups`]).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// The service's stop signal, as every task sees it.
#[derive(Clone)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    rx: Option<watch::Receiver<bool>>,
}

impl Shutdown {
    /// A signal that never comes (`once`, `process`).
    pub fn never() -> Shutdown {
        Shutdown {
            flag: Arc::new(AtomicBool::new(false)),
            rx: None,
        }
    }

    /// A signal given when `stop` resolves (spawned on the current runtime).
    pub fn when(stop: impl Future<Output = ()> + Send + 'static) -> Shutdown {
        let (tx, rx) = watch::channel(false);
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        tokio::spawn(async move {
            stop.await;
            // Stop first, then say so: nothing after this point may keep
            // the service from stopping.
            f.store(true, Ordering::SeqCst);
            let _ = tx.send(true);
            tracing::info!("stopping: finishing the message in hand");
        });
        Shutdown { flag, rx: Some(rx) }
    }

    /// Whether the stop was asked for.
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
            || self
                .rx
                .as_ref()
                .is_some_and(|rx| *rx.borrow() || rx.has_changed().is_err())
    }

    /// Resolves when the stop is asked for (never for [`Shutdown::never`]).
    pub async fn wait(&self) {
        let Some(rx) = &self.rx else {
            return std::future::pending().await;
        };
        let mut rx = rx.clone();
        while !self.is_set() {
            if rx.changed().await.is_err() {
                break;
            }
        }
        // The pass loops read the flag; make sure they see it.
        self.flag.store(true, Ordering::SeqCst);
    }
}

/// SIGTERM or SIGINT. A signal that cannot be listened for is logged and
/// never arrives (the other may); neither failing makes the service stop.
pub async fn signal() {
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

/// SIGHUP, each time it arrives, as a message on the channel returned (the
/// service reloads its configuration). When SIGHUP cannot be listened for,
/// that is logged and the channel closes.
pub fn hangups() -> tokio::sync::mpsc::UnboundedReceiver<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    match signal(SignalKind::hangup()) {
        Ok(mut s) => {
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if tx.send(()).is_err() {
                        break;
                    }
                }
            });
        }
        Err(e) => tracing::error!("cannot listen for SIGHUP (no reloading): {e}"),
    }
    rx
}
