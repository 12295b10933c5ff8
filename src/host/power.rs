//! Rebooting, and holding off reboots during a critical section, through logind.
//!
//! The reboot goes through logind (`RebootWithFlags` with `SD_LOGIND_ROOT_CHECK_INHIBITORS`, so
//! block locks held by others are respected, or `ScheduleShutdown` when a delay is configured).
//! Only where logind is absent does it fall back to systemd's `reboot.target`. While files are
//! restored the daemon holds a logind `shutdown` block inhibitor; it must be released before
//! our own reboot.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use async_trait::async_trait;

use super::bus::{SystemBus, error_name, service_absent};
use super::systemd::ManagerProxy;

/// `SD_LOGIND_ROOT_CHECK_INHIBITORS`: respect block inhibitors even though we are root.
const ROOT_CHECK_INHIBITORS: u64 = 1;

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
pub trait Login1 {
    fn inhibit(&self, what: &str, who: &str, why: &str, mode: &str) -> zbus::Result<zbus::OwnedFd>;
    fn list_inhibitors(&self) -> zbus::Result<Vec<(String, String, String, String, u32, u32)>>;
    fn reboot(&self, interactive: bool) -> zbus::Result<()>;
    fn reboot_with_flags(&self, flags: u64) -> zbus::Result<()>;
    fn schedule_shutdown(&self, kind: &str, usec: u64) -> zbus::Result<()>;
}

/// A held shutdown inhibitor; dropping it releases the lock.
pub struct Inhibitor {
    fd: Option<zbus::OwnedFd>,
}

impl Inhibitor {
    pub(crate) fn none() -> Inhibitor {
        Inhibitor { fd: None }
    }

    pub fn held(&self) -> bool {
        self.fd.is_some()
    }

    pub fn release(mut self) {
        self.fd.take();
    }
}

#[async_trait]
pub trait Power: Send + Sync {
    /// Block shutdown while `why` is going on.
    async fn inhibit(&self, why: &str) -> Result<Inhibitor>;
    /// Ask for a reboot now (or after `delay`). Returns how it was requested.
    async fn reboot(&self, delay: Duration) -> Result<String>;
}

/// Whether logind refused a reboot because of a block inhibitor. How it says so depends on the
/// systemd version (`verify_shutdown_creds` in `logind-dbus.c`): up to 256 (RHEL 9 has 252),
/// root checking inhibitors gets `org.freedesktop.DBus.Error.AccessDenied` "Access denied to
/// root due to active block inhibitor"; 257 says `AccessDenied` "Access denied due to active
/// block inhibitor"; 258 and later `org.freedesktop.login1.BlockedByInhibitorLock`.
fn blocked_by_inhibitor(e: &zbus::Error) -> bool {
    match error_name(e).as_deref() {
        Some("org.freedesktop.login1.BlockedByInhibitorLock") => true,
        Some("org.freedesktop.DBus.Error.AccessDenied") => match e {
            zbus::Error::MethodError(_, Some(m), _) => m.contains("inhibitor"),
            zbus::Error::FDO(f) => f.to_string().contains("inhibitor"),
            _ => false,
        },
        _ => false,
    }
}

pub struct DbusPower {
    bus: std::sync::Arc<SystemBus>,
}

impl DbusPower {
    pub fn new(bus: std::sync::Arc<SystemBus>) -> DbusPower {
        DbusPower { bus }
    }

    async fn inhibitors_text(&self, login: &Login1Proxy<'_>) -> String {
        match login.list_inhibitors().await {
            Ok(list) => list
                .iter()
                .filter(|(what, _, _, mode, _, _)| what.contains("shutdown") && mode == "block")
                .map(|(_, who, why, _, uid, pid)| format!("{who} (uid {uid}, pid {pid}): {why}"))
                .collect::<Vec<_>>()
                .join("; "),
            Err(_) => String::new(),
        }
    }
}

#[async_trait]
impl Power for DbusPower {
    async fn inhibit(&self, why: &str) -> Result<Inhibitor> {
        let login = Login1Proxy::new(self.bus.get().await?).await?;
        match login.inhibit("shutdown", "recoveryd", why, "block").await {
            Ok(fd) => Ok(Inhibitor { fd: Some(fd) }),
            Err(e) if service_absent(&e) => {
                tracing::warn!("logind is not running: cannot hold off shutdown while {why}");
                Ok(Inhibitor::none())
            }
            Err(e) => Err(e).context("taking a logind shutdown inhibitor"),
        }
    }

    async fn reboot(&self, delay: Duration) -> Result<String> {
        let conn = self.bus.get().await?;
        let login = Login1Proxy::new(conn).await?;
        let result = if delay.is_zero() {
            match login.reboot_with_flags(ROOT_CHECK_INHIBITORS).await {
                Err(e)
                    if error_name(&e).as_deref()
                        == Some("org.freedesktop.DBus.Error.UnknownMethod") =>
                {
                    login
                        .reboot(false)
                        .await
                        .map(|()| "logind Reboot".to_string())
                }
                r => r.map(|()| "logind RebootWithFlags".to_string()),
            }
        } else {
            let at = SystemTime::now()
                .checked_add(delay)
                .unwrap_or_else(SystemTime::now)
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            login
                .schedule_shutdown("reboot", at.as_micros() as u64)
                .await
                .map(|()| format!("logind ScheduleShutdown in {}s", delay.as_secs()))
        };
        match result {
            Ok(how) => Ok(how),
            Err(e) if service_absent(&e) => {
                tracing::warn!("logind is not running; rebooting through systemd's reboot.target");
                // reboot.target cannot be scheduled: wait out the delay here.
                tokio::time::sleep(delay).await;
                ManagerProxy::new(conn)
                    .await?
                    .start_unit("reboot.target", "replace-irreversibly")
                    .await
                    .context("starting reboot.target")?;
                Ok("systemd reboot.target (logind absent)".into())
            }
            Err(e) if blocked_by_inhibitor(&e) => {
                let who = self.inhibitors_text(&login).await;
                Err(anyhow::anyhow!(
                    "the reboot is blocked by a shutdown inhibitor ({}); it is retried, or release the lock",
                    if who.is_empty() {
                        "held by another program"
                    } else {
                        who.as_str()
                    }
                ))
            }
            Err(e) => Err(e).context("asking logind to reboot"),
        }
    }
}
