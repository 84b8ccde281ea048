//! Hostile mail that tries to change someone else's event or to make imipd
//! mail an address the attacker chooses (issue 10, items 2–7), end to end
//! through `imipd process`: self-declared SENT-BY, two ORGANIZERs and other
//! invalid objects, Authentication-Results bound to the identity used, mail
//! "from me", caps that fold sub-addresses and count globally, and no
//! automatic answers into loops or mailing lists.

use crate::support::*;

const ALICE: &str = "Alice <alice@example.com>";

fn answering(extra: &str) -> String {
    format!(
        "{extra}[outgoing]\ntransport = \"file\"\npath = \"outbox\"\n\
         [[policy]]\nname = \"yes\"\nmethods = [\"REQUEST\", \"ADD\"]\naction = \"accept\"\n"
    )
}

fn invitation(uid: &str, organizer_line: &str, extra: &[&str]) -> String {
    let mut lines = vec![
        format!("UID:{uid}"),
        "SEQUENCE:0".to_string(),
        "DTSTAMP:20261120T100000Z".to_string(),
        "DTSTART:20270105T090000Z".to_string(),
        "DTEND:20270105T100000Z".to_string(),
        "SUMMARY:Planning".to_string(),
        organizer_line.to_string(),
        "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.com".to_string(),
    ];
    lines.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    vevent(&refs)
}

/// RFC 6047 §3 / RFC 2447 §3: the calendar user decides before changes from
/// someone acting on another's behalf are applied. A SENT-BY counts only
/// when the stored event names it for that person, or the configuration
/// trusts it (`[identity] trusted_sent_by`).
#[test]
fn a_self_declared_sent_by_grants_nothing() {
    let sent_by = "ORGANIZER;SENT-BY=\"mailto:assistant@example.com\":mailto:boss@example.com";
    let new = mail(
        "assistant@example.com",
        "REQUEST",
        &[invitation("sb-1@example.com", sent_by, &[])],
    );
    // A new invitation sent for someone else: filed, never answered.
    let env = Env::new(&answering(""));
    let o = env.one(&new);
    assert_eq!(first(&o)["effect"], "created", "{o}");
    assert!(reply_text(first(&o)).contains("SENT-BY"), "{o}");
    assert!(env.sent_in("outbox").is_empty());
    // Trusted by the configuration: answered.
    let env2 = Env::new(&answering(""));
    let text = std::fs::read_to_string(&env2.config).unwrap().replace(
        "name = \"Bob Example\"\n",
        "name = \"Bob Example\"\ntrusted_sent_by = [\"assistant@example.com\"]\n",
    );
    std::fs::write(&env2.config, text).unwrap();
    let o = env2.one(&new);
    assert!(
        reply_text(first(&o)).starts_with("queued to boss@example.com"),
        "{o}"
    );
    // An event from the boss himself: a CANCEL "sent by" someone the event
    // does not name changes nothing.
    let env = Env::new("");
    env.one(&mail(
        "boss@example.com",
        "REQUEST",
        &[invitation(
            "sb-2@example.com",
            "ORGANIZER:mailto:boss@example.com",
            &[],
        )],
    ));
    let before = env.store_files();
    let forged = mail(
        "mallory@evil.example",
        "CANCEL",
        &[vevent(&[
            "UID:sb-2@example.com",
            "SEQUENCE:1",
            "DTSTAMP:20261121T100000Z",
            "ORGANIZER;SENT-BY=\"mailto:mallory@evil.example\":mailto:boss@example.com",
            "ATTENDEE:mailto:bob@example.com",
        ])],
    );
    let o = env.one(&forged);
    assert_eq!(first(&o)["effect"], "refused", "{o}");
    assert_eq!(env.store_files(), before);
    // An event that names its SENT-BY: updates sent by it apply.
    let env = Env::new("");
    env.one(&mail(
        "boss@example.com",
        "REQUEST",
        &[invitation("sb-3@example.com", sent_by, &[])],
    ));
    let update = mail(
        "assistant@example.com",
        "REQUEST",
        &[invitation("sb-3@example.com", sent_by, &["X-NOTE:moved"])
            .replace("SEQUENCE:0", "SEQUENCE:1")
            .replace("20270105T090000Z", "20270106T090000Z")],
    );
    let o = env.one(&update);
    assert_eq!(first(&o)["effect"], "updated", "{o}");
}

