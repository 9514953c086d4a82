//! Stream and quorum queues through warren (B7), against the real RabbitMQ 3.10.
//!
//! RabbitMQ answers some methods with a *connection* error that depends on the queue's type:
//! on a stream `basic.get`, a `basic.consume` without acknowledgements, `queue.purge`, a
//! `basic.nack` or `basic.reject` of one of its deliveries (540), a `basic.recover` while
//! one is out and a `basic.consume` from an `x-stream-offset` that is no offset (541: its
//! channel crashes); on a quorum queue, or a stream, a `basic.consume` under a global
//! prefetch (540).
//! Through warren that error would close the shared broker connection and every client on
//! it. warren's hub learns queue types (`core/src/hub/queue_types.rs`) and closes only the
//! misusing client, with the close RabbitMQ would send it.
//!
//! - Each misuse is done once straight to RabbitMQ and once through warren, with the same
//!   frames on a raw client that declared the queue with `x-queue-type` and waited for its
//!   `declare-ok` (as pika and lapin clients do, and what warren learns from): the close
//!   must be the same to the letter (channel, code, text, class and method). Through warren
//!   a neighbour — a lapin client of the same user, hence on the same broker connection —
//!   keeps working, and warren's broker connection is the one from before.
//! - A stream declared on the broker itself, never through warren, is learnt from the
//!   broker's own close: the first misuse costs the shared connection, the next one closes
//!   only its client.
//! - What streams and quorum queues do take goes through warren untouched.
//!
//! - Two answers depend on more than the type: a no_ack consume of a stream on a channel
//!   without a per-consumer prefetch is RabbitMQ's 406 on the channel (it checks the prefetch
//!   first), which warren leaves to the broker; `basic.recover` while a stream's delivery is
//!   out is its 541 "INTERNAL_ERROR" naming no method (the broker's channel crashes).
//!
//! Every test has a vhost of its own (so the texts, which name it, are the test's, and its
//! queues go with it) and a user of its own (so the hub and its broker connection are the
//! test's alone). Streams take no `x-expires`: each test deletes its typed queues itself.

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use std::net::SocketAddr;
use warren_core::method::ids;
use warren_core::table::{self, longstr, FieldValue};
use warren_tests::broker::{self, BrokerConnection};
use warren_tests::client::lapin_connect;
use warren_tests::lapin_ops::{
    assert_upstream_kept, bounded, lapin_declare, lapin_publish, lapin_round_trip, the_upstream_of,
    LIMIT,
};
use warren_tests::raw::{as_close, build, close_for, Closed, RawClient, RawOptions};
use warren_tests::tenant::Tenant;
use warren_tests::{broker_addr, unique, wait_until, within, Warren, GUEST};

/// A lapin client of the test's user through warren, so on the hub's broker connection,
/// with a classic queue of its own: its publish→get round trips show that connection works.
struct Neighbour {
    conn: lapin::Connection,
    ch: lapin::Channel,
    queue: String,
    trips: usize,
}

impl Neighbour {
    /// Connects to `url`, declares its queue and makes a first round trip.
    async fn connect(url: &str) -> Result<Neighbour> {
        let conn = lapin_connect(url)
            .await
            .context("connecting the neighbour")?;
        let ch = conn.create_channel().await?;
        let queue = unique("qt-neighbour");
        lapin_declare(&ch, &queue).await?;
        let mut neighbour = Neighbour {
            conn,
            ch,
            queue,
            trips: 0,
        };
        neighbour.round_trip("connecting").await?;
        Ok(neighbour)
    }

    /// A publish and a get on its queue, after `what`.
    async fn round_trip(&mut self, what: &str) -> Result<()> {
        self.trips += 1;
        let payload = format!("neighbour after {what} #{}", self.trips);
        lapin_round_trip(&self.ch, &self.queue, &payload)
            .await
            .with_context(|| format!("the neighbour's round trip after {what}"))
    }
}

