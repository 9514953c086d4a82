//! Admission against a real RabbitMQ (B2, B5): a client is refused at the step, with the
//! frames, that RabbitMQ refuses it; credentials the broker revokes stop working for new
//! clients while existing ones are treated as RabbitMQ treats its own connections; an
//! exclusive queue belongs to the client that declared it.
//!
//! Each scenario runs directly against RabbitMQ and through warren, and the two must agree.

use anyhow::{bail, ensure, Context, Result};
use bytes::BytesMut;
use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_core::credentials::{Credentials, Secret};
use warren_core::frame::{FrameDecoder, PROTOCOL_HEADER};
use warren_core::method::{self, encode, Method, StartOk};
use warren_core::table::{longstr, FieldTable as WireTable, FieldValue};
use warren_runtime::config::Config;
use warren_tests::broker::{self, rabbitmqctl, TestUser};
use warren_tests::client::{self, amqp_url};
use warren_tests::lapin_ops::{bounded, lapin_declare, lapin_round_trip, LIMIT};
use warren_tests::raw::{RawClient, RawOptions};
use warren_tests::{broker_addr, unique, wait_until, Warren};

/// What a server answers to a `StartOk`, on the wire: the next frame's method, or the socket
/// closing.
async fn answer_to_start_ok(
    addr: SocketAddr,
    user: &str,
    password: &str,
    caps: bool,
) -> Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(PROTOCOL_HEADER).await?;
    let mut buf = BytesMut::new();
    let decoder = FrameDecoder::new(1 << 20);
    let next = async |s: &mut TcpStream, buf: &mut BytesMut| -> Result<Option<Method>> {
        loop {
            if let Some(f) = decoder.decode(buf).map_err(|e| anyhow::anyhow!("{e}"))? {
                return Ok(Some(
                    method::decode(f.payload()).map_err(|e| anyhow::anyhow!("{e}"))?,
                ));
            }
            if s.read_buf(buf).await? == 0 {
                return Ok(None);
            }
        }
    };
    match next(&mut s, &mut buf).await? {
        Some(Method::Start(_)) => {}
        other => bail!("expected connection.start, got {other:?}"),
    }
    let mut props = WireTable::default();
    if caps {
        let c = WireTable::default().with("authentication_failure_close", FieldValue::Bool(true));
        props = props.with("capabilities", FieldValue::Table(c));
    }
    props = props.with("product", longstr("warren-tests"));
    s.write_all(&encode::start_ok(&StartOk {
        client_properties: props,
        mechanism: "PLAIN".into(),
        response: format!("\0{user}\0{password}").into_bytes(),
        locale: "en_US".into(),
    }))
    .await?;
    let sent = Instant::now();
    let answer = tokio::time::timeout(LIMIT, next(&mut s, &mut buf)).await?;
    // Whole seconds: RabbitMQ answers at once, or holds a silent refusal for 3 s.
    let after = sent.elapsed().as_secs();
    Ok(format!(
        "{} after {after}s",
        match answer {
            Ok(Some(Method::Tune(_))) => "connection.tune".into(),
            Ok(Some(Method::ConnectionClose(c))) => {
                format!("connection.close {} {:?}", c.code, c.text)
            }
            Ok(Some(other)) => format!("{other:?}"),
            Ok(None) => "socket closed".into(),
            Err(e) => match e.downcast_ref::<std::io::Error>() {
                Some(io) if io.kind() == std::io::ErrorKind::ConnectionReset =>
                    "socket reset".into(),
                _ => return Err(e),
            },
        }
    ))
}

