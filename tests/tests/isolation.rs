//! Tenant isolation (B5, B7, B9; R3): whatever one client sends — malformed frames, illegal
//! methods, methods RabbitMQ would answer with a *connection* error, half a publish, a
//! consumer that stops reading — only that client is closed, with the reply code the spec
//! names, and a neighbour on the same broker connection keeps working.
//!
//! Every test has its own broker user (so its hub and its one upstream connection are its
//! own) and a **canary**: a lapin client of the same user and vhost, hence on the same
//! upstream, that publishes and gets before and after the misbehaviour. Afterwards the test
//! asserts that the canary still works *and* that warren's broker connection for that user is
//! the very one from before (RabbitMQ closing it would make warren dial a new one).
//!
//! The misbehaving clients are raw clients ([`warren_tests::raw`]), which can send what lapin
//! and amqprs never would.
//!
//! Why one file of about a thousand lines: it is a catalogue of cases that each read alone,
//! all built on the one [`Scene`] above; splitting it would mean copying the scene or moving
//! it into the library for this file's sake.

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use std::time::Duration;
use warren_core::method::{ids, Method};
use warren_runtime::config::Config;
use warren_tests::broker::{self, BrokerConnection};
use warren_tests::client;
use warren_tests::events::WarrenConnections;
use warren_tests::lapin_ops::{
    assert_upstream_kept, bounded, lapin_declare, lapin_get, lapin_publish, lapin_round_trip,
    the_upstream_of, LIMIT,
};
use warren_tests::metrics::metric;
use warren_tests::raw::{build, close_for, decode_method, describe, RawClient, RawOptions};
use warren_tests::{unique, wait_until, within, TestUser, Warren};

/// One test's world: its user, its warren, the canary and the upstream they share.
struct Scene {
    user: TestUser,
    warren: Warren,
    canary: lapin::Connection,
    canary_ch: lapin::Channel,
    canary_queue: String,
    upstream: BrokerConnection,
    round_trips: usize,
}

impl Scene {
    /// A default warren, a fresh user and a canary that has done one round trip.
    async fn start(prefix: &str) -> Result<Scene> {
        Scene::start_configured(prefix, |_| {}).await
    }

    /// Like [`Scene::start`] with warren's configuration changed by `f`.
    async fn start_configured(prefix: &str, f: impl FnOnce(&mut Config)) -> Result<Scene> {
        let user = TestUser::create(&format!("warren-iso-{prefix}")).await?;
        let warren = Warren::start_configured(f)?;
        let canary = client::lapin_connect(&warren.amqp_url(&user.name, &user.password, "/"))
            .await
            .context("connecting the canary")?;
        let canary_ch = canary.create_channel().await?;
        let canary_queue = unique(&format!("iso-canary-{prefix}"));
        lapin_declare(&canary_ch, &canary_queue).await?;
        lapin_round_trip(&canary_ch, &canary_queue, "canary before").await?;
        let upstream = the_upstream_of(&user).await?;
        Ok(Scene {
            user,
            warren,
            canary,
            canary_ch,
            canary_queue,
            upstream,
            round_trips: 0,
        })
    }

    fn raw_options(&self) -> RawOptions {
        RawOptions::new(&self.user.name, &self.user.password, "/")
    }

    /// A raw client of the scene's user, connected.
    async fn raw(&self) -> Result<RawClient> {
        RawClient::connect(self.warren.addr(), &self.raw_options()).await
    }

    /// A raw client of the scene's user with channel 1 open.
    async fn raw_on_channel_1(&self) -> Result<RawClient> {
        let mut raw = self.raw().await?;
        raw.open_channel(1).await?;
        Ok(raw)
    }

    /// A lapin client of the scene's user.
    async fn lapin(&self) -> Result<lapin::Connection> {
        client::lapin_connect(
            &self
                .warren
                .amqp_url(&self.user.name, &self.user.password, "/"),
        )
        .await
    }

    /// The canary still publishes and gets, and the broker connection is the one from the
    /// start (not closed and replaced).
    async fn assert_unharmed(&mut self, after: &str) -> Result<()> {
        self.round_trips += 1;
        lapin_round_trip(
            &self.canary_ch,
            &self.canary_queue,
            &format!("canary after {after} #{}", self.round_trips),
        )
        .await
        .with_context(|| format!("the canary's round trip after {after}"))?;
        ensure!(
            self.canary.status().connected(),
            "the canary's connection was closed after {after}"
        );
        assert_upstream_kept(&self.user, &self.upstream)
            .await
            .with_context(|| format!("after {after}"))
    }

