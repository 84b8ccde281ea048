//! PGP/MIME (RFC 3156) with rPGP (the `pgp` crate): verifying a detached
//! `application/pgp-signature` against a folder of public keys, opening
//! `multipart/encrypted` with my secret key (and verifying a signature
//! inside it), and signing what imipd sends.
//!
//! A key proves the addresses of its user IDs (`Name <addr>`, or a bare
//! address) once its self-signatures verify; a key with a revocation
//! signature proves nothing.

use std::path::Path;

use pgp::composed::{
    Deserializable, Message, SignedPublicKey, SignedSecretKey, StandaloneSignature,
};
use pgp::packet::{SignatureConfig, SignatureType, Subpacket, SubpacketData};
use pgp::types::{KeyDetails, Password, PublicKeyTrait};

/// The public keys whose user IDs name who signed.
#[derive(Clone, Default)]
pub struct PublicKeys {
    keys: Vec<(SignedPublicKey, Vec<String>)>,
}

impl std::fmt::Debug for PublicKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKeys({} keys)", self.keys.len())
    }
}

impl PublicKeys {
    /// Every key in the files of a folder (ASCII-armoured or binary); files
    /// that hold no key are skipped, a key whose self-signatures do not
    /// verify or that is revoked is left out.
    pub fn load(dir: &Path) -> Result<PublicKeys, String> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read the PGP key folder {}: {e}", dir.display()))?;
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        let mut keys = Vec::new();
        for p in paths {
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            let parsed: Vec<SignedPublicKey> = if bytes.starts_with(b"-----") {
                match SignedPublicKey::from_armor_many(&bytes[..]) {
                    Ok((iter, _)) => iter.filter_map(|k| k.ok()).collect(),
                    Err(_) => continue,
                }
            } else {
                match SignedPublicKey::from_bytes_many(&bytes[..]) {
                    Ok(iter) => iter.filter_map(|k| k.ok()).collect(),
                    Err(_) => continue,
                }
            };
            for k in parsed {
                if k.verify().is_err() || !k.details.revocation_signatures.is_empty() {
                    tracing::warn!(file = %p.display(), "a PGP key whose self-signatures do not verify, or that is revoked, is not used");
                    continue;
                }
                let names = user_addresses(k.details.users.iter().map(|u| u.id.id()));
                keys.push((k, names));
            }
        }
        Ok(PublicKeys { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The addresses a verified signature over `data` proves.
    fn verify(&self, sig: &pgp::packet::Signature, data: &[u8]) -> Result<Vec<String>, String> {
        if self.keys.is_empty() {
            return Err("no PGP public key is configured ([trust] pgp_public_keys)".into());
        }
        let issuers: Vec<_> = sig.issuer().into_iter().cloned().collect();
        let fingerprints: Vec<_> = sig.issuer_fingerprint().into_iter().cloned().collect();
        let mut known = false;
        for (k, names) in &self.keys {
            let candidates: Vec<&dyn PublicKeyTrait> =
                std::iter::once(&k.primary_key as &dyn PublicKeyTrait)
                    .chain(
                        k.public_subkeys
                            .iter()
                            .map(|s| &s.key as &dyn PublicKeyTrait),
                    )
                    .collect();
            for c in candidates {
                let named =
                    issuers.contains(&c.key_id()) || fingerprints.contains(&c.fingerprint());
                if !(named || issuers.is_empty() && fingerprints.is_empty()) {
                    continue;
                }
                known = true;
                if verify_with(sig, c, data) {
                    return Ok(names.clone());
                }
            }
        }
        if known {
            Err("the PGP signature does not verify: the signed content or the signature was changed".into())
        } else {
            Err("the PGP signature is by a key that is not in [trust] pgp_public_keys".into())
        }
    }
}

fn verify_with(sig: &pgp::packet::Signature, key: &dyn PublicKeyTrait, data: &[u8]) -> bool {
    struct Dyn<'a>(&'a dyn PublicKeyTrait);
    impl std::fmt::Debug for Dyn<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "key {}", self.0.key_id())
        }
    }
    impl KeyDetails for Dyn<'_> {
        fn version(&self) -> pgp::types::KeyVersion {
            self.0.version()
        }
        fn fingerprint(&self) -> pgp::types::Fingerprint {
            self.0.fingerprint()
        }
        fn key_id(&self) -> pgp::types::KeyId {
            self.0.key_id()
        }
        fn algorithm(&self) -> pgp::crypto::public_key::PublicKeyAlgorithm {
            self.0.algorithm()
        }
    }
    impl PublicKeyTrait for Dyn<'_> {
        fn verify_signature(
            &self,
            hash: pgp::crypto::hash::HashAlgorithm,
            data: &[u8],
            sig: &pgp::types::SignatureBytes,
        ) -> pgp::errors::Result<()> {
            self.0.verify_signature(hash, data, sig)
        }
        fn created_at(&self) -> &chrono::DateTime<chrono::Utc> {
            self.0.created_at()
        }
        fn expiration(&self) -> Option<u16> {
            self.0.expiration()
        }
        fn public_params(&self) -> &pgp::types::PublicParams {
            self.0.public_params()
        }
        fn is_signing_key(&self) -> bool {
            self.0.is_signing_key()
        }
        fn is_encryption_key(&self) -> bool {
            self.0.is_encryption_key()
        }
    }
    sig.verify(&Dyn(key), data).is_ok()
}