/// B2: a wrong password gets `Connection.Close 403` where `Tune` would be, with RabbitMQ's
/// text — or, for a client without `authentication_failure_close`, a socket reset three
/// seconds later — and a right one gets `Tune`, directly and through warren alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_is_answered_at_start_ok_as_rabbitmq_answers_it() -> Result<()> {
    bounded(async {
        let user = TestUser::create("warren-adm-startok").await?;
        let warren = Warren::start()?;
        for (password, caps) in [
            ("wrong", true),
            ("wrong", false),
            (user.password.as_str(), true),
        ] {
            let direct = answer_to_start_ok(broker_addr(), &user.name, password, caps).await?;
            let through = answer_to_start_ok(warren.addr(), &user.name, password, caps).await?;
            eprintln!(
                "password ok={} caps={caps}: {direct}",
                password == user.password
            );
            ensure!(
                direct == through,
                "after StartOk (caps {caps}): RabbitMQ sent {direct}, warren {through}"
            );
        }
        Ok(())
    })
    .await
}

/// B2: client libraries report a wrong password and an unknown vhost through warren as they
/// report them against RabbitMQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_libraries_report_refusals_as_they_do_directly() -> Result<()> {
    bounded(async {
        let user = TestUser::create("warren-adm-libs").await?;
        let warren = Warren::start()?;
        let cases = [
            ("wrong password", "not-it", "/"),
            ("unknown vhost", user.password.as_str(), "no-such-vhost"),
        ];
        for (what, password, vhost) in cases {
            let lapin = async |addr| -> Result<String> {
                match client::lapin_try_connect(&amqp_url(addr, &user.name, password, vhost))
                    .await?
                {
                    Ok(_) => Ok("connected".into()),
                    Err(e) => Ok(format!("{:?}", e.kind())),
                }
            };
            let (direct, through) = (lapin(broker_addr()).await?, lapin(warren.addr()).await?);
            ensure!(
                direct == through,
                "lapin, {what}: RabbitMQ {direct}; warren {through}"
            );
            let amqprs = async |addr| -> Result<String> {
                match client::amqprs_try_connect(addr, &user.name, password, vhost).await? {
                    Ok(_) => Ok("connected".into()),
                    Err(e) => Ok(e.to_string()),
                }
            };
            let (direct, through) = (amqprs(broker_addr()).await?, amqprs(warren.addr()).await?);
            ensure!(
                direct == through,
                "amqprs, {what}: RabbitMQ {direct}; warren {through}"
            );
            eprintln!("{what}: lapin and amqprs agree ({through})");
        }
        Ok(())
    })
    .await
}

/// The events of the broker's event exchange, read with guest (the test broker's
/// administrator, local connections only).
fn with_events(c: &mut Config) {
    c.events = Some(Credentials {
        user: "guest".into(),
        password: Secret::new("guest"),
        vhost: "/".into(),
    });
}

/// Polls `what` every 20 ms until it yields, bounded; returns how long it took.
async fn time_until<F, Fut>(what: &str, mut f: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    wait_until(LIMIT, what, || {
        let fut = f();
        async move {
            let done = fut.await?;
            if !done {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(done.then_some(()))
        }
    })
    .await?;
    Ok(start.elapsed())
}

/// Waits until warren follows the broker's event exchange.
async fn events_followed(warren: &Warren) -> Result<()> {
    wait_until(LIMIT, "the event feed to be up", || async {
        Ok(
            (warren_tests::metrics::metric(warren, "warren_event_feed_up", &[]).await? == 1.0)
                .then_some(()),
        )
    })
    .await
}

/// B2: after `change_password` the old password is refused for new clients within a second
/// (through the event exchange), while a client connected before keeps working, as RabbitMQ
/// keeps its connections; the new password works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_password_stops_new_clients_at_once_and_keeps_existing_ones() -> Result<()> {
    bounded(async {
        let user = TestUser::create("warren-adm-passwd").await?;
        let warren = Warren::start_configured(with_events)?;
        events_followed(&warren).await?;
        let url = warren.amqp_url(&user.name, &user.password, "/");
        let existing = client::lapin_connect(&url).await?;
        let ch = existing.create_channel().await?;
        let queue = unique("adm-passwd");
        lapin_declare(&ch, &queue).await?;
        // The old password is trusted now: a second client gets in without a broker login.
        client::lapin_connect(&url)
            .await?
            .close(200, "bye".into())
            .await?;

        rabbitmqctl(&["change_password", &user.name, "the-new-one"]).await?;
        let old = RawOptions::new(&user.name, &user.password, "/");
        let took = time_until("the old password to be refused", || async {
            Ok(match RawClient::try_connect(warren.addr(), &old).await? {
                Ok(c) => {
                    c.kill();
                    false
                }
                Err(refused) => {
                    ensure!(refused.code == Some(403), "refused with {refused:?}");
                    true
                }
            })
        })
        .await?;
        eprintln!("old password refused {took:?} after change_password returned");
        ensure!(
            took <= Duration::from_secs(1),
            "the old password worked for {took:?}"
        );
        lapin_round_trip(&ch, &queue, "an existing client after the change").await?;
        let new = RawOptions::new(&user.name, "the-new-one", "/");
        RawClient::connect(warren.addr(), &new)
            .await?
            .close()
            .await?;
        Ok(())
    })
    .await
}

