//! Tests that disturb the broker itself (stop it, start it again, raise its memory alarm,
//! force-close warren's connection). They run alone, after every other test: `scripts/test.sh`
//! runs this binary in a second, single-threaded nextest pass, and `.config/nextest.toml` puts
//! it in a test group of one. Every disturbance is undone by a guard's `Drop`, so a failing
//! test still leaves a working broker behind.

use amqprs::channel::QueueDeclareArguments;
use anyhow::{bail, ensure, Context, Result};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use warren_core::method::{ids, Method};
use warren_tests::broker::{self, rabbitmqctl, rabbitmqctl_blocking};
use warren_tests::client::{self, lapin_reply_code};
use warren_tests::lapin_ops::{lapin_round_trip, the_upstream_of};
use warren_tests::raw::{
    as_close, as_confirm_ack, build, decode_method, describe, Closed, Incoming, RawClient,
    RawOptions,
};
use warren_tests::{unique, wait_until, within, TestUser, Warren, GUEST};

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

/// Raises RabbitMQ's memory alarm (a watermark of 0.0001 of the machine's memory, far below
/// what the node uses) and restores the default watermark of 0.4 when cleared or dropped,
/// even if the test fails half-way.
struct MemoryAlarm;

impl MemoryAlarm {
    async fn raise() -> Result<MemoryAlarm> {
        let alarm = MemoryAlarm;
        within(
            BROKER_LIMIT,
            "raising the memory alarm",
            rabbitmqctl(&["set_vm_memory_high_watermark", "0.0001"]),
        )
        .await??;
        Ok(alarm)
    }

    async fn clear(self) -> Result<()> {
        std::mem::forget(self);
        within(
            BROKER_LIMIT,
            "clearing the memory alarm",
            rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]),
        )
        .await??;
        Ok(())
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        if let Err(e) = rabbitmqctl_blocking(&["set_vm_memory_high_watermark", "0.4"]) {
            eprintln!("could not restore the memory watermark: {e:#}");
        }
    }
}

