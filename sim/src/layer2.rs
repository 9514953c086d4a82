//! Layer 2: the real runtime under turmoil.
//!
//! `warren_runtime::Server` runs unchanged as host `proxy` over [`TurmoilNetwork`]; host
//! `broker` runs the same sans-IO [`Broker`] as layer 1 behind turmoil TCP; every client is a
//! turmoil client host driving a [`FakeClient`] over a real (simulated) socket. Faults are
//! turmoil's own: `crash`/`bounce` of the broker, `partition` (+ `crash` = silent death),
//! `hold`/`release`, `set_link_fail_rate`, and the drain token of [`Shutdown`].
//!
//! A layer-2 scenario is the layer-1 scenario of the same seed, mapped onto the runtime's
//! configuration and turmoil's faults, minus what turmoil cannot express. Checked: every
//! client finished or was closed with a proper code (no hang: the simulation must finish),
//! the broker never saw a connection-level protocol error, order and routing as seen by
//! clients and broker, confirms the broker sent reached finished clients, clients arriving
//! after the faults healed work again, and a drain returns within the runtime's bound.

use crate::broker::{Broker, BrokerOutput, ConnId};
use crate::check::{Invariant, Violation};
use crate::client::{Board, ClientOut, End, FakeClient, Step};
use crate::plan::Fault;
use crate::scenario::Scenario;
use crate::turmoil_net::TurmoilNetwork;
use crate::world::credentials;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use warren_core::reply;
use warren_runtime::config::{Config, UpstreamUrl};
use warren_runtime::{Server, Shutdown};

/// Port warren listens on inside the simulation.
pub const PROXY_PORT: u16 = 5673;
/// Port the scripted broker listens on.
pub const BROKER_PORT: u16 = 5672;

/// When `Server::run` returned, and whether it returned `Ok`.
type ProxyDone = Arc<Mutex<Option<(Duration, bool)>>>;

/// Frame lines from inside the hosts, stamped with simulation time.
type Lines = Arc<Mutex<Vec<(Duration, u64, String)>>>;

fn trace_line(lines: &Option<Lines>, what: String) {
    if let Some(l) = lines {
        let mut l = lock(l);
        let n = l.len() as u64;
        l.push((turmoil::elapsed(), n, what));
    }
}

fn tap(lines: &Option<Lines>, tap: &mut crate::trace::Tap, who: &str, data: &[u8]) {
    if lines.is_some() {
        for d in tap.feed(data) {
            trace_line(lines, format!("{who} {d}"));
        }
    }
}

/// The simulated clock as a std `Instant` (turmoil pauses and drives tokio time).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fault as turmoil applies it, with its start and (if any) end.
#[derive(Debug, Clone, PartialEq)]
pub enum L2Fault {
    /// `crash("broker")`, then `bounce("broker")` after the downtime.
    Crash(Duration),
    /// `partition(proxy, broker)` + `crash("broker")`; later `repair` + `bounce`.
    SilentDeath(Duration),
    /// `partition(proxy, broker)`, then `repair`.
    Partition(Duration),
    /// `hold(proxy, broker)`, then `release`.
    Hold(Duration),
    /// `set_link_fail_rate` on every link for a window (turmoil breaks TCP connections).
    LinkFailures(Duration),
    /// `Shutdown::drain` is cancelled.
    Drain(Duration),
    /// The broker host runs `change_password` (user table and event), or only changes the
    /// user table while it is down.
    PasswordChange {
        /// Whose password.
        user: String,
        /// The new password.
        password: String,
    },
}

impl L2Fault {
    /// Whether it disturbs the network or the broker (what excuses broken connections).
    #[must_use]
    pub fn is_network(&self) -> bool {
        !matches!(self, L2Fault::Drain(_) | L2Fault::PasswordChange { .. })
    }
}

/// Layer-2 settings of a run.
#[derive(Debug, Clone)]
pub struct L2Options {
    /// turmoil tick.
    pub tick: Duration,
    /// Simulation time limit (a run that has not finished by then is a hang).
    pub limit: Duration,
    /// Most clients taken from the layer-1 scenario.
    pub max_clients: usize,
    /// Record every frame the clients and the broker see (slower; for replays).
    pub trace: bool,
    /// The runtime's `client_queue_bytes` (B9 bound).
    pub client_queue_bytes: usize,
    /// turmoil's per-socket buffer, in segments (small values give TCP backpressure).
    pub tcp_capacity: usize,
}

