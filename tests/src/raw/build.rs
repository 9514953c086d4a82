//! Frames a test sends with the raw client: well-formed ones for the methods warren's
//! encoder does not offer, and helpers to break them.

use super::*;
use warren_core::frame::method_frame;

/// `basic.publish` to `exchange` with `routing_key`.
#[must_use]
pub fn publish(
    ch: u16,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
    immediate: bool,
) -> Bytes {
    method_frame(ch, ids::BASIC_PUBLISH, |w| {
        w.u16(0)
            .shortstr(exchange.as_bytes())
            .shortstr(routing_key.as_bytes())
            .bit(mandatory)
            .bit(immediate);
    })
}

/// A basic-class content header announcing `body_size` bytes, without properties.
#[must_use]
pub fn header(ch: u16, body_size: u64) -> Bytes {
    header_with(ch, body_size, false)
}

/// A basic-class content header announcing `body_size` bytes; `persistent` sets
/// delivery-mode 2 (the only property it writes).
#[must_use]
pub fn header_with(ch: u16, body_size: u64, persistent: bool) -> Bytes {
    let mut p = Vec::with_capacity(16);
    p.extend_from_slice(&60u16.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes());
    p.extend_from_slice(&body_size.to_be_bytes());
    if persistent {
        // Property flags: bit 12 (delivery-mode), then its octet.
        p.extend_from_slice(&(1u16 << 12).to_be_bytes());
        p.push(2);
    } else {
        p.extend_from_slice(&0u16.to_be_bytes());
    }
    Frame::new(FrameType::Header, ch, &p).freeze()
}

/// A content body frame.
#[must_use]
pub fn body(ch: u16, data: &[u8]) -> Bytes {
    Frame::new(FrameType::Body, ch, data).freeze()
}

/// Method, header and body frames (of at most `frame_max` bytes each) of one publish.
#[must_use]
pub fn publish_frames(
    ch: u16,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    persistent: bool,
    frame_max: u32,
) -> Vec<Bytes> {
    let mut frames = vec![
        publish(ch, exchange, routing_key, false, false),
        header_with(ch, body.len() as u64, persistent),
    ];
    let chunk = (frame_max as usize).saturating_sub(8).max(1);
    frames.extend(body.chunks(chunk).map(|c| self::body(ch, c)));
    frames
}

/// `queue.declare` of `name` (durable unless exclusive), with `x-expires` of 10 minutes.
#[must_use]
pub fn queue_declare(ch: u16, name: &str, exclusive: bool) -> Bytes {
    let args = FieldTable::default().with("x-expires", FieldValue::I32(600_000));
    declare_with(ch, name, exclusive, &args)
}

/// `queue.declare` of durable queue `name` with `x-queue-type` `kind` ("stream", "quorum"),
/// as pika and lapin clients declare them. No `x-expires`: streams refuse it, so a test
/// deletes these queues itself (or with its vhost).
#[must_use]
pub fn typed_queue_declare(ch: u16, name: &str, kind: &str) -> Bytes {
    let args = FieldTable::default().with("x-queue-type", longstr(kind));
    declare_with(ch, name, false, &args)
}

/// `queue.declare` of `name` (durable unless exclusive) with arguments `args`.
fn declare_with(ch: u16, name: &str, exclusive: bool, args: &FieldTable) -> Bytes {
    let mut table = BytesMut::new();
    args.encode(&mut table);
    method_frame(ch, ids::QUEUE_DECLARE, |w| {
        w.u16(0)
            .shortstr(name.as_bytes())
            .bit(false) // passive
            .bit(!exclusive) // durable
            .bit(exclusive)
            .bit(false) // auto-delete
            .bit(false) // nowait
            .raw(&table);
    })
}

/// `queue.purge` of `queue`.
#[must_use]
pub fn purge(ch: u16, queue: &str) -> Bytes {
    method_frame(ch, ids::QUEUE_PURGE, |w| {
        w.u16(0).shortstr(queue.as_bytes()).bit(false); // nowait
    })
}

/// `exchange.declare` of `name` with type `kind`.
#[must_use]
pub fn exchange_declare(ch: u16, name: &str, kind: &str) -> Bytes {
    let table = no_arguments();
    method_frame(ch, ids::EXCHANGE_DECLARE, |w| {
        w.u16(0)
            .shortstr(name.as_bytes())
            .shortstr(kind.as_bytes())
            .bit(false) // passive
            .bit(false) // durable
            .bit(true) // auto-delete
            .bit(false) // internal
            .bit(false) // nowait
            .raw(&table);
    })
}

/// `queue.bind` of `queue` to `exchange` with `routing_key`, no arguments.
#[must_use]
pub fn queue_bind(ch: u16, queue: &str, exchange: &str, routing_key: &str) -> Bytes {
    let table = no_arguments();
    method_frame(ch, ids::QUEUE_BIND, |w| {
        w.u16(0)
            .shortstr(queue.as_bytes())
            .shortstr(exchange.as_bytes())
            .shortstr(routing_key.as_bytes())
            .bit(false) // nowait
            .raw(&table);
    })
}

