//! Self-tests of the harness: the real servers start, speak, verify TLS
//! against the test CA (and not against an unrelated one), restart, and
//! deliver end to end.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::certs::Certs;
use crate::harness::dovecot::{imap_command, imap_raw, Dovecot};
use crate::harness::smtp::{smtp_send, SmtpOptions, SmtpServer, SmtpTls};

const BOB: (&str, &str) = ("bob@example.org", "bob-secret");
const ALICE: (&str, &str) = ("alice@example.org", "alice pass \"quoted\"");

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@example.org>\r\n\r\nHello.\r\n.leading dot\r\n"
    )
    .into_bytes()
}

fn openssl_verify(ca: &std::path::Path, cert: &std::path::Path) -> (bool, String) {
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca)
        .args([
            "-purpose",
            "sslserver",
            "-verify_hostname",
            "localhost",
            "-verify_ip",
            "127.0.0.1",
        ])
        .arg(cert)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn certs_chain_verifies_only_against_its_ca() {
    let c = Certs::generate();
    let (ok, text) = openssl_verify(&c.ca_pem, &c.cert_pem);
    assert!(ok, "server cert does not verify against its CA: {text}");
    let (ok, text) = openssl_verify(&c.other_ca_pem, &c.cert_pem);
    assert!(!ok, "server cert verified against the unrelated CA: {text}");
    // The extensions webpki cares about.
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&c.cert_pem)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "CA:FALSE",
        "TLS Web Server Authentication",
        "DNS:localhost, IP Address:127.0.0.1",
        "Digital Signature, Key Encipherment",
        "X509v3 Authority Key Identifier",
        "X509v3 Subject Key Identifier",
        "Version: 3",
    ] {
        assert!(text.contains(want), "server cert lacks {want}:\n{text}");
    }
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&c.ca_pem)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("CA:TRUE"));
}

#[test]
fn smtp_plain_receives_and_survives_restart() {
    let mut s = SmtpServer::start(SmtpOptions::default());
    let port = s.port;
    smtp_send(
        port,
        None,
        "alice@example.org",
        &["bob@example.org", "carol@example.org"],
        &message("one"),
    )
    .unwrap_or_else(|t| panic!("send failed:\n{t}\nlog:\n{}", s.log()));
    let got = s.wait_for(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mail_from, "alice@example.org");
    assert_eq!(got[0].rcpt_to, vec!["bob@example.org", "carol@example.org"]);
    assert_eq!(
        got[0].data,
        message("one"),
        "data must be the message as sent (dots unstuffed)"
    );
    assert_eq!(got[0].auth_user, None);
    assert!(!got[0].tls);

    // Down: connections are refused; what was received is kept.
    let t = Instant::now();
    s.stop();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        t.elapsed()
    );
    assert!(smtp_send(port, None, "a@x", &["b@y"], b"x\r\n").is_err());
    assert_eq!(s.received().len(), 1);

    // Up again on the same port.
    s.restart();
    assert_eq!(s.port, port);
    smtp_send(
        port,
        None,
        "alice@example.org",
        &["bob@example.org"],
        &message("two"),
    )
    .unwrap();
    let got = s.wait_for(2, Duration::from_secs(5));
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].data, message("two"));

    // Temporary and permanent rejections, switched at run time.
    s.set_reject(Some("451 4.3.0 Try again later"));
    let err = smtp_send(
        port,
        None,
        "a@example.org",
        &["b@example.org"],
        &message("r"),
    )
    .unwrap_err();
    assert!(
        err.lines().last().unwrap().starts_with("451 4.3.0"),
        "{err}"
    );
    s.set_reject(Some("554 5.7.1 No"));
    let err = smtp_send(
        port,
        None,
        "a@example.org",
        &["b@example.org"],
        &message("r"),
    )
    .unwrap_err();
    assert!(err.lines().last().unwrap().starts_with("554"), "{err}");
    s.set_reject(None);
    assert_eq!(s.received().len(), 2);

    // No AUTH offered without credentials.
    let t = smtp_send(port, None, "a@x", &["b@y"], b"Subject: x\r\n\r\nx\r\n").unwrap();
    assert!(!t.contains("AUTH"), "{t}");

    drop(s);
    assert!(
        crate::harness::port_is_free(port),
        "the receiver outlived its handle"
    );
}

