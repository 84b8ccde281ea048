//! The IMAP source (async-imap over tokio-rustls): connecting and logging in
//! (implicit TLS, STARTTLS or — only when configured — plain; LOGIN,
//! AUTHENTICATE PLAIN, XOAUTH2), and one pass over a folder that touches only
//! what is needed:
//!
//! - one SELECT tells whether anything arrived (UIDVALIDITY, UIDNEXT; the
//!   folder state remembers them, the last UID handled and HIGHESTMODSEQ);
//!   nothing new means no FETCH at all;
//! - new mail is fetched in batches as BODYSTRUCTURE plus a few header
//!   fields (cut at `limits.max_header_bytes` by a partial fetch); only
//!   messages with calendar parts get a second FETCH, of those parts alone
//!   (`BODY.PEEK[n]`), so a 20 MB attachment is never downloaded; a
//!   calendar part inside a `multipart/signed` is fetched as that whole
//!   signed entity (`BODY.PEEK[n.MIME]` and `BODY.PEEK[n]`, the exact bytes
//!   the signature covers), and so is an S/MIME `application/pkcs7-mime` or
//!   a PGP/MIME `multipart/encrypted` entity, whose content cannot be seen
//!   from outside (encrypted ones only when a key of mine can open them);
//! - only the UIDs a FETCH asked for are handled, and only they move the
//!   folder's last UID (a server's unsolicited FETCH never does);
//! - handled iTIP mail gets the keyword `$iMIPProcessed` (or is moved), never
//!   `\Seen` unless configured, and is never deleted;
//! - IDLE: when mail came in between the pass and the SELECT before IDLE, the
//!   caller is told to pass again instead of idling.
//!
//! It also owns what protects imipd from the server's answers: every byte
//! read passes a [`WireGuard`] before async-imap's parser sees it (a literal
//! larger than imipd can need is cut or refused before the parser reserves
//! memory for it; a long quoted string goes on as a literal, which the
//! parser reads in linear time; parentheses nested deeper than
//! [`MAX_NESTING`] are refused), and the IMAP work runs on threads with an
//! [`IMAP_STACK`]-byte stack, on which imap-proto's recursive BODYSTRUCTURE
//! parser fits up to that nesting (it overflows a 2 MiB tokio worker stack
//! at ~350 levels in a release build, ~120 in a debug build).
//!
//! Every network step has a timeout.

use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_imap::imap_proto::{BodyStructure, ContentEncoding, MessageSection, SectionPath};
use async_imap::types::{Fetch, Flag, Mailbox};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::{ImapAuth, ImapConfig, Limits, Tls};
use crate::fsutil::{safe_name, write_atomic};
use crate::shutdown::Shutdown;

use super::{Handler, Incoming, PassReport, SourceError};

/// Parentheses nested deeper than this in one server response are refused
/// (the connection ends with an error). Dovecot never nests a BODYSTRUCTURE
/// deeper than ~100 levels (its MIME parser stops there), so only a broken
/// or hostile server gets here; up to this depth a deep BODYSTRUCTURE is
/// parsed and the message is reported with `limits.max_depth`.
pub const MAX_NESTING: usize = 1000;

/// The stack of the threads that run IMAP work. imap-proto parses a
/// BODYSTRUCTURE recursively: 1,000 levels take < 8 MiB in a release build
/// and < 32 MiB in a debug build; this leaves room for both. Only the pages
/// touched count against memory.
pub const IMAP_STACK: usize = 64 * 1024 * 1024;

/// Run `f` (which drives IMAP work, e.g. `rt.block_on(...)`) on a thread
/// with an [`IMAP_STACK`]-byte stack, and return what it returns.
pub fn on_imap_stack<T: Send>(f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("imap".into())
            .stack_size(IMAP_STACK)
            .spawn_scoped(s, f)
            .map_err(|e| anyhow::anyhow!("cannot start the IMAP thread: {e}"))?;
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("cannot finish the IMAP work: its thread panicked"))
    })
}

/// The bounds a [`WireGuard`] enforces, derived from `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// A literal larger than this is cut to this size (the rest is read and
    /// dropped): the largest literal imipd can need is a calendar part
    /// within `limits.max_part_bytes` (base64: 4/3 of it) or the header
    /// fields within `limits.max_header_bytes`. A BODYSTRUCTURE may carry
    /// larger ones (the Subject of a forwarded message), which imipd never
    /// reads.
    pub literal_cut: usize,
    /// A literal larger than this is refused: no message imipd reads
    /// (`limits.max_message_bytes`) holds one.
    pub literal_refuse: usize,
    /// See [`MAX_NESTING`].
    pub nesting: usize,
}

impl WireLimits {
    pub fn new(l: &Limits) -> WireLimits {
        let part = (l.max_part_bytes / 3).saturating_add(1).saturating_mul(4);
        let literal_cut = part.max(l.max_header_bytes);
        WireLimits {
            literal_cut,
            literal_refuse: l.max_message_bytes.max(literal_cut),
            nesting: MAX_NESTING,
        }
    }
}

/// A quoted string longer than this reaches the parser as a literal (with
/// the same content): async-imap parses a response again from its start
/// after every read of at most 4 KiB until it is complete, except while it
/// waits for the rest of a literal, so a long quoted string (a 4 MB MIME
/// parameter in a BODYSTRUCTURE from real Dovecot) would cost time
/// quadratic in its length.
pub const QUOTED_INLINE: usize = 1024;

/// A quoted string longer than this is cut (at a UTF-8 character boundary)
/// and counted like a cut literal: no parameter or envelope field imipd
/// reads is anywhere near it.
pub const MAX_STRING: usize = 64 * 1024;

/// Where the guard is in the server's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// In a response line, outside strings.
    Line,
    /// In a quoted string (held back until it ends).
    Quoted,
    /// After a backslash in a quoted string.
    Escape,
    /// `{` and digits so far (held back).
    Brace,
    /// `{N}` (held back).
    BraceEnd,
    /// `{N}\r` (held back).
    BraceCr,
    /// In a literal: `pass` more bytes go to the parser, then `skip` are dropped.
    Literal { pass: usize, skip: usize },
}

/// Looks at every byte the server sends, in one pass and before the parser
/// does, and keeps the parser from being made to spend more than imipd
/// needs: a literal `{N}` over [`WireLimits::literal_refuse`] ends the
/// connection with an error before anything is reserved for it; one over
/// [`WireLimits::literal_cut`] reaches the parser as `{cut}` with its first
/// `cut` bytes (the rest is read and dropped, and counted in `cut`);
/// parentheses nested deeper than [`WireLimits::nesting`] end the
/// connection; a quoted string longer than [`QUOTED_INLINE`] is handed on as
/// a literal, cut at [`MAX_STRING`]. Quoted strings and literals are skipped
/// over, so their content never looks like syntax.
#[derive(Debug)]
pub struct WireGuard {
    limits: WireLimits,
    state: Wire,
    depth: usize,
    held: Vec<u8>,
    /// The quoted string in hand: as sent (while short enough to go on as
    /// it is), and its content without escapes (up to [`MAX_STRING`]).
    quoted_raw: Vec<u8>,
    quoted: Vec<u8>,
    quoted_len: usize,
    failed: Option<String>,
    /// How many literals and strings were cut so far.
    pub cut: Arc<AtomicU64>,
}

impl WireGuard {
    pub fn new(limits: WireLimits) -> WireGuard {
        WireGuard {
            limits,
            state: Wire::Line,
            depth: 0,
            held: Vec::new(),
            quoted_raw: Vec::new(),
            quoted: Vec::new(),
            quoted_len: 0,
            failed: None,
            cut: Arc::new(AtomicU64::new(0)),
        }
    }

    fn fail(&mut self, reason: String) -> Result<(), String> {
        self.failed = Some(reason.clone());
        Err(reason)
    }

