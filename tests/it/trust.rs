//! Issue 13: who sent it, proven (S/MIME, PGP/MIME, DKIM/DMARC, trusted
//! relays), then what they may do. Every key, certificate, signature and
//! encrypted message here is made by the real `openssl` and `gpg` at run
//! time (tests/it/harness/keys.rs); imipd only verifies, opens and signs.

use serde_json::Value;

use crate::harness::keys::Keys;
use crate::support::*;

const AR_CLOUD: &str = "Authentication-Results: mx.example.com; dkim=pass header.d=cloud.example.com; dmarc=pass header.from=cloud.example.com\r\n";

fn event(uid: &str, seq: u32, organizer: &str) -> String {
    vevent(&[
        &format!("UID:{uid}"),
        &format!("SEQUENCE:{seq}"),
        "DTSTAMP:20261120T100000Z",
        "DTSTART:20270105T090000Z",
        "DTEND:20270105T100000Z",
        "SUMMARY:Planning",
        &format!("ORGANIZER:mailto:{organizer}"),
        "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.com",
    ])
}

/// A text/calendar MIME entity (its own header fields, CRLF line ends).
fn entity(method: &str, vevent: &str) -> String {
    format!(
        "Content-Type: text/calendar; method={method}; charset=UTF-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n\
         BEGIN:VCALENDAR\r\nPRODID:-//test//EN\r\nVERSION:2.0\r\nMETHOD:{method}\r\n{vevent}END:VCALENDAR\r\n"
    )
}

/// A whole mail around a MIME body that starts with its own header fields
/// (what `openssl smime` writes, or a multipart built here).
fn wrap(from: &str, body: &str) -> String {
    format!(
        "From: {from}\r\nTo: bob@example.com\r\nSubject: Invitation\r\nMessage-ID: <m{}@test>\r\nDate: Fri, 20 Nov 2026 10:00:00 +0000\r\n{body}",
        rand_suffix()
    )
}

/// A PGP/MIME multipart/signed body around an entity, signed by `who`.
fn pgp_signed(keys: &Keys, who: &str, entity: &str) -> String {
    let sig = keys.gpg_sign(who, entity.as_bytes());
    format!(
        "MIME-Version: 1.0\r\nContent-Type: multipart/signed; micalg=pgp-sha256;\r\n protocol=\"application/pgp-signature\"; boundary=\"sig-b\"\r\n\r\n\
         This is an OpenPGP/MIME signed message.\r\n--sig-b\r\n{entity}\r\n--sig-b\r\n\
         Content-Type: application/pgp-signature; name=\"signature.asc\"\r\n\r\n{sig}\r\n--sig-b--\r\n"
    )
}

/// A PGP/MIME multipart/encrypted body.
fn pgp_encrypted(armored: &str) -> String {
    format!(
        "MIME-Version: 1.0\r\nContent-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"enc-b\"\r\n\r\n\
         --enc-b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n\
         --enc-b\r\nContent-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\r\n{armored}\r\n--enc-b--\r\n"
    )
}

fn config(keys: &Keys, extra: &str) -> String {
    format!(
        "[identity]\nsmime_certificate = \"{}\"\nsmime_key = \"{}\"\npgp_secret_key = \"{}\"\n",
        keys.bob.cert.display(),
        keys.bob.key.display(),
        keys.bob_pgp_secret.display()
    ) + &format!(
        "[trust]\ntrusted_authserv_ids = [\"mx.example.com\"]\nsmime_ca_files = [\"{}\"]\npgp_public_keys = \"{}\"\n{extra}",
        keys.ca.display(),
        keys.pgp_public.display()
    )
}

