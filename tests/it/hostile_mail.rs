//! Small hostile messages that used to stall imipd for minutes, and the
//! 1,000-event store they meet: shared by the `stalls` tests and the
//! `hostile` benchmark (`cargo bench --bench hostile`).

#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::Path;

/// A configuration whose policies need every costly fact (busy time, the
/// next occurrence), with the default limits.
pub const CONFIG: &str = "[outgoing]\ntransport = \"file\"\npath = \"outbox\"\n\
    max_replies_per_hour = 100000\nmax_answers_per_hour = 100000\n\
    [[policy]]\nname = \"busy\"\nmethods = [\"REQUEST\"]\nconflict = true\naction = \"decline\"\n\
    [[policy]]\nname = \"soon\"\nmethods = [\"REQUEST\"]\nbooking_window = \"60d\"\naction = \"accept\"\n\
    [[policy]]\nname = \"publish\"\nmethods = [\"PUBLISH\"]\naction = \"ignore\"\n";

fn vcalendar(method: Option<&str>, body: &str) -> String {
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//hostile//EN\r\n{}{body}END:VCALENDAR\r\n",
        method
            .map(|m| format!("METHOD:{m}\r\n"))
            .unwrap_or_default()
    )
}

fn mail(method: &str, calendar: &str) -> String {
    format!(
        "From: alice@example.com\r\nTo: bob@example.com\r\nSubject: {method}\r\n\
         Message-ID: <hostile-{method}@example.com>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/calendar; method={method}; charset=UTF-8\r\n\r\n{calendar}"
    )
}

fn event(uid: &str, extra: &str) -> String {
    format!(
        "BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20261120T100000Z\r\nSEQUENCE:0\r\n\
         ORGANIZER:mailto:alice@example.com\r\nATTENDEE;RSVP=TRUE:mailto:bob@example.com\r\n\
         SUMMARY:Event {uid}\r\n{extra}END:VEVENT\r\n"
    )
}

/// Fill a store folder with 1,000 events: weekly and daily series (some
/// since 2020) and single events over the next months, in Berlin time.
pub fn store_1000(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..1000 {
        let day = 1 + i % 28;
        let hour = 8 + i % 9;
        let extra = match i % 4 {
            0 => format!(
                "DTSTART;TZID=Europe/Berlin:202612{day:02}T{hour:02}0000\r\nDURATION:PT1H\r\nRRULE:FREQ=WEEKLY;COUNT=30\r\n"
            ),
            1 => format!(
                "DTSTART;TZID=Europe/Berlin:202001{day:02}T{hour:02}3000\r\nDURATION:PT30M\r\nRRULE:FREQ=DAILY\r\n"
            ),
            _ => format!(
                "DTSTART;TZID=Europe/Berlin:2027{:02}{day:02}T{hour:02}0000\r\nDURATION:PT1H\r\n",
                1 + i % 12
            ),
        };
        let text = vcalendar(None, &event(&format!("stored-{i}@example.com"), &extra));
        std::fs::write(dir.join(format!("stored-{i}@example.com.ics")), text).unwrap();
    }
}

/// A stored event with 24,000 RDATEs.
pub fn store_rdates(dir: &Path) {
    let mut rdates = String::from("RDATE:");
    for i in 0..24_000i64 {
        let t = chrono::DateTime::from_timestamp(1_796_000_000 + i * 3600, 0).unwrap();
        if i > 0 {
            rdates.push(',');
        }
        let _ = write!(rdates, "{}", t.format("%Y%m%dT%H%M%SZ"));
    }
    let extra = format!(
        "DTSTART:20261201T090000Z\r\nDURATION:PT30M\r\n{}\r\n",
        fold(&rdates)
    );
    std::fs::write(
        dir.join("many-rdates@example.com.ics"),
        vcalendar(None, &event("many-rdates@example.com", &extra)),
    )
    .unwrap();
}

/// Fold a long content line at 74 octets (RFC 5545 §3.1).
fn fold(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + line.len() / 37);
    for (i, ch) in line.chars().enumerate() {
        if i > 0 && i % 74 == 0 {
            out.push_str("\r\n ");
        }
        out.push(ch);
    }
    out
}

