//! The clients' sockets: bytes a fake client reads (at once, or metered for a paced reader),
//! what it writes, its connection closing at either end, warren's side handing its frames
//! to admission or its hub, and the slow-client rule the runtime applies to it.

use super::net::{Dir, Item};
use super::slots::ProxyClient;
use super::{Ev, World};
use crate::client::ClientOut;
use crate::slow::Verdict;
use bytes::Bytes;
use smallvec::SmallVec;
use warren_core::admission;
use warren_core::frame::Frame;
use warren_core::hub::Input;

impl World {
    pub(super) fn client_reads(&mut self, cid: u32, data: &[u8]) {
        let now = self.now;
        let idx = cid as usize - 1;
        if let Some(p) = self.clients[idx].pacer.as_mut() {
            // A paced reader: the bytes wait on its host until it reads them.
            if let Some(at) = p.push(now, data) {
                self.schedule(at, Ev::PacedRead(cid));
            }
            return;
        }
        self.client_takes(cid, data);
    }

    /// The client's application reads `data` from its socket.
    fn client_takes(&mut self, cid: u32, data: &[u8]) {
        let now = self.now;
        let idx = cid as usize - 1;
        let slot = &mut self.clients[idx];
        slot.in_flight = slot.in_flight.saturating_sub(data.len());
        let board = &mut self.board;
        slot.client.handle_bytes(now, data, board);
        self.client_outputs(cid);
        self.watch_client(cid, false);
    }

    /// A paced client's next read.
    pub(super) fn paced_read(&mut self, cid: u32) {
        let now = self.now;
        let idx = cid as usize - 1;
        let Some(p) = self.clients[idx].pacer.as_mut() else {
            return;
        };
        let (data, next) = p.read(now);
        if let Some(at) = next {
            self.schedule(at, Ev::PacedRead(cid));
        }
        if !data.is_empty() {
            self.client_takes(cid, &data);
        }
    }

    /// The connection of a paced client ends: what it was sent before a close it reads up
    /// now (how fast is no longer warren's business); a reset loses it.
    pub(super) fn unpace(&mut self, cid: u32, reset: bool) {
        let idx = cid as usize - 1;
        let Some(p) = self.clients[idx].pacer.as_mut() else {
            return;
        };
        if reset {
            p.clear();
            return;
        }
        let rest = p.take_all();
        if !rest.is_empty() {
            self.client_takes(cid, &rest);
        }
    }

    /// Applies the slow-client rule to client `cid` now, as the runtime does after a write
    /// and whenever a client's socket drains. `deferred`: called while the hub's outputs are
    /// carried out, so the report waits until they are.
    pub(super) fn watch_client(&mut self, cid: u32, deferred: bool) {
        let now = self.now;
        let idx = cid as usize - 1;
        let slot = &self.clients[idx];
        let ProxyClient::Joined { hub, id, .. } = slot.proxy else {
            return;
        };
        if slot.slow_reported {
            return;
        }
        let queued =
            (slot.in_flight + slot.client.unread_bytes()).saturating_sub(self.sc.net.socket_buffer);
        let written = slot.sent.saturating_sub(queued as u64);
        self.obs.client_queue(now, cid, queued, written);
        match self.slow.check(now, cid, queued, written) {
            Verdict::Fine => {}
            Verdict::Recheck(at) => {
                let slot = &mut self.clients[idx];
                if slot.slow_check_at.is_none_or(|t| t > at || t <= now) {
                    slot.slow_check_at = Some(at);
                    self.schedule(at, Ev::SlowCheck(cid));
                }
            }
            Verdict::Slow => {
                self.clients[idx].slow_reported = true;
                self.obs.slow_reported(now, cid, queued);
                self.count("client reported slow");
                self.line(format!("w reports c{cid} slow ({queued} bytes queued)"));
                if deferred {
                    self.pending.push((hub, Input::ClientSlow { client: id }));
                } else {
                    self.hub_input(hub, Input::ClientSlow { client: id });
                }
            }
        }
    }

