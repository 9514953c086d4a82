//! The hub registry: which hub task serves which credentials (B1), the negative login cache
//! (B2) and the hub limit. This map is the only state shared between connection tasks; it is
//! touched once per client join and once per hub exit, never on the data path.

use crate::conn::Sink;
use crate::hub_task::{spawn_hub, Joined};
use crate::net::Network;
use crate::server::Ctx;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use warren_core::auth_cache::AuthCache;
use warren_core::credentials::Credentials;
use warren_core::handshake::ClientHello;
use warren_core::reply::{self, Reply};

/// A client asking its hub to take it in.
#[derive(Debug)]
pub(crate) struct Join {
    pub(crate) hello: Box<ClientHello>,
    pub(crate) sink: Sink,
    /// Ends the connection's tasks at once, for a client that is not reading (B9).
    pub(crate) done: tokio_util::sync::CancellationToken,
    pub(crate) reply: oneshot::Sender<Joined>,
}

#[derive(Debug)]
struct Entry {
    joins: mpsc::UnboundedSender<Join>,
    id: u64,
}

#[derive(Debug)]
struct Inner {
    hubs: HashMap<Credentials, Entry>,
    auth_cache: AuthCache,
    next_id: u64,
    closed: bool,
}

/// Credentials → hub task.
#[derive(Debug)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    max_hubs: usize,
}

/// Why a client was refused before reaching a hub.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) reply: Reply,
    /// The metrics label for the refusal.
    pub(crate) reason: &'static str,
}

impl Registry {
    pub(crate) fn new(max_hubs: usize, auth_cache: AuthCache) -> Self {
        Registry {
            inner: Mutex::new(Inner {
                hubs: HashMap::new(),
                auth_cache,
                next_id: 0,
                closed: false,
            }),
            max_hubs,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this short lock cannot leave the map half-updated.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends the client to the hub for its credentials, starting one if needed. The send
    /// happens under the lock, so a hub that is shutting down never loses a join.
    pub(crate) fn join<N: Network>(
        &self,
        ctx: &Arc<Ctx<N>>,
        now: Instant,
        join: Join,
    ) -> Result<(), (Refusal, Join)> {
        let mut inner = self.lock();
        if inner.closed {
            let reply = Reply::new(reply::CONNECTION_FORCED, "warren is shutting down");
            return Err((
                Refusal {
                    reply,
                    reason: "draining",
                },
                join,
            ));
        }
        let key = &join.hello.credentials;
        if let Some(r) = inner.auth_cache.check(now, key) {
            let refusal = Refusal {
                reply: r.clone(),
                reason: "auth_cache",
            };
            return Err((refusal, join));
        }
        let join = match inner.hubs.get(key) {
            Some(e) => match e.joins.send(join) {
                Ok(()) => return Ok(()),
                // The hub ended between lookup and send: start a new one below.
                Err(mpsc::error::SendError(j)) => j,
            },
            None => join,
        };
        if inner.hubs.len() >= self.max_hubs && !inner.hubs.contains_key(&join.hello.credentials) {
            let reply = Reply::new(
                reply::NOT_ALLOWED,
                format!(
                    "warren's limit of {} distinct credential sets (max_hubs) is reached",
                    self.max_hubs
                ),
            );
            return Err((
                Refusal {
                    reply,
                    reason: "max_hubs",
                },
                join,
            ));
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let key = join.hello.credentials.clone();
        let joins = spawn_hub(ctx.clone(), key.clone(), id);
        // A fresh receiver cannot be closed yet.
        let _ = joins.send(join);
        inner.hubs.insert(key, Entry { joins, id });
        ctx.metrics.set_hubs(inner.hubs.len());
        Ok(())
    }

    /// Remembers that the broker refused these credentials.
    pub(crate) fn auth_rejected(&self, now: Instant, key: Credentials, reply: Reply) {
        self.lock().auth_cache.insert(now, key, reply);
    }

    /// Called by a hub task with nothing left to do: removes it unless a join is queued.
    /// Returns whether the hub may exit.
    pub(crate) fn retire(
        &self,
        key: &Credentials,
        id: u64,
        joins: &mut mpsc::UnboundedReceiver<Join>,
        metrics: &crate::metrics::Metrics,
    ) -> bool {
        let mut inner = self.lock();
        if !joins.is_empty() {
            return false;
        }
        if inner.hubs.get(key).is_some_and(|e| e.id == id) {
            inner.hubs.remove(key);
        }
        joins.close();
        metrics.set_hubs(inner.hubs.len());
        true
    }

    /// Refuses every later join (drain).
    pub(crate) fn close(&self) {
        self.lock().closed = true;
    }
}
