//! Channel recycling (B6) end to end: a clean channel that one client lets go of is fenced,
//! pooled and handed to the next client of the same hub, without that client being able to
//! tell — and never with anything that was meant for the one before.
//!
//! The evidence comes from both sides: warren's `/metrics` (channel opens served from the pool
//! or by the broker, channels recycled, channels pooled) and the broker's own list of channels
//! (`rabbitmqctl list_channels`), where a recycled channel is the same channel process as
//! before. Every test has its own broker user, so its hub, its upstream connection and its
//! channels are its alone.

use anyhow::{ensure, Context, Result};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::Value;
use std::time::Duration;
use warren_core::method::ids;
use warren_runtime::config::Config;
use warren_tests::broker;
use warren_tests::client;
use warren_tests::lapin_ops::{
    bounded, lapin_declare, lapin_get, lapin_publish, lapin_round_trip, the_upstream_of, LIMIT,
};
use warren_tests::metrics::{count, metrics_text};
use warren_tests::raw::{self, as_confirm_ack, build, Incoming, RawClient, RawOptions};
use warren_tests::{unique, wait_until, within, TestUser, Warren};

/// The configuration of these tests: the defaults (recycling on), plus a short upstream
/// heartbeat.
///
/// warren copies a hub's counters into `/metrics` only when the hub task wakes up (at most
/// every 250 ms); a hub that has nothing to do sleeps until its next timer, which with the
/// default 60 s heartbeat is up to 30 s away, so the last few events can stay invisible that
/// long. With a 2 s heartbeat the hub wakes about every second.
fn config(c: &mut Config) {
    c.upstream_heartbeat = 2;
}

/// One hub's series in warren's `/metrics` (labels `user` and `vhost="/"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct HubSeries {
    /// `warren_channel_opens_total{source="pool"}`.
    opens_from_pool: u64,
    /// `warren_channel_opens_total{source="broker"}`.
    opens_from_broker: u64,
    /// `warren_channels_recycled_total`.
    recycled: u64,
    /// `warren_channels_pooled`.
    pooled: u64,
    /// `warren_upstreams`.
    upstreams: u64,
}

/// Reads `user`'s hub series from `warren`'s `/metrics`.
async fn hub_series(warren: &Warren, user: &str) -> Result<HubSeries> {
    let text = metrics_text(warren).await?;
    let hub = [("user", user), ("vhost", "/")];
    let with = |extra: (&'static str, &'static str)| [hub[0], hub[1], extra];
    Ok(HubSeries {
        opens_from_pool: count(
            &text,
            "warren_channel_opens_total",
            &with(("source", "pool")),
        ),
        opens_from_broker: count(
            &text,
            "warren_channel_opens_total",
            &with(("source", "broker")),
        ),
        recycled: count(&text, "warren_channels_recycled_total", &hub),
        pooled: count(&text, "warren_channels_pooled", &hub),
        upstreams: count(&text, "warren_upstreams", &hub),
    })
}

/// Waits until `user`'s hub series satisfy `ok` and returns them.
async fn wait_series(
    warren: &Warren,
    user: &str,
    what: &str,
    ok: impl Fn(&HubSeries) -> bool,
) -> Result<HubSeries> {
    let last = std::cell::Cell::new(HubSeries::default());
    let found = wait_until(LIMIT, what, || {
        let (ok, last) = (&ok, &last);
        async move {
            let s = hub_series(warren, user).await?;
            last.set(s);
            Ok(ok(&s).then_some(s))
        }
    })
    .await;
    found.with_context(|| format!("last seen: {:?}", last.get()))
}

/// A channel as the broker lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BrokerChannel {
    /// The Erlang process of the channel: a channel that is closed and opened again gets a
    /// new one, a recycled channel keeps its own.
    pid: String,
    /// The process of its connection.
    connection: String,
    /// Its channel number on that connection.
    number: u64,
}

/// Every channel the broker has for `user`.
async fn channels_of(user: &str) -> Result<Vec<BrokerChannel>> {
    let rows = broker::list(&["list_channels", "pid", "connection", "number", "user"]).await?;
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    Ok(rows
        .iter()
        .filter(|r| r.get("user").and_then(Value::as_str) == Some(user))
        .map(|r| BrokerChannel {
            pid: text(&r["pid"]),
            connection: text(&r["connection"]),
            number: r["number"].as_u64().unwrap_or(0),
        })
        .collect())
}

