//! Frames from a connection: the protocol header, the handshake (login, tune, vhost),
//! channel 0, channel opening and closing, and content. Every frame has passed the
//! connection's [`UpstreamChecker`](crate::rules::UpstreamChecker) first, which holds the
//! rules by which RabbitMQ closes a connection; what is left here is what the broker does.

use super::state::{Chan, ChanState, Phase};
use super::{Broker, BrokerViolation, ConnId};
use crate::rules::{Read, Violation};
use bytes::Bytes;
use std::time::{Duration, Instant};
use warren_core::content::parse_header;
use warren_core::credentials::parse_sasl;
use warren_core::frame::{Frame, FrameType, PROTOCOL_HEADER};
use warren_core::method::{self, encode, ids, ConnectionStart, Method, MethodId, Tune};
use warren_core::reply;
use warren_core::table::{FieldTable, FieldValue};

impl Broker {
    /// Reads what arrived on a connection, one frame at a time, through the connection's
    /// [`UpstreamChecker`](crate::rules::UpstreamChecker): a frame that breaks a rule by which
    /// RabbitMQ closes the connection is logged and closes it; the others are acted on.
    pub(super) fn process(&mut self, now: Instant, id: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            match c.check.next() {
                None => return,
                Some(Ok(Read::Header)) => {
                    c.phase = Phase::StartOk;
                    let start = self.start_frame();
                    self.send(now, id, start);
                }
                Some(Ok(Read::Frame(f))) => self.frame(now, id, f),
                Some(Err(v)) => return self.broken(now, id, &v),
            }
        }
    }

    /// warren broke a connection-level rule: RabbitMQ answers a bad protocol header with its
    /// own and hangs up, anything else with `connection.close`. A frame after the broker's
    /// own close is not logged again.
    fn broken(&mut self, now: Instant, id: ConnId, v: &Violation) {
        let Some(phase) = self.conns.get(&id).map(|c| c.phase) else {
            return;
        };
        match phase {
            Phase::Closing(_) => {}
            Phase::Header => {
                self.log.violations.push(BrokerViolation {
                    at: now,
                    conn: id,
                    code: 0,
                    text: v.to_string(),
                });
                self.send(now, id, Bytes::from_static(PROTOCOL_HEADER));
                self.drop_conn(now, id);
                self.closing.push(id);
            }
            _ => {
                let cause = MethodId::new(0, 0);
                self.conn_error(now, id, v.rule.reply_code(), v.to_string(), cause);
            }
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

    /// A handshake frame, already checked to be the method the phase expects (or a heartbeat,
    /// or `connection.close`): what is left is RabbitMQ's judgement of the login and vhost.
    fn handshake_frame(&mut self, now: Instant, id: ConnId, phase: Phase, f: Frame) {
        let mid = f.method_id().unwrap_or(MethodId::new(0, 0));
        let Ok(m) = method::decode(f.payload()) else {
            return; // a heartbeat
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
                let c = self.conns.get_mut(&id).expect("checked");
                c.tune = t;
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
                self.send_method(now, id, 0, ids::CONNECTION_OPEN_OK, |w| {
                    w.shortstr(b"");
                });
                self.tell_blocked(now, id);
            }
            (_, Method::ConnectionClose(_)) => {
                self.send(now, id, encode::close_ok(0));
                self.drop_conn(now, id);
                self.closing.push(id);
            }
            // The checker let nothing else through.
            _ => {}
        }
    }

    /// A frame of an open connection, already checked: it is on an open channel (or is the
    /// `channel.open` that opens one), in content sequence, and a method a client may send.
    fn running_frame(&mut self, now: Instant, id: ConnId, f: Frame) {
        let ch = f.channel();
        if f.kind() == FrameType::Heartbeat {
            return;
        }
        if ch == 0 {
            return self.channel_zero(now, id, f);
        }
        let state = self.conns[&id].channels.get(&ch).map(|c| c.state);
        match state {
            None => {
                self.conns
                    .get_mut(&id)
                    .expect("checked")
                    .channels
                    .insert(ch, Chan::new());
                self.send(now, id, encode::channel_open_ok(ch));
            }
            // The checker passes only close and close-ok on a channel the broker closed.
            Some(ChanState::Closing) => {
                if f.method_id() == Some(ids::CHANNEL_CLOSE_OK) {
                    let chan = self.conns.get_mut(&id).and_then(|c| c.channels.remove(&ch));
                    if let Some(chan) = chan {
                        self.release_channel(id, ch, chan);
                    }
                } else {
                    self.send(now, id, encode::close_ok(ch));
                }
            }
            Some(ChanState::Open) => match f.kind() {
                FrameType::Method => self.channel_method(now, id, ch, f),
                _ => self.content_frame(now, id, ch, f),
            },
        }
    }

    /// `connection.close` or `connection.update-secret`, the methods of channel 0 the
    /// checker lets through on an open connection.
    fn channel_zero(&mut self, now: Instant, id: ConnId, f: Frame) {
        if f.method_id() == Some(ids::CONNECTION_UPDATE_SECRET) {
            return self.send_method(now, id, 0, ids::CONNECTION_UPDATE_SECRET_OK, |_| {});
        }
        self.send(now, id, encode::close_ok(0));
        self.drop_conn(now, id);
        self.closing.push(id);
    }

    /// A content header or body of the publish under way on `ch` (the checker holds the
    /// sequence and sizes).
    fn content_frame(&mut self, now: Instant, id: ConnId, ch: u16, f: Frame) {
        let Some(p) = self.chan(id, ch).content.as_mut() else {
            return;
        };
        if f.kind() == FrameType::Header {
            p.size = parse_header(f.payload()).ok().map(|h| h.body_size);
        } else {
            p.body.extend_from_slice(f.payload());
        }
        if p.size == Some(p.body.len() as u64) {
            let p = self.chan(id, ch).content.take().expect("present");
            self.publish(now, id, ch, p);
        }
    }
}
