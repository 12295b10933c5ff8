//! The data path: generations of node files with a BLAKE3 manifest (backup, verify, diff,
//! restore). See `docs/architecture.md` for the on-disk layout.

pub mod backup;
pub mod bytetext;
pub mod copy;
pub mod entry;
pub mod exclude;
pub mod extras;
pub mod fsx;
pub mod manifest;
pub mod restore;
pub mod store;
pub mod verify;
pub mod walk;
