//! The floor: the least any process between the clients and RabbitMQ costs on this machine.
//!
//! Issue 19 sets warren targets of CPU per churned connection, CPU per request/reply round trip
//! and added latency. Where a target is out of reach, the question is whether warren is the
//! problem or the machine is, and the answer is "a program doing only the same syscalls". These
//! are those programs. They are not products: they check nothing and handle only what the
//! benchmark's clients send.
//!
//! Both are one thread with one edge-triggered [`mio::Poll`]: non-blocking reads into a reused
//! buffer, and writes made at once (what a socket does not take is kept, and written when it
//! becomes writable). Sockets are registered once for both readable and writable, so no
//! `epoll_ctl` is spent changing interest. A read shorter than the buffer means the socket is
//! drained (what tokio assumes too), which saves the read that would return `EAGAIN`.
//!
//! - **relay** (`--mode relay`) is a transparent TCP relay: each accepted client gets its own new
//!   connection to RabbitMQ, and bytes are copied both ways (`TCP_NODELAY` on both). It is the
//!   floor of the message scenarios (latency, publish, consume): one read and one write per leg.
//! - **responder** (`--mode responder`) is the floor of connection churn done the way warren does
//!   it, over one long-lived broker connection. At start it opens that connection (blocking
//!   handshake as guest/guest, vhost `/`, channel 1). It answers each client's handshake itself
//!   with canned frames (`Connection.Start` with warren's server properties, `Tune`, `OpenOk`),
//!   answers `Channel.Open`/`Channel.Close`/`Connection.Close`, and forwards each
//!   `Basic.Publish` (method, header and body frames, renumbered to channel 1) to the broker,
//!   so the churn scenario's check that every message arrived still holds. What the broker sends
//!   back is read and thrown away.

use crate::opts::{FloorMode, FloorOpts};
use bytes::BytesMut;
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use warren_core::frame::{FrameDecoder, FRAME_END, PROTOCOL_HEADER};
use warren_core::handshake::ClientHandshake;
use warren_core::method::{self, encode, ids, ConnectionStart, Method, MethodId, StartOk, Tune};
use warren_core::table::FieldTable;

/// The listening socket's token; connections use the tokens above [`FIRST`].
const LISTENER: Token = Token(0);
/// The responder's broker connection.
const UPSTREAM: Token = Token(1);
/// The first token of accepted connections.
const FIRST: usize = 2;
/// Size of the one read buffer.
const READ_BUF: usize = 64 * 1024;
/// `channel_max` the responder announces to clients.
const CHANNEL_MAX: u16 = 2047;