/// B2 without the event exchange: the old password is refused once `credentials_ttl` has
/// passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_events_a_changed_password_is_refused_after_credentials_ttl() -> Result<()> {
    bounded(async {
        let user = TestUser::create("warren-adm-ttl").await?;
        let ttl = Duration::from_secs(1);
        let warren = Warren::start_configured(|c| c.credentials_ttl = ttl)?;
        let old = RawOptions::new(&user.name, &user.password, "/");
        let mut keep = RawClient::connect(warren.addr(), &old).await?;
        keep.open_channel(1).await?;
        rabbitmqctl(&["change_password", &user.name, "the-new-one"]).await?;
        let changed = Instant::now();
        let took = time_until("the old password to be refused", || async {
            Ok(match RawClient::try_connect(warren.addr(), &old).await? {
                Ok(c) => {
                    c.kill();
                    false
                }
                Err(refused) => {
                    ensure!(refused.code == Some(403), "refused with {refused:?}");
                    true
                }
            })
        })
        .await?;
        ensure!(
            changed.elapsed() <= ttl + Duration::from_secs(2),
            "the old password worked for {took:?} with credentials_ttl {ttl:?}"
        );
        keep.close().await?;
        Ok(())
    })
    .await
}

/// B2: after `clear_permissions`, an existing client's next operation gets RabbitMQ's
/// channel-level 403, and a new client is refused at `Open` with RabbitMQ's 530 text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_permissions_refuse_operations_and_new_clients_as_rabbitmq_does() -> Result<()> {
    bounded(async {
        let direct_user = TestUser::create("warren-adm-perm-d").await?;
        let user = TestUser::create("warren-adm-perm").await?;
        let warren = Warren::start_configured(with_events)?;
        events_followed(&warren).await?;
        let direct = client::lapin_connect(&amqp_url(
            broker_addr(),
            &direct_user.name,
            &direct_user.password,
            "/",
        ))
        .await?;
        let through =
            client::lapin_connect(&warren.amqp_url(&user.name, &user.password, "/")).await?;
        let (dch, tch) = (
            direct.create_channel().await?,
            through.create_channel().await?,
        );
        for u in [&direct_user, &user] {
            rabbitmqctl(&["clear_permissions", "-p", "/", &u.name]).await?;
        }
        let declare = async |ch: &lapin::Channel, name: &str| -> Result<String> {
            match ch
                .queue_declare(
                    name.into(),
                    QueueDeclareOptions::default(),
                    FieldTable::default(),
                )
                .await
            {
                Ok(_) => Ok("declared".into()),
                Err(e) => Ok(format!("{}", e).replace(name, "<queue>")),
            }
        };
        let (d, t) = (
            declare(&dch, &unique("adm-perm")).await?,
            declare(&tch, &unique("adm-perm")).await?,
        );
        ensure!(
            d.replace(&direct_user.name, "<user>") == t.replace(&user.name, "<user>"),
            "an operation after clear_permissions: RabbitMQ {d}; warren {t}"
        );
        ensure!(t.contains("ACCESS_REFUSED"), "expected a 403, got {t}");
        let refused = |u: &TestUser, addr| {
            let opts = RawOptions::new(&u.name, &u.password, "/");
            async move { RawClient::try_connect(addr, &opts).await }
        };
        let d = refused(&direct_user, broker_addr())
            .await?
            .err()
            .context("RabbitMQ let the user in")?;
        let took = time_until("warren to refuse the vhost", || async {
            Ok(refused(&user, warren.addr()).await?.is_err())
        })
        .await?;
        let t = refused(&user, warren.addr())
            .await?
            .err()
            .context("warren let the user in")?;
        ensure!(
            d.code == t.code
                && d.text.replace(&direct_user.name, "<user>")
                    == t.text.replace(&user.name, "<user>"),
            "a new client after clear_permissions: RabbitMQ {d:?}; warren {t:?}"
        );
        ensure!(
            took <= Duration::from_secs(1),
            "new clients got in for {took:?}"
        );
        Ok(())
    })
    .await
}