    /// The sum of metric `name` over samples of this scene's user that carry `labels`.
    /// (Hubs copy their counters into metrics at most every 250 ms: read it in a wait.)
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        let mut all = vec![("user", self.user.name.as_str())];
        all.extend_from_slice(labels);
        metric(&self.warren, name, &all).await
    }

    /// Waits until metric `name` (this user's samples with `labels`) satisfies `ok`.
    async fn wait_for_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        ok: impl Fn(f64) -> bool,
    ) -> Result<f64> {
        wait_until(
            LIMIT,
            &format!("{name}{labels:?} of {}", self.user.name),
            || async {
                let v = self.metric(name, labels).await?;
                Ok(ok(v).then_some(v))
            },
        )
        .await
    }

    /// Final checks and cleanup.
    async fn finish(mut self) -> Result<()> {
        self.assert_unharmed("everything").await?;
        broker::delete_queue("/", &self.canary_queue).await?;
        self.canary.close(200, "bye".into()).await?;
        Ok(())
    }
}

/// Sends `frames` on a raw client with channel 1 open and asserts that warren closes that
/// client alone with `Connection.Close code` (text containing `text`), answers its `CloseOk`
/// by closing the socket, and leaves the canary and the upstream as they were.
async fn bad_input(
    case: &str,
    frames: impl FnOnce(&RawClient) -> Vec<Bytes>,
    code: u16,
    text: &str,
) -> Result<()> {
    bounded(async {
        let mut scene = Scene::start(case).await?;
        let mut raw = scene.raw_on_channel_1().await?;
        let frames = frames(&raw);
        raw.send(&frames).await?;
        expect_connection_close(&mut raw, code, text).await?;
        scene.assert_unharmed(case).await?;
        scene.finish().await
    })
    .await
}

/// The next close `raw` receives is `Connection.Close` with `code` and a text containing
/// `text`; the client answers `CloseOk` and the socket closes.
async fn expect_connection_close(raw: &mut RawClient, code: u16, text: &str) -> Result<()> {
    let closed = raw.expect_close().await?;
    ensure!(
        closed.channel == 0 && closed.code == code && closed.text.contains(text),
        "expected Connection.Close {code} containing {text:?}, got {closed:?}"
    );
    raw.finish_close().await
}

// ----- framing (B7: frame type, size, end octet) ---------------------------------------------

/// A frame whose end octet is not 0xCE: 501 FRAME_ERROR for that client only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frame_end_octet_gets_501_and_only_its_sender_is_closed() -> Result<()> {
    bad_input(
        "bad-end",
        |_| vec![build::with_end(&build::qos(1, 0, 10), 0x00)],
        501,
        "FRAME_ERROR",
    )
    .await
}

/// A frame announcing more than the negotiated frame_max: 501, detected from the 7-byte
/// header alone (the payload is never sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_larger_than_frame_max_gets_501_and_only_its_sender_is_closed() -> Result<()> {
    bad_input(
        "oversize",
        |raw| {
            vec![
                build::publish(1, "", "nowhere", false, false),
                build::header(1, 1 << 20),
                build::frame_header_only(3, 1, raw.frame_max() * 2),
            ]
        },
        501,
        "FRAME_ERROR",
    )
    .await
}

// ----- content sequencing (B7, B8) -----------------------------------------------------------

/// A body frame right after `basic.publish`, without its content header: 505.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_without_header_gets_505_and_only_its_sender_is_closed() -> Result<()> {
    bad_input(
        "body-no-header",
        |_| {
            vec![
                build::publish(1, "", "nowhere", false, false),
                build::body(1, b"orphan body"),
            ]
        },
        505,
        "UNEXPECTED_FRAME",
    )
    .await
}

/// A header announcing 10 bytes followed by 20 bytes of body: 505.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_exceeding_its_header_size_gets_505_and_only_its_sender_is_closed() -> Result<()> {
    bad_input(
        "body-too-long",
        |_| {
            vec![
                build::publish(1, "", "nowhere", false, false),
                build::header(1, 10),
                build::body(1, &[b'x'; 20]),
            ]
        },
        505,
        "larger than the size its header declared",
    )
    .await
}

// ----- channels (B7) ---------------------------------------------------------------------------

