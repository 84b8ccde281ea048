//! Python venvs for the test servers and tools (aiosmtpd, Radicale and
//! Xandikos, khal), kept under the target dir and made on first use
//! (`python3 -m venv` + `pip install`, seconds once). Debian's packages
//! are not used: `python3` on PATH may not be Debian's. Parallel tests
//! (threads, and processes via a file lock) install each venv once.

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

static INSTALL: Mutex<()> = Mutex::new(());

/// The venv `$CARGO_TARGET_TMPDIR/NAME` with `packages` installed (made on
/// first use); its folder.
pub fn venv(name: &str, packages: &[&str]) -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let python = venv.join("bin").join("python");
    let marker = venv.join(".installed");
    let wanted = format!("{}\n", packages.join(" "));
    let ready = || python.exists() && std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted);
    if ready() {
        return venv;
    }
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let parent = venv.parent().unwrap();
    std::fs::create_dir_all(parent).unwrap();
    // Another test process (e.g. under nextest) may be installing too.
    let lock = File::create(parent.join(format!("{name}.lock"))).unwrap();
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {name}.lock: {e}"));
    if ready() {
        return venv;
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
        ])
        .args(packages)
        .output()
        .expect("cannot run pip");
    assert!(
        out.status.success(),
        "pip install {} failed: {}{}",
        packages.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&marker, wanted).unwrap();
    venv
}

/// The python of the venv with aiosmtpd importable.
pub fn venv_python() -> PathBuf {
    venv("py-venv", &["aiosmtpd"]).join("bin").join("python")
}
