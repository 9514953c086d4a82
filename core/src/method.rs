//! AMQP 0-9-1 methods: the identity and argument layout of every method of the RabbitMQ
//! edition of the protocol, typed decoding of the methods the proxy acts on, and encoders
//! for the methods it writes itself.
//!
//! Everything else is forwarded opaque; it is only *validated* against its layout
//! ([`validate_args`]) so that a malformed argument list never reaches the shared broker
//! connection, where RabbitMQ would answer with a connection-level error.

use crate::table::{FieldTable, FieldValue};
use crate::wire::{Reader, WireError, Writer};
use bytes::{Bytes, BytesMut};

pub use crate::spec::{ids, spec, Field, MethodId, MethodSpec, Sender, METHODS};
use Field::*;

/// Checks that `args` is exactly the argument list of `spec`, with every field table
/// parseable by RabbitMQ.
pub fn validate_args(spec: &MethodSpec, args: &[u8]) -> Result<(), WireError> {
    let mut r = Reader::new(args);
    for field in spec.fields {
        match field {
            Octet => {
                r.u8()?;
            }
            Short => {
                r.u16()?;
            }
            Long => {
                r.u32()?;
            }
            LongLong | Timestamp => {
                r.u64()?;
            }
            ShortStr => {
                r.shortstr()?;
            }
            LongStr => {
                r.longstr()?;
            }
            Bit => {
                r.bit()?;
            }
            Table => {
                r.table()?;
            }
        }
    }
    r.finish()
}

/// Splits a method payload into its id and argument bytes.
pub fn split_payload(payload: &[u8]) -> Result<(MethodId, &[u8]), WireError> {
    let mut r = Reader::new(payload);
    let id = MethodId::new(r.u16()?, r.u16()?);
    Ok((id, r.rest()))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `connection.start`, as the proxy sends it to clients and reads it from the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionStart {
    /// The peer's properties, including `capabilities`.
    pub server_properties: FieldTable,
    /// Space-separated SASL mechanisms.
    pub mechanisms: String,
    /// Space-separated locales.
    pub locales: String,
}

/// `connection.start-ok`.
#[derive(Debug, Clone, PartialEq)]
pub struct StartOk {
    /// The client's properties (`connection_name`, `product`, `capabilities`, ...).
    pub client_properties: FieldTable,
    /// The chosen SASL mechanism.
    pub mechanism: String,
    /// The SASL response (credentials).
    pub response: Vec<u8>,
    /// The chosen locale.
    pub locale: String,
}

/// `connection.tune` and `connection.tune-ok` share this layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tune {
    /// Highest channel number; 0 means no limit.
    pub channel_max: u16,
    /// Largest frame in bytes; 0 means no limit.
    pub frame_max: u32,
    /// Heartbeat interval in seconds; 0 disables heartbeats.
    pub heartbeat: u16,
}

/// `connection.close` and `channel.close` share this layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// Reply code.
    pub code: u16,
    /// Reply text.
    pub text: String,
    /// Class of the method that caused the close.
    pub class_id: u16,
    /// Method that caused the close.
    pub method_id: u16,
}

impl From<&crate::reply::Reply> for Close {
    fn from(r: &crate::reply::Reply) -> Close {
        Close {
            code: r.code,
            text: r.text.clone(),
            class_id: r.class_method.0,
            method_id: r.class_method.1,
        }
    }
}

impl Close {
    /// The close as a [`crate::reply::Reply`], text kept verbatim.
    #[must_use]
    pub fn reply(&self) -> crate::reply::Reply {
        crate::reply::Reply {
            code: self.code,
            text: self.text.clone(),
            class_method: (self.class_id, self.method_id),
        }
    }
}

