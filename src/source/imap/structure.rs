//! The BODYSTRUCTURE walk, pure: which parts of a message hold calendar
//! data ([`CalPart`]: `text/calendar`, `application/ics`) and which signed
//! or encrypted entities must be fetched whole ([`SecPart`]), with their
//! IMAP section numbers, walked with a stack of its own no deeper than
//! `limits.max_depth` ([`structure_of`] gives a [`Structure`]); and the
//! message imipd's classifier reads, built from the fetched header fields
//! and those parts alone ([`synthetic_message`]).

use async_imap::imap_proto::{BodyStructure, ContentEncoding};

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
    pub(super) fn section(&self) -> String {
        section(&self.path)
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
    pub(super) fn section(&self) -> String {
        section(&self.path)
    }

    /// The MIME header of the whole message's body, rebuilt from the
    /// BODYSTRUCTURE (the message header fields fetched leave it out).
    pub(super) fn header(&self) -> String {
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

/// An IMAP section number: the part number path joined with dots.
fn section(path: &[u32]) -> String {
    path.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(".")
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

/// Whether a BODYSTRUCTURE holds a calendar part, the size of its leaves,
/// and whether parts are nested deeper than `max_depth`; walked with a
/// stack (no recursion) no deeper than that.
fn calendar_inside(bs: &BodyStructure<'_>, max_depth: usize) -> (bool, u64, bool) {
    let mut stack = vec![(bs, 0usize)];
    let (mut found, mut size, mut too_deep) = (false, 0u64, false);
    while let Some((b, depth)) = stack.pop() {
        if depth > max_depth {
            too_deep = true;
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
    (found, size, too_deep)
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
                let (calendar, size, too_deep) =
                    calendar_inside(n.bs, max_depth.saturating_sub(n.depth));
                // Reported like parts too deep anywhere else (the MIME walker
                // of `process` walks into a signed entity and says so too).
                s.too_deep |= too_deep;
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
                // a non-multipart body of it is part 1. A message/rfc822
                // that is the whole message's body is part 1 itself, so its
                // parts are 1.1, 1.2, … (RFC 3501 §6.4.5; Dovecot does so).
                let mut path = if n.top { vec![1] } else { n.path.clone() };
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
                        params: params_of(common),
                        encoding: encoding_name(&other.transfer_encoding),
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

#[cfg(test)]
mod tests {
    use super::*;

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

    // The BODYSTRUCTUREs below are what Dovecot 2.3 answered to `UID FETCH
    // n (BODYSTRUCTURE)` for the messages they describe (only the large
    // attachment's size was raised to 20 MB), parsed by imap-proto as
    // async-imap parses them.

    /// The BODYSTRUCTURE of a FETCH response, as async-imap hands it over.
    fn parsed(bodystructure: &str) -> BodyStructure<'static> {
        use async_imap::imap_proto::{AttributeValue, Response};
        let line = format!("* 1 FETCH (UID 1 BODYSTRUCTURE {bodystructure})\r\n");
        let (rest, r) = async_imap::imap_proto::parser::parse_response(line.as_bytes())
            .unwrap_or_else(|e| panic!("not a FETCH response: {e:?}"));
        assert!(rest.is_empty());
        let Response::Fetch(_, attributes) = r else {
            panic!("not a FETCH response: {r:?}");
        };
        attributes
            .into_iter()
            .find_map(|a| match a {
                AttributeValue::BodyStructure(b) => Some(b.into_owned()),
                _ => None,
            })
            .expect("a BODYSTRUCTURE")
    }

    fn sections(s: &Structure) -> Vec<String> {
        s.parts.iter().map(CalPart::section).collect()
    }

    fn params(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const MAX_DEPTH: usize = 24;

    const PLAIN: &str =
        r#"("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 7 1 NIL NIL NIL NIL)"#;

    /// text/plain, text/html and a base64 text/calendar (Outlook's shape).
    const ALTERNATIVE: &str = r#"(("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 2 0 NIL NIL NIL NIL)("text" "html" ("charset" "utf-8") NIL NIL "7bit" 9 0 NIL NIL NIL NIL)("text" "calendar" ("charset" "UTF-8" "method" "REQUEST") NIL NIL "base64" 44 0 NIL NIL NIL NIL) "alternative" ("boundary" "a") NIL NIL NIL)"#;

    /// A text, an application/ics attachment and an
    /// application/octet-stream one named invite.ics.
    const ATTACHMENTS: &str = r#"(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0 NIL NIL NIL NIL)("application" "ics" ("name" "invite.ics") NIL NIL "base64" 44 NIL ("attachment" ("filename" "invite.ics")) NIL NIL)("application" "octet-stream" ("name" "invite.ics") NIL NIL "base64" 44 NIL ("attachment" ("filename" "invite.ics")) NIL NIL) "mixed" ("boundary" "m") NIL NIL NIL)"#;

    /// "FYI" and a forwarded message/rfc822 whose body is a
    /// multipart/alternative of a text and a calendar.
    const FORWARDED: &str = r#"(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0 NIL NIL NIL NIL)("message" "rfc822" NIL NIL NIL "7bit" 262 (NIL "inner" ((NIL NIL "x" "y.z")) ((NIL NIL "x" "y.z")) ((NIL NIL "x" "y.z")) NIL NIL NIL NIL NIL) (("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 0 NIL NIL NIL NIL)("text" "calendar" ("method" "REQUEST" "charset" "utf-8") NIL NIL "7bit" 46 2 NIL NIL NIL NIL) "alternative" ("boundary" "g") NIL NIL NIL) 16 NIL NIL NIL NIL) "mixed" ("boundary" "f") NIL NIL NIL)"#;

    /// A text and a forwarded message/rfc822 whose body is a calendar.
    const FORWARDED_SINGLE: &str = r#"(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0 NIL NIL NIL NIL)("message" "rfc822" NIL NIL NIL "7bit" 141 (NIL "inner" ((NIL NIL "x" "y.z")) ((NIL NIL "x" "y.z")) ((NIL NIL "x" "y.z")) NIL NIL NIL NIL NIL) ("text" "calendar" ("method" "REQUEST" "charset" "us-ascii") NIL NIL "7bit" 46 2 NIL NIL NIL NIL) 7 NIL NIL NIL NIL) "mixed" ("boundary" "o") NIL NIL NIL)"#;

    /// A whole message of type message/rfc822 ("forward as attachment"
    /// with nothing beside it) whose body is a calendar.
    const WHOLE_FORWARD_SINGLE: &str = r#"("message" "rfc822" NIL NIL NIL "7bit" 143 (NIL "inner" ((NIL NIL "x" "y.z")) ((NIL NIL "x" "y.z")) ((NIL NIL "x" "y.z")) NIL NIL NIL NIL NIL) ("text" "calendar" ("method" "REQUEST" "charset" "us-ascii") NIL NIL "7bit" 48 3 NIL NIL NIL NIL) 8 NIL NIL NIL NIL)"#;

    /// The same, the body a multipart/mixed of a text and a calendar.
    const WHOLE_FORWARD_MIXED: &str = r#"("message" "rfc822" NIL NIL NIL "7bit" 240 (NIL "inner" ((NIL NIL "x" "y.z")) ((NIL NIL "x" "y.z")) ((NIL NIL "x" "y.z")) NIL NIL NIL NIL NIL) (("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0 NIL NIL NIL NIL)("text" "calendar" ("method" "REQUEST" "charset" "us-ascii") NIL NIL "7bit" 46 2 NIL NIL NIL NIL) "mixed" ("boundary" "b") NIL NIL NIL) 16 NIL NIL NIL NIL)"#;

    /// A calendar and a 20 MB PDF.
    const LARGE: &str = r#"(("text" "calendar" ("method" "REQUEST" "charset" "us-ascii") NIL NIL "7bit" 46 2 NIL NIL NIL NIL)("application" "pdf" ("name" "big.pdf") NIL NIL "base64" 28256258 NIL NIL NIL NIL) "mixed" ("boundary" "l") NIL NIL NIL)"#;

    /// An S/MIME multipart/signed as the whole message, around a
    /// multipart/alternative of a text and a calendar.
    const SIGNED: &str = r#"((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 2 0 NIL NIL NIL NIL)("text" "calendar" ("method" "REQUEST" "charset" "us-ascii") NIL NIL "7bit" 46 2 NIL NIL NIL NIL) "alternative" ("boundary" "a") NIL NIL NIL)("application" "pkcs7-signature" ("name" "smime.p7s") NIL NIL "base64" 4 NIL NIL NIL NIL) "signed" ("protocol" "application/pkcs7-signature" "micalg" "sha-256" "boundary" "s") NIL NIL NIL)"#;

    /// A text and a PGP/MIME multipart/signed around a calendar.
    const SIGNED_PART: &str = r#"(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0 NIL NIL NIL NIL)(("text" "calendar" ("method" "REQUEST" "charset" "us-ascii") NIL NIL "7bit" 46 2 NIL NIL NIL NIL)("application" "pgp-signature" NIL NIL NIL "7bit" 3 NIL NIL NIL NIL) "signed" ("protocol" "application/pgp-signature" "micalg" "pgp-sha256" "boundary" "s") NIL NIL NIL) "mixed" ("boundary" "x") NIL NIL NIL)"#;

    #[test]
    fn a_plain_text_message_has_nothing_to_fetch() {
        let bs = parsed(PLAIN);
        assert_eq!(calendar_parts(&bs, MAX_DEPTH), Structure::default());
        assert_eq!(structure_of(&bs, MAX_DEPTH, true), Structure::default());
    }

    #[test]
    fn a_calendar_that_is_the_whole_message_is_part_1() {
        let bs = parsed(
            r#"("text" "calendar" ("method" "REQUEST" "charset" "UTF-8") NIL NIL "quoted-printable" 812 24 NIL NIL NIL NIL)"#,
        );
        let s = calendar_parts(&bs, MAX_DEPTH);
        assert_eq!(sections(&s), ["1"]);
        assert_eq!(s.parts[0].encoding, "quoted-printable");
        assert_eq!(s.parts[0].size, 812);
    }

    #[test]
    fn the_calendar_of_an_alternative_is_its_part_with_charset_and_encoding() {
        let s = calendar_parts(&parsed(ALTERNATIVE), MAX_DEPTH);
        assert_eq!(
            s,
            Structure {
                parts: vec![CalPart {
                    path: vec![3],
                    content_type: "text/calendar".into(),
                    params: params(&[("charset", "UTF-8"), ("method", "REQUEST")]),
                    encoding: "base64".into(),
                    size: 44,
                    forwarded: false,
                }],
                ..Structure::default()
            },
            "the text and the HTML are not fetched"
        );
        assert_eq!(sections(&s), ["3"]);
        // The classifier sees the part with its charset and encoding.
        let raw = synthetic_message(b"From: a@b.c\r\n", &[(&s.parts[0], b"QkVH".to_vec())]);
        let raw = String::from_utf8(raw).unwrap();
        assert!(
            raw.contains(
                "Content-Type: text/calendar; charset=\"UTF-8\"; method=\"REQUEST\"\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\nQkVH\r\n"
            ),
            "{raw}"
        );
    }

    #[test]
    fn application_ics_is_fetched_and_an_octet_stream_named_ics_is_not() {
        // The MIME walker of `process` reads text/calendar and
        // application/ics only, whatever the name: so does the IMAP source.
        let s = calendar_parts(&parsed(ATTACHMENTS), MAX_DEPTH);
        assert_eq!(sections(&s), ["2"]);
        assert_eq!(s.parts[0].content_type, "application/ics");
        assert_eq!(s.parts[0].params, params(&[("name", "invite.ics")]));
        assert_eq!(s.parts[0].encoding, "base64");
        assert!(s.entities.is_empty() && !s.too_deep);
    }

    #[test]
    fn a_forwarded_message_numbers_its_parts_under_its_own() {
        let s = calendar_parts(&parsed(FORWARDED), MAX_DEPTH);
        assert_eq!(sections(&s), ["2.2"]);
        assert!(s.parts[0].forwarded);
        assert_eq!(
            s.parts[0].params,
            params(&[("method", "REQUEST"), ("charset", "utf-8")])
        );
        // A forwarded message whose body is not a multipart: its part 1.
        let s = calendar_parts(&parsed(FORWARDED_SINGLE), MAX_DEPTH);
        assert_eq!(sections(&s), ["2.1"]);
        assert!(s.parts[0].forwarded);
    }

    #[test]
    fn a_message_that_is_a_forwarded_message_numbers_its_parts_from_1() {
        // RFC 3501 §6.4.5: the body of a message/rfc822 message is its part
        // 1, and the parts of the message inside are 1.1, 1.2, … (Dovecot
        // answers BODY[1.2] with the calendar below, BODY[2] with nothing).
        // These were read as parts 1 and 2: the whole inner message, and
        // nothing.
        let s = calendar_parts(&parsed(WHOLE_FORWARD_SINGLE), MAX_DEPTH);
        assert_eq!(sections(&s), ["1.1"]);
        assert!(s.parts[0].forwarded);
        let s = calendar_parts(&parsed(WHOLE_FORWARD_MIXED), MAX_DEPTH);
        assert_eq!(sections(&s), ["1.2"]);
        assert!(s.parts[0].forwarded);
    }

    #[test]
    fn a_large_attachment_beside_the_calendar_is_never_selected() {
        let s = structure_of(&parsed(LARGE), MAX_DEPTH, true);
        assert_eq!(sections(&s), ["1"]);
        assert_eq!(s.parts[0].size, 46);
        assert!(s.entities.is_empty());
    }

    #[test]
    fn a_signed_calendar_is_selected_as_the_whole_signed_entity() {
        // The whole message: its body (BODY[TEXT]) under a header rebuilt
        // from the BODYSTRUCTURE; the calendar is not fetched on its own.
        let s = calendar_parts(&parsed(SIGNED), MAX_DEPTH);
        assert!(s.parts.is_empty(), "{s:?}");
        assert_eq!(
            s.entities,
            [SecPart {
                path: vec![],
                content_type: "multipart/signed".into(),
                params: params(&[
                    ("protocol", "application/pkcs7-signature"),
                    ("micalg", "sha-256"),
                    ("boundary", "s"),
                ]),
                encoding: String::new(),
                size: 2 + 46 + 4,
                forwarded: false,
            }]
        );
        assert_eq!(
            s.entities[0].header(),
            "Content-Type: multipart/signed;\r\n protocol=\"application/pkcs7-signature\";\r\n \
             micalg=\"sha-256\";\r\n boundary=\"s\"\r\n\r\n"
        );
        // A part: BODY[2.MIME] and BODY[2].
        let s = calendar_parts(&parsed(SIGNED_PART), MAX_DEPTH);
        assert!(s.parts.is_empty(), "{s:?}");
        assert_eq!(s.entities.len(), 1);
        assert_eq!(s.entities[0].section(), "2");
        assert_eq!(s.entities[0].size, 46 + 3);
        assert_eq!(s.entities[0].params[0].1, "application/pgp-signature");
        // A signed entity without a calendar inside is not fetched.
        let unsigned_text = SIGNED_PART.replace(r#""text" "calendar""#, r#""text" "plain""#);
        assert_eq!(
            calendar_parts(&parsed(&unsigned_text), MAX_DEPTH),
            Structure::default()
        );
    }

    #[test]
    fn smime_entities_are_fetched_whole_and_enveloped_data_only_with_a_key() {
        let p7m = |kind: &str| {
            format!(
                r#"("application" "pkcs7-mime" ("smime-type" "{kind}" "name" "smime.p7m") NIL NIL "base64" 4000 NIL ("attachment" ("filename" "smime.p7m")) NIL NIL)"#
            )
        };
        let signed = structure_of(&parsed(&p7m("signed-data")), MAX_DEPTH, false);
        assert_eq!(signed.entities.len(), 1);
        assert_eq!(signed.entities[0].path, Vec::<u32>::new());
        assert_eq!(signed.entities[0].encoding, "base64");
        assert_eq!(signed.entities[0].size, 4000);
        let enveloped = parsed(&p7m("enveloped-data"));
        assert_eq!(
            structure_of(&enveloped, MAX_DEPTH, false),
            Structure::default()
        );
        assert_eq!(structure_of(&enveloped, MAX_DEPTH, true).entities.len(), 1);
        let certs = parsed(&p7m("certs-only"));
        assert_eq!(structure_of(&certs, MAX_DEPTH, true), Structure::default());
    }

    #[test]
    fn parts_deeper_than_max_depth_stop_the_walk_and_are_reported() {
        // A calendar at depth 1 (part 1) and one at depth 3 (part 2.1.1).
        let bs = parsed(
            r#"(("text" "calendar" ("method" "REQUEST") NIL NIL "7bit" 46 2 NIL NIL NIL NIL)((("text" "calendar" ("method" "CANCEL") NIL NIL "7bit" 46 2 NIL NIL NIL NIL) "mixed" ("boundary" "c") NIL NIL NIL) "mixed" ("boundary" "b") NIL NIL NIL) "mixed" ("boundary" "o") NIL NIL NIL)"#,
        );
        let s = calendar_parts(&bs, 3);
        assert_eq!(sections(&s), ["1", "2.1.1"]);
        assert!(!s.too_deep);
        // One level less: the walk stops above the deep one and says so
        // (the pass then reports the message and fetches none of it).
        let s = calendar_parts(&bs, 2);
        assert_eq!(sections(&s), ["1"]);
        assert!(s.too_deep);
    }

    #[test]
    fn parts_too_deep_inside_a_signed_entity_are_reported_too() {
        // The calendar of SIGNED is at depth 2 (signed, alternative,
        // calendar). This was dropped without a word: nothing fetched,
        // nothing reported, where the MIME walker of `process` says the
        // parts are nested too deep.
        let s = calendar_parts(&parsed(SIGNED), 1);
        assert!(s.entities.is_empty() && s.parts.is_empty(), "{s:?}");
        assert!(s.too_deep);
        assert_eq!(calendar_parts(&parsed(SIGNED), 2).entities.len(), 1);
    }
}