/// A method on a channel that was never opened: 504 CHANNEL_ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_on_unopened_channel_gets_504_and_only_its_sender_is_closed() -> Result<()> {
    bad_input(
        "unopened",
        |_| vec![build::qos(9, 0, 10)],
        504,
        "expected 'channel.open'",
    )
    .await
}

/// A second `Channel.Open` on an open channel: 504 CHANNEL_ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_channel_open_gets_504_and_only_its_sender_is_closed() -> Result<()> {
    bad_input(
        "reopen",
        |_| vec![warren_core::method::encode::channel_open(1)],
        504,
        "second 'channel.open'",
    )
    .await
}

// ----- what RabbitMQ answers with a connection error (the isolation that matters most) ---------

/// `basic.publish` with immediate=true: RabbitMQ would close the shared connection with 540;
/// warren closes only the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_immediate_gets_540_and_only_its_sender_is_closed() -> Result<()> {
    bad_input(
        "immediate",
        |_| {
            vec![
                build::publish(1, "", "nowhere", false, true),
                build::header(1, 2),
                build::body(1, b"hi"),
            ]
        },
        540,
        "immediate=true",
    )
    .await
}

/// `channel.flow active=false`: RabbitMQ closes the connection with 540 "NOT_IMPLEMENTED -
/// active=false" (checked here against it directly); warren closes only the sender, with the
/// same code and text, and never forwards it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_flow_inactive_gets_rabbitmqs_540_and_only_its_sender_is_closed() -> Result<()> {
    const TEXT: &str = "NOT_IMPLEMENTED - active=false";
    bounded(async {
        let opts = RawOptions::new(warren_tests::GUEST, warren_tests::GUEST, "/");
        let mut direct = RawClient::connect(warren_tests::broker_addr(), &opts).await?;
        direct.open_channel(1).await?;
        direct.send(&[build::flow(1, false)]).await?;
        let closed = direct.expect_close().await?;
        ensure!(
            (closed.channel, closed.code, closed.text.as_str()) == (0, 540, TEXT),
            "RabbitMQ itself answered {closed:?}"
        );
        direct.finish_close().await
    })
    .await?;
    bad_input("flow-inactive", |_| vec![build::flow(1, false)], 540, TEXT).await
}

/// `basic.qos` with a prefetch_size: RabbitMQ's 540 stays with the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_prefetch_size_gets_540_and_only_its_sender_is_closed() -> Result<()> {
    bad_input(
        "prefetch-size",
        |_| vec![build::qos(1, 4096, 10)],
        540,
        "prefetch_size",
    )
    .await
}

/// `exchange.declare` of a type the broker does not know, with a `queue.declare` pipelined
/// behind it: warren asks the broker about the type on a connection of its own (B7) and
/// closes the sender with RabbitMQ's own close, the very one RabbitMQ sends a client of its
/// own (503, its text, naming `exchange.declare`), dropping the `queue.declare` as RabbitMQ
/// does. A second sender of that type gets the same from what the hub learnt, without a
/// second question. Neither the exchange nor the queues exist afterwards, warren's one
/// question to the broker opened and closed one connection, and the canary and the upstream
/// are unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_exchange_type_gets_rabbitmqs_503_and_only_its_sender_is_closed() -> Result<()> {
    bounded(async {
        let mut scene = Scene::start("exchange-type").await?;
        let probes = WarrenConnections::watch(&scene.user.name).await?;
        let kind = unique("x-no-such-type");
        let exchange = unique("iso-x");
        let opts = scene.raw_options();
        let mut queues = Vec::new();
        let mut send = |addr| {
            let queue = unique("iso-x-q");
            let frames = [
                build::exchange_declare(1, &exchange, &kind),
                build::queue_declare(1, &queue, false),
            ];
            queues.push(queue);
            let opts = &opts;
            async move { close_for(addr, opts, &frames).await }
        };
        let direct = send(warren_tests::broker_addr()).await?;
        let want = format!("COMMAND_INVALID - unknown exchange type '{kind}'");
        ensure!(
            (
                direct.channel,
                direct.code,
                direct.text.as_str(),
                direct.cause
            ) == (0, 503, want.as_str(), (40, 10)),
            "RabbitMQ itself answered {direct:?}"
        );
        for sender in ["the first sender", "a second sender"] {
            let through = send(scene.warren.addr()).await?;
            ensure!(
                through == direct,
                "{sender} through warren got {through:?}; RabbitMQ sends {direct:?}"
            );
        }
        for queue in &queues {
            ensure!(
                broker::queue_counts("/", queue).await?.is_none(),
                "queue {queue}, declared behind the refused declare, exists"
            );
        }
        ensure!(
            !broker::exchanges("/").await?.contains_key(&exchange),
            "exchange {exchange} of the unknown type exists"
        );
        probes.wait_for_closed(1, &scene.upstream.name).await?;
        scene.assert_unharmed("an unknown exchange type").await?;
        scene.finish().await
    })
    .await
}

