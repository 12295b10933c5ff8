//! Keep the newest generations, and clean up after a backup that did not commit.

use std::sync::Arc;

use anyhow::{Context, Result};
use async_trait::async_trait;

use crate::engine::step::get_var;
use crate::engine::{Cleanup, Outcome, Step, StepContext};
use crate::files::store::Generation;
use crate::host::rpmostree::DeploymentRef;
use crate::journal::{Journal, RunKind, RunState};
use crate::plans::blocking;
use crate::plans::context::PlanContext;
use crate::plans::deployment::generation_deployment;
use crate::plans::vars::GENERATION;
use crate::text::human_bytes;

use super::{clean_store, generation_id};

/// Keep the newest `[backup] keep` generations, the protected ones, and any that a recovery
/// still needs or would need.
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
        // What a recovery would roll back to now: its newest generation is kept whatever
        // `keep` says (backups taken after a failed upgrade must not push it out).
        let rollback = if p.config.host.ostree {
            match p.host.rpm_ostree.status().await {
                Ok(s) => Ok(s.rollback().map(|d| d.key())),
                Err(e) => Err(format!("{e:#}")),
            }
        } else {
            Ok(None)
        };
        let bcx = cx.clone();
        let (removed, gc, kept) = blocking(move || {
            let cx = bcx;
            let new = generation_id(&cx)?;
            let clean = p.take_clean(cx.run, &new);
            let mut needed = vec![new.clone()];
            if let Some(g) = open_recovery_generation(&cx.journal)? {
                needed.push(g);
            }
            let gens = p.store.list()?;
            let (doomed, kept) = match &rollback {
                Ok(rollback) => {
                    let doomed: Vec<String> = to_prune(
                        &gens,
                        p.config.backup.keep as usize,
                        &needed,
                        rollback.as_ref(),
                    )
                    .into_iter()
                    .map(|g| g.info.id.clone())
                    .collect();
                    let kept = gens.len() - doomed.len();
                    (doomed, kept)
                }
                Err(e) => {
                    tracing::warn!(
                        "rpm-ostree does not say which deployment is the rollback ({e}); no generation is removed this time"
                    );
                    (Vec::new(), gens.len())
                }
            };
            let started = std::time::Instant::now();
            for id in &doomed {
                p.store.remove(id)?;
                cx.journal.mark_generation_pruned(id)?;
            }
            let removed = started.elapsed();
            // Their content, and anything else no generation refers to any more; nothing,
            // when none went and this backup added only objects its generation names to a
            // store its pre-flight had cleaned.
            let gc = match clean {
                Some(before) if doomed.is_empty() && p.store.collected_since(&before, &new)? => {
                    None
                }
                _ => Some(p.store.gc(&|| cx.checkpoint())?),
            };
            tracing::debug!(
                "prune: {} generations removed in {removed:?}, objects collected in {:?}",
                doomed.len(),
                started.elapsed() - removed
            );
            Ok((doomed, gc, kept))
        })
        .await?;
        // The pins recoveryd made for deployments no kept generation was taken on.
        let unpinned = crate::plans::deployment::unpin_unused(&self.0, cx).await?;
        let mut collected = match &gc {
            Some(gc) => format!(
                "{} unreferenced objects removed ({}), {} kept",
                gc.removed,
                human_bytes(gc.bytes),
                gc.kept
            ),
            None => "no objects to collect (the backup wrote only objects it names)".to_string(),
        };
        if !unpinned.is_empty() {
            collected.push_str("; ");
            collected.push_str(&unpinned.join(", "));
        }
        Ok(
            if removed.is_empty() && gc.is_none_or(|gc| gc.removed == 0) && unpinned.is_empty() {
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

/// The generation an open recovery works with: never removed while it is open.
pub(crate) fn open_recovery_generation(journal: &Journal) -> Result<Option<String>> {
    match journal.open_run(RunKind::Recovery)? {
        Some(r) => get_var(journal, r.id, &GENERATION),
        None => Ok(None),
    }
}

/// The generations retention removes (oldest first): those beyond the newest `keep`, except a
/// protected one, one in `needed` (the new backup's, an open recovery's), and the newest one
/// taken on `rollback`, the deployment a recovery would roll back to now.
pub(crate) fn to_prune<'a>(
    gens: &'a [Generation],
    keep: usize,
    needed: &[String],
    rollback: Option<&DeploymentRef>,
) -> Vec<&'a Generation> {
    let last_on_rollback = rollback.and_then(|r| {
        gens.iter()
            .rev()
            .find(|g| generation_deployment(&g.info).as_ref() == Some(r))
            .map(|g| g.info.id.as_str())
    });
    let n = gens.len();
    gens.iter()
        .enumerate()
        .filter(|(i, g)| {
            let newest_enough = n - i <= keep;
            !(newest_enough
                || g.marks.protected
                || needed.contains(&g.info.id)
                || last_on_rollback == Some(g.info.id.as_str()))
        })
        .map(|(_, g)| g)
        .collect()
}

