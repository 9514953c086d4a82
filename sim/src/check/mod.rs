//! The invariants of docs/design.md (R1), checked on every run.
//!
//! Some are checked as the run goes (the [`Observer`] watches every hub output and event the
//! world carries out): heartbeat gaps in warren's sends, false deaths, reconnect spacing.
//! The clients and the broker check what they receive themselves (routing, order, content
//! sequencing, connection-level protocol errors). The rest is checked at the end from what
//! everybody recorded: how every client ended, confirms that never arrived, leaks, drain.
//!
//! # Layout
//!
//! This file holds the invariants, the violations, and the [`Observer`] as it watches the run;
//! `end` holds the checks made once the run stopped.

use crate::broker::BrokerLog;
use crate::client::{End, FakeClient};
use crate::plan::Fault;
use crate::scenario::Scenario;
use crate::slow::SlowObs;
use crate::trace::stamp;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};
use warren_core::hub::BackoffConfig;
use warren_core::reply;

mod end;

/// What the broker's log shows that no check judges, for the coverage counts of both
/// layers: its own refusals of another connection's exclusive queue (405), the questions
/// about exchange types warren asked it (B7), by the answer, and the connections it closed
/// for a misuse of a stream or quorum queue that reached it (B7; the checks judge whether
/// warren should have refused it). Zero counts are left out.
pub fn broker_coverage(log: &BrokerLog) -> impl Iterator<Item = (&'static str, u64)> {
    let (known, unknown) = log.default_exchange_declares;
    [
        ("broker refused 405", log.locked_refusals),
        ("probe answered: type known", known),
        ("probe answered: type unknown", unknown),
        (
            "broker closed a connection for a queue-type misuse",
            log.queue_type_closes.len() as u64,
        ),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
}

/// How a client of a stream or quorum queue (B7) ended, for the coverage counts of both
/// layers: a queue-type misuse closed with RabbitMQ's close (warren knew the type), with 320
/// (warren could not judge), or otherwise (which the checks report); a well-behaved
/// stream or quorum user's end.
#[must_use]
pub fn queue_type_coverage(c: &FakeClient) -> Option<&'static str> {
    let end = c.end.as_ref().map(|(_, e)| e);
    if let Some(m) = c.misbehaviour().filter(|m| m.queue_misuse().is_some()) {
        return Some(match end {
            Some(End::Closed(code, text)) if m.closed_as_expected(*code, text) => {
                if *code == reply::CONNECTION_FORCED {
                    "queue-type misuse: closed 320"
                } else {
                    "queue-type misuse: closed alone with RabbitMQ's close"
                }
            }
            _ => "queue-type misuse: other end",
        });
    }
    match (c.spec.kind, end) {
        ("stream-user" | "quorum-user", Some(End::Finished | End::Left)) => {
            Some("stream/quorum user finished")
        }
        ("stream-user" | "quorum-user", _) => Some("stream/quorum user cut short"),
        _ => None,
    }
}

/// Which promise a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    /// A frame reached the wrong client or channel, or arrived out of sequence, as seen by
    /// the client that got it.
    Routing,
    /// Per-channel order of publishes or deliveries was not kept.
    Order,
    /// A client neither finished its script nor got a `Connection.Close` with a proper code.
    ClientOutcome,
    /// An upstream channel, connection or exclusive queue outlived the clients that used it.
    ChannelLeak,
    /// warren's heartbeats were late, or it declared a live peer dead.
    Heartbeat,
    /// A reconnect came sooner than the backoff allows.
    Backoff,
    /// A drain overran its deadline.
    Drain,
    /// A confirm the broker sent never reached the client.
    ConfirmLost,
    /// The broker saw something RabbitMQ would close the shared connection for (B7).
    BrokerProtocol,
    /// A client was admitted with a password the broker had changed, after warren knew (B2).
    Revocation,
    /// A client got at another client's exclusive queue: a delivery or get-ok from it, a
    /// success RabbitMQ would refuse with 405, or the queue deleted or purged under its
    /// owner (B5).
    Exclusive,
    /// A client that kept reading was reported slow, or one that stopped was not cut off
    /// within `slow_client_timeout` (B9, issue 14).
    SlowClient,
    /// A message the broker confirmed was neither received by a client nor left in a queue
    /// (a slow client's message must be requeued).
    MessageLost,
    /// Something never finished.
    Hang,
}

