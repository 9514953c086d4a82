//! `cargo +stable fuzz run -s none method_decoder`: the body is `warren_testkit::fuzz::method_decoder`, which
//! also runs in ordinary CI over the committed corpus (`testkit/tests/fuzz_corpus.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| warren_testkit::fuzz::method_decoder(data));