    /// Give back bytes held while deciding whether they announce a literal.
    fn release(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.held);
        self.held.clear();
        self.state = Wire::Line;
    }

    /// The end of the stream: what was held goes out as it came.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match self.state {
            Wire::Brace | Wire::BraceEnd | Wire::BraceCr => self.release(out),
            Wire::Quoted | Wire::Escape => {
                out.append(&mut self.quoted_raw);
                self.state = Wire::Line;
            }
            _ => {}
        }
    }

    /// One byte of a quoted string's content (escapes taken off).
    fn quoted_byte(&mut self, b: u8) {
        if self.quoted_raw.len() <= 2 * QUOTED_INLINE + 2 {
            self.quoted_raw.push(b);
        }
        if self.quoted.len() < MAX_STRING {
            self.quoted.push(b);
        }
        self.quoted_len += 1;
    }

    /// The closing quote: the string goes on as it came, or as a literal.
    fn end_quoted(&mut self, out: &mut Vec<u8>) {
        if self.quoted_len <= QUOTED_INLINE {
            out.append(&mut self.quoted_raw);
            out.push(b'"');
        } else {
            let mut n = self.quoted.len();
            if self.quoted_len > n {
                self.cut.fetch_add(1, Ordering::Relaxed);
                n = utf8_prefix(&self.quoted);
            }
            out.extend_from_slice(format!("{{{n}}}\r\n").as_bytes());
            out.extend_from_slice(&self.quoted[..n]);
        }
        self.quoted_raw.clear();
        self.quoted.clear();
        self.quoted_len = 0;
        self.state = Wire::Line;
    }

    /// Pass `input` (the next bytes from the server) on to `out`, as the
    /// parser may see them. An error ends the connection; every later call
    /// fails the same way.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        if let Some(reason) = &self.failed {
            return Err(reason.clone());
        }
        let mut i = 0;
        while i < input.len() {
            if let Wire::Literal { pass, skip } = self.state {
                let left = input.len() - i;
                if pass > 0 {
                    let n = pass.min(left);
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    self.state = Wire::Literal {
                        pass: pass - n,
                        skip,
                    };
                } else {
                    let n = skip.min(left);
                    i += n;
                    self.state = Wire::Literal {
                        pass: 0,
                        skip: skip - n,
                    };
                }
                if self.state == (Wire::Literal { pass: 0, skip: 0 }) {
                    self.state = Wire::Line;
                }
                continue;
            }
            let b = input[i];
            match self.state {
                Wire::Line => match b {
                    b'"' => {
                        self.quoted_raw.clear();
                        self.quoted_raw.push(b);
                        self.quoted.clear();
                        self.quoted_len = 0;
                        self.state = Wire::Quoted;
                    }
                    b'(' => {
                        self.depth += 1;
                        if self.depth > self.limits.nesting {
                            return self.fail(format!(
                                "the server's response is nested deeper than {} levels",
                                self.limits.nesting
                            ));
                        }
                        out.push(b);
                    }
                    b')' => {
                        self.depth = self.depth.saturating_sub(1);
                        out.push(b);
                    }
                    b'{' => {
                        self.held.clear();
                        self.held.push(b);
                        self.state = Wire::Brace;
                    }
                    b'\n' => {
                        // The end of a response (a literal's line break is
                        // taken by the Brace states).
                        self.depth = 0;
                        out.push(b);
                    }
                    _ => out.push(b),
                },
                Wire::Quoted => match b {
                    b'\\' => {
                        if self.quoted_raw.len() <= 2 * QUOTED_INLINE + 2 {
                            self.quoted_raw.push(b);
                        }
                        self.state = Wire::Escape;
                    }
                    b'"' => self.end_quoted(out),
                    b'\n' => {
                        // Not a string after all (a broken line): as it came.
                        out.append(&mut self.quoted_raw);
                        out.push(b);
                        self.state = Wire::Line;
                        self.depth = 0;
                    }
                    _ => self.quoted_byte(b),
                },
                Wire::Escape => {
                    self.quoted_byte(b);
                    self.state = Wire::Quoted;
                }
                Wire::Brace => match b {
                    b'0'..=b'9' if self.held.len() <= 20 => self.held.push(b),
                    b'}' if self.held.len() > 1 => {
                        self.held.push(b);
                        self.state = Wire::BraceEnd;
                    }
                    _ => {
                        self.release(out);
                        continue; // look at `b` again, as part of the line
                    }
                },
                Wire::BraceEnd => {
                    if b == b'\r' {
                        self.held.push(b);
                        self.state = Wire::BraceCr;
                    } else {
                        self.release(out);
                        continue;
                    }
                }
                Wire::BraceCr => {
                    if b != b'\n' {
                        self.release(out);
                        continue;
                    }
                    let digits = &self.held[1..self.held.len() - 2];
                    let n = std::str::from_utf8(digits)
                        .ok()
                        .and_then(|d| d.parse::<usize>().ok())
                        .unwrap_or(usize::MAX);
                    self.held.clear();
                    if n > self.limits.literal_refuse {
                        return self.fail(format!(
                            "the server announced a literal of {n} bytes, more than any message imipd reads ({} bytes, limits.max_message_bytes)",
                            self.limits.literal_refuse
                        ));
                    }
                    let pass = n.min(self.limits.literal_cut);
                    if pass < n {
                        self.cut.fetch_add(1, Ordering::Relaxed);
                    }
                    out.extend_from_slice(format!("{{{pass}}}\r\n").as_bytes());
                    self.state = if n == 0 {
                        Wire::Line
                    } else {
                        Wire::Literal {
                            pass,
                            skip: n - pass,
                        }
                    };
                }
                Wire::Literal { .. } => unreachable!("literals are handled above"),
            }
            i += 1;
        }
        Ok(())
    }
}

/// The length of the longest prefix of `s` that does not end in the middle
/// of a UTF-8 character.
fn utf8_prefix(s: &[u8]) -> usize {
    let Some(lead) = s.iter().rposition(|&b| b & 0xC0 != 0x80) else {
        return 0;
    };
    let len = match s[lead] {
        b if b < 0x80 => 1,
        b if b >= 0xF0 => 4,
        b if b >= 0xE0 => 3,
        b if b >= 0xC0 => 2,
        _ => 1,
    };
    if lead + len <= s.len() {
        s.len()
    } else {
        lead
    }
}

/// The transport under the IMAP session.
enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The connection under the IMAP session: plain TCP or TLS. Every byte read
/// is counted (the benchmark's "bytes fetched") and passes the
/// [`WireGuard`] before async-imap's parser sees it.
pub struct ImapStream {
    inner: Transport,
    counter: Arc<AtomicU64>,
    guard: WireGuard,
    /// Bytes through the guard, not yet handed to the parser (from `pos`).
    out: Vec<u8>,
    pos: usize,
    scratch: Box<[u8]>,
    eof: bool,
}

impl ImapStream {
    fn new(inner: Transport, counter: Arc<AtomicU64>, limits: WireLimits) -> ImapStream {
        ImapStream {
            inner,
            counter,
            guard: WireGuard::new(limits),
            out: Vec::new(),
            pos: 0,
            scratch: vec![0; 16 * 1024].into_boxed_slice(),
            eof: false,
        }
    }

    /// The plain TCP stream under a connection before STARTTLS (anything
    /// the server sent after its OK is dropped, as RFC 3501 requires).
    fn into_plain(self) -> Option<TcpStream> {
        match self.inner {
            Transport::Plain(tcp) => Some(tcp),
            Transport::Tls(_) => None,
        }
    }
}

impl fmt::Debug for ImapStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.inner {
            Transport::Plain(..) => write!(f, "ImapStream::Plain"),
            Transport::Tls(..) => write!(f, "ImapStream::Tls"),
        }
    }
}

impl AsyncRead for ImapStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pos < this.out.len() {
                let n = (this.out.len() - this.pos).min(buf.remaining());
                buf.put_slice(&this.out[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.out.len() {
                    this.out.clear();
                    this.pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let mut raw = ReadBuf::new(&mut this.scratch);
            let r = match &mut this.inner {
                Transport::Plain(s) => Pin::new(s).poll_read(cx, &mut raw),
                Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, &mut raw),
            };
            ready!(r)?;
            let n = raw.filled().len();
            this.counter.fetch_add(n as u64, Ordering::Relaxed);
            if n == 0 {
                this.guard.finish(&mut this.out);
                this.eof = true;
                continue;
            }
            if let Err(reason) = this.guard.feed(&this.scratch[..n], &mut this.out) {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    reason,
                )));
            }
        }
    }
}

