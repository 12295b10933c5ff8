//! The run variables the plans keep, each with its type: every key in one place.

use crate::files::containers::ImagesSection;
use crate::files::identity::Identity;
use std::collections::BTreeMap;

use crate::engine::{Json, Var};
use crate::host::rpmostree::DeploymentRef;

/// The generation the run works with (a backup's new one, a recovery's source).
pub(crate) const GENERATION: Var<String> = Var::new("generation");
/// Identity facts steps gathered for a backup's generation (a JSON object).
pub(crate) const IDENTITY: Var<Json<Identity>> = Var::new("identity");
/// The deployment a recovery makes the node boot: the generation's, or with `--force` the one
/// booted when the recovery started.
pub(crate) const TARGET: Var<Json<DeploymentRef>> = Var::new("target-deployment");
/// A reboot is needed to boot the target.
pub(crate) const ROLLED_BACK: Var<bool> = Var::new("rolled-back");
/// SELinux was enforcing before a step made it permissive (recorded before the switch).
pub(crate) const SELINUX_WAS_ENFORCING: Var<bool> = Var::new("selinux-was-enforcing");
/// What a failed recovery left the node like, for the operator.
pub(crate) const NODE_STATE_AT_END: Var<String> = Var::new("node-state-at-end");
/// The control-plane containers' ids before the etcd restore, by name.
pub(crate) const CONTAINERS_BEFORE: Var<Json<BTreeMap<String, String>>> =
    Var::new("containers-before");

/// A container seen running again with a new id.
pub(crate) fn container_ready(name: &str) -> Var<String> {
    Var::keyed("container-ready-", name)
}

/// The revision an operator's redeployment waits for (recorded before the patch).
pub(crate) fn redeploy_target(operator: &str) -> Var<i64> {
    Var::keyed("redeploy-target-", operator)
}

/// The revision an operator reached.
pub(crate) fn redeployed(operator: &str) -> Var<i64> {
    Var::keyed("redeployed-", operator)
}

/// The container images in use that this backup takes (`select-images`).
pub(crate) const IMAGES: Var<Json<ImagesSection>> = Var::new("images");
