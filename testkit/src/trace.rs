//! The one trace printer of the test kit: one line per frame that crosses a link, per hub
//! event and per fault, with time relative to the world's epoch (`+1.500s`), world-level ids
//! (`c1`, `u2`) and frames by name (`ch1 BasicPublish "" "rk"`), never raw bytes or
//! `Instant`s. The simulation's and core's scenario snapshots, the fuzz target's trace, the
//! checker's violations and failure reports are all made of these lines.

use crate::broker::tag::Origin;
use bytes::BytesMut;
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use warren_core::content::parse_header;
use warren_core::frame::{Frame, FrameDecoder, FrameType, PROTOCOL_HEADER};
use warren_core::hub::{HubEvent, Peer};
use warren_core::method::{self, ids, Method};
use warren_core::wire::Reader;

/// A growing text trace. When disabled, nothing is formatted, so sweeps stay fast.
#[derive(Debug)]
pub struct Trace {
    epoch: Instant,
    enabled: bool,
    text: String,
}

impl Trace {
    /// A trace whose times count from `epoch`.
    #[must_use]
    pub fn new(epoch: Instant, enabled: bool) -> Self {
        Trace {
            epoch,
            enabled,
            text: String::new(),
        }
    }

    /// Whether lines are being recorded (callers skip building them otherwise).
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Appends one line stamped with `now`.
    pub fn line(&mut self, now: Instant, what: impl std::fmt::Display) {
        if self.enabled {
            let _ = writeln!(self.text, "{}", line(now.duration_since(self.epoch), what));
        }
    }

