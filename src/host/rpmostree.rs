//! rpm-ostree over D-Bus (`org.projectatomic.rpmostree1`): the deployments, and a rollback
//! with the full client transaction protocol (what `rpm-ostree rollback` does): register,
//! `Rollback({"reboot": false})`, a peer-to-peer connection to the returned address, the
//! signal stream opened before `Start`, wait for `Finished`, unregister. The daemon vanishing
//! from the bus mid-transaction and a transaction that never finishes are errors of their own.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use futures_util::StreamExt;
use serde::Serialize;
use zbus::{OwnedObjectPath, OwnedVariant, Variant};

use super::bus::{SystemBus, error_name, service_absent};

pub const SERVICE: &str = "org.projectatomic.rpmostree1";
const TXN_IFACE: &str = "org.projectatomic.rpmostree1.Transaction";
const BUSY: &str = "org.gtk.GDBus.UnmappedGError.Quark._g_2dio_2derror_2dquark.Code26";

#[zbus::proxy(
    interface = "org.projectatomic.rpmostree1.Sysroot",
    default_service = "org.projectatomic.rpmostree1",
    default_path = "/org/projectatomic/rpmostree1/Sysroot"
)]
pub trait Sysroot {
    fn register_client(&self, options: HashMap<&str, Variant<'_>>) -> zbus::Result<()>;
    fn unregister_client(&self, options: HashMap<&str, Variant<'_>>) -> zbus::Result<()>;
    fn reload(&self) -> zbus::Result<()>;
    #[zbus(name = "GetOS")]
    fn get_os(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(property)]
    fn booted(&self) -> zbus::Result<OwnedObjectPath>;
    #[zbus(property)]
    fn deployments(&self) -> zbus::Result<Vec<HashMap<String, OwnedVariant>>>;
}

#[zbus::proxy(
    interface = "org.projectatomic.rpmostree1.OS",
    default_service = "org.projectatomic.rpmostree1"
)]
pub trait Os {
    fn rollback(&self, options: HashMap<&str, Variant<'_>>) -> zbus::Result<String>;
    #[zbus(property)]
    fn default_deployment(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;
}

/// One deployment as rpm-ostree reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deployment {
    pub id: String,
    pub osname: String,
    pub checksum: String,
    pub serial: i32,
    pub version: Option<String>,
    pub booted: bool,
    pub staged: bool,
    pub pinned: bool,
}

impl Deployment {
    /// `<checksum>.<serial>`, as ostree names a deployment.
    pub fn csum_serial(&self) -> String {
        format!("{}.{}", self.checksum, self.serial)
    }

    fn from_dict(d: &HashMap<String, OwnedVariant>) -> Result<Deployment> {
        let s = |k: &str| -> Result<String> {
            d.get(k)
                .with_context(|| format!("deployment has no `{k}`"))?
                .downcast_ref::<&str>()
                .map(str::to_string)
                .with_context(|| format!("deployment `{k}` is not a string"))
        };
        let b = |k: &str| {
            d.get(k)
                .and_then(|v| v.downcast_ref::<bool>().ok())
                .unwrap_or(false)
        };
        Ok(Deployment {
            id: s("id")?,
            osname: s("osname")?,
            checksum: s("checksum")?,
            serial: d
                .get("serial")
                .context("deployment has no `serial`")?
                .downcast_ref::<i32>()
                .context("deployment `serial` is not an int32")?,
            version: s("version").ok(),
            booted: b("booted"),
            staged: b("staged"),
            pinned: b("pinned"),
        })
    }
}

/// All deployments in boot order, and which is booted, pending and rollback.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub deployments: Vec<Deployment>,
    pub booted: Option<usize>,
    pub pending: Option<usize>,
    pub rollback: Option<usize>,
}

