//! Who a generation belongs to, as its `generation.json` records it: the node, the OS
//! deployment it was taken on, the cluster, and the recoveryd that took it. The backup fills it
//! in step by step (each step adds what it learns); the recovery's checks read it.
//!
//! Read from disk, so every field is optional and typed: a field of the wrong type makes the
//! generation unreadable (a clear error), a missing one means "not recorded", and keys a newer
//! recoveryd adds are kept as they are (`other`) so that rewriting the file loses nothing.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Identity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recoveryd: Option<RecoverydIdentity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<DeploymentIdentity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterIdentity>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// The recoveryd that took the generation: which journal format its OS's recoveryd reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RecoverydIdentity {
    pub version: String,
    pub journal_format: u32,
}

/// The booted OS deployment when the generation was taken (rpm-ostree's names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeploymentIdentity {
    pub id: String,
    pub osname: String,
    pub checksum: String,
    pub serial: i32,
    #[serde(default)]
    pub version: Option<String>,
}

/// The cluster, if its API answered during the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClusterIdentity {
    pub id: String,
    #[serde(default)]
    pub version: Option<String>,
}

impl Identity {
    /// This identity with what `later` recorded on top (a field `later` has wins).
    pub(crate) fn merged(mut self, later: Identity) -> Identity {
        macro_rules! take {
            ($($f:ident),*) => { $( if later.$f.is_some() { self.$f = later.$f; } )* };
        }
        take!(hostname, machine_id, recoveryd, deployment, cluster);
        self.other.extend(later.other);
        self
    }
}