    /// Everything recorded so far.
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The last `n` lines, for failure reports.
    #[must_use]
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.text.lines().collect();
        let from = lines.len().saturating_sub(n);
        let mut s = String::new();
        if from > 0 {
            let _ = writeln!(s, "... ({from} earlier lines)");
        }
        for l in &lines[from..] {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

/// `+1.500s`: a duration since the epoch, millisecond precision.
#[must_use]
pub fn stamp(d: Duration) -> String {
    format!("+{}.{:03}s", d.as_secs(), d.subsec_millis())
}

/// One trace line: `what`, stamped with the time `since` the epoch.
#[must_use]
pub fn line(since: Duration, what: impl std::fmt::Display) -> String {
    format!("{} {what}", stamp(since))
}

/// Splits a byte stream into frames for display only (it never affects the run).
#[derive(Debug, Default)]
pub struct Tap {
    buf: BytesMut,
    header_done: bool,
    broken: bool,
}

impl Tap {
    /// Feeds bytes; returns descriptions of the frames they completed.
    pub fn feed(&mut self, data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        if self.broken {
            return out;
        }
        self.buf.extend_from_slice(data);
        if !self.header_done {
            if self.buf.len() < PROTOCOL_HEADER.len() && PROTOCOL_HEADER.starts_with(&self.buf) {
                return out;
            }
            self.header_done = true;
            if self.buf.starts_with(PROTOCOL_HEADER) {
                let _ = self.buf.split_to(PROTOCOL_HEADER.len());
                out.push("protocol header".to_owned());
            }
        }
        loop {
            match FrameDecoder::new(1 << 26).decode(&mut self.buf) {
                Ok(Some(f)) => out.push(describe(&f)),
                Ok(None) => break,
                Err(e) => {
                    out.push(format!("undecodable bytes ({e})"));
                    self.broken = true;
                    break;
                }
            }
        }
        out
    }
}

/// A one-line description of a frame: channel, name, and the arguments worth seeing.
#[must_use]
pub fn describe(f: &Frame) -> String {
    let ch = f.channel();
    match f.kind() {
        FrameType::Heartbeat if ch == 0 => "heartbeat".to_owned(),
        FrameType::Heartbeat => format!("ch{ch} heartbeat"),
        FrameType::Body => match Origin::parse(f.payload()) {
            Some(o) => format!("ch{ch} body({}) [{o}]", f.payload().len()),
            None => format!("ch{ch} body({})", f.payload().len()),
        },
        FrameType::Header => match parse_header(f.payload()) {
            Ok(h) => format!("ch{ch} header(size={})", h.body_size),
            Err(_) => format!("ch{ch} header(malformed)"),
        },
        FrameType::Method => {
            let Some(id) = f.method_id() else {
                return format!("ch{ch} malformed method");
            };
            format!("ch{ch} {id:?}{}", method_detail(id, f.payload()))
        }
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The arguments shown for a method, with a leading space, or nothing.
fn method_detail(id: method::MethodId, payload: &[u8]) -> String {
    let args = &payload[payload.len().min(4)..];
    let mut r = Reader::new(args);
    let detail = match id {
        ids::BASIC_DELIVER => (|| {
            let tag = lossy(r.shortstr().ok()?);
            let dtag = r.u64().ok()?;
            let redelivered = r.bit().ok()?;
            Some(format!(
                " {tag} dtag={dtag}{}",
                if redelivered { " redelivered" } else { "" }
            ))
        })(),
        ids::BASIC_GET_OK => (|| {
            let dtag = r.u64().ok()?;
            Some(format!(" dtag={dtag}"))
        })(),
        ids::BASIC_ACK | ids::BASIC_NACK | ids::BASIC_REJECT => (|| {
            let dtag = r.u64().ok()?;
            let multiple = r.bit().ok()?;
            Some(format!(
                " {dtag}{}",
                if multiple { " multiple" } else { "" }
            ))
        })(),
        ids::BASIC_RETURN => (|| {
            let code = r.u16().ok()?;
            Some(format!(" {code}"))
        })(),
        // A reserved short, two short strings and a flag: the exchange, the routing key and
        // `mandatory` of a publish; the name, the type and `passive` of a declare.
        ids::BASIC_PUBLISH | ids::EXCHANGE_DECLARE => (|| {
            r.u16().ok()?;
            let first = lossy(r.shortstr().ok()?);
            let second = lossy(r.shortstr().ok()?);
            let flag = match (r.bit().ok()?, id == ids::BASIC_PUBLISH) {
                (false, _) => "",
                (true, true) => " mandatory",
                (true, false) => " passive",
            };
            Some(format!(" {first:?} {second:?}{flag}"))
        })(),
        ids::BASIC_GET => (|| {
            r.u16().ok()?;
            Some(format!(" {:?}", lossy(r.shortstr().ok()?)))
        })(),
        ids::BASIC_QOS => (|| {
            r.u32().ok()?;
            Some(format!(" prefetch={}", r.u16().ok()?))
        })(),
        _ => match method::decode(payload) {
            Ok(Method::ConnectionClose(c)) | Ok(Method::ChannelClose(c)) => {
                Some(format!(" {} {:?}", c.code, c.text))
            }
            Ok(Method::Tune(t)) | Ok(Method::TuneOk(t)) => Some(format!(
                " channel_max={} frame_max={} heartbeat={}",
                t.channel_max, t.frame_max, t.heartbeat
            )),
            Ok(Method::Open { vhost }) => Some(format!(" {vhost:?}")),
            Ok(Method::Blocked { reason }) => Some(format!(" {reason:?}")),
            Ok(Method::Flow { active }) | Ok(Method::FlowOk { active }) => {
                Some(format!(" active={active}"))
            }
            Ok(Method::QueueDeclare {
                queue, exclusive, ..
            }) => Some(format!(
                " {:?}{}",
                lossy(&queue),
                if exclusive { " exclusive" } else { "" }
            )),
            Ok(Method::QueueDeclareOk { queue }) | Ok(Method::QueueDelete { queue, .. }) => {
                Some(format!(" {:?}", lossy(&queue)))
            }
            Ok(Method::Consume { tag, .. })
            | Ok(Method::ConsumeOk { tag })
            | Ok(Method::Cancel { tag })
            | Ok(Method::CancelOk { tag }) => Some(format!(" {:?}", lossy(&tag))),
            Ok(Method::StartOk(s)) => Some(format!(" {}", s.mechanism)),
            _ => None,
        },
    };
    detail.unwrap_or_default()
}

/// A hub event in one line, its peers named by `name` (world-level ids in the simulation, the
/// hub's own in core's scenarios) and times shown relative to `now`.
#[must_use]
pub fn describe_event(e: &HubEvent, now: Instant, name: impl Fn(Peer) -> String) -> String {
    let c = |id| name(Peer::Client(id));
    let u = |id| name(Peer::Upstream(id));
    match e {
        HubEvent::ClientAdmitted { client } => format!("{} admitted", c(*client)),
        HubEvent::ClientClosed { client, reply } => {
            format!("{} closed {} {:?}", c(*client), reply.code, reply.text)
        }
        HubEvent::ClientLeft { client } => format!("{} left", c(*client)),
        HubEvent::SlowClient { client } => format!("{} slow", c(*client)),
        HubEvent::UpstreamOpen {
            upstream,
            channel_max,
            frame_max,
            heartbeat,
        } => format!(
            "{} open channel_max={channel_max} frame_max={frame_max} heartbeat={heartbeat}",
            u(*upstream)
        ),
        HubEvent::UpstreamFailed { upstream, reply } => {
            format!("{} failed {} {:?}", u(*upstream), reply.code, reply.text)
        }
        HubEvent::UpstreamLost { upstream, reply } => {
            format!("{} lost {} {:?}", u(*upstream), reply.code, reply.text)
        }
        HubEvent::AuthRejected { reply } => format!("login rejected {}", reply.code),
        HubEvent::HeartbeatMissed { peer } => format!("heartbeat missed by {}", name(*peer)),
        HubEvent::ReconnectScheduled { at, failures } => format!(
            "reconnect in {}ms after {failures} failures",
            at.duration_since(now).as_millis()
        ),
        HubEvent::Redialling { upstream } => format!("redialling onto {}", u(*upstream)),
    }
}
