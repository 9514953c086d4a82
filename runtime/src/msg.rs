//! The messages the tasks send one another: to the admission task ([`GateMsg`]), to a hub task
//! ([`HubMsg`]), the admin API's requests and answers that they carry, and a reload's
//! [`ReloadReport`] (which the API prints and [`crate::reload`] re-exports).
//!
//! They live below the tasks, in a module of their own, so that admission ([`crate::gate`]),
//! the hubs ([`crate::hub_task`]) and the admin API ([`crate::api`]) each depend on this
//! vocabulary and not on one another.

use crate::conn::{BoxStream, ClientCount};
use bytes::{Bytes, BytesMut};
use hyper::StatusCode;
use serde_json::Value;
use smallvec::SmallVec;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;
use warren_core::admission::{HubEntry, HubId, LinkId};
use warren_core::frame::Frame;
use warren_core::handshake::ClientHello;
use warren_core::hub::{Input, UpstreamId};
use warren_core::login::Login;
use warren_core::reply::Reply;

/// Messages to the admission task.
pub(crate) enum GateMsg {
    /// A client finished its TLS handshake.
    Accepted(Box<Accepted>),
    /// A dial for a link finished.
    Dialed {
        link: LinkId,
        result: Result<(BoxStream, usize), String>,
    },
    /// A hub has nothing to do (see [`warren_core::admission::Input::HubIdle`]).
    HubIdle { hub: HubId, handoffs: u64 },
    /// A hub's own login was refused.
    HubRefused { hub: HubId, reply: Reply },
    /// The settings were reloaded ([`crate::reload`]): admission and the hubs take them.
    Reconfigure,
    /// A request of the admin API, and where its answer goes.
    Admin(AdminRequest, oneshot::Sender<ApiReply>),
}

/// A client socket ready for its AMQP handshake.
pub(crate) struct Accepted {
    pub(crate) stream: BoxStream,
    pub(crate) peer: SocketAddr,
    pub(crate) count: ClientCount,
    pub(crate) reset: Arc<AtomicBool>,
    pub(crate) started: Instant,
    /// It came to a TLS listener.
    pub(crate) tls: bool,
}

/// Bytes queued for a socket when it changes hands.
pub(crate) type Unsent = std::collections::VecDeque<Bytes>;

/// What admission hands a hub task.
pub(crate) enum HubMsg {
    /// A client that reached `Connection.Open`.
    Join(Box<Arrival>),
    /// A broker connection admission logged in and opened (see
    /// [`warren_core::admission::Output::AdoptLink`]).
    Adopt {
        login: Box<Login>,
        stream: BoxStream,
        /// Bytes read past the frames below.
        rbuf: BytesMut,
        /// Bytes admission queued and the socket had not taken yet.
        unsent: Unsent,
        /// Frames read after `OpenOk`.
        frames: SmallVec<[Frame; 8]>,
        /// The node of the upstream list it reached.
        node: usize,
    },
    /// An input from admission (closing every client of a revoked user or vhost).
    Input(Input),
    /// A dial the task started finished: the socket and the node it reached, or why not.
    Dialed {
        upstream: UpstreamId,
        result: Result<(BoxStream, usize), String>,
    },
    /// Nothing is on its way any more: stop once idle.
    Stop,
    /// A request of the admin API; the answer describes the hub after it.
    Admin(HubCommand, oneshot::Sender<HubAnswer>),
}

/// A client handed to its hub, with its socket.
pub(crate) struct Arrival {
    pub(crate) hello: Box<ClientHello>,
    pub(crate) stream: BoxStream,
    /// Bytes the client sent after `Connection.Open`.
    pub(crate) pipelined: BytesMut,
    /// Handshake bytes the socket had not taken yet.
    pub(crate) unsent: Unsent,
    pub(crate) peer: SocketAddr,
    pub(crate) count: ClientCount,
    pub(crate) reset: Arc<AtomicBool>,
    /// It came over TLS.
    pub(crate) tls: bool,
}

/// Which hubs and clients a request is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    pub(crate) user: Option<String>,
    pub(crate) vhost: Option<String>,
    /// The client's `connection_name`, exactly.
    pub(crate) name: Option<String>,
    pub(crate) hub: Option<u64>,
}

impl Filter {
    pub(crate) fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    pub(crate) fn takes_hub(&self, e: &HubEntry) -> bool {
        self.user.as_ref().is_none_or(|u| *u == e.user)
            && self.vhost.as_ref().is_none_or(|v| *v == e.vhost)
            && self.hub.is_none_or(|h| h == e.id.get())
    }
}

/// A request the admission task carries out.
#[derive(Debug)]
pub(crate) enum AdminRequest {
    Hubs(Filter),
    Hub(u64),
    Clients(Filter),
    Upstreams(Filter),
    Vhosts,
    CloseClient {
        hub: u64,
        client: u32,
        reason: String,
    },
    CloseClients {
        filter: Filter,
        reason: String,
    },
    HubAct(u64, HubAction),
    Vhost(String, bool),
}

/// What an operator does to one hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HubAction {
    Pause,
    Resume,
    Drain,
    Redial,
}

/// The answer: a status and a JSON body.
pub(crate) type ApiReply = (StatusCode, Value);

/// What a hub task is asked to do (after which it describes itself).
#[derive(Debug)]
pub(crate) enum HubCommand {
    Describe,
    /// Boxed: inputs can be large (a reconfiguration), this one is small and rare.
    Input(Box<warren_core::hub::Input>),
    /// Close the client with this number, or every client (named `name`, when given).
    Close {
        client: Option<u32>,
        name: Option<String>,
        reason: String,
    },
}

/// A hub's answer: itself, its clients and upstreams, and the clients a close closed.
#[derive(Debug, Default)]
pub(crate) struct HubAnswer {
    pub(crate) hub: Value,
    pub(crate) clients: Vec<Value>,
    pub(crate) upstreams: Vec<Value>,
    pub(crate) closed: Vec<String>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReloadReport {
    /// Changed settings now in force.
    pub applied: Vec<&'static str>,
    /// Changed settings that keep their running value until a restart.
    pub needs_restart: Vec<&'static str>,
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[&str]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "applied: {}; needs a restart: {}",
            list(&self.applied),
            list(&self.needs_restart)
        )
    }
}
