//! The service's layout, as `lib.rs` states it: rooms that may use the rooms below them and never one
//! above. Reads every source file of `service/src` and checks each `crate::...` path it names, so that
//! an import from the core or the use cases into `http`, or from the store into a use case, fails here
//! (cargo cannot enforce it inside one crate).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// From the outside in: a room may use its own and every later one.
const ROOMS: [&str; 5] = ["roots", "http", "app", "parts", "core"];

/// The room of a file, by its path under `service/src`.
fn room_of_file(rel: &str) -> &'static str {
    let top = rel.split('/').next().unwrap_or(rel).trim_end_matches(".rs");
    room_of_module(top).unwrap_or_else(|| panic!("{rel} is in no room: add it to tests/layout.rs"))
}

/// The room of a top-level module of the crate.
fn room_of_module(top: &str) -> Option<&'static str> {
    Some(match top {
        "main" | "lib" | "cli" | "demo" => "roots",
        "http" => "http",
        "app" => "app",
        "store" | "keys" | "index" | "clock" | "metrics" | "config" | "telemetry" => "parts",
        "release" | "research" | "extract" | "noise" | "audit" | "tables" => "core",
        _ => return None,
    })
}

fn rank(room: &str) -> usize {
    ROOMS.iter().position(|r| *r == room).unwrap_or(usize::MAX)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source dir") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every top-level module a file names as `crate::NAME` (in `use` lines and inline paths alike),
/// comments left out. `use crate::{a, b}` names `a` and `b`.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        out.insert(name);
                    }
                }
            } else {
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
            rest = after;
        }
    }
    out
}

#[test]
fn no_room_uses_a_room_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 30, "the sources were found: {}", files.len());
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        let room = room_of_file(&rel);
        let text = std::fs::read_to_string(file).expect("readable");
        for module in named_modules(&text) {
            // A type re-exported at the crate root (`crate::Config`) names no module.
            let Some(target) = room_of_module(&module) else {
                continue;
            };
            if rank(target) < rank(room) {
                wrong.push(format!("{rel} ({room}) uses crate::{module} ({target})"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layout (a room may use only itself and the rooms below it: {}):\n{}",
        ROOMS.join(" > "),
        wrong.join("\n")
    );
}

#[test]
fn the_check_sees_an_import_from_below() {
    // The reader of paths this test relies on finds both forms.
    let named = named_modules(
        "use crate::http::startup::AppState;\nuse crate::{app, store::Store}; // crate::demo\n",
    );
    assert_eq!(
        named.into_iter().collect::<Vec<_>>(),
        ["app", "http", "store"]
    );
    assert!(rank(room_of_file("store/sqlite.rs")) > rank(room_of_file("http/routes/mod.rs")));
    assert_eq!(room_of_file("release/legacy/engine.rs"), "core");
}
