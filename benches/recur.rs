//! Recurrence expansion and busy time: the event with 10,000 RDATEs and
//! 10,000 EXDATEs; the busy-time index over a 1,000-event store (weekly,
//! daily and single events since 2019, one with 24,000 RDATEs) and 200
//! overlap queries against it; the 2 kB RRULE that would make millions of
//! instances a year; rules that never match (calcard walks to its limits,
//! once per rule), alone and as a store of 50.
//! `cargo bench --bench recur` (add `-- --quick` for a fast pass).

use criterion::{criterion_group, criterion_main, Criterion};
use imipd::config::Identity;
use imipd::ical::Node;
use imipd::recur::{self, Budget};
use imipd::store::Vdir as Store;

/// 2027-03-01T00:00:00Z.
const NOW: i64 = 1_803_859_200;
const DAY: i64 = 86_400;

fn stamp(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .unwrap()
        .format("%Y%m%dT%H%M%SZ")
        .to_string()
}

fn calendar(events: &str) -> String {
    format!("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//bench//EN\r\n{events}END:VCALENDAR\r\n")
}

fn node(text: &str) -> Node {
    match calcard::Parser::new(text).entry() {
        calcard::Entry::ICalendar(i) => Node::from_ical(&i),
        other => panic!("{other:?}"),
    }
}

fn event(uid: &str, lines: &str) -> String {
    format!(
        "BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20261120T100000Z\r\n{lines}\
         ORGANIZER:mailto:alice@example.com\r\nATTENDEE;PARTSTAT=ACCEPTED:mailto:bob@example.com\r\nEND:VEVENT\r\n"
    )
}

/// Every 2 hours from NOW, with every other one and 5,000 other instants
/// excepted.
fn rdates_10k() -> String {
    let rdates: Vec<String> = (0..10_000).map(|i| stamp(NOW + i * 7200)).collect();
    let mut ex: Vec<String> = (0..5_000).map(|i| stamp(NOW + i * 14_400)).collect();
    ex.extend((0..5_000).map(|i| stamp(NOW + 3600 + i * 14_400)));
    event(
        "rdates",
        &format!(
            "DTSTART:{}\r\nDURATION:PT30M\r\nRDATE:{}\r\nEXDATE:{}\r\n",
            stamp(NOW),
            rdates.join(","),
            ex.join(",")
        ),
    )
}

fn store_event(i: usize) -> String {
    let uid = format!("event-{i}@bench.example");
    let day = (i % 28) as i64;
    match i % 4 {
        0 | 1 => event(
            &uid,
            &format!(
                "DTSTART;TZID=Europe/Berlin:2019{:02}{:02}T{:02}0000\r\nDTEND;TZID=Europe/Berlin:2019{:02}{:02}T{:02}3000\r\n\
                 RRULE:FREQ=WEEKLY;BYDAY=MO,WE\r\n",
                1 + i % 12,
                1 + day,
                8 + i % 9,
                1 + i % 12,
                1 + day,
                8 + i % 9
            ),
        ),
        2 => event(
            &uid,
            &format!(
                "DTSTART:2020{:02}{:02}T0{}0000Z\r\nDURATION:PT15M\r\nRRULE:FREQ=DAILY;BYDAY=MO,TU,WE,TH,FR\r\n",
                1 + i % 12,
                1 + day,
                i % 10
            ),
        ),
        _ => event(
            &uid,
            &format!(
                "DTSTART:{}\r\nDURATION:PT1H\r\n",
                stamp(NOW + (i as i64 % 300) * DAY + 9 * 3600)
            ),
        ),
    }
}

fn rdates_24k() -> String {
    let rdates: Vec<String> = (0..24_000)
        .map(|i| stamp(NOW - 100 * DAY + i * 3 * 3600))
        .collect();
    event(
        "big-rdates@bench.example",
        &format!(
            "DTSTART:{}\r\nDURATION:PT1H\r\nRDATE:{}\r\n",
            stamp(NOW - 100 * DAY),
            rdates.join(",")
        ),
    )
}

