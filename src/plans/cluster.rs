//! Steps that use the cluster's tools: etcd backup and restore, pods, CRI-O, containers and
//! operator redeployments (the images are in `images.rs`).

use crate::files::identity::ClusterIdentity;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use async_trait::async_trait;

use super::context::PlanContext;
use super::vars::{CONTAINERS_BEFORE, container_ready, redeploy_target, redeployed};
use crate::engine::{Integration, Json, Outcome, Step, StepContext};
use crate::host::cluster::running_id;

const CLUSTER: &[Integration] = &[Integration::Cluster];

/// `cluster-backup.sh` into the staging generation: etcd snapshot and static pod resources.
pub(crate) struct ClusterBackup(pub Arc<PlanContext>);

#[async_trait]
impl Step for ClusterBackup {
    fn needs(&self) -> &'static [Integration] {
        CLUSTER
    }
    fn name(&self) -> &'static str {
        "cluster-backup"
    }
    fn stage(&self) -> &'static str {
        "cluster"
    }
    fn describe(&self) -> String {
        format!(
            "run {} into the generation (etcd snapshot, static pod resources)",
            self.0.config.backup.cluster_backup.display()
        )
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let id = super::backup::generation_id(cx)?;
        let dir = self.0.store.staging_path(&id).join("cluster");
        // A retried attempt starts from an empty directory.
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let script = self
            .0
            .config
            .host_path(&self.0.config.backup.cluster_backup);
        let timeout = self.0.config.step_limits(self.name()).timeout;
        let dir_arg = dir.display().to_string();
        let args: Vec<&str> = if self.0.config.backup.cluster_backup_force {
            vec!["--force", &dir_arg]
        } else {
            vec![&dir_arg]
        };
        let out = self.0.host.cluster.script(&script, &args, timeout).await?;
        let produced: Vec<String> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let has = |prefix: &str| produced.iter().any(|n| n.starts_with(prefix));
        if !has("snapshot_") || !has("static_kuberesources_") {
            bail!(
                "{} succeeded but did not write an etcd snapshot and the static pod resources (found: {})",
                script.display(),
                produced.join(", ")
            );
        }
        // Who the cluster is, if its API answers.
        match self.0.host.cluster.cluster_version().await {
            Ok(v) => PlanContext::record_identity(cx, |id| {
                id.cluster = Some(ClusterIdentity {
                    id: v.spec.cluster_id,
                    version: v.status.map(|s| s.desired.version),
                })
            })?,
            Err(e) => tracing::warn!("the cluster version is not recorded: {e:#}"),
        }
        Ok(Outcome::Done(format!(
            "{} ({})",
            produced.join(", "),
            out.summary()
        )))
    }
}

/// `crictl rmp -fa`.
pub(crate) struct RemovePods(pub Arc<PlanContext>);

#[async_trait]
impl Step for RemovePods {
    fn needs(&self) -> &'static [Integration] {
        CLUSTER
    }
    fn name(&self) -> &'static str {
        "remove-pods"
    }
    fn stage(&self) -> &'static str {
        "restore-files"
    }
    fn describe(&self) -> String {
        "remove every pod (crictl rmp -fa)".into()
    }
    async fn run(&self, _cx: &StepContext) -> Result<Outcome> {
        match self.0.host.cluster.remove_pods().await {
            Ok(out) => Ok(Outcome::Done(out.summary())),
            Err(e) if !self.0.config.recovery.strict_wipe => Ok(not_fatal("crictl rmp -fa", &e)),
            Err(e) => {
                // On a broken node CRI-O may not answer; the wipe that follows removes the
                // pods' state anyway. Only a CRI-O that runs and refuses is an error.
                if self.0.config.host.systemd {
                    let crio = &self.0.config.host.crio_unit;
                    if let Ok(state) = self.0.host.units.active_state(crio).await
                        && state != "active"
                    {
                        return Ok(Outcome::Skipped(format!(
                            "{crio} is {state}, so there are no pods to remove ({e:#})"
                        )));
                    }
                }
                Err(e)
            }
        }
    }
}

/// `crio wipe -f`.
pub(crate) struct WipeCrio(pub Arc<PlanContext>);

#[async_trait]
impl Step for WipeCrio {
    fn needs(&self) -> &'static [Integration] {
        CLUSTER
    }
    fn name(&self) -> &'static str {
        "wipe-crio"
    }
    fn stage(&self) -> &'static str {
        "restore-files"
    }
    fn describe(&self) -> String {
        "wipe CRI-O's containers and images (crio wipe -f)".into()
    }
    async fn run(&self, _cx: &StepContext) -> Result<Outcome> {
        match self.0.host.cluster.wipe().await {
            Ok(out) => Ok(Outcome::Done(out.summary())),
            Err(e) if !self.0.config.recovery.strict_wipe => Ok(not_fatal("crio wipe -f", &e)),
            Err(e) => Err(e),
        }
    }
}

