//! Golden files: the shape of every `--json` document, kept in `tests/golden/`, so that a
//! change of shape is a visible diff. What differs from run to run (times, hashes, generation
//! ids, the test's temporary directory, sizes on disk) is replaced by a placeholder first.
//! `UPDATE_GOLDEN=1 cargo test` rewrites the files.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// `2026-12-01T10:00:00Z`, with or without fractions of a second.
fn is_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && s.ends_with('Z')
        && b[..4].iter().all(u8::is_ascii_digit)
}

fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// Replace the parts of `s` that differ between runs.
fn normalize_str(s: &str, root: &str, generations: &[String]) -> String {
    if is_time(s) {
        return "<time>".into();
    }
    if is_hash(s) {
        return "<hash>".into();
    }
    let mut out = s.replace(root, "<root>");
    // Longest first: a second generation in the same second is `<first>-2`.
    let mut ids: Vec<(usize, &String)> = generations.iter().enumerate().collect();
    ids.sort_by_key(|(_, g)| std::cmp::Reverse(g.len()));
    for (i, g) in ids {
        out = out.replace(g.as_str(), &format!("<generation-{}>", i + 1));
    }
    // Times and sizes (`4.5 KiB`, free space) inside messages.
    let mut words: Vec<String> = Vec::new();
    let mut it = out.split(' ').peekable();
    while let Some(w) = it.next() {
        let lead = if w.starts_with('(') { "(" } else { "" };
        let t = w
            .trim_end_matches([',', ')', ';', '.'])
            .trim_start_matches('(');
        let unit = |u: &str| ["B", "KiB", "MiB", "GiB", "TiB"].contains(&u);
        let short_hash = t.len() >= 8
            && t.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            && t.bytes().any(|c| c.is_ascii_digit());
        // How many live files a restore hashed depends on the clock: files changed within two
        // seconds of a backup's walk are hashed, not recognized by their inode.
        let hashed_count = t.parse::<u64>().is_ok() && it.peek() == Some(&"live") && {
            let mut ahead = it.clone();
            ahead.next();
            ahead.next() == Some("files") && ahead.next().is_some_and(|h| h.starts_with("hashed"))
        };
        if hashed_count {
            words.push(w.replace(t, "<n>"));
        } else if is_time(t) {
            words.push(w.replace(t, "<time>"));
        } else if short_hash {
            words.push(w.replace(t, "<hash>"));
        } else if t.parse::<f64>().is_ok()
            && it
                .peek()
                .is_some_and(|n| unit(n.trim_end_matches([',', ')', ';', '.'])))
        {
            let n = it.next().unwrap_or_default();
            let tail = n.trim_start_matches(|c: char| c.is_ascii_alphabetic());
            words.push(format!("{lead}<size>{tail}"));
        } else {
            words.push(w.to_string());
        }
    }
    words.join(" ")
}

/// Keys whose numbers depend on the file system or the clock, not on what was asked.
const VOLATILE_NUMBERS: &[&str] = &[
    "bytes",
    "referenced_bytes",
    "unreferenced_bytes",
    "bytes_checked",
    "duration_ms",
    // Files changed within two seconds of a backup's walk are hashed by a restore.
    "hashed_live_files",
];

fn normalize(v: &mut Value, root: &str, generations: &[String]) {
    match v {
        Value::String(s) => *s = normalize_str(s, root, generations),
        Value::Array(a) => a.iter_mut().for_each(|x| normalize(x, root, generations)),
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if VOLATILE_NUMBERS.contains(&k.as_str()) && x.is_number() {
                    *x = Value::String("<bytes>".into());
                } else if k == "boot_id" {
                    *x = Value::String("<boot>".into());
                } else {
                    normalize(x, root, generations);
                }
            }
        }
        _ => {}
    }
}

/// Compare a `--json` document with `tests/golden/<name>.json` (after normalizing it), or
/// write it there with `UPDATE_GOLDEN=1`. `generations` are the ids of the generations the
/// document may name, oldest first.
pub fn check(name: &str, out: &str, root: &Path, generations: &[String]) {
    let v: Value =
        serde_json::from_str(out).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {out}"));
    assert_eq!(v["schema"], 1, "{name}: no schema: {out}");
    check_value(name, v, root, generations);
}

/// The same for a stream of documents (the socket's lines), kept as one list. Progress
/// events are left out: how many a run sends depends on the clock.
pub fn check_lines(name: &str, lines: &[Value], root: &Path, generations: &[String]) {
    for l in lines {
        assert_eq!(l["schema"], 1, "{name}: no schema: {l}");
    }
    let kept: Vec<Value> = lines
        .iter()
        .filter(|l| l["event"] != "step_progress")
        .cloned()
        .collect();
    check_value(name, Value::Array(kept), root, generations);
}

fn check_value(name: &str, mut v: Value, root: &Path, generations: &[String]) {
    normalize(&mut v, &root.display().to_string(), generations);
    let text = serde_json::to_string_pretty(&v).unwrap() + "\n";
    compare(name, &format!("{name}.json"), text);
}

/// Compare what a command prints for people with `tests/golden/<name>.txt`, normalized as
/// the documents are.
#[allow(dead_code)]
pub fn check_text(name: &str, out: &str, root: &Path, generations: &[String]) {
    let root = root.display().to_string();
    let text: String = out
        .lines()
        // Column padding depends on the length of ids (`…Z` or `…Z-2`): one space stands for
        // any run of them.
        .map(|l| {
            let n = normalize_str(l, &root, generations);
            let indent = &n[..n.len() - n.trim_start().len()];
            format!(
                "{indent}{}\n",
                n.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        })
        .collect();
    compare(name, &format!("{name}.txt"), text);
}

fn compare(name: &str, file: &str, text: String) {
    let path = dir().join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(dir()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "no golden file {}: run UPDATE_GOLDEN=1 cargo test --test golden",
            path.display()
        )
    });
    if want != text {
        let (w, t): (Vec<&str>, Vec<&str>) = (want.lines().collect(), text.lines().collect());
        let first = (0..w.len().max(t.len()))
            .find(|&i| w.get(i) != t.get(i))
            .unwrap_or(0);
        let around = |l: &[&str]| {
            l[first.saturating_sub(6).min(l.len())..(first + 6).min(l.len())].join("\n")
        };
        panic!(
            "{name}: the output changed at line {}. If that is meant, run \
             `UPDATE_GOLDEN=1 cargo test` and commit the diff.\n--- {}\n{}\n--- now\n{}\n--- all of it now\n{text}",
            first + 1,
            path.display(),
            around(&w),
            around(&t),
        );
    }
}
