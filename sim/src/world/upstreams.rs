//! warren's broker connections and the broker behind them: dials, bytes both ways (split
//! into frames under the frame_max warren asks of the broker), closes at either end, and
//! each connection's inputs addressed to its owner, a hub or admission.

use super::net::{Dir, Item, LinkKind};
use super::slots::{BrokerState, Owner, UpInput, UpState};
use super::{Ev, World};
use crate::broker::BrokerOutput;
use smallvec::SmallVec;
use warren_core::admission;
use warren_core::frame::Frame;
use warren_core::hub::Input;

impl World {
    /// Bytes reach warren on `link`: if a password change's event was among them, warren
    /// knows of the change from now on (if it still reads that connection).
    pub(super) fn event_arrives(&mut self, link: u32, uid: u32) {
        let now = self.now;
        let before = self.pending_events.len();
        self.pending_events
            .retain(|(l, at)| !(*l == link && *at <= now));
        let reading = self.ups.get(&uid).is_some_and(|u| u.state != UpState::Gone);
        if self.pending_events.len() != before && reading {
            self.line(format!("u{uid} brings the event to warren"));
            self.count("password change event delivered");
            self.obs.revocation_delivered(now);
        }
    }

    /// warren closes its broker connection `uid` (after flushing).
    pub(super) fn close_up(&mut self, uid: u32) {
        let now = self.now;
        self.line(format!("w closes u{uid}"));
        self.obs.proxy_closed_upstream(now, uid);
        if let Some(u) = self.ups.get_mut(&uid) {
            u.state = UpState::Gone;
            if let Some(link) = u.link {
                self.push(link, Dir::FromProxy, Item::Fin);
            }
        }
    }

    /// An input about broker connection `uid` goes to its owner.
    fn up_input(&mut self, uid: u32, input: UpInput) {
        let Some(owner) = self.ups.get(&uid).map(|u| u.owner) else {
            return;
        };
        match owner {
            Owner::Hub { hub, id } => {
                let input = match input {
                    UpInput::Connected => Input::UpstreamConnected {
                        upstream: id,
                        node: 0,
                    },
                    UpInput::Frames(frames) => Input::UpstreamFrames {
                        upstream: id,
                        frames,
                    },
                    UpInput::FrameError(error) => Input::UpstreamFrameError {
                        upstream: id,
                        error,
                    },
                    UpInput::Closed(reason) => Input::UpstreamClosed {
                        upstream: id,
                        reason,
                    },
                };
                self.hub_input(hub, input);
            }
            Owner::Admission(link) => {
                use admission::Input as A;
                let input = match input {
                    UpInput::Connected => A::LinkConnected { link, node: 0 },
                    UpInput::Frames(frames) => A::LinkFrames { link, frames },
                    UpInput::FrameError(error) => A::LinkFrameError { link, error },
                    UpInput::Closed(reason) => A::LinkClosed { link, reason },
                };
                self.admission_input(input);
            }
        }
    }

    /// Upstreams of a hub other than `except` that are dialling or connected, its probes
    /// aside: they serve no client, so the hub cannot fall back on them.
    pub(super) fn live_upstreams(&self, hid: u32, except: Option<u32>) -> usize {
        self.ups
            .iter()
            .filter(|(uid, u)| {
                matches!(u.owner, Owner::Hub { hub, .. } if hub == hid)
                    && Some(**uid) != except
                    && u.state != UpState::Gone
                    && !u.probe
            })
            .count()
    }

