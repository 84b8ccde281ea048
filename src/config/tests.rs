//! Loading and validating configurations.

use super::*;

fn p(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("/etc/imipd/config.toml"), text)
}

const MIN: &str = "[identity]\naddresses = [\"Bob@Example.com\"]\n[store]\npath = \"cal\"\n";

#[test]
fn minimal_config_loads_with_relative_paths() {
    let c = p(MIN).unwrap();
    assert_eq!(c.identity.addresses, vec!["bob@example.com"]);
    assert_eq!(c.store.vdir_path(), Some(Path::new("/etc/imipd/cal")));
    assert!(c.identity.is_me("MAILTO:BOB@example.com"));
}

#[test]
fn unknown_key_names_key_and_line() {
    let e = p(&format!("{MIN}colour = 1\n")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("colour"));
    assert_eq!(e.position, Some((5, 1)));
    assert!(e.to_string().contains("/etc/imipd/config.toml"), "{e}");
}

#[test]
fn wrong_type_names_key() {
    let e = p("[identity]\naddresses = \"bob@example.com\"\n[store]\npath = \"c\"\n").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("addresses"));
    assert_eq!(e.position.map(|p| p.0), Some(2));
}

#[test]
fn bad_action_is_reported_with_position() {
    let e = p(&format!(
        "{MIN}[[policy]]\nname = \"x\"\naction = \"maybe\"\n"
    ))
    .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("policy.action"));
    assert_eq!(e.position, Some((7, 10)));
}

#[test]
fn unreachable_policies_fail_at_load_time() {
    let catch_all = format!("{MIN}[[policy]]\nname = \"all\"\naction = \"file\"\n[[policy]]\nname = \"late\"\nmethods = [\"REQUEST\"]\naction = \"accept\"\n");
    let e = p(&catch_all).unwrap_err();
    assert!(
        e.message.contains("`late` can never match") && e.message.contains("`all`"),
        "{e}"
    );
    assert_eq!(e.position.map(|p| p.0), Some(9));
    let shadowed = format!("{MIN}[[policy]]\nname = \"a\"\norganizers = [\"*@x.org\"]\naction = \"decline\"\n[[policy]]\nname = \"b\"\norganizers = [\"*@x.org\"]\nmethods = [\"ADD\"]\naction = \"accept\"\n");
    assert!(p(&shadowed).is_err());
    let fine = format!("{MIN}[outgoing]\ntransport = \"file\"\npath = \"out\"\n[[policy]]\nname = \"a\"\nmethods = [\"REQUEST\"]\naction = \"decline\"\n[[policy]]\nname = \"b\"\naction = \"file\"\n");
    assert!(p(&fine).is_ok());
}

#[test]
fn answering_a_method_that_is_never_answered_fails() {
    let e = p(&format!(
        "{MIN}[[policy]]\nname = \"r\"\nmethods = [\"REPLY\", \"CANCEL\"]\naction = \"accept\"\n"
    ))
    .unwrap_err();
    assert!(e.message.contains("can never accept"), "{e}");
}

#[test]
fn tilde_expands() {
    std::env::set_var("HOME", "/home/bob");
    let c = p("[identity]\naddresses = [\"b@x.org\"]\n[store]\npath = \"~/cal\"\n").unwrap();
    assert_eq!(c.store.vdir_path(), Some(Path::new("/home/bob/cal")));
}

