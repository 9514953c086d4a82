//! Liveness and refusals: logins the broker refuses (B2), the negative cache that keeps a
//! burst of bad logins from becoming a burst of broker dials, and heartbeats in all four
//! directions (B10) — silent clients are dropped, clients that answer (or keep publishing)
//! are kept, warren keeps an idle broker connection alive, and a silent broker is noticed.
//!
//! The detection times of a silent client and a silent broker are printed (`eprintln!`,
//! shown with `--no-capture`); they are measurements, and only an upper bound that turns a
//! hang into a failure is asserted.

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warren_tests::broker;
use warren_tests::client::{self, lapin_reply_code};
use warren_tests::faulty_net::BreakableNetwork;
use warren_tests::lapin_ops::{bounded, lapin_declare, lapin_round_trip, the_upstream_of, LIMIT};
use warren_tests::metrics::metric;
use warren_tests::raw::{as_close, describe, Incoming, RawClient, RawOptions};
use warren_tests::{broker_addr, unique, wait_until, TestUser, TestVhost, Warren, GUEST};

/// Upper bound for a silent peer to be noticed with a 1 s heartbeat: two intervals, plus
/// generous room for timers and a loaded machine. A hang past it is a failure.
const DETECTION_LIMIT: Duration = Duration::from_secs(15);

/// lapin's view of a refused login: the reply code and text, or a description of whatever
/// else happened.
async fn lapin_refusal(url: &str) -> Result<(u16, String)> {
    match client::lapin_try_connect(url).await? {
        Ok(conn) => {
            let _ = conn.close(200, "unexpected".into()).await;
            bail!("the login to {} was accepted", client::redact(url))
        }
        Err(e) => {
            let code = lapin_reply_code(&e).with_context(|| format!("no reply code in {e:?}"))?;
            let text = match e.kind() {
                lapin::ErrorKind::ProtocolError(amqp) => amqp.get_message().to_string(),
                _ => String::new(),
            };
            Ok((code, text))
        }
    }
}

// ----- refused logins (B2) -----------------------------------------------------------------------

/// A vhost that does not exist: `530 NOT_ALLOWED` with exactly the text RabbitMQ gives when
/// asked directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_vhost_is_refused_with_530_and_the_brokers_text() -> Result<()> {
    bounded(async {
        let warren = Warren::start()?;
        let vhost = unique("no-such-vhost");
        let direct = lapin_refusal(&client::amqp_url(broker_addr(), GUEST, GUEST, &vhost)).await?;
        let proxied = lapin_refusal(&warren.amqp_url(GUEST, GUEST, &vhost)).await?;
        eprintln!("missing vhost: RabbitMQ says {direct:?}, warren says {proxied:?}");
        ensure!(direct.0 == 530, "RabbitMQ itself answered {direct:?}");
        ensure!(
            proxied == direct,
            "warren answered {proxied:?} where RabbitMQ answers {direct:?}"
        );
        // A second attempt is answered the same (from the negative cache or a new dial).
        let again = lapin_refusal(&warren.amqp_url(GUEST, GUEST, &vhost)).await?;
        ensure!(again == direct, "second attempt: {again:?}");
        Ok(())
    })
    .await
}

/// A vhost the user has no permissions on: what RabbitMQ answers directly (530 NOT_ALLOWED,
/// "access to vhost ... refused"), code and text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_vhost_is_refused_as_rabbitmq_refuses_it() -> Result<()> {
    bounded(async {
        let user = TestUser::create("warren-live-forbidden").await?;
        // Only guest may use it; the test user gets nothing there.
        let vhost = TestVhost::create("warren-live-forbidden").await?;
        let warren = Warren::start()?;
        let direct = lapin_refusal(&client::amqp_url(
            broker_addr(),
            &user.name,
            &user.password,
            &vhost.name,
        ))
        .await?;
        let proxied =
            lapin_refusal(&warren.amqp_url(&user.name, &user.password, &vhost.name)).await?;
        eprintln!("forbidden vhost: RabbitMQ says {direct:?}, warren says {proxied:?}");
        ensure!(
            matches!(direct.0, 530 | 403),
            "RabbitMQ itself answered {direct:?}"
        );
        ensure!(
            proxied == direct,
            "warren answered {proxied:?} where RabbitMQ answers {direct:?}"
        );
        // The same user on a vhost it may use is fine through the same warren.
        let conn = client::lapin_connect(&warren.amqp_url(&user.name, &user.password, "/")).await?;
        conn.close(200, "bye".into()).await?;
        Ok(())
    })
    .await
}

