//! Exchange types of the broker's plugins through warren (B7), against the real RabbitMQ,
//! which runs the consistent-hash exchange plugin (`scripts/rabbitmq.sh` enables it).
//!
//! warren knows RabbitMQ's four types by name; of any other type it asks the broker on a
//! short connection of its own (a *probe*, `core/src/hub/exchange_types.rs`) before it
//! forwards the declare, and parks the declare's channel meanwhile. A client must not be able
//! to tell: each test does the same once straight to RabbitMQ and once through a default
//! warren (no `extra_exchange_types`) and wants the same answers, then checks that
//! the probe left nothing behind: no exchange the client did not declare, and no broker
//! connection besides the hub's own (the broker's connection events show the probe open and
//! close). The unknown types, which close the sender, are in `isolation.rs` (with a
//! neighbour on the same broker connection) and `protocol_errors.rs`.
//!
//! Every test has a vhost of its own (so that its exchanges can be listed exactly) and a user
//! of its own (so that the hub and its broker connections are the test's alone).

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use warren_core::frame::FrameType;
use warren_core::method::{encode, ids, MethodId};
use warren_tests::broker::{self, BrokerConnection};
use warren_tests::client::lapin_connect;
use warren_tests::events::WarrenConnections;
use warren_tests::lapin_ops::{
    assert_upstream_kept, bounded, lapin_declare, lapin_get, the_upstream_of, LIMIT,
};
use warren_tests::metrics::metric;
use warren_tests::raw::{as_close, build, RawClient, RawOptions};
use warren_tests::tenant::Tenant;
use warren_tests::{broker_addr, unique, wait_until, Warren};

/// The consistent-hash exchange's type: a plugin's, so warren has to ask the broker about it.
const HASH: &str = "x-consistent-hash";

/// The binding key that gives a queue a weight of 1 on a consistent-hash exchange: the only
/// queue bound gets every message.
const WEIGHT: &str = "1";

/// One test's world: its vhost and user, a default warren, a neighbour (a lapin client of
/// the user through warren, which keeps the hub's broker connection open throughout), and a
/// watch on the broker connections warren opens for the user.
struct World {
    tenant: Tenant,
    warren: Warren,
    neighbour: lapin::Connection,
    /// The hub's broker connection, as it was before the test's declares.
    upstream: BrokerConnection,
    conns: WarrenConnections,
    /// The vhost's exchanges before the test's declares.
    exchanges: BTreeMap<String, String>,
}

impl World {
    /// A fresh vhost and user (named after `prefix`), a default warren, the neighbour
    /// connected through it, and the watch begun once the hub's broker connection is up.
    async fn start(prefix: &str) -> Result<World> {
        let tenant = Tenant::create(prefix).await?;
        let warren = Warren::start()?;
        let neighbour = lapin_connect(&tenant.url(warren.addr()))
            .await
            .context("connecting the neighbour")?;
        let upstream = the_upstream_of(&tenant.user).await?;
        let conns = WarrenConnections::watch(&tenant.user.name).await?;
        let exchanges = broker::exchanges(&tenant.vhost.name).await?;
        Ok(World {
            tenant,
            warren,
            neighbour,
            upstream,
            conns,
            exchanges,
        })
    }

    /// A lapin client of the test's user and vhost, connected to `addr`.
    async fn lapin(&self, addr: SocketAddr) -> Result<lapin::Connection> {
        lapin_connect(&self.tenant.url(addr)).await
    }

    /// Final checks: the vhost's exchanges are those from before and the consistent-hash
    /// exchanges in `declared`; warren opened and closed `probes` broker connections
    /// meanwhile, counted them in its metrics as answered "known", and still has its one
    /// broker connection from the start; the neighbour is still connected.
    async fn finish(self, declared: &[String], probes: usize) -> Result<()> {
        let mut want = self.exchanges.clone();
        want.extend(declared.iter().map(|x| (x.clone(), HASH.to_owned())));
        let got = broker::exchanges(&self.tenant.vhost.name).await?;
        ensure!(
            got == want,
            "the vhost's exchanges are not those from before and the declared ones:\n  \
             expected {want:?}\n  found    {got:?}"
        );
        self.conns
            .wait_for_closed(probes, &self.upstream.name)
            .await?;
        let labels = [
            ("user", self.tenant.user.name.as_str()),
            ("answer", "known"),
        ];
        wait_until(LIMIT, "warren to count its probes", || async {
            let n = metric(&self.warren, "warren_exchange_type_probes_total", &labels).await?;
            Ok((n == probes as f64).then_some(()))
        })
        .await?;
        assert_upstream_kept(&self.tenant.user, &self.upstream).await?;
        ensure!(
            self.neighbour.status().connected(),
            "the neighbour was disconnected"
        );
        self.neighbour.close(200, "bye".into()).await?;
        Ok(())
    }
}

