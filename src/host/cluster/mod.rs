//! The cluster's tools, behind one trait like every other side effect: the plans call
//! [`Cluster`]; [`ClusterCli`] runs the real commands; what they answer is parsed in [`types`].

mod cli;
pub(crate) mod types;

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;

pub(crate) use cli::ClusterCli;
pub(crate) use types::*;

use super::command::CommandOutput;

#[async_trait]
pub(crate) trait Cluster: Send + Sync {
    /// `crictl ps`, retried.
    async fn containers(&self) -> Result<Vec<Container>>;
    /// `crictl ps`, one try, for a caller that polls (and keeps the last error).
    async fn poll_containers(&self) -> Result<Vec<Container>>;
    /// `crictl rmp -fa`: remove every pod.
    async fn remove_pods(&self) -> Result<CommandOutput>;
    /// `crio wipe -f`: remove CRI-O's containers and images (crio must be stopped).
    async fn wipe(&self) -> Result<CommandOutput>;
    /// `crictl ps -a`: every container CRI-O knows, running or not (whose images are in use).
    async fn all_containers(&self) -> Result<Vec<Container>>;
    /// An operator resource's status (`etcd`, `kubeapiserver`, ...), retried.
    async fn operator(&self, resource: &str) -> Result<OperatorStatus>;
    /// The same, one try, for a caller that polls.
    async fn poll_operator(&self, resource: &str) -> Result<OperatorStatus>;
    /// Ask an operator to roll out a new revision (`forceRedeploymentReason`).
    async fn force_redeployment(&self, resource: &str, reason: &str) -> Result<CommandOutput>;
    /// The cluster's id and version, if the API answers.
    async fn cluster_version(&self) -> Result<ClusterVersion>;
    /// Run `cluster-backup.sh` or `cluster-restore.sh` (never retried: they are not idempotent
    /// halfway through; the step that calls them decides).
    async fn script(
        &self,
        script: &Path,
        args: &[&str],
        timeout: Duration,
    ) -> Result<CommandOutput>;
}
