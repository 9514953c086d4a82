//! Test-only: the check that keeps a generated section of a document current. The section
//! sits between a `BEGIN` marker and `<!-- END generated -->`; a test regenerates it from the
//! code (the configuration reference from the flag definitions, the metrics reference from
//! the registry) and fails when the file differs, or rewrites it with `WARREN_UPDATE_DOCS=1`.

use std::path::Path;

/// The end marker of every generated section.
const END: &str = "<!-- END generated -->";

/// Asserts that the section of `doc` (relative to the repository root) after `begin` is
/// `generated`, or rewrites it when `WARREN_UPDATE_DOCS` is set.
pub(crate) fn check_section(doc: &str, begin: &str, generated: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(doc);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{doc}: {e}"));
    let (head, rest) = text
        .split_once(begin)
        .unwrap_or_else(|| panic!("{doc}: no marker {begin:?}"));
    let (current, tail) = rest
        .split_once(END)
        .unwrap_or_else(|| panic!("{doc}: no marker {END:?}"));
    if current != generated && std::env::var_os("WARREN_UPDATE_DOCS").is_some() {
        std::fs::write(&path, format!("{head}{begin}{generated}{END}{tail}")).unwrap();
        return;
    }
    assert_eq!(
        current, generated,
        "{doc} is out of date: rerun with WARREN_UPDATE_DOCS=1"
    );
}
