//! Raw RFC 5322 message → the facts imipd needs: who sent it, its ids, the
//! receiving server's authentication results, and every calendar part
//! (`text/calendar`, `application/ics`) at any depth, including forwarded
//! `message/rfc822` parts, decoded to UTF-8. Parsing never panics; what is
//! broken is reported as a problem and the rest is still read.
//!
//! Security multiparts are opened here with the keys of [`crate::trust`]:
//! a `multipart/signed` (S/MIME or PGP/MIME) is verified over the exact
//! bytes of its first part, and every calendar part inside carries what the
//! signature proves; opaque S/MIME signed data is verified and its content
//! walked; S/MIME enveloped data and PGP/MIME `multipart/encrypted` are
//! opened with my key and their content walked as a MIME entity.

use mail_parser::{
    Address, HeaderName, HeaderValue, Message, MessageParser, MimeHeaders, PartType,
};

use crate::address;
use crate::limits::Limits;
use crate::trust::{self, Keys, SigMethod, Signature};

/// One calendar part, decoded.
#[derive(Debug, Clone)]
pub struct CalendarPart {
    /// `text/calendar` or `application/ics`, lower-cased.
    pub content_type: String,
    /// The Content-Type `method=` parameter, upper-cased, if any.
    pub method_param: Option<String>,
    /// The decoded calendar text.
    pub text: String,
    /// True when the part sits inside a forwarded `message/rfc822`.
    pub forwarded: bool,
    /// The signature of the innermost `multipart/signed` (or opaque signed
    /// data) around the part, if any.
    pub signed: Option<Signature>,
}

/// A signature found in the message, for the report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SignatureReport {
    pub method: SigMethod,
    /// Whether the signature and the signer's certificate or key verified.
    pub verified: bool,
    /// The addresses the verified signer proves.
    pub signers: Vec<String>,
    /// Why it proves nothing, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a message says about itself.
#[derive(Debug, Clone, Default)]
pub struct Mail {
    /// With angle brackets, as written in the header.
    pub message_id: Option<String>,
    /// The bare, lower-cased From address (the first mailbox).
    pub from: Option<String>,
    /// Every mailbox of every From field, bare and lower-cased.
    pub from_all: Vec<String>,
    /// How many From fields the header holds (RFC 5322 allows one).
    pub from_fields: usize,
    pub from_name: Option<String>,
    /// The bare, lower-cased Sender address.
    pub sender: Option<String>,
    pub subject: Option<String>,
    /// Message-IDs (with brackets) of References, for threading replies.
    pub references: Vec<String>,
    /// Raw values of every `Authentication-Results` header, top first.
    pub authentication_results: Vec<String>,
    /// Whether the mail says it was sent automatically (`Auto-Submitted`
    /// other than `no`): used to avoid mail loops.
    pub auto_submitted: bool,
    /// The `Auto-Submitted` keyword, lower-cased (`auto-generated`,
    /// `auto-replied`, ...), without parameters.
    pub auto_submitted_value: Option<String>,
    /// `List-Id` (the id between angle brackets, lower-cased) and the
    /// `mailto:` addresses of `List-Post`: the mailing list the mail came
    /// through, which an automatic answer must never go to (RFC 3834 §2).
    pub list_id: Option<String>,
    pub list_post: Vec<String>,
    pub parts: Vec<CalendarPart>,
    /// Problems with the MIME structure itself (each makes the mail invalid).
    pub problems: Vec<String>,
    /// Every signature found, verified or not.
    pub signatures: Vec<SignatureReport>,
    /// The message was encrypted and opened with my key (`smime`, `pgp`).
    pub decrypted: Option<SigMethod>,
}

/// Why a message could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MimeError {
    #[error("the file is empty")]
    Empty,
    #[error("the message is {size} bytes, more than the limit of {limit} bytes (limits.max_message_bytes)")]
    TooLarge { size: usize, limit: usize },
    #[error("no RFC 5322 header could be found")]
    NoHeaders,
}

/// Parse a raw message and collect its calendar parts (signatures are not
/// verified and encrypted parts not opened: no keys).
pub fn parse(raw: &[u8], limits: &Limits) -> Result<Mail, MimeError> {
    parse_with(raw, limits, &Keys::default())
}

