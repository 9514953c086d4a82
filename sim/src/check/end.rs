//! The checks that can only be judged at the end of a run, from what everybody recorded: how
//! every client ended, the broker's protocol errors and publish order, confirms that never
//! arrived, heartbeats up to the end, the drain, revocation (B2), exclusive queues (B5), and
//! messages a large-delivery publisher lost.

use super::{Invariant, Observer, Side};
use crate::broker::BrokerLog;
use crate::client::{Board, End, FakeClient, Waited};
use crate::scenario::Scenario;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use warren_core::reply;

impl Observer {
    /// No message of a large-delivery publisher that the broker confirmed is lost: each was
    /// received by some client or is still in a queue at the end (`queued`), unless the
    /// broker restarted empty after confirming it (issue 14: a client cut off as slow has its
    /// message requeued).
    pub fn lost_checks(
        &mut self,
        now: Instant,
        clients: &[&FakeClient],
        log: &BrokerLog,
        queued: &[crate::tag::Origin],
        sc: &Scenario,
    ) {
        let restarts: Vec<Instant> = sc
            .plan
            .faults
            .iter()
            .filter(|f| f.fault.restarts_broker())
            .map(|f| self.epoch + f.at)
            .collect();
        for what in crate::slow::lost_messages(clients, log, queued, &restarts) {
            let at = self.rel(what.0);
            self.violation(
                now,
                Invariant::MessageLost,
                format!("{} (confirmed at {at})", what.1),
            );
        }
    }

    /// Checks everything that can only be judged at the end.
    #[allow(clippy::too_many_lines)]
    pub fn final_checks(
        &mut self,
        now: Instant,
        clients: &[&FakeClient],
        log: &BrokerLog,
        sc: &Scenario,
        close_timeout: Duration,
        board: &Board,
    ) {
        self.slow_watch.finish(now);
        self.take_slow_violations();
        self.revocation_checks(clients, sc);
        self.exclusive_checks(log, board);
        for side in [Side::Client, Side::Upstream] {
            for (id, hb) in self.watched(side).clone() {
                self.check_gap(now, side.name(id), &hb);
            }
        }
        for v in &log.violations {
            let at = self.rel(v.at);
            self.violation(
                v.at,
                Invariant::BrokerProtocol,
                format!(
                    "the broker got a connection-level error on its connection {} at {at}: {} {}",
                    v.conn, v.code, v.text
                ),
            );
        }
        for (t, e) in &log.publish_errors {
            let inv = if e.contains("order") {
                Invariant::Order
            } else {
                Invariant::Routing
            };
            self.violation(*t, inv, e.clone());
        }
        for (t, conn) in &log.peer_timeouts {
            if !self.disturbed(*t, Duration::from_secs(12)) {
                self.violation(
                    *t,
                    Invariant::Heartbeat,
                    format!("the broker dropped its connection {conn} for missed heartbeats from warren"),
                );
            }
        }
        let mut by_client: BTreeMap<u32, &FakeClient> = BTreeMap::new();
        for c in clients {
            by_client.insert(c.id, c);
        }
        for c in clients {
            self.client_checks(now, c, sc);
        }
        // Confirms the broker sent must reach clients that were not closed.
        let mut lost: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for (t, o) in &log.confirmed {
            let Some(c) = by_client.get(&o.client) else {
                continue;
            };
            if c.acked.contains(&(o.channel, o.seq)) || c.nacked.contains(&(o.channel, o.seq)) {
                continue;
            }
            // Excused: the connection ended some other way than a clean finish (closed with a
            // code, broken, left mid-way), or the channel was closed under it. A client that
            // is still waiting (hung) is not excused.
            let excused = !matches!(c.end, Some((_, End::Finished)) | None)
                || c.channel_closes.iter().any(|(ch, _)| *ch == o.channel);
            if !excused {
                lost.entry(o.client).or_default().push(format!(
                    "#{} (confirmed at {})",
                    o.seq,
                    self.rel(*t)
                ));
            }
        }
        for (cid, seqs) in lost {
            self.violation(
                now,
                Invariant::ConfirmLost,
                format!(
                    "c{cid} never got the confirms the broker sent for {}",
                    seqs.join(", ")
                ),
            );
        }
        // Drain within its deadline.
        if let Some((start, deadline)) = self.drain {
            let slack = Duration::from_millis(50);
            let clients_by = deadline + close_timeout + slack;
            for c in clients {
                if !self.joined.contains(&c.id) {
                    continue;
                }
                if let Some((t, _)) = &c.end {
                    if *t > clients_by && *t > start {
                        let (at, by) = (self.rel(*t), self.rel(clients_by));
                        self.violation(
                            *t,
                            Invariant::Drain,
                            format!("c{} was still connected at {at}, after the drain deadline plus close timeout ({by})", c.id),
                        );
                    }
                }
            }
            let hub_bound = deadline + close_timeout + sc.hub.connect_timeout + slack;
            match self.hubs_gone_at {
                Some(t) if t <= hub_bound => {}
                Some(t) => {
                    let (at, by) = (self.rel(t), self.rel(hub_bound));
                    self.violation(
                        t,
                        Invariant::Drain,
                        format!("the last hub finished at {at}, after the drain bound {by}"),
                    );
                }
                None => {}
            }
        }
    }

