//! `cargo +stable fuzz run -s none hub_client`: the body is `warren_testkit::fuzz::hub_client`, which
//! also runs in ordinary CI over the committed corpus (`testkit/tests/fuzz_corpus.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_testkit::fuzz::hub_client(data));
