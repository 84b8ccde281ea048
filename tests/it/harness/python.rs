//! A Python venv with aiosmtpd, kept under the target dir and made on first
//! use (`python3 -m venv` + `pip install aiosmtpd`, ~5 s once). Debian's
//! python3-aiosmtpd is not used: `python3` on PATH may not be Debian's.
//! Parallel tests (threads, and processes via a file lock) install it once.

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

static INSTALL: Mutex<()> = Mutex::new(());

/// The venv: `$CARGO_TARGET_TMPDIR/py-venv`.
pub fn venv_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("py-venv")
}

/// The venv's python, with aiosmtpd importable (installed on first use).
pub fn venv_python() -> PathBuf {
    let venv = venv_dir();
    let python = venv.join("bin").join("python");
    let marker = venv.join(".aiosmtpd-installed");
    if marker.exists() && python.exists() {
        return python;
    }
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let parent = venv.parent().unwrap();
    std::fs::create_dir_all(parent).unwrap();
    // Another test process (e.g. under nextest) may be installing too.
    let lock = File::create(parent.join("py-venv.lock")).unwrap();
    lock.lock().expect("cannot lock py-venv.lock");
    if marker.exists() && python.exists() {
        return python;
    }
    if !python.exists() {
        let _ = std::fs::remove_dir_all(&venv);
        let out = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .output()
            .expect("cannot run python3");
        assert!(
            out.status.success(),
            "python3 -m venv {} failed (Debian needs python3-venv): {}",
            venv.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "aiosmtpd",
        ])
        .output()
        .expect("cannot run pip");
    assert!(
        out.status.success(),
        "pip install aiosmtpd failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&marker, "aiosmtpd\n").unwrap();
    python
}
