//! The checks of a layer-2 run once it stopped, and its coverage counts: every client's
//! outcome against what its script and the faults excuse, the broker's log (protocol errors,
//! order, heartbeats, confirms), the drain's bound, and revocation (B2).

use super::drive::{Driven, Scheduled};
use super::hosts::{ClientResult, Shared};
use super::{lock, L2Fault, ProxyDone};
use crate::broker::Broker;
use crate::check::{Invariant, Violation};
use crate::client::{End, Step};
use crate::scenario::Scenario;
use std::collections::BTreeMap;
use std::time::Duration;
use warren_core::reply;

/// What the checks look at besides the clients' results.
pub(super) struct Run<'a> {
    pub(super) sc: &'a Scenario,
    pub(super) faults: &'a [(Duration, L2Fault)],
    pub(super) pending: &'a [Scheduled],
    pub(super) driven: &'a Driven,
    pub(super) drain_timeout: Duration,
    pub(super) close_timeout: Duration,
    /// Simulated time the run took.
    pub(super) elapsed: Duration,
}

impl Run<'_> {
    /// Whether a fault disturbed the network or the broker.
    fn network_faults(&self) -> bool {
        self.faults.iter().any(|(_, f)| f.is_network())
    }
}

/// Broken invariants, in the order found, and coverage counts.
#[derive(Default)]
pub(super) struct Verdict {
    pub(super) violations: Vec<Violation>,
    pub(super) coverage: BTreeMap<&'static str, u64>,
}

/// Checks a run; lines about clients and the drain go to `log`.
pub(super) fn check(
    run: &Run<'_>,
    shared: &Shared,
    results: &[ClientResult],
    log: &mut Vec<String>,
) -> Verdict {
    let mut v = Verdict::default();
    v.run_end(run);
    v.clients(run, results, log);
    v.missing(run, results);
    v.broker(run, &lock(&shared.broker), results);
    v.drain(run, &shared.proxy_done, log);
    v.revocation(run, results);
    v.coverage(results, &lock(&shared.broker));
    v
}

impl Verdict {
    fn v(&mut self, at: Duration, invariant: Invariant, detail: String) {
        self.violations.push(Violation {
            at,
            invariant,
            detail,
        });
    }

    fn count(&mut self, what: &'static str) {
        *self.coverage.entry(what).or_default() += 1;
    }

    /// The simulation finished, and warren left nothing on the broker.
    fn run_end(&mut self, run: &Run<'_>) {
        let elapsed = run.elapsed;
        if let Some(e) = &run.driven.error {
            self.v(
                elapsed,
                Invariant::Hang,
                format!("the simulation did not finish: {e}"),
            );
        }
        if let Some(l) = &run.driven.leak {
            self.v(elapsed, Invariant::ChannelLeak, l.clone());
        }
    }