#[test]
fn smtp_auth_accepts_good_and_rejects_bad_credentials() {
    let s = SmtpServer::start(SmtpOptions::default().with_auth("bob", "pw 1"));
    // Required: MAIL without AUTH is refused.
    let err = smtp_send(
        s.port,
        None,
        "bob@example.org",
        &["x@example.org"],
        b"x\r\n",
    )
    .unwrap_err();
    assert!(err.contains("530"), "{err}");
    // Bad password: 535.
    let err = smtp_send(
        s.port,
        Some(("bob", "wrong")),
        "bob@example.org",
        &["x@example.org"],
        b"x\r\n",
    )
    .unwrap_err();
    assert!(err.lines().last().unwrap().starts_with("535"), "{err}");
    // Good: accepted, and recorded as the authenticated user.
    let ok = smtp_send(
        s.port,
        Some(("bob", "pw 1")),
        "bob@example.org",
        &["x@example.org"],
        &message("auth"),
    )
    .unwrap_or_else(|t| panic!("{t}\n{}", s.log()));
    assert!(
        ok.contains("AUTH LOGIN PLAIN"),
        "AUTH PLAIN and LOGIN must be offered:\n{ok}"
    );
    let got = s.wait_for(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].auth_user.as_deref(), Some("bob"));

    // AUTH LOGIN by hand.
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    let mut last = |r: &mut BufReader<std::net::TcpStream>| loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.clone();
        }
    };
    last(&mut r);
    w.write_all(b"EHLO x\r\n").unwrap();
    last(&mut r);
    w.write_all(b"AUTH LOGIN\r\n").unwrap();
    assert!(last(&mut r).starts_with("334"));
    w.write_all(format!("{}\r\n", crate::harness::base64_encode(b"bob")).as_bytes())
        .unwrap();
    assert!(last(&mut r).starts_with("334"));
    w.write_all(format!("{}\r\n", crate::harness::base64_encode(b"pw 1")).as_bytes())
        .unwrap();
    let l = last(&mut r);
    assert!(l.starts_with("235"), "{l}");
}

#[test]
fn smtp_starttls_verifies_against_ca_only() {
    let s = SmtpServer::start(SmtpOptions::default().with_tls(SmtpTls::StartTls));
    crate::harness::openssl_tls_check(s.port, Some("smtp"), &s.ca_pem())
        .unwrap_or_else(|t| panic!("STARTTLS handshake did not verify:\n{t}\n{}", s.log()));
    assert!(
        crate::harness::openssl_tls_check(s.port, Some("smtp"), &s.certs.other_ca_pem).is_err()
    );
    // STARTTLS is required before MAIL.
    let err = smtp_send(s.port, None, "a@example.org", &["b@example.org"], b"x\r\n").unwrap_err();
    assert!(err.contains("STARTTLS"), "{err}");
}

#[test]
fn smtp_implicit_tls_verifies_against_ca_only() {
    let s = SmtpServer::start(
        SmtpOptions::default()
            .with_tls(SmtpTls::Implicit)
            .with_auth("u", "p"),
    );
    crate::harness::openssl_tls_check(s.port, None, &s.ca_pem())
        .unwrap_or_else(|t| panic!("implicit TLS handshake did not verify:\n{t}\n{}", s.log()));
    assert!(crate::harness::openssl_tls_check(s.port, None, &s.certs.other_ca_pem).is_err());
    // No plain-text greeting on the TLS port: the server waits for a ClientHello.
    use std::io::Read;
    let mut c = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(!matches!(c.read(&mut buf), Ok(n) if n >= 3 && &buf[..3] == b"220"));
}

