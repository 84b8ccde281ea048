//! A harness that starts REAL servers on 127.0.0.1 for the integration tests:
//! a throwaway Dovecot (IMAP, IMAPS, LMTP) and an aiosmtpd SMTP receiver,
//! each in its own temp dir on its own free ports, with test certificates.
//!
//! - [`certs`]: a test CA, a server certificate it signed, and an unrelated CA.
//! - [`python`]: a venv under the target dir with aiosmtpd (installed once).
//! - [`smtp`]: the SMTP receiver (`tests/harness/smtp_receiver.py`).
//! - [`dovecot`]: Dovecot as a child process, plus a tiny raw IMAP/LMTP client.
//! - [`keys`]: S/MIME certificates (openssl) and PGP keys (gpg) for the trust tests.
//!
//! Every server is a child process of the test and is killed when its handle
//! is dropped (and by a watchdog if the test process dies without
//! unwinding). Only 127.0.0.1 is ever used.
//!
//! ```ignore
//! let dc = Dovecot::start(&[("bob@example.org", "pw"), ("alice@example.org", "pw2")]);
//! dc.append("bob@example.org", "INBOX", invitation.as_bytes()); // via LMTP
//! let smtp = SmtpServer::start(
//!     SmtpOptions::default()
//!         .with_tls(SmtpTls::StartTls)
//!         .with_auth("bob@example.org", "pw")
//!         // replies to alice end up in her INBOX
//!         .with_lmtp_forward(dc.lmtp_port, &[]),
//! );
//! // imipd config: imap 127.0.0.1:{dc.imap_port} or imaps {dc.imaps_port},
//! // ca_file = dc.certs.ca_pem; smtp 127.0.0.1:{smtp.port}, ca_file = smtp.ca_pem()
//! let sent = smtp.wait_for(1, Duration::from_secs(10));
//! assert_eq!(dc.folder_count("alice@example.org", "INBOX"), 1);
//! ```

#![allow(dead_code)]

pub mod certs;
pub mod dav;
pub mod dovecot;
pub mod keys;
pub mod python;
pub mod smtp;
pub mod tap;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Child;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// Ports already handed out by [`free_port`] in this process, so that two
/// servers started in parallel never get the same one.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free TCP port on 127.0.0.1: bind port 0, read the port, drop the socket.
/// Never returns the same port twice within one test process.
pub fn free_port() -> u16 {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let set = guard.get_or_insert_with(HashSet::new);
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        if set.insert(port) {
            return port;
        }
    }
}

/// Whether a TCP connection to 127.0.0.1:`port` succeeds within `timeout`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Like [`wait_for_port`], but gives up at once when `child` has exited.
pub(crate) fn wait_for_port_or_exit(child: &mut Child, port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Whether 127.0.0.1:`port` can be bound right now (nobody listens on it).
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Wait until none of `ports` has a listener any more (after a kill).
pub(crate) fn wait_ports_free(ports: &[u16], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ports.iter().all(|&p| port_is_free(p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// `tests/harness/` of the crate under test (holds `smtp_receiver.py`).
pub fn harness_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("harness")
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

const SIGKILL: i32 = 9;

/// SIGKILL the whole process group `pgid` (a child spawned with
/// `process_group(0)` leads its own group, so its pid is the group id).
pub(crate) fn kill_process_group(pgid: u32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
        unsafe {
            libc_kill(-(pgid as i32), SIGKILL);
        }
    }
}

/// Kill a child (and its process group) with SIGKILL and reap it.
/// The group goes too even when the leader already exited (Dovecot's
/// children outlive a crashed master).
pub(crate) fn kill_child(child: &mut Child) {
    kill_process_group(child.id());
    let _ = child.kill();
    let _ = child.wait();
}

/// Start a watchdog in process group `pgid` (a server's group) that SIGKILLs
/// the group when this test process is gone, so a test binary killed without
/// unwinding (Ctrl-C, a CI timeout) leaves no server behind. It dies with the
/// group on a normal stop; reap it with [`kill_child`].
pub(crate) fn spawn_watchdog(pgid: u32) -> Option<Child> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -9 -{pgid}",
        me = std::process::id()
    );
    Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(pgid as i32)
        .spawn()
        .ok()
}

/// Make a fresh temp dir with mode 0755 (Dovecot's unprivileged processes
/// must be able to traverse it; `mkdtemp` gives 0700).
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("cannot create a temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (for SASL PLAIN/XOAUTH2 in tests).
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(B64[(n >> 18) as usize & 63] as char);
        out.push(B64[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            B64[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            B64[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// Decode standard base64 (padding optional, whitespace ignored).
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            b' ' | b'\r' | b'\n' | b'\t' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Turn every bare LF into CRLF (leaves existing CRLF alone).
pub fn to_crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 16);
    let mut prev = 0u8;
    for &b in raw {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// Check a TLS server on 127.0.0.1:`port` with `openssl s_client`, trusting
/// only `ca` and requiring the name `localhost`; `starttls` is s_client's
/// protocol name ("smtp", "imap") or None for implicit TLS. Ok(transcript)
/// when the handshake verified, Err(transcript) otherwise.
pub fn openssl_tls_check(
    port: u16,
    starttls: Option<&str>,
    ca: &std::path::Path,
) -> Result<String, String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-servername")
        .arg("localhost")
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_return_error", "-verify_hostname", "localhost"]);
    if let Some(p) = starttls {
        cmd.args(["-starttls", p]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run openssl s_client");
    let quit: &[u8] = match starttls {
        Some("imap") => b"Z LOGOUT\r\n",
        _ => b"QUIT\r\n",
    };
    let _ = child.stdin.take().unwrap().write_all(quit);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.contains("Verify return code: 0 (ok)") {
        Ok(text)
    } else {
        Err(text)
    }
}
