//! `cargo +stable fuzz run -s none client_handshake`: the body is `warren_core::fuzzing::client_handshake`, which
//! also runs in ordinary CI over the committed corpus (`core/tests/fuzz_corpus.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_core::fuzzing::client_handshake(data));