/// One test's world: its vhost and user, a default warren, the neighbour, and warren's
/// broker connection for the user.
struct World {
    tenant: Tenant,
    warren: Warren,
    neighbour: Neighbour,
    /// The hub's broker connection, as the neighbour found it.
    upstream: BrokerConnection,
}

impl World {
    /// A fresh vhost and user (named after `prefix`), a default warren and the neighbour.
    async fn start(prefix: &str) -> Result<World> {
        let tenant = Tenant::create(prefix).await?;
        let warren = Warren::start()?;
        let neighbour = Neighbour::connect(&tenant.url(warren.addr())).await?;
        let upstream = the_upstream_of(&tenant.user).await?;
        Ok(World {
            tenant,
            warren,
            neighbour,
            upstream,
        })
    }

    /// The AMQP URL of the test's user and vhost at warren.
    fn url(&self) -> String {
        self.tenant.url(self.warren.addr())
    }

    /// The neighbour still publishes and gets, and warren's broker connection is the one
    /// from before (RabbitMQ closing it would have made warren dial another).
    async fn assert_unharmed(&mut self, after: &str) -> Result<()> {
        self.neighbour.round_trip(after).await?;
        ensure!(
            self.neighbour.conn.status().connected(),
            "the neighbour was disconnected after {after}"
        );
        assert_upstream_kept(&self.tenant.user, &self.upstream)
            .await
            .with_context(|| format!("after {after}"))
    }

    /// Final checks, then the typed queues `queues` and the neighbour's go; the vhost and
    /// the user go when the world is dropped.
    async fn finish(mut self, queues: &[&str]) -> Result<()> {
        self.assert_unharmed("everything").await?;
        for queue in queues
            .iter()
            .copied()
            .chain([self.neighbour.queue.as_str()])
        {
            broker::delete_queue(&self.tenant.vhost.name, queue).await?;
        }
        self.neighbour.conn.close(200, "bye".into()).await?;
        Ok(())
    }
}

// ----- misuses: the same close as RabbitMQ's, for the misusing client alone -----------------

/// A method RabbitMQ 3.10 answers with a connection error on a queue of some type, with
/// what a client does before it.
#[derive(Debug, Clone, Copy)]
enum Misuse {
    /// `basic.get` on a stream.
    Get,
    /// `basic.consume` with no_ack on a stream, after a per-consumer `basic.qos`.
    NoAckConsume,
    /// The same without a `basic.qos`: RabbitMQ checks the prefetch first and closes only
    /// the channel (406), which warren leaves to the broker.
    NoAckConsumeWithoutPrefetch,
    /// `queue.purge` of a stream.
    Purge,
    /// `basic.nack` of a delivery from a stream consumer.
    Nack,
    /// `basic.reject` of a delivery from a stream consumer.
    Reject,
    /// A `basic.nack` with multiple of a classic queue's delivery, which settles an earlier
    /// delivery from a stream consumer on the same channel too.
    MultipleNack,
    /// `basic.consume` on a quorum queue after a `basic.qos` with global=true.
    GlobalQosConsume,
    /// `basic.recover` while a delivery from a stream consumer is unsettled: RabbitMQ's
    /// channel crashes (541, naming no method).
    Recover,
    /// `basic.consume` of a stream under a per-consumer prefetch and then a global one
    /// (540).
    StreamGlobalQosConsume,
}

