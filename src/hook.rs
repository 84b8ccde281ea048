//! The decision hook (`[[policy]] action = "command"`): a program of the
//! user's that reads one JSON object on standard input — the invitation as
//! `pending --json` shows it, plus `method`, the proven `originator` and
//! the `policy` name — and prints one JSON object, `{"action": "accept" |
//! "decline" | "tentative" | "file" | "ignore" | "quarantine", "comment":
//! "…"}`. It runs without a shell, in a process group of its own, for at
//! most its `timeout`; then it is killed with everything it started. A
//! timeout, a non-zero exit or output that is not such an object gives the
//! policy's `fallback`, and the outcome says why.
//!
//! `once` and `process` run it while the message is in hand. In `imipd
//! run` it runs beside the person's processor, not on it
//! ([`crate::process::Processor::defer_hooks`]): its message waits, the
//! other messages go on.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Deserialize;

use crate::policy::{Action, Hook};

/// At most this much of the hook's output is read.
const MAX_OUTPUT: u64 = 64 * 1024;

/// What the hook decided, or the fallback and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub comment: Option<String>,
    /// `None` when the hook answered; else why the fallback was used.
    pub failure: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Output {
    action: String,
    #[serde(default)]
    comment: Option<String>,
}

/// Read the hook's answer from what it printed.
pub fn parse(out: &[u8]) -> Result<(Action, Option<String>), String> {
    let text = std::str::from_utf8(out).map_err(|_| "its output is not UTF-8".to_string())?;
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Output>();
    let first = match stream.next() {
        Some(Ok(o)) => o,
        Some(Err(e)) => {
            return Err(format!(
                "its output is not a JSON object {{\"action\": …}}: {e}"
            ))
        }
        None => return Err("it printed nothing".into()),
    };
    let action = Action::parse(&first.action).ok_or_else(|| {
        format!(
            "it answered action `{}`, which is none of accept, decline, tentative, file, ignore, quarantine",
            first.action
        )
    })?;
    Ok((action, first.comment.filter(|c| !c.trim().is_empty())))
}

/// Run the hook with `input` on its standard input; its decision, or the
/// fallback with the reason.
pub fn run(hook: &Hook, input: &[u8]) -> Decision {
    match run_raw(&hook.command, input, hook.timeout) {
        Ok(out) => match parse(&out) {
            Ok((action, comment)) => Decision {
                action,
                comment,
                failure: None,
            },
            Err(why) => fallback(hook, why),
        },
        Err(why) => fallback(hook, why),
    }
}

fn fallback(hook: &Hook, why: String) -> Decision {
    let program = hook.command.first().map(String::as_str).unwrap_or("?");
    let failure = format!(
        "the hook `{program}` gave no decision ({why}); fallback {}",
        hook.fallback.as_str()
    );
    tracing::warn!("{failure}");
    Decision {
        action: hook.fallback,
        comment: None,
        failure: Some(failure),
    }
}

/// Run a program (no shell) with a deadline; its standard output when it
/// exits 0.
fn run_raw(command: &[String], input: &[u8], timeout: Duration) -> Result<Vec<u8>, String> {
    let (program, args) = command.split_first().ok_or("no program given")?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let pgid = child.id();
    // Feed and drain it on threads of their own: a hook that does not read
    // its input, or prints much, must not stall imipd.
    let mut stdin = child.stdin.take();
    let input = input.to_vec();
    std::thread::spawn(move || {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(&input);
        }
    });
    let mut stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.take(MAX_OUTPUT).read_to_end(&mut buf);
            // Whatever is beyond the limit is read and dropped.
            let _ = std::io::copy(s, &mut std::io::sink());
        }
        let status = child.wait();
        let _ = tx.send((status, buf));
    });
    match rx.recv_timeout(timeout) {
        Err(_) => {
            crate::child::kill_group(pgid);
            Err(format!(
                "it did not answer within {} s and was stopped",
                timeout.as_secs_f64()
            ))
        }
        Ok((Err(e), _)) => Err(format!("cannot wait for it: {e}")),
        Ok((Ok(status), out)) => {
            // Whatever it left running goes with it.
            crate::child::kill_group(pgid);
            if status.success() {
                Ok(out)
            } else {
                Err(format!("it exited with {status}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(cmd: &[&str], timeout_ms: u64) -> Hook {
        Hook {
            command: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_millis(timeout_ms),
            fallback: Action::File,
        }
    }

    #[test]
    fn a_hook_answers_with_an_action_and_a_comment() {
        let h = hook(
            &[
                "sh",
                "-c",
                "cat >/dev/null; echo '{\"action\": \"decline\", \"comment\": \"busy\"}'",
            ],
            10_000,
        );
        let d = run(&h, b"{}");
        assert_eq!(d.action, Action::Decline);
        assert_eq!(d.comment.as_deref(), Some("busy"));
        assert!(d.failure.is_none());
    }

    #[test]
    fn garbage_a_failure_and_a_hang_give_the_fallback() {
        let d = run(&hook(&["sh", "-c", "echo hello"], 10_000), b"{}");
        assert_eq!(d.action, Action::File);
        assert!(d.failure.unwrap().contains("not a JSON object"));
        let d = run(
            &hook(
                &["sh", "-c", "echo '{\"action\":\"accept\"}'; exit 3"],
                10_000,
            ),
            b"{}",
        );
        assert!(d.failure.unwrap().contains("exited with"));
        let d = run(
            &hook(&["sh", "-c", "echo '{\"action\":\"command\"}'"], 10_000),
            b"{}",
        );
        assert!(d.failure.unwrap().contains("none of accept"));
        let started = std::time::Instant::now();
        let d = run(&hook(&["sh", "-c", "sleep 600; echo x"], 300), b"{}");
        assert!(d.failure.unwrap().contains("did not answer within"));
        assert!(started.elapsed() < Duration::from_secs(10));
        let d = run(&hook(&["/nonexistent/hook"], 1000), b"{}");
        assert!(d.failure.unwrap().contains("cannot run it"));
    }
}