/// The methods the proxy reads. Methods it only forwards are [`Method::Other`].
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// `connection.start`
    Start(ConnectionStart),
    /// `connection.start-ok`
    StartOk(StartOk),
    /// `connection.tune`
    Tune(Tune),
    /// `connection.tune-ok`
    TuneOk(Tune),
    /// `connection.open`: the virtual host.
    Open {
        /// Virtual host path.
        vhost: String,
    },
    /// `connection.open-ok`
    OpenOk,
    /// `connection.close`
    ConnectionClose(Close),
    /// `connection.close-ok`
    ConnectionCloseOk,
    /// `connection.blocked`
    Blocked {
        /// Why the broker blocked publishers.
        reason: String,
    },
    /// `connection.unblocked`
    Unblocked,
    /// `channel.open`
    ChannelOpen,
    /// `channel.open-ok`
    ChannelOpenOk,
    /// `channel.flow`
    Flow {
        /// Whether the peer asks to resume (true) or pause (false).
        active: bool,
    },
    /// `channel.flow-ok`
    FlowOk {
        /// The flow state now in effect.
        active: bool,
    },
    /// `channel.close`
    ChannelClose(Close),
    /// `channel.close-ok`
    ChannelCloseOk,
    /// `basic.publish`: the flags that matter to the proxy.
    Publish {
        /// Return unroutable messages.
        mandatory: bool,
        /// The deprecated flag RabbitMQ refuses with a connection error.
        immediate: bool,
    },
    /// `queue.declare`
    QueueDeclare {
        /// Queue name, empty for a server-named queue.
        queue: Vec<u8>,
        /// Passive check only.
        passive: bool,
        /// Owned by the declaring connection.
        exclusive: bool,
        /// No `declare-ok` expected.
        nowait: bool,
        /// The `x-queue-type` argument, if it is a string: some methods on a stream or a
        /// quorum queue are connection errors in RabbitMQ.
        queue_type: Option<String>,
    },
    /// `queue.declare-ok`: the (possibly server-chosen) name.
    QueueDeclareOk {
        /// Queue name.
        queue: Vec<u8>,
    },
    /// `queue.delete`
    QueueDelete {
        /// Queue name.
        queue: Vec<u8>,
        /// No `delete-ok` comes back.
        nowait: bool,
    },
    /// `exchange.declare`: the type, which RabbitMQ checks with a connection error.
    ExchangeDeclare {
        /// Exchange type.
        kind: Vec<u8>,
        /// Passive check only.
        passive: bool,
    },
    /// `basic.qos`
    Qos {
        /// Prefetch window in bytes; RabbitMQ refuses non-zero with a connection error.
        prefetch_size: u32,
        /// Prefetch window in messages.
        prefetch_count: u16,
        /// For the whole channel rather than each new consumer.
        global: bool,
    },
    /// `basic.consume`
    Consume {
        /// Queue name, empty for the channel's last declared queue.
        queue: Vec<u8>,
        /// Consumer tag, empty for a server-generated one.
        tag: Vec<u8>,
        /// Deliveries need no acknowledgement.
        no_ack: bool,
        /// No `consume-ok` expected.
        nowait: bool,
        /// The `x-stream-offset` argument: RabbitMQ's channel crashes on some values of it
        /// for a stream, taking the connection with it.
        stream_offset: Option<FieldValue>,
    },
    /// `basic.get`
    Get {
        /// Queue name, empty for the channel's last declared queue.
        queue: Vec<u8>,
    },
    /// `queue.purge`
    Purge {
        /// Queue name, empty for the channel's last declared queue.
        queue: Vec<u8>,
    },
    /// `basic.ack`, `basic.nack` or `basic.reject`: deliveries settled by a client (or, from
    /// the broker, publishes confirmed).
    Settle {
        /// The delivery tag.
        tag: u64,
        /// Every tag up to this one (all so far if it is 0); never set on a reject.
        multiple: bool,
        /// An ack, rather than a nack or a reject.
        ack: bool,
    },
    /// `basic.consume-ok`
    ConsumeOk {
        /// The consumer tag in effect.
        tag: Vec<u8>,
    },
    /// `basic.cancel` (from either side).
    Cancel {
        /// Consumer tag.
        tag: Vec<u8>,
    },
    /// `basic.cancel-ok`
    CancelOk {
        /// Consumer tag.
        tag: Vec<u8>,
    },
    /// `basic.recover` and `basic.recover-async`.
    Recover {
        /// Requeue instead of redelivering to the same consumer.
        requeue: bool,
    },
    /// Any other method, forwarded as is.
    Other(MethodId),
}