impl Misuse {
    /// The type of the queue misused.
    fn queue_type(self) -> &'static str {
        match self {
            Misuse::GlobalQosConsume => "quorum",
            _ => "stream",
        }
    }

    /// The close RabbitMQ 3.10 sends for it when `queue` is in `vhost`.
    fn rabbitmq_close(self, queue: &str, vhost: &str) -> Closed {
        let named = format!("queue '{queue}' in vhost '{vhost}'");
        let (text, cause) = match self {
            Misuse::Recover => {
                return Closed {
                    channel: 0,
                    code: 541,
                    text: "INTERNAL_ERROR".into(),
                    cause: (0, 0),
                }
            }
            Misuse::NoAckConsumeWithoutPrefetch => {
                return Closed {
                    channel: 1,
                    code: 406,
                    text: format!(
                        "PRECONDITION_FAILED - consumer prefetch count is not set for '{named}'"
                    ),
                    cause: (60, 20),
                }
            }
            Misuse::Get => (
                format!("basic.get not supported by stream queues {named}"),
                ids::BASIC_GET,
            ),
            Misuse::NoAckConsume => (
                format!("automatic acknowledgement not supported by stream queues {named}"),
                ids::BASIC_CONSUME,
            ),
            Misuse::Purge => (
                format!("queue.purge not supported by stream queues {named}"),
                ids::QUEUE_PURGE,
            ),
            Misuse::Nack | Misuse::MultipleNack => (
                format!("basic.nack and basic.reject not supported by stream queues {named}"),
                ids::BASIC_NACK,
            ),
            Misuse::Reject => (
                format!("basic.nack and basic.reject not supported by stream queues {named}"),
                ids::BASIC_REJECT,
            ),
            Misuse::GlobalQosConsume | Misuse::StreamGlobalQosConsume => (
                format!("{named} does not support global qos"),
                ids::BASIC_CONSUME,
            ),
        };
        Closed {
            channel: 0,
            code: 540,
            text: format!("NOT_IMPLEMENTED - {text}"),
            cause: (cause.class, cause.method),
        }
    }

    /// Does on `c` (channel 1 open) what a client does before the misuse of `typed`: declares
    /// it with its `x-queue-type` and waits for the `declare-ok`, then, for a settle, takes a
    /// delivery from the stream (and one from classic queue `classic`, declared here).
    /// Returns the frames of the misuse itself.
    async fn prepare(self, c: &mut RawClient, typed: &str, classic: &str) -> Result<Vec<Bytes>> {
        c.declare_typed_queue(1, typed, self.queue_type()).await?;
        Ok(match self {
            Misuse::Get => vec![build::get(1, typed, false)],
            Misuse::NoAckConsume => {
                c.qos(1, 10).await?;
                vec![build::consume(1, typed, "no-ack", true)]
            }
            Misuse::NoAckConsumeWithoutPrefetch => vec![build::consume(1, typed, "no-ack", true)],
            Misuse::Purge => vec![build::purge(1, typed)],
            Misuse::Recover => {
                stream_delivery(c, typed).await?;
                vec![build::recover(1, true)]
            }
            Misuse::Nack => vec![build::nack(1, stream_delivery(c, typed).await?, false)],
            Misuse::Reject => vec![build::reject(1, stream_delivery(c, typed).await?)],
            Misuse::MultipleNack => {
                stream_delivery(c, typed).await?;
                c.declare_queue(1, classic, false).await?;
                c.consume(1, classic, "classic", false).await?;
                c.publish(1, classic, b"classic").await?;
                let last = c.recv_delivery().await?.delivery_tag;
                vec![build::nack(1, last, true)]
            }
            Misuse::GlobalQosConsume => {
                c.send(&[build::global_qos(1, 10)]).await?;
                c.expect_method(1, ids::BASIC_QOS_OK).await?;
                vec![build::consume(1, typed, "under-global-qos", false)]
            }
            Misuse::StreamGlobalQosConsume => {
                c.qos(1, 10).await?;
                c.send(&[build::global_qos(1, 10)]).await?;
                c.expect_method(1, ids::BASIC_QOS_OK).await?;
                vec![build::consume(1, typed, "under-global-qos", false)]
            }
        })
    }
}

