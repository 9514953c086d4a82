//! A scenario: everything one run needs, drawn from its seed — configurations of warren and
//! of the fake broker, network latencies, the clients and their scripts, and the fault plan.
//!
//! # Layout
//!
//! This file holds the scenario and how it is drawn from its seed (warren's and the broker's
//! configurations, the fault plan, and the extra streams of the seed for credentials and
//! large deliveries). The clients' scripts are built in `builder` (ordinary clients) and
//! `fault_clients` (the clients a fault brings along).

use crate::broker::BrokerConfig;
use crate::client::{ClientSpec, Misbehaviour, Step};
use crate::plan::{Fault, FaultPlan, FaultProfile};
use crate::slow::ReadPace;
use builder::Builder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;
use warren_core::handshake::HandshakeConfig;
use warren_core::hub::{BackoffConfig, HubConfig, Placement};

mod builder;
mod fault_clients;

/// Network and driver parameters of the world (what the runtime would decide).
#[derive(Debug, Clone, PartialEq)]
pub struct NetConfig {
    /// One-way latency between clients and the proxy.
    pub client_latency: Duration,
    /// One-way latency between the proxy and the broker.
    pub upstream_latency: Duration,
    /// Bytes a client's kernel buffers hold before warren's own queue grows.
    pub socket_buffer: usize,
    /// Bytes that may wait for a client without it having to make progress
    /// (`client_queue_bytes`, B9): past them its socket must take bytes within
    /// `slow_client_timeout`, past them plus one largest message it is cut off at once.
    pub client_queue_limit: usize,
    /// How long a client over `client_queue_limit` may go without its socket taking a byte
    /// (`slow_client_timeout`).
    pub slow_client_timeout: Duration,
    /// How long a refused login is remembered (B2 negative cache).
    pub auth_cache_ttl: Duration,
    /// How long credentials the broker accepted are trusted without a new login, while no
    /// event feed is up (age mode).
    pub credentials_ttl: Duration,
    /// Event mode: admission follows the broker's event exchange as `guest` on `/`, so a
    /// changed password takes effect when the event arrives rather than after
    /// `credentials_ttl` (B2). The feed's broker connection stays open for the whole run.
    pub events: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            client_latency: Duration::from_millis(1),
            upstream_latency: Duration::from_millis(2),
            socket_buffer: 16 * 1024,
            client_queue_limit: 128 * 1024,
            slow_client_timeout: Duration::from_secs(2),
            auth_cache_ttl: Duration::from_secs(2),
            credentials_ttl: Duration::from_secs(5),
            events: false,
        }
    }
}

/// One run's worth of configuration, clients and faults.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The seed it was drawn from (also seeds the world's own randomness).
    pub seed: u64,
    /// Every hub's configuration.
    pub hub: HubConfig,
    /// The client handshake configuration.
    pub handshake: HandshakeConfig,
    /// The fake broker.
    pub broker: BrokerConfig,
    /// Latencies and driver limits.
    pub net: NetConfig,
    /// Board slots: named (`q0`...) and dynamic (server-named).
    pub board: (usize, usize),
    /// The clients.
    pub clients: Vec<ClientSpec>,
    /// The faults.
    pub plan: FaultPlan,
    /// Hard end of the run (virtual time).
    pub limit: Duration,
}

fn ms(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.random_range(lo..=hi))
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, xs: &[T]) -> T {
    xs[rng.random_range(0..xs.len())]
}

/// Board layout of random scenarios: named queues `q0..q2`, then dynamic slots.
const NAMED: u32 = 3;
const DYNAMIC: u32 = 24;

/// The user whose password a [`Fault::PasswordChange`] changes (only some clients use it).
pub const ROTATED_USER: &str = "bob";
/// Its password at the start.
pub const OLD_PASSWORD: &str = "bob-old";
/// Its password after the change.
pub const NEW_PASSWORD: &str = "bob-new";

/// The exchange type of a broker plugin that some scenarios' brokers have (RabbitMQ's
/// `rabbitmq_consistent_hash_exchange`), and that warren is seldom told of: it must learn it
/// from the broker (B7).
pub const PLUGIN_EXCHANGE_TYPE: &str = "x-consistent-hash";

/// One to three clients that `add` builds, starting within `spread_ms` of a time drawn in
/// the first 15 s, which it returns: clients of a feature that meet at about the same time.
fn a_few_together<'r>(
    b: &mut Builder<'r>,
    spread_ms: u64,
    mut add: impl FnMut(&mut Builder<'r>, Duration),
) -> Duration {
    let at = ms(b.rng, 0, 15_000);
    for _ in 0..b.rng.random_range(1..=3) {
        let start = at + ms(b.rng, 0, spread_ms);
        add(b, start);
    }
    at
}

