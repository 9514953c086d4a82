//! Slow clients (B9, issue 14): readers of every speed, the runtime's slow-client rule as the
//! world applies it, and the invariant that checks it.
//!
//! warren's rule (`warren_core::hub::slow`): once more than `client_queue_bytes` wait for a
//! client, its socket must keep taking bytes — a client whose socket takes nothing for
//! `slow_client_timeout` is cut off, and one past the bound plus one largest message is cut
//! off at once. A large delivery to a client that reads is never a reason. This module holds
//! the three pieces the simulation needs around that rule:
//!
//! * [`ReadPace`] and `Pacer`: a client that reads a few KiB per tick (a slow but steady
//!   reader); the world meters the bytes it hands such a client.
//! * `SlowDriver`: the world's copy of the runtime's driver (`runtime/src/hub_task.rs`,
//!   `watch`): it feeds (bytes queued, bytes written) to the core's `DrainWatch` and says when
//!   to look again. [`SlowPolicy::QueueBound`] is the rule before issue 14, for
//!   `tests/broken_proxy.rs` to prove the invariant catches it.
//! * `SlowObs`: the invariant, judged independently of the rule's code from the same
//!   measurements: a client whose socket took bytes at least once in every
//!   `slow_client_timeout` while bytes waited for it is never reported slow (unless it was
//!   past the hard cap), and a client that took nothing for `slow_client_timeout` while over
//!   the bound is cut off within a small slack.

use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use warren_core::hub::slow::{Drain, DrainWatch, SlowRule};

/// How fast a slow but steady reader reads: at most `bytes` every `every`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPace {
    /// Bytes taken per tick.
    pub bytes: usize,
    /// The tick.
    pub every: Duration,
}

/// Bytes that reached a paced client's host but that it has not read yet (they still count as
/// queued for the rule: its kernel buffer is the world's `socket_buffer`).
#[derive(Debug)]
pub(crate) struct Pacer {
    pace: ReadPace,
    buf: BytesMut,
    /// When the next read is scheduled, if one is.
    next: Option<Instant>,
}

impl Pacer {
    pub(crate) fn new(pace: ReadPace) -> Self {
        Pacer {
            pace,
            buf: BytesMut::new(),
            next: None,
        }
    }

    /// Bytes arrived; returns when to schedule the next read, if none is scheduled yet.
    pub(crate) fn push(&mut self, now: Instant, data: &[u8]) -> Option<Instant> {
        self.buf.extend_from_slice(data);
        if self.next.is_some() || self.buf.is_empty() {
            return None;
        }
        let at = now + self.pace.every;
        self.next = Some(at);
        Some(at)
    }

    /// The read due now: up to `bytes` of what waits, and when to read again.
    pub(crate) fn read(&mut self, now: Instant) -> (Bytes, Option<Instant>) {
        if self.next.is_some_and(|t| t > now) {
            return (Bytes::new(), None);
        }
        let n = self.pace.bytes.min(self.buf.len());
        let data = self.buf.split_to(n).freeze();
        self.next = (!self.buf.is_empty()).then(|| now + self.pace.every);
        (data, self.next)
    }

    /// Everything that waits (the peer closed: what it sent before is read before the end).
    pub(crate) fn take_all(&mut self) -> Bytes {
        self.next = None;
        std::mem::take(&mut self.buf).freeze()
    }

    /// The connection broke: what waited is gone.
    pub(crate) fn clear(&mut self) {
        self.next = None;
        self.buf.clear();
    }
}

/// Which slow-client rule the world's driver applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SlowPolicy {
    /// warren's rule (core's `DrainWatch`): progress, not size.
    #[default]
    Progress,
    /// The rule before issue 14: slow as soon as more than `client_queue_bytes` wait,
    /// whatever the client reads. Only for `tests/broken_proxy.rs`.
    QueueBound,
}

/// What the driver says about a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing to do.
    Fine,
    /// Look again at this time (if nothing else made the world look before).
    Recheck(Instant),
    /// Report it slow.
    Slow,
}

/// The world's slow-client driver: one `DrainWatch` per watched client, as in the runtime.
#[derive(Debug)]
pub(crate) struct SlowDriver {
    rule: SlowRule,
    policy: SlowPolicy,
    watches: BTreeMap<u32, DrainWatch>,
}

impl SlowDriver {
    pub(crate) fn new(rule: SlowRule, policy: SlowPolicy) -> Self {
        SlowDriver {
            rule,
            policy,
            watches: BTreeMap::new(),
        }
    }