    /// B2: once warren knows of a password change, nobody logs in with the old password.
    /// "Knows": in event mode, the event reached warren's feed; if it never did (the feed was
    /// down or the event lost to a fault), and in age mode, `credentials_ttl` after the
    /// change, or after the end of a network or broker fault around it (an acceptance held
    /// up in a partition or a hold starts its age when it arrives). A client whose `StartOk`
    /// went out after that must never get `Connection.OpenOk`; clients admitted before keep
    /// their connection, as RabbitMQ keeps its own.
    fn revocation_checks(&mut self, clients: &[&FakeClient], sc: &Scenario) {
        let margin = (sc.net.upstream_latency + sc.net.client_latency) * 2;
        for (i, (t, user, old)) in self.password_changes.clone().into_iter().enumerate() {
            let delivered = self.events_delivered.get(i).copied().flatten();
            let known = match delivered {
                Some(d) if sc.net.events => d,
                _ => {
                    let settled = self.disturbance_end(sc, t);
                    settled + sc.net.credentials_ttl
                }
            } + margin;
            for c in clients {
                if c.spec.user != user || c.spec.password != old {
                    continue;
                }
                let Some(s) = c.start_ok_at.filter(|s| *s > known) else {
                    continue;
                };
                self.revocation_checked += 1;
                if let Some(o) = c.opened_at {
                    let how = match delivered {
                        Some(d) if sc.net.events => {
                            format!("the event reached warren at {}", self.rel(d))
                        }
                        _ => format!(
                            "{}: trusted at most until {}",
                            if sc.net.events {
                                "event mode, but the event never reached warren"
                            } else {
                                "age mode"
                            },
                            self.rel(known)
                        ),
                    };
                    self.violation(
                        o,
                        Invariant::Revocation,
                        format!(
                            "c{} ({}) logged in as {user} with the password changed at {} ({how}): StartOk at {}, admitted at {}",
                            c.id,
                            c.spec.kind,
                            self.rel(t),
                            self.rel(s),
                            self.rel(o)
                        ),
                    );
                }
            }
        }
    }

    /// The end of the network and broker faults under way at `t` (or starting within a
    /// second of it), and of those that follow on from them (an event held by one fault can
    /// be lost to the next), or `t`.
    fn disturbance_end(&self, sc: &Scenario, t: Instant) -> Instant {
        let windows: Vec<(Instant, Instant)> = sc
            .plan
            .faults
            .iter()
            .filter(|f| f.fault.disturbs())
            .map(|f| (self.epoch + f.at, self.epoch + f.at + f.fault.duration()))
            .collect();
        let mut end = t;
        loop {
            let next = windows
                .iter()
                .filter(|(a, b)| *a <= end + Duration::from_secs(1) && *b > end)
                .map(|(_, b)| *b)
                .max();
            match next {
                Some(b) => end = b,
                None => return end,
            }
        }
    }

