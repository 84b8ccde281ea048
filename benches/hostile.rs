//! The hostile-message budget (`cargo bench --bench hostile`): each small
//! hostile message of `tests/it/hostile_mail.rs` through `imipd process`
//! against a 1,000-event store, with policies that need busy time and the
//! next occurrence; CPU time (user + system) and peak RSS from GNU time.
//! Goal: each under one second of CPU and 100 MiB. Under `cargo test` it
//! runs the same cases once (a smoke run of a debug build).

#[path = "../tests/it/hostile_mail.rs"]
mod hostile_mail;

use std::process::Command;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    println!("| message (store: 1,000 events) | CPU | peak RSS |");
    println!("| --- | --- | --- |");
    for (name, raw, with_rdates) in hostile_mail::cases() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[identity]\naddresses = [\"bob@example.com\"]\n[store]\npath = \"calendar\"\n\
                 [state]\npath = \"state\"\n{}",
                hostile_mail::CONFIG
            ),
        )
        .unwrap();
        hostile_mail::store_1000(&dir.path().join("calendar"));
        if with_rdates {
            hostile_mail::store_rdates(&dir.path().join("calendar"));
        }
        let file = dir.path().join("hostile.eml");
        std::fs::write(&file, &raw).unwrap();
        let out = Command::new("/usr/bin/time")
            .arg("-v")
            .arg(env!("CARGO_BIN_EXE_imipd"))
            .env("IMIPD_NOW", "2026-11-21T10:00:00Z")
            .args(["process", "--json"])
            .args(
                std::env::var("HOSTILE_ARGS")
                    .ok()
                    .iter()
                    .flat_map(|a| a.split(' ')),
            )
            .arg("--config")
            .arg(&config)
            .arg(&file)
            .output()
            .expect("cannot run /usr/bin/time (apt-get install time)");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        let field = |label: &str| -> f64 {
            err.lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0)
        };
        let cpu = field("User time (seconds):") + field("System time (seconds):");
        let rss = field("Maximum resident set size (kbytes):") / 1024.0;
        println!(
            "| {name} ({} KiB) | {cpu:.2} s | {rss:.1} MiB |",
            raw.len() / 1024
        );
        if full {
            assert!(cpu < 1.0 && rss < 100.0, "{name}: over budget");
        }
    }
}
