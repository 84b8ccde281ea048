//! The `[[policy]]` rules: facts about one iTIP message → the first rule
//! that matches, its action, and why it matched. Pure: the caller gathers
//! the facts (some cost I/O — conflicts scan the store, `known_sender` reads
//! the address book — and are only gathered when a rule asks for them).
//! With no rule matching, the action is `file`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::address;
use crate::config::{Action, PolicyConfig};

/// What is known about one iTIP message, for matching.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub method: String,
    /// VEVENT, VTODO, ...
    pub component: String,
    /// The ORGANIZER, canonical (`mailto:` lower-case).
    pub organizer: Option<String>,
    /// The mail's From address, bare.
    pub sender: Option<String>,
    /// The organizer is in the address book (`None`: not looked up).
    pub known_sender: Option<bool>,
    /// DKIM or DMARC pass from a trusted receiving server.
    pub authenticated: bool,
    /// Overlaps a busy event in the store (`None`: not looked up).
    pub conflict: Option<bool>,
    pub recurring: bool,
    /// The calendar data breaks no rule that makes acting on it unsafe.
    pub valid: bool,
    pub duration: Option<Duration>,
    /// The next start (the first occurrence not yet over), UTC.
    pub start: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
    pub account: Option<String>,
    pub folder: Option<String>,
}

/// The rule that decided, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The policy's name; `default` when none matched.
    pub policy: String,
    pub action: Action,
    pub comment: Option<String>,
    /// The matchers that matched, as words ("method REQUEST, organizer
    /// alice@example.com matches *@example.com").
    pub why: String,
}

/// Which facts the rules need gathered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub conflict: bool,
    pub known_sender: bool,
    /// The next start (RRULEs expanded), for `booking_window`.
    pub start: bool,
}

pub fn needs(rules: &[PolicyConfig]) -> Needs {
    Needs {
        conflict: rules.iter().any(|r| r.conflict.is_some()),
        known_sender: rules.iter().any(|r| r.known_sender.is_some()),
        start: rules.iter().any(|r| r.booking_window.is_some()),
    }
}

/// The first rule that matches, or the default `file`.
pub fn decide(rules: &[PolicyConfig], f: &Facts) -> Verdict {
    for r in rules {
        if let Some(why) = matches(r, f) {
            return Verdict {
                policy: r.name.clone(),
                action: r.action,
                comment: r.comment.clone(),
                why: if why.is_empty() {
                    "it matches every message".into()
                } else {
                    why.join(", ")
                },
            };
        }
    }
    Verdict {
        policy: "default".into(),
        action: Action::File,
        comment: None,
        why: "no policy matched".into(),
    }
}

