//! The catalogue of AMQP 0-9-1 methods (RabbitMQ's edition): a method's id ([`MethodId`]),
//! the ids the proxy names ([`ids`]), and each method's argument layout and sender
//! ([`METHODS`], [`spec`]).
//!
//! A leaf: it depends on nothing else in the crate, so that `frame` and `reply` can name a
//! method without depending on `method`, which itself depends on `reply` (issue 15: no import
//! cycles between modules). Everything here is re-exported from `method`, the path to use.

use std::fmt;

/// A method's (class id, method id) pair.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MethodId {
    /// Class id, e.g. 60 for `basic`.
    pub class: u16,
    /// Method id within the class.
    pub method: u16,
}

impl MethodId {
    /// A method id.
    #[must_use]
    pub const fn new(class: u16, method: u16) -> Self {
        MethodId { class, method }
    }

    /// The dotted name (`basic.publish`), or `None` for ids the protocol does not define.
    #[must_use]
    pub fn name(self) -> Option<&'static str> {
        spec(self).map(|s| s.name)
    }
}

impl fmt::Debug for MethodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "method({}, {})", self.class, self.method),
        }
    }
}

impl fmt::Display for MethodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Method ids used by name in the proxy.
#[allow(missing_docs)]
pub mod ids {
    use super::MethodId;
    pub const CONNECTION_START: MethodId = MethodId::new(10, 10);
    pub const CONNECTION_START_OK: MethodId = MethodId::new(10, 11);
    pub const CONNECTION_SECURE: MethodId = MethodId::new(10, 20);
    pub const CONNECTION_SECURE_OK: MethodId = MethodId::new(10, 21);
    pub const CONNECTION_TUNE: MethodId = MethodId::new(10, 30);
    pub const CONNECTION_TUNE_OK: MethodId = MethodId::new(10, 31);
    pub const CONNECTION_OPEN: MethodId = MethodId::new(10, 40);
    pub const CONNECTION_OPEN_OK: MethodId = MethodId::new(10, 41);
    pub const CONNECTION_CLOSE: MethodId = MethodId::new(10, 50);
    pub const CONNECTION_CLOSE_OK: MethodId = MethodId::new(10, 51);
    pub const CONNECTION_BLOCKED: MethodId = MethodId::new(10, 60);
    pub const CONNECTION_UNBLOCKED: MethodId = MethodId::new(10, 61);
    pub const CONNECTION_UPDATE_SECRET: MethodId = MethodId::new(10, 70);
    pub const CONNECTION_UPDATE_SECRET_OK: MethodId = MethodId::new(10, 71);
    pub const CHANNEL_OPEN: MethodId = MethodId::new(20, 10);
    pub const CHANNEL_OPEN_OK: MethodId = MethodId::new(20, 11);
    pub const CHANNEL_FLOW: MethodId = MethodId::new(20, 20);
    pub const CHANNEL_FLOW_OK: MethodId = MethodId::new(20, 21);
    pub const CHANNEL_CLOSE: MethodId = MethodId::new(20, 40);
    pub const CHANNEL_CLOSE_OK: MethodId = MethodId::new(20, 41);
    pub const EXCHANGE_DECLARE: MethodId = MethodId::new(40, 10);
    pub const EXCHANGE_DECLARE_OK: MethodId = MethodId::new(40, 11);
    pub const EXCHANGE_DELETE: MethodId = MethodId::new(40, 20);
    pub const EXCHANGE_BIND: MethodId = MethodId::new(40, 30);
    pub const EXCHANGE_UNBIND: MethodId = MethodId::new(40, 40);
    pub const QUEUE_DECLARE: MethodId = MethodId::new(50, 10);
    pub const QUEUE_DECLARE_OK: MethodId = MethodId::new(50, 11);
    pub const QUEUE_BIND: MethodId = MethodId::new(50, 20);
    pub const QUEUE_PURGE: MethodId = MethodId::new(50, 30);
    pub const QUEUE_DELETE: MethodId = MethodId::new(50, 40);
    pub const QUEUE_DELETE_OK: MethodId = MethodId::new(50, 41);
    pub const QUEUE_UNBIND: MethodId = MethodId::new(50, 50);
    pub const BASIC_QOS: MethodId = MethodId::new(60, 10);
    pub const BASIC_QOS_OK: MethodId = MethodId::new(60, 11);
    pub const BASIC_CONSUME: MethodId = MethodId::new(60, 20);
    pub const BASIC_CONSUME_OK: MethodId = MethodId::new(60, 21);
    pub const BASIC_CANCEL: MethodId = MethodId::new(60, 30);
    pub const BASIC_CANCEL_OK: MethodId = MethodId::new(60, 31);
    pub const BASIC_PUBLISH: MethodId = MethodId::new(60, 40);
    pub const BASIC_RETURN: MethodId = MethodId::new(60, 50);
    pub const BASIC_DELIVER: MethodId = MethodId::new(60, 60);
    pub const BASIC_GET: MethodId = MethodId::new(60, 70);
    pub const BASIC_GET_OK: MethodId = MethodId::new(60, 71);
    pub const BASIC_ACK: MethodId = MethodId::new(60, 80);
    pub const BASIC_REJECT: MethodId = MethodId::new(60, 90);
    pub const BASIC_RECOVER_ASYNC: MethodId = MethodId::new(60, 100);
    pub const BASIC_RECOVER: MethodId = MethodId::new(60, 110);
    pub const BASIC_NACK: MethodId = MethodId::new(60, 120);
    pub const CONFIRM_SELECT: MethodId = MethodId::new(85, 10);
    pub const TX_SELECT: MethodId = MethodId::new(90, 10);
    pub const TX_COMMIT: MethodId = MethodId::new(90, 20);
    pub const TX_COMMIT_OK: MethodId = MethodId::new(90, 21);
    pub const TX_ROLLBACK: MethodId = MethodId::new(90, 30);
}

