//! The procedures as data: plans of named steps for the engine.

pub(crate) mod backup;
pub(crate) mod check;
pub(crate) mod cluster;
pub(crate) mod context;
pub(crate) mod deployment;
pub(crate) mod images;
pub(crate) mod recovery;
pub(crate) mod restore;
pub(crate) mod units;
pub(crate) mod vars;

#[cfg(test)]
mod placement_props;

use std::sync::Arc;

use anyhow::Result;

pub(crate) use context::PlanContext;

use crate::engine::{Plan, PlanKind, RunOptions};
use crate::files::store::{GenerationInfo, Store};
use crate::journal::{GenerationRecord, Journal, RunKind};

/// Run blocking work (file copies, hashing) off the async runtime; a panic in it propagates.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(anyhow::anyhow!("blocking task failed: {e}")),
    }
}

pub(crate) use recovery::recovery_plan;

/// The backup plan.
pub(crate) fn backup_plan(cx: &Arc<PlanContext>) -> Plan {
    let mut p = Plan::new(RunKind::Backup)
        .step(images::SelectImages(cx.clone()))
        .step(backup::Preflight(cx.clone()))
        .step(deployment::PinDeployment(cx.clone()))
        .step(cluster::ClusterBackup(cx.clone()))
        .step(backup::CopyFiles(cx.clone()))
        .step(backup::Commit(cx.clone()))
        .step(backup::VerifyGeneration(cx.clone()))
        .step(backup::Prune(cx.clone()));
    p.deadline = Some(cx.config.backup.deadline);
    p.cleanup = Some(Arc::new(backup::RemoveStaging(cx.clone())));
    p
}

/// `recoveryctl restore-files`: put the trees and machine-config files back, nothing else.
pub(crate) fn restore_files_plan(cx: &Arc<PlanContext>) -> Plan {
    Plan::new(RunKind::Recovery).step(restore::RestoreStep {
        cx: cx.clone(),
        name: "restore-files",
        stage: "restore-files",
        trees: restore::Trees::All,
        extras: true,
        critical: false,
    })
}

/// The plan a run was created with, rebuilt from its kind and options (to resume it).
pub(crate) fn plan_for(kind: RunKind, options: &RunOptions, cx: &Arc<PlanContext>) -> Plan {
    match (kind, options.plan) {
        (RunKind::Backup, _) => backup_plan(cx),
        (RunKind::Recovery, PlanKind::RestoreFiles) => restore_files_plan(cx),
        (RunKind::Recovery, _) => recovery_plan(cx),
    }
}

/// Every step name of every plan (for validating `[steps.NAME]`).
pub(crate) fn known_step_names(cx: &Arc<PlanContext>) -> Vec<&'static str> {
    let mut v = backup_plan(cx).step_names();
    v.extend(restore_files_plan(cx).step_names());
    v.extend(recovery_plan(cx).step_names());
    v.sort();
    v.dedup();
    v
}

/// Remove what interrupted runs left in the store (staging, trash, half-written objects) and
/// every object no generation refers to; the caller holds the run lock.
pub(crate) fn clean_store(cx: &PlanContext) -> Result<String> {
    backup::clean_store(cx, &|| Ok(()))
}

/// The journal's record of a committed generation (by run `run`, or found on disk).
pub(crate) fn committed_record(info: &GenerationInfo, run: Option<i64>) -> GenerationRecord {
    GenerationRecord {
        id: info.id.clone(),
        run,
        state: "committed".into(),
        created: info.created.clone(),
        committed: String::new(),
        manifest_hash: info.manifest_hash.clone(),
        entries: info.entries as i64,
        bytes: info.bytes as i64,
        identity: serde_json::to_value(&info.identity).expect("identities serialize"),
    }
}

/// Record in the journal any committed generation it does not know (a crash between the
/// commit's rename and its journal record leaves one).
pub(crate) fn reconcile(journal: &Journal, store: &Store) -> Result<()> {
    for g in store.list()? {
        if journal.generation(&g.info.id)?.is_none() {
            tracing::info!("recording generation {} found on disk", g.info.id);
            journal.record_generation(&committed_record(&g.info, None))?;
        }
    }
    Ok(())
}
