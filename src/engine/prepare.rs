//! Taking the lock for a run: a new one, one to continue (with the boot-loop breaker), one to
//! start over, and cancelling one that is not executing.

use anyhow::Result;
use tracing::{info, warn};

use super::options::RunOptions;
use super::vars::VarValue;
use super::{BREAKER_BOOT, Engine, EngineError, Plan, Prepared, RunMessage, Trigger};
use crate::journal::{Journal, RunKind, RunLock, RunRecord, RunState};

impl Engine {
    /// Mark backups left open by a crash as failed (they are taken again, not continued), then
    /// run `clean` (remove what they left in the store) under the same lock.
    pub(crate) fn abandon_stale_backups(
        &self,
        clean: impl FnOnce() -> Result<String>,
    ) -> Result<String> {
        let _lock = self.lock()?;
        self.fail_stale_backups()?;
        clean()
    }

    fn fail_stale_backups(&self) -> Result<()> {
        while let Some(stale) = self.journal.open_run(RunKind::Backup)? {
            warn!(
                recovery_run = stale.id,
                "backup run {} was interrupted; marking it failed", stale.id
            );
            self.set_state(
                stale.id,
                RunState::Failed,
                Some("interrupted: the process ended before the backup finished"),
            )?;
        }
        Ok(())
    }

    /// Create a new run of `plan` and take the lock for it.
    ///
    /// A backup left open by a crash is marked failed (backups are taken again, not continued).
    /// A new recovery is refused while another one is open: it must be resumed, restarted or
    /// cancelled first, because two recoveries must never interleave on one node.
    pub fn prepare_new(&self, plan: Plan, options: RunOptions) -> Result<Prepared> {
        let mut lock = self.lock()?;
        match plan.kind {
            RunKind::Backup => {
                self.fail_stale_backups()?;
                if let Some(open) = self.journal.open_run(RunKind::Recovery)? {
                    return Err(EngineError::BackupRefused {
                        run: open.id,
                        state: open.state,
                        stage: open.stage.unwrap_or_else(|| "-".into()),
                    }
                    .into());
                }
            }
            RunKind::Recovery => {
                if let Some(open) = self.journal.open_run(RunKind::Recovery)? {
                    // We hold the lock: a run recorded as running has no process any more.
                    return Err(EngineError::RecoveryOpen {
                        run: open.id,
                        state: open.state,
                        interrupted: open.state == RunState::Running,
                    }
                    .into());
                }
            }
        }
        let one_stage = options.step;
        let run = self.journal.create_run(
            plan.kind,
            &plan.outline(),
            &options.to_json(),
            &self.boot_id,
        )?;
        describe_lock(&mut lock, plan.kind, run);
        Ok(Prepared {
            run,
            kind: plan.kind,
            plan,
            options,
            one_stage,
            lock,
            stopped: None,
        })
    }

    /// Take the lock to continue an existing run. `one_stage` overrides the run's step mode.
    pub fn prepare_resume(
        &self,
        run: i64,
        plan: Plan,
        trigger: Trigger,
        one_stage: Option<bool>,
    ) -> Result<Prepared> {
        let mut lock = self.lock()?;
        let record = self.journal.run(run)?.ok_or(EngineError::NotFound(run))?;
        if !record.resumable() {
            return Err(EngineError::NotResumable {
                run,
                state: record.state,
                hint: if record.kind == RunKind::Backup {
                    "; take a new backup instead".into()
                } else {
                    String::new()
                },
            }
            .into());
        }
        describe_lock(&mut lock, record.kind, run);
        let mut options = RunOptions::from_json(&record.options);
        let stored = options.step;
        // An operator's explicit choice becomes the run's mode, for later automatic resumes too.
        if let Some(explicit) = one_stage
            && explicit != stored
        {
            options.step = explicit;
            self.journal.set_run_options(run, &options.to_json())?;
        }
        let one_stage = one_stage.unwrap_or(stored);
        let mut prepared = Prepared {
            run,
            kind: record.kind,
            plan,
            options,
            one_stage,
            lock,
            stopped: None,
        };
        match trigger {
            Trigger::Boot => {
                let n = record.no_progress_boots;
                let limit = self.config.recovery.boot_attempts;
                if n >= limit {
                    let message = breaker_message(&record, n, &self.journal);
                    self.set_state(run, RunState::Failed, Some(&message))?;
                    prepared.stopped =
                        Some(self.finish(run, record.kind, RunState::Failed, message));
                } else if self.journal.var(run, BREAKER_BOOT.key())?.as_deref()
                    != Some(self.boot_id.as_str())
                {
                    // Counted once per boot: within one boot the daemon and the boot unit may
                    // both resume, and a crash-looping daemon is stopped by systemd's start
                    // limit; what the breaker stops is a node rebooting without progress.
                    self.journal.set_no_progress_boots(run, n + 1)?;
                    self.journal
                        .set_var(run, BREAKER_BOOT.key(), &self.boot_id.encode())?;
                }
            }
            Trigger::Operator => self.journal.set_no_progress_boots(run, 0)?,
        }
        Ok(prepared)
    }

    /// Cancel a run that is not executing (paused, waiting for a reboot, failed, or left open
    /// by a crash). A run that is executing is cancelled through its cancellation token instead.
    pub(crate) fn cancel_idle(&self, run: i64) -> Result<RunRecord> {
        let _lock = self.lock()?;
        let record = self.journal.run(run)?.ok_or(EngineError::NotFound(run))?;
        if !record.resumable() {
            return Err(EngineError::NotResumable {
                run,
                state: record.state,
                hint: String::new(),
            }
            .into());
        }
        self.set_state(run, RunState::Cancelled, Some("cancelled by an operator"))?;
        warn!(
            recovery_run = run,
            message_id = RunMessage::Failed.as_str(),
            "{} run {run} cancelled by an operator",
            record.kind
        );
        Ok(record)
    }

    /// Forget a run's steps so that it starts over from its first step.
    pub(crate) fn prepare_restart(
        &self,
        run: i64,
        plan: Plan,
        one_stage: Option<bool>,
    ) -> Result<Prepared> {
        let prepared = self.prepare_resume(run, plan, Trigger::Operator, one_stage)?;
        self.journal.clear_steps(run)?;
        info!(recovery_run = run, "run {run} restarts from its first step");
        Ok(prepared)
    }
}

fn describe_lock(lock: &mut RunLock, kind: RunKind, run: i64) {
    let _ = lock.describe(&format!(
        "{kind} run {run} is in progress (pid {})",
        std::process::id()
    ));
}

fn breaker_message(record: &RunRecord, boots: u32, journal: &Journal) -> String {
    let last = journal
        .steps(record.id)
        .ok()
        .and_then(|s| {
            s.into_iter()
                .rev()
                .find(|s| s.stage != super::plan::CLEANUP)
        })
        .map(|s| format!(" at step {} (attempt {}, {})", s.name, s.attempt, s.state))
        .unwrap_or_default();
    format!(
        "{} run {} stopped by the boot-loop breaker: {boots} automatic resumes at boot made no progress{last}. \
         The node needs a person: read `recoveryctl journal --run {}` and `journalctl -u recoveryd`, fix the cause, \
         then run `recoveryctl resume` (or `recoveryctl restart` to start over). kubelet stays disabled until the recovery finishes.",
        record.kind, record.id, record.id
    )
}