/// Consumes `stream` on channel 1 as RabbitMQ wants it (a prefetch, acknowledgements, from
/// the next offset), publishes one message to it and returns its delivery tag, unsettled.
async fn stream_delivery(c: &mut RawClient, stream: &str) -> Result<u64> {
    c.qos(1, 10).await?;
    c.consume(1, stream, "stream", false).await?;
    c.publish(1, stream, b"from the stream").await?;
    let delivery = c.recv_delivery().await.context("the stream's delivery")?;
    Ok(delivery.delivery_tag)
}

/// The close a fresh raw client at `addr` gets for `misuse` of `typed` (see
/// [`Misuse::prepare`]).
async fn close_for_misuse(
    addr: SocketAddr,
    opts: &RawOptions,
    misuse: Misuse,
    typed: &str,
) -> Result<Closed> {
    let mut c = RawClient::connect(addr, opts).await?;
    c.open_channel(1).await?;
    let frames = misuse.prepare(&mut c, typed, &unique("qt-classic")).await?;
    c.send(&frames).await?;
    c.take_close().await
}

/// `misuse` straight to RabbitMQ gets RabbitMQ's close; through warren the same frames get
/// the same close, and the neighbour and warren's broker connection are unharmed.
async fn closes_only_its_client_as_rabbitmq_does(prefix: &str, misuse: Misuse) -> Result<()> {
    bounded(async {
        let mut world = World::start(prefix).await?;
        let typed = unique(&format!("{prefix}-{}", misuse.queue_type()));
        let opts = world.tenant.raw_options();
        let direct = close_for_misuse(broker_addr(), &opts, misuse, &typed).await?;
        let want = misuse.rabbitmq_close(&typed, &world.tenant.vhost.name);
        ensure!(
            direct == want,
            "RabbitMQ itself answered {direct:?}, not {want:?}"
        );
        let through = close_for_misuse(world.warren.addr(), &opts, misuse, &typed)
            .await
            .context("through warren")?;
        ensure!(
            through == direct,
            "through warren the client got {through:?}; RabbitMQ sends {direct:?}"
        );
        world
            .assert_unharmed(&format!("a {misuse:?} on a {}", misuse.queue_type()))
            .await?;
        world.finish(&[&typed]).await
    })
    .await
}

/// `basic.get` on a stream: 540, its client alone closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_get_on_a_stream_closes_only_its_client_as_rabbitmq_does() -> Result<()> {
    closes_only_its_client_as_rabbitmq_does("warren-qt-get", Misuse::Get).await
}

/// `basic.consume` with no_ack on a stream: 540, its client alone closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_ack_consume_of_a_stream_closes_only_its_client_as_rabbitmq_does() -> Result<()> {
    closes_only_its_client_as_rabbitmq_does("warren-qt-noack", Misuse::NoAckConsume).await
}

/// `queue.purge` of a stream: 540, its client alone closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_a_stream_closes_only_its_client_as_rabbitmq_does() -> Result<()> {
    closes_only_its_client_as_rabbitmq_does("warren-qt-purge", Misuse::Purge).await
}

/// `basic.nack` of a stream's delivery: 540, its client alone closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacking_a_streams_delivery_closes_only_its_client_as_rabbitmq_does() -> Result<()> {
    closes_only_its_client_as_rabbitmq_does("warren-qt-nack", Misuse::Nack).await
}

/// `basic.reject` of a stream's delivery: 540, its client alone closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejecting_a_streams_delivery_closes_only_its_client_as_rabbitmq_does() -> Result<()> {
    closes_only_its_client_as_rabbitmq_does("warren-qt-reject", Misuse::Reject).await
}

/// A multiple `basic.nack` of a classic queue's delivery that reaches a stream's delivery
/// before it on the same channel: 540, its client alone closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multiple_nack_reaching_a_streams_delivery_closes_only_its_client_as_rabbitmq_does(
) -> Result<()> {
    closes_only_its_client_as_rabbitmq_does("warren-qt-multi", Misuse::MultipleNack).await
}

