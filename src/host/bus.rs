//! The system bus connection the host adapters share: opened on first use (a host with every
//! D-Bus integration switched off never needs a bus), with a method timeout, because zbus has
//! none by default and a wedged service must not hang a recovery.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::OnceCell;
use zbus::DBusError;

pub struct SystemBus {
    conn: OnceCell<zbus::Connection>,
    /// A bus address to use instead of the system bus (tests: a private `dbus-daemon`).
    address: Option<String>,
    method_timeout: Duration,
}

impl SystemBus {
    pub fn new(method_timeout: Duration) -> SystemBus {
        SystemBus {
            conn: OnceCell::new(),
            address: None,
            method_timeout,
        }
    }

    /// A bus at `address` (e.g. `unix:path=/run/x/bus`) instead of the system bus, opened on
    /// first use like [`SystemBus::new`]; `DBUS_SYSTEM_BUS_ADDRESS` is not consulted.
    pub fn with_address(address: String, method_timeout: Duration) -> SystemBus {
        SystemBus {
            conn: OnceCell::new(),
            address: Some(address),
            method_timeout,
        }
    }

    /// The connection (the address given to [`SystemBus::with_address`]; else
    /// `DBUS_SYSTEM_BUS_ADDRESS` when set, else the system bus).
    pub(crate) async fn get(&self) -> Result<&zbus::Connection> {
        self.conn
            .get_or_try_init(|| async {
                let builder = match &self.address {
                    Some(address) => zbus::connection::Builder::address(address.as_str()),
                    None => zbus::connection::Builder::system(),
                };
                builder.method_timeout(self.method_timeout).build().await
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
pub(crate) fn service_absent(e: &zbus::Error) -> bool {
    matches!(
        error_name(e).as_deref(),
        Some("org.freedesktop.DBus.Error.ServiceUnknown")
            | Some("org.freedesktop.DBus.Error.NameHasNoOwner")
            | Some("org.freedesktop.DBus.Error.Spawn.ServiceNotFound")
    )
}
