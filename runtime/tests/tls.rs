//! TLS between the listener's acceptor and the upstream connector, with certificates made by
//! rcgen in a temporary folder.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warren_runtime::config::{ListenerTls, UpstreamTls};
use warren_runtime::tls::{acceptor, connector, server_name};

/// A CA, a server certificate for `localhost` and a client certificate, as PEM files.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("warren-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki { dir };
        let ca = pki.ca("ca");
        pki.leaf(
            "server",
            &ca,
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        pki.leaf(
            "client",
            &ca,
            "client.warren",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        pki.ca("other-ca");
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn ca(&self, name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), ca.pem()).unwrap();
        ca
    }

    fn leaf(
        &self,
        name: &str,
        ca: &CertifiedIssuer<'static, KeyPair>,
        dns: &str,
        usage: ExtendedKeyUsagePurpose,
    ) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![dns.to_owned()]).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, ca).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    fn listener(&self, client_ca: bool) -> ListenerTls {
        ListenerTls {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: client_ca.then(|| self.path("ca.pem")),
        }
    }

    fn upstream(&self, ca: &str, client_cert: bool) -> UpstreamTls {
        UpstreamTls {
            ca: Some(self.path(ca)),
            cert: client_cert.then(|| self.path("client.pem")),
            key: client_cert.then(|| self.path("client.key")),
            verify: true,
            server_name: None,
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs one handshake plus a ping/pong; each side's outcome.
async fn handshake(listener: &ListenerTls, upstream: &UpstreamTls) -> Sides {
    let acceptor = acceptor(listener).unwrap();
    let connector = connector(upstream).unwrap();
    let name = server_name(upstream, "localhost").unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (socket, _) = tcp.accept().await.unwrap();
        let mut tls = acceptor.accept(socket).await?;
        let mut ping = [0u8; 4];
        tls.read_exact(&mut ping).await?;
        assert_eq!(&ping, b"ping");
        tls.write_all(b"pong").await?;
        tls.shutdown().await
    });
    let client = async {
        let socket = TcpStream::connect(addr).await.unwrap();
        let mut tls = connector.connect(name, socket).await?;
        tls.write_all(b"ping").await?;
        let mut pong = [0u8; 4];
        tls.read_exact(&mut pong).await?;
        assert_eq!(&pong, b"pong");
        Ok::<(), std::io::Error>(())
    };
    let client = client.await.map_err(|e| e.to_string());
    let server = server.await.unwrap().map_err(|e| e.to_string());
    Sides { server, client }
}

#[derive(Debug)]
struct Sides {
    server: Result<(), String>,
    client: Result<(), String>,
}

impl Sides {
    fn ok(&self) -> bool {
        self.server.is_ok() && self.client.is_ok()
    }
}

#[tokio::test]
async fn verified_handshake_with_and_without_client_certificates() {
    let pki = Pki::new("ok");
    let sides = handshake(&pki.listener(false), &pki.upstream("ca.pem", false)).await;
    assert!(sides.ok(), "{sides:?}");
    let sides = handshake(&pki.listener(true), &pki.upstream("ca.pem", true)).await;
    assert!(sides.ok(), "{sides:?}");
}

#[tokio::test]
async fn a_server_signed_by_another_ca_is_rejected() {
    let pki = Pki::new("wrong-ca");
    let sides = handshake(&pki.listener(false), &pki.upstream("other-ca.pem", false)).await;
    let client = sides.client.as_ref().unwrap_err();
    assert!(client.contains("UnknownIssuer"), "{sides:?}");
    assert!(sides.server.is_err(), "{sides:?}");
}

/// Without `upstream_ca` the broker is verified against the system's trust store: the test
/// CA is not in it, until `SSL_CERT_FILE` names it (one test: the variable is process-wide).
#[tokio::test]
async fn without_a_ca_the_system_trust_store_decides() {
    let pki = Pki::new("system-roots");
    let upstream = UpstreamTls {
        ca: None,
        ..pki.upstream("ca.pem", false)
    };
    let sides = handshake(&pki.listener(false), &upstream).await;
    let client = sides.client.as_ref().unwrap_err();
    assert!(client.contains("UnknownIssuer"), "{sides:?}");
    std::env::set_var("SSL_CERT_FILE", pki.path("ca.pem"));
    let sides = handshake(&pki.listener(false), &upstream).await;
    std::env::remove_var("SSL_CERT_FILE");
    assert!(sides.ok(), "{sides:?}");
}

#[tokio::test]
async fn verify_false_accepts_an_unknown_server() {
    let pki = Pki::new("no-verify");
    let upstream = UpstreamTls {
        verify: false,
        ca: None,
        ..pki.upstream("other-ca.pem", false)
    };
    let sides = handshake(&pki.listener(false), &upstream).await;
    assert!(sides.ok(), "{sides:?}");
}

#[tokio::test]
async fn a_required_client_certificate_that_is_missing_fails() {
    let pki = Pki::new("no-client-cert");
    let sides = handshake(&pki.listener(true), &pki.upstream("ca.pem", false)).await;
    let server = sides.server.as_ref().unwrap_err();
    assert!(server.contains("no certificates"), "{sides:?}");
    assert!(sides.client.is_err(), "{sides:?}");
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_fails() {
    let pki = Pki::new("foreign-client-cert");
    let mut listener = pki.listener(true);
    listener.client_ca = Some(pki.path("other-ca.pem"));
    let sides = handshake(&listener, &pki.upstream("ca.pem", true)).await;
    let server = sides.server.as_ref().unwrap_err();
    assert!(server.contains("UnknownIssuer"), "{sides:?}");
}

fn error<T>(r: Result<T, warren_runtime::Error>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn loading_errors_name_the_file() {
    let pki = Pki::new("errors");
    let missing = ListenerTls {
        cert: pki.path("absent.pem"),
        ..pki.listener(false)
    };
    let e = error(acceptor(&missing));
    assert!(e.contains("absent.pem"), "{e}");

    let not_a_key = ListenerTls {
        key: pki.path("server.pem"),
        ..pki.listener(false)
    };
    let e = error(acceptor(&not_a_key));
    assert!(e.contains("server.pem"), "{e}");

    let mismatched = ListenerTls {
        key: pki.path("client.key"),
        ..pki.listener(false)
    };
    assert!(acceptor(&mismatched).is_err());

    let empty = pki.path("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let e = error(connector(&pki.upstream("empty.pem", false)));
    assert!(e.contains("empty.pem"), "{e}");
}

#[test]
fn server_names() {
    let named = UpstreamTls {
        server_name: Some("rabbit.internal".into()),
        ..UpstreamTls::default()
    };
    let name = server_name(&named, "10.0.0.1").unwrap();
    assert_eq!(name.to_str(), "rabbit.internal");
    let ip = server_name(&UpstreamTls::default(), "::1").unwrap();
    assert_eq!(ip.to_str(), "::1");
    assert!(matches!(ip, rustls_pki_types::ServerName::IpAddress(_)));
    let e = server_name(&UpstreamTls::default(), "bad name").unwrap_err();
    assert!(e.to_string().contains("bad name"), "{e}");
}
