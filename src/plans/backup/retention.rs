//! Keep the newest generations, and clean up after a backup that did not commit.

use std::sync::Arc;

use anyhow::{Context, Result};
use async_trait::async_trait;

use crate::engine::step::get_var;
use crate::engine::{Cleanup, Outcome, Step, StepContext};
use crate::journal::{RunKind, RunState};
use crate::plans::blocking;
use crate::plans::context::PlanContext;
use crate::plans::vars::GENERATION;
use crate::text::human_bytes;

use super::{clean_store, generation_id};

/// Keep the newest `[backup] keep` generations and any that a recovery still needs.
pub(crate) struct Prune(pub Arc<PlanContext>);

#[async_trait]
impl Step for Prune {
    fn name(&self) -> &'static str {
        "prune"
    }
    fn stage(&self) -> &'static str {
        "retention"
    }
    fn describe(&self) -> String {
        format!(
            "remove generations beyond the newest {}",
            self.0.config.backup.keep
        )
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let p = self.0.clone();
        let bcx = cx.clone();
        let (removed, gc, kept) = blocking(move || {
            let cx = bcx;
            let current = generation_id(&cx)?;
            let mut protected = vec![current.clone()];
            if let Some(r) = cx.journal.open_run(RunKind::Recovery)?
                && let Some(g) = get_var(&cx.journal, r.id, &GENERATION)?
            {
                protected.push(g);
            }
            let gens = p.store.list()?;
            let keep = p.config.backup.keep as usize;
            let mut removed = Vec::new();
            let n = gens.len();
            for (i, g) in gens.into_iter().enumerate() {
                let newest_enough = n - i <= keep;
                if newest_enough || protected.contains(&g.info.id) {
                    continue;
                }
                p.store.remove(&g.info.id)?;
                cx.journal.mark_generation_pruned(&g.info.id)?;
                removed.push(g.info.id);
            }
            // Their content, and anything else no generation refers to any more.
            let gc = p.store.gc(&|| cx.checkpoint())?;
            Ok((removed, gc, n.min(keep)))
        })
        .await?;
        // The pins recoveryd made for deployments no kept generation was taken on.
        let unpinned = crate::plans::deployment::unpin_unused(&self.0, cx).await?;
        let mut collected = format!(
            "{} unreferenced objects removed ({}), {} kept",
            gc.removed,
            human_bytes(gc.bytes),
            gc.kept
        );
        if !unpinned.is_empty() {
            collected.push_str("; ");
            collected.push_str(&unpinned.join(", "));
        }
        Ok(
            if removed.is_empty() && gc.removed == 0 && unpinned.is_empty() {
                Outcome::Skipped(format!(
                    "{kept} generation(s) kept, none to remove; {collected}"
                ))
            } else if removed.is_empty() {
                Outcome::Done(collected)
            } else {
                Outcome::Done(format!("removed {}; {collected}", removed.join(", ")))
            },
        )
    }
}

/// On failure, timeout or cancellation: remove the partial generation and every object only
/// it referred to; the previous generation stays as it was, and the store holds nothing that
/// no generation refers to.
pub(crate) struct RemoveStaging(pub Arc<PlanContext>);

#[async_trait]
impl Cleanup for RemoveStaging {
    async fn cleanup(&self, cx: &StepContext, state: RunState) -> Result<String> {
        let p = self.0.clone();
        let id = cx.get(&GENERATION)?;
        blocking(move || {
            let mut parts = Vec::new();
            if let Some(id) = &id {
                let staging = p.store.staging_path(id);
                if staging.exists() {
                    std::fs::remove_dir_all(&staging)
                        .with_context(|| format!("removing {}", staging.display()))?;
                    parts.push(format!("removed the partial generation {id}"));
                }
            }
            let freed = clean_store(&p, &|| Ok(()))?;
            if !freed.is_empty() {
                parts.push(freed);
            }
            let text = if parts.is_empty() {
                format!("backup ended {state}; nothing to clean up")
            } else {
                format!("backup ended {state}: {}", parts.join("; "))
            };
            Ok(text)
        })
        .await
    }
}
