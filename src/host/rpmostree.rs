//! rpm-ostree over D-Bus (`org.projectatomic.rpmostree1`): the deployments, and two
//! transactions with the full client protocol (what `rpm-ostree rollback` and `rpm-ostree
//! cleanup -p` do): register, `Rollback({"reboot": false})` or `Cleanup(["pending-deploy"])` on
//! the OS object of the OS name concerned, a peer-to-peer connection to the returned address,
//! the signal stream opened before `Start`, wait for `Finished`, unregister. The daemon
//! vanishing from the bus mid-transaction, a transaction that never finishes, another
//! transaction or the sysroot lock in the way ("Transaction in progress", "System transaction in
//! progress"), polkit's refusal and a staged deployment in the way of a rollback are errors of
//! their own.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use futures_util::StreamExt;
use serde::Serialize;
use zbus::{OwnedObjectPath, OwnedVariant, Variant};

use super::bus::{SystemBus, error_name, service_absent};

pub(crate) const SERVICE: &str = "org.projectatomic.rpmostree1";
const TXN_IFACE: &str = "org.projectatomic.rpmostree1.Transaction";
/// `G_IO_ERROR_BUSY`: "Transaction in progress", or "System transaction in progress" while
/// something else (`ostree admin ...`) holds the sysroot lock.
const BUSY: &str = "org.gtk.GDBus.UnmappedGError.Quark._g_2dio_2derror_2dquark.Code26";
/// What polkit's refusal comes back as (`os_authorize_method`).
const DENIED: &str = "org.freedesktop.DBus.Error.AccessDenied";

#[zbus::proxy(
    interface = "org.projectatomic.rpmostree1.Sysroot",
    default_service = "org.projectatomic.rpmostree1",
    default_path = "/org/projectatomic/rpmostree1/Sysroot"
)]
pub(crate) trait Sysroot {
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
pub(crate) trait Os {
    fn rollback(&self, options: HashMap<&str, Variant<'_>>) -> zbus::Result<String>;
    fn cleanup(&self, elements: &[&str]) -> zbus::Result<String>;
    #[zbus(property)]
    fn default_deployment(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;
}

/// A deployment's identity: its OS name (stateroot), commit and serial. Two OS names can hold
/// the same commit at the same serial, so all three are needed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub(crate) struct DeploymentRef {
    pub osname: String,
    pub checksum: String,
    pub serial: i32,
}

impl std::fmt::Display for DeploymentRef {
    /// As rpm-ostree names deployments: `<osname>-<checksum>.<serial>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}.{}", self.osname, self.checksum, self.serial)
    }
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
    /// `<checksum>.<serial>`, as ostree names a deployment within its OS.
    pub fn csum_serial(&self) -> String {
        format!("{}.{}", self.checksum, self.serial)
    }

    pub(crate) fn key(&self) -> DeploymentRef {
        DeploymentRef {
            osname: self.osname.clone(),
            checksum: self.checksum.clone(),
            serial: self.serial,
        }
    }

    /// For messages: the id and the version.
    pub(crate) fn describe(&self) -> String {
        match &self.version {
            Some(v) => format!("{} (version {v})", self.id),
            None => self.id.clone(),
        }
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

/// All deployments in boot order (index 0 boots next), and which is booted, pending and
/// rollback for the booted OS.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub deployments: Vec<Deployment>,
    pub booted: Option<usize>,
    pub pending: Option<usize>,
    pub rollback: Option<usize>,
}

impl Status {
    pub fn new(deployments: Vec<Deployment>) -> Status {
        let booted = deployments.iter().position(|d| d.booted);
        let mut s = Status {
            deployments,
            booted,
            pending: None,
            rollback: None,
        };
        if let Some(b) = booted {
            let os = s.deployments[b].osname.clone();
            (s.pending, s.rollback) = s.pending_and_rollback(&os);
        }
        s
    }

    /// `ostree_sysroot_query_deployments_for(osname)`, as rpm-ostree computes them: passing
    /// over the booted deployment and other OS names, the first deployment of `osname` before
    /// the booted one is pending, the first after it the rollback.
    pub(crate) fn pending_and_rollback(&self, osname: &str) -> (Option<usize>, Option<usize>) {
        let (mut pending, mut rollback, mut found_booted) = (None, None, false);
        for (i, d) in self.deployments.iter().enumerate() {
            if Some(i) == self.booted {
                found_booted = true;
                continue;
            }
            if d.osname != osname {
                continue;
            }
            if !found_booted && pending.is_none() {
                pending = Some(i);
            }
            if found_booted && rollback.is_none() {
                rollback = Some(i);
            }
        }
        (pending, rollback)
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

    /// Where a deployment is in the boot order.
    pub(crate) fn find(&self, key: &DeploymentRef) -> Option<usize> {
        self.deployments.iter().position(|d| d.key() == *key)
    }
}

/// Errors a recovery decides on.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    /// Another transaction runs, or something holds the sysroot lock (`ostree admin`): G_IO_ERROR_BUSY.
    #[error("rpm-ostree is busy: {0}")]
    Busy(String),
    #[error("rpm-ostree has no rollback deployment")]
    NoRollback,
    /// A staged deployment (finalized at shutdown) is in the way of a rollback.
    #[error("rpm-ostree refuses to roll back while a deployment is staged: {0}")]
    Staged(String),
    /// polkit refused the caller (`rpmostreed OS operation ... not allowed for user`).
    #[error("rpm-ostree refused the request: {0}")]
    Denied(String),
    #[error(
        "rpm-ostree's daemon left the bus during the transaction (it likely crashed; see `journalctl -u rpm-ostreed`)"
    )]
    DaemonVanished,
    #[error("the rpm-ostree transaction did not finish within {0:?}")]
    Timeout(Duration),
    #[error("the rpm-ostree transaction failed: {0}")]
    Failed(String),
    #[error("rpm-ostree is not running on this host ({0})")]
    Absent(String),
}