impl AsyncWrite for ImapStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().inner {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().inner {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().inner {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub type Session = async_imap::Session<ImapStream>;

/// Why an IMAP step failed.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    /// The server cannot be reached, or its certificate is refused.
    #[error("cannot connect to IMAP server {server}: {reason}")]
    Connect { server: String, reason: String },
    /// The server refused the login.
    #[error("cannot log in to IMAP server {server} as {user}: {reason}")]
    Login {
        server: String,
        user: String,
        reason: String,
    },
    /// The server refused to open a folder: it does not exist (deleted,
    /// misspelt) or may not be read. The connection is still good.
    #[error("cannot select folder {folder} on IMAP server {server}: {reason} (is the name in `folders` right? the folder is skipped and tried again at the next poll)")]
    Folder {
        server: String,
        folder: String,
        reason: String,
    },
    /// A command failed or the connection broke mid-way.
    #[error("cannot {what} on IMAP server {server}: {reason}")]
    Command {
        server: String,
        what: String,
        reason: String,
    },
}

impl ImapError {
    /// Exit status 3 cases: unreachable server or refused login.
    pub fn is_server_problem(&self) -> bool {
        matches!(self, ImapError::Connect { .. } | ImapError::Login { .. })
    }
}

/// What the server offers that imipd uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Caps {
    pub idle: bool,
    pub condstore: bool,
    #[serde(rename = "move")]
    pub move_: bool,
}

/// A logged-in connection.
pub struct Connection {
    pub session: Session,
    pub caps: Caps,
    pub server: String,
    pub bytes_read: Arc<AtomicU64>,
    /// Literals the [`WireGuard`] cut so far.
    literals_cut: Arc<AtomicU64>,
    timeout: Duration,
}

struct PlainAuth {
    user: String,
    password: String,
}

impl async_imap::Authenticator for PlainAuth {
    type Response = String;
    fn process(&mut self, _challenge: &[u8]) -> String {
        format!("\0{}\0{}", self.user, self.password)
    }
}

struct XOAuth2 {
    user: String,
    token: String,
    sent: bool,
}

impl async_imap::Authenticator for XOAuth2 {
    type Response = String;
    fn process(&mut self, _challenge: &[u8]) -> String {
        if self.sent {
            // The server sent an error challenge: answer empty to get the NO.
            return String::new();
        }
        self.sent = true;
        format!("user={}\x01auth=Bearer {}\x01\x01", self.user, self.token)
    }
}

async fn timed<T, E: fmt::Display>(
    t: Duration,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(t, fut).await {
        Err(_) => Err(format!("no answer within {} s", t.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(v)) => Ok(v),
    }
}

/// Connect, secure and log in. `limits` bound what the server's answers
/// may cost (see [`WireGuard`]).
pub async fn connect(cfg: &ImapConfig, limits: &Limits) -> Result<Connection, ImapError> {
    let server = format!("{}:{}", cfg.host, cfg.port);
    let conn_err = |reason: String| ImapError::Connect {
        server: server.clone(),
        reason,
    };
    let login_err = |reason: String| ImapError::Login {
        server: server.clone(),
        user: cfg.username.clone(),
        reason,
    };
    // The secret first, so that no connection waits on it. A command
    // (password_command, oauth_token_command) runs off the worker threads,
    // within the account's timeout.
    let secret = cfg
        .secret
        .resolve_within(cfg.timeout)
        .await
        .map_err(|e| login_err(format!("{e:#}")))?;
    let tcp = timed(
        cfg.timeout,
        TcpStream::connect((cfg.host.as_str(), cfg.port)),
    )
    .await
    .map_err(conn_err)?;
    let _ = tcp.set_nodelay(true);
    let counter = Arc::new(AtomicU64::new(0));
    let wire = WireLimits::new(limits);
    let stream = |t: Transport| ImapStream::new(t, counter.clone(), wire);
    let tls = || -> Result<tokio_rustls::TlsConnector, ImapError> {
        let config = crate::tls::client_config(cfg.ca_file.as_deref())
            .map_err(|e| conn_err(format!("{e:#}")))?;
        Ok(tokio_rustls::TlsConnector::from(config))
    };
    let name = || {
        rustls_pki_types::ServerName::try_from(cfg.host.clone())
            .map_err(|e| conn_err(format!("invalid server name {}: {e}", cfg.host)))
    };
    let handshake = |tcp: TcpStream| async {
        let connector = tls()?;
        let name = name()?;
        match tokio::time::timeout(cfg.timeout, connector.connect(name, tcp)).await {
            Err(_) => Err(conn_err(format!(
                "no TLS answer within {} s",
                cfg.timeout.as_secs()
            ))),
            Ok(Err(e)) => Err(conn_err(crate::tls::explain_handshake_error(
                &e as &(dyn std::error::Error + 'static),
                &cfg.host,
                cfg.port,
                crate::tls::Service::Imap,
            ))),
            Ok(Ok(s)) => Ok(s),
        }
    };
    // A server that waits for a TLS handshake never sends a plain greeting.
    let plain_greeting = |e: String| {
        if e.starts_with("no greeting") {
            conn_err(if cfg.port == 993 {
                format!("{e}; port 993 expects TLS from the first byte: set tls = \"implicit\"")
            } else {
                format!(
                    "{e}; if port {} expects TLS from the first byte (as 993 does), set tls = \"implicit\"",
                    cfg.port
                )
            })
        } else {
            conn_err(e)
        }
    };
    let client = match cfg.tls {
        Tls::Implicit => {
            let s = handshake(tcp).await?;
            let mut c = async_imap::Client::new(stream(Transport::Tls(Box::new(s))));
            greeting(&mut c, cfg.timeout).await.map_err(conn_err)?;
            c
        }
        Tls::None => {
            let mut c = async_imap::Client::new(stream(Transport::Plain(tcp)));
            greeting(&mut c, cfg.timeout)
                .await
                .map_err(plain_greeting)?;
            c
        }
        Tls::StartTls => {
            let mut c = async_imap::Client::new(stream(Transport::Plain(tcp)));
            greeting(&mut c, cfg.timeout)
                .await
                .map_err(plain_greeting)?;
            timed(cfg.timeout, c.run_command_and_check_ok("STARTTLS", None))
                .await
                .map_err(|e| conn_err(format!("STARTTLS refused: {e}")))?;
            let tcp = c
                .into_inner()
                .into_plain()
                .ok_or_else(|| conn_err("the stream was not plain before STARTTLS".into()))?;
            let s = handshake(tcp).await?;
            async_imap::Client::new(stream(Transport::Tls(Box::new(s))))
        }
    };
    let literals_cut = client.get_ref().guard.cut.clone();
    let logged_in = match cfg.auth {
        ImapAuth::Login => {
            tokio::time::timeout(cfg.timeout, client.login(&cfg.username, &secret)).await
        }
        ImapAuth::Plain => {
            tokio::time::timeout(
                cfg.timeout,
                client.authenticate(
                    "PLAIN",
                    PlainAuth {
                        user: cfg.username.clone(),
                        password: secret,
                    },
                ),
            )
            .await
        }
        ImapAuth::Xoauth2 => {
            tokio::time::timeout(
                cfg.timeout,
                client.authenticate(
                    "XOAUTH2",
                    XOAuth2 {
                        user: cfg.username.clone(),
                        token: secret,
                        sent: false,
                    },
                ),
            )
            .await
        }
    };
    let mut session = match logged_in {
        Err(_) => return Err(login_err("no answer".into())),
        Ok(Err((async_imap::error::Error::No(r), _))) => {
            let check = if cfg.auth == ImapAuth::Xoauth2 {
                "check `oauth_token_command` (the token may have expired)"
            } else {
                "check `password`, `password_command` or `password_file`, and `username`"
            };
            return Err(login_err(format!(
                "the server refused the login for {} ({check}): {}",
                cfg.username,
                r.trim()
            )));
        }
        Ok(Err((e, _))) => return Err(login_err(e.to_string())),
        Ok(Ok(s)) => s,
    };
    let caps = timed(cfg.timeout, session.capabilities())
        .await
        .map_err(|e| ImapError::Command {
            server: server.clone(),
            what: "read capabilities".into(),
            reason: e,
        })?;
    let caps = Caps {
        idle: caps.has_str("IDLE"),
        condstore: caps.has_str("CONDSTORE") || caps.has_str("QRESYNC"),
        move_: caps.has_str("MOVE"),
    };
    Ok(Connection {
        session,
        caps,
        server,
        bytes_read: counter,
        literals_cut,
        timeout: cfg.timeout,
    })
}

async fn greeting(c: &mut async_imap::Client<ImapStream>, t: Duration) -> Result<(), String> {
    match tokio::time::timeout(t, c.read_response()).await {
        Err(_) => Err(format!("no greeting within {} s", t.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(None)) => Err("the server closed the connection".into()),
        Ok(Ok(Some(_))) => Ok(()),
    }
}

/// What imipd remembers about a folder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderState {
    pub uidvalidity: u32,
    /// Every UID up to this one has been handled.
    pub last_uid: u32,
    pub uidnext: u32,
    pub highestmodseq: Option<u64>,
    /// Some message could not be handled: look again next time.
    pub retry: bool,
}

fn state_path(state_dir: &std::path::Path, account: &str, folder: &str) -> (PathBuf, String) {
    let dir = state_dir
        .join("imap")
        .join(safe_name(account).trim_end_matches(".ics"));
    let name = format!("{}.json", safe_name(folder).trim_end_matches(".ics"));
    (dir, name)
}

pub fn load_state(state_dir: &std::path::Path, account: &str, folder: &str) -> FolderState {
    let (dir, name) = state_path(state_dir, account, folder);
    std::fs::read(dir.join(name))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_state(
    state_dir: &std::path::Path,
    account: &str,
    folder: &str,
    s: &FolderState,
) -> anyhow::Result<()> {
    let (dir, name) = state_path(state_dir, account, folder);
    crate::fsutil::create_private_dir(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    write_atomic(&dir, &name, &serde_json::to_vec_pretty(s)?)
}

/// The size of a folder as a pass saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// UIDNEXT of the SELECT (0: the server gave none).
    pub uidnext: u32,
    /// EXISTS of the SELECT, less the messages the pass moved away.
    pub exists: u32,
}

/// Whether mail arrived in a folder between a pass that saw `seen` and a
/// later SELECT that shows `uidnext` and `exists`: UIDNEXT grows with every
/// new message; without UIDNEXT, more messages than the pass left.
pub fn arrived_since(seen: Seen, uidnext: Option<u32>, exists: u32) -> bool {
    match uidnext {
        Some(now) if seen.uidnext != 0 => now > seen.uidnext,
        _ => exists > seen.exists,
    }
}

/// How an [`Connection::idle`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// Mail had arrived before IDLE began (the SELECT showed it): no IDLE
    /// was sent, pass again now.
    Arrived,
    /// The server reported a change, or the time was up: pass again.
    Event,
    /// The service is stopping.
    Stopped,
}

/// Everything one pass needs besides the connection and the handler.
pub struct PassContext<'a> {
    pub account: &'a str,
    pub cfg: &'a ImapConfig,
    pub limits: &'a Limits,
    pub state_dir: &'a std::path::Path,
    pub dry_run: bool,
    /// Set when the service is asked to stop: the pass ends after the
    /// message in hand.
    pub stop: &'a Shutdown,
    /// Mail with an INTERNALDATE before this is remembered as handled
    /// without being processed (the account's `since`).
    pub cutoff: Option<chrono::DateTime<chrono::Utc>>,
}

const HEADER_FIELDS: &str = "FROM SENDER TO CC MESSAGE-ID REFERENCES IN-REPLY-TO SUBJECT DATE AUTHENTICATION-RESULTS AUTO-SUBMITTED";
const BATCH: u32 = 200;

/// What the batch FETCH said about one message, kept small: the response
/// itself (with whatever a BODYSTRUCTURE carries) is dropped as soon as it
/// is read, so a batch costs its calendar parts list and bounded headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    pub uid: Option<u32>,
    /// Carries the keyword of handled mail.
    pub handled: bool,
    /// The header fields (at most `limits.max_header_bytes`).
    pub header: Vec<u8>,
    /// What the BODYSTRUCTURE says; `None` when the response had none (an
    /// unsolicited FETCH: a flag change, not an answer to the batch).
    pub structure: Option<Structure>,
}

impl Fetched {
    fn new(f: &Fetch, keyword: &str, max_depth: usize, encrypted: bool) -> Fetched {
        Fetched {
            uid: f.uid,
            handled: f
                .flags()
                .any(|fl| matches!(fl, Flag::Custom(ref k) if k.eq_ignore_ascii_case(keyword))),
            header: f.header().unwrap_or_default().to_vec(),
            structure: f
                .bodystructure()
                .map(|b| structure_of(b, max_depth, encrypted)),
        }
    }
}

/// Which messages of a batch FETCH of `start:stop` to handle, in UID order:
/// those with a UID in that range and the BODYSTRUCTURE that was asked for,
/// each once. A server may add FETCH responses nobody asked for (another
/// client changed flags, or it is hostile), for any message: they are
/// left out.
pub fn plan_batch(fetched: &[Fetched], start: u32, stop: u32) -> Vec<usize> {
    let mut picked: Vec<(u32, usize)> = fetched
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let uid = f.uid?;
            (start <= uid && uid <= stop && f.structure.is_some()).then_some((uid, i))
        })
        .collect();
    picked.sort_by_key(|&(uid, i)| (uid, i));
    picked.dedup_by_key(|&mut (uid, _)| uid);
    picked.into_iter().map(|(_, i)| i).collect()
}