/// Parse a raw message and collect its calendar parts, verifying signatures
/// and opening encrypted parts with `keys`.
pub fn parse_with(raw: &[u8], limits: &Limits, keys: &Keys) -> Result<Mail, MimeError> {
    if raw.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(MimeError::Empty);
    }
    if raw.len() > limits.max_message_bytes {
        return Err(MimeError::TooLarge {
            size: raw.len(),
            limit: limits.max_message_bytes,
        });
    }
    if !looks_like_headers(raw) {
        return Err(MimeError::NoHeaders);
    }
    // Most mail carries no calendar at all: its headers are all imipd reads.
    let whole = may_hold_calendar(raw);
    let input = if whole { raw } else { &raw[..header_end(raw)] };
    let message = parser().parse(input).ok_or(MimeError::NoHeaders)?;
    if message.headers().is_empty() {
        return Err(MimeError::NoHeaders);
    }
    let mut mail = Mail {
        message_id: message.message_id().map(|id| format!("<{id}>")),
        from: first_address(message.from()),
        from_name: message
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.name())
            .map(str::to_string),
        sender: first_address(message.sender()),
        subject: message.subject().map(str::to_string),
        references: id_list(message.references()),
        ..Mail::default()
    };
    for h in message.headers() {
        if h.name == HeaderName::From {
            mail.from_fields += 1;
            if let Some(a) = h.value.as_address() {
                mail.from_all.extend(
                    a.iter()
                        .filter_map(|a| a.address())
                        .map(address::bare)
                        .filter(|a| !a.is_empty()),
                );
            }
        }
    }
    for (name, value) in message.headers_raw() {
        if name.eq_ignore_ascii_case("Authentication-Results") {
            mail.authentication_results.push(unfold(value));
        } else if name.eq_ignore_ascii_case("Auto-Submitted") {
            let keyword = unfold(value)
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mail.auto_submitted = keyword != "no";
            mail.auto_submitted_value = Some(keyword);
        } else if name.eq_ignore_ascii_case("List-Id") {
            let v = unfold(value);
            let id = match (v.rfind('<'), v.rfind('>')) {
                (Some(a), Some(b)) if a < b => v[a + 1..b].to_string(),
                _ => v.trim().to_string(),
            };
            mail.list_id = Some(id.to_ascii_lowercase()).filter(|s| !s.is_empty());
        } else if name.eq_ignore_ascii_case("List-Post") {
            for item in unfold(value).split(',') {
                let item = item.trim().trim_start_matches('<').trim_end_matches('>');
                if let Some(rest) = item
                    .get(..7)
                    .filter(|p| p.eq_ignore_ascii_case("mailto:"))
                    .and_then(|_| item.get(7..))
                {
                    let addr = rest.split('?').next().unwrap_or("");
                    if !addr.is_empty() {
                        mail.list_post.push(address::bare(addr));
                    }
                }
            }
        }
    }
    if whole {
        let mut walker = Walker {
            limits,
            keys,
            mail: &mut mail,
            depth_reported: false,
            budget: 10_000,
        };
        walker.walk(&message, 0, 0, false, None);
    }
    Ok(mail)
}

/// Words whose presence in a header block means the message may carry
/// calendar data: a calendar media type or `.ics` name, a forwarded message,
/// or a signed or encrypted entity (which may wrap one).
const CALENDAR_HINTS: [&[u8]; 7] = [
    b"calendar",
    b"ics",
    b"rfc822",
    b"message/global",
    b"signed",
    b"encrypted",
    b"pkcs7",
];

/// Whether a raw message may hold calendar data. Only header blocks are
/// read: the message's own, and the one after every line that starts with
/// `--` (a MIME boundary; base64 and quoted-printable bodies never start a
/// line so). `false` means the message certainly carries no iTIP.
pub fn may_hold_calendar(raw: &[u8]) -> bool {
    if header_block_hints(raw) {
        return true;
    }
    let finder = memchr::memmem::Finder::new(b"\n--");
    finder
        .find_iter(raw)
        .any(|at| header_block_hints(&raw[at + 1..]))
}

/// Whether the header block at the start of `text` holds a calendar hint
/// (at most 64 KiB of it is read).
fn header_block_hints(text: &[u8]) -> bool {
    let block = &text[..header_end(&text[..text.len().min(64 * 1024)])];
    let lower = block.to_ascii_lowercase();
    CALENDAR_HINTS
        .iter()
        .any(|h| memchr::memmem::find(&lower, h).is_some())
}

