//! The three ways `recoveryctl` reaches recoveryd, behind one trait: D-Bus (the default), the
//! Unix socket (`--socket`, the backup Job's way) and in-process (`--offline`). Each takes a
//! protocol request, passes on the run's events as they come, and answers the protocol's
//! reply, so that every command prints the same whatever the transport.

mod dbus;
mod offline;
mod socket;

pub(crate) use dbus::Dbus;
pub(crate) use offline::Offline;
pub(crate) use socket::Socket;

use anyhow::Result;
use async_trait::async_trait;

use crate::protocol::{Event, Reply, Request};

/// What a client calls with each event of the run it follows. (An alias, so that
/// `async_trait` leaves the closure's argument lifetime higher-ranked.)
pub(crate) type OnEvent<'a> = dyn Fn(&Event) + 'a;

#[async_trait(?Send)]
pub(crate) trait Client {
    /// Send `request`; the events of a run it follows go to `events`. An answer of the daemon
    /// (an error included) is `Ok`; `Err` is a failure to reach or hear it.
    async fn request(&self, request: Request, events: &OnEvent<'_>) -> Result<Reply>;
}
