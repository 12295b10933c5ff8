//! The daemon's run manager: one run at a time, runs that outlive the client that asked for
//! them, and a stream of events for the D-Bus signals, the socket clients and sd_notify.

use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::notify::Notifier;
use crate::config::Config;
use crate::engine::{Engine, EngineError, Event, Observer, Prepared, Trigger};
use crate::journal::{Journal, RunKind, RunState};
use crate::plans::PlanContext;
use crate::status::{Status, backup_state, phase};

/// Errors the interfaces report, with stable D-Bus names under `org.recoveryd.Recovery1.Error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgs(String),
    #[error("{0}")]
    Corrupted(String),
    #[error("{0}")]
    AccessDenied(String),
    #[error("{0}")]
    Failed(String),
}

impl ApiError {
    pub fn name(&self) -> &'static str {
        match self {
            ApiError::Busy(_) => "org.recoveryd.Recovery1.Error.Busy",
            ApiError::NotFound(_) => "org.recoveryd.Recovery1.Error.NotFound",
            ApiError::InvalidArgs(_) => "org.recoveryd.Recovery1.Error.InvalidArgs",
            ApiError::Corrupted(_) => "org.recoveryd.Recovery1.Error.Corrupted",
            ApiError::AccessDenied(_) => "org.recoveryd.Recovery1.Error.AccessDenied",
            ApiError::Failed(_) => "org.recoveryd.Recovery1.Error.Failed",
        }
    }

    fn from_engine(e: anyhow::Error) -> ApiError {
        match e.downcast_ref::<EngineError>() {
            Some(EngineError::Busy(m)) => ApiError::Busy(m.clone()),
            Some(EngineError::RecoveryOpen { .. }) => ApiError::Busy(e.to_string()),
            Some(EngineError::NotFound(_)) => ApiError::NotFound(e.to_string()),
            Some(EngineError::NotResumable { .. }) => ApiError::InvalidArgs(e.to_string()),
            None => ApiError::Failed(format!("{e:#}")),
        }
    }
}

/// What a client sees of a run as it happens.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DaemonEvent {
    RunStarted {
        run: i64,
        kind: RunKind,
        resumed: bool,
    },
    StageStarted {
        run: i64,
        stage: String,
    },
    StepStarted {
        run: i64,
        stage: String,
        step: String,
        attempt: u32,
        index: usize,
        total: usize,
    },
    StepProgress {
        run: i64,
        step: String,
        done: u64,
        total: u64,
        message: String,
    },
    StepFinished {
        run: i64,
        stage: String,
        step: String,
        state: String,
        detail: String,
        index: usize,
        total: usize,
    },
    RunFinished {
        run: i64,
        kind: RunKind,
        state: RunState,
        /// For backups, TALM's name for the outcome (`Succeeded`, `Timeout`, `Error`).
        phase: String,
        message: String,
    },
    /// No run executes any more (sent after `RunFinished`, once the slot is free).
    Idle,
}

impl DaemonEvent {
    pub fn run(&self) -> i64 {
        match self {
            DaemonEvent::RunStarted { run, .. }
            | DaemonEvent::StageStarted { run, .. }
            | DaemonEvent::StepStarted { run, .. }
            | DaemonEvent::StepProgress { run, .. }
            | DaemonEvent::StepFinished { run, .. }
            | DaemonEvent::RunFinished { run, .. } => *run,
            DaemonEvent::Idle => 0,
        }
    }
}

/// Live progress of the executing run (for the `Progress` property and STATUS=).
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub run: Option<i64>,
    pub kind: Option<RunKind>,
    pub stage: Option<String>,
    pub step: Option<String>,
    pub done: usize,
    pub total: usize,
}

impl Live {
    pub fn percent(&self) -> u32 {
        (self.done * 100).checked_div(self.total).unwrap_or(0) as u32
    }
}

/// Turns engine events into daemon events and sd_notify statuses.
struct Broadcaster {
    tx: broadcast::Sender<DaemonEvent>,
    notifier: Arc<Notifier>,
    live: Arc<Mutex<Live>>,
}