impl Default for L2Options {
    fn default() -> Self {
        L2Options {
            tick: Duration::from_millis(10),
            limit: Duration::from_secs(90),
            max_clients: 8,
            trace: false,
            // The runtime's bound is on bytes queued at any instant, so one burst of large
            // deliveries above it disconnects a client that reads fine: keep it realistic.
            client_queue_bytes: 4 * 1024 * 1024,
            tcp_capacity: 4096,
        }
    }
}

/// The outcome of a layer-2 run.
#[derive(Debug)]
pub struct L2Report {
    /// The seed.
    pub seed: u64,
    /// Broken invariants.
    pub violations: Vec<Violation>,
    /// One line per client, fault and proxy lifecycle event (times are turmoil's).
    pub log: Vec<String>,
    /// Simulated time the run took.
    pub elapsed: Duration,
    /// Every client's outcome.
    pub clients: Vec<L2Client>,
    /// How often notable things happened (as in layer 1's report).
    pub coverage: BTreeMap<&'static str, u64>,
}

impl L2Report {
    /// Whether every invariant held.
    #[must_use]
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// What a client host left behind for the checks.
#[derive(Debug)]
struct ClientResult {
    client: FakeClient,
    start: Duration,
    ended_at: Duration,
    /// When a write first failed (the peer reset the connection).
    write_failed_at: Option<Duration>,
    /// When it sent `StartOk` and got `OpenOk`, in simulation time.
    start_ok: Option<Duration>,
    opened: Option<Duration>,
}

/// How one layer-2 client fared, for targeted tests.
#[derive(Debug, Clone)]
pub struct L2Client {
    /// World number.
    pub id: u32,
    /// Script label.
    pub kind: &'static str,
    /// How its connection ended.
    pub end: Option<End>,
    /// When one of its writes first failed: warren had closed the socket.
    pub write_failed_at: Option<Duration>,
}

/// The runtime configuration for a scenario: the same limits the layer-1 hub had.
#[must_use]
pub fn runtime_config(sc: &Scenario, drain_timeout: Duration) -> Config {
    let hub = &sc.hub;
    Config {
        listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, PROXY_PORT)),
        reuse_port: false,
        proxy_protocol: false,
        tls_listen: None,
        upstream: UpstreamUrl {
            tls: false,
            host: "broker".into(),
            port: BROKER_PORT,
        }
        .into(),
        metrics: None,
        admin_listen: None,
        client_heartbeat: sc.handshake.heartbeat,
        frame_max: sc.handshake.frame_max,
        channel_max: sc.handshake.channel_max,
        max_upstreams_per_hub: hub.max_upstreams,
        max_channels_per_upstream: hub.max_channels_per_upstream,
        placement: hub.placement,
        upstream_heartbeat: hub.upstream_heartbeat,
        connect_timeout: hub.connect_timeout,
        backoff_initial: hub.backoff.initial,
        backoff_max: hub.backoff.max,
        handshake_timeout: sc.handshake.timeout,
        client_queue_bytes: sc.net.client_queue_limit,
        max_message_size: hub.max_message_size,
        client_buffer_bytes: hub.client_buffer_limit,
        recycling: hub.recycling,
        pool_size: hub.pool_size,
        pool_idle_timeout: hub.pool_idle_timeout,
        upstream_idle_timeout: hub.upstream_idle_timeout,
        auth_cache_ttl: sc.net.auth_cache_ttl,
        credentials_ttl: sc.net.credentials_ttl,
        events: sc.net.events.then(|| credentials("guest", "guest", "/")),
        drain_timeout,
        ..Config::default()
    }
}

/// The layer-2 version of the layer-1 scenario of `seed`.
#[must_use]
pub fn scenario(seed: u64, opts: &L2Options) -> (Scenario, Vec<(Duration, L2Fault)>) {
    let mut sc = Scenario::random(seed);
    sc.broker.handshake_timeout = Duration::from_secs(5);
    // turmoil loses segments for good in a partition (no retransmission), so only
    // heartbeats can find a dead connection: keep them on everywhere.
    if sc.broker.heartbeat == 0 {
        sc.broker.heartbeat = 2;
    }
    sc.broker.heartbeat = sc.broker.heartbeat.min(3);
    sc.handshake.heartbeat = sc.handshake.heartbeat.min(3);
    for c in &mut sc.clients {
        if c.heartbeat == Some(0) {
            c.heartbeat = None;
        }
    }
    sc.clients.sort_by_key(|c| c.start);
    sc.clients.truncate(opts.max_clients);
    let mut faults = Vec::new();
    for f in &sc.plan.faults {
        let l2 = match f.fault {
            Fault::BrokerCrash { downtime } => L2Fault::Crash(downtime),
            Fault::BrokerSilentDeath { downtime } => L2Fault::SilentDeath(downtime),
            Fault::Partition { duration } => L2Fault::Partition(duration),
            Fault::Hold { duration } => L2Fault::Hold(duration),
            Fault::ConnBreaks { over, .. } => {
                L2Fault::LinkFailures(over.min(Duration::from_secs(2)))
            }
            Fault::Drain { timeout } => L2Fault::Drain(timeout),
            Fault::PasswordChange {
                ref user,
                ref password,
            } => L2Fault::PasswordChange {
                user: user.clone(),
                password: password.clone(),
            },
            _ => continue,
        };
        faults.push((f.at, l2));
    }
    (sc, faults)
}

