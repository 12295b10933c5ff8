//! The recovery plan: check, restore files, reboot, restore the cluster, post-restore.
//! The step list, and what each step replaces of `upgrade-recovery.sh`, is in
//! `docs/architecture.md`.

use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;

use super::check::{CheckIdentity, VerifyBackup};
use super::cluster::{
    ClusterRestore, RecordContainers, RedeployOperators, RemovePods, WaitContainers, WipeCrio,
    node_state,
};
use super::context::PlanContext;
use super::deployment::{CheckDeployment, CheckNextBoot, expect_booted};
use super::restore::{RestoreStep, Trees};
use super::units::{DaemonReload, NodeUnit, Reboot, UnitStep, UnitVerb};
use super::vars::{NODE_STATE_AT_END, ROLLED_BACK, SELINUX_WAS_ENFORCING};
use crate::engine::{Cleanup, Plan, Prologue, StepContext};
use crate::journal::{RunKind, RunState};

pub(crate) const KUBELET_TREE: &str = "/var/lib/kubelet";

pub(crate) fn recovery_plan(cx: &Arc<PlanContext>) -> Plan {
    let unit = |name, stage, verb, unit| UnitStep {
        cx: cx.clone(),
        name,
        stage,
        verb,
        unit,
    };
    let restore = |name, stage, trees, extras| RestoreStep {
        cx: cx.clone(),
        name,
        stage,
        trees,
        extras,
        critical: true,
    };
    let mut p = Plan::new(RunKind::Recovery)
        // 1. check
        .step(VerifyBackup(cx.clone()))
        .step(CheckIdentity(cx.clone()))
        .step(CheckDeployment(cx.clone()))
        .step(Reboot {
            cx: cx.clone(),
            name: ROLLBACK_BARRIER,
            stage: "check",
            only_if_var: Some(ROLLED_BACK),
        })
        // 2. restore files
        .step(unit(
            "stop-kubelet",
            "restore-files",
            UnitVerb::Stop,
            NodeUnit::Kubelet,
        ))
        .step(RemovePods(cx.clone()))
        .step(unit(
            "stop-crio",
            "restore-files",
            UnitVerb::Stop,
            NodeUnit::Crio,
        ))
        .step(WipeCrio(cx.clone()))
        .step(restore(
            "restore-usr-local",
            "restore-files",
            Trees::Only(vec!["/usr/local".into()]),
            false,
        ))
        .step(restore(
            "restore-etc",
            "restore-files",
            Trees::Only(vec!["/etc".into()]),
            false,
        ))
        .step(restore(
            "restore-other-trees",
            "restore-files",
            Trees::Except(vec![
                "/etc".into(),
                "/usr/local".into(),
                KUBELET_TREE.into(),
            ]),
            false,
        ))
        .step(restore(
            "restore-extras",
            "restore-files",
            Trees::Only(Vec::new()),
            true,
        ))
        // The images' directories and files are back (restore-other-trees, restore-extras),
        // with CRI-O stopped and wiped: now the store's metadata may name them.
        .step(super::images::RestoreImageMetadata(cx.clone()))
        .step(DaemonReload(cx.clone()))
        .step(unit(
            "disable-kubelet",
            "restore-files",
            UnitVerb::Disable,
            NodeUnit::Kubelet,
        ))
        // 3. reboot
        .step(CheckNextBoot(cx.clone()))
        .step(Reboot {
            cx: cx.clone(),
            name: "reboot",
            stage: "reboot",
            only_if_var: None,
        })
        // 4. restore cluster (resumed at boot)
        .step(restore(
            "restore-kubelet",
            "restore-cluster",
            Trees::Only(vec![KUBELET_TREE.into()]),
            false,
        ))
        .step(unit(
            "start-crio",
            "restore-cluster",
            UnitVerb::Start,
            NodeUnit::Crio,
        ))
        .step(RecordContainers(cx.clone()))
        .step(ClusterRestore(cx.clone()))
        .step(unit(
            "enable-kubelet",
            "restore-cluster",
            UnitVerb::Enable,
            NodeUnit::Kubelet,
        ))
        .step(unit(
            "restart-kubelet",
            "restore-cluster",
            UnitVerb::Restart,
            NodeUnit::Kubelet,
        ))
        .step(unit(
            "restart-crio",
            "restore-cluster",
            UnitVerb::Restart,
            NodeUnit::Crio,
        ))
        .step(WaitContainers(cx.clone()))
        // 5. post-restore
        .step(RedeployOperators(cx.clone()));
    p.prologue = Some(Arc::new(ResumeChecks(cx.clone())));
    p.cleanup = Some(Arc::new(ReportNodeState(cx.clone())));
    p
}

/// Before any step of an invocation: repair what a crash left (SELinux permissive), and once
/// the run is past its rollback, check that the node runs the recovery's deployment.
pub(crate) struct ResumeChecks(pub Arc<PlanContext>);

/// The barrier after which the node must run the target deployment.
const ROLLBACK_BARRIER: &str = "reboot-after-rollback";

#[async_trait]
impl Prologue for ResumeChecks {
    async fn prologue(&self, cx: &StepContext) -> Result<()> {
        self.repair_selinux(cx)?;
        let past_rollback = cx
            .journal
            .last_attempt(cx.run, ROLLBACK_BARRIER)?
            .is_some_and(|l| l.state.is_complete());
        if past_rollback {
            expect_booted(&self.0, cx).await?;
        }
        Ok(())
    }
}

impl ResumeChecks {
    fn repair_selinux(&self, cx: &StepContext) -> Result<()> {
        if cx.get(&SELINUX_WAS_ENFORCING)? == Some(true) {
            if self.0.host.selinux.enforcing()? == Some(false) {
                self.0.host.selinux.set_enforcing(true)?;
                tracing::warn!(
                    recovery_run = cx.run,
                    "SELinux was left permissive by an interrupted step; set back to enforcing"
                );
            }
            cx.clear(&SELINUX_WAS_ENFORCING)?;
        }
        Ok(())
    }
}

/// When a recovery fails, record the state it leaves the node in, for the operator.
pub(crate) struct ReportNodeState(pub Arc<PlanContext>);

#[async_trait]
impl Cleanup for ReportNodeState {
    async fn cleanup(&self, cx: &StepContext, state: RunState) -> Result<String> {
        let units = node_state(&self.0).await;
        let selinux = match self.0.host.selinux.enforcing() {
            Ok(Some(true)) => "SELinux enforcing",
            Ok(Some(false)) => "SELinux permissive",
            Ok(None) => "SELinux absent",
            Err(_) => "SELinux unknown",
        };
        let text = format!("after the recovery ended {state}: {units}; {selinux}");
        tracing::warn!(recovery_run = cx.run, "{text}");
        cx.set(&NODE_STATE_AT_END, &text)?;
        Ok(text)
    }
}