impl Invariant {
    /// The promise a violation a client noticed itself breaks, from its text.
    #[must_use]
    pub fn of_client_violation(text: &str) -> Self {
        if text.contains("order broken") {
            Invariant::Order
        } else if text.contains("exclusive queue") {
            Invariant::Exclusive
        } else {
            Invariant::Routing
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Invariant::Routing => "routing",
            Invariant::Order => "order",
            Invariant::ClientOutcome => "client-outcome",
            Invariant::ChannelLeak => "leak",
            Invariant::Heartbeat => "heartbeat",
            Invariant::Backoff => "backoff",
            Invariant::Drain => "drain",
            Invariant::ConfirmLost => "confirm-lost",
            Invariant::BrokerProtocol => "broker-protocol",
            Invariant::Revocation => "revocation",
            Invariant::Exclusive => "exclusive",
            Invariant::SlowClient => "slow-client",
            Invariant::MessageLost => "message-lost",
            Invariant::Hang => "hang",
        };
        f.write_str(s)
    }
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// When it was noticed (virtual time since the start).
    pub at: Duration,
    /// Which invariant.
    pub invariant: Invariant,
    /// What happened.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {} {}", self.invariant, stamp(self.at), self.detail)
    }
}

/// Heartbeat bookkeeping of one leg.
#[derive(Debug, Clone)]
struct Hb {
    interval: Option<Duration>,
    last_send: Instant,
    last_rx: Instant,
    active: bool,
}

impl Hb {
    fn new(now: Instant) -> Self {
        Hb {
            interval: None,
            last_send: now,
            last_rx: now,
            active: false,
        }
    }
}

#[derive(Debug, Default)]
struct HubObs {
    failures: u32,
    floor: Option<(Instant, String)>,
}

/// Lateness tolerated in warren's heartbeat sends (the world fires timers exactly).
const HB_SLACK: Duration = Duration::from_millis(1);

/// Which of warren's two kinds of peer a heartbeat watch is on.
#[derive(Debug, Clone, Copy)]
enum Side {
    Client,
    Upstream,
}

impl Side {
    /// The peer's name in violations: `c3`, `u2`.
    fn name(self, id: u32) -> String {
        match self {
            Side::Client => format!("c{id}"),
            Side::Upstream => format!("u{id}"),
        }
    }
}

/// Watches a run and collects violations.
#[derive(Debug)]
pub struct Observer {
    epoch: Instant,
    backoff: BackoffConfig,
    violations: Vec<Violation>,
    clients_hb: BTreeMap<u32, Hb>,
    ups_hb: BTreeMap<u32, Hb>,
    hubs: BTreeMap<u32, HubObs>,
    ended: BTreeSet<u32>,
    joined: BTreeSet<u32>,
    slow: BTreeSet<u32>,
    /// The slow-client invariant (`crate::slow`).
    slow_watch: SlowObs,
    handshake_closed: BTreeSet<u32>,
    broken: BTreeSet<u32>,
    closed_with: BTreeMap<u32, u16>,
    drain: Option<(Instant, Instant)>,
    hubs_gone_at: Option<Instant>,
    disturbances: Vec<(Instant, Option<Instant>)>,
    /// When each client left its hub (the hub's `ClientClosed` or `ClientLeft`).
    left: BTreeMap<u32, Instant>,
    /// Password changes: when, whose, and the password it replaced.
    password_changes: Vec<(Instant, String, String)>,
    /// When the event of each password change reached warren's event feed (same order).
    events_delivered: Vec<Option<Instant>>,
    /// Logins with a revoked password that the revocation check judged (StartOk after
    /// warren knew).
    revocation_checked: u64,
}

fn is_connection_close(data: &[u8]) -> bool {
    data.len() >= 12 && data[0] == 1 && data[1..3] == [0, 0] && data[7..11] == [0, 10, 0, 50]
}

impl Observer {
    /// An observer for a run of `sc` starting at `epoch`.
    #[must_use]
    pub fn new(epoch: Instant, sc: &Scenario) -> Self {
        Observer {
            epoch,
            backoff: sc.hub.backoff,
            violations: Vec::new(),
            clients_hb: BTreeMap::new(),
            ups_hb: BTreeMap::new(),
            hubs: BTreeMap::new(),
            ended: BTreeSet::new(),
            joined: BTreeSet::new(),
            slow: BTreeSet::new(),
            slow_watch: SlowObs::new(crate::world::slow_rule(sc)),
            handshake_closed: BTreeSet::new(),
            broken: BTreeSet::new(),
            closed_with: BTreeMap::new(),
            drain: None,
            hubs_gone_at: None,
            disturbances: Vec::new(),
            left: BTreeMap::new(),
            password_changes: Vec::new(),
            events_delivered: Vec::new(),
            revocation_checked: 0,
        }
    }