/// Password changes for the broker host to carry out (user, new password), and the bell that
/// tells it there are some.
#[derive(Clone, Default)]
struct Admin {
    changes: Arc<Mutex<Vec<(String, String)>>>,
    bell: Arc<tokio::sync::Notify>,
}

/// The scripted broker host: one task owns the [`Broker`]; per connection a reader feeds it
/// and a writer carries its output.
async fn broker_host(
    broker: Arc<Mutex<Broker>>,
    lines: Option<Lines>,
    admin: Admin,
) -> turmoil::Result {
    lock(&broker).restart();
    trace_line(&lines, "broker starts".into());
    let mut taps: BTreeMap<ConnId, crate::trace::Tap> = BTreeMap::new();
    let listener = turmoil::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, BROKER_PORT)).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(ConnId, Option<Bytes>)>();
    let mut writers: BTreeMap<ConnId, mpsc::UnboundedSender<Option<Bytes>>> = BTreeMap::new();
    loop {
        let timeout = lock(&broker)
            .poll_timeout()
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let id = lock(&broker).accept(now());
                trace_line(&lines, format!("b{id} accepted"));
                let (mut r, mut w) = stream.into_split();
                let (wtx, mut wrx) = mpsc::unbounded_channel::<Option<Bytes>>();
                writers.insert(id, wtx);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if tx.send((id, Some(Bytes::copy_from_slice(&buf[..n])))).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = tx.send((id, None));
                });
                tokio::spawn(async move {
                    while let Some(msg) = wrx.recv().await {
                        match msg {
                            Some(b) => {
                                if w.write_all(&b).await.is_err() {
                                    break;
                                }
                            }
                            None => {
                                let _ = w.shutdown().await;
                                break;
                            }
                        }
                    }
                });
            }
            Some((id, msg)) = rx.recv() => {
                if let Some(data) = &msg {
                    tap(&lines, taps.entry(id).or_default(), &format!("w→b{id}"), data);
                } else {
                    trace_line(&lines, format!("b{id} closed by warren"));
                }
                let mut b = lock(&broker);
                match msg {
                    Some(data) => b.handle_bytes(now(), id, &data),
                    None => b.handle_closed(now(), id),
                }
            }
            _ = tokio::time::sleep_until(timeout.unwrap_or_else(tokio::time::Instant::now)), if timeout.is_some() => {
                lock(&broker).handle_timeout(now());
            }
            () = admin.bell.notified() => {
                let changes = std::mem::take(&mut *lock(&admin.changes));
                for (user, password) in changes {
                    let sent = lock(&broker).change_password(now(), &user, &password);
                    trace_line(&lines, format!("broker: password of {user} changed, event to {sent:?}"));
                }
            }
        }
        let outputs: Vec<BrokerOutput> = {
            let mut b = lock(&broker);
            std::iter::from_fn(|| b.poll_output()).collect()
        };
        for o in outputs {
            match o {
                BrokerOutput::Send { conn, data } => {
                    if let Some(w) = writers.get(&conn) {
                        let _ = w.send(Some(data));
                    }
                }
                BrokerOutput::Close { conn } => {
                    trace_line(&lines, format!("b{conn} closed by the broker"));
                    if let Some(w) = writers.remove(&conn) {
                        let _ = w.send(None);
                    }
                }
            }
        }
    }
}