/// The e-mail addresses of user IDs (`Name <addr>` or a bare address),
/// lower-cased.
fn user_addresses<'a>(ids: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        let s = String::from_utf8_lossy(id);
        let addr = match (s.rfind('<'), s.rfind('>')) {
            (Some(a), Some(b)) if a < b => s[a + 1..b].to_string(),
            _ => s.trim().to_string(),
        };
        let addr = addr.trim().to_ascii_lowercase();
        if addr.contains('@') && !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// The addresses a detached signature (`application/pgp-signature`, armoured
/// or binary) over `content` proves, or why it proves nothing.
pub fn verify_detached(
    content: &[u8],
    signature: &[u8],
    keys: &PublicKeys,
) -> Result<Vec<String>, String> {
    let sig = if signature.windows(5).any(|w| w == b"-----") {
        StandaloneSignature::from_armor_single(signature).map(|(s, _)| s)
    } else {
        StandaloneSignature::from_bytes(signature)
    }
    .map_err(|e| format!("cannot read the PGP signature: {e}"))?;
    keys.verify(&sig.signature, content)
}

/// My secret key: to open mail encrypted to me and to sign what imipd sends.
pub struct SecretKey {
    key: SignedSecretKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pgp::SecretKey({:?})", self.addresses())
    }
}

impl SecretKey {
    /// Read an ASCII-armoured (or binary) secret key without a passphrase.
    pub fn load(path: &Path) -> Result<SecretKey, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let key = if bytes.starts_with(b"-----") {
            SignedSecretKey::from_armor_single(&bytes[..]).map(|(k, _)| k)
        } else {
            SignedSecretKey::from_bytes(&bytes[..])
        }
        .map_err(|e| format!("cannot read the PGP secret key in {}: {e}", path.display()))?;
        if key.primary_key.secret_params().is_encrypted() {
            return Err(format!(
                "cannot use the PGP secret key in {}: it is protected by a passphrase; export it without one (`gpg --export-secret-keys` after `gpg --passwd` with an empty passphrase) into a file only you can read",
                path.display()
            ));
        }
        Ok(SecretKey { key })
    }

    pub fn addresses(&self) -> Vec<String> {
        user_addresses(self.key.details.users.iter().map(|u| u.id.id()))
    }

    /// A detached, ASCII-armoured signature over `data` (binary document,
    /// SHA-256 where the key allows it).
    pub fn sign_detached(
        &self,
        data: &[u8],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<String, String> {
        let k = &self.key.primary_key;
        let mut cfg = SignatureConfig::v4(
            SignatureType::Binary,
            k.algorithm(),
            pgp::crypto::hash::HashAlgorithm::Sha256,
        );
        let sub =
            |d| Subpacket::regular(d).map_err(|e| format!("cannot build the PGP signature: {e}"));
        cfg.hashed_subpackets = vec![
            sub(SubpacketData::SignatureCreationTime(now))?,
            sub(SubpacketData::IssuerFingerprint(k.fingerprint()))?,
        ];
        cfg.unhashed_subpackets = vec![sub(SubpacketData::Issuer(k.key_id()))?];
        let sig = cfg
            .sign(k, &Password::empty(), data)
            .map_err(|e| format!("cannot sign with my PGP key: {e}"))?;
        StandaloneSignature::new(sig)
            .to_armored_string(Default::default())
            .map_err(|e| format!("cannot write the PGP signature: {e}"))
    }
}