/// The UIDs of a `UID FETCH start:last (UID INTERNALDATE)` answer, split
/// into those delivered before `cutoff` and the others, each sorted. Only
/// UIDs asked for count; a message without an INTERNALDATE counts as new.
pub fn split_by_date(
    fetched: &[Fetch],
    start: u32,
    last: u32,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> (Vec<u32>, Vec<u32>) {
    let (mut older, mut newer) = (Vec::new(), Vec::new());
    for f in fetched {
        let Some(uid) = f.uid.filter(|u| (start..=last).contains(u)) else {
            continue;
        };
        match f.internal_date() {
            Some(d) if d < cutoff => older.push(uid),
            _ => newer.push(uid),
        }
    }
    older.sort_unstable();
    older.dedup();
    newer.sort_unstable();
    newer.dedup();
    newer.retain(|u| older.binary_search(u).is_err());
    (older, newer)
}

/// A sorted list of UIDs as an IMAP sequence set (`5:9,12`).
pub fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let first = uids[i];
        let mut last = first;
        while i + 1 < uids.len() && uids[i + 1] == last.saturating_add(1) {
            i += 1;
            last = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if first == last {
            out.push_str(&first.to_string());
        } else {
            out.push_str(&format!("{first}:{last}"));
        }
        i += 1;
    }
    out
}

/// How far the folder's last UID may move after a batch: over each UID
/// handled (in order) until the first that failed; and, when every message
/// of the batch was handled and the batch's range ended at `range_end` (a
/// UID below the UIDNEXT of the SELECT), up to that end: a UID there that
/// the server did not return no longer exists, and UIDs are never reused.
/// `handled` holds only UIDs of the range (see [`plan_batch`]); nothing
/// else moves it.
pub fn advance_last_uid(
    last_uid: u32,
    handled: &[(u32, bool)],
    whole_batch: bool,
    range_end: Option<u32>,
) -> u32 {
    let mut last = last_uid;
    for &(uid, ok) in handled {
        if !ok {
            return last;
        }
        last = last.max(uid);
    }
    match range_end {
        Some(end) if whole_batch => last.max(end),
        _ => last,
    }
}