/// A consumer tag used twice on one channel: RabbitMQ's 530 stays with the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_tag_reuse_gets_530_and_only_its_sender_is_closed() -> Result<()> {
    bounded(async {
        let mut scene = Scene::start("tag-reuse").await?;
        let mut raw = scene.raw_on_channel_1().await?;
        let queue = raw.declare_queue(1, &unique("iso-tags"), false).await?;
        raw.consume(1, &queue, "twice", false).await?;
        raw.send(&[build::consume(1, &queue, "twice", false)])
            .await?;
        expect_connection_close(&mut raw, 530, "reuse consumer tag 'twice'").await?;
        scene.assert_unharmed("a reused consumer tag").await?;
        broker::delete_queue("/", &queue).await?;
        scene.finish().await
    })
    .await
}

/// The rest of the hub's table of bad input (core's `bad_client_input_gets_the_spec_reply_code`
/// snapshot), each from its own raw client against one shared upstream, which must survive
/// them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_bad_input_from_the_hub_table_closes_only_its_sender() -> Result<()> {
    bounded(async {
        let mut scene = Scene::start("table").await?;
        // A basic.deliver: a method only the server may send.
        let deliver = warren_core::frame::method_frame(1, ids::BASIC_DELIVER, |w| {
            w.shortstr(b"t")
                .u64(1)
                .bit(false)
                .shortstr(b"")
                .shortstr(b"q");
        });
        // basic.qos cut short after its prefetch_size.
        let truncated = warren_core::frame::method_frame(1, ids::BASIC_QOS, |w| {
            w.u32(0);
        });
        let cases: Vec<(&str, Vec<Bytes>, u16, &str)> = vec![
            (
                "unknown frame type",
                vec![Bytes::from_static(&[9, 0, 1, 0, 0, 0, 0, 0xCE])],
                501,
                "FRAME_ERROR",
            ),
            (
                "heartbeat on channel 1",
                vec![Bytes::from_static(&[8, 0, 1, 0, 0, 0, 0, 0xCE])],
                505,
                "type 8, all octets = <<>>",
            ),
            (
                "header without a method",
                vec![build::header(1, 3)],
                505,
                "expected method frame, got non method frame instead",
            ),
            (
                "method in the middle of content",
                vec![
                    build::publish(1, "", "q", false, false),
                    build::qos(1, 0, 1),
                ],
                505,
                "expected content header for class 60",
            ),
            (
                "server-only method",
                vec![deliver],
                503,
                "unimplemented method",
            ),
            ("truncated arguments", vec![truncated], 501, "cannot decode"),
            (
                "basic.recover requeue=false",
                vec![build::recover(1, false)],
                540,
                "requeue=false",
            ),
            (
                "channel.close-ok on an open channel",
                vec![warren_core::method::encode::close_ok(1)],
                503,
                "unimplemented method",
            ),
            (
                "connection.open after the handshake",
                vec![warren_core::method::encode::open("/")],
                504,
                "unexpected method in connection state running",
            ),
        ];
        for (case, frames, code, text) in cases {
            let mut raw = scene.raw_on_channel_1().await?;
            raw.send(&frames).await?;
            expect_connection_close(&mut raw, code, text)
                .await
                .with_context(|| format!("case {case:?}"))?;
            scene.assert_unharmed(case).await?;
        }
        scene.finish().await
    })
    .await
}

// ----- answered locally (B7) -----------------------------------------------------------------