impl Status {
    /// Pending and rollback as rpm-ostree computes them: among the booted OS's deployments, the
    /// first before the booted one is pending, the first after it is the rollback.
    pub fn new(deployments: Vec<Deployment>) -> Status {
        let booted = deployments.iter().position(|d| d.booted);
        let (mut pending, mut rollback) = (None, None);
        if let Some(b) = booted {
            let os = &deployments[b].osname;
            pending = deployments[..b].iter().position(|d| &d.osname == os);
            rollback = deployments[b + 1..]
                .iter()
                .position(|d| &d.osname == os)
                .map(|i| i + b + 1);
        }
        Status {
            deployments,
            booted,
            pending,
            rollback,
        }
    }

    pub fn booted(&self) -> Option<&Deployment> {
        self.booted.map(|i| &self.deployments[i])
    }

    pub fn rollback(&self) -> Option<&Deployment> {
        self.rollback.map(|i| &self.deployments[i])
    }

    pub fn pinned(&self) -> Vec<&Deployment> {
        self.deployments.iter().filter(|d| d.pinned).collect()
    }
}

/// Errors a recovery decides on.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("rpm-ostree is busy with another transaction: {0}")]
    Busy(String),
    #[error("rpm-ostree has no rollback deployment")]
    NoRollback,
    #[error(
        "rpm-ostree's daemon left the bus during the rollback transaction (it likely crashed; see `journalctl -u rpm-ostreed`)"
    )]
    DaemonVanished,
    #[error("the rpm-ostree rollback transaction did not finish within {0:?}")]
    Timeout(Duration),
    #[error("rpm-ostree rollback failed: {0}")]
    Failed(String),
    #[error("rpm-ostree is not running on this host ({0})")]
    Absent(String),
}

#[async_trait]
pub trait RpmOstree: Send + Sync {
    async fn status(&self) -> Result<Status>;
    /// Make the rollback deployment the default for the next boot (no reboot).
    async fn rollback(&self) -> Result<String>;
}

pub struct DbusRpmOstree {
    bus: std::sync::Arc<SystemBus>,
    timeout: Duration,
}

impl DbusRpmOstree {
    pub fn new(bus: std::sync::Arc<SystemBus>, timeout: Duration) -> DbusRpmOstree {
        DbusRpmOstree { bus, timeout }
    }