const DENSE: &str = "FREQ=YEARLY;BYYEARDAY=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,\
25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,\
60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,\
95,96,97,98,99,100,101,102,103,104,105,106,107,108,109,110,111,112,113,114,115,116,117,118,119,120,121,122,\
123,124,125,126,127,128,129,130,131,132,133,134,135,136,137,138,139,140,141,142,143,144,145,146,147,148,149,\
150,151,152,153,154,155,156,157,158,159,160,161,162,163,164,165,166,167,168,169,170,171,172,173,174,175,176,\
177,178,179,180,181,182,183,184,185,186,187,188,189,190,191,192,193,194,195,196,197,198,199,200,201,202,203,\
204,205,206,207,208,209,210,211,212,213,214,215,216,217,218,219,220,221,222,223,224,225,226,227,228,229,230,\
231,232,233,234,235,236,237,238,239,240,241,242,243,244,245,246,247,248,249,250,251,252,253,254,255,256,257,\
258,259,260,261,262,263,264,265,266,267,268,269,270,271,272,273,274,275,276,277,278,279,280,281,282,283,284,\
285,286,287,288,289,290,291,292,293,294,295,296,297,298,299,300,301,302,303,304,305,306,307,308,309,310,311,\
312,313,314,315,316,317,318,319,320,321,322,323,324,325,326,327,328,329,330,331,332,333,334,335,336,337,338,\
339,340,341,342,343,344,345,346,347,348,349,350,351,352,353,354,355,356,357,358,359,360,361,362,363,364,365,\
366;BYHOUR=0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23;BYMINUTE=0,1,2,3,4,5,6,7,8,9,10,11,\
12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,\
48,49,50,51,52,53,54,55,56,57,58,59;BYSECOND=0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,\
24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59";

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("recur");
    g.sample_size(10);

    let root = node(&calendar(&rdates_10k()));
    g.bench_function("expand_10k_rdates_10k_exdates_400_days", |b| {
        b.iter(|| {
            let o = recur::occurrences(
                &root,
                "rdates",
                NOW,
                NOW + 400 * DAY,
                &mut Budget::per_message(),
                |_| true,
            );
            assert_eq!(o.spans.len(), 2_400);
        })
    });

    let root = node(&calendar(&event(
        "dense",
        &format!("DTSTART:20270101T000000Z\r\nRRULE:{DENSE}\r\n"),
    )));
    g.bench_function("dense_rrule_refused", |b| {
        b.iter(|| {
            let o = recur::occurrences(
                &root,
                "dense",
                NOW,
                NOW + 400 * DAY,
                &mut Budget::per_message(),
                |_| true,
            );
            assert!(!o.complete);
        })
    });

    let root = node(&calendar(&event(
        "daily",
        "DTSTART:20200106T090000Z\r\nDURATION:PT1H\r\nRRULE:FREQ=DAILY\r\n",
    )));
    g.bench_function("daily_since_2020_next_occurrence", |b| {
        b.iter(|| recur::next_occurrence(&root, "daily", NOW, &mut Budget::per_message()).unwrap())
    });

    for (name, rule) in [
        // Known from the rule alone: no walk.
        ("impossible_day", "FREQ=MONTHLY;BYMONTH=2;BYMONTHDAY=30"),
        // calcard walks to year 10,000 or 100,000 empty periods, once.
        (
            "never_yearly",
            "FREQ=YEARLY;INTERVAL=2;BYMONTH=2;BYMONTHDAY=29",
        ),
        (
            "never_monthly",
            "FREQ=MONTHLY;BYDAY=MO;BYMONTHDAY=1,2,3;BYSETPOS=4",
        ),
        ("never_daily", "FREQ=DAILY;BYHOUR=9;BYSETPOS=2"),
        (
            "never_hourly",
            "FREQ=HOURLY;BYMINUTE=0;BYSECOND=0;BYSETPOS=2",
        ),
    ] {
        let root = node(&calendar(&event(
            "never",
            &format!("DTSTART:20210829T090000Z\r\nRRULE:{rule}\r\n"),
        )));
        g.bench_function(format!("{name}_occurrences_400_days"), |b| {
            b.iter(|| {
                recur::occurrences(
                    &root,
                    "never",
                    NOW,
                    NOW + 400 * DAY,
                    &mut Budget::per_message(),
                    |_| true,
                )
            })
        });
        g.bench_function(format!("{name}_next_occurrence"), |b| {
            b.iter(|| recur::next_occurrence(&root, "never", NOW, &mut Budget::per_message()))
        });
    }

    let dir = tempfile::tempdir().unwrap();
    for i in 0..999 {
        std::fs::write(
            dir.path().join(format!("event-{i}.ics")),
            calendar(&store_event(i)),
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("big-rdates.ics"), calendar(&rdates_24k())).unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.len(), 1000);
    let me = Identity {
        addresses: vec!["bob@example.com".into()],
        name: None,
        trusted_sent_by: Vec::new(),
    };
    g.bench_function("busy_build_1000_events_400_days", |b| {
        b.iter(|| store.busy(&me, NOW, NOW + 400 * DAY).unwrap())
    });
    let busy = store.busy(&me, NOW, NOW + 400 * DAY).unwrap();
    let queries: Vec<(i64, i64)> = (0..200)
        .map(|i| {
            let s = NOW + (i * 7919 % 400) * DAY + (i % 24) * 3600 + 600;
            (s, s + 1800)
        })
        .collect();
    g.bench_function("busy_200_overlap_queries", |b| {
        b.iter(|| {
            queries
                .iter()
                .filter(|q| {
                    busy.overlaps(std::slice::from_ref(*q), "new@bench.example")
                        .is_some()
                })
                .count()
        })
    });

    // A hostile store: 50 events whose rules never match.
    let hostile = tempfile::tempdir().unwrap();
    for i in 0..50 {
        std::fs::write(
            hostile.path().join(format!("never-{i}.ics")),
            calendar(&event(
                &format!("never-{i}@bench.example"),
                &format!(
                    "DTSTART:2021{:02}01T090000Z\r\nRRULE:FREQ=MONTHLY;BYDAY=MO;BYMONTHDAY=1,2,3;BYSETPOS=4\r\n",
                    1 + i % 12
                ),
            )),
        )
        .unwrap();
    }
    let hostile = Store::open(hostile.path()).unwrap();
    g.bench_function("busy_build_50_never_matching_events", |b| {
        b.iter(|| hostile.busy(&me, NOW, NOW + 400 * DAY).unwrap())
    });
    g.finish();
    eprintln!(
        "busy index: {} spans; incomplete: {:?}",
        busy.len(),
        busy.incomplete().collect::<Vec<_>>()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
