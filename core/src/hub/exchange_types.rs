//! Exchange types the broker knows besides RabbitMQ's four, learnt by asking it (B7).
//!
//! RabbitMQ closes the whole connection (503) on an `exchange.declare` of a type it does not
//! know. Through warren that connection is shared, so one client's typo would close its
//! neighbours too. Plugins add types (`x-consistent-hash`, `x-delayed-message`, ...) and AMQP
//! cannot list them, so the hub asks the broker before it forwards such a declare: the
//! declare is *parked*, with every later frame on its channel, and the hub opens a broker
//! connection of its own (a *probe*) that declares the default exchange with that type.
//! RabbitMQ checks the type first: an unknown one closes the probe's connection with 503, a
//! known one closes only the probe's channel with 403 (no one may declare the default
//! exchange), and no exchange is ever created. The parked frames then go through the
//! client's rules again, in order: a known type goes on to the broker, an unknown one closes
//! the client with the broker's own 503, as RabbitMQ closes a connection of its own.
//!
//! Types listed in `extra_exchange_types` are trusted without asking. What a probe learnt is
//! trusted for [`TYPE_MEMORY`], then asked again, since an operator may enable or disable a
//! plugin. A probe that gets no answer (the broker is unreachable, the login is refused, the
//! answer does not come in time) closes the clients whose declare waited on it. A probe is
//! never dialled during the reconnect backoff (B11): a hub in backoff has no open upstream,
//! so no client has an open channel to declare on.

use super::{ClientId, Hub, UpstreamId};
use crate::frame::{Frame, FrameType};
use crate::method::{self, encode, Method};
use crate::reply::{self, Reply};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// How long the broker's answer about a type is trusted.
const TYPE_MEMORY: Duration = Duration::from_secs(300);

/// The channel a probe declares on.
const PROBE_CHANNEL: u16 = 1;

/// What the hub knows about exchange types, and the client frames waiting for it to learn
/// more.
#[derive(Debug, Default)]
pub(super) struct ExchangeTypes {
    /// The broker's answers, by type.
    learnt: Vec<Learnt>,
    /// Frames of channels whose `exchange.declare` waits for a probe, in arrival order.
    parked: Vec<(ClientId, Frame)>,
}

/// The broker's answer about one type.
#[derive(Debug)]
struct Learnt {
    kind: Vec<u8>,
    /// `None` if the broker knows the type, else its close.
    refusal: Option<Reply>,
    until: Instant,
}

/// What the hub may do with an `exchange.declare` of some type.
#[derive(Debug)]
pub(super) enum TypeCheck {
    /// The broker knows the type: forward the declare.
    Known,
    /// The broker does not: close the client with this (the broker's) reply.
    Unknown(Reply),
    /// Nobody knows yet: park the declare and ask the broker.
    Ask,
}

/// An upstream that only asks the broker whether it knows an exchange type.
#[derive(Debug)]
pub(crate) struct Probe {
    pub(crate) kind: Vec<u8>,
    /// When the answer is overdue, once the probe's connection is open.
    until: Option<Instant>,
}

impl Probe {
    /// When the probe gives up waiting for the broker's answer.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.until
    }
}

impl ExchangeTypes {
    /// Whether frames of client `id`'s channel `ch` are parked: its later frames park too,
    /// so that they reach the broker in the order the client sent them.
    pub(super) fn is_parked(&self, id: ClientId, ch: u16) -> bool {
        self.parked
            .iter()
            .any(|(c, f)| *c == id && f.channel() == ch)
    }

    /// Drops what a client that left had parked.
    pub(super) fn forget(&mut self, id: ClientId) {
        self.parked.retain(|(c, _)| *c != id);
    }
}

impl Hub {
    /// What to do with an `exchange.declare` of type `kind` now.
    pub(super) fn exchange_type(&self, now: Instant, kind: &[u8]) -> TypeCheck {
        let builtin = matches!(kind, b"direct" | b"fanout" | b"topic" | b"headers");
        if builtin || (self.config.extra_exchange_types.iter()).any(|t| t.as_bytes() == kind) {
            return TypeCheck::Known;
        }
        let mut learnt = self.types.learnt.iter();
        match learnt.find(|l| l.kind == kind && now < l.until) {
            Some(Learnt { refusal: None, .. }) => TypeCheck::Known,
            Some(Learnt {
                refusal: Some(r), ..
            }) => TypeCheck::Unknown(r.clone()),
            None => TypeCheck::Ask,
        }
    }

    /// Parks a client frame until a probe answers; `asks` names the type of a declare that
    /// needs one. One probe runs at a time: a client declaring many made-up types costs the
    /// broker one connection at a time, not one each, and is closed at the first answer.
    /// The declares of other types park again when it ends, and the first of them asks next.
    /// Parked frames count against the client's buffer bound like unfinished publishes (B8);
    /// `Err` is the reply that closes a client past it.
    pub(super) fn park(
        &mut self,
        now: Instant,
        id: ClientId,
        frame: Frame,
        asks: Option<Vec<u8>>,
    ) -> Result<(), Reply> {
        let limit = self.config.client_buffer_limit;
        let Some(c) = self.client_mut(id) else {
            return Ok(());
        };
        c.buffered += frame.wire_len();
        if c.buffered > limit {
            return Err(Reply::new(
                reply::RESOURCE_ERROR,
                format!("more than {limit} bytes held while warren asks the broker about an exchange type"),
            ));
        }
        self.types.parked.push((id, frame));
        let Some(kind) = asks else { return Ok(()) };
        if self.upstreams.iter().any(|(_, u)| u.probe.is_some()) {
            return Ok(());
        }
        tracing::debug!(kind = %String::from_utf8_lossy(&kind), "asking the broker about an exchange type");
        let nodes = self.nodes.order();
        let up = self.dial_nodes(now, nodes, "asking about an exchange type");
        if let Some(u) = self.upstream_mut(up) {
            u.probe = Some(Box::new(Probe { kind, until: None }));
        }
        Ok(())
    }

