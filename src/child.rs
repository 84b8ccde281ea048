//! The programs imipd starts (password and token commands, decision hooks)
//! lead a process group of their own, so that one that outlives its
//! deadline is stopped together with everything it started
//! (`sh -c "sleep 600; echo pw"` would leave `sleep` behind otherwise).

use std::process::{Command, Stdio};

/// SIGKILL a process group through the shell's `kill` (no unsafe code, no
/// `kill` binary needed beyond `sh` itself). Group 0 and 1 are never
/// signalled.
pub fn kill_group(pgid: u32) {
    if pgid > 1 {
        let _ = Command::new("sh")
            .arg("-c")
            .arg("kill -s KILL -- \"-$0\" 2>/dev/null")
            .arg(pgid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
