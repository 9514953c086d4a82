//! The clients a fault brings along: churners, a slow consumer and its flooder, stallers,
//! misbehaving clients, wrong logins; intruders on exclusive queues; the clients around a
//! password change; the readers and publisher of large deliveries.

use super::builder::Builder;
use super::{ms, pick, NEW_PASSWORD, OLD_PASSWORD, ROTATED_USER};
use crate::client::{ClientSpec, Intrusion, Misbehaviour, Step};
use crate::plan::Fault;
use crate::slow::{ReadPace, LARGE_PUBLISHER};
use rand::Rng;
use std::time::Duration;

impl Builder<'_> {
    pub(super) fn fault_clients(&mut self, at: Duration, fault: &Fault) {
        match *fault {
            Fault::ClientChurn { count, over } => {
                for i in 0..count {
                    let t = at + over * i / count.max(1);
                    self.churner(t);
                }
            }
            Fault::SlowClient => {
                let slot = self.dynamic_slot();
                let mut s = Step::consumer(slot, true, true);
                s.extend([
                    Step::StopReading,
                    Step::Sleep(Duration::from_secs(20)),
                    Step::CloseConnection,
                ]);
                self.spec("slow-consumer", at, s);
                let mut p = vec![Step::Open(1)];
                for _ in 0..200 {
                    p.push(Step::publish(1, slot, 2000));
                }
                p.push(Step::CloseConnection);
                self.spec("flooder", at + Duration::from_millis(500), p);
            }
            Fault::StalledClient { duration } => {
                let slot = self.named_slot();
                let s = vec![
                    Step::Open(1),
                    Step::declare(1, slot, false),
                    Step::Stall(duration),
                    Step::publish(1, slot, 50),
                    Step::CloseConnection,
                ];
                self.spec("staller", at, s);
            }
            Fault::Misbehaving { kind } => {
                let mut s = vec![Step::Open(1)];
                if kind == Misbehaviour::ConsumerTagReuse {
                    s.push(Step::declare(1, 0, false));
                }
                if let Some((_, queue_kind)) = kind.queue_misuse() {
                    s.push(Step::TypedDeclare {
                        ch: 1,
                        kind: queue_kind,
                    });
                }
                if kind.needs_consumer_prefetch() {
                    s.push(Step::Qos(1, 10));
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

    /// Tries what RabbitMQ refuses across connections on `owner`'s exclusive queue in
    /// `slot`, reopening its channel after each refusal, then publishes to it (allowed).
    pub(super) fn intruder(&mut self, owner: &ClientSpec, slot: u32) {
        let start = owner.start + ms(self.rng, 100, 3000);
        let mut s = vec![Step::Open(1)];
        for _ in 0..self.rng.random_range(2..=5) {
            let op = Intrusion::ALL[self.rng.random_range(0..Intrusion::ALL.len())];
            s.push(Step::Intrude { ch: 1, slot, op });
            s.push(Step::Open(1));
            let d = ms(self.rng, 0, 400);
            s.push(Step::Sleep(d));
        }
        s.push(Step::publish(1, slot, 60));
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
    pub(super) fn password_change(&mut self, at: Duration, ttl: Duration) {
        let rotated = |c: &mut ClientSpec, password: &str| {
            c.user = ROTATED_USER.into();
            c.password = password.into();
        };
        for _ in 0..self.rng.random_range(0..=2) {
            let start = at.saturating_sub(ms(self.rng, 300, 3000));
            let slot = self.named_slot();
            let mut s = Step::consumer(slot, false, false);
            // Across the change, then publishing on the connection it already has.
            let d = at.saturating_sub(start) + ms(self.rng, 200, 4000);
            s.push(Step::Sleep(d));
            for _ in 0..self.rng.random_range(1..=4) {
                s.push(Step::publish(1, slot, 80));
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
            b.spec(kind, start, Step::publish_once(slot, 50));
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

    /// See [`Scenario::add_large_deliveries`](super::Scenario::add_large_deliveries): readers
    /// in slots `first`, `first + 1`, `first + 2` (fast, steady, stopped).
    pub(super) fn large_deliveries(
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
            let mut s = Step::consumer(slot, false, false);
            s.insert(2, Step::Qos(1, 1)); // before the consume: one delivery at a time
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
                p.push(Step::publish(1, first + r as u32, sizes[i]));
            }
        }
        p.extend([Step::WaitConfirms(1), Step::CloseConnection]);
        self.spec(LARGE_PUBLISHER, at + Duration::from_millis(500), p);
        let slot = first + 2;
        let mut sweeper = Step::consumer(slot, false, false);
        sweeper.extend([Step::Sleep(Duration::from_secs(3)), Step::CloseConnection]);
        self.spec(
            "sweeper",
            at + timeout * 2 + Duration::from_secs(3),
            sweeper,
        );
    }
}