/// `Channel.Flow active=true` is answered by warren with `flow-ok active=true`, as RabbitMQ
/// answers it, and never forwarded; the client's connection and channel stay usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_flow_is_answered_by_warren_and_the_client_stays_up() -> Result<()> {
    bounded(async {
        let mut scene = Scene::start("flow").await?;
        let mut raw = scene.raw_on_channel_1().await?;
        raw.send(&[build::flow(1, true)]).await?;
        let ok = raw.expect_method(1, ids::CHANNEL_FLOW_OK).await?;
        ensure!(
            decode_method(&ok)? == Method::FlowOk { active: true },
            "expected flow-ok active=true, got {}",
            describe(&ok)
        );
        // The same channel still works: declare, publish, get.
        let queue = raw.declare_queue(1, &unique("iso-flow"), false).await?;
        raw.publish(1, &queue, b"after flow").await?;
        let mut got = None;
        for _ in 0..100 {
            got = raw.get(1, &queue).await?;
            if got.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let got = got.context("the message published after flow never arrived")?;
        ensure!(got.body == b"after flow", "got {got:?}");
        scene.assert_unharmed("channel.flow").await?;
        raw.close().await?;
        broker::delete_queue("/", &queue).await?;
        scene.finish().await
    })
    .await
}

// ----- broker channel errors and late frames (B4) ----------------------------------------------

/// A publish to a missing exchange followed at once by more publishes on the same channel:
/// the client gets `Channel.Close 404`; the publishes sent with it and the ones sent after the
/// close (before `CloseOk`) are discarded, none reaches a queue; after `CloseOk` the channel
/// number can be opened again and works; the connection and the canary are fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_after_a_404_channel_close_are_discarded() -> Result<()> {
    bounded(async {
        let mut scene = Scene::start("late-publish").await?;
        let mut raw = scene.raw_on_channel_1().await?;
        let late = raw.declare_queue(1, &unique("iso-late"), false).await?;
        let missing = unique("iso-missing-x");
        let fm = raw.frame_max();

        // One write: the bad publish, then five good-looking ones on the same channel.
        let mut frames = build::publish_frames(1, &missing, "rk", b"to nowhere", false, fm);
        for i in 0..5 {
            frames.extend(build::publish_frames(
                1,
                "",
                &late,
                format!("late-{i}").as_bytes(),
                false,
                fm,
            ));
        }
        raw.send(&frames).await?;
        let closed = raw.expect_close().await?;
        ensure!(
            closed.channel == 1 && closed.code == 404 && closed.text.contains(&missing),
            "expected Channel.Close 404 naming {missing}, got {closed:?}"
        );
        // Five more before acknowledging the close: the spec says they are discarded.
        let mut after = Vec::new();
        for i in 0..5 {
            after.extend(build::publish_frames(
                1,
                "",
                &late,
                format!("after-close-{i}").as_bytes(),
                false,
                fm,
            ));
        }
        raw.send(&after).await?;
        raw.send(&[warren_core::method::encode::close_ok(1)])
            .await?;

        // The channel number is usable again, and a publish on it arrives.
        raw.open_channel(1).await?;
        raw.publish(1, &late, b"reopened").await?;
        let late_ref = late.as_str();
        wait_until(
            LIMIT,
            "the publish on the reopened channel",
            || async move {
                Ok(broker::queue_counts("/", late_ref)
                    .await?
                    .filter(|c| c.messages >= 1))
            },
        )
        .await?;
        let counts = broker::queue_counts("/", &late)
            .await?
            .context("the queue is gone")?;
        ensure!(
            counts.messages == 1,
            "only the publish on the reopened channel may arrive; the queue has {counts:?}"
        );
        scene.assert_unharmed("a 404 with late publishes").await?;
        raw.close().await?;
        broker::delete_queue("/", &late).await?;
        scene.finish().await
    })
    .await
}

// ----- clients that leave badly (B5, B8) -------------------------------------------------------