#[test]
fn dovecot_logins_capabilities_and_delivery() {
    let dc = Dovecot::start(&[BOB, ALICE]);
    // LOGIN good and bad (passwords with spaces and quotes too).
    let t = imap_command(dc.imap_port, BOB.0, BOB.1, &["CAPABILITY"]);
    assert!(t.contains("\nL OK"), "{t}\n{}", dc.log());
    for cap in [
        " IDLE",
        " CONDSTORE",
        " QRESYNC",
        " MOVE",
        " UIDPLUS",
        " SPECIAL-USE",
        "AUTH=XOAUTH2",
    ] {
        if cap.starts_with("AUTH=") {
            let pre = imap_raw(dc.imap_port, &["CAPABILITY"]);
            assert!(
                pre.contains(cap),
                "{cap} not advertised before login:\n{pre}"
            );
        } else {
            let caps = t.lines().find(|l| l.starts_with("* CAPABILITY")).unwrap();
            assert!(caps.contains(cap), "{cap} not advertised:\n{t}");
        }
    }
    let t = imap_command(dc.imap_port, ALICE.0, ALICE.1, &[]);
    assert!(t.contains("\nL OK"), "{t}");
    let t = imap_command(dc.imap_port, BOB.0, "wrong", &["STATUS INBOX (MESSAGES)"]);
    assert!(t.contains("\nL NO"), "{t}");
    assert!(!t.contains("\nA1 OK"), "{t}");

    // INBOX via LMTP, another folder via APPEND.
    dc.append(BOB.0, "INBOX", &message("m1"));
    dc.append(BOB.0, "INBOX", &message("m2"));
    dc.append(BOB.0, "Archive/2024", &message("m3"));
    eprintln!("{}", dc.log());
    dc.append_imap(BOB.0, "INBOX", &message("m4"), &["\\Seen", "$Label1"]);
    assert_eq!(dc.folder_count(BOB.0, "INBOX"), 3);
    assert_eq!(dc.folder_count(BOB.0, "Archive/2024"), 1);
    assert_eq!(dc.folder_count(ALICE.0, "INBOX"), 0);
    assert_eq!(dc.folder_count(BOB.0, "Nope"), 0);
    assert_eq!(
        dc.flags(BOB.0, "INBOX"),
        vec![
            vec![],
            vec![],
            vec!["\\Seen".to_string(), "$Label1".to_string()]
        ]
    );
    assert_eq!(dc.flags(ALICE.0, "INBOX"), Vec::<Vec<String>>::new());
    let msgs = dc.messages(BOB.0, "INBOX");
    assert_eq!(msgs.len(), 3);
    let m1 = String::from_utf8_lossy(&msgs[0]);
    assert!(
        m1.contains("Subject: m1") && m1.contains("\r\n.leading dot\r\n"),
        "{m1}"
    );
    assert!(m1.contains("Return-Path: <alice@example.org>"), "{m1}");
    assert_eq!(dc.messages(BOB.0, "Archive/2024"), vec![message("m3")]);

    // MOVE and flag changes are visible through the helpers.
    let t = dc.imap(
        BOB.0,
        &[
            "SELECT INBOX",
            "UID STORE 1 +FLAGS (\\Answered)",
            "UID MOVE 2 Archive/2024",
        ],
    );
    assert!(t.contains("\nA3 OK"), "{t}");
    assert_eq!(dc.folder_count(BOB.0, "INBOX"), 2);
    assert_eq!(dc.folder_count(BOB.0, "Archive/2024"), 2);
    assert_eq!(dc.flags(BOB.0, "INBOX")[0], vec!["\\Answered".to_string()]);
}

#[test]
fn dovecot_tls_verifies_against_ca_only() {
    let dc = Dovecot::start(&[BOB]);
    crate::harness::openssl_tls_check(dc.imap_port, Some("imap"), &dc.certs.ca_pem)
        .unwrap_or_else(|t| panic!("IMAP STARTTLS did not verify:\n{t}\n{}", dc.log()));
    crate::harness::openssl_tls_check(dc.imaps_port, None, &dc.certs.ca_pem)
        .unwrap_or_else(|t| panic!("IMAPS did not verify:\n{t}\n{}", dc.log()));
    assert!(
        crate::harness::openssl_tls_check(dc.imap_port, Some("imap"), &dc.certs.other_ca_pem)
            .is_err()
    );
    assert!(
        crate::harness::openssl_tls_check(dc.imaps_port, None, &dc.certs.other_ca_pem).is_err()
    );
    let pre = imap_raw(dc.imap_port, &["CAPABILITY"]);
    assert!(pre.contains("STARTTLS"), "{pre}");
}

#[test]
fn dovecot_xoauth2_checks_the_token_against_the_password() {
    let dc = Dovecot::start(&[BOB]);
    let token = |user: &str, bearer: &str| {
        crate::harness::base64_encode(
            format!("user={user}\x01auth=Bearer {bearer}\x01\x01").as_bytes(),
        )
    };
    let ok = format!("AUTHENTICATE XOAUTH2 {}", token(BOB.0, BOB.1));
    let t = imap_raw(dc.imap_port, &[&ok, "STATUS INBOX (MESSAGES)"]);
    assert!(t.contains("\nA1 OK"), "{t}\n{}", dc.log());
    assert!(t.contains("* STATUS INBOX (MESSAGES 0)"), "{t}");
    let bad = format!("AUTHENTICATE XOAUTH2 {}", token(BOB.0, "not-the-password"));
    let t = imap_raw(dc.imap_port, &[&bad]);
    assert!(t.contains("\nA1 NO"), "{t}");
    // Dovecot answers a bad token with the RFC 7628 error challenge first.
    assert!(t.contains("\n+ "), "{t}");
    // Over implicit TLS too is out of reach of the plain client; the login
    // itself is the same code path.
}