/// A 50 kB invitation with 200 UIDs, each a weekly series.
pub fn many_uids() -> String {
    let body: String = (0..200)
        .map(|i| {
            event(
                &format!("many-{i}@example.com"),
                &format!(
                    "DTSTART;TZID=Europe/Berlin:202612{:02}T{:02}0000\r\nDURATION:PT1H\r\nRRULE:FREQ=WEEKLY\r\n",
                    1 + i % 28,
                    8 + i % 9
                ),
            )
        })
        .collect();
    mail("REQUEST", &vcalendar(Some("REQUEST"), &body))
}

/// A 3 MB PUBLISH with 25,000 VEVENTs, each in a VCALENDAR of its own (so
/// that no single object is over `limits.max_components`); a policy ignores it.
pub fn huge_publish() -> String {
    let body: String = (0..25_000)
        .map(|i| {
            format!(
                "BEGIN:VCALENDAR\r\nMETHOD:PUBLISH\r\nBEGIN:VEVENT\r\nUID:p{i}\r\nDTSTAMP:20261120T100000Z\r\n\
                 ORGANIZER:mailto:a@x.y\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
            )
        })
        .collect();
    mail("PUBLISH", &body)
}

/// An invitation with 10,000 RDATE and 10,000 EXDATE values.
pub fn rdates_and_exdates() -> String {
    let list = |name: &str, offset: i64| {
        let mut s = format!("{name}:");
        for i in 0..10_000i64 {
            let t = chrono::DateTime::from_timestamp(1_796_000_000 + offset + i * 7200, 0).unwrap();
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "{}", t.format("%Y%m%dT%H%M%SZ"));
        }
        fold(&s)
    };
    let extra = format!(
        "DTSTART:20261201T090000Z\r\nDURATION:PT30M\r\n{}\r\n{}\r\n",
        list("RDATE", 0),
        list("EXDATE", 3600)
    );
    mail(
        "REQUEST",
        &vcalendar(Some("REQUEST"), &event("rdates@example.com", &extra)),
    )
}

/// A 2 kB RRULE that would generate millions of instances a year.
pub fn dense_rrule() -> String {
    let days: Vec<String> = (1..=366).map(|d| d.to_string()).collect();
    let hours: Vec<String> = (0..24).map(|h| h.to_string()).collect();
    let minutes: Vec<String> = (0..60).map(|m| m.to_string()).collect();
    let rule = format!(
        "RRULE:FREQ=YEARLY;BYYEARDAY={};BYHOUR={};BYMINUTE={}",
        days.join(","),
        hours.join(","),
        minutes.join(",")
    );
    let extra = format!(
        "DTSTART:20261201T090000Z\r\nDURATION:PT1M\r\n{}\r\n",
        fold(&rule)
    );
    mail(
        "REQUEST",
        &vcalendar(Some("REQUEST"), &event("dense@example.com", &extra)),
    )
}

/// A plain invitation (what meets the store with 24,000 RDATEs).
pub fn plain() -> String {
    mail(
        "REQUEST",
        &vcalendar(
            Some("REQUEST"),
            &event(
                "plain@example.com",
                "DTSTART:20261215T090000Z\r\nDURATION:PT1H\r\n",
            ),
        ),
    )
}

/// Every case: name, message, and whether the store also holds the event
/// with 24,000 RDATEs.
pub fn cases() -> Vec<(&'static str, String, bool)> {
    vec![
        ("200 UIDs in a 50 kB message", many_uids(), false),
        ("25,000 VEVENTs in a 3 MB PUBLISH", huge_publish(), false),
        (
            "10,000 RDATE + 10,000 EXDATE values",
            rdates_and_exdates(),
            false,
        ),
        (
            "a 2 kB RRULE of millions of instances",
            dense_rrule(),
            false,
        ),
        (
            "an invitation after a stored event with 24,000 RDATEs",
            plain(),
            true,
        ),
    ]
}