/// One ORGANIZER: a component with two, or an object `classify` calls
/// invalid in a way that makes acting on it unsafe, changes nothing, is
/// never answered, and can be quarantined by a `valid = false` policy.
#[test]
fn two_organizers_and_other_invalid_objects_change_nothing() {
    let env = Env::new(&answering(""));
    env.one(&mail(
        ALICE,
        "REQUEST",
        &[invitation(
            "inv-1@example.com",
            "ORGANIZER:mailto:alice@example.com",
            &[],
        )],
    ));
    let before = env.store_files();
    let sent_before = env.sent_in("outbox").len();
    let two_organizers = mail(
        "mallory@evil.example",
        "CANCEL",
        &[vevent(&[
            "UID:inv-1@example.com",
            "SEQUENCE:5",
            "DTSTAMP:20261121T100000Z",
            "ORGANIZER:mailto:alice@example.com",
            "ORGANIZER:mailto:mallory@evil.example",
            "ATTENDEE:mailto:bob@example.com",
        ])],
    );
    let o = env.one(&two_organizers);
    assert_eq!(o["valid"], false, "{o}");
    assert_eq!(first(&o)["effect"], "ignored", "{o}");
    let duplicate_start = mail(
        ALICE,
        "REQUEST",
        &[invitation(
            "inv-2@example.com",
            "ORGANIZER:mailto:alice@example.com",
            &["DTSTART:20270107T090000Z"],
        )],
    );
    let o = env.one(&duplicate_start);
    assert_eq!(first(&o)["effect"], "ignored", "{o}");
    assert!(reply_text(first(&o)).starts_with("not sent"), "{o}");
    let mismatch = mail(
        ALICE,
        "REQUEST",
        &[invitation(
            "inv-3@example.com",
            "ORGANIZER:mailto:alice@example.com",
            &[],
        )],
    )
    .replace("method=REQUEST", "method=CANCEL");
    let o = env.one(&mismatch);
    assert_eq!(first(&o)["effect"], "ignored", "{o}");
    assert_eq!(env.store_files(), before, "nothing filed or changed");
    assert_eq!(env.sent_in("outbox").len(), sent_before, "nothing answered");
    // Quarantined where configured.
    let env = Env::new("[[policy]]\nname = \"broken\"\nvalid = false\naction = \"quarantine\"\n");
    let o = env.one(&two_organizers);
    assert_eq!(o["quarantine"], true, "{o}");
    assert_eq!(
        std::fs::read_dir(env.path("state/quarantine"))
            .unwrap()
            .count(),
        1
    );
}

/// Authentication-Results count only for the single From mailbox the sender
/// check used, with `header.from` equal to its domain; several From fields
/// or mailboxes, or entitlement through Sender or SENT-BY, are not
/// authenticated.
#[test]
fn authenticated_binds_to_the_single_from_mailbox() {
    let env = Env::new(
        "[authentication]\ntrusted_authserv_ids = [\"mx.example.com\"]\n\
         [outgoing]\ntransport = \"file\"\npath = \"outbox\"\n\
         [[policy]]\nname = \"proven\"\nmethods = [\"REQUEST\"]\nauthenticated = true\naction = \"accept\"\n",
    );
    let ar = "Authentication-Results: mx.example.com; dkim=pass header.d=example.com; dmarc=pass header.from=example.com\r\n";
    let inv = |uid: &str| {
        mail(
            ALICE,
            "REQUEST",
            &[invitation(uid, "ORGANIZER:mailto:alice@example.com", &[])],
        )
    };
    let o = env.one(&format!("{ar}{}", inv("auth-1@example.com")));
    assert_eq!(first(&o)["policy"], "proven", "{o}");
    assert_eq!(first(&o)["originator"]["proof"], "dmarc", "{o}");
    let cases = [
        // Two mailboxes in From.
        format!("{ar}{}", inv("auth-2@example.com")).replace(
            "From: Alice <alice@example.com>",
            "From: alice@example.com, mallory@evil.example",
        ),
        // Two From fields.
        format!(
            "{ar}From: mallory@evil.example\r\n{}",
            inv("auth-3@example.com")
        ),
        // Entitled through Sender only.
        format!("{ar}{}", inv("auth-4@example.com")).replace(
            "From: Alice <alice@example.com>",
            "From: noreply@example.com\r\nSender: alice@example.com",
        ),
        // DMARC for another domain than the From mailbox's.
        format!(
            "Authentication-Results: mx.example.com; dmarc=pass header.from=evil.example\r\n{}",
            inv("auth-5@example.com")
        ),
    ];
    for raw in &cases {
        let o = env.one(raw);
        assert_eq!(first(&o)["policy"], "default", "not authenticated: {o}");
        assert!(
            first(&o)["originator"].is_null() || first(&o)["originator"]["proof"] == "from",
            "{o}"
        );
    }
    // Entitled through a SENT-BY: never authenticated.
    let sent_by = format!(
        "{ar}{}",
        mail(
            "assistant@example.com",
            "REQUEST",
            &[invitation(
                "auth-6@example.com",
                "ORGANIZER;SENT-BY=\"mailto:assistant@example.com\":mailto:alice@example.com",
                &[],
            )],
        )
    );
    let o = env.one(&sent_by);
    assert_eq!(first(&o)["policy"], "default", "{o}");
}