/// Where the header block at the start of `text` ends: after the first
/// empty line, or at the end.
fn header_end(text: &[u8]) -> usize {
    let crlf = memchr::memmem::find(text, b"\r\n\r\n").map(|i| i + 4);
    let lf = memchr::memmem::find(text, b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) => a,
        (None, Some(b)) => b,
        (None, None) => text.len(),
    }
}

/// The first line of a message must look like a header field (`Name:`) or a
/// mbox `From ` line; binary junk that mail-parser tolerates is refused here.
fn looks_like_headers(raw: &[u8]) -> bool {
    let start = raw
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    let line = &raw[start..];
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    let line = &line[..end];
    if line.starts_with(b"From ") {
        return true;
    }
    match line.iter().position(|&b| b == b':') {
        Some(colon) if colon > 0 => line[..colon]
            .iter()
            .all(|&b| b.is_ascii_graphic() && b != b':'),
        _ => false,
    }
}

/// One parser for the process.
fn parser() -> &'static MessageParser {
    static PARSER: std::sync::OnceLock<MessageParser> = std::sync::OnceLock::new();
    // Only the headers imipd reads are parsed; the rest (Received, DKIM
    // signatures, ...) are kept raw, which costs almost nothing.
    PARSER.get_or_init(|| {
        MessageParser::new()
            .with_mime_headers()
            .header_address(HeaderName::From)
            .header_address(HeaderName::Sender)
            .header_id(HeaderName::MessageId)
            .header_id(HeaderName::References)
            .header_text(HeaderName::Subject)
            .header_raw(HeaderName::Other("Authentication-Results".into()))
            .header_raw(HeaderName::Other("Auto-Submitted".into()))
            .header_raw(HeaderName::ListId)
            .header_raw(HeaderName::ListPost)
            .default_header_ignore()
    })
}

fn unfold(s: &str) -> String {
    s.split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn first_address(a: Option<&Address<'_>>) -> Option<String> {
    a.and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(address::bare)
        .filter(|a| !a.is_empty())
}

fn id_list(v: &HeaderValue<'_>) -> Vec<String> {
    match v {
        HeaderValue::Text(t) => vec![format!("<{t}>")],
        HeaderValue::TextList(l) => l.iter().map(|t| format!("<{t}>")).collect(),
        _ => Vec::new(),
    }
}

struct Walker<'a> {
    limits: &'a Limits,
    keys: &'a Keys,
    mail: &'a mut Mail,
    depth_reported: bool,
    /// Parts left to look at: a message with absurdly many parts stops here.
    budget: usize,
}

