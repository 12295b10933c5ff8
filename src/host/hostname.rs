//! The node's hostname as the host has it now. recoveryd's unit has `ProtectHostname=yes`,
//! which gives the daemon a UTS namespace of its own holding the hostname from the moment it
//! started: `uname()` in the daemon would keep a name that NetworkManager changed (DHCP) after
//! that. `systemd-hostnamed` runs in the host's namespace and answers with the live kernel
//! hostname, so that is asked first; `uname()` is the fallback when it is not on the bus.

use anyhow::Result;
use async_trait::async_trait;

use super::bus::{SystemBus, service_absent};

#[zbus::proxy(
    interface = "org.freedesktop.hostname1",
    default_service = "org.freedesktop.hostname1",
    default_path = "/org/freedesktop/hostname1"
)]
trait Hostname1 {
    #[zbus(property)]
    fn hostname(&self) -> zbus::Result<String>;
}

#[async_trait]
pub trait Hostname: Send + Sync {
    /// The kernel hostname of the host.
    async fn hostname(&self) -> Result<String>;
}

/// `uname()`: true where this process shares the host's UTS namespace.
pub struct Uname;

#[async_trait]
impl Hostname for Uname {
    async fn hostname(&self) -> Result<String> {
        Ok(uname())
    }
}

fn uname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// `systemd-hostnamed` over D-Bus, else `uname()`.
pub struct Hostnamed {
    bus: std::sync::Arc<SystemBus>,
}

impl Hostnamed {
    pub fn new(bus: std::sync::Arc<SystemBus>) -> Hostnamed {
        Hostnamed { bus }
    }
}

#[async_trait]
impl Hostname for Hostnamed {
    async fn hostname(&self) -> Result<String> {
        let conn = match self.bus.get().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("hostname: {e:#}; using uname()");
                return Ok(uname());
            }
        };
        let answer = async { Hostname1Proxy::new(conn).await?.hostname().await }.await;
        match answer {
            Ok(name) if !name.is_empty() => Ok(name),
            Ok(_) => Ok(uname()),
            Err(e) if service_absent(&e) => Ok(uname()),
            Err(e) => {
                tracing::warn!("asking systemd-hostnamed for the hostname: {e}; using uname()");
                Ok(uname())
            }
        }
    }
}
