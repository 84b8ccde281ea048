//! Signing outgoing mail: the whole MIME body of a message becomes the
//! first part of a `multipart/signed` (RFC 1847), with an S/MIME
//! (`application/pkcs7-signature`, RFC 8551 §3.5.3) or PGP
//! (`application/pgp-signature`, RFC 3156 §5) signature over its exact
//! bytes as the second. The mail's own header fields stay outside; its
//! `Content-*` fields move into the signed entity.

use base64::Engine as _;
use chrono::{DateTime, Utc};

use super::{Keys, Sign};

/// Sign a whole RFC 5322 message (CRLF line ends, as lettre writes it).
/// The signature carries the real time (not `IMIPD_NOW`): a verifier
/// compares it with the key's creation and expiry.
pub fn sign_mail(message: &str, how: Sign, keys: &Keys) -> Result<String, String> {
    let now: DateTime<Utc> = Utc::now();
    let (head, body) = message
        .split_once("\r\n\r\n")
        .ok_or("cannot sign the mail: it has no body")?;
    let mut outer = Vec::new();
    let mut inner = Vec::new();
    for field in fields(head) {
        let name = field
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if name.starts_with("content-") {
            inner.push(field);
        } else if name != "mime-version" {
            outer.push(field);
        }
    }
    if inner.is_empty() {
        inner.push("Content-Type: text/plain; charset=us-ascii".to_string());
    }
    // The signed entity, canonical: CRLF line ends, no trailing CRLF (the
    // one before the boundary belongs to the boundary).
    let mut entity = inner.join("\r\n");
    entity.push_str("\r\n\r\n");
    entity.push_str(body.strip_suffix("\r\n").unwrap_or(body));
    let boundary = format!(
        "imipd-signed-{}",
        &hex(&ring::digest::digest(&ring::digest::SHA256, entity.as_bytes()).as_ref()[..12])
    );
    let (ctype, sig_part) = match how {
        Sign::Smime => {
            let me = keys.smime_me.as_ref().ok_or(
                "cannot sign the mail: [identity] smime_certificate and smime_key are not set",
            )?;
            let der = super::smime::sign_detached(entity.as_bytes(), me, now)?;
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(76)
                .map(|c| std::str::from_utf8(c).unwrap_or_default())
                .collect();
            (
                format!("multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256;\r\n boundary=\"{boundary}\""),
                format!(
                    "Content-Type: application/pkcs7-signature; name=\"smime.p7s\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"smime.p7s\"\r\nContent-Description: S/MIME Cryptographic Signature\r\n\r\n{}\r\n",
                    lines.join("\r\n")
                ),
            )
        }
        Sign::Pgp => {
            let me = keys
                .pgp_me
                .as_ref()
                .ok_or("cannot sign the mail: [identity] pgp_secret_key is not set")?;
            let armored = me.sign_detached(entity.as_bytes(), now)?;
            let armored = armored.replace("\r\n", "\n").replace('\n', "\r\n");
            (
                format!("multipart/signed; protocol=\"application/pgp-signature\"; micalg=pgp-sha256;\r\n boundary=\"{boundary}\""),
                format!(
                    "Content-Type: application/pgp-signature; name=\"signature.asc\"\r\nContent-Description: OpenPGP digital signature\r\nContent-Disposition: attachment; filename=\"signature.asc\"\r\n\r\n{}\r\n",
                    armored.trim_end()
                ),
            )
        }
        Sign::None => return Ok(message.to_string()),
    };
    let mut out = outer.join("\r\n");
    out.push_str(&format!(
        "\r\nMIME-Version: 1.0\r\nContent-Type: {ctype}\r\n\r\nThis is a cryptographically signed message in MIME format.\r\n\r\n--{boundary}\r\n{entity}\r\n--{boundary}\r\n{sig_part}--{boundary}--\r\n"
    ));
    Ok(out)
}

/// The header fields of a header block, each with its folded lines.
fn fields(head: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.push_str("\r\n");
                last.push_str(line);
                continue;
            }
        }
        out.push(line.to_string());
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_fields_stay_whole() {
        let f = fields(
            "From: a@b.c\r\nContent-Type: multipart/mixed;\r\n boundary=\"x\"\r\nSubject: s",
        );
        assert_eq!(
            f,
            vec![
                "From: a@b.c".to_string(),
                "Content-Type: multipart/mixed;\r\n boundary=\"x\"".to_string(),
                "Subject: s".to_string()
            ]
        );
    }
}
