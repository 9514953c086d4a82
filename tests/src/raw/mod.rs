//! A raw AMQP 0-9-1 client for tests: frames are built with `warren_core`'s own codec and
//! written to a plain tokio TCP socket, so a test can send exactly the bytes it wants —
//! including the malformed input that lapin and amqprs never would — and see exactly what
//! comes back (reply codes, texts, `Connection.Blocked`, heartbeats).
//!
//! [`RawClient::connect`] runs the whole handshake (protocol header, `StartOk` with PLAIN and
//! the capabilities `authentication_failure_close`, `connection.blocked` and
//! `consumer_cancel_notify`, `TuneOk` with the frame_max and heartbeat the test chose,
//! `Open`). After that, [`RawClient::send`] / [`RawClient::send_raw`] write, and
//! [`RawClient::recv`] returns the next frame that is not a heartbeat. Heartbeats from the
//! server are counted and, if [`RawClient::set_answer_heartbeats`] is on (the default), echoed
//! whenever the client reads. The [`build`] module makes the frames tests need.
//!
//! Every read has an upper bound ([`RECV_LIMIT`] unless the caller gives one), so a missing
//! answer is a test failure, never a hang.

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use warren_core::frame::{Frame, FrameDecoder, FrameType, HEARTBEAT, PROTOCOL_HEADER};
use warren_core::method::{self, encode, ids, Method, MethodId, StartOk, Tune};
use warren_core::table::{longstr, FieldTable, FieldValue};
use warren_core::wire::{Reader, WireError};

/// Upper bound of one [`RawClient::recv`] (a missing frame becomes an error, not a hang).
pub const RECV_LIMIT: Duration = Duration::from_secs(30);

/// Largest frame the raw client accepts from the server, whatever was negotiated: tests want
/// to see what the server sends, not to police it.
const DECODE_MAX: u32 = 64 * 1024 * 1024;

/// How a [`RawClient`] connects: credentials and what it negotiates.
#[derive(Debug, Clone)]
pub struct RawOptions {
    /// User name (PLAIN).
    pub user: String,
    /// Password (PLAIN).
    pub password: String,
    /// Virtual host.
    pub vhost: String,
    /// frame_max asked for in `TuneOk`; 0 takes the server's.
    pub frame_max: u32,
    /// channel_max asked for in `TuneOk`; 0 takes the server's.
    pub channel_max: u16,
    /// Heartbeat interval in seconds asked for in `TuneOk`; 0 disables heartbeats.
    pub heartbeat: u16,
    /// Advertise `authentication_failure_close`, `connection.blocked` and
    /// `consumer_cancel_notify` in the client properties.
    pub capabilities: bool,
    /// `connection_name` client property.
    pub connection_name: Option<String>,
    /// `SO_RCVBUF` of the socket, set before connecting: a small one makes a client that
    /// stops reading look stalled to the server sooner.
    pub recv_buffer: Option<u32>,
}

impl RawOptions {
    /// Options for `user`/`password` on `vhost`: the server's frame_max and channel_max, no
    /// heartbeat, all three capabilities advertised.
    #[must_use]
    pub fn new(user: &str, password: &str, vhost: &str) -> Self {
        RawOptions {
            user: user.to_owned(),
            password: password.to_owned(),
            vhost: vhost.to_owned(),
            frame_max: 0,
            channel_max: 0,
            heartbeat: 0,
            capabilities: true,
            connection_name: Some("warren-tests raw client".to_owned()),
            recv_buffer: None,
        }
    }

    /// Asks for this heartbeat interval (seconds).
    #[must_use]
    pub fn heartbeat(mut self, seconds: u16) -> Self {
        self.heartbeat = seconds;
        self
    }

    /// Asks for this frame_max.
    #[must_use]
    pub fn frame_max(mut self, frame_max: u32) -> Self {
        self.frame_max = frame_max;
        self
    }

    /// Advertises no capabilities at all.
    #[must_use]
    pub fn without_capabilities(mut self) -> Self {
        self.capabilities = false;
        self
    }