/// `basic.consume` with no_ack on a stream on a channel without a prefetch: RabbitMQ's 406 on
/// that channel, through warren too (the broker answers it), and the neighbour is unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_ack_consume_of_a_stream_without_a_prefetch_closes_its_channel_as_rabbitmq_does(
) -> Result<()> {
    closes_only_its_client_as_rabbitmq_does("warren-qt-noqos", Misuse::NoAckConsumeWithoutPrefetch)
        .await
}

/// `basic.recover` with a stream's delivery out: RabbitMQ's 541, its client alone closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recover_with_a_streams_delivery_out_closes_only_its_client_as_rabbitmq_does(
) -> Result<()> {
    closes_only_its_client_as_rabbitmq_does("warren-qt-recover", Misuse::Recover).await
}

/// `basic.consume` on a quorum queue under a global prefetch: 540, its client alone closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_consume_under_global_qos_closes_only_its_client_as_rabbitmq_does() -> Result<()> {
    closes_only_its_client_as_rabbitmq_does("warren-qt-global", Misuse::GlobalQosConsume).await
}

/// `basic.consume` of a stream under a per-consumer and then a global prefetch: 540, its
/// client alone closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_consume_under_global_qos_closes_only_its_client_as_rabbitmq_does() -> Result<()> {
    closes_only_its_client_as_rabbitmq_does("warren-qt-sglobal", Misuse::StreamGlobalQosConsume)
        .await
}

/// What a fresh raw client at `addr` gets for a consume of `stream` from `offset`
/// (`x-stream-offset`), under a per-consumer prefetch if `prefetch`: its `consume-ok`, or
/// the close of its channel or connection.
async fn offset_outcome(
    addr: SocketAddr,
    opts: &RawOptions,
    stream: &str,
    prefetch: bool,
    offset: &FieldValue,
) -> Result<String> {
    let mut c = RawClient::connect(addr, opts).await?;
    c.open_channel(1).await?;
    if prefetch {
        c.qos(1, 10).await?;
    }
    let args = table::FieldTable::default().with("x-stream-offset", offset.clone());
    c.send(&[build::consume_with(1, stream, "offset", false, &args)])
        .await?;
    let f = c.recv().await?;
    let outcome = match as_close(&f)? {
        Some(closed) if closed.channel == 0 => {
            c.finish_close().await?;
            return Ok(format!("{closed:?}"));
        }
        Some(closed) => format!("{closed:?}"),
        None => format!("{:?}", f.method_id()),
    };
    c.hang_up().await?;
    Ok(outcome)
}

/// A stream consumed from an `x-stream-offset` of each kind RabbitMQ reads differently: an
/// offset it takes (a name, a number, a timestamp, an age), an age it refuses on the channel
/// (406), a string that does not start with a digit (its check crashes: 541, before the
/// prefetch is looked at) and a value of another type (its reader crashes: 541, after the
/// prefetch's 406). Each gets through warren what it gets from RabbitMQ, and the crashes
/// close only their client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_offsets_are_answered_as_rabbitmq_does() -> Result<()> {
    use FieldValue as V;
    bounded(async {
        let mut world = World::start("warren-qt-offset").await?;
        let opts = world.tenant.raw_options();
        let stream = unique("qt-offset-stream");
        let mut owner = RawClient::connect(world.warren.addr(), &opts).await?;
        owner.open_channel(1).await?;
        owner.declare_typed_queue(1, &stream, "stream").await?;
        let offsets = [
            longstr("first"),
            V::Bytes(b"last".to_vec()),
            V::I64(-1),
            V::I8(3),
            V::Timestamp(1_600_000_000),
            longstr("7D"),
            longstr("1s\nand more"),
            longstr("0s"),
            longstr("12abc"),
            longstr("bogus"),
            longstr(""),
            longstr(" 1s"),
            V::Bool(true),
            V::Decimal(1, 15),
            V::F64(1.5),
            V::Table(table::FieldTable::default()),
            V::Array(vec![V::I32(1)]),
            V::Void,
            V::Bytes(b"bogus".to_vec()),
        ];
        let mut crashes = 0;
        for prefetch in [true, false] {
            for offset in &offsets {
                let what = format!("{offset:?}, prefetch {prefetch}");
                let direct = offset_outcome(broker_addr(), &opts, &stream, prefetch, offset)
                    .await
                    .with_context(|| format!("{what}, straight to RabbitMQ"))?;
                let through = offset_outcome(world.warren.addr(), &opts, &stream, prefetch, offset)
                    .await
                    .with_context(|| format!("{what}, through warren"))?;
                ensure!(
                    through == direct,
                    "{what}: through warren {through}; RabbitMQ answers {direct}"
                );
                crashes += usize::from(direct.contains("INTERNAL_ERROR"));
                world.assert_unharmed(&what).await?;
            }
        }
        // The cases RabbitMQ's reading divides: what crashes with a prefetch and without.
        ensure!(
            crashes == 13,
            "{crashes} crashes, not 13: has RabbitMQ changed?"
        );
        owner.hang_up().await?;
        world.finish(&[&stream]).await
    })
    .await
}

