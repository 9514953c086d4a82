//! warren's connections to the broker in the `hub_client` world. What warren writes reaches
//! the broker at once. What the broker writes waits until the input lets it through, as a
//! busy broker's replies come late; its heartbeats (which RabbitMQ writes past its other
//! output) and the handshake go at once, and each broker close starts a read of its own.
//! RabbitMQ sends a heartbeat when nothing went out on the socket for half an interval,
//! whatever it has produced: so does each link, since the broker's own timer counts the
//! replies it holds as sent.

use super::*;

/// One upstream: warren's connection to the broker.
pub(super) struct Link {
    pub(super) id: UpstreamId,
    pub(super) conn: ConnId,
    /// Holds warren to RabbitMQ's rules as warren sees the broker: strict, because every
    /// broker frame it reads reached warren before what warren writes next. It knows the
    /// broker's exchange types, not warren's: warren may learn a plugin's type by asking.
    pub(super) check: UpstreamChecker,
    /// Cuts what the broker writes into frames.
    rx: FrameReader,
    /// Frames the broker wrote that the input has not let through yet, in order.
    pub(super) held: VecDeque<Frame>,
    /// Frames let through, for warren's next read.
    ready: Vec<Frame>,
    /// The broker closes the socket once everything it wrote has gone through.
    broker_closes: bool,
    /// The socket is closed (by the hub, or by the broker with everything through).
    pub(super) gone: bool,
    /// When warren last read anything on it.
    last_read: Instant,
}

impl World {
    /// Accepts every dial at once: the broker takes the connection and warren hears that
    /// it is connected. Returns whether there was one.
    pub(super) fn accept_dials(&mut self) -> bool {
        let any = !self.dials.is_empty();
        while let Some(up) = self.dials.pop_front() {
            let conn = self.broker.accept(self.now);
            self.note(|| format!("{up} dialled and accepted"));
            self.links.push(Link {
                id: up,
                conn,
                check: UpstreamChecker::new(&self.broker.config().plugin_exchange_types),
                rx: FrameReader::default(),
                held: VecDeque::new(),
                ready: Vec::new(),
                broker_closes: false,
                gone: false,
                last_read: self.now,
            });
            let connected = Input::UpstreamConnected {
                upstream: up,
                node: 0,
            };
            self.hub.handle(self.now, connected);
        }
        any
    }

    /// What the broker wrote goes onto its links: held, unless it is a heartbeat or part of
    /// the handshake.
    pub(super) fn broker_writes(&mut self) {
        while let Some(o) = self.broker.poll_output() {
            let conn = match &o {
                BrokerOutput::Send { conn, .. } | BrokerOutput::Close { conn } => *conn,
            };
            let Some(l) = self.links.iter_mut().find(|l| l.conn == conn && !l.gone) else {
                continue;
            };
            match o {
                BrokerOutput::Send { data, .. } => {
                    l.rx.push(&data);
                    while let Ok(Some(f)) = l.rx.next_frame(u32::MAX) {
                        let at_once = f.kind() == FrameType::Heartbeat
                            || (l.held.is_empty() && !l.check.is_running());
                        if at_once {
                            l.ready.push(f);
                        } else {
                            l.held.push_back(f);
                        }
                    }
                }
                BrokerOutput::Close { .. } => l.broker_closes = true,
            }
        }
    }

    /// When the next link falls silent for half its heartbeat interval, and which.
    pub(super) fn next_beat(&self) -> Option<(Instant, usize)> {
        (0..self.links.len())
            .filter(|&i| !self.links[i].gone)
            .filter_map(|i| {
                let l = &self.links[i];
                let hb = l.check.negotiated().map_or(0, |t| t.heartbeat);
                let half = Duration::from_millis(u64::from(hb) * 500);
                (hb > 0 && l.check.is_running()).then_some((l.last_read + half, i))
            })
            .min()
    }

    /// Link `i` was silent for half an interval: a heartbeat goes through at once.
    pub(super) fn beat(&mut self, i: usize) {
        self.links[i]
            .ready
            .push(Frame::new(FrameType::Heartbeat, 0, &[]));
        self.flow();
    }

    /// Lets the first `n` frames held on link `i` through.
    pub(super) fn release(&mut self, i: usize, n: usize) {
        let l = &mut self.links[i];
        let n = n.min(l.held.len());
        l.ready.extend(l.held.drain(..n));
    }

    /// warren reads what was let through on each link, and hears of a socket the broker
    /// closed once everything before the close has been read. Returns whether it read
    /// anything.
    fn deliver(&mut self) -> bool {
        let mut any = false;
        for i in 0..self.links.len() {
            if self.links[i].gone {
                continue;
            }
            let up = self.links[i].id;
            let mut frames = std::mem::take(&mut self.links[i].ready);
            // A broker close starts a read of its own: what warren writes on reading the
            // frames before it is checked before the checker knows of the close (warren
            // could not have known either).
            let is_close = |f: &Frame| {
                matches!(
                    f.method_id(),
                    Some(ids::CHANNEL_CLOSE | ids::CONNECTION_CLOSE)
                )
            };
            let cut = frames.iter().skip(1).position(is_close);
            if let Some(at) = cut {
                self.links[i].ready = frames.split_off(at + 1);
            }
            if frames.is_empty() {
                let l = &mut self.links[i];
                if l.broker_closes && l.held.is_empty() {
                    l.gone = true;
                    any = true;
                    self.note(|| format!("{up} closed by the broker"));
                    let reason = "connection closed by the broker".into();
                    let closed = Input::UpstreamClosed {
                        upstream: up,
                        reason,
                    };
                    self.hub.handle(self.now, closed);
                }
                continue;
            }
            any = true;
            self.links[i].last_read = self.now;
            self.links[i].check.at(self.now);
            let mut batch: SmallVec<[Frame; 8]> = SmallVec::new();
            for f in frames {
                self.links[i].check.from_broker(&f);
                if self.canary.up == Some((up, f.channel())) {
                    self.canary
                        .to_client
                        .push_back((f.kind(), f.payload().to_vec()));
                }
                if self.trace.is_some() && f.kind() != FrameType::Heartbeat {
                    let d = describe(&f);
                    self.note(|| format!("{up} -> {d}"));
                }
                batch.push(f);
            }
            let read = Input::UpstreamFrames {
                upstream: up,
                frames: batch,
            };
            self.hub.handle(self.now, read);
        }
        any
    }

    /// Runs the world until it is quiet: the hub's output is carried out, dials are
    /// accepted, and warren reads what the broker let through.
    pub(super) fn flow(&mut self) {
        loop {
            self.pump();
            let accepted = self.accept_dials();
            self.broker_writes();
            if !self.deliver() && !accepted {
                return;
            }
        }
    }

    /// The broker lets everything through on every link, until nothing is held.
    pub(super) fn settle(&mut self) {
        for _ in 0..64 {
            let held: Vec<usize> = (0..self.links.len())
                .filter(|&i| !self.links[i].gone && !self.links[i].held.is_empty())
                .collect();
            if held.is_empty() {
                return;
            }
            for i in held {
                self.release(i, usize::MAX);
            }
            self.flow();
        }
        self.fail("the broker kept writing replies after 64 rounds of answers");
    }
}
