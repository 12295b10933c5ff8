//! The step engine: runs a plan, journaling every step before and after its side effect.
//!
//! Rules, in the order the engine applies them to each step of the plan:
//! - a step whose latest attempt is `done` or `skipped` is not run again;
//! - a reboot barrier whose latest attempt began in another boot is done;
//! - a step found `started` with no end was interrupted by a crash: it is marked so and run again;
//! - otherwise the step runs, with its timeout and retry budget from the configuration.
//!
//! A run is held by the single-writer lock while it executes; a second caller gets
//! [`EngineError::Busy`] naming the run that holds it.

pub mod failpoints;
mod messages;
pub mod observer;
pub mod plan;
pub mod step;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use messages::MessageId;
pub use observer::{Event, Observer};
pub use plan::{Cleanup, Plan, Prologue};
pub use step::{Outcome, PreviewContext, Step, StepContext};

use crate::config::Config;
use crate::journal::{Journal, RunKind, RunLock, RunRecord, RunState, StepState};

/// How long a step gets to notice cancellation before the engine records it as ended.
const CANCEL_GRACE: Duration = Duration::from_secs(30);
/// How long a step may go on after a shutdown request (SIGTERM) before it is interrupted. Kept
/// below systemd's default stop timeout (90 s) so that the journal is written before a SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(45);

/// Run variable: the boot in which the breaker last counted an automatic resume.
const BREAKER_BOOT: &str = "breaker-boot";

/// Errors callers tell apart (the daemon maps them to D-Bus error names).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("busy: {0}")]
    Busy(String),
    #[error("no run {0} in the journal")]
    NotFound(i64),
    #[error(
        "recovery run {run} is {state}: continue it with `recoveryctl resume`, start it over with \
         `recoveryctl restart`, or cancel it with `recoveryctl cancel`"
    )]
    RecoveryOpen { run: i64, state: RunState },
    #[error("run {run} is {state}; it cannot be continued{hint}")]
    NotResumable {
        run: i64,
        state: RunState,
        hint: String,
    },
}

/// What started this invocation of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A person or automation asked for it.
    Operator,
    /// The boot unit continued an interrupted run (counts toward the boot-loop breaker).
    Boot,
}

/// How a run invocation ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub run: i64,
    pub kind: RunKind,
    pub state: RunState,
    pub message: String,
}

pub struct Engine {
    pub journal: Arc<Journal>,
    pub config: Arc<Config>,
    observer: Arc<dyn Observer>,
    boot_id: String,
    shutdown: CancellationToken,
}

/// A run that holds the lock and is ready to execute.
pub struct Prepared {
    pub run: i64,
    pub kind: RunKind,
    plan: Plan,
    options: serde_json::Value,
    one_stage: bool,
    lock: RunLock,
    /// Set when the boot-loop breaker stopped the run before anything ran.
    stopped: Option<Report>,
}

/// Read the boot id beneath `root` (`/proc/sys/kernel/random/boot_id` on a node).
pub fn read_boot_id(config: &Config) -> Result<String> {
    let path = config.host_path("/proc/sys/kernel/random/boot_id");
    let id = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the boot id from {}", path.display()))?;
    let id = id.trim().to_string();
    anyhow::ensure!(!id.is_empty(), "{} is empty", path.display());
    Ok(id)
}

impl Engine {
    pub fn new(
        config: Arc<Config>,
        journal: Arc<Journal>,
        observer: Arc<dyn Observer>,
    ) -> Result<Engine> {
        let boot_id = read_boot_id(&config)?;
        Ok(Engine {
            journal,
            config,
            observer,
            boot_id,
            shutdown: CancellationToken::new(),
        })
    }

