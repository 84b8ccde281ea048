//! Who is speaking, and how sure imipd is of it: the one place that ties an
//! iTIP object to the calendar user it speaks for (RFC 6047 §3, RFC 5546
//! §6.1). The calendar data says who is speaking — the ORGANIZER for
//! PUBLISH, REQUEST, ADD, CANCEL and DECLINECOUNTER, the replying ATTENDEE
//! for REPLY, COUNTER and REFRESH — and the mail says who sent it: its From
//! mailbox, its Sender, or a SENT-BY the calendar data names — or a
//! signature around the calendar part names the calendar user himself, or a
//! trusted relay speaks for him. How strongly that is proven is a [`Proof`]:
//! an S/MIME or PGP signature by that calendar user (`smime`, `pgp`), the
//! receiving server's DKIM/DMARC verdict for the single From mailbox
//! (`dkim`, `dmarc`), a DKIM/DMARC-verified `[[trust.relay]]` that may speak
//! for that organizer (`relay`), or the header alone (`from`).
//!
//! The sender check of `classify`, the engine's authorization and the
//! policies' `authenticated` matcher all read this one value, so what is
//! checked is what is acted on.

use serde::Serialize;

use calcard::icalendar::ICalendarProperty as P;

use crate::address;
use crate::ical::{self, Node};
use crate::itip::{Method, Sender};
use crate::mime::Mail;
use crate::trust::{Relay, SigMethod, Signature};

/// How strongly the originator is proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proof {
    /// Only the mail header says so: anyone can write it.
    From,
    /// A trusted receiving server verified a DKIM signature of the From domain.
    Dkim,
    /// A trusted receiving server says DMARC passed for the From domain.
    Dmarc,
    /// An S/MIME signature by the calendar user, with a certificate that
    /// chains to a trusted CA and names the address.
    Smime,
    /// A PGP signature by a configured public key whose user ID names the
    /// calendar user.
    Pgp,
    /// A `[[trust.relay]]` that may speak for this organizer sent it, and
    /// the receiving server verified the relay's own mail (DKIM/DMARC).
    Relay,
}

impl Proof {
    /// Whether this is more than a header anyone can write.
    pub fn is_proven(self) -> bool {
        !matches!(self, Proof::From)
    }

    /// Whether the calendar data itself is signed by the calendar user.
    pub fn is_signed(self) -> bool {
        matches!(self, Proof::Smime | Proof::Pgp)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Proof::From => "the From header only",
            Proof::Dkim => "a DKIM signature verified by the receiving server",
            Proof::Dmarc => "DMARC verified by the receiving server",
            Proof::Smime => "an S/MIME signature",
            Proof::Pgp => "a PGP signature",
            Proof::Relay => "a trusted relay verified by the receiving server",
        }
    }

    /// The name used in JSON and in imipd's own files.
    pub fn name(self) -> &'static str {
        match self {
            Proof::From => "from",
            Proof::Dkim => "dkim",
            Proof::Dmarc => "dmarc",
            Proof::Smime => "smime",
            Proof::Pgp => "pgp",
            Proof::Relay => "relay",
        }
    }

    pub fn parse(s: &str) -> Option<Proof> {
        [
            Proof::From,
            Proof::Dkim,
            Proof::Dmarc,
            Proof::Smime,
            Proof::Pgp,
            Proof::Relay,
        ]
        .into_iter()
        .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
    }

    fn of_signature(m: SigMethod) -> Proof {
        match m {
            SigMethod::Smime => Proof::Smime,
            SigMethod::Pgp => Proof::Pgp,
        }
    }
}

/// Which mail address tied the sender to the calendar user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// The From mailbox is the calendar user.
    From,
    /// The Sender header is the calendar user.
    Sender,
    /// The From or Sender mailbox is the SENT-BY the calendar data names.
    SentBy,
    /// A signature around the calendar part names the calendar user.
    Signature,
    /// A trusted relay (`[[trust.relay]]`) sent it for the organizer.
    Relay,
}

/// The calendar user an iTIP component speaks for, as far as the mail shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Originator {
    /// The calendar address the calendar data names (`mailto:` lower-case).
    pub address: String,
    /// The mail address that matched it.
    pub mail: String,
    pub via: Via,
    /// The SENT-BY address, when `via` is `SentBy` (`mailto:` lower-case).
    pub sent_by: Option<String>,
    pub proof: Proof,
    /// Why a stronger proof failed (a signature that does not verify or is
    /// by someone else, a relay whose mail is not verified), when the proof
    /// is only the header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unproven: Option<String>,
}