    /// Applies the rule to client `cid` with `queued` bytes waiting in warren and `written`
    /// taken by its socket so far.
    pub(crate) fn check(&mut self, now: Instant, cid: u32, queued: usize, written: u64) -> Verdict {
        if self.policy == SlowPolicy::QueueBound {
            return if queued > self.rule.queue_bytes {
                Verdict::Slow
            } else {
                Verdict::Fine
            };
        }
        if queued <= self.rule.queue_bytes && !self.watches.contains_key(&cid) {
            return Verdict::Fine;
        }
        let w = self.watches.entry(cid).or_default();
        match w.check(now, queued, written, &self.rule) {
            Drain::Fine => {
                self.watches.remove(&cid);
                Verdict::Fine
            }
            Drain::WatchUntil(at) => Verdict::Recheck(at),
            Drain::Slow => {
                self.watches.remove(&cid);
                Verdict::Slow
            }
        }
    }

    /// The client left: stop watching it.
    pub(crate) fn forget(&mut self, cid: u32) {
        self.watches.remove(&cid);
    }
}

/// Slack on "cut off within `slow_client_timeout`": the world looks again exactly at the
/// deadline, so only the same-instant ordering needs room.
pub const CUT_OFF_SLACK: Duration = Duration::from_millis(10);

/// One client's drain as the invariant follows it.
#[derive(Debug, Default)]
struct Track {
    written: u64,
    queued: usize,
    /// Since when it has been over the bound without its socket taking a byte.
    stuck_since: Option<Instant>,
}

/// The slow-client invariant. It sees every measurement the driver sees (bytes queued in
/// warren, bytes the socket took) and judges reports and cut-offs by the rule's words, not by
/// its code.
#[derive(Debug)]
pub(crate) struct SlowObs {
    rule: SlowRule,
    tracks: BTreeMap<u32, Track>,
    /// Violations found: when, and what.
    pub(crate) found: Vec<(Instant, String)>,
    /// Clients reported slow while they kept reading, and stuck clients cut off (or not).
    pub(crate) counts: BTreeMap<&'static str, u64>,
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

impl SlowObs {
    pub(crate) fn new(rule: SlowRule) -> Self {
        SlowObs {
            rule,
            tracks: BTreeMap::new(),
            found: Vec::new(),
            counts: BTreeMap::new(),
        }
    }

    /// A stretch without progress ends at `now` (progress, under the bound, or the client
    /// gone): it may not have lasted longer than the timeout.
    fn end_stretch(&mut self, now: Instant, cid: u32, why: &str) {
        let Some(t) = self.tracks.get_mut(&cid) else {
            return;
        };
        let Some(since) = t.stuck_since.take() else {
            return;
        };
        let stuck = now.duration_since(since);
        if why != "it stayed until it left" {
            *self
                .counts
                .entry("client over the bound read on")
                .or_default() += 1;
        }
        if stuck > self.rule.timeout + CUT_OFF_SLACK {
            let queued = t.queued;
            self.found.push((
                now,
                format!(
                    "c{cid} took nothing for {}ms with {queued} bytes waiting (over the {}-byte bound) and was not cut off ({why}); slow_client_timeout is {}ms",
                    ms(stuck),
                    self.rule.queue_bytes,
                    ms(self.rule.timeout)
                ),
            ));
        }
    }

    /// A new measurement of client `cid`.
    pub(crate) fn measured(&mut self, now: Instant, cid: u32, queued: usize, written: u64) {
        let t = self.tracks.entry(cid).or_default();
        let progress = written != t.written;
        let was_stuck = t.stuck_since.is_some();
        t.written = written;
        if queued <= self.rule.queue_bytes {
            self.end_stretch(now, cid, "it drained");
        } else if progress || !was_stuck {
            self.end_stretch(now, cid, "it read again");
            if let Some(t) = self.tracks.get_mut(&cid) {
                t.stuck_since = Some(now);
            }
        }
        if let Some(t) = self.tracks.get_mut(&cid) {
            t.queued = queued;
        }
    }

    /// The driver reported client `cid` slow with `queued` bytes waiting.
    pub(crate) fn reported(&mut self, now: Instant, cid: u32, queued: usize) {
        let since = self.tracks.get(&cid).and_then(|t| t.stuck_since);
        let stuck = since.map(|s| now.duration_since(s));
        if queued > self.rule.hard_cap {
            *self
                .counts
                .entry("slow client cut off at the hard cap")
                .or_default() += 1;
        } else if stuck.is_some_and(|s| s >= self.rule.timeout) {
            *self.counts.entry("slow client cut off").or_default() += 1;
        } else {
            let how = match stuck {
                Some(s) => format!("its socket last took bytes {}ms before", ms(s)),
                None => "it was not even over the bound".to_owned(),
            };
            self.found.push((
                now,
                format!(
                    "c{cid} kept reading but was reported slow: {queued} bytes waited (bound {}, hard cap {}), {how}; slow_client_timeout is {}ms",
                    self.rule.queue_bytes,
                    self.rule.hard_cap,
                    ms(self.rule.timeout)
                ),
            ));
        }
        self.tracks.remove(&cid);
    }

