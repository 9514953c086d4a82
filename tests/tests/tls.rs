//! TLS end to end (B15), on both legs.
//!
//! Towards the broker: RabbitMQ's TLS listener on 127.0.0.1:5671 with the test PKI that
//! `scripts/rabbitmq.sh ensure` makes ([`BrokerTls`]); warren speaks `amqps://` to it while
//! its clients speak plain AMQP to warren. On the listener: certificates made by rcgen for
//! each test ([`TestPki`]) and amqprs as the TLS client.
//!
//! Nothing here is skipped: without the broker's TLS listener and its certificates these tests
//! fail, saying how to set them up.

use anyhow::{ensure, Context, Result};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use warren_runtime::config::{Config, ListenerTls, UpstreamTls, UpstreamUrl};
use warren_tests::broker;
use warren_tests::client;
use warren_tests::lapin_ops::{bounded, lapin_declare, lapin_get, lapin_round_trip, LIMIT};
use warren_tests::raw::{RawClient, RawOptions};
use warren_tests::tls::{amqprs_try_connect_tls, connector, BrokerTls, TestPki, BROKER_TLS_PORT};
use warren_tests::{http, unique, wait_until, TestUser, Warren};

/// warren with an `amqps://localhost:5671` upstream that trusts `ca`.
fn amqps_upstream(c: &mut Config, ca: PathBuf) {
    c.upstream = UpstreamUrl {
        tls: true,
        host: "localhost".into(),
        port: BROKER_TLS_PORT,
    }
    .into();
    c.upstream_tls = UpstreamTls {
        ca: Some(ca),
        ..UpstreamTls::default()
    };
}

/// One connection as the broker lists it, with its TLS details.
#[derive(Debug, Clone)]
struct TlsConnection {
    /// Whether it came in over TLS.
    ssl: bool,
    /// The TLS protocol version (`tlsv1.3`, ...), if TLS.
    protocol: String,
    /// The subject of the client certificate it presented, if any.
    peer_cert_subject: String,
}

/// The broker connections of `user`, with their TLS details.
async fn tls_connections_of(user: &str) -> Result<Vec<TlsConnection>> {
    let rows = broker::list(&[
        "list_connections",
        "user",
        "ssl",
        "ssl_protocol",
        "peer_cert_subject",
    ])
    .await?;
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    Ok(rows
        .iter()
        .filter(|r| r.get("user").and_then(Value::as_str) == Some(user))
        .map(|r| TlsConnection {
            ssl: r.get("ssl").and_then(Value::as_bool).unwrap_or(false),
            protocol: text(&r["ssl_protocol"]),
            peer_cert_subject: text(&r["peer_cert_subject"]),
        })
        .collect())
}

/// The one broker connection of `user`, once there is exactly one.
async fn the_tls_connection_of(user: &str) -> Result<TlsConnection> {
    wait_until(
        LIMIT,
        &format!("one broker connection of {user}"),
        || async move {
            let mut conns = tls_connections_of(user).await?;
            Ok((conns.len() == 1).then(|| conns.remove(0)))
        },
    )
    .await
}

/// A publish with a broker confirm and a get, through `url`.
async fn confirmed_round_trip(url: &str, tag: &str) -> Result<()> {
    let conn = client::lapin_connect(url).await?;
    let ch = conn.create_channel().await?;
    let queue = unique(&format!("e2e-tls-{tag}"));
    lapin_declare(&ch, &queue).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let confirmation = ch
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            b"over tls",
            BasicProperties::default(),
        )
        .await?
        .await?;
    ensure!(confirmation.is_ack(), "not confirmed: {confirmation:?}");
    let got = lapin_get(&ch, &queue).await?;
    ensure!(
        got.delivery.data == b"over tls",
        "got {:?}",
        got.delivery.data
    );
    lapin_round_trip(&ch, &queue, "and again").await?;
    conn.close(200, "bye".into()).await?;
    broker::delete_queue("/", &queue).await
}

/// A plain lapin client → warren → `amqps://localhost:5671`, verified against the test CA:
/// publishes are confirmed and come back, and the broker sees warren's connection as TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_through_warren_to_an_amqps_broker() -> Result<()> {
    bounded(async {
        let tls = BrokerTls::locate()?;
        let user = TestUser::create("warren-test-amqps").await?;
        let warren = Warren::start_configured(|c| amqps_upstream(c, tls.ca.clone()))?;
        let url = warren.amqp_url(&user.name, &user.password, "/");
        confirmed_round_trip(&url, "upstream").await?;

        // Still connected: the broker lists warren's connection as TLS, without a client
        // certificate.
        let conn = client::lapin_connect(&url).await?;
        let upstream = the_tls_connection_of(&user.name).await?;
        assert!(upstream.ssl, "warren's connection is not TLS: {upstream:?}");
        assert!(
            upstream.protocol.starts_with("tlsv1."),
            "TLS version: {upstream:?}"
        );
        assert!(
            upstream.peer_cert_subject.is_empty(),
            "unexpected client certificate: {upstream:?}"
        );
        conn.close(200, "bye".into()).await?;
        Ok(())
    })
    .await
}

