//! The files of each crate import one another without circles (issue 15): every `use` of a
//! module of the same crate points down a DAG, so each file can be read knowing only the
//! files below it. A file's own submodules and its parent do not count (a parent declares its
//! children, and children build on their parent's types).
//!
//! The check reads the sources as text: it resolves `crate::`, `super::` and `self::` paths
//! of `use` items to the longest module that exists, and ignores inline `#[cfg(test)]`
//! modules, whose `super` is the file itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates whose modules must form a DAG, by source folder (relative to the workspace).
const CRATES: [&str; 5] = [
    "core/src",
    "runtime/src",
    "testkit/src",
    "sim/src",
    "tests/src",
];

/// The module paths of a crate (`hub::client`, the root as ``), with their files.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("a source folder") {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path
                .strip_prefix(src)
                .expect("below src")
                .with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into()).collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            out.insert(parts.join("::"), path);
        }
    }
    out
}

/// The paths a `use` item names, each as written (`super::a::B`), groups expanded one level.
fn used_paths(item: &str) -> Vec<String> {
    let item: String = item.split_whitespace().collect::<Vec<_>>().join(" ");
    let Some(open) = item.find('{') else {
        return vec![item.split(" as ").next().unwrap_or_default().to_owned()];
    };
    let prefix = item[..open].trim_end_matches(':');
    let inner = &item[open + 1..item.rfind('}').unwrap_or(item.len())];
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&inner[start..]);
    out.iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .map(|p| {
            format!(
                "{prefix}::{}",
                p.split(['{', ' ']).next().unwrap_or_default()
            )
        })
        .map(|p| p.trim_end_matches(':').to_owned())
        .collect()
}

/// The module a path used from module `from` lands in, if it is one of this crate's.
fn resolve(from: &str, path: &str, mods: &BTreeMap<String, PathBuf>) -> Option<String> {
    let mut segs: Vec<&str> = path.split("::").collect();
    let mut base: Vec<&str> = if from.is_empty() {
        Vec::new()
    } else {
        from.split("::").collect()
    };
    match segs.first() {
        Some(&"crate") => base.clear(),
        Some(&"super") => {
            while segs.first() == Some(&"super") {
                base.pop();
                segs.remove(0);
            }
            segs.insert(0, "self");
        }
        Some(&"self") => {}
        _ => return None,
    }
    segs.remove(0);
    (0..=segs.len()).rev().find_map(|n| {
        let m = base
            .iter()
            .chain(&segs[..n])
            .copied()
            .collect::<Vec<_>>()
            .join("::");
        mods.contains_key(&m).then_some(m)
    })
}

/// Whether one module is the other's ancestor (or the same).
fn related(a: &str, b: &str) -> bool {
    let below = |x: &str, y: &str| x == y || y.is_empty() || x.starts_with(&format!("{y}::"));
    below(a, b) || below(b, a)
}

/// The import edges between unrelated modules of the crate in `src`.
fn edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, file) in &mods {
        let text = std::fs::read_to_string(file).expect("a source file");
        let text = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default();
        for stmt in text.split(';') {
            let stmt = stmt.trim_start();
            let stmt = stmt
                .lines()
                .filter(|l| !l.trim_start().starts_with("//") && !l.trim_start().starts_with('#'))
                .collect::<Vec<_>>()
                .join(" ");
            let stmt = stmt.trim_start();
            let Some(item) = stmt
                .strip_prefix("use ")
                .or_else(|| stmt.strip_prefix("pub use "))
                .or_else(|| stmt.split_once(") use ").map(|(_, rest)| rest))
            else {
                continue;
            };
            for path in used_paths(item) {
                if let Some(to) = resolve(m, &path, &mods).filter(|to| !related(m, to)) {
                    out.entry(m.clone()).or_default().insert(to);
                }
            }
        }
    }
    out
}

/// A circle in `g`, if there is one, as the modules along it.
fn circle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        at: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == at) {
            return Some(path[i..].to_vec());
        }
        if !done.insert(at.to_owned()) {
            return None;
        }
        path.push(at.to_owned());
        for next in g.get(at).into_iter().flatten() {
            if let Some(c) = visit(g, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|m| visit(g, m, &mut Vec::new(), &mut done))
}

#[test]
fn each_crates_files_import_one_another_without_circles() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for krate in CRATES {
        let g = edges(&workspace.join(krate));
        assert!(!g.is_empty(), "{krate}: no imports read");
        assert_eq!(
            circle(&g),
            None,
            "{krate}: files import each other in a circle"
        );
    }
}

#[test]
fn a_circle_is_found() {
    let g: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(x, y)| (x.to_owned(), BTreeSet::from([y.to_owned()])))
        .collect();
    assert_eq!(circle(&g).map(|c| c.len()), Some(3));
    let paths = used_paths("super::{a::B, c, d::{E, F}}");
    assert_eq!(paths, ["super::a::B", "super::c", "super::d"]);
}
