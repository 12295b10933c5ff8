//! The fuzz targets' seed corpus (`fuzz/seeds/`) must be inputs the parsers accept, or the
//! fuzzer starts from nothing but errors. Also runs each seed with a few bytes damaged: a
//! parser may refuse them, never panic.

use std::path::Path;

type Target = fn(&[u8]) -> bool;

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

fn check(target: &str, parse: Target) {
    for (name, bytes) in seeds(target) {
        assert!(parse(&bytes), "{target} seed {name} is refused");
        // Damage: truncate at every 7th byte and flip one byte there.
        for cut in (0..bytes.len()).step_by(7) {
            parse(&bytes[..cut]);
            let mut flipped = bytes.clone();
            flipped[cut] ^= 0x5a;
            parse(&flipped);
        }
    }
}

#[test]
fn manifest_seeds_are_accepted_and_damage_does_not_panic() {
    check("manifest", recoveryd::fuzzing::manifest);
}

#[test]
fn manifest_cache_seeds_are_accepted_and_damage_does_not_panic() {
    check("manifest_cache", recoveryd::fuzzing::manifest_cache);
}

#[test]
fn ostree_status_seeds_are_accepted_and_damage_does_not_panic() {
    check("ostree_status", recoveryd::fuzzing::ostree_status);
}

#[test]
fn socket_request_seeds_are_accepted_and_damage_does_not_panic() {
    check("socket_request", recoveryd::fuzzing::socket_request);
}

#[test]
fn config_seeds_are_accepted_and_damage_does_not_panic() {
    check("config", recoveryd::fuzzing::config);
}