/// Reads `raw` until `id` arrives on channel 0 (bounded by `limit`); other frames are
/// returned so the caller can look at them.
async fn wait_for_connection_method(
    raw: &mut RawClient,
    id: warren_core::method::MethodId,
    limit: Duration,
) -> Result<(warren_core::frame::Frame, Vec<warren_core::frame::Frame>)> {
    let deadline = Instant::now() + limit;
    let mut others = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match raw.try_recv(left).await? {
            Incoming::Frame(f) if f.channel() == 0 && f.method_id() == Some(id) => {
                return Ok((f, others))
            }
            Incoming::Frame(f) => others.push(f),
            Incoming::Eof => bail!("the connection closed while waiting for {id}"),
            Incoming::Timeout => bail!(
                "no {id} within {limit:?} (frames meanwhile: {})",
                others.iter().map(describe).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// The frames `raw` receives within `quiet` (none expected by the caller, typically).
async fn frames_within(raw: &mut RawClient, quiet: Duration) -> Result<Vec<String>> {
    let deadline = Instant::now() + quiet;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match raw.try_recv(left).await? {
            Incoming::Frame(f) => seen.push(describe(&f)),
            Incoming::Eof => bail!("the connection closed"),
            Incoming::Timeout => return Ok(seen),
        }
    }
}

/// B12: under RabbitMQ's memory alarm, a publishing client that advertised
/// `connection.blocked` receives `Connection.Blocked`, a client that joins while the upstream
/// is blocked has the state replayed when it opens a channel, a client that did not advertise
/// the capability hears nothing; once the alarm clears both informed clients receive
/// `Connection.Unblocked`, and the publishes held meanwhile arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_disturbing_memory_alarm_blocks_and_unblocks_clients() -> Result<()> {
    within(Duration::from_secs(110), "the test", async {
        let user = TestUser::create("warren-test-alarm").await?;
        let warren = Warren::start()?;
        let opts = RawOptions::new(&user.name, &user.password, "/");
        let mut publisher = RawClient::connect(warren.addr(), &opts).await?;
        publisher.open_channel(1).await?;
        let queue = publisher
            .declare_queue(1, &unique("disrupt-alarm"), false)
            .await?;
        let mut deaf =
            RawClient::connect(warren.addr(), &opts.clone().without_capabilities()).await?;
        deaf.open_channel(1).await?;

        let alarm = MemoryAlarm::raise().await?;
        // RabbitMQ blocks a connection (and says so) when it publishes during the alarm.
        let mut published = 0u64;
        let raised_at = Instant::now();
        let blocked = loop {
            publisher
                .publish(1, &queue, format!("held-{published}").as_bytes())
                .await?;
            published += 1;
            match publisher.try_recv(Duration::from_millis(200)).await? {
                Incoming::Frame(f) if f.method_id() == Some(ids::CONNECTION_BLOCKED) => break f,
                Incoming::Frame(f) => bail!("unexpected {} during the alarm", describe(&f)),
                Incoming::Eof => bail!("the publisher's connection closed during the alarm"),
                Incoming::Timeout => ensure!(
                    raised_at.elapsed() < CLOSE_LIMIT,
                    "no Connection.Blocked within {CLOSE_LIMIT:?} of the alarm"
                ),
            }
        };
        let reason = match decode_method(&blocked)? {
            Method::Blocked { reason } => reason,
            other => bail!("expected connection.blocked, got {other:?}"),
        };
        eprintln!(
            "Connection.Blocked ({reason:?}) after {published} publish(es), {:?} after the alarm",
            raised_at.elapsed()
        );

        // A client that joins now is told as soon as it has a channel on the blocked upstream.
        let mut late = RawClient::connect(warren.addr(), &opts).await?;
        late.send(&[warren_core::method::encode::channel_open(1)])
            .await?;
        let (replayed, before) =
            wait_for_connection_method(&mut late, ids::CONNECTION_BLOCKED, CLOSE_LIMIT).await?;
        ensure!(
            decode_method(&replayed)?
                == Method::Blocked {
                    reason: reason.clone()
                },
            "the replayed state differs: {}",
            describe(&replayed)
        );
        let late_open_ok = before
            .iter()
            .any(|f| f.channel() == 1 && f.method_id() == Some(ids::CHANNEL_OPEN_OK));

        // The client without the capability hears nothing about it.
        let heard = frames_within(&mut deaf, Duration::from_millis(500)).await?;
        ensure!(
            heard.is_empty(),
            "a client without the capability got {heard:?}"
        );

        alarm.clear().await?;
        wait_for_connection_method(&mut publisher, ids::CONNECTION_UNBLOCKED, CLOSE_LIMIT)
            .await
            .context("the publisher")?;
        let (_, after) =
            wait_for_connection_method(&mut late, ids::CONNECTION_UNBLOCKED, CLOSE_LIMIT)
                .await
                .context("the late client")?;
        if !late_open_ok
            && !after
                .iter()
                .any(|f| f.channel() == 1 && f.method_id() == Some(ids::CHANNEL_OPEN_OK))
        {
            late.expect_method(1, ids::CHANNEL_OPEN_OK).await?;
        }
        let heard = frames_within(&mut deaf, Duration::from_millis(200)).await?;
        ensure!(
            heard.is_empty(),
            "a client without the capability got {heard:?}"
        );

        // Everything published under the alarm arrives, and the late client works.
        let q = queue.as_str();
        wait_until(CLOSE_LIMIT, "the held publishes to arrive", || async move {
            Ok(broker::queue_counts("/", q)
                .await?
                .filter(|c| c.messages == published))
        })
        .await?;
        late.publish(1, &queue, b"late").await?;
        publisher.close().await?;
        deaf.close().await?;
        late.close().await?;
        broker::delete_queue("/", &queue).await?;
        Ok(())
    })
    .await?
}

/// B11: `rabbitmqctl close_connection` on warren's broker connection reaches the clients that
/// had a channel on it as `Connection.Close 320` with the broker's text, promptly; a client
/// without channels keeps its connection and gets a channel once warren has redialled; new
/// clients are served on the new broker connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_disturbing_close_connection_closes_clients_with_channels_only() -> Result<()> {
    within(Duration::from_secs(110), "the test", async {
        let user = TestUser::create("warren-test-forced").await?;
        let warren = Warren::start_configured(|c| c.backoff_initial = Duration::from_millis(100))?;
        let opts = RawOptions::new(&user.name, &user.password, "/");
        let mut with_channel = RawClient::connect(warren.addr(), &opts).await?;
        with_channel.open_channel(1).await?;
        let queue = with_channel
            .declare_queue(1, &unique("disrupt-forced"), false)
            .await?;
        let mut without_channel = RawClient::connect(warren.addr(), &opts).await?;
        let before = the_upstream_of(&user).await?;

        let reason = format!("warren test {}", unique("forced"));
        let forced_at = Instant::now();
        broker::close_connection(&before.name, &reason).await?;
        let closed = with_channel.expect_close_within(CLOSE_LIMIT).await?;
        eprintln!(
            "forced close reached the client {:?} after issuing it (two rabbitmqctl runs \
             included): {closed:?}",
            forced_at.elapsed()
        );
        ensure!(
            closed.channel == 0 && closed.code == 320 && closed.text.contains(&reason),
            "expected Connection.Close 320 with the broker's text (naming {reason:?}), got \
             {closed:?}"
        );
        with_channel.finish_close().await?;

        let refusals = without_channel
            .open_channel_retrying(1, RECOVERY_LIMIT)
            .await
            .context("the client without channels")?;
        if !refusals.is_empty() {
            eprintln!(
                "channel.open was refused {} time(s) before the redial: {refusals:?}",
                refusals.len()
            );
        }
        without_channel
            .publish(1, &queue, b"after the forced close")
            .await?;
        let got = without_channel.get_within(1, &queue, CLOSE_LIMIT).await?;
        ensure!(got.body == b"after the forced close", "got {got:?}");

        let conn = client::lapin_connect(&warren.amqp_url(&user.name, &user.password, "/")).await?;
        let ch = conn.create_channel().await?;
        lapin_round_trip(&ch, &queue, "a new client").await?;
        let after = the_upstream_of(&user).await?;
        ensure!(
            after.name != before.name,
            "the force-closed connection is still listed"
        );
        conn.close(200, "bye".into()).await?;
        without_channel.close().await?;
        broker::delete_queue("/", &queue).await?;
        Ok(())
    })
    .await?
}

