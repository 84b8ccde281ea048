//! Interoperability: real khal (installed with pip into a venv kept in the
//! target folder) reads the store imipd leaves behind.

use std::path::PathBuf;
use std::process::Command;

use crate::support::*;

/// A khal binary in a venv under the target folder, installed on first use.
fn khal() -> PathBuf {
    crate::harness::python::venv("khal-venv", &["khal"]).join("bin/khal")
}

#[test]
fn khal_lists_what_imipd_filed() {
    let env = Env::new("");
    let alice = "Alice <alice@example.com>";
    let weekly = |seq: u32, stamp: &str, start: &str, summary: &str| {
        mail(
            alice,
            "REQUEST",
            &[vevent(&[
                "UID:weekly@example.com",
                &format!("SEQUENCE:{seq}"),
                &format!("DTSTAMP:{stamp}"),
                &format!("DTSTART;TZID=Europe/Berlin:{start}"),
                "DURATION:PT1H",
                "RRULE:FREQ=WEEKLY;COUNT=4",
                &format!("SUMMARY:{summary}"),
                "ORGANIZER:mailto:alice@example.com",
                "ATTENDEE:mailto:bob@example.com",
            ])],
        )
    };
    let outlook = mail(
        "carol@example.org",
        "REQUEST",
        &[vevent(&[
            "UID:040000008200E00074C5B7101A82E00800000000@outlook",
            "SEQUENCE:0",
            "DTSTAMP:20261120T100000Z",
            "DTSTART;TZID=\"W. Europe Standard Time\":20261202T150000",
            "DTEND;TZID=\"W. Europe Standard Time\":20261202T160000",
            "SUMMARY:Budget review",
            "ORGANIZER:mailto:carol@example.org",
            "ATTENDEE:mailto:bob@example.com",
        ])],
    );
    let cancel_one = mail(
        alice,
        "CANCEL",
        &[vevent(&[
            "UID:weekly@example.com",
            "SEQUENCE:1",
            "DTSTAMP:20261122T100000Z",
            "RECURRENCE-ID;TZID=Europe/Berlin:20261208T140000",
            "ORGANIZER:mailto:alice@example.com",
        ])],
    );
    let all_day = mail(
        "dave@example.net",
        "REQUEST",
        &[vevent(&[
            "UID:offsite@example.net",
            "DTSTAMP:20261120T100000Z",
            "DTSTART;VALUE=DATE:20261204",
            "DTEND;VALUE=DATE:20261205",
            "SUMMARY:Offsite",
            "ORGANIZER:mailto:dave@example.net",
            "ATTENDEE:mailto:bob@example.com",
        ])],
    );
    let effects = env.effects(&[
        &weekly(0, "20261120T100000Z", "20261201T100000", "Planning"),
        &weekly(1, "20261121T100000Z", "20261201T140000", "Planning moved"),
        &outlook,
        &cancel_one,
        &all_day,
    ]);
    assert_eq!(
        effects,
        ["created", "updated", "created", "cancelled", "created"]
    );

    let cfg = env.path("khal.conf");
    std::fs::write(
        &cfg,
        format!(
            "[calendars]\n[[imipd]]\npath = {}\ntype = calendar\n\n[locale]\n\
             timeformat = %H:%M\ndateformat = %Y-%m-%d\nlongdateformat = %Y-%m-%d\n\
             datetimeformat = %Y-%m-%d %H:%M\nlongdatetimeformat = %Y-%m-%d %H:%M\n\
             local_timezone = Europe/Berlin\ndefault_timezone = Europe/Berlin\n\n\
             [sqlite]\npath = {}\n",
            env.store().display(),
            env.path("khal.db").display()
        ),
    )
    .unwrap();
    let out = Command::new(khal())
        .arg("-c")
        .arg(&cfg)
        .args([
            "list",
            "--format",
            "{start} {title}",
            "--day-format",
            "",
            "2026-12-01",
            "2026-12-31",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "khal failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    for want in [
        "2026-12-01 14:00 Planning moved",
        "2026-12-15 14:00 Planning moved",
        "2026-12-22 14:00 Planning moved",
        "2026-12-02 15:00 Budget review",
        "Offsite",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(want)),
            "khal does not list {want:?}:\n{text}"
        );
    }
    assert!(
        !lines.iter().any(|l| l.starts_with("2026-12-08")),
        "the cancelled instance is still listed:\n{text}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("10:00 Planning")),
        "the old time is still listed:\n{text}"
    );
}
