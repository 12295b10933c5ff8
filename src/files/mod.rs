//! The data path: generations of node files with a BLAKE3 manifest (backup, verify, diff,
//! restore). See `docs/architecture.md` for the on-disk layout.

pub mod backup;
pub mod bytetext;
pub mod copy;
pub mod entry;
pub mod exclude;
pub mod extras;
pub mod fsx;
pub mod identity;
pub mod manifest;
pub mod restore;
pub mod store;
pub mod validate;
pub mod verify;
pub mod walk;

/// Whether an error means that a generation cannot be trusted (a damaged or tampered manifest,
/// a stored file that does not match it): the operator's answer is another generation, not a
/// retry. `recoveryctl` exits 6 for these.
pub fn is_corruption(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<manifest::ManifestError>()
            .is_some_and(|m| !matches!(m, manifest::ManifestError::Io { .. }))
            || c.downcast_ref::<restore::Corrupted>().is_some()
    })
}
