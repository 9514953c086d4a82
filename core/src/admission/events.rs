//! The broker's event exchange (B2): RabbitMQ's `rabbitmq_event_exchange` plugin publishes
//! what happens to users, permissions and vhosts to `amq.rabbitmq.event`. warren binds a
//! server-named exclusive queue to the events that change who may log in, consumes it, and
//! turns each delivery into a [`Revocation`] for admission.
//!
//! The events carry their subject in message headers: `name` for users and vhosts, `user`
//! and `vhost` for permissions (checked against RabbitMQ 3.10).

use crate::content::basic_headers;
use crate::frame::{method_frame, Frame, FrameType, HEARTBEAT};
use crate::hub::liveness::{Beat, Liveness};
use crate::method::{self, encode, ids, Method};
use crate::reply::{self, Reply};
use crate::table::FieldTable;
use crate::wire::Reader;
use bytes::Bytes;
use smallvec::SmallVec;
use std::time::Instant;

/// The exchange the plugin publishes to.
pub const EXCHANGE: &str = "amq.rabbitmq.event";

/// The routing keys warren listens to: everything that changes who may log in or open a
/// vhost, and what makes a cached refusal untrue.
pub const ROUTING_KEYS: [&str; 8] = [
    "user.created",
    "user.deleted",
    "user.password.changed",
    "user.password.cleared",
    "permission.created",
    "permission.deleted",
    "vhost.created",
    "vhost.deleted",
];

/// The channel the feed uses on its connection.
const CHANNEL: u16 = 1;

/// Something the broker changed that admission must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// A user was created: a cached refusal of its name is untrue now.
    UserCreated {
        /// User name.
        user: String,
    },
    /// A user's password changed or was cleared: the old one must not log in any more.
    PasswordChanged {
        /// User name.
        user: String,
    },
    /// A user was deleted: RabbitMQ closes its connections.
    UserDeleted {
        /// User name.
        user: String,
    },
    /// A user was granted (or changed) permissions on a vhost.
    PermissionCreated {
        /// User name.
        user: String,
        /// Virtual host.
        vhost: String,
    },
    /// A user lost its permissions on a vhost: new clients are refused at `Open`.
    PermissionDeleted {
        /// User name.
        user: String,
        /// Virtual host.
        vhost: String,
    },
    /// A vhost was created.
    VhostCreated {
        /// Virtual host.
        vhost: String,
    },
    /// A vhost was deleted: RabbitMQ closes its connections.
    VhostDeleted {
        /// Virtual host.
        vhost: String,
    },
}

impl Revocation {
    /// Reads an event from its routing key and headers; `None` for other events.
    #[must_use]
    pub fn from_event(routing_key: &str, headers: &FieldTable) -> Option<Revocation> {
        let name = || headers.get_str("name");
        let user = || headers.get_str("user");
        let vhost = || headers.get_str("vhost");
        Some(match routing_key {
            "user.created" => Revocation::UserCreated { user: name()? },
            "user.deleted" => Revocation::UserDeleted { user: name()? },
            "user.password.changed" | "user.password.cleared" => {
                Revocation::PasswordChanged { user: name()? }
            }
            "permission.created" => Revocation::PermissionCreated {
                user: user()?,
                vhost: vhost()?,
            },
            "permission.deleted" => Revocation::PermissionDeleted {
                user: user()?,
                vhost: vhost()?,
            },
            "vhost.created" => Revocation::VhostCreated { vhost: name()? },
            "vhost.deleted" => Revocation::VhostDeleted { vhost: name()? },
            _ => return None,
        })
    }
}

/// What one call asks of admission.
#[derive(Debug, Default)]
pub struct FeedStep {
    /// Frames to send on the feed's connection.
    pub send: SmallVec<[Bytes; 4]>,
    /// Events that arrived.
    pub revocations: Vec<Revocation>,
    /// The feed broke; its connection must be closed and redialled later.
    pub failed: Option<Reply>,
}