    /// Every client ended as its script, its login and the faults allow; one that started
    /// after the faults healed works.
    fn clients(&mut self, run: &Run<'_>, results: &[ClientResult], log: &mut Vec<String>) {
        let (sc, faults, pending) = (run.sc, run.faults, run.pending);
        let (drained_at, password_changes) = (run.driven.drained_at, &run.driven.password_changes);
        let disturbed = |from: Duration, to: Duration| {
            run.driven
                .link_failures
                .iter()
                .any(|(a, b)| from <= *b + Duration::from_secs(10) && to >= *a)
        };
        let healed = pending
            .iter()
            .filter(|(_, _, f)| f.is_network())
            .map(|(at, _, _)| *at)
            .max()
            .unwrap_or_default();
        // turmoil loses what a broken or partitioned link carried for good: an upstream it
        // broke silently before the heal is found dead only by heartbeats, two of the
        // broker's intervals after the last byte (B10), and clients on it are closed then.
        let dead_link_found = Duration::from_secs(2 * u64::from(sc.broker.heartbeat));
        let reconnect_margin =
            sc.hub.backoff.max + sc.hub.connect_timeout + dead_link_found + Duration::from_secs(2);
        for r in results {
            let c = &r.client;
            let kind = c.spec.kind;
            for x in &c.violations {
                let inv = Invariant::of_client_violation(x);
                self.v(r.ended_at, inv, format!("c{} ({kind}): {x}", c.id));
            }
            let Some((_, end)) = &c.end else {
                self.v(
                    r.ended_at,
                    Invariant::Hang,
                    format!("c{} ({kind}) never finished: {}", c.id, c.waiting_for()),
                );
                continue;
            };
            log.push(format!(
                "{} c{} ({kind}) {end}",
                crate::trace::stamp(r.ended_at),
                c.id
            ));
            let wrong_login = c.spec.password == "wrong" || c.spec.vhost != "/";
            // Its password was changed before it ended: refused like a wrong one from then on.
            let revoked = password_changes.iter().any(|(t, u, old)| {
                *t <= r.ended_at && c.spec.user == *u && c.spec.password == *old
            });
            let misbehaved = c.misbehaviour();
            let shaky = disturbed(r.start, r.ended_at);
            let paused = c
                .spec
                .script
                .iter()
                .any(|st| matches!(st, Step::StopReading | Step::Stall(_)));
            let ok = match end {
                End::Finished | End::Left => !wrong_login,
                End::Closed(code, text) => {
                    let code = *code;
                    if let Some(m) = misbehaved {
                        m.closed_as_expected(code, text)
                    } else if wrong_login || revoked {
                        matches!(
                            code,
                            reply::ACCESS_REFUSED | reply::NOT_ALLOWED | reply::CONNECTION_FORCED
                        )
                    } else {
                        code == reply::CONNECTION_FORCED
                    }
                }
                End::Dropped => {
                    shaky
                        || paused
                        || ((c.spec.password == "wrong" || revoked) && !c.spec.failure_close)
                        || c.spec.opening != crate::client::Opening::Normal
                }
                // RabbitMQ resets the socket of a login it refuses without a close.
                End::Broken => {
                    shaky
                        || paused
                        || ((c.spec.password == "wrong" || revoked) && !c.spec.failure_close)
                }
                // A client that stopped reading or froze is cut off (B9) or times out (B10).
                End::TimedOut(_) => shaky || paused,
                // A draining warren refuses; so does a link that turmoil fails mid-connect.
                End::Refused => drained_at.is_some() || shaky,
            };
            if !ok {
                self.v(
                    r.ended_at,
                    Invariant::ClientOutcome,
                    format!("c{} ({kind}) {end}", c.id),
                );
            }
            // After every fault healed (and a backoff), warren must work again.
            let late = faults.iter().any(|(_, f)| f.is_network())
                && drained_at.is_none()
                && r.start > healed + reconnect_margin
                && !wrong_login
                && !revoked
                && misbehaved.is_none()
                && !paused
                && c.spec.opening == crate::client::Opening::Normal;
            if late && !matches!(end, End::Finished | End::Left) {
                self.v(
                    r.ended_at,
                    Invariant::ClientOutcome,
                    format!(
                        "c{} ({kind}) started after the faults healed but ended: {end}",
                        c.id
                    ),
                );
            }
        }
    }

    /// Every client host returned.
    fn missing(&mut self, run: &Run<'_>, results: &[ClientResult]) {
        for id in 1..=run.sc.clients.len() as u32 {
            if !results.iter().any(|r| r.client.id == id) {
                self.v(
                    run.elapsed,
                    Invariant::Hang,
                    format!("c{id} never returned"),
                );
            }
        }
    }

    /// The broker's log: no connection-level error, order kept, heartbeats fed without
    /// network faults (B10), and confirms it sent reached the clients that finished.
    fn broker(&mut self, run: &Run<'_>, b: &Broker, results: &[ClientResult]) {
        let elapsed = run.elapsed;
        for x in &b.log.violations {
            self.v(
                Duration::ZERO,
                Invariant::BrokerProtocol,
                format!(
                    "the broker got a connection-level error: {} {}",
                    x.code, x.text
                ),
            );
        }
        for (_, e) in &b.log.publish_errors {
            self.v(Duration::ZERO, Invariant::Order, e.clone());
        }
        // Without network faults between them, warren must keep the broker's heartbeat monitor
        // fed (B10).
        let network_faults = run.network_faults();
        if !network_faults && !b.log.peer_timeouts.is_empty() {
            self.v(
                elapsed,
                Invariant::Heartbeat,
                format!(
                    "the broker dropped {} connection(s) for missed heartbeats from warren",
                    b.log.peer_timeouts.len()
                ),
            );
        }
        for (_, o) in &b.log.confirmed {
            let Some(r) = results.iter().find(|r| r.client.id == o.client) else {
                continue;
            };
            let c = &r.client;
            if c.acked.contains(&(o.channel, o.seq)) || c.nacked.contains(&(o.channel, o.seq)) {
                continue;
            }
            if matches!(c.end, Some((_, End::Finished)))
                && !c.channel_closes.iter().any(|(ch, _)| *ch == o.channel)
            {
                self.v(
                    r.ended_at,
                    Invariant::ConfirmLost,
                    format!(
                        "c{} finished without the confirm the broker sent for [{o}]",
                        c.id
                    ),
                );
            }
        }
    }

