//! One small hostile message must stay cheap, whatever the store holds
//! (issue 10 items 8–9): each case of `hostile_mail` through `imipd process`
//! against a 1,000-event store, with policies that need busy time and the
//! next occurrence. The CPU limit (`ulimit -t`) is a generous cap that the
//! old behaviour (minutes per message) cannot meet, not a timing: the
//! figures themselves come from `cargo bench --bench hostile`.

use crate::hostile_mail;
use crate::support::*;

/// Run `imipd process --json` on one message under a CPU-time cap.
fn process_capped(
    env: &Env,
    raw: &str,
    cpu_seconds: u32,
) -> (std::process::Output, Vec<serde_json::Value>) {
    let file = env.message("hostile.eml", raw);
    let bin = env!("CARGO_BIN_EXE_imipd");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -t {cpu_seconds}; exec \"$0\" process --json --config \"$1\" \"$2\""
        ))
        .arg(bin)
        .arg(&env.config)
        .arg(&file)
        .env("IMIPD_NOW", TEST_NOW)
        .output()
        .unwrap();
    let values = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out, values)
}

#[test]
fn facts_are_cheap_and_bounded_for_every_hostile_message() {
    for (name, raw, with_rdates) in hostile_mail::cases() {
        let env = Env::new(hostile_mail::CONFIG);
        hostile_mail::store_1000(&env.store());
        if with_rdates {
            hostile_mail::store_rdates(&env.store());
        }
        // 60 s of CPU for a debug build; the old code took minutes (release).
        let (out, values) = process_capped(&env, &raw, 60);
        assert!(
            out.status.success(),
            "{name}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let o = values
            .iter()
            .find(|v| v.get("results").is_some())
            .unwrap_or_else(|| panic!("{name}: no outcome"));
        assert!(o["error"].is_null(), "{name}: {o}");
        let results = o["results"].as_array().unwrap();
        assert!(!results.is_empty(), "{name}: {o}");
        if name.starts_with("200 UIDs") {
            assert_eq!(results.len(), 200, "{name}");
        }
        if name.starts_with("25,000") {
            assert!(results.iter().all(|r| r["effect"] == "ignored"), "{name}");
        }
    }
}
