//! The manifests a run has read or written, kept so that it reads each one once.
//!
//! One run reads one manifest several times: a restore's check before the run and its step; a
//! backup's previous manifest in its pre-flight, the new one its commit wrote in the verify,
//! and retention's collection reads what every kept generation names.
//! Parsing is the larger part of reading a manifest at node scale (tens of milliseconds per
//! read at 15k entries), hashing it a small one. A read still reads and hashes the file every
//! time and compares the hash with the one it expects: only the parse is taken from here, for
//! exactly the bytes it was made from (the same bytes parse to the same manifest).
//!
//! Kept: the last manifest whole, so that a run holds no more than the manifests it is using,
//! and the object ids of the last few (what a collection needs of a generation, 32 bytes an
//! object). The daemon lets them go when a run ends ([`release`]).

use std::sync::{Arc, Mutex, MutexGuard};

use super::manifest::Manifest;
use super::object_id::ObjectId;

/// What a collection needs of a manifest: the generation its header names, and the object ids
/// it names (sorted, each once).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ObjectSet {
    pub generation: String,
    pub ids: Vec<ObjectId>,
}

impl ObjectSet {
    /// The ids a whole manifest names (its files' and its artifacts' content).
    pub(crate) fn of(m: &Manifest) -> ObjectSet {
        let files = m.entries.iter().filter_map(|e| e.hash.as_deref());
        let artifacts = m.artifacts.iter().map(|a| a.hash.as_str());
        let mut ids: Vec<ObjectId> = files
            .chain(artifacts)
            .filter_map(ObjectId::from_hex)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ObjectSet {
            generation: m.header.generation.clone(),
            ids,
        }
    }
}

/// How many object sets are kept: a generation's, the previous ones', a few more.
const SETS: usize = 4;

#[derive(Default)]
struct Kept {
    last: Option<(String, Arc<Manifest>)>,
    /// Most recent last.
    sets: Vec<(String, Arc<ObjectSet>)>,
}

static KEPT: Mutex<Kept> = Mutex::new(Kept {
    last: None,
    sets: Vec::new(),
});

fn kept() -> MutexGuard<'static, Kept> {
    KEPT.lock().unwrap_or_else(|p| p.into_inner())
}

/// The manifest parsed from the bytes whose BLAKE3 hash (hex) is `hash`, if it is the last one.
pub(crate) fn get(hash: &str) -> Option<Arc<Manifest>> {
    kept()
        .last
        .as_ref()
        .filter(|(h, _)| h == hash)
        .map(|(_, m)| m.clone())
}

/// Keep `m`, the manifest of the bytes hashed `hash` (parsed from them, or written as them
/// after [`super::validate::validate`] accepted it), in place of the last one, whose object
/// ids are kept.
pub(crate) fn keep(hash: &str, m: Arc<Manifest>) {
    let before = kept().last.replace((hash.to_string(), m));
    if let Some((h, old)) = before
        && h != hash
    {
        keep_set(&h, Arc::new(ObjectSet::of(&old)));
    }
}

/// The object ids of the manifest hashed `hash`, if one read or written lately had them.
/// Asked of the last manifest, its ids are kept in its place: whoever asks for ids (a
/// collection) is done with its entries.
pub(crate) fn object_set(hash: &str) -> Option<Arc<ObjectSet>> {
    let last = {
        let mut k = kept();
        if let Some((_, s)) = k.sets.iter().find(|(h, _)| h == hash) {
            return Some(s.clone());
        }
        match k.last.as_ref() {
            Some((h, _)) if h == hash => k.last.take().map(|(_, m)| m),
            _ => None,
        }
    }?;
    let set = Arc::new(ObjectSet::of(&last));
    keep_set(hash, set.clone());
    Some(set)
}

/// Keep the object ids of the manifest hashed `hash`.
pub(crate) fn keep_set(hash: &str, set: Arc<ObjectSet>) {
    let mut k = kept();
    k.sets.retain(|(h, _)| h != hash);
    k.sets.push((hash.to_string(), set));
    if k.sets.len() > SETS {
        k.sets.remove(0);
    }
}

/// Forget every manifest kept (their memory goes back with the run's).
pub(crate) fn release() {
    *kept() = Kept::default();
}
