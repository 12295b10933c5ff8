//! The last manifest parsed or written, kept by its content hash.
//!
//! One run reads one manifest several times: a restore's check before the run and its step; a
//! backup's previous manifest in its pre-flight and its copy, and its new one in the copy, the
//! commit and the verify. Parsing is the larger part of reading a manifest at node scale (tens
//! of milliseconds per read at 15k entries), hashing it a small one. A read still reads and
//! hashes the file every time and compares the hash with the one it expects: only the parse is
//! taken from here, for exactly the bytes it was made from (the same bytes parse to the same
//! manifest). One manifest is kept, the last one, so that a run holds no more than the
//! manifests it is using; the daemon lets it go when a run ends ([`release`]).

use std::sync::{Arc, Mutex, MutexGuard};

use super::manifest::Manifest;

static LAST: Mutex<Option<(String, Arc<Manifest>)>> = Mutex::new(None);

fn last() -> MutexGuard<'static, Option<(String, Arc<Manifest>)>> {
    LAST.lock().unwrap_or_else(|p| p.into_inner())
}

/// The manifest parsed from the bytes whose BLAKE3 hash (hex) is `hash`, if it is the last one.
pub(crate) fn get(hash: &str) -> Option<Arc<Manifest>> {
    last()
        .as_ref()
        .filter(|(h, _)| h == hash)
        .map(|(_, m)| m.clone())
}

/// Keep `m`, the manifest of the bytes hashed `hash` (parsed from them, or written as them
/// after [`super::validate::validate`] accepted it), in place of the last one.
pub(crate) fn keep(hash: &str, m: Arc<Manifest>) {
    *last() = Some((hash.to_string(), m));
}

/// The manifest of `hash` to own (a commit adding its artifacts): taken out, and cloned only
/// when someone else still holds it.
pub(crate) fn take(hash: &str) -> Option<Manifest> {
    let m = {
        let mut last = last();
        match last.as_ref() {
            Some((h, _)) if h == hash => last.take().map(|(_, m)| m),
            _ => None,
        }
    }?;
    Some(Arc::try_unwrap(m).unwrap_or_else(|shared| (*shared).clone()))
}

/// Forget the last manifest (its memory goes back with the run's).
pub(crate) fn release() {
    *last() = None;
}
