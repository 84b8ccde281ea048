//! S/MIME (RFC 8551) over CMS (RFC 5652): verifying `SignedData` (detached,
//! for `multipart/signed`, or with its content inside, for
//! `application/pkcs7-mime; smime-type=signed-data`), opening
//! `EnvelopedData` addressed to my certificate, and signing what imipd
//! sends. The CMS structures are read with RustCrypto's `cms` and
//! `x509-cert`; the certificate chain, the validity period, the extended key
//! usage and the signature itself are checked by `rustls-webpki` on `ring`;
//! RSA key transport is opened with the `rsa` crate, the content with
//! `aes`/`des` in CBC mode.
//!
//! A signer's certificate proves an address when it chains to a trusted CA,
//! is valid now (the real clock, not `IMIPD_NOW`: a certificate's validity
//! is a fact of the world), states the e-mail protection extended key usage
//! (and, when it has a key usage, digital signature or non-repudiation), and
//! names the address (rfc822Name in subjectAltName, or emailAddress in the
//! subject).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::enveloped_data::{EnvelopedData, RecipientIdentifier, RecipientInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{Ia5StringRef, ObjectIdentifier as Oid, OctetString, SetOfVec};
use der::{Any, Decode, Encode};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, SignatureVerificationAlgorithm, UnixTime};
use x509_cert::attr::{Attribute, AttributeValue};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{KeyUsage, SubjectAltName, SubjectKeyIdentifier};
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;

const ID_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.1");
const ID_SIGNED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.2");
const ID_ENVELOPED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.3");
const ID_AUTH_ENVELOPED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.9.16.1.23");
const ATTR_CONTENT_TYPE: Oid = Oid::new_unwrap("1.2.840.113549.1.9.3");
const ATTR_MESSAGE_DIGEST: Oid = Oid::new_unwrap("1.2.840.113549.1.9.4");
const ATTR_SIGNING_TIME: Oid = Oid::new_unwrap("1.2.840.113549.1.9.5");
const EMAIL_ADDRESS: Oid = Oid::new_unwrap("1.2.840.113549.1.9.1");
const SAN: Oid = Oid::new_unwrap("2.5.29.17");
const KEY_USAGE: Oid = Oid::new_unwrap("2.5.29.15");
const SKI: Oid = Oid::new_unwrap("2.5.29.14");
const SHA1: Oid = Oid::new_unwrap("1.3.14.3.2.26");
const SHA256: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.2");
const SHA512: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.3");
const RSA_ENCRYPTION: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
const RSAES_OAEP: Oid = Oid::new_unwrap("1.2.840.113549.1.1.7");
const SHA256_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");
const ECDSA_WITH_SHA256: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
const ED25519: Oid = Oid::new_unwrap("1.3.101.112");
const AES128_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.2");
const AES192_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.22");
const AES256_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.42");
const DES_EDE3_CBC: Oid = Oid::new_unwrap("1.2.840.113549.3.7");
/// id-kp-emailProtection (1.3.6.1.5.5.7.3.4), DER content octets.
const EKU_EMAIL_PROTECTION: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x04];

/// The CAs whose certificates prove who signed.
#[derive(Clone, Default)]
pub struct Anchors {
    certs: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Anchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Anchors({} CA certificates)", self.certs.len())
    }
}

impl Anchors {
    /// The CA certificates of PEM files, plus the system's roots when asked.
    pub fn load(files: &[impl AsRef<Path>], system: bool) -> Result<Anchors, String> {
        let mut certs = Vec::new();
        for f in files {
            let f = f.as_ref();
            let found = read_certs(f)?;
            if found.is_empty() {
                return Err(format!(
                    "cannot read {}: it holds no PEM CERTIFICATE",
                    f.display()
                ));
            }
            for c in &found {
                webpki::anchor_from_trusted_cert(c)
                    .map_err(|e| format!("cannot use a CA certificate of {}: {e}", f.display()))?;
            }
            certs.extend(found);
        }
        if system {
            let native = rustls_native_certs::load_native_certs();
            certs.extend(native.certs);
        }
        Ok(Anchors { certs })
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

/// Every certificate of a PEM file.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    iter.collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// My certificate and private key: to open mail encrypted to me and to
/// sign what imipd sends.
pub struct Identity {
    /// My certificate first, then any chain certificates the file holds.
    chain: Vec<CertificateDer<'static>>,
    cert: Certificate,
    key: Key,
}

enum Key {
    Rsa {
        sign: ring::rsa::KeyPair,
        decrypt: Box<rsa::RsaPrivateKey>,
    },
    Ecdsa(ring::signature::EcdsaKeyPair),
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "smime::Identity({:?})", addresses(&self.cert).join(", "))
    }
}