    /// warren let go of client `cid`: the slow-client rule forgets it.
    pub(super) fn unwatch_client(&mut self, cid: u32) {
        let now = self.now;
        self.slow.forget(cid);
        self.obs.client_gone(now, cid);
    }

    pub(super) fn client_sees_close(&mut self, cid: u32, broken: bool) {
        let now = self.now;
        let idx = cid as usize - 1;
        let slot = &mut self.clients[idx];
        slot.in_flight = 0;
        if !slot.client.is_done() {
            slot.client.handle_closed(now, broken);
            let end = slot.client.end.clone();
            if let Some((_, e)) = end {
                self.line(format!("c{cid} {e}"));
            }
        }
        // The client's side of the socket is closed too.
        if let Some(link) = self.clients[idx].link {
            self.push(link, Dir::ToProxy, Item::Fin);
        }
        self.client_outputs(cid);
    }

    pub(super) fn client_outputs(&mut self, cid: u32) {
        let idx = cid as usize - 1;
        let was_done = self.clients[idx].client.is_done();
        while let Some(o) = self.clients[idx].client.poll_output() {
            let Some(link) = self.clients[idx].link else {
                continue;
            };
            match o {
                ClientOut::Send(b) => self.push(link, Dir::ToProxy, Item::Data(b)),
                ClientOut::Close => self.push(link, Dir::ToProxy, Item::Fin),
            }
        }
        let _ = was_done;
        let slot = &self.clients[idx];
        if let Some((at, end)) = slot.client.end.clone() {
            if at == self.now && self.obs.note_client_end(cid) && self.trace.enabled() {
                self.line(format!("c{cid} ends: {end}"));
            }
        }
    }

    pub(super) fn proxy_reads_client(&mut self, cid: u32, data: &[u8]) {
        let idx = cid as usize - 1;
        match &mut self.clients[idx].proxy {
            ProxyClient::Handshake { conn } => {
                let (conn, data) = (*conn, Bytes::copy_from_slice(data));
                self.admission_input(admission::Input::ClientData { conn, data });
            }
            ProxyClient::Joined { buf, .. } => {
                buf.extend_from_slice(data);
                self.feed_hub_from_client(cid);
            }
            ProxyClient::Pending | ProxyClient::Gone => {}
        }
    }

    /// Splits whole frames off the client's buffer and hands them to its hub as one batch.
    pub(super) fn feed_hub_from_client(&mut self, cid: u32) {
        let idx = cid as usize - 1;
        let ProxyClient::Joined {
            hub,
            id,
            buf,
            decoder,
            dead,
        } = &mut self.clients[idx].proxy
        else {
            return;
        };
        if *dead {
            buf.clear();
            return;
        }
        let (hid, id) = (*hub, *id);
        let mut frames: SmallVec<[Frame; 8]> = SmallVec::new();
        let mut error = None;
        loop {
            match decoder.decode(buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    *dead = true;
                    buf.clear();
                    break;
                }
            }
        }
        if !frames.is_empty() {
            self.obs.client_sent(self.now, cid);
            self.hub_input(hid, Input::ClientFrames { client: id, frames });
        }
        if let Some(error) = error {
            self.hub_input(hid, Input::ClientFrameError { client: id, error });
        }
    }

    pub(super) fn proxy_sees_client_close(&mut self, cid: u32, _broken: bool) {
        let idx = cid as usize - 1;
        if matches!(self.clients[idx].proxy, ProxyClient::Joined { .. }) {
            self.unwatch_client(cid);
        }
        match std::mem::replace(&mut self.clients[idx].proxy, ProxyClient::Gone) {
            ProxyClient::Joined { hub, id, .. } => {
                self.hub_input(hub, Input::ClientClosed { client: id });
            }
            ProxyClient::Handshake { conn } => {
                self.handshakes.remove(&conn);
                self.admission_input(admission::Input::ClientClosed { conn });
            }
            other => self.clients[idx].proxy = other,
        }
        // warren closes its side once it learns the client is gone.
        if let Some(link) = self.clients[idx].link {
            self.push(link, Dir::FromProxy, Item::Fin);
        }
    }
}
