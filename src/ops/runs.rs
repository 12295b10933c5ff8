//! Starting, continuing, restarting and cancelling runs: the decisions, not the execution.

use crate::engine::{Plan, PlanKind, RunOptions, Trigger};
use crate::files::store::Generation;
use crate::journal::{RunKind, RunRecord, RunState};
use crate::protocol::{ApiError, RecoverRequest};

use super::Ops;

/// A run to create.
pub(crate) struct NewRun {
    pub plan: Plan,
    pub options: RunOptions,
}

/// What a resume request comes to.
pub(crate) enum Resume {
    /// Continue this run.
    Run {
        run: Box<RunRecord>,
        plan: Plan,
        trigger: Trigger,
    },
    /// Nothing to do (at boot: no open recovery, or one left for an operator), and why.
    Nothing(String),
}

fn failed(e: impl std::fmt::Display) -> ApiError {
    ApiError::Failed(format!("{e:#}"))
}

impl Ops {
    /// The one rule for which generation a command means: the one named (`latest`, an id, or
    /// a unique prefix of an id or short id), else the newest.
    pub(crate) fn generation(&self, id: Option<&str>) -> Result<Generation, ApiError> {
        match id {
            Some(id) => self
                .plans
                .store
                .resolve(id)
                .map_err(|e| ApiError::NotFound(format!("{e:#}"))),
            None => self.plans.store.latest().map_err(failed)?.ok_or_else(|| {
                ApiError::NotFound("there is no committed generation; take a backup first".into())
            }),
        }
    }

    /// The generation a restore or recovery will use, its manifest checked before any run
    /// exists: a damaged or tampered one is refused here, and nothing changes.
    pub(crate) fn checked_generation(&self, id: Option<&str>) -> Result<Generation, ApiError> {
        let g = self.generation(id)?;
        crate::plans::restore::trusted_manifest(&g, Some(&self.journal))
            .map_err(|e| ApiError::from_anyhow(&e))?;
        Ok(g)
    }

    pub(crate) fn backup(&self) -> NewRun {
        NewRun {
            plan: crate::plans::backup_plan(&self.plans),
            options: RunOptions::backup(),
        }
    }

    pub(crate) fn recovery(&self, r: &RecoverRequest) -> Result<NewRun, ApiError> {
        let g = self.checked_generation(r.generation.as_deref())?;
        if !r.force {
            crate::plans::check::journal_readable_after_rollback(&g.info, &self.journal)
                .map_err(failed)?;
        }
        Ok(NewRun {
            plan: crate::plans::recovery_plan(&self.plans),
            options: RunOptions {
                plan: PlanKind::Recover,
                force: r.force,
                allow_foreign: r.allow_foreign,
                step: r.step,
                generation: Some(g.info.id),
                paths: Vec::new(),
            },
        })
    }

    /// A journaled file restore in place: every tree, or only `paths` (checked here, before
    /// any run exists).
    pub(crate) fn restore_files(
        &self,
        generation: Option<&str>,
        paths: &[String],
    ) -> Result<NewRun, ApiError> {
        let g = self.checked_generation(generation)?;
        if !paths.is_empty() {
            let m = crate::plans::restore::trusted_manifest(&g, Some(&self.journal))
                .map_err(|e| ApiError::from_anyhow(&e))?;
            crate::files::restore::narrow(&m, paths)
                .map_err(|e| ApiError::InvalidArgs(format!("{e:#}")))?;
        }
        Ok(NewRun {
            plan: crate::plans::restore_files_plan(&self.plans),
            options: RunOptions {
                plan: PlanKind::RestoreFiles,
                generation: Some(g.info.id),
                paths: paths.to_vec(),
                ..Default::default()
            },
        })
    }

    fn open_recovery(&self) -> Result<Option<RunRecord>, ApiError> {
        self.journal.open_run(RunKind::Recovery).map_err(failed)
    }

    fn plan_of(&self, run: &RunRecord) -> Plan {
        crate::plans::plan_for(run.kind, &RunOptions::from_json(&run.options), &self.plans)
    }

    /// The open recovery to continue. At boot, a paused or failed run is left for an
    /// operator, and none at all is fine; an operator's resume of nothing is an error.
    pub(crate) fn resume(&self, boot: bool) -> Result<Resume, ApiError> {
        let Some(run) = self.open_recovery()? else {
            if boot {
                return Ok(Resume::Nothing("no interrupted recovery to resume".into()));
            }
            return Err(ApiError::NotFound(
                "there is no open recovery to resume".into(),
            ));
        };
        if boot && matches!(run.state, RunState::Paused | RunState::Failed) {
            return Ok(Resume::Nothing(format!(
                "recovery run {} is {}; an operator continues it with `recoveryctl resume`",
                run.id, run.state
            )));
        }
        let plan = self.plan_of(&run);
        let trigger = if boot {
            Trigger::Boot
        } else {
            Trigger::Operator
        };
        Ok(Resume::Run {
            run: Box::new(run),
            plan,
            trigger,
        })
    }

    /// The open recovery to start over.
    pub(crate) fn restart(&self) -> Result<(RunRecord, Plan), ApiError> {
        let run = self
            .open_recovery()?
            .ok_or_else(|| ApiError::NotFound("there is no open recovery to restart".into()))?;
        let plan = self.plan_of(&run);
        Ok((run, plan))
    }

    /// The open recovery an idle cancel applies to.
    pub(crate) fn cancel_target(&self) -> Result<RunRecord, ApiError> {
        self.open_recovery()?.ok_or_else(|| {
            ApiError::NotFound("no run is in progress and no recovery is open".into())
        })
    }
}

impl Ops {
    /// What a cancel of run `run` left on the node, and the commands that get out of it.
    pub(crate) fn after_cancel(&self, run: &RunRecord) -> String {
        let steps = self.journal.steps(run.id).unwrap_or_default();
        let generation = RunOptions::from_json(&run.options).generation;
        format!(
            "{} run {} cancelled; {}",
            run.kind,
            run.id,
            super::aftermath::describe(&steps, generation.as_deref())
        )
    }
}
