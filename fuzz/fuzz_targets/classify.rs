//! Raw bytes as a mail message → MIME walk → iTIP parsing and checks →
//! classification. Must never panic, whatever the bytes, and an invalid
//! or suspicious message always says why.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = imipd::config::Limits::default();
    let r = imipd::classify::classify(data, "fuzz.eml", &limits).report;
    assert!(
        (r.valid && !r.suspicious) || !r.problems.is_empty(),
        "a finding without a reason: {r:?}"
    );
    assert!(!r.imip || r.messages.iter().all(|m| !m.method.is_empty()));
});
