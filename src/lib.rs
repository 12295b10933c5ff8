//! recoveryd: verified node backups and self-resuming upgrade recovery for rpm-ostree + kubelet
//! nodes. See `docs/architecture.md` for the layers and the data flow.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod journal;
pub(crate) mod logging;
pub(crate) mod memory;
pub(crate) mod ops;
pub(crate) mod plans;
pub(crate) mod protocol;
pub(crate) mod text;
