//! The system bus connection the host adapters share: opened on first use (a host with every
//! D-Bus integration switched off never needs a bus), with a method timeout, because zbus has
//! none by default and a wedged service must not hang a recovery.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::OnceCell;
use zbus::DBusError;

pub struct SystemBus {
    conn: OnceCell<zbus::Connection>,
    method_timeout: Duration,
}

impl SystemBus {
    pub fn new(method_timeout: Duration) -> SystemBus {
        SystemBus {
            conn: OnceCell::new(),
            method_timeout,
        }
    }

    /// The connection (`DBUS_SYSTEM_BUS_ADDRESS` when set, else the system bus).
    pub async fn get(&self) -> Result<&zbus::Connection> {
        self.conn
            .get_or_try_init(|| async {
                zbus::connection::Builder::system()
                    .method_timeout(self.method_timeout)
                    .build()
                    .await
            })
            .await
            .context("connecting to the system D-Bus")
    }
}

/// The D-Bus error name of a failed call, if it is one.
pub fn error_name(e: &zbus::Error) -> Option<String> {
    match e {
        zbus::Error::MethodError(name, _, _) => Some(name.to_string()),
        zbus::Error::FDO(f) => Some(f.name().to_string()),
        _ => None,
    }
}

/// True when the service is not on the bus (not installed, not running, not activatable).
pub fn service_absent(e: &zbus::Error) -> bool {
    matches!(
        error_name(e).as_deref(),
        Some("org.freedesktop.DBus.Error.ServiceUnknown")
            | Some("org.freedesktop.DBus.Error.NameHasNoOwner")
            | Some("org.freedesktop.DBus.Error.Spawn.ServiceNotFound")
    )
}
