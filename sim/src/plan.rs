//! Fault plans: what goes wrong, and when, in one simulated run.
//!
//! The shape follows skys3's cluster simulation: a [`FaultPlan`] is a sorted list of
//! [`ScheduledFault`]s, each a [`Fault`] at an offset from the start. Every fault with a
//! duration heals itself, and [`FaultPlan::healed_by`] says when the last one has; the world
//! runs its final checks only after that, against a healthy system. A plan is drawn from the
//! seed alone ([`FaultPlan::random`]), so replaying a seed replays its faults.
//!
//! Faults that are really extra clients (churn, slow and misbehaving clients, wrong logins)
//! are turned into client scripts when the scenario is built; network and broker faults are
//! applied by the world as the run reaches them.

use crate::client::Misbehaviour;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::fmt;
use std::time::Duration;

/// One thing that goes wrong.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// The broker process exits (sockets closed with FIN, in-flight requests lost) and comes
    /// back empty after `downtime`; dials in between are refused.
    BrokerCrash {
        /// How long it stays down.
        downtime: Duration,
    },
    /// The broker stops answering without closing anything (power loss, VM freeze): only
    /// heartbeats can tell. It comes back empty after `downtime`, resetting old sockets.
    BrokerSilentDeath {
        /// How long it stays silent.
        downtime: Duration,
    },
    /// proxy ↔ broker packets are lost for a while; dials hang. Connections that lost data
    /// are reset when it heals.
    Partition {
        /// How long.
        duration: Duration,
    },
    /// proxy ↔ broker packets are held for a while, then delivered in a burst.
    Hold {
        /// How long.
        duration: Duration,
    },
    /// `count` random connections (client or upstream) are reset within `over`.
    ConnBreaks {
        /// How many.
        count: u32,
        /// Spread over this window.
        over: Duration,
    },
    /// The broker raises a resource alarm (`Connection.Blocked`) for a while.
    Blocked {
        /// How long.
        duration: Duration,
    },
    /// SIGTERM: the proxy drains, giving clients `timeout` to finish.
    Drain {
        /// The drain timeout.
        timeout: Duration,
    },
    /// `count` short-lived clients connect, publish one message and leave within `over`.
    ClientChurn {
        /// How many.
        count: u32,
        /// Spread over this window.
        over: Duration,
    },
    /// A consumer that stops reading while a publisher floods its queue (B9).
    SlowClient,
    /// Deliveries larger than `client_queue_bytes` to readers of every speed (issue 14): a
    /// fast reader, a slow but steady one reading at `pace`, and one that stops reading,
    /// each consuming its own queue with prefetch 1 and acks; a publisher sends `messages`
    /// messages to each queue. The readers that read must never be cut off as slow; the one
    /// that stops must be, within `slow_client_timeout`, and its message requeued (a late
    /// consumer of its queue gets it). Scenarios with it shrink `client_queue_bytes` to
    /// 64 KiB and raise `max_message_size` above the messages (100–300 KiB).
    LargeDeliveries {
        /// Messages per reader.
        messages: u32,
        /// The steady reader's speed.
        pace: crate::slow::ReadPace,
    },
    /// A client that freezes (no reads, writes or heartbeats) for `duration`.
    StalledClient {
        /// How long.
        duration: Duration,
    },
    /// A client that commits a protocol violation (B7).
    Misbehaving {
        /// Which one.
        kind: Misbehaviour,
    },
    /// A client with a wrong password (B2).
    WrongPassword {
        /// Whether it asked for `authentication_failure_close`.
        failure_close: bool,
    },
    /// A client asking for a vhost that does not exist (B2).
    WrongVhost,
    /// `rabbitmqctl change_password user password`: the broker's user table changes and its
    /// event exchange publishes `user.password.changed`. Connections already open stay (as
    /// in RabbitMQ); the old password must not log in any more once warren knows (B2). The
    /// scenario adds clients that go on using the old password (a leaked one) before and
    /// after, and clients with the new one.
    PasswordChange {
        /// Whose password.
        user: String,
        /// The new password.
        password: String,
    },
}