    /// B5: an exclusive queue is deleted or purged by a method only once its owner left the
    /// hub (warren's cleanup); before that, only another client could have done it.
    fn exclusive_checks(&mut self, log: &BrokerLog, board: &Board) {
        for (t, name, op) in &log.exclusive_ops {
            let Some((owner, _)) = board.owner_of(name, *t) else {
                continue;
            };
            if self.left.get(&owner).is_none_or(|l| l > t) {
                self.violation(
                    *t,
                    Invariant::Exclusive,
                    format!(
                        "the exclusive queue '{name}' of c{owner} was {op}d on the broker at {} while c{owner} was still in its hub",
                        self.rel(*t)
                    ),
                );
            }
        }
    }

    fn client_checks(&mut self, now: Instant, c: &FakeClient, sc: &Scenario) {
        let cid = c.id;
        for v in &c.violations {
            let inv = Invariant::of_client_violation(v);
            self.violation(now, inv, format!("c{cid} ({}): {v}", c.spec.kind));
        }
        let wrong_password = c.spec.password == "wrong";
        // A password changed under it: refused like a wrong one from then on (whether it was
        // still let in is the revocation check's business).
        let revoked = c.end.as_ref().is_some_and(|(t, _)| self.revoked_by(c, *t));
        let wrong_vhost = c.spec.vhost != "/";
        let misbehaved = c.misbehaviour();
        let kind = c.spec.kind;
        let Some((t, end)) = c.end.clone() else {
            self.violation(
                now,
                Invariant::Hang,
                format!("c{cid} ({kind}) never finished: {}", c.waiting_for()),
            );
            return;
        };
        let bad = |s: &mut Self, what: String| {
            s.violation(
                t,
                Invariant::ClientOutcome,
                format!("c{cid} ({kind}) {what}"),
            );
        };
        match &end {
            End::Finished | End::Left => {
                if wrong_password || wrong_vhost {
                    bad(self, format!("got in with a wrong login: {end}"));
                }
            }
            End::Closed(code, text) => {
                let code = *code;
                let valid = code != 0 && reply::code_name(code) != "UNKNOWN";
                if !valid {
                    bad(
                        self,
                        format!("was closed with an invalid code {code} {text:?}"),
                    );
                } else if let Some(m) = misbehaved {
                    if !m.closed_as_expected(code, text) {
                        let expect = m.expected_code();
                        let words = m.expected_text().map(|t| format!(" {t:?}"));
                        bad(
                            self,
                            format!(
                                "misbehaved ({m:?}) and was closed with {code} {text:?}, expected {expect}{}",
                                words.unwrap_or_default()
                            ),
                        );
                    }
                } else if wrong_password || revoked {
                    if code != reply::ACCESS_REFUSED && code != reply::CONNECTION_FORCED {
                        bad(
                            self,
                            format!("had a wrong password and got {code} {text:?}, expected 403"),
                        );
                    }
                } else if wrong_vhost {
                    if code != reply::NOT_ALLOWED && code != reply::CONNECTION_FORCED {
                        bad(
                            self,
                            format!(
                                "asked for a missing vhost and got {code} {text:?}, expected 530"
                            ),
                        );
                    }
                } else if code != reply::CONNECTION_FORCED {
                    bad(
                        self,
                        format!("behaved well but was closed with {code} {text:?}"),
                    );
                }
            }
            End::Dropped => {
                // A Close the client never read (it stopped reading or froze) is still a Close.
                let excused = self.slow.contains(&cid)
                    || self.closed_with.contains_key(&cid)
                    || self.handshake_closed.contains(&cid)
                    || ((wrong_password || revoked) && !c.spec.failure_close);
                if !excused {
                    bad(
                        self,
                        "lost its connection without a Connection.Close".into(),
                    );
                }
            }
            End::Broken => {
                // RabbitMQ resets the socket of a login it refuses without a close.
                let silent_refusal = (wrong_password || revoked) && !c.spec.failure_close;
                if !self.broken.contains(&cid) && !silent_refusal {
                    bad(self, "saw its connection reset without a fault".into());
                }
            }
            End::Refused => {
                if self.drain.is_none() {
                    bad(self, "was refused while warren was not draining".into());
                }
            }
            End::TimedOut(waited) => {
                if !self.broken.contains(&cid) {
                    let inv = match waited {
                        Waited::Heartbeats => Invariant::Heartbeat,
                        Waited::Handshake | Waited::CloseOk => Invariant::Hang,
                    };
                    self.violation(t, inv, format!("c{cid} ({kind}) {end}"));
                }
            }
        }
        let _ = sc;
    }
}
