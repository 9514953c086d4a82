//! Exclusive queues as warren keeps RabbitMQ's rules for them across clients sharing one
//! broker connection: which client owns which queue, the lock another client meets
//! ([`Hub::locked_queue`]), and the declares still in flight on a channel closed under its
//! client, whose queues must be deleted all the same (B5).

use super::{Declare, Phase};
use crate::frame::Frame;
use crate::hub::{ClientId, Holder, Hub, UpRef, UpstreamId};
use crate::method::{ids, Method, MethodId};
use crate::reply::{self, Reply};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::Instant;

impl Hub {
    /// Remembers the declares still in flight on upstream channel `r`, which is being closed
    /// under client `owner`, if any of them is exclusive or teaches a queue's type.
    pub(super) fn await_orphan_declares(
        &mut self,
        r: UpRef,
        owner: ClientId,
        declares: VecDeque<Declare>,
    ) {
        if declares.iter().any(Declare::matters) {
            self.orphan_declares.push((r, owner, declares));
        }
    }

    /// A declare-ok arrived on a channel closed under its client: an exclusive queue it
    /// names belongs to that client, deleted when it leaves, or at once if it is leaving or
    /// gone (its queues were released already); a typed one's type is learnt all the same.
    pub(in crate::hub) fn orphan_declare_ok(&mut self, now: Instant, r: UpRef, m: &Method) {
        let Method::QueueDeclareOk { queue } = m else {
            return;
        };
        let Some(i) = self.orphan_declares.iter().position(|(o, _, _)| *o == r) else {
            return;
        };
        let (_, owner, declares) = &mut self.orphan_declares[i];
        let owner = *owner;
        let declare = declares.pop_front();
        if !declares.iter().any(Declare::matters) {
            self.orphan_declares.swap_remove(i);
        }
        if let Some(Declare::Typed(kind)) = declare {
            self.queue_types.learn(now, queue.clone(), kind);
        }
        if !declare.is_some_and(|d| d.is_exclusive()) {
            return;
        }
        match self
            .client_mut(owner)
            .filter(|c| !matches!(c.phase, Phase::Closing { .. }))
        {
            Some(_) => self.own_exclusive(owner, r.up, queue.clone()),
            None => self.delete_exclusive_queues(now, vec![(r.up, queue.clone())]),
        }
    }

    /// Client `id`'s exclusive queue `queue` is gone (its delete ran): the name is free.
    pub(super) fn forget_exclusive(&mut self, id: ClientId, queue: &[u8]) {
        let Some(c) = self.client_mut(id) else { return };
        if let Some(i) = c.exclusive.iter().position(|(_, q)| q == queue) {
            let (up, _) = c.exclusive.swap_remove(i);
            self.count_client_queue(up, false);
        }
        if self.exclusive_owners.get(queue) == Some(&Holder::Client(id)) {
            self.exclusive_owners.remove(queue);
        }
    }

    /// Records that client `id` declared the exclusive queue `queue` on upstream `up`.
    pub(super) fn own_exclusive(&mut self, id: ClientId, up: UpstreamId, queue: Vec<u8>) {
        let Some(c) = self.client_mut(id) else { return };
        if !c.exclusive.iter().any(|(_, q)| *q == queue) {
            c.exclusive.push((up, queue.clone()));
            self.count_client_queue(up, true);
        }
        self.exclusive_owners.insert(queue, Holder::Client(id));
    }

    /// Keeps `Upstream::client_queues` in step as a client gains (`held`) or loses an
    /// exclusive queue on `up`, and reschedules the upstream, whose idle close depends on it.
    pub(super) fn count_client_queue(&mut self, up: UpstreamId, held: bool) {
        let Some(u) = self.upstream_mut(up) else {
            return;
        };
        if held {
            u.client_queues += 1;
        } else {
            u.client_queues = u.client_queues.saturating_sub(1);
        }
        self.schedule_upstream(up);
    }

