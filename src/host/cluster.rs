//! The cluster's tools (`crictl`, `crio`, `oc`, `podman`, `cluster-backup.sh`,
//! `cluster-restore.sh`): every call through the command helper, every JSON answer parsed into
//! types. Parsing is separate from running, and tested on captured-shape fixtures.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::command::{CommandOutput, CommandSpec, Programs};

/// `crictl ps -o json`.
#[derive(Debug, Deserialize)]
pub struct ContainerList {
    #[serde(default)]
    pub containers: Vec<Container>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub id: String,
    #[serde(default)]
    pub pod_sandbox_id: String,
    pub metadata: ContainerMetadata,
    pub state: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub image_ref: String,
    #[serde(default)]
    pub labels: HashMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ContainerMetadata {
    pub name: String,
    #[serde(default)]
    pub attempt: u32,
}

pub const RUNNING: &str = "CONTAINER_RUNNING";

/// `crictl images -o json`.
#[derive(Debug, Deserialize)]
pub struct ImageList {
    #[serde(default)]
    pub images: Vec<Image>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    pub id: String,
    #[serde(default)]
    pub repo_tags: Vec<String>,
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// protojson writes uint64 as a string.
    #[serde(default)]
    pub size: String,
}

impl Image {
    /// The name to save and load the image by: a tag if it has one, else its digest reference.
    pub fn reference(&self) -> Option<&str> {
        self.repo_tags
            .first()
            .or_else(|| self.repo_digests.first())
            .map(String::as_str)
    }
}

/// An operator resource (`oc get etcd cluster -o json`): its revisions.
#[derive(Debug, Clone, Deserialize)]
pub struct OperatorResource {
    pub status: OperatorStatus,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorStatus {
    #[serde(default)]
    pub latest_available_revision: i64,
    #[serde(default)]
    pub node_statuses: Vec<NodeStatus>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub node_name: String,
    #[serde(default)]
    pub current_revision: i64,
}

impl OperatorStatus {
    /// The current revision on `node`; with one node and no match, that node's (SNO).
    pub fn current_revision(&self, node: &str) -> Option<i64> {
        self.node_statuses
            .iter()
            .find(|s| s.node_name == node)
            .or(if self.node_statuses.len() == 1 {
                self.node_statuses.first()
            } else {
                None
            })
            .map(|s| s.current_revision)
    }
}

/// `oc get clusterversion version -o json`: who the cluster is.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterVersion {
    pub spec: ClusterVersionSpec,
    #[serde(default)]
    pub status: Option<ClusterVersionStatus>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterVersionSpec {
    #[serde(rename = "clusterID")]
    pub cluster_id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClusterVersionStatus {
    pub desired: Release,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Release {
    pub version: String,
}

pub fn parse_containers(json: &[u8]) -> Result<Vec<Container>> {
    Ok(serde_json::from_slice::<ContainerList>(json)
        .context("parsing `crictl ps -o json`")?
        .containers)
}

pub fn parse_images(json: &[u8]) -> Result<Vec<Image>> {
    Ok(serde_json::from_slice::<ImageList>(json)
        .context("parsing `crictl images -o json`")?
        .images)
}

pub fn parse_operator(json: &[u8]) -> Result<OperatorStatus> {
    Ok(serde_json::from_slice::<OperatorResource>(json)
        .context("parsing an operator resource")?
        .status)
}

pub fn parse_cluster_version(json: &[u8]) -> Result<ClusterVersion> {
    serde_json::from_slice(json).context("parsing the clusterversion")
}

/// The id of the running container with this name, if any.
pub fn running_id<'a>(containers: &'a [Container], name: &str) -> Option<&'a str> {
    containers
        .iter()
        .filter(|c| c.metadata.name == name && c.state == RUNNING)
        .max_by_key(|c| c.created_at.parse::<u128>().unwrap_or(0))
        .map(|c| c.id.as_str())
}

/// The cluster's command-line tools on this node.
pub struct Cluster {
    pub programs: Arc<dyn Programs>,
    pub crictl: PathBuf,
    pub crio: PathBuf,
    pub oc: PathBuf,
    pub podman: PathBuf,
    pub kubeconfig: PathBuf,
    pub timeout: Duration,
}

impl Cluster {
    fn crictl(&self) -> CommandSpec {
        CommandSpec::new(&self.crictl, self.timeout)
    }

    fn oc(&self) -> CommandSpec {
        CommandSpec::new(&self.oc, self.timeout)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
    }

    pub async fn containers(&self) -> Result<Vec<Container>> {
        self.list_containers(2).await
    }

