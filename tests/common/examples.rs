//! The test programs built from `tests/support` as cargo examples.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// `target/<profile>/examples/<name>`, next to the test binary in `target/<profile>/deps`.
/// `cargo test --test X` does not rebuild examples, so a program older than any source it was
/// built from (cargo's own list, `<name>.d`) is refused rather than silently tested. With
/// `uses_lib` the program is built from the library too (the list then includes `src/`).
pub fn example(name: &str, uses_lib: bool) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        p.exists(),
        "{} is not built (plain `cargo test` builds examples; or `cargo build --example {name}`)",
        p.display()
    );
    let sources = dep_info(&p.with_extension("d"));
    assert!(
        !uses_lib || sources.iter().any(|s| s.ends_with("src/lib.rs")),
        "{}: cargo's list of its sources does not name the library",
        p.display()
    );
    let built = modified(&p);
    for source in sources {
        assert!(
            modified(&source) <= built,
            "{} is older than {}: run `cargo build --examples` (plain `cargo test` does)",
            p.display(),
            source.display()
        );
    }
    p
}

/// The sources a cargo dep-info file lists (`target: a.rs b.rs ...`, spaces escaped as `\ `).
fn dep_info(path: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (rebuild with `cargo build --examples`)",
            path.display()
        )
    });
    let line = text.lines().next().unwrap_or_default();
    let deps = line.split_once(": ").map_or("", |(_, d)| d);
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = deps.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&' ') => {
                cur.push(' ');
                chars.next();
            }
            ' ' => {
                if !cur.is_empty() {
                    out.push(PathBuf::from(std::mem::take(&mut cur)));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(PathBuf::from(cur));
    }
    out
}

fn modified(p: &Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}