/// Waits until the broker lists exactly `n` channels for `user`, and returns them.
async fn wait_channels(user: &str, n: usize) -> Result<Vec<BrokerChannel>> {
    wait_until(
        LIMIT,
        &format!("the broker to list {n} channel(s) of {user}"),
        || async move {
            let chans = channels_of(user).await?;
            Ok((chans.len() == n).then_some(chans))
        },
    )
    .await
}

/// Raw-client options for `user`.
fn raw_opts(user: &TestUser) -> RawOptions {
    RawOptions::new(&user.name, &user.password, "/")
}

/// Deletes the queues a test made (they also expire on their own).
async fn delete_queues(queues: &[&str]) -> Result<()> {
    for q in queues {
        broker::delete_queue("/", q).await?;
    }
    Ok(())
}

/// B6 with lapin on both sides: client A publishes and leaves; its channel is pooled (the
/// broker still has it open) and client B's `Channel.Open` is answered from the pool — the
/// broker lists the very same channel, and no other. On it B sees a channel of its own:
/// delivery tags from 1, publisher confirms from 1, and none of A's messages. Once B has
/// consumed, the channel is no longer clean and is closed when B leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_channel_is_handed_to_the_next_client_of_the_hub() -> Result<()> {
    bounded(async {
        let user = TestUser::create("warren-test-recycle").await?;
        let warren = Warren::start_configured(config)?;
        let url = warren.amqp_url(&user.name, &user.password, "/");
        let (qa, qb) = (unique("e2e-recycle-a"), unique("e2e-recycle-b"));

        // A: declares, publishes (all of it clean), leaves.
        let a = client::lapin_connect(&url).await?;
        let ch = a.create_channel().await?;
        lapin_declare(&ch, &qa).await?;
        lapin_declare(&ch, &qb).await?;
        for i in 0..2 {
            lapin_publish(&ch, &qa, format!("for-a-{i}").as_bytes()).await?;
        }
        a.close(200, "bye".into()).await?;

        let pooled = wait_series(&warren, &user.name, "A's channel in the pool", |s| {
            s.recycled == 1 && s.pooled == 1
        })
        .await?;
        assert_eq!(
            (pooled.opens_from_broker, pooled.opens_from_pool),
            (1, 0),
            "{pooled:?}"
        );
        let before = wait_channels(&user.name, 1).await?;

        // B: its channel comes from the pool, and the broker opens nothing new.
        let b = client::lapin_connect(&url).await?;
        let ch = b.create_channel().await?;
        let after_open = wait_series(&warren, &user.name, "B's open served by the pool", |s| {
            s.opens_from_pool == 1
        })
        .await?;
        assert_eq!(after_open.opens_from_broker, 1, "{after_open:?}");
        assert_eq!(after_open.pooled, 0, "{after_open:?}");
        let now = channels_of(&user.name).await?;
        assert_eq!(
            now, before,
            "B's channel is not A's recycled broker channel"
        );

        // Delivery tags start at 1 on B's channel, and only B's messages arrive.
        for i in 0..3 {
            lapin_publish(&ch, &qb, format!("for-b-{i}").as_bytes()).await?;
        }
        let mut consumer = ch
            .basic_consume(
                qb.as_str().into(),
                "b-consumer".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut next_tag = 1;
        for i in 0..3 {
            let d = within(LIMIT, &format!("delivery {i} to B"), consumer.next())
                .await?
                .context("B's consumer ended")??;
            assert_eq!(d.data, format!("for-b-{i}").as_bytes());
            assert_eq!(d.delivery_tag, next_tag, "B's delivery tags start at 1");
            next_tag += 1;
            d.ack(BasicAckOptions::default()).await?;
        }

        // Publisher confirms: lapin numbers B's publishes from 1 and matches the broker's
        // acks against them, so a broker sequence that did not start at 1 would leave these
        // unconfirmed or nacked.
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        for i in 0..3 {
            let confirm = ch
                .basic_publish(
                    "".into(),
                    qb.as_str().into(),
                    BasicPublishOptions::default(),
                    format!("confirmed-{i}").as_bytes(),
                    BasicProperties::default(),
                )
                .await?;
            let confirmation =
                within(LIMIT, &format!("the confirm of publish {i}"), confirm).await??;
            assert!(confirmation.is_ack(), "publish {i}: {confirmation:?}");
            let d = within(LIMIT, "a confirmed message", consumer.next())
                .await?
                .context("B's consumer ended")??;
            assert_eq!(d.data, format!("confirmed-{i}").as_bytes());
            assert_eq!(d.delivery_tag, next_tag);
            next_tag += 1;
            d.ack(BasicAckOptions::default()).await?;
        }

        // A's messages are still where A put them.
        let counts = broker::queue_counts("/", &qa)
            .await?
            .context("A's queue is gone")?;
        assert_eq!(counts.messages, 2, "A's messages: {counts:?}");

        // B consumed, so its channel is not clean: closed when B leaves, not pooled.
        b.close(200, "bye".into()).await?;
        wait_channels(&user.name, 0).await?;
        let end = hub_series(&warren, &user.name).await?;
        assert_eq!((end.recycled, end.pooled), (1, 0), "{end:?}");
        delete_queues(&[&qa, &qb]).await
    })
    .await
}