/// Decodes a method payload the proxy may need to act on. Methods it never inspects come back
/// as [`Method::Other`] without their arguments being looked at.
pub fn decode(payload: &[u8]) -> Result<Method, WireError> {
    let (id, args) = split_payload(payload)?;
    let mut r = Reader::new(args);
    let m = match id {
        ids::CONNECTION_START => {
            let _major = r.u8()?;
            let _minor = r.u8()?;
            let server_properties = FieldTable::decode(r.table()?)?;
            Method::Start(ConnectionStart {
                server_properties,
                mechanisms: lossy(r.longstr()?),
                locales: lossy(r.longstr()?),
            })
        }
        ids::CONNECTION_START_OK => Method::StartOk(StartOk {
            client_properties: FieldTable::decode(r.table()?)?,
            mechanism: lossy(r.shortstr()?),
            response: r.longstr()?.to_vec(),
            locale: lossy(r.shortstr()?),
        }),
        ids::CONNECTION_TUNE | ids::CONNECTION_TUNE_OK => {
            let t = Tune {
                channel_max: r.u16()?,
                frame_max: r.u32()?,
                heartbeat: r.u16()?,
            };
            if id == ids::CONNECTION_TUNE {
                Method::Tune(t)
            } else {
                Method::TuneOk(t)
            }
        }
        ids::CONNECTION_OPEN => {
            let vhost = lossy(r.shortstr()?);
            r.shortstr()?;
            r.bit()?;
            Method::Open { vhost }
        }
        ids::CONNECTION_OPEN_OK => {
            r.shortstr()?;
            Method::OpenOk
        }
        ids::CONNECTION_CLOSE | ids::CHANNEL_CLOSE => {
            let c = Close {
                code: r.u16()?,
                text: lossy(r.shortstr()?),
                class_id: r.u16()?,
                method_id: r.u16()?,
            };
            if id == ids::CONNECTION_CLOSE {
                Method::ConnectionClose(c)
            } else {
                Method::ChannelClose(c)
            }
        }
        ids::CONNECTION_CLOSE_OK => Method::ConnectionCloseOk,
        ids::CONNECTION_BLOCKED => Method::Blocked {
            reason: lossy(r.shortstr()?),
        },
        ids::CONNECTION_UNBLOCKED => Method::Unblocked,
        ids::CHANNEL_OPEN => {
            r.shortstr()?;
            Method::ChannelOpen
        }
        ids::CHANNEL_OPEN_OK => {
            r.longstr()?;
            Method::ChannelOpenOk
        }
        ids::CHANNEL_FLOW => Method::Flow { active: r.bit()? },
        ids::CHANNEL_FLOW_OK => Method::FlowOk { active: r.bit()? },
        ids::CHANNEL_CLOSE_OK => Method::ChannelCloseOk,
        ids::BASIC_PUBLISH => {
            r.u16()?;
            r.shortstr()?;
            r.shortstr()?;
            Method::Publish {
                mandatory: r.bit()?,
                immediate: r.bit()?,
            }
        }
        ids::QUEUE_DECLARE => {
            r.u16()?;
            let queue = r.shortstr()?.to_vec();
            let passive = r.bit()?;
            let _durable = r.bit()?;
            let exclusive = r.bit()?;
            let _auto_delete = r.bit()?;
            let nowait = r.bit()?;
            let queue_type = FieldTable::decode(r.table()?)?.get_str("x-queue-type");
            Method::QueueDeclare {
                queue,
                passive,
                exclusive,
                nowait,
                queue_type,
            }
        }
        ids::QUEUE_DECLARE_OK => Method::QueueDeclareOk {
            queue: r.shortstr()?.to_vec(),
        },
        ids::QUEUE_DELETE => {
            r.u16()?;
            let queue = r.shortstr()?.to_vec();
            let _if_unused = r.bit()?;
            let _if_empty = r.bit()?;
            Method::QueueDelete {
                queue,
                nowait: r.bit()?,
            }
        }
        ids::EXCHANGE_DECLARE => {
            r.u16()?;
            r.shortstr()?;
            let kind = r.shortstr()?.to_vec();
            Method::ExchangeDeclare {
                kind,
                passive: r.bit()?,
            }
        }
        ids::BASIC_QOS => Method::Qos {
            prefetch_size: r.u32()?,
            prefetch_count: r.u16()?,
            global: r.bit()?,
        },
        ids::BASIC_CONSUME => {
            r.u16()?;
            let queue = r.shortstr()?.to_vec();
            let tag = r.shortstr()?.to_vec();
            let _no_local = r.bit()?;
            let no_ack = r.bit()?;
            let _exclusive = r.bit()?;
            let nowait = r.bit()?;
            let stream_offset = FieldTable::decode(r.table()?)?.take("x-stream-offset");
            Method::Consume {
                queue,
                tag,
                no_ack,
                nowait,
                stream_offset,
            }
        }
        ids::BASIC_ACK | ids::BASIC_NACK | ids::BASIC_REJECT => Method::Settle {
            tag: r.u64()?,
            multiple: id != ids::BASIC_REJECT && r.bit()?,
            ack: id == ids::BASIC_ACK,
        },
        ids::BASIC_GET | ids::QUEUE_PURGE => {
            r.u16()?;
            let queue = r.shortstr()?.to_vec();
            if id == ids::BASIC_GET {
                Method::Get { queue }
            } else {
                Method::Purge { queue }
            }
        }
        ids::BASIC_CONSUME_OK => Method::ConsumeOk {
            tag: r.shortstr()?.to_vec(),
        },
        ids::BASIC_CANCEL => Method::Cancel {
            tag: r.shortstr()?.to_vec(),
        },
        ids::BASIC_CANCEL_OK => Method::CancelOk {
            tag: r.shortstr()?.to_vec(),
        },
        ids::BASIC_RECOVER | ids::BASIC_RECOVER_ASYNC => Method::Recover { requeue: r.bit()? },
        other => Method::Other(other),
    };
    Ok(m)
}