// ----- learning a type from the broker's close -------------------------------------------------

/// A stream declared on the broker itself, never through warren: warren cannot know its type
/// before the broker says it. The first `basic.get` of it through warren reaches the broker,
/// which closes the shared broker connection with its 540: the misusing client gets the close
/// RabbitMQ would send it on a connection of its own, and so does every client with a channel
/// on that broker connection (the raw bystander, with the very same close, and the lapin
/// neighbour, disconnected). That is the price of a type warren does not know; a client
/// without channels (the keeper) stays. warren learns the type from that close: on the broker
/// connection it dials next, a second client's `basic.get` is closed by warren alone, with the
/// same close, and the new neighbour and broker connection stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_declared_elsewhere_is_learnt_from_the_brokers_close() -> Result<()> {
    bounded(async {
        let mut world = World::start("warren-qt-learn").await?;
        let opts = world.tenant.raw_options();
        // An idle hub stops, and forgets what it learnt: this client keeps it.
        let keeper = RawClient::connect(world.warren.addr(), &opts).await?;
        let stream = unique("qt-learn-stream");
        let mut owner = RawClient::connect(
            broker_addr(),
            &RawOptions::new(GUEST, GUEST, &world.tenant.vhost.name),
        )
        .await?;
        owner.open_channel(1).await?;
        owner.declare_typed_queue(1, &stream, "stream").await?;
        owner.hang_up().await?;
        let get = [build::get(1, &stream, false)];
        let direct = close_for(broker_addr(), &opts, &get).await?;
        let want = Misuse::Get.rabbitmq_close(&stream, &world.tenant.vhost.name);
        ensure!(
            direct == want,
            "RabbitMQ itself answered {direct:?}, not {want:?}"
        );

        let mut bystander = RawClient::connect(world.warren.addr(), &opts).await?;
        bystander.open_channel(1).await?;
        let first = close_for(world.warren.addr(), &opts, &get)
            .await
            .context("the first basic.get through warren")?;
        ensure!(
            first == direct,
            "the first misuse through warren got {first:?}; RabbitMQ sends {direct:?}"
        );
        let bystanders = bystander.take_close().await?;
        ensure!(
            bystanders == direct,
            "the bystander on the broker connection got {bystanders:?}, not the broker's \
             {direct:?}"
        );
        let neighbour = &world.neighbour.conn;
        wait_until(LIMIT, "the neighbour to be disconnected", || async {
            Ok((!neighbour.status().connected()).then_some(()))
        })
        .await?;
        let fresh = Neighbour::connect(&world.url()).await?;
        let lost = std::mem::replace(&mut world.neighbour, fresh);
        let upstream = the_upstream_of(&world.tenant.user).await?;
        ensure!(
            upstream.name != world.upstream.name,
            "the broker closed {}, yet warren still holds it",
            world.upstream.name
        );
        world.upstream = upstream;

        let second = close_for(world.warren.addr(), &opts, &get)
            .await
            .context("the second basic.get through warren")?;
        ensure!(
            second == direct,
            "the second misuse through warren got {second:?}; RabbitMQ sends {direct:?}"
        );
        world
            .assert_unharmed("a second basic.get on the stream")
            .await?;
        keeper.close().await.context("the keeper's connection")?;
        world.finish(&[&stream, &lost.queue]).await
    })
    .await
}

