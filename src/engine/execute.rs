//! Executing a prepared run: each step journaled before and after its side effect, reboot
//! barriers, interrupted steps, retries, step mode, the deadline and a shutdown.

use std::time::Instant;

use anyhow::Result;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::limits::{StepFailure, run_with_limits};
use super::options::RunOptions;
use super::plan::CLEANUP;
use super::{Engine, Event, Outcome, Plan, Prepared, Report, RunMessage, StepContext, failpoints};
use crate::journal::{RunKind, RunState, StepState};

impl Engine {
    /// Run a prepared run until it ends, pauses, or waits for a reboot.
    pub async fn execute(&self, prepared: Prepared, cancel: CancellationToken) -> Result<Report> {
        if let Some(report) = prepared.stopped {
            return Ok(report);
        }
        let Prepared {
            run,
            kind,
            plan,
            options,
            one_stage,
            lock,
            ..
        } = prepared;
        let resumed = !self.journal.steps(run)?.is_empty();
        self.set_state(run, RunState::Running, None)?;
        info!(
            recovery_run = run,
            message_id = RunMessage::Started.as_str(),
            "{kind} run {run} {} (boot {})",
            if resumed { "resumes" } else { "starts" },
            self.boot_id
        );
        self.observer
            .event(&Event::RunStarted { run, kind, resumed });

        let report = self
            .execute_steps(run, kind, &plan, options.clone(), one_stage, &cancel)
            .await;
        let report = match report {
            Ok(r) => r,
            Err(e) => self.journal_failed(run, kind, &plan, &options, e).await?,
        };
        drop(lock);
        Ok(report)
    }

    /// The journal could not be written (most often: the recovery partition is full, and the
    /// journal lives there). What the plan's cleanup removes (a failed backup's partial
    /// generation and objects) may make room: run it, then record the end if the journal takes
    /// it now. Otherwise nothing more can be recorded reliably, and the error is returned.
    async fn journal_failed(
        &self,
        run: i64,
        kind: RunKind,
        plan: &Plan,
        options: &RunOptions,
        e: anyhow::Error,
    ) -> Result<Report> {
        error!(
            recovery_run = run,
            "{kind} run {run}: the journal could not be written: {e:#}"
        );
        if let Some(cleanup) = &plan.cleanup {
            let cx = self.cleanup_context(run, kind, options);
            match cleanup.cleanup(&cx, RunState::Failed).await {
                Ok(detail) => info!(recovery_run = run, "cleanup: {detail}"),
                Err(ce) => warn!(recovery_run = run, "cleanup failed too: {ce:#}"),
            }
        }
        let message = format!("the journal could not be written: {e:#}");
        let recorded = self
            .journal
            .fail_started_steps(run, &message)
            .and_then(|()| {
                self.journal
                    .set_run_state(run, RunState::Failed, Some(&message))
            });
        match recorded {
            Ok(()) => Ok(self.finish(run, kind, RunState::Failed, message)),
            Err(_) => Err(e),
        }
    }