impl FeedStep {
    fn failed(reply: Reply) -> Self {
        FeedStep {
            failed: Some(reply),
            ..FeedStep::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The connection is still logging in.
    Login,
    /// `channel.open` and `queue.declare` sent; waiting for `declare-ok`.
    Declaring,
    /// Binds and `basic.consume` sent; deliveries follow.
    Consuming,
}

/// A delivery whose content is still arriving.
#[derive(Debug)]
struct Pending {
    routing_key: String,
    headers: Option<FieldTable>,
    remaining: Option<u64>,
}

/// The feed on an open connection: subscribes, then turns deliveries into revocations.
#[derive(Debug)]
pub struct Feed {
    stage: Stage,
    liveness: Option<Liveness>,
    pending: Option<Pending>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed::new()
    }
}

impl Feed {
    /// A feed whose connection is about to log in.
    #[must_use]
    pub fn new() -> Self {
        Feed {
            stage: Stage::Login,
            liveness: None,
            pending: None,
        }
    }

    /// Whether the subscription is in place.
    #[must_use]
    pub fn is_consuming(&self) -> bool {
        self.stage == Stage::Consuming
    }

    /// The connection opened with `heartbeat` seconds: open the channel, declare the queue.
    pub fn on_open(&mut self, now: Instant, heartbeat: u16) -> FeedStep {
        let mut liveness = Liveness::new(now, heartbeat);
        liveness.sent(now);
        self.liveness = Some(liveness);
        self.stage = Stage::Declaring;
        let mut step = FeedStep::default();
        step.send.push(encode::channel_open(CHANNEL));
        step.send.push(queue_declare());
        step
    }

    /// When [`Feed::on_timer`] must run next.
    #[must_use]
    pub fn deadline(&self) -> Option<Instant> {
        self.liveness.as_ref().and_then(Liveness::deadline)
    }

    /// Heartbeats of the open connection.
    pub fn on_timer(&mut self, now: Instant) -> FeedStep {
        let Some(l) = self.liveness.as_mut() else {
            return FeedStep::default();
        };
        match l.check(now) {
            Beat::Idle => FeedStep::default(),
            Beat::Send => {
                l.sent(now);
                let mut step = FeedStep::default();
                step.send.push(Bytes::from_static(HEARTBEAT));
                step
            }
            Beat::Dead => FeedStep::failed(Reply::new(
                reply::CONNECTION_FORCED,
                "missed heartbeats from the broker",
            )),
        }
    }

    /// A frame on the open connection.
    pub fn on_frame(&mut self, now: Instant, frame: &Frame) -> FeedStep {
        if let Some(l) = self.liveness.as_mut() {
            l.received(now);
        }
        match (frame.kind(), frame.channel()) {
            (FrameType::Heartbeat, _) => FeedStep::default(),
            (FrameType::Method, 0) => match method::decode(frame.payload()) {
                Ok(Method::ConnectionClose(close)) => {
                    let mut step = FeedStep::failed(close.reply());
                    step.send.push(encode::close_ok(0));
                    step
                }
                // Blocked and unblocked do not concern a consumer.
                Ok(_) => FeedStep::default(),
                Err(e) => FeedStep::failed(Reply::new(reply::SYNTAX_ERROR, e)),
            },
            (FrameType::Method, CHANNEL) => self.channel_method(now, frame),
            (FrameType::Header, CHANNEL) => self.content_header(frame),
            (FrameType::Body, CHANNEL) => self.content_body(frame),
            _ => FeedStep::failed(Reply::new(
                reply::UNEXPECTED_FRAME,
                "unexpected frame on the event feed",
            )),
        }
    }