/// Runs the floor program of `opts.mode` until killed.
pub fn run(opts: &FloorOpts) -> ExitCode {
    let result = match opts.mode {
        FloorMode::Relay => relay(opts.listen, opts.upstream),
        FloorMode::Responder => responder(opts.listen, opts.upstream),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren-bench floor: {e}");
            ExitCode::from(1)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Socket helpers.

/// Reads once into `buf`: `Some(0)` is end of stream, `None` means nothing to read now.
fn read_some(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match s.read(buf) {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes as much of `buf` as the socket takes and returns how much that was. A full socket
/// (or a connect still under way) takes 0 bytes; that is not an error.
fn write_some(s: &mut TcpStream, buf: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match s.write(&buf[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::NotConnected =>
            {
                break
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Writes what `s` takes of `pending` and drops that from it; returns whether all went out.
fn flush(s: &mut TcpStream, pending: &mut Vec<u8>) -> io::Result<bool> {
    if !pending.is_empty() {
        let n = write_some(s, pending)?;
        pending.drain(..n);
    }
    Ok(pending.is_empty())
}

/// Accepts every waiting connection (setting `TCP_NODELAY`) and hands each to `add`.
fn accept_all(
    listener: &TcpListener,
    mut add: impl FnMut(TcpStream) -> io::Result<()>,
) -> io::Result<()> {
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nodelay(true)?;
                add(s)?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Out of file descriptors, or a client gone before it was accepted: not fatal.
            Err(e) => {
                eprintln!("warren-bench floor: accept: {e}");
                return Ok(());
            }
        }
    }
}

/// Waits for events, retrying when a signal interrupts the wait.
fn wait(poll: &mut Poll, events: &mut Events) -> io::Result<()> {
    loop {
        match poll.poll(events, None) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Whether an event may mean bytes (or an end, or an error) to read.
fn readable(ev: &Event) -> bool {
    ev.is_readable() || ev.is_read_closed() || ev.is_error()
}

/// Slots of connections by index, reused once freed so their buffers are too.
struct Slots<T> {
    items: Vec<T>,
    free: Vec<usize>,
}

impl<T> Slots<T> {
    /// No slot yet.
    fn new() -> Self {
        Slots {
            items: Vec::new(),
            free: Vec::new(),
        }
    }

    /// A free slot's index, made with `make` if none is free.
    fn take(&mut self, make: impl FnOnce() -> T) -> usize {
        self.free.pop().unwrap_or_else(|| {
            self.items.push(make());
            self.items.len() - 1
        })
    }
}

// ---------------------------------------------------------------------------------------------
// relay

/// A client and its own broker connection; index 0 is the client, 1 the broker.
#[derive(Default)]
struct Pair {
    socks: [Option<TcpStream>; 2],
    /// Bytes read from one side that the other (`pending[i]` goes to `socks[i]`) did not take.
    pending: [Vec<u8>; 2],
}

/// The transparent relay: every client gets its own connection to `upstream`.
fn relay(listen: SocketAddr, upstream: SocketAddr) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(listen)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("warren-bench floor: relay on {listen} -> {upstream}");
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; READ_BUF];
    let mut pairs: Slots<Pair> = Slots::new();
    loop {
        wait(&mut poll, &mut events)?;
        for ev in &events {
            if ev.token() == LISTENER {
                accept_all(&listener, |client| {
                    let up = TcpStream::connect(upstream)?;
                    up.set_nodelay(true)?;
                    let slot = pairs.take(Pair::default);
                    let pair = &mut pairs.items[slot];
                    pair.socks = [Some(client), Some(up)];
                    for (side, s) in pair.socks.iter_mut().enumerate() {
                        let token = Token(FIRST + 2 * slot + side);
                        let s = s.as_mut().expect("just set");
                        poll.registry().register(
                            s,
                            token,
                            Interest::READABLE | Interest::WRITABLE,
                        )?;
                    }
                    Ok(())
                })?;
                continue;
            }
            let (slot, side) = ((ev.token().0 - FIRST) / 2, (ev.token().0 - FIRST) % 2);
            let pair = &mut pairs.items[slot];
            if pair.socks[side].is_none() {
                continue; // an event of a pair closed earlier in this batch
            }
            if !relay_event(pair, side, ev, &mut buf) {
                // Dropping the sockets closes them, which also takes them out of the epoll set.
                pair.socks = [None, None];
                pair.pending.iter_mut().for_each(Vec::clear);
                pairs.free.push(slot);
            }
        }
    }
}

/// Handles one event of `side` of a pair; false when the pair is done (an end, or an error).
fn relay_event(pair: &mut Pair, side: usize, ev: &Event, buf: &mut [u8]) -> bool {
    let other = 1 - side;
    if ev.is_writable() && !pair.pending[side].is_empty() {
        match flush(
            pair.socks[side].as_mut().expect("open"),
            &mut pair.pending[side],
        ) {
            // Drained: the other side may have bytes left that it stopped reading for this.
            Ok(true) => {
                if !matches!(copy(pair, other, buf), Ok(true)) {
                    return false;
                }
            }
            Ok(false) => {}
            Err(_) => return false,
        }
    }
    if readable(ev) {
        return matches!(copy(pair, side, buf), Ok(true));
    }
    true
}

/// Copies from `from` to the other side until `from` is drained or the other side is full.
/// Ok(false) when `from` ended its stream.
fn copy(pair: &mut Pair, from: usize, buf: &mut [u8]) -> io::Result<bool> {
    let [a, b] = &mut pair.socks;
    let (src, dst) = match (from, a.as_mut(), b.as_mut()) {
        (0, Some(a), Some(b)) => (a, b),
        (1, Some(a), Some(b)) => (b, a),
        _ => return Ok(false),
    };
    let pending = &mut pair.pending[1 - from];
    // While the other side holds unwritten bytes, `from` is not read (back-pressure).
    while pending.is_empty() {
        let n = match read_some(src, buf)? {
            None => break,
            Some(0) => return Ok(false),
            Some(n) => n,
        };
        let sent = write_some(dst, &buf[..n])?;
        pending.extend_from_slice(&buf[sent..n]);
        if n < buf.len() {
            break; // a short read: drained
        }
    }
    Ok(true)
}

// ---------------------------------------------------------------------------------------------
// responder

/// What the responder expects next of a client's publish.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Content {
    /// No publish under way.
    None,
    /// The content header frame.
    Header,
    /// This many more body bytes.
    Body(u64),
}

/// One client of the responder.
struct Client {
    sock: Option<TcpStream>,
    /// Bytes read and not yet parsed: `inbuf[..filled]`.
    inbuf: Vec<u8>,
    filled: usize,
    /// The protocol header has arrived.
    started: bool,
    session: Session,
}

/// What the responder keeps of a client's conversation.
struct Session {
    /// Replies not yet taken by the socket.
    out: Vec<u8>,
    /// The publish being received (frames renumbered to channel 1), forwarded once whole so
    /// that publishes of different clients never interleave on the broker's channel.
    publish: Vec<u8>,
    content: Content,
    /// `Connection.Close` has arrived: close once `out` is written.
    closing: bool,
}

impl Client {
    /// An empty slot.
    fn new() -> Client {
        Client {
            sock: None,
            inbuf: vec![0; 4096],
            filled: 0,
            started: false,
            session: Session {
                out: Vec::new(),
                publish: Vec::new(),
                content: Content::None,
                closing: false,
            },
        }
    }

    /// Takes `sock` into this slot, keeping the buffers of the slot's last client.
    fn reset(&mut self, sock: TcpStream) {
        self.sock = Some(sock);
        self.filled = 0;
        self.started = false;
        let s = &mut self.session;
        s.out.clear();
        s.publish.clear();
        s.content = Content::None;
        s.closing = false;
    }
}

/// The frames the responder sends, encoded once.
struct Canned {
    start: Vec<u8>,
    tune: Vec<u8>,
    open_ok: Vec<u8>,
    close_ok: Vec<u8>,
    /// On channel 0; the channel is patched in when sent.
    channel_open_ok: Vec<u8>,
    channel_close_ok: Vec<u8>,
}

impl Canned {
    /// Encodes the replies; clients are offered the broker's `frame_max`, so that every body
    /// frame they send can be forwarded as it is.
    fn new(frame_max: u32) -> Canned {
        Canned {
            start: encode::start(&ConnectionStart {
                server_properties: ClientHandshake::server_properties(),
                mechanisms: "PLAIN AMQPLAIN".into(),
                locales: "en_US".into(),
            })
            .to_vec(),
            tune: encode::tune(
                Tune {
                    channel_max: CHANNEL_MAX,
                    frame_max,
                    heartbeat: 0,
                },
                false,
            )
            .to_vec(),
            open_ok: encode::open_ok().to_vec(),
            close_ok: encode::close_ok(0).to_vec(),
            channel_open_ok: encode::channel_open_ok(0).to_vec(),
            channel_close_ok: encode::close_ok(1).to_vec(),
        }
    }
}

/// The churn responder: canned handshakes, publishes forwarded over one broker connection.
fn responder(listen: SocketAddr, upstream: SocketAddr) -> io::Result<()> {
    let (up, frame_max) = open_upstream(upstream)?;
    up.set_nonblocking(true)?;
    let mut up = TcpStream::from_std(up);
    let canned = Canned::new(frame_max);
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(listen)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    poll.registry()
        .register(&mut up, UPSTREAM, Interest::READABLE | Interest::WRITABLE)?;
    eprintln!("warren-bench floor: responder on {listen}, one connection to {upstream}");
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; READ_BUF];
    let mut up_out: Vec<u8> = Vec::new();
    let mut clients: Slots<Client> = Slots::new();
    loop {
        wait(&mut poll, &mut events)?;
        for ev in &events {
            match ev.token() {
                LISTENER => accept_all(&listener, |mut s| {
                    let slot = clients.take(Client::new);
                    poll.registry().register(
                        &mut s,
                        Token(FIRST + slot),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    clients.items[slot].reset(s);
                    Ok(())
                })?,
                UPSTREAM => {
                    if readable(ev) {
                        discard(&mut up, &mut buf)?;
                    }
                }
                Token(t) => {
                    let slot = t - FIRST;
                    let c = &mut clients.items[slot];
                    if c.sock.is_some() && !client_event(c, ev, &canned, &mut up_out) {
                        c.sock = None; // closes it
                        clients.free.push(slot);
                    }
                }
            }
        }
        // The publishes of this round go to the broker in one write.
        flush(&mut up, &mut up_out)?;
    }
}

/// Reads and drops what the broker sent; an error when it closed the connection.
fn discard(up: &mut TcpStream, buf: &mut [u8]) -> io::Result<()> {
    loop {
        match read_some(up, buf)? {
            None => return Ok(()),
            Some(0) => return Err(io::Error::other("RabbitMQ closed the upstream connection")),
            Some(n) if n < buf.len() => return Ok(()),
            Some(_) => {}
        }
    }
}

/// Handles one event of a client; false when it is done (closed, gone, or broken).
fn client_event(c: &mut Client, ev: &Event, canned: &Canned, up_out: &mut Vec<u8>) -> bool {
    if readable(ev) && !c.session.closing {
        loop {
            let Some(sock) = c.sock.as_mut() else {
                return false;
            };
            if c.filled == c.inbuf.len() {
                let bigger = c.inbuf.len() * 2;
                c.inbuf.resize(bigger, 0);
            }
            let space = c.inbuf.len() - c.filled;
            match read_some(sock, &mut c.inbuf[c.filled..]) {
                Ok(None) => break,
                Ok(Some(0)) | Err(_) => return false,
                Ok(Some(n)) => {
                    c.filled += n;
                    if !parse(c, canned, up_out) {
                        return false;
                    }
                    if n < space || c.session.closing {
                        break;
                    }
                }
            }
        }
    }
    let Some(sock) = c.sock.as_mut() else {
        return false;
    };
    match flush(sock, &mut c.session.out) {
        Ok(all_out) => !(all_out && c.session.closing),
        Err(_) => false,
    }
}

/// Handles the whole frames in `c.inbuf`, keeping a partial one for the next read; false if
/// the client sent something that is not AMQP framing.
fn parse(c: &mut Client, canned: &Canned, up_out: &mut Vec<u8>) -> bool {
    let mut at = 0;
    if !c.started {
        if c.filled < PROTOCOL_HEADER.len() {
            return true;
        }
        at = PROTOCOL_HEADER.len();
        c.started = true;
        c.session.out.extend_from_slice(&canned.start);
    }
    while !c.session.closing {
        let rest = &c.inbuf[at..c.filled];
        if rest.len() < 7 {
            break;
        }
        let size = u32::from_be_bytes([rest[3], rest[4], rest[5], rest[6]]) as usize;
        if rest.len() < size + 8 {
            break;
        }
        let frame = &rest[..size + 8];
        if frame[size + 7] != FRAME_END {
            return false;
        }
        on_frame(&mut c.session, frame, canned, up_out);
        at += size + 8;
    }
    c.inbuf.copy_within(at..c.filled, 0);
    c.filled -= at;
    true
}

/// Acts on one whole frame of a client.
fn on_frame(c: &mut Session, frame: &[u8], canned: &Canned, up_out: &mut Vec<u8>) {
    let (kind, channel) = (frame[0], u16::from_be_bytes([frame[1], frame[2]]));
    let payload = &frame[7..frame.len() - 1];
    match (kind, c.content) {
        (1, _) if payload.len() >= 4 => {
            let class = u16::from_be_bytes([payload[0], payload[1]]);
            let method = u16::from_be_bytes([payload[2], payload[3]]);
            match MethodId::new(class, method) {
                ids::CONNECTION_START_OK => c.out.extend_from_slice(&canned.tune),
                ids::CONNECTION_OPEN => c.out.extend_from_slice(&canned.open_ok),
                ids::CHANNEL_OPEN => on_channel(&mut c.out, &canned.channel_open_ok, channel),
                ids::CHANNEL_CLOSE => on_channel(&mut c.out, &canned.channel_close_ok, channel),
                ids::CONNECTION_CLOSE => {
                    c.out.extend_from_slice(&canned.close_ok);
                    c.closing = true;
                }
                ids::BASIC_PUBLISH => {
                    c.publish.clear();
                    on_channel(&mut c.publish, frame, 1);
                    c.content = Content::Header;
                }
                _ => {} // TuneOk, Channel.CloseOk, ...: nothing to answer
            }
        }
        (2, Content::Header) if payload.len() >= 12 => {
            on_channel(&mut c.publish, frame, 1);
            let mut size = [0; 8];
            size.copy_from_slice(&payload[4..12]);
            c.content = Content::Body(u64::from_be_bytes(size));
        }
        (3, Content::Body(left)) => {
            on_channel(&mut c.publish, frame, 1);
            c.content = Content::Body(left.saturating_sub(payload.len() as u64));
        }
        _ => {} // heartbeats, and anything a real proxy would check
    }
    if c.content == Content::Body(0) {
        up_out.extend_from_slice(&c.publish);
        c.content = Content::None;
    }
}

/// Appends `frame` to `dst` with its channel number set to `channel`.
fn on_channel(dst: &mut Vec<u8>, frame: &[u8], channel: u16) {
    let at = dst.len();
    dst.extend_from_slice(frame);
    dst[at + 1..at + 3].copy_from_slice(&channel.to_be_bytes());
}

/// Opens the responder's one broker connection (blocking): login as guest/guest, vhost `/`,
/// heartbeats off, channel 1 open. Returns it with the broker's `frame_max`.
fn open_upstream(addr: SocketAddr) -> io::Result<(std::net::TcpStream, u32)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut inbox = BytesMut::with_capacity(4096);
    s.write_all(PROTOCOL_HEADER)?;
    expect(&mut s, &mut inbox, ids::CONNECTION_START)?;
    s.write_all(&encode::start_ok(&StartOk {
        client_properties: FieldTable::default(),
        mechanism: "PLAIN".into(),
        response: b"\0guest\0guest".to_vec(),
        locale: "en_US".into(),
    }))?;
    let tune = match expect(&mut s, &mut inbox, ids::CONNECTION_TUNE)? {
        Method::Tune(t) => t,
        _ => return Err(io::Error::other("malformed connection.tune")),
    };
    let mut out = encode::tune(
        Tune {
            heartbeat: 0,
            ..tune
        },
        true,
    )
    .to_vec();
    out.extend_from_slice(&encode::open("/"));
    s.write_all(&out)?;
    expect(&mut s, &mut inbox, ids::CONNECTION_OPEN_OK)?;
    s.write_all(&encode::channel_open(1))?;
    expect(&mut s, &mut inbox, ids::CHANNEL_OPEN_OK)?;
    Ok((s, tune.frame_max))
}

/// Reads until a method arrives (blocking) and returns it; an error unless it is `want`.
fn expect(s: &mut std::net::TcpStream, inbox: &mut BytesMut, want: MethodId) -> io::Result<Method> {
    let decoder = FrameDecoder::new(1 << 20);
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(f) = decoder
            .decode(inbox)
            .map_err(|e| io::Error::other(format!("bad frame from RabbitMQ: {e}")))?
        {
            let Some(id) = f.method_id() else { continue };
            let m = method::decode(f.payload())
                .map_err(|e| io::Error::other(format!("bad method from RabbitMQ: {e}")))?;
            if id == want {
                return Ok(m);
            }
            return Err(io::Error::other(format!(
                "RabbitMQ sent {m:?}, expected {want}"
            )));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::other(format!(
                "RabbitMQ closed the connection, expected {want}"
            )));
        }
        inbox.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_renumbered() {
        let mut dst = vec![9];
        on_channel(&mut dst, &encode::channel_open_ok(0), 7);
        assert_eq!(&dst[2..4], &7u16.to_be_bytes());
        assert_eq!(dst.len(), 1 + encode::channel_open_ok(7).len());
        assert_eq!(&dst[1..], &encode::channel_open_ok(7)[..]);
    }
}