    async fn execute_steps(
        &self,
        run: i64,
        kind: RunKind,
        plan: &Plan,
        options: RunOptions,
        one_stage: bool,
        cancel: &CancellationToken,
    ) -> Result<Report> {
        let deadline = plan.deadline.map(|d| Instant::now() + d);
        let total = plan.steps.len();
        if let Some(prologue) = &plan.prologue {
            let cx = self.context(
                run,
                kind,
                "prologue",
                "prologue",
                &options,
                CancellationToken::new(),
            );
            if let Err(e) = super::limits::as_step(run, "prologue", prologue.prologue(&cx)).await {
                let message = format!("could not prepare the run: {e:#}");
                return self
                    .end(run, kind, plan, RunState::Failed, message, &options)
                    .await;
            }
        }
        let mut stage_of_this_invocation: Option<&'static str> = None;
        let mut current_stage: Option<&'static str> = None;
        let mut progress_reset = false;

        for (index, step) in plan.steps.iter().enumerate() {
            let name = step.name();
            let stage = step.stage();
            let at = StepAt {
                run,
                stage,
                step: name,
                index,
                total,
            };
            if self.shutdown.is_cancelled() {
                return Ok(self.stopped_for_shutdown(run, kind, name));
            }
            let last = self.journal.last_attempt(run, name)?;
            let mut attempt = last.as_ref().map(|l| l.attempt).unwrap_or(0);
            if let Some(l) = &last {
                if l.state.is_complete() {
                    continue;
                }
                if step.reboot_barrier()
                    && matches!(l.state, StepState::Started | StepState::AwaitingReboot)
                    && l.boot_id != self.boot_id
                {
                    let cx = self.context(run, kind, name, stage, &options, cancel.child_token());
                    let checked =
                        match super::limits::as_step(run, name, step.after_reboot(&cx)).await {
                            Ok(c) => c,
                            Err(e) => {
                                // Not done, and no progress: the node came back wrong.
                                let message = format!("after the reboot of step {name}: {e:#}");
                                return self
                                    .end(run, kind, plan, RunState::Failed, message, &options)
                                    .await;
                            }
                        };
                    let mut detail = format!("rebooted: boot {} -> {}", l.boot_id, self.boot_id);
                    if !checked.is_empty() {
                        detail.push_str("; ");
                        detail.push_str(&checked);
                    }
                    self.step_ended(&at, l.id, StepState::Done, &detail)?;
                    self.note_progress(run, &mut progress_reset)?;
                    stage_of_this_invocation.get_or_insert(stage);
                    continue;
                }
                if l.state == StepState::Started {
                    let detail = format!(
                        "interrupted: the process ended during attempt {} (boot {})",
                        l.attempt, l.boot_id
                    );
                    self.journal
                        .step_finished(l.id, StepState::Interrupted, Some(&detail))?;
                    warn!(
                        recovery_run = run,
                        recovery_stage = stage,
                        recovery_step = name,
                        "step {name} was {detail}; running it again"
                    );
                }
            }

            if one_stage {
                match stage_of_this_invocation {
                    None => stage_of_this_invocation = Some(stage),
                    Some(s) if s != stage => {
                        let message = format!(
                            "stopped after stage {s} (step mode); next: stage {stage}. Continue with `recoveryctl resume`"
                        );
                        self.set_state(run, RunState::Paused, None)?;
                        return Ok(self.finish(run, kind, RunState::Paused, message));
                    }
                    Some(_) => {}
                }
            }
            if current_stage != Some(stage) {
                current_stage = Some(stage);
                self.journal.set_run_stage(run, stage)?;
                info!(recovery_run = run, recovery_stage = stage, "stage {stage}");
                self.observer.event(&Event::StageStarted { run, stage });
            }

            let limits = self.config.step_limits(name);
            let mut tries = 0;
            loop {
                tries += 1;
                attempt += 1;
                if cancel.is_cancelled() {
                    return self
                        .end(
                            run,
                            kind,
                            plan,
                            RunState::Cancelled,
                            "cancelled by request".into(),
                            &options,
                        )
                        .await;
                }
                if self.shutdown.is_cancelled() {
                    return Ok(self.stopped_for_shutdown(run, kind, name));
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    let message = format!(
                        "deadline of {}s passed before step {name}",
                        plan.deadline.unwrap_or_default().as_secs()
                    );
                    return self
                        .end(run, kind, plan, RunState::Timeout, message, &options)
                        .await;
                }
                let row = self.journal.step_started(
                    run,
                    index as u32,
                    name,
                    stage,
                    attempt,
                    &self.boot_id,
                )?;
                info!(
                    recovery_run = run,
                    recovery_stage = stage,
                    recovery_step = name,
                    "step {name} started (attempt {attempt}): {}",
                    step.describe()
                );
                self.observer.event(&Event::StepStarted {
                    run,
                    stage,
                    step: name,
                    attempt,
                    index,
                    total,
                });
                failpoints::hit(name, failpoints::Point::Before);

                let mut timeout = limits.timeout;
                if let Some(d) = deadline {
                    timeout = timeout.min(d.saturating_duration_since(Instant::now()));
                }
                let mut cx = self.context(run, kind, name, stage, &options, cancel.child_token());
                cx.attempt = attempt;
                // A step needing an integration switched off is journaled as skipped, unrun.
                let result = match super::step::gated(&self.config, step.needs()) {
                    Some(reason) => Ok(Outcome::Skipped(reason)),
                    None => {
                        run_with_limits(step.clone(), cx, timeout, cancel, &self.shutdown).await
                    }
                };
                if let Err(StepFailure::Shutdown) = &result {
                    self.journal.step_finished(
                        row,
                        StepState::Interrupted,
                        Some("interrupted by a shutdown; runs again when the run resumes"),
                    )?;
                    warn!(
                        recovery_run = run,
                        recovery_step = name,
                        "step {name} interrupted by a shutdown"
                    );
                    return Ok(self.stopped_for_shutdown(run, kind, name));
                }
                let (state, detail) = match &result {
                    Ok(Outcome::Done(d)) => (StepState::Done, d.clone()),
                    Ok(Outcome::Skipped(d)) => (StepState::Skipped, d.clone()),
                    Ok(Outcome::AwaitReboot(d)) => (StepState::AwaitingReboot, d.clone()),
                    Err(e) => (StepState::Failed, e.to_string()),
                };
                if state != StepState::Failed {
                    failpoints::hit(name, failpoints::Point::After);
                }
                self.step_ended(&at, row, state, &detail)?;
                match result {
                    Ok(Outcome::AwaitReboot(reason)) => {
                        self.set_state(run, RunState::AwaitingReboot, None)?;
                        let message = format!(
                            "waiting for the reboot ({reason}); the run resumes at the next boot"
                        );
                        return Ok(self.finish(run, kind, RunState::AwaitingReboot, message));
                    }
                    Ok(_) => {
                        self.note_progress(run, &mut progress_reset)?;
                        break;
                    }
                    Err(failure) => {
                        let past_deadline = deadline.is_some_and(|d| Instant::now() >= d);
                        if past_deadline {
                            let message = format!(
                                "deadline of {}s passed during step {name}",
                                plan.deadline.unwrap_or_default().as_secs()
                            );
                            return self
                                .end(run, kind, plan, RunState::Timeout, message, &options)
                                .await;
                        }
                        if cancel.is_cancelled() {
                            return self
                                .end(
                                    run,
                                    kind,
                                    plan,
                                    RunState::Cancelled,
                                    format!("cancelled during step {name}"),
                                    &options,
                                )
                                .await;
                        }
                        if tries <= limits.retries {
                            warn!(
                                recovery_run = run,
                                recovery_step = name,
                                "retrying step {name} in {}s ({} of {} retries)",
                                limits.retry_delay.as_secs(),
                                tries,
                                limits.retries
                            );
                            tokio::select! {
                                _ = tokio::time::sleep(limits.retry_delay) => {}
                                _ = cancel.cancelled() => {}
                                _ = self.shutdown.cancelled() => {}
                            }
                            continue;
                        }
                        let message = format!("step {name} failed: {failure}");
                        return self
                            .end(run, kind, plan, RunState::Failed, message, &options)
                            .await;
                    }
                }
            }
        }
        let message = if total == 1 {
            "its one step done".to_string()
        } else {
            format!("all {total} steps done")
        };
        self.end(run, kind, plan, RunState::Succeeded, message, &options)
            .await
    }

