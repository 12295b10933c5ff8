//! The file steps of the backup plan, one file per job: the pre-flight checks, the copy, the
//! commit and its verification, and retention (with the clean-up after a failed backup).

mod commit;
mod copy;
mod preflight;
mod retention;

pub(crate) use commit::{Commit, VerifyGeneration};
pub(crate) use copy::{CopyFiles, image_share};
pub(crate) use preflight::Preflight;
pub(crate) use retention::{Prune, RemoveStaging, open_recovery_generation};

use anyhow::{Context, Result};

use crate::engine::StepContext;
use crate::plans::context::PlanContext;
use crate::plans::vars::GENERATION;
use crate::text::human_bytes;

pub(super) fn generation_id(cx: &StepContext) -> Result<String> {
    cx.get(&GENERATION)?
        .context("the run has no generation yet (the preflight step did not finish)")
}

/// Remove abandoned staging and trash directories, half-written objects, and objects no
/// generation refers to (unless none can have appeared since the last collection). Returns
/// what was removed, for the journal (empty: nothing).
pub(super) fn clean_store(
    p: &PlanContext,
    checkpoint: &(dyn Fn() -> Result<()> + Sync),
) -> Result<String> {
    let removed = p.store.clean_abandoned()?;
    let gc = p.store.gc_unless_collected(checkpoint)?.unwrap_or_default();
    let mut parts = removed;
    if gc.removed > 0 {
        parts.push(format!(
            "{} unreferenced objects ({})",
            gc.removed,
            human_bytes(gc.bytes)
        ));
    }
    Ok(if parts.is_empty() {
        String::new()
    } else {
        format!("removed {}", parts.join(", "))
    })
}

/// The previous generation, to share what did not change (its manifest from its cache when
/// that is sound); one that cannot be read shares nothing (said in the log), the backup goes
/// on.
pub(super) fn previous_manifest(
    p: &PlanContext,
) -> Result<Option<std::sync::Arc<crate::files::manifest::Manifest>>> {
    Ok(match p.store.latest()? {
        Some(g) => match g.manifest_for_sharing() {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(
                    "previous generation {} is not usable for sharing: {e:#}",
                    g.info.id
                );
                None
            }
        },
        None => None,
    })
}