/// An environment whose [identity] carries bob's keys (Env::new writes the
/// addresses; the key lines go into a second [identity]-free layout).
fn env(keys: &Keys, trust_extra: &str, rest: &str) -> Env {
    let env = Env::new("");
    let text = std::fs::read_to_string(&env.config).unwrap();
    let keys_cfg = config(keys, trust_extra);
    let (identity_keys, trust) = keys_cfg.split_once("[trust]").unwrap();
    let identity_keys = identity_keys.trim_start_matches("[identity]\n");
    let text = text.replacen(
        "name = \"Bob Example\"\n",
        &format!("name = \"Bob Example\"\n{identity_keys}"),
        1,
    );
    std::fs::write(&env.config, format!("{text}[trust]{trust}{rest}")).unwrap();
    env
}

const ACCEPT: &str = "[outgoing]\ntransport = \"file\"\npath = \"outbox\"\n\
    [[policy]]\nname = \"signed\"\nmethods = [\"REQUEST\"]\nsigned = true\naction = \"accept\"\n";

fn proof(o: &Value) -> String {
    first(o)["originator"]["proof"]
        .as_str()
        .unwrap_or("none")
        .to_string()
}

fn human(env: &Env, raw: &str) -> String {
    let p = env.message(&format!("h-{}.eml", rand_suffix()), raw);
    let out = imipd()
        .arg("process")
        .arg("--dry-run")
        .arg("--config")
        .arg(&env.config)
        .arg(&p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An invitation S/MIME-signed by its organizer is proven (`smime`), as a
/// multipart/signed and as opaque signed data, even when someone else
/// forwards it; the `signed` policy answers it; the outcome line says who
/// signed.
#[test]
fn smime_signed_by_the_organizer_is_proven() {
    let keys = Keys::generate();
    let env = env(&keys, "", ACCEPT);
    let signed = wrap(
        "Alice <alice@example.com>",
        &keys.smime_sign(
            &entity("REQUEST", &event("s1@example.com", 0, "alice@example.com")),
            &keys.alice,
            false,
        ),
    );
    let line = human(&env, &signed);
    assert!(
        line.contains("authenticated by S/MIME signature of alice@example.com"),
        "{line}"
    );
    let o = env.one(&signed);
    assert_eq!(proof(&o), "smime", "{o}");
    assert_eq!(first(&o)["policy"], "signed", "{o}");
    assert!(reply_text(first(&o)).starts_with("queued"), "{o}");
    assert_eq!(o["signatures"][0]["verified"], true, "{o}");
    assert_eq!(o["signatures"][0]["signers"][0], "alice@example.com", "{o}");

    let opaque = wrap(
        "Alice <alice@example.com>",
        &keys.smime_sign(
            &entity("REQUEST", &event("s2@example.com", 0, "alice@example.com")),
            &keys.alice,
            true,
        ),
    );
    assert!(opaque.contains("signed-data"), "{opaque}");
    let o = env.one(&opaque);
    assert_eq!(proof(&o), "smime", "{o}");

    // Forwarded by someone else: the signature still names the organizer.
    let forwarded = wrap(
        "Mallory <mallory@example.net>",
        &keys.smime_sign(
            &entity("REQUEST", &event("s3@example.com", 0, "alice@example.com")),
            &keys.alice,
            false,
        ),
    );
    let o = env.one(&forwarded);
    assert_eq!(proof(&o), "smime", "{o}");
    assert_eq!(first(&o)["effect"], "created", "{o}");
    assert!(o["suspicious"] == false, "{o}");
}

/// Signatures that prove nothing leave the originator unproven, and say
/// why: a changed byte, a signer who is someone else, an unknown CA, an
/// expired certificate, a certificate without the e-mail protection usage.
#[test]
fn smime_signatures_that_prove_nothing_say_why() {
    let keys = Keys::generate();
    let env = env(&keys, "", ACCEPT);
    let ent = |uid: &str| entity("REQUEST", &event(uid, 0, "alice@example.com"));
    let changed = keys
        .smime_sign(&ent("n1@example.com"), &keys.alice, false)
        .replacen("SUMMARY:Planning", "SUMMARY:Plannink", 1);
    let cases = [
        ("n1@example.com", changed, "changed"),
        (
            "n2@example.com",
            keys.smime_sign(&ent("n2@example.com"), &keys.carol, false),
            "carol@example.com",
        ),
        (
            "n3@example.com",
            keys.smime_sign(&ent("n3@example.com"), &keys.alice_unknown_ca, false),
            "trusted CA",
        ),
        (
            "n4@example.com",
            keys.smime_sign(&ent("n4@example.com"), &keys.alice_expired, false),
            "expired",
        ),
        (
            "n5@example.com",
            keys.smime_sign(&ent("n5@example.com"), &keys.alice_no_usage, false),
            "e-mail protection",
        ),
    ];
    for (uid, body, why) in cases {
        let raw = wrap("Alice <alice@example.com>", &body);
        let o = env.one(&raw);
        assert_eq!(proof(&o), "from", "{uid}: {o}");
        let unproven = first(&o)["originator"]["unproven"].as_str().unwrap_or("");
        assert!(unproven.contains(why), "{uid}: want {why}: {o}");
        assert_eq!(first(&o)["policy"], "default", "{uid}: {o}");
        assert_eq!(
            o["signatures"][0]["verified"],
            uid == "n2@example.com",
            "{uid}: {o}"
        );
        let line = human(&env, &raw);
        assert!(line.contains("not authenticated: "), "{line}");
    }
}

/// Mail S/MIME-encrypted to me is opened and processed (with the signature
/// inside it); mail encrypted to someone else is reported and changes
/// nothing.
#[test]
fn smime_encrypted_to_me_is_opened_and_to_others_reported() {
    let keys = Keys::generate();
    let env = env(&keys, "", ACCEPT);
    let signed = keys.smime_sign(
        &entity("REQUEST", &event("e1@example.com", 0, "alice@example.com")),
        &keys.alice,
        false,
    );
    let enc = wrap(
        "Alice <alice@example.com>",
        &keys.smime_encrypt(&signed, &keys.bob),
    );
    assert!(!enc.contains("BEGIN:VCALENDAR"));
    let o = env.one(&enc);
    assert_eq!(o["decrypted"], "smime", "{o}");
    assert_eq!(first(&o)["effect"], "created", "{o}");
    assert_eq!(proof(&o), "smime", "{o}");

    let plain = entity("REQUEST", &event("e2@example.com", 0, "alice@example.com"));
    let enc = wrap(
        "Alice <alice@example.com>",
        &keys.smime_encrypt(&plain, &keys.dave),
    );
    let p = env.message("to-dave.eml", &enc);
    let (v, _) = env.process(&[&p]);
    let o = &v[0];
    assert_eq!(o["imip"], false, "{o}");
    let problems = o["problems"].to_string();
    assert!(problems.contains("for someone else"), "{o}");
    assert!(stored(&env, "e2@example.com").is_none());
}

/// PGP/MIME: signed by the organizer's key → `pgp`; by a key imipd does not
/// know, or changed → unproven with the reason; encrypted (and signed) to
/// me → opened and proven; encrypted to someone else → reported.
#[test]
fn pgp_mime_signed_and_encrypted() {
    let keys = Keys::generate();
    let env = env(&keys, "", ACCEPT);
    let ent = |uid: &str| entity("REQUEST", &event(uid, 0, "alice@example.com"));
    let o = env.one(&wrap(
        "Alice <alice@example.com>",
        &pgp_signed(&keys, "alice@example.com", &ent("p1@example.com")),
    ));
    assert_eq!(proof(&o), "pgp", "{o}");
    assert_eq!(first(&o)["policy"], "signed", "{o}");
    let line = human(
        &env,
        &wrap(
            "Alice <alice@example.com>",
            &pgp_signed(&keys, "alice@example.com", &ent("p1b@example.com")),
        ),
    );
    assert!(
        line.contains("authenticated by PGP signature of alice@example.com"),
        "{line}"
    );

    let o = env.one(&wrap(
        "Alice <alice@example.com>",
        &pgp_signed(&keys, "mallory@example.com", &ent("p2@example.com")),
    ));
    assert_eq!(proof(&o), "from", "{o}");
    assert!(
        first(&o)["originator"]["unproven"]
            .as_str()
            .unwrap()
            .contains("not in [trust] pgp_public_keys"),
        "{o}"
    );

    let changed = pgp_signed(&keys, "alice@example.com", &ent("p3@example.com")).replacen(
        "SUMMARY:Planning",
        "SUMMARY:Plannink",
        1,
    );
    let o = env.one(&wrap("Alice <alice@example.com>", &changed));
    assert_eq!(proof(&o), "from", "{o}");
    assert!(
        first(&o)["originator"]["unproven"]
            .as_str()
            .unwrap()
            .contains("does not verify"),
        "{o}"
    );

    let armored = keys.gpg_encrypt(
        "bob@example.com",
        Some("alice@example.com"),
        ent("p4@example.com").as_bytes(),
    );
    let o = env.one(&wrap("Alice <alice@example.com>", &pgp_encrypted(&armored)));
    assert_eq!(o["decrypted"], "pgp", "{o}");
    assert_eq!(first(&o)["effect"], "created", "{o}");
    assert_eq!(proof(&o), "pgp", "{o}");

    let armored = keys.gpg_encrypt(
        "mallory@example.com",
        None,
        ent("p5@example.com").as_bytes(),
    );
    let p = env.message(
        "to-mallory.eml",
        &wrap("Alice <alice@example.com>", &pgp_encrypted(&armored)),
    );
    let (v, _) = env.process(&[&p]);
    assert!(
        v[0]["problems"].to_string().contains("someone else"),
        "{}",
        v[0]
    );
    assert!(stored(&env, "p5@example.com").is_none());
}

/// A platform relaying invitations from a no-reply address: with the
/// relay's own mail DKIM/DMARC-verified it speaks for the organizers it is
/// configured for (`relay` proof, answered; its later CANCEL applies);
/// without that, the invitation is filed unverified and never answered.
#[test]
fn trusted_relay_with_and_without_dkim() {
    let keys = Keys::generate();
    let env = env(
        &keys,
        "[[trust.relay]]\nfrom = \"invitations-noreply@cloud.example.com\"\norganizers = [\"*@example.com\"]\n",
        "[outgoing]\ntransport = \"file\"\npath = \"outbox\"\n\
         [[policy]]\nname = \"proven\"\nmethods = [\"REQUEST\"]\nauthenticated = true\naction = \"accept\"\n",
    );
    let relay = "Nextcloud <invitations-noreply@cloud.example.com>";
    let inv = |uid: &str, seq: u32| mail(relay, "REQUEST", &[event(uid, seq, "alice@example.com")]);
    let o = env.one(&format!("{AR_CLOUD}{}", inv("r1@example.com", 0)));
    assert_eq!(proof(&o), "relay", "{o}");
    assert_eq!(
        first(&o)["originator"]["mail"],
        "invitations-noreply@cloud.example.com",
        "{o}"
    );
    assert!(reply_text(first(&o)).starts_with("queued"), "{o}");
    // Its later CANCEL for the same UID, through the same relay, applies.
    let cancel = mail(
        relay,
        "CANCEL",
        &[event("r1@example.com", 1, "alice@example.com")
            .replace("SUMMARY:Planning", "SUMMARY:Planning\r\nSTATUS:CANCELLED")],
    );
    let o = env.one(&format!("{AR_CLOUD}{cancel}"));
    assert_eq!(first(&o)["effect"], "cancelled", "{o}");
    // Without the receiving server's verdict: filed unverified, not answered.
    let o = env.one(&inv("r2@example.com", 0));
    assert_eq!(first(&o)["effect"], "created", "{o}");
    assert!(first(&o)["originator"].is_null(), "{o}");
    assert!(
        first(&o)["reason"].as_str().unwrap().contains("DKIM/DMARC"),
        "{o}"
    );
    assert!(
        !first(&o)["reply"]["text"]
            .as_str()
            .unwrap_or("not sent")
            .starts_with("queued"),
        "{o}"
    );
    assert!(stored(&env, "r2@example.com")
        .unwrap()
        .contains("X-IMIPD-UNVERIFIED"));
    // An organizer outside the relay's list: not spoken for.
    let o = env.one(&format!(
        "{AR_CLOUD}{}",
        mail(
            relay,
            "REQUEST",
            &[event("r3@example.com", 0, "eve@other.example")]
        )
    ));
    assert!(first(&o)["originator"].is_null(), "{o}");
}

/// `[trust] require = "authenticated"`: an unsigned CANCEL in the
/// organizer's name changes nothing; the organizer's signed CANCEL applies;
/// an unsigned new invitation is filed as NEEDS-ACTION and not answered.
#[test]
fn require_authenticated_refuses_unproven_changes() {
    let keys = Keys::generate();
    let env = env(
        &keys,
        "require = \"authenticated\"\n",
        "[outgoing]\ntransport = \"file\"\npath = \"outbox\"\n\
         [[policy]]\nname = \"all\"\nmethods = [\"REQUEST\"]\naction = \"accept\"\n",
    );
    let signed_req = wrap(
        "Alice <alice@example.com>",
        &keys.smime_sign(
            &entity("REQUEST", &event("q1@example.com", 0, "alice@example.com")),
            &keys.alice,
            false,
        ),
    );
    let o = env.one(&signed_req);
    assert_eq!(first(&o)["effect"], "created", "{o}");
    assert!(reply_text(first(&o)).starts_with("queued"), "{o}");

    let cancel_event = event("q1@example.com", 1, "alice@example.com");
    let forged = mail(
        "Alice <alice@example.com>",
        "CANCEL",
        std::slice::from_ref(&cancel_event),
    );
    let before = stored(&env, "q1@example.com").unwrap();
    let o = env.one(&forged);
    assert_eq!(first(&o)["effect"], "refused", "{o}");
    assert!(
        first(&o)["reason"]
            .as_str()
            .unwrap()
            .contains("require = \"authenticated\""),
        "{o}"
    );
    assert_eq!(stored(&env, "q1@example.com").unwrap(), before);

    let signed_cancel = wrap(
        "Alice <alice@example.com>",
        &keys.smime_sign(&entity("CANCEL", &cancel_event), &keys.alice, false),
    );
    let o = env.one(&signed_cancel);
    assert_eq!(first(&o)["effect"], "cancelled", "{o}");
    assert!(stored(&env, "q1@example.com")
        .unwrap()
        .contains("STATUS:CANCELLED"));

    let unsigned = mail(
        "Alice <alice@example.com>",
        "REQUEST",
        &[event("q2@example.com", 0, "alice@example.com")],
    );
    let o = env.one(&unsigned);
    assert_eq!(first(&o)["effect"], "created", "{o}");
    assert!(
        first(&o)["reason"]
            .as_str()
            .unwrap()
            .contains("NEEDS-ACTION"),
        "{o}"
    );
    assert!(!reply_text(first(&o)).starts_with("queued"), "{o}");
    assert!(stored(&env, "q2@example.com")
        .unwrap()
        .contains("PARTSTAT=NEEDS-ACTION"));
}

/// `[outgoing] sign`: replies are multipart/signed, and the real tools
/// verify them: `openssl smime -verify` (S/MIME) and `gpg --verify` (PGP).
#[test]
fn signed_replies_verify_with_openssl_and_gpg() {
    let keys = Keys::generate();
    for how in ["smime", "pgp"] {
        let env = env(
            &keys,
            "",
            &format!(
                "[outgoing]\ntransport = \"file\"\npath = \"outbox\"\nsign = \"{how}\"\n\
                 [[policy]]\nname = \"all\"\nmethods = [\"REQUEST\"]\naction = \"accept\"\n"
            ),
        );
        let o = env.one(&mail(
            "Alice <alice@example.com>",
            "REQUEST",
            &[event("g1@example.com", 0, "alice@example.com")],
        ));
        assert!(reply_text(first(&o)).starts_with("queued"), "{o}");
        let sent = env.sent_in("outbox");
        assert_eq!(sent.len(), 1, "{how}");
        let m = &sent[0];
        if how == "smime" {
            assert!(m.contains("application/pkcs7-signature"), "{m}");
            let (ok, words) = keys.openssl_verify(m.as_bytes());
            assert!(ok, "openssl smime -verify: {words}\n{m}");
            let (bad, _) = keys.openssl_verify(m.replacen("ACCEPTED", "DECLINED", 1).as_bytes());
            assert!(!bad, "a changed reply must not verify");
        } else {
            assert!(m.contains("application/pgp-signature"), "{m}");
            let (signed, sig) = pgp_parts(m);
            let (ok, words) = keys.gpg_verify(sig.as_bytes(), signed.as_bytes());
            assert!(ok, "gpg --verify: {words}\n{m}");
            let (bad, _) = keys.gpg_verify(
                sig.as_bytes(),
                signed.replacen("ACCEPTED", "DECLINED", 1).as_bytes(),
            );
            assert!(!bad, "a changed reply must not verify");
        }
        assert!(m.contains("PARTSTAT=ACCEPTED"), "{m}");
    }
}

/// The signed entity (exact bytes between the first boundary and the CRLF
/// before the next) and the armoured signature of a PGP/MIME mail.
fn pgp_parts(m: &str) -> (String, String) {
    let b = m
        .split("boundary=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap();
    let delim = format!("\r\n--{b}\r\n");
    let start = m.find(&delim).unwrap() + delim.len();
    let end = start + m[start..].find(&format!("\r\n--{b}")).unwrap();
    let sig_start = m.find("-----BEGIN PGP SIGNATURE-----").unwrap();
    let sig_end =
        m.find("-----END PGP SIGNATURE-----").unwrap() + "-----END PGP SIGNATURE-----".len();
    (m[start..end].to_string(), m[sig_start..sig_end].to_string())
}

const BOB_IMAP: (&str, &str) = ("bob@example.com", "bob-secret");

/// `imipd once --json` against the account; its JSON lines.
fn once(env: &Env) -> Vec<Value> {
    let out = env.run(&["once", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Over IMAP: a calendar part inside a multipart/signed is fetched as that
/// whole signed entity (exact bytes) and verified, and the 20 MB attachment
/// beside it is never downloaded; a message that is signed or encrypted as
/// a whole is fetched as its body and verified or opened too.
#[test]
fn imap_fetches_the_signed_entity_but_never_the_attachment_beside_it() {
    use crate::harness::dovecot::Dovecot;
    let keys = Keys::generate();
    let d = Dovecot::start(&[BOB_IMAP]);
    let account = format!(
        "[[account]]\nname = \"bob\"\nsource = \"imap\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"implicit\"\n\
         username = \"{}\"\npassword = \"{}\"\nca_file = \"{}\"\ntimeout = 10\n",
        d.imaps_port,
        BOB_IMAP.0,
        BOB_IMAP.1,
        d.certs.ca_pem.display()
    );
    let env = env(&keys, "", &format!("{ACCEPT}{account}"));
    // multipart/mixed { multipart/signed { text/calendar, signature }, 20 MB PDF }
    let signed = keys.smime_sign(
        &entity("REQUEST", &event("i1@example.com", 0, "alice@example.com")),
        &keys.alice,
        false,
    );
    let (signed_head, signed_body) = signed
        .split_once("\n\n")
        .or_else(|| signed.split_once("\r\n\r\n"))
        .unwrap();
    let signed_head = signed_head
        .replace("MIME-Version: 1.0\n", "")
        .replace("MIME-Version: 1.0\r\n", "");
    let big = "QUFB".repeat(20 * 1024 * 1024 / 4);
    let pdf: Vec<&str> = big
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let raw = wrap(
        "Alice <alice@example.com>",
        &format!(
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n--outer\r\n{}\r\n\r\n{}\r\n--outer\r\n\
             Content-Type: application/pdf; name=slides.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--outer--\r\n",
            signed_head.trim_end().replace("\r\n", "\n").replace('\n', "\r\n"),
            signed_body.replace("\r\n", "\n").replace('\n', "\r\n"),
            pdf.join("\r\n")
        ),
    );
    d.append(BOB_IMAP.0, "INBOX", raw.as_bytes());
    // The whole message PGP/MIME-signed, and the whole message S/MIME-encrypted to me.
    d.append(
        BOB_IMAP.0,
        "INBOX",
        wrap(
            "Alice <alice@example.com>",
            &pgp_signed(
                &keys,
                "alice@example.com",
                &entity("REQUEST", &event("i2@example.com", 0, "alice@example.com")),
            ),
        )
        .as_bytes(),
    );
    d.append(
        BOB_IMAP.0,
        "INBOX",
        wrap(
            "Alice <alice@example.com>",
            &keys.smime_encrypt(
                &entity("REQUEST", &event("i3@example.com", 0, "alice@example.com")),
                &keys.bob,
            ),
        )
        .as_bytes(),
    );
    let lines = once(&env);
    let outcomes: Vec<&Value> = lines.iter().filter(|l| l.get("source").is_some()).collect();
    assert_eq!(outcomes.len(), 3, "{lines:?}");
    assert_eq!(proof(outcomes[0]), "smime", "{}", outcomes[0]);
    assert_eq!(first(outcomes[0])["policy"], "signed", "{}", outcomes[0]);
    assert_eq!(proof(outcomes[1]), "pgp", "{}", outcomes[1]);
    assert_eq!(outcomes[2]["decrypted"], "smime", "{}", outcomes[2]);
    assert_eq!(first(outcomes[2])["effect"], "created", "{}", outcomes[2]);
    let pass = lines.iter().find_map(|l| l.get("pass")).unwrap();
    assert!(
        pass["bytes_read"].as_u64().unwrap() < 512 * 1024,
        "the attachment was downloaded: {pass}"
    );
    for uid in ["i1@example.com", "i2@example.com", "i3@example.com"] {
        assert!(stored(&env, uid).is_some(), "{uid}");
    }
}

/// Key material is read when the configuration is loaded: `imipd check`
/// names what it trusts, and a private key others may read, or a signing
/// choice without its key, is a configuration error (exit 2) naming the key.
#[test]
fn check_reports_trust_and_refuses_unusable_keys() {
    use std::os::unix::fs::PermissionsExt;
    let keys = Keys::generate();
    let env = env(
        &keys,
        "require = \"authenticated\"\n",
        "[outgoing]\ntransport = \"file\"\npath = \"outbox\"\nsign = \"smime\"\n",
    );
    let out = env.run(&["check", "--process-only"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("require = authenticated"), "{text}");
    assert!(
        text.contains("my S/MIME certificate for bob@example.com"),
        "{text}"
    );
    assert!(text.contains("replies signed: S/MIME"), "{text}");
    std::fs::set_permissions(&keys.bob.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.run(&["check", "--process-only"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("identity.smime_key") && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&keys.bob.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bad = Env::new("[outgoing]\ntransport = \"file\"\npath = \"outbox\"\nsign = \"pgp\"\n");
    let out = bad.run(&["check", "--process-only"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("outgoing.sign") && err.contains("pgp_secret_key"),
        "{err}"
    );
}
