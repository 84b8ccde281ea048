//! Classification cost against mail-parser's bare parse of the same bytes,
//! over the whole fixture corpus, in one run: `cargo bench --bench classify`.
//! The README states the ratio (goal: classification ≤ 1.5× the bare parse).

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn corpus() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/classify");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn bench(c: &mut Criterion) {
    let corpus = corpus();
    let bytes: usize = corpus.iter().map(Vec::len).sum();
    let limits = imipd::config::Limits::default();
    let mut g = c.benchmark_group("corpus");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("mail_parser_parse", |b| {
        b.iter(|| {
            let parser = mail_parser::MessageParser::new();
            for raw in &corpus {
                std::hint::black_box(parser.parse(raw));
            }
        })
    });
    g.bench_function("classify", |b| {
        b.iter(|| {
            for raw in &corpus {
                std::hint::black_box(imipd::classify::classify(raw, "bench.eml", &limits));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
