//! The broker's connection events, read from its event exchange (`amq.rabbitmq.event`, plugin
//! `rabbitmq_event_exchange`, which `scripts/rabbitmq.sh` enables): they show what
//! `rabbitmqctl list_connections` cannot, a broker connection that lived for milliseconds,
//! such as the one a hub opens to ask the broker whether it knows an exchange type.

use crate::client::{amqp_url, lapin_connect};
use crate::lapin_ops::{expiring, LIMIT};
use crate::{broker_addr, wait_until, GUEST};
use anyhow::{Context, Result};
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use std::collections::BTreeSet;
use std::sync::Mutex;

/// The broker connections warren opened for one user since the watch began, and which of
/// them closed again, as the broker's `connection.created` and `connection.closed` events
/// tell. Warren's connections are told apart from the test's own clients of that user by
/// their `connection_name`, which starts with `warren@` (the raw clients' is `warren-tests
/// raw client`).
pub struct WarrenConnections {
    /// Kept open: the event queue is exclusive to it.
    _conn: lapin::Connection,
    channel: lapin::Channel,
    queue: String,
    user: String,
    seen: Mutex<Seen>,
}

/// What the events said so far.
#[derive(Debug, Default)]
struct Seen {
    /// Broker names (`"peer:port -> local:port"`) of warren's connections, in order opened.
    opened: Vec<String>,
    /// Broker names of every connection that closed (the event names no user).
    closed: BTreeSet<String>,
}

impl Seen {
    /// The connections opened and closed again, and those opened and still open.
    fn split(&self) -> (Vec<&String>, Vec<&String>) {
        (self.opened.iter()).partition(|n| self.closed.contains(*n))
    }
}

impl WarrenConnections {
    /// Starts to watch warren's broker connections of `user`: the events of connections
    /// opened after this returns are seen.
    pub async fn watch(user: &str) -> Result<WarrenConnections> {
        let conn = lapin_connect(&amqp_url(broker_addr(), GUEST, GUEST, "/")).await?;
        let channel = conn.create_channel().await?;
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = (channel
            .queue_declare("".into(), exclusive, expiring())
            .await)
            .context("declaring the queue for the broker's connection events")?
            .name()
            .to_string();
        for key in ["connection.created", "connection.closed"] {
            (channel.queue_bind(
                queue.as_str().into(),
                "amq.rabbitmq.event".into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ))
            .await
            .with_context(|| {
                format!(
                    "binding to amq.rabbitmq.event ({key}): is rabbitmq_event_exchange enabled? \
                     (scripts/rabbitmq.sh ensure)"
                )
            })?;
        }
        Ok(WarrenConnections {
            _conn: conn,
            channel,
            queue,
            user: user.to_owned(),
            seen: Mutex::new(Seen::default()),
        })
    }

    /// Takes in the events that have arrived.
    async fn read(&self) -> Result<()> {
        let get = BasicGetOptions { no_ack: true };
        while let Some(m) = self
            .channel
            .basic_get(self.queue.as_str().into(), get)
            .await?
        {
            let none = FieldTable::default();
            let headers = m.delivery.properties.headers().as_ref().unwrap_or(&none);
            let Some(name) = long_string(headers, "name") else {
                continue;
            };
            let mut seen = self.seen.lock().expect("not poisoned");
            match m.delivery.routing_key.as_str() {
                "connection.created"
                    if long_string(headers, "user").as_deref() == Some(self.user.as_str())
                        && is_warrens(headers) =>
                {
                    seen.opened.push(name);
                }
                "connection.closed" => {
                    seen.closed.insert(name);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Waits until `count` of the broker connections warren opened for the user since the
    /// watch began have closed again, and any other is `upstream` (the hub's own, which the
    /// watch may or may not have seen open if it was opened just before). Fails, with what
    /// the events said, if that is not so within [`LIMIT`]: when one of them stays open, or
    /// more or fewer were opened and closed.
    pub async fn wait_for_closed(&self, count: usize, upstream: &str) -> Result<()> {
        let what = format!(
            "{count} broker connections of warren's for {} to open and close again",
            self.user
        );
        let done = wait_until(LIMIT, &what, || async {
            self.read().await?;
            let seen = self.seen.lock().expect("not poisoned");
            let (closed, open) = seen.split();
            Ok((closed.len() == count && open.iter().all(|n| *n == upstream)).then_some(()))
        })
        .await;
        done.with_context(|| {
            let seen = self.seen.lock().expect("not poisoned");
            let (closed, open) = seen.split();
            format!(
                "warren's upstream is {upstream}; of its connections opened meanwhile, these \
                 closed: {closed:?}, these did not: {open:?}"
            )
        })
    }
}

/// The text of header `key` if it is a long string.
fn long_string(headers: &FieldTable, key: &str) -> Option<String> {
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// Whether an event's connection is one of warren's: its `client_properties` header (the
/// event exchange writes each property as an Erlang term, `{<<"key">>,type,value}`) has a
/// `connection_name` that starts with `warren@`.
fn is_warrens(headers: &FieldTable) -> bool {
    let Some(AMQPValue::FieldArray(props)) = headers.inner().get("client_properties") else {
        return false;
    };
    props.as_slice().iter().any(|p| {
        matches!(p, AMQPValue::LongString(s)
            if s.as_bytes().starts_with(b"{<<\"connection_name\">>,longstr,<<\"warren@"))
    })
}