/// With `upstream_cert`/`upstream_key`, warren presents the client certificate to the
/// broker, which verifies it (`verify_peer`) and shows its subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_presents_its_client_certificate_to_the_broker() -> Result<()> {
    bounded(async {
        let tls = BrokerTls::locate()?;
        let user = TestUser::create("warren-test-amqps-cert").await?;
        let warren = Warren::start_configured(|c| {
            amqps_upstream(c, tls.ca.clone());
            c.upstream_tls.cert = Some(tls.client_cert.clone());
            c.upstream_tls.key = Some(tls.client_key.clone());
        })?;
        let url = warren.amqp_url(&user.name, &user.password, "/");
        let conn = client::lapin_connect(&url).await?;
        let ch = conn.create_channel().await?;
        let queue = unique("e2e-tls-cert");
        lapin_declare(&ch, &queue).await?;
        lapin_round_trip(&ch, &queue, "with a client certificate").await?;
        let upstream = the_tls_connection_of(&user.name).await?;
        assert!(upstream.ssl, "{upstream:?}");
        assert!(
            upstream.peer_cert_subject.contains("warren-test-client"),
            "the broker did not see warren's client certificate: {upstream:?}"
        );
        conn.close(200, "bye".into()).await?;
        broker::delete_queue("/", &queue).await
    })
    .await
}

/// A broker certificate that the configured CA did not sign: the upstream handshake fails,
/// and the client gets a prompt `Connection.Close` with a reply code and a text that says
/// why — not a hang, not a bare socket close. No broker connection is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_another_ca_is_refused_with_a_clear_close() -> Result<()> {
    bounded(async {
        BrokerTls::locate()?;
        let pki = TestPki::new("wrong-ca")?;
        let user = TestUser::create("warren-test-amqps-wrong-ca").await?;
        let warren = Warren::start_configured(|c| amqps_upstream(c, pki.path("ca.pem")))?;

        for attempt in 0..2 {
            let refused = RawClient::try_connect(
                warren.addr(),
                &RawOptions::new(&user.name, &user.password, "/"),
            )
            .await?
            .err()
            .with_context(|| format!("attempt {attempt}: a client got in"))?;
            let code = refused
                .code
                .with_context(|| format!("attempt {attempt}: the socket just closed"))?;
            // B11: no broker to be had, said with 320 CONNECTION_FORCED and why.
            assert_eq!(code, 320, "attempt {attempt}: {refused:?}");
            assert!(
                refused.text.contains("TLS") && refused.text.contains("certificate"),
                "attempt {attempt}: the text does not say what failed: {refused:?}"
            );
            assert!(
                !refused.text.contains(&user.password),
                "the password is in the text"
            );
        }
        // lapin too gets an error promptly (its connect is bounded).
        let lapin =
            client::lapin_try_connect(&warren.amqp_url(&user.name, &user.password, "/")).await?;
        ensure!(
            lapin.is_err(),
            "lapin got in through an unverified upstream"
        );
        assert!(
            tls_connections_of(&user.name).await?.is_empty(),
            "a broker connection exists"
        );
        Ok(())
    })
    .await
}

/// Starts a warren whose listener speaks TLS with `pki`'s server certificate; with
/// `require_client_cert`, clients must present a certificate signed by `pki`'s CA.
fn tls_listener(pki: &TestPki, require_client_cert: bool) -> Result<Warren> {
    Warren::start_configured(|c| {
        c.listener_tls = Some(ListenerTls {
            cert: pki.path("server.pem"),
            key: pki.path("server.key"),
            client_ca: require_client_cert.then(|| pki.path("ca.pem")),
        });
    })
}

/// An amqprs TLS client of `warren` (verifying it as `localhost` against `pki`'s CA),
/// presenting the certificate `client` (`"client"`, `"other-client"`) if given.
async fn tls_client(
    addr: SocketAddr,
    pki: &TestPki,
    client: Option<&str>,
    user: &TestUser,
) -> Result<std::result::Result<amqprs::connection::Connection, amqprs::error::Error>> {
    let files = client.map(|c| (pki.path(&format!("{c}.pem")), pki.path(&format!("{c}.key"))));
    let connector = connector(
        &pki.path("ca.pem"),
        files.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    )?;
    amqprs_try_connect_tls(
        addr,
        "localhost",
        connector,
        &user.name,
        &user.password,
        "/",
    )
    .await
}

