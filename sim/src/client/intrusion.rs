//! Intrusions: what a client tries on another client's exclusive queue, and how it judges
//! the answer (RabbitMQ's 405 RESOURCE_LOCKED, or 404 once the queue is gone; B5).

use super::{consume, queue_declare_passive, Board, FakeClient};
use bytes::Bytes;
use warren_core::frame::method_frame;
use warren_core::method::{ids, MethodId};
use warren_core::reply;

/// What an intruder tries on another client's exclusive queue. RabbitMQ refuses each of them
/// across connections with `Channel.Close 405 RESOURCE_LOCKED`; through warren the owner and
/// the intruder may share one broker connection, so warren must refuse them itself (B5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intrusion {
    /// `queue.declare passive=true`.
    PassiveDeclare,
    /// `basic.consume`.
    Consume,
    /// `basic.get`.
    Get,
    /// `queue.purge`.
    Purge,
    /// `queue.delete`.
    Delete,
    /// `queue.bind` to `amq.direct`.
    Bind,
    /// `queue.unbind` from `amq.direct`.
    Unbind,
}

impl Intrusion {
    /// Every kind, for drawing one at random.
    pub const ALL: [Intrusion; 7] = [
        Intrusion::PassiveDeclare,
        Intrusion::Consume,
        Intrusion::Get,
        Intrusion::Purge,
        Intrusion::Delete,
        Intrusion::Bind,
        Intrusion::Unbind,
    ];

    /// The method it sends.
    #[must_use]
    pub fn method(self) -> MethodId {
        match self {
            Intrusion::PassiveDeclare => ids::QUEUE_DECLARE,
            Intrusion::Consume => ids::BASIC_CONSUME,
            Intrusion::Get => ids::BASIC_GET,
            Intrusion::Purge => ids::QUEUE_PURGE,
            Intrusion::Delete => ids::QUEUE_DELETE,
            Intrusion::Bind => ids::QUEUE_BIND,
            Intrusion::Unbind => ids::QUEUE_UNBIND,
        }
    }

    /// Whether `mid` answers it with success.
    pub(super) fn answered_by(self, mid: MethodId) -> bool {
        match self {
            Intrusion::PassiveDeclare => mid == ids::QUEUE_DECLARE_OK,
            Intrusion::Consume => mid == ids::BASIC_CONSUME_OK,
            Intrusion::Get => mid == ids::BASIC_GET_OK || mid == GET_EMPTY,
            Intrusion::Purge => mid == QUEUE_PURGE_OK,
            Intrusion::Delete => mid == ids::QUEUE_DELETE_OK,
            Intrusion::Bind => mid == QUEUE_BIND_OK,
            Intrusion::Unbind => mid == QUEUE_UNBIND_OK,
        }
    }

    pub(super) fn frame(self, ch: u16, queue: &str) -> Bytes {
        let q = queue.as_bytes();
        match self {
            Intrusion::PassiveDeclare => queue_declare_passive(ch, queue),
            Intrusion::Consume => consume(ch, q, b"", true, false),
            Intrusion::Get => method_frame(ch, ids::BASIC_GET, |w| {
                w.u16(0).shortstr(q).bit(false);
            }),
            Intrusion::Purge => method_frame(ch, ids::QUEUE_PURGE, |w| {
                w.u16(0).shortstr(q).bit(false);
            }),
            Intrusion::Delete => method_frame(ch, ids::QUEUE_DELETE, |w| {
                w.u16(0).shortstr(q).bit(false).bit(false).bit(false);
            }),
            Intrusion::Bind | Intrusion::Unbind => {
                let bind = self == Intrusion::Bind;
                method_frame(ch, self.method(), |w| {
                    w.u16(0)
                        .shortstr(q)
                        .shortstr(b"amq.direct")
                        .shortstr(b"intruder");
                    if bind {
                        w.bit(false);
                    }
                    w.u32(0);
                })
            }
        }
    }
}

