//! Entry points for the fuzz targets in `fuzz/`: every parser that reads bytes recoveryd did not
//! write itself in this process (a manifest from the store and its binary cache, `ostree admin
//! status` output, a socket request line, a config file). Each takes raw bytes and must return
//! an error, never panic. Each returns whether the input was accepted, so that
//! `tests/fuzz_seeds.rs` can check that the seed corpus in `fuzz/seeds/` still reaches past the
//! first error.
//! Not an API: hidden from the docs and only called by `fuzz/fuzz_targets/*` and that test.

use std::path::Path;

/// A generation's manifest as read back from the store, with and without its recorded hash.
pub fn manifest(bytes: &[u8]) -> bool {
    use crate::files::manifest::Manifest;
    let plain = Manifest::read_bytes(bytes, "fuzz", None);
    let hash = blake3::hash(bytes).to_hex().to_string();
    let hashed = Manifest::read_bytes(bytes, "fuzz", Some(&hash));
    assert_eq!(
        plain.is_ok(),
        hashed.is_ok(),
        "the right hash changes nothing"
    );
    let wrong = Manifest::read_bytes(bytes, "fuzz", Some(&"0".repeat(64)));
    assert!(
        wrong.is_err() || hash == "0".repeat(64),
        "a wrong hash is refused"
    );
    plain.is_ok()
}

/// A generation's manifest cache, as its decoder sees it (the checksum that would refuse
/// nearly every input left out), and what it decodes to checked as a manifest is.
pub fn manifest_cache(bytes: &[u8]) -> bool {
    crate::files::manifest_cache::decodes(bytes)
}

/// The text `ostree admin status` printed.
pub fn ostree_status(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|text| crate::host::ostree::parse_status(text).is_ok())
}

/// One request line from a client of the daemon's socket.
pub fn socket_request(bytes: &[u8]) -> bool {
    crate::daemon::socket::parse_request(bytes).is_ok()
}

/// One configuration file.
pub fn config(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|text| {
        crate::config::Config::from_toml(text, Path::new("/etc/recoveryd/fuzz.toml")).is_ok()
    })
}
