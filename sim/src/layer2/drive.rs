//! Driving a layer-2 run: turmoil steps, with each fault applied (and healed) between steps
//! when its time comes, until every client is done and warren has settled or drained; then
//! the leak check, as the broker sees it.

use super::hosts::Shared;
use super::{lock, L2Fault};
use crate::broker::{Broker, ConnId};
use crate::scenario::Scenario;
use std::time::Duration;

/// A fault's start or end: when, whether it starts, which.
pub(super) type Scheduled = (Duration, bool, L2Fault);

/// Every fault's start and, for the faults that heal, its end, in time order (a start before
/// an end at the same instant).
pub(super) fn schedule(faults: &[(Duration, L2Fault)]) -> Vec<Scheduled> {
    let mut pending: Vec<Scheduled> = Vec::new();
    for (at, f) in faults {
        pending.push((*at, true, f.clone()));
        let heal = match f {
            L2Fault::Crash(d)
            | L2Fault::SilentDeath(d)
            | L2Fault::Partition(d)
            | L2Fault::Hold(d)
            | L2Fault::LinkFailures(d) => Some(*d),
            L2Fault::Drain(_) | L2Fault::PasswordChange { .. } => None,
        };
        if let Some(d) = heal {
            pending.push((*at + d, false, f.clone()));
        }
    }
    pending.sort_by_key(|(at, start, _)| (*at, !*start));
    pending
}

/// What driving a run saw, for the checks.
#[derive(Default)]
pub(super) struct Driven {
    /// When the drain token was cancelled.
    pub(super) drained_at: Option<Duration>,
    /// Link failure windows: (start, end).
    pub(super) link_failures: Vec<(Duration, Duration)>,
    /// Password changes: when, whose, and the old password.
    pub(super) password_changes: Vec<(Duration, String, String)>,
    /// Why the simulation stopped before the end, if it did.
    pub(super) error: Option<String>,
    /// What warren left on the broker after every client left.
    pub(super) leak: Option<String>,
    /// Broker crashes and silent deaths under way.
    broker_down: u32,
}

/// Steps the simulation until it is over, applying `pending` faults as their time comes;
/// their lines go to `log`.
pub(super) fn drive(
    sim: &mut turmoil::Sim<'_>,
    sc: &Scenario,
    shared: &Shared,
    pending: &[Scheduled],
    drain_timeout: Duration,
    close_timeout: Duration,
    log: &mut Vec<String>,
) -> Driven {
    let mut d = Driven::default();
    let client_names: Vec<String> = (1..=sc.clients.len()).map(|i| format!("c{i}")).collect();
    let mut next = 0;
    let settle = settle_time(sc, close_timeout);
    let mut settle_from: Option<Duration> = None;
    let mut excl_clear = false;
    loop {
        let t = sim.elapsed();
        while next < pending.len() && pending[next].0 <= t {
            let (_, start, f) = pending[next].clone();
            next += 1;
            log.push(format!(
                "{} {} {f:?}",
                crate::trace::stamp(t),
                if start { "fault" } else { "heal" }
            ));
            d.apply(sim, sc, shared, &client_names, t, f, start);
        }
        let clients_done = match sim.step() {
            Ok(done) => done,
            Err(e) => {
                d.error = Some(e.to_string());
                break;
            }
        };
        if !clients_done || next < pending.len() {
            continue;
        }
        let t = sim.elapsed();
        let quiet_since = *settle_from.get_or_insert(t);
        if let Some(dr) = d.drained_at {
            // A drain gets until its bound to finish; then there is nothing left to settle.
            let bound = dr + drain_timeout + close_timeout * 3 + Duration::from_secs(1);
            if lock(&shared.proxy_done).is_some() || t >= bound {
                break;
            }
            continue;
        }
        excl_clear |= strays(&lock(&shared.broker), sc.net.events).1.is_empty();
        if t >= quiet_since + settle {
            let b = lock(&shared.broker);
            let (conns, queues) = strays(&b, sc.net.events);
            if !excl_clear {
                d.leak = Some(format!(
                    "exclusive queues {queues:?} stayed on the broker after every client left (B5)"
                ));
            } else if !conns.is_empty() {
                d.leak = Some(format!(
                    "the broker still has {} connections ({} channels in all) from warren {}s after every client left, besides its event feed",
                    conns.len(),
                    b.channel_count(),
                    settle.as_secs()
                ));
            }
            break;
        }
    }
    d
}

