//! Frames from a connection: the protocol header, the handshake (login, tune, vhost),
//! channel 0 and the checks RabbitMQ makes on every frame of an open connection before a
//! channel method reaches `channel`.

use super::state::{Chan, ChanState, Phase};
use super::{Broker, BrokerViolation, ConnId};
use bytes::Bytes;
use std::time::{Duration, Instant};
use warren_core::content::parse_header;
use warren_core::credentials::parse_sasl;
use warren_core::frame::{method_frame, Frame, FrameDecoder, FrameType, PROTOCOL_HEADER};
use warren_core::method::{self, encode, ids, ConnectionStart, Method, MethodId, Tune};
use warren_core::reply;
use warren_core::table::{FieldTable, FieldValue};

impl Broker {
    pub(super) fn process(&mut self, now: Instant, id: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            if c.phase == Phase::Header {
                if c.buf.len() < PROTOCOL_HEADER.len() {
                    return;
                }
                let h = c.buf.split_to(PROTOCOL_HEADER.len());
                if &h[..] != PROTOCOL_HEADER {
                    self.log.violations.push(BrokerViolation {
                        at: now,
                        conn: id,
                        code: 0,
                        text: "bad protocol header".into(),
                    });
                    self.send(now, id, Bytes::from_static(PROTOCOL_HEADER));
                    self.drop_conn(now, id);
                    self.closing.push(id);
                    return;
                }
                c.phase = Phase::StartOk;
                let start = self.start_frame();
                self.send(now, id, start);
                continue;
            }
            let frame = match c.decoder.decode(&mut c.buf) {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    let text = e.to_string();
                    let text = text.trim_start_matches("FRAME_ERROR - ").to_owned();
                    c.buf.clear();
                    self.conn_error(now, id, reply::FRAME_ERROR, text, MethodId::new(0, 0));
                    // Nothing after a framing error can be read.
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.decoder = FrameDecoder::new(u32::MAX);
                        c.buf.clear();
                    }
                    return;
                }
            };
            self.frame(now, id, frame);
        }
    }

    fn start_frame(&self) -> Bytes {
        // RabbitMQ announces the list warren announces to its clients (warren mirrors it).
        let caps = warren_core::handshake::SERVER_CAPABILITIES
            .iter()
            .fold(FieldTable::default(), |t, c| {
                t.with(c, FieldValue::Bool(true))
            });
        encode::start(&ConnectionStart {
            server_properties: FieldTable::default()
                .with("product", warren_core::table::longstr("FakeMQ"))
                .with("capabilities", FieldValue::Table(caps)),
            mechanisms: "PLAIN AMQPLAIN".into(),
            locales: "en_US".into(),
        })
    }

    fn frame(&mut self, now: Instant, id: ConnId, f: Frame) {
        let Some(phase) = self.conns.get(&id).map(|c| c.phase) else {
            return;
        };
        match phase {
            Phase::Header => {}
            Phase::StartOk | Phase::TuneOk | Phase::Open => self.handshake_frame(now, id, phase, f),
            Phase::Closing(_) => {
                // Only the answer to our Close matters; RabbitMQ discards the rest.
                match f.method_id() {
                    Some(ids::CONNECTION_CLOSE_OK) => {
                        self.drop_conn(now, id);
                        self.closing.push(id);
                    }
                    Some(ids::CONNECTION_CLOSE) => {
                        self.send(now, id, encode::close_ok(0));
                        self.drop_conn(now, id);
                        self.closing.push(id);
                    }
                    _ => {}
                }
            }
            Phase::Running => self.running_frame(now, id, f),
        }
    }

    fn handshake_frame(&mut self, now: Instant, id: ConnId, phase: Phase, f: Frame) {
        if f.kind() == FrameType::Heartbeat {
            return;
        }
        let mid = f.method_id().unwrap_or(MethodId::new(0, 0));
        let m = match (f.kind(), f.channel(), method::decode(f.payload())) {
            (FrameType::Method, 0, Ok(m)) => m,
            _ => {
                return self.conn_error(
                    now,
                    id,
                    reply::COMMAND_INVALID,
                    "unexpected frame during the handshake".into(),
                    mid,
                )
            }
        };
        match (phase, m) {
            (Phase::StartOk, Method::StartOk(ok)) => {
                if let Some(caps) = ok.client_properties.get_table("capabilities") {
                    let c = self.conns.get_mut(&id).expect("checked above");
                    c.caps_failure_close = caps.get_bool("authentication_failure_close");
                    c.caps_blocked = caps.get_bool("connection.blocked");
                    c.caps_cancel_notify = caps.get_bool("consumer_cancel_notify");
                }
                let valid = match parse_sasl(&ok.mechanism, &ok.response) {
                    Ok((user, pass)) => self
                        .config
                        .users
                        .iter()
                        .any(|(u, p)| *u == user && p == pass.expose()),
                    Err(_) => false,
                };
                if !valid {
                    self.log
                        .refused_logins
                        .push((now, id, reply::ACCESS_REFUSED));
                    let failure_close = self.conns[&id].caps_failure_close;
                    if failure_close {
                        self.close_conn(
                            now,
                            id,
                            reply::ACCESS_REFUSED,
                            format!(
                                "Login was refused using authentication mechanism {}. For details see the broker logfile.",
                                ok.mechanism
                            ),
                            MethodId::new(0, 0),
                        );
                    } else {
                        self.drop_conn(now, id);
                        self.closing.push(id);
                    }
                    return;
                }
                let tune = Tune {
                    channel_max: self.config.channel_max,
                    frame_max: self.config.frame_max,
                    heartbeat: self.config.heartbeat,
                };
                self.conns.get_mut(&id).expect("checked").phase = Phase::TuneOk;
                self.send(now, id, encode::tune(tune, false));
            }
            (Phase::TuneOk, Method::TuneOk(t)) => {
                let ours = (self.config.channel_max, self.config.frame_max);
                if t.frame_max < 4096 || (ours.1 != 0 && (t.frame_max > ours.1 || t.frame_max == 0))
                {
                    return self.conn_error(
                        now,
                        id,
                        reply::NOT_ALLOWED,
                        format!("frame_max={} outside [4096, {}]", t.frame_max, ours.1),
                        mid,
                    );
                }
                if ours.0 != 0 && (t.channel_max > ours.0 || t.channel_max == 0) {
                    return self.conn_error(
                        now,
                        id,
                        reply::NOT_ALLOWED,
                        format!("channel_max={} > {} max", t.channel_max, ours.0),
                        mid,
                    );
                }
                let c = self.conns.get_mut(&id).expect("checked");
                c.tune = t;
                c.decoder = FrameDecoder::new(t.frame_max);
                c.heartbeat =
                    (t.heartbeat > 0).then(|| Duration::from_secs(u64::from(t.heartbeat)));
                c.phase = Phase::Open;
            }
            (Phase::Open, Method::Open { vhost }) => {
                if !self.config.vhosts.contains(&vhost) {
                    self.log.refused_logins.push((now, id, reply::NOT_ALLOWED));
                    return self.close_conn(
                        now,
                        id,
                        reply::NOT_ALLOWED,
                        format!("vhost {vhost} not found"),
                        mid,
                    );
                }
                self.conns.get_mut(&id).expect("checked").phase = Phase::Running;
                self.send(
                    now,
                    id,
                    method_frame(0, ids::CONNECTION_OPEN_OK, |w| {
                        w.shortstr(b"");
                    }),
                );
                self.tell_blocked(now, id);
            }
            (_, Method::ConnectionClose(_)) => {
                self.send(now, id, encode::close_ok(0));
                self.drop_conn(now, id);
                self.closing.push(id);
            }
            _ => self.conn_error(
                now,
                id,
                reply::COMMAND_INVALID,
                format!("unexpected {mid:?} during the handshake"),
                mid,
            ),
        }
    }

    fn running_frame(&mut self, now: Instant, id: ConnId, f: Frame) {
        let ch = f.channel();
        let mid = f.method_id().unwrap_or(MethodId::new(0, 0));
        if f.kind() == FrameType::Heartbeat {
            if ch != 0 {
                self.conn_error(
                    now,
                    id,
                    reply::FRAME_ERROR,
                    format!("heartbeat on channel {ch}"),
                    mid,
                );
            }
            return;
        }
        if ch == 0 {
            return self.channel_zero(now, id, f);
        }
        let channel_max = self.conns[&id].tune.channel_max;
        if channel_max != 0 && ch > channel_max {
            return self.conn_error(
                now,
                id,
                reply::NOT_ALLOWED,
                format!("channel {ch} exceeds channel_max {channel_max}"),
                mid,
            );
        }
        let state = self.conns[&id].channels.get(&ch).map(|c| c.state);
        match state {
            None => {
                if mid == ids::CHANNEL_OPEN && f.kind() == FrameType::Method {
                    let mut chan = Chan::new();
                    chan.owner = None;
                    self.conns
                        .get_mut(&id)
                        .expect("checked")
                        .channels
                        .insert(ch, chan);
                    self.send(now, id, encode::channel_open_ok(ch));
                } else {
                    self.conn_error(
                        now,
                        id,
                        reply::CHANNEL_ERROR,
                        format!(
                            "expected 'channel.open' on channel {ch}, got {}",
                            kind_name(&f)
                        ),
                        mid,
                    );
                }
            }
            Some(ChanState::Closing) => match mid {
                ids::CHANNEL_CLOSE_OK if f.kind() == FrameType::Method => {
                    let chan = self.conns.get_mut(&id).and_then(|c| c.channels.remove(&ch));
                    if let Some(chan) = chan {
                        self.release_channel(id, ch, chan);
                    }
                }
                ids::CHANNEL_CLOSE if f.kind() == FrameType::Method => {
                    self.send(now, id, encode::close_ok(ch));
                }
                _ => {}
            },
            Some(ChanState::Open) => {
                let in_content = self.conns[&id].channels[&ch].content.is_some();
                if in_content {
                    return self.content_frame(now, id, ch, f);
                }
                match f.kind() {
                    FrameType::Method => self.channel_method(now, id, ch, f),
                    _ => self.conn_error(
                        now,
                        id,
                        reply::UNEXPECTED_FRAME,
                        format!("{} on channel {ch} without a content method", kind_name(&f)),
                        mid,
                    ),
                }
            }
        }
    }

    fn channel_zero(&mut self, now: Instant, id: ConnId, f: Frame) {
        let mid = f.method_id().unwrap_or(MethodId::new(0, 0));
        if f.kind() != FrameType::Method {
            return self.conn_error(
                now,
                id,
                reply::UNEXPECTED_FRAME,
                format!("{} on channel 0", kind_name(&f)),
                mid,
            );
        }
        match mid {
            ids::CONNECTION_CLOSE => {
                self.send(now, id, encode::close_ok(0));
                self.drop_conn(now, id);
                self.closing.push(id);
            }
            ids::CONNECTION_UPDATE_SECRET => {
                self.send(
                    now,
                    id,
                    method_frame(0, ids::CONNECTION_UPDATE_SECRET_OK, |_| {}),
                );
            }
            _ => self.conn_error(
                now,
                id,
                reply::COMMAND_INVALID,
                format!("{mid:?} on channel 0 of an open connection"),
                mid,
            ),
        }
    }

    fn content_frame(&mut self, now: Instant, id: ConnId, ch: u16, f: Frame) {
        let mid = f.method_id().unwrap_or(MethodId::new(0, 0));
        let chan = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.channels.get_mut(&ch))
            .expect("checked by caller");
        let p = chan.content.as_mut().expect("checked by caller");
        match (f.kind(), p.size) {
            (FrameType::Header, None) => match parse_header(f.payload()) {
                Ok(h) if h.class_id == 60 => p.size = Some(h.body_size),
                Ok(_) => {
                    return self.conn_error(
                        now,
                        id,
                        reply::UNEXPECTED_FRAME,
                        "content header for the wrong class".into(),
                        mid,
                    )
                }
                Err(e) => {
                    return self.conn_error(
                        now,
                        id,
                        reply::SYNTAX_ERROR,
                        format!("malformed content header: {e}"),
                        mid,
                    )
                }
            },
            (FrameType::Body, Some(size)) => {
                let have = p.body.len() as u64 + f.payload().len() as u64;
                if have > size {
                    return self.conn_error(
                        now,
                        id,
                        reply::UNEXPECTED_FRAME,
                        format!("body larger than the declared {size} bytes on channel {ch}"),
                        mid,
                    );
                }
                p.body.extend_from_slice(f.payload());
            }
            _ => {
                return self.conn_error(
                    now,
                    id,
                    reply::UNEXPECTED_FRAME,
                    format!("{} inside content on channel {ch}", kind_name(&f)),
                    mid,
                )
            }
        }
        if p.size == Some(p.body.len() as u64) {
            let p = chan.content.take().expect("present");
            self.publish(now, id, ch, p);
        }
    }
}

fn kind_name(f: &Frame) -> String {
    match f.kind() {
        FrameType::Method => f
            .method_id()
            .map_or_else(|| "a method".to_owned(), |m| format!("'{m:?}'")),
        FrameType::Header => "a content header".into(),
        FrameType::Body => "a content body".into(),
        FrameType::Heartbeat => "a heartbeat".into(),
    }
}