    fn context(
        &self,
        run: i64,
        kind: RunKind,
        step: &'static str,
        stage: &'static str,
        options: &RunOptions,
        cancel: CancellationToken,
    ) -> StepContext {
        StepContext {
            run,
            kind,
            step,
            stage,
            attempt: 1,
            boot_id: self.boot_id.clone(),
            journal: self.journal.clone(),
            config: self.config.clone(),
            cancel,
            observer: self.observer.clone(),
            options: options.clone(),
        }
    }

    fn cleanup_context(&self, run: i64, kind: RunKind, options: &RunOptions) -> StepContext {
        self.context(
            run,
            kind,
            CLEANUP,
            CLEANUP,
            options,
            CancellationToken::new(),
        )
    }

    fn stopped_for_shutdown(&self, run: i64, kind: RunKind, next: &str) -> Report {
        let message =
            format!("stopped for a shutdown before step {next}; the run resumes at the next start");
        info!(recovery_run = run, "{kind} run {run} {message}");
        Report {
            run,
            kind,
            state: RunState::Running,
            message,
        }
    }

    fn note_progress(&self, run: i64, reset: &mut bool) -> Result<()> {
        if !*reset {
            self.journal.set_no_progress_boots(run, 0)?;
            *reset = true;
        }
        Ok(())
    }