/// B2's negative cache: 200 bad logins at once turn into at most a handful of broker dials,
/// every one of them is refused with 403, and nothing stays behind — the hub count returns
/// to zero. After the cache's TTL a bad login is checked with the broker again, and the right
/// password works all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_bad_logins_dials_the_broker_a_few_times_and_leaves_nothing_behind() -> Result<()>
{
    const BURST: usize = 200;
    const TTL: Duration = Duration::from_secs(2);
    bounded(async {
        let user = TestUser::create("warren-live-burst").await?;
        let warren = Warren::start_configured(|c| {
            c.auth_cache_ttl = TTL;
            // Short, so that the hub of the good login is gone soon after its client.
            c.upstream_idle_timeout = Duration::from_millis(500);
            c.pool_idle_timeout = Duration::from_millis(500);
        })?;
        let addr = warren.addr();
        let bad = RawOptions::new(&user.name, "not-the-password", "/");

        let started = Instant::now();
        let mut tasks = Vec::with_capacity(BURST);
        for _ in 0..BURST {
            let bad = bad.clone();
            tasks.push(tokio::spawn(async move {
                RawClient::try_connect(addr, &bad).await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await?.with_context(|| format!("bad login {i}"))? {
                Ok(_) => bail!("bad login {i} was let in"),
                Err(refused) => ensure!(
                    refused.code == Some(403),
                    "bad login {i}: expected 403 ACCESS_REFUSED, got {refused:?}"
                ),
            }
        }
        eprintln!("{BURST} bad logins refused in {:?}", started.elapsed());

        let by_user = [("user", user.name.as_str())];
        // Logins are refused at StartOk, before any hub exists: by a proof (a broker login
        // that the broker refused) for the first ones, then from the negative cache.
        let (proofs, by_proof, cached) =
            wait_until(LIMIT, "the refusals to be counted", || async {
                let proofs = metric(
                    &warren,
                    "warren_login_proofs_total",
                    &[("result", "refused")],
                )
                .await?;
                let by_proof = metric(
                    &warren,
                    "warren_refused_connections_total",
                    &[("reason", "login")],
                )
                .await?;
                let cached = metric(
                    &warren,
                    "warren_refused_connections_total",
                    &[("reason", "auth_cache")],
                )
                .await?;
                let counted = proofs >= 1.0 && by_proof + cached >= BURST as f64;
                Ok(counted.then_some((proofs, by_proof, cached)))
            })
            .await?;
        let connects = metric(&warren, "warren_upstream_connects_total", &by_user).await?;
        eprintln!(
            "{BURST} bad logins: {proofs} broker login(s); {by_proof} refused by one, \
             {cached} from the negative cache"
        );
        ensure!(connects == 0.0, "a bad login opened a broker connection");
        ensure!(
            metric(&warren, "warren_hubs", &[]).await? == 0.0,
            "a bad login left a hub behind"
        );
        ensure!(
            (1.0..=5.0).contains(&proofs),
            "{BURST} bad logins caused {proofs} broker logins"
        );
        ensure!(
            by_proof + cached == BURST as f64,
            "{by_proof} refusals by a proof and {cached} from the cache do not account \
             for {BURST} logins"
        );

        // After the TTL the broker is asked again (the cache forgets), still refusing.
        tokio::time::sleep(TTL + Duration::from_millis(200)).await;
        let refused = RawClient::try_connect(addr, &bad)
            .await?
            .err()
            .context("a bad login after the TTL was let in")?;
        ensure!(refused.code == Some(403), "after the TTL: {refused:?}");
        let proofs_after = wait_until(LIMIT, "the new proof to be counted", || async {
            let d = metric(
                &warren,
                "warren_login_proofs_total",
                &[("result", "refused")],
            )
            .await?;
            Ok((d > proofs).then_some(d))
        })
        .await?;
        ensure!(
            proofs_after == proofs + 1.0,
            "after the TTL a bad login should be proved once more ({proofs} → {proofs_after})"
        );

        // The right password works, and once its client leaves, no hub stays behind either.
        let good = RawOptions::new(&user.name, &user.password, "/");
        let mut ok = RawClient::connect(addr, &good).await?;
        ok.open_channel(1).await?;
        ok.close().await?;
        wait_until(
            LIMIT,
            "warren_hubs to return to 0 after the good login",
            || async { Ok((metric(&warren, "warren_hubs", &[]).await? == 0.0).then_some(())) },
        )
        .await?;
        ensure!(
            broker::warren_connections_of(&user.name).await?.is_empty(),
            "warren still holds a broker connection for {}",
            user.name
        );
        Ok(())
    })
    .await
}

// ----- heartbeats with clients (B10) ------------------------------------------------------------

/// A raw client that negotiates a 1 s heartbeat and then goes silent is dropped after about
/// two intervals, with `Connection.Close 320` (or a closed socket). Prints the detection
/// time: from the client's last frame to the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_after_two_heartbeat_intervals() -> Result<()> {
    bounded(async {
        let warren = Warren::start()?;
        let opts = RawOptions::new(GUEST, GUEST, "/").heartbeat(1);
        let mut raw = RawClient::connect(warren.addr(), &opts).await?;
        raw.set_answer_heartbeats(false);
        raw.open_channel(1).await?;
        let silent_since = raw.last_sent();
        // Read (without answering) until warren gives up on the client.
        let outcome = match raw.try_recv(DETECTION_LIMIT).await? {
            Incoming::Frame(f) => match as_close(&f)? {
                Some(closed) => Some(closed),
                None => bail!("unexpected {}", describe(&f)),
            },
            Incoming::Eof => None,
            Incoming::Timeout => {
                bail!("a client silent for {DETECTION_LIMIT:?} with a 1 s heartbeat is still connected")
            }
        };
        let detected = silent_since.elapsed();
        eprintln!(
            "silent client (heartbeat 1 s) dropped {detected:?} after its last frame, with \
             {outcome:?}; warren sent {} heartbeats meanwhile",
            raw.heartbeats_seen()
        );
        if let Some(closed) = &outcome {
            ensure!(
                closed.channel == 0 && closed.code == 320,
                "expected Connection.Close 320, got {closed:?}"
            );
        }
        ensure!(
            raw.heartbeats_seen() >= 1,
            "warren sent no heartbeat to a client that negotiated 1 s"
        );
        raw.expect_eof(LIMIT).await?;
        Ok(())
    })
    .await
}

/// A raw client with a 1 s heartbeat that only answers warren's heartbeats stays connected
/// for 5 s, and then works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_heartbeats_stays_connected() -> Result<()> {
    bounded(async {
        let warren = Warren::start()?;
        let opts = RawOptions::new(GUEST, GUEST, "/").heartbeat(1);
        let mut raw = RawClient::connect(warren.addr(), &opts).await?;
        raw.open_channel(1).await?;
        raw.idle(Duration::from_secs(5)).await?;
        ensure!(
            raw.heartbeats_seen() >= 2,
            "warren sent {} heartbeats in 5 s to a client that negotiated 1 s",
            raw.heartbeats_seen()
        );
        let queue = raw.declare_queue(1, &unique("live-answers"), false).await?;
        raw.publish(1, &queue, b"still here").await?;
        let got = raw.get_within(1, &queue, LIMIT).await?.body;
        ensure!(got == b"still here", "got {got:?}");
        raw.close().await?;
        broker::delete_queue("/", &queue).await?;
        Ok(())
    })
    .await
}

/// A publisher with a 1 s heartbeat that never reads and never sends a heartbeat, but
/// publishes every 100 ms for 5 s, is kept alive: any frame counts as liveness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_publisher_that_never_reads_is_kept_alive() -> Result<()> {
    const MESSAGES: u64 = 50;
    bounded(async {
        let warren = Warren::start()?;
        let opts = RawOptions::new(GUEST, GUEST, "/").heartbeat(1);
        let mut raw = RawClient::connect(warren.addr(), &opts).await?;
        raw.set_answer_heartbeats(false);
        raw.open_channel(1).await?;
        let queue = raw.declare_queue(1, &unique("live-busy"), false).await?;
        for i in 0..MESSAGES {
            raw.publish(1, &queue, format!("busy-{i}").as_bytes())
                .await
                .with_context(|| format!("publish {i}"))?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Still connected: a synchronous method is answered (a close would come instead).
        raw.declare_queue(1, &queue, false).await?;
        let q = queue.as_str();
        wait_until(LIMIT, "every publish to arrive", || async move {
            Ok(broker::queue_counts("/", q)
                .await?
                .filter(|c| c.messages == MESSAGES))
        })
        .await?;
        raw.close().await?;
        broker::delete_queue("/", &queue).await?;
        Ok(())
    })
    .await
}

// ----- heartbeats with the broker (B10, B11) -----------------------------------------------------

/// The heartbeat (`timeout`) RabbitMQ negotiated on warren's broker connections for `user`.
async fn broker_heartbeats_of(user: &str) -> Result<Vec<u64>> {
    let rows = broker::list(&["list_connections", "user", "timeout", "client_properties"]).await?;
    Ok(rows
        .iter()
        .filter(|r| r.get("user").and_then(Value::as_str) == Some(user))
        .filter(|r| {
            r.get("client_properties")
                .is_some_and(|p| p.to_string().contains("warren@"))
        })
        .filter_map(|r| r.get("timeout").and_then(Value::as_u64))
        .collect())
}

/// With `upstream_heartbeat = 1`, warren's broker connection stays up through 5 idle seconds
/// (RabbitMQ drops a connection that is silent for two intervals — shown first with a raw
/// client straight to the broker that does not answer its heartbeats) and still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_keeps_an_idle_upstream_alive_with_heartbeats() -> Result<()> {
    bounded(async {
        // The control: RabbitMQ does drop a silent peer with a 1 s heartbeat.
        let opts = RawOptions::new(GUEST, GUEST, "/").heartbeat(1);
        let mut direct = RawClient::connect(broker_addr(), &opts).await?;
        direct.set_answer_heartbeats(false);
        let t0 = Instant::now();
        direct.expect_eof(DETECTION_LIMIT).await.context(
            "RabbitMQ kept a silent connection with a 1 s heartbeat; this test proves nothing",
        )?;
        eprintln!(
            "RabbitMQ dropped a silent client (heartbeat 1 s) after {:?}",
            t0.elapsed()
        );

        let user = TestUser::create("warren-live-upbeat").await?;
        let warren = Warren::start_configured(|c| c.upstream_heartbeat = 1)?;
        let conn = client::lapin_connect(&warren.amqp_url(&user.name, &user.password, "/")).await?;
        let ch = conn.create_channel().await?;
        let queue = unique("live-upbeat");
        lapin_declare(&ch, &queue).await?;
        lapin_round_trip(&ch, &queue, "before").await?;
        let before = the_upstream_of(&user).await?;
        let beats = broker_heartbeats_of(&user.name).await?;
        ensure!(
            beats == [1],
            "expected one warren connection with a 1 s heartbeat, RabbitMQ lists {beats:?}"
        );

        tokio::time::sleep(Duration::from_secs(5)).await;

        let after = the_upstream_of(&user).await?;
        ensure!(
            after.name == before.name,
            "the idle broker connection was replaced ({} → {})",
            before.name,
            after.name
        );
        lapin_round_trip(&ch, &queue, "after 5 idle seconds").await?;
        broker::delete_queue("/", &queue).await?;
        conn.close(200, "bye".into()).await?;
        Ok(())
    })
    .await
}

