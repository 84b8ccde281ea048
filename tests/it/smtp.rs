//! Replies over SMTP to a real receiver started by the harness on
//! 127.0.0.1: plain, STARTTLS and implicit TLS; AUTH good and bad; the
//! receiver down, then up (the reply arrives later, once). Every reply the
//! receiver got is parsed back and checked.

use std::time::Duration;

use serde_json::Value;

use crate::harness::smtp::{Received, SmtpOptions, SmtpServer, SmtpTls};
use crate::support::*;

fn invitation(uid: &str) -> String {
    mail(
        "Alice <alice@example.com>",
        "REQUEST",
        &[vevent(&[
            &format!("UID:{uid}"),
            "SEQUENCE:0",
            "DTSTAMP:20261120T100000Z",
            "DTSTART:20261201T100000Z",
            "DTEND:20261201T110000Z",
            "SUMMARY:Planning",
            "ORGANIZER;CN=Alice:mailto:alice@example.com",
            "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.com",
        ])],
    )
}

fn env_for(smtp: &SmtpServer, tls: &str, auth: Option<(&str, &str)>) -> Env {
    let auth = auth
        .map(|(u, p)| format!("username = \"{u}\"\npassword = \"{p}\"\n"))
        .unwrap_or_default();
    Env::new(&format!(
        "[outgoing]\ntransport = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"{tls}\"\n{auth}ca_file = \"{}\"\ntimeout = 5\n\
         [[policy]]\nname = \"yes\"\nmethods = [\"REQUEST\"]\naction = \"accept\"\n",
        smtp.port,
        smtp.ca_pem().display()
    ))
}

fn process(env: &Env, raw: &str) -> (Option<i32>, Vec<Value>, String) {
    let p = env.message(&format!("i{}.eml", rand_suffix()), raw);
    let (v, out) = env.process(&[&p]);
    (
        out.status.code(),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A received reply is a valid iTIP REPLY from bob to alice.
fn check_reply(r: &Received, uid: &str) {
    assert_eq!(r.mail_from, "bob@example.com");
    assert_eq!(r.rcpt_to, ["alice@example.com"]);
    let env = Env::new("");
    let f = env.message("got.eml", &String::from_utf8_lossy(&r.data));
    let out = imipd().arg("classify").arg(&f).output().unwrap();
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["valid"], true, "{c}");
    assert_eq!(c["suspicious"], false, "{c}");
    assert_eq!(c["messages"][0]["method"], "REPLY");
    let comp = &c["messages"][0]["components"][0];
    assert_eq!(comp["uid"], uid);
    assert_eq!(comp["attendees"]["mailto:bob@example.com"], "ACCEPTED");
}

#[test]
fn plain_starttls_and_implicit_tls_with_auth() {
    for (tls, mode) in [
        ("none", SmtpTls::None),
        ("starttls", SmtpTls::StartTls),
        ("implicit", SmtpTls::Implicit),
    ] {
        let smtp = SmtpServer::start(SmtpOptions {
            tls: mode,
            auth: Some(("bob@example.com".into(), "good".into())),
            lmtp_forward: None,
        });
        let env = env_for(&smtp, tls, Some(("bob@example.com", "good")));
        let uid = format!("smtp-{tls}@example.com");
        let (code, v, err) = process(&env, &invitation(&uid));
        assert_eq!(code, Some(0), "{tls}: {err}");
        assert!(
            v.iter().any(|l| l["outbox"]["status"] == "sent"),
            "{tls}: {v:?}"
        );
        let got = smtp.wait_for(1, Duration::from_secs(5));
        assert_eq!(got.len(), 1, "{tls}");
        assert_eq!(got[0].auth_user.as_deref(), Some("bob@example.com"));
        check_reply(&got[0], &uid);
        assert!(
            std::fs::read_dir(env.path("state/outbox"))
                .unwrap()
                .next()
                .is_none(),
            "{tls}: the outbox is empty"
        );
    }
}

#[test]
fn bad_password_keeps_the_reply_queued_and_exits_3() {
    let smtp = SmtpServer::start(SmtpOptions {
        tls: SmtpTls::StartTls,
        auth: Some(("bob@example.com".into(), "good".into())),
        lmtp_forward: None,
    });
    let env = env_for(&smtp, "starttls", Some(("bob@example.com", "bad")));
    let (code, v, err) = process(&env, &invitation("auth-bad@example.com"));
    assert_eq!(code, Some(3), "{err}");
    let failed: Vec<&Value> = v
        .iter()
        .filter(|l| l["outbox"]["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{v:?}");
    assert!(smtp.received().is_empty());
    assert_eq!(
        std::fs::read_dir(env.path("state/outbox")).unwrap().count(),
        1,
        "still queued"
    );
}

#[test]
fn a_certificate_the_client_does_not_trust_is_refused() {
    let smtp = SmtpServer::start(SmtpOptions {
        tls: SmtpTls::Implicit,
        auth: None,
        lmtp_forward: None,
    });
    let env = Env::new(&format!(
        "[outgoing]\ntransport = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"implicit\"\ntimeout = 5\n\
         [[policy]]\nname = \"yes\"\nmethods = [\"REQUEST\"]\naction = \"accept\"\n",
        smtp.port
    ));
    let (code, _, err) = process(&env, &invitation("untrusted@example.com"));
    assert_eq!(code, Some(3), "{err}");
    assert!(
        smtp.received().is_empty(),
        "nothing sent over an unverified connection"
    );
}

#[test]
fn receiver_down_then_up_delivers_later_exactly_once() {
    let mut smtp = SmtpServer::start(SmtpOptions {
        tls: SmtpTls::None,
        auth: None,
        lmtp_forward: None,
    });
    let env = env_for(&smtp, "none", None);
    smtp.stop();
    let (code, v, err) = process(&env, &invitation("later@example.com"));
    assert_eq!(code, Some(3), "{err}");
    assert!(v.iter().any(|l| l["outbox"]["status"] == "failed"));
    // Processing the same invitation again does not queue a second reply.
    let (_, v, _) = process(&env, &invitation("later@example.com"));
    assert!(v
        .iter()
        .filter(|l| l.get("results").is_some())
        .all(|l| !reply_text(&l["results"][0]).starts_with("queued")));
    smtp.restart();
    // The next run sends what waits in the outbox.
    let out = imipd()
        .args(["process", "--json", "--config"])
        .arg(&env.config)
        .arg("/dev/null")
        .output()
        .unwrap();
    let _ = out;
    let got = smtp.wait_for(1, Duration::from_secs(5));
    assert_eq!(got.len(), 1);
    check_reply(&got[0], "later@example.com");
    // And nothing more, however often it runs.
    let _ = imipd()
        .args(["process", "--config"])
        .arg(&env.config)
        .arg("/dev/null")
        .output()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(smtp.received().len(), 1);
}
