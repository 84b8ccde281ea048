//! Secrets (passwords and tokens): given raw, as a command's first line of
//! output, or as a file's content. Commands run with a timeout, off the async
//! worker threads, and are killed with their whole process group when the
//! time is up; a secret's `Debug` never shows its value.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A secret value (a password or a token), from the file itself, from a
/// command's standard output, or from a file. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Raw(String),
    Command(String),
    File(PathBuf),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Raw(_) => write!(f, "Secret(<redacted>)"),
            Secret::Command(c) => write!(f, "Secret(command `{c}`)"),
            Secret::File(p) => write!(f, "Secret(file {})", p.display()),
        }
    }
}

/// How long [`Secret::resolve`] lets a command run when the caller gives no
/// timeout of its own.
pub const SECRET_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

impl Secret {
    /// The secret's value: the raw string, the first line a command prints, or
    /// a file's content without its trailing line break. Blocking: a command
    /// gets [`SECRET_COMMAND_TIMEOUT`]. Async code uses
    /// [`Secret::resolve_within`], which blocks no thread.
    pub fn resolve(&self) -> anyhow::Result<String> {
        match self {
            Secret::Command(cmd) => {
                let out = secret_command::run_blocking(cmd, SECRET_COMMAND_TIMEOUT)?;
                first_line(cmd, out)
            }
            _ => self.resolve_plain(),
        }
    }

    /// The secret's value, for async code. A command runs as a child process
    /// watched by the runtime (no worker thread waits for it) for at most
    /// `timeout`; a command still running then is killed with everything it
    /// started (its process group), and so it is when the caller stops
    /// waiting (this future dropped, e.g. on SIGTERM).
    pub async fn resolve_within(&self, timeout: Duration) -> anyhow::Result<String> {
        match self {
            Secret::Command(cmd) => {
                let out = secret_command::run_async(cmd, timeout).await?;
                first_line(cmd, out)
            }
            _ => self.resolve_plain(),
        }
    }

    fn resolve_plain(&self) -> anyhow::Result<String> {
        match self {
            Secret::Raw(s) => Ok(s.clone()),
            Secret::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read password file {}: {e}", path.display())
                })?;
                Ok(text.trim_end_matches(['\r', '\n']).to_string())
            }
            Secret::Command(cmd) => anyhow::bail!("cannot run password command `{cmd}` here"),
        }
    }
}