/// B5: unacknowledged deliveries of a client that leaves — politely (lapin) or killed
/// (a raw client whose socket is reset) — are requeued and redelivered to another consumer;
/// the neighbours' upstream stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_deliveries_are_requeued_when_the_client_leaves_or_is_killed() -> Result<()> {
    bounded(async {
        let mut scene = Scene::start("requeue").await?;
        let queue = unique("iso-requeue");
        let other = scene.lapin().await?;
        let other_ch = other.create_channel().await?;
        lapin_declare(&other_ch, &queue).await?;

        // A lapin client that leaves politely without acking.
        let leaver = scene.lapin().await?;
        let ch = leaver.create_channel().await?;
        for i in 0..3 {
            lapin_publish(&ch, &queue, format!("r-{i}").as_bytes()).await?;
        }
        let mut consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "leaver".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for i in 0..3 {
            let d = within(LIMIT, "a delivery", consumer.next())
                .await?
                .context("the consumer stream ended")??;
            ensure!(d.data == format!("r-{i}").as_bytes(), "got {:?}", d.data);
        }
        leaver.close(200, "leaving".into()).await?;
        for i in 0..3 {
            let got = lapin_get(&other_ch, &queue).await?;
            ensure!(got.delivery.data == format!("r-{i}").as_bytes());
            ensure!(
                got.delivery.redelivered,
                "a requeued message is redelivered"
            );
        }
        scene
            .assert_unharmed("a client that left with unacked deliveries")
            .await?;

        // A raw client killed with three unacked deliveries.
        for i in 0..3 {
            lapin_publish(&other_ch, &queue, format!("k-{i}").as_bytes()).await?;
        }
        let mut victim = scene.raw_on_channel_1().await?;
        victim.consume(1, &queue, "victim", false).await?;
        for i in 0..3 {
            let d = victim.recv_delivery().await?;
            ensure!(d.body == format!("k-{i}").as_bytes(), "got {d:?}");
        }
        victim.kill();
        let mut redelivered = other_ch
            .basic_consume(
                queue.as_str().into(),
                "heir".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for i in 0..3 {
            let d = within(LIMIT, "a redelivery", redelivered.next())
                .await?
                .context("the consumer stream ended")??;
            ensure!(d.data == format!("k-{i}").as_bytes(), "got {:?}", d.data);
            ensure!(d.redelivered, "a requeued message is redelivered");
            d.ack(BasicAckOptions::default()).await?;
        }
        scene
            .assert_unharmed("a killed client with unacked deliveries")
            .await?;
        other.close(200, "bye".into()).await?;
        broker::delete_queue("/", &queue).await?;
        scene.finish().await
    })
    .await
}

/// B5/B8: a client killed in the middle of a 1 MiB publish (method, header and half the
/// body sent, then the socket reset) leaves nothing in the queue and nothing half-sent on
/// the shared connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_mid_publish_leaves_nothing_half_sent() -> Result<()> {
    const SIZE: usize = 1 << 20;
    bounded(async {
        let mut scene = Scene::start("mid-publish").await?;
        let mut raw = scene.raw_on_channel_1().await?;
        let queue = raw.declare_queue(1, &unique("iso-half"), false).await?;
        let body = client::pattern(SIZE, 0x4a1f);
        let frames = build::publish_frames(1, "", &queue, &body, false, raw.frame_max());
        // Method, header, and the body frames that make up its first half.
        let half = 2 + (frames.len() - 2) / 2;
        let sent: usize = frames[..half].iter().map(Bytes::len).sum();
        let read = ("direction", "client_to_proxy");
        let before = scene.metric("warren_bytes_total", &[read]).await?;
        raw.send(&frames[..half]).await?;
        // Kill only once warren has read what was sent, so the partial publish is buffered
        // in warren (and not just lost in a socket buffer by the reset).
        let want = before + sent as f64;
        scene
            .wait_for_metric("warren_bytes_total", &[read], |v| v >= want)
            .await?;
        raw.kill();
        // The canary is the only client left.
        scene
            .wait_for_metric("warren_clients", &[], |v| v == 1.0)
            .await?;
        scene.assert_unharmed("a client killed mid-publish").await?;
        let counts = broker::queue_counts("/", &queue)
            .await?
            .context("the queue is gone")?;
        ensure!(
            counts.messages == 0,
            "half a publish reached the queue: {counts:?}"
        );
        broker::delete_queue("/", &queue).await?;
        scene.finish().await
    })
    .await
}

/// B5: exclusive queues belong to the shared broker connection, so warren deletes them when
/// the client that declared them leaves — politely (lapin) or killed (raw) — while that
/// broker connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queues_are_deleted_when_their_client_leaves() -> Result<()> {
    bounded(async {
        let mut scene = Scene::start("exclusive").await?;

        let owner = scene.lapin().await?;
        let ch = owner.create_channel().await?;
        let named = unique("iso-exclusive");
        ch.queue_declare(
            named.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
        ensure!(
            broker::queue_counts("/", &named).await?.is_some(),
            "the exclusive queue was not created"
        );
        owner.close(200, "bye".into()).await?;
        wait_for_queue_gone(&named).await?;
        scene
            .assert_unharmed("a client with an exclusive queue left")
            .await?;

        let mut raw = scene.raw_on_channel_1().await?;
        let server_named = raw.declare_queue(1, "", true).await?;
        ensure!(
            broker::queue_counts("/", &server_named).await?.is_some(),
            "the server-named exclusive queue was not created"
        );
        raw.kill();
        wait_for_queue_gone(&server_named).await?;
        scene
            .assert_unharmed("a killed client with an exclusive queue")
            .await?;
        scene.finish().await
    })
    .await
}