    async fn sysroot(&self) -> Result<SysrootProxy<'static>> {
        Ok(SysrootProxy::builder(self.bus.get().await?)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?)
    }

    async fn transaction(&self, sysroot: &SysrootProxy<'static>) -> Result<String, RollbackError> {
        let conn = self
            .bus
            .get()
            .await
            .map_err(|e| RollbackError::Failed(format!("{e:#}")))?;
        let failed = |e: zbus::Error| RollbackError::Failed(e.to_string());
        let os_path = sysroot.booted().await.map_err(failed)?;
        if os_path.as_str() == "/" {
            return Err(RollbackError::Failed(
                "the system is not booted from an ostree deployment".into(),
            ));
        }
        let os = OsProxy::builder(conn)
            .path(os_path)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(failed)?;
        // Watch the daemon's name before starting, so that a crash is noticed.
        let dbus = zbus::fdo::DBusProxy::new(conn).await.map_err(failed)?;
        let mut owner_changes = dbus
            .receive_name_owner_changed_with_args(&[(0, SERVICE)])
            .await
            .map_err(failed)?;
        let address = os
            .rollback(HashMap::from([("reboot", Variant::from(false))]))
            .await
            .map_err(|e| match error_name(&e).as_deref() {
                Some(BUSY) => RollbackError::Busy(message_of(&e)),
                _ => RollbackError::Failed(e.to_string()),
            })?;
        let p2p = zbus::connection::Builder::address(address.as_str())
            .p2p()
            .method_timeout(self.timeout)
            .build()
            .await
            .map_err(|e| {
                RollbackError::Failed(format!("connecting to the transaction at {address}: {e}"))
            })?;
        // Signals on a peer-to-peer connection carry no sender: filter locally, and subscribe
        // before Start so that no signal is lost.
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface(TXN_IFACE)
            .build()
            .map_err(failed)?;
        let mut signals = zbus::MessageStream::for_match_rule(rule, &p2p, None)
            .await
            .map_err(failed)?;
        let started: bool = p2p
            .call_method(None::<&str>, "/", Some(TXN_IFACE), "Start", &())
            .await
            .map_err(failed)?
            .body()
            .deserialize()
            .map_err(failed)?;
        if !started {
            tracing::info!("attached to a rollback transaction already in progress");
        }
        let wait = async {
            loop {
                tokio::select! {
                    msg = signals.next() => {
                        let msg = match msg {
                            Some(Ok(msg)) => msg,
                            // The peer-to-peer socket closed: rpm-ostreed went away.
                            None => return Err(RollbackError::DaemonVanished),
                            Some(Err(e)) => {
                                tracing::warn!("unreadable message from the rpm-ostree transaction: {e}");
                                continue;
                            }
                        };
                        let header = msg.header();
                        match header.member().map(|m| m.as_str()) {
                            Some("Finished") => {
                                let (ok, text): (bool, String) = msg.body().deserialize().map_err(failed)?;
                                return Ok((ok, text));
                            }
                            Some("Message") | Some("TaskBegin") => {
                                if let Ok((text,)) = msg.body().deserialize::<(String,)>() {
                                    tracing::info!("rpm-ostree: {text}");
                                }
                            }
                            _ => {}
                        }
                    }
                    change = owner_changes.next() => match change {
                        Some(c) if c.args().is_ok_and(|a| a.new_owner().is_none()) => {
                            return Err(RollbackError::DaemonVanished);
                        }
                        Some(_) => {}
                        // The system bus connection ended (the stream stays empty from now on,
                        // and polling it again would spin).
                        None => {
                            return Err(RollbackError::Failed(
                                "lost the system bus while waiting for the rollback transaction".into(),
                            ));
                        }
                    },
                }
            }
        };
        let (ok, text) = tokio::time::timeout(self.timeout, wait)
            .await
            .map_err(|_| RollbackError::Timeout(self.timeout))??;
        drop(p2p);
        if ok {
            Ok(text)
        } else if text.contains("No rollback deployment") {
            Err(RollbackError::NoRollback)
        } else {
            Err(RollbackError::Failed(text))
        }
    }
}

fn message_of(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(_, Some(m), _) => m.lines().next().unwrap_or_default().to_string(),
        other => other.to_string(),
    }
}

#[async_trait]
impl RpmOstree for DbusRpmOstree {
    async fn status(&self) -> Result<Status> {
        let sysroot = self.sysroot().await?;
        if let Err(e) = sysroot.reload().await {
            if service_absent(&e) {
                return Err(RollbackError::Absent(e.to_string()).into());
            }
            return Err(e).context("reloading rpm-ostree's view of the sysroot");
        }
        let dicts = sysroot
            .deployments()
            .await
            .context("reading rpm-ostree deployments")?;
        let deployments = dicts
            .iter()
            .map(Deployment::from_dict)
            .collect::<Result<Vec<_>>>()?;
        Ok(Status::new(deployments))
    }

    async fn rollback(&self) -> Result<String> {
        let sysroot = self.sysroot().await?;
        // Read the starting point first: nothing can fail between registering and unregistering
        // but the transaction itself.
        let before = self.status().await?;
        let client = HashMap::from([("id", Variant::from("recoveryd"))]);
        match sysroot.register_client(client).await {
            Err(e) if service_absent(&e) => return Err(RollbackError::Absent(e.to_string()).into()),
            r => r.context("registering with rpm-ostree")?,
        }
        let result = self.transaction(&sysroot).await;
        let _ = sysroot.unregister_client(HashMap::new()).await;
        let text = result?;
        let after = self.status().await?;
        let from = before
            .deployments
            .first()
            .map(|d| d.id.clone())
            .unwrap_or_default();
        let to = after
            .deployments
            .first()
            .map(|d| d.id.clone())
            .unwrap_or_default();
        Ok(if text.is_empty() {
            format!("default deployment for the next boot: {from} -> {to}")
        } else {
            format!("default deployment for the next boot: {from} -> {to} ({text})")
        })
    }
}
