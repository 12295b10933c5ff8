//! systemd over D-Bus (`org.freedesktop.systemd1`): units started, stopped and restarted with
//! a race-free wait for their job, daemon-reload, enable/disable, unit states.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use futures_util::StreamExt;
use zbus::OwnedObjectPath;
use zbus::proxy::CacheProperties;

use super::bus::{SystemBus, error_name};

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
pub(crate) trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reload(&self) -> zbus::Result<()>;
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;
    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
    fn get_unit_file_state(&self, file: &str) -> zbus::Result<String>;
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, zbus::Variant<'_>)],
        aux: &[(&str, &[(&str, zbus::Variant<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    #[zbus(name = "GetUnitByPID")]
    fn get_unit_by_pid(&self, pid: u32) -> zbus::Result<OwnedObjectPath>;
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;
    fn unref_unit(&self, name: &str) -> zbus::Result<()>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
pub(crate) trait Unit {
    #[zbus(property)]
    fn id(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
}

/// What recoveryd asks of systemd.
#[async_trait]
pub trait Units: Send + Sync {
    async fn stop(&self, unit: &str) -> Result<String>;
    async fn start(&self, unit: &str) -> Result<String>;
    async fn restart(&self, unit: &str) -> Result<String>;
    /// `systemctl daemon-reload`.
    async fn reload(&self) -> Result<()>;
    async fn enable(&self, unit: &str) -> Result<String>;
    async fn disable(&self, unit: &str) -> Result<String>;
    async fn active_state(&self, unit: &str) -> Result<String>;
    async fn unit_file_state(&self, unit: &str) -> Result<String>;
}

/// A unit job that ended other than `done`.
#[derive(Debug, thiserror::Error)]
#[error("{verb} {unit}: systemd job ended `{result}`")]
pub struct JobFailed {
    pub verb: &'static str,
    pub unit: String,
    pub result: String,
}

pub struct DbusUnits {
    bus: std::sync::Arc<SystemBus>,
    job_timeout: Duration,
}

#[derive(Clone, Copy)]
enum Verb {
    Start,
    Stop,
    Restart,
}

impl Verb {
    fn word(self) -> &'static str {
        match self {
            Verb::Start => "starting",
            Verb::Stop => "stopping",
            Verb::Restart => "restarting",
        }
    }
}

impl DbusUnits {
    pub fn new(bus: std::sync::Arc<SystemBus>, job_timeout: Duration) -> DbusUnits {
        DbusUnits { bus, job_timeout }
    }

    async fn manager(&self) -> Result<ManagerProxy<'static>> {
        Ok(ManagerProxy::new(self.bus.get().await?).await?)
    }

    /// Subscribe, open the JobRemoved stream, then call: a JobRemoved that arrives before the
    /// method reply is already buffered in the stream.
    async fn job(&self, verb: Verb, unit: &str) -> Result<String> {
        let m = self.manager().await?;
        if let Err(e) = m.subscribe().await
            && error_name(&e).as_deref() != Some("org.freedesktop.systemd1.AlreadySubscribed")
        {
            return Err(e).context("subscribing to systemd's job signals");
        }
        let mut removed = m.receive_job_removed().await?;
        let call = match verb {
            Verb::Start => m.start_unit(unit, "replace").await,
            Verb::Stop => m.stop_unit(unit, "replace").await,
            Verb::Restart => m.restart_unit(unit, "replace").await,
        };
        let job = call.with_context(|| format!("{} {unit}", verb.word()))?;
        let wait = async {
            while let Some(sig) = removed.next().await {
                let args = sig.args()?;
                if args.job == job {
                    return Ok::<String, anyhow::Error>(args.result);
                }
            }
            bail!(
                "the bus connection closed while waiting for the {} job of {unit}",
                verb.word()
            )
        };
        let result = tokio::time::timeout(self.job_timeout, wait)
            .await
            .with_context(|| {
                format!(
                    "{} {unit}: systemd job {} did not finish within {:?}",
                    verb.word(),
                    job.as_str(),
                    self.job_timeout
                )
            })??;
        match (verb, result.as_str()) {
            (_, "done") => {}
            // Nothing to stop: the unit was not running.
            (Verb::Stop, "skipped") => {}
            _ => {
                return Err(JobFailed {
                    verb: verb.word(),
                    unit: unit.to_string(),
                    result,
                }
                .into());
            }
        }
        let state = self.active_state(unit).await?;
        match verb {
            Verb::Start | Verb::Restart if state == "failed" || state == "inactive" => {
                bail!(
                    "{} {unit}: the job was done but the unit is {state}",
                    verb.word()
                )
            }
            _ => Ok(format!("{unit} {state}")),
        }
    }

    async fn unit_proxy(&self, unit: &str) -> Result<UnitProxy<'static>> {
        let m = self.manager().await?;
        let path = m
            .load_unit(unit)
            .await
            .with_context(|| format!("loading {unit}"))?;
        Ok(UnitProxy::builder(self.bus.get().await?)
            .path(path)
            .cache_properties(CacheProperties::No)
            .build()
            .await?)
    }
}

#[async_trait]
impl Units for DbusUnits {
    async fn stop(&self, unit: &str) -> Result<String> {
        self.job(Verb::Stop, unit).await
    }

    async fn start(&self, unit: &str) -> Result<String> {
        self.job(Verb::Start, unit).await
    }

    async fn restart(&self, unit: &str) -> Result<String> {
        self.job(Verb::Restart, unit).await
    }

    async fn reload(&self) -> Result<()> {
        self.manager()
            .await?
            .reload()
            .await
            .context("systemd daemon-reload")
    }

    async fn enable(&self, unit: &str) -> Result<String> {
        let m = self.manager().await?;
        let (_, changes) = m
            .enable_unit_files(&[unit], false, false)
            .await
            .with_context(|| format!("enabling {unit}"))?;
        flush_changes(&changes)?;
        m.reload()
            .await
            .context("systemd daemon-reload after enabling")?;
        Ok(describe_changes(unit, "enabled", &changes))
    }

    async fn disable(&self, unit: &str) -> Result<String> {
        let m = self.manager().await?;
        let changes = m
            .disable_unit_files(&[unit], false)
            .await
            .with_context(|| format!("disabling {unit}"))?;
        flush_changes(&changes)?;
        m.reload()
            .await
            .context("systemd daemon-reload after disabling")?;
        Ok(describe_changes(unit, "disabled", &changes))
    }

    async fn active_state(&self, unit: &str) -> Result<String> {
        let u = self.unit_proxy(unit).await?;
        if u.load_state().await? == "not-found" {
            bail!("{unit} does not exist");
        }
        Ok(u.active_state().await?)
    }

    async fn unit_file_state(&self, unit: &str) -> Result<String> {
        self.manager()
            .await?
            .get_unit_file_state(unit)
            .await
            .with_context(|| format!("reading the unit file state of {unit}"))
    }
}

/// Make the symlinks systemd wrote or removed durable before the step is journaled done.
/// systemd does not flush them: after a power cut the step would be recorded as done while
/// the unit is still (or again) in its old state at the next boot (found in the VM tier: a
/// cut right after enable-kubelet left kubelet disabled once the recovery had finished).
fn flush_changes(changes: &[(String, String, String)]) -> Result<()> {
    use rustix::fs::{Mode, OFlags};
    let mut dirs: Vec<&std::path::Path> = changes
        .iter()
        .filter_map(|(_, file, _)| std::path::Path::new(file).parent())
        .collect();
    if dirs.is_empty() {
        // Nothing changed now, but an earlier try in this boot may have made the change and
        // failed before it was flushed: flush where systemd keeps the links anyway.
        dirs.push(std::path::Path::new("/etc/systemd/system"));
    }
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        // A .wants directory systemd removed with its last link: the nearest directory that
        // is still there is on the same file system, and syncfs flushes all of it.
        let Some((dir, fd)) = dir.ancestors().find_map(|d| {
            rustix::fs::open(
                d,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ok()
            .map(|fd| (d, fd))
        }) else {
            continue;
        };
        rustix::fs::syncfs(&fd).with_context(|| format!("flushing {}", dir.display()))?;
    }
    Ok(())
}

fn describe_changes(unit: &str, what: &str, changes: &[(String, String, String)]) -> String {
    if changes.is_empty() {
        format!("{unit} was already {what}")
    } else {
        let c: Vec<String> = changes
            .iter()
            .map(|(t, a, b)| format!("{t} {a} -> {b}"))
            .collect();
        format!("{unit} {what}: {}", c.join(", "))
    }
}
