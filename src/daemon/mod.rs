//! `recoveryd`: the persistent node daemon. The backup Job, operators and the boot unit all go
//! through it; it runs one run at a time.

mod broadcast;
pub(crate) mod dbus;
pub(crate) mod manager;
pub(crate) mod notify;
mod slot;
pub(crate) mod socket;

mod main;
pub use main::{DEFAULT_SOCKET, EXIT_CONFIG, main};
