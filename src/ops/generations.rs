//! The generations as an operator sees and changes them: the list, protect, label, delete.
//! Changes take the run lock, so they never meet a backup's retention or a recovery.

use anyhow::Result;

use crate::files::marks::{Marks, check_label};
use crate::journal::RunLock;
use crate::protocol::ApiError;
use crate::protocol::inspect::{GenerationChange, GenerationEntry, Generations};
use crate::text::human_bytes;

use super::Ops;

fn failed(e: impl std::fmt::Display) -> ApiError {
    ApiError::Failed(format!("{e:#}"))
}

/// A change to a generation's marks.
pub(crate) enum Mark {
    Protect,
    Unprotect,
    Label(String),
}

impl Ops {
    /// Every committed generation, oldest first.
    pub(crate) fn generations(&self) -> Result<Generations, ApiError> {
        let gens = self.plans.store.list().map_err(failed)?;
        let newest = gens.last().map(|g| g.info.id.clone());
        let generations = gens
            .into_iter()
            .map(|g| GenerationEntry {
                short_id: g.short_id().to_string(),
                in_journal: self.journal.generation(&g.info.id).ok().flatten().is_some(),
                latest: newest.as_deref() == Some(g.info.id.as_str()),
                dir: g.dir,
                marks: g.marks,
                info: g.info,
            })
            .collect();
        Ok(Generations { generations })
    }

    /// The run lock, for a change to the store outside a run.
    pub(super) fn lock(&self) -> Result<RunLock, ApiError> {
        RunLock::acquire(&self.config.state_path()).map_err(|e| match e {
            crate::journal::LockError::Busy { holder } => ApiError::Busy(holder),
            e => failed(e),
        })
    }

    /// Protect, unprotect or label a generation.
    pub(crate) fn mark(&self, id: &str, change: Mark) -> Result<GenerationChange, ApiError> {
        let _lock = self.lock()?;
        let g = self.generation(Some(id))?;
        let mut marks: Marks = g.marks.clone();
        let message = match change {
            Mark::Protect => {
                marks.protected = true;
                "protected: retention and `generations delete` leave it".to_string()
            }
            Mark::Unprotect => {
                marks.protected = false;
                "no longer protected: retention may remove it".to_string()
            }
            Mark::Label(text) => {
                marks.label =
                    check_label(&text).map_err(|e| ApiError::InvalidArgs(e.to_string()))?;
                match &marks.label {
                    Some(l) => format!("labelled \"{l}\""),
                    None => "label removed".to_string(),
                }
            }
        };
        self.plans
            .store
            .set_marks(&g.info.id, &marks)
            .map_err(failed)?;
        Ok(GenerationChange {
            generation: g.info.id,
            message,
        })
    }

    /// Delete a generation and the content only it referred to. Never the one an open
    /// recovery uses; the newest (what a recovery uses by default) or a protected one only
    /// with `force`.
    pub(crate) fn delete(&self, id: &str, force: bool) -> Result<GenerationChange, ApiError> {
        let _lock = self.lock()?;
        let g = self.generation(Some(id))?;
        let id = g.info.id.clone();
        let open = crate::plans::backup::open_recovery_generation(&self.journal).map_err(failed)?;
        if open.as_deref() == Some(id.as_str()) {
            return Err(ApiError::Busy(format!(
                "generation {id} is the one the open recovery uses; cancel or finish the recovery first"
            )));
        }
        let newest = self.plans.store.latest().map_err(failed)?;
        if !force {
            if g.marks.protected {
                return Err(ApiError::InvalidArgs(format!(
                    "generation {id} is protected; `recoveryctl generations unprotect {id}` first, or add --force"
                )));
            }
            if newest.as_ref().is_some_and(|n| n.info.id == id) {
                return Err(ApiError::InvalidArgs(format!(
                    "generation {id} is the newest, the one a recovery uses by default; add --force to delete it anyway"
                )));
            }
        }
        self.plans.store.remove(&id).map_err(failed)?;
        self.journal.mark_generation_pruned(&id).map_err(failed)?;
        let gc = self.plans.store.gc(&|| Ok(())).map_err(failed)?;
        Ok(GenerationChange {
            generation: id,
            message: format!(
                "deleted; {} objects no generation refers to removed ({})",
                gc.removed,
                human_bytes(gc.bytes)
            ),
        })
    }
}