    async fn end(
        &self,
        run: i64,
        kind: RunKind,
        plan: &Plan,
        state: RunState,
        message: String,
        options: &RunOptions,
    ) -> Result<Report> {
        let error = (state != RunState::Succeeded).then_some(message.as_str());
        self.set_state(run, state, error)?;
        if state != RunState::Succeeded
            && let Some(cleanup) = &plan.cleanup
        {
            // Journaled like a step: started before its side effect, done or failed after.
            let attempt = self
                .journal
                .last_attempt(run, CLEANUP)?
                .map(|l| l.attempt)
                .unwrap_or(0)
                + 1;
            let row = self.journal.step_started(
                run,
                plan.steps.len() as u32,
                CLEANUP,
                CLEANUP,
                attempt,
                &self.boot_id,
            )?;
            let cx = self.cleanup_context(run, kind, options);
            match cleanup.cleanup(&cx, state).await {
                Ok(detail) => {
                    info!(recovery_run = run, "cleanup after {state}: {detail}");
                    self.journal
                        .step_finished(row, StepState::Done, Some(&detail))?;
                }
                Err(e) => {
                    warn!(recovery_run = run, "cleanup after {state} failed: {e:#}");
                    self.journal
                        .step_finished(row, StepState::Failed, Some(&format!("{e:#}")))?;
                }
            }
        }
        Ok(self.finish(run, kind, state, message))
    }

    /// Log how this invocation of a run ended, tell the observer, and build the report. The
    /// caller has journaled the run's state.
    pub(super) fn finish(
        &self,
        run: i64,
        kind: RunKind,
        state: RunState,
        message: String,
    ) -> Report {
        match state {
            RunState::Succeeded => info!(
                recovery_run = run,
                message_id = RunMessage::Succeeded.as_str(),
                "{kind} run {run} succeeded: {message}"
            ),
            RunState::Failed | RunState::Timeout | RunState::Cancelled => error!(
                recovery_run = run,
                message_id = RunMessage::Failed.as_str(),
                "{kind} run {run} ended {state}: {message}"
            ),
            RunState::Paused | RunState::AwaitingReboot | RunState::Running => {
                info!(recovery_run = run, "{kind} run {run} is {state}: {message}")
            }
        }
        self.observer.event(&Event::RunFinished {
            run,
            kind,
            state,
            message: &message,
        });
        Report {
            run,
            kind,
            state,
            message,
        }
    }

    /// Record the end of a step attempt (or the completion of a reboot barrier), log it and
    /// tell the observer.
    fn step_ended(&self, at: &StepAt, row: i64, state: StepState, detail: &str) -> Result<()> {
        let (run, stage, name) = (at.run, at.stage, at.step);
        // Logged first: if the journal cannot take the record (a full disk), the log has it.
        if state == StepState::Failed {
            error!(
                recovery_run = run,
                recovery_stage = stage,
                recovery_step = name,
                "step {name} failed: {detail}"
            );
        }
        if state == StepState::AwaitingReboot {
            self.journal.step_set_state(row, state, Some(detail))?;
        } else {
            self.journal.step_finished(row, state, Some(detail))?;
        }
        match state {
            StepState::Failed => {}
            _ => info!(
                recovery_run = run,
                recovery_stage = stage,
                recovery_step = name,
                "step {name} {state}: {detail}"
            ),
        }
        self.observer.event(&Event::StepFinished {
            run,
            stage,
            step: name,
            state,
            detail,
            index: at.index,
            total: at.total,
        });
        Ok(())
    }
}

/// Where a step stands in its run, as the journal, the log and the observer name it.
struct StepAt {
    run: i64,
    stage: &'static str,
    step: &'static str,
    index: usize,
    total: usize,
}
