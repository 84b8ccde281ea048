//! A wire tap in front of the real Dovecot, and a persistent raw IMAP
//! client.
//!
//! [`Tap`] listens on 127.0.0.1 and forwards every connection to Dovecot's
//! plain IMAP port (so the client must use `tls = "none"`). It is not a mock:
//! every answer is Dovecot's. It gives a test two things a real server
//! cannot:
//!
//! - a **pause point** on the wire: a hook sees each client command line
//!   before it is forwarded and may block (deliver mail, change flags from
//!   another session, ...), which places an event between two commands of
//!   the client deterministically, without sleeping;
//! - a **hostile server**: a hook sees each complete server response (a line
//!   with its `{N}` literals) and may rewrite it, for answers Dovecot never
//!   gives (a BODYSTRUCTURE nested deeper than its parser's 100 levels, a
//!   literal announcing more bytes than exist).
//!
//! [`ImapClient`] is one logged-in session kept open across commands (the
//! one-shot helpers of [`super::dovecot`] log out after their commands), for
//! "another client" that changes flags while the client under test works.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

type ClientHook = Box<dyn FnMut(&[u8]) + Send>;
type ServerHook = Box<dyn FnMut(Vec<u8>) -> Vec<u8> + Send>;

/// A forwarding man-in-the-middle on 127.0.0.1 (see the module docs).
pub struct Tap {
    /// Where the client under test connects (plain IMAP).
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Tap {
    /// Forward 127.0.0.1:`port` to 127.0.0.1:`upstream`. `on_client` sees
    /// every line a client sends (with its CRLF) before it goes on;
    /// `on_server` gets every server response (line plus literals) and
    /// returns the bytes the client gets instead. Both are shared by all
    /// connections and called on the tap's threads.
    pub fn start(
        upstream: u16,
        on_client: impl FnMut(&[u8]) + Send + 'static,
        on_server: impl FnMut(Vec<u8>) -> Vec<u8> + Send + 'static,
    ) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the tap");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let on_client: Arc<Mutex<ClientHook>> = Arc::new(Mutex::new(Box::new(on_client)));
        let on_server: Arc<Mutex<ServerHook>> = Arc::new(Mutex::new(Box::new(on_server)));
        {
            let stop = stop.clone();
            thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    forward(client, server, on_client.clone(), on_server.clone());
                }
            });
        }
        Tap { port, stop }
    }

    /// A tap that only forwards.
    pub fn transparent(upstream: u16) -> Tap {
        Tap::start(upstream, |_| {}, |r| r)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn forward(
    client: TcpStream,
    server: TcpStream,
    on_client: Arc<Mutex<ClientHook>>,
    on_server: Arc<Mutex<ServerHook>>,
) {
    let (c_read, mut c_write) = (client.try_clone().unwrap(), client);
    let (s_read, mut s_write) = (server.try_clone().unwrap(), server);
    // Client → server, line by line.
    thread::spawn(move || {
        let mut r = BufReader::new(c_read);
        loop {
            let mut line = Vec::new();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            (on_client.lock().unwrap_or_else(|e| e.into_inner()))(&line);
            if s_write.write_all(&line).is_err() {
                break;
            }
        }
        let _ = s_write.shutdown(Shutdown::Write);
    });
    // Server → client, one response (line plus literals) at a time.
    thread::spawn(move || {
        let mut r = BufReader::new(s_read);
        while let Some(unit) = read_response(&mut r) {
            let out = (on_server.lock().unwrap_or_else(|e| e.into_inner()))(unit);
            if c_write
                .write_all(&out)
                .and_then(|_| c_write.flush())
                .is_err()
            {
                break;
            }
        }
        let _ = c_write.shutdown(Shutdown::Both);
    });
}

/// One server response: a line, and for each line ending in `{N}` the N
/// bytes of the literal and the rest of the response.
pub fn read_response(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut whole = Vec::new();
    loop {
        let mut line = Vec::new();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        whole.extend_from_slice(&line);
        let trimmed = line.strip_suffix(b"\r\n").unwrap_or(&line);
        match literal_size(trimmed) {
            Some(n) => {
                let mut buf = vec![0; n];
                r.read_exact(&mut buf).ok()?;
                whole.extend_from_slice(&buf);
            }
            None => return Some(whole),
        }
    }
}

/// `{N}` at the end of a line: N.
pub fn literal_size(line: &[u8]) -> Option<usize> {
    let s = std::str::from_utf8(line.strip_suffix(b"}")?).ok()?;
    let open = s.rfind('{')?;
    s[open + 1..].parse().ok()
}

/// One logged-in IMAP session on Dovecot's plain port, kept open.
pub struct ImapClient {
    w: TcpStream,
    r: BufReader<TcpStream>,
    next: u32,
}

impl ImapClient {
    /// Connect to 127.0.0.1:`port` and LOGIN; panics when that fails.
    pub fn login(port: u16, user: &str, pass: &str) -> ImapClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("cannot connect to IMAP");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut c = ImapClient {
            w: stream.try_clone().unwrap(),
            r: BufReader::new(stream),
            next: 1,
        };
        read_response(&mut c.r).expect("no IMAP greeting");
        let t = c.command(&format!(
            "LOGIN {} {}",
            super::dovecot::imap_quote(user),
            super::dovecot::imap_quote(pass)
        ));
        assert!(t.contains(" OK "), "LOGIN failed: {t}");
        c
    }

    /// Run one command; the untagged responses and the tagged answer.
    /// Panics when the connection ends first.
    pub fn command(&mut self, cmd: &str) -> String {
        let tag = format!("T{}", self.next);
        self.next += 1;
        self.w
            .write_all(format!("{tag} {cmd}\r\n").as_bytes())
            .expect("cannot send an IMAP command");
        let mut out = Vec::new();
        loop {
            let unit = read_response(&mut self.r)
                .unwrap_or_else(|| panic!("the connection ended during {cmd}"));
            out.extend_from_slice(&unit);
            if unit.starts_with(format!("{tag} ").as_bytes()) {
                return String::from_utf8_lossy(&out).into_owned();
            }
        }
    }

    /// Run a command that must answer OK.
    pub fn ok(&mut self, cmd: &str) -> String {
        let t = self.command(cmd);
        let last = t.lines().last().unwrap_or("");
        assert!(last.contains(" OK"), "{cmd} failed: {t}");
        t
    }
}
