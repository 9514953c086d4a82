//! Methods on an open channel (checked by the connection's rule checker to be known,
//! sendable by a client, well-formed, not of the connection class): a short dispatch by
//! class to `exchange`, `queue` and `basic`. The channel class itself (and the deprecated
//! `access.request`) is answered here.

use super::state::ChannelError;
use super::{Broker, ConnId};
use std::time::Instant;
use warren_core::frame::Frame;
use warren_core::method::{self, encode, ids, MethodId};
use warren_core::wire::Reader;

/// `access.request`, deprecated but still answered by RabbitMQ.
const ACCESS_REQUEST: MethodId = MethodId::new(30, 10);

impl Broker {
    /// A method on an open channel, already checked to be known, sendable by a client,
    /// well-formed and not of the connection class. A channel error closes only the channel.
    pub(super) fn channel_method(&mut self, now: Instant, id: ConnId, ch: u16, f: Frame) {
        let Ok((mid, args)) = method::split_payload(f.payload()) else {
            return;
        };
        if let Err(ChannelError(code, text, cause)) = self.method(now, id, ch, mid, args) {
            self.channel_error(now, id, ch, code, text, cause);
        }
    }

    /// One method of a channel, by class. A channel error closes only the channel.
    fn method(
        &mut self,
        now: Instant,
        id: ConnId,
        ch: u16,
        mid: MethodId,
        args: &[u8],
    ) -> Result<(), ChannelError> {
        let mut r = Reader::new(args);
        // AMQP 0-9-1's classes by number: channel, access, exchange, queue, basic, confirm, tx.
        match mid.class {
            20 => self.channel_class(now, id, ch, mid),
            30 => self.access_class(now, id, ch, mid),
            40 => self.exchange_class(now, id, ch, mid, &mut r),
            50 => self.queue_class(now, id, ch, mid, &mut r),
            60 => self.basic_class(now, id, ch, mid, &mut r),
            85 => self.confirm_class(now, id, ch, mid, &mut r),
            90 => self.tx_class(now, id, ch, mid),
            _ => {
                self.not_valid_here(now, id, mid);
                Ok(())
            }
        }
    }

    /// `channel.*` on an open channel.
    fn channel_class(
        &mut self,
        now: Instant,
        id: ConnId,
        ch: u16,
        mid: MethodId,
    ) -> Result<(), ChannelError> {
        match mid {
            ids::CHANNEL_CLOSE => {
                self.send(now, id, encode::close_ok(ch));
                let chan = self.conns.get_mut(&id).and_then(|c| c.channels.remove(&ch));
                if let Some(chan) = chan {
                    self.release_channel(id, ch, chan);
                }
            }
            ids::CHANNEL_FLOW => {
                // Only active=true passes the checker: warren's fence; the channel changes
                // hands after this.
                self.chan(id, ch).owner = None;
                self.send(now, id, encode::flow(ch, true, true));
            }
            ids::CHANNEL_FLOW_OK => {}
            _ => self.not_valid_here(now, id, mid),
        }
        Ok(())
    }

    /// `access.request`, deprecated but still answered by RabbitMQ.
    fn access_class(
        &mut self,
        now: Instant,
        id: ConnId,
        ch: u16,
        mid: MethodId,
    ) -> Result<(), ChannelError> {
        match mid {
            ACCESS_REQUEST => {
                self.send_method(now, id, ch, MethodId::new(30, 11), |w| {
                    w.u16(1);
                });
            }
            _ => self.not_valid_here(now, id, mid),
        }
        Ok(())
    }
}
