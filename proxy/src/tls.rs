//! The HTTPS listener's TLS: rustls with the configured minimum version and cipher suites,
//! ALPN for h2 and http/1.1, and a certificate that is reloaded when its files change
//! (cert-manager and Kubernetes Secret updates) without dropping open connections: each new
//! handshake asks [`ReloadingCert`] for the current key pair.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedCipherSuite};

/// How often the certificate files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Only TLS 1.3 (`tls_min_version = "TLS1.3"`); otherwise 1.2 and 1.3.
    pub tls13_only: bool,
    /// Empty: rustls's defaults (all of them are modern AEAD suites).
    pub cipher_suites: Vec<SupportedCipherSuite>,
}

/// Names of the cipher suites this build offers, for `tls_cipher_suites`.
pub fn suite_by_name(name: &str) -> Result<SupportedCipherSuite, String> {
    let all = rustls::crypto::ring::ALL_CIPHER_SUITES;
    all.iter()
        .find(|s| format!("{:?}", s.suite()).eq_ignore_ascii_case(name.trim()))
        .copied()
        .ok_or_else(|| {
            let names: Vec<String> = all.iter().map(|s| format!("{:?}", s.suite())).collect();
            format!("`{name}` is not a supported cipher suite; choose from {}", names.join(", "))
        })
}

/// Why a certificate and key pair does not load; each names the file to fix.
#[derive(Debug, thiserror::Error)]
pub enum KeyPairError {
    #[error("cannot read {}: {message}", path.display())]
    Unreadable { path: PathBuf, message: String },
    #[error("{} is not a PEM certificate chain: {message}", path.display())]
    NotPem { path: PathBuf, message: String },
    #[error("{} holds no certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no usable PEM private key: {message}", path.display())]
    NoKey { path: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    KeyRefused {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{} does not belong to {}: {source}", key.display(), cert.display())]
    Mismatch {
        key: PathBuf,
        cert: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// Reads a certificate chain and its private key (PEM).
pub fn load_key_pair(cert_file: &Path, key_file: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, KeyPairError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| KeyPairError::Unreadable {
            path: cert_file.into(),
            message: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| KeyPairError::NotPem {
            path: cert_file.into(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(KeyPairError::NoCertificate { path: cert_file.into() });
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| KeyPairError::NoKey {
        path: key_file.into(),
        message: e.to_string(),
    })?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| KeyPairError::KeyRefused {
            path: key_file.into(),
            source,
        })?;
    let pair = CertifiedKey::new(chain, key);
    pair.keys_match().map_err(|source| KeyPairError::Mismatch {
        key: key_file.into(),
        cert: cert_file.into(),
        source,
    })?;
    Ok(pair)
}

/// The current key pair, swapped when the files change.
pub struct ReloadingCert {
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
    current: RwLock<(Arc<CertifiedKey>, Stamp)>,
}

/// What a file looked like when last loaded (Kubernetes swaps a symlink, so the metadata
/// of the resolved file changes).
type Stamp = [(Option<SystemTime>, u64); 2];

fn stamp(s: &TlsSettings) -> Stamp {
    let one = |p: &Path| std::fs::metadata(p).map(|m| (m.modified().ok(), m.len())).unwrap_or((None, 0));
    [one(&s.cert_file), one(&s.key_file)]
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_file", &self.settings.cert_file)
            .finish()
    }
}

impl ReloadingCert {
    pub fn new(settings: TlsSettings) -> Result<Arc<ReloadingCert>, KeyPairError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let s = stamp(&settings);
        let pair = load_key_pair(&settings.cert_file, &settings.key_file, &provider)?;
        Ok(Arc::new(ReloadingCert {
            settings,
            provider,
            current: RwLock::new((Arc::new(pair), s)),
        }))
    }

    /// Loads the files again if they changed. A broken new pair is logged and the old one
    /// kept, so a half-written Secret never takes HTTPS down.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.settings);
        if self.current.read().expect("lock poisoned").1 == now {
            return false;
        }
        match load_key_pair(&self.settings.cert_file, &self.settings.key_file, &self.provider) {
            Ok(pair) => {
                *self.current.write().expect("lock poisoned") = (Arc::new(pair), now);
                tracing::info!(cert_file = %self.settings.cert_file.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate files changed but do not load; still serving the previous certificate");
                // Do not retry the same broken files every interval; a later change retries.
                self.current.write().expect("lock poisoned").1 = now;
                false
            }
        }
    }

    /// Checks the files every [`RELOAD_INTERVAL`] until dropped.
    pub async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(RELOAD_INTERVAL).await;
            self.reload_if_changed();
        }
    }

    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, String> {
        let mut provider = (*self.provider).clone();
        if !self.settings.cipher_suites.is_empty() {
            provider.cipher_suites = self.settings.cipher_suites.clone();
        }
        let versions: &[&rustls::SupportedProtocolVersion] = if self.settings.tls13_only {
            &[&rustls::version::TLS13]
        } else {
            &[&rustls::version::TLS12, &rustls::version::TLS13]
        };
        let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .map_err(|e| format!("tls_cipher_suites does not fit tls_min_version: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("lock poisoned").0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_suite_names() {
        assert!(suite_by_name("TLS13_AES_128_GCM_SHA256").is_ok());
        assert!(suite_by_name("tls_ecdhe_rsa_with_aes_256_gcm_sha384").is_ok());
        let err = suite_by_name("TLS_RSA_WITH_RC4_128_SHA").unwrap_err();
        assert!(err.contains("TLS13_AES_256_GCM_SHA384"), "{err}");
    }

    #[test]
    fn missing_files_name_the_path() {
        let p = rustls::crypto::ring::default_provider();
        let err = load_key_pair(Path::new("/nonexistent/tls.crt"), Path::new("/nonexistent/tls.key"), &p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/tls.crt"), "{err}");
    }
}
