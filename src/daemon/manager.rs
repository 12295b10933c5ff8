//! The daemon's run manager: requests of any transport, decided by the operations layer and
//! executed one at a time in the slot, with one stream of events for every client.

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::broadcast::Broadcaster;
use super::notify::Notifier;
use super::slot::Slot;
use crate::engine::Engine;
use crate::journal::{RunKind, RunState};
use crate::ops::{Ops, Resume};
use crate::protocol::{self, ApiError, Live, RecoverRequest, Reply, Request, Status};

/// What a request that starts or continues a run came to.
pub(crate) enum Started {
    Run { run: i64, kind: RunKind },
    Nothing(String),
}

pub(crate) struct RunManager {
    pub ops: Ops,
    pub events: broadcast::Sender<protocol::Event>,
    pub live: Arc<Mutex<Live>>,
    slot: Arc<Slot>,
}

impl RunManager {
    pub fn new(
        ops: Ops,
        notifier: Arc<Notifier>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<RunManager>> {
        let (tx, _) = broadcast::channel(1024);
        let live = Arc::new(Mutex::new(Live::default()));
        let observer = Arc::new(Broadcaster {
            ops: ops.clone(),
            tx: tx.clone(),
            notifier,
            live: live.clone(),
        });
        let engine = Engine::new(ops.config.clone(), ops.journal.clone(), observer)?
            .with_shutdown(shutdown.clone());
        let slot = Arc::new(Slot::new(
            Arc::new(engine),
            shutdown,
            tx.clone(),
            live.clone(),
        ));
        Ok(Arc::new(RunManager {
            ops,
            events: tx,
            live,
            slot,
        }))
    }

    /// The run executing now.
    pub(crate) fn current(&self) -> Option<(i64, RunKind)> {
        self.slot.current()
    }

    /// Start or continue a run as `request` asks (status and cancel have their own calls).
    pub(crate) fn start(&self, request: &Request) -> Result<Started, ApiError> {
        let started = self.start_run(request);
        // The manifest its checks read is kept for the run; no run, nothing to keep it for.
        if !matches!(started, Ok(Started::Run { .. })) {
            crate::files::parsed::release();
        }
        started
    }

    fn start_run(&self, request: &Request) -> Result<Started, ApiError> {
        let run = |(run, kind)| Started::Run { run, kind };
        match request {
            Request::Backup { .. } => {
                self.slot.ensure_idle()?;
                let new = self.ops.backup();
                self.slot
                    .launch(|e| e.prepare_new(new.plan, new.options))
                    .map(run)
            }
            Request::Recover { .. } => {
                let r: RecoverRequest = request.recover_options().unwrap_or_default();
                self.slot.ensure_idle()?;
                let new = self.ops.recovery(&r)?;
                self.slot
                    .launch(|e| e.prepare_new(new.plan, new.options))
                    .map(run)
            }
            Request::Resume { step: true, .. } | Request::Restart { step: true, .. } => {
                Err(ApiError::InvalidArgs(
                    "step mode runs one stage in the caller's process: use `recoveryctl --offline`"
                        .into(),
                ))
            }
            Request::Resume { boot, .. } => match self.ops.resume(*boot)? {
                Resume::Nothing(why) => {
                    tracing::info!("{why}");
                    Ok(Started::Nothing(why))
                }
                Resume::Run {
                    run: r,
                    plan,
                    trigger,
                } => {
                    if let Some((cur, kind)) = self.slot.current()
                        && cur == r.id
                    {
                        return Ok(Started::Run { run: cur, kind });
                    }
                    self.slot
                        .launch(|e| e.prepare_resume(r.id, plan, trigger, None))
                        .map(run)
                }
            },
            Request::Restart { .. } => {
                let (r, plan) = self.ops.restart()?;
                self.slot
                    .launch(|e| e.prepare_restart(r.id, plan, Some(false)))
                    .map(run)
            }
            Request::Status {} | Request::Cancel {} => Err(ApiError::InvalidArgs(
                "status and cancel start nothing".into(),
            )),
        }
    }

    /// Cancel the executing run, or else the open recovery.
    pub(crate) fn cancel(&self) -> Result<Reply, ApiError> {
        if let Some((run, kind)) = self.slot.cancel_active() {
            return Ok(Reply::Cancel {
                run,
                kind,
                message: format!(
                    "cancelling {kind} run {run}: it stops at the end of its current step; \
                     `recoveryctl cancel` again then, or `recoveryctl status`, says what state the node is in"
                ),
            });
        }
        let r = self.ops.cancel_target()?;
        self.slot
            .engine()
            .cancel_idle(r.id)
            .map_err(|e| ApiError::from_anyhow(&e))?;
        Ok(Reply::Cancel {
            run: r.id,
            kind: r.kind,
            message: self.ops.after_cancel(&r),
        })
    }

    pub(crate) fn live(&self) -> Live {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn status(&self) -> Result<Status, ApiError> {
        self.ops
            .status(Some(self.live()))
            .map_err(|e| ApiError::Failed(format!("{e:#}")))
    }

    /// `State`: idle, a backup state name, or `recovery:<stage>`.
    pub(crate) fn state(&self) -> String {
        crate::ops::state_word(&self.ops.journal, Some(&self.live()))
            .unwrap_or_else(|_| "unknown".into())
    }

    /// The outcome of a run that is no longer executing, from the journal.
    pub(crate) fn outcome(&self, run: i64) -> Option<protocol::RunOutcome> {
        let r = self.ops.journal.run(run).ok().flatten()?;
        Some(protocol::RunOutcome {
            run,
            kind: r.kind,
            state: r.state,
            phase: protocol::status::phase(r.kind, r.state),
            message: r.error.unwrap_or_default(),
        })
    }

    /// Close a backup a crash left open (backups are taken again, not continued), removing
    /// what it left in the store. Called before any client is served, so that nobody sees a
    /// backup of a dead process as still running; nothing runs yet, so the store is quiet.
    pub(crate) fn close_interrupted_backups(&self) {
        if let Ok(Some(b)) = self.ops.journal.open_run(RunKind::Backup) {
            let plans = self.ops.plans.clone();
            match self
                .slot
                .engine()
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

    /// Resume a recovery a previous daemon left running (a restart, a crash, or a reboot in
    /// the middle of it). Counts toward the boot-loop breaker.
    pub(crate) fn resume_interrupted(&self) {
        if let Ok(Some(r)) = self.ops.journal.open_run(RunKind::Recovery)
            && matches!(r.state, RunState::Running | RunState::AwaitingReboot)
        {
            match self.start(&Request::Resume {
                boot: true,
                step: false,
                wait: false,
            }) {
                Ok(Started::Run { run, .. }) => tracing::info!(
                    recovery_run = run,
                    "resuming interrupted recovery run {run}"
                ),
                Ok(Started::Nothing(_)) => {}
                Err(e) => tracing::error!("could not resume recovery run {}: {e}", r.id),
            }
        }
    }

    /// Wait for the executing run to stop (after the shutdown token was cancelled).
    pub(crate) async fn drain(&self) {
        self.slot.drain().await;
    }
}