/// Which transaction to run.
#[derive(Debug, Clone, Copy)]
enum Method {
    Rollback,
    CleanupPending,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Rollback => "rollback",
            Method::CleanupPending => "cleanup of the pending deployment",
        }
    }
}

#[async_trait]
pub trait RpmOstree: Send + Sync {
    async fn status(&self) -> Result<Status>;
    /// Make the rollback deployment of `osname` the default for the next boot (no reboot).
    async fn rollback(&self, osname: &str) -> Result<String>;
    /// Remove the pending deployments of `osname` (a staged one included; pinned ones stay):
    /// what `rpm-ostree cleanup -p` does.
    async fn cleanup_pending(&self, osname: &str) -> Result<String>;
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

    async fn transaction(
        &self,
        sysroot: &SysrootProxy<'static>,
        method: Method,
        osname: &str,
    ) -> Result<String, RollbackError> {
        let conn = self
            .bus
            .get()
            .await
            .map_err(|e| RollbackError::Failed(format!("{e:#}")))?;
        let failed = |e: zbus::Error| RollbackError::Failed(e.to_string());
        if sysroot.booted().await.map_err(failed)?.as_str() == "/" {
            return Err(RollbackError::Failed(
                "the system is not booted from an ostree deployment".into(),
            ));
        }
        let os_path = sysroot.get_os(osname).await.map_err(failed)?;
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
        let address = match method {
            Method::Rollback => {
                os.rollback(HashMap::from([("reboot", Variant::from(false))]))
                    .await
            }
            Method::CleanupPending => os.cleanup(&["pending-deploy"]).await,
        }
        .map_err(|e| match error_name(&e).as_deref() {
            Some(BUSY) => RollbackError::Busy(message_of(&e)),
            Some(DENIED) => RollbackError::Denied(message_of(&e)),
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
            tracing::info!(
                "attached to a {} transaction already in progress",
                method.name()
            );
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
                                "lost the system bus while waiting for the rpm-ostree transaction".into(),
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
        } else if text.contains("Staged deployment") {
            Err(RollbackError::Staged(text))
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

    async fn rollback(&self, osname: &str) -> Result<String> {
        let before = self.status().await?;
        let text = self.run(Method::Rollback, osname).await?;
        let after = self.status().await?;
        let first = |s: &Status| {
            s.deployments
                .first()
                .map(|d| d.id.clone())
                .unwrap_or_default()
        };
        let (from, to) = (first(&before), first(&after));
        Ok(if text.is_empty() {
            format!("default deployment for the next boot: {from} -> {to}")
        } else {
            format!("default deployment for the next boot: {from} -> {to} ({text})")
        })
    }

    async fn cleanup_pending(&self, osname: &str) -> Result<String> {
        let before = self.status().await?;
        self.run(Method::CleanupPending, osname).await?;
        let after = self.status().await?;
        let removed: Vec<String> = before
            .deployments
            .iter()
            .filter(|d| after.find(&d.key()).is_none())
            .map(|d| {
                if d.staged {
                    format!("{} (staged)", d.id)
                } else {
                    d.id.clone()
                }
            })
            .collect();
        Ok(if removed.is_empty() {
            format!("no pending deployment of {osname} to remove")
        } else {
            format!("removed the pending deployment(s) {}", removed.join(", "))
        })
    }
}

impl DbusRpmOstree {
    /// Register, run one transaction, unregister: nothing between registering and
    /// unregistering can fail but the transaction itself.
    async fn run(&self, method: Method, osname: &str) -> Result<String> {
        let sysroot = self.sysroot().await?;
        let client = HashMap::from([("id", Variant::from("recoveryd"))]);
        match sysroot.register_client(client).await {
            Err(e) if service_absent(&e) => return Err(RollbackError::Absent(e.to_string()).into()),
            r => r.context("registering with rpm-ostree")?,
        }
        let result = self.transaction(&sysroot, method, osname).await;
        let _ = sysroot.unregister_client(HashMap::new()).await;
        Ok(result?)
    }
}
