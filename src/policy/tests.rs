//! Every matcher, first match wins, and the load-time refusals.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::*;
use crate::ical::Node;
use crate::originator::{Originator, Proof, Via};

/// Compile policies from TOML (`[[policy]]` tables), as the configuration does.
fn rules(text: &str) -> Result<Vec<Policy>, PolicyError> {
    #[derive(serde::Deserialize)]
    struct File {
        policy: Vec<Spanned<RawPolicy>>,
    }
    let f: File = toml::from_str(text).unwrap();
    let accounts = vec!["work".to_string()];
    let ctx = Context {
        accounts: &accounts,
    };
    let mut out: Vec<Policy> = Vec::new();
    for p in &f.policy {
        let compiled = compile(p, &out, &ctx)?;
        out.push(compiled);
    }
    Ok(out)
}

fn rule(body: &str) -> Policy {
    rules(&format!(
        "[[policy]]\nname = \"r\"\naction = \"accept\"\n{body}"
    ))
    .unwrap()
    .remove(0)
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn comps() -> Vec<Node> {
    let text = "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:u\r\nSUMMARY:Daily Standup\r\n\
        DTSTART:20261124T100000Z\r\nDTEND:20261124T110000Z\r\nORGANIZER:mailto:alice@example.com\r\n\
        END:VEVENT\r\nEND:VCALENDAR\r\n";
    let calcard::Entry::ICalendar(i) = calcard::Parser::new(text).entry() else {
        panic!()
    };
    Node::from_ical(&i).children
}

fn originator() -> Originator {
    Originator {
        address: "mailto:alice@example.com".into(),
        mail: "alice@example.com".into(),
        via: Via::From,
        sent_by: None,
        proof: Proof::Dkim,
        unproven: None,
    }
}

fn facts<'a>(c: &'a [Node], o: &'a Originator) -> Facts<'a> {
    let mut f = Facts::new(Method::Request, c, now());
    f.sender = Some("alice@example.com");
    f.originator = Some(o);
    f.known_sender = Some(true);
    f.conflict = Some(false);
    f.next = Some((
        now() + chrono::Duration::days(3),
        now() + chrono::Duration::days(3) + chrono::Duration::hours(1),
    ));
    f.account = Some("work");
    f.folder = Some("INBOX");
    f
}

fn check(r: &Policy, f: &Facts<'_>) -> bool {
    decide(std::slice::from_ref(r), f).policy != "default"
}

#[test]
fn no_rule_means_file() {
    let (c, o) = (comps(), originator());
    let v = decide(&[], &facts(&c, &o));
    assert_eq!((v.policy.as_str(), v.action), ("default", Action::File));
}

#[test]
fn first_match_wins() {
    let (c, o) = (comps(), originator());
    let r = rules(
        "[[policy]]\nname = \"a\"\nmethods = [\"CANCEL\"]\naction = \"ignore\"\n\
         [[policy]]\nname = \"b\"\naction = \"accept\"\n",
    )
    .unwrap();
    let v = decide(&r, &facts(&c, &o));
    assert_eq!((v.policy.as_str(), v.action), ("b", Action::Accept));
}

#[test]
fn matcher_methods_and_components() {
    let (c, o) = (comps(), originator());
    let f = facts(&c, &o);
    assert!(check(
        &rule("methods = [\"request\", \"ADD\"]\ncomponents = [\"VEVENT\"]"),
        &f
    ));
    assert!(!check(&rule("components = [\"VTODO\"]"), &f));
}

#[test]
fn matcher_organizers_and_senders() {
    let (c, o) = (comps(), originator());
    let r = rule("organizers = [\"*@example.com\"]\nsenders = [\"example.com\"]");
    assert!(check(&r, &facts(&c, &o)));
    let mut f = facts(&c, &o);
    f.sender = Some("alice@evil.example");
    assert!(!check(&r, &f));
}

#[test]
fn matcher_summary_is_a_glob_on_the_summary() {
    let (c, o) = (comps(), originator());
    let f = facts(&c, &o);
    assert!(check(&rule("summary = [\"*standup*\"]"), &f));
    assert!(check(&rule("summary = \"daily ?tandup\""), &f));
    assert!(!check(&rule("summary = [\"*retro*\"]"), &f));
}

#[test]
fn matcher_flags() {
    let (c, o) = (comps(), originator());
    let f = facts(&c, &o);
    for (key, value, want) in [
        ("known_sender", "true", true),
        ("known_sender", "false", false),
        ("authenticated", "true", true),
        ("authenticated", "false", false),
        ("signed", "false", true),
        ("signed", "true", false),
        ("conflict", "false", true),
        ("conflict", "true", false),
        ("recurring", "false", true),
        ("recurring", "true", false),
        ("valid", "true", true),
        ("valid", "false", false),
    ] {
        assert_eq!(
            check(&rule(&format!("{key} = {value}")), &f),
            want,
            "{key} = {value}"
        );
    }
    // `signed` means S/MIME or PGP; `authenticated` any proof.
    for (proof, signed, authenticated) in [
        (Proof::Smime, true, true),
        (Proof::Pgp, true, true),
        (Proof::Relay, false, true),
        (Proof::Dmarc, false, true),
        (Proof::From, false, false),
    ] {
        let o = Originator {
            proof,
            ..originator()
        };
        let f = facts(&c, &o);
        assert_eq!(check(&rule("signed = true"), &f), signed, "{proof:?}");
        assert_eq!(
            check(&rule("authenticated = true"), &f),
            authenticated,
            "{proof:?}"
        );
    }
    let mut f = facts(&c, &o);
    f.conflict = None;
    assert!(
        !check(&rule("conflict = false"), &f),
        "an unknown fact never matches"
    );
}

#[test]
fn matcher_max_duration_and_booking_window() {
    let (c, o) = (comps(), originator());
    let f = facts(&c, &o);
    assert!(check(&rule("max_duration = \"2h\""), &f));
    assert!(!check(&rule("max_duration = \"30m\""), &f));
    assert!(check(&rule("booking_window = \"7d\""), &f));
    assert!(!check(&rule("booking_window = \"1d\""), &f));
}

#[test]
fn a_huge_booking_window_does_not_overflow() {
    let (c, o) = (comps(), originator());
    let huge = matchers::def("booking_window").unwrap();
    let m = matchers::Matcher {
        def: huge,
        value: matchers::Value::Duration(Duration::from_secs(u64::MAX / 4)),
    };
    assert!(m.check(&facts(&c, &o)).is_some());
}

#[test]
fn matcher_account_and_folder() {
    let (c, o) = (comps(), originator());
    let f = facts(&c, &o);
    assert!(check(&rule("account = \"work\"\nfolder = [\"INBOX\"]"), &f));
    assert!(!check(&rule("folder = \"Archive\""), &f));
    let e = rules("[[policy]]\nname = \"r\"\naction = \"file\"\naccount = \"home\"\n").unwrap_err();
    assert!(e.message.contains("no account named `home`"), "{e:?}");
}

#[test]
fn every_action_is_returned_with_its_comment() {
    let (c, o) = (comps(), originator());
    for a in Action::ALL {
        let r = rules(&format!(
            "[[policy]]\nname = \"r\"\naction = \"{}\"\ncomment = \"note\"\n",
            a.as_str()
        ))
        .unwrap();
        let v = decide(&r, &facts(&c, &o));
        assert_eq!(v.action, a);
        assert_eq!(v.comment.as_deref(), Some("note"));
    }
}

#[test]
fn unknown_keys_and_bad_values_say_what_is_expected() {
    let e = rules("[[policy]]\nname = \"r\"\naction = \"file\"\ncolour = 1\n").unwrap_err();
    assert_eq!(e.key, "policy.colour");
    assert!(e.message.contains("expected one of"), "{e:?}");
    let e =
        rules("[[policy]]\nname = \"r\"\naction = \"file\"\nmethods = [\"INVITE\"]\n").unwrap_err();
    assert!(e.message.contains("unknown method `INVITE`"), "{e:?}");
    let e = rules("[[policy]]\nname = \"r\"\naction = \"file\"\nconflict = \"yes\"\n").unwrap_err();
    assert!(e.message.contains("true or false"), "{e:?}");
    let e = rules("[[policy]]\nname = \"r\"\naction = \"maybe\"\n").unwrap_err();
    assert_eq!(e.key, "policy.action");
}

#[test]
fn unreachable_policies_are_refused() {
    let e = rules(
        "[[policy]]\nname = \"all\"\naction = \"file\"\n\
         [[policy]]\nname = \"late\"\nmethods = [\"REQUEST\"]\naction = \"accept\"\n",
    )
    .unwrap_err();
    assert!(
        e.message.contains("`late` can never match") && e.message.contains("`all`"),
        "{e:?}"
    );
    assert!(rules(
        "[[policy]]\nname = \"a\"\norganizers = [\"*@x.org\"]\naction = \"decline\"\n\
         [[policy]]\nname = \"b\"\norganizers = [\"*@x.org\"]\nmethods = [\"ADD\"]\naction = \"accept\"\n",
    )
    .is_err());
    assert!(rules(
        "[[policy]]\nname = \"a\"\nsummary = \"*standup*\"\naction = \"accept\"\n\
         [[policy]]\nname = \"b\"\nsummary = [\"*standup*\", \"*retro*\"]\naction = \"decline\"\n",
    )
    .is_ok());
    let e =
        rules("[[policy]]\nname = \"r\"\nmethods = [\"REPLY\", \"CANCEL\"]\naction = \"accept\"\n")
            .unwrap_err();
    assert!(e.message.contains("can never accept"), "{e:?}");
}

#[test]
fn a_command_policy_needs_its_program_and_checks_its_keys() {
    let r = rules(
        "[[policy]]\nname = \"bot\"\naction = \"command\"\ncommand = [\"/bin/decide\", \"-v\"]\ntimeout = \"5s\"\nfallback = \"tentative\"\n",
    )
    .unwrap();
    let hook = r[0].hook.as_ref().unwrap();
    assert_eq!(hook.command, ["/bin/decide", "-v"]);
    assert_eq!(hook.timeout, std::time::Duration::from_secs(5));
    assert_eq!(hook.fallback, Action::Tentative);
    let (c, o) = (comps(), originator());
    let v = decide(&r, &facts(&c, &o));
    assert_eq!(v.action, Action::Command);
    assert!(v.hook.is_some());
    // Defaults: 30 s, file.
    let r = rules("[[policy]]\nname = \"bot\"\naction = \"command\"\ncommand = [\"x\"]\n").unwrap();
    let hook = r[0].hook.as_ref().unwrap();
    assert_eq!((hook.timeout, hook.fallback), (HOOK_TIMEOUT, Action::File));
    for (text, key, says) in [
        ("action = \"command\"\n", "policy.command", "needs command"),
        (
            "action = \"command\"\ncommand = []\n",
            "policy.command",
            "list of strings",
        ),
        (
            "action = \"command\"\ncommand = \"x\"\n",
            "policy.command",
            "list of strings",
        ),
        (
            "action = \"command\"\ncommand = [\"x\"]\ntimeout = 0\n",
            "policy.timeout",
            "positive",
        ),
        (
            "action = \"command\"\ncommand = [\"x\"]\nfallback = \"command\"\n",
            "policy.fallback",
            "fallback must be",
        ),
        (
            "action = \"file\"\ncommand = [\"x\"]\n",
            "policy.command",
            "belongs to action",
        ),
        (
            "action = \"accept\"\ntimeout = 3\n",
            "policy.timeout",
            "belongs to action",
        ),
    ] {
        let e = rules(&format!("[[policy]]\nname = \"r\"\n{text}")).unwrap_err();
        assert_eq!(e.key, key, "{text}: {e:?}");
        assert!(e.message.contains(says), "{text}: {e:?}");
    }
}
