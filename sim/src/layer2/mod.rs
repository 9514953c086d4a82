//! Layer 2: the real runtime under turmoil.
//!
//! `warren_runtime::Server` runs unchanged as host `proxy` over
//! [`TurmoilNetwork`](crate::turmoil_net::TurmoilNetwork); host `broker` runs the same sans-IO
//! [`Broker`](crate::broker::Broker) as layer 1 behind turmoil TCP; every client is a turmoil
//! client host driving a [`FakeClient`](crate::client::FakeClient) over a real (simulated)
//! socket. Faults are turmoil's own: `crash`/`bounce` of the broker, `partition` (+ `crash` =
//! silent death), `hold`/`release`, `set_link_fail_rate`, and the drain token of
//! [`Shutdown`](warren_runtime::Shutdown).
//!
//! A layer-2 scenario is the layer-1 scenario of the same seed, mapped onto the runtime's
//! configuration and turmoil's faults, minus what turmoil cannot express. Checked: every
//! client finished or was closed with a proper code (no hang: the simulation must finish),
//! the broker never saw a connection-level protocol error, order and routing as seen by
//! clients and broker, confirms the broker sent reached finished clients, clients arriving
//! after the faults healed work again, and a drain returns within the runtime's bound.
//!
//! # Layout
//!
//! This file holds the public face (options, faults, the report), the mapping of a layer-1
//! scenario onto the runtime's configuration and turmoil's faults, and [`run_scenario`] as a
//! few named steps. `hosts` is what runs inside turmoil (the broker host, warren, the client
//! hosts), `drive` steps the simulation and applies the faults, and `verdict` checks the run
//! once it stopped.

use crate::check::Violation;
use crate::client::End;
use crate::plan::Fault;
use crate::scenario::Scenario;
use crate::world::credentials;
use hosts::Shared;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use verdict::{Run, Verdict};
use warren_runtime::config::{Config, UpstreamUrl};

mod drive;
mod hosts;
mod verdict;

/// Port warren listens on inside the simulation.
pub const PROXY_PORT: u16 = 5673;
/// Port the scripted broker listens on.
pub const BROKER_PORT: u16 = 5672;

/// When `Server::run` returned, and whether it returned `Ok`.
type ProxyDone = Arc<Mutex<Option<(Duration, bool)>>>;

/// Frame lines from inside the hosts, stamped with simulation time.
type Lines = Arc<Mutex<Vec<(Duration, u64, String)>>>;

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
        extra_exchange_types: hub.extra_exchange_types.clone(),
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
    let drain_timeout = drain_timeout(&faults);
    let config = config(&sc, drain_timeout, opts);
    let close_timeout = config.hub_config(String::new()).close_timeout;
    let mut sim = simulation(seed, opts);
    let shared = Shared::new(&sc, opts.trace);
    let mut log = vec![format!("seed {seed} plan: {}", sc.plan)];
    hosts::add(&mut sim, &sc, &config, &shared);
    let pending = drive::schedule(&faults);
    let driven = drive::drive(
        &mut sim,
        &sc,
        &shared,
        &pending,
        drain_timeout,
        close_timeout,
        &mut log,
    );
    let elapsed = sim.elapsed();
    drop(sim);
    merge_trace(&mut log, shared.lines.as_ref());
    let results = std::mem::take(&mut *lock(&shared.results));
    let run = Run {
        sc: &sc,
        faults: &faults,
        pending: &pending,
        driven: &driven,
        drain_timeout,
        close_timeout,
        elapsed,
    };
    let Verdict {
        violations,
        coverage,
    } = verdict::check(&run, &shared, &results, &mut log);
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

/// How long a drain may take: the drain fault's timeout, else 2 s.
fn drain_timeout(faults: &[(Duration, L2Fault)]) -> Duration {
    faults
        .iter()
        .find_map(|(_, f)| match f {
            L2Fault::Drain(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(Duration::from_secs(2))
}

/// The runtime's configuration for a run: the scenario's, with the run's client queue bound
/// and a one-second slow-client timeout.
fn config(sc: &Scenario, drain_timeout: Duration, opts: &L2Options) -> Config {
    let mut config = runtime_config(sc, drain_timeout);
    config.client_queue_bytes = opts.client_queue_bytes;
    // A client over the bound that reads nothing for a second is slow (B9's rule).
    config.slow_client_timeout = Duration::from_secs(1);
    config
}

/// turmoil, seeded with the scenario's seed.
fn simulation<'a>(seed: u64, opts: &L2Options) -> turmoil::Sim<'a> {
    turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(opts.limit)
        .tick_duration(opts.tick)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(3))
        .tcp_capacity(opts.tcp_capacity)
        .build()
}

/// The frame lines recorded inside the hosts, merged in time order with the fault lines
/// already in `log` (the first line, the plan, stays first).
fn merge_trace(log: &mut Vec<String>, lines: Option<&Lines>) {
    if let Some(l) = lines {
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
}