impl Fault {
    /// How long the fault lasts before it heals (zero for instantaneous ones).
    #[must_use]
    pub fn duration(&self) -> Duration {
        match *self {
            Fault::BrokerCrash { downtime } | Fault::BrokerSilentDeath { downtime } => downtime,
            Fault::Partition { duration }
            | Fault::Hold { duration }
            | Fault::Blocked { duration }
            | Fault::StalledClient { duration } => duration,
            Fault::ConnBreaks { over, .. } | Fault::ClientChurn { over, .. } => over,
            Fault::Drain { timeout } => timeout,
            _ => Duration::ZERO,
        }
    }

    /// Whether the broker restarts (empty) when the fault heals.
    #[must_use]
    pub fn restarts_broker(&self) -> bool {
        matches!(
            self,
            Fault::BrokerCrash { .. } | Fault::BrokerSilentDeath { .. }
        )
    }

    /// Whether the fault disturbs the broker or the network under way: what it held or broke
    /// excuses the checks that would otherwise expect it delivered in time.
    #[must_use]
    pub fn disturbs(&self) -> bool {
        self.restarts_broker()
            || matches!(
                self,
                Fault::Partition { .. } | Fault::Hold { .. } | Fault::ConnBreaks { .. }
            )
    }

    /// Whether the fault is carried out by extra clients rather than by the world.
    #[must_use]
    pub fn is_client(&self) -> bool {
        matches!(
            self,
            Fault::ClientChurn { .. }
                | Fault::SlowClient
                | Fault::LargeDeliveries { .. }
                | Fault::StalledClient { .. }
                | Fault::Misbehaving { .. }
                | Fault::WrongPassword { .. }
                | Fault::WrongVhost
        )
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |d: &Duration| format!("{}.{:03}s", d.as_secs(), d.subsec_millis());
        match self {
            Fault::BrokerCrash { downtime } => write!(f, "broker crash (down {})", s(downtime)),
            Fault::BrokerSilentDeath { downtime } => {
                write!(f, "broker silent death (down {})", s(downtime))
            }
            Fault::Partition { duration } => {
                write!(f, "partition proxy|broker for {}", s(duration))
            }
            Fault::Hold { duration } => write!(f, "hold proxy|broker for {}", s(duration)),
            Fault::ConnBreaks { count, over } => {
                write!(f, "{count} connection breaks over {}", s(over))
            }
            Fault::Blocked { duration } => write!(f, "broker blocked for {}", s(duration)),
            Fault::Drain { timeout } => write!(f, "drain (timeout {})", s(timeout)),
            Fault::ClientChurn { count, over } => {
                write!(f, "{count} churning clients over {}", s(over))
            }
            Fault::SlowClient => f.write_str("slow (non-reading) client"),
            Fault::LargeDeliveries { messages, pace } => write!(
                f,
                "{messages} large deliveries to fast, steady ({} bytes per {}ms) and stopped readers",
                pace.bytes,
                pace.every.as_millis()
            ),
            Fault::StalledClient { duration } => write!(f, "client stalled for {}", s(duration)),
            Fault::Misbehaving { kind } => write!(f, "misbehaving client ({kind:?})"),
            Fault::WrongPassword { failure_close } => {
                write!(f, "wrong password (failure_close={failure_close})")
            }
            Fault::WrongVhost => f.write_str("unknown vhost"),
            Fault::PasswordChange { user, .. } => write!(f, "password of {user} changed"),
        }
    }
}

/// A fault at an offset from the start of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledFault {
    /// When it starts.
    pub at: Duration,
    /// What happens.
    pub fault: Fault,
}

/// Every fault of one run, sorted by start.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FaultPlan {
    /// The faults, in start order.
    pub faults: Vec<ScheduledFault>,
}

