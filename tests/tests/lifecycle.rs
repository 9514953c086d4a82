//! warren's life around the traffic: health and metrics over HTTP, and the graceful drain.

use anyhow::{ensure, Context, Result};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::time::Duration;
use warren_tests::client;
use warren_tests::{http, unique, wait_until, within, TestUser, Warren};

/// Upper bound for one wait inside a test.
const LIMIT: Duration = Duration::from_secs(30);

/// B15 and B1: health, readiness and Prometheus metrics answer over HTTP; metrics name the
/// user but never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_answer_without_passwords() -> Result<()> {
    let user = TestUser::create("warren-test-metrics").await?;
    let warren = Warren::start()?;
    let metrics = warren
        .metrics_addr()
        .context("metrics are enabled in tests")?;

    let health = http::get(metrics, "/healthz").await?;
    assert_eq!(health.status, 200, "{health:?}");
    // Ready once the server loop runs (Warren::start returns as soon as it is bound).
    wait_until(LIMIT, "/readyz to answer 200", || async {
        let r = http::get(metrics, "/readyz").await?;
        Ok((r.status == 200).then_some(()))
    })
    .await?;

    let conn = client::lapin_connect(&warren.amqp_url(&user.name, &user.password, "/")).await?;
    let ch = conn.create_channel().await?;
    let queue = unique("e2e-metrics");
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.basic_publish(
        "".into(),
        queue.as_str().into(),
        BasicPublishOptions::default(),
        b"counted",
        BasicProperties::default(),
    )
    .await?;

    let body = wait_until(LIMIT, "metrics that mention the user", || async {
        let m = http::get(metrics, "/metrics").await?;
        ensure!(m.status == 200, "GET /metrics: {m:?}");
        Ok(m.body.contains(&user.name).then_some(m.body))
    })
    .await?;
    assert!(body.contains("# TYPE"), "not Prometheus text: {body}");
    assert!(
        !body.contains(&user.password),
        "the password appears in the metrics"
    );
    let ready = http::get(metrics, "/readyz").await?;
    assert!(
        !ready.body.contains(&user.password),
        "the password appears in /readyz"
    );

    conn.close(200, "bye".into()).await?;
    Ok(())
}

/// B14: a drain stops accepting, reports not-ready, lets connected clients go on working for
/// the drain timeout, then closes the rest with 320 CONNECTION_FORCED, and the server returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_clients_finish_then_closes_the_rest_with_320() -> Result<()> {
    let warren = Warren::start_configured(|c| c.drain_timeout = Duration::from_secs(15))?;
    let metrics = warren
        .metrics_addr()
        .context("metrics are enabled in tests")?;
    let url = warren.amqp_url(warren_tests::GUEST, warren_tests::GUEST, "/");
    let queue = unique("e2e-drain");

    let finisher = client::lapin_connect(&url).await?;
    let ch = finisher.create_channel().await?;
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    let lingerer =
        client::amqprs_connect(warren.addr(), warren_tests::GUEST, warren_tests::GUEST, "/")
            .await?;
    let mut closes = client::amqprs_watch_connection_close(&lingerer).await?;
    let _lingering_channel = lingerer.open_channel(None).await?;

    warren.drain();

    // Not ready any more (the metrics listener stays up while draining).
    wait_until(LIMIT, "/readyz to report the drain", || async {
        let r = http::get(metrics, "/readyz").await?;
        Ok((r.status == 503).then_some(()))
    })
    .await?;
    // The listener closes (a client that reached the accept queue before it did is served,
    // like a handshake under way: tests/tests/handover.rs), and new clients are not let in.
    let addr = warren.addr();
    wait_until(LIMIT, "the listener to close", || async move {
        Ok(tokio::net::TcpStream::connect(addr)
            .await
            .is_err()
            .then_some(()))
    })
    .await?;
    let attempt = client::lapin_try_connect(&url).await?;
    ensure!(
        attempt.is_err(),
        "a new client was accepted during the drain"
    );

    // A connected client finishes its work.
    ch.basic_publish(
        "".into(),
        queue.as_str().into(),
        BasicPublishOptions::default(),
        b"last words",
        BasicProperties::default(),
    )
    .await?;
    let ch_ref = &ch;
    let q = queue.as_str();
    let got = wait_until(
        LIMIT,
        "the message published during the drain",
        || async move {
            Ok(ch_ref
                .basic_get(q.into(), BasicGetOptions { no_ack: true })
                .await?)
        },
    )
    .await?;
    assert_eq!(got.delivery.data, b"last words");
    finisher.close(200, "done".into()).await?;

    // The one that stays is closed with 320 at the deadline.
    let close = within(
        Duration::from_secs(60),
        "the lingering client's close",
        closes.recv(),
    )
    .await?
    .context("the connection ended without a Connection.Close")?;
    assert_eq!(
        close.code, 320,
        "expected 320 CONNECTION_FORCED, got {close:?}"
    );

    // And the server returns by itself.
    warren.wait_exit(Duration::from_secs(60))?;
    Ok(())
}
