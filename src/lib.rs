//! recoveryd: verified node backups and self-resuming upgrade recovery for rpm-ostree + kubelet
//! nodes. See `docs/architecture.md` for the layers and the data flow.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod files;
pub mod host;
pub mod journal;
pub mod logging;
pub mod ops;
pub mod plans;
pub mod protocol;
pub mod text;