    /// warren let go of client `cid` (closed it, or saw it close).
    pub(crate) fn gone(&mut self, now: Instant, cid: u32) {
        self.end_stretch(now, cid, "it stayed until it left");
        self.tracks.remove(&cid);
    }

    /// The end of the run: every open stretch ends now.
    pub(crate) fn finish(&mut self, now: Instant) {
        let ids: Vec<u32> = self.tracks.keys().copied().collect();
        for cid in ids {
            self.end_stretch(now, cid, "it was still connected at the end");
        }
    }
}

/// The kind of the client that publishes a [`crate::plan::Fault::LargeDeliveries`]' messages.
pub const LARGE_PUBLISHER: &str = "large-publisher";

/// Messages of large-delivery publishers the broker confirmed that no client received and
/// no queue holds at the end: (when confirmed, what). A broker restart after the confirm
/// (`restarts`) excuses a message: the broker comes back empty.
#[must_use]
pub fn lost_messages(
    clients: &[&crate::client::FakeClient],
    log: &crate::broker::BrokerLog,
    queued: &[crate::tag::Origin],
    restarts: &[Instant],
) -> Vec<(Instant, String)> {
    use std::collections::BTreeSet;
    let publishers: BTreeSet<u32> = clients
        .iter()
        .filter(|c| c.spec.kind == LARGE_PUBLISHER)
        .map(|c| c.id)
        .collect();
    if publishers.is_empty() {
        return Vec::new();
    }
    let key = |o: &crate::tag::Origin| (o.client, o.channel, o.seq);
    let mut seen: BTreeSet<(u32, u16, u32)> = queued.iter().map(key).collect();
    // Published before its queue was there (a fault in between): nothing to lose.
    seen.extend(log.unroutable.iter().map(key));
    for c in clients {
        seen.extend(c.received.iter().map(|r| key(&r.origin)));
    }
    log.confirmed
        .iter()
        .filter(|(t, o)| {
            publishers.contains(&o.client)
                && !seen.contains(&key(o))
                && !restarts.iter().any(|r| r >= t)
        })
        .map(|(t, o)| {
            (
                *t,
                format!(
                    "c{}'s message #{} on channel {} was confirmed by the broker, then neither delivered to a client that read it nor left in its queue",
                    o.client, o.seq, o.channel
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> SlowRule {
        SlowRule::new(64 * 1024, 384 * 1024, Duration::from_secs(2))
    }

    #[test]
    fn a_reader_reported_slow_is_a_violation_and_a_stuck_one_is_not() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let s = Duration::from_millis;
        let mut o = SlowObs::new(rule());
        o.measured(t0, 1, 200_000, 0);
        o.measured(t0 + s(1500), 1, 190_000, 10_000);
        o.reported(t0 + s(2000), 1, 190_000);
        assert_eq!(o.found.len(), 1, "{:?}", o.found);
        o.measured(t0, 2, 200_000, 0);
        o.reported(t0 + s(2000), 2, 200_000);
        assert_eq!(
            o.found.len(),
            1,
            "a client stuck for the timeout may be cut off"
        );
    }

    #[test]
    fn a_stuck_client_left_connected_is_a_violation() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let s = Duration::from_millis;
        let mut o = SlowObs::new(rule());
        o.measured(t0, 1, 200_000, 0);
        o.measured(t0 + s(1900), 1, 200_000, 0);
        o.gone(t0 + s(2005), 1);
        assert!(o.found.is_empty(), "{:?}", o.found);
        o.measured(t0, 2, 200_000, 0);
        o.gone(t0 + s(5000), 2);
        assert_eq!(o.found.len(), 1);
    }

    #[test]
    fn the_pacer_hands_out_a_tick_at_a_time() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let every = Duration::from_millis(10);
        let mut p = Pacer::new(ReadPace { bytes: 4, every });
        assert_eq!(p.push(t0, b"0123456789"), Some(t0 + every));
        assert_eq!(p.push(t0, b"ab"), None, "already scheduled");
        let (d, next) = p.read(t0 + every);
        assert_eq!((&d[..], next), (&b"0123"[..], Some(t0 + every * 2)));
        assert_eq!(&p.take_all()[..], b"456789ab");
    }
}