/// Anyone can write my address into From: such mail may teach imipd a new
/// event I organize, but never changes or cancels one already stored, and an
/// event learned that way never makes imipd send mail (REFRESH answers,
/// DECLINECOUNTER) unless my mail server verified it.
#[test]
fn mail_from_me_proves_nothing() {
    let env = Env::new(
        "[authentication]\ntrusted_authserv_ids = [\"mx.example.com\"]\n\
         [outgoing]\ntransport = \"file\"\npath = \"outbox\"\n\
         [[policy]]\nname = \"refresh\"\nmethods = [\"REFRESH\"]\naction = \"accept\"\n\
         [[policy]]\nname = \"counter\"\nmethods = [\"COUNTER\"]\naction = \"decline\"\n",
    );
    let mine = |uid: &str, attendee: &str| {
        mail(
            "bob@example.com",
            "REQUEST",
            &[vevent(&[
                &format!("UID:{uid}"),
                "SEQUENCE:0",
                "DTSTAMP:20261120T100000Z",
                "DTSTART:20270105T090000Z",
                "SUMMARY:Attacker text",
                "ORGANIZER:mailto:bob@example.com",
                &format!("ATTENDEE:mailto:{attendee}"),
            ])],
        )
    };
    // A forged event "from me" naming the victim, then a REFRESH from the victim's
    // address: no mail leaves.
    let o = env.one(&mine("forged@example.com", "victim@example.org"));
    assert_eq!(first(&o)["effect"], "created", "{o}");
    let refresh = mail(
        "victim@example.org",
        "REFRESH",
        &[vevent(&[
            "UID:forged@example.com",
            "DTSTAMP:20261121T100000Z",
            "ORGANIZER:mailto:bob@example.com",
            "ATTENDEE:mailto:victim@example.org",
        ])],
    );
    let o = env.one(&refresh);
    assert!(reply_text(first(&o)).starts_with("not sent"), "{o}");
    assert!(
        env.sent_in("outbox").is_empty(),
        "nothing mailed to the victim"
    );
    // My own event, verified by my server; a forged CANCEL and a forged
    // update "from me" change nothing.
    let ar = "Authentication-Results: mx.example.com; dmarc=pass header.from=example.com\r\n";
    env.one(&format!(
        "{ar}{}",
        mine("real@example.com", "erin@example.com")
    ));
    let before = env.store_files();
    let cancel = mail(
        "bob@example.com",
        "CANCEL",
        &[vevent(&[
            "UID:real@example.com",
            "SEQUENCE:1",
            "DTSTAMP:20261122T100000Z",
            "ORGANIZER:mailto:bob@example.com",
            "ATTENDEE:mailto:erin@example.com",
        ])],
    );
    let o = env.one(&cancel);
    assert_eq!(first(&o)["effect"], "refused", "{o}");
    let update = mine("real@example.com", "erin@example.com").replace("SEQUENCE:0", "SEQUENCE:3");
    let o = env.one(&update);
    assert_eq!(first(&o)["effect"], "refused", "{o}");
    assert_eq!(env.store_files(), before);
    // Verified, the same CANCEL applies.
    let o = env.one(&format!("{ar}{cancel}"));
    assert_eq!(first(&o)["effect"], "cancelled", "{o}");
}