/// B6, frame by frame with raw clients: A leaves with a `queue.declare` still unanswered
/// (its `declare-ok` arrives while the channel is being fenced), B gets the recycled channel.
/// B's first frames are exactly the answers to its own methods, its confirm sequence numbers
/// and delivery tags start at 1, and nothing else ever arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_replies_to_a_client_that_left_never_reach_the_next() -> Result<()> {
    bounded(async {
        let user = TestUser::create("warren-test-recycle-raw").await?;
        let warren = Warren::start_configured(config)?;
        let (qa, qb, late) = (
            unique("e2e-recycle-raw-a"),
            unique("e2e-recycle-raw-b"),
            unique("e2e-recycle-raw-late"),
        );

        let mut a = RawClient::connect(warren.addr(), &raw_opts(&user)).await?;
        a.open_channel(1).await?;
        a.declare_queue(1, &qa, false).await?;
        a.declare_queue(1, &qb, false).await?;
        a.publish(1, &qa, b"for-a").await?;
        // A declare and the goodbye in one write: A is gone before the declare-ok comes.
        let bye = warren_core::method::Close {
            code: 200,
            text: "bye".into(),
            class_id: 0,
            method_id: 0,
        };
        a.send(&[
            build::queue_declare(1, &late, false),
            warren_core::method::encode::close(0, &bye),
        ])
        .await?;
        let before_eof = a.expect_eof(LIMIT).await?;
        ensure!(
            before_eof
                .iter()
                .any(|f| f.method_id() == Some(ids::CONNECTION_CLOSE_OK)),
            "A's close was not answered: {}",
            before_eof
                .iter()
                .map(raw::describe)
                .collect::<Vec<_>>()
                .join(", ")
        );

        wait_series(&warren, &user.name, "A's channel in the pool", |s| {
            s.pooled == 1
        })
        .await?;
        let before = wait_channels(&user.name, 1).await?;

        let mut b = RawClient::connect(warren.addr(), &raw_opts(&user)).await?;
        // `expect_method` fails on any other frame first: A's declare-ok would show here.
        b.open_channel(1).await?;
        let s = wait_series(&warren, &user.name, "B's open served by the pool", |s| {
            s.opens_from_pool == 1
        })
        .await?;
        assert_eq!(s.opens_from_broker, 1, "{s:?}");
        assert_eq!(channels_of(&user.name).await?, before, "not A's channel");

        b.confirm_select(1).await?;
        for seq in 1..=3u64 {
            b.publish(1, &qb, format!("for-b-{seq}").as_bytes()).await?;
            let f = b.recv().await?;
            let ack = as_confirm_ack(&f)?
                .with_context(|| format!("expected a confirm, got {}", raw::describe(&f)))?;
            assert_eq!(ack, (seq, false), "confirm sequence numbers start at 1");
        }
        b.consume(1, &qb, "b", false).await?;
        for tag in 1..=3u64 {
            let d = b.recv_delivery().await?;
            assert_eq!(d.delivery_tag, tag, "delivery tags start at 1");
            assert_eq!(d.body, format!("for-b-{tag}").as_bytes());
            assert!(!d.redelivered);
            b.ack(1, tag, false).await?;
        }
        // And nothing else: no frame of A's, no stray ack.
        match b.try_recv(Duration::from_millis(500)).await? {
            Incoming::Timeout => {}
            Incoming::Frame(f) => panic!(
                "B received a frame it did not ask for: {}",
                raw::describe(&f)
            ),
            Incoming::Eof => panic!("warren closed B's connection"),
        }
        let counts = broker::queue_counts("/", &qa)
            .await?
            .context("A's queue is gone")?;
        assert_eq!(counts.messages, 1, "A's message: {counts:?}");
        b.close().await?;
        delete_queues(&[&qa, &qb, &late]).await
    })
    .await
}

