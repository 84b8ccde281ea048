//! Keys and certificates for the trust tests, made at run time by the real
//! tools: `openssl` for an S/MIME CA and its certificates (signers with and
//! without the e-mail protection usage, an expired one, one from an
//! unrelated CA, mine for decrypting and signing), `gpg` for PGP keys in a
//! throwaway home (its agent is stopped on drop). Test mail is signed and
//! encrypted with these tools too ([`Keys::smime_sign`],
//! [`Keys::gpg_sign`], ...), never by imipd itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
default_ca = testca
[testca]
database = index.txt
new_certs_dir = issued
serial = serial
default_md = sha256
policy = anything
copy_extensions = none
[anything]
commonName = supplied
emailAddress = optional
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[v3_smime]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment
extendedKeyUsage = emailProtection
subjectAltName = email:copy
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[v3_server_only]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = email:copy
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
";

/// One certificate and its key (PEM files).
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct Keys {
    pub dir: tempfile::TempDir,
    /// The CA imipd trusts (`[trust] smime_ca_files`).
    pub ca: PathBuf,
    /// alice@example.com, e-mail protection, EC P-256.
    pub alice: Pair,
    /// alice@example.com with only the serverAuth usage.
    pub alice_no_usage: Pair,
    /// alice@example.com, expired in 2021.
    pub alice_expired: Pair,
    /// alice@example.com from a CA imipd does not trust.
    pub alice_unknown_ca: Pair,
    /// carol@example.com: someone else.
    pub carol: Pair,
    /// bob@example.com (me), RSA: decrypting and signing.
    pub bob: Pair,
    /// dave@example.com, RSA: mail encrypted for someone else.
    pub dave: Pair,
    /// The gpg home with alice's, bob's and mallory's keys.
    pub gnupg: PathBuf,
    /// A folder with alice's public key only (`[trust] pgp_public_keys`).
    pub pgp_public: PathBuf,
    /// Bob's secret key, unprotected, 0600 (`[identity] pgp_secret_key`).
    pub bob_pgp_secret: PathBuf,
    /// Bob's public key (for `gpg --verify` of imipd's replies).
    pub bob_pgp_public: PathBuf,
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.gnupg)
            .args(["--kill", "all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn run(dir: &Path, program: &str, args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    let mut c = Command::new(program);
    c.current_dir(dir)
        .args(args)
        .env("OPENSSL_CONF", dir.join("openssl.cnf"))
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (install it: scripts/test does): {e}"));
    if let Some(i) = input {
        child.stdin.take().unwrap().write_all(i).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl Keys {
    /// Make everything in a fresh temp dir (about a second).
    pub fn generate() -> Keys {
        let dir = super::temp_dir("imipd-keys-");
        let d = dir.path().to_path_buf();
        std::fs::write(d.join("openssl.cnf"), CNF).unwrap();
        let ossl = |args: &[&str]| {
            run(&d, "openssl", args, None);
        };
        let ca = |name: &str| {
            std::fs::create_dir_all(d.join(name).join("issued")).unwrap();
            std::fs::write(d.join(name).join("index.txt"), "").unwrap();
            std::fs::write(d.join(name).join("index.txt.attr"), "unique_subject = no\n").unwrap();
            std::fs::write(d.join(name).join("serial"), "1000\n").unwrap();
            ossl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}/ca.key"),
                "-out",
                &format!("{name}/ca.pem"),
                "-subj",
                &format!("/CN=imipd test {name}"),
                "-days",
                "3650",
                "-extensions",
                "v3_ca",
            ]);
        };
        ca("ca");
        ca("otherca");
        let issue = |ca: &str,
                     name: &str,
                     email: &str,
                     rsa: bool,
                     ext: &str,
                     dates: Option<(&str, &str)>|
         -> Pair {
            let key = format!("{name}.key");
            let csr = format!("{name}.csr");
            let cert = format!("{name}.pem");
            let mut req = vec!["req", "-newkey"];
            if rsa {
                req.push("rsa:2048");
            } else {
                req.extend(["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
            }
            let subj = format!("/CN={name}/emailAddress={email}");
            req.extend(["-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj]);
            ossl(&req);
            let (ca_key, ca_pem) = (format!("{ca}/ca.key"), format!("{ca}/ca.pem"));
            let mut sign = vec![
                "ca",
                "-batch",
                "-config",
                "openssl.cnf",
                "-name",
                "testca",
                "-notext",
                "-keyfile",
                &ca_key,
                "-cert",
                &ca_pem,
                "-in",
                &csr,
                "-out",
                &cert,
                "-extensions",
                ext,
            ];
            let (s, e);
            match dates {
                Some((a, b)) => {
                    s = a.to_string();
                    e = b.to_string();
                    sign.extend(["-startdate", &s, "-enddate", &e]);
                }
                None => sign.extend(["-days", "3650"]),
            }
            // Each CA keeps its own database.
            let db = format!("{ca}/index.txt");
            let nc = format!("{ca}/issued");
            let serial = format!("{ca}/serial");
            let cnf = CNF
                .replace("database = index.txt", &format!("database = {db}"))
                .replace("new_certs_dir = issued", &format!("new_certs_dir = {nc}"))
                .replace("serial = serial", &format!("serial = {serial}"));
            std::fs::write(d.join(format!("{name}.cnf")), cnf).unwrap();
            let cfgname = format!("{name}.cnf");
            sign[3] = &cfgname;
            ossl(&sign);
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(d.join(&key), std::fs::Permissions::from_mode(0o600)).unwrap();
            Pair {
                cert: d.join(cert),
                key: d.join(key),
            }
        };
        let alice = issue("ca", "alice", "alice@example.com", false, "v3_smime", None);
        let alice_no_usage = issue(
            "ca",
            "alice-no-usage",
            "alice@example.com",
            false,
            "v3_server_only",
            None,
        );
        let alice_expired = issue(
            "ca",
            "alice-expired",
            "alice@example.com",
            false,
            "v3_smime",
            Some(("20200101000000Z", "20210101000000Z")),
        );
        let alice_unknown_ca = issue(
            "otherca",
            "alice-other",
            "alice@example.com",
            false,
            "v3_smime",
            None,
        );
        let carol = issue("ca", "carol", "carol@example.com", false, "v3_smime", None);
        let bob = issue("ca", "bob", "bob@example.com", true, "v3_smime", None);
        let dave = issue("ca", "dave", "dave@example.com", true, "v3_smime", None);

        // gpg: alice signs, bob signs and decrypts, mallory is unknown to imipd.
        let gnupg = d.join("gnupg");
        std::fs::create_dir_all(&gnupg).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&gnupg, std::fs::Permissions::from_mode(0o700)).unwrap();
        let home = gnupg.to_str().unwrap().to_string();
        let gpg = |args: &[&str]| -> Vec<u8> {
            let mut all = vec![
                "--homedir",
                &home,
                "--batch",
                "--quiet",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ];
            all.extend_from_slice(args);
            run(&d, "gpg", &all, None)
        };
        for who in [
            "Alice <alice@example.com>",
            "Bob <bob@example.com>",
            "Mallory <mallory@example.com>",
        ] {
            gpg(&["--quick-gen-key", who, "ed25519", "sign", "never"]);
            let fpr = fingerprint(&d, &home, who);
            gpg(&["--quick-add-key", &fpr, "cv25519", "encr", "never"]);
        }
        let pgp_public = d.join("pgp-public");
        std::fs::create_dir_all(&pgp_public).unwrap();
        std::fs::write(
            pgp_public.join("alice.asc"),
            gpg(&["--armor", "--export", "alice@example.com"]),
        )
        .unwrap();
        let bob_pgp_secret = d.join("bob-secret.asc");
        std::fs::write(
            &bob_pgp_secret,
            gpg(&["--armor", "--export-secret-keys", "bob@example.com"]),
        )
        .unwrap();
        std::fs::set_permissions(&bob_pgp_secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let bob_pgp_public = d.join("bob-public.asc");
        std::fs::write(
            &bob_pgp_public,
            gpg(&["--armor", "--export", "bob@example.com"]),
        )
        .unwrap();
        Keys {
            ca: d.join("ca/ca.pem"),
            dir,
            alice,
            alice_no_usage,
            alice_expired,
            alice_unknown_ca,
            carol,
            bob,
            dave,
            gnupg,
            pgp_public,
            bob_pgp_secret,
            bob_pgp_public,
        }
    }

    fn d(&self) -> &Path {
        self.dir.path()
    }

    /// `openssl smime -sign` of a MIME entity: the signed MIME body
    /// (multipart/signed, or opaque pkcs7-mime with `opaque`), header
    /// fields of the entity included.
    pub fn smime_sign(&self, entity: &str, signer: &Pair, opaque: bool) -> String {
        let mut args = vec![
            "smime",
            "-sign",
            "-signer",
            signer.cert.to_str().unwrap(),
            "-inkey",
            signer.key.to_str().unwrap(),
        ];
        if opaque {
            args.push("-nodetach");
        }
        String::from_utf8(run(self.d(), "openssl", &args, Some(entity.as_bytes()))).unwrap()
    }

    /// `openssl smime -encrypt` of a MIME entity for a recipient certificate.
    pub fn smime_encrypt(&self, entity: &str, recipient: &Pair) -> String {
        let args = [
            "smime",
            "-encrypt",
            "-aes256",
            recipient.cert.to_str().unwrap(),
        ];
        String::from_utf8(run(self.d(), "openssl", &args, Some(entity.as_bytes()))).unwrap()
    }

    fn gpg(&self, args: &[&str], input: &[u8]) -> Vec<u8> {
        let home = self.gnupg.to_str().unwrap();
        let mut all = vec![
            "--homedir",
            home,
            "--batch",
            "--quiet",
            "--trust-model",
            "always",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ];
        all.extend_from_slice(args);
        run(self.d(), "gpg", &all, Some(input))
    }

    /// A detached, armoured `gpg` signature by `who` over exact bytes.
    pub fn gpg_sign(&self, who: &str, data: &[u8]) -> String {
        String::from_utf8(self.gpg(
            &[
                "--local-user",
                who,
                "--armor",
                "--detach-sign",
                "--digest-algo",
                "SHA256",
            ],
            data,
        ))
        .unwrap()
    }

    /// `gpg --encrypt` (and `--sign` by `signer`) for `to`, armoured.
    pub fn gpg_encrypt(&self, to: &str, signer: Option<&str>, data: &[u8]) -> String {
        let mut args = vec!["--armor", "--encrypt", "--recipient", to];
        if let Some(s) = signer {
            args.extend(["--sign", "--local-user", s]);
        }
        String::from_utf8(self.gpg(&args, data)).unwrap()
    }

    /// `gpg --verify` of a detached signature over data, with bob's public
    /// key imported into a fresh keyring: whether it verified, and gpg's words.
    pub fn gpg_verify(&self, signature: &[u8], data: &[u8]) -> (bool, String) {
        let dir = tempfile::Builder::new()
            .prefix("gv")
            .tempdir_in("/tmp")
            .unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let home = dir.path().to_str().unwrap().to_string();
        let sig = dir.path().join("sig.asc");
        let dat = dir.path().join("data");
        std::fs::write(&sig, signature).unwrap();
        std::fs::write(&dat, data).unwrap();
        let base = [
            "--homedir",
            home.as_str(),
            "--batch",
            "--trust-model",
            "always",
        ];
        let import = Command::new("gpg")
            .args(base)
            .arg("--import")
            .arg(&self.bob_pgp_public)
            .output()
            .unwrap();
        assert!(
            import.status.success(),
            "{}",
            String::from_utf8_lossy(&import.stderr)
        );
        let out = Command::new("gpg")
            .args(base)
            .arg("--verify")
            .arg(&sig)
            .arg(&dat)
            .output()
            .unwrap();
        let _ = Command::new("gpgconf")
            .args(["--homedir", &home, "--kill", "all"])
            .status();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `openssl smime -verify` of a whole signed message against the CA.
    pub fn openssl_verify(&self, message: &[u8]) -> (bool, String) {
        let out = Command::new("openssl")
            .current_dir(self.d())
            .args([
                "smime",
                "-verify",
                "-CAfile",
                self.ca.to_str().unwrap(),
                "-purpose",
                "smimesign",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(message)?;
                c.wait_with_output()
            })
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn fingerprint(dir: &Path, home: &str, uid: &str) -> String {
    let out = run(
        dir,
        "gpg",
        &[
            "--homedir",
            home,
            "--batch",
            "--with-colons",
            "--list-keys",
            uid,
        ],
        None,
    );
    let text = String::from_utf8_lossy(&out);
    text.lines()
        .find(|l| l.starts_with("fpr:"))
        .and_then(|l| l.split(':').nth(9))
        .unwrap()
        .to_string()
}