/// Open a PGP/MIME encrypted message (the `application/octet-stream` part
/// of `multipart/encrypted`): the MIME entity inside, and what a signature
/// inside it proves (`None`: not signed inside).
pub fn decrypt(
    armored: &[u8],
    me: Option<&SecretKey>,
    keys: &PublicKeys,
    limit: usize,
) -> Result<(Vec<u8>, Option<super::Signers>), String> {
    let (msg, _) = Message::from_armor(armored)
        .map_err(|e| format!("cannot read the PGP encrypted message: {e}"))?;
    let Some(me) = me else {
        return Err("the message is encrypted with PGP, and no key of mine is configured to open it ([identity] pgp_secret_key)".into());
    };
    let mut msg = msg.decrypt(&Password::empty(), &me.key).map_err(|e| {
        format!(
            "the message is encrypted with PGP for someone else, or cannot be opened with my key ({}): {e}",
            me.addresses().join(", ")
        )
    })?;
    if msg.is_compressed() {
        msg = msg
            .decompress()
            .map_err(|e| format!("cannot decompress the PGP message: {e}"))?;
    }
    let signed = msg.is_signed() || msg.is_one_pass_signed();
    // Compressed data may expand without bound: read no more than a whole
    // message may hold.
    let mut data = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(&mut msg, limit as u64 + 1),
        &mut data,
    )
    .map_err(|e| format!("cannot read the PGP encrypted message: {e}"))?;
    if data.len() > limit {
        return Err(format!(
            "the PGP encrypted message holds more than {limit} bytes (limits.max_message_bytes); it was not read"
        ));
    }
    if signed {
        // The signature is checked once the content is read to the end.
        std::io::copy(&mut msg, &mut std::io::sink())
            .map_err(|e| format!("cannot read the PGP encrypted message: {e}"))?;
    }
    if !signed {
        return Ok((data, None));
    }
    let mut proven = Err("the PGP signature inside the encrypted message is by a key that is not in [trust] pgp_public_keys".to_string());
    for (k, names) in &keys.keys {
        let ok = msg.verify(&k.primary_key).is_ok()
            || k.public_subkeys.iter().any(|s| msg.verify(&s.key).is_ok());
        if ok {
            proven = Ok(names.clone());
            break;
        }
    }
    if keys.keys.is_empty() {
        proven = Err("no PGP public key is configured ([trust] pgp_public_keys)".into());
    }
    Ok((data, Some(proven)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_name_addresses() {
        let ids: [&[u8]; 4] = [
            b"Alice Example <Alice@Example.com>",
            b"bob@example.com",
            b"No Address",
            b"Alice <alice@example.com>",
        ];
        assert_eq!(
            user_addresses(ids.into_iter()),
            vec![
                "alice@example.com".to_string(),
                "bob@example.com".to_string()
            ]
        );
    }

    #[test]
    fn a_missing_key_folder_is_an_error() {
        let e = PublicKeys::load(Path::new("/nonexistent/imipd-keys")).unwrap_err();
        assert!(e.starts_with("cannot read the PGP key folder"), "{e}");
    }
}