impl Originator {
    /// "alice@example.com (the From header only)".
    pub fn describe(&self) -> String {
        let who = self.address.trim_start_matches("mailto:");
        match self.via {
            Via::SentBy => format!("{who}, sent by {} ({})", self.mail, self.proof.describe()),
            _ => format!("{who} ({})", self.proof.describe()),
        }
    }

    /// How the originator is authenticated, for the outcome line: "S/MIME
    /// signature of alice@example.com"; `None` when it is not.
    pub fn authenticated_by(&self) -> Option<String> {
        let who = self.address.trim_start_matches("mailto:");
        let by = match self.proof {
            Proof::From => return None,
            Proof::Smime => format!("S/MIME signature of {}", self.mail),
            Proof::Pgp => format!("PGP signature of {}", self.mail),
            Proof::Dkim => format!(
                "DKIM signature for {} (verified by the receiving server)",
                self.mail
            ),
            Proof::Dmarc => format!("DMARC for {} (verified by the receiving server)", self.mail),
            Proof::Relay => format!(
                "the trusted relay {} for {who} (its mail verified by the receiving server)",
                self.mail
            ),
        };
        Some(match self.via {
            Via::SentBy => format!("{by}, sending for {who}"),
            _ => by,
        })
    }
}

/// What the mail itself says about its sender, read once per message.
#[derive(Debug, Clone, Default)]
pub struct MailIdentity {
    /// Every From mailbox.
    pub from: Vec<String>,
    /// The From mailbox when there is exactly one From field with one mailbox.
    pub single_from: Option<String>,
    pub sender: Option<String>,
    /// DKIM/DMARC for `single_from`, from a trusted receiving server.
    pub verified: Option<Proof>,
    /// The `[[trust.relay]]` the single From mailbox is, and whether its
    /// mail is verified (only then does it speak for anyone).
    pub relay: Option<(Relay, bool)>,
}

impl MailIdentity {
    pub fn of(mail: &Mail, trusted_authserv_ids: &[String], relays: &[Relay]) -> MailIdentity {
        let single_from = (mail.from_fields <= 1 && mail.from_all.len() <= 1)
            .then(|| mail.from.clone())
            .flatten();
        let verified = single_from.as_deref().and_then(|f| {
            verified_by_receiver(&mail.authentication_results, trusted_authserv_ids, f)
        });
        let mut from = mail.from_all.clone();
        if from.is_empty() {
            from.extend(mail.from.clone());
        }
        let relay = single_from
            .as_deref()
            .and_then(|f| relays.iter().find(|r| r.from == f))
            .map(|r| (r.clone(), verified.is_some()));
        MailIdentity {
            from,
            single_from,
            sender: mail.sender.clone(),
            verified,
            relay,
        }
    }

    fn matches(&self, bare: &str) -> Option<Via> {
        if self.from.iter().any(|f| f == bare) {
            Some(Via::From)
        } else if self.sender.as_deref() == Some(bare) {
            Some(Via::Sender)
        } else {
            None
        }
    }

    fn proof_for(&self, bare: &str, via: Via) -> Proof {
        match (via, self.single_from.as_deref(), self.verified) {
            (Via::From, Some(f), Some(p)) if f == bare => p,
            _ => Proof::From,
        }
    }
}

/// The calendar user a component speaks for, when a signature around its
/// calendar part names that user, or the mail's sender is that user (or the
/// SENT-BY the component names for it, or a trusted relay for the
/// organizer); otherwise why not.
pub fn originator(
    method: Method,
    c: &Node,
    id: &MailIdentity,
    signed: Option<&Signature>,
) -> Result<Originator, String> {
    let found = find(method, c, id, signed);
    let Some(sig) = signed else {
        return found;
    };
    match found {
        Ok(mut o) if !o.proof.is_proven() => {
            o.unproven = Some(sig.why_not(&o.mail));
            Ok(o)
        }
        Err(e) => Err(format!("{e}; {}", sig.why_not("the calendar user"))),
        ok => ok,
    }
}