/// Encoders for the methods the proxy originates. Each returns one whole frame.
pub mod encode {
    use super::*;
    use crate::frame::method_frame;

    /// `connection.start` (version 0-9).
    #[must_use]
    pub fn start(start: &ConnectionStart) -> Bytes {
        method_frame(0, ids::CONNECTION_START, |w| {
            w.u8(0).u8(9);
            table(w, &start.server_properties);
            w.longstr(start.mechanisms.as_bytes())
                .longstr(start.locales.as_bytes());
        })
    }

    /// `connection.start-ok`.
    #[must_use]
    pub fn start_ok(s: &StartOk) -> Bytes {
        method_frame(0, ids::CONNECTION_START_OK, |w| {
            table(w, &s.client_properties);
            w.shortstr(s.mechanism.as_bytes())
                .longstr(&s.response)
                .shortstr(s.locale.as_bytes());
        })
    }

    /// `connection.tune` (`ok == false`) or `connection.tune-ok` (`ok == true`).
    #[must_use]
    pub fn tune(t: Tune, ok: bool) -> Bytes {
        let id = if ok {
            ids::CONNECTION_TUNE_OK
        } else {
            ids::CONNECTION_TUNE
        };
        method_frame(0, id, |w| {
            w.u16(t.channel_max).u32(t.frame_max).u16(t.heartbeat);
        })
    }

    /// `connection.open`.
    #[must_use]
    pub fn open(vhost: &str) -> Bytes {
        method_frame(0, ids::CONNECTION_OPEN, |w| {
            w.shortstr(vhost.as_bytes()).shortstr(b"").bit(false);
        })
    }

    /// `connection.open-ok`.
    #[must_use]
    pub fn open_ok() -> Bytes {
        method_frame(0, ids::CONNECTION_OPEN_OK, |w| {
            w.shortstr(b"");
        })
    }

    /// `connection.close` (channel 0) or `channel.close` (any other channel).
    #[must_use]
    pub fn close(channel: u16, c: &Close) -> Bytes {
        let id = if channel == 0 {
            ids::CONNECTION_CLOSE
        } else {
            ids::CHANNEL_CLOSE
        };
        method_frame(channel, id, |w| {
            w.u16(c.code)
                .shortstr(c.text.as_bytes())
                .u16(c.class_id)
                .u16(c.method_id);
        })
    }

    /// `connection.close-ok` (channel 0) or `channel.close-ok`.
    #[must_use]
    pub fn close_ok(channel: u16) -> Bytes {
        let id = if channel == 0 {
            ids::CONNECTION_CLOSE_OK
        } else {
            ids::CHANNEL_CLOSE_OK
        };
        method_frame(channel, id, |_| {})
    }