/// B5 with B8: an exclusive declare is still in flight when warren itself closes the channel
/// (here: the next publish announces a message above max_message_size, 406). The broker
/// creates the queue anyway; it stays the client's while it is connected, as it would on
/// RabbitMQ, and is deleted when the client leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_declare_in_flight_when_warren_closes_the_channel_is_cleaned_up() -> Result<()>
{
    bounded(async {
        let mut scene = Scene::start("exclusive-in-flight").await?;
        let mut raw = scene.raw_on_channel_1().await?;
        let queue = unique("iso-exclusive-in-flight");
        raw.send(&[
            build::queue_declare(1, &queue, true),
            build::publish(1, "", &queue, false, false),
            build::header(1, 1 << 40),
        ])
        .await?;
        let closed = raw.expect_close().await?;
        ensure!(
            (closed.channel, closed.code) == (1, 406),
            "expected Channel.Close 406 for the oversize message, got {closed:?}"
        );
        wait_until(LIMIT, "the broker to create the queue", || async {
            Ok(broker::queue_counts("/", &queue).await?.map(|_| ()))
        })
        .await?;
        // The client is still here, so its queue stays.
        raw.open_channel(2).await?;
        raw.publish(2, &queue, b"still mine").await?;
        let got = raw.get_within(2, &queue, LIMIT).await?.body;
        ensure!(got == b"still mine", "got {got:?}");
        raw.close().await?;
        wait_for_queue_gone(&queue).await?;
        scene
            .assert_unharmed("an exclusive declare in flight under a proxy channel close")
            .await?;
        scene.finish().await
    })
    .await
}

async fn wait_for_queue_gone(queue: &str) -> Result<()> {
    wait_until(
        LIMIT,
        &format!("exclusive queue {queue} to be deleted"),
        || async move {
            Ok(broker::queue_counts("/", queue)
                .await?
                .is_none()
                .then_some(()))
        },
    )
    .await
}

// ----- slow consumers (B9) -----------------------------------------------------------------------

/// `client_queue_bytes` for the slow-consumer tests: small, so a stall shows quickly.
const SMALL_CLIENT_QUEUE: usize = 256 * 1024;
/// Messages and their size pushed at a stalled consumer: far more than its output queue and
/// the socket buffers on both sides hold.
const STALL_MESSAGES: usize = 200;
const STALL_SIZE: usize = 64 * 1024;

/// A raw consumer of `queue` (manual acks, no prefetch limit, a tiny receive buffer) that
/// never reads after its `consume-ok`.
async fn stalled_consumer(scene: &Scene, queue: &str) -> Result<RawClient> {
    let opts = scene.raw_options().recv_buffer(4096);
    let mut stalled = RawClient::connect(scene.warren.addr(), &opts).await?;
    stalled.open_channel(1).await?;
    stalled.consume(1, queue, "stalled", false).await?;
    Ok(stalled)
}