    pub(super) fn dial_result(&mut self, uid: u32) {
        let now = self.now;
        let Some(u) = self.ups.get(&uid) else { return };
        if u.state != UpState::Dialing {
            return;
        }
        if let Some(until) = self.held_until {
            if now < until {
                self.schedule(until, Ev::Dial(uid));
                return;
            }
        }
        match self.broker_state {
            BrokerState::Crashed { .. } => {
                self.line(format!("u{uid} connection refused"));
                self.up_input(uid, UpInput::Closed("connection refused".into()));
                if let Some(u) = self.ups.get_mut(&uid) {
                    u.state = UpState::Gone;
                }
            }
            BrokerState::Silent { .. } => {}
            BrokerState::Up if self.partitioned => {}
            BrokerState::Up => {
                let link = self
                    .net
                    .add(LinkKind::Upstream(uid), self.sc.net.upstream_latency);
                let conn = self.broker.accept(now);
                self.conn_to_up.insert(conn, uid);
                if let Some(u) = self.ups.get_mut(&uid) {
                    u.state = UpState::Connected;
                    u.link = Some(link);
                    u.conn = Some(conn);
                }
                self.line(format!("u{uid} connected"));
                self.up_input(uid, UpInput::Connected);
            }
        }
    }

    pub(super) fn proxy_reads_upstream(&mut self, uid: u32, data: &[u8]) {
        let now = self.now;
        let Some(u) = self.ups.get_mut(&uid) else {
            return;
        };
        if u.state == UpState::Gone {
            return;
        }
        u.buf.extend_from_slice(data);
        let mut frames: SmallVec<[Frame; 8]> = SmallVec::new();
        let mut error = None;
        loop {
            match u.decoder.decode(&mut u.buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    u.buf.clear();
                    break;
                }
            }
        }
        if !frames.is_empty() {
            self.obs.upstream_sent(now, uid);
            self.up_input(uid, UpInput::Frames(frames));
        }
        if let Some(error) = error {
            self.up_input(uid, UpInput::FrameError(error));
        }
    }

    pub(super) fn proxy_sees_upstream_close(&mut self, uid: u32, broken: bool) {
        let Some(u) = self.ups.get_mut(&uid) else {
            return;
        };
        let link = u.link;
        if u.state != UpState::Gone {
            u.state = UpState::Gone;
            let reason = if broken {
                "connection reset by peer"
            } else {
                "connection closed by peer"
            };
            self.up_input(uid, UpInput::Closed(reason.into()));
        }
        if let Some(link) = link {
            self.push(link, Dir::FromProxy, Item::Fin);
        }
    }

    pub(super) fn broker_reads(&mut self, uid: u32, data: &[u8]) {
        if self.broker_state != BrokerState::Up {
            return;
        }
        let Some(conn) = self.ups.get(&uid).and_then(|u| u.conn) else {
            // The broker host has no such connection (it restarted): TCP answers with RST.
            if let Some(link) = self.ups.get(&uid).and_then(|u| u.link) {
                self.line(format!(
                    "u{uid} reset by the broker host (unknown connection)"
                ));
                self.reset_link(link);
            }
            return;
        };
        self.broker.handle_bytes(self.now, conn, data);
        self.broker_outputs();
    }

    pub(super) fn broker_sees_close(&mut self, uid: u32) {
        if self.broker_state != BrokerState::Up {
            return;
        }
        let Some(u) = self.ups.get_mut(&uid) else {
            return;
        };
        let (conn, link) = (u.conn.take(), u.link);
        if let Some(conn) = conn {
            self.conn_to_up.remove(&conn);
            self.broker.handle_closed(self.now, conn);
            self.broker_outputs();
        }
        if let Some(link) = link {
            self.push(link, Dir::ToProxy, Item::Fin);
        }
    }

    pub(super) fn broker_outputs(&mut self) {
        while let Some(o) = self.broker.poll_output() {
            match o {
                BrokerOutput::Send { conn, data } => {
                    let Some(link) = self
                        .conn_to_up
                        .get(&conn)
                        .and_then(|uid| self.ups.get(uid))
                        .and_then(|u| u.link)
                    else {
                        continue;
                    };
                    self.push(link, Dir::ToProxy, Item::Data(data));
                }
                BrokerOutput::Close { conn } => {
                    let Some(uid) = self.conn_to_up.remove(&conn) else {
                        continue;
                    };
                    if let Some(u) = self.ups.get_mut(&uid) {
                        u.conn = None;
                        if let Some(link) = u.link {
                            self.push(link, Dir::ToProxy, Item::Fin);
                        }
                    }
                }
            }
        }
    }
}