impl Connection {
    fn err(&self, what: impl Into<String>, reason: impl fmt::Display) -> ImapError {
        ImapError::Command {
            server: self.server.clone(),
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// SELECT a folder (with CONDSTORE where offered). A folder the server
    /// refuses (NO or BAD: it does not exist, or may not be read) is an
    /// [`ImapError::Folder`]; the connection is still good.
    pub async fn select(&mut self, folder: &str) -> Result<Mailbox, ImapError> {
        let t = self.timeout;
        let r = if self.caps.condstore {
            tokio::time::timeout(t, self.session.select_condstore(folder)).await
        } else {
            tokio::time::timeout(t, self.session.select(folder)).await
        };
        match r {
            Err(_) => Err(self.err(
                format!("select folder {folder}"),
                format!("no answer within {} s", t.as_secs()),
            )),
            Ok(Err(
                async_imap::error::Error::No(reason) | async_imap::error::Error::Bad(reason),
            )) => Err(ImapError::Folder {
                server: self.server.clone(),
                folder: folder.to_string(),
                reason: reason.trim().to_string(),
            }),
            Ok(Err(e)) => Err(self.err(format!("select folder {folder}"), e)),
            Ok(Ok(m)) => Ok(m),
        }
    }

    async fn fetch(&mut self, uids: &str, query: &str) -> Result<Vec<Fetch>, ImapError> {
        let t = self.timeout;
        let r: Result<Vec<Fetch>, String> = async {
            let stream = timed(t, self.session.uid_fetch(uids, query)).await?;
            timed(t, stream.try_collect::<Vec<Fetch>>()).await
        }
        .await;
        r.map_err(|e| self.err(format!("fetch UID {uids}"), e))
    }

    /// A batch FETCH, each response made [`Fetched`] as it arrives.
    async fn fetch_batch(
        &mut self,
        uids: &str,
        query: &str,
        keyword: &str,
        max_depth: usize,
        encrypted: bool,
    ) -> Result<Vec<Fetched>, ImapError> {
        let t = self.timeout;
        let r: Result<Vec<Fetched>, String> = async {
            let mut stream = timed(t, self.session.uid_fetch(uids, query)).await?;
            let mut out = Vec::new();
            while let Some(f) = timed(t, stream.try_next()).await? {
                out.push(Fetched::new(&f, keyword, max_depth, encrypted));
            }
            Ok(out)
        }
        .await;
        r.map_err(|e| self.err(format!("fetch UID {uids}"), e))
    }

    async fn run(&mut self, what: &str, command: &str) -> Result<(), ImapError> {
        let t = self.timeout;
        let r = timed(t, self.session.run_command_and_check_ok(command)).await;
        r.map_err(|e| self.err(what, e))
    }

    /// One pass over a folder: handle every message that arrived since the
    /// last one, in UID order.
    pub async fn pass<H: Handler>(
        &mut self,
        folder: &str,
        ctx: &PassContext<'_>,
        handler: &mut H,
    ) -> Result<PassReport, ImapError> {
        let before = self.bytes_read.load(Ordering::Relaxed);
        let mut rep = self.pass_inner(folder, ctx, handler).await?;
        rep.bytes_read = self.bytes_read.load(Ordering::Relaxed) - before;
        Ok(rep)
    }

    async fn pass_inner<H: Handler>(
        &mut self,
        folder: &str,
        ctx: &PassContext<'_>,
        handler: &mut H,
    ) -> Result<PassReport, ImapError> {
        let mut rep = PassReport {
            folder: folder.to_string(),
            ..PassReport::default()
        };
        let mailbox = self.select(folder).await?;
        let uidvalidity = mailbox.uid_validity.unwrap_or(0);
        let uidnext = mailbox.uid_next.unwrap_or(0);
        rep.seen = Seen {
            uidnext,
            exists: mailbox.exists,
        };
        let mut st = load_state(ctx.state_dir, ctx.account, folder);
        if st.uidvalidity != uidvalidity {
            if st.uidvalidity != 0 {
                tracing::info!(
                    account = ctx.account,
                    folder,
                    "UIDVALIDITY changed: rescanning the folder"
                );
            }
            st = FolderState {
                uidvalidity,
                ..FolderState::default()
            };
        }
        let nothing_new = uidnext != 0 && uidnext.saturating_sub(1) <= st.last_uid;
        if (nothing_new && !st.retry) || mailbox.exists == 0 {
            rep.unchanged = true;
            if !ctx.dry_run && (st.uidnext != uidnext || st.highestmodseq != mailbox.highest_modseq)
            {
                st.uidnext = uidnext;
                st.highestmodseq = mailbox.highest_modseq;
                save_state(ctx.state_dir, ctx.account, folder, &st)
                    .map_err(|e| self.err("save folder state", format!("{e:#}")))?;
            }
            return Ok(rep);
        }
        let keyword_ok = mailbox.permanent_flags.iter().any(|f| {
            matches!(f, Flag::MayCreate)
                || matches!(f, Flag::Custom(k) if k.eq_ignore_ascii_case(&ctx.cfg.keyword))
        });
        // Without UIDNEXT the end of the folder is unknown: one FETCH of
        // `start:*`, and only the UIDs handled move the last UID.
        let end = if uidnext > 0 { uidnext - 1 } else { u32::MAX };
        let mut start = st.last_uid.saturating_add(1);
        let mut any_failed = false;
        let mut contiguous = true;
        let stopping = || ctx.stop.is_set();
        let about = if uidnext > 0 {
            u64::from(end.saturating_sub(start).saturating_add(1)).min(u64::from(mailbox.exists))
        } else {
            u64::from(mailbox.exists)
        };
        let mut progress =
            crate::progress::Progress::start(&format!("{}/{folder}", ctx.account), about);
        while start <= end {
            let stop = start.saturating_add(BATCH - 1).min(end);
            let range = if uidnext == 0 {
                format!("{start}:*")
            } else {
                format!("{start}:{stop}")
            };
            let last_asked = if uidnext == 0 { u32::MAX } else { stop };
            // With `since`, the dates come first, and only newer mail is
            // fetched and handled; older mail is remembered as handled.
            let (older, wanted) = match ctx.cutoff {
                None => (Vec::new(), Some(range.clone())),
                Some(cutoff) => {
                    rep.fetch_commands += 1;
                    let dates = self.fetch(&range, "(UID INTERNALDATE)").await?;
                    let (older, newer) = split_by_date(&dates, start, last_asked, cutoff);
                    let wanted = (!newer.is_empty()).then(|| uid_set(&newer));
                    (older, wanted)
                }
            };
            let query = format!(
                "(UID FLAGS RFC822.SIZE BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS ({HEADER_FIELDS})]<0.{}>)",
                ctx.limits.max_header_bytes
            );
            let batch = match &wanted {
                Some(set) => {
                    rep.fetch_commands += 1;
                    self.fetch_batch(
                        set,
                        &query,
                        &ctx.cfg.keyword,
                        ctx.limits.max_depth,
                        ctx.cfg.fetch_encrypted,
                    )
                    .await?
                }
                None => Vec::new(),
            };
            let plan: Vec<usize> = plan_batch(&batch, start, last_asked)
                .into_iter()
                .filter(|&i| {
                    batch[i]
                        .uid
                        .is_some_and(|u| older.binary_search(&u).is_err())
                })
                .collect();
            // Older and newer mail in UID order, so that a stop in the
            // middle never moves the last UID over a message not handled.
            let mut order: Vec<(u32, Option<usize>)> = older.iter().map(|&u| (u, None)).collect();
            order.extend(plan.iter().map(|&i| (batch[i].uid.unwrap_or(0), Some(i))));
            order.sort_by_key(|&(uid, _)| uid);
            let mut handled = Vec::with_capacity(order.len());
            let mut whole_batch = true;
            for (uid, item) in order {
                if stopping() {
                    whole_batch = false;
                    break;
                }
                progress.inc();
                let Some(i) = item else {
                    rep.older += 1;
                    handled.push((uid, true));
                    continue;
                };
                let f = &batch[i];
                rep.examined += 1;
                let done = self
                    .message(uid, f, folder, keyword_ok, ctx, &mut rep, handler)
                    .await?;
                if !done {
                    any_failed = true;
                    rep.failed += 1;
                }
                handled.push((uid, done));
            }
            // After a failure, later batches are still handled in this
            // pass, but the last UID stays before the failed message, which
            // is tried again next time.
            if contiguous {
                let range_end = (uidnext != 0).then_some(stop);
                st.last_uid = advance_last_uid(st.last_uid, &handled, whole_batch, range_end);
            }
            contiguous &= whole_batch && handled.iter().all(|&(_, ok)| ok);
            if !ctx.dry_run {
                save_state(ctx.state_dir, ctx.account, folder, &st)
                    .map_err(|e| self.err("save folder state", format!("{e:#}")))?;
            }
            if uidnext == 0 || !whole_batch || stopping() || stop == u32::MAX {
                break;
            }
            start = stop + 1;
        }
        drop(progress);
        if rep.older > 0 {
            tracing::info!(
                "{}/{folder}: {} messages delivered before `since` remembered as handled without being processed",
                ctx.account,
                rep.older
            );
        }
        st.retry = any_failed;
        st.uidnext = uidnext;
        st.highestmodseq = mailbox.highest_modseq;
        if !ctx.dry_run {
            save_state(ctx.state_dir, ctx.account, folder, &st)
                .map_err(|e| self.err("save folder state", format!("{e:#}")))?;
        }
        Ok(rep)
    }

    /// Handle one message; `Ok(false)` when it must be tried again later.
    #[allow(clippy::too_many_arguments)]
    async fn message<H: Handler>(
        &mut self,
        uid: u32,
        f: &Fetched,
        folder: &str,
        keyword_ok: bool,
        ctx: &PassContext<'_>,
        rep: &mut PassReport,
        handler: &mut H,
    ) -> Result<bool, ImapError> {
        if f.handled {
            return Ok(true); // handled before (a crash after marking, or a rescan)
        }
        let structure = f.structure.clone().unwrap_or_default();
        let mut problems = Vec::new();
        if structure.too_deep {
            problems.push(format!(
                "MIME parts are nested deeper than {} levels (limits.max_depth); the deeper parts were not read",
                ctx.limits.max_depth
            ));
        }
        // Past the depth limit the server's view of the structure is not to
        // be trusted either (Dovecot flattens what it will not parse): such a
        // message is reported and nothing of it is fetched or acted on.
        let (parts, entities) = if structure.too_deep {
            (Vec::new(), Vec::new())
        } else {
            (structure.parts, structure.entities)
        };
        if parts.is_empty() && entities.is_empty() && problems.is_empty() {
            return Ok(true); // no calendar: nothing to do, nothing to mark
        }
        if !parts.is_empty() || !entities.is_empty() {
            rep.with_calendar += 1;
        }
        let header = bounded_header(&f.header, ctx.limits.max_header_bytes, &mut problems);
        // BODYSTRUCTURE gives the encoded size: allow for base64's 4/3.
        let limit = ctx.limits.max_part_bytes;
        let too_big = |p: &CalPart| {
            let decoded = if p.encoding == "base64" {
                p.size as usize / 4 * 3
            } else {
                p.size as usize
            };
            decoded > limit
        };
        for p in parts.iter().filter(|p| too_big(p)) {
            problems.push(format!(
                "a {} part of {} bytes is larger than the limit of {limit} bytes (limits.max_part_bytes) and was not read",
                p.content_type, p.size
            ));
        }
        let wanted: Vec<&CalPart> = parts.iter().filter(|p| !too_big(p)).collect();
        // A signed or encrypted entity is fetched whole (the signature
        // covers all of it), up to the size of a whole message.
        let entity_limit = ctx.limits.max_message_bytes as u64;
        for e in entities.iter().filter(|e| e.size > entity_limit) {
            problems.push(format!(
                "a {} entity of {} bytes is larger than the limit of {entity_limit} bytes (limits.max_message_bytes) and was not read",
                e.content_type, e.size
            ));
        }
        let wanted_entities: Vec<&SecPart> =
            entities.iter().filter(|e| e.size <= entity_limit).collect();
        let mut sections: Vec<String> = wanted
            .iter()
            .map(|p| format!("BODY.PEEK[{}]", p.section()))
            .collect();
        for e in &wanted_entities {
            if e.path.is_empty() {
                sections.push("BODY.PEEK[TEXT]".into());
            } else {
                let n = e.section();
                sections.push(format!("BODY.PEEK[{n}.MIME] BODY.PEEK[{n}]"));
            }
        }
        rep.fetch_commands += 1;
        let cut_before = self.literals_cut.load(Ordering::Relaxed);
        let fetched = if sections.is_empty() {
            Vec::new()
        } else {
            self.fetch(&uid.to_string(), &format!("(UID {})", sections.join(" ")))
                .await?
        };
        // The server sent a part larger than its BODYSTRUCTURE said (and
        // than the limit): what arrived is cut, so none of it is used.
        let lied = self.literals_cut.load(Ordering::Relaxed) != cut_before;
        if lied {
            problems.push(format!(
                "the server sent a calendar part larger than {} bytes (limits.max_part_bytes) although its BODYSTRUCTURE said less; it was not read",
                ctx.limits.max_part_bytes
            ));
        }
        let mut bodies = Vec::new();
        for p in wanted.iter().filter(|_| !lied) {
            let path = SectionPath::Part(p.path.clone(), None);
            let body = fetched
                .iter()
                .filter(|x| x.uid == Some(uid))
                .find_map(|x| x.section(&path))
                .unwrap_or_default()
                .to_vec();
            bodies.push((*p, body));
        }
        let mut entity_bytes = Vec::new();
        for e in wanted_entities.iter().filter(|_| !lied) {
            let find = |path: &SectionPath| {
                fetched
                    .iter()
                    .filter(|x| x.uid == Some(uid))
                    .find_map(|x| x.section(path))
                    .unwrap_or_default()
                    .to_vec()
            };
            let (head, body) = if e.path.is_empty() {
                (
                    e.header().into_bytes(),
                    find(&SectionPath::Full(MessageSection::Text)),
                )
            } else {
                (
                    find(&SectionPath::Part(
                        e.path.clone(),
                        Some(MessageSection::Mime),
                    )),
                    find(&SectionPath::Part(e.path.clone(), None)),
                )
            };
            entity_bytes.push((*e, head, body));
        }
        drop(fetched);
        let raw = synthetic_message_with(&header, &bodies, &entity_bytes);
        drop(bodies);
        drop(entity_bytes);
        let outcome = handler
            .handle(Incoming {
                raw,
                source: format!("{}/{folder}/{uid}", ctx.account),
                account: Some(ctx.account.to_string()),
                folder: Some(folder.to_string()),
                can_move: ctx.cfg.quarantine_folder.is_some(),
                problems,
            })
            .await;
        if outcome.stop {
            // The store or the state cannot be written: the pass stops here,
            // leaving this message and every later one unmarked.
            return Err(self.err(
                format!("handle message UID {uid}"),
                outcome
                    .error
                    .as_deref()
                    .unwrap_or("the store or the state cannot be written"),
            ));
        }
        if outcome.failed() {
            return Ok(false);
        }
        if ctx.dry_run {
            return Ok(true);
        }
        let set = uid.to_string();
        if let (true, Some(q)) = (outcome.quarantine, &ctx.cfg.quarantine_folder) {
            self.move_to(&set, q).await?;
            rep.seen.exists = rep.seen.exists.saturating_sub(1);
            return Ok(true);
        }
        if !outcome.imip {
            return Ok(true);
        }
        if let Some(dest) = &ctx.cfg.move_to {
            self.move_to(&set, dest).await?;
            rep.seen.exists = rep.seen.exists.saturating_sub(1);
        } else if keyword_ok {
            let seen = if ctx.cfg.mark_seen { " \\Seen" } else { "" };
            self.run(
                "mark handled mail",
                &format!("UID STORE {set} +FLAGS.SILENT ({}{seen})", ctx.cfg.keyword),
            )
            .await?;
        } else if ctx.cfg.mark_seen {
            self.run(
                "mark handled mail",
                &format!("UID STORE {set} +FLAGS.SILENT (\\Seen)"),
            )
            .await?;
        }
        Ok(true)
    }

    /// Move messages (MOVE, else COPY: a copy is never followed by a delete).
    async fn move_to(&mut self, set: &str, dest: &str) -> Result<(), ImapError> {
        let quoted = quote(dest);
        let cmd = if self.caps.move_ {
            format!("UID MOVE {set} {quoted}")
        } else {
            format!("UID COPY {set} {quoted}")
        };
        if self
            .run(&format!("move mail to {dest}"), &cmd)
            .await
            .is_err()
        {
            // The folder may not exist yet.
            let _ = self
                .run(
                    &format!("create folder {dest}"),
                    &format!("CREATE {quoted}"),
                )
                .await;
            self.run(&format!("move mail to {dest}"), &cmd).await?;
        }
        Ok(())
    }

    /// Wait in IDLE on a folder until something happens there, `wait` is
    /// up, or `stop` resolves. The SELECT before IDLE is compared with
    /// `seen` (what the last pass over the folder saw): when mail arrived in
    /// between, IDLE would never report it (the SELECT already counted it),
    /// so no IDLE is sent and [`Woke::Arrived`] says to pass again at once.
    /// Returns the connection for the next command.
    pub async fn idle(
        mut self,
        folder: &str,
        wait: Duration,
        seen: Option<Seen>,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(Connection, Woke), ImapError> {
        let mailbox = self.select(folder).await?;
        if seen.is_some_and(|s| arrived_since(s, mailbox.uid_next, mailbox.exists)) {
            return Ok((self, Woke::Arrived));
        }
        let server = self.server.clone();
        let t = self.timeout;
        let err = |what: &str, e: String| ImapError::Command {
            server: server.clone(),
            what: what.to_string(),
            reason: e,
        };
        let mut handle = self.session.idle();
        timed(t, handle.init())
            .await
            .map_err(|e| err("start IDLE", e))?;
        let woke = {
            // Keep the stop source alive while waiting: dropping it ends IDLE.
            let (fut, _interrupt) = handle.wait_with_timeout(wait);
            tokio::select! {
                r = fut => {
                    r.map_err(|e| err("wait in IDLE", e.to_string()))?;
                    Woke::Event
                }
                // async-imap's timeout restarts with every keepalive the
                // server sends ("* OK Still here" every 2 minutes in
                // Dovecot): this one does not.
                _ = tokio::time::sleep(wait) => Woke::Event,
                _ = stop => Woke::Stopped,
            }
        };
        self.session = timed(t, handle.done())
            .await
            .map_err(|e| err("end IDLE", e))?;
        Ok((self, woke))
    }

    pub async fn logout(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.session.logout()).await;
    }
}

/// The header fields as read, cut back to their last whole line when the
/// partial fetch stopped at `max` bytes (a problem says so).
fn bounded_header(header: &[u8], max: usize, problems: &mut Vec<String>) -> Vec<u8> {
    if header.len() < max {
        return header.to_vec();
    }
    problems.push(format!(
        "the header fields are longer than {max} bytes (limits.max_header_bytes); only the first {max} were read"
    ));
    let end = header
        .windows(2)
        .rposition(|w| w == b"\r\n")
        .map(|p| p + 2)
        .unwrap_or(0);
    header[..end].to_vec()
}

/// IMAP quoted string.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A calendar part found in a BODYSTRUCTURE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalPart {
    /// The part number path ("2.1" → `[2, 1]`); for a single-part message `[1]`.
    pub path: Vec<u32>,
    pub content_type: String,
    pub params: Vec<(String, String)>,
    pub encoding: String,
    pub size: u32,
    /// Inside a forwarded message/rfc822.
    pub forwarded: bool,
}

impl CalPart {
    fn section(&self) -> String {
        self.path
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// A signed or encrypted entity found in a BODYSTRUCTURE: fetched whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecPart {
    /// The part number path; empty for the whole message body.
    pub path: Vec<u32>,
    /// `multipart/signed`, `multipart/encrypted`, `application/pkcs7-mime`.
    pub content_type: String,
    pub params: Vec<(String, String)>,
    pub encoding: String,
    /// Its size in bytes (the sum of its leaves for a multipart).
    pub size: u64,
    /// Inside a forwarded message/rfc822.
    pub forwarded: bool,
}

impl SecPart {
    fn section(&self) -> String {
        self.path
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The MIME header of the whole message's body, rebuilt from the
    /// BODYSTRUCTURE (the message header fields fetched leave it out).
    fn header(&self) -> String {
        let params: String = self
            .params
            .iter()
            .map(|(k, v)| format!(";\r\n {k}=\"{}\"", v.replace('"', "")))
            .collect();
        let enc = if self.content_type.starts_with("multipart/") || self.encoding.is_empty() {
            String::new()
        } else {
            format!("Content-Transfer-Encoding: {}\r\n", self.encoding)
        };
        format!("Content-Type: {}{params}\r\n{enc}\r\n", self.content_type)
    }
}

fn encoding_name(e: &ContentEncoding<'_>) -> String {
    match e {
        ContentEncoding::SevenBit => "7bit".into(),
        ContentEncoding::EightBit => "8bit".into(),
        ContentEncoding::Binary => "binary".into(),
        ContentEncoding::Base64 => "base64".into(),
        ContentEncoding::QuotedPrintable => "quoted-printable".into(),
        ContentEncoding::Other(o) => o.to_string(),
    }
}

/// Whether a BODYSTRUCTURE holds a calendar part, and the size of its
/// leaves; walked with a stack (no recursion) no deeper than `max_depth`.
fn calendar_inside(bs: &BodyStructure<'_>, max_depth: usize) -> (bool, u64) {
    let mut stack = vec![(bs, 0usize)];
    let (mut found, mut size) = (false, 0u64);
    while let Some((b, depth)) = stack.pop() {
        if depth > max_depth {
            continue;
        }
        match b {
            BodyStructure::Multipart { bodies, .. } => {
                stack.extend(bodies.iter().map(|c| (c, depth + 1)));
            }
            BodyStructure::Message { body, other, .. } => {
                size += other.octets as u64;
                stack.push((body, depth + 1));
            }
            BodyStructure::Basic { common, other, .. }
            | BodyStructure::Text { common, other, .. } => {
                size += other.octets as u64;
                let ty = common.ty.ty.to_ascii_lowercase();
                let sub = common.ty.subtype.to_ascii_lowercase();
                if (ty == "text" && sub == "calendar") || (ty == "application" && sub == "ics") {
                    found = true;
                }
            }
        }
    }
    (found, size)
}

/// The calendar parts (text/calendar, application/ics) of a BODYSTRUCTURE,
/// walked depth-first with a stack of its own (no recursion, however deep
/// the structure) and no deeper than `max_depth`.
pub fn calendar_parts(bs: &BodyStructure<'_>, max_depth: usize) -> Structure {
    structure_of(bs, max_depth, false)
}

/// The calendar parts of a BODYSTRUCTURE, and the signed and encrypted
/// entities to fetch whole: a `multipart/signed` around a calendar part,
/// S/MIME opaque signed data, and (with `encrypted`: a key of mine can open
/// them) S/MIME enveloped data and PGP/MIME `multipart/encrypted`.
pub fn structure_of(bs: &BodyStructure<'_>, max_depth: usize, encrypted: bool) -> Structure {
    struct Node<'b, 'a> {
        bs: &'b BodyStructure<'a>,
        path: Vec<u32>,
        forwarded: bool,
        top: bool,
        depth: usize,
    }
    let mut s = Structure::default();
    let mut stack = vec![Node {
        bs,
        path: Vec::new(),
        forwarded: false,
        top: true,
        depth: 0,
    }];
    while let Some(n) = stack.pop() {
        // The same depth rule as the MIME walker of `process`.
        if n.depth > max_depth {
            s.too_deep = true;
            continue;
        }
        match n.bs {
            BodyStructure::Multipart { common, .. }
                if common.ty.subtype.eq_ignore_ascii_case("signed")
                    || common.ty.subtype.eq_ignore_ascii_case("encrypted") =>
            {
                let sub = common.ty.subtype.to_ascii_lowercase();
                let (calendar, size) = calendar_inside(n.bs, max_depth.saturating_sub(n.depth));
                let take = if sub == "signed" { calendar } else { encrypted };
                if take {
                    s.entities.push(SecPart {
                        path: n.path.clone(),
                        content_type: format!("multipart/{sub}"),
                        params: params_of(common),
                        encoding: String::new(),
                        size,
                        forwarded: n.forwarded,
                    });
                }
            }
            BodyStructure::Multipart { bodies, .. } => {
                // Pushed last to first, so that they come off in order.
                for (i, b) in bodies.iter().enumerate().rev() {
                    let mut path = n.path.clone();
                    path.push(i as u32 + 1);
                    stack.push(Node {
                        bs: b,
                        path,
                        forwarded: n.forwarded,
                        top: false,
                        depth: n.depth + 1,
                    });
                }
            }
            BodyStructure::Message { body, .. } => {
                // The parts of an encapsulated message are numbered under it;
                // a non-multipart body of it is part 1.
                let mut path = n.path.clone();
                if !matches!(**body, BodyStructure::Multipart { .. }) {
                    path.push(1);
                }
                stack.push(Node {
                    bs: body,
                    path,
                    forwarded: true,
                    top: false,
                    depth: n.depth + 1,
                });
            }
            BodyStructure::Basic { common, other, .. }
            | BodyStructure::Text { common, other, .. } => {
                let ty = common.ty.ty.to_ascii_lowercase();
                let sub = common.ty.subtype.to_ascii_lowercase();
                if ty == "application" && (sub == "pkcs7-mime" || sub == "x-pkcs7-mime") {
                    let params = params_of(common);
                    let kind = params
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("smime-type"))
                        .map(|(_, v)| v.to_ascii_lowercase());
                    let signed = kind.as_deref() == Some("signed-data");
                    if signed || (encrypted && kind.as_deref() != Some("certs-only")) {
                        s.entities.push(SecPart {
                            path: if n.top { Vec::new() } else { n.path.clone() },
                            content_type: format!("{ty}/{sub}"),
                            params,
                            encoding: encoding_name(&other.transfer_encoding),
                            size: other.octets as u64,
                            forwarded: n.forwarded,
                        });
                    }
                    continue;
                }
                if (ty == "text" && sub == "calendar") || (ty == "application" && sub == "ics") {
                    s.parts.push(CalPart {
                        path: if n.top { vec![1] } else { n.path },
                        content_type: format!("{ty}/{sub}"),
                        params: common
                            .ty
                            .params
                            .iter()
                            .flatten()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        encoding: match &other.transfer_encoding {
                            ContentEncoding::SevenBit => "7bit".into(),
                            ContentEncoding::EightBit => "8bit".into(),
                            ContentEncoding::Binary => "binary".into(),
                            ContentEncoding::Base64 => "base64".into(),
                            ContentEncoding::QuotedPrintable => "quoted-printable".into(),
                            ContentEncoding::Other(o) => o.to_string(),
                        },
                        size: other.octets,
                        forwarded: n.forwarded,
                    });
                }
            }
        }
    }
    s
}

fn params_of(common: &async_imap::imap_proto::BodyContentCommon<'_>) -> Vec<(String, String)> {
    common
        .ty
        .params
        .iter()
        .flatten()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What a BODYSTRUCTURE says about calendar data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Structure {
    pub parts: Vec<CalPart>,
    /// Signed or encrypted entities to fetch whole.
    pub entities: Vec<SecPart>,
    /// Parts are nested deeper than `limits.max_depth` (not walked further).
    pub too_deep: bool,
}

/// A multipart boundary that occurs in none of `bodies`, found in one scan
/// of them: the base followed by one `x` more than the longest run of `x`
/// that follows the base anywhere in them.
fn boundary<'b>(bodies: impl Iterator<Item = &'b [u8]>) -> String {
    const BASE: &[u8] = b"imipd-part-boundary";
    let mut longest: Option<usize> = None;
    for body in bodies {
        let mut at = 0;
        while let Some(p) = body[at..].windows(BASE.len()).position(|w| w == BASE) {
            let after = at + p + BASE.len();
            let run = body[after..].iter().take_while(|&&b| b == b'x').count();
            longest = Some(longest.map_or(run, |l| l.max(run)));
            // The run holds no further BASE: go on after it.
            at = after + run;
        }
    }
    let mut b = String::from_utf8_lossy(BASE).into_owned();
    if let Some(run) = longest {
        b.extend(std::iter::repeat_n('x', run + 1));
    }
    b
}

/// The message as imipd's classifier reads it, built from the fetched
/// header fields and the calendar parts alone (their MIME headers rebuilt
/// from the BODYSTRUCTURE). Forwarded parts are wrapped in a message/rfc822
/// part so they are still known as forwarded. Linear in the size of the
/// parts.
pub fn synthetic_message(header: &[u8], bodies: &[(&CalPart, Vec<u8>)]) -> Vec<u8> {
    synthetic_message_with(header, bodies, &[])
}

/// [`synthetic_message`] with signed or encrypted entities too, each as
/// fetched: its MIME header and its body, exact bytes.
pub fn synthetic_message_with(
    header: &[u8],
    bodies: &[(&CalPart, Vec<u8>)],
    entities: &[(&SecPart, Vec<u8>, Vec<u8>)],
) -> Vec<u8> {
    let mut head = header.to_vec();
    while head.last().is_some_and(|b| *b == b'\r' || *b == b'\n') {
        head.pop();
    }
    let boundary = boundary(
        bodies.iter().map(|(_, b)| b.as_slice()).chain(
            entities
                .iter()
                .flat_map(|(_, h, b)| [h.as_slice(), b.as_slice()]),
        ),
    );
    let mut out = head;
    out.extend_from_slice(
        format!("\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n").as_bytes(),
    );
    for (p, body) in bodies {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        if p.forwarded {
            out.extend_from_slice(
                b"Content-Type: message/rfc822\r\n\r\nFrom: forwarded@imipd.invalid\r\nMIME-Version: 1.0\r\n",
            );
        }
        let params: String = p
            .params
            .iter()
            .map(|(k, v)| format!("; {k}=\"{}\"", v.replace('"', "")))
            .collect();
        out.extend_from_slice(
            format!(
                "Content-Type: {}{params}\r\nContent-Transfer-Encoding: {}\r\n\r\n",
                p.content_type, p.encoding
            )
            .as_bytes(),
        );
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }
    for (e, head, body) in entities {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        if e.forwarded {
            out.extend_from_slice(
                b"Content-Type: message/rfc822\r\n\r\nFrom: forwarded@imipd.invalid\r\nMIME-Version: 1.0\r\n",
            );
        }
        out.extend_from_slice(head);
        if !head.ends_with(b"\n\n") && !head.ends_with(b"\r\n\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// IDLE is re-issued after this long at most (servers drop it after 30 minutes).
pub const IDLE_MAX: Duration = Duration::from_secs(25 * 60);

/// One IMAP account as a [`super::Source`]: connects when a pass needs it,
/// passes over every configured folder, and waits in IDLE on the first
/// folder (where the server has it) or polls.
pub struct ImapSource {
    name: String,
    cfg: ImapConfig,
    limits: Limits,
    state_dir: PathBuf,
    dry_run: bool,
    conn: Option<Connection>,
    /// What the last pass saw of the folder it idles on (for the SELECT
    /// before IDLE).
    seen: Option<Seen>,
    /// Folders the server refused to select, and when to try each again
    /// (the polling interval after the failure).
    unselectable: std::collections::HashMap<String, std::time::Instant>,
    since: Option<crate::config::Since>,
}

impl ImapSource {
    pub fn new(
        name: &str,
        cfg: &ImapConfig,
        limits: &Limits,
        state_dir: &std::path::Path,
        dry_run: bool,
    ) -> ImapSource {
        ImapSource {
            name: name.to_string(),
            cfg: cfg.clone(),
            limits: limits.clone(),
            state_dir: state_dir.to_path_buf(),
            dry_run,
            conn: None,
            seen: None,
            unselectable: Default::default(),
            since: None,
        }
    }

    /// Remember mail delivered before `since` as handled, unprocessed.
    pub fn with_since(mut self, since: Option<crate::config::Since>) -> ImapSource {
        self.since = since;
        self
    }

    /// The folder to IDLE on: the first one the server lets imipd select.
    fn idle_folder(&self) -> Option<&String> {
        self.cfg
            .folders
            .iter()
            .find(|f| !self.unselectable.contains_key(*f))
    }

    fn failed(&mut self, e: ImapError) -> SourceError {
        self.conn = None;
        SourceError {
            server: e.is_server_problem(),
            message: e.to_string(),
        }
    }
}

impl super::Source for ImapSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn reports_passes(&self) -> bool {
        true
    }

    async fn pass<H: Handler>(
        &mut self,
        handler: &mut H,
        stop: &Shutdown,
    ) -> Result<Vec<PassReport>, SourceError> {
        if self.conn.is_none() {
            // A login that waits (a password command, a silent server) is
            // given up at once when the service stops.
            let connected = tokio::select! {
                r = connect(&self.cfg, &self.limits) => r,
                _ = stop.wait() => return Ok(Vec::new()),
            };
            let conn = connected.map_err(|e| self.failed(e))?;
            tracing::info!(account = %self.name, server = %conn.server, idle = conn.caps.idle, "connected");
            self.conn = Some(conn);
        }
        let mut reports = Vec::new();
        let cutoff = self.since.map(|s| s.cutoff(crate::clock::now()));
        for folder in self.cfg.folders.clone() {
            if stop.is_set() {
                break;
            }
            // A folder the server refused is tried again at the polling
            // interval, not at every pass.
            let retry_at = self.unselectable.get(&folder).copied();
            if retry_at.is_some_and(|t| std::time::Instant::now() < t) {
                continue;
            }
            let ctx = PassContext {
                account: &self.name,
                cfg: &self.cfg,
                limits: &self.limits,
                state_dir: &self.state_dir,
                dry_run: self.dry_run,
                stop,
                cutoff,
            };
            let Some(conn) = self.conn.as_mut() else {
                break;
            };
            match conn.pass(&folder, &ctx, handler).await {
                Ok(r) => {
                    tracing::debug!(account = %self.name, folder = %folder, examined = r.examined, calendar = r.with_calendar, unchanged = r.unchanged, fetches = r.fetch_commands, bytes = r.bytes_read, "folder done");
                    if self.unselectable.remove(&folder).is_some() {
                        tracing::info!(account = %self.name, "folder {folder} can be selected again");
                    }
                    reports.push(r);
                }
                Err(e @ ImapError::Folder { .. }) => {
                    let again = std::time::Instant::now() + self.cfg.poll_interval;
                    self.unselectable.insert(folder.clone(), again);
                    if retry_at.is_none() {
                        // Reported once; the other folders go on.
                        reports.push(PassReport {
                            folder: folder.clone(),
                            error: Some(e.to_string()),
                            ..PassReport::default()
                        });
                    } else {
                        tracing::debug!(account = %self.name, "{e}");
                    }
                }
                Err(e) => return Err(self.failed(e)),
            }
        }
        let idle_folder = self.idle_folder().cloned();
        self.seen = reports
            .iter()
            .find(|r| Some(&r.folder) == idle_folder.as_ref() && r.error.is_none())
            .map(|r| r.seen);
        Ok(reports)
    }

    async fn wait(&mut self, stop: &Shutdown) -> Result<(), SourceError> {
        let idle = self
            .conn
            .as_ref()
            .is_some_and(|c| c.caps.idle && self.cfg.idle);
        if !idle {
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.poll_interval) => {}
                _ = stop.wait() => {}
            }
            return Ok(());
        }
        let Some(folder) = self.idle_folder().cloned() else {
            // No folder can be selected: look again at the polling interval.
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.poll_interval) => {}
                _ = stop.wait() => {}
            }
            return Ok(());
        };
        let Some(conn) = self.conn.take() else {
            return Ok(());
        };
        // With several folders (or one the server refused, to be tried
        // again), IDLE on the first one ends at the polling interval so the
        // others are looked at too.
        let wait = if self.cfg.folders.len() > 1 {
            self.cfg
                .poll_interval
                .clamp(Duration::from_secs(1), IDLE_MAX)
        } else {
            IDLE_MAX
        };
        let (conn, woke) = conn
            .idle(&folder, wait, self.seen, stop.wait())
            .await
            .map_err(|e| self.failed(e))?;
        if woke == Woke::Arrived {
            tracing::debug!(account = %self.name, "mail arrived before IDLE: passing again");
        }
        self.conn = Some(conn);
        Ok(())
    }

