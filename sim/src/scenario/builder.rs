//! Builds client scripts from the seed's random generator: the ordinary clients of a random
//! scenario (publishers, consumers, getters, fanouts, churners, clients that misstep on
//! purpose) and the helpers every script uses (board slots, message sizes, endings).

use super::{ms, pick, DYNAMIC, NAMED, PLUGIN_EXCHANGE_TYPE};
use crate::client::{ClientSpec, Opening, Step, Target};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::time::Duration;
use warren_testkit::rules::queue_types::QueueKind;

/// Builds client scripts from a random generator.
pub(super) struct Builder<'a> {
    pub(super) rng: &'a mut ChaCha8Rng,
    pub(super) clients: Vec<ClientSpec>,
    pub(super) next_dynamic: u32,
}

impl Builder<'_> {
    pub(super) fn dynamic_slot(&mut self) -> u32 {
        let s = self.next_dynamic;
        if self.next_dynamic < NAMED + DYNAMIC - 1 {
            self.next_dynamic += 1;
        }
        s
    }

    pub(super) fn named_slot(&mut self) -> u32 {
        self.rng.random_range(0..NAMED)
    }

    pub(super) fn size(&mut self) -> usize {
        match self.rng.random_range(0..100u32) {
            0..=69 => self.rng.random_range(18..=400),
            70..=89 => self.rng.random_range(400..=5000),
            90..=98 => self.rng.random_range(5000..=40_000),
            // Above the 64 KiB max_message_size: warren closes the channel with 406.
            _ => 70_000,
        }
    }

    pub(super) fn spec(
        &mut self,
        kind: &'static str,
        start: std::time::Duration,
        script: Vec<Step>,
    ) {
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

    pub(super) fn ending(&mut self, script: &mut Vec<Step>, ch: u16) {
        if self.rng.random_bool(0.6) {
            script.push(Step::CloseChannel(ch));
        }
        match self.rng.random_range(0..10u32) {
            0 => script.push(Step::Drop),
            _ => script.push(Step::CloseConnection),
        }
    }

    pub(super) fn random_client(&mut self, start: Duration) {
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

    fn publisher(&mut self, start: Duration, confirm: bool) {
        let ch = self.rng.random_range(1..=3);
        let mut s = vec![Step::Open(ch)];
        let named = self.rng.random_bool(0.7);
        let slot = if named {
            let slot = self.named_slot();
            s.push(Step::declare(ch, slot, false));
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
        s.push(Step::declare(ch, slot, exclusive));
        let prefetch = self.rng.random_range(0..=10);
        s.push(Step::Qos(ch, prefetch));
        let nack_every = if self.rng.random_bool(0.3) {
            self.rng.random_range(2..=5)
        } else {
            0
        };
        s.push(Step::consume(ch, slot, self.rng.random_bool(0.2)));
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
                p.push(Step::publish(pch, slot, size));
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
        let mut s = vec![Step::Open(ch), Step::declare(ch, slot, false)];
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
        s.push(Step::declare(1, slot, false));
        for round in 0..self.rng.random_range(1..=4) {
            for &ch in &chans {
                let size = self.size();
                s.push(Step::publish(ch, slot, size));
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
            Step::declare(1, slot, false),
            Step::publish(1, slot, 60),
            Step::CloseConnection,
        ];
        self.spec("channel-error", start, s);
    }

    fn tx_client(&mut self, start: Duration) {
        let slot = self.named_slot();
        let s = vec![
            Step::Open(1),
            Step::TxSelect(1),
            Step::publish(1, slot, 100),
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
                    nowait: false,
                },
                Step::declare(1, slot, true),
                Step::Bind {
                    ch: 1,
                    slot,
                    exchange: exchange.clone(),
                    rk: String::new(),
                },
                Step::consume(1, slot, false),
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
                nowait: false,
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

    /// Declares an exchange of the broker plugin's type ([`PLUGIN_EXCHANGE_TYPE`]) on its
    /// channel 1, which warren may not know (B7), and must get its `declare-ok` all the same;
    /// then publishes on both its channels to the queue in a named slot. With `nowait` it
    /// does not wait for the answer: its publishes on channel 1 follow the declare at once
    /// and wait with it while warren asks the broker, and must still reach the broker, in
    /// order (the broker's order check) and confirmed (with `confirm`, else the client hangs),
    /// while those on channel 2 go on meanwhile.
    pub(super) fn plugin_user(&mut self, start: Duration) {
        let slot = self.named_slot();
        let nowait = self.rng.random_bool(0.5);
        let confirm = self.rng.random_bool(0.5);
        let mut s = vec![Step::Open(1), Step::Open(2), Step::declare(2, slot, false)];
        if confirm {
            s.push(Step::Confirm(1));
        }
        s.push(Step::ExchangeDeclare {
            ch: 1,
            name: "hashed".into(),
            kind: PLUGIN_EXCHANGE_TYPE.into(),
            nowait,
        });
        for _ in 0..self.rng.random_range(1..=4) {
            let (size, other) = (self.size(), self.size());
            s.extend([Step::publish(2, slot, other), Step::publish(1, slot, size)]);
        }
        if confirm {
            s.push(Step::WaitConfirms(1));
        }
        self.ending(&mut s, 1);
        self.spec("plugin-exchange", start, s);
    }

    /// Declares the simulation's stream or quorum queue as RabbitMQ requires (durable, with
    /// `x-queue-type`), sets a per-consumer prefetch (which a stream's consumer needs) and
    /// consumes it with acks for a while: warren learns the type and must forward all of
    /// it (B7).
    pub(super) fn typed_user(&mut self, start: Duration) {
        let kind = if self.rng.random_bool(0.5) {
            QueueKind::Stream
        } else {
            QueueKind::Quorum
        };
        let mut s = vec![
            Step::Open(1),
            Step::TypedDeclare { ch: 1, kind },
            Step::Qos(1, self.rng.random_range(1..=20)),
            Step::TypedConsume { ch: 1, kind },
            Step::Sleep(Duration::from_millis(self.rng.random_range(0..2000))),
            Step::Cancel(1),
        ];
        self.ending(&mut s, 1);
        self.spec(
            if kind == QueueKind::Stream {
                "stream-user"
            } else {
                "quorum-user"
            },
            start,
            s,
        );
    }

    /// Drops its socket in the middle of a publish (B8: nothing half-sent goes upstream).
    fn half_publisher(&mut self, start: Duration) {
        let slot = self.named_slot();
        let s = vec![
            Step::Open(1),
            Step::publish(1, slot, 50),
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

    pub(super) fn churner(&mut self, start: Duration) {
        let slot = self.named_slot();
        let mut s = vec![Step::Open(1)];
        if self.rng.random_bool(0.3) {
            s.push(Step::declare(1, slot, false));
        }
        s.push(Step::publish(1, slot, 100));
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
}