/// B6: on a fresh channel RabbitMQ resolves an empty queue name to nothing ("no previously
/// declared queue"); a recycled channel must not resolve it to the queue its previous owner
/// declared. B gets exactly what the broker itself answers on a fresh channel, and A's
/// message stays in A's queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_clients_queue_is_not_the_next_clients_default() -> Result<()> {
    bounded(async {
        let user = TestUser::create("warren-test-recycle-shortcut").await?;
        let warren = Warren::start_configured(config)?;
        let qa = unique("e2e-recycle-shortcut");

        let a = client::lapin_connect(&warren.amqp_url(&user.name, &user.password, "/")).await?;
        let ch = a.create_channel().await?;
        lapin_declare(&ch, &qa).await?;
        lapin_publish(&ch, &qa, b"for-a").await?;
        a.close(200, "bye".into()).await?;
        wait_series(&warren, &user.name, "A's channel in the pool", |s| {
            s.pooled == 1
        })
        .await?;

        // What the broker answers on a fresh channel of its own.
        let broker_addr = (warren_tests::BROKER_HOST, warren_tests::BROKER_PORT);
        let broker_addr = tokio::net::lookup_host(broker_addr)
            .await?
            .next()
            .context("the broker's address")?;
        let mut direct = RawClient::connect(broker_addr, &raw_opts(&user)).await?;
        direct.open_channel(1).await?;
        direct.send(&[build::get(1, "", true)]).await?;
        let want = direct.expect_close().await?;
        // The broker does not end the socket after its close-ok to this raw client; the
        // answer is all that is needed from it.
        direct.kill();

        let mut b = RawClient::connect(warren.addr(), &raw_opts(&user)).await?;
        b.open_channel(1).await?;
        wait_series(&warren, &user.name, "B's open served by the pool", |s| {
            s.opens_from_pool == 1
        })
        .await?;
        b.send(&[build::get(1, "", true)]).await?;
        let got = b.expect_close().await?;
        assert_eq!(got, want, "warren's answer differs from the broker's");
        b.send(&[warren_core::method::encode::close_ok(1)]).await?;
        // B's connection goes on.
        b.open_channel(2).await?;
        b.close().await?;

        let counts = broker::queue_counts("/", &qa)
            .await?
            .context("A's queue is gone")?;
        assert_eq!(counts.messages, 1, "A's message was taken: {counts:?}");
        delete_queues(&[&qa]).await
    })
    .await
}

/// B6's fence: A publishes to an exchange that does not exist and leaves in the same write.
/// The broker's `Channel.Close 404` for A arrives while the channel is being fenced, so the
/// channel is closed instead of pooled, and B — which would have been next — never sees it:
/// B's channel comes from the broker and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_meant_for_a_client_that_left_never_reaches_the_next() -> Result<()> {
    const ROUNDS: usize = 3;
    bounded(async {
        let user = TestUser::create("warren-test-recycle-fence").await?;
        let warren = Warren::start_configured(config)?;
        let url = warren.amqp_url(&user.name, &user.password, "/");
        let queue = unique("e2e-recycle-fence");
        let missing = unique("e2e-no-such-exchange");
        let bye = warren_core::method::Close {
            code: 200,
            text: "bye".into(),
            class_id: 0,
            method_id: 0,
        };

        for round in 0..ROUNDS {
            let mut a = RawClient::connect(warren.addr(), &raw_opts(&user)).await?;
            a.open_channel(1).await?;
            let mut frames = build::publish_frames(1, &missing, "rk", b"lost", false, 4096);
            frames.push(warren_core::method::encode::close(0, &bye));
            a.send(&frames).await?;
            let seen = a.expect_eof(LIMIT).await?;
            // Whatever A saw, it saw before its connection ended; B is what matters.
            let a_saw: Vec<String> = seen.iter().map(raw::describe).collect();

            // The fence took the 404: the channel is closed, not pooled.
            wait_channels(&user.name, 0)
                .await
                .with_context(|| format!("round {round}: A saw {a_saw:?}"))?;
            let s = hub_series(&warren, &user.name).await?;
            assert_eq!((s.recycled, s.pooled), (0, 0), "round {round}: {s:?}");

            // B: a working channel, no 404, connection untouched.
            let b = client::lapin_connect(&url).await?;
            let ch = b.create_channel().await?;
            lapin_declare(&ch, &queue).await?;
            // basic.get makes B's channel unclean, so it is closed (not pooled) when B leaves
            // and every round starts with an empty pool.
            lapin_round_trip(&ch, &queue, &format!("b-{round}")).await?;
            assert!(ch.status().connected(), "round {round}: B's channel closed");
            assert!(
                b.status().connected(),
                "round {round}: B's connection closed"
            );
            b.close(200, "bye".into()).await?;
            wait_channels(&user.name, 0).await?;
        }

        let s = wait_series(&warren, &user.name, "every open counted", |s| {
            s.opens_from_broker == 2 * ROUNDS as u64
        })
        .await?;
        assert_eq!((s.opens_from_pool, s.recycled), (0, 0), "{s:?}");
        assert_eq!(s.upstreams, 1, "the broker connection was replaced: {s:?}");
        delete_queues(&[&queue]).await
    })
    .await
}