    /// RabbitMQ's refusal of a method on another connection's exclusive queue, if `frame`
    /// names an exclusive queue of another client of this hub, or of a client that left
    /// before warren could send the queue's delete.
    pub(super) fn locked_queue(&self, id: ClientId, mid: MethodId, frame: &Frame) -> Option<Reply> {
        let payload = frame.payload();
        let queue = queue_named(mid, payload)?;
        let holder = *self.exclusive_owners.get(queue.as_ref())?;
        let name = String::from_utf8_lossy(&queue);
        let vhost = &self.credentials.vhost;
        let locked = || {
            Reply::new(
                reply::RESOURCE_LOCKED,
                format!(
                    "cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'. \
                     It could be originally declared on another connection or the exclusive \
                     property value does not match that of the original declaration."
                ),
            )
            .caused_by(mid)
        };
        match holder {
            Holder::Client(owner) if owner == id => None,
            Holder::Client(_) => Some(locked()),
            // The owner left: on RabbitMQ its connection took the queue along, and what finds
            // the name missing gets 404 with RabbitMQ's text. A delete (RabbitMQ: delete-ok)
            // and a new declare (RabbitMQ: a new queue) cannot be answered so before the old
            // queue is gone: they get what RabbitMQ answers while an exclusive owner's
            // connection is still being torn down, the lock, and may try again.
            Holder::Departed
                if mid == ids::QUEUE_DELETE
                    || (mid == ids::QUEUE_DECLARE && !declare_is_passive(payload)) =>
            {
                Some(locked())
            }
            Holder::Departed => Some(
                Reply::new(
                    reply::NOT_FOUND,
                    format!("no queue '{name}' in vhost '{vhost}'"),
                )
                .caused_by(mid),
            ),
        }
    }
}

/// Clears the nowait flag of a `queue.declare` or `queue.delete` in place: the flags octet
/// follows the reserved short and the queue name; nowait is its fifth bit in a declare, its
/// third in a delete.
pub(super) fn clear_nowait(frame: &mut Frame) {
    let bit = if frame.method_id() == Some(ids::QUEUE_DELETE) {
        2
    } else {
        4
    };
    let p = frame.payload_mut();
    let Some(&name_len) = p.get(6) else { return };
    if let Some(flags) = p.get_mut(7 + usize::from(name_len)) {
        *flags &= !(1 << bit);
    }
}

/// Whether a `queue.declare` is passive: the flags octet follows the reserved short and the
/// queue name; passive is its first bit.
fn declare_is_passive(payload: &[u8]) -> bool {
    let Some(&name_len) = payload.get(6) else {
        return false;
    };
    payload
        .get(7 + usize::from(name_len))
        .is_some_and(|flags| flags & 1 != 0)
}

/// Methods whose arguments start with a reserved short and a queue name: the queue-class
/// methods RabbitMQ checks exclusivity on, `basic.consume` and `basic.get`.
fn names_queue(mid: MethodId) -> bool {
    matches!(
        mid,
        ids::QUEUE_DECLARE
            | ids::QUEUE_BIND
            | ids::QUEUE_UNBIND
            | ids::QUEUE_PURGE
            | ids::QUEUE_DELETE
            | ids::BASIC_CONSUME
            | ids::BASIC_GET
    )
}

/// The queue such a method names (class, method, reserved short, then the name's length
/// octet), as the broker reads the name; `None` for other methods and for the empty name.
fn queue_named(mid: MethodId, payload: &[u8]) -> Option<Cow<'_, [u8]>> {
    if !names_queue(mid) {
        return None;
    }
    let len = usize::from(*payload.get(6)?);
    let sent = payload.get(7..7 + len)?;
    Some(as_broker_reads(mid, sent)).filter(|q| !q.is_empty())
}

/// A queue name as RabbitMQ 3.10 reads it: a declare, a delete, a bind and an unbind drop
/// every CR and LF from the name (a get, a consume and a purge take it as sent). Comparing
/// names as sent would let another client reach an exclusive queue `q` as `q\n`.
pub(super) fn as_broker_reads(mid: MethodId, name: &[u8]) -> Cow<'_, [u8]> {
    let strips = matches!(
        mid,
        ids::QUEUE_DECLARE | ids::QUEUE_DELETE | ids::QUEUE_BIND | ids::QUEUE_UNBIND
    );
    let cr_lf = |b: &u8| matches!(b, b'\r' | b'\n');
    if strips && name.iter().any(cr_lf) {
        Cow::Owned(name.iter().copied().filter(|b| !cr_lf(b)).collect())
    } else {
        Cow::Borrowed(name)
    }
}

/// Whether a method names its queue with the empty string, which RabbitMQ resolves to the
/// last queue declared on the channel (a declare with the empty name asks for a new one).
pub(super) fn uses_queue_shortcut(mid: MethodId, payload: &[u8]) -> bool {
    names_queue(mid) && mid != ids::QUEUE_DECLARE && payload.get(6) == Some(&0)
}