/// A TCP relay between warren and the broker that can go silent: [`Relay::freeze`] makes
/// every connection open at that moment stop forwarding in both directions while keeping its
/// sockets open (a hung broker or a black-holed link); later connections are relayed
/// normally.
struct Relay {
    addr: SocketAddr,
    frozen: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let frozen: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let conns = frozen.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let flag = Arc::new(AtomicBool::new(false));
                conns.lock().expect("relay lock").push(flag.clone());
                let (ir, iw) = inbound.into_split();
                let (or, ow) = outbound.into_split();
                tokio::spawn(pipe(ir, ow, flag.clone()));
                tokio::spawn(pipe(or, iw, flag));
            }
        });
        Ok(Relay { addr, frozen })
    }

    /// Silences every connection relayed so far.
    fn freeze(&self) {
        for f in self.frozen.lock().expect("relay lock").iter() {
            f.store(true, Ordering::SeqCst);
        }
    }
}

/// Copies `r` to `w` until either side ends — unless `frozen`, in which case it drops what
/// it reads and keeps both sockets open (forever, until the runtime ends).
async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // An error ends the stream like an orderly close does.
        let n: usize = r.read(&mut buf).await.unwrap_or_default();
        if frozen.load(Ordering::SeqCst) {
            if n == 0 {
                // Hold the sockets: the far side must learn nothing.
                let _keep = (r, w);
                std::future::pending::<()>().await;
                return;
            }
            continue;
        }
        if n == 0 || w.write_all(&buf[..n]).await.is_err() {
            let _ = w.shutdown().await;
            return;
        }
    }
}

