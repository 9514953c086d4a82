//! Refusing a client before it reaches a hub: the limits (`max_clients`, `max_hubs`) and the
//! reply each one gives, and the silent-refusal rule
//! ([`crate::handshake::refusal`]) with RabbitMQ's [`SILENT_CLOSE_DELAY`]. Every path that turns
//! a client away ends here, so that they count and log alike.

use super::{Admission, AdmissionEvent, ConnId, Refusal, Wait};
use crate::handshake::HandshakeOutput;
use crate::reply::{self, Reply};
use std::time::{Duration, Instant};

/// How long RabbitMQ holds a login it refuses without a `Connection.Close` before it resets
/// the socket (measured against 3.10: 3.0 s) — a brake on password guessing that warren keeps,
/// so that a client cannot tell the two apart.
pub const SILENT_CLOSE_DELAY: Duration = Duration::from_secs(3);

impl Admission {
    /// Refuses a client, with a close or silently as [`crate::handshake::refusal`] says. A
    /// silent refusal resets the socket [`SILENT_CLOSE_DELAY`] later, as RabbitMQ does.
    pub(super) fn refuse(&mut self, now: Instant, id: ConnId, why: Refusal, reply: Reply) {
        let Some(c) = self.conn_mut(id) else { return };
        c.hs.refuse(&reply);
        let silent = crate::handshake::refusal(&reply, c.hs.capabilities()).is_none();
        let user = c.user.clone();
        while let Some(o) = self.conn_mut(id).and_then(|c| c.hs.poll_output()) {
            if let HandshakeOutput::Send(data) = o {
                self.send_client(now, id, data);
            }
        }
        self.count_refusal(why);
        self.event(AdmissionEvent::Refused {
            conn: id,
            why,
            reply,
            user,
        });
        if silent {
            // The client hears nothing; its socket is reset after the delay.
            let wait = self.conn(id).map_or(Wait::Input, |c| c.wait);
            self.unwait(id, wait);
            if let Some(c) = self.conn_mut(id) {
                c.wait = Wait::Reset(now + SILENT_CLOSE_DELAY);
            }
            self.schedule_conn(id);
        } else {
            self.remove_conn(id, false);
        }
    }

    pub(super) fn count_refusal(&mut self, why: Refusal) {
        *self.stats.refusals.entry(why).or_default() += 1;
    }

    /// The reply of a client over `max_clients`.
    pub(super) fn max_clients_reply(&self) -> Reply {
        Reply::new(
            reply::NOT_ALLOWED,
            format!(
                "warren's limit of {} connected clients (max_clients) is reached",
                self.config.max_clients
            ),
        )
    }

    /// The reply of a client whose credentials would need a hub past `max_hubs`.
    pub(super) fn max_hubs_reply(&self) -> Reply {
        Reply::new(
            reply::NOT_ALLOWED,
            format!(
                "warren's limit of {} distinct credential sets (max_hubs) is reached",
                self.config.max_hubs
            ),
        )
    }
}

/// What a client refused while warren drains is told.
pub(super) fn shutting_down() -> Reply {
    Reply::new(reply::CONNECTION_FORCED, "warren is shutting down")
}
