//! The `hub_client` input format: operations ([`HubOp`], [`Build`]), a writer for seed
//! corpora ([`HubInput`]) and the reader the target uses.

// ----- the input ------------------------------------------------------------------------

/// The operations of a `hub_client` input. An operation is its code byte (taken modulo 16;
/// codes 11 to 15 are more [`HubOp::Frames`], the most useful operation) followed by the
/// argument bytes listed here. A `who` byte picks a fuzzed client (modulo the number that
/// have joined, gone ones included: the hub must ignore late events for them); a `which`
/// byte picks an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HubOp {
    /// `who`, `channel`, a [`Build`] code, then its arguments: frames built so that they
    /// pass (or just fail) validation.
    Frames = 0,
    /// `who`, a length (one byte, or 255 then a big-endian u16), that many raw bytes.
    Raw = 1,
    /// `which`, `count` (0: all): the broker sends that many of the replies it owes.
    Replies = 2,
    /// `which`, `kind`, `pick`, `size`: the broker acts on its own. `kind` modulo 6: 0-1
    /// closes a channel (404), 2-3 delivers a message of a size picked by `size`, 4 cancels a
    /// consumer, 5 blocks (odd `pick`) or unblocks the connection.
    Broker = 3,
    /// `step`: virtual time passes, the broker sending heartbeats every second (0: a
    /// spurious timeout).
    Advance = 4,
    /// The canary publishes a message.
    CanaryPublish = 5,
    /// The broker delivers a message to the canary.
    CanaryDelivery = 6,
    /// `who`: the client's socket closes.
    Drop = 7,
    /// `who`: the client stopped reading its output (B9).
    Slow = 8,
    /// A new fuzzed client joins (at most four join in a run).
    Join = 9,
    /// The broker sends everything it owes, until it owes nothing.
    Settle = 10,
}

/// What a [`HubOp::Frames`] operation builds, after its `who` and `channel` bytes. The
/// channel byte gives channels 1 to 4 below 192, channel 0 below 224, the client's
/// channel_max + 1 below 240, and otherwise the next two bytes. Each kind reads the argument
/// bytes listed here; a flag byte's bits are listed from bit 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Build {
    /// `channel.open`.
    Open = 0,
    /// `channel.close` 200.
    Close = 1,
    /// `channel.close-ok`.
    CloseOk = 2,
    /// `flags` (mandatory; immediate when bits 1-3 are all set; bits 4-5 exchange; bit 6
    /// empty routing key), `size`, `chunk`: a whole publish, method, header and bodies.
    Publish = 3,
    /// `flags` as for `Publish`: the method alone.
    PublishMethod = 4,
    /// `flags` (class 50 instead of 60 when bits 0-2 are set; bit 4 a malformed property
    /// list), `size`: a content header alone.
    Header = 5,
    /// `size`: one body frame alone.
    Body = 6,
    /// `type`, `flags` (passive, nowait, durable; bits 4-5 name).
    ExchangeDeclare = 7,
    /// `flags` (passive, durable, exclusive, auto-delete, nowait; bits 5-7 name).
    QueueDeclare = 8,
    /// `flags` (if-unused, if-empty, nowait; bits 5-7 name).
    QueueDelete = 9,
    /// `flags` (modulo 3 bind, unbind, purge; bit 2 nowait; bits 5-7 queue).
    QueueOther = 10,
    /// `flags` (no-local, no-ack, exclusive, nowait; bits 4-5 tag; bits 6-7 queue).
    Consume = 11,
    /// `flags` (nowait; bits 4-5 tag).
    Cancel = 12,
    /// `flags` (bits 0-1: prefetch_size 4096 when 3; bit 2 global), `count`.
    Qos = 13,
    /// `flags` (active).
    Flow = 14,
    /// `which` (modulo 3: select, commit, rollback).
    Tx = 15,
    /// `flags` (nowait).
    Confirm = 16,
    /// `which` (modulo 3: ack, nack, reject; bit 2 multiple; bit 3 requeue), `tag`.
    Ack = 17,
    /// `flags` (async; requeue).
    Recover = 18,
    /// `flags` (no-ack; bits 5-7 queue).
    Get = 19,
    /// `which` (modulo 6: connection.close, connection.close-ok, update-secret, a
    /// heartbeat frame, tune-ok, connection.open), on the picked channel.
    Connection = 20,
    /// `which` (modulo 4: exchange.delete, exchange.bind, exchange.unbind, access.request).
    ExchangeOther = 21,
    /// `index`: any method of the protocol (`METHODS[index]`) with zeroed arguments.
    AnyMethod = 22,
    /// `size`: a `queue.declare` whose arguments table makes the frame a few hundred bytes,
    /// just over 4 KiB, 8 KiB or 128 KiB.
    BigMethod = 23,
    /// `flags` (bit 0 quorum, else stream; passive, non-durable, exclusive, auto-delete;
    /// bits 5-7 name), `more` (bit 0 nowait; bit 1 `x-queue-type: classic` instead): a
    /// `queue.declare` with `x-queue-type`, whose confirmed type warren learns (B7).
    TypedDeclare = 24,
    /// `flags` (no-ack; nowait; bits 2-3 `x-stream-offset` first, 1, "bogus", true; bits
    /// 4-5 tag; bits 6-7 queue): a `basic.consume` with a stream offset, or with one that
    /// is none.
    StreamConsume = 25,
}

