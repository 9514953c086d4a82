//! TLS on both legs, with rustls and the ring provider installed explicitly (no process-wide
//! default): [`acceptor`] for the client listener, [`connector`] and [`server_name`] for an
//! `amqps://` broker.
//!
//! The TLS settings ([`ListenerTls`], [`UpstreamTls`]) are declared here, where they are used,
//! and re-exported by [`crate::config`], so that this module does not depend on the
//! configuration (the configuration uses [`server_name`] to check an `amqps://` upstream).

use crate::Error;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// TLS on the client-facing listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
}

/// TLS towards the broker (used when the upstream URL is `amqps://`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// CA bundle (PEM) to verify the broker with; `None`: the system's trust store.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM), for brokers that require one.
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    pub key: Option<PathBuf>,
    /// Verify the broker's certificate (on by default).
    pub verify: bool,
    /// Name to verify and send as SNI; the URL's host when unset.
    pub server_name: Option<String>,
}

impl Default for UpstreamTls {
    fn default() -> Self {
        UpstreamTls {
            ca: None,
            cert: None,
            key: None,
            verify: true,
            server_name: None,
        }
    }
}

/// Builds the listener's TLS acceptor; with `client_ca`, clients must present a certificate
/// signed by it.
pub fn acceptor(cfg: &ListenerTls) -> Result<TlsAcceptor, Error> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = match &cfg.client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider)
                    .build()
                    .map_err(|e| Error::Tls(format!("client CA {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs(&cfg.cert)?, private_key(&cfg.key)?)
        .map_err(|e| {
            Error::Tls(format!(
                "{} with {}: {e}",
                cfg.cert.display(),
                cfg.key.display()
            ))
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Builds the connector towards the broker. The broker's certificate is verified against
/// `ca` when set, else against the system's trust store (as for a hosted broker with a
/// publicly signed certificate); `verify = false` accepts any certificate and says so in the
/// log.
pub fn connector(cfg: &UpstreamTls) -> Result<TlsConnector, Error> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = if cfg.verify {
        let roots = match &cfg.ca {
            Some(ca) => roots(ca)?,
            None => system_roots()?,
        };
        builder.with_root_certificates(roots)
    } else {
        tracing::warn!(
            "upstream_verify is false: the broker's certificate is not checked, so the \
             connection to it can be intercepted"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    };
    let config = match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(certs(cert)?, private_key(key)?)
            .map_err(|e| Error::Tls(format!("{} with {}: {e}", cert.display(), key.display())))?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(Error::Tls(
                "upstream_cert and upstream_key must be set together".into(),
            ))
        }
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The name to verify the broker as and to send as SNI: `server_name` if set, else the
/// upstream URL's `host` (a DNS name or an IP address).
pub fn server_name(cfg: &UpstreamTls, host: &str) -> Result<ServerName<'static>, Error> {
    let name = cfg.server_name.as_deref().unwrap_or(host);
    ServerName::try_from(name.to_owned()).map_err(|_| {
        Error::Tls(format!(
            "`{name}` is neither a DNS name nor an IP address to verify the broker as"
        ))
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file (at least one).
fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| Error::Tls(format!("certificates in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no PEM certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| Error::Tls(format!("private key in {}: {e}", path.display())))
}

/// The trust anchors in a PEM file.
fn roots(path: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path)? {
        roots
            .add(cert)
            .map_err(|e| Error::Tls(format!("CA certificate in {}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// The operating system's trust store (`/etc/ssl/certs` and the like; `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` override it, as for OpenSSL).
fn system_roots() -> Result<RootCertStore, Error> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), ToString::to_string);
        return Err(Error::Tls(format!(
            "the system's trust store has no usable certificate ({why}); set upstream_ca to \
             the broker's CA, or upstream_verify = false"
        )));
    }
    Ok(roots)
}

/// `upstream_verify = false`: any certificate is accepted, but the handshake signatures are
/// still checked so that the session keys belong to whoever presented it.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