/// Caps an attacker cannot sidestep: sub-addresses and case fold into one
/// organizer, and a global hourly cap holds answers to anyone; what a cap
/// holds back stays unanswered (NEEDS-ACTION) in the store.
#[test]
fn caps_fold_sub_addresses_and_count_globally() {
    let env = Env::new(&answering("").replace(
        "path = \"outbox\"\n",
        "path = \"outbox\"\nmax_replies_per_hour = 2\nmax_answers_per_hour = 3\n",
    ));
    let from = |addr: &str, uid: &str| {
        mail(
            addr,
            "REQUEST",
            &[invitation(uid, &format!("ORGANIZER:mailto:{addr}"), &[])],
        )
    };
    let outcomes: Vec<serde_json::Value> = [
        ("alice@example.com", "c1@x"),
        ("alice+x@example.com", "c2@x"),
        ("Alice+y@Example.com", "c3@x"),
        ("carol@example.com", "c4@x"),
        ("dave@example.com", "c5@x"),
    ]
    .iter()
    .map(|(a, u)| env.one(&from(a, u)))
    .collect();
    let replies: Vec<String> = outcomes
        .iter()
        .map(|o| reply_text(first(o)).to_string())
        .collect();
    assert!(
        replies[0].starts_with("queued") && replies[1].starts_with("queued"),
        "{replies:#?}"
    );
    assert!(replies[2].contains("max_replies_per_hour"), "{replies:#?}");
    assert!(replies[3].starts_with("queued"), "{replies:#?}");
    assert!(replies[4].contains("max_answers_per_hour"), "{replies:#?}");
    assert_eq!(env.sent_in("outbox").len(), 3);
    let held_back = stored(&env, "c3@x").unwrap();
    assert!(held_back.contains("PARTSTAT=NEEDS-ACTION"), "{held_back}");
}

/// RFC 3834 §2: never answer mail that is itself an automatic reply, and
/// never send an automatic answer to the mailing list the mail came
/// through. Calendar servers' own invitations (auto-generated) are answered.
#[test]
fn no_automatic_answers_into_loops_or_lists() {
    let env = Env::new(&answering(""));
    let inv = |uid: &str, org: &str| {
        mail(
            org,
            "REQUEST",
            &[invitation(uid, &format!("ORGANIZER:mailto:{org}"), &[])],
        )
    };
    let o = env.one(&format!(
        "Auto-Submitted: auto-replied\r\n{}",
        inv("l1@x", "alice@example.com")
    ));
    assert_eq!(first(&o)["effect"], "created", "{o}");
    assert!(reply_text(first(&o)).contains("auto-replied"), "{o}");
    let o = env.one(&format!(
        "List-Id: Team <team.lists.example.com>\r\nList-Post: <mailto:team@lists.example.com>\r\n{}",
        inv("l2@x", "team@lists.example.com")
    ));
    assert_eq!(first(&o)["effect"], "created", "{o}");
    assert!(reply_text(first(&o)).contains("mailing list"), "{o}");
    let o = env.one(&format!(
        "List-Id: <team.lists.example.com>\r\n{}",
        inv("l3@x", "team@lists.example.com")
    ));
    assert!(reply_text(first(&o)).contains("mailing list"), "{o}");
    assert!(env.sent_in("outbox").is_empty());
    // Sabre/Nextcloud mark genuine invitations auto-generated: answered.
    let o = env.one(&format!(
        "Auto-Submitted: auto-generated\r\n{}",
        inv("l4@x", "alice@example.com")
    ));
    assert!(reply_text(first(&o)).starts_with("queued"), "{o}");
    // A list member's own invitation through a list is answered to them.
    let o = env.one(&format!(
        "List-Id: <team.lists.example.com>\r\n{}",
        inv("l5@x", "carol@example.com")
    ));
    assert!(
        reply_text(first(&o)).starts_with("queued to carol@example.com"),
        "{o}"
    );
}