/// How many [`Build`] kinds there are: a build byte is read modulo this.
pub(super) const BUILD_KINDS: u8 = 26;

/// Writes `hub_client` inputs operation by operation, for seed corpora and tests.
#[derive(Debug, Clone)]
pub struct HubInput {
    pub(super) bytes: Vec<u8>,
}

impl HubInput {
    /// An input that starts with these configuration bytes (all zero gives the defaults
    /// shown first):
    /// - byte 0, the hub: bit 0 turns recycling off; bit 1 places by spreading; bits 2-3 pool
    ///   size 64, 1, 2, 0; bits 4-5 max upstreams 2, 1, 3, 4; bit 6 max_message_size 4096;
    ///   bit 7 client_buffer_limit 8192;
    /// - byte 1, the broker's tune: bits 0-2 channel_max 0 (no limit), 2047, 2, 3, 5, 8, 1,
    ///   64; bits 3-4 frame_max 131072, 4096, 0, 8192; bits 5-6 heartbeat 60, 5, 0, 600;
    ///   bit 7 makes warren ask for frame_max 4096;
    /// - byte 2, the fuzzed clients' tune: bits 0-1 frame_max 131072, 4096, 8192, 65536;
    ///   bits 2-3 channel_max 2047, 1, 4, 65535; bits 4-5 heartbeat 0, 0, 5, 60; bit 6 no
    ///   `consumer_cancel_notify`; bit 7 no `connection.blocked`;
    /// - byte 3 seeds the hub's reconnect jitter.
    #[must_use]
    pub fn new(config: [u8; 4]) -> Self {
        HubInput {
            bytes: config.to_vec(),
        }
    }

    /// Appends an operation and its argument bytes.
    #[must_use]
    pub fn op(mut self, op: HubOp, args: &[u8]) -> Self {
        self.bytes.push(op as u8);
        self.bytes.extend_from_slice(args);
        self
    }

    /// Appends [`HubOp::Settle`]: the broker answers everything sent so far.
    #[must_use]
    pub fn settle(self) -> Self {
        self.op(HubOp::Settle, &[])
    }

    /// Appends raw bytes from fuzzed client `who`, writing the length for you (at most
    /// 65535 bytes).
    #[must_use]
    pub fn raw(mut self, who: u8, data: &[u8]) -> Self {
        let data = &data[..data.len().min(usize::from(u16::MAX))];
        self.bytes.extend_from_slice(&[HubOp::Raw as u8, who]);
        match u8::try_from(data.len()) {
            Ok(n) if n < 255 => self.bytes.push(n),
            _ => {
                self.bytes.push(255);
                self.bytes
                    .extend_from_slice(&(data.len() as u16).to_be_bytes());
            }
        }
        self.bytes.extend_from_slice(data);
        self
    }

    /// Appends a [`HubOp::Frames`] operation.
    #[must_use]
    pub fn build(mut self, who: u8, channel: u8, kind: Build, args: &[u8]) -> Self {
        self.bytes
            .extend_from_slice(&[HubOp::Frames as u8, who, channel, kind as u8]);
        self.bytes.extend_from_slice(args);
        self
    }

    /// The input.
    #[must_use]
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// The input's bytes so far, so that a seed corpus can store an input as it is.
impl AsRef<[u8]> for HubInput {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Reads the input; missing bytes read as zero.
pub(super) struct Src<'a> {
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Src<'a> {
    pub(super) fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub(super) fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos = self.pos.saturating_add(1);
        b
    }

    pub(super) fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    pub(super) fn len(&mut self) -> usize {
        match self.byte() {
            255 => usize::from(self.u16()),
            n => usize::from(n),
        }
    }

    pub(super) fn take(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        &self.data[start..end]
    }
}