#[test]
fn dovecot_restart_keeps_mail_and_ports() {
    let mut dc = Dovecot::start(&[BOB]);
    dc.append(BOB.0, "INBOX", &message("keep"));
    dc.append(BOB.0, "Other", &message("keep2"));
    let uv = dc.uidvalidity(BOB.0, "INBOX");
    let (p1, p2, p3) = (dc.imap_port, dc.imaps_port, dc.lmtp_port);
    let t = Instant::now();
    dc.stop();
    let stopped = t.elapsed();
    assert!(stopped < Duration::from_secs(1), "stop took {stopped:?}");
    assert!(!crate::harness::wait_for_port(
        p1,
        Duration::from_millis(50)
    ));
    dc.restart();
    assert_eq!((dc.imap_port, dc.imaps_port, dc.lmtp_port), (p1, p2, p3));
    assert_eq!(dc.folder_count(BOB.0, "INBOX"), 1);
    assert_eq!(dc.folder_count(BOB.0, "Other"), 1);
    assert_eq!(dc.uidvalidity(BOB.0, "INBOX"), uv);
    dc.append(BOB.0, "INBOX", &message("after"));
    assert_eq!(dc.folder_count(BOB.0, "INBOX"), 2);
    drop(dc);
    // Dovecot's processes exit on their own time after the kill: the ports
    // are let go within moments.
    assert!(crate::harness::wait_ports_free(
        &[p1, p2, p3],
        Duration::from_secs(5)
    ));
}

#[test]
fn dovecot_uidvalidity_change() {
    let dc = Dovecot::start(&[BOB]);
    let t = imap_command(dc.imap_port, BOB.0, "wrong", &["STATUS INBOX (MESSAGES)"]);
    eprintln!("{t}");
    for i in 0..3 {
        dc.append(BOB.0, "INBOX", &message(&format!("u{i}")));
    }
    dc.append_imap(BOB.0, "INBOX", &message("flagged"), &["\\Flagged"]);
    dc.append(BOB.0, "Cal", &message("c"));
    let before = dc.imap(BOB.0, &["SELECT INBOX"]);
    let old = dc.uidvalidity(BOB.0, "INBOX");
    let other_old = dc.uidvalidity(BOB.0, "Cal");
    let new = dc.set_uidvalidity_change(BOB.0, "INBOX");
    assert_ne!(old, new);
    // SELECT agrees with STATUS; the messages are all still there.
    let after = dc.imap(BOB.0, &["SELECT INBOX"]);
    assert!(after.contains(&format!("[UIDVALIDITY {new}]")), "{after}");
    assert!(before.contains(&format!("[UIDVALIDITY {old}]")), "{before}");
    assert_eq!(dc.folder_count(BOB.0, "INBOX"), 4);
    let uids: Vec<u32> = dc
        .uids_and_flags(BOB.0, "INBOX")
        .iter()
        .map(|(u, _)| *u)
        .collect();
    assert_eq!(uids.len(), 4);
    // Other folders keep theirs.
    assert_eq!(dc.uidvalidity(BOB.0, "Cal"), other_old);
    // And it can change again.
    let newer = dc.set_uidvalidity_change(BOB.0, "INBOX");
    assert_ne!(newer, new);
    eprintln!(
        "UIDVALIDITY {old} -> {new} -> {newer}, UIDs now {uids:?}, flags {:?}",
        dc.flags(BOB.0, "INBOX")
    );
}

#[test]
fn smtp_lmtp_forward_delivers_into_dovecot() {
    let dc = Dovecot::start(&[BOB, ("organizer@example.org", "org")]);
    let s = SmtpServer::start(SmtpOptions::default().with_lmtp_forward(
        dc.lmtp_port,
        &[("Organizer@Example.COM", "organizer@example.org")],
    ));
    smtp_send(
        s.port,
        None,
        "bob@example.org",
        &["organizer@example.com"],
        &message("reply"),
    )
    .unwrap_or_else(|t| panic!("{t}\n{}", s.log()));
    let got = s.wait_for(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].lmtp_error, None, "{}", s.log());
    // Delivered before the 250: no waiting needed.
    assert_eq!(dc.folder_count("organizer@example.org", "INBOX"), 1);
    let m = dc.messages("organizer@example.org", "INBOX");
    assert!(String::from_utf8_lossy(&m[0]).contains("Subject: reply"));
    // Unmapped recipients go as they are; unknown ones are reported.
    smtp_send(
        s.port,
        None,
        "x@example.org",
        &["bob@example.org", "nobody@example.org"],
        &message("two"),
    )
    .unwrap();
    let got = s.wait_for(2, Duration::from_secs(5));
    assert_eq!(dc.folder_count(BOB.0, "INBOX"), 1);
    let err = got[1].lmtp_error.clone().unwrap_or_default();
    assert!(err.contains("nobody@example.org"), "{err}");
}