impl Scenario {
    /// A small quiet scenario with sane defaults and no clients, for hand-written tests.
    #[must_use]
    pub fn empty(seed: u64) -> Self {
        Scenario {
            seed,
            hub: HubConfig {
                upstream_heartbeat: 0,
                connect_timeout: Duration::from_secs(2),
                backoff: BackoffConfig {
                    initial: Duration::from_millis(500),
                    max: Duration::from_secs(4),
                },
                close_timeout: Duration::from_secs(1),
                pool_idle_timeout: Duration::from_secs(3),
                upstream_idle_timeout: Duration::from_secs(4),
                ..HubConfig::default()
            },
            handshake: HandshakeConfig {
                heartbeat: 2,
                timeout: Duration::from_secs(3),
                ..HandshakeConfig::default()
            },
            broker: BrokerConfig {
                heartbeat: 2,
                ..BrokerConfig::default()
            },
            net: NetConfig::default(),
            board: (NAMED as usize, DYNAMIC as usize),
            clients: Vec::new(),
            plan: FaultPlan::none(),
            limit: Duration::from_secs(120),
        }
    }

    /// Draws a whole scenario from `seed`.
    #[must_use]
    pub fn random(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut s = Scenario::empty(seed);
        s.broker = BrokerConfig {
            users: vec![
                ("guest".into(), "guest".into()),
                ("alice".into(), "wonderland".into()),
            ],
            channel_max: pick(&mut rng, &[3, 5, 16, 2047, 2047]),
            frame_max: pick(&mut rng, &[4096, 8192, 131_072]),
            heartbeat: pick(&mut rng, &[0, 1, 2, 3, 5]),
            batch_confirms: rng.random_bool(0.5),
            ..BrokerConfig::default()
        };
        s.hub = HubConfig {
            upstream_frame_max: pick(&mut rng, &[4096, 131_072]),
            upstream_heartbeat: pick(&mut rng, &[0, 0, 1, 2, 4]),
            max_channels_per_upstream: pick(&mut rng, &[2, 4, 65_535, 65_535]),
            max_upstreams: rng.random_range(1..=3),
            placement: if rng.random_bool(0.5) {
                Placement::Fill
            } else {
                Placement::Spread
            },
            connect_timeout: ms(&mut rng, 500, 3000),
            backoff: BackoffConfig {
                initial: ms(&mut rng, 100, 600),
                max: ms(&mut rng, 1000, 4000),
            },
            max_message_size: 64 * 1024,
            client_buffer_limit: 1024 * 1024,
            recycling: rng.random_bool(0.7),
            pool_size: rng.random_range(0..=4),
            pool_idle_timeout: ms(&mut rng, 500, 5000),
            upstream_idle_timeout: ms(&mut rng, 1000, 6000),
            close_timeout: ms(&mut rng, 500, 2000),
            ..HubConfig::default()
        };
        s.handshake = HandshakeConfig {
            frame_max: pick(&mut rng, &[4096, 16_384, 131_072]),
            channel_max: pick(&mut rng, &[8, 2047]),
            heartbeat: rng.random_range(1..=5),
            timeout: Duration::from_secs(3),
        };
        s.net.upstream_latency = ms(&mut rng, 1, 5);
        s.net.client_latency = ms(&mut rng, 1, 3);
        let plan = FaultPlan::random(&mut rng, &FaultProfile::default());
        let mut b = Builder {
            rng: &mut rng,
            clients: Vec::new(),
            next_dynamic: NAMED,
        };
        let n = b.rng.random_range(3..=9);
        for _ in 0..n {
            let start = ms(b.rng, 0, 15_000);
            b.random_client(start);
        }
        for sf in &plan.faults {
            b.fault_clients(sf.at, &sf.fault);
        }
        s.clients = b.clients;
        s.plan = plan;
        s.credential_faults();
        s.large_delivery_faults();
        s.own_queue_on_another_channel();
        s.plugin_exchange_type();
        s.queue_types();
        s
    }