/// A failed clean-up command that the recovery goes past, as upgrade-recovery.sh does (it
/// ignores their exit codes): recorded with its output, and the step done.
/// `[recovery] strict_wipe = true` makes it fatal.
fn not_fatal(what: &str, e: &anyhow::Error) -> Outcome {
    tracing::warn!("{what} failed; going on as upgrade-recovery.sh does: {e:#}");
    Outcome::Done(format!(
        "{what} failed, not fatal ([recovery] strict_wipe = false, as upgrade-recovery.sh): {e:#}"
    ))
}

/// Note the ids of the control-plane containers, to know when they have been recreated.
pub(crate) struct RecordContainers(pub Arc<PlanContext>);

#[async_trait]
impl Step for RecordContainers {
    fn needs(&self) -> &'static [Integration] {
        CLUSTER
    }
    fn name(&self) -> &'static str {
        "record-containers"
    }
    fn stage(&self) -> &'static str {
        "restore-cluster"
    }
    fn describe(&self) -> String {
        format!(
            "note the ids of {}",
            self.0.config.recovery.containers.join(", ")
        )
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let running = self.0.host.cluster.containers().await?;
        let ids: BTreeMap<String, String> = self
            .0
            .config
            .recovery
            .containers
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    running_id(&running, n).unwrap_or_default().to_string(),
                )
            })
            .collect();
        cx.set(&CONTAINERS_BEFORE, &Json(ids.clone()))?;
        let shown: Vec<String> = ids
            .iter()
            .map(|(n, id)| {
                format!(
                    "{n}={}",
                    if id.is_empty() {
                        "-"
                    } else {
                        &id[..id.len().min(13)]
                    }
                )
            })
            .collect();
        Ok(Outcome::Done(shown.join(" ")))
    }
}

/// `cluster-restore.sh` on the generation's etcd backup.
pub(crate) struct ClusterRestore(pub Arc<PlanContext>);

#[async_trait]
impl Step for ClusterRestore {
    fn needs(&self) -> &'static [Integration] {
        CLUSTER
    }
    fn name(&self) -> &'static str {
        "cluster-restore"
    }
    fn stage(&self) -> &'static str {
        "restore-cluster"
    }
    fn describe(&self) -> String {
        format!(
            "run {} on the backup's etcd snapshot",
            self.0.config.recovery.cluster_restore.display()
        )
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let g = self.0.generation_for(cx)?;
        let dir = g.dir.join("cluster");
        anyhow::ensure!(
            dir.is_dir(),
            "generation {} holds no cluster backup",
            g.info.id
        );
        let script = self
            .0
            .config
            .host_path(&self.0.config.recovery.cluster_restore);
        let timeout = self.0.config.step_limits(self.name()).timeout;
        let out = super::restore::with_selinux_policy(&self.0, cx, async {
            self.0
                .host
                .cluster
                .script(&script, &[&dir.display().to_string()], timeout)
                .await
        })
        .await?;
        Ok(Outcome::Done(out.summary()))
    }
}

/// Wait for each control-plane container to run again with a new id.
pub(crate) struct WaitContainers(pub Arc<PlanContext>);

#[async_trait]
impl Step for WaitContainers {
    fn needs(&self) -> &'static [Integration] {
        CLUSTER
    }
    fn name(&self) -> &'static str {
        "wait-containers"
    }
    fn stage(&self) -> &'static str {
        "restore-cluster"
    }
    fn describe(&self) -> String {
        format!(
            "wait (up to {}s each) for {} to run again with new ids",
            self.0.config.recovery.container_timeout.as_secs(),
            self.0.config.recovery.containers.join(", ")
        )
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let before: BTreeMap<String, String> =
            cx.get(&CONTAINERS_BEFORE)?.map(|j| j.0).unwrap_or_default();
        let r = &self.0.config.recovery;
        let mut done = Vec::new();
        for name in &r.containers {
            let key = container_ready(name);
            if let Some(id) = cx.get(&key)? {
                done.push(format!("{name}={}", &id[..id.len().min(13)]));
                continue;
            }
            let old = before.get(name).cloned().unwrap_or_default();
            let failure = format!("{name} did not run again with a new id");
            let waited = poll_until(
                cx,
                r.poll_interval,
                r.container_timeout,
                &failure,
                || async {
                    let list = self.0.host.cluster.poll_containers().await?;
                    Ok(running_id(&list, name)
                        .filter(|id| *id != old)
                        .map(str::to_string))
                },
            )
            .await;
            let id = match waited {
                Ok(id) => id,
                Err(e) => bail!("{e:#}; {}", node_state(&self.0).await),
            };
            cx.set(&key, &id)?;
            done.push(format!("{name}={}", &id[..id.len().min(13)]));
        }
        Ok(Outcome::Done(format!("running again: {}", done.join(" "))))
    }
}