    /// `connection.blocked`.
    #[must_use]
    pub fn blocked(reason: &str) -> Bytes {
        method_frame(0, ids::CONNECTION_BLOCKED, |w| {
            w.shortstr(reason.as_bytes());
        })
    }

    /// `connection.unblocked`.
    #[must_use]
    pub fn unblocked() -> Bytes {
        method_frame(0, ids::CONNECTION_UNBLOCKED, |_| {})
    }

    /// `connection.update-secret-ok`.
    #[must_use]
    pub fn update_secret_ok() -> Bytes {
        method_frame(0, ids::CONNECTION_UPDATE_SECRET_OK, |_| {})
    }

    /// `channel.open`.
    #[must_use]
    pub fn channel_open(channel: u16) -> Bytes {
        method_frame(channel, ids::CHANNEL_OPEN, |w| {
            w.shortstr(b"");
        })
    }

    /// `channel.open-ok`.
    #[must_use]
    pub fn channel_open_ok(channel: u16) -> Bytes {
        method_frame(channel, ids::CHANNEL_OPEN_OK, |w| {
            w.longstr(b"");
        })
    }

    /// `channel.flow` (`ok == false`) or `channel.flow-ok`.
    #[must_use]
    pub fn flow(channel: u16, active: bool, ok: bool) -> Bytes {
        let id = if ok {
            ids::CHANNEL_FLOW_OK
        } else {
            ids::CHANNEL_FLOW
        };
        method_frame(channel, id, |w| {
            w.bit(active);
        })
    }

    /// `queue.delete` of a queue by name, waiting for `delete-ok`.
    #[must_use]
    pub fn queue_delete(channel: u16, queue: &[u8]) -> Bytes {
        method_frame(channel, ids::QUEUE_DELETE, |w| {
            w.u16(0).shortstr(queue).bit(false).bit(false).bit(false);
        })
    }

    /// `exchange.declare` of `exchange` with type `kind`, nothing else set: how a hub asks
    /// the broker whether it knows a type (`hub::exchange_types`).
    #[must_use]
    pub fn exchange_declare(channel: u16, exchange: &[u8], kind: &[u8]) -> Bytes {
        method_frame(channel, ids::EXCHANGE_DECLARE, |w| {
            w.u16(0).shortstr(exchange).shortstr(kind);
            w.bit(false).bit(false).bit(false).bit(false).bit(false);
            table(w, &FieldTable::default());
        })
    }

