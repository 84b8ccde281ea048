//! Test certificates made with the openssl CLI: a CA, a server certificate
//! signed by it (SAN DNS:localhost, IP:127.0.0.1), and an unrelated second CA
//! for "the client must refuse" tests. ECDSA P-256 keys (fast to make), v3
//! extensions that rustls/webpki accepts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = unused

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always, issuer
";

/// Where the certificates live (all PEM). The server's key is PKCS#8, unencrypted.
pub struct Certs {
    /// Holds every file below; deleted on drop.
    pub dir: tempfile::TempDir,
    /// The CA that signed `cert_pem`: what a client must trust.
    pub ca_pem: PathBuf,
    /// The server's certificate (leaf only), CN=localhost, SAN localhost + 127.0.0.1.
    pub cert_pem: PathBuf,
    /// The server's private key.
    pub key_pem: PathBuf,
    /// A second, unrelated CA: a client trusting only this must refuse the server.
    pub other_ca_pem: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .env("OPENSSL_CONF", dir.join("openssl.cnf"))
        .output()
        .expect("cannot run openssl (is /usr/bin/openssl installed?)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn serial() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Positive, non-zero, unique enough within and across runs.
    format!(
        "0x{:08x}{:016x}{:04x}",
        std::process::id(),
        nanos,
        n & 0xffff
    )
}

impl Certs {
    /// Make a fresh set in a new temp dir (mode 0755, files 0644 so that
    /// unprivileged server processes can read them). Takes ~30 ms.
    pub fn generate() -> Certs {
        use std::os::unix::fs::PermissionsExt;
        let dir = super::temp_dir("imipd-certs-");
        let d = dir.path();
        std::fs::write(d.join("openssl.cnf"), OPENSSL_CNF).unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];

        let make_ca = |key: &str, pem: &str, cn: &str| {
            let subj = format!("/CN={cn}/O=imipd tests");
            let mut args = vec!["req", "-x509", "-new", "-config", "openssl.cnf"];
            args.extend_from_slice(&ec);
            args.extend_from_slice(&[
                "-keyout",
                key,
                "-out",
                pem,
                "-days",
                "3650",
                "-subj",
                &subj,
                "-extensions",
                "v3_ca",
                "-set_serial",
            ]);
            let s = serial();
            args.push(&s);
            openssl(d, &args);
        };
        make_ca("ca.key", "ca.pem", "imipd test CA");
        make_ca("other-ca.key", "other-ca.pem", "imipd unrelated CA");

        let mut args = vec!["req", "-new", "-config", "openssl.cnf"];
        args.extend_from_slice(&ec);
        args.extend_from_slice(&[
            "-keyout",
            "key.pem",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost/O=imipd tests",
        ]);
        openssl(d, &args);
        let s = serial();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &s,
                "-days",
                "3650",
                "-extfile",
                "openssl.cnf",
                "-extensions",
                "v3_server",
                "-out",
                "cert.pem",
            ],
        );
        for f in ["ca.pem", "other-ca.pem", "cert.pem", "key.pem"] {
            std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        Certs {
            ca_pem: d.join("ca.pem"),
            cert_pem: d.join("cert.pem"),
            key_pem: d.join("key.pem"),
            other_ca_pem: d.join("other-ca.pem"),
            dir,
        }
    }
}