    /// Stream and quorum queues (B7), drawn from a sixth stream of the seed so that adding
    /// them left the rest of every seed's scenario as it was. In some scenarios a few clients
    /// declare [`STREAM_QUEUE`](crate::client::STREAM_QUEUE) or
    /// [`QUORUM_QUEUE`](crate::client::QUORUM_QUEUE) as RabbitMQ requires and consume it
    /// with acks under a per-consumer prefetch; now and then a client declares one and then
    /// misuses it ([`Misbehaviour::QUEUE_TYPE`]): warren knows the type from its confirmed
    /// declare and must close it alone with RabbitMQ's close, its neighbours on the same
    /// broker connection held to the usual checks. Misuses of a queue whose type warren
    /// could not know (declared elsewhere) are not generated: the broker would rightly close
    /// the shared connection, which the checks would have to excuse.
    fn queue_types(&mut self) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x7374_7265_616d_2b71);
        if !rng.random_bool(0.3) {
            return;
        }
        let mut b = Builder {
            rng: &mut rng,
            clients: Vec::new(),
            next_dynamic: NAMED + DYNAMIC,
        };
        let at = a_few_together(&mut b, 200, Builder::typed_user);
        if b.rng.random_bool(0.5) {
            let start = at + ms(b.rng, 300, 1000);
            let kind =
                Misbehaviour::QUEUE_TYPE[b.rng.random_range(0..Misbehaviour::QUEUE_TYPE.len())];
            self.misbehaving(&mut b, start, kind);
        }
        self.clients.extend(b.clients);
    }

    /// A broker plugin's exchange type (B7), drawn from a fifth stream of the seed so that
    /// adding it left the rest of every seed's scenario as it was. In some scenarios the
    /// broker knows [`PLUGIN_EXCHANGE_TYPE`] and a few clients declare it at about the same
    /// time; warren is mostly not told of it (`extra_exchange_types`), so the first of them
    /// makes it ask the broker on a connection of its own while the others wait for the
    /// same answer. Now and then a client declares a type nobody knows among them
    /// ([`Misbehaviour::UnknownExchangeType`](crate::client::Misbehaviour)), so that two
    /// questions are out together.
    fn plugin_exchange_type(&mut self) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x706c_7567_696e_2b2b);
        if !rng.random_bool(0.4) {
            return;
        }
        self.broker.plugin_exchange_types = vec![PLUGIN_EXCHANGE_TYPE.into()];
        if rng.random_bool(0.2) {
            self.hub.extra_exchange_types = vec![PLUGIN_EXCHANGE_TYPE.into()];
        }
        let mut b = Builder {
            rng: &mut rng,
            clients: Vec::new(),
            next_dynamic: NAMED + DYNAMIC,
        };
        let at = a_few_together(&mut b, 100, Builder::plugin_user);
        if b.rng.random_bool(0.3) {
            let start = at + ms(b.rng, 0, 100);
            self.misbehaving(&mut b, start, Misbehaviour::UnknownExchangeType);
        }
        self.clients.extend(b.clients);
    }

    /// A client `b` adds that commits `kind` at `start`, as a fault of the plan.
    fn misbehaving(&mut self, b: &mut Builder<'_>, start: Duration, kind: Misbehaviour) {
        let fault = Fault::Misbehaving { kind };
        b.fault_clients(start, &fault);
        self.plan = std::mem::take(&mut self.plan).with(start, fault);
    }

    /// `user`'s password on the broker as the scenario starts (empty for an unknown user):
    /// what a password change makes the old one.
    #[must_use]
    pub fn initial_password(&self, user: &str) -> String {
        self.broker
            .users
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, p)| p.clone())
            .unwrap_or_default()
    }

    /// Some clients that declare an exclusive queue use it on a second channel (qos,
    /// consume, get, recover and cancel move there), drawn from a fourth stream of the seed so
    /// that adding it left the rest of every seed's scenario as it was. RabbitMQ lets every
    /// channel of the declaring connection use the queue, so warren must open the second
    /// channel on the client's upstream, not by the placement policy or from another
    /// upstream's pool (B3, B5); a 405 there is a violation. Only where an upstream has room
    /// for every client's channels: a client whose upstream is full gets its next channel
    /// elsewhere, where RabbitMQ does refuse its queue (a documented limit).
    fn own_queue_on_another_channel(&mut self) {
        let room = self
            .hub
            .max_channels_per_upstream
            .min(self.broker.channel_max);
        if room < 2047 {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x686f_6d65_2b2b_2b2b);
        for c in &mut self.clients {
            let Some((at, ch)) = c.script.iter().enumerate().find_map(|(i, st)| match st {
                Step::Declare {
                    ch,
                    exclusive: true,
                    ..
                } => Some((i, *ch)),
                _ => None,
            }) else {
                continue;
            };
            let other = ch + 3;
            if !rng.random_bool(0.4) || c.script.contains(&Step::Open(other)) {
                continue;
            }
            for st in &mut c.script[at + 1..] {
                match st {
                    Step::Qos(x, _)
                    | Step::Recover(x)
                    | Step::Cancel(x)
                    | Step::Consume { ch: x, .. }
                    | Step::Get { ch: x, .. }
                        if *x == ch =>
                    {
                        *x = other;
                    }
                    _ => {}
                }
            }
            c.script.insert(at + 1, Step::Open(other));
        }
    }

    /// Large deliveries to readers of every speed (issue 14), drawn from a third stream of
    /// the seed so that adding them left the rest of every seed's scenario as it was.
    fn large_delivery_faults(&mut self) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x6c61_7267_652b_2b2b);
        if !rng.random_bool(0.3) {
            return;
        }
        let at = ms(&mut rng, 1000, 20_000);
        let messages = rng.random_range(1..=3);
        let pace = ReadPace {
            bytes: rng.random_range(2048..=16_384),
            every: ms(&mut rng, 10, 50),
        };
        self.add_large_deliveries(&mut rng, at, messages, pace);
    }

    /// A quiet scenario with only the clients of large deliveries (issue 14) at +1s, for
    /// hand-written tests; the second tenant's login exists, as in random scenarios.
    #[must_use]
    pub fn large_deliveries(seed: u64, messages: u32, pace: ReadPace) -> Self {
        let mut sc = Scenario::empty(seed);
        sc.broker.users.push(("alice".into(), "wonderland".into()));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        sc.add_large_deliveries(&mut rng, Duration::from_secs(1), messages, pace);
        sc
    }

    /// Adds a [`Fault::LargeDeliveries`] at `at`: shrinks `client_queue_bytes` to 64 KiB,
    /// raises `max_message_size` to 384 KiB (above the 100–300 KiB messages), adds three
    /// board slots for the readers' queues, and the readers, the publisher and a late
    /// consumer of the stopped reader's queue (the `sweeper`, which gets its requeued
    /// message).
    pub fn add_large_deliveries(
        &mut self,
        rng: &mut ChaCha8Rng,
        at: Duration,
        messages: u32,
        pace: ReadPace,
    ) {
        self.net.client_queue_limit = 64 * 1024;
        self.hub.max_message_size = self.hub.max_message_size.max(384 * 1024);
        let first = (self.board.0 + self.board.1) as u32;
        self.board.1 += 3;
        self.plan =
            std::mem::take(&mut self.plan).with(at, Fault::LargeDeliveries { messages, pace });
        let mut b = Builder {
            rng,
            clients: Vec::new(),
            next_dynamic: first,
        };
        b.large_deliveries(at, messages, pace, first, self.net.slow_client_timeout);
        self.clients.extend(b.clients);
    }

    /// What the scenario draws from a second stream of the seed, so that adding it left the
    /// rest of every seed's scenario as it was: event or age mode, a password change with
    /// the clients around it, intruders on exclusive queues.
    fn credential_faults(&mut self) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x6576_656e_7473_2b2b);
        self.net.events = rng.random_bool(0.5);
        self.broker
            .users
            .push((ROTATED_USER.into(), OLD_PASSWORD.into()));
        let mut b = Builder {
            rng: &mut rng,
            clients: Vec::new(),
            next_dynamic: NAMED + DYNAMIC,
        };
        // Intruders share the credentials (hence usually the hub, the broker connection) of
        // a client that declares an exclusive queue, and try it after its declare.
        let owners: Vec<(usize, u32)> = self
            .clients
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                c.script.iter().find_map(|st| match st {
                    // The last dynamic slot is shared when they run out: not a clear owner.
                    Step::Declare {
                        slot,
                        exclusive: true,
                        ..
                    } if *slot < NAMED + DYNAMIC - 1 => Some((i, *slot)),
                    _ => None,
                })
            })
            .collect();
        for (i, slot) in owners {
            if b.rng.random_bool(0.35) {
                let owner = self.clients[i].clone();
                b.intruder(&owner, slot);
            }
        }
        if b.rng.random_bool(0.3) {
            let at = ms(b.rng, 2000, 20_000);
            self.plan = std::mem::take(&mut self.plan).with(
                at,
                Fault::PasswordChange {
                    user: ROTATED_USER.into(),
                    password: NEW_PASSWORD.into(),
                },
            );
            b.password_change(at, self.net.credentials_ttl);
        }
        self.clients.extend(b.clients);
    }
}