    fn table(w: &mut Writer<'_>, t: &FieldTable) {
        let mut buf = BytesMut::new();
        t.encode(&mut buf);
        w.raw(&buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameDecoder, FrameType};
    use crate::table::{longstr, FieldValue};

    fn payload_of(frame: &Bytes) -> Vec<u8> {
        let mut buf = BytesMut::from(&frame[..]);
        let f = FrameDecoder::new(1 << 20)
            .decode(&mut buf)
            .unwrap()
            .unwrap();
        assert_eq!(f.kind(), FrameType::Method);
        f.payload().to_vec()
    }

    #[test]
    fn spec_table_is_sorted_and_complete() {
        assert!(METHODS.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(METHODS.len(), 66);
        assert_eq!(spec(ids::BASIC_PUBLISH).unwrap().name, "basic.publish");
        assert!(spec(ids::BASIC_PUBLISH).unwrap().content);
        assert!(spec(MethodId::new(60, 99)).is_none());
        assert!(!spec(ids::BASIC_DELIVER).unwrap().client_may_send());
    }

    #[test]
    fn encoded_methods_round_trip() {
        let close = Close {
            code: 404,
            text: "NOT_FOUND - no queue 'q'".into(),
            class_id: 50,
            method_id: 10,
        };
        let cases: Vec<(Bytes, Method)> = vec![
            (
                encode::tune(
                    Tune {
                        channel_max: 2047,
                        frame_max: 131072,
                        heartbeat: 60,
                    },
                    false,
                ),
                Method::Tune(Tune {
                    channel_max: 2047,
                    frame_max: 131072,
                    heartbeat: 60,
                }),
            ),
            (encode::open("/"), Method::Open { vhost: "/".into() }),
            (encode::open_ok(), Method::OpenOk),
            (
                encode::close(0, &close),
                Method::ConnectionClose(close.clone()),
            ),
            (
                encode::close(3, &close),
                Method::ChannelClose(close.clone()),
            ),
            (encode::close_ok(0), Method::ConnectionCloseOk),
            (encode::close_ok(3), Method::ChannelCloseOk),
            (
                encode::blocked("low on memory"),
                Method::Blocked {
                    reason: "low on memory".into(),
                },
            ),
            (encode::unblocked(), Method::Unblocked),
            (encode::channel_open(1), Method::ChannelOpen),
            (encode::channel_open_ok(1), Method::ChannelOpenOk),
            (encode::flow(1, true, false), Method::Flow { active: true }),
            (
                encode::queue_delete(2, b"q1"),
                Method::QueueDelete {
                    queue: b"q1".to_vec(),
                    nowait: false,
                },
            ),
        ];
        for (frame, expected) in cases {
            let p = payload_of(&frame);
            assert_eq!(decode(&p).unwrap(), expected);
            let (id, args) = split_payload(&p).unwrap();
            validate_args(spec(id).unwrap(), args).unwrap();
        }
    }

    #[test]
    fn start_and_start_ok_round_trip() {
        let start = ConnectionStart {
            server_properties: FieldTable::default().with("product", longstr("warren")),
            mechanisms: "PLAIN AMQPLAIN".into(),
            locales: "en_US".into(),
        };
        let p = payload_of(&encode::start(&start));
        assert_eq!(decode(&p).unwrap(), Method::Start(start));
        let ok = StartOk {
            client_properties: FieldTable::default()
                .with("capabilities", FieldValue::Table(FieldTable::default())),
            mechanism: "PLAIN".into(),
            response: b"\0guest\0guest".to_vec(),
            locale: "en_US".into(),
        };
        let p = payload_of(&encode::start_ok(&ok));
        assert_eq!(decode(&p).unwrap(), Method::StartOk(ok));
    }

    #[test]
    fn agrees_with_amq_protocol() {
        use amq_protocol::frame::{parse_frame, AMQPFrame};
        use amq_protocol::protocol::{channel, connection, AMQPClass};
        let frame = encode::close(
            5,
            &Close {
                code: 406,
                text: "PRECONDITION_FAILED - x".into(),
                class_id: 60,
                method_id: 40,
            },
        );
        let (_, parsed) = parse_frame(&frame[..]).unwrap();
        match parsed {
            AMQPFrame::Method(5, AMQPClass::Channel(channel::AMQPMethod::Close(c))) => {
                assert_eq!(c.reply_code, 406);
                assert_eq!(c.reply_text.as_str(), "PRECONDITION_FAILED - x");
                assert_eq!((c.class_id, c.method_id), (60, 40));
            }
            other => panic!("unexpected {other:?}"),
        }
        let (_, parsed) = parse_frame(
            &encode::tune(
                Tune {
                    channel_max: 7,
                    frame_max: 4096,
                    heartbeat: 5,
                },
                true,
            )[..],
        )
        .unwrap();
        match parsed {
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::TuneOk(t))) => {
                assert_eq!((t.channel_max, t.frame_max, t.heartbeat), (7, 4096, 5));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn validation_rejects_short_long_and_bad_tables() {
        let publish = spec(ids::BASIC_PUBLISH).unwrap();
        // reserved, exchange "", routing key "rk", bits
        assert_eq!(validate_args(publish, b"\0\0\0\x02rk\0"), Ok(()));
        assert_eq!(
            validate_args(publish, b"\0\0\0\x02rk"),
            Err(WireError::Truncated)
        );
        assert_eq!(
            validate_args(publish, b"\0\0\0\x02rk\0\0"),
            Err(WireError::TrailingBytes)
        );
        let declare = spec(ids::QUEUE_DECLARE).unwrap();
        let bad_table = b"\0\0\x01q\0\0\0\0\x03\x01kZ";
        assert_eq!(
            validate_args(declare, bad_table),
            Err(WireError::BadFieldType(b'Z'))
        );
    }
}