/// How an intrusion ended, as the intruder saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntrusionOutcome {
    /// What it tried.
    pub op: Intrusion,
    /// On which board slot.
    pub slot: u32,
    /// The client the queue belonged to when it was tried (`None`: nobody had claimed it).
    pub owner: Option<u32>,
    /// `Some(code)` for a `Channel.Close`, `None` for a success reply.
    pub refused: Option<u16>,
}

/// `basic.get-empty`.
const GET_EMPTY: MethodId = MethodId::new(60, 72);
/// `queue.bind-ok`.
const QUEUE_BIND_OK: MethodId = MethodId::new(50, 21);
/// `queue.purge-ok`.
const QUEUE_PURGE_OK: MethodId = MethodId::new(50, 31);
/// `queue.unbind-ok`.
const QUEUE_UNBIND_OK: MethodId = MethodId::new(50, 51);

impl FakeClient {
    /// An intrusion was answered with success. Only a deletion may be (RabbitMQ deletes a
    /// missing queue without complaint); anything else on another client's exclusive queue is
    /// what RabbitMQ refuses with 405.
    pub(super) fn intrusion_answered(
        &mut self,
        (op, slot, name, owner): (Intrusion, u32, String, Option<u32>),
        mid: MethodId,
        board: &Board,
    ) {
        let owner = owner.or_else(|| board.exclusive_owner(slot));
        self.intrusions.push(IntrusionOutcome {
            op,
            slot,
            owner,
            refused: None,
        });
        if let Some(o) = owner.filter(|o| *o != self.id) {
            if op != Intrusion::Delete {
                self.violation(format!(
                    "{op:?} on c{o}'s exclusive queue '{name}' was answered {mid:?}: RabbitMQ refuses it (405 RESOURCE_LOCKED while c{o} is connected, 404 once its connection closed and took the queue along)"
                ));
            }
        }
    }

    /// An intrusion was refused with `Channel.Close`: 405 with RabbitMQ's text and the
    /// method as its cause, or 404 with RabbitMQ's text once the queue is gone (never for a
    /// delete, which RabbitMQ answers with delete-ok then).
    pub(super) fn intrusion_refused(
        &mut self,
        (op, slot, name, owner): (Intrusion, u32, String, Option<u32>),
        code: u16,
        text: &str,
        cause: MethodId,
    ) {
        self.intrusions.push(IntrusionOutcome {
            op,
            slot,
            owner,
            refused: Some(code),
        });
        let expected = format!(
            "RESOURCE_LOCKED - {}",
            crate::broker::locked_text(&name, &self.spec.vhost)
        );
        let ok = match code {
            reply::RESOURCE_LOCKED => {
                // Texts longer than a short string are cut (252 bytes and "...").
                let same_text = text == expected
                    || (text.ends_with("...") && expected.starts_with(&text[..text.len() - 3]));
                if !same_text || cause != op.method() {
                    self.violation(format!(
                        "{op:?} on the exclusive queue '{name}' was refused with 405 {text:?} caused by {cause:?}, expected RabbitMQ's {expected:?} caused by {:?}",
                        op.method()
                    ));
                }
                true
            }
            // RabbitMQ deletes a missing queue quietly; everything else names it in its 404.
            reply::NOT_FOUND if op != Intrusion::Delete => {
                let expected = format!(
                    "NOT_FOUND - no queue '{name}' in vhost '{}'",
                    self.spec.vhost
                );
                if text != expected || cause != op.method() {
                    self.violation(format!(
                        "{op:?} on the exclusive queue '{name}' was refused with 404 {text:?} caused by {cause:?}, expected RabbitMQ's {expected:?} caused by {:?}",
                        op.method()
                    ));
                }
                true
            }
            _ => false,
        };
        if !ok {
            self.violation(format!(
                "{op:?} on the exclusive queue '{name}' was refused with {code} {text:?}, expected 405 RESOURCE_LOCKED (or 404 once it is gone)"
            ));
        }
    }
}