/// How one load client ended.
#[derive(Debug, Default)]
struct LoadResult {
    /// Message ids the broker confirmed (publishers) or that were delivered (consumers).
    ids: Vec<String>,
    /// The `Connection.Close` the client received.
    closed: Option<Closed>,
}

/// Publishes persistent messages `p{k}-{n}` to `queue` with confirms (up to 16 in flight)
/// until the connection is closed; returns the confirmed ids and the close.
async fn confirming_publisher(addr: SocketAddr, k: usize, queue: String) -> Result<LoadResult> {
    let mut raw = RawClient::connect(addr, &RawOptions::new(GUEST, GUEST, "/")).await?;
    raw.open_channel(1).await?;
    raw.confirm_select(1).await?;
    let fm = raw.frame_max();
    let mut next_tag = 1u64;
    let mut in_flight: BTreeMap<u64, String> = BTreeMap::new();
    let mut result = LoadResult::default();
    loop {
        while in_flight.len() < 16 {
            let id = format!("p{k}-{next_tag}");
            let frames = build::publish_frames(1, "", &queue, id.as_bytes(), true, fm);
            if raw.send(&frames).await.is_err() {
                break;
            }
            in_flight.insert(next_tag, id);
            next_tag += 1;
        }
        let f = match raw.try_recv(CLOSE_LIMIT).await? {
            Incoming::Frame(f) => f,
            Incoming::Eof => bail!("publisher {k}: the socket closed without a Connection.Close"),
            Incoming::Timeout => bail!("publisher {k}: nothing for {CLOSE_LIMIT:?}: hung"),
        };
        if let Some(closed) = as_close(&f)? {
            ensure!(
                closed.channel == 0,
                "publisher {k}: channel closed: {closed:?}"
            );
            let _ = raw.finish_close().await;
            result.closed = Some(closed);
            return Ok(result);
        }
        if let Some((tag, multiple)) = as_confirm_ack(&f)? {
            let done: Vec<u64> = if multiple {
                in_flight.range(..=tag).map(|(t, _)| *t).collect()
            } else {
                vec![tag]
            };
            for t in done {
                if let Some(id) = in_flight.remove(&t) {
                    result.ids.push(id);
                }
            }
        } else if f.method_id() == Some(ids::BASIC_NACK) {
            bail!("publisher {k}: the broker nacked a publish");
        }
    }
}

/// Consumes `queue` with manual acks (prefetch 50) until the connection is closed; returns
/// the delivered ids and the close.
async fn acking_consumer(addr: SocketAddr, k: usize, queue: String) -> Result<LoadResult> {
    let mut raw = RawClient::connect(addr, &RawOptions::new(GUEST, GUEST, "/")).await?;
    raw.open_channel(1).await?;
    raw.qos(1, 50).await?;
    raw.consume(1, &queue, &format!("load-consumer-{k}"), false)
        .await?;
    let mut result = LoadResult::default();
    loop {
        let f = match raw.try_recv(CLOSE_LIMIT).await? {
            Incoming::Frame(f) => f,
            Incoming::Eof => bail!("consumer {k}: the socket closed without a Connection.Close"),
            Incoming::Timeout => bail!("consumer {k}: nothing for {CLOSE_LIMIT:?}: hung"),
        };
        if let Some(closed) = as_close(&f)? {
            ensure!(
                closed.channel == 0,
                "consumer {k}: channel closed: {closed:?}"
            );
            let _ = raw.finish_close().await;
            result.closed = Some(closed);
            return Ok(result);
        }
        if f.method_id() == Some(ids::BASIC_DELIVER) {
            raw.unread(f);
            let d = raw.recv_delivery().await?;
            result
                .ids
                .push(String::from_utf8_lossy(&d.body).into_owned());
            // The broker may be gone already; a lost ack only means a redelivery.
            let _ = raw.ack(1, d.delivery_tag, false).await;
        }
    }
}