impl Identity {
    /// Read my certificate (PEM, chain certificates may follow) and key
    /// (PEM: PKCS#8, or PKCS#1 for RSA).
    pub fn load(cert: &Path, key: &Path) -> Result<Identity, String> {
        let chain = read_certs(cert)?;
        let first = chain.first().ok_or_else(|| {
            format!(
                "cannot read {}: it holds no PEM CERTIFICATE",
                cert.display()
            )
        })?;
        let parsed = Certificate::from_der(first)
            .map_err(|e| format!("cannot read the certificate in {}: {e}", cert.display()))?;
        let der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("cannot read the private key in {}: {e}", key.display()))?;
        let k = match &der {
            PrivateKeyDer::Pkcs8(p) => {
                let bytes = p.secret_pkcs8_der();
                if let Ok(kp) = ring::rsa::KeyPair::from_pkcs8(bytes) {
                    use rsa::pkcs8::DecodePrivateKey;
                    let d = rsa::RsaPrivateKey::from_pkcs8_der(bytes)
                        .map_err(|e| format!("cannot read the RSA key in {}: {e}", key.display()))?;
                    Key::Rsa {
                        sign: kp,
                        decrypt: Box::new(d),
                    }
                } else {
                    let rng = ring::rand::SystemRandom::new();
                    let kp = ring::signature::EcdsaKeyPair::from_pkcs8(
                        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                        bytes,
                        &rng,
                    )
                    .map_err(|e| {
                        format!(
                            "cannot use the private key in {}: it is neither RSA nor ECDSA P-256 ({e})",
                            key.display()
                        )
                    })?;
                    Key::Ecdsa(kp)
                }
            }
            PrivateKeyDer::Pkcs1(p) => {
                use rsa::pkcs1::DecodeRsaPrivateKey;
                let bytes = p.secret_pkcs1_der();
                let kp = ring::rsa::KeyPair::from_der(bytes)
                    .map_err(|e| format!("cannot use the RSA key in {}: {e}", key.display()))?;
                let d = rsa::RsaPrivateKey::from_pkcs1_der(bytes)
                    .map_err(|e| format!("cannot read the RSA key in {}: {e}", key.display()))?;
                Key::Rsa {
                    sign: kp,
                    decrypt: Box::new(d),
                }
            }
            _ => {
                return Err(format!(
                    "cannot use the private key in {}: write it as PKCS#8 (`openssl pkcs8 -topk8 -nocrypt`)",
                    key.display()
                ))
            }
        };
        Ok(Identity {
            chain,
            cert: parsed,
            key: k,
        })
    }

    /// The addresses my certificate names.
    pub fn addresses(&self) -> Vec<String> {
        addresses(&self.cert)
    }
}

/// The addresses a certificate names: rfc822Name entries of its
/// subjectAltName and emailAddress attributes of its subject, lower-cased.
pub fn addresses(cert: &Certificate) -> Vec<String> {
    let mut out = Vec::new();
    for ext in cert.tbs_certificate.extensions.iter().flatten() {
        if ext.extn_id == SAN {
            if let Ok(san) = SubjectAltName::from_der(ext.extn_value.as_bytes()) {
                for n in san.0 {
                    if let GeneralName::Rfc822Name(a) = n {
                        out.push(a.as_str().trim().to_ascii_lowercase());
                    }
                }
            }
        }
    }
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == EMAIL_ADDRESS {
                if let Ok(s) = atv.value.decode_as::<Ia5StringRef<'_>>() {
                    out.push(s.as_str().trim().to_ascii_lowercase());
                }
            }
        }
    }
    out.dedup();
    out
}

