//! warren's test kit: what the tests and the fuzzers share, kept out of `core/src` so that
//! the production library holds production code only.
//!
//! - [`broker`]: the fake RabbitMQ the simulation and the `hub_client` fuzz target run
//!   warren against;
//! - [`hub_world`]: a scripted world around one hub, with a trace printer, for core's hub
//!   scenarios (`tests/hub_scenarios.rs`, `tests/hub_control.rs`); the `hub_client` fuzz
//!   target's world is built from the same pieces;
//! - [`frames`]: wire frames, method payloads and content headers written by hand,
//!   independently of the encoders under test;
//! - [`rules`]: the one checker of the rules by which RabbitMQ closes a whole connection,
//!   applied to what warren sends a broker (by the fuzz target and inside [`broker`]);
//! - [`trace`]: the one trace printer (time stamps, frames by name, a tap that cuts a byte
//!   stream into described frames) every snapshot and failure report is written with;
//! - [`fuzz`]: the fuzz target bodies (the str0m pattern): the cargo-fuzz binaries in `fuzz/`
//!   are one-line wrappers around them, and `tests/fuzz_corpus.rs` replays the committed corpus
//!   through them on stable Rust.

pub mod broker;
pub mod frames;
pub mod fuzz;
pub mod hub_world;
pub mod rules;
pub mod trace;