/// `Some(reasons)` when every matcher of the rule holds.
fn matches(r: &PolicyConfig, f: &Facts) -> Option<Vec<String>> {
    let mut why = Vec::new();
    if let Some(m) = &r.methods {
        if !m.contains(&f.method) {
            return None;
        }
        why.push(format!("method {}", f.method));
    }
    if let Some(c) = &r.components {
        if !c.contains(&f.component) {
            return None;
        }
        why.push(format!("component {}", f.component));
    }
    if let Some(globs) = &r.organizers {
        let org = f.organizer.as_deref()?;
        let g = globs.iter().find(|g| address::glob_matches(g, org))?;
        why.push(format!("organizer {} matches {g}", address::bare(org)));
    }
    if let Some(globs) = &r.senders {
        let s = f.sender.as_deref()?;
        let g = globs.iter().find(|g| address::glob_matches(g, s))?;
        why.push(format!("sender {s} matches {g}"));
    }
    if let Some(want) = r.known_sender {
        if f.known_sender? != want {
            return None;
        }
        why.push(
            if want {
                "organizer in the address book"
            } else {
                "organizer not in the address book"
            }
            .into(),
        );
    }
    if let Some(want) = r.authenticated {
        if f.authenticated != want {
            return None;
        }
        why.push(
            if want {
                "sender authenticated (DKIM/DMARC pass)"
            } else {
                "sender not authenticated"
            }
            .into(),
        );
    }
    if let Some(want) = r.conflict {
        if f.conflict? != want {
            return None;
        }
        why.push(
            if want {
                "conflicts with a busy event"
            } else {
                "no conflict"
            }
            .into(),
        );
    }
    if let Some(want) = r.recurring {
        if f.recurring != want {
            return None;
        }
        why.push(if want { "recurring" } else { "not recurring" }.into());
    }
    if let Some(want) = r.valid {
        if f.valid != want {
            return None;
        }
        why.push(
            if want {
                "valid"
            } else {
                "invalid calendar data"
            }
            .into(),
        );
    }
    if let Some(max) = r.max_duration {
        let d = f.duration?;
        if d > max {
            return None;
        }
        why.push(format!("lasts {} (at most {})", human(d), human(max)));
    }
    if let Some(window) = r.booking_window {
        let start = f.start?;
        let limit = chrono::Duration::from_std(window)
            .ok()
            .and_then(|w| f.now.checked_add_signed(w))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        if start > limit {
            return None;
        }
        why.push(format!("starts within {}", human(window)));
    }
    if let Some(accounts) = &r.accounts {
        let a = f.account.as_deref()?;
        if !accounts.iter().any(|x| x == a) {
            return None;
        }
        why.push(format!("account {a}"));
    }
    if let Some(folders) = &r.folders {
        let fo = f.folder.as_deref()?;
        if !folders.iter().any(|x| x == fo) {
            return None;
        }
        why.push(format!("folder {fo}"));
    }
    Some(why)
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86400) && s > 0 {
        format!("{}d", s / 86400)
    } else if s.is_multiple_of(3600) && s > 0 {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Whether the receiving server says the sender is authentic: an
/// `Authentication-Results` header from a trusted authserv-id (the topmost
/// one only: a sender can forge headers below it) with `dmarc=pass`, or
/// `dkim=pass` for the From domain or a parent of it.
pub fn authenticated(headers: &[String], trusted: &[String], from: Option<&str>) -> bool {
    let Some(from_domain) = from.and_then(address::domain) else {
        return false;
    };
    let Some(header) = headers.iter().find(|h| {
        let id = h
            .split(';')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("");
        trusted.iter().any(|t| t.eq_ignore_ascii_case(id))
    }) else {
        return false;
    };
    for clause in header.split(';').skip(1) {
        let mut words = clause.split_whitespace();
        let Some(result) = words.next() else { continue };
        let Some((method, value)) = result.split_once('=') else {
            continue;
        };
        if !value.eq_ignore_ascii_case("pass") {
            continue;
        }
        if method.eq_ignore_ascii_case("dmarc") {
            return true;
        }
        if method.eq_ignore_ascii_case("dkim") {
            for w in words {
                if let Some(d) = w
                    .strip_prefix("header.d=")
                    .or_else(|| w.strip_prefix("header.i="))
                {
                    let d = d.trim_start_matches('@').to_ascii_lowercase();
                    let d = d.rsplit('@').next().unwrap_or(&d).to_string();
                    if from_domain == d || from_domain.ends_with(&format!(".{d}")) {
                        return true;
                    }
                }
            }
        }
    }
    false
}

/// The e-mail addresses in an address book: every EMAIL of every vCard in
/// the `.vcf` files of a folder (parsed with calcard), lower-cased.
pub fn address_book(dir: &std::path::Path) -> anyhow::Result<std::collections::HashSet<String>> {
    use calcard::vcard::VCardProperty;
    let mut out = std::collections::HashSet::new();
    let rd = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot read address book {}: {e}", dir.display()))?;
    for entry in rd.flatten() {
        let path = entry.path();
        if !path
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("vcf"))
        {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let mut parser = calcard::Parser::new(&text);
        loop {
            match parser.entry() {
                calcard::Entry::VCard(card) => {
                    for e in card
                        .entries
                        .iter()
                        .filter(|e| e.name == VCardProperty::Email)
                    {
                        for v in &e.values {
                            if let Some(t) = v.as_text() {
                                out.insert(address::bare(t));
                            }
                        }
                    }
                }
                calcard::Entry::Eof => break,
                _ => {}
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, action: Action) -> PolicyConfig {
        PolicyConfig {
            name: name.into(),
            methods: None,
            components: None,
            organizers: None,
            senders: None,
            known_sender: None,
            authenticated: None,
            conflict: None,
            recurring: None,
            valid: None,
            max_duration: None,
            booking_window: None,
            accounts: None,
            folders: None,
            action,
            comment: None,
        }
    }

    fn facts() -> Facts {
        let now = DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        Facts {
            method: "REQUEST".into(),
            component: "VEVENT".into(),
            organizer: Some("mailto:alice@example.com".into()),
            sender: Some("alice@example.com".into()),
            known_sender: Some(true),
            authenticated: true,
            conflict: Some(false),
            recurring: false,
            valid: true,
            duration: Some(Duration::from_secs(3600)),
            start: Some(now + chrono::Duration::days(3)),
            now,
            account: Some("work".into()),
            folder: Some("INBOX".into()),
        }
    }

    fn check(r: PolicyConfig, f: &Facts) -> bool {
        decide(&[r], f).policy != "default"
    }

    #[test]
    fn no_rule_means_file() {
        let v = decide(&[], &facts());
        assert_eq!((v.policy.as_str(), v.action), ("default", Action::File));
    }

    #[test]
    fn first_match_wins() {
        let mut a = rule("a", Action::Decline);
        a.methods = Some(vec!["CANCEL".into()]);
        let b = rule("b", Action::Accept);
        let c = rule("c", Action::Ignore);
        let v = decide(&[a, b, c], &facts());
        assert_eq!((v.policy.as_str(), v.action), ("b", Action::Accept));
    }

    #[test]
    fn matcher_methods_and_components() {
        let mut r = rule("r", Action::Accept);
        r.methods = Some(vec!["REQUEST".into(), "ADD".into()]);
        r.components = Some(vec!["VEVENT".into()]);
        assert!(check(r.clone(), &facts()));
        r.components = Some(vec!["VTODO".into()]);
        assert!(!check(r, &facts()));
    }

    #[test]
    fn matcher_organizers_and_senders() {
        let mut r = rule("r", Action::Accept);
        r.organizers = Some(vec!["*@example.com".into()]);
        r.senders = Some(vec!["example.com".into()]);
        assert!(check(r.clone(), &facts()));
        let mut f = facts();
        f.sender = Some("alice@evil.example".into());
        assert!(!check(r.clone(), &f));
        let mut f = facts();
        f.organizer = None;
        assert!(!check(r, &f));
    }

    #[test]
    fn matcher_known_sender_authenticated_conflict_recurring() {
        for (set, want) in [(true, true), (false, false)] {
            let mut r = rule("r", Action::Accept);
            r.known_sender = Some(set);
            assert_eq!(check(r, &facts()), want);
            let mut r = rule("r", Action::Accept);
            r.authenticated = Some(set);
            assert_eq!(check(r, &facts()), want);
            let mut r = rule("r", Action::Accept);
            r.conflict = Some(!set);
            assert_eq!(check(r, &facts()), want);
            let mut r = rule("r", Action::Accept);
            r.recurring = Some(!set);
            assert_eq!(check(r, &facts()), want);
        }
        let mut r = rule("r", Action::Accept);
        r.conflict = Some(false);
        let mut f = facts();
        f.conflict = None;
        assert!(!check(r, &f), "an unknown fact never matches");
    }

    #[test]
    fn matcher_max_duration_and_booking_window() {
        let mut r = rule("r", Action::Accept);
        r.max_duration = Some(Duration::from_secs(7200));
        assert!(check(r.clone(), &facts()));
        r.max_duration = Some(Duration::from_secs(1800));
        assert!(!check(r, &facts()));
        let mut r = rule("r", Action::Accept);
        r.booking_window = Some(Duration::from_secs(7 * 86400));
        assert!(check(r.clone(), &facts()));
        r.booking_window = Some(Duration::from_secs(86400));
        assert!(!check(r, &facts()));
    }

    #[test]
    fn a_huge_booking_window_does_not_overflow() {
        let mut r = rule("r", Action::Accept);
        r.booking_window = Some(Duration::from_secs(u64::MAX / 4));
        assert!(check(r, &facts()));
    }

    #[test]
    fn matcher_account_and_folder() {
        let mut r = rule("r", Action::Accept);
        r.accounts = Some(vec!["work".into()]);
        r.folders = Some(vec!["INBOX".into()]);
        assert!(check(r.clone(), &facts()));
        r.folders = Some(vec!["Archive".into()]);
        assert!(!check(r, &facts()));
    }

    #[test]
    fn every_action_is_returned_with_its_comment() {
        for a in [
            Action::Accept,
            Action::Decline,
            Action::Tentative,
            Action::File,
            Action::Ignore,
            Action::Quarantine,
        ] {
            let mut r = rule("r", a);
            r.comment = Some("note".into());
            let v = decide(&[r], &facts());
            assert_eq!(v.action, a);
            assert_eq!(v.comment.as_deref(), Some("note"));
        }
    }

    #[test]
    fn authentication_results() {
        let trusted = vec!["mx.example.com".to_string()];
        let pass = vec!["mx.example.com; dkim=pass header.d=example.com; spf=pass".to_string()];
        assert!(authenticated(&pass, &trusted, Some("alice@example.com")));
        assert!(authenticated(&pass, &trusted, Some("alice@eu.example.com")));
        assert!(
            !authenticated(&pass, &trusted, Some("alice@evil.example")),
            "DKIM of another domain"
        );
        assert!(
            !authenticated(&pass, &["other.example".into()], Some("alice@example.com")),
            "untrusted server"
        );
        let dmarc =
            vec!["mx.example.com; dkim=fail; dmarc=pass header.from=example.com".to_string()];
        assert!(authenticated(&dmarc, &trusted, Some("alice@example.com")));
        let forged_below = vec![
            "mx.example.com; dkim=fail header.d=example.com".to_string(),
            "mx.example.com; dmarc=pass".to_string(),
        ];
        assert!(!authenticated(
            &forged_below,
            &trusted,
            Some("alice@example.com")
        ));
    }

    #[test]
    fn address_book_reads_vcards() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("a.vcf"),
            "BEGIN:VCARD\r\nVERSION:4.0\r\nFN:Alice\r\nEMAIL;TYPE=work:Alice@Example.com\r\nEND:VCARD\r\n\
             BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Carol\r\nEMAIL:carol@example.org\r\nEND:VCARD\r\n",
        )
        .unwrap();
        let book = address_book(d.path()).unwrap();
        assert!(book.contains("alice@example.com") && book.contains("carol@example.org"));
    }
}