    /// A drain returned within its bound, and `Ok`.
    fn drain(&mut self, run: &Run<'_>, proxy_done: &ProxyDone, log: &mut Vec<String>) {
        let (drain_timeout, close_timeout, elapsed) =
            (run.drain_timeout, run.close_timeout, run.elapsed);
        let Some(t) = run.driven.drained_at else {
            return;
        };
        let bound = t + drain_timeout + close_timeout * 3 + Duration::from_millis(200);
        match *lock(proxy_done) {
            Some((at, ok)) => {
                log.push(format!(
                    "{} proxy returned (ok={ok})",
                    crate::trace::stamp(at)
                ));
                if at > bound {
                    self.v(
                        at,
                        Invariant::Drain,
                        format!(
                            "Server::run returned at {}, after the drain bound {}",
                            crate::trace::stamp(at),
                            crate::trace::stamp(bound)
                        ),
                    );
                }
                if !ok {
                    self.v(
                        at,
                        Invariant::Drain,
                        "Server::run returned an error after the drain".into(),
                    );
                }
            }
            None => self.v(
                elapsed,
                Invariant::Drain,
                "Server::run never returned after the drain".into(),
            ),
        }
    }

    /// B2: once warren knows of a password change, the old password does not log in. Here
    /// only without network faults (layer 1 follows the event through faults): in event mode
    /// the event reaches warren within moments, in age mode trust ends `credentials_ttl`
    /// after the change.
    fn revocation(&mut self, run: &Run<'_>, results: &[ClientResult]) {
        let sc = run.sc;
        let network_faults = run.network_faults();
        self.count("run");
        if sc.net.events {
            self.count("event mode");
        }
        for (t, user, old) in &run.driven.password_changes {
            self.count("fault: password change");
            let slack = Duration::from_secs(1);
            let known = *t
                + slack
                + if sc.net.events {
                    Duration::ZERO
                } else {
                    sc.net.credentials_ttl
                };
            for r in results {
                let c = &r.client;
                if c.spec.user != *user || c.spec.password != *old {
                    continue;
                }
                self.count(match (r.opened, r.start_ok) {
                    (Some(_), Some(s)) if s > *t => "leaked password admitted after the change",
                    (Some(_), _) => "old password admitted before the change",
                    (None, Some(s)) if s > *t => "old password refused after the change",
                    (None, _) => "old password not admitted before the change",
                });
                if network_faults {
                    continue;
                }
                if let (Some(s), Some(o)) = (r.start_ok, r.opened) {
                    if s > known {
                        self.v(
                            o,
                            Invariant::Revocation,
                            format!(
                                "c{} ({}) logged in as {user} with the password changed at {} ({} mode, known by {}): StartOk at {}, admitted at {}",
                                c.id,
                                c.spec.kind,
                                crate::trace::stamp(*t),
                                if sc.net.events { "event" } else { "age" },
                                crate::trace::stamp(known),
                                crate::trace::stamp(s),
                                crate::trace::stamp(o)
                            ),
                        );
                    }
                }
            }
        }
    }

    /// What the clients and the broker did that the checks do not judge.
    fn coverage(&mut self, results: &[ClientResult], b: &Broker) {
        for r in results {
            if r.client.spec.kind == "new-password" {
                self.count(if r.opened.is_some() {
                    "new password admitted"
                } else {
                    "new password not admitted"
                });
            }
            if let Some(what) = crate::check::queue_type_coverage(&r.client) {
                self.count(what);
            }
            for i in &r.client.intrusions {
                self.count(match i.refused {
                    Some(405) => "intrusion refused 405",
                    Some(404) => "intrusion refused 404",
                    Some(_) => "intrusion refused other",
                    None => "intrusion answered",
                });
            }
        }
        let routed = b.log.events.iter().filter(|(_, _, n)| *n > 0).count() as u64;
        let routed = ("password change event routed to a feed", routed);
        for (what, n) in crate::check::broker_coverage(&b.log).chain([routed]) {
            if n > 0 {
                *self.coverage.entry(what).or_default() += n;
            }
        }
    }
}
