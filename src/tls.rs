//! TLS for the IMAP and SMTP connections: rustls with the ring provider, trusting the
//! system roots plus an optional CA file (a self-hosted server). Certificate
//! verification is always on; plain text is only used when the configuration
//! says `tls = "none"`. A failed handshake is explained in words that say
//! what to change ([`explain_handshake_error`]).

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Install ring as the process-wide crypto provider (once; later calls are
/// no-ops), so that no second provider can be picked at run time.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client configuration that trusts the system roots and `ca_file`. Made
/// once per CA file (and its modification time) and shared: reading and
/// parsing the system's roots costs milliseconds, which a thousand accounts
/// connecting would pay a thousand times.
pub fn client_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    type Key = (Option<std::path::PathBuf>, Option<std::time::SystemTime>);
    static MADE: std::sync::Mutex<Vec<(Key, Arc<rustls::ClientConfig>)>> =
        std::sync::Mutex::new(Vec::new());
    let key: Key = (
        ca_file.map(Path::to_path_buf),
        ca_file.and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()),
    );
    if let Some((_, c)) = MADE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(k, _)| *k == key)
    {
        return Ok(c.clone());
    }
    let config = make_client_config(ca_file)?;
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    made.retain(|(k, _)| k.0 != key.0);
    made.push((key, config.clone()));
    Ok(config)
}

fn make_client_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    install_provider();
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| anyhow::anyhow!("cannot read CA file {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("cannot read CA file {}: {e}", path.display()))?;
        if certs.is_empty() {
            anyhow::bail!(
                "cannot read CA file {}: it holds no certificate",
                path.display()
            );
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| anyhow::anyhow!("cannot use CA file {}: {e}", path.display()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| anyhow::anyhow!("cannot set up TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Which protocol a TLS handshake was for, for advice in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Imap,
    Smtp,
}

impl Service {
    /// The port where the protocol speaks TLS from the first byte.
    fn tls_port(self) -> u16 {
        match self {
            Service::Imap => 993,
            Service::Smtp => 465,
        }
    }
}

/// The rustls error somewhere in an error's chain (as tokio-rustls and
/// lettre wrap it), if there is one.
pub fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(r);
            }
        }
        cur = err.source();
    }
    None
}

/// A failed TLS handshake with `host:port`, said so that the user knows
/// what to change: a server that answered in plain text (TLS spoken to a
/// plain port), a certificate nothing trusted (name the host, suggest
/// `ca_file`), a certificate for another name, an expired one.
pub fn explain_handshake_error(
    e: &(dyn std::error::Error + 'static),
    host: &str,
    port: u16,
    service: Service,
) -> String {
    match rustls_error(e) {
        Some(err) => explain_rustls(err, host, port, service),
        None => format!("TLS handshake failed: {e}"),
    }
}

fn explain_rustls(err: &rustls::Error, host: &str, port: u16, service: Service) -> String {
    use rustls::{CertificateError, Error as E};
    match err {
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => format!(
            "the server did not answer TLS on port {port} (it seems to speak plain text there): \
             try tls = \"starttls\" for this port, or port {} with tls = \"implicit\" ({err})",
            service.tls_port()
        ),
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "the certificate of {host} is not trusted: it is not signed by a certificate authority \
                 this system trusts ({err}); if {host} uses a certificate of its own CA, set \
                 ca_file = \"/path/to/ca.pem\" (that CA's certificate, PEM) in this section"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                "the certificate of {host} is not valid for the name {host} ({err}): \
                 set host to a name the certificate names"
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!(
                "the certificate of {host} has expired ({err}): the server's administrator must renew it"
            ),
            _ => format!("the certificate of {host} is refused: {err}"),
        },
        _ => format!("TLS handshake failed: {err}"),
    }
}