    /// How many logins with a changed password came after warren knew of the change (each
    /// had to be refused).
    #[must_use]
    pub fn revocation_checked(&self) -> u64 {
        self.revocation_checked
    }

    /// The hub let go of client `cid` (closed it or saw it leave): from now on its exclusive
    /// queues may be deleted.
    pub fn client_left(&mut self, now: Instant, cid: u32) {
        self.left.entry(cid).or_insert(now);
    }

    /// The broker changed `user`'s password (which was `old`).
    pub fn password_changed(&mut self, now: Instant, user: &str, old: &str) {
        self.password_changes
            .push((now, user.to_owned(), old.to_owned()));
        self.events_delivered.push(None);
    }

    /// The event of the latest password change reached warren's feed connection.
    pub fn revocation_delivered(&mut self, now: Instant) {
        if let Some(d) = self.events_delivered.last_mut() {
            d.get_or_insert(now);
        }
    }

    /// Whether a client logs in with a password that was changed before `at`.
    fn revoked_by(&self, c: &FakeClient, at: Instant) -> bool {
        self.password_changes
            .iter()
            .any(|(t, u, old)| *t <= at && c.spec.user == *u && c.spec.password == *old)
    }

    /// Records a violation.
    pub fn violation(&mut self, now: Instant, invariant: Invariant, detail: impl Into<String>) {
        self.violations.push(Violation {
            at: now.duration_since(self.epoch),
            invariant,
            detail: detail.into(),
        });
    }

    /// The violations found so far.
    #[must_use]
    pub fn take_violations(&mut self) -> Vec<Violation> {
        std::mem::take(&mut self.violations)
    }

    fn rel(&self, t: Instant) -> String {
        stamp(t.duration_since(self.epoch))
    }

    // ----- clients ----------------------------------------------------------------------

    /// First time the client is seen ended; returns whether this is the first time.
    pub fn note_client_end(&mut self, cid: u32) -> bool {
        self.ended.insert(cid)
    }

    /// The client's handshake machine closed its socket (timeout, bad header, refusal).
    pub fn handshake_closed(&mut self, cid: u32) {
        self.handshake_closed.insert(cid);
    }

    /// The runtime reported the client slow with `queued` bytes waiting for it.
    pub fn slow_reported(&mut self, now: Instant, cid: u32, queued: usize) {
        self.slow.insert(cid);
        self.slow_watch.reported(now, cid, queued);
        self.take_slow_violations();
    }

    /// What waits for the client in warren (`queued`) and what its socket took so far
    /// (`written`), measured whenever either may have changed.
    pub fn client_queue(&mut self, now: Instant, cid: u32, queued: usize, written: u64) {
        self.slow_watch.measured(now, cid, queued, written);
        self.take_slow_violations();
    }

    /// warren let go of the client (closed it or saw it close).
    pub fn client_gone(&mut self, now: Instant, cid: u32) {
        self.slow_watch.gone(now, cid);
        self.take_slow_violations();
    }