impl Observer for Broadcaster {
    fn event(&self, e: &Event<'_>) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let ev = match *e {
            Event::RunStarted { run, kind, resumed } => {
                *live = Live {
                    run: Some(run),
                    kind: Some(kind),
                    ..Live::default()
                };
                self.notifier.status(&format!(
                    "{kind} run {run} {}",
                    if resumed { "resumed" } else { "started" }
                ));
                DaemonEvent::RunStarted { run, kind, resumed }
            }
            Event::StageStarted { run, stage } => {
                live.stage = Some(stage.to_string());
                self.notifier.status(&format!("run {run}: stage {stage}"));
                DaemonEvent::StageStarted {
                    run,
                    stage: stage.into(),
                }
            }
            Event::StepStarted {
                run,
                stage,
                step,
                attempt,
                index,
                total,
            } => {
                live.step = Some(step.to_string());
                live.done = index;
                live.total = total;
                self.notifier.status(&format!(
                    "run {run}: {stage}: {step} ({}/{total})",
                    index + 1
                ));
                DaemonEvent::StepStarted {
                    run,
                    stage: stage.into(),
                    step: step.into(),
                    attempt,
                    index,
                    total,
                }
            }
            Event::StepProgress {
                run,
                step,
                done,
                total,
                message,
            } => DaemonEvent::StepProgress {
                run,
                step: step.into(),
                done,
                total,
                message: message.into(),
            },
            Event::StepFinished {
                run,
                stage,
                step,
                state,
                detail,
                index,
                total,
            } => {
                live.done = index + 1;
                live.total = total;
                DaemonEvent::StepFinished {
                    run,
                    stage: stage.into(),
                    step: step.into(),
                    state: state.to_string(),
                    detail: detail.into(),
                    index,
                    total,
                }
            }
            Event::RunFinished {
                run,
                kind,
                state,
                message,
            } => {
                self.notifier.status(&format!("{kind} run {run} {state}"));
                DaemonEvent::RunFinished {
                    run,
                    kind,
                    state,
                    phase: phase(kind, state),
                    message: message.into(),
                }
            }
        };
        drop(live);
        let _ = self.tx.send(ev);
    }
}

struct Active {
    run: i64,
    kind: RunKind,
    cancel: CancellationToken,
}

pub struct RunManager {
    pub config: Arc<Config>,
    pub journal: Arc<Journal>,
    pub plans: Arc<PlanContext>,
    pub events: broadcast::Sender<DaemonEvent>,
    pub live: Arc<Mutex<Live>>,
    engine: Arc<Engine>,
    active: Mutex<Option<Active>>,
    shutdown: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
}

/// Options of a recovery request.
#[derive(Debug, Clone, Default)]
pub struct RecoverOptions {
    pub force: bool,
    pub allow_foreign: bool,
    pub step: bool,
    pub generation: Option<String>,
}

impl RunManager {
    pub fn new(
        config: Arc<Config>,
        journal: Arc<Journal>,
        plans: Arc<PlanContext>,
        notifier: Arc<Notifier>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<RunManager>> {
        let (tx, _) = broadcast::channel(1024);
        let live = Arc::new(Mutex::new(Live::default()));
        let observer = Arc::new(Broadcaster {
            tx: tx.clone(),
            notifier,
            live: live.clone(),
        });
        let engine =
            Engine::new(config.clone(), journal.clone(), observer)?.with_shutdown(shutdown.clone());
        Ok(Arc::new(RunManager {
            config,
            journal,
            plans,
            events: tx,
            live,
            engine: Arc::new(engine),
            active: Mutex::new(None),
            shutdown,
            tasks: tokio_util::task::TaskTracker::new(),
        }))
    }

    /// The run executing now.
    pub fn current(&self) -> Option<(i64, RunKind)> {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|a| (a.run, a.kind))
    }

