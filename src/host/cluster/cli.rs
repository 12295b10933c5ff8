//! The cluster's tools on this node (`crictl`, `crio`, `oc`, `cluster-backup.sh`,
//! `cluster-restore.sh`), every call through the command helper with its timeout and retries.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use serde::Serialize;

use super::Cluster;
use super::types::*;
use crate::host::command::{CommandOutput, CommandSpec, Programs, Tool};

/// The cluster's command-line tools on this node.
pub(crate) struct ClusterCli {
    pub programs: Arc<dyn Programs>,
    pub crictl: PathBuf,
    pub crio: PathBuf,
    pub oc: PathBuf,
    pub kubeconfig: PathBuf,
    pub timeout: Duration,
}

/// `oc patch --type=merge` of an operator resource: `{"spec": {"forceRedeploymentReason"}}`.
#[derive(Serialize)]
struct RedeployPatch<'a> {
    spec: RedeploySpec<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RedeploySpec<'a> {
    force_redeployment_reason: &'a str,
}

impl ClusterCli {
    fn crictl(&self) -> CommandSpec {
        CommandSpec::new(&self.crictl, self.timeout).tool(Tool::Crictl)
    }

    fn oc(&self) -> CommandSpec {
        CommandSpec::new(&self.oc, self.timeout)
            .tool(Tool::Oc)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
    }

    async fn list_containers(&self, retries: u32) -> Result<Vec<Container>> {
        let out = self
            .programs
            .run(
                &self
                    .crictl()
                    .args(["ps", "-o", "json"])
                    .retries(retries, Duration::from_secs(2)),
            )
            .await?;
        parse_containers(&out.stdout)
    }

    async fn get_operator(&self, resource: &str, retries: u32) -> Result<OperatorStatus> {
        let out = self
            .programs
            .run(
                &self
                    .oc()
                    .args(["get", resource, "cluster", "-o", "json"])
                    .retries(retries, Duration::from_secs(10)),
            )
            .await?;
        parse_operator(&out.stdout).with_context(|| format!("reading {resource}/cluster"))
    }
}

#[async_trait]
impl Cluster for ClusterCli {
    async fn containers(&self) -> Result<Vec<Container>> {
        self.list_containers(2).await
    }

    /// One try, for a caller that polls (and keeps the last error).
    async fn poll_containers(&self) -> Result<Vec<Container>> {
        self.list_containers(0).await
    }

    /// `crictl rmp -fa`: remove every pod.
    async fn remove_pods(&self) -> Result<CommandOutput> {
        let out = self
            .programs
            .run(
                &self
                    .crictl()
                    .args(["rmp", "-fa"])
                    .retries(2, Duration::from_secs(5)),
            )
            .await?;
        flushed(out).await
    }

    /// `crio wipe -f`: remove CRI-O's containers and images (crio must be stopped).
    async fn wipe(&self) -> Result<CommandOutput> {
        let out = self
            .programs
            .run(
                &CommandSpec::new(&self.crio, self.timeout)
                    .tool(Tool::CrioWipe)
                    .args(["wipe", "-f"]),
            )
            .await?;
        flushed(out).await
    }

    async fn all_containers(&self) -> Result<Vec<Container>> {
        let out = self
            .programs
            .run(
                &self
                    .crictl()
                    .args(["ps", "-a", "-o", "json"])
                    .retries(2, Duration::from_secs(2)),
            )
            .await?;
        parse_containers(&out.stdout)
    }

    async fn operator(&self, resource: &str) -> Result<OperatorStatus> {
        self.get_operator(resource, 3).await
    }

    /// One try, for a caller that polls (and keeps the last error).
    async fn poll_operator(&self, resource: &str) -> Result<OperatorStatus> {
        self.get_operator(resource, 0).await
    }

    /// Ask an operator to roll out a new revision (`forceRedeploymentReason`).
    async fn force_redeployment(&self, resource: &str, reason: &str) -> Result<CommandOutput> {
        let patch = serde_json::to_string(&RedeployPatch {
            spec: RedeploySpec {
                force_redeployment_reason: reason,
            },
        })?;
        Ok(self
            .programs
            .run(
                &self
                    .oc()
                    .args(["patch", resource, "cluster", "--type=merge", "-p", &patch])
                    .retries(3, Duration::from_secs(10)),
            )
            .await?)
    }

    /// The cluster's id and version, if the API answers.
    async fn cluster_version(&self) -> Result<ClusterVersion> {
        let out = self
            .programs
            .run(
                &self
                    .oc()
                    .args(["get", "clusterversion", "version", "-o", "json"]),
            )
            .await?;
        parse_cluster_version(&out.stdout)
    }

    /// Run `cluster-backup.sh` or `cluster-restore.sh` (never retried: they are not idempotent
    /// halfway through; the step that calls them decides).
    async fn script(
        &self,
        script: &Path,
        args: &[&str],
        timeout: Duration,
    ) -> Result<CommandOutput> {
        let spec = CommandSpec::new(script, timeout)
            .tool(Tool::ClusterScript)
            .args(args.iter().copied())
            .env("KUBECONFIG", &self.kubeconfig.display().to_string());
        let out = self.programs.run(&spec).await?;
        flushed(out).await
    }
}

/// What a tool changed on disk, flushed before its step is journaled done. The tools do not
/// sync (cluster-restore.sh moves etcd's data directory and the static pod manifests with
/// `mv`): without this, a power cut after the step could lose the change while the journal
/// says it happened, and the resumed recovery would go on from a cluster that was never
/// restored (seen in the VM tier: a cut after cluster-restore lost its effect). The tool may
/// have written anywhere, so every file system is flushed, as sync(1) does.
async fn flushed(out: CommandOutput) -> Result<CommandOutput> {
    tokio::task::spawn_blocking(rustix::fs::sync)
        .await
        .context("flushing what the tool wrote")?;
    Ok(out)
}
