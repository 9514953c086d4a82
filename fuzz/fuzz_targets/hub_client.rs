//! `cargo +stable fuzz run -s none hub_client`: the body is `warren_core::fuzzing::hub_client`, which
//! also runs in ordinary CI over the committed corpus (`core/tests/fuzz_corpus.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_core::fuzzing::hub_client(data));