fn find(
    method: Method,
    c: &Node,
    id: &MailIdentity,
    signed: Option<&Signature>,
) -> Result<Originator, String> {
    let who = method.entitled_sender();
    let role = match who {
        Sender::Organizer => "its organizer",
        Sender::Attendee => "the attendee who answers",
    };
    if id.from.is_empty() && id.sender.is_none() && signed.is_none() {
        return Err(format!(
            "the mail has no From address, so the sender of this {method} cannot be checked"
        ));
    }
    let entries: Vec<_> = match who {
        Sender::Organizer => {
            let orgs: Vec<_> = c
                .entries
                .iter()
                .filter(|e| e.name == P::Organizer)
                .collect();
            if orgs.len() > 1 {
                return Err(format!(
                    "a component of this {method} names {} ORGANIZERs; RFC 5545 allows one",
                    orgs.len()
                ));
            }
            orgs
        }
        Sender::Attendee => c.entries.iter().filter(|e| e.name == P::Attendee).collect(),
    };
    // A signature by the calendar user himself proves most.
    if let Some(sig) = signed {
        for e in &entries {
            let Some(addr) = ical::cal_address(e) else {
                continue;
            };
            let bare = address::bare(&addr);
            if sig.proves(&bare) {
                return Ok(Originator {
                    address: addr,
                    mail: bare,
                    via: Via::Signature,
                    sent_by: None,
                    proof: Proof::of_signature(sig.method),
                    unproven: None,
                });
            }
        }
    }
    // The calendar user himself first, then someone acting for him.
    let mut relay_note = None;
    for e in &entries {
        let Some(addr) = ical::cal_address(e) else {
            continue;
        };
        let bare = address::bare(&addr);
        if let Some(via) = id.matches(&bare) {
            return Ok(Originator {
                address: addr,
                mail: bare.clone(),
                proof: id.proof_for(&bare, via),
                via,
                sent_by: None,
                unproven: None,
            });
        }
    }
    // A platform that relays invitations for the organizers it names.
    if let (Sender::Organizer, Some((relay, verified))) = (who, &id.relay) {
        for e in &entries {
            let Some(addr) = ical::cal_address(e) else {
                continue;
            };
            let bare = address::bare(&addr);
            if !relay
                .organizers
                .iter()
                .any(|g| address::glob_matches(g, &bare))
            {
                relay_note = Some(format!(
                    "the trusted relay {} may not speak for {bare} ([[trust.relay]] organizers)",
                    relay.from
                ));
                continue;
            }
            if !verified {
                relay_note = Some(format!(
                    "mail from the trusted relay {} counts only when a trusted receiving server verified it (DKIM/DMARC pass in Authentication-Results), and this one is not",
                    relay.from
                ));
                continue;
            }
            return Ok(Originator {
                address: addr,
                mail: relay.from.clone(),
                via: Via::Relay,
                sent_by: None,
                proof: Proof::Relay,
                unproven: None,
            });
        }
    }
    for e in &entries {
        let (Some(addr), Some(sent_by)) = (ical::cal_address(e), ical::sent_by(e)) else {
            continue;
        };
        let bare = address::bare(&sent_by);
        let signed_by_sent_by = signed.filter(|s| s.proves(&bare));
        if id.matches(&bare).is_some() || signed_by_sent_by.is_some() {
            return Ok(Originator {
                address: addr,
                mail: bare,
                via: Via::SentBy,
                sent_by: Some(sent_by),
                proof: signed_by_sent_by
                    .map(|s| Proof::of_signature(s.method))
                    .unwrap_or(Proof::From),
                unproven: None,
            });
        }
    }
    if id.from.is_empty() && id.sender.is_none() {
        return Err(format!(
            "the mail has no From address, so the sender of this {method} cannot be checked"
        ));
    }
    let names: Vec<String> = entries
        .iter()
        .filter_map(|e| ical::cal_address(e))
        .map(|a| address::bare(&a))
        .collect();
    if names.is_empty() {
        return Err(format!(
            "this {method} names no {}, so nobody can be entitled to send it",
            match who {
                Sender::Organizer => "ORGANIZER",
                Sender::Attendee => "ATTENDEE",
            }
        ));
    }
    let base = format!(
        "the sender {} is not entitled to send this {method}: only {role} ({}) may",
        id.from.first().map(String::as_str).unwrap_or("(none)"),
        names.join(", ")
    );
    Err(match relay_note {
        Some(n) => format!("{base}; {n}"),
        None => base,
    })
}

