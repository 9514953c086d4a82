//! `cargo +stable fuzz run -s none client_handshake`: the body is `warren_testkit::fuzz::client_handshake`, which
//! also runs in ordinary CI over the committed corpus (`testkit/tests/fuzz_corpus.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_testkit::fuzz::client_handshake(data));