    /// One try, for a caller that polls (and keeps the last error).
    pub async fn poll_containers(&self) -> Result<Vec<Container>> {
        self.list_containers(0).await
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

    /// `crictl rmp -fa`: remove every pod.
    pub async fn remove_pods(&self) -> Result<CommandOutput> {
        Ok(self
            .programs
            .run(
                &self
                    .crictl()
                    .args(["rmp", "-fa"])
                    .retries(2, Duration::from_secs(5)),
            )
            .await?)
    }

    /// `crio wipe -f`: remove CRI-O's containers and images (crio must be stopped).
    pub async fn wipe(&self) -> Result<CommandOutput> {
        Ok(self
            .programs
            .run(&CommandSpec::new(&self.crio, self.timeout).args(["wipe", "-f"]))
            .await?)
    }

    pub async fn images(&self) -> Result<Vec<Image>> {
        let out = self
            .programs
            .run(
                &self
                    .crictl()
                    .args(["images", "-o", "json"])
                    .retries(2, Duration::from_secs(2)),
            )
            .await?;
        parse_images(&out.stdout)
    }

    /// Save images into one archive (`podman save --multi-image-archive`), within the
    /// caller's step limit (images take far longer than the other commands).
    pub async fn save_images(
        &self,
        references: &[String],
        archive: &Path,
        timeout: Duration,
    ) -> Result<CommandOutput> {
        let spec = CommandSpec::new(&self.podman, timeout)
            .args([
                "save",
                "--multi-image-archive",
                "--format",
                "docker-archive",
                "-o",
            ])
            .arg(archive)
            .args(references.iter().map(String::as_str));
        Ok(self.programs.run(&spec).await?)
    }

    /// Load saved images back (`podman load`), so a restore needs no registry.
    pub async fn load_images(&self, archive: &Path, timeout: Duration) -> Result<CommandOutput> {
        let spec = CommandSpec::new(&self.podman, timeout)
            .args(["load", "-i"])
            .arg(archive);
        Ok(self.programs.run(&spec).await?)
    }

    pub async fn operator(&self, resource: &str) -> Result<OperatorStatus> {
        self.get_operator(resource, 3).await
    }

    /// One try, for a caller that polls (and keeps the last error).
    pub async fn poll_operator(&self, resource: &str) -> Result<OperatorStatus> {
        self.get_operator(resource, 0).await
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

    /// Ask an operator to roll out a new revision (`forceRedeploymentReason`).
    pub async fn force_redeployment(&self, resource: &str, reason: &str) -> Result<CommandOutput> {
        let patch = serde_json::json!({"spec": {"forceRedeploymentReason": reason}}).to_string();
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
    pub async fn cluster_version(&self) -> Result<ClusterVersion> {
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
    pub async fn script(
        &self,
        script: &Path,
        args: &[&str],
        timeout: Duration,
    ) -> Result<CommandOutput> {
        let spec = CommandSpec::new(script, timeout)
            .args(args.iter().copied())
            .env("KUBECONFIG", &self.kubeconfig.display().to_string());
        Ok(self.programs.run(&spec).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn containers() {
        let c = parse_containers(&fixture("crictl-ps.json")).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(
            running_id(&c, "etcd"),
            Some("7b2f1c9e4d3a8b6f5e0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a6f7e8d9c0b1a2f")
        );
        assert_eq!(
            running_id(&c, "etcd-operator"),
            None,
            "exited containers do not count"
        );
        assert_eq!(running_id(&c, "kube-apiserver-operator"), None);
        assert_eq!(c[0].metadata.attempt, 2);
        assert!(parse_containers(b"{\"containers\": [{\"id\": 5}]}").is_err());
        assert!(parse_containers(b"{}").unwrap().is_empty());
    }

    #[test]
    fn images() {
        let i = parse_images(&fixture("crictl-images.json")).unwrap();
        assert_eq!(i.len(), 2);
        assert_eq!(
            i[0].reference(),
            Some("quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:9f1c7e2a")
        );
        assert_eq!(i[1].reference(), Some("registry.k8s.io/pause:3.9"));
        assert_eq!(i[0].size, "412345678");
    }

    #[test]
    fn operators_and_version() {
        let s = parse_operator(&fixture("oc-get-etcd.json")).unwrap();
        assert_eq!(s.latest_available_revision, 7);
        assert_eq!(s.current_revision("sno.example.com"), Some(7));
        assert_eq!(s.current_revision("other"), Some(7), "single node");
        let v = parse_cluster_version(&fixture("oc-get-clusterversion.json")).unwrap();
        assert_eq!(v.spec.cluster_id, "3c9d7f1e-2b4a-4c8d-9e6f-5a1b2c3d4e5f");
        assert_eq!(v.status.unwrap().desired.version, "4.16.3");
    }
}
