//! The fault plan carried out: broker crashes and silent deaths, partitions, holds, broken
//! connections, resource alarms, drains and password changes, each healed at its end.

use super::net::{Dir, Item, LinkKind};
use super::slots::BrokerState;
use super::{Ev, World};
use crate::broker::ConnId;
use crate::plan::Fault;
use rand::Rng;
use std::time::Duration;
use warren_core::admission;

impl World {
    pub(super) fn fault_start(&mut self, i: usize) {
        let now = self.now;
        let fault = self.sc.plan.faults[i].fault.clone();
        self.line(format!("fault: {fault}"));
        self.obs.fault_started(now, &fault);
        let what = match fault {
            Fault::BrokerCrash { .. } => "fault: broker crash",
            Fault::BrokerSilentDeath { .. } => "fault: silent death",
            Fault::Partition { .. } => "fault: partition",
            Fault::Hold { .. } => "fault: hold",
            Fault::ConnBreaks { .. } => "fault: connection breaks",
            Fault::Blocked { .. } => "fault: blocked",
            Fault::Drain { .. } => "fault: drain",
            Fault::PasswordChange { .. } => "fault: password change",
            _ => "fault: other",
        };
        self.count(what);
        match fault {
            Fault::BrokerCrash { downtime } => {
                self.broker.restart();
                self.broker_state = BrokerState::Crashed {
                    until: now + downtime,
                };
                let conns: Vec<(ConnId, u32)> =
                    std::mem::take(&mut self.conn_to_up).into_iter().collect();
                for (_, uid) in conns {
                    let Some(u) = self.ups.get_mut(&uid) else {
                        continue;
                    };
                    u.conn = None;
                    if let Some(link) = u.link {
                        // Requests in flight to the dead broker are lost; it sends FIN.
                        self.net.lose_to_broker(link, true);
                        self.push(link, Dir::ToProxy, Item::Fin);
                    }
                }
            }
            Fault::BrokerSilentDeath { downtime } => {
                self.broker_state = BrokerState::Silent {
                    until: now + downtime,
                };
                for link in self.net.upstream_links() {
                    self.net.lose_to_broker(link, false);
                }
            }
            Fault::Partition { .. } => {
                self.partitioned = true;
                for link in self.net.upstream_links() {
                    self.net.lose_data(link);
                }
            }
            Fault::Hold { duration } => {
                let until = now + duration;
                self.held_until = Some(self.held_until.map_or(until, |h| h.max(until)));
            }
            Fault::ConnBreaks { count, over } => {
                for _ in 0..count {
                    let d = self.rng.random_range(0..=over.as_millis() as u64);
                    self.schedule(now + Duration::from_millis(d), Ev::Break);
                }
            }
            Fault::Blocked { .. } if self.broker_state == BrokerState::Up => {
                self.broker.set_blocked(now, Some("low on memory"));
                self.broker_outputs();
            }
            Fault::PasswordChange { user, password } => {
                let old = self.sc.initial_password(&user);
                self.obs.password_changed(now, &user, &old);
                if self.broker_state != BrokerState::Up {
                    // Changed elsewhere in the cluster; this node publishes nothing.
                    self.broker.set_password(&user, &password);
                    return;
                }
                let feed: Vec<(ConnId, u32, usize)> = self
                    .conn_to_up
                    .iter()
                    .filter_map(|(c, uid)| {
                        let link = self.ups.get(uid)?.link?;
                        Some((*c, link, self.net.queued_to_proxy(link)?.0))
                    })
                    .collect();
                let sent = self.broker.change_password(now, &user, &password);
                self.broker_outputs();
                for (conn, link, before) in feed {
                    if !sent.contains(&conn) {
                        continue;
                    }
                    let Some((queued, last)) = self.net.queued_to_proxy(link) else {
                        continue;
                    };
                    if queued > before {
                        if let Some(at) = last {
                            self.pending_events.push((link, at));
                        }
                    }
                }
            }
            Fault::Drain { timeout } => {
                let deadline = now + timeout;
                self.draining = Some(deadline);
                // Admission tells every hub, as the runtime's gate has it do.
                self.admission_input(admission::Input::Drain { deadline });
            }
            _ => {}
        }
    }

    pub(super) fn fault_end(&mut self, i: usize) {
        let now = self.now;
        let fault = self.sc.plan.faults[i].fault.clone();
        match fault {
            Fault::BrokerCrash { .. } => {
                if matches!(self.broker_state, BrokerState::Crashed { until } if until <= now) {
                    self.broker_state = BrokerState::Up;
                    self.line("heal: broker is back");
                }
            }
            Fault::BrokerSilentDeath { .. } => {
                if matches!(self.broker_state, BrokerState::Silent { until } if until <= now) {
                    self.broker.restart();
                    self.broker_state = BrokerState::Up;
                    self.conn_to_up.clear();
                    for link in self.net.upstream_links() {
                        if let Some(LinkKind::Upstream(uid)) = self.net.kind(link) {
                            if let Some(u) = self.ups.get_mut(&uid) {
                                u.conn = None;
                            }
                        }
                        self.reset_link(link);
                    }
                    self.line("heal: broker is back (old connections reset)");
                }
            }
            Fault::Partition { .. } => {
                self.partitioned = false;
                for link in self.net.upstream_links() {
                    if self.net.is_lost(link) {
                        self.reset_link(link);
                    }
                }
                self.line("heal: partition repaired");
            }
            Fault::Hold { .. } if self.held_until.is_some_and(|h| h <= now) => {
                self.held_until = None;
                self.line("heal: hold released");
            }
            Fault::Blocked { .. } => {
                if self.broker_state == BrokerState::Up {
                    self.broker.set_blocked(now, None);
                    self.broker_outputs();
                }
                self.line("heal: broker unblocked");
            }
            _ => {}
        }
        self.obs.fault_ended(now, &fault);
    }

    pub(super) fn break_random_link(&mut self) {
        let live = self.net.live();
        if live.is_empty() {
            return;
        }
        let link = live[self.rng.random_range(0..live.len())];
        let kind = self.net.kind(link).expect("live");
        let name = match kind {
            LinkKind::Client(c) => {
                self.obs.client_link_broken(c);
                format!("c{c}")
            }
            LinkKind::Upstream(u) => format!("u{u}"),
        };
        self.line(format!("fault: connection {name} reset"));
        self.reset_link(link);
    }
}
