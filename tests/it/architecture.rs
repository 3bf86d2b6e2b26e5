//! The invariants docs/ARCHITECTURE.md states, checked against the sources.

use std::{fs, path::Path};

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap().display().to_string();
            out.push((rel, fs::read_to_string(&path).unwrap()));
        }
    }
}

fn all_sources() -> Vec<(String, String)> {
    let mut out = Vec::new();
    sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    out
}

/// The crate-level modules a file imports, from `crate::x` paths and from grouped imports
/// such as `use crate::{x::A, y::{B, C}}` (top-level names inside the outer braces).
fn crate_modules_used(code: &str) -> Vec<String> {
    let mut used = Vec::new();
    let mut rest = code;
    while let Some(pos) = rest.find("crate::") {
        rest = &rest[pos + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Walk the group, recording names that start a segment at depth 1.
            let (mut depth, mut at_segment_start) = (1, true);
            let mut name = String::new();
            for c in group.chars() {
                if c.is_alphanumeric() || c == '_' {
                    if at_segment_start && depth == 1 {
                        name.push(c);
                    }
                    continue;
                }
                // Any other character ends the name being read.
                if !name.is_empty() {
                    used.push(std::mem::take(&mut name));
                    at_segment_start = false;
                }
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => at_segment_start = true,
                    _ => {}
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            used.push(name);
        }
    }
    used
}

/// Code lines only: comments say what the rules are and must not trip them.
fn code(text: &str) -> String {
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

#[test]
fn dependencies_point_one_way() {
    // (module, what it must not mention)
    let rules: &[(&str, &[&str])] = &[
        (
            "src/storage/",
            &["crate::service", "crate::api", "crate::matrix", "axum", "crate::Error", "crate::error"],
        ),
        ("src/service/", &["crate::api", "axum", "tower"]),
        (
            "src/matrix/",
            &[
                "crate::service",
                "crate::api",
                "crate::storage",
                "axum",
                "tokio",
                "rocksdb",
                "std::fs",
                "std::net",
            ],
        ),
    ];
    let mut violations = Vec::new();
    for (file, text) in all_sources() {
        let code = code(&text);
        for (prefix, banned) in rules {
            if file.starts_with(prefix) {
                for b in *banned {
                    if code.contains(b) {
                        violations.push(format!("{file} mentions `{b}`"));
                    }
                }
            }
        }
        // Only the api layer knows HTTP (of the server: the load generator, a separate
        // binary, runs a push gateway of its own for the push scenario).
        if !file.starts_with("src/api/")
            && !file.ends_with("server.rs")
            && !file.starts_with("src/bin/conduit-bench/")
            && code.contains("axum")
        {
            violations.push(format!("{file} uses axum outside src/api"));
        }
    }
    assert!(violations.is_empty(), "layering violations:\n{}", violations.join("\n"));
}

#[test]
fn the_import_scanner_sees_grouped_imports() {
    let used = crate_modules_used(
        "use crate::{\n    Error, Result,\n    service::{a::B, c},\n    storage::x,\n};\nlet y = crate::api::f();",
    );
    assert_eq!(used, vec!["Error", "Result", "service", "storage", "api"]);
}

#[test]
fn no_global_state() {
    let banned = ["static mut", "lazy_static", "once_cell", "LazyLock", "thread_local!"];
    let mut violations = Vec::new();
    for (file, text) in all_sources() {
        for line in code(&text).lines() {
            let t = line.trim_start();
            if banned.iter().any(|b| t.contains(b))
                || (t.starts_with("static ") || t.starts_with("pub static "))
            {
                violations.push(format!("{file}: {t}"));
            }
        }
    }
    assert!(violations.is_empty(), "global state:\n{}", violations.join("\n"));
}

#[test]
fn every_module_says_what_it_owns() {
    let missing: Vec<String> = all_sources()
        .into_iter()
        .filter(|(_, text)| !text.trim_start().starts_with("//!"))
        .map(|(file, _)| file)
        .collect();
    assert!(missing.is_empty(), "modules without a //! line: {missing:?}");
}

#[test]
fn only_api_error_maps_errors_to_http() {
    for (file, text) in all_sources() {
        if code(&text).contains("impl IntoResponse for Error") {
            assert_eq!(file, "src/api/error.rs");
        }
    }
}