/// B2: `delete_user` closes every connection of the user with `320 CONNECTION_FORCED - user
/// 'u' is deleted` — with or without channels — through warren as directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_user_is_closed_everywhere_with_rabbitmqs_reply() -> Result<()> {
    bounded(async {
        let direct_user = TestUser::create("warren-adm-del-d").await?;
        let user = TestUser::create("warren-adm-del").await?;
        let warren = Warren::start_configured(with_events)?;
        events_followed(&warren).await?;
        let mut clients = Vec::new();
        for (u, addr) in [(&direct_user, broker_addr()), (&user, warren.addr())] {
            let opts = RawOptions::new(&u.name, &u.password, "/");
            let mut with_channel = RawClient::connect(addr, &opts).await?;
            with_channel.open_channel(1).await?;
            let without = RawClient::connect(addr, &opts).await?;
            clients.push((u.name.clone(), with_channel, without));
        }
        for u in [&direct_user, &user] {
            rabbitmqctl(&["delete_user", &u.name]).await?;
        }
        let mut seen = Vec::new();
        for (name, mut a, mut b) in clients {
            for c in [&mut a, &mut b] {
                let closed = c.expect_close_within(LIMIT).await?;
                seen.push((closed.code, closed.text.replace(&name, "<user>")));
            }
        }
        eprintln!("{seen:?}");
        ensure!(
            seen.iter().all(|s| *s == seen[0]),
            "closes differ: {seen:?}"
        );
        ensure!(seen[0].0 == 320, "{seen:?}");
        Ok(())
    })
    .await
}