    fn channel_method(&mut self, now: Instant, frame: &Frame) -> FeedStep {
        let Some(id) = frame.method_id() else {
            return FeedStep::failed(Reply::new(reply::SYNTAX_ERROR, "short method frame"));
        };
        match id {
            ids::CHANNEL_OPEN_OK => FeedStep::default(),
            ids::QUEUE_DECLARE_OK if self.stage == Stage::Declaring => {
                let Ok(Method::QueueDeclareOk { queue }) = method::decode(frame.payload()) else {
                    return FeedStep::failed(Reply::new(reply::SYNTAX_ERROR, "bad declare-ok"));
                };
                self.stage = Stage::Consuming;
                let mut step = FeedStep::default();
                for key in ROUTING_KEYS {
                    step.send.push(queue_bind(&queue, key));
                }
                step.send.push(basic_consume(&queue));
                if let Some(l) = self.liveness.as_mut() {
                    l.sent(now);
                }
                step
            }
            ids::BASIC_DELIVER => match deliver_routing_key(frame.payload()) {
                Some(routing_key) => {
                    self.pending = Some(Pending {
                        routing_key,
                        headers: None,
                        remaining: None,
                    });
                    FeedStep::default()
                }
                None => FeedStep::failed(Reply::new(reply::SYNTAX_ERROR, "bad basic.deliver")),
            },
            ids::CHANNEL_CLOSE => {
                let reply = match method::decode(frame.payload()) {
                    Ok(Method::ChannelClose(c)) => c.reply(),
                    _ => Reply::new(reply::CHANNEL_ERROR, "the event feed's channel closed"),
                };
                FeedStep::failed(reply)
            }
            // Consume-ok, cancel and the like change nothing warren must know.
            _ => FeedStep::default(),
        }
    }

    fn content_header(&mut self, frame: &Frame) -> FeedStep {
        let Some(p) = self.pending.as_mut() else {
            return FeedStep::failed(Reply::new(
                reply::UNEXPECTED_FRAME,
                "header without deliver",
            ));
        };
        match basic_headers(frame.payload()) {
            Ok((size, headers)) => {
                p.headers = Some(headers.unwrap_or_default());
                p.remaining = Some(size);
                self.finish_if_complete()
            }
            Err(e) => FeedStep::failed(Reply::new(reply::SYNTAX_ERROR, e)),
        }
    }

    fn content_body(&mut self, frame: &Frame) -> FeedStep {
        let Some(remaining) = self.pending.as_mut().and_then(|p| p.remaining.as_mut()) else {
            return FeedStep::failed(Reply::new(reply::UNEXPECTED_FRAME, "body without header"));
        };
        *remaining = remaining.saturating_sub(frame.payload().len() as u64);
        self.finish_if_complete()
    }