    /// How often the slow-client rule cut a client off, by reason (coverage).
    #[must_use]
    pub fn slow_counts(&self) -> &BTreeMap<&'static str, u64> {
        &self.slow_watch.counts
    }

    fn take_slow_violations(&mut self) {
        for (t, what) in std::mem::take(&mut self.slow_watch.found) {
            self.violation(t, Invariant::SlowClient, what);
        }
    }

    /// The network broke the client's connection.
    pub fn client_link_broken(&mut self, cid: u32) {
        self.broken.insert(cid);
    }

    /// The client entered a hub with this negotiated heartbeat.
    pub fn client_joined(&mut self, now: Instant, cid: u32, heartbeat: u16) {
        self.joined.insert(cid);
        let mut hb = Hb::new(now);
        hb.interval = (heartbeat > 0).then(|| Duration::from_secs(u64::from(heartbeat)));
        hb.active = true;
        self.clients_hb.insert(cid, hb);
    }

    /// The hub got frames from the client.
    pub fn client_sent(&mut self, now: Instant, cid: u32) {
        if let Some(hb) = self.clients_hb.get_mut(&cid) {
            hb.last_rx = now;
        }
    }

    fn check_gap(&mut self, now: Instant, who: String, hb: &Hb) {
        if let (true, Some(i)) = (hb.active, hb.interval) {
            let gap = now.duration_since(hb.last_send);
            if gap > i / 2 + HB_SLACK {
                let from = self.rel(hb.last_send);
                self.violation(
                    now,
                    Invariant::Heartbeat,
                    format!(
                        "warren sent nothing to {who} for {}ms (from {from}), heartbeat {}s: the limit is half of it",
                        gap.as_millis(),
                        i.as_secs()
                    ),
                );
            }
        }
    }

    /// warren wrote to a watched peer (`Some(bytes)`) or closed its socket (`None`): the gap
    /// since its last write is checked, and a `connection.close` or a closed socket ends the
    /// watch.
    fn proxy_wrote(&mut self, now: Instant, side: Side, id: u32, data: Option<&[u8]>) {
        let Some(hb) = self.watched(side).get(&id).cloned() else {
            return;
        };
        self.check_gap(now, side.name(id), &hb);
        let hb = self.watched(side).get_mut(&id).expect("present");
        match data {
            Some(data) => {
                hb.last_send = now;
                hb.active &= !is_connection_close(data);
            }
            None => hb.active = false,
        }
    }

    fn watched(&mut self, side: Side) -> &mut BTreeMap<u32, Hb> {
        match side {
            Side::Client => &mut self.clients_hb,
            Side::Upstream => &mut self.ups_hb,
        }
    }

    /// warren queued bytes for the client.
    pub fn proxy_sent_client(&mut self, now: Instant, cid: u32, data: &[u8]) {
        self.proxy_wrote(now, Side::Client, cid, Some(data));
    }

    /// warren closed the client's socket.
    pub fn proxy_closed_client(&mut self, now: Instant, cid: u32) {
        self.proxy_wrote(now, Side::Client, cid, None);
    }

    /// The hub closed the client with this code.
    pub fn proxy_closed_client_with(&mut self, cid: u32, code: u16) {
        self.closed_with.insert(cid, code);
    }

    /// The hub declared the client dead for missed heartbeats.
    pub fn client_declared_dead(&mut self, now: Instant, cid: u32) {
        self.declared_dead(now, Side::Client, cid);
    }

    /// warren declared a watched peer dead: only after two heartbeat intervals of silence.
    fn declared_dead(&mut self, now: Instant, side: Side, id: u32) {
        let Some(hb) = self.watched(side).get(&id).cloned() else {
            return;
        };
        if let Some(i) = hb.interval {
            let silent = now.duration_since(hb.last_rx);
            if silent < i * 2 {
                let last = self.rel(hb.last_rx);
                self.violation(
                    now,
                    Invariant::Heartbeat,
                    format!(
                        "warren declared {} dead after {}ms of silence (last frame at {last}), heartbeat {}s",
                        side.name(id),
                        silent.as_millis(),
                        i.as_secs()
                    ),
                );
            }
        }
    }

    // ----- upstreams --------------------------------------------------------------------

    /// A hub dialled the broker.
    pub fn dialed(&mut self, now: Instant, hid: u32, uid: u32) {
        self.ups_hb.insert(uid, Hb::new(now));
        let floor = self.hubs.entry(hid).or_default().floor.take();
        if let Some((t, why)) = floor {
            if now < t {
                let (at, allowed) = (self.rel(now), self.rel(t));
                self.violation(
                    now,
                    Invariant::Backoff,
                    format!("h{hid} dialled u{uid} at {at}, before {allowed} ({why})"),
                );
            }
        }
    }

    /// warren dialled the broker for admission (a login proof): no backoff applies, but its
    /// heartbeats are watched once a hub adopts it.
    pub fn link_dialed(&mut self, now: Instant, uid: u32) {
        self.ups_hb.insert(uid, Hb::new(now));
    }

    /// warren queued bytes for the broker on `uid`.
    pub fn proxy_sent_upstream(&mut self, now: Instant, uid: u32, data: &[u8]) {
        self.proxy_wrote(now, Side::Upstream, uid, Some(data));
    }

    /// warren closed an upstream socket.
    pub fn proxy_closed_upstream(&mut self, now: Instant, uid: u32) {
        self.proxy_wrote(now, Side::Upstream, uid, None);
    }

    /// The hub got frames from the broker on `uid`.
    pub fn upstream_sent(&mut self, now: Instant, uid: u32) {
        if let Some(hb) = self.ups_hb.get_mut(&uid) {
            hb.last_rx = now;
        }
    }

    /// An upstream finished its handshake with this heartbeat.
    pub fn upstream_open(&mut self, _now: Instant, hid: u32, uid: u32, heartbeat: u16) {
        let h = self.hubs.entry(hid).or_default();
        h.failures = 0;
        h.floor = None;
        if let Some(hb) = self.ups_hb.get_mut(&uid) {
            hb.interval = (heartbeat > 0).then(|| Duration::from_secs(u64::from(heartbeat)));
            hb.active = true;
        }
    }

    /// A dial or handshake failed; `others` upstreams of the hub are still alive.
    pub fn upstream_failed(
        &mut self,
        now: Instant,
        hid: u32,
        uid: Option<u32>,
        code: u16,
        others: usize,
    ) {
        self.upstream_gone(uid);
        let backoff = self.backoff;
        let h = self.hubs.entry(hid).or_default();
        h.failures += 1;
        let login = matches!(code, reply::ACCESS_REFUSED | reply::NOT_ALLOWED);
        if others == 0 && !login && self.drain.is_none() {
            let lower = backoff.step(h.failures - 1) / 2;
            let t = now + lower;
            if h.floor.as_ref().is_none_or(|(f, _)| *f < t) {
                h.floor = Some((
                    t,
                    format!(
                        "{} consecutive failures, backoff at least {}ms",
                        h.failures,
                        lower.as_millis()
                    ),
                ));
            }
        }
    }

    /// An open upstream was lost.
    pub fn upstream_lost(&mut self, _now: Instant, _hid: u32, uid: Option<u32>) {
        self.upstream_gone(uid);
    }

    /// An upstream (if it got that far) is gone: warren owes it no more heartbeats.
    fn upstream_gone(&mut self, uid: Option<u32>) {
        if let Some(hb) = uid.and_then(|uid| self.ups_hb.get_mut(&uid)) {
            hb.active = false;
        }
    }

    /// The hub scheduled a reconnect at `at` after `failures` failures.
    pub fn reconnect_scheduled(&mut self, now: Instant, hid: u32, at: Instant, failures: u32) {
        let backoff = self.backoff;
        let h = self.hubs.entry(hid).or_default();
        let mine = h.failures;
        let step = backoff.step(failures.max(1) - 1);
        let delay = at.duration_since(now);
        let mut problems = Vec::new();
        if failures != mine {
            problems.push(format!(
                "h{hid} scheduled a reconnect after {failures} failures, but {mine} dials failed in a row"
            ));
        }
        if delay < step / 2 || delay > step {
            problems.push(format!(
                "h{hid} reconnect delay {}ms outside [{}ms, {}ms] for {failures} failures",
                delay.as_millis(),
                (step / 2).as_millis(),
                step.as_millis()
            ));
        }
        if h.floor.as_ref().is_none_or(|(f, _)| *f < at) {
            h.floor = Some((
                at,
                format!("the reconnect scheduled after {failures} failures"),
            ));
        }
        for p in problems {
            self.violation(now, Invariant::Backoff, p);
        }
    }

    /// The hub declared an upstream dead for missed heartbeats.
    pub fn upstream_declared_dead(&mut self, now: Instant, uid: u32) {
        self.declared_dead(now, Side::Upstream, uid);
    }

    // ----- faults and hubs --------------------------------------------------------------

    /// A fault began.
    pub fn fault_started(&mut self, now: Instant, fault: &Fault) {
        match fault {
            Fault::Drain { timeout } => self.drain = Some((now, now + *timeout)),
            f if f.disturbs() => self.disturbances.push((now, None)),
            _ => {}
        }
    }

    /// A fault healed.
    pub fn fault_ended(&mut self, now: Instant, fault: &Fault) {
        if fault.disturbs() {
            if let Some(d) = self.disturbances.iter_mut().find(|d| d.1.is_none()) {
                d.1 = Some(now);
            }
        }
    }

    /// Some hubs finished and were removed.
    pub fn hubs_retired(&mut self, now: Instant) {
        self.hubs_gone_at = Some(now);
    }

    fn disturbed(&self, t: Instant, margin: Duration) -> bool {
        self.disturbances
            .iter()
            .any(|(a, b)| t >= *a && b.is_none_or(|b| t <= b + margin))
    }
}