#[test]
fn two_secrets_are_an_error() {
    let e = p(&format!(
        "{MIN}[[account]]\nname = \"w\"\nsource = \"imap\"\nhost = \"h\"\nusername = \"u\"\npassword = \"a\"\npassword_command = \"b\"\n"
    ))
    .unwrap_err();
    assert!(e.message.contains("only one"), "{e}");
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("90m"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("PT1H30M"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("P2D"), Some(Duration::from_secs(172800)));
    assert_eq!(parse_duration("soon"), None);
}

#[test]
fn trust_section_is_checked() {
    let c = p(&format!(
        "{MIN}[authentication]\ntrusted_authserv_ids = [\"MX.example.com\"]\n[trust]\nrequire = \"authenticated\"\ntrusted_authserv_ids = [\"mx2.example.com\"]\n\
         [[trust.relay]]\nfrom = \"Noreply@Cloud.example.com\"\norganizers = [\"*@example.com\"]\n"
    ))
    .unwrap();
    assert_eq!(c.trust.require, crate::trust::Require::Authenticated);
    assert_eq!(
        c.trust.authserv_ids,
        vec!["mx.example.com", "mx2.example.com"]
    );
    assert_eq!(c.trust.relays[0].from, "noreply@cloud.example.com");
    let e = p(&format!("{MIN}[trust]\nrequire = \"maybe\"\n")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("trust.require"));
    let e = p(&format!(
        "{MIN}[outgoing]\ntransport = \"file\"\npath = \"o\"\nsign = \"smime\"\n"
    ))
    .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("outgoing.sign"));
    assert!(e.message.contains("smime_certificate"), "{e}");
    let e = p(&format!(
        "{MIN}[[trust.relay]]\nfrom = \"x@y.z\"\norganizers = []\n"
    ))
    .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("trust.relay.organizers"));
    let e = p(&format!(
        "{MIN}[trust]\nsmime_ca_files = [\"/nonexistent/ca.pem\"]\n"
    ))
    .unwrap_err();
    assert_eq!(e.key.as_deref(), Some("trust.smime_ca_files"));
    assert!(
        e.message.starts_with("cannot read /nonexistent/ca.pem"),
        "{e}"
    );
}

#[test]
fn each_person_has_the_trust_of_their_own_identity() {
    let two = "[trust]\nrequire = \"authenticated\"\n\
        [[account]]\nname = \"a\"\nsource = \"maildir\"\npath = \"ma\"\n\
        identity = { addresses = [\"a@example.com\"] }\nstore = { path = \"ca\" }\n\
        [[account]]\nname = \"b\"\nsource = \"maildir\"\npath = \"mb\"\n\
        identity = { addresses = [\"b@example.com\"], smime_key = \"k.pem\" }\nstore = { path = \"cb\" }\n";
    // A key without its certificate is named in the account's identity.
    let e = p(two).unwrap_err();
    assert_eq!(
        e.key.as_deref(),
        Some("account.identity.smime_certificate"),
        "{e}"
    );
    let ok = two.replace(", smime_key = \"k.pem\"", "");
    let c = p(&ok).unwrap();
    let b = c.for_account(Some("b")).unwrap();
    assert_eq!(b.identity.addresses, vec!["b@example.com"]);
    assert_eq!(b.trust.require, crate::trust::Require::Authenticated);
    assert!(b.answer_edits);
    // Signing needs every person's key: the message names whose is missing.
    let e = p(&format!(
        "{ok}[outgoing]\ntransport = \"file\"\npath = \"o\"\nsign = \"pgp\"\n"
    ))
    .unwrap_err();
    assert!(e.message.contains("account.identity pgp_secret_key"), "{e}");
}

#[test]
fn edits_are_followed_in_a_vdir_only() {
    let caldav = "[identity]\naddresses = [\"bob@example.com\"]\n\
        [store]\ntype = \"caldav\"\nurl = \"https://dav.example.com/\"\n";
    assert!(!p(caldav).unwrap().answer_edits);
    let e = p(&format!("{caldav}answer_edits = true\n")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("store.answer_edits"), "{e}");
    assert!(
        !p(&format!("{MIN}answer_edits = false\n"))
            .unwrap()
            .answer_edits
    );
    assert!(p(MIN).unwrap().answer_edits);
}

#[test]
fn a_missing_section_says_so_with_an_example() {
    let e = p("[store]\npath = \"c\"\n").unwrap_err();
    assert!(e.message.contains("missing section [identity]"), "{e}");
    assert!(
        e.message.contains("addresses = [\"you@example.com\"]"),
        "{e}"
    );
    let e = p("[identity]\naddresses = [\"b@x.org\"]\n").unwrap_err();
    assert!(e.message.contains("missing section [store]"), "{e}");
    let e = p("").unwrap_err();
    assert!(e.message.contains("missing section [identity]"), "{e}");
}
