//! Tests that disturb the broker itself (stop it, start it again). They run alone, after every
//! other test: `scripts/test.sh` runs this binary in a second, single-threaded nextest pass,
//! and `.config/nextest.toml` puts it in a test group of one.

use amqprs::channel::QueueDeclareArguments;
use anyhow::{Context, Result};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::time::Duration;
use warren_tests::broker::{rabbitmqctl, rabbitmqctl_blocking};
use warren_tests::client::{self, lapin_reply_code};
use warren_tests::{unique, wait_until, within, Warren, GUEST};

/// Upper bound for the broker to stop or start.
const BROKER_LIMIT: Duration = Duration::from_secs(120);
/// Upper bound for a client to learn that its upstream is gone.
const CLOSE_LIMIT: Duration = Duration::from_secs(30);
/// Upper bound for warren to be usable again after the broker is back: its reconnect backoff
/// is capped at 30 s by default, plus the broker's own start.
const RECOVERY_LIMIT: Duration = Duration::from_secs(90);

/// Stops the RabbitMQ application (the node stays up, so the CLI keeps working) and starts it
/// again when dropped, even if the test fails half-way.
struct BrokerStopped;

impl BrokerStopped {
    async fn stop() -> Result<BrokerStopped> {
        within(
            BROKER_LIMIT,
            "rabbitmqctl stop_app",
            rabbitmqctl(&["stop_app"]),
        )
        .await??;
        Ok(BrokerStopped)
    }

    async fn start(self) -> Result<()> {
        std::mem::forget(self);
        within(BROKER_LIMIT, "rabbitmqctl start_app", async {
            rabbitmqctl(&["start_app"]).await?;
            rabbitmqctl(&["await_startup"]).await
        })
        .await??;
        Ok(())
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        if let Err(e) = rabbitmqctl_blocking(&["start_app"]) {
            eprintln!("could not restart the broker application: {e:#}");
        }
    }
}

/// B11/R4: when the broker goes away, a client with a channel on the lost upstream receives a
/// `Connection.Close` (320 CONNECTION_FORCED, the broker's or warren's own) promptly; a new
/// client meanwhile fails fast; once the broker is back warren reconnects by itself and new
/// clients work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_disturbing_stop_app_closes_clients_and_warren_recovers() -> Result<()> {
    let warren = Warren::start()?;
    let url = warren.amqp_url(GUEST, GUEST, "/");
    // amqprs reports the Connection.Close it receives through a callback; lapin would report
    // the socket's end rather than the close that came before it.
    let conn = client::amqprs_connect(warren.addr(), GUEST, GUEST, "/").await?;
    let mut closes = client::amqprs_watch_connection_close(&conn).await?;
    let ch = conn.open_channel(None).await?;
    ch.queue_declare(
        QueueDeclareArguments::new(&unique("disrupt"))
            .auto_delete(true)
            .finish(),
    )
    .await?;

    let stopped = BrokerStopped::stop().await?;

    // The client is told, promptly, with a Connection.Close.
    let close = within(CLOSE_LIMIT, "the client's Connection.Close", closes.recv())
        .await?
        .context("the connection ended without a Connection.Close")?;
    assert_eq!(
        close.code, 320,
        "expected Connection.Close 320 CONNECTION_FORCED, got {close:?}"
    );
    wait_until(CLOSE_LIMIT, "the client's connection to be closed", || {
        let open = conn.is_open();
        async move { Ok((!open).then_some(())) }
    })
    .await?;

    // A new client while the broker is away: a prompt refusal, not a hang.
    let attempt = client::lapin_try_connect(&url).await?;
    let refused = attempt
        .err()
        .context("a client was let in while the broker is stopped")?;
    eprintln!("a new client while the broker is stopped: {refused:?}");
    if let Some(code) = lapin_reply_code(&refused) {
        assert!(
            code >= 300,
            "expected an error reply code for a refused client, got {code}"
        );
    }

    stopped.start().await?;

    // Warren reconnects by itself: a new client can publish and get again.
    let queue = unique("disrupt-after");
    let (url_ref, queue_ref) = (url.as_str(), queue.as_str());
    wait_until(
        RECOVERY_LIMIT,
        "a client to get through warren again",
        || async move {
            let Ok(Ok(conn)) = client::lapin_try_connect(url_ref).await else {
                return Ok(None);
            };
            let ch = conn.create_channel().await?;
            ch.queue_declare(
                queue_ref.into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
            ch.basic_publish(
                "".into(),
                queue_ref.into(),
                BasicPublishOptions::default(),
                b"back",
                BasicProperties::default(),
            )
            .await?;
            let ch_ref = &ch;
            let got = wait_until(CLOSE_LIMIT, "the message", || async move {
                Ok(ch_ref
                    .basic_get(queue_ref.into(), BasicGetOptions { no_ack: true })
                    .await?)
            })
            .await?;
            assert_eq!(got.delivery.data, b"back");
            ch.queue_delete(queue_ref.into(), QueueDeleteOptions::default())
                .await?;
            conn.close(200, "bye".into()).await?;
            Ok(Some(()))
        },
    )
    .await?;
    Ok(())
}