    /// Sets `SO_RCVBUF` before connecting.
    #[must_use]
    pub fn recv_buffer(mut self, bytes: u32) -> Self {
        self.recv_buffer = Some(bytes);
        self
    }
}

/// Why a connection attempt did not reach `Connection.OpenOk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The reply code of the server's `Connection.Close`; `None` when the socket just closed.
    pub code: Option<u16>,
    /// The reply text (empty without a close).
    pub text: String,
}

/// A `Connection.Close` (channel 0) or `Channel.Close` the client received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// 0 for `Connection.Close`, else the channel that was closed.
    pub channel: u16,
    /// The reply code.
    pub code: u16,
    /// The reply text.
    pub text: String,
    /// The (class, method) the server named as the cause; (0, 0) for none.
    pub cause: (u16, u16),
}

/// What a bounded read produced.
#[derive(Debug)]
pub enum Incoming {
    /// A frame other than a heartbeat.
    Frame(Frame),
    /// The server closed the socket (or reset it).
    Eof,
    /// Nothing arrived within the bound.
    Timeout,
}

/// A message delivered by `basic.deliver` or `basic.get-ok`, body reassembled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The channel it arrived on.
    pub channel: u16,
    /// Its delivery tag.
    pub delivery_tag: u64,
    /// The redelivered flag.
    pub redelivered: bool,
    /// The body.
    pub body: Vec<u8>,
}

/// A connected raw AMQP client. See the module documentation.
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    tune: Tune,
    server_properties: FieldTable,
    answer_heartbeats: bool,
    heartbeats_seen: u64,
    /// Frames read while idling or put back with [`RawClient::unread`]; later reads return
    /// them first.
    pending: VecDeque<Frame>,
    last_sent: Instant,
}

impl RawClient {
    /// Connects to `addr` and runs the handshake to `Connection.OpenOk`; a refusal is an error
    /// that carries the server's code and text.
    pub async fn connect(addr: SocketAddr, opts: &RawOptions) -> Result<RawClient> {
        match RawClient::try_connect(addr, opts).await? {
            Ok(c) => Ok(c),
            Err(r) => Err(anyhow!(
                "the server refused the raw client ({} on {}): {r:?}",
                opts.user,
                opts.vhost
            )),
        }
    }

    /// Connects and runs the handshake; a refusal (a `Connection.Close` or a closed socket
    /// before `OpenOk`) is returned as [`Refused`]. The outer error is for everything else
    /// (no listener, a protocol surprise, no answer within [`RECV_LIMIT`]).
    pub async fn try_connect(
        addr: SocketAddr,
        opts: &RawOptions,
    ) -> Result<std::result::Result<RawClient, Refused>> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(size) = opts.recv_buffer {
            socket.set_recv_buffer_size(size)?;
        }
        let stream = crate::within(RECV_LIMIT, "the TCP connect", socket.connect(addr))
            .await?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut c = RawClient {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            decoder: FrameDecoder::new(DECODE_MAX),
            tune: Tune {
                channel_max: 0,
                frame_max: 0,
                heartbeat: 0,
            },
            server_properties: FieldTable::default(),
            answer_heartbeats: true,
            heartbeats_seen: 0,
            pending: VecDeque::new(),
            last_sent: Instant::now(),
        };
        c.send_raw(PROTOCOL_HEADER).await?;

        let start = match c.handshake_step().await? {
            Ok(Method::Start(s)) => s,
            Ok(other) => bail!("expected connection.start, got {other:?}"),
            Err(refused) => return Ok(Err(refused)),
        };
        c.server_properties = start.server_properties;
        let mut props = FieldTable::default().with("product", longstr("warren-tests raw"));
        if let Some(name) = &opts.connection_name {
            props = props.with("connection_name", longstr(name));
        }
        if opts.capabilities {
            let caps = FieldTable::default()
                .with("authentication_failure_close", FieldValue::Bool(true))
                .with("connection.blocked", FieldValue::Bool(true))
                .with("consumer_cancel_notify", FieldValue::Bool(true));
            props = props.with("capabilities", FieldValue::Table(caps));
        }
        let mut response = vec![0u8];
        response.extend_from_slice(opts.user.as_bytes());
        response.push(0);
        response.extend_from_slice(opts.password.as_bytes());
        c.send(&[encode::start_ok(&StartOk {
            client_properties: props,
            mechanism: "PLAIN".into(),
            response,
            locale: "en_US".into(),
        })])
        .await?;