/// The state of kubelet and CRI-O, for error messages an operator acts on.
pub(crate) async fn node_state(cx: &PlanContext) -> String {
    if !cx.config.host.systemd {
        return "unit states unknown ([host] systemd = false)".into();
    }
    let mut parts = Vec::new();
    for unit in [&cx.config.host.kubelet_unit, &cx.config.host.crio_unit] {
        let active = cx
            .host
            .units
            .active_state(unit)
            .await
            .unwrap_or_else(|e| format!("unknown ({e:#})"));
        let file = cx
            .host
            .units
            .unit_file_state(unit)
            .await
            .unwrap_or_else(|_| "unknown".into());
        parts.push(format!("{unit} is {active} and {file}"));
    }
    parts.join(", ")
}

/// Force a new revision of each control-plane operator and wait for the node to run it.
pub(crate) struct RedeployOperators(pub Arc<PlanContext>);

#[async_trait]
impl Step for RedeployOperators {
    fn name(&self) -> &'static str {
        "redeploy-operators"
    }
    fn stage(&self) -> &'static str {
        "post-restore"
    }
    fn describe(&self) -> String {
        format!(
            "force a redeployment of {} and wait (up to {}s each) for the node to reach it",
            self.0.config.recovery.operators.join(", "),
            self.0.config.recovery.revision_timeout.as_secs()
        )
    }
    fn needs(&self) -> &'static [Integration] {
        CLUSTER
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let r = &self.0.config.recovery;
        let node = self.0.node_name().await;
        let mut report = Vec::new();
        for op in &r.operators {
            let done_key = redeployed(op);
            if let Some(rev) = cx.get(&done_key)? {
                report.push(format!("{op} at revision {rev}"));
                continue;
            }
            // The target is recorded before the patch, so that a crash after the patch does
            // not ask for (and wait on) a second revision.
            let target_key = redeploy_target(op);
            let (target, latest) = match cx.get(&target_key)? {
                Some(target) => {
                    let latest = self.0.host.cluster.operator(op).await?;
                    (target, latest.latest_available_revision)
                }
                None => {
                    let s = self.0.host.cluster.operator(op).await?;
                    let t = s.latest_available_revision + 1;
                    cx.set(&target_key, &t)?;
                    (t, s.latest_available_revision)
                }
            };
            if latest < target {
                let reason = format!(
                    "recovery-{}-run-{}",
                    humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
                    cx.run
                );
                self.0.host.cluster.force_redeployment(op, &reason).await?;
            }
            let failure = format!("{op} did not reach revision {target} on node {node}");
            let reached = poll_until(
                cx,
                r.poll_interval,
                r.revision_timeout,
                &failure,
                || async {
                    let s = self.0.host.cluster.poll_operator(op).await?;
                    Ok(s.current_revision(&node).filter(|cur| *cur >= target))
                },
            )
            .await?;
            cx.set(&done_key, &reached)?;
            report.push(format!("{op} at revision {reached}"));
        }
        Ok(Outcome::Done(report.join(", ")))
    }
}

/// Ask `check` every `interval` until it answers `Some`, for at most `limit`. A check that
/// fails (the API restarting) is tried again at the next interval; when time runs out, the
/// error is `failure` with the limit and the last failed check. Each check is bounded by the
/// time left.
async fn poll_until<T, F, Fut>(
    cx: &StepContext,
    interval: Duration,
    limit: Duration,
    failure: &str,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    let mut last_error: Option<anyhow::Error> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, check()).await {
            Ok(Ok(Some(v))) => return Ok(v),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::info!("still waiting ({failure} yet; the API may be restarting): {e:#}");
                last_error = Some(e);
            }
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            let last = last_error
                .map(|e| format!(" (last error: {e:#})"))
                .unwrap_or_default();
            bail!("{failure} within {}s{last}", limit.as_secs());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = cx.cancel.cancelled() => bail!("cancelled while waiting ({failure} yet)"),
        }
    }
}
