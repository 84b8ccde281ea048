//! The store with 10,000 calendar objects: opening it (which indexes every
//! UID) and looking one up. `cargo bench --bench store`.

use criterion::{criterion_group, criterion_main, Criterion};
use imipd::store::Vdir as Store;

fn object(i: usize) -> String {
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//bench//EN\r\nBEGIN:VEVENT\r\nUID:event-{i}@bench.example\r\n\
         DTSTAMP:20261120T100000Z\r\nDTSTART:20261201T100000Z\r\nDTEND:20261201T110000Z\r\n\
         SUMMARY:Event number {i}\r\nORGANIZER:mailto:alice@example.com\r\n\
         ATTENDEE;PARTSTAT=ACCEPTED:mailto:bob@example.com\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..10_000 {
        std::fs::write(
            dir.path().join(format!("event-{i}@bench.example.ics")),
            object(i),
        )
        .unwrap();
    }
    let mut g = c.benchmark_group("store_10000");
    g.sample_size(20);
    g.bench_function("open_and_index", |b| {
        b.iter(|| Store::open(dir.path()).unwrap())
    });
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.len(), 10_000);
    let mut i = 0;
    g.bench_function("get_by_uid", |b| {
        b.iter(|| {
            i = (i + 7919) % 10_000;
            store
                .get(&format!("event-{i}@bench.example"))
                .unwrap()
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