impl Walker<'_> {
    fn walk(
        &mut self,
        msg: &Message<'_>,
        part_id: u32,
        depth: usize,
        forwarded: bool,
        signed: Option<&Signature>,
    ) {
        if self.budget == 0 {
            return;
        }
        self.budget -= 1;
        if self.budget == 0 {
            self.mail
                .problems
                .push("the message has more than 10000 MIME parts; the rest were not read".into());
            return;
        }
        let Some(part) = msg.parts.get(part_id as usize) else {
            return;
        };
        if depth > self.limits.max_depth {
            if !self.depth_reported {
                self.depth_reported = true;
                self.mail.problems.push(format!(
                    "MIME parts are nested deeper than {} levels (limits.max_depth); the deeper parts were not read",
                    self.limits.max_depth
                ));
            }
            return;
        }
        let ct = part.content_type();
        let ctype = ct
            .map(|c| c.ctype().to_ascii_lowercase())
            .unwrap_or_default();
        let csub = ct
            .and_then(|c| c.subtype())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let is_calendar =
            (ctype == "text" && csub == "calendar") || (ctype == "application" && csub == "ics");
        match &part.body {
            PartType::Multipart(children) if csub == "signed" && children.len() >= 2 => {
                self.signed(msg, part, children, depth, forwarded, signed);
            }
            PartType::Multipart(children) if csub == "encrypted" && children.len() >= 2 => {
                self.pgp_encrypted(msg, part, children, depth, forwarded, signed);
            }
            PartType::Multipart(children) => {
                for &child in children {
                    if child != part_id {
                        self.walk(msg, child, depth + 1, forwarded, signed);
                    }
                }
            }
            PartType::Message(inner) => self.walk(inner, 0, depth + 1, true, signed),
            PartType::Text(text) if is_calendar => {
                // RFC 5545 §3.1: unfold first, then decode. A fold may split
                // a multi-byte character, so the bytes are unfolded before
                // the charset is decoded (mail-parser decodes line by line).
                let text = match calendar_bytes(msg, part) {
                    Some(bytes) => decode_charset(
                        &unfold_bytes(&bytes),
                        ct.and_then(|c| c.attribute("charset")),
                    ),
                    None => text.to_string(),
                };
                self.calendar(part, ct, text, forwarded, signed);
            }
            PartType::Binary(bytes) | PartType::InlineBinary(bytes) => {
                if is_calendar {
                    let text = decode_charset(
                        &unfold_bytes(bytes),
                        ct.and_then(|c| c.attribute("charset")),
                    );
                    self.calendar(part, ct, text, forwarded, signed);
                } else if ctype == "message" && (csub == "rfc822" || csub == "global") {
                    // Nested deeper than mail-parser decodes by itself.
                    if let Some(inner) = parser().parse(bytes.as_ref()) {
                        self.walk(&inner, 0, depth + 1, true, signed);
                    }
                } else if ctype == "application" && (csub == "pkcs7-mime" || csub == "x-pkcs7-mime")
                {
                    let kind = ct
                        .and_then(|c| c.attribute("smime-type"))
                        .map(str::to_ascii_lowercase);
                    self.pkcs7(bytes, kind.as_deref(), depth, forwarded, signed);
                }
            }
            _ => {}
        }
    }

    /// A `multipart/signed`: verify the signature over the exact bytes of
    /// the first part, then walk it with what the signature proves.
    fn signed(
        &mut self,
        msg: &Message<'_>,
        part: &mail_parser::MessagePart<'_>,
        children: &[u32],
        depth: usize,
        forwarded: bool,
        outer: Option<&Signature>,
    ) {
        let protocol = protocol_of(part);
        let (Some(content), Some(sig)) = (
            msg.parts.get(children[0] as usize),
            msg.parts.get(children[1] as usize),
        ) else {
            return;
        };
        let method = match protocol.as_str() {
            "application/pkcs7-signature" | "application/x-pkcs7-signature" => SigMethod::Smime,
            "application/pgp-signature" => SigMethod::Pgp,
            _ => {
                tracing::debug!(
                    protocol,
                    "multipart/signed with an unknown protocol: its signature is not checked"
                );
                self.walk(msg, children[0], depth + 1, forwarded, outer);
                return;
            }
        };
        // Only a signature around calendar data matters: the content is
        // walked first, and verified only when it holds a calendar part.
        let before = self.mail.parts.len();
        self.walk(msg, children[0], depth + 1, forwarded, outer);
        if self.mail.parts.len() == before {
            return;
        }
        let raw = msg
            .raw_message
            .get(content.raw_header_offset() as usize..content.raw_end_offset() as usize)
            .unwrap_or_default();
        let signed_bytes = canonical(raw);
        let sig_bytes = sig.contents();
        let signers = match method {
            SigMethod::Smime => trust::smime::verify_detached(
                &signed_bytes,
                &trust::smime::der_of(sig_bytes),
                &self.keys.smime_anchors,
            ),
            SigMethod::Pgp => {
                trust::pgp::verify_detached(&signed_bytes, sig_bytes, &self.keys.pgp_public)
            }
        };
        let signature = self.report(Signature { method, signers });
        // The parts an inner signature covers keep theirs.
        for p in &mut self.mail.parts[before..] {
            if p.signed.as_ref() == outer {
                p.signed = Some(signature.clone());
            }
        }
    }

    /// An `application/pkcs7-mime` part: opaque signed data, or enveloped
    /// data to open with my key.
    fn pkcs7(
        &mut self,
        body: &[u8],
        kind: Option<&str>,
        depth: usize,
        forwarded: bool,
        outer: Option<&Signature>,
    ) {
        let der = trust::smime::der_of(body);
        if kind == Some("signed-data") || (kind.is_none() && is_signed_data(&der)) {
            match trust::smime::verify_opaque(&der, &self.keys.smime_anchors) {
                Ok((content, signers)) => {
                    let signature = self.report(Signature {
                        method: SigMethod::Smime,
                        signers,
                    });
                    self.entity(&content, depth, forwarded, Some(&signature));
                }
                Err(e) => self.mail.problems.push(e),
            }
            return;
        }
        if matches!(kind, Some("certs-only") | Some("compressed-data")) {
            return;
        }
        match trust::smime::decrypt(&der, self.keys.smime_me.as_ref()) {
            Ok(content) => {
                self.mail.decrypted = Some(SigMethod::Smime);
                self.entity(&content, depth, forwarded, outer);
            }
            Err(e) => self.mail.problems.push(e),
        }
    }

    /// A `multipart/encrypted` (PGP/MIME): open the second part with my key.
    fn pgp_encrypted(
        &mut self,
        msg: &Message<'_>,
        part: &mail_parser::MessagePart<'_>,
        children: &[u32],
        depth: usize,
        forwarded: bool,
        outer: Option<&Signature>,
    ) {
        let protocol = protocol_of(part);
        if protocol != "application/pgp-encrypted" {
            self.mail.problems.push(format!(
                "a multipart/encrypted part has an unknown protocol `{protocol}` and cannot be opened"
            ));
            return;
        }
        let Some(data) = msg.parts.get(children[1] as usize) else {
            return;
        };
        match trust::pgp::decrypt(
            data.contents(),
            self.keys.pgp_me.as_ref(),
            &self.keys.pgp_public,
            self.limits.max_message_bytes,
        ) {
            Ok((content, inner)) => {
                self.mail.decrypted = Some(SigMethod::Pgp);
                match inner {
                    Some(signers) => {
                        let signature = self.report(Signature {
                            method: SigMethod::Pgp,
                            signers,
                        });
                        self.entity(&content, depth, forwarded, Some(&signature));
                    }
                    None => self.entity(&content, depth, forwarded, outer),
                }
            }
            Err(e) => self.mail.problems.push(e),
        }
    }

    /// Walk a MIME entity that was inside signed or encrypted data.
    fn entity(&mut self, bytes: &[u8], depth: usize, forwarded: bool, signed: Option<&Signature>) {
        match parser().parse(bytes) {
            Some(inner) => self.walk(&inner, 0, depth + 1, forwarded, signed),
            None => self
                .mail
                .problems
                .push("the signed or encrypted content is not a MIME entity".into()),
        }
    }

    /// Note a signature in the report, and return it.
    fn report(&mut self, s: Signature) -> Signature {
        self.mail.signatures.push(SignatureReport {
            method: s.method,
            verified: s.signers.is_ok(),
            signers: s.signers.clone().unwrap_or_default(),
            reason: s.signers.clone().err(),
        });
        s
    }

    fn calendar(
        &mut self,
        part: &mail_parser::MessagePart<'_>,
        ct: Option<&mail_parser::ContentType<'_>>,
        text: String,
        forwarded: bool,
        signed: Option<&Signature>,
    ) {
        let content_type = ct
            .map(|c| {
                format!(
                    "{}/{}",
                    c.ctype().to_ascii_lowercase(),
                    c.subtype().unwrap_or_default().to_ascii_lowercase()
                )
            })
            .unwrap_or_default();
        if part.is_encoding_problem {
            self.mail.problems.push(format!(
                "the {content_type} part has a broken transfer encoding; it may be truncated"
            ));
        }
        if text.len() > self.limits.max_part_bytes {
            self.mail.problems.push(format!(
                "a {content_type} part of {} bytes is larger than the limit of {} bytes (limits.max_part_bytes) and was not read",
                text.len(),
                self.limits.max_part_bytes
            ));
            return;
        }
        let method_param = ct
            .and_then(|c| c.attribute("method"))
            .map(|m| m.trim().to_ascii_uppercase());
        self.mail.parts.push(CalendarPart {
            content_type,
            method_param,
            text,
            forwarded,
            signed: signed.cloned(),
        });
    }
}

