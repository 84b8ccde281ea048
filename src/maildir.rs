//! The Maildir source: lists the messages of `new/` and `cur/` in delivery
//! order and names each by its unique part (the file name before `:2,`), so a
//! message keeps its identity when a mail client renames it to set flags.
//! imipd only reads here; it never moves, renames or changes a message.

use std::path::{Path, PathBuf};

/// One message file of a Maildir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    /// The stable unique name (without the `:2,flags` info part).
    pub key: String,
}

/// Every message in `new/` and `cur/`, sorted by unique name (the leading
/// timestamp makes that delivery order).
pub fn list(dir: &Path) -> anyhow::Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut found = false;
    for sub in ["new", "cur"] {
        let d = dir.join(sub);
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => anyhow::bail!("cannot read Maildir folder {}: {e}", d.display()),
        };
        found = true;
        for entry in rd {
            let entry = entry
                .map_err(|e| anyhow::anyhow!("cannot read Maildir folder {}: {e}", d.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                continue;
            }
            let key = name.split(':').next().unwrap_or(&name).to_string();
            out.push(Entry {
                path: entry.path(),
                key,
            });
        }
    }
    if !found {
        anyhow::bail!(
            "cannot read Maildir {}: it has neither new/ nor cur/",
            dir.display()
        );
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out.dedup_by(|a, b| a.key == b.key);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_in_order_with_stable_keys() {
        let d = tempfile::tempdir().unwrap();
        for s in ["new", "cur", "tmp"] {
            std::fs::create_dir(d.path().join(s)).unwrap();
        }
        std::fs::write(d.path().join("cur/200.M1.h:2,S"), "x").unwrap();
        std::fs::write(d.path().join("new/100.M1.h"), "x").unwrap();
        std::fs::write(d.path().join("tmp/050.M1.h"), "x").unwrap();
        let l = list(d.path()).unwrap();
        assert_eq!(
            l.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
            ["100.M1.h", "200.M1.h"]
        );
        assert!(list(&d.path().join("missing")).is_err());
    }
}
