//! The test programs built from `tests/support` as cargo examples.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// `target/<profile>/examples/<name>`, next to the test binary in `target/<profile>/deps`.
/// `cargo test --test X` does not rebuild examples, so a program older than its source (or,
/// with `uses_lib`, than the newest file of `src/`) is refused rather than silently tested.
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
    let project = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![
        project
            .join("tests/support")
            .join(format!("{}.rs", name.replace('-', "_"))),
    ];
    if uses_lib {
        sources.push(newest_file(&project.join("src")));
    }
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

fn modified(p: &Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn newest_file(dir: &Path) -> PathBuf {
    let mut newest = (SystemTime::UNIX_EPOCH, dir.to_path_buf());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if modified(&path) > newest.0 {
                newest = (modified(&path), path);
            }
        }
    }
    newest.1
}
