//! Built-in TLS for listeners: rustls (ring provider) with a certificate that can be swapped
//! while the server runs. Each TLS listener's `ServerConfig` resolves its certificate through
//! a [`ReloadableCert`], which holds the current certified key behind a lock; `reload`
//! re-reads the PEM files and swaps it for connections made after, or keeps the old one and
//! answers an error when the new files are unusable.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use rustls::{
    ServerConfig,
    crypto::ring,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// A certificate and key read from files, swappable at run time.
pub struct ReloadableCert {
    certificate_path: PathBuf,
    private_key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadableCert")
            .field("certificate_path", &self.certificate_path)
            .field("private_key_path", &self.private_key_path)
            .finish_non_exhaustive()
    }
}

impl ReloadableCert {
    /// Read the certificate chain and key; fails with a message naming the file and what is
    /// wrong with it.
    pub fn load(certificate_path: &Path, private_key_path: &Path) -> Result<Self, String> {
        let key = read_certified_key(certificate_path, private_key_path)?;
        Ok(Self {
            certificate_path: certificate_path.to_owned(),
            private_key_path: private_key_path.to_owned(),
            current: RwLock::new(Arc::new(key)),
        })
    }

    /// Read the files again and use them for new connections; on failure the certificate
    /// in use stays and the error says why.
    pub fn reload(&self) -> Result<(), String> {
        let key = read_certified_key(&self.certificate_path, &self.private_key_path)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
        Ok(())
    }

    /// The certificate file, for messages.
    pub fn certificate_path(&self) -> &Path {
        &self.certificate_path
    }

    fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// A rustls server config resolving through this certificate, offering HTTP/1.1.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, String> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn read_certified_key(certificate_path: &Path, private_key_path: &Path) -> Result<CertifiedKey, String> {
    let cert_name = certificate_path.display();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate_path)
        .map_err(|e| format!("cannot read TLS certificate {cert_name}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("TLS certificate {cert_name} is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err(format!("TLS certificate {cert_name} holds no certificate"));
    }
    let key_name = private_key_path.display();
    let key = PrivateKeyDer::from_pem_file(private_key_path)
        .map_err(|e| format!("cannot read a private key from {key_name}: {e}"))?;
    let provider = ring::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("TLS private key {key_name} is not usable: {e}"))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|e| format!("TLS private key {key_name} does not belong to certificate {cert_name}: {e}"))?;
    Ok(certified)
}

/// The TLS listeners' certificates, for reloading them all at once (on SIGHUP).
#[derive(Clone, Default, Debug)]
pub struct TlsReloader {
    certs: Vec<Arc<ReloadableCert>>,
}

impl TlsReloader {
    pub(super) fn push(&mut self, cert: Arc<ReloadableCert>) {
        self.certs.push(cert);
    }

    /// Re-read every TLS listener's certificate and key files. Each listener whose files
    /// read cleanly uses the new certificate for connections made from now on; one whose
    /// files are missing or bad keeps the certificate it has. Answers how many were
    /// reloaded, or the errors (one line per failed listener) when any failed.
    pub fn reload(&self) -> crate::Result<usize> {
        let mut errors = Vec::new();
        let mut reloaded = 0;
        for cert in &self.certs {
            match cert.reload() {
                Ok(()) => reloaded += 1,
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(reloaded)
        } else {
            Err(crate::Error::internal(format!("TLS certificates not reloaded: {}", errors.join("; "))))
        }
    }

    /// How many listeners use TLS.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

/// At every reload (SIGHUP), each TLS listener re-reads its certificate and key files; files
/// that do not load leave that listener's certificate as it was and fail the reload's report.
/// Which files a listener uses is part of `listeners`, which needs a restart.
impl crate::reload::LiveReload for TlsReloader {
    fn name(&self) -> &'static str {
        "TLS certificates"
    }

    fn keys(&self) -> &'static [&'static str] {
        &[]
    }

    fn apply(&self, _new: &crate::config::Config) -> Result<(), String> {
        self.reload().map(drop).map_err(|e| e.to_string())
    }
}
