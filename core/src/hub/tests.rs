//! Scenario tests of the hub: scripted clients and a scripted broker, virtual time, and the
//! hub's outputs rendered as a readable trace that is snapshotted with insta.

mod control;
mod harness;
mod scenarios;