// ----- what streams and quorum queues take -----------------------------------------------------

/// `queue.declare` of durable queue `name` with `x-queue-type` `kind` on `ch`, as lapin
/// clients declare streams and quorum queues (warren learns the type from its `declare-ok`).
async fn lapin_declare_typed(ch: &lapin::Channel, name: &str, kind: &str) -> Result<()> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(name.into(), durable, args)
        .await
        .with_context(|| format!("declaring {kind} queue {name}"))?;
    Ok(())
}

/// A consumer of `queue` on `ch` with tag `tag` and arguments `args`, acknowledging.
async fn lapin_consume(
    ch: &lapin::Channel,
    queue: &str,
    tag: &str,
    args: FieldTable,
) -> Result<lapin::Consumer> {
    ch.basic_consume(
        queue.into(),
        tag.into(),
        BasicConsumeOptions::default(),
        args,
    )
    .await
    .with_context(|| format!("consuming {queue}"))
}

/// The next delivery of `consumer`, named `what` in errors.
async fn next_delivery(
    consumer: &mut lapin::Consumer,
    what: &str,
) -> Result<lapin::message::Delivery> {
    within(LIMIT, what, consumer.next())
        .await?
        .with_context(|| format!("the consumer ended before {what}"))?
        .with_context(|| format!("waiting for {what}"))
}

/// The next delivery of `consumer` carries `body`; it is acknowledged.
async fn ack_next(consumer: &mut lapin::Consumer, body: &str) -> Result<()> {
    let d = next_delivery(consumer, body).await?;
    ensure!(
        d.data == body.as_bytes(),
        "expected {body:?}, got {:?}",
        String::from_utf8_lossy(&d.data)
    );
    d.ack(BasicAckOptions::default()).await?;
    Ok(())
}

/// A method with a reply on `ch` (a passive declare of `queue`): if warren closed the client
/// over what it sent before, this fails at once, where waiting for a delivery would time out.
async fn still_open(ch: &lapin::Channel, queue: &str, after: &str) -> Result<()> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .with_context(|| format!("the client's channel after {after}"))?;
    Ok(())
}