/// B5: an exclusive queue belongs to the client that declared it. Another client of the same
/// user (through warren, the same broker connection) gets RabbitMQ's 405 and text for each
/// method RabbitMQ refuses across connections, also by the name with CR and LF in it (which
/// RabbitMQ drops in a declare, a bind and a delete); publishing to it works. Once the owner
/// deletes it by the channel's shortcut (the empty name), the name is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queues_are_locked_to_their_client_as_on_rabbitmq() -> Result<()> {
    bounded(async {
        let user = TestUser::create("warren-adm-excl").await?;
        let warren = Warren::start()?;
        let outcome = async |addr: SocketAddr, op: &str| -> Result<String> {
            let url = amqp_url(addr, &user.name, &user.password, "/");
            let owner = client::lapin_connect(&url).await?;
            let och = owner.create_channel().await?;
            let name = unique("adm-excl");
            let opts = QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            };
            och.queue_declare(name.as_str().into(), opts, FieldTable::default())
                .await?;
            let (op, target) = match op.strip_suffix(" with CR LF") {
                Some(op) => (op, format!("{name}\r\n")),
                None => (op, name.clone()),
            };
            let freed = op == "declare after the owner's shortcut delete";
            if freed {
                och.queue_delete("".into(), QueueDeleteOptions::default())
                    .await?;
            }
            let name = &target;
            let other = client::lapin_connect(&url).await?;
            let ch = other.create_channel().await?;
            let r = match op {
                "declare" | "declare after the owner's shortcut delete" => ch
                    .queue_declare(name.as_str().into(), opts, FieldTable::default())
                    .await
                    .map(drop),
                "passive declare" => ch
                    .queue_declare(
                        name.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map(drop),
                "get" => ch
                    .basic_get(name.as_str().into(), BasicGetOptions::default())
                    .await
                    .map(drop),
                "purge" => ch
                    .queue_purge(name.as_str().into(), Default::default())
                    .await
                    .map(drop),
                "delete" => ch
                    .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                    .await
                    .map(drop),
                "bind" => {
                    ch.queue_bind(
                        name.as_str().into(),
                        "amq.direct".into(),
                        "k".into(),
                        Default::default(),
                        FieldTable::default(),
                    )
                    .await
                }
                "publish" => {
                    ch.basic_publish(
                        "".into(),
                        name.as_str().into(),
                        Default::default(),
                        b"x",
                        Default::default(),
                    )
                    .await?;
                    // A round trip after it: an asynchronous refusal would show here.
                    ch.queue_declare(
                        unique("adm-excl-after").as_str().into(),
                        QueueDeclareOptions {
                            exclusive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map(drop)
                }
                _ => bail!("unknown op {op}"),
            };
            let out = match r {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("{e}").replace(name.trim_end(), "<queue>"),
            };
            if !freed {
                // The owner is undisturbed.
                och.basic_get(name.trim_end().into(), BasicGetOptions::default())
                    .await?;
            }
            owner.close(200, "bye".into()).await?;
            other.close(200, "bye".into()).await.ok();
            Ok(out)
        };
        for op in [
            "declare",
            "passive declare",
            "get",
            "purge",
            "delete",
            "bind",
            "publish",
            "declare with CR LF",
            "passive declare with CR LF",
            "delete with CR LF",
            "bind with CR LF",
            "declare after the owner's shortcut delete",
        ] {
            let direct = outcome(broker_addr(), op).await?;
            let through = outcome(warren.addr(), op).await?;
            eprintln!("{op}: {through}");
            ensure!(
                direct == through,
                "{op}: RabbitMQ {direct}; warren {through}"
            );
        }
        Ok(())
    })
    .await
}

/// What a client whose first channel declared an exclusive queue gets when it uses the queue
/// on a second channel, opened after a neighbour's channels made warren dial a second broker
/// connection (two channels per connection) and freed one on the first: the queue belongs to
/// the client, so each use works, as on its one connection to RabbitMQ. Also the number of
/// broker connections the user had, to show the scenario had two to choose from.
async fn own_exclusive_queue_from_a_later_channel(
    addr: SocketAddr,
    user: &TestUser,
) -> Result<(String, usize)> {
    let opts = RawOptions::new(&user.name, &user.password, "/");
    let mut owner = RawClient::connect(addr, &opts).await?;
    owner.open_channel(1).await?;
    let queue = owner.declare_queue(1, "", true).await?;
    let mut neighbour = RawClient::connect(addr, &opts).await?;
    neighbour.open_channel(1).await?;
    neighbour.open_channel(2).await?;
    // Dirty, so that its close frees the number instead of pooling the channel.
    neighbour.qos(1, 1).await?;
    neighbour.close_channel(1).await?;
    let connections = broker::listing(&["list_connections", "user"])
        .await?
        .lines()
        .filter(|l| l.trim() == user.name)
        .count();
    let outcome = use_own_queue_on_channel_2(&mut owner, &queue).await?;
    // Dropped, not closed: RabbitMQ 3.10 keeps these sockets open for 30 s after CloseOk.
    drop((owner, neighbour));
    Ok((outcome, connections))
}

/// B3, B5: a client's later channels go to the broker connection of its first one while that
/// has room, so its exclusive queues stay within reach (RabbitMQ refuses them with 405 to any
/// other connection, and warren used to open a client's channel on whichever connection the
/// placement picked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_exclusive_queue_is_reachable_from_all_its_channels_as_on_rabbitmq() -> Result<()>
{
    bounded(async {
        let user = TestUser::create("warren-adm-home").await?;
        let warren = Warren::start_configured(|c| c.max_channels_per_upstream = 2)?;
        let (direct, _) = own_exclusive_queue_from_a_later_channel(broker_addr(), &user).await?;
        let (through, connections) =
            own_exclusive_queue_from_a_later_channel(warren.addr(), &user).await?;
        ensure!(
            connections == 2,
            "warren had {connections} broker connection(s) for the user, not two"
        );
        ensure!(direct == through, "RabbitMQ: {direct}; warren: {through}");
        ensure!(direct == "got \"mine\"", "RabbitMQ itself: {direct}");
        Ok(())
    })
    .await
}

/// B5: a client's exclusive queue survives a spell in which the client has no channel on the
/// broker connection that holds it, as on RabbitMQ, where it lives as long as the client's
/// connection. warren used to close that broker connection for idleness (one second here),
/// and RabbitMQ deleted the queue with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_exclusive_queue_outlives_a_spell_without_channels_as_on_rabbitmq() -> Result<()>
{
    bounded(async {
        let user = TestUser::create("warren-adm-idle").await?;
        let warren = Warren::start_configured(|c| {
            c.max_channels_per_upstream = 1;
            c.recycling = false;
            c.upstream_idle_timeout = Duration::from_secs(1);
        })?;
        let direct =
            own_exclusive_queue_after_a_spell_without_channels(broker_addr(), &user).await?;
        let through =
            own_exclusive_queue_after_a_spell_without_channels(warren.addr(), &user).await?;
        ensure!(direct == through, "RabbitMQ: {direct}; warren: {through}");
        ensure!(direct == "got \"mine\"", "RabbitMQ itself: {direct}");
        Ok(())
    })
    .await
}

/// What a client gets from its exclusive queue after closing the channel that declared it and
/// waiting three seconds with no channel open. A neighbour holds a channel first, so that
/// through warren (one channel per broker connection) the client's queue is on a broker
/// connection of its own.
async fn own_exclusive_queue_after_a_spell_without_channels(
    addr: SocketAddr,
    user: &TestUser,
) -> Result<String> {
    let opts = RawOptions::new(&user.name, &user.password, "/");
    let mut neighbour = RawClient::connect(addr, &opts).await?;
    neighbour.open_channel(1).await?;
    let mut owner = RawClient::connect(addr, &opts).await?;
    owner.open_channel(1).await?;
    let queue = owner.declare_queue(1, "", true).await?;
    owner.close_channel(1).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcome = use_own_queue_on_channel_2(&mut owner, &queue).await?;
    // Dropped, not closed: RabbitMQ 3.10 keeps these sockets open for 30 s after CloseOk.
    drop((owner, neighbour));
    Ok(outcome)
}

/// Opens channel 2, publishes "mine" to the client's own `queue` there and gets it back: what
/// the get gave, with the queue's name masked in an error.
async fn use_own_queue_on_channel_2(owner: &mut RawClient, queue: &str) -> Result<String> {
    owner.open_channel(2).await?;
    owner.publish(2, queue, b"mine").await?;
    Ok(match owner.get_within(2, queue, LIMIT).await {
        Ok(d) => format!("got {:?}", String::from_utf8_lossy(&d.body)),
        Err(e) => format!("{e:#}").replace(queue, "<queue>"),
    })
}
