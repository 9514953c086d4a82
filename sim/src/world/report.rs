//! A run's options and its report: the final checks once the world stops, and the coverage
//! counts that show what a sweep exercised.

use super::slots::BrokerState;
use super::World;
use crate::check::{Invariant, Violation};
use crate::client::{End, FakeClient, Intrusion};
use crate::slow::SlowPolicy;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use warren_core::admission;
use warren_core::hub::Output;

/// A hook that sees (and may change or drop) every hub output before the world carries it
/// out. Tests use it to impersonate a buggy proxy and prove the checks notice.
pub type Tamper = Box<dyn FnMut(Instant, &mut Output) -> bool + Send>;

/// The same for admission's outputs (bytes to clients in their handshake and to the broker
/// connections admission owns: login proofs and the event feed).
pub type AdmissionTamper = Box<dyn FnMut(Instant, &mut admission::Output) -> bool + Send>;

/// Options of one run.
#[derive(Default)]
pub struct RunOptions {
    /// Record the readable trace (slower; off for sweeps).
    pub trace: bool,
    /// Optional output tampering (see [`Tamper`]).
    pub tamper: Option<Tamper>,
    /// Optional tampering with admission's outputs (see [`AdmissionTamper`]).
    pub tamper_admission: Option<AdmissionTamper>,
    /// The slow-client rule the world's driver applies (warren's unless a test
    /// impersonates a proxy with the old one).
    pub slow_policy: SlowPolicy,
}

/// The outcome of one run.
#[derive(Debug)]
pub struct Report {
    /// The scenario's seed.
    pub seed: u64,
    /// Every broken invariant, in the order found.
    pub violations: Vec<Violation>,
    /// The trace, if recorded.
    pub trace: String,
    /// Virtual time the run took.
    pub elapsed: Duration,
    /// A one-line summary (clients, messages, faults).
    pub summary: String,
    /// How often notable things happened (upstream lost, channel recycled, ...), to see
    /// what a sweep actually exercised.
    pub coverage: BTreeMap<&'static str, u64>,
}

impl Report {
    /// Whether every invariant held.
    #[must_use]
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl World {
    /// Final checks; consumes the world.
    #[must_use]
    pub fn finish(mut self) -> Report {
        let now = self.now;
        if !self.checkpoint_done {
            self.checkpoint(now);
        }
        let mut leftovers = Vec::new();
        for h in &self.hubs {
            leftovers.push(format!(
                "hub h{} not finished at the end: {} clients, {} upstreams, {} channels in use ({} pooled)",
                h.hid,
                h.hub.client_count(),
                h.hub.upstream_count(),
                h.hub.channels_in_use(),
                h.hub.pooled_channels()
            ));
        }
        for l in leftovers {
            self.obs.violation(now, Invariant::ChannelLeak, l);
        }
        let stray = self.stray_broker_conns();
        if self.broker_state == BrokerState::Up && !stray.is_empty() {
            let n = stray.len();
            let feed = self.feed_conns().len();
            self.obs.violation(
                now,
                Invariant::ChannelLeak,
                format!(
                    "the broker still has {n} connections from warren at the end (besides {} of {feed} event feed connections)",
                    feed.min(usize::from(self.sc.net.events))
                ),
            );
        }
        self.count("run");
        if self.sc.net.events {
            self.count("event mode");
        }
        // Adds to a coverage count (while the clients and the broker's log are read).
        let mut add = |what: &'static str, n: u64| *self.coverage.entry(what).or_default() += n;
        for (k, v) in self.obs.slow_counts() {
            add(k, *v);
        }
        add("message published", self.broker.log.publishes);
        add("message delivered", self.broker.log.deliveries);
        add("message confirmed", self.broker.log.confirmed.len() as u64);
        for c in &self.clients {
            let what = match &c.client.end {
                Some((_, End::Finished)) => "client end: finished",
                Some((_, End::Left)) => "client end: left",
                Some((_, End::Closed(..))) => "client end: closed",
                Some((_, End::Dropped)) => "client end: dropped",
                Some((_, End::Broken)) => "client end: broken",
                Some((_, End::Refused)) => "client end: refused",
                Some((_, End::TimedOut(_))) => "client end: timed out",
                None => "client end: none",
            };
            add(what, 1);
            if c.client.received.iter().any(|r| r.redelivered) {
                add("client got a redelivery", 1);
            }
            if !c.client.acked.is_empty() {
                add("client got confirms", 1);
            }
            if !c.client.channel_closes.is_empty() {
                add("client got a channel close", 1);
            }
            for i in &c.client.intrusions {
                let what = match i.refused {
                    Some(405) => "intrusion refused 405",
                    Some(404) => "intrusion refused 404",
                    Some(_) => "intrusion refused other",
                    None => match i.op {
                        Intrusion::Delete => "intrusion answered (delete)",
                        _ => "intrusion answered (not a delete)",
                    },
                };
                add(what, 1);
            }
            if let Some(what) = crate::check::queue_type_coverage(&c.client) {
                add(what, 1);
            }
            let kind = c.client.spec.kind;
            if matches!(kind, "leaked-password" | "new-password" | "rotation-worker") {
                let admitted = c.client.opened_at.is_some();
                let what = match (kind, admitted) {
                    ("leaked-password", true) => "leaked password admitted",
                    ("leaked-password", false) => "leaked password refused",
                    ("new-password", true) => "new password admitted",
                    ("new-password", false) => "new password not admitted",
                    (_, true) => "rotation worker admitted",
                    _ => "rotation worker not admitted",
                };
                add(what, 1);
            }
        }
        for (what, n) in crate::check::broker_coverage(&self.broker.log) {
            add(what, n);
        }
        let summary = format!(
            "{} clients, {} publishes, {} deliveries, {} upstream dials; faults: {}",
            self.clients.len(),
            self.broker.log.publishes,
            self.broker.log.deliveries,
            self.next_up,
            self.sc.plan
        );
        let clients: Vec<&FakeClient> = self.clients.iter().map(|c| &c.client).collect();
        let hub_close_timeout = self.sc.hub.close_timeout;
        self.obs.final_checks(
            now,
            &clients,
            &self.broker.log,
            &self.sc,
            hub_close_timeout,
            &self.board,
        );
        let queued = if self.broker_state == BrokerState::Up {
            self.broker.queued_origins()
        } else {
            Vec::new()
        };
        self.obs
            .lost_checks(now, &clients, &self.broker.log, &queued, &self.sc);
        let judged = self.obs.revocation_checked();
        if judged > 0 {
            *self
                .coverage
                .entry("old password after warren knew")
                .or_default() += judged;
        }
        let violations = self.obs.take_violations();
        if self.trace.enabled() {
            for v in &violations {
                let line = format!("VIOLATION {v}");
                self.trace.line(now, line);
            }
        }
        Report {
            seed: self.sc.seed,
            violations,
            trace: self.trace.text().to_owned(),
            elapsed: now.duration_since(self.epoch),
            summary,
            coverage: std::mem::take(&mut self.coverage),
        }
    }
}