/// Base64 (as in a MIME body, line breaks and all) or raw DER.
pub fn der_of(body: &[u8]) -> Vec<u8> {
    if body.first() == Some(&0x30) {
        return body.to_vec();
    }
    let clean: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(&clean)
        .unwrap_or_default()
}

fn now() -> UnixTime {
    UnixTime::since_unix_epoch(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// The content of opaque signed data (`smime-type=signed-data`), and the
/// addresses its signature proves (or why it proves nothing).
pub fn verify_opaque(der: &[u8], anchors: &Anchors) -> Result<(Vec<u8>, super::Signers), String> {
    let sd = signed_data(der)?;
    let content = sd
        .encap_content_info
        .econtent
        .as_ref()
        .ok_or("the S/MIME signed data holds no content")?
        .decode_as::<OctetString>()
        .map_err(|e| format!("cannot read the S/MIME signed content: {e}"))?
        .into_bytes();
    let proven = verify_signed_data(&sd, &content, anchors);
    Ok((content, proven))
}

/// The addresses a detached S/MIME signature (`application/pkcs7-signature`)
/// over `content` proves, or why it proves nothing.
pub fn verify_detached(
    content: &[u8],
    der: &[u8],
    anchors: &Anchors,
) -> Result<Vec<String>, String> {
    let sd = signed_data(der)?;
    verify_signed_data(&sd, content, anchors)
}

fn signed_data(der: &[u8]) -> Result<SignedData, String> {
    let ci =
        ContentInfo::from_der(der).map_err(|e| format!("cannot read the S/MIME signature: {e}"))?;
    if ci.content_type != ID_SIGNED_DATA {
        return Err(format!(
            "the S/MIME part is not signed data (content type {})",
            ci.content_type
        ));
    }
    ci.content
        .decode_as::<SignedData>()
        .map_err(|e| format!("cannot read the S/MIME signed data: {e}"))
}

fn verify_signed_data(
    sd: &SignedData,
    content: &[u8],
    anchors: &Anchors,
) -> Result<Vec<String>, String> {
    if anchors.is_empty() {
        return Err("no CA is trusted for S/MIME ([trust] smime_ca_files is not set)".into());
    }
    let certs: Vec<(Certificate, CertificateDer<'static>)> = sd
        .certificates
        .iter()
        .flat_map(|s| s.0.iter())
        .filter_map(|c| match c {
            CertificateChoices::Certificate(c) => {
                let der = c.to_der().ok()?;
                Some((c.clone(), CertificateDer::from(der)))
            }
            _ => None,
        })
        .collect();
    let mut first_err = None;
    for si in sd.signer_infos.0.iter() {
        match verify_signer(si, &certs, content, anchors) {
            Ok(a) => return Ok(a),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or_else(|| "the S/MIME signature has no signer".into()))
}

fn verify_signer(
    si: &SignerInfo,
    certs: &[(Certificate, CertificateDer<'static>)],
    content: &[u8],
    anchors: &Anchors,
) -> Result<Vec<String>, String> {
    let (cert, cert_der) = certs
        .iter()
        .find(|(c, _)| identifies(&si.sid, c))
        .ok_or("the S/MIME signature does not carry the signer's certificate")?;
    let digest_alg = &si.digest_alg.oid;
    let (ring_digest, algs): (
        &'static ring::digest::Algorithm,
        Vec<&dyn SignatureVerificationAlgorithm>,
    ) = if *digest_alg == SHA256 {
        (
            &ring::digest::SHA256,
            vec![
                webpki::ring::RSA_PKCS1_2048_8192_SHA256,
                webpki::ring::ECDSA_P256_SHA256,
                webpki::ring::ECDSA_P384_SHA256,
            ],
        )
    } else if *digest_alg == SHA384 {
        (
            &ring::digest::SHA384,
            vec![
                webpki::ring::RSA_PKCS1_2048_8192_SHA384,
                webpki::ring::ECDSA_P384_SHA384,
                webpki::ring::ECDSA_P256_SHA384,
            ],
        )
    } else if *digest_alg == SHA512 {
        (
            &ring::digest::SHA512,
            vec![
                webpki::ring::RSA_PKCS1_2048_8192_SHA512,
                webpki::ring::ED25519,
            ],
        )
    } else if *digest_alg == SHA1 {
        return Err("the S/MIME signature uses SHA-1, which is no longer accepted".into());
    } else {
        return Err(format!(
            "the S/MIME signature uses an unknown digest algorithm ({digest_alg})"
        ));
    };
    let algs = if si.signature_algorithm.oid == ED25519 {
        vec![webpki::ring::ED25519]
    } else {
        algs
    };
    // What was signed: the content itself, or the signed attributes, which
    // must then carry the content's digest.
    let signed: Vec<u8> = match &si.signed_attrs {
        None => content.to_vec(),
        Some(attrs) => {
            let digest = ring::digest::digest(ring_digest, content);
            let md = attrs
                .iter()
                .find(|a| a.oid == ATTR_MESSAGE_DIGEST)
                .and_then(|a| a.values.iter().next())
                .and_then(|v| v.decode_as::<OctetString>().ok())
                .ok_or("the S/MIME signature has no message digest attribute")?;
            if md.as_bytes() != digest.as_ref() {
                return Err(
                    "the S/MIME signature does not match the signed content: it was changed after signing"
                        .into(),
                );
            }
            if let Some(ct) = attrs
                .iter()
                .find(|a| a.oid == ATTR_CONTENT_TYPE)
                .and_then(|a| a.values.iter().next())
                .and_then(|v| v.decode_as::<Oid>().ok())
            {
                if ct != ID_DATA {
                    return Err(format!(
                        "the S/MIME signature is over content of type {ct}, not data"
                    ));
                }
            }
            attrs
                .to_der()
                .map_err(|e| format!("cannot encode the signed attributes: {e}"))?
        }
    };
    let ee = webpki::EndEntityCert::try_from(cert_der)
        .map_err(|e| format!("cannot read the signer's certificate: {e}"))?;
    let sig = si.signature.as_bytes();
    if !algs
        .iter()
        .any(|a| ee.verify_signature(*a, &signed, sig).is_ok())
    {
        return Err(
            "the S/MIME signature does not verify: the signed content or the signature was changed"
                .into(),
        );
    }
    // The certificate: a trusted chain, valid now, for e-mail protection.
    let trust: Vec<_> = anchors
        .certs
        .iter()
        .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
        .collect();
    let intermediates: Vec<CertificateDer<'_>> = certs
        .iter()
        .filter(|(_, d)| d != cert_der)
        .map(|(_, d)| d.clone())
        .collect();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &trust,
        &intermediates,
        now(),
        webpki::KeyUsage::required(EKU_EMAIL_PROTECTION),
        None,
        None,
    )
    .map_err(|e| describe_chain_error(&e, cert))?;
    if let Some(ku) = extension::<KeyUsage>(cert, KEY_USAGE) {
        if !ku.digital_signature() && !ku.non_repudiation() {
            return Err("the signer's certificate does not allow signing (key usage)".into());
        }
    }
    let names = addresses(cert);
    if names.is_empty() {
        return Err("the signer's certificate names no e-mail address".into());
    }
    Ok(names)
}

fn describe_chain_error(e: &webpki::Error, cert: &Certificate) -> String {
    let who = addresses(cert).join(", ");
    let who = if who.is_empty() {
        "the signer".to_string()
    } else {
        who
    };
    match e {
        webpki::Error::CertExpired { .. } => format!("the S/MIME certificate of {who} has expired"),
        webpki::Error::CertNotValidYet { .. } => {
            format!("the S/MIME certificate of {who} is not valid yet")
        }
        webpki::Error::UnknownIssuer => format!(
            "the S/MIME certificate of {who} is not issued by a trusted CA ([trust] smime_ca_files)"
        ),
        webpki::Error::RequiredEkuNotFoundContext(_) => format!(
            "the S/MIME certificate of {who} does not allow e-mail protection (extended key usage)"
        ),
        other => format!("the S/MIME certificate of {who} is not accepted: {other}"),
    }
}

fn extension<'a, T: Decode<'a>>(cert: &'a Certificate, oid: Oid) -> Option<T> {
    cert.tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == oid)
        .and_then(|e| T::from_der(e.extn_value.as_bytes()).ok())
}

/// Whether a signer or recipient identifier names this certificate.
fn identifies(sid: &SignerIdentifier, cert: &Certificate) -> bool {
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(i) => is_issuer_serial(i, cert),
        SignerIdentifier::SubjectKeyIdentifier(k) => is_ski(k, cert),
    }
}

fn is_issuer_serial(i: &IssuerAndSerialNumber, cert: &Certificate) -> bool {
    i.issuer == cert.tbs_certificate.issuer && i.serial_number == cert.tbs_certificate.serial_number
}

fn is_ski(k: &SubjectKeyIdentifier, cert: &Certificate) -> bool {
    extension::<SubjectKeyIdentifier>(cert, SKI).is_some_and(|s| s.0 == k.0)
}

/// Open S/MIME enveloped data addressed to me: the MIME entity inside.
pub fn decrypt(der: &[u8], me: Option<&Identity>) -> Result<Vec<u8>, String> {
    let ci = ContentInfo::from_der(der)
        .map_err(|e| format!("cannot read the S/MIME encrypted part: {e}"))?;
    if ci.content_type == ID_AUTH_ENVELOPED_DATA {
        return Err("the message is encrypted with S/MIME authenticated enveloped data (AES-GCM), which imipd cannot open yet".into());
    }
    if ci.content_type != ID_ENVELOPED_DATA {
        return Err(format!(
            "the S/MIME part is neither signed nor encrypted data (content type {})",
            ci.content_type
        ));
    }
    let ed = ci
        .content
        .decode_as::<EnvelopedData>()
        .map_err(|e| format!("cannot read the S/MIME encrypted data: {e}"))?;
    let Some(me) = me else {
        return Err("the message is encrypted with S/MIME, and no key of mine is configured to open it ([identity] smime_certificate, smime_key)".into());
    };
    let Key::Rsa { decrypt: key, .. } = &me.key else {
        return Err("the message is encrypted with S/MIME, but my key is not an RSA key; imipd opens RSA key transport only".into());
    };
    let mut cek = None;
    for ri in ed.recip_infos.0.iter() {
        let RecipientInfo::Ktri(k) = ri else { continue };
        let mine = match &k.rid {
            RecipientIdentifier::IssuerAndSerialNumber(i) => is_issuer_serial(i, &me.cert),
            RecipientIdentifier::SubjectKeyIdentifier(s) => is_ski(s, &me.cert),
        };
        if !mine {
            continue;
        }
        let enc = k.enc_key.as_bytes();
        let out = if k.key_enc_alg.oid == RSA_ENCRYPTION {
            key.decrypt(rsa::Pkcs1v15Encrypt, enc)
        } else if k.key_enc_alg.oid == RSAES_OAEP {
            key.decrypt(rsa::Oaep::new::<sha1::Sha1>(), enc)
        } else {
            return Err(format!(
                "the S/MIME key transport algorithm {} is not supported",
                k.key_enc_alg.oid
            ));
        };
        cek =
            Some(out.map_err(|_| "cannot open the S/MIME encrypted part with my key".to_string())?);
        break;
    }
    let Some(cek) = cek else {
        return Err(format!(
            "the message is encrypted with S/MIME for someone else: none of its recipients is my certificate ({})",
            me.addresses().join(", ")
        ));
    };
    let eci = &ed.encrypted_content;
    let ct = eci
        .encrypted_content
        .as_ref()
        .ok_or("the S/MIME encrypted part holds no content")?
        .as_bytes();
    cbc_decrypt(&eci.content_enc_alg, &cek, ct)
}

fn cbc_decrypt(alg: &AlgorithmIdentifierOwned, key: &[u8], ct: &[u8]) -> Result<Vec<u8>, String> {
    use cbc::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
    let iv = alg
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<OctetString>().ok())
        .ok_or("the S/MIME encrypted part has no initialization vector")?;
    let iv = iv.as_bytes();
    let bad = |_| "cannot open the S/MIME encrypted part: wrong key or broken content".to_string();
    let o = &alg.oid;
    if *o == AES128_CBC {
        cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv)
            .map_err(|_| "the S/MIME content key has the wrong length".to_string())?
            .decrypt_padded_vec_mut::<Pkcs7>(ct)
            .map_err(bad)
    } else if *o == AES192_CBC {
        cbc::Decryptor::<aes::Aes192>::new_from_slices(key, iv)
            .map_err(|_| "the S/MIME content key has the wrong length".to_string())?
            .decrypt_padded_vec_mut::<Pkcs7>(ct)
            .map_err(bad)
    } else if *o == AES256_CBC {
        cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv)
            .map_err(|_| "the S/MIME content key has the wrong length".to_string())?
            .decrypt_padded_vec_mut::<Pkcs7>(ct)
            .map_err(bad)
    } else if *o == DES_EDE3_CBC {
        cbc::Decryptor::<des::TdesEde3>::new_from_slices(key, iv)
            .map_err(|_| "the S/MIME content key has the wrong length".to_string())?
            .decrypt_padded_vec_mut::<Pkcs7>(ct)
            .map_err(bad)
    } else {
        Err(format!(
            "the S/MIME content encryption algorithm {o} is not supported"
        ))
    }
}

