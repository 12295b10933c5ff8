//! The read-only operations: verify a generation, what a restore would change, the dry run of
//! a recovery.

use crate::engine::{PreviewContext, step::gated};
use crate::files::backup::Hooks;
use crate::files::restore::{RestoreReport, Selection};
use crate::files::verify::VerifyReport;
use crate::protocol::inspect::{DryRun, DryRunStep, StoreCheck};
use crate::protocol::{ApiError, RecoverRequest};

use super::Ops;

impl Ops {
    /// Re-hash every stored file of a generation against its manifest.
    pub(crate) fn verify(&self, generation: Option<&str>) -> Result<VerifyReport, ApiError> {
        let g = self.generation(generation)?;
        let jh = crate::plans::PlanContext::journal_hash(&self.journal, &g.info.id);
        crate::files::verify::verify(
            &g,
            jh.as_deref(),
            None,
            self.config.backup.workers,
            &Hooks::none(),
        )
        .map_err(|e| ApiError::from_anyhow(&e))
    }

    /// What a restore of every tree and machine-config file of a generation would change.
    pub(crate) fn diff(
        &self,
        generation: Option<&str>,
    ) -> Result<(String, RestoreReport), ApiError> {
        let g = self.checked_generation(generation)?;
        let m = crate::plans::restore::trusted_manifest(&g, Some(&self.journal))
            .map_err(|e| ApiError::from_anyhow(&e))?;
        let trees: Vec<String> = m.header.trees.iter().map(|t| t.path.clone()).collect();
        let sel = Selection {
            trees: &trees,
            extras: true,
        };
        let r = crate::files::restore::diff(&self.config.root, &g, &m, &sel, &Hooks::none())
            .map_err(|e| ApiError::from_anyhow(&e))?;
        Ok((g.info.id, r))
    }

    /// What restoring generation `to` would change on a node that holds generation `from`.
    pub(crate) fn diff_generations(
        &self,
        from: &str,
        to: &str,
    ) -> Result<(String, String, Vec<crate::files::restore::Change>), ApiError> {
        let read = |id: &str| {
            let g = self.checked_generation(Some(id))?;
            let m = crate::plans::restore::trusted_manifest(&g, Some(&self.journal))
                .map_err(|e| ApiError::from_anyhow(&e))?;
            Ok::<_, ApiError>((g.info.id, m))
        };
        let (a, ma) = read(from)?;
        let (b, mb) = read(to)?;
        Ok((a, b, crate::files::restore::between(&ma, &mb)))
    }

    /// Every stage and step of a recovery and what it would change; nothing is changed.
    pub(crate) async fn dry_run(&self, r: &RecoverRequest) -> Result<DryRun, ApiError> {
        let new = self.recovery(r)?;
        let generation = new.options.generation.clone().unwrap_or_default();
        let pc = PreviewContext {
            config: self.config.clone(),
            journal: Some(self.journal.clone()),
            options: new.options,
        };
        let mut steps = Vec::new();
        for (index, s) in new.plan.steps.iter().enumerate() {
            let text = match gated(&self.config, s.needs()) {
                Some(reason) => format!("{} (skipped: {reason})", s.describe()),
                None => s
                    .preview(&pc)
                    .await
                    .unwrap_or_else(|e| format!("{} (preview failed: {e:#})", s.describe())),
            };
            steps.push(DryRunStep {
                index,
                stage: s.stage().to_string(),
                step: s.name().to_string(),
                text,
            });
        }
        Ok(DryRun { generation, steps })
    }
}

impl Ops {
    /// Check the whole store: every generation's manifest and objects (present, or re-hashed
    /// with `read_data`), what under `generations/` is unreadable, and the orphans.
    pub(crate) fn check(&self, read_data: bool) -> Result<StoreCheck, ApiError> {
        let failed = |e: anyhow::Error| ApiError::from_anyhow(&e);
        let store = &self.plans.store;
        let unreadable = store.unreadable().map_err(failed)?;
        let nothing = std::collections::HashSet::new();
        let mut generations = Vec::new();
        for g in store.list().map_err(failed)? {
            let jh = crate::plans::PlanContext::journal_hash(&self.journal, &g.info.id);
            let only = if read_data { None } else { Some(&nothing) };
            let r = crate::files::verify::verify(
                &g,
                jh.as_deref(),
                only,
                self.config.backup.workers,
                &Hooks::none(),
            )
            .map_err(failed)?;
            generations.push(r);
        }
        let (orphans, orphan_bytes) = if unreadable.is_empty() {
            store.orphans().map_err(failed)?
        } else {
            (Vec::new(), 0)
        };
        Ok(StoreCheck {
            read_data,
            ok: unreadable.is_empty() && generations.iter().all(|g| g.ok),
            generations,
            orphans,
            orphan_bytes,
            unreadable,
        })
    }

    /// Remove the objects no generation refers to, under the run lock.
    pub(crate) fn gc(&self) -> Result<crate::files::store::GcStats, ApiError> {
        let _lock = self.lock()?;
        self.plans
            .store
            .gc(&|| Ok(()))
            .map_err(|e| ApiError::from_anyhow(&e))
    }
}

impl Ops {
    /// A file restore that is not a run: into another directory (`target`), or only what it
    /// would do (`dry_run`, in place or into `target`). Only `paths` when given.
    pub(crate) fn restore_elsewhere(
        &self,
        generation: Option<&str>,
        paths: &[String],
        target: Option<&std::path::Path>,
        dry_run: bool,
    ) -> Result<(String, RestoreReport), ApiError> {
        let invalid = |e: anyhow::Error| ApiError::InvalidArgs(format!("{e:#}"));
        let g = self.checked_generation(generation)?;
        let mut m = crate::plans::restore::trusted_manifest(&g, Some(&self.journal))
            .map_err(|e| ApiError::from_anyhow(&e))?;
        if !paths.is_empty() {
            m = crate::files::restore::narrow(&m, paths)
                .map_err(invalid)?
                .into();
        }
        let root = match target {
            Some(t) => {
                std::fs::create_dir_all(t)
                    .map_err(|e| ApiError::Failed(format!("creating {}: {e}", t.display())))?;
                let canon = |p: &std::path::Path| std::fs::canonicalize(p).ok();
                if canon(t).is_some() && canon(t) == canon(&self.config.root) {
                    return Err(ApiError::InvalidArgs(format!(
                        "--target {} is the node itself; leave --target out to restore in place",
                        t.display()
                    )));
                }
                m = crate::files::restore::for_target(std::sync::Arc::unwrap_or_clone(m)).into();
                // The directories above each tree: a target starts empty.
                for tree in &m.header.trees {
                    let rel = tree.path.trim_start_matches('/');
                    if let Some(parent) = std::path::Path::new(rel).parent() {
                        std::fs::create_dir_all(t.join(parent)).map_err(|e| {
                            ApiError::Failed(format!("creating {}: {e}", t.join(parent).display()))
                        })?;
                    }
                }
                t.to_path_buf()
            }
            None => self.config.root.clone(),
        };
        let trees: Vec<String> = m.header.trees.iter().map(|t| t.path.clone()).collect();
        let sel = Selection {
            trees: &trees,
            extras: true,
        };
        let r = if dry_run {
            crate::files::restore::diff(&root, &g, &m, &sel, &Hooks::none())
        } else {
            crate::files::restore::restore(&root, &g, &m, &sel, &Hooks::none())
        }
        .map_err(|e| ApiError::from_anyhow(&e))?;
        Ok((g.info.id, r))
    }
}
