//! The wire under the IMAP session: [`ImapStream`], plain TCP or TLS, which
//! counts every byte read and passes it through a [`WireGuard`] before
//! async-imap's parser sees it. The guard keeps the server's answers from
//! costing more than imipd needs: literals larger than [`WireLimits`]
//! allow are cut or refused before the parser reserves memory for them, a
//! quoted string longer than [`QUOTED_INLINE`] goes on as a literal (cut at
//! [`MAX_STRING`]), and parentheses nested deeper than [`MAX_NESTING`] end
//! the connection.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::Limits;

/// Parentheses nested deeper than this in one server response are refused
/// (the connection ends with an error). Dovecot never nests a BODYSTRUCTURE
/// deeper than ~100 levels (its MIME parser stops there), so only a broken
/// or hostile server gets here; up to this depth a deep BODYSTRUCTURE is
/// parsed and the message is reported with `limits.max_depth`.
pub const MAX_NESTING: usize = 1000;

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
pub(super) enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The connection under the IMAP session: plain TCP or TLS. Every byte read
/// is counted (the benchmark's "bytes fetched") and passes the
/// [`WireGuard`] before async-imap's parser sees it.
pub struct ImapStream {
    inner: Transport,
    counter: Arc<AtomicU64>,
    pub(super) guard: WireGuard,
    /// Bytes through the guard, not yet handed to the parser (from `pos`).
    out: Vec<u8>,
    pos: usize,
    scratch: Box<[u8]>,
    eof: bool,
}

impl ImapStream {
    pub(super) fn new(inner: Transport, counter: Arc<AtomicU64>, limits: WireLimits) -> ImapStream {
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
    pub(super) fn into_plain(self) -> Option<TcpStream> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