/// Whether DER bytes are a CMS ContentInfo of signed data (OID 1.2.840.113549.1.7.2).
fn is_signed_data(der: &[u8]) -> bool {
    const OID: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02,
    ];
    der.get(..32)
        .unwrap_or(der)
        .windows(OID.len())
        .any(|w| w == OID)
}

/// Signed content in canonical form (RFC 5751 §3.1.1, RFC 3156 §5): every
/// line ends with CRLF. A message stored with LF line ends is read as sent.
fn canonical(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
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

/// The transfer-decoded bytes of a calendar part, from the raw message
/// (`None`: an encoding imipd does not decode itself; mail-parser's text is
/// used). Broken base64 (a truncated message) is recovered as far as it goes.
fn calendar_bytes(msg: &Message<'_>, part: &mail_parser::MessagePart<'_>) -> Option<Vec<u8>> {
    let raw = msg
        .raw_message
        .get(part.raw_body_offset() as usize..part.raw_end_offset() as usize)?;
    let cte = part
        .content_transfer_encoding()
        .map(|e| e.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match cte.as_str() {
        "" | "7bit" | "8bit" | "binary" => Some(raw.to_vec()),
        "base64" => Some(lenient_base64(raw)),
        "quoted-printable" => mail_parser::decoders::quoted_printable::quoted_printable_decode(raw),
        _ => None,
    }
}

/// Remove the line folds of iCalendar text (CRLF or LF followed by a space
/// or a tab), on bytes.
fn unfold_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\r'
            && bytes.get(i + 1) == Some(&b'\n')
            && matches!(bytes.get(i + 2), Some(b' ' | b'\t'))
        {
            i += 3;
            continue;
        }
        if b == b'\n' && matches!(bytes.get(i + 1), Some(b' ' | b'\t')) {
            i += 2;
            continue;
        }
        out.push(b);
        i += 1;
    }
    out
}