/// A publish and a get on a new channel of `conn`.
async fn amqprs_round_trip(conn: &amqprs::connection::Connection, tag: &str) -> Result<()> {
    use amqprs::channel::{
        BasicGetArguments, BasicPublishArguments, QueueDeclareArguments, QueueDeleteArguments,
    };
    let ch = conn.open_channel(None).await?;
    let queue = unique(&format!("e2e-tls-listener-{tag}"));
    ch.queue_declare(QueueDeclareArguments::new(&queue)).await?;
    ch.basic_publish(
        amqprs::BasicProperties::default(),
        tag.as_bytes().to_vec(),
        BasicPublishArguments::new("", &queue),
    )
    .await?;
    let (ch_ref, q) = (&ch, queue.as_str());
    let (_, _, body) = wait_until(LIMIT, "the message over TLS", || async move {
        Ok(ch_ref
            .basic_get(BasicGetArguments::new(q).no_ack(true).finish())
            .await?)
    })
    .await?;
    ensure!(body == tag.as_bytes(), "got {body:?}");
    ch.queue_delete(QueueDeleteArguments::new(&queue)).await?;
    ch.close().await?;
    Ok(())
}

/// warren's TLS listener: an amqprs client that verifies warren's certificate connects and
/// works; a plain-TCP client is turned away promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_listener_serves_a_tls_client() -> Result<()> {
    bounded(async {
        let pki = TestPki::new("listener")?;
        let user = TestUser::create("warren-test-tls-listener").await?;
        let warren = tls_listener(&pki, false)?;

        let conn = tls_client(warren.addr(), &pki, None, &user)
            .await?
            .map_err(|e| anyhow::anyhow!("the TLS client was refused: {e}"))?;
        amqprs_round_trip(&conn, "tls-listener").await?;
        conn.close().await?;

        let plain =
            client::lapin_try_connect(&warren.amqp_url(&user.name, &user.password, "/")).await?;
        ensure!(
            plain.is_err(),
            "a plain client got through the TLS listener"
        );
        Ok(())
    })
    .await
}

/// `tls_client_ca`: a client without a certificate, or with one from another CA, is refused
/// during the TLS handshake (promptly, counted as `refused_connections{reason="tls"}`); one
/// with a certificate signed by the configured CA gets in and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_verified_when_a_client_ca_is_set() -> Result<()> {
    bounded(async {
        let pki = TestPki::new("client-ca")?;
        let user = TestUser::create("warren-test-tls-client-ca").await?;
        let warren = tls_listener(&pki, true)?;

        for client in [None, Some("other-client")] {
            let result = tls_client(warren.addr(), &pki, client, &user).await?;
            ensure!(
                result.is_err(),
                "a client with certificate {client:?} was let in"
            );
        }
        let metrics = warren.metrics_addr().context("metrics are on in tests")?;
        wait_until(LIMIT, "two TLS refusals in the metrics", || async move {
            let m = http::get(metrics, "/metrics").await?;
            let refused = m.body.lines().find_map(|l| {
                l.strip_prefix("warren_refused_connections_total{reason=\"tls\"} ")
                    .and_then(|v| v.parse::<f64>().ok())
            });
            Ok(refused.filter(|n| *n >= 2.0))
        })
        .await?;

        let conn = tls_client(warren.addr(), &pki, Some("client"), &user)
            .await?
            .map_err(|e| anyhow::anyhow!("the client with a good certificate was refused: {e}"))?;
        amqprs_round_trip(&conn, "client-cert").await?;
        conn.close().await?;
        Ok(())
    })
    .await
}

/// Both legs at once: a TLS client → warren's TLS listener → warren → the broker's TLS
/// listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_legs() -> Result<()> {
    bounded(async {
        let tls = BrokerTls::locate()?;
        let pki = TestPki::new("both")?;
        let user = TestUser::create("warren-test-tls-both").await?;
        let warren = Warren::start_configured(|c| {
            amqps_upstream(c, tls.ca.clone());
            c.listener_tls = Some(ListenerTls {
                cert: pki.path("server.pem"),
                key: pki.path("server.key"),
                client_ca: None,
            });
        })?;
        let conn = tls_client(warren.addr(), &pki, None, &user)
            .await?
            .map_err(|e| anyhow::anyhow!("the TLS client was refused: {e}"))?;
        amqprs_round_trip(&conn, "both-legs").await?;
        let upstream = the_tls_connection_of(&user.name).await?;
        assert!(upstream.ssl, "{upstream:?}");
        conn.close().await?;
        Ok(())
    })
    .await
}
