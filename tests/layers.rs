//! The layers of `docs/architecture.md`, checked: each top-level module of `src/` may name
//! (`crate::<module>`) only the modules listed for it. One crate cannot make the compiler refuse
//! an upward import, so this test does; a new edge is a change to this table and to the picture.

use std::collections::BTreeSet;
use std::path::Path;

/// Each layer and what it may use. The front ends (`daemon`, `cli`) compose the layers below
/// them and never each other.
const LAYERS: &[(&str, &[&str])] = &[
    ("text", &[]),
    ("config", &["text"]),
    ("files", &["config", "text"]),
    ("host", &["config", "text"]),
    ("journal", &["files", "text"]),
    ("engine", &["config", "journal", "text"]),
    ("logging", &["engine"]),
    ("memory", &[]),
    ("protocol", &["engine", "files", "journal", "text"]),
    (
        "plans",
        &["config", "engine", "files", "host", "journal", "text"],
    ),
    (
        "ops",
        &[
            "config", "engine", "files", "host", "journal", "plans", "protocol", "text",
        ],
    ),
    (
        "daemon",
        &[
            "config", "engine", "files", "host", "journal", "logging", "memory", "ops", "plans",
            "protocol", "text",
        ],
    ),
    (
        "cli",
        &[
            "config", "engine", "files", "host", "journal", "logging", "memory", "ops", "plans",
            "protocol", "text",
        ],
    ),
    // The fuzz targets' entry points reach the parsers wherever they are.
    ("fuzzing", &["config", "daemon", "files", "host"]),
];

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules a file names as `crate::<name>`, grouped `crate::{a, b}` included.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        // `$crate::` in a macro is the same crate seen from outside: skip it.
        if text[..i].ends_with('$') {
            continue;
        }
        let rest = &text[i + "crate::".len()..];
        let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            group[..end].split(',').map(str::trim).collect()
        } else {
            vec![rest]
        };
        for n in names {
            let name: String = n
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.is_dir() && stem == "bin" || stem == "lib" {
            continue;
        }
        let allowed = LAYERS
            .iter()
            .find(|(m, _)| *m == stem)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| {
                panic!("src/{stem} is in no layer: add it to LAYERS and to docs/architecture.md")
            });
        let mut files = Vec::new();
        if path.is_dir() {
            sources(&path, &mut files);
        } else {
            files.push(path.clone());
        }
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for used in named_modules(&text) {
                if used != stem && !allowed.contains(&used.as_str()) {
                    wrong.push(format!(
                        "{} uses crate::{used}",
                        f.strip_prefix(&src).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_plain_paths() {
    let found =
        named_modules("use crate::{cli::out, engine};\nlet x = crate::plans::X; $crate::text");
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["cli", "engine", "plans"]
    );
}
