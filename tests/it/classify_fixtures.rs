//! The classification corpus: every `tests/fixtures/classify/NAME.eml` has a
//! hand-written `NAME.json` with the expected `imipd classify` line. Each
//! fixture runs twice: as written (CRLF) and with every CRLF turned into LF.
//!
//! Everything is compared exactly except `problems`: there the expected file
//! lists short substrings, and each must be found in a different actual
//! problem, with as many problems as expected (so wording can improve
//! without rewriting the corpus, but no problem can appear or vanish).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::imipd;

/// The fixture messages, sorted (also the robustness test's seed corpus).
pub fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/classify");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    files
}

fn expected(eml: &Path) -> Value {
    let p = eml.with_extension("json");
    let text =
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", p.display()))
}

/// Compare one actual line with its expectation; the differences, if any.
fn compare(name: &str, actual: &Value, want: &Value) -> Vec<String> {
    let mut diffs = Vec::new();
    for key in [
        "message_id",
        "from",
        "imip",
        "valid",
        "suspicious",
        "messages",
    ] {
        if actual[key] != want[key] {
            diffs.push(format!(
                "{name}: {key} is {} but {} was expected",
                actual[key], want[key]
            ));
        }
    }
    let got: Vec<String> = actual["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_lowercase())
        .collect();
    let wanted: Vec<String> = want["problems"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|p| p.as_str().unwrap().to_lowercase())
        .collect();
    let mut used = vec![false; got.len()];
    for w in &wanted {
        match got
            .iter()
            .enumerate()
            .position(|(i, g)| !used[i] && g.contains(w.as_str()))
        {
            Some(i) => used[i] = true,
            None => diffs.push(format!(
                "{name}: no problem mentions {w:?}; problems: {got:?}"
            )),
        }
    }
    if got.len() != wanted.len() {
        diffs.push(format!(
            "{name}: {} problems where {} were expected: {got:?}",
            got.len(),
            wanted.len()
        ));
    }
    diffs
}

#[test]
fn corpus_is_large_enough() {
    assert!(
        corpus().len() >= 30,
        "the corpus has {} fixtures",
        corpus().len()
    );
}

#[test]
fn every_fixture_classifies_as_expected_with_crlf_and_lf() {
    let limits = imipd::config::Limits::default();
    let mut diffs = Vec::new();
    for eml in corpus() {
        let name = eml.file_name().unwrap().to_string_lossy().into_owned();
        let want = expected(&eml);
        let raw = std::fs::read(&eml).unwrap();
        let lf: Vec<u8> = String::from_utf8_lossy(&raw)
            .replace("\r\n", "\n")
            .into_bytes();
        let lf = if std::str::from_utf8(&raw).is_ok() {
            lf
        } else {
            // Not UTF-8 (binary or Latin-1 fixtures): replace CRLF byte-wise.
            let mut out = Vec::with_capacity(raw.len());
            let mut i = 0;
            while i < raw.len() {
                if raw[i] == b'\r' && raw.get(i + 1) == Some(&b'\n') {
                    i += 1;
                    continue;
                }
                out.push(raw[i]);
                i += 1;
            }
            out
        };
        for (variant, bytes) in [("crlf", &raw), ("lf", &lf)] {
            let report = imipd::classify::classify(bytes, &name, &limits).report;
            let actual = serde_json::to_value(&report).unwrap();
            diffs.extend(compare(&format!("{name} ({variant})"), &actual, &want));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

#[test]
fn the_binary_prints_one_line_per_fixture_in_order() {
    let files = corpus();
    let out = imipd()
        .args(["classify", "--me", "bob@example.com"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), files.len());
    let mut diffs = Vec::new();
    for (line, eml) in lines.iter().zip(&files) {
        assert_eq!(line["file"], eml.to_string_lossy().as_ref());
        diffs.extend(compare(
            &eml.file_name().unwrap().to_string_lossy(),
            line,
            &expected(eml),
        ));
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}
