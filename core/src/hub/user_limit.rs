//! A user's channel limit (`rabbitmqctl set_user_limits USER '{"max-channels": N}'`), learnt
//! from the broker (B7). RabbitMQ counts every channel of the user across its connections and
//! answers the open past the limit by closing the whole connection (530). Through warren that
//! connection is shared, so one client's open would close its neighbours too. AMQP has no way
//! to ask for the limit, so the hub learns it from the first such close and from then on
//! refuses the client whose open would pass it, with the broker's own close, as RabbitMQ
//! refuses that client's connection, and the broker connection stays up.
//!
//! The hub counts only its own channels, pooled ones included: channels of the same user on
//! other hubs or other connections are not seen, and an open they push past the limit still
//! costs a broker connection (and teaches the limit again). A hub that empties ends, and what
//! it learnt with it.

use super::Hub;
use crate::reply::{self, Reply};
use std::time::{Duration, Instant};

/// How long a learnt limit is trusted. An operator may raise the limit at any time, and
/// nothing tells warren; after this long an open past it goes to the broker again, which
/// either takes it or closes one broker connection and so teaches the limit once more.
const LIMIT_MEMORY: Duration = Duration::from_secs(300);

/// What the broker's close says before the limit, which ends the text in parentheses.
const LIMIT_TEXT: &str = "has reached the maximum allowed user limit of (";

/// A channel limit the broker enforced on this hub's user.
#[derive(Debug, Clone)]
pub(super) struct ChannelLimit {
    /// The most channels the user may have open.
    max: usize,
    /// The broker's close, sent as it is to each client refused at the limit.
    reply: Reply,
    /// When the limit stops being trusted ([`LIMIT_MEMORY`]).
    until: Instant,
}

/// The limit a broker's connection close reports, if it is a user's channel limit.
fn channel_limit_of(close: &Reply) -> Option<usize> {
    if close.code != reply::NOT_ALLOWED {
        return None;
    }
    let (_, rest) = close.text.split_once(LIMIT_TEXT)?;
    rest.strip_suffix(')')?.parse().ok()
}

impl Hub {
    /// The broker closed an upstream with `close`: if that is a user's channel limit, the
    /// hub holds every later open to it.
    pub(super) fn learn_channel_limit(&mut self, now: Instant, close: &Reply) {
        if let Some(max) = channel_limit_of(close) {
            tracing::info!(max, "the broker enforces a channel limit on this user");
            self.channel_limit = Some(ChannelLimit {
                max,
                reply: close.clone(),
                until: now + LIMIT_MEMORY,
            });
        }
    }

    /// The broker's close for an open that would pass the user's channel limit now, if the
    /// hub's broker connections hold that many channels already.
    pub(super) fn at_channel_limit(&self, now: Instant) -> Option<Reply> {
        let limit = self.channel_limit.as_ref().filter(|l| now < l.until)?;
        let held: usize = self
            .upstreams
            .iter()
            .filter(|(_, u)| !u.is_connecting())
            .map(|(_, u)| u.table.in_use())
            .sum();
        (held >= limit.max).then(|| limit.reply.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_limit_from_rabbitmqs_close_only() {
        let text = "NOT_ALLOWED - number of channels opened for user 'lim' has reached the \
                    maximum allowed user limit of (3)";
        assert_eq!(channel_limit_of(&Reply::verbatim(530, text)), Some(3));
        assert_eq!(channel_limit_of(&Reply::verbatim(320, text)), None);
        let vhost = "NOT_ALLOWED - access to vhost '/' refused for user 'u': connection limit \
                     (2) is reached";
        assert_eq!(channel_limit_of(&Reply::verbatim(530, vhost)), None);
    }
}