    /// A probe's login went through: it declares the default exchange with its type.
    pub(super) fn probe_opened(&mut self, now: Instant, id: UpstreamId) {
        let until = now + self.config.connect_timeout;
        let Some(u) = self.upstream_mut(id) else {
            return;
        };
        if !u.finish_login(now) {
            return;
        }
        let Some(p) = u.probe.as_mut() else { return };
        p.until = Some(until);
        let declare = encode::exchange_declare(PROBE_CHANNEL, b"", &p.kind);
        self.send_upstream(now, id, encode::channel_open(PROBE_CHANNEL));
        self.send_upstream(now, id, declare);
        self.schedule_upstream(id);
    }

    /// A frame from an open probe: the broker's answer, or something to wait past.
    pub(super) fn probe_frame(&mut self, now: Instant, id: UpstreamId, frame: &Frame) {
        let m = match frame.kind() {
            FrameType::Method => method::decode(frame.payload()).ok(),
            _ => return,
        };
        match m {
            Some(Method::ChannelClose(_)) => {
                // The type passed the broker's check; only the default exchange was refused.
                self.send_upstream(now, id, encode::close_ok(PROBE_CHANNEL));
                self.probe_answered(now, id, None);
                self.close_upstream_gracefully(now, id, "exchange type known");
            }
            Some(Method::ConnectionClose(close)) => {
                self.send_upstream(now, id, encode::close_ok(0));
                let reply = close.reply();
                self.learn_channel_limit(now, &reply);
                if reply.code == reply::COMMAND_INVALID {
                    self.probe_answered(now, id, Some(reply));
                    self.remove_upstream(id);
                } else {
                    self.probe_failed(now, id, reply);
                }
            }
            Some(Method::ChannelOpenOk) => {}
            _ => {
                let reply = Reply::new(reply::UNEXPECTED_FRAME, "unexpected answer to a probe");
                self.probe_failed(now, id, reply);
            }
        }
    }

    /// The broker answered a probe: what it said is learnt, and the parked frames go on.
    fn probe_answered(&mut self, now: Instant, id: UpstreamId, refusal: Option<Reply>) {
        let Some(p) = self.upstream_mut(id).and_then(|u| u.probe.take()) else {
            return;
        };
        tracing::info!(kind = %String::from_utf8_lossy(&p.kind), known = refusal.is_none(), "learnt an exchange type");
        if refusal.is_none() {
            self.stats.probes_known += 1;
        } else {
            self.stats.probes_unknown += 1;
        }
        self.types
            .learnt
            .retain(|l| l.kind != p.kind && now < l.until);
        self.types.learnt.push(Learnt {
            kind: p.kind,
            refusal,
            until: now + TYPE_MEMORY,
        });
        self.replay_parked(now);
    }

    /// A probe ended without an answer: the clients whose declare waited on it are closed
    /// with why, and the other parked frames go on.
    pub(super) fn probe_failed(&mut self, now: Instant, id: UpstreamId, why: Reply) {
        let Some(kind) = self
            .upstream_mut(id)
            .and_then(|u| u.probe.take())
            .map(|p| p.kind)
        else {
            return;
        };
        tracing::warn!(kind = %String::from_utf8_lossy(&kind), code = why.code, text = %why.text, "exchange type probe failed");
        self.stats.probes_failed += 1;
        self.remove_upstream(id);
        let reply = unasked(&kind, &why);
        let waiting: BTreeSet<ClientId> = (self.types.parked.iter())
            .filter(|(_, f)| declares_type(f, &kind))
            .map(|(c, _)| *c)
            .collect();
        for c in waiting {
            self.close_client(now, c, reply.clone());
        }
        self.replay_parked(now);
    }

    /// Runs the parked frames through the client rules again, in order; those whose type
    /// is still unknown park again.
    fn replay_parked(&mut self, now: Instant) {
        for (id, frame) in std::mem::take(&mut self.types.parked) {
            if let Some(c) = self.client_mut(id) {
                c.buffered = c.buffered.saturating_sub(frame.wire_len());
            }
            self.take_client_frame(now, id, frame);
        }
    }
}

/// The close of a client whose declare of type `kind` could not be asked about, and why.
fn unasked(kind: &[u8], why: &Reply) -> Reply {
    Reply::new(
        reply::CONNECTION_FORCED,
        format!(
            "could not ask the broker about exchange type '{}': {}",
            String::from_utf8_lossy(kind),
            why.detail()
        ),
    )
    .caused_by(method::ids::EXCHANGE_DECLARE)
}

/// Whether `frame` is an `exchange.declare` of type `kind`.
fn declares_type(frame: &Frame, kind: &[u8]) -> bool {
    frame.kind() == FrameType::Method
        && matches!(
            method::decode(frame.payload()),
            Ok(Method::ExchangeDeclare { kind: k, .. }) if k == kind
        )
}
