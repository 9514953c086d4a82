//! A scenario: everything one run needs, drawn from its seed — configurations of warren and
//! of the fake broker, network latencies, the clients and their scripts, and the fault plan.

use crate::broker::BrokerConfig;
use crate::client::{ClientSpec, Intrusion, Misbehaviour, Opening, Step, Target};
use crate::plan::{Fault, FaultPlan, FaultProfile};
use crate::slow::{ReadPace, LARGE_PUBLISHER};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;
use warren_core::handshake::HandshakeConfig;
use warren_core::hub::{BackoffConfig, HubConfig, Placement};

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
        s
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

/// Builds client scripts from a random generator.
struct Builder<'a> {
    rng: &'a mut ChaCha8Rng,
    clients: Vec<ClientSpec>,
    next_dynamic: u32,
}

impl Builder<'_> {
    fn dynamic_slot(&mut self) -> u32 {
        let s = self.next_dynamic;
        if self.next_dynamic < NAMED + DYNAMIC - 1 {
            self.next_dynamic += 1;
        }
        s
    }

    fn named_slot(&mut self) -> u32 {
        self.rng.random_range(0..NAMED)
    }

    fn size(&mut self) -> usize {
        match self.rng.random_range(0..100u32) {
            0..=69 => self.rng.random_range(18..=400),
            70..=89 => self.rng.random_range(400..=5000),
            90..=98 => self.rng.random_range(5000..=40_000),
            // Above the 64 KiB max_message_size: warren closes the channel with 406.
            _ => 70_000,
        }
    }

    fn spec(&mut self, kind: &'static str, start: std::time::Duration, script: Vec<Step>) {
        let mut c = ClientSpec::guest(kind, start, script);
        c.frame_max = pick(self.rng, &[4096, 8192, 131_072, 131_072]);
        c.heartbeat = match self.rng.random_range(0..10u32) {
            0 => Some(0),
            1..=2 => Some(self.rng.random_range(1..=3)),
            _ => None,
        };
        c.blocked_cap = self.rng.random_bool(0.8);
        c.failure_close = self.rng.random_bool(0.8);
        c.amqplain = self.rng.random_bool(0.2);
        if self.rng.random_bool(0.2) {
            // A second tenant: its own hub and upstreams, the same queues.
            c.user = "alice".into();
            c.password = "wonderland".into();
        }
        self.clients.push(c);
    }

    fn ending(&mut self, script: &mut Vec<Step>, ch: u16) {
        if self.rng.random_bool(0.6) {
            script.push(Step::CloseChannel(ch));
        }
        match self.rng.random_range(0..10u32) {
            0 => script.push(Step::Drop),
            _ => script.push(Step::CloseConnection),
        }
    }

    fn publisher(&mut self, start: Duration, confirm: bool) {
        let ch = self.rng.random_range(1..=3);
        let mut s = vec![Step::Open(ch)];
        let named = self.rng.random_bool(0.7);
        let slot = if named {
            let slot = self.named_slot();
            s.push(Step::Declare {
                ch,
                slot,
                exclusive: false,
            });
            slot
        } else {
            // A dynamic slot: some consumer may or may not have posted a queue there.
            self.rng
                .random_range(NAMED..self.next_dynamic.max(NAMED + 1))
        };
        if confirm {
            s.push(Step::Confirm(ch));
        }
        let n = self.rng.random_range(1..=20);
        let mandatory = self.rng.random_bool(0.15);
        for _ in 0..n {
            let size = self.size();
            s.push(Step::Publish {
                ch,
                to: Target::Slot(slot),
                size,
                mandatory,
            });
            if self.rng.random_bool(0.5) {
                let d = ms(self.rng, 0, 400);
                s.push(Step::Sleep(d));
            }
        }
        if confirm {
            s.push(Step::WaitConfirms(ch));
        }
        self.ending(&mut s, ch);
        self.spec(
            if confirm {
                "confirm-publisher"
            } else {
                "publisher"
            },
            start,
            s,
        );
    }

    fn consumer(&mut self, start: Duration) {
        let ch = self.rng.random_range(1..=3);
        let mut s = vec![Step::Open(ch)];
        let exclusive = self.rng.random_bool(0.5);
        let slot = if exclusive {
            self.dynamic_slot()
        } else {
            self.named_slot()
        };
        s.push(Step::Declare {
            ch,
            slot,
            exclusive,
        });
        let prefetch = self.rng.random_range(0..=10);
        s.push(Step::Qos(ch, prefetch));
        let nack_every = if self.rng.random_bool(0.3) {
            self.rng.random_range(2..=5)
        } else {
            0
        };
        s.push(Step::Consume {
            ch,
            slot,
            no_ack: self.rng.random_bool(0.2),
        });
        let d = ms(self.rng, 500, 15_000);
        s.push(Step::Sleep(d));
        if self.rng.random_bool(0.2) {
            s.push(Step::Recover(ch));
            let d = ms(self.rng, 100, 2000);
            s.push(Step::Sleep(d));
        }
        if self.rng.random_bool(0.7) {
            s.push(Step::Cancel(ch));
        }
        self.ending(&mut s, ch);
        self.spec("consumer", start, s);
        if let Some(c) = self.clients.last_mut() {
            c.nack_every = nack_every;
        }
        if exclusive {
            // Someone publishes to it.
            let p_start = start + ms(self.rng, 50, 2000);
            let n = self.rng.random_range(1..=15);
            let pch = self.rng.random_range(1..=2);
            let mut p = vec![Step::Open(pch)];
            let confirm = self.rng.random_bool(0.5);
            if confirm {
                p.push(Step::Confirm(pch));
            }
            for _ in 0..n {
                let size = self.size();
                p.push(Step::Publish {
                    ch: pch,
                    to: Target::Slot(slot),
                    size,
                    mandatory: false,
                });
                let d = ms(self.rng, 0, 300);
                p.push(Step::Sleep(d));
            }
            if confirm {
                p.push(Step::WaitConfirms(pch));
            }
            self.ending(&mut p, pch);
            self.spec("feeder", p_start, p);
        }
    }

    fn getter(&mut self, start: Duration) {
        let ch = 1;
        let slot = self.named_slot();
        let mut s = vec![
            Step::Open(ch),
            Step::Declare {
                ch,
                slot,
                exclusive: false,
            },
        ];
        for _ in 0..self.rng.random_range(1..=6) {
            s.push(Step::Get { ch, slot });
            let d = ms(self.rng, 0, 500);
            s.push(Step::Sleep(d));
        }
        self.ending(&mut s, ch);
        self.spec("getter", start, s);
    }

    fn multi_channel(&mut self, start: Duration) {
        let k = self.rng.random_range(2..=6);
        let mut s = Vec::new();
        let chans: Vec<u16> = (1..=k).collect();
        for &ch in &chans {
            s.push(Step::Open(ch));
        }
        let slot = self.named_slot();
        s.push(Step::Declare {
            ch: 1,
            slot,
            exclusive: false,
        });
        for round in 0..self.rng.random_range(1..=4) {
            for &ch in &chans {
                let size = self.size();
                s.push(Step::Publish {
                    ch,
                    to: Target::Slot(slot),
                    size,
                    mandatory: false,
                });
            }
            if round % 2 == 1 {
                let ch = chans[self.rng.random_range(0..chans.len())];
                s.push(Step::CloseChannel(ch));
                s.push(Step::Open(ch));
            }
        }
        for &ch in &chans {
            if self.rng.random_bool(0.5) {
                s.push(Step::CloseChannel(ch));
            }
        }
        s.push(Step::CloseConnection);
        self.spec("multi-channel", start, s);
    }

    fn channel_error(&mut self, start: Duration) {
        let slot = self.named_slot();
        let s = vec![
            Step::Open(1),
            Step::Publish {
                ch: 1,
                to: Target::Exchange("missing-exchange".into(), "rk".into()),
                size: 40,
                mandatory: false,
            },
            Step::ExpectChannelClose(1),
            Step::Open(1),
            Step::Declare {
                ch: 1,
                slot,
                exclusive: false,
            },
            Step::Publish {
                ch: 1,
                to: Target::Slot(slot),
                size: 60,
                mandatory: false,
            },
            Step::CloseConnection,
        ];
        self.spec("channel-error", start, s);
    }

    fn tx_client(&mut self, start: Duration) {
        let slot = self.named_slot();
        let s = vec![
            Step::Open(1),
            Step::TxSelect(1),
            Step::Publish {
                ch: 1,
                to: Target::Slot(slot),
                size: 100,
                mandatory: false,
            },
            Step::TxCommit(1),
            Step::CloseConnection,
        ];
        self.spec("tx", start, s);
    }

    /// Publishes to a missing exchange and closes the channel before the 404 arrives: the
    /// channel looks clean, is fenced for recycling, and the fence must catch the error.
    fn fence_failure(&mut self, start: Duration) {
        let s = vec![
            Step::Open(1),
            Step::Publish {
                ch: 1,
                to: Target::Exchange("missing-exchange".into(), "rk".into()),
                size: 30,
                mandatory: false,
            },
            Step::CloseChannel(1),
            Step::UpdateSecret,
            Step::Open(1),
            Step::CloseConnection,
        ];
        self.spec("fence-failure", start, s);
    }

    /// Several consumers bind their own exclusive queues to one fanout exchange; a publisher
    /// publishes to the exchange, so every consumer gets a copy.
    fn fanout(&mut self, start: Duration) {
        let n = self.rng.random_range(1..=3);
        let exchange = "fx".to_owned();
        for i in 0..n {
            let slot = self.dynamic_slot();
            let s = vec![
                Step::Open(1),
                Step::ExchangeDeclare {
                    ch: 1,
                    name: exchange.clone(),
                    kind: "fanout".into(),
                },
                Step::Declare {
                    ch: 1,
                    slot,
                    exclusive: true,
                },
                Step::Bind {
                    ch: 1,
                    slot,
                    exchange: exchange.clone(),
                    rk: String::new(),
                },
                Step::Consume {
                    ch: 1,
                    slot,
                    no_ack: false,
                },
                Step::Sleep(Duration::from_secs(4)),
                Step::CloseConnection,
            ];
            self.spec("fanout-consumer", start + Duration::from_millis(50 * i), s);
        }
        let mut p = vec![
            Step::Open(2),
            Step::ExchangeDeclare {
                ch: 2,
                name: exchange.clone(),
                kind: "fanout".into(),
            },
        ];
        for _ in 0..self.rng.random_range(1..=10) {
            let size = self.size();
            p.push(Step::Publish {
                ch: 2,
                to: Target::Exchange(exchange.clone(), String::new()),
                size,
                mandatory: false,
            });
        }
        p.push(Step::CloseConnection);
        self.spec("fanout-publisher", start + Duration::from_millis(500), p);
    }

    /// Drops its socket in the middle of a publish (B8: nothing half-sent goes upstream).
    fn half_publisher(&mut self, start: Duration) {
        let slot = self.named_slot();
        let s = vec![
            Step::Open(1),
            Step::Publish {
                ch: 1,
                to: Target::Slot(slot),
                size: 50,
                mandatory: false,
            },
            Step::PartialPublishAndDrop(1),
        ];
        self.spec("half-publisher", start, s);
    }

    fn odd_opening(&mut self, start: Duration) {
        let mut c = ClientSpec::guest("odd-opening", start, vec![Step::CloseConnection]);
        c.opening = if self.rng.random_bool(0.5) {
            Opening::Silent
        } else {
            Opening::WrongHeader
        };
        self.clients.push(c);
    }

    fn exclusive_dropper(&mut self, start: Duration) {
        let slot = self.dynamic_slot();
        let s = vec![Step::Open(1), Step::DeclareAndDrop { ch: 1, slot }];
        self.spec("exclusive-dropper", start, s);
    }

    fn churner(&mut self, start: Duration) {
        let slot = self.named_slot();
        let mut s = vec![Step::Open(1)];
        if self.rng.random_bool(0.3) {
            s.push(Step::Declare {
                ch: 1,
                slot,
                exclusive: false,
            });
        }
        s.push(Step::Publish {
            ch: 1,
            to: Target::Slot(slot),
            size: 100,
            mandatory: false,
        });
        if self.rng.random_bool(0.8) {
            s.push(Step::CloseChannel(1));
        }
        s.push(if self.rng.random_bool(0.85) {
            Step::CloseConnection
        } else {
            Step::Drop
        });
        self.spec("churner", start, s);
    }

    /// Tries what RabbitMQ refuses across connections on `owner`'s exclusive queue in
    /// `slot`, reopening its channel after each refusal, then publishes to it (allowed).
    fn intruder(&mut self, owner: &ClientSpec, slot: u32) {
        let start = owner.start + ms(self.rng, 100, 3000);
        let mut s = vec![Step::Open(1)];
        for _ in 0..self.rng.random_range(2..=5) {
            let op = Intrusion::ALL[self.rng.random_range(0..Intrusion::ALL.len())];
            s.push(Step::Intrude { ch: 1, slot, op });
            s.push(Step::Open(1));
            let d = ms(self.rng, 0, 400);
            s.push(Step::Sleep(d));
        }
        s.push(Step::Publish {
            ch: 1,
            to: Target::Slot(slot),
            size: 60,
            mandatory: false,
        });
        self.ending(&mut s, 1);
        let mut c = ClientSpec::guest("intruder", start, s);
        c.user.clone_from(&owner.user);
        c.password.clone_from(&owner.password);
        c.vhost.clone_from(&owner.vhost);
        c.frame_max = pick(self.rng, &[4096, 131_072]);
        c.heartbeat = owner.heartbeat;
        c.amqplain = self.rng.random_bool(0.2);
        self.clients.push(c);
    }

    /// The clients around a password change at `at`: workers of that user connected before
    /// it (they keep working), clients that go on using the old password (before, around and
    /// long after the change), and clients with the new one.
    fn password_change(&mut self, at: Duration, ttl: Duration) {
        let rotated = |c: &mut ClientSpec, password: &str| {
            c.user = ROTATED_USER.into();
            c.password = password.into();
        };
        for _ in 0..self.rng.random_range(0..=2) {
            let start = at.saturating_sub(ms(self.rng, 300, 3000));
            let slot = self.named_slot();
            let mut s = vec![
                Step::Open(1),
                Step::Declare {
                    ch: 1,
                    slot,
                    exclusive: false,
                },
                Step::Consume {
                    ch: 1,
                    slot,
                    no_ack: false,
                },
            ];
            // Across the change, then publishing on the connection it already has.
            let d = at.saturating_sub(start) + ms(self.rng, 200, 4000);
            s.push(Step::Sleep(d));
            for _ in 0..self.rng.random_range(1..=4) {
                s.push(Step::Publish {
                    ch: 1,
                    to: Target::Slot(slot),
                    size: 80,
                    mandatory: false,
                });
            }
            s.push(Step::Sleep(ms(self.rng, 0, 500)));
            self.ending(&mut s, 1);
            self.spec("rotation-worker", start, s);
            if let Some(c) = self.clients.last_mut() {
                rotated(c, OLD_PASSWORD);
            }
        }
        let short = |b: &mut Self, kind: &'static str, start: Duration, password: &str| {
            let slot = b.named_slot();
            let s = vec![
                Step::Open(1),
                Step::Publish {
                    ch: 1,
                    to: Target::Slot(slot),
                    size: 50,
                    mandatory: false,
                },
                Step::CloseConnection,
            ];
            b.spec(kind, start, s);
            if let Some(c) = b.clients.last_mut() {
                rotated(c, password);
            }
        };
        let leaked = self.rng.random_range(2..=6);
        let window = 2000 + ttl.as_millis() as u64 + 8000;
        for _ in 0..leaked {
            let start = (at + ms(self.rng, 0, window)).saturating_sub(Duration::from_secs(2));
            short(self, "leaked-password", start, OLD_PASSWORD);
        }
        for _ in 0..self.rng.random_range(1..=3) {
            let start = at + ms(self.rng, 100, 15_000);
            short(self, "new-password", start, NEW_PASSWORD);
        }
    }

    /// See [`Scenario::add_large_deliveries`]: readers in slots `first`, `first + 1`,
    /// `first + 2` (fast, steady, stopped).
    fn large_deliveries(
        &mut self,
        at: Duration,
        messages: u32,
        pace: ReadPace,
        first: u32,
        timeout: Duration,
    ) {
        let sizes: Vec<Vec<usize>> = (0..3)
            .map(|_| {
                (0..messages)
                    .map(|_| self.rng.random_range(100 * 1024..=300 * 1024))
                    .collect()
            })
            .collect();
        // Long enough for the steady reader to read everything, with room for faults.
        let steady: usize = sizes[1].iter().sum();
        let reading = pace.every * u32::try_from(steady.div_ceil(pace.bytes)).unwrap_or(u32::MAX);
        let stay = reading + timeout * 2 + Duration::from_secs(3);
        for (r, kind) in ["fast-reader", "steady-reader", "stopped-reader"]
            .into_iter()
            .enumerate()
        {
            let slot = first + r as u32;
            let mut s = vec![
                Step::Open(1),
                Step::Declare {
                    ch: 1,
                    slot,
                    exclusive: false,
                },
                Step::Qos(1, 1),
                Step::Consume {
                    ch: 1,
                    slot,
                    no_ack: false,
                },
            ];
            if r == 2 {
                s.push(Step::StopReading);
            }
            s.extend([Step::Sleep(stay), Step::CloseConnection]);
            self.spec(kind, at, s);
            let frame_max = pick(self.rng, &[4096, 131_072]);
            if let Some(c) = self.clients.last_mut() {
                c.frame_max = frame_max;
                c.read_pace = (r == 1).then_some(pace);
            }
        }
        let mut p = vec![Step::Open(1), Step::Confirm(1)];
        for i in 0..messages as usize {
            for (r, sizes) in sizes.iter().enumerate() {
                p.push(Step::Publish {
                    ch: 1,
                    to: Target::Slot(first + r as u32),
                    size: sizes[i],
                    mandatory: false,
                });
            }
        }
        p.extend([Step::WaitConfirms(1), Step::CloseConnection]);
        self.spec(LARGE_PUBLISHER, at + Duration::from_millis(500), p);
        let slot = first + 2;
        let sweeper = vec![
            Step::Open(1),
            Step::Declare {
                ch: 1,
                slot,
                exclusive: false,
            },
            Step::Consume {
                ch: 1,
                slot,
                no_ack: false,
            },
            Step::Sleep(Duration::from_secs(3)),
            Step::CloseConnection,
        ];
        self.spec(
            "sweeper",
            at + timeout * 2 + Duration::from_secs(3),
            sweeper,
        );
    }

    fn random_client(&mut self, start: Duration) {
        match self.rng.random_range(0..100u32) {
            0..=24 => self.publisher(start, false),
            25..=44 => self.publisher(start, true),
            45..=64 => self.consumer(start),
            65..=72 => self.getter(start),
            73..=78 => self.multi_channel(start),
            79..=82 => self.fanout(start),
            83..=88 => self.channel_error(start),
            89..=90 => self.tx_client(start),
            91 => self.half_publisher(start),
            92..=93 => self.fence_failure(start),
            94 => self.odd_opening(start),
            95..=96 => self.exclusive_dropper(start),
            _ => self.churner(start),
        }
    }

    fn fault_clients(&mut self, at: Duration, fault: &Fault) {
        match *fault {
            Fault::ClientChurn { count, over } => {
                for i in 0..count {
                    let t = at + over * i / count.max(1);
                    self.churner(t);
                }
            }
            Fault::SlowClient => {
                let slot = self.dynamic_slot();
                let s = vec![
                    Step::Open(1),
                    Step::Declare {
                        ch: 1,
                        slot,
                        exclusive: true,
                    },
                    Step::Consume {
                        ch: 1,
                        slot,
                        no_ack: true,
                    },
                    Step::StopReading,
                    Step::Sleep(Duration::from_secs(20)),
                    Step::CloseConnection,
                ];
                self.spec("slow-consumer", at, s);
                let mut p = vec![Step::Open(1)];
                for _ in 0..200 {
                    p.push(Step::Publish {
                        ch: 1,
                        to: Target::Slot(slot),
                        size: 2000,
                        mandatory: false,
                    });
                }
                p.push(Step::CloseConnection);
                self.spec("flooder", at + Duration::from_millis(500), p);
            }
            Fault::StalledClient { duration } => {
                let slot = self.named_slot();
                let s = vec![
                    Step::Open(1),
                    Step::Declare {
                        ch: 1,
                        slot,
                        exclusive: false,
                    },
                    Step::Stall(duration),
                    Step::Publish {
                        ch: 1,
                        to: Target::Slot(slot),
                        size: 50,
                        mandatory: false,
                    },
                    Step::CloseConnection,
                ];
                self.spec("staller", at, s);
            }
            Fault::Misbehaving { kind } => {
                let mut s = vec![Step::Open(1)];
                if kind == Misbehaviour::ConsumerTagReuse {
                    s.push(Step::Declare {
                        ch: 1,
                        slot: 0,
                        exclusive: false,
                    });
                }
                s.push(Step::Misbehave(kind));
                s.push(Step::CloseConnection);
                self.spec("misbehaving", at, s);
            }
            Fault::WrongPassword { failure_close } => {
                let mut c = ClientSpec::guest("wrong-password", at, vec![Step::CloseConnection]);
                c.password = "wrong".into();
                c.failure_close = failure_close;
                self.clients.push(c);
            }
            Fault::WrongVhost => {
                let mut c = ClientSpec::guest("wrong-vhost", at, vec![Step::CloseConnection]);
                c.vhost = "nope".into();
                self.clients.push(c);
            }
            _ => {}
        }
    }
}