/// Whether the receiving server says the single From mailbox is authentic:
/// the topmost `Authentication-Results` header from a trusted authserv-id
/// (a sender can forge headers below it) with `dmarc=pass` for the From
/// domain (`header.from` equal to it), or `dkim=pass` with a signing domain
/// (`header.d`, or the domain of `header.i`) equal to the From domain or a
/// parent of it.
pub fn verified_by_receiver(headers: &[String], trusted: &[String], from: &str) -> Option<Proof> {
    let from_domain = address::domain(from)?;
    let header = headers.iter().find(|h| {
        let id = h
            .split(';')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("");
        trusted.iter().any(|t| t.eq_ignore_ascii_case(id))
    })?;
    let aligned = |d: &str| {
        let d = d
            .trim_matches(['"', '\''])
            .trim_start_matches('@')
            .to_ascii_lowercase();
        let d = d.rsplit('@').next().unwrap_or(&d).to_string();
        !d.is_empty() && (from_domain == d || from_domain.ends_with(&format!(".{d}")))
    };
    let mut dkim = false;
    for clause in header.split(';').skip(1) {
        let mut words = clause.split_whitespace();
        let Some((method, value)) = words.next().and_then(|r| r.split_once('=')) else {
            continue;
        };
        if !value.eq_ignore_ascii_case("pass") {
            continue;
        }
        let props: Vec<(&str, &str)> = words.filter_map(|w| w.split_once('=')).collect();
        if method.eq_ignore_ascii_case("dmarc") {
            let hf = props
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("header.from"))
                .map(|(_, v)| v.trim_matches(['"', '\'']).to_ascii_lowercase());
            if hf.as_deref() == Some(from_domain.as_str()) {
                return Some(Proof::Dmarc);
            }
        } else if method.eq_ignore_ascii_case("dkim")
            && props.iter().any(|(k, v)| {
                (k.eq_ignore_ascii_case("header.d") || k.eq_ignore_ascii_case("header.i"))
                    && aligned(v)
            })
        {
            dkim = true;
        }
    }
    dkim.then_some(Proof::Dkim)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(lines: &str) -> Node {
        let text = format!(
            "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:u\r\n{lines}END:VEVENT\r\nEND:VCALENDAR\r\n"
        );
        let calcard::Entry::ICalendar(i) = calcard::Parser::new(&text).entry() else {
            panic!()
        };
        Node::from_ical(&i).children.remove(0)
    }

    fn id(from: &[&str], sender: Option<&str>) -> MailIdentity {
        MailIdentity {
            from: from.iter().map(|s| s.to_string()).collect(),
            single_from: (from.len() == 1).then(|| from[0].to_string()),
            sender: sender.map(str::to_string),
            verified: None,
            relay: None,
        }
    }

    #[test]
    fn the_organizer_in_from_speaks() {
        let c = node("ORGANIZER:mailto:Alice@example.com\r\n");
        let o = originator(Method::Request, &c, &id(&["alice@example.com"], None), None).unwrap();
        assert_eq!(
            (o.address.as_str(), o.via),
            ("mailto:alice@example.com", Via::From)
        );
        assert!(originator(
            Method::Request,
            &c,
            &id(&["mallory@evil.example"], None),
            None
        )
        .is_err());
    }

    #[test]
    fn two_organizers_are_nobody() {
        let c =
            node("ORGANIZER:mailto:alice@example.com\r\nORGANIZER:mailto:mallory@evil.example\r\n");
        let e = originator(
            Method::Cancel,
            &c,
            &id(&["mallory@evil.example"], None),
            None,
        )
        .unwrap_err();
        assert!(e.contains("2 ORGANIZERs"), "{e}");
    }

    #[test]
    fn the_replying_attendee_is_the_sender_not_the_first_attendee() {
        let c = node(
            "ORGANIZER:mailto:bob@example.com\r\nATTENDEE;PARTSTAT=DECLINED:mailto:c@example.com\r\n\
             ATTENDEE;PARTSTAT=ACCEPTED:mailto:e@example.com\r\n",
        );
        let o = originator(Method::Reply, &c, &id(&["e@example.com"], None), None).unwrap();
        assert_eq!(o.address, "mailto:e@example.com");
    }

    #[test]
    fn sent_by_and_sender_are_never_proof() {
        let c =
            node("ORGANIZER;SENT-BY=\"mailto:assistant@example.com\":mailto:boss@example.com\r\n");
        let mut i = id(&["assistant@example.com"], None);
        i.verified = Some(Proof::Dkim);
        let o = originator(Method::Request, &c, &i, None).unwrap();
        assert_eq!(o.via, Via::SentBy);
        assert_eq!(o.proof, Proof::From);
        let c = node("ORGANIZER:mailto:alice@example.com\r\n");
        let mut i = id(&["noreply@example.com"], Some("alice@example.com"));
        i.verified = Some(Proof::Dmarc);
        let o = originator(Method::Request, &c, &i, None).unwrap();
        assert_eq!((o.via, o.proof), (Via::Sender, Proof::From));
    }

    #[test]
    fn a_signature_by_the_organizer_proves_it_whoever_sent_the_mail() {
        let c = node("ORGANIZER:mailto:alice@example.com\r\n");
        let by = |who: &str| Signature {
            method: SigMethod::Smime,
            signers: Ok(vec![who.to_string()]),
        };
        let o = originator(
            Method::Request,
            &c,
            &id(&["mallory@evil.example"], None),
            Some(&by("alice@example.com")),
        )
        .unwrap();
        assert_eq!((o.via, o.proof), (Via::Signature, Proof::Smime));
        assert_eq!(
            o.authenticated_by().unwrap(),
            "S/MIME signature of alice@example.com"
        );
        // Signed by someone else: the From header alone, and why.
        let o = originator(
            Method::Request,
            &c,
            &id(&["alice@example.com"], None),
            Some(&by("carol@example.com")),
        )
        .unwrap();
        assert_eq!(o.proof, Proof::From);
        assert!(o.unproven.unwrap().contains("carol@example.com"));
        let e = originator(
            Method::Request,
            &c,
            &id(&["mallory@evil.example"], None),
            Some(&by("carol@example.com")),
        )
        .unwrap_err();
        assert!(e.contains("carol@example.com"), "{e}");
    }

    #[test]
    fn a_relay_speaks_for_its_organizers_only_when_verified() {
        let c = node("ORGANIZER:mailto:alice@example.com\r\n");
        let relay = Relay {
            from: "noreply@cloud.example.com".into(),
            organizers: vec!["*@example.com".into()],
        };
        let mut i = id(&["noreply@cloud.example.com"], None);
        i.relay = Some((relay.clone(), true));
        let o = originator(Method::Request, &c, &i, None).unwrap();
        assert_eq!((o.via, o.proof), (Via::Relay, Proof::Relay));
        assert_eq!(o.mail, "noreply@cloud.example.com");
        // Not for a REPLY: a relay speaks for organizers.
        let a = node("ORGANIZER:mailto:bob@example.com\r\nATTENDEE:mailto:alice@example.com\r\n");
        assert!(originator(Method::Reply, &a, &i, None).is_err());
        i.relay = Some((relay.clone(), false));
        let e = originator(Method::Request, &c, &i, None).unwrap_err();
        assert!(e.contains("DKIM/DMARC"), "{e}");
        let other = node("ORGANIZER:mailto:eve@other.example\r\n");
        i.relay = Some((relay, true));
        let e = originator(Method::Request, &other, &i, None).unwrap_err();
        assert!(e.contains("may not speak for eve@other.example"), "{e}");
    }

    #[test]
    fn receiver_verdicts_bind_to_the_from_domain() {
        let trusted = vec!["mx.example.com".to_string()];
        let v = |h: &str, from: &str| verified_by_receiver(&[h.to_string()], &trusted, from);
        let dkim = "mx.example.com; dkim=pass header.d=example.com; spf=pass";
        assert_eq!(v(dkim, "alice@example.com"), Some(Proof::Dkim));
        assert_eq!(v(dkim, "alice@eu.example.com"), Some(Proof::Dkim));
        assert_eq!(
            v(dkim, "alice@evil.example"),
            None,
            "DKIM of another domain"
        );
        let dmarc = "mx.example.com; dkim=fail; dmarc=pass header.from=example.com";
        assert_eq!(v(dmarc, "alice@example.com"), Some(Proof::Dmarc));
        assert_eq!(
            v(dmarc, "alice@evil.example"),
            None,
            "header.from must be the From domain"
        );
        assert_eq!(v("mx.example.com; dmarc=pass", "alice@example.com"), None);
        assert_eq!(
            v(
                "other.example; dmarc=pass header.from=example.com",
                "a@example.com"
            ),
            None
        );
        let forged_below = vec![
            "mx.example.com; dkim=fail header.d=example.com".to_string(),
            "mx.example.com; dmarc=pass header.from=example.com".to_string(),
        ];
        assert_eq!(
            verified_by_receiver(&forged_below, &trusted, "alice@example.com"),
            None
        );
    }
}
