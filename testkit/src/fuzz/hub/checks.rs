//! What the `hub_client` world checks: on every frame warren writes (to an upstream, to the
//! canary, to a fuzzed client), after every operation, and at the end of a run. The world
//! and its operations are in `mod.rs`.

use super::*;

impl World {
    /// Everything is answered, the canary still works, the fuzzed clients leave, and after
    /// the pool and idle timers only the canary's channel and upstream remain.
    pub(super) fn finish(&mut self) {
        self.settle();
        self.canary_publish();
        self.canary_delivery();
        self.check_step();
        let left: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|c| !c.gone)
            .map(|c| c.id)
            .collect();
        for id in left {
            self.input(Input::ClientClosed { client: id });
        }
        self.settle();
        // Before any idle timer: exclusive queues die with their connection, which would
        // hide a leak on an upstream that idles out.
        let left: Vec<String> = self
            .broker
            .exclusive_queues()
            .into_iter()
            .map(|(q, _)| q)
            .filter(|q| q != CANARY_QUEUE)
            .collect();
        if !left.is_empty() {
            self.fail(format!(
                "exclusive queues {left:?} outlived the clients that declared them (B5)"
            ));
        }
        self.advance(self.config.pool_idle_timeout + STEP);
        self.settle();
        self.advance(self.config.upstream_idle_timeout + self.config.close_timeout + STEP);
        self.settle();
        self.check_step();
        if self.hub.client_count() != 1 {
            self.fail(format!(
                "{} clients remain after every fuzzed client left",
                self.hub.client_count()
            ));
        }
        if self.hub.channels_in_use() != 1 || self.hub.pooled_channels() != 0 {
            let states: Vec<String> = self
                .links
                .iter()
                .filter(|l| !l.gone)
                .map(|l| format!("{}: {:?}", l.id, l.check.channels().collect::<Vec<_>>()))
                .collect();
            self.fail(format!(
                "upstream channels leaked: {} in use ({} pooled) where only the canary's should be; broker view {states:?}",
                self.hub.channels_in_use(),
                self.hub.pooled_channels()
            ));
        }
        if self.hub.upstream_count() != 1 {
            self.fail(format!(
                "{} upstreams remain after the idle timeout",
                self.hub.upstream_count()
            ));
        }
        for l in self.links.iter().filter(|l| !l.gone) {
            // The broker's own view: nothing half-closed, nothing owed.
            let canary = self.canary.up.filter(|(up, _)| *up == l.id);
            let expected: Vec<u16> = canary.map(|(_, ch)| ch).into_iter().collect();
            let open = self.broker.open_channels(l.conn);
            let seen: Vec<(u16, ChannelState)> = l.check.channels().collect();
            let all_open: Vec<(u16, ChannelState)> = expected
                .iter()
                .map(|&ch| (ch, ChannelState::Open))
                .collect();
            if open != expected || seen != all_open {
                self.fail(format!(
                    "{} still has channels {open:?} at the broker ({seen:?} as warren saw them) after everything settled",
                    l.id
                ));
            }
        }
        self.canary_publish();
        self.canary_delivery();
        self.check_step();
    }

    pub(super) fn event(&mut self, e: &HubEvent) {
        let canary = self.canary.id;
        match e {
            HubEvent::ClientClosed { client, reply } => {
                let now = self.now;
                self.note(|| format!("event {}", describe_event(e, now)));
                if *client == canary {
                    self.fail(format!(
                        "the canary was closed: {} {}",
                        reply.code, reply.text
                    ));
                }
            }
            HubEvent::ClientLeft { client } | HubEvent::SlowClient { client }
                if *client == canary =>
            {
                self.fail("the canary was dropped");
            }
            HubEvent::UpstreamLost { upstream, reply }
            | HubEvent::UpstreamFailed { upstream, reply } => self.fail(format!(
                "{upstream} was lost or failed although the broker is healthy: {} {}",
                reply.code, reply.text
            )),
            HubEvent::HeartbeatMissed {
                peer: Peer::Upstream(up),
            } => self.fail(format!("{up} declared dead although the broker beats")),
            _ => {}
        }
    }

    pub(super) fn upstream_receives(&mut self, up: UpstreamId, data: &[u8]) {
        let Some(i) = self.links.iter().position(|l| l.id == up) else {
            self.fail(format!("bytes for {up}, which was never dialled"));
        };
        if self.links[i].gone {
            self.fail(format!("bytes for {up} after its socket closed"));
        }
        self.links[i].check.at(self.now);
        let frames = match self.links[i].check.from_warren(data) {
            Ok(frames) => frames,
            Err(v) => self.fail(format!(
                "{up} would be closed by RabbitMQ: {v}; the frame came from {}",
                self.culprit(up, v.channel)
            )),
        };
        for f in &frames {
            let ch = f.channel();
            if self.trace.is_some() && f.kind() != FrameType::Heartbeat {
                let d = describe(f);
                self.note(|| format!("{up} <- {d}"));
            }
            if self.canary.up == Some((up, ch)) {
                let got = (f.kind(), f.payload().to_vec());
                if self.canary.to_broker.front() != Some(&got) {
                    self.fail(format!(
                        "the canary's upstream channel {up}/{ch} carried {}, which the canary did not send",
                        describe(f)
                    ));
                }
                self.canary.to_broker.pop_front();
            } else if self.setting_up
                && self.canary.up.is_none()
                && f.method_id() == Some(ids::CHANNEL_OPEN)
            {
                self.canary.up = Some((up, ch));
            }
        }
        let conn = self.links[i].conn;
        self.broker.handle_bytes(self.now, conn, data);
    }

    /// Who the upstream channel belongs to, for a failure message.
    fn culprit(&self, up: UpstreamId, ch: u16) -> &'static str {
        if ch == 0 {
            "warren itself (channel 0)"
        } else if self.canary.up == Some((up, ch)) {
            "the canary's channel"
        } else {
            "a fuzzed client's channel or a channel warren manages (fence, pool, housekeeping, probe)"
        }
    }

    pub(super) fn client_receives(&mut self, client: ClientId, data: &[u8]) {
        if client == self.canary.id {
            return self.canary_receives(data);
        }
        let Some(i) = self.clients.iter().position(|c| c.id == client) else {
            self.fail(format!("bytes for {client}, which never joined"));
        };
        if self.clients[i].gone {
            self.fail(format!("bytes for {client} after CloseClient"));
        }
        self.clients[i].rx.push(data);
        loop {
            let c = &mut self.clients[i];
            let decoded = c.rx.next_frame(c.frame_max);
            let f = match decoded {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => self.fail(format!("{client} was sent a frame it cannot read: {e}")),
            };
            if self.trace.is_some() && f.kind() != FrameType::Heartbeat {
                let d = describe(&f);
                self.note(|| format!("{client} <- {d}"));
            }
            if f.kind() == FrameType::Body && f.payload().starts_with(b"canary") {
                self.fail(format!("{client} received a canary delivery"));
            }
        }
    }

    fn canary_receives(&mut self, data: &[u8]) {
        self.canary.rx.push(data);
        loop {
            let f = match self.canary.rx.next_frame(CANARY_FRAME_MAX) {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => self.fail(format!("the canary was sent a frame it cannot read: {e}")),
            };
            let ch = f.channel();
            if ch == 0 {
                let fine = match f.method_id() {
                    None => f.kind() == FrameType::Heartbeat,
                    Some(ids::CONNECTION_BLOCKED | ids::CONNECTION_UNBLOCKED) => true,
                    Some(ids::CONNECTION_OPEN_OK) => self.setting_up,
                    Some(_) => false,
                };
                if !fine {
                    self.fail(format!("the canary received {} on channel 0", describe(&f)));
                }
                continue;
            }
            let got = (f.kind(), f.payload().to_vec());
            if ch != CANARY_CH || self.canary.to_client.front() != Some(&got) {
                self.fail(format!(
                    "the canary received {} on channel {ch}, which the broker did not send it",
                    describe(&f)
                ));
            }
            self.canary.to_client.pop_front();
        }
    }

    /// After every operation: what the canary sent reached its channel, what the broker sent
    /// it arrived, and no client holds half a frame.
    pub(super) fn check_step(&self) {
        if !self.canary.to_broker.is_empty() {
            self.fail(format!(
                "{} canary frames did not reach its upstream channel",
                self.canary.to_broker.len()
            ));
        }
        if !self.canary.to_client.is_empty() {
            self.fail(format!(
                "{} frames the broker sent the canary did not arrive",
                self.canary.to_client.len()
            ));
        }
        if !self.canary.rx.is_empty() {
            self.fail("the canary holds half a frame");
        }
        if let Some(c) = self.clients.iter().find(|c| !c.rx.is_empty()) {
            self.fail(format!("{} holds half a frame", c.id));
        }
        if let Some(v) = self.broker.log.violations.first() {
            self.fail(format!(
                "the broker closed connection {} for a protocol error: {} {}",
                v.conn, v.code, v.text
            ));
        }
        self.check_canary_queue();
    }

    /// B5: no fuzzed client reaches the canary's exclusive queue, although the broker sees
    /// them all on one connection: nothing deletes or purges it, and only the canary consumes
    /// from it.
    fn check_canary_queue(&self) {
        let log = &self.broker.log.exclusive_ops;
        if let Some((_, _, op)) = log.iter().find(|(_, q, _)| q == CANARY_QUEUE) {
            self.fail(format!(
                "a fuzzed client {op}d the canary's exclusive queue"
            ));
        }
        for l in self.links.iter().filter(|l| !l.gone) {
            let canary = self
                .canary
                .up
                .filter(|(up, _)| *up == l.id)
                .map(|(_, ch)| ch);
            let consumers = self.broker.consumers_on(l.conn);
            if let Some((ch, _)) = consumers
                .iter()
                .find(|(ch, q)| q == CANARY_QUEUE && Some(*ch) != canary)
            {
                self.fail(format!(
                    "{} ch{ch} consumes from the canary's exclusive queue",
                    l.id
                ));
            }
        }
    }
}