/// B10/B11 with a silent broker: warren's upstream goes through a relay that freezes. With a
/// 1 s upstream heartbeat warren notices within about two intervals and closes the clients
/// that had a channel on it with `Connection.Close 320`; a client without channels keeps
/// its connection, and warren redials (through the relay, which relays new connections) and
/// serves again. Prints the detection time: from the freeze to the client's close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_is_detected_by_missed_heartbeats() -> Result<()> {
    bounded(async {
        let relay = Relay::start(broker_addr()).await?;
        let user = TestUser::create("warren-live-silent").await?;
        let warren = Warren::start_configured(|c| {
            c.upstream = format!("amqp://{}", relay.addr)
                .parse()
                .expect("the relay's URL");
            c.upstream_heartbeat = 1;
            c.backoff_initial = Duration::from_millis(100);
        })?;
        let opts = RawOptions::new(&user.name, &user.password, "/");
        let mut with_channel = RawClient::connect(warren.addr(), &opts).await?;
        with_channel.open_channel(1).await?;
        let queue = with_channel
            .declare_queue(1, &unique("live-silent"), false)
            .await?;
        let mut without_channel = RawClient::connect(warren.addr(), &opts).await?;
        let before = the_upstream_of(&user).await?;

        relay.freeze();
        let frozen_at = Instant::now();
        let closed = with_channel.expect_close_within(DETECTION_LIMIT).await?;
        let detected = frozen_at.elapsed();
        eprintln!(
            "silent broker (heartbeat 1 s) detected after {detected:?}: the client got {closed:?}"
        );
        ensure!(
            closed.channel == 0 && closed.code == 320,
            "expected Connection.Close 320, got {closed:?}"
        );
        with_channel.finish_close().await?;

        // The client without a channel is still connected, and gets a channel on the new
        // upstream that warren dials.
        let refusals = without_channel.open_channel_retrying(1, LIMIT).await?;
        if !refusals.is_empty() {
            eprintln!(
                "channel.open was refused {} time(s) before the redial: {refusals:?}",
                refusals.len()
            );
        }
        without_channel
            .publish(1, &queue, b"after the silent broker")
            .await?;
        let got = without_channel.get_within(1, &queue, LIMIT).await?.body;
        ensure!(got == b"after the silent broker", "got {got:?}");
        let after = wait_until(LIMIT, "warren's new broker connection", || async {
            let ups = broker::warren_connections_of(&user.name).await?;
            Ok(ups.into_iter().find(|u| u.name != before.name))
        })
        .await?;
        eprintln!("warren reconnected: {} → {}", before.name, after.name);
        without_channel.close().await?;
        broker::delete_queue("/", &queue).await?;
        Ok(())
    })
    .await
}