/// `recycling = false`: a channel is closed when its client leaves, every `Channel.Open`
/// reaches the broker, and nothing is ever pooled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_recycling_off_every_open_reaches_the_broker() -> Result<()> {
    const CLIENTS: u64 = 3;
    bounded(async {
        let user = TestUser::create("warren-test-recycle-off").await?;
        let warren = Warren::start_configured(|c| {
            config(c);
            c.recycling = false;
        })?;
        let url = warren.amqp_url(&user.name, &user.password, "/");
        let queue = unique("e2e-recycle-off");

        let mut pids = Vec::new();
        for i in 0..CLIENTS {
            let conn = client::lapin_connect(&url).await?;
            let ch = conn.create_channel().await?;
            lapin_declare(&ch, &queue).await?;
            lapin_publish(&ch, &queue, format!("m-{i}").as_bytes()).await?;
            let chans = wait_channels(&user.name, 1).await?;
            pids.push(chans[0].pid.clone());
            conn.close(200, "bye".into()).await?;
            // Closed upstream as the client leaves, not kept.
            wait_channels(&user.name, 0).await?;
        }
        let distinct: std::collections::HashSet<&String> = pids.iter().collect();
        assert_eq!(
            distinct.len(),
            pids.len(),
            "a broker channel was reused: {pids:?}"
        );
        let s = wait_series(&warren, &user.name, "every open counted", |s| {
            s.opens_from_broker == CLIENTS
        })
        .await?;
        assert_eq!(
            (s.opens_from_pool, s.recycled, s.pooled),
            (0, 0, 0),
            "{s:?}"
        );
        let conn = client::lapin_connect(&url).await?;
        let ch = conn.create_channel().await?;
        let got = lapin_get(&ch, &queue).await?;
        assert_eq!(got.delivery.data, b"m-0");
        conn.close(200, "bye".into()).await?;
        delete_queues(&[&queue]).await
    })
    .await
}

/// P1's scenario as a functional check (no clock involved): 200 clients one after another,
/// each connecting, opening a channel, publishing one 100-byte message and closing. warren
/// holds one broker connection for all of them, and almost every channel open is served from
/// the pool (the first cannot be, and a client may occasionally come before the previous
/// channel's fence returns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_churn_reuses_one_broker_connection_and_pooled_channels() -> Result<()> {
    const CYCLES: u64 = 200;
    const MIN_POOL_HITS: u64 = 190;
    bounded(async {
        let user = TestUser::create("warren-test-churn").await?;
        let warren = Warren::start_configured(config)?;
        let url = warren.amqp_url(&user.name, &user.password, "/");
        let queue = unique("e2e-churn");
        {
            let conn = client::lapin_connect(&url).await?;
            let ch = conn.create_channel().await?;
            lapin_declare(&ch, &queue).await?;
            conn.close(200, "bye".into()).await?;
        }
        let first = the_upstream_of(&user).await?;
        let payload = client::pattern(100, 0xc4u64);
        for i in 0..CYCLES {
            let conn = client::lapin_connect(&url)
                .await
                .with_context(|| format!("cycle {i}"))?;
            let ch = conn.create_channel().await?;
            lapin_publish(&ch, &queue, &payload).await?;
            conn.close(200, "bye".into()).await?;
        }
        let last = the_upstream_of(&user).await?;
        assert_eq!(
            first.name, last.name,
            "the churn went to another broker connection"
        );
        let total = CYCLES + 1;
        let s = wait_series(&warren, &user.name, "every open counted", |s| {
            s.opens_from_pool + s.opens_from_broker == total
        })
        .await?;
        assert!(
            s.opens_from_pool >= MIN_POOL_HITS,
            "only {} of {total} channel opens came from the pool: {s:?}",
            s.opens_from_pool
        );
        assert_eq!(s.upstreams, 1, "{s:?}");
        let q = queue.as_str();
        wait_until(LIMIT, "every churned message in the queue", || async move {
            let counts = broker::queue_counts("/", q).await?;
            Ok(counts.filter(|c| c.messages == CYCLES))
        })
        .await?;
        delete_queues(&[&queue]).await
    })
    .await
}
