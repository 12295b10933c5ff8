//! The data path: generations of node files with a BLAKE3 manifest (backup, verify, diff,
//! restore). See `docs/architecture.md` for the on-disk layout.

pub(crate) mod backup;
pub(crate) mod bytetext;
pub(crate) mod collected;
pub(crate) mod containers;
pub(crate) mod copy;
pub(crate) mod entry;
pub(crate) mod exclude;
pub(crate) mod extras;
pub mod fsx;
pub(crate) mod identity;
pub(crate) mod manifest;
pub(crate) mod manifest_cache;
mod manifest_read;
pub(crate) mod marks;
pub(crate) mod neighbours;
pub(crate) mod object_id;
mod par_walk;
pub(crate) mod parsed;
pub(crate) mod path_map;
pub(crate) mod previous;
pub(crate) mod restore;
pub(crate) mod stats_cache;
pub(crate) mod store;
pub(crate) mod validate;
pub(crate) mod verify;
pub(crate) mod walk;
pub(crate) mod xattr_set;
mod xattrat;

/// Whether an error means that a generation cannot be trusted (a damaged or tampered manifest,
/// a stored file that does not match it): the operator's answer is another generation, not a
/// retry. `recoveryctl` exits 6 for these.
pub(crate) fn is_corruption(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<manifest::ManifestError>()
            .is_some_and(|m| !matches!(m, manifest::ManifestError::Io { .. }))
            || c.downcast_ref::<restore::Corrupted>().is_some()
    })
}

#[cfg(test)]
mod proptests;