/// A detached S/MIME signature (DER `ContentInfo`) over `content` with my
/// certificate and key, SHA-256, signed attributes (content type, signing
/// time, message digest), my certificate and its chain included.
pub fn sign_detached(
    content: &[u8],
    me: &Identity,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<u8>, String> {
    let enc = |e: der::Error| format!("cannot build the S/MIME signature: {e}");
    let sha256 = AlgorithmIdentifierOwned {
        oid: SHA256,
        parameters: None,
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, content);
    let attr = |oid: Oid, value: Any| -> Result<Attribute, String> {
        Ok(Attribute {
            oid,
            values: SetOfVec::try_from(vec![AttributeValue::from(value)]).map_err(enc)?,
        })
    };
    let time = der::asn1::UtcTime::from_unix_duration(std::time::Duration::from_secs(
        now.timestamp().max(0) as u64,
    ))
    .map_err(enc)?;
    let attrs = SetOfVec::try_from(vec![
        attr(ATTR_CONTENT_TYPE, Any::encode_from(&ID_DATA).map_err(enc)?)?,
        attr(ATTR_SIGNING_TIME, Any::encode_from(&time).map_err(enc)?)?,
        attr(
            ATTR_MESSAGE_DIGEST,
            Any::encode_from(&OctetString::new(digest.as_ref().to_vec()).map_err(enc)?)
                .map_err(enc)?,
        )?,
    ])
    .map_err(enc)?;
    let to_sign = attrs.to_der().map_err(enc)?;
    let rng = ring::rand::SystemRandom::new();
    let (signature, signature_algorithm) = match &me.key {
        Key::Rsa { sign, .. } => {
            let mut sig = vec![0u8; sign.public().modulus_len()];
            sign.sign(&ring::signature::RSA_PKCS1_SHA256, &rng, &to_sign, &mut sig)
                .map_err(|_| "cannot sign with my RSA key".to_string())?;
            (
                sig,
                AlgorithmIdentifierOwned {
                    oid: SHA256_WITH_RSA,
                    parameters: Some(Any::null()),
                },
            )
        }
        Key::Ecdsa(kp) => (
            kp.sign(&rng, &to_sign)
                .map_err(|_| "cannot sign with my ECDSA key".to_string())?
                .as_ref()
                .to_vec(),
            AlgorithmIdentifierOwned {
                oid: ECDSA_WITH_SHA256,
                parameters: None,
            },
        ),
    };
    let si = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: me.cert.tbs_certificate.issuer.clone(),
            serial_number: me.cert.tbs_certificate.serial_number.clone(),
        }),
        digest_alg: sha256.clone(),
        signed_attrs: Some(attrs),
        signature_algorithm,
        signature: OctetString::new(signature).map_err(enc)?,
        unsigned_attrs: None,
    };
    let certs: Vec<CertificateChoices> = me
        .chain
        .iter()
        .filter_map(|d| Certificate::from_der(d).ok())
        .map(CertificateChoices::Certificate)
        .collect();
    let sd = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![sha256]).map_err(enc)?,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: ID_DATA,
            econtent: None,
        },
        certificates: Some(CertificateSet(SetOfVec::try_from(certs).map_err(enc)?)),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![si]).map_err(enc)?),
    };
    let ci = ContentInfo {
        content_type: ID_SIGNED_DATA,
        content: Any::encode_from(&sd).map_err(enc)?,
    };
    ci.to_der().map_err(enc)
}
