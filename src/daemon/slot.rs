//! The daemon's single-run slot: at most one run executes, it outlives the client that asked
//! for it, and it can be cancelled or drained at shutdown.

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, Prepared};
use crate::journal::RunKind;
use crate::protocol::{self, ApiError, Live};

struct Active {
    run: i64,
    kind: RunKind,
    cancel: CancellationToken,
}

pub(crate) struct Slot {
    engine: Arc<Engine>,
    active: Mutex<Option<Active>>,
    shutdown: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
    events: broadcast::Sender<protocol::Event>,
    live: Arc<Mutex<Live>>,
}

impl Slot {
    pub fn new(
        engine: Arc<Engine>,
        shutdown: CancellationToken,
        events: broadcast::Sender<protocol::Event>,
        live: Arc<Mutex<Live>>,
    ) -> Slot {
        Slot {
            engine,
            active: Mutex::new(None),
            shutdown,
            tasks: tokio_util::task::TaskTracker::new(),
            events,
            live,
        }
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The run executing now.
    pub(crate) fn current(&self) -> Option<(i64, RunKind)> {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|a| (a.run, a.kind))
    }

    /// Refuse early when a run executes (the slot is checked again when the run is launched).
    pub(crate) fn ensure_idle(&self) -> Result<(), ApiError> {
        match self.current() {
            Some((run, kind)) => Err(ApiError::Busy(format!("{kind} run {run} is in progress"))),
            None => Ok(()),
        }
    }

    /// Take the slot and start a prepared run in the background.
    pub(crate) fn launch(
        self: &Arc<Self>,
        prepare: impl FnOnce(&Engine) -> anyhow::Result<Prepared>,
    ) -> Result<(i64, RunKind), ApiError> {
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
        let prepared = prepare(&engine).map_err(|e| ApiError::from_anyhow(&e))?;
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
            crate::files::parsed::release();
            crate::memory::release_free_heap();
            tokio::spawn(crate::memory::release_once_threads_exit());
            let _ = me.events.send(protocol::Event::Idle);
        });
        Ok((run, kind))
    }

    /// Cancel the executing run, if there is one.
    pub(crate) fn cancel_active(&self) -> Option<(i64, RunKind)> {
        let slot = self.active.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().map(|a| {
            a.cancel.cancel();
            (a.run, a.kind)
        })
    }

    /// Wait for the executing run to stop (after the shutdown token was cancelled).
    pub(crate) async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}