    fn finish_if_complete(&mut self) -> FeedStep {
        let mut step = FeedStep::default();
        if self.pending.as_ref().and_then(|p| p.remaining) == Some(0) {
            if let Some(p) = self.pending.take() {
                let headers = p.headers.unwrap_or_default();
                if let Some(r) = Revocation::from_event(&p.routing_key, &headers) {
                    step.revocations.push(r);
                }
            }
        }
        step
    }
}

/// `queue.declare` of a server-named, exclusive, auto-delete queue.
fn queue_declare() -> Bytes {
    method_frame(CHANNEL, ids::QUEUE_DECLARE, |w| {
        w.u16(0)
            .shortstr(b"")
            .bit(false) // passive
            .bit(false) // durable
            .bit(true) // exclusive
            .bit(true) // auto-delete
            .bit(false); // nowait
        w.u32(0);
    })
}

/// `queue.bind` of the feed's queue to the event exchange, without a reply.
fn queue_bind(queue: &[u8], key: &str) -> Bytes {
    method_frame(CHANNEL, ids::QUEUE_BIND, |w| {
        w.u16(0)
            .shortstr(queue)
            .shortstr(EXCHANGE.as_bytes())
            .shortstr(key.as_bytes())
            .bit(true); // nowait
        w.u32(0);
    })
}

/// `basic.consume` with automatic acks, without a reply.
fn basic_consume(queue: &[u8]) -> Bytes {
    method_frame(CHANNEL, ids::BASIC_CONSUME, |w| {
        w.u16(0)
            .shortstr(queue)
            .shortstr(b"warren-events")
            .bit(false) // no-local
            .bit(true) // no-ack
            .bit(true) // exclusive
            .bit(true); // nowait
        w.u32(0);
    })
}

/// The routing key of a `basic.deliver`.
fn deliver_routing_key(payload: &[u8]) -> Option<String> {
    let mut r = Reader::new(payload.get(4..)?);
    r.shortstr().ok()?; // consumer tag
    r.u64().ok()?; // delivery tag
    r.bit().ok()?; // redelivered
    r.shortstr().ok()?; // exchange
    let key = r.shortstr().ok()?;
    Some(String::from_utf8_lossy(key).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;
    use crate::table::longstr;
    use bytes::{BufMut, BytesMut};

    fn frame(bytes: Bytes) -> Frame {
        let mut buf = BytesMut::from(&bytes[..]);
        FrameDecoder::new(1 << 20)
            .decode(&mut buf)
            .expect("valid")
            .expect("whole")
    }

    fn deliver(key: &str) -> Frame {
        frame(method_frame(CHANNEL, ids::BASIC_DELIVER, |w| {
            w.shortstr(b"warren-events")
                .u64(1)
                .bit(false)
                .shortstr(EXCHANGE.as_bytes())
                .shortstr(key.as_bytes());
        }))
    }

    fn header(headers: &FieldTable) -> Frame {
        let mut payload = BytesMut::new();
        payload.put_u16(60);
        payload.put_u16(0);
        payload.put_u64(0);
        payload.put_u16(1 << 13);
        headers.encode(&mut payload);
        frame(Frame::new(FrameType::Header, CHANNEL, &payload).freeze())
    }

    #[test]
    fn subscribes_then_reads_revocations() {
        let t0 = crate::test_epoch();
        let mut feed = Feed::new();
        let step = feed.on_open(t0, 60);
        assert_eq!(step.send.len(), 2, "channel.open and queue.declare");
        let ok = frame(method_frame(CHANNEL, ids::QUEUE_DECLARE_OK, |w| {
            w.shortstr(b"amq.gen-1").u32(0).u32(0);
        }));
        let step = feed.on_frame(t0, &ok);
        assert_eq!(step.send.len(), ROUTING_KEYS.len() + 1, "binds and consume");
        assert!(feed.is_consuming());

        let cases = [
            (
                "user.password.changed",
                FieldTable::default().with("name", longstr("u")),
                Some(Revocation::PasswordChanged { user: "u".into() }),
            ),
            (
                "permission.deleted",
                FieldTable::default()
                    .with("user", longstr("u"))
                    .with("vhost", longstr("v")),
                Some(Revocation::PermissionDeleted {
                    user: "u".into(),
                    vhost: "v".into(),
                }),
            ),
            (
                "user.authentication.success",
                FieldTable::default().with("name", longstr("u")),
                None,
            ),
        ];
        for (key, headers, want) in cases {
            assert!(feed.on_frame(t0, &deliver(key)).revocations.is_empty());
            let step = feed.on_frame(t0, &header(&headers));
            assert_eq!(
                step.revocations,
                want.into_iter().collect::<Vec<_>>(),
                "{key}"
            );
            assert!(step.failed.is_none());
        }
    }

    #[test]
    fn a_broker_close_fails_the_feed() {
        let t0 = crate::test_epoch();
        let mut feed = Feed::new();
        feed.on_open(t0, 0);
        let close = frame(encode::close(
            0,
            &method::Close::from(&Reply::new(reply::CONNECTION_FORCED, "bye")),
        ));
        let step = feed.on_frame(t0, &close);
        assert_eq!(step.failed.map(|r| r.code), Some(reply::CONNECTION_FORCED));
        assert_eq!(step.send.len(), 1, "close-ok");
    }
}