/// On failure, timeout or cancellation: remove the partial generation and every object only
/// it referred to; the previous generation stays as it was, and the store holds nothing that
/// no generation refers to.
pub(crate) struct RemoveStaging(pub Arc<PlanContext>);

#[async_trait]
impl Cleanup for RemoveStaging {
    async fn cleanup(&self, cx: &StepContext, state: RunState) -> Result<String> {
        let p = self.0.clone();
        // What the pre-flight and the copy kept for steps that will not come.
        p.forget_backup();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::identity::{DeploymentIdentity, Identity};
    use crate::files::marks::Marks;
    use crate::files::store::GenerationInfo;

    fn generation(id: &str, checksum: &str, protected: bool) -> Generation {
        Generation {
            info: GenerationInfo {
                format: 1,
                id: id.into(),
                created: id.into(),
                manifest_hash: "0".repeat(64),
                entries: 1,
                bytes: 1,
                trees: Vec::new(),
                identity: Identity {
                    deployment: Some(DeploymentIdentity {
                        id: format!("rhcos-{checksum}.0"),
                        osname: "rhcos".into(),
                        checksum: checksum.into(),
                        serial: 0,
                        version: None,
                    }),
                    ..Default::default()
                },
                images: None,
            },
            dir: id.into(),
            objects: "objects".into(),
            marks: Marks {
                protected,
                label: None,
            },
        }
    }

    fn ids(gs: Vec<&Generation>) -> Vec<&str> {
        gs.into_iter().map(|g| g.info.id.as_str()).collect()
    }

    fn old_os() -> DeploymentRef {
        DeploymentRef {
            osname: "rhcos".into(),
            checksum: "aaa".into(),
            serial: 0,
        }
    }

    #[test]
    fn beyond_keep_goes_but_the_rollback_deployments_newest_stays() {
        // One backup on the old OS, then three after the upgrade to the new one.
        let gens = [
            generation("g1", "aaa", false),
            generation("g2", "aaa", false),
            generation("g3", "bbb", false),
            generation("g4", "bbb", false),
            generation("g5", "bbb", false),
        ];
        assert_eq!(ids(to_prune(&gens, 2, &[], None)), ["g1", "g2", "g3"]);
        assert_eq!(
            ids(to_prune(&gens, 2, &[], Some(&old_os()))),
            ["g1", "g3"],
            "g2 is the newest on the deployment a recovery would roll back to"
        );
    }

    #[test]
    fn protected_and_needed_generations_stay() {
        let gens = [
            generation("g1", "aaa", true),
            generation("g2", "aaa", false),
            generation("g3", "bbb", false),
            generation("g4", "bbb", false),
        ];
        assert_eq!(ids(to_prune(&gens, 1, &["g3".into()], None)), ["g2"]);
    }
}