    /// Take the single-flight slot and start a prepared run in the background.
    fn launch(
        self: &Arc<Self>,
        prepare: impl FnOnce(&Engine) -> anyhow::Result<Prepared>,
    ) -> Result<i64, ApiError> {
        if self.shutdown.is_cancelled() {
            return Err(ApiError::Failed("recoveryd is stopping".into()));
        }
        let mut slot = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = slot.as_ref() {
            return Err(ApiError::Busy(format!(
                "{} run {} is in progress",
                a.kind, a.run
            )));
        }
        let engine = self.engine.clone();
        let prepared = prepare(&engine).map_err(ApiError::from_engine)?;
        let (run, kind) = (prepared.run, prepared.kind);
        let cancel = CancellationToken::new();
        *slot = Some(Active {
            run,
            kind,
            cancel: cancel.clone(),
        });
        drop(slot);
        let me = self.clone();
        self.tasks.spawn(async move {
            match engine.execute(prepared, cancel).await {
                Ok(report) => tracing::debug!(
                    "run {} ended {}: {}",
                    report.run,
                    report.state,
                    report.message
                ),
                Err(e) => tracing::error!(recovery_run = run, "run {run} stopped: {e:#}"),
            }
            let mut slot = me.active.lock().unwrap_or_else(|p| p.into_inner());
            if slot.as_ref().is_some_and(|a| a.run == run) {
                *slot = None;
            }
            drop(slot);
            *me.live.lock().unwrap_or_else(|p| p.into_inner()) = Live::default();
            let _ = me.events.send(DaemonEvent::Idle);
        });
        Ok(run)
    }

    /// Refuse early when a run executes (the slot is checked again when the run is launched).
    fn ensure_idle(&self) -> Result<(), ApiError> {
        match self.current() {
            Some((run, kind)) => Err(ApiError::Busy(format!("{kind} run {run} is in progress"))),
            None => Ok(()),
        }
    }

    pub fn start_backup(self: &Arc<Self>) -> Result<i64, ApiError> {
        self.ensure_idle()?;
        let plan = crate::plans::backup_plan(&self.plans);
        self.launch(|e| e.prepare_new(plan, serde_json::json!({})))
    }

    pub fn start_recovery(self: &Arc<Self>, o: RecoverOptions) -> Result<i64, ApiError> {
        self.ensure_idle()?;
        let generation = match &o.generation {
            Some(g) => self
                .plans
                .store
                .open(g)
                .map_err(|e| ApiError::NotFound(format!("{e:#}")))?,
            None => self
                .plans
                .store
                .latest()
                .map_err(|e| ApiError::Failed(format!("{e:#}")))?
                .ok_or_else(|| {
                    ApiError::NotFound(
                        "there is no committed generation; take a backup first".into(),
                    )
                })?,
        };
        // A damaged or tampered manifest is refused before a run exists.
        crate::plans::restore::trusted_manifest(&generation, Some(&self.journal)).map_err(|e| {
            if crate::files::is_corruption(&e) {
                ApiError::Corrupted(format!("{e:#}"))
            } else {
                ApiError::Failed(format!("{e:#}"))
            }
        })?;
        if !o.force {
            crate::plans::check::journal_readable_after_rollback(&generation.info, &self.journal)
                .map_err(|e| ApiError::Failed(format!("{e:#}")))?;
        }
        let options = serde_json::json!({
            "plan": "recover", "force": o.force, "allow_foreign": o.allow_foreign, "step": o.step,
            "generation": generation.info.id,
        });
        let plan = crate::plans::recovery_plan(&self.plans);
        self.launch(|e| e.prepare_new(plan, options))
    }