/// `channel.close` with reply 200, naming no method.
#[must_use]
pub fn channel_close(ch: u16) -> Bytes {
    let c = method::Close {
        code: 200,
        text: "done".into(),
        class_id: 0,
        method_id: 0,
    };
    encode::close(ch, &c)
}

/// `basic.qos` for each consumer of the channel (global=false).
#[must_use]
pub fn qos(ch: u16, prefetch_size: u32, prefetch_count: u16) -> Bytes {
    qos_with(ch, prefetch_size, prefetch_count, false)
}

/// `basic.qos` with global=true: RabbitMQ 3.10 takes it as a limit shared by the channel's
/// consumers, which quorum queues do not support.
#[must_use]
pub fn global_qos(ch: u16, prefetch_count: u16) -> Bytes {
    qos_with(ch, 0, prefetch_count, true)
}

/// `basic.qos` with every field chosen.
fn qos_with(ch: u16, prefetch_size: u32, prefetch_count: u16, global: bool) -> Bytes {
    method_frame(ch, ids::BASIC_QOS, |w| {
        w.u32(prefetch_size).u16(prefetch_count).bit(global);
    })
}

/// `basic.consume` of `queue` with consumer tag `tag`.
#[must_use]
pub fn consume(ch: u16, queue: &str, tag: &str, no_ack: bool) -> Bytes {
    consume_with(ch, queue, tag, no_ack, &FieldTable::default())
}

/// `basic.consume` of `queue` with consumer tag `tag` and arguments `args` (such as a
/// stream's `x-stream-offset`).
#[must_use]
pub fn consume_with(ch: u16, queue: &str, tag: &str, no_ack: bool, args: &FieldTable) -> Bytes {
    let mut table = BytesMut::new();
    args.encode(&mut table);
    method_frame(ch, ids::BASIC_CONSUME, |w| {
        w.u16(0)
            .shortstr(queue.as_bytes())
            .shortstr(tag.as_bytes())
            .bit(false) // no-local
            .bit(no_ack)
            .bit(false) // exclusive
            .bit(false) // nowait
            .raw(&table);
    })
}

/// `basic.get` of `queue`.
#[must_use]
pub fn get(ch: u16, queue: &str, no_ack: bool) -> Bytes {
    method_frame(ch, ids::BASIC_GET, |w| {
        w.u16(0).shortstr(queue.as_bytes()).bit(no_ack);
    })
}

/// `basic.ack`.
#[must_use]
pub fn ack(ch: u16, delivery_tag: u64, multiple: bool) -> Bytes {
    method_frame(ch, ids::BASIC_ACK, |w| {
        w.u64(delivery_tag).bit(multiple);
    })
}

/// `basic.nack` of `delivery_tag` (every tag up to it with `multiple`), requeueing.
#[must_use]
pub fn nack(ch: u16, delivery_tag: u64, multiple: bool) -> Bytes {
    method_frame(ch, ids::BASIC_NACK, |w| {
        w.u64(delivery_tag).bit(multiple).bit(true); // requeue
    })
}

/// `basic.reject` of `delivery_tag`, requeueing.
#[must_use]
pub fn reject(ch: u16, delivery_tag: u64) -> Bytes {
    method_frame(ch, ids::BASIC_REJECT, |w| {
        w.u64(delivery_tag).bit(true); // requeue
    })
}

/// `basic.recover` (synchronous).
#[must_use]
pub fn recover(ch: u16, requeue: bool) -> Bytes {
    method_frame(ch, ids::BASIC_RECOVER, |w| {
        w.bit(requeue);
    })
}

/// `confirm.select`.
#[must_use]
pub fn confirm_select(ch: u16) -> Bytes {
    method_frame(ch, ids::CONFIRM_SELECT, |w| {
        w.bit(false);
    })
}

/// `channel.flow` asking the server to pause (`false`) or resume (`true`).
#[must_use]
pub fn flow(ch: u16, active: bool) -> Bytes {
    encode::flow(ch, active, false)
}

/// `frame` with its end octet replaced by `end`.
#[must_use]
pub fn with_end(frame: &Bytes, end: u8) -> Bytes {
    let mut v = frame.to_vec();
    if let Some(last) = v.last_mut() {
        *last = end;
    }
    Bytes::from(v)
}

/// Only the 7-byte header of a frame of type `kind` announcing `size` payload bytes.
#[must_use]
pub fn frame_header_only(kind: u8, ch: u16, size: u32) -> Bytes {
    let mut v = Vec::with_capacity(7);
    v.push(kind);
    v.extend_from_slice(&ch.to_be_bytes());
    v.extend_from_slice(&size.to_be_bytes());
    Bytes::from(v)
}

/// An empty field table, encoded: the arguments of a method sent without any.
fn no_arguments() -> BytesMut {
    let mut table = BytesMut::new();
    FieldTable::default().encode(&mut table);
    table
}
