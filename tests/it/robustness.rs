//! Never panic, whatever the input: hostile shapes, and a deterministic
//! mutation run over the whole fixture corpus through classification and
//! the full processing path on a scratch store.

use std::path::Path;

use imipd::classify::classify;
use imipd::config::{Config, Limits};
use imipd::process::Processor;

use crate::support::Rng;

fn calendar_mail(content_type: &str, body: &str) -> String {
    format!("From: alice@example.com\r\nMessage-ID: <h@x>\r\nContent-Type: {content_type}\r\n\r\n{body}")
}

const EVENT: &str = "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:h1\r\n\
    DTSTAMP:20261120T100000Z\r\nDTSTART:20261201T100000Z\r\nORGANIZER:mailto:alice@example.com\r\n\
    ATTENDEE:mailto:bob@example.com\r\nSUMMARY:S\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";

#[test]
fn a_200_kb_property_is_read() {
    let big = format!("DESCRIPTION:{}\r\n", "x".repeat(200 * 1024));
    let body = EVENT.replace("SUMMARY:S\r\n", &big);
    let r = classify(
        calendar_mail("text/calendar; method=REQUEST", &body).as_bytes(),
        "big.eml",
        &Limits::default(),
    )
    .report;
    assert!(r.imip && r.valid, "{:?}", r.problems);
}

#[test]
fn a_part_over_the_limit_is_reported() {
    let limits = Limits {
        max_part_bytes: 1000,
        ..Limits::default()
    };
    let body = EVENT.replace("SUMMARY:S", &format!("SUMMARY:{}", "y".repeat(2000)));
    let r = classify(
        calendar_mail("text/calendar; method=REQUEST", &body).as_bytes(),
        "big.eml",
        &limits,
    )
    .report;
    assert!(!r.valid);
    assert!(r.problems[0].contains("max_part_bytes"), "{:?}", r.problems);
}

fn nested(levels: usize, forward_every: usize) -> String {
    let mut s = String::from("From: alice@example.com\r\n");
    for i in 0..levels {
        if forward_every > 0 && i % forward_every == 1 {
            s.push_str("Content-Type: message/rfc822\r\n\r\nFrom: alice@example.com\r\n");
        } else {
            s.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
            ));
        }
    }
    s.push_str("Content-Type: text/calendar; method=REQUEST\r\n\r\n");
    s.push_str(EVENT);
    s
}

#[test]
fn fifteen_levels_of_nesting_are_walked() {
    for forward_every in [0, 3] {
        let r = classify(
            nested(15, forward_every).as_bytes(),
            "n.eml",
            &Limits::default(),
        )
        .report;
        assert!(r.imip, "forward_every={forward_every}: {:?}", r.problems);
    }
}

#[test]
fn a_hundred_levels_of_nesting_stop_at_the_limit_with_a_reason() {
    for forward_every in [0, 2] {
        let r = classify(
            nested(100, forward_every).as_bytes(),
            "n.eml",
            &Limits::default(),
        )
        .report;
        assert!(!r.imip);
        assert!(!r.valid);
        assert!(
            r.problems.iter().any(|p| p.contains("max_depth")),
            "{:?}",
            r.problems
        );
    }
}

#[test]
fn invalid_utf8_is_read_lossily() {
    let mut raw = calendar_mail("text/calendar; method=REQUEST", "").into_bytes();
    raw.extend_from_slice(
        EVENT
            .replace("SUMMARY:S", "SUMMARY:\u{1}caf\u{0}")
            .as_bytes(),
    );
    raw.extend_from_slice(b"X-BAD:\xff\xfe\xc3\r\n");
    let r = classify(&raw, "u.eml", &Limits::default()).report;
    assert!(r.imip, "{:?}", r.problems);
}

#[test]
fn ten_thousand_attendees_are_summarized() {
    let many: String = (0..10_000)
        .map(|i| format!("ATTENDEE:mailto:a{i}@example.com\r\n"))
        .collect();
    let body = EVENT.replace("SUMMARY:S\r\n", &many);
    let r = classify(
        calendar_mail("text/calendar; method=REQUEST", &body).as_bytes(),
        "many.eml",
        &Limits::default(),
    )
    .report;
    assert_eq!(r.messages[0].components[0].attendees.len(), 10_001);
}