    /// When `shutdown` is cancelled (SIGTERM), the running step may finish within a grace
    /// period; otherwise it is recorded as interrupted. Either way the run stays open and
    /// resumes at the next start.
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Engine {
        self.shutdown = shutdown;
        self
    }

    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    fn lock(&self) -> Result<RunLock> {
        match RunLock::acquire(&self.config.state_path()) {
            Ok(l) => Ok(l),
            Err(crate::journal::LockError::Busy { holder }) => {
                Err(EngineError::Busy(holder).into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Mark backups left open by a crash as failed (they are taken again, not continued).
    pub fn abandon_stale_backups(&self) -> Result<()> {
        let _lock = self.lock()?;
        self.fail_stale_backups()
    }

    fn fail_stale_backups(&self) -> Result<()> {
        while let Some(stale) = self.journal.open_run(RunKind::Backup)? {
            warn!(
                recovery_run = stale.id,
                "backup run {} was interrupted; marking it failed", stale.id
            );
            self.journal.set_run_state(
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
    pub fn prepare_new(&self, plan: Plan, options: serde_json::Value) -> Result<Prepared> {
        let mut lock = self.lock()?;
        match plan.kind {
            RunKind::Backup => self.fail_stale_backups()?,
            RunKind::Recovery => {
                if let Some(open) = self.journal.open_run(RunKind::Recovery)? {
                    return Err(EngineError::RecoveryOpen {
                        run: open.id,
                        state: open.state,
                    }
                    .into());
                }
            }
        }
        let one_stage = options
            .get("step")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let run = self
            .journal
            .create_run(plan.kind, &plan.outline(), &options, &self.boot_id)?;
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
        if record.state.is_final()
            || (record.kind == RunKind::Backup && record.state == RunState::Failed)
        {
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
        let stored = record
            .options
            .get("step")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        // An operator's explicit choice becomes the run's mode, for later automatic resumes too.
        let mut options = record.options.clone();
        if let Some(explicit) = one_stage
            && explicit != stored
        {
            options["step"] = explicit.into();
            self.journal.set_run_options(run, &options)?;
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
                    self.journal
                        .set_run_state(run, RunState::Failed, Some(&message))?;
                    error!(
                        recovery_run = run,
                        message_id = MessageId::RunFailed.as_str(),
                        "{message}"
                    );
                    self.observer.event(&Event::RunFinished {
                        run,
                        kind: record.kind,
                        state: RunState::Failed,
                        message: &message,
                    });
                    prepared.stopped = Some(Report {
                        run,
                        kind: record.kind,
                        state: RunState::Failed,
                        message,
                    });
                } else if self.journal.var(run, BREAKER_BOOT)?.as_deref()
                    != Some(self.boot_id.as_str())
                {
                    // Counted once per boot: within one boot the daemon and the boot unit may
                    // both resume, and a crash-looping daemon is stopped by systemd's start
                    // limit; what the breaker stops is a node rebooting without progress.
                    self.journal.set_no_progress_boots(run, n + 1)?;
                    self.journal.set_var(run, BREAKER_BOOT, &self.boot_id)?;
                }
            }
            Trigger::Operator => self.journal.set_no_progress_boots(run, 0)?,
        }
        Ok(prepared)
    }

    /// Cancel a run that is not executing (paused, waiting for a reboot, failed, or left open
    /// by a crash). A run that is executing is cancelled through its cancellation token instead.
    pub fn cancel_idle(&self, run: i64) -> Result<RunRecord> {
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
        self.journal
            .set_run_state(run, RunState::Cancelled, Some("cancelled by an operator"))?;
        warn!(
            recovery_run = run,
            message_id = MessageId::RunFailed.as_str(),
            "{} run {run} cancelled by an operator",
            record.kind
        );
        Ok(record)
    }

    /// Forget a run's steps so that it starts over from its first step.
    pub fn prepare_restart(
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
        let resumed =
            self.journal.completed_steps(run)? > 0 || !self.journal.steps(run)?.is_empty();
        self.journal.set_run_state(run, RunState::Running, None)?;
        info!(
            recovery_run = run,
            message_id = MessageId::RunStarted.as_str(),
            "{kind} run {run} {} (boot {})",
            if resumed { "resumes" } else { "starts" },
            self.boot_id
        );
        self.observer
            .event(&Event::RunStarted { run, kind, resumed });

        let report = self
            .execute_steps(run, kind, &plan, options, one_stage, &cancel)
            .await;
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                // The journal itself failed: nothing more can be recorded reliably.
                error!(recovery_run = run, "{kind} run {run} stopped: {e:#}");
                return Err(e);
            }
        };
        drop(lock);
        Ok(report)
    }

    async fn execute_steps(
        &self,
        run: i64,
        kind: RunKind,
        plan: &Plan,
        options: serde_json::Value,
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
            if let Err(e) = prologue.prologue(&cx).await {
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
                    let detail = format!("rebooted: boot {} -> {}", l.boot_id, self.boot_id);
                    self.journal
                        .step_finished(l.id, StepState::Done, Some(&detail))?;
                    info!(
                        recovery_run = run,
                        recovery_stage = stage,
                        recovery_step = name,
                        "step {name}: {detail}"
                    );
                    self.observer.event(&Event::StepFinished {
                        run,
                        stage,
                        step: name,
                        state: StepState::Done,
                        detail: &detail,
                        index,
                        total,
                    });
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
                        self.journal.set_run_state(run, RunState::Paused, None)?;
                        info!(recovery_run = run, "{kind} run {run} {message}");
                        self.observer.event(&Event::RunFinished {
                            run,
                            kind,
                            state: RunState::Paused,
                            message: &message,
                        });
                        return Ok(Report {
                            run,
                            kind,
                            state: RunState::Paused,
                            message,
                        });
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
                let cx = StepContext {
                    run,
                    kind,
                    step: name,
                    stage,
                    attempt,
                    boot_id: self.boot_id.clone(),
                    journal: self.journal.clone(),
                    config: self.config.clone(),
                    cancel: cancel.child_token(),
                    observer: self.observer.clone(),
                    options: options.clone(),
                };
                let result =
                    run_with_limits(step.clone(), cx, timeout, cancel, &self.shutdown).await;
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
                if state == StepState::AwaitingReboot {
                    self.journal.step_set_state(row, state, Some(&detail))?;
                } else {
                    self.journal.step_finished(row, state, Some(&detail))?;
                }
                let log_detail = if detail.is_empty() { "" } else { &detail };
                match state {
                    StepState::Failed => error!(
                        recovery_run = run,
                        recovery_stage = stage,
                        recovery_step = name,
                        "step {name} failed (attempt {attempt}): {log_detail}"
                    ),
                    _ => info!(
                        recovery_run = run,
                        recovery_stage = stage,
                        recovery_step = name,
                        "step {name} {state}: {log_detail}"
                    ),
                }
                self.observer.event(&Event::StepFinished {
                    run,
                    stage,
                    step: name,
                    state,
                    detail: &detail,
                    index,
                    total,
                });
                match result {
                    Ok(Outcome::AwaitReboot(reason)) => {
                        self.journal
                            .set_run_state(run, RunState::AwaitingReboot, None)?;
                        let message = format!(
                            "waiting for the reboot ({reason}); the run resumes at the next boot"
                        );
                        info!(recovery_run = run, "{kind} run {run} is {message}");
                        self.observer.event(&Event::RunFinished {
                            run,
                            kind,
                            state: RunState::AwaitingReboot,
                            message: &message,
                        });
                        return Ok(Report {
                            run,
                            kind,
                            state: RunState::AwaitingReboot,
                            message,
                        });
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
        let message = format!("all {total} steps done");
        self.end(run, kind, plan, RunState::Succeeded, message, &options)
            .await
    }

    fn context(
        &self,
        run: i64,
        kind: RunKind,
        step: &'static str,
        stage: &'static str,
        options: &serde_json::Value,
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
        options: &serde_json::Value,
    ) -> Result<Report> {
        let error = (state != RunState::Succeeded).then_some(message.as_str());
        self.journal.set_run_state(run, state, error)?;
        if state != RunState::Succeeded
            && let Some(cleanup) = &plan.cleanup
        {
            let cx = self.context(
                run,
                kind,
                "cleanup",
                "cleanup",
                options,
                CancellationToken::new(),
            );
            if let Err(e) = cleanup.cleanup(&cx, state).await {
                warn!(recovery_run = run, "cleanup after {state} failed: {e:#}");
            }
        }
        match state {
            RunState::Succeeded => info!(
                recovery_run = run,
                message_id = MessageId::RunSucceeded.as_str(),
                "{kind} run {run} succeeded: {message}"
            ),
            _ => error!(
                recovery_run = run,
                message_id = MessageId::RunFailed.as_str(),
                "{kind} run {run} ended {state}: {message}"
            ),
        }
        self.observer.event(&Event::RunFinished {
            run,
            kind,
            state,
            message: &message,
        });
        Ok(Report {
            run,
            kind,
            state,
            message,
        })
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
        .and_then(|s| s.into_iter().last())
        .map(|s| format!(" at step {} (attempt {}, {})", s.name, s.attempt, s.state))
        .unwrap_or_default();
    format!(
        "{} run {} stopped by the boot-loop breaker: {boots} automatic resumes at boot made no progress{last}. \
         The node needs a person: read `recoveryctl journal --run {}` and `journalctl -u recoveryd`, fix the cause, \
         then run `recoveryctl resume` (or `recoveryctl restart` to start over). kubelet stays disabled until the recovery finishes.",
        record.kind, record.id, record.id
    )
}

/// Why a step attempt did not produce an outcome.
#[derive(Debug, thiserror::Error)]
enum StepFailure {
    #[error("{0:#}")]
    Error(anyhow::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("cancelled")]
    Cancelled,
    #[error("panicked: {0}")]
    Panicked(String),
    #[error("interrupted by a shutdown")]
    Shutdown,
}

async fn run_with_limits(
    step: Arc<dyn Step>,
    cx: StepContext,
    timeout: Duration,
    run_cancel: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<Outcome, StepFailure> {
    let step_cancel = cx.cancel.clone();
    let mut handle = tokio::spawn(async move { step.run(&cx).await });
    let joined = |r: Result<Result<Outcome>, tokio::task::JoinError>| match r {
        Ok(Ok(o)) => Ok(o),
        Ok(Err(e)) => Err(StepFailure::Error(e)),
        Err(j) if j.is_panic() => {
            let p = j.into_panic();
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(StepFailure::Panicked(msg))
        }
        Err(_) => Err(StepFailure::Cancelled),
    };
    tokio::select! {
        r = &mut handle => joined(r),
        _ = tokio::time::sleep(timeout) => {
            step_cancel.cancel();
            if tokio::time::timeout(CANCEL_GRACE, &mut handle).await.is_err() {
                handle.abort();
            }
            Err(StepFailure::Timeout(timeout))
        }
        _ = run_cancel.cancelled() => {
            step_cancel.cancel();
            if tokio::time::timeout(CANCEL_GRACE, &mut handle).await.is_err() {
                handle.abort();
            }
            Err(StepFailure::Cancelled)
        }
        _ = shutdown.cancelled() => {
            // Let the step finish if it can; a short step then needs no repeating.
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut handle).await {
                Ok(r) => joined(r),
                Err(_) => {
                    step_cancel.cancel();
                    if tokio::time::timeout(Duration::from_secs(10), &mut handle).await.is_err() {
                        handle.abort();
                    }
                    Err(StepFailure::Shutdown)
                }
            }
        }
    }
}