        let offered = match c.handshake_step().await? {
            Ok(Method::Tune(t)) => t,
            Ok(other) => bail!("expected connection.tune, got {other:?}"),
            Err(refused) => return Ok(Err(refused)),
        };
        let pick = |ours: u32, theirs: u32| if ours == 0 { theirs } else { ours };
        let tune = Tune {
            channel_max: pick(u32::from(opts.channel_max), u32::from(offered.channel_max)) as u16,
            frame_max: pick(opts.frame_max, offered.frame_max),
            heartbeat: opts.heartbeat,
        };
        c.tune = tune;
        c.send(&[encode::tune(tune, true), encode::open(&opts.vhost)])
            .await?;
        match c.handshake_step().await? {
            Ok(Method::OpenOk) => Ok(Ok(c)),
            Ok(other) => bail!("expected connection.open-ok, got {other:?}"),
            Err(refused) => Ok(Err(refused)),
        }
    }

    /// One handshake answer on channel 0: a method, or the refusal the server gave.
    async fn handshake_step(&mut self) -> Result<std::result::Result<Method, Refused>> {
        match self.try_recv(RECV_LIMIT).await? {
            Incoming::Frame(f) => {
                let m = decode_method(&f)?;
                if let Method::ConnectionClose(c) = m {
                    // Be polite, as a real client is; the server closes the socket next.
                    let _ = self.send(&[encode::close_ok(0)]).await;
                    return Ok(Err(Refused {
                        code: Some(c.code),
                        text: c.text,
                    }));
                }
                Ok(Ok(m))
            }
            Incoming::Eof => Ok(Err(Refused {
                code: None,
                text: String::new(),
            })),
            Incoming::Timeout => bail!("no handshake answer within {RECV_LIMIT:?}"),
        }
    }

    /// The limits negotiated in `TuneOk`.
    #[must_use]
    pub fn tune(&self) -> Tune {
        self.tune
    }

    /// The negotiated frame_max.
    #[must_use]
    pub fn frame_max(&self) -> u32 {
        self.tune.frame_max
    }

    /// The server's `Connection.Start` properties.
    #[must_use]
    pub fn server_properties(&self) -> &FieldTable {
        &self.server_properties
    }

    /// Whether heartbeats from the server are echoed while reading (default: yes).
    pub fn set_answer_heartbeats(&mut self, answer: bool) {
        self.answer_heartbeats = answer;
    }

    /// Heartbeat frames received from the server so far.
    #[must_use]
    pub fn heartbeats_seen(&self) -> u64 {
        self.heartbeats_seen
    }

    /// When the client last wrote anything.
    #[must_use]
    pub fn last_sent(&self) -> Instant {
        self.last_sent
    }

    /// The local address of the socket.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.stream.local_addr()?)
    }

    /// Writes `bytes` as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .await
            .context("writing to the server")?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Writes `frames` back to back in one write, so the server reads them together.
    pub async fn send(&mut self, frames: &[Bytes]) -> Result<()> {
        let mut all = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
        for f in frames {
            all.extend_from_slice(f);
        }
        self.send_raw(&all).await
    }

    /// The next frame that is not a heartbeat, waiting at most `limit`; heartbeats are counted
    /// (and echoed if enabled) on the way.
    pub async fn try_recv(&mut self, limit: Duration) -> Result<Incoming> {
        if let Some(f) = self.pending.pop_front() {
            return Ok(Incoming::Frame(f));
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self
                .decoder
                .decode(&mut self.buf)
                .map_err(|e| anyhow!("the server's byte stream is broken: {e}"))?
            {
                Some(f) if f.kind() == FrameType::Heartbeat => {
                    self.heartbeats_seen += 1;
                    if self.answer_heartbeats {
                        // The server may already be gone; a failed echo is not the point.
                        let _ = self.send_raw(HEARTBEAT).await;
                    }
                    continue;
                }
                Some(f) => return Ok(Incoming::Frame(f)),
                None => {}
            }
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(64 * 1024);
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf));
            match read.await {
                Err(_) => return Ok(Incoming::Timeout),
                Ok(Ok(0)) => return Ok(Incoming::Eof),
                Ok(Ok(_)) => {}
                // A reset counts as the server closing the connection.
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return Ok(Incoming::Eof)
                }
                Ok(Err(e)) => return Err(e).context("reading from the server"),
            }
        }
    }

    /// Puts `frame` back: the next read returns it first.
    pub fn unread(&mut self, frame: Frame) {
        self.pending.push_front(frame);
    }

    /// The next frame that is not a heartbeat, within [`RECV_LIMIT`]; the socket closing is
    /// an error.
    pub async fn recv(&mut self) -> Result<Frame> {
        match self.try_recv(RECV_LIMIT).await? {
            Incoming::Frame(f) => Ok(f),
            Incoming::Eof => bail!("the server closed the connection"),
            Incoming::Timeout => bail!("no frame from the server within {RECV_LIMIT:?}"),
        }
    }

    /// Reads for `duration`, answering heartbeats (if enabled); frames that arrive are kept
    /// for later reads. Fails if the server closes the socket meanwhile.
    pub async fn idle(&mut self, duration: Duration) -> Result<()> {
        let until = tokio::time::Instant::now() + duration;
        let mut kept = VecDeque::new();
        // Frames already pending stay first.
        std::mem::swap(&mut kept, &mut self.pending);
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match self.try_recv(left).await? {
                Incoming::Frame(f) => kept.push_back(f),
                Incoming::Timeout => break,
                Incoming::Eof => {
                    self.pending = kept;
                    bail!(
                        "the server closed the connection while the client idled (frames \
                         before: {:?})",
                        self.pending
                    );
                }
            }
        }
        self.pending = kept;
        Ok(())
    }

    /// Reads the next frame and requires it to be method `id` on `channel`; anything else
    /// (a close, another method, content) is an error that says what came instead.
    pub async fn expect_method(&mut self, channel: u16, id: MethodId) -> Result<Frame> {
        let f = self
            .recv()
            .await
            .with_context(|| format!("waiting for {id} on channel {channel}"))?;
        if f.channel() == channel && f.method_id() == Some(id) {
            return Ok(f);
        }
        Err(anyhow!(
            "expected {id} on channel {channel}, got {}",
            describe(&f)
        ))
    }

    /// Reads until a `Connection.Close` or `Channel.Close` arrives and returns it; other
    /// frames before it (deliveries, acks) are skipped. The socket closing first is an error.
    pub async fn expect_close(&mut self) -> Result<Closed> {
        self.expect_close_within(RECV_LIMIT).await
    }

    /// [`RawClient::expect_close`] with a chosen upper bound.
    pub async fn expect_close_within(&mut self, limit: Duration) -> Result<Closed> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = match self.try_recv(left).await? {
                Incoming::Frame(f) => f,
                Incoming::Eof => bail!("the server closed the socket without a close method"),
                Incoming::Timeout => bail!("no close from the server within {limit:?}"),
            };
            if let Some(closed) = as_close(&f)? {
                return Ok(closed);
            }
        }
    }

    /// The next close, as [`RawClient::expect_close`]; a `Connection.Close` is answered and
    /// the socket's end awaited, so that RabbitMQ (which waits for the `CloseOk`) has let the
    /// connection go when this returns.
    pub async fn take_close(&mut self) -> Result<Closed> {
        let closed = self.expect_close().await?;
        if closed.channel == 0 {
            self.finish_close().await?;
        }
        Ok(closed)
    }

    /// Reads (and drops) frames until the server closes the socket, at most `limit`.
    /// Returns the frames that came before the end.
    pub async fn expect_eof(&mut self, limit: Duration) -> Result<Vec<Frame>> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_recv(left).await? {
                Incoming::Frame(f) => frames.push(f),
                Incoming::Eof => return Ok(frames),
                Incoming::Timeout => bail!(
                    "the server did not close the socket within {limit:?} (frames meanwhile: \
                     {})",
                    frames.iter().map(describe).collect::<Vec<_>>().join(", ")
                ),
            }
        }
    }

    /// Answers a server's `Connection.Close` with `CloseOk` and waits for the socket to
    /// close, as a well-behaved client does.
    pub async fn finish_close(&mut self) -> Result<()> {
        self.send(&[encode::close_ok(0)]).await?;
        self.expect_eof(RECV_LIMIT).await.map(drop)
    }

    /// Closes the connection the polite way: `Connection.Close 200`, then `CloseOk`, then
    /// the socket's end.
    pub async fn close(mut self) -> Result<()> {
        self.say_goodbye().await?;
        self.expect_eof(RECV_LIMIT).await.map(drop)
    }

    /// Closes the connection as the spec has the side that sent `Connection.Close` do: once
    /// its `CloseOk` came, the client closes the socket. For RabbitMQ itself, which waits
    /// up to 30 s for the client to do so, where warren closes its side at once (what
    /// [`RawClient::close`] waits for).
    pub async fn hang_up(mut self) -> Result<()> {
        self.say_goodbye().await
    }

    /// Sends `Connection.Close 200` and waits for its `CloseOk`.
    async fn say_goodbye(&mut self) -> Result<()> {
        let bye = method::Close {
            code: 200,
            text: "bye".into(),
            class_id: 0,
            method_id: 0,
        };
        self.send(&[encode::close(0, &bye)]).await?;
        loop {
            let f = self
                .recv()
                .await
                .context("waiting for connection.close-ok")?;
            if f.channel() == 0 && f.method_id() == Some(ids::CONNECTION_CLOSE_OK) {
                break;
            }
            if f.channel() == 0 && f.method_id() == Some(ids::CONNECTION_CLOSE) {
                bail!("the server closed the connection instead: {}", describe(&f));
            }
        }
        Ok(())
    }

    /// Kills the connection: the socket is reset (`SO_LINGER` 0), as when a process dies,
    /// without any AMQP goodbye.
    pub fn kill(self) {
        // SO_LINGER 0 makes the close an immediate RST; it never blocks with a zero timeout.
        #[allow(deprecated)]
        let _ = self.stream.set_linger(Some(Duration::ZERO));
        drop(self.stream);
    }

    /// Opens channel `ch` and waits for its `OpenOk`.
    pub async fn open_channel(&mut self, ch: u16) -> Result<()> {
        self.send(&[encode::channel_open(ch)]).await?;
        self.expect_method(ch, ids::CHANNEL_OPEN_OK).await.map(drop)
    }

    /// Opens channel `ch`, trying again (every 50 ms, for at most `limit`) while the server
    /// refuses it with a `Channel.Close` — as warren does with 506 while its hub waits out a
    /// reconnect backoff. Returns the refusals seen before the `OpenOk`.
    pub async fn open_channel_retrying(&mut self, ch: u16, limit: Duration) -> Result<Vec<Closed>> {
        let deadline = Instant::now() + limit;
        let mut refusals = Vec::new();
        loop {
            self.send(&[encode::channel_open(ch)]).await?;
            let f = self.recv().await?;
            if f.channel() == ch && f.method_id() == Some(ids::CHANNEL_OPEN_OK) {
                return Ok(refusals);
            }
            match as_close(&f)? {
                Some(c) if c.channel == ch => {
                    self.send(&[encode::close_ok(ch)]).await?;
                    refusals.push(c);
                }
                _ => bail!("expected channel.open-ok, got {}", describe(&f)),
            }
            ensure!(
                Instant::now() < deadline,
                "channel {ch} still refused after {limit:?}: {refusals:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Closes channel `ch` (reply 200) and waits for its `CloseOk`.
    pub async fn close_channel(&mut self, ch: u16) -> Result<()> {
        self.send(&[build::channel_close(ch)]).await?;
        self.expect_method(ch, ids::CHANNEL_CLOSE_OK)
            .await
            .map(drop)
    }

    /// Declares queue `name` on `ch` (expiring after 10 minutes unused, so a failed run
    /// leaves nothing behind) and returns its name as the server gave it.
    pub async fn declare_queue(&mut self, ch: u16, name: &str, exclusive: bool) -> Result<String> {
        self.declared(ch, build::queue_declare(ch, name, exclusive))
            .await
    }

    /// Declares durable queue `name` with `x-queue-type` `kind` on `ch` and waits for its
    /// `declare-ok`, as a pika or lapin client does before it uses the queue (warren learns
    /// the type from that `declare-ok`).
    pub async fn declare_typed_queue(&mut self, ch: u16, name: &str, kind: &str) -> Result<()> {
        self.declared(ch, build::typed_queue_declare(ch, name, kind))
            .await
            .with_context(|| format!("declaring {kind} queue {name}"))
            .map(drop)
    }

    /// Sends `declare` (a `queue.declare` on `ch`) and returns the queue's name as its
    /// `declare-ok` gives it.
    async fn declared(&mut self, ch: u16, declare: Bytes) -> Result<String> {
        self.send(&[declare]).await?;
        let f = self.expect_method(ch, ids::QUEUE_DECLARE_OK).await?;
        match decode_method(&f)? {
            Method::QueueDeclareOk { queue } => Ok(String::from_utf8_lossy(&queue).into_owned()),
            other => bail!("expected queue.declare-ok, got {other:?}"),
        }
    }

    /// Publishes `body` to the default exchange with routing key `queue`, body split into
    /// frames of the negotiated frame_max. Does not wait for anything.
    pub async fn publish(&mut self, ch: u16, queue: &str, body: &[u8]) -> Result<()> {
        let frames = build::publish_frames(ch, "", queue, body, false, self.frame_max());
        self.send(&frames).await
    }

    /// Sets the prefetch count of channel `ch` and waits for `qos-ok`.
    pub async fn qos(&mut self, ch: u16, prefetch_count: u16) -> Result<()> {
        self.send(&[build::qos(ch, 0, prefetch_count)]).await?;
        self.expect_method(ch, ids::BASIC_QOS_OK).await.map(drop)
    }

    /// Starts consumer `tag` on `queue` and waits for `consume-ok`.
    pub async fn consume(&mut self, ch: u16, queue: &str, tag: &str, no_ack: bool) -> Result<()> {
        self.send(&[build::consume(ch, queue, tag, no_ack)]).await?;
        self.expect_method(ch, ids::BASIC_CONSUME_OK)
            .await
            .map(drop)
    }

    /// Puts channel `ch` in confirm mode and waits for `select-ok`.
    pub async fn confirm_select(&mut self, ch: u16) -> Result<()> {
        self.send(&[build::confirm_select(ch)]).await?;
        self.expect_method(ch, MethodId::new(85, 11))
            .await
            .map(drop)
    }

    /// Reads the next message (`basic.deliver` or `basic.get-ok` with its header and body);
    /// any other frame before it is an error.
    pub async fn recv_delivery(&mut self) -> Result<Delivery> {
        let f = self.recv().await.context("waiting for a delivery")?;
        let ch = f.channel();
        let deliver = match f.method_id() {
            Some(ids::BASIC_DELIVER) => true,
            Some(ids::BASIC_GET_OK) => false,
            _ => bail!("expected a delivery, got {}", describe(&f)),
        };
        let (delivery_tag, redelivered) = wire((|| {
            let (_, args) = method::split_payload(f.payload())?;
            let mut r = Reader::new(args);
            if deliver {
                r.shortstr()?; // consumer tag
            }
            Ok((r.u64()?, r.bit()?))
        })())?;
        let h = self.recv().await.context("waiting for a content header")?;
        ensure!(
            h.kind() == FrameType::Header && h.channel() == ch,
            "expected a content header on channel {ch}, got {}",
            describe(&h)
        );
        let size = wire(warren_core::content::parse_header(h.payload()))?.body_size;
        let mut body = Vec::with_capacity(size as usize);
        while (body.len() as u64) < size {
            let b = self.recv().await.context("waiting for a content body")?;
            ensure!(
                b.kind() == FrameType::Body && b.channel() == ch,
                "expected a content body on channel {ch}, got {}",
                describe(&b)
            );
            body.extend_from_slice(b.payload());
        }
        Ok(Delivery {
            channel: ch,
            delivery_tag,
            redelivered,
            body,
        })
    }

    /// `basic.get` of `queue` on `ch` (auto-ack): the message, or `None` for `get-empty`.
    pub async fn get(&mut self, ch: u16, queue: &str) -> Result<Option<Delivery>> {
        self.send(&[build::get(ch, queue, true)]).await?;
        let f = self
            .recv()
            .await
            .context("waiting for basic.get's answer")?;
        match f.method_id() {
            Some(ids::BASIC_GET_OK) => {
                self.pending.push_front(f);
                Ok(Some(self.recv_delivery().await?))
            }
            Some(id) if id == MethodId::new(60, 72) => Ok(None),
            _ => bail!("expected basic.get-ok or get-empty, got {}", describe(&f)),
        }
    }

    /// `basic.get` of `queue` on `ch` every 50 ms until a message comes, for at most `limit`.
    pub async fn get_within(&mut self, ch: u16, queue: &str, limit: Duration) -> Result<Delivery> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(d) = self.get(ch, queue).await? {
                return Ok(d);
            }
            ensure!(
                Instant::now() < deadline,
                "no message in {queue} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Acknowledges `delivery_tag` on `ch` (no answer is expected).
    pub async fn ack(&mut self, ch: u16, delivery_tag: u64, multiple: bool) -> Result<()> {
        self.send(&[build::ack(ch, delivery_tag, multiple)]).await
    }
}

/// Decodes a method frame with warren's decoder (methods warren does not read come back as
/// [`Method::Other`]).
pub fn decode_method(f: &Frame) -> Result<Method> {
    ensure!(
        f.kind() == FrameType::Method,
        "expected a method frame, got {}",
        describe(f)
    );
    method::decode(f.payload()).map_err(|e| anyhow!("undecodable method {}: {e}", describe(f)))
}

/// The close carried by `f`, if it is a `Connection.Close` or `Channel.Close`.
pub fn as_close(f: &Frame) -> Result<Option<Closed>> {
    match f.method_id() {
        Some(ids::CONNECTION_CLOSE | ids::CHANNEL_CLOSE) => match decode_method(f)? {
            Method::ConnectionClose(c) | Method::ChannelClose(c) => Ok(Some(Closed {
                channel: f.channel(),
                code: c.code,
                text: c.text,
                cause: (c.class_id, c.method_id),
            })),
            _ => Ok(None),
        },
        _ => Ok(None),
    }
}

/// The close that `frames` bring back from the server at `addr`, sent on a fresh connection
/// with channel 1 open (a `Connection.Close` is answered and the socket's end awaited): how a
/// test compares RabbitMQ's answer to some input with warren's.
pub async fn close_for(addr: SocketAddr, opts: &RawOptions, frames: &[Bytes]) -> Result<Closed> {
    let mut client = RawClient::connect(addr, opts).await?;
    client.open_channel(1).await?;
    client.send(frames).await?;
    client.take_close().await
}

/// The `(delivery_tag, multiple)` of a `basic.ack` the broker sent in confirm mode.
pub fn as_confirm_ack(f: &Frame) -> Result<Option<(u64, bool)>> {
    if f.method_id() != Some(ids::BASIC_ACK) {
        return Ok(None);
    }
    wire((|| {
        let (_, args) = method::split_payload(f.payload())?;
        let mut r = Reader::new(args);
        Ok(Some((r.u64()?, r.bit()?)))
    })())
}

/// Turns a wire-format error of warren's codec into an `anyhow` error.
fn wire<T>(r: std::result::Result<T, WireError>) -> Result<T> {
    r.map_err(|e| anyhow!("malformed frame from the server: {e}"))
}

/// One line about a frame for error messages: type, channel, method name, close code/text.
#[must_use]
pub fn describe(f: &Frame) -> String {
    match f.kind() {
        FrameType::Method => {
            let id = f.method_id();
            let name = id.map_or_else(|| "a short method".to_owned(), |m| m.to_string());
            match as_close(f) {
                Ok(Some(c)) => format!("{name} {} {:?} on channel {}", c.code, c.text, f.channel()),
                _ => format!("{name} on channel {}", f.channel()),
            }
        }
        kind => format!(
            "{kind:?} frame of {} bytes on channel {}",
            f.payload().len(),
            f.channel()
        ),
    }
}

/// Frames a test sends: well-formed ones for the methods warren's encoder does not offer, and
/// helpers to break them.
pub mod build;

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_one(b: &Bytes) -> Frame {
        let mut buf = BytesMut::from(&b[..]);
        FrameDecoder::new(1 << 20)
            .decode(&mut buf)
            .expect("valid frame")
            .expect("whole frame")
    }

    #[test]
    fn built_methods_pass_warrens_own_argument_checks() {
        let frames = [
            build::publish(1, "x", "rk", true, false),
            build::queue_declare(1, "q", true),
            build::exchange_declare(1, "x", "direct"),
            build::queue_bind(1, "q", "x", "rk"),
            build::channel_close(1),
            build::qos(1, 0, 10),
            build::consume(1, "q", "t", false),
            build::get(1, "q", true),
            build::ack(1, 7, true),
            build::recover(1, true),
            build::typed_queue_declare(1, "s", "stream"),
            build::purge(1, "q"),
            build::global_qos(1, 10),
            build::nack(1, 7, true),
            build::reject(1, 7),
            build::confirm_select(1),
            build::flow(1, false),
        ];
        for f in &frames {
            let f = decode_one(f);
            let (id, args) = method::split_payload(f.payload()).unwrap();
            let spec = method::spec(id).unwrap_or_else(|| panic!("{id} has a spec"));
            method::validate_args(spec, args).unwrap_or_else(|e| panic!("{id}: {e}"));
        }
        assert_eq!(
            method::decode(decode_one(&frames[0]).payload()).unwrap(),
            Method::Publish {
                mandatory: true,
                immediate: false
            }
        );
    }

    #[test]
    fn publish_frames_split_the_body_and_headers_parse() {
        let body = vec![7u8; 10_000];
        let frames = build::publish_frames(3, "", "q", &body, true, 4096);
        assert_eq!(frames.len(), 2 + 3);
        let h = decode_one(&frames[1]);
        let parsed = warren_core::content::parse_header(h.payload()).unwrap();
        assert_eq!(parsed.body_size, 10_000);
        let total: usize = frames[2..]
            .iter()
            .map(|f| decode_one(f).payload().len())
            .sum();
        assert_eq!(total, 10_000);
        assert!(frames[2..].iter().all(|f| f.len() <= 4096));
    }

    #[test]
    fn a_broken_end_octet_is_refused_by_the_decoder() {
        let f = build::with_end(&build::qos(1, 0, 1), 0);
        let mut buf = BytesMut::from(&f[..]);
        assert!(FrameDecoder::new(1 << 20).decode(&mut buf).is_err());
    }
}