/// A stream consumed as RabbitMQ allows goes through warren: under a per-consumer prefetch,
/// with acknowledgements, from offset "first", each delivery acked; on the same channel a
/// classic queue's delivery is nacked, redelivered and acked; the stream's next message then
/// still arrives. The client, the neighbour and warren's broker connection stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_consumed_with_acks_and_a_classic_nack_beside_it_go_through() -> Result<()> {
    bounded(async {
        let mut world = World::start("warren-qt-stream-ok").await?;
        let conn = lapin_connect(&world.url()).await?;
        let ch = conn.create_channel().await?;
        let stream = unique("qt-stream-ok");
        lapin_declare_typed(&ch, &stream, "stream").await?;
        for i in 0..3 {
            lapin_publish(&ch, &stream, format!("s-{i}").as_bytes()).await?;
        }
        ch.basic_qos(10, BasicQosOptions { global: false }).await?;
        let mut from_first = FieldTable::default();
        from_first.insert(
            "x-stream-offset".into(),
            AMQPValue::LongString("first".into()),
        );
        let mut from_stream = lapin_consume(&ch, &stream, "stream", from_first).await?;
        for i in 0..3 {
            ack_next(&mut from_stream, &format!("s-{i}")).await?;
        }
        still_open(&ch, &stream, "acking the stream's deliveries").await?;

        let classic = unique("qt-classic");
        lapin_declare(&ch, &classic).await?;
        let mut from_classic =
            lapin_consume(&ch, &classic, "classic", FieldTable::default()).await?;
        lapin_publish(&ch, &classic, b"nacked").await?;
        let requeue = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        next_delivery(&mut from_classic, "the classic delivery")
            .await?
            .nack(requeue)
            .await?;
        let again = next_delivery(&mut from_classic, "the nacked delivery again").await?;
        ensure!(
            again.redelivered && again.data == b"nacked",
            "expected the nacked message redelivered, got {again:?}"
        );
        again.ack(BasicAckOptions::default()).await?;
        still_open(&ch, &classic, "nacking the classic delivery").await?;

        lapin_publish(&ch, &stream, b"s-3").await?;
        ack_next(&mut from_stream, "s-3").await?;
        still_open(&ch, &stream, "the stream's last delivery").await?;
        world.assert_unharmed("a stream consumed with acks").await?;
        conn.close(200, "bye".into()).await?;
        world.finish(&[&stream, &classic]).await
    })
    .await
}

/// What a quorum queue takes goes through warren: a `basic.get`, a `queue.purge`, and a
/// consumer under a per-consumer prefetch, acking. The client, the neighbour and warren's
/// broker connection stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_purge_and_consume_on_a_quorum_queue_go_through() -> Result<()> {
    bounded(async {
        let mut world = World::start("warren-qt-quorum-ok").await?;
        let conn = lapin_connect(&world.url()).await?;
        let ch = conn.create_channel().await?;
        let quorum = unique("qt-quorum-ok");
        lapin_declare_typed(&ch, &quorum, "quorum").await?;
        lapin_round_trip(&ch, &quorum, "got").await?;
        let purged = ch
            .queue_purge(quorum.as_str().into(), QueuePurgeOptions::default())
            .await
            .context("purging the quorum queue")?;
        ensure!(purged == 0, "{purged} messages purged from an empty queue");
        ch.basic_qos(5, BasicQosOptions { global: false }).await?;
        let mut consumer = lapin_consume(&ch, &quorum, "quorum", FieldTable::default()).await?;
        lapin_publish(&ch, &quorum, b"consumed").await?;
        ack_next(&mut consumer, "consumed").await?;
        still_open(&ch, &quorum, "consuming the quorum queue").await?;
        world.assert_unharmed("a quorum queue's methods").await?;
        conn.close(200, "bye".into()).await?;
        world.finish(&[&quorum]).await
    })
    .await
}

/// A global prefetch replaced by a per-consumer one no longer stands in a quorum queue's
/// way: after `basic.qos` global=true and then global=false, a consume of a quorum queue goes
/// through warren and receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_consume_after_a_global_qos_was_replaced_goes_through() -> Result<()> {
    bounded(async {
        let mut world = World::start("warren-qt-requalified").await?;
        let conn = lapin_connect(&world.url()).await?;
        let ch = conn.create_channel().await?;
        let quorum = unique("qt-quorum-qos");
        lapin_declare_typed(&ch, &quorum, "quorum").await?;
        ch.basic_qos(10, BasicQosOptions { global: true }).await?;
        ch.basic_qos(5, BasicQosOptions { global: false }).await?;
        let mut consumer = lapin_consume(&ch, &quorum, "after-global", FieldTable::default())
            .await
            .context("consuming the quorum queue after the qos changes")?;
        lapin_publish(&ch, &quorum, b"consumed").await?;
        ack_next(&mut consumer, "consumed").await?;
        still_open(&ch, &quorum, "the consume").await?;
        world.assert_unharmed("a qos change and a consume").await?;
        conn.close(200, "bye".into()).await?;
        world.finish(&[&quorum]).await
    })
    .await
}