/// Declares consistent-hash exchange `exchange` on `ch`, binds a new queue to it with weight
/// 1, publishes to the exchange and gets the message from the queue: the exchange exists
/// with its type and routes.
async fn declare_and_route(ch: &lapin::Channel, exchange: &str) -> Result<()> {
    let kind = ExchangeKind::Custom(HASH.to_owned());
    ch.exchange_declare(
        exchange.into(),
        kind,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .with_context(|| format!("declaring {exchange} of type {HASH}"))?;
    let queue = unique("xt-hash-q");
    lapin_declare(ch, &queue).await?;
    ch.queue_bind(
        queue.as_str().into(),
        exchange.into(),
        WEIGHT.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .with_context(|| format!("binding {queue} to {exchange}"))?;
    let body = format!("hashed by {exchange}");
    ch.basic_publish(
        exchange.into(),
        "any routing key".into(),
        BasicPublishOptions::default(),
        body.as_bytes(),
        BasicProperties::default(),
    )
    .await
    .with_context(|| format!("publishing to {exchange}"))?;
    let got = lapin_get(ch, &queue).await?;
    ensure!(
        got.delivery.data == body.as_bytes(),
        "{queue} gave {:?}, not what went to {exchange}",
        String::from_utf8_lossy(&got.delivery.data)
    );
    Ok(())
}

/// A client declares an exchange of type x-consistent-hash, binds a queue and publishes: it
/// works through warren as it works on RabbitMQ directly, and the exchange is on the broker
/// with that type. A second client's declare of the type is forwarded at once: the hub asked
/// the broker once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_exchange_type_is_declared_and_routes_as_on_rabbitmq() -> Result<()> {
    bounded(async {
        let world = World::start("warren-xt-hash").await?;
        let mut declared = Vec::new();
        let mut clients = Vec::new();
        for (who, addr) in [
            ("RabbitMQ", broker_addr()),
            ("warren", world.warren.addr()),
            ("warren, a second client", world.warren.addr()),
        ] {
            let conn = world.lapin(addr).await?;
            let exchange = unique("xt-hash");
            // The channel is closed before its connection: one dropped instead closes itself
            // in the background, and lapin fails the connection's close when the two cross.
            let ch = conn.create_channel().await?;
            declare_and_route(&ch, &exchange)
                .await
                .with_context(|| format!("through {who}"))?;
            ch.close(200, "bye".into()).await?;
            declared.push(exchange);
            clients.push(conn);
        }
        for conn in clients {
            conn.close(200, "bye".into()).await?;
        }
        world.finish(&declared, 1).await
    })
    .await
}

/// The frames of the pipelining test, on channels 1 and 2, as one write: on channel 1 the
/// declare of consistent-hash exchange `exchange` and, without waiting for it, a queue
/// declared, bound to it and a message published to it and got; on channel 2, interleaved, a
/// queue of its own, a message through the default exchange and a get. Each channel closes
/// last.
fn pipelined(exchange: &str, queue_1: &str, queue_2: &str) -> Vec<Bytes> {
    let content =
        |ch: u16, body: &[u8]| [build::header(ch, body.len() as u64), build::body(ch, body)];
    let mut frames = vec![
        build::exchange_declare(1, exchange, HASH),
        build::queue_declare(2, queue_2, false),
        build::queue_declare(1, queue_1, false),
        build::publish(2, "", queue_2, false, false),
    ];
    frames.extend(content(2, b"plain"));
    frames.push(build::queue_bind(1, queue_1, exchange, WEIGHT));
    frames.push(build::publish(1, exchange, "any routing key", false, false));
    frames.extend(content(1, b"hashed"));
    frames.extend([
        build::get(2, queue_2, true),
        build::get(1, queue_1, true),
        build::channel_close(1),
        build::channel_close(2),
    ]);
    frames
}

/// What came back on each channel, in order, one line a frame: the method's name (a close
/// with its code, text and cause), "content header", or the body's text.
type Transcript = BTreeMap<u16, Vec<String>>;

/// Sends `frames` in one write on a fresh connection to `addr` with channels 1 and 2 open,
/// and reads what comes back until both channels' `close-ok` (or a connection close).
async fn transcript(addr: SocketAddr, opts: &RawOptions, frames: &[Bytes]) -> Result<Transcript> {
    let mut client = RawClient::connect(addr, opts).await?;
    client.open_channel(1).await?;
    client.open_channel(2).await?;
    client.send(frames).await?;
    let mut open = BTreeSet::from([1, 2]);
    let mut got = Transcript::new();
    while !open.is_empty() {
        let f = client
            .recv()
            .await
            .with_context(|| format!("so far: {got:?}"))?;
        let line = match (f.kind(), as_close(&f)?) {
            (_, Some(closed)) if closed.channel == 0 => {
                client.finish_close().await?;
                got.entry(0).or_default().push(format!("{closed:?}"));
                return Ok(got);
            }
            (_, Some(closed)) => {
                client.send(&[encode::close_ok(f.channel())]).await?;
                open.remove(&f.channel());
                format!("{closed:?}")
            }
            (FrameType::Method, None) => {
                let id = f.method_id().context("a method frame without an id")?;
                if id == ids::CHANNEL_CLOSE_OK {
                    open.remove(&f.channel());
                }
                id.to_string()
            }
            (FrameType::Header, None) => "content header".to_owned(),
            (_, None) => String::from_utf8_lossy(f.payload()).into_owned(),
        };
        got.entry(f.channel()).or_default().push(line);
    }
    client.hang_up().await?;
    Ok(got)
}

/// A client pipelines frames behind the declare of a type warren has yet to ask the broker
/// about: the queue it binds to the exchange, a message it publishes to it and gets, on the
/// same channel, and traffic on a second channel, all in one write. warren parks the
/// channel while it asks and then replays its frames in order: each channel's answers are
/// those RabbitMQ gives, in the same order, and the message was routed by the new exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_pipelined_behind_a_new_types_declare_keep_their_order() -> Result<()> {
    bounded(async {
        let world = World::start("warren-xt-pipe").await?;
        let opts = world.tenant.raw_options();
        let mut declared = Vec::new();
        let mut answers = Vec::new();
        for addr in [broker_addr(), world.warren.addr()] {
            let exchange = unique("xt-pipe");
            let frames = pipelined(&exchange, &unique("xt-pipe-1"), &unique("xt-pipe-2"));
            answers.push(transcript(addr, &opts, &frames).await?);
            declared.push(exchange);
        }
        let name = |id: MethodId| id.to_string();
        let expected = Transcript::from([
            (
                1,
                vec![
                    name(ids::EXCHANGE_DECLARE_OK),
                    name(ids::QUEUE_DECLARE_OK),
                    name(MethodId::new(50, 21)),
                    name(ids::BASIC_GET_OK),
                    "content header".to_owned(),
                    "hashed".to_owned(),
                    name(ids::CHANNEL_CLOSE_OK),
                ],
            ),
            (
                2,
                vec![
                    name(ids::QUEUE_DECLARE_OK),
                    name(ids::BASIC_GET_OK),
                    "content header".to_owned(),
                    "plain".to_owned(),
                    name(ids::CHANNEL_CLOSE_OK),
                ],
            ),
        ]);
        ensure!(
            answers[0] == expected,
            "RabbitMQ itself answered {:?}, not {expected:?}",
            answers[0]
        );
        ensure!(
            answers[1] == answers[0],
            "through warren the answers differ:\n  RabbitMQ {:?}\n  warren   {:?}",
            answers[0],
            answers[1]
        );
        world.finish(&declared, 1).await
    })
    .await
}