/// One client host: connects to warren and runs its [`FakeClient`] over the socket. It
/// stops reading while the client does (so warren feels the backpressure).
async fn client_host(
    id: u32,
    spec: crate::client::ClientSpec,
    board: Arc<Mutex<Board>>,
    results: Arc<Mutex<Vec<ClientResult>>>,
    lines: Option<Lines>,
    proxy_done: ProxyDone,
) -> turmoil::Result {
    let mut in_tap = crate::trace::Tap::default();
    let mut out_tap = crate::trace::Tap::default();
    let start = spec.start;
    tokio::time::sleep(start).await;
    let mut client = FakeClient::new(id, spec, now());
    trace_line(&lines, format!("c{id} connects ({})", client.spec.kind));
    // A process that exited refuses connections; turmoil just stops answering for it.
    let exited = lock(&proxy_done).is_some();
    let connect = tokio::time::timeout(
        Duration::from_secs(5),
        turmoil::net::TcpStream::connect(("proxy", PROXY_PORT)),
    );
    let connected = if exited {
        None
    } else {
        connect.await.ok().and_then(Result::ok)
    };
    let stream = match connected {
        Some(s) => s,
        None => {
            client.refused(now());
            lock(&results).push(ClientResult {
                client,
                start,
                ended_at: turmoil::elapsed(),
                write_failed_at: None,
                start_ok: None,
                opened: None,
            });
            return Ok(());
        }
    };
    let (mut r, mut w) = stream.into_split();
    let mut buf = vec![0u8; 16 * 1024];
    let mut write_closed = false;
    let mut read_closed = false;
    let mut write_failed_at = None;
    loop {
        while let Some(o) = client.poll_output() {
            match o {
                ClientOut::Send(b) if !write_closed => {
                    tap(&lines, &mut out_tap, &format!("c{id}→w"), &b);
                    if w.write_all(&b).await.is_err() {
                        write_closed = true;
                        write_failed_at = Some(turmoil::elapsed());
                        trace_line(&lines, format!("c{id} write failed: connection reset"));
                        // A client that does not read learns of a reset from its writes.
                        if !client.is_reading() {
                            client.handle_closed(now(), true);
                        }
                    }
                }
                ClientOut::Send(_) => {}
                ClientOut::Close => {
                    let _ = w.shutdown().await;
                    write_closed = true;
                }
            }
        }
        if client.is_done() {
            break;
        }
        let deadline = client.poll_timeout().map(tokio::time::Instant::from_std);
        let reading = client.is_reading() && !read_closed;
        tokio::select! {
            biased;
            n = r.read(&mut buf), if reading => match n {
                Ok(0) => {
                    read_closed = true;
                    client.handle_closed(now(), false);
                }
                Ok(n) => {
                    tap(&lines, &mut in_tap, &format!("w→c{id}"), &buf[..n]);
                    let mut b = lock(&board);
                    client.handle_bytes(now(), &buf[..n], &mut b);
                }
                Err(_) => {
                    read_closed = true;
                    client.handle_closed(now(), true);
                }
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                let mut b = lock(&board);
                client.handle_timeout(now(), &mut b);
            }
            // Neither reading nor waiting for anything: only the end of the simulation helps.
            _ = std::future::pending::<()>(), if !reading && deadline.is_none() => {}
        }
    }
    drop(w);
    if let Some((_, end)) = &client.end {
        trace_line(&lines, format!("c{id} ends: {end}"));
    }
    // Its instants as simulation time.
    let (t, elapsed) = (now(), turmoil::elapsed());
    let sim_time = |i: Option<Instant>| i.map(|i| elapsed.saturating_sub(t.duration_since(i)));
    let (start_ok, opened) = (sim_time(client.start_ok_at), sim_time(client.opened_at));
    lock(&results).push(ClientResult {
        client,
        start,
        ended_at: elapsed,
        write_failed_at,
        start_ok,
        opened,
    });
    Ok(())
}

/// Runs the layer-2 version of `seed`'s scenario and checks it.
#[must_use]
pub fn run(seed: u64, opts: &L2Options) -> L2Report {
    let (sc, faults) = scenario(seed, opts);
    run_scenario(sc, faults, opts)
}