/// B11/R4: the broker stops (`rabbitmqctl stop_app`) under load — publishers with confirms
/// and consumers with acks, all through warren — and starts again. Every client with a
/// channel receives `Connection.Close 320` promptly (nothing hangs); a new client meanwhile
/// fails fast; once the broker is back warren reconnects by itself and serves new clients;
/// and every message the broker confirmed was delivered or is still in the (durable) queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_disturbing_stop_app_closes_clients_and_warren_recovers() -> Result<()> {
    const PUBLISHERS: usize = 3;
    const CONSUMERS: usize = 2;
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

    // The load: a durable queue, persistent messages.
    let load_queue = {
        let mut raw =
            RawClient::connect(warren.addr(), &RawOptions::new(GUEST, GUEST, "/")).await?;
        raw.open_channel(1).await?;
        let q = raw.declare_queue(1, &unique("disrupt-load"), false).await?;
        raw.close().await?;
        q
    };
    let mut publishers = Vec::new();
    for k in 0..PUBLISHERS {
        publishers.push(tokio::spawn(confirming_publisher(
            warren.addr(),
            k,
            load_queue.clone(),
        )));
    }
    let mut consumers = Vec::new();
    for k in 0..CONSUMERS {
        consumers.push(tokio::spawn(acking_consumer(
            warren.addr(),
            k,
            load_queue.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let stopping_at = Instant::now();
    let stopped = BrokerStopped::stop().await?;
    let stopped_in = stopping_at.elapsed();

    // The client is told, promptly, with a Connection.Close.
    let close = within(CLOSE_LIMIT, "the client's Connection.Close", closes.recv())
        .await
        .with_context(|| {
            // For diagnosis: did the socket end without a close, or is it still open?
            format!(
                "stop_app took {stopped_in:?}; amqprs reports the connection {}",
                if conn.is_open() {
                    "still open"
                } else {
                    "closed"
                }
            )
        })?
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

    // So is every load client: each ends with Connection.Close 320, none hangs.
    let mut confirmed = BTreeSet::new();
    let mut delivered = BTreeSet::new();
    for (role, tasks, ids) in [
        ("publisher", publishers, &mut confirmed),
        ("consumer", consumers, &mut delivered),
    ] {
        for (k, task) in tasks.into_iter().enumerate() {
            let r = within(CLOSE_LIMIT, &format!("{role} {k} to end"), task)
                .await??
                .with_context(|| format!("{role} {k}"))?;
            let closed = r.closed.context("ended without a close")?;
            ensure!(
                closed.code == 320,
                "{role} {k}: expected Connection.Close 320, got {closed:?}"
            );
            ids.extend(r.ids);
        }
    }
    eprintln!(
        "under load: every client closed with 320 within {:?} of issuing stop_app (which \
         took {stopped_in:?}); {} confirmed, {} delivered before the stop",
        stopping_at.elapsed(),
        confirmed.len(),
        delivered.len()
    );
    ensure!(
        !confirmed.is_empty(),
        "no publish was confirmed before the stop"
    );

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

    // No confirmed message was lost: what was not delivered is still in the durable queue.
    let mut raw = RawClient::connect(warren.addr(), &RawOptions::new(GUEST, GUEST, "/")).await?;
    raw.open_channel(1).await?;
    let mut remaining = BTreeSet::new();
    while let Some(d) = raw.get(1, &load_queue).await? {
        remaining.insert(String::from_utf8_lossy(&d.body).into_owned());
    }
    raw.close().await?;
    let lost: Vec<&String> = confirmed
        .iter()
        .filter(|id| !delivered.contains(*id) && !remaining.contains(*id))
        .collect();
    eprintln!(
        "after the restart: {} confirmed, {} delivered, {} still queued, {} lost",
        confirmed.len(),
        delivered.len(),
        remaining.len(),
        lost.len()
    );
    ensure!(
        lost.is_empty(),
        "{} confirmed message(s) were neither delivered nor left in the queue: {:?}",
        lost.len(),
        lost.iter().take(20).collect::<Vec<_>>()
    );
    broker::delete_queue("/", &load_queue).await?;
    Ok(())
}