impl Driven {
    /// A fault starts or ends at `t`, as turmoil (or the broker host) makes it happen.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        sc: &Scenario,
        shared: &Shared,
        clients: &[String],
        t: Duration,
        f: L2Fault,
        start: bool,
    ) {
        match (f, start) {
            (L2Fault::Crash(_), true) => {
                self.broker_down += 1;
                sim.crash("broker");
                // The process is gone, and its state with it.
                lock(&shared.broker).restart();
            }
            (L2Fault::Crash(_), false) => {
                self.broker_down -= 1;
                if self.broker_down == 0 {
                    sim.bounce("broker");
                }
            }
            (L2Fault::SilentDeath(_), true) => {
                self.broker_down += 1;
                sim.partition("proxy", "broker");
                sim.crash("broker");
                lock(&shared.broker).restart();
            }
            (L2Fault::SilentDeath(_), false) => {
                self.broker_down -= 1;
                sim.repair("proxy", "broker");
                if self.broker_down == 0 {
                    sim.bounce("broker");
                }
            }
            (L2Fault::Partition(_), true) => sim.partition("proxy", "broker"),
            (L2Fault::Partition(_), false) => sim.repair("proxy", "broker"),
            (L2Fault::Hold(_), true) => sim.hold("proxy", "broker"),
            (L2Fault::Hold(_), false) => sim.release("proxy", "broker"),
            (L2Fault::LinkFailures(d), true) => {
                self.link_failures.push((t, t + d));
                sim.set_link_fail_rate("proxy", "broker", 0.02);
                for c in clients {
                    sim.set_link_fail_rate(c.as_str(), "proxy", 0.01);
                }
            }
            (L2Fault::LinkFailures(_), false) => {
                sim.set_link_fail_rate("proxy", "broker", 0.0);
                for c in clients {
                    sim.set_link_fail_rate(c.as_str(), "proxy", 0.0);
                }
            }
            (L2Fault::Drain(_), _) => {
                self.drained_at = Some(t);
                shared.shutdown.drain.cancel();
            }
            (L2Fault::PasswordChange { user, password }, _) => {
                let old = sc.initial_password(&user);
                self.password_changes.push((t, user.clone(), old));
                if self.broker_down > 0 {
                    // Changed elsewhere in the cluster; this node publishes nothing.
                    lock(&shared.broker).set_password(&user, &password);
                } else {
                    lock(&shared.admin.changes).push((user, password));
                    shared.admin.bell.notify_one();
                }
            }
        }
    }
}

/// How long warren gets once every client is gone: long enough for warren's idle timers
/// and for the broker to drop half-open connections (turmoil loses a FIN sent into a
/// partition for good). The idle timers run one after the other: a pooled channel idles out
/// first, and only then is its upstream idle.
fn settle_time(sc: &Scenario, close_timeout: Duration) -> Duration {
    (sc.hub.pool_idle_timeout + sc.hub.upstream_idle_timeout)
        .max(sc.broker.handshake_timeout)
        .max(Duration::from_secs(u64::from(sc.broker.heartbeat) * 2))
        + close_timeout
        + Duration::from_secs(2)
}

/// Leaks, as the broker sees them: once every client is gone and warren's idle timers have
/// run, warren must hold no connection (hence no channel, no exclusive queue). The event
/// feed stays for as long as warren runs: its connection and its queue are not leaks (one of
/// it, in event mode). Returns the stray connections and exclusive queues.
fn strays(b: &Broker, events: bool) -> (Vec<ConnId>, Vec<String>) {
    let feed = b.feed_conns();
    let keep = usize::from(events);
    let mut conns: Vec<ConnId> = b
        .connection_ids()
        .into_iter()
        .filter(|c| !feed.contains(c))
        .collect();
    conns.extend(feed.iter().skip(keep));
    let queues: Vec<String> = b
        .exclusive_queues()
        .into_iter()
        .filter(|(_, c)| !feed.contains(c))
        .map(|(n, _)| n)
        .collect();
    (conns, queues)
}