/// Runs a given scenario (its seed seeds turmoil) with the given turmoil faults.
#[must_use]
pub fn run_scenario(sc: Scenario, faults: Vec<(Duration, L2Fault)>, opts: &L2Options) -> L2Report {
    let seed = sc.seed;
    let drain_timeout = faults
        .iter()
        .find_map(|(_, f)| match f {
            L2Fault::Drain(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(Duration::from_secs(2));
    let mut config = runtime_config(&sc, drain_timeout);
    config.client_queue_bytes = opts.client_queue_bytes;
    // A client over the bound that reads nothing for a second is slow (B9's rule).
    config.slow_client_timeout = Duration::from_secs(1);
    let close_timeout = config.hub_config(String::new()).close_timeout;
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(opts.limit)
        .tick_duration(opts.tick)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(3))
        .tcp_capacity(opts.tcp_capacity)
        .build();
    let broker = Arc::new(Mutex::new(Broker::new(sc.broker.clone())));
    let admin = Admin::default();
    let board = Arc::new(Mutex::new(Board::new(sc.board.0, sc.board.1)));
    let results: Arc<Mutex<Vec<ClientResult>>> = Arc::new(Mutex::new(Vec::new()));
    let shutdown = Shutdown::default();
    let proxy_done: ProxyDone = Arc::new(Mutex::new(None));
    let mut log = vec![format!("seed {seed} plan: {}", sc.plan)];
    let lines: Option<Lines> = opts.trace.then(|| Arc::new(Mutex::new(Vec::new())));

    {
        let (broker, lines, admin) = (broker.clone(), lines.clone(), admin.clone());
        sim.host("broker", move || {
            broker_host(broker.clone(), lines.clone(), admin.clone())
        });
    }
    {
        let (config, shutdown, done) = (config.clone(), shutdown.clone(), proxy_done.clone());
        sim.host("proxy", move || {
            let (config, shutdown, done) = (config.clone(), shutdown.clone(), done.clone());
            async move {
                let server = Server::bind(TurmoilNetwork, config).await?;
                let ok = server.run_seeded(shutdown, seed).await.is_ok();
                *lock(&done) = Some((turmoil::elapsed(), ok));
                Ok(())
            }
        });
    }
    for (i, spec) in sc.clients.iter().enumerate() {
        let id = i as u32 + 1;
        let (board, results) = (board.clone(), results.clone());
        sim.client(
            format!("c{id}"),
            client_host(
                id,
                spec.clone(),
                board,
                results,
                lines.clone(),
                proxy_done.clone(),
            ),
        );
    }

    // Apply faults between steps, each healing itself.
    let mut pending: Vec<(Duration, bool, L2Fault)> = Vec::new();
    for (at, f) in &faults {
        pending.push((*at, true, f.clone()));
        let heal = match f {
            L2Fault::Crash(d)
            | L2Fault::SilentDeath(d)
            | L2Fault::Partition(d)
            | L2Fault::Hold(d)
            | L2Fault::LinkFailures(d) => Some(*d),
            L2Fault::Drain(_) | L2Fault::PasswordChange { .. } => None,
        };
        if let Some(d) = heal {
            pending.push((*at + d, false, f.clone()));
        }
    }
    pending.sort_by_key(|(at, start, _)| (*at, !*start));
    let client_names: Vec<String> = (1..=sc.clients.len()).map(|i| format!("c{i}")).collect();
    let mut drained_at = None;
    let mut link_failures = Vec::new();
    let mut broker_down = 0u32;
    let mut error = None;
    let mut next = 0;
    // Long enough for warren's idle timers and for the broker to drop half-open
    // connections (turmoil loses a FIN sent into a partition for good).
    let settle = sc
        .hub
        .pool_idle_timeout
        .max(sc.hub.upstream_idle_timeout)
        .max(sc.broker.handshake_timeout)
        .max(Duration::from_secs(u64::from(sc.broker.heartbeat) * 2))
        + close_timeout
        + Duration::from_secs(2);
    let mut settle_from: Option<Duration> = None;
    let mut password_changes: Vec<(Duration, String, String)> = Vec::new();
    let mut excl_clear = false;
    let mut leak = None;
    loop {
        let t = sim.elapsed();
        while next < pending.len() && pending[next].0 <= t {
            let (_, start, f) = pending[next].clone();
            next += 1;
            log.push(format!(
                "{} {} {f:?}",
                crate::trace::stamp(t),
                if start { "fault" } else { "heal" }
            ));
            match (f, start) {
                (L2Fault::Crash(_), true) => {
                    broker_down += 1;
                    sim.crash("broker");
                    // The process is gone, and its state with it.
                    lock(&broker).restart();
                }
                (L2Fault::Crash(_), false) => {
                    broker_down -= 1;
                    if broker_down == 0 {
                        sim.bounce("broker");
                    }
                }
                (L2Fault::SilentDeath(_), true) => {
                    broker_down += 1;
                    sim.partition("proxy", "broker");
                    sim.crash("broker");
                    lock(&broker).restart();
                }
                (L2Fault::SilentDeath(_), false) => {
                    broker_down -= 1;
                    sim.repair("proxy", "broker");
                    if broker_down == 0 {
                        sim.bounce("broker");
                    }
                }
                (L2Fault::Partition(_), true) => sim.partition("proxy", "broker"),
                (L2Fault::Partition(_), false) => sim.repair("proxy", "broker"),
                (L2Fault::Hold(_), true) => sim.hold("proxy", "broker"),
                (L2Fault::Hold(_), false) => sim.release("proxy", "broker"),
                (L2Fault::LinkFailures(d), true) => {
                    link_failures.push((t, t + d));
                    sim.set_link_fail_rate("proxy", "broker", 0.02);
                    for c in &client_names {
                        sim.set_link_fail_rate(c.as_str(), "proxy", 0.01);
                    }
                }
                (L2Fault::LinkFailures(_), false) => {
                    sim.set_link_fail_rate("proxy", "broker", 0.0);
                    for c in &client_names {
                        sim.set_link_fail_rate(c.as_str(), "proxy", 0.0);
                    }
                }
                (L2Fault::Drain(_), _) => {
                    drained_at = Some(t);
                    shutdown.drain.cancel();
                }
                (L2Fault::PasswordChange { user, password }, _) => {
                    let old = sc
                        .broker
                        .users
                        .iter()
                        .find(|(u, _)| *u == user)
                        .map(|(_, p)| p.clone())
                        .unwrap_or_default();
                    password_changes.push((t, user.clone(), old));
                    if broker_down > 0 {
                        // Changed elsewhere in the cluster; this node publishes nothing.
                        lock(&broker).set_password(&user, &password);
                    } else {
                        lock(&admin.changes).push((user, password));
                        admin.bell.notify_one();
                    }
                }
            }
        }
        let clients_done = match sim.step() {
            Ok(done) => done,
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        };
        if !clients_done || next < pending.len() {
            continue;
        }
        let t = sim.elapsed();
        let quiet_since = *settle_from.get_or_insert(t);
        if let Some(d) = drained_at {
            // A drain gets until its bound to finish; then there is nothing left to settle.
            let bound = d + drain_timeout + close_timeout * 3 + Duration::from_secs(1);
            if lock(&proxy_done).is_some() || t >= bound {
                break;
            }
            continue;
        }
        // Leaks, as the broker sees them: once every client is gone and warren's idle timers
        // have run, warren must hold no connection (hence no channel, no exclusive queue).
        // The event feed stays for as long as warren runs: its connection and its queue are
        // not leaks (one of it, in event mode).
        let strays = |b: &Broker| {
            let feed = b.feed_conns();
            let keep = usize::from(sc.net.events);
            let mut conns: Vec<ConnId> = b
                .connection_ids()
                .into_iter()
                .filter(|c| !feed.contains(c))
                .collect();
            conns.extend(feed.iter().skip(keep));
            let queues: Vec<String> = b
                .exclusive_queues()
                .into_iter()
                .filter(|(_, c)| !feed.contains(c))
                .map(|(n, _)| n)
                .collect();
            (conns, queues)
        };
        excl_clear |= strays(&lock(&broker)).1.is_empty();
        if t >= quiet_since + settle {
            let b = lock(&broker);
            let (conns, queues) = strays(&b);
            if !excl_clear {
                leak = Some(format!(
                    "exclusive queues {queues:?} stayed on the broker after every client left (B5)"
                ));
            } else if !conns.is_empty() {
                leak = Some(format!(
                    "the broker still has {} connections ({} channels in all) from warren {}s after every client left, besides its event feed",
                    conns.len(),
                    b.channel_count(),
                    settle.as_secs()
                ));
            }
            break;
        }
    }
    let elapsed = sim.elapsed();
    drop(sim);
    if let Some(l) = &lines {
        let mut l = std::mem::take(&mut *lock(l));
        for line in &log[1..] {
            l.push((Duration::ZERO, u64::MAX, line.clone()));
        }
        l.sort_by_key(|(t, n, _)| (*t, *n));
        log.extend(
            l.into_iter()
                .map(|(t, _, s)| format!("{} {s}", crate::trace::stamp(t))),
        );
    }

    let mut violations = Vec::new();
    let mut v = |at: Duration, invariant: Invariant, detail: String| {
        violations.push(Violation {
            at,
            invariant,
            detail,
        });
    };
    if let Some(e) = error {
        v(
            elapsed,
            Invariant::Hang,
            format!("the simulation did not finish: {e}"),
        );
    }
    if let Some(l) = leak {
        v(elapsed, Invariant::ChannelLeak, l);
    }
    let results = std::mem::take(&mut *lock(&results));
    let disturbed = |from: Duration, to: Duration| {
        link_failures
            .iter()
            .any(|(a, b)| from <= *b + Duration::from_secs(10) && to >= *a)
    };
    let healed = pending
        .iter()
        .filter(|(_, _, f)| f.is_network())
        .map(|(at, _, _)| *at)
        .max()
        .unwrap_or_default();
    let reconnect_margin = sc.hub.backoff.max + sc.hub.connect_timeout + Duration::from_secs(2);
    let mut finished_ids = Vec::new();
    for r in &results {
        let c = &r.client;
        finished_ids.push(c.id);
        let kind = c.spec.kind;
        for x in &c.violations {
            let inv = if x.contains("order broken") {
                Invariant::Order
            } else if x.contains("exclusive queue") {
                Invariant::Exclusive
            } else {
                Invariant::Routing
            };
            v(r.ended_at, inv, format!("c{} ({kind}): {x}", c.id));
        }
        let Some((_, end)) = &c.end else {
            v(
                r.ended_at,
                Invariant::Hang,
                format!("c{} ({kind}) never finished: {}", c.id, c.waiting_for()),
            );
            continue;
        };
        log.push(format!(
            "{} c{} ({kind}) {end}",
            crate::trace::stamp(r.ended_at),
            c.id
        ));
        let wrong_login = c.spec.password == "wrong" || c.spec.vhost != "/";
        // Its password was changed before it ended: refused like a wrong one from then on.
        let revoked = password_changes
            .iter()
            .any(|(t, u, old)| *t <= r.ended_at && c.spec.user == *u && c.spec.password == *old);
        let misbehaved = c.misbehaviour();
        let shaky = disturbed(r.start, r.ended_at);
        let paused = c
            .spec
            .script
            .iter()
            .any(|st| matches!(st, Step::StopReading | Step::Stall(_)));
        let ok = match end {
            End::Finished | End::Left => !wrong_login,
            End::Closed(code, _) => {
                let code = *code;
                if let Some(m) = misbehaved {
                    m.expected_code() == Some(code) || code == reply::CONNECTION_FORCED
                } else if wrong_login || revoked {
                    matches!(
                        code,
                        reply::ACCESS_REFUSED | reply::NOT_ALLOWED | reply::CONNECTION_FORCED
                    )
                } else {
                    code == reply::CONNECTION_FORCED
                }
            }
            End::Dropped => {
                shaky
                    || paused
                    || ((c.spec.password == "wrong" || revoked) && !c.spec.failure_close)
                    || c.spec.opening != crate::client::Opening::Normal
            }
            // RabbitMQ resets the socket of a login it refuses without a close.
            End::Broken => {
                shaky
                    || paused
                    || ((c.spec.password == "wrong" || revoked) && !c.spec.failure_close)
            }
            // A client that stopped reading or froze is cut off (B9) or times out (B10).
            End::TimedOut => shaky || paused,
            // A draining warren refuses; so does a link that turmoil fails mid-connect.
            End::Refused => drained_at.is_some() || shaky,
        };
        if !ok {
            v(
                r.ended_at,
                Invariant::ClientOutcome,
                format!("c{} ({kind}) {end}", c.id),
            );
        }
        // After every fault healed (and a backoff), warren must work again.
        let late = faults.iter().any(|(_, f)| f.is_network())
            && drained_at.is_none()
            && r.start > healed + reconnect_margin
            && !wrong_login
            && !revoked
            && misbehaved.is_none()
            && !paused
            && c.spec.opening == crate::client::Opening::Normal;
        if late && !matches!(end, End::Finished | End::Left) {
            v(
                r.ended_at,
                Invariant::ClientOutcome,
                format!(
                    "c{} ({kind}) started after the faults healed but ended: {end}",
                    c.id
                ),
            );
        }
    }
    for id in 1..=sc.clients.len() as u32 {
        if !finished_ids.contains(&id) {
            v(elapsed, Invariant::Hang, format!("c{id} never returned"));
        }
    }
    let b = lock(&broker);
    for x in &b.log.violations {
        v(
            Duration::ZERO,
            Invariant::BrokerProtocol,
            format!(
                "the broker got a connection-level error: {} {}",
                x.code, x.text
            ),
        );
    }
    for (_, e) in &b.log.publish_errors {
        v(Duration::ZERO, Invariant::Order, e.clone());
    }
    // Without network faults between them, warren must keep the broker's heartbeat monitor
    // fed (B10).
    let network_faults = faults.iter().any(|(_, f)| f.is_network());
    if !network_faults && !b.log.peer_timeouts.is_empty() {
        v(
            elapsed,
            Invariant::Heartbeat,
            format!(
                "the broker dropped {} connection(s) for missed heartbeats from warren",
                b.log.peer_timeouts.len()
            ),
        );
    }
    for (_, o) in &b.log.confirmed {
        let Some(r) = results.iter().find(|r| r.client.id == o.client) else {
            continue;
        };
        let c = &r.client;
        if c.acked.contains(&(o.channel, o.seq)) || c.nacked.contains(&(o.channel, o.seq)) {
            continue;
        }
        if matches!(c.end, Some((_, End::Finished)))
            && !c.channel_closes.iter().any(|(ch, _)| *ch == o.channel)
        {
            v(
                r.ended_at,
                Invariant::ConfirmLost,
                format!(
                    "c{} finished without the confirm the broker sent for [{o}]",
                    c.id
                ),
            );
        }
    }
    drop(b);
    if let Some(t) = drained_at {
        let bound = t + drain_timeout + close_timeout * 3 + Duration::from_millis(200);
        match *lock(&proxy_done) {
            Some((at, ok)) => {
                log.push(format!(
                    "{} proxy returned (ok={ok})",
                    crate::trace::stamp(at)
                ));
                if at > bound {
                    v(
                        at,
                        Invariant::Drain,
                        format!(
                            "Server::run returned at {}, after the drain bound {}",
                            crate::trace::stamp(at),
                            crate::trace::stamp(bound)
                        ),
                    );
                }
                if !ok {
                    v(
                        at,
                        Invariant::Drain,
                        "Server::run returned an error after the drain".into(),
                    );
                }
            }
            None => v(
                elapsed,
                Invariant::Drain,
                "Server::run never returned after the drain".into(),
            ),
        }
    }
    // B2: once warren knows of a password change, the old password does not log in. Here
    // only without network faults (layer 1 follows the event through faults): in event mode
    // the event reaches warren within moments, in age mode trust ends `credentials_ttl`
    // after the change.
    let mut coverage: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut count = |what: &'static str| *coverage.entry(what).or_default() += 1;
    count("run");
    if sc.net.events {
        count("event mode");
    }
    for (t, user, old) in &password_changes {
        count("fault: password change");
        let slack = Duration::from_secs(1);
        let known = *t
            + slack
            + if sc.net.events {
                Duration::ZERO
            } else {
                sc.net.credentials_ttl
            };
        for r in &results {
            let c = &r.client;
            if c.spec.user != *user || c.spec.password != *old {
                continue;
            }
            count(match (r.opened, r.start_ok) {
                (Some(_), Some(s)) if s > *t => "leaked password admitted after the change",
                (Some(_), _) => "old password admitted before the change",
                (None, Some(s)) if s > *t => "old password refused after the change",
                (None, _) => "old password not admitted before the change",
            });
            if network_faults {
                continue;
            }
            if let (Some(s), Some(o)) = (r.start_ok, r.opened) {
                if s > known {
                    v(
                        o,
                        Invariant::Revocation,
                        format!(
                            "c{} ({}) logged in as {user} with the password changed at {} ({} mode, known by {}): StartOk at {}, admitted at {}",
                            c.id,
                            c.spec.kind,
                            crate::trace::stamp(*t),
                            if sc.net.events { "event" } else { "age" },
                            crate::trace::stamp(known),
                            crate::trace::stamp(s),
                            crate::trace::stamp(o)
                        ),
                    );
                }
            }
        }
    }
    for r in &results {
        if r.client.spec.kind == "new-password" {
            count(if r.opened.is_some() {
                "new password admitted"
            } else {
                "new password not admitted"
            });
        }
        for i in &r.client.intrusions {
            count(match i.refused {
                Some(405) => "intrusion refused 405",
                Some(404) => "intrusion refused 404",
                Some(_) => "intrusion refused other",
                None => "intrusion answered",
            });
        }
    }
    let (locked, routed) = {
        let b = lock(&broker);
        let routed = b.log.events.iter().filter(|(_, _, n)| *n > 0).count() as u64;
        (b.log.locked_refusals, routed)
    };
    for (what, n) in [
        ("broker refused 405", locked),
        ("password change event routed to a feed", routed),
    ] {
        if n > 0 {
            *coverage.entry(what).or_default() += n;
        }
    }
    let clients = results
        .iter()
        .map(|r| L2Client {
            id: r.client.id,
            kind: r.client.spec.kind,
            end: r.client.end.clone().map(|(_, e)| e),
            write_failed_at: r.write_failed_at,
        })
        .collect();
    L2Report {
        seed,
        violations,
        log,
        elapsed,
        clients,
        coverage,
    }
}