    /// Continue the open recovery. With `boot`, a run that is paused or failed is left for an
    /// operator, and the call counts toward the boot-loop breaker. Returns `None` when there is
    /// nothing to resume.
    pub fn resume(self: &Arc<Self>, boot: bool) -> Result<Option<i64>, ApiError> {
        let open = self
            .journal
            .open_run(RunKind::Recovery)
            .map_err(|e| ApiError::Failed(e.to_string()))?;
        let Some(run) = open else {
            if boot {
                return Ok(None);
            }
            return Err(ApiError::NotFound(
                "there is no open recovery to resume".into(),
            ));
        };
        if let Some((cur, _)) = self.current()
            && cur == run.id
        {
            return Ok(Some(cur));
        }
        if boot && matches!(run.state, RunState::Paused | RunState::Failed) {
            tracing::warn!(
                recovery_run = run.id,
                "recovery run {} is {}; it is left for an operator (`recoveryctl resume`)",
                run.id,
                run.state
            );
            return Ok(None);
        }
        let plan = crate::plans::plan_for(run.kind, &run.options, &self.plans);
        let trigger = if boot {
            Trigger::Boot
        } else {
            Trigger::Operator
        };
        self.launch(|e| e.prepare_resume(run.id, plan, trigger, None))
            .map(Some)
    }

    /// Start the open recovery over, running to the end (step mode needs `--offline`).
    pub fn restart(self: &Arc<Self>) -> Result<i64, ApiError> {
        let run = self
            .journal
            .open_run(RunKind::Recovery)
            .map_err(|e| ApiError::Failed(e.to_string()))?
            .ok_or_else(|| ApiError::NotFound("there is no open recovery to restart".into()))?;
        let plan = crate::plans::plan_for(run.kind, &run.options, &self.plans);
        self.launch(|e| e.prepare_restart(run.id, plan, Some(false)))
    }

    /// Cancel the executing run, or else the open recovery.
    pub fn cancel(self: &Arc<Self>) -> Result<String, ApiError> {
        if let Some(a) = self
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            a.cancel.cancel();
            return Ok(format!("cancelling {} run {}", a.kind, a.run));
        }
        let run = self
            .journal
            .open_run(RunKind::Recovery)
            .map_err(|e| ApiError::Failed(e.to_string()))?
            .ok_or_else(|| {
                ApiError::NotFound("no run is in progress and no recovery is open".into())
            })?;
        self.engine
            .cancel_idle(run.id)
            .map_err(ApiError::from_engine)?;
        Ok(format!("recovery run {} cancelled", run.id))
    }

    pub fn status(&self) -> Result<Status, ApiError> {
        Status::read(&self.journal, &self.plans.store)
            .map_err(|e| ApiError::Failed(format!("{e:#}")))
    }

    /// `State`: idle, a backup state name, or `recovery:<stage>`.
    pub fn state(&self) -> String {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match (live.run, live.kind) {
            (Some(run), Some(RunKind::Backup)) => match self.journal.run(run) {
                Ok(Some(r)) => backup_state(&r).to_string(),
                _ => "Active".into(),
            },
            (Some(_), Some(RunKind::Recovery)) => {
                format!("recovery:{}", live.stage.unwrap_or_default())
            }
            _ => crate::status::state(&self.journal).unwrap_or_else(|_| "unknown".into()),
        }
    }

    /// Resume what a previous daemon left running (a restart, a crash, or a reboot in the
    /// middle of a recovery). Counts toward the boot-loop breaker.
    pub fn resume_interrupted(self: &Arc<Self>) {
        if let Ok(Some(r)) = self.journal.open_run(RunKind::Recovery)
            && matches!(r.state, RunState::Running | RunState::AwaitingReboot)
        {
            match self.resume(true) {
                Ok(Some(run)) => tracing::info!(
                    recovery_run = run,
                    "resuming interrupted recovery run {run}"
                ),
                Ok(None) => {}
                Err(e) => tracing::error!("could not resume recovery run {}: {e}", r.id),
            }
        }
        // A backup cannot be continued: one left open by a crash is marked failed.
        if let Ok(Some(b)) = self.journal.open_run(RunKind::Backup)
            && self.current().is_none()
        {
            let plans = self.plans.clone();
            match self
                .engine
                .abandon_stale_backups(|| crate::plans::clean_store(&plans))
            {
                Ok(detail) if !detail.is_empty() => tracing::info!(
                    recovery_run = b.id,
                    "interrupted backup run {}: {detail}",
                    b.id
                ),
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!("could not close interrupted backup run {}: {err:#}", b.id)
                }
            }
        }
    }

    /// Wait for the executing run to stop (after the shutdown token was cancelled).
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}
