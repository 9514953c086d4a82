//! What happens to the broker from outside the connections under test, at a moment a test
//! chooses: a message arriving from elsewhere, an operator deleting a queue, a channel
//! failing. The `hub_client` fuzz target drives these from its input; they go through the
//! same paths as the broker's own answers, so what warren receives is what RabbitMQ sends.

use super::state::{ChanState, Msg};
use super::{Broker, ConnId};
use bytes::Bytes;
use std::time::Instant;
use warren_core::method::MethodId;

impl Broker {
    /// A message reaches `queue` from outside the connections under test (another client,
    /// a shovel) and is delivered like any other. False if there is no such queue.
    pub fn inject(&mut self, now: Instant, queue: &str, body: Bytes) -> bool {
        let Some(q) = self.queues.get_mut(queue) else {
            return false;
        };
        q.msgs.push_back(Msg {
            body,
            exchange: String::new(),
            rk: queue.to_owned(),
            redelivered: false,
            headers: None,
        });
        self.dispatch_all(now);
        self.flush();
        true
    }

    /// An operator deletes `queue` (`rabbitmqctl delete_queue`): its consumers are
    /// cancelled, with `basic.cancel` to the connections that asked to be told.
    pub fn delete_queue_by_operator(&mut self, now: Instant, queue: &str) {
        self.delete_queue(Some(now), queue);
        self.flush();
    }

    /// The broker closes channel `ch` of `conn` with a channel error, as RabbitMQ does when
    /// something a method relies on is missing. False unless the channel is open.
    pub fn fail_channel(
        &mut self,
        now: Instant,
        conn: ConnId,
        ch: u16,
        code: u16,
        text: &str,
        cause: MethodId,
    ) -> bool {
        if !self.open_channels(conn).contains(&ch) {
            return false;
        }
        self.channel_error(now, conn, ch, code, text.to_owned(), cause);
        self.dispatch_all(now);
        self.flush();
        true
    }

    /// Channels of `conn` that are open at the broker (not closing), in order.
    #[must_use]
    pub fn open_channels(&self, conn: ConnId) -> Vec<u16> {
        self.conns.get(&conn).map_or_else(Vec::new, |c| {
            c.channels
                .iter()
                .filter(|(_, chan)| chan.state == ChanState::Open)
                .map(|(ch, _)| *ch)
                .collect()
        })
    }

    /// The consumers on `conn`, as (channel, queue), in queue-name order.
    #[must_use]
    pub fn consumers_on(&self, conn: ConnId) -> Vec<(u16, String)> {
        self.queues
            .iter()
            .flat_map(|(name, q)| {
                q.consumers
                    .iter()
                    .filter(move |c| c.conn == conn)
                    .map(move |c| (c.ch, name.clone()))
            })
            .collect()
    }
}
