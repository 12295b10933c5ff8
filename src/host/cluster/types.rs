//! What the cluster's tools answer, parsed into types (`crictl ps`, `oc get` of an
//! operator and of the cluster version). Parsing is separate from running, and tested on
//! captured-shape fixtures.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// `crictl ps -o json`.
#[derive(Debug, Deserialize)]
pub(crate) struct ContainerList {
    #[serde(default)]
    pub containers: Vec<Container>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Container {
    pub id: String,
    #[serde(default)]
    pub pod_sandbox_id: String,
    pub metadata: ContainerMetadata,
    pub state: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub image_ref: String,
    /// The image as the pod spec names it (`{"image": "quay.io/...@sha256:..."}`).
    #[serde(default)]
    pub image: Option<ImageSpec>,
    #[serde(default)]
    pub labels: HashMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub(crate) struct ImageSpec {
    #[serde(default)]
    pub image: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub(crate) struct ContainerMetadata {
    pub name: String,
    #[serde(default)]
    pub attempt: u32,
}

pub(crate) const RUNNING: &str = "CONTAINER_RUNNING";

/// An operator resource (`oc get etcd cluster -o json`): its revisions.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct OperatorResource {
    pub status: OperatorStatus,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OperatorStatus {
    #[serde(default)]
    pub latest_available_revision: i64,
    #[serde(default)]
    pub node_statuses: Vec<NodeStatus>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeStatus {
    pub node_name: String,
    #[serde(default)]
    pub current_revision: i64,
}

impl OperatorStatus {
    /// The current revision on `node`; with one node and no match, that node's (SNO).
    pub(crate) fn current_revision(&self, node: &str) -> Option<i64> {
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
pub(crate) struct ClusterVersion {
    pub spec: ClusterVersionSpec,
    #[serde(default)]
    pub status: Option<ClusterVersionStatus>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClusterVersionSpec {
    #[serde(rename = "clusterID")]
    pub cluster_id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ClusterVersionStatus {
    pub desired: Release,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Release {
    pub version: String,
}

pub(crate) fn parse_containers(json: &[u8]) -> Result<Vec<Container>> {
    Ok(serde_json::from_slice::<ContainerList>(json)
        .context("parsing `crictl ps -o json`")?
        .containers)
}

pub(crate) fn parse_operator(json: &[u8]) -> Result<OperatorStatus> {
    Ok(serde_json::from_slice::<OperatorResource>(json)
        .context("parsing an operator resource")?
        .status)
}

pub(crate) fn parse_cluster_version(json: &[u8]) -> Result<ClusterVersion> {
    serde_json::from_slice(json).context("parsing the clusterversion")
}

/// The id of the running container with this name, if any.
pub(crate) fn running_id<'a>(containers: &'a [Container], name: &str) -> Option<&'a str> {
    containers
        .iter()
        .filter(|c| c.metadata.name == name && c.state == RUNNING)
        .max_by_key(|c| c.created_at.parse::<u128>().unwrap_or(0))
        .map(|c| c.id.as_str())
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
