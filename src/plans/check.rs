//! The recovery's first checks: the backup is intact, and it belongs to this node.

use std::sync::Arc;

use anyhow::{Result, bail};
use async_trait::async_trait;

use super::blocking;
use super::context::{PlanContext, with_step_hooks};
use crate::engine::{Outcome, PreviewContext, Step, StepContext};
use crate::files::store::GenerationInfo;
use crate::files::verify;
use crate::journal::Journal;

/// Re-hash the whole generation against its manifest before anything is changed.
pub(crate) struct VerifyBackup(pub Arc<PlanContext>);

#[async_trait]
impl Step for VerifyBackup {
    fn name(&self) -> &'static str {
        "verify-backup"
    }
    fn stage(&self) -> &'static str {
        "check"
    }
    fn describe(&self) -> String {
        "verify every file of the backup against its manifest".into()
    }
    async fn preview(&self, _pc: &PreviewContext) -> Result<String> {
        Ok(format!("{} (read only)", self.describe()))
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let p = self.0.clone();
        let cx = cx.clone();
        blocking(move || {
            let g = p.generation_for(&cx)?;
            let jh = PlanContext::journal_hash(&cx.journal, &g.info.id);
            let r = with_step_hooks(&cx, Some("objects verified"), |hooks| {
                verify::verify(&g, jh.as_deref(), None, p.config.backup.workers, hooks)
            })?;
            if !r.ok {
                bail!(
                    "the backup cannot be trusted; nothing was changed. {}",
                    r.summary()
                );
            }
            Ok(Outcome::Done(r.summary()))
        })
        .await
    }
}

/// The journal format the recoveryd that took this generation reads (format 2 for every
/// generation taken before the record existed).
fn journal_format_read_by(g: &GenerationInfo) -> u32 {
    g.identity
        .recoveryd
        .as_ref()
        .map_or(2, |r| r.journal_format)
}

/// A recovery rolls back to the generation's OS, whose recoveryd resumes it after the reboot.
/// Refuse up front, before anything changes, when that recoveryd could not read this journal.
/// (With `--force` the node stays on the booted OS, so the question does not arise.)
pub(crate) fn journal_readable_after_rollback(g: &GenerationInfo, journal: &Journal) -> Result<()> {
    let reads = journal_format_read_by(g);
    let format = journal.schema_version()?;
    if format > reads {
        let who = g
            .identity
            .recoveryd
            .as_ref()
            .map(|r| format!("recoveryd {}", r.version))
            .unwrap_or_else(|| "an older recoveryd".into());
        let on = super::deployment::generation_deployment(g)
            .map(|d| format!(" on {d}"))
            .unwrap_or_default();
        bail!(
            "generation {} was taken by {who}{on}, which reads journal format {reads}; this journal \
             is format {format}, so after the rollback that recoveryd could not resume the recovery. \
             Nothing was changed. Recover with --force to stay on the booted OS, or move the journal \
             aside (the generations stay usable) before recovering",
            g.id
        );
    }
    Ok(())
}

/// Refuse a generation taken on another node or another cluster (unless `--allow-foreign`),
/// or one whose OS's recoveryd could not read this journal.
pub(crate) struct CheckIdentity(pub Arc<PlanContext>);

#[async_trait]
impl Step for CheckIdentity {
    fn name(&self) -> &'static str {
        "check-identity"
    }
    fn stage(&self) -> &'static str {
        "check"
    }
    fn describe(&self) -> String {
        "check that the backup was taken on this node and this cluster, and that the recoveryd of its OS can read this journal".into()
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let g = self.0.generation_for(cx)?;
        if !cx.options.force {
            journal_readable_after_rollback(&g.info, &cx.journal)?;
        }
        let id = &g.info.identity;
        let mut mismatches = Vec::new();
        let mut checked = Vec::new();
        let node_name = self.0.node_name().await;
        if let Some(h) = &id.hostname {
            checked.push("hostname");
            if *h != node_name {
                mismatches.push(format!("hostname {h} (this node: {node_name})"));
            }
        }
        if let (Some(m), Some(now)) = (&id.machine_id, self.0.host_file("/etc/machine-id")) {
            checked.push("machine-id");
            if *m != now {
                mismatches.push(format!("machine-id {m} (this node: {now})"));
            }
        }
        if let Some(cluster) = id.cluster.as_ref().map(|c| &c.id)
            && self.0.config.host.cluster
        {
            match self.0.host.cluster.cluster_version().await {
                Ok(v) => {
                    checked.push("cluster id");
                    if v.spec.cluster_id != *cluster {
                        mismatches.push(format!(
                            "cluster {cluster} (this cluster: {})",
                            v.spec.cluster_id
                        ));
                    }
                }
                Err(e) => tracing::warn!(
                    "the cluster id cannot be checked now (the API does not answer): {e:#}"
                ),
            }
        }
        if mismatches.is_empty() {
            return Ok(Outcome::Done(format!(
                "generation {} belongs to this node ({} checked)",
                g.info.id,
                if checked.is_empty() {
                    "nothing recorded".to_string()
                } else {
                    checked.join(", ")
                }
            )));
        }
        let what = format!(
            "generation {} was taken elsewhere: {}",
            g.info.id,
            mismatches.join("; ")
        );
        if cx.options.allow_foreign {
            tracing::warn!(
                recovery_run = cx.run,
                "{what}; going on because of --allow-foreign"
            );
            return Ok(Outcome::Done(format!(
                "{what} (accepted with --allow-foreign)"
            )));
        }
        bail!(
            "{what}. Nothing was changed; use --allow-foreign only if you are sure it belongs here"
        )
    }
}
