//! Frames on channel 0: the client side of the handshake (login, tune, open), then the
//! connection methods of an open connection (close, blocked, update-secret).

use super::state::{Phase, Wait};
use super::{ClientOut, End, FakeClient, Misbehaviour, Step};
use bytes::BytesMut;
use std::time::{Duration, Instant};
use warren_core::frame::{Frame, FrameDecoder, FrameType};
use warren_core::method::{self, encode, ids, Method, StartOk, Tune};
use warren_core::table::{longstr, FieldTable, FieldValue};

impl FakeClient {
    pub(super) fn handshake_frame(&mut self, now: Instant, f: Frame) {
        if f.kind() == FrameType::Heartbeat {
            return;
        }
        let m = match method::decode(f.payload()) {
            Ok(m) if f.kind() == FrameType::Method && f.channel() == 0 => m,
            _ => return self.violation(format!("unexpected frame in the handshake: {:?}", f)),
        };
        match (self.phase, m) {
            (_, Method::ConnectionClose(c)) => {
                self.send(now, encode::close_ok(0));
                self.finish(now, End::Closed(c.code, c.text));
            }
            (Phase::Start, Method::Start(start)) => {
                let caps = FieldTable::default()
                    .with(
                        "authentication_failure_close",
                        FieldValue::Bool(self.spec.failure_close),
                    )
                    .with(
                        "connection.blocked",
                        FieldValue::Bool(self.spec.blocked_cap),
                    )
                    .with("consumer_cancel_notify", FieldValue::Bool(true))
                    .with("publisher_confirms", FieldValue::Bool(true));
                let (mechanism, response) = if self.spec.amqplain {
                    let t = FieldTable::default()
                        .with("LOGIN", longstr(&self.spec.user))
                        .with("PASSWORD", longstr(&self.spec.password));
                    let mut b = BytesMut::new();
                    t.encode(&mut b);
                    ("AMQPLAIN".to_owned(), b[4..].to_vec())
                } else {
                    (
                        "PLAIN".to_owned(),
                        format!("\0{}\0{}", self.spec.user, self.spec.password).into_bytes(),
                    )
                };
                if !start.mechanisms.split(' ').any(|m| m == mechanism) {
                    self.violation(format!("mechanism {mechanism} not offered"));
                }
                let ok = StartOk {
                    client_properties: FieldTable::default()
                        .with("product", longstr("warren-sim"))
                        .with("connection_name", longstr(&format!("c{}", self.id)))
                        .with("capabilities", FieldValue::Table(caps)),
                    mechanism,
                    response,
                    locale: "en_US".into(),
                };
                self.send(now, encode::start_ok(&ok));
                self.start_ok_at = Some(now);
                self.phase = Phase::Tune;
            }
            (Phase::Tune, Method::Tune(t)) => {
                let lower =
                    |theirs: u32, ours: u32| if theirs == 0 { ours } else { theirs.min(ours) };
                // One that will open a channel too many asks for few: RabbitMQ counts them.
                let too_many = Step::Misbehave(Misbehaviour::ChannelAboveMax);
                let channel_max = if self.spec.script.contains(&too_many) {
                    t.channel_max.min(8)
                } else {
                    t.channel_max
                };
                let tune = Tune {
                    channel_max,
                    frame_max: lower(t.frame_max, self.spec.frame_max),
                    heartbeat: self.spec.heartbeat.unwrap_or(t.heartbeat),
                };
                self.tune = tune;
                self.decoder = FrameDecoder::new(tune.frame_max);
                self.heartbeat =
                    (tune.heartbeat > 0).then(|| Duration::from_secs(u64::from(tune.heartbeat)));
                self.send(now, encode::tune(tune, true));
                self.send(now, encode::open(&self.spec.vhost.clone()));
                self.phase = Phase::OpenOk;
            }
            (Phase::OpenOk, Method::OpenOk) => {
                self.phase = Phase::Running;
                self.opened_at = Some(now);
            }
            (Phase::OpenOk, Method::Blocked { .. }) if self.spec.blocked_cap => self.blocked = true,
            (phase, m) => self.violation(format!("unexpected {m:?} in handshake phase {phase:?}")),
        }
    }

    pub(super) fn channel_zero(&mut self, now: Instant, f: Frame) {
        match f.kind() {
            FrameType::Heartbeat => return,
            FrameType::Method => {}
            _ => return self.violation(format!("content frame on channel 0: {f:?}")),
        }
        match method::decode(f.payload()) {
            Ok(Method::ConnectionClose(c)) => {
                self.send(now, encode::close_ok(0));
                self.finish(now, End::Closed(c.code, c.text));
            }
            Ok(Method::ConnectionCloseOk) if self.phase == Phase::Closing => {
                self.out.push_back(ClientOut::Close);
                self.finish(now, End::Finished);
            }
            Ok(Method::Blocked { .. }) => {
                if !self.spec.blocked_cap {
                    self.violation("connection.blocked sent to a client without the capability");
                }
                if self.blocked {
                    self.violation("connection.blocked twice without unblocked");
                }
                self.blocked = true;
            }
            Ok(Method::Other(id)) if id == ids::CONNECTION_UPDATE_SECRET_OK => {
                if self.wait == Wait::SecretOk {
                    self.wait = Wait::Nothing;
                } else {
                    self.violation("connection.update-secret-ok we did not ask for");
                }
            }
            Ok(Method::Unblocked) => {
                if !self.blocked {
                    self.violation("connection.unblocked without blocked");
                }
                self.blocked = false;
            }
            other => self.violation(format!("unexpected {other:?} on channel 0")),
        }
    }
}