/// The type of one argument in a method's argument list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// 8-bit integer.
    Octet,
    /// 16-bit integer.
    Short,
    /// 32-bit integer.
    Long,
    /// 64-bit integer.
    LongLong,
    /// Length-prefixed string of at most 255 bytes.
    ShortStr,
    /// Length-prefixed string with a 32-bit length.
    LongStr,
    /// One packed bit.
    Bit,
    /// A field table.
    Table,
    /// 64-bit POSIX time.
    Timestamp,
}

/// Who may send a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// Only the client (the broker implements it).
    Client,
    /// Only the server.
    Server,
    /// Either side.
    Both,
}

/// The static description of one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSpec {
    /// Class and method id.
    pub id: MethodId,
    /// Dotted name.
    pub name: &'static str,
    /// Who may send it.
    pub sender: Sender,
    /// Whether a content header and body follow it.
    pub content: bool,
    /// The argument layout.
    pub fields: &'static [Field],
}

impl MethodSpec {
    /// Whether a client may send this method to a broker.
    #[must_use]
    pub fn client_may_send(&self) -> bool {
        matches!(self.sender, Sender::Client | Sender::Both)
    }
}

use Field::*;
const RESERVED_SHORT: Field = Short;

macro_rules! methods {
    ($( ($class:expr, $method:expr, $name:expr, $sender:ident, $content:expr, [$($f:expr),*]) ),* $(,)?) => {
        /// Every method of AMQP 0-9-1 with RabbitMQ's extensions, sorted by id.
        pub static METHODS: &[MethodSpec] = &[
            $(MethodSpec {
                id: MethodId::new($class, $method),
                name: $name,
                sender: Sender::$sender,
                content: $content,
                fields: &[$($f),*],
            }),*
        ];
    };
}

