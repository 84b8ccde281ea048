//! Standard error, shared: the one writer of lines to it (outcome lines,
//! `say_err!`, the log), and the progress of long passes. On a terminal a
//! long pass shows a progress bar (indicatif); every line written while a
//! bar is up is printed above it, so bars never garble a line. Elsewhere (a
//! log file, the journal) a long pass logs a line every
//! [`LOG_EVERY`] messages instead. Also owns the `-q` switch: with it, only
//! problems are printed.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Without a terminal, a pass over more messages than this logs its
/// progress every this many messages.
pub const LOG_EVERY: u64 = 500;

/// On a terminal, a pass over at least this many messages shows a bar.
pub const BAR_FROM: u64 = 20;

static QUIET: AtomicBool = AtomicBool::new(false);

/// `-q`: print only problems (no line per message handled, no summary, no
/// progress).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether `-q` was given.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// The bars on standard error, once a bar was ever shown.
fn bars() -> Option<&'static MultiProgress> {
    BARS.get()
}

static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// Whether standard error is a terminal (then bars and colours are shown).
pub fn stderr_is_terminal() -> bool {
    static TTY: OnceLock<bool> = OnceLock::new();
    *TTY.get_or_init(|| std::io::stderr().is_terminal())
}

/// Whether log lines may carry colours: standard error is a terminal and
/// `NO_COLOR` is not set (<https://no-color.org>).
pub fn colours() -> bool {
    stderr_is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Write bytes (whole lines) to standard error, above any progress bar.
/// A write that fails (standard error closed, its reader gone) is dropped:
/// nothing here may panic or stop a pass.
pub fn write_stderr(bytes: &[u8]) {
    let write = || {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(bytes);
        let _ = e.flush();
    };
    match bars() {
        Some(m) => m.suspend(write),
        None => write(),
    }
}

/// One line to standard error (what `say_err!` expands to).
pub fn line_to_stderr(args: std::fmt::Arguments<'_>) {
    let mut line = args.to_string();
    line.push('\n');
    write_stderr(line.as_bytes());
}

/// The log's writer: each event is written whole, above any bar.
#[derive(Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        write_stderr(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

/// The progress of one pass over one folder (or Maildir).
pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    bar: Option<ProgressBar>,
    log: bool,
}

impl Progress {
    /// A pass over about `total` messages in `label` (`account/folder`):
    /// a bar on a terminal from [`BAR_FROM`] messages on, log lines
    /// elsewhere from [`LOG_EVERY`] on, nothing with `-q` or for a short pass.
    pub fn start(label: &str, total: u64) -> Progress {
        let mut p = Progress {
            label: label.to_string(),
            total,
            done: 0,
            bar: None,
            log: false,
        };
        if quiet() {
            return p;
        }
        if stderr_is_terminal() {
            if total >= BAR_FROM {
                let m = BARS
                    .get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
                let bar = m.add(ProgressBar::new(total));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {pos}/{len} messages ({eta} left)",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(p.label.clone());
                bar.tick();
                p.bar = Some(bar);
            }
        } else if total > LOG_EVERY {
            p.log = true;
            tracing::info!("{}: {} messages to look at", p.label, total);
        }
        p
    }

    /// One message looked at.
    pub fn inc(&mut self) {
        self.done += 1;
        if let Some(b) = &self.bar {
            b.set_position(self.done);
            if self.done > self.total {
                b.set_length(self.done);
            }
        } else if self.log && self.done.is_multiple_of(LOG_EVERY) {
            tracing::info!(
                "{}: {} of {} messages looked at",
                self.label,
                self.done,
                self.total.max(self.done)
            );
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
            if let Some(m) = bars() {
                m.remove(&b);
            }
        } else if self.log {
            tracing::info!("{}: {} messages looked at", self.label, self.done);
        }
    }
}