    async fn close(&mut self) {
        if let Some(c) = self.conn.take() {
            c.logout().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(uid: Option<u32>, structure: bool) -> Fetched {
        Fetched {
            uid,
            structure: structure.then(Structure::default),
            ..Fetched::default()
        }
    }

    #[test]
    fn unsolicited_fetch_never_moves_last_uid() {
        // A batch FETCH of 5:200 answered with, besides 5 and 7: flag
        // updates (no BODYSTRUCTURE) for an old message, for a message of
        // the range, for one past the range and for a far UID; a FETCH with
        // no UID; and a full answer for a UID nobody asked for.
        let batch = vec![
            fetched(Some(7), true),
            fetched(Some(3), false),
            fetched(Some(5), true),
            fetched(Some(5), false),
            fetched(Some(201), false),
            fetched(Some(4_000_000_000), false),
            fetched(None, false),
            fetched(Some(250), true),
        ];
        let plan = plan_batch(&batch, 5, 200);
        let uids: Vec<u32> = plan.iter().map(|&i| batch[i].uid.unwrap()).collect();
        assert_eq!(uids, [5, 7], "only the UIDs asked for, each once, in order");
        // Both handled: up to the end of the range asked for (UIDNEXT 201).
        assert_eq!(
            advance_last_uid(4, &[(5, true), (7, true)], true, Some(200)),
            200
        );
        // Without UIDNEXT (a `5:*` FETCH): only as far as handled.
        let plan = plan_batch(&batch, 5, u32::MAX);
        let uids: Vec<u32> = plan.iter().map(|&i| batch[i].uid.unwrap()).collect();
        assert_eq!(uids, [5, 7, 250], "`*` asked for every UID from 5 on");
        assert_eq!(
            advance_last_uid(4, &[(5, true), (7, true), (250, true)], true, None),
            250
        );
        // A failure stops it before the failed message; so does a stop in
        // the middle of the batch.
        assert_eq!(
            advance_last_uid(4, &[(5, true), (7, false)], true, Some(200)),
            5
        );
        assert_eq!(advance_last_uid(4, &[(5, true)], false, Some(200)), 5);
        assert_eq!(advance_last_uid(4, &[], false, Some(200)), 4);
        // Never backwards.
        assert_eq!(advance_last_uid(300, &[(5, true)], true, Some(200)), 300);
    }

    #[test]
    fn mail_arrived_since_the_pass() {
        let seen = Seen {
            uidnext: 10,
            exists: 9,
        };
        assert!(!arrived_since(seen, Some(10), 9));
        assert!(!arrived_since(seen, Some(10), 3), "expunged: nothing new");
        assert!(arrived_since(seen, Some(11), 9));
        assert!(arrived_since(seen, Some(11), 8), "one moved away, one came");
        let no_uidnext = Seen {
            uidnext: 0,
            exists: 9,
        };
        assert!(arrived_since(no_uidnext, None, 10));
        assert!(!arrived_since(no_uidnext, None, 9));
    }

    fn part(path: &[u32]) -> CalPart {
        CalPart {
            path: path.to_vec(),
            content_type: "text/calendar".into(),
            params: vec![("method".into(), "REQUEST".into())],
            encoding: "7bit".into(),
            size: 0,
            forwarded: false,
        }
    }

    #[test]
    fn the_boundary_is_found_in_one_scan_and_occurs_in_no_part() {
        let p = part(&[1]);
        let plain = [(&p, b"BEGIN:VCALENDAR\r\nEND:VCALENDAR".to_vec())];
        assert_eq!(
            boundary(plain.iter().map(|(_, b)| b.as_slice())),
            "imipd-part-boundary"
        );
        let mut hostile = b"X:imipd-part-boundaryxxx imipd-part-boundary ".to_vec();
        hostile.extend_from_slice(b"imipd-part-boundary");
        hostile.extend(std::iter::repeat_n(b'x', 200_000));
        hostile.extend_from_slice(b"imipd-part-boundaryx");
        let bodies = vec![(&p, hostile)];
        let b = boundary(bodies.iter().map(|(_, b)| b.as_slice()));
        assert_eq!(b.len(), "imipd-part-boundary".len() + 200_001);
        let raw = synthetic_message(b"From: a@b.c\r\n", &bodies);
        let delimiter = format!("--{b}");
        let occurrences = raw
            .windows(delimiter.len())
            .filter(|w| *w == delimiter.as_bytes())
            .count();
        assert_eq!(occurrences, 2, "the opening and the closing delimiter only");
    }

    #[test]
    fn a_deep_bodystructure_is_walked_without_recursion() {
        let mut bs = BodyStructure::Text {
            common: async_imap::imap_proto::BodyContentCommon {
                ty: async_imap::imap_proto::ContentType {
                    ty: "TEXT".into(),
                    subtype: "CALENDAR".into(),
                    params: None,
                },
                disposition: None,
                language: None,
                location: None,
            },
            other: async_imap::imap_proto::BodyContentSinglePart {
                id: None,
                md5: None,
                octets: 10,
                description: None,
                transfer_encoding: ContentEncoding::SevenBit,
            },
            lines: 1,
            extension: None,
        };
        for _ in 0..100_000 {
            bs = BodyStructure::Multipart {
                common: async_imap::imap_proto::BodyContentCommon {
                    ty: async_imap::imap_proto::ContentType {
                        ty: "MULTIPART".into(),
                        subtype: "MIXED".into(),
                        params: None,
                    },
                    disposition: None,
                    language: None,
                    location: None,
                },
                bodies: vec![bs],
                extension: None,
            };
        }
        let s = calendar_parts(&bs, 200_000);
        assert_eq!(s.parts.len(), 1);
        assert_eq!(s.parts[0].path.len(), 100_000);
        let s = calendar_parts(&bs, 24);
        assert!(s.too_deep && s.parts.is_empty());
        // Dropping a structure this deep recurses (not our code): forget it.
        std::mem::forget(bs);
    }

    fn guard(cut: usize, refuse: usize, nesting: usize) -> WireGuard {
        WireGuard::new(WireLimits {
            literal_cut: cut,
            literal_refuse: refuse,
            nesting,
        })
    }

    /// Feed `input` in pieces of `step` bytes.
    fn through(g: &mut WireGuard, input: &[u8], step: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        for chunk in input.chunks(step) {
            g.feed(chunk, &mut out)?;
        }
        g.finish(&mut out);
        Ok(out)
    }

    #[test]
    fn the_wire_guard_passes_what_fits_in_any_pieces() {
        let input =
            b"* 1 FETCH (UID 1 BODY[1] {5}\r\n(((((\"{9}\r\n\" {2}\r\n)\n)\r\nA1 OK {x}\r\n";
        for step in 1..input.len() {
            let mut g = guard(100, 1000, 3);
            assert_eq!(
                through(&mut g, input, step).unwrap(),
                input.to_vec(),
                "{step}"
            );
        }
    }

    #[test]
    fn the_wire_guard_cuts_and_refuses_literals() {
        let mut input = b"* 1 FETCH (BODY[1] {20}\r\n".to_vec();
        input.extend_from_slice(b"0123456789abcdefghij");
        input.extend_from_slice(b" FLAGS (\\Seen))\r\n");
        for step in [1, 3, 7, 1000] {
            let mut g = guard(8, 1000, 10);
            let out = through(&mut g, &input, step).unwrap();
            assert_eq!(
                out,
                b"* 1 FETCH (BODY[1] {8}\r\n01234567 FLAGS (\\Seen))\r\n".to_vec()
            );
            assert_eq!(g.cut.load(Ordering::Relaxed), 1);
        }
        let mut g = guard(8, 1000, 10);
        let e = through(&mut g, b"* 1 FETCH (BODY[] {500000000}\r\nab", 4).unwrap_err();
        assert!(e.contains("literal of 500000000 bytes"), "{e}");
        let mut out = Vec::new();
        assert!(g.feed(b"more", &mut out).is_err(), "it stays refused");
        let mut g = guard(8, 1000, 10);
        let e = through(&mut g, b"* 1 FETCH (BODY[] {99999999999999999999}\r\n", 4).unwrap_err();
        assert!(e.contains("literal of"), "{e}");
    }

    #[test]
    fn the_wire_guard_refuses_deep_nesting_outside_strings_only() {
        let mut g = guard(8, 1000, 3);
        assert!(through(&mut g, b"* 1 FETCH (((\"((((\"))))\r\n", 2).is_ok());
        let mut g = guard(8, 1000, 3);
        assert!(through(&mut g, b"* 1 FETCH (x {5}\r\n((((( y)\r\n", 2).is_ok());
        let mut g = guard(8, 1000, 3);
        // A new response starts at depth 0.
        assert!(through(&mut g, b"* 1 (((\r\n* 2 (((\r\n", 2).is_ok());
        let mut g = guard(8, 1000, 3);
        let e = through(&mut g, b"* 1 FETCH ((((x))))\r\n", 2).unwrap_err();
        assert!(e.contains("nested deeper than 3"), "{e}");
    }

    #[test]
    fn a_long_quoted_string_reaches_the_parser_as_a_literal() {
        let long = "n".repeat(3000);
        let input = format!(
            "* 1 FETCH (UID 1 BODYSTRUCTURE (\"application\" \"pdf\" (\"name\" \"{long}\\\"q\") NIL NIL \"base64\" 10 NIL NIL NIL NIL))\r\n"
        );
        for step in [1, 5, 4096] {
            let mut g = guard(8, 1000, 10);
            let out = through(&mut g, input.as_bytes(), step).unwrap();
            let expected = format!(
                "* 1 FETCH (UID 1 BODYSTRUCTURE (\"application\" \"pdf\" (\"name\" {{3002}}\r\n{long}\"q) NIL NIL \"base64\" 10 NIL NIL NIL NIL))\r\n"
            );
            assert_eq!(String::from_utf8_lossy(&out), expected, "{step}");
            // imap-proto takes a literal where a string may be.
            let (rest, r) = async_imap::imap_proto::parser::parse_response(&out).unwrap();
            assert!(rest.is_empty());
            assert!(format!("{r:?}").contains("application"));
        }
        // Longer than MAX_STRING: cut on a character boundary, counted.
        let huge = "é".repeat(MAX_STRING);
        let input = format!("* 1 FETCH (X \"{huge}\")\r\n");
        let mut g = guard(8, 1000, 10);
        let out = through(&mut g, input.as_bytes(), 999).unwrap();
        let n = MAX_STRING / 2 * 2;
        let mut expected = format!("* 1 FETCH (X {{{n}}}\r\n").into_bytes();
        expected.extend_from_slice(&huge.as_bytes()[..n]);
        expected.extend_from_slice(b")\r\n");
        assert_eq!(out, expected);
        assert_eq!(g.cut.load(Ordering::Relaxed), 1);
        assert_eq!(utf8_prefix("aé".as_bytes()), 3);
        assert_eq!(utf8_prefix(&"aé".as_bytes()[..2]), 1);
        assert_eq!(utf8_prefix(b""), 0);
        // An unterminated quote in a line goes on as it came.
        let mut g = guard(8, 1000, 10);
        let input = b"* OK [ALERT] it's \"broken\r\nA1 OK done\r\n";
        assert_eq!(through(&mut g, input, 3).unwrap(), input.to_vec());
    }

    #[test]
    fn a_cut_header_keeps_whole_lines_and_says_so() {
        let mut problems = Vec::new();
        let h = bounded_header(b"From: a@b.c\r\nSubject: xxxxx", 25, &mut problems);
        assert_eq!(h, b"From: a@b.c\r\n");
        assert!(problems[0].contains("limits.max_header_bytes"));
        let mut problems = Vec::new();
        assert_eq!(
            bounded_header(b"From: a\r\n\r\n", 64, &mut problems).len(),
            11
        );
        assert!(problems.is_empty());
    }
}