methods! {
    (10, 10, "connection.start", Server, false, [Octet, Octet, Table, LongStr, LongStr]),
    (10, 11, "connection.start-ok", Client, false, [Table, ShortStr, LongStr, ShortStr]),
    (10, 20, "connection.secure", Server, false, [LongStr]),
    (10, 21, "connection.secure-ok", Client, false, [LongStr]),
    (10, 30, "connection.tune", Server, false, [Short, Long, Short]),
    (10, 31, "connection.tune-ok", Client, false, [Short, Long, Short]),
    (10, 40, "connection.open", Client, false, [ShortStr, ShortStr, Bit]),
    (10, 41, "connection.open-ok", Server, false, [ShortStr]),
    (10, 50, "connection.close", Both, false, [Short, ShortStr, Short, Short]),
    (10, 51, "connection.close-ok", Both, false, []),
    (10, 60, "connection.blocked", Server, false, [ShortStr]),
    (10, 61, "connection.unblocked", Server, false, []),
    (10, 70, "connection.update-secret", Client, false, [LongStr, ShortStr]),
    (10, 71, "connection.update-secret-ok", Server, false, []),
    (20, 10, "channel.open", Client, false, [ShortStr]),
    (20, 11, "channel.open-ok", Server, false, [LongStr]),
    (20, 20, "channel.flow", Both, false, [Bit]),
    (20, 21, "channel.flow-ok", Server, false, [Bit]),
    (20, 40, "channel.close", Both, false, [Short, ShortStr, Short, Short]),
    (20, 41, "channel.close-ok", Both, false, []),
    (30, 10, "access.request", Client, false, [ShortStr, Bit, Bit, Bit, Bit, Bit]),
    (30, 11, "access.request-ok", Server, false, [Short]),
    (40, 10, "exchange.declare", Client, false,
        [RESERVED_SHORT, ShortStr, ShortStr, Bit, Bit, Bit, Bit, Bit, Table]),
    (40, 11, "exchange.declare-ok", Server, false, []),
    (40, 20, "exchange.delete", Client, false, [RESERVED_SHORT, ShortStr, Bit, Bit]),
    (40, 21, "exchange.delete-ok", Server, false, []),
    (40, 30, "exchange.bind", Client, false,
        [RESERVED_SHORT, ShortStr, ShortStr, ShortStr, Bit, Table]),
    (40, 31, "exchange.bind-ok", Server, false, []),
    (40, 40, "exchange.unbind", Client, false,
        [RESERVED_SHORT, ShortStr, ShortStr, ShortStr, Bit, Table]),
    (40, 51, "exchange.unbind-ok", Server, false, []),
    (50, 10, "queue.declare", Client, false,
        [RESERVED_SHORT, ShortStr, Bit, Bit, Bit, Bit, Bit, Table]),
    (50, 11, "queue.declare-ok", Server, false, [ShortStr, Long, Long]),
    (50, 20, "queue.bind", Client, false,
        [RESERVED_SHORT, ShortStr, ShortStr, ShortStr, Bit, Table]),
    (50, 21, "queue.bind-ok", Server, false, []),
    (50, 30, "queue.purge", Client, false, [RESERVED_SHORT, ShortStr, Bit]),
    (50, 31, "queue.purge-ok", Server, false, [Long]),
    (50, 40, "queue.delete", Client, false, [RESERVED_SHORT, ShortStr, Bit, Bit, Bit]),
    (50, 41, "queue.delete-ok", Server, false, [Long]),
    (50, 50, "queue.unbind", Client, false,
        [RESERVED_SHORT, ShortStr, ShortStr, ShortStr, Table]),
    (50, 51, "queue.unbind-ok", Server, false, []),
    (60, 10, "basic.qos", Client, false, [Long, Short, Bit]),
    (60, 11, "basic.qos-ok", Server, false, []),
    (60, 20, "basic.consume", Client, false,
        [RESERVED_SHORT, ShortStr, ShortStr, Bit, Bit, Bit, Bit, Table]),
    (60, 21, "basic.consume-ok", Server, false, [ShortStr]),
    (60, 30, "basic.cancel", Both, false, [ShortStr, Bit]),
    (60, 31, "basic.cancel-ok", Server, false, [ShortStr]),
    (60, 40, "basic.publish", Client, true, [RESERVED_SHORT, ShortStr, ShortStr, Bit, Bit]),
    (60, 50, "basic.return", Server, true, [Short, ShortStr, ShortStr, ShortStr]),
    (60, 60, "basic.deliver", Server, true, [ShortStr, LongLong, Bit, ShortStr, ShortStr]),
    (60, 70, "basic.get", Client, false, [RESERVED_SHORT, ShortStr, Bit]),
    (60, 71, "basic.get-ok", Server, true, [LongLong, Bit, ShortStr, ShortStr, Long]),
    (60, 72, "basic.get-empty", Server, false, [ShortStr]),
    (60, 80, "basic.ack", Both, false, [LongLong, Bit]),
    (60, 90, "basic.reject", Client, false, [LongLong, Bit]),
    (60, 100, "basic.recover-async", Client, false, [Bit]),
    (60, 110, "basic.recover", Client, false, [Bit]),
    (60, 111, "basic.recover-ok", Server, false, []),
    (60, 120, "basic.nack", Both, false, [LongLong, Bit, Bit]),
    (85, 10, "confirm.select", Client, false, [Bit]),
    (85, 11, "confirm.select-ok", Server, false, []),
    (90, 10, "tx.select", Client, false, []),
    (90, 11, "tx.select-ok", Server, false, []),
    (90, 20, "tx.commit", Client, false, []),
    (90, 21, "tx.commit-ok", Server, false, []),
    (90, 30, "tx.rollback", Client, false, []),
    (90, 31, "tx.rollback-ok", Server, false, []),
}

/// The description of a method, or `None` if the id is not part of the protocol.
#[must_use]
pub fn spec(id: MethodId) -> Option<&'static MethodSpec> {
    METHODS
        .binary_search_by_key(&id, |s| s.id)
        .ok()
        .map(|i| &METHODS[i])
}
