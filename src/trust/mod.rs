//! Trust: the keys and rules that prove who sent an iTIP object (RFC 6047
//! §3, RFC 2447 §3) and sign what imipd sends. What a signature proves is
//! found here ([`smime`], [`pgp`]) and carried with the calendar part it
//! covers ([`Signature`]); [`crate::originator`] ties it to the ORGANIZER
//! or the replying ATTENDEE. [`Trust`] is the validated `[trust]` section
//! with the key material of `[identity]`; [`sign`] wraps outgoing mail in
//! `multipart/signed`.

pub mod pgp;
pub mod sign;
pub mod smime;

use std::sync::Arc;

use serde::Serialize;

/// How a calendar part was signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SigMethod {
    /// S/MIME (RFC 8551).
    Smime,
    /// PGP/MIME (RFC 3156).
    Pgp,
}

impl SigMethod {
    pub fn name(self) -> &'static str {
        match self {
            SigMethod::Smime => "S/MIME",
            SigMethod::Pgp => "PGP",
        }
    }
}

/// The addresses a verified signer proves, or why a signature proves nothing.
pub type Signers = Result<Vec<String>, String>;

/// A signature around a calendar part: the addresses its verified signer
/// proves, or why it proves nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub method: SigMethod,
    pub signers: Signers,
}

impl Signature {
    /// Whether the verified signer is this address (bare, lower-case).
    pub fn proves(&self, bare: &str) -> bool {
        self.signers
            .as_ref()
            .is_ok_and(|s| s.iter().any(|a| a == bare))
    }

    /// Why this signature proves nothing for `bare`.
    pub fn why_not(&self, bare: &str) -> String {
        match &self.signers {
            Ok(s) => format!(
                "the {} signature is by {}, not by {bare}",
                self.method.name(),
                s.join(", ")
            ),
            Err(e) => e.clone(),
        }
    }
}

/// `[trust] require`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Require {
    /// Everything is proven where it can be, and acted on as before.
    #[default]
    None,
    /// Changes to stored events and every automatic answer need a proven
    /// originator.
    Authenticated,
}

/// `[outgoing] sign`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sign {
    #[default]
    None,
    Smime,
    Pgp,
}

/// A `[[trust.relay]]`: a platform that sends invitations from a system
/// address for the organizers it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// The relay's From address, bare.
    pub from: String,
    /// Globs of the organizers it may speak for.
    pub organizers: Vec<String>,
}

/// The key material: CAs, public keys, my own keys.
#[derive(Debug, Default)]
pub struct Keys {
    pub smime_anchors: smime::Anchors,
    pub pgp_public: pgp::PublicKeys,
    pub smime_me: Option<smime::Identity>,
    pub pgp_me: Option<pgp::SecretKey>,
}

/// The validated `[trust]` section with the keys of `[identity]` and the
/// `[outgoing] sign` choice.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    pub require: Require,
    /// Lower-cased; `[trust]` and `[authentication]` together.
    pub authserv_ids: Vec<String>,
    pub relays: Vec<Relay>,
    pub keys: Arc<Keys>,
    pub sign: Sign,
}

/// One line for `imipd check`: what is trusted and which keys are loaded.
pub fn summary(t: &Trust) -> String {
    let mut parts = vec![format!(
        "require = {}",
        match t.require {
            Require::None => "none",
            Require::Authenticated => "authenticated",
        }
    )];
    if !t.authserv_ids.is_empty() {
        parts.push(format!("authserv-ids {}", t.authserv_ids.join(", ")));
    }
    if !t.keys.smime_anchors.is_empty() {
        parts.push(format!("{:?}", t.keys.smime_anchors));
    }
    if !t.keys.pgp_public.is_empty() {
        parts.push(format!("{:?}", t.keys.pgp_public));
    }
    if let Some(me) = &t.keys.smime_me {
        parts.push(format!(
            "my S/MIME certificate for {}",
            me.addresses().join(", ")
        ));
    }
    if let Some(me) = &t.keys.pgp_me {
        parts.push(format!("my PGP key for {}", me.addresses().join(", ")));
    }
    for r in &t.relays {
        parts.push(format!("relay {} for {}", r.from, r.organizers.join(", ")));
    }
    parts.push(format!(
        "replies signed: {}",
        match t.sign {
            Sign::None => "no",
            Sign::Smime => "S/MIME",
            Sign::Pgp => "PGP",
        }
    ));
    parts.join("; ")
}

impl Trust {
    /// Whether some key can open encrypted mail.
    pub fn can_decrypt(&self) -> bool {
        self.keys.smime_me.is_some() || self.keys.pgp_me.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_proves_only_its_signers() {
        let s = Signature {
            method: SigMethod::Smime,
            signers: Ok(vec!["alice@example.com".into()]),
        };
        assert!(s.proves("alice@example.com"));
        assert!(!s.proves("mallory@example.com"));
        assert_eq!(
            s.why_not("bob@example.com"),
            "the S/MIME signature is by alice@example.com, not by bob@example.com"
        );
        let bad = Signature {
            method: SigMethod::Pgp,
            signers: Err("the PGP signature does not verify".into()),
        };
        assert!(!bad.proves("alice@example.com"));
        assert_eq!(bad.why_not("x"), "the PGP signature does not verify");
    }

    #[test]
    fn garbage_signatures_prove_nothing_and_say_why() {
        let none = smime::Anchors::default();
        let e = smime::verify_detached(b"data", b"\x30\x03\x02\x01\x01", &none).unwrap_err();
        assert!(e.starts_with("cannot read the S/MIME signature"), "{e}");
        let e = smime::verify_detached(b"data", &smime::der_of(b"not base64 at all"), &none)
            .unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        let e = pgp::verify_detached(
            b"data",
            b"-----BEGIN PGP SIGNATURE-----\n\nxx\n-----END PGP SIGNATURE-----\n",
            &pgp::PublicKeys::default(),
        )
        .unwrap_err();
        assert!(e.contains("cannot read the PGP signature"), "{e}");
        let e = smime::decrypt(b"\x30\x00", None).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn der_is_read_from_base64_or_as_is() {
        assert_eq!(
            smime::der_of(b"MAMCAQE=\r\n"),
            vec![0x30, 0x03, 0x02, 0x01, 0x01]
        );
        assert_eq!(smime::der_of(&[0x30, 0x00]), vec![0x30, 0x00]);
    }

    #[test]
    fn signing_wraps_the_whole_body_and_needs_a_key() {
        let mail = "From: bob@example.com\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed;\r\n boundary=\"b\"\r\n\r\n--b\r\n\r\nhi\r\n--b--\r\n";
        assert_eq!(
            sign::sign_mail(mail, Sign::None, &Keys::default()).unwrap(),
            mail
        );
        let e = sign::sign_mail(mail, Sign::Smime, &Keys::default()).unwrap_err();
        assert!(e.contains("smime_certificate"), "{e}");
        let e = sign::sign_mail(mail, Sign::Pgp, &Keys::default()).unwrap_err();
        assert!(e.contains("pgp_secret_key"), "{e}");
    }
}