/// B9: a consumer that stops reading its socket while the broker pushes megabytes at it is
/// cut off once its output queue passes `client_queue_bytes`: its unacked messages go back
/// to the queue and the connection ends; a neighbour on the same upstream receives
/// everything meant for it meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_is_cut_off_and_its_neighbour_keeps_receiving() -> Result<()>
{
    const NEIGHBOUR_MESSAGES: usize = STALL_MESSAGES / 2;
    bounded(async {
        let mut scene = Scene::start_configured("stall", |c| {
            c.client_queue_bytes = SMALL_CLIENT_QUEUE;
            c.slow_client_timeout = Duration::from_secs(1);
        })
        .await?;
        let stall_queue = unique("iso-stall");
        let neighbour_queue = unique("iso-neighbour");
        let publisher = scene.lapin().await?;
        let pub_ch = publisher.create_channel().await?;
        lapin_declare(&pub_ch, &stall_queue).await?;
        lapin_declare(&pub_ch, &neighbour_queue).await?;
        let mut stalled = stalled_consumer(&scene, &stall_queue).await?;

        // The neighbour consumes its own queue on the same upstream.
        let neighbour = scene.lapin().await?;
        let n_ch = neighbour.create_channel().await?;
        let mut n_consumer = n_ch
            .basic_consume(
                neighbour_queue.as_str().into(),
                "neighbour".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;

        // Megabytes for the stalled one, interleaved with messages for the neighbour.
        let big = vec![b's'; STALL_SIZE];
        for i in 0..STALL_MESSAGES {
            lapin_publish(&pub_ch, &stall_queue, &big).await?;
            if i % 2 == 0 {
                lapin_publish(&pub_ch, &neighbour_queue, format!("n-{}", i / 2).as_bytes()).await?;
            }
        }
        for i in 0..NEIGHBOUR_MESSAGES {
            let d = within(LIMIT, &format!("neighbour delivery {i}"), n_consumer.next())
                .await?
                .context("the neighbour's consumer ended")??;
            ensure!(
                d.data == format!("n-{i}").as_bytes(),
                "neighbour delivery {i}: got {:?}",
                String::from_utf8_lossy(&d.data)
            );
        }

        // warren gives up on the stalled client ...
        scene
            .wait_for_metric("warren_slow_client_disconnects_total", &[], |n| n >= 1.0)
            .await?;
        // ... every message it had not acked is back in the queue, ready ...
        let q = stall_queue.as_str();
        wait_until(
            LIMIT,
            "the stalled client's messages to be requeued",
            || async move {
                let c = broker::queue_counts("/", q)
                    .await?
                    .context("the queue is gone")?;
                Ok((c.ready == STALL_MESSAGES as u64 && c.unacked == 0).then_some(c))
            },
        )
        .await?;
        // ... and once it reads again, what was queued for it ends with the socket's end.
        stalled.expect_eof(LIMIT).await?;

        scene.assert_unharmed("a stalled consumer").await?;
        publisher.close(200, "bye".into()).await?;
        neighbour.close(200, "bye".into()).await?;
        broker::delete_queue("/", &stall_queue).await?;
        broker::delete_queue("/", &neighbour_queue).await?;
        scene.finish().await
    })
    .await
}

/// B9 "is disconnected": a consumer that stops reading *for good* (a hung process keeps its
/// socket open and its receive window at zero) must still lose its connection once warren
/// has cut it off — otherwise its socket, its tasks and the bytes queued for it stay in
/// warren for as long as the peer lives, and it keeps counting against `max_clients`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_never_reads_again_has_its_socket_closed() -> Result<()> {
    bounded(async {
        let scene = Scene::start_configured("never-reads", |c| {
            c.client_queue_bytes = SMALL_CLIENT_QUEUE;
            c.slow_client_timeout = Duration::from_secs(1);
        })
        .await?;
        let queue = unique("iso-never-reads");
        let publisher = scene.lapin().await?;
        let pub_ch = publisher.create_channel().await?;
        lapin_declare(&pub_ch, &queue).await?;
        let stalled = stalled_consumer(&scene, &queue).await?;
        let stalled_addr = stalled.local_addr()?;
        let big = vec![b's'; STALL_SIZE];
        for _ in 0..STALL_MESSAGES {
            lapin_publish(&pub_ch, &queue, &big).await?;
        }
        scene
            .wait_for_metric("warren_slow_client_disconnects_total", &[], |n| n >= 1.0)
            .await?;
        // Seen without reading the socket: the kernel reports CLOSE_WAIT (or forgets the
        // socket) once warren's FIN or RST has arrived.
        wait_until(
            LIMIT,
            "warren to close the socket of the client it cut off",
            || async move { Ok(tcp_peer_closed(stalled_addr)?.then_some(())) },
        )
        .await?;
        drop(stalled);
        publisher.close(200, "bye".into()).await?;
        broker::delete_queue("/", &queue).await?;
        scene.finish().await
    })
    .await
}

/// Whether the kernel reports the TCP socket bound to `local` as closed by its peer
/// (CLOSE_WAIT, or already gone), from `/proc/net/tcp` — no read on the socket needed.
fn tcp_peer_closed(local: std::net::SocketAddr) -> Result<bool> {
    let table = std::fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
    let port = format!(":{:04X}", local.port());
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() > 3 && cols[1].ends_with(&port) {
            // 01 ESTABLISHED, 08 CLOSE_WAIT, 07 CLOSE.
            return Ok(cols[3] != "01");
        }
    }
    Ok(true)
}
