//! The command line contract: exit statuses, errors that name file, key
//! and position, and classify's line per file whatever the file holds.

use crate::support::*;

#[test]
fn bad_configuration_exits_2_and_names_file_key_and_line() {
    let env = Env::new("[outgoing]\ntransport = \"pigeon\"\n");
    let out = env.run(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.toml"), "{err}");
    assert!(err.contains("outgoing.transport"), "{err}");
    assert!(err.contains("line 9"), "{err}");
}

#[test]
fn unknown_key_is_an_error() {
    let env = Env::new(
        "[[account]]\nname = \"a\"\nsource = \"maildir\"\npath = \"m\"\nfolder = \"INBOX\"\n",
    );
    let out = env.run(&["once"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("folder") && err.contains("line 12"), "{err}");
}

#[test]
fn missing_configuration_exits_2() {
    let out = imipd()
        .args(["once", "--config", "/nonexistent/imipd.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/imipd.toml"));
}

#[test]
fn bad_command_line_exits_2() {
    let out = imipd().args(["frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn classify_gives_every_file_its_line() {
    let env = Env::new("");
    let good = env.message(
        "good.eml",
        &mail(
            "alice@example.com",
            "REQUEST",
            &[vevent(&[
                "UID:u1",
                "DTSTAMP:20261120T100000Z",
                "DTSTART:20261201T100000Z",
                "ORGANIZER:mailto:alice@example.com",
                "ATTENDEE:mailto:bob@example.com",
            ])],
        ),
    );
    let garbage = env.message("garbage.eml", "\u{0}\u{1}\u{2}\u{3}binary");
    let out = imipd()
        .args(["classify", "--me", "bob@example.com"])
        .arg(&garbage)
        .arg("/nonexistent/x.eml")
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unreadable file gives exit 1"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["valid"], false);
    assert_eq!(lines[0]["imip"], false);
    assert_eq!(lines[1]["file"], "/nonexistent/x.eml");
    assert_eq!(lines[2]["imip"], true);
    assert_eq!(
        lines[2]["messages"][0]["components"][0]["sequence"],
        serde_json::Value::Null
    );
}

#[test]
fn check_reports_the_example_configuration() {
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let out = imipd().args(["check", "--config", cfg]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("is valid"));
}

/// docs/exit-status.md is the contract: every status it lists is one the
/// binary gives, each produced here by the situation the page names.
#[test]
fn every_documented_exit_status_is_given() {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/exit-status.md"))
        .unwrap();
    let documented: Vec<i32> = page
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(" |").next()?.trim().parse().ok())
        .collect();
    assert_eq!(documented, vec![0, 1, 2, 3, 75], "{page}");

    let env = Env::new(
        "lock_timeout = \"1s\"\n\
         [[account]]\nname = \"a\"\nsource = \"imap\"\nhost = \"127.0.0.1\"\nport = 1\n\
         tls = \"none\"\nusername = \"u\"\npassword = \"p\"\n",
    );
    let good = env.message(
        "good.eml",
        &mail(
            "alice@example.com",
            "REQUEST",
            &[vevent(&[
                "UID:exit@example.com",
                "DTSTART:20261201T100000Z",
                "ORGANIZER:mailto:alice@example.com",
                "ATTENDEE:mailto:bob@example.com",
            ])],
        ),
    );
    let code = |args: &[&str]| {
        let out = imipd()
            .args(args)
            .arg("--config")
            .arg(&env.config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let good = good.to_str().unwrap();
    let (c, err) = code(&["classify", good]);
    assert_eq!(c, Some(0), "{err}");
    let (c, err) = code(&["classify", "/nonexistent/mail.eml"]);
    assert_eq!(c, Some(1), "{err}");
    let (c, err) = code(&["respond", "no-such-uid@example.com", "accept"]);
    assert_eq!(c, Some(2), "{err}");
    // Nothing listens on port 1.
    let (c, err) = code(&["check", "--connect"]);
    assert_eq!(c, Some(3), "{err}");
    // Another imipd (here: the test) holds the state lock.
    let _lock = env.hold_state_lock();
    let (c, err) = code(&["process", good]);
    assert_eq!(c, Some(75), "{err}");
}
