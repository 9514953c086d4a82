//! warren-sim: deterministic simulation of warren (docs/design.md, R1).
//!
//! Two layers:
//!
//! 1. **The pure-core world** ([`world`]): the real `warren_core::hub::Hub` and
//!    `ClientHandshake` with the test kit's sans-IO fake broker ([`broker`],
//!    `warren_testkit::broker`) and scripted fake clients
//!    ([`client`]), stepped in virtual time with no async at all. Thousands of seeds per
//!    second in release. Faults come from a [`plan::FaultPlan`] drawn from the seed; the
//!    invariants of [`check`] are checked after every run.
//! 2. **The real runtime under turmoil** (see `README.md`): `warren_runtime::Server` as a
//!    turmoil host, a scripted broker host built on the same [`broker`] logic, client hosts,
//!    and turmoil's crash, partition and hold faults.
//!
//! A seed is everything: `SIM_SEED=n` replays one run exactly, `SIM_SEEDS=N` sweeps many.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod check;
pub mod client;
pub mod layer2;
pub mod plan;
pub mod scenario;
pub mod seeds;
pub mod slow;
pub mod turmoil_net;
pub mod world;

// The fake broker, the message tags and the trace printer live in the test kit (issue 15);
// re-exported so that `warren_sim::broker`, `warren_sim::tag` and `warren_sim::trace` keep
// working.
pub use warren_testkit::broker;
pub use warren_testkit::broker::tag;
pub use warren_testkit::trace;