// ----- writes that fail before the read side sees the end (B5, B11) ---------------------------

/// B11: when warren's write to the broker fails before its read side has seen the
/// connection end (a reset that reaches the busy writer first), the clients on that
/// connection still get `Connection.Close 320` at once, not after two missed heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_connection_that_fails_on_write_closes_its_clients() -> Result<()> {
    bounded(async {
        let user = TestUser::create("warren-live-upstream-write").await?;
        let net = BreakableNetwork::default();
        let warren = Warren::start_on(net.clone(), Warren::test_config())?;
        let opts = RawOptions::new(&user.name, &user.password, "/");
        let mut raw = RawClient::connect(warren.addr(), &opts).await?;
        raw.open_channel(1).await?;

        net.break_upstreams();
        // The publish is the write that fails; the broker's side never says anything again.
        raw.publish(1, &unique("live-upstream-write"), b"into a broken socket")
            .await?;
        let closed = raw.expect_close().await?;
        ensure!(
            (closed.channel, closed.code) == (0, 320),
            "expected Connection.Close 320, got {closed:?}"
        );
        Ok(())
    })
    .await
}

/// B5: when warren's write to a client fails before its read side has seen the end, the
/// client is released at once — its exclusive queue deleted, its channel closed upstream —
/// not kept until a heartbeat timeout, or forever without heartbeats (as here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_socket_fails_on_write_is_released() -> Result<()> {
    bounded(async {
        let user = TestUser::create("warren-live-client-write").await?;
        let net = BreakableNetwork::default();
        let warren = Warren::start_on(net.clone(), Warren::test_config())?;
        let opts = RawOptions::new(&user.name, &user.password, "/");
        let mut victim = RawClient::connect(warren.addr(), &opts).await?;
        victim.open_channel(1).await?;
        let queue = victim
            .declare_queue(1, &unique("live-client-write"), true)
            .await?;
        victim.consume(1, &queue, "victim", false).await?;
        ensure!(
            net.break_client(victim.local_addr()?),
            "warren never accepted the victim's connection"
        );

        // A neighbour's publish becomes a delivery to the victim: the write that fails.
        let mut neighbour = RawClient::connect(warren.addr(), &opts).await?;
        neighbour.open_channel(1).await?;
        neighbour.publish(1, &queue, b"for the victim").await?;
        wait_until(LIMIT, "the victim's exclusive queue to be deleted", || {
            let queue = queue.clone();
            async move {
                Ok(broker::queue_counts("/", &queue)
                    .await?
                    .is_none()
                    .then_some(()))
            }
        })
        .await?;
        neighbour.close().await?;
        drop(victim);
        Ok(())
    })
    .await
}