/// How likely each kind of fault is in a random plan.
#[derive(Debug, Clone)]
pub struct FaultProfile {
    /// Most faults in one plan (besides drain).
    pub max_faults: usize,
    /// Faults start within this window.
    pub window: Duration,
    /// Chance that the run ends with a drain.
    pub drain_chance: f64,
}

impl Default for FaultProfile {
    fn default() -> Self {
        FaultProfile {
            max_faults: 4,
            window: Duration::from_secs(20),
            drain_chance: 0.15,
        }
    }
}

fn ms(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.random_range(lo..=hi))
}

impl FaultPlan {
    /// No faults.
    #[must_use]
    pub fn none() -> Self {
        FaultPlan::default()
    }

    /// Adds a fault (builder style), keeping the plan sorted.
    #[must_use]
    pub fn with(mut self, at: Duration, fault: Fault) -> Self {
        let i = self.faults.partition_point(|f| f.at <= at);
        self.faults.insert(i, ScheduledFault { at, fault });
        self
    }

    /// When the last fault has healed.
    #[must_use]
    pub fn healed_by(&self) -> Duration {
        self.faults
            .iter()
            .map(|f| f.at + f.fault.duration())
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Draws a plan.
    pub fn random(rng: &mut ChaCha8Rng, profile: &FaultProfile) -> Self {
        let mut plan = FaultPlan::none();
        let n = rng.random_range(0..=profile.max_faults);
        let window = profile.window.as_millis() as u64;
        for _ in 0..n {
            let at = ms(rng, 500, window);
            let fault = match rng.random_range(0..100u32) {
                0..=9 => Fault::BrokerCrash {
                    downtime: ms(rng, 100, 6000),
                },
                10..=17 => Fault::BrokerSilentDeath {
                    downtime: ms(rng, 500, 12_000),
                },
                18..=25 => Fault::Partition {
                    duration: ms(rng, 200, 12_000),
                },
                26..=33 => Fault::Hold {
                    duration: ms(rng, 100, 8000),
                },
                34..=43 => Fault::ConnBreaks {
                    count: rng.random_range(1..=4),
                    over: ms(rng, 100, 5000),
                },
                44..=49 => Fault::Blocked {
                    duration: ms(rng, 100, 4000),
                },
                50..=61 => Fault::ClientChurn {
                    count: rng.random_range(2..=12),
                    over: ms(rng, 200, 5000),
                },
                62..=67 => Fault::SlowClient,
                68..=73 => Fault::StalledClient {
                    duration: ms(rng, 500, 12_000),
                },
                74..=89 => Fault::Misbehaving {
                    kind: Misbehaviour::ALL[rng.random_range(0..Misbehaviour::ALL.len())],
                },
                90..=95 => Fault::WrongPassword {
                    failure_close: rng.random_bool(0.5),
                },
                _ => Fault::WrongVhost,
            };
            plan = plan.with(at, fault);
        }
        if rng.random_bool(profile.drain_chance) {
            let at = ms(rng, 3000, window + 5000);
            plan = plan.with(
                at,
                Fault::Drain {
                    timeout: ms(rng, 200, 5000),
                },
            );
        }
        plan
    }
}

impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.faults.is_empty() {
            return f.write_str("no faults");
        }
        for (i, sf) in self.faults.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{} {}", crate::trace::stamp(sf.at), sf.fault)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn random_plans_are_reproducible_and_sorted() {
        for seed in 0..50 {
            let a = FaultPlan::random(
                &mut ChaCha8Rng::seed_from_u64(seed),
                &FaultProfile::default(),
            );
            let b = FaultPlan::random(
                &mut ChaCha8Rng::seed_from_u64(seed),
                &FaultProfile::default(),
            );
            assert_eq!(a, b);
            assert!(a.faults.windows(2).all(|w| w[0].at <= w[1].at));
        }
    }
}