const SNIPPETS: [&[u8]; 10] = [
    b"BEGIN:VEVENT\r\n",
    b"END:VCALENDAR\r\n",
    b"\r\n--",
    b"Content-Type: message/rfc822\r\n\r\n",
    b"RECURRENCE-ID;RANGE=THISANDFUTURE:20261208T100000Z\r\n",
    b"UID:../../x\r\n",
    b"METHOD:CANCEL\r\n",
    b"\xff\xfe\x00",
    b"=\r\n",
    b"ATTENDEE;PARTSTAT=ACCEPTED:mailto:mallory@evil.example\r\n",
];

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.index(4) {
        let at = rng.index(v.len() + 1);
        match rng.index(5) {
            0 => v.truncate(at),
            1 if at < v.len() => v[at] = rng.next() as u8,
            2 => {
                let s = SNIPPETS[rng.index(SNIPPETS.len())];
                v.splice(at..at, s.iter().copied());
            }
            3 => {
                let end = (at + rng.index(400)).min(v.len());
                let chunk = v[at..end].to_vec();
                v.splice(at..at, chunk);
            }
            _ => {
                let end = (at + rng.index(200)).min(v.len());
                v.drain(at..end);
            }
        }
    }
    v
}

#[test]
fn mutated_corpus_never_panics_through_classify_and_process() {
    let corpus: Vec<Vec<u8>> = crate::classify_fixtures::corpus()
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();

    let scratch = tempfile::tempdir().unwrap();
    let mut cfg = Config::minimal(&["bob@example.com".to_string()]);
    cfg.store = imipd::config::StoreConfig::Vdir {
        path: scratch.path().join("calendar"),
    };
    cfg.state = scratch.path().join("state");
    let mut p = Processor::open(std::sync::Arc::new(cfg.clone()), false).unwrap();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for round in 0..30 {
        for raw in &corpus {
            let m = mutate(&mut rng, raw);
            let _ = classify(&m, "m.eml", &cfg.limits);
            let out = p.process(&m, &format!("mutant-{round}"));
            assert!(out.error.is_none(), "processing failed: {:?}", out.error);
        }
    }
    // Nothing was written outside the scratch store and state.
    let names: Vec<String> = std::fs::read_dir(scratch.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    for f in std::fs::read_dir(scratch.path().join("calendar"))
        .unwrap()
        .flatten()
    {
        let n = f.file_name().to_string_lossy().into_owned();
        assert!(n.ends_with(".ics") && !n.starts_with('.'), "{n}");
    }
}

/// Every input the fuzzer ever crashed on (`tests/fixtures/fuzz/`, added by
/// `scripts/fuzz`), through classification and processing.
#[test]
fn regression_fuzz_crashers_are_handled() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(!files.is_empty());
    let scratch = tempfile::tempdir().unwrap();
    let mut cfg = Config::minimal(&["bob@example.com".to_string()]);
    cfg.store = imipd::config::StoreConfig::Vdir {
        path: scratch.path().join("calendar"),
    };
    cfg.state = scratch.path().join("state");
    let mut p = Processor::open(std::sync::Arc::new(cfg.clone()), false).unwrap();
    for f in files {
        let raw = std::fs::read(&f).unwrap();
        let r = classify(&raw, "crasher.eml", &cfg.limits).report;
        // Every finding says why: an invalid message names a problem with
        // the data, a suspicious one names the sender it distrusts.
        if !r.valid {
            assert!(
                !r.problems.is_empty(),
                "{}: invalid without a reason",
                f.display()
            );
        }
        if r.suspicious {
            assert!(
                r.problems
                    .iter()
                    .any(|p| p.contains("sender") || p.contains("entitled")),
                "{}: suspicious without naming the sender: {:?}",
                f.display(),
                r.problems
            );
        }
        // The verdict is a function of the bytes.
        assert_eq!(
            classify(&raw, "crasher.eml", &cfg.limits).report,
            r,
            "{}",
            f.display()
        );
        let out = p.process(&raw, "crasher.eml");
        assert!(out.error.is_none(), "{}: {:?}", f.display(), out.error);
    }
}
