//! TLS for the IMAP connections: rustls with the ring provider, trusting the
//! system roots plus an optional CA file (a self-hosted server). Certificate
//! verification is always on; plain text is only used when the configuration
//! says `tls = "none"`.

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
