//! TLS for the end-to-end tests: the broker's test certificates (made by
//! `scripts/rabbitmq.sh ensure` for RabbitMQ's TLS listener on port 5671), throwaway
//! certificate authorities made with rcgen for warren's own listener, and an amqprs client that
//! speaks AMQP over TLS.
//!
//! Everything uses rustls with the ring provider passed explicitly, like warren itself, so no
//! process-wide default provider is needed.

use anyhow::{anyhow, bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsConnector;

/// The port of the broker's TLS listener (`listeners.ssl.default` in the rabbitmq.conf that
/// `scripts/rabbitmq.sh` writes).
pub const BROKER_TLS_PORT: u16 = 5671;

/// The variable that overrides where the broker's test certificates are (the same one
/// `scripts/rabbitmq.sh` reads).
pub const TLS_DIR_VAR: &str = "WARREN_TLS_DIR";

/// Where `scripts/rabbitmq.sh` puts the broker's test certificates by default.
pub const DEFAULT_TLS_DIR: &str = "/var/lib/rabbitmq/warren-tls";

/// The broker's test PKI: the CA that signed the broker's certificate (for `localhost` and
/// 127.0.0.1) and a client certificate signed by the same CA.
#[derive(Debug, Clone)]
pub struct BrokerTls {
    /// The test CA (PEM).
    pub ca: PathBuf,
    /// A client certificate signed by the test CA (PEM).
    pub client_cert: PathBuf,
    /// Its private key (PEM).
    pub client_key: PathBuf,
}

impl BrokerTls {
    /// Finds the files in `$WARREN_TLS_DIR` or [`DEFAULT_TLS_DIR`]; fails, saying how to make
    /// them, when one is missing or unreadable. Nothing is skipped: a TLS test without them
    /// fails.
    pub fn locate() -> Result<BrokerTls> {
        let dir = std::env::var_os(TLS_DIR_VAR)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_TLS_DIR));
        let tls = BrokerTls {
            ca: dir.join("ca.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        for file in [&tls.ca, &tls.client_cert, &tls.client_key] {
            std::fs::read(file).with_context(|| {
                format!(
                    "the broker's test TLS file {} cannot be read: run `scripts/rabbitmq.sh \
                     ensure` (it makes them and the TLS listener on port {BROKER_TLS_PORT}), or \
                     point {TLS_DIR_VAR} at them",
                    file.display()
                )
            })?;
        }
        Ok(tls)
    }
}

/// A throwaway PKI in its own temporary folder (removed on drop): a CA, a server certificate
/// for `localhost` and 127.0.0.1, a client certificate signed by the CA, and a second,
/// unrelated CA with a client certificate of its own.
#[derive(Debug)]
pub struct TestPki {
    dir: PathBuf,
}

impl TestPki {
    /// Makes every file under a folder named after `name` and this process.
    pub fn new(name: &str) -> Result<TestPki> {
        let dir = std::env::temp_dir().join(crate::unique(&format!("warren-e2e-tls-{name}")));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let pki = TestPki { dir };
        let ca = pki.ca("ca")?;
        pki.leaf("server", &ca, ExtendedKeyUsagePurpose::ServerAuth)?;
        pki.leaf("client", &ca, ExtendedKeyUsagePurpose::ClientAuth)?;
        let other = pki.ca("other-ca")?;
        pki.leaf("other-client", &other, ExtendedKeyUsagePurpose::ClientAuth)?;
        Ok(pki)
    }

    /// A file of this PKI: `ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key`,
    /// `other-ca.pem`, `other-client.pem`, `other-client.key`.
    #[must_use]
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn ca(&self, name: &str) -> Result<CertifiedIssuer<'static, KeyPair>> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, format!("warren e2e {name}"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        self.write(&format!("{name}.pem"), &ca.pem())?;
        Ok(ca)
    }

    fn leaf(
        &self,
        name: &str,
        ca: &CertifiedIssuer<'static, KeyPair>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<()> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .distinguished_name
            .push(DnType::CommonName, format!("warren e2e {name}"));
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, ca)?;
        self.write(&format!("{name}.pem"), &cert.pem())?;
        self.write(&format!("{name}.key"), &key.serialize_pem())
    }

    fn write(&self, file: &str, contents: &str) -> Result<()> {
        let path = self.path(file);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client that trusts only `ca` and, when given, presents `client` (certificate and key
/// PEM files).
pub fn connector(ca: &Path, client: Option<(&Path, &Path)>) -> Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots
            .add(cert.with_context(|| format!("parsing {}", ca.display()))?)
            .with_context(|| format!("trusting {}", ca.display()))?;
    }
    if roots.is_empty() {
        bail!("{}: no certificate", ca.display());
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .with_context(|| format!("reading {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading {}", key.display()))?;
            builder.with_client_auth_cert(certs, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Connects with amqprs over TLS to `addr`, verifying the server as `domain`, bounded by
/// [`crate::client::CONNECT_TIMEOUT`]; returns amqprs' own result so that a refusal can be
/// inspected (the outer error only reports a hang).
pub async fn amqprs_try_connect_tls(
    addr: SocketAddr,
    domain: &str,
    connector: TlsConnector,
    user: &str,
    pass: &str,
    vhost: &str,
) -> Result<std::result::Result<amqprs::connection::Connection, amqprs::error::Error>> {
    let mut args = amqprs::connection::OpenConnectionArguments::new(
        &addr.ip().to_string(),
        addr.port(),
        user,
        pass,
    );
    args.virtual_host(vhost)
        .tls_adaptor(amqprs::tls::TlsAdaptor::new(connector, domain.to_owned()));
    let limit = crate::client::CONNECT_TIMEOUT;
    tokio::time::timeout(limit, amqprs::connection::Connection::open(&args))
        .await
        .map_err(|_| anyhow!("amqprs' TLS connect to {addr} did not finish within {limit:?}"))
}