/// Decode base64 as far as it goes: characters outside the alphabet are
/// skipped, decoding stops at padding or a MIME boundary, and a final
/// incomplete group yields the bytes it holds.
fn lenient_base64(input: &[u8]) -> Vec<u8> {
    fn val(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some((c - b'A') as u32),
            b'a'..=b'z' => Some((c - b'a') as u32 + 26),
            b'0'..=b'9' => Some((c - b'0') as u32 + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let (mut acc, mut n) = (0u32, 0);
    for line in input.split(|&b| b == b'\n') {
        if line.starts_with(b"--") {
            break;
        }
        for &c in line {
            if c == b'=' {
                break;
            }
            let Some(v) = val(c) else { continue };
            acc = (acc << 6) | v;
            n += 1;
            if n == 4 {
                out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]);
                acc = 0;
                n = 0;
            }
        }
    }
    match n {
        2 => out.push((acc >> 4) as u8),
        3 => out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]),
        _ => {}
    }
    out
}

/// Decode bytes in a declared charset (UTF-8 when none is declared).
fn decode_charset(bytes: &[u8], charset: Option<&str>) -> String {
    if let Some(decoder) =
        charset.and_then(|c| mail_parser::decoders::charsets::map::charset_decoder(c.as_bytes()))
    {
        return decoder(bytes);
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// The `protocol` parameter of a multipart/signed or multipart/encrypted
/// part, lower-cased ("" when missing).
fn protocol_of(part: &mail_parser::MessagePart<'_>) -> String {
    part.content_type()
        .and_then(|c| c.attribute("protocol"))
        .map(|p| p.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(raw: &str) -> Mail {
        parse(raw.as_bytes(), &Limits::default()).unwrap()
    }

    #[test]
    fn authentication_results_and_auto_submitted_are_read() {
        let m = mail(concat!(
            "authentication-results: mx.example.com;\r\n dkim=pass header.d=example.com\r\n",
            "Auto-Submitted: auto-generated\r\nFrom: a@example.com\r\n",
            "References: <a@x> <b@y>\r\nSubject: hi\r\n\r\nbody\r\n"
        ));
        assert_eq!(
            m.authentication_results,
            vec!["mx.example.com; dkim=pass header.d=example.com".to_string()]
        );
        assert!(m.auto_submitted);
        assert_eq!(m.references, vec!["<a@x>".to_string(), "<b@y>".to_string()]);
        assert_eq!(m.subject.as_deref(), Some("hi"));
    }

    #[test]
    fn mail_without_calendar_hints_is_read_no_further_than_its_headers() {
        let plain = b"From: a@b.c\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\
            Content-Type: text/plain\r\n\r\nhello\r\n--x\r\nContent-Type: application/pdf\r\n\
            Content-Disposition: attachment; filename=\"a.pdf\"\r\n\r\nJVBERi0=\r\n--x--\r\n";
        assert!(!may_hold_calendar(plain));
        let m = parse(plain, &Limits::default()).unwrap();
        assert_eq!(m.from.as_deref(), Some("a@b.c"));
        for hint in [
            "text/calendar; method=REQUEST",
            "application/ics",
            "application/octet-stream; name=\"invite.ICS\"",
            "message/rfc822",
            "multipart/signed; protocol=\"application/pkcs7-signature\"",
        ] {
            let with = String::from_utf8_lossy(plain).replace("application/pdf", hint);
            assert!(may_hold_calendar(with.as_bytes()), "{hint}");
        }
        // A calendar as the whole message.
        assert!(may_hold_calendar(
            b"From: a@b.c\r\nContent-Type: text/calendar\r\n\r\nBEGIN:VCALENDAR\r\n"
        ));
    }

    #[test]
    fn garbage_is_not_a_message() {
        assert_eq!(
            parse(b"", &Limits::default()).unwrap_err(),
            MimeError::Empty
        );
        assert_eq!(
            parse(b"\x00\x01\x02binary\xff", &Limits::default()).unwrap_err(),
            MimeError::NoHeaders
        );
    }

    #[test]
    fn finds_calendar_in_alternative_and_attachment() {
        let m = mail(concat!(
            "From: Alice <Alice@Example.com>\r\nMessage-ID: <x@y>\r\n",
            "Content-Type: multipart/mixed; boundary=b1\r\n\r\n",
            "--b1\r\nContent-Type: text/calendar; method=request; charset=UTF-8\r\n\r\n",
            "BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n",
            "--b1\r\nContent-Type: application/ics; name=invite.ics\r\n",
            "Content-Transfer-Encoding: base64\r\n\r\n",
            "QkVHSU46VkNBTEVOREFSDQpFTkQ6VkNBTEVOREFSDQo=\r\n--b1--\r\n"
        ));
        assert_eq!(m.from.as_deref(), Some("alice@example.com"));
        assert_eq!(m.message_id.as_deref(), Some("<x@y>"));
        assert_eq!(m.parts.len(), 2);
        assert_eq!(m.parts[0].method_param.as_deref(), Some("REQUEST"));
        assert_eq!(m.parts[1].content_type, "application/ics");
        assert!(m.parts[1].text.starts_with("BEGIN:VCALENDAR"));
    }

    #[test]
    fn latin1_application_ics_is_decoded() {
        let mut raw =
            b"From: a@b.c\r\nContent-Type: application/ics; charset=ISO-8859-1\r\n\r\nSUMMARY:Caf"
                .to_vec();
        raw.push(0xe9);
        let m = parse(&raw, &Limits::default()).unwrap();
        assert!(m.parts[0].text.ends_with("Café"));
    }

    #[test]
    fn depth_limit_is_reported() {
        let mut raw = String::from("From: a@b.c\r\n");
        for i in 0..6 {
            raw.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n"
            ));
        }
        raw.push_str("Content-Type: text/calendar; method=REQUEST\r\n\r\nBEGIN:VCALENDAR\r\n");
        let limits = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        let m = parse(raw.as_bytes(), &limits).unwrap();
        assert!(m.parts.is_empty());
        assert!(m.problems[0].contains("nested deeper"), "{:?}", m.problems);
    }

    #[test]
    fn a_signed_calendar_part_carries_its_signature() {
        // No CA is configured: the signature is reported, and proves nothing.
        let m = mail(concat!(
            "From: a@example.com\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=s\r\n\r\n",
            "--s\r\nContent-Type: text/calendar; method=REQUEST\r\n\r\nBEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n",
            "--s\r\nContent-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64\r\n\r\nMAMCAQE=\r\n--s--\r\n"
        ));
        assert_eq!(m.parts.len(), 1);
        let sig = m.parts[0].signed.as_ref().unwrap();
        assert_eq!(sig.method, SigMethod::Smime);
        assert!(sig.signers.is_err());
        assert_eq!(m.signatures.len(), 1);
        assert!(!m.signatures[0].verified);
        // Encrypted without a key of mine: reported, not read.
        let m = mail(concat!(
            "From: a@example.com\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n",
            "Content-Transfer-Encoding: base64\r\n\r\nMAMCAQE=\r\n"
        ));
        assert!(m.parts.is_empty());
        assert!(!m.problems.is_empty());
    }

    #[test]
    fn signed_content_is_read_with_crlf_line_ends() {
        assert_eq!(canonical(b"a\nb\r\nc\n"), b"a\r\nb\r\nc\r\n");
    }

    #[test]
    fn truncated_base64_is_recovered_as_far_as_it_goes() {
        assert_eq!(
            lenient_base64(b"QkVH\r\nSU46VkNB\r\nTEVOREFS"),
            b"BEGIN:VCALENDAR"
        );
        assert_eq!(lenient_base64(b"QkVHSU4"), b"BEGIN");
    }
}
