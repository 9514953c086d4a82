//! Harness for warren's end-to-end tests.
//!
//! The tests under `tests/tests/` run a real warren in-process ([`Warren`]) in front of the
//! real RabbitMQ on `127.0.0.1:5672` (started by `scripts/rabbitmq.sh`) and drive it with real
//! client libraries (lapin and amqprs, see [`client`]). They inspect the broker's side of things
//! with `rabbitmqctl` ([`broker`]) and its event exchange ([`events`]).
//!
//! Rules the tests follow:
//! - every test is independent: its own [`Warren`], its own queue names ([`names::unique`]) and,
//!   where it counts broker connections, its own broker user ([`broker::TestUser`]), so tests
//!   can run in parallel;
//! - timeouts are upper bounds that turn a hang into a failure ([`wait`]), never performance
//!   assertions;
//! - tests that disturb the broker itself (restart, stop_app, alarms) have `broker_disturbing`
//!   in their name (most live in `tests/disruptive.rs`) and run alone, after the others
//!   (`scripts/test.sh`, `.config/nextest.toml`).

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod broker;
pub mod client;
pub mod cluster;
pub mod events;
pub mod faulty_net;
pub mod http;
pub mod metrics;
pub mod names;
pub mod process;
pub mod wait;
pub mod warren;

pub use broker::{BrokerConnection, TestUser, TestVhost};
pub use names::unique;
pub use wait::{wait_until, within};
pub use warren::Warren;

/// Host of the broker the tests use.
pub const BROKER_HOST: &str = "127.0.0.1";
/// AMQP port of the broker the tests use.
pub const BROKER_PORT: u16 = 5672;
/// The broker's own address, for comparing its answers with warren's.
#[must_use]
pub fn broker_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::new(BROKER_HOST.parse().expect("an IP address"), BROKER_PORT)
}

/// The broker's default user (and its password), allowed from localhost only.
pub const GUEST: &str = "guest";

/// Routes `tracing` output of the in-process warren to the test's output (captured by the test
/// runner and shown for failing tests). The level comes from `RUST_LOG` (default `warn`).
/// Safe to call more than once.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
pub mod lapin_ops;
pub mod raw;
pub mod tenant;
pub mod tls;
