//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) through the fuzz target
//! bodies on stable Rust, so CI covers every seed and every input the fuzzer once found
//! without nightly, libFuzzer or cargo-fuzz (docs/design.md, R2).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use warren_testkit::fuzz;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Runs every file of one target's corpus; fails naming each input that panicked, or when
/// the corpus is missing or empty (a corpus that silently vanished would pass vacuously).
fn replay(target: &str, body: fn(&[u8])) {
    let dir = corpus_dir(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "corpus {} is empty; regenerate it with WARREN_WRITE_CORPUS=1 cargo test -p warren-testkit --test fuzz_seeds",
        dir.display()
    );
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).expect("read corpus file");
            catch_unwind(AssertUnwindSafe(|| body(&data))).is_err()
        })
        .map(|p| name(p))
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: {} of {} corpus inputs panicked: {failed:?}",
        failed.len(),
        files.len()
    );
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn frame_decoder_corpus() {
    replay("frame_decoder", fuzz::frame_decoder);
}

#[test]
fn method_decoder_corpus() {
    replay("method_decoder", fuzz::method_decoder);
}

#[test]
fn client_handshake_corpus() {
    replay("client_handshake", fuzz::client_handshake);
}

#[test]
fn hub_client_corpus() {
    replay("hub_client", fuzz::hub_client);
}

#[test]
#[should_panic(expected = "is missing")]
fn a_missing_corpus_fails() {
    replay("no_such_target", fuzz::frame_decoder);
}