/// The first line a secret command printed.
fn first_line(cmd: &str, out: std::process::Output) -> anyhow::Result<String> {
    if !out.status.success() {
        anyhow::bail!(
            "cannot run password command `{cmd}`: it exited with {}",
            out.status
        );
    }
    let text = String::from_utf8(out.stdout)
        .map_err(|_| anyhow::anyhow!("cannot read password command `{cmd}` output: not UTF-8"))?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// Running `password_command` / `oauth_token_command` (`sh -c`) with a
/// deadline. The shell leads a process group of its own, so that a command
/// that outlives its deadline is killed together with whatever it started
/// (`sh -c "sleep 600; echo pw"` leaves `sleep` behind otherwise).
mod secret_command {
    use std::io::Read;
    use std::os::unix::process::CommandExt as _;
    use std::process::{Output, Stdio};
    use std::time::Duration;

    fn spawn_error(cmd: &str, e: std::io::Error) -> anyhow::Error {
        anyhow::anyhow!("cannot run password command `{cmd}`: {e}")
    }

    fn timed_out(cmd: &str, timeout: Duration) -> anyhow::Error {
        anyhow::anyhow!(
            "cannot run password command `{cmd}`: it did not finish within {} s (the account's timeout) and was stopped",
            timeout.as_secs_f64()
        )
    }

    /// Kills the group when dropped, unless the command finished.
    struct Group(Option<u32>);

    impl Drop for Group {
        fn drop(&mut self) {
            if let Some(pgid) = self.0.take() {
                crate::child::kill_group(pgid);
            }
        }
    }

    /// `sh -c CMD` in a process group of its own, its output piped.
    fn shell(cmd: &str) -> std::process::Command {
        let mut c = std::process::Command::new("sh");
        c.arg("-c")
            .arg(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        c
    }

    pub(super) async fn run_async(cmd: &str, timeout: Duration) -> anyhow::Result<Output> {
        let child = tokio::process::Command::from(shell(cmd))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| spawn_error(cmd, e))?;
        let mut group = Group(child.id());
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Err(_) => Err(timed_out(cmd, timeout)),
            Ok(Err(e)) => Err(spawn_error(cmd, e)),
            Ok(Ok(out)) => {
                group.0 = None;
                Ok(out)
            }
        }
    }

    pub(super) fn run_blocking(cmd: &str, timeout: Duration) -> anyhow::Result<Output> {
        let mut child = shell(cmd).spawn().map_err(|e| spawn_error(cmd, e))?;
        let mut group = Group(Some(child.id()));
        let mut stdout = child.stdout.take();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut buf);
            }
            let status = child.wait();
            let _ = tx.send(status.map(|status| Output {
                status,
                stdout: buf,
                stderr: Vec::new(),
            }));
        });
        match rx.recv_timeout(timeout) {
            Err(_) => Err(timed_out(cmd, timeout)),
            Ok(Err(e)) => Err(spawn_error(cmd, e)),
            Ok(Ok(out)) => {
                group.0 = None;
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_hides_the_value() {
        let s = Secret::Raw("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn secret_commands_print_their_first_line() {
        let s = Secret::Command("printf 'pw\\nsecond\\n'".into());
        assert_eq!(s.resolve().unwrap(), "pw");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = rt.block_on(s.resolve_within(Duration::from_secs(10)));
        assert_eq!(got.unwrap(), "pw");
        let e = rt
            .block_on(Secret::Command("exit 3".into()).resolve_within(Duration::from_secs(10)))
            .unwrap_err();
        assert!(e.to_string().contains("exited with"), "{e}");
    }

    /// Whether a process with `marker` in its command line runs.
    fn running(marker: &str) -> bool {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
    }

    /// Poll until no process with `marker` runs (panics after 5 s).
    fn wait_gone(marker: &str) {
        let t0 = std::time::Instant::now();
        while running(marker) {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "`{marker}` was not killed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_hanging_secret_command_is_stopped_at_the_timeout() {
        // The shell forks `sleep` (a compound command): only killing the
        // process group ends it too. GNU sleep takes fractions, which makes
        // the command line unique to this test.
        let marker = format!("sleep 600.{}1", std::process::id());
        let cmd = format!("{marker}; echo pw");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let t0 = std::time::Instant::now();
        let e = rt
            .block_on(Secret::Command(cmd.clone()).resolve_within(Duration::from_millis(300)))
            .unwrap_err();
        assert!(e.to_string().contains("did not finish within"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        wait_gone(&marker.replace(' ', "\0"));

        let marker = format!("sleep 600.{}2", std::process::id());
        let cmd = format!("{marker}; echo pw");
        let t0 = std::time::Instant::now();
        let e = secret_command::run_blocking(&cmd, Duration::from_millis(300)).unwrap_err();
        assert!(e.to_string().contains("did not finish within"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        wait_gone(&marker.replace(' ', "\0"));
    }

    #[test]
    fn a_secret_command_is_killed_when_its_caller_gives_up() {
        let marker = format!("sleep 600.{}3", std::process::id());
        let cmd = Secret::Command(format!("{marker}; echo pw"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sleep_argv = marker.replace(' ', "\0");
        rt.block_on(async {
            tokio::select! {
                _ = cmd.resolve_within(Duration::from_secs(600)) => panic!("it cannot finish"),
                _ = async {
                    while !running(&sleep_argv) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                } => {}
            }
        });
        wait_gone(&sleep_argv);
    }
}
