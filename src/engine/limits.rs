//! One step attempt within its limits: a timeout, cancellation of the run, a shutdown, a panic.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use super::{CANCEL_GRACE, Outcome, SHUTDOWN_GRACE, Step, StepContext};

/// The run and step a task is executing, for what the step calls to say who called it (the
/// names of the transient units external programs run in).
#[derive(Debug, Clone, Copy)]
pub struct RunningStep {
    pub run: i64,
    pub step: &'static str,
}

tokio::task_local! {
    static RUNNING: RunningStep;
}

/// The step the current task is executing, if it is one.
pub fn running_step() -> Option<RunningStep> {
    RUNNING.try_with(|r| *r).ok()
}

/// `f`, as the work of `step` of `run` (for [`running_step`]).
pub(super) async fn as_step<F: std::future::Future>(
    run: i64,
    step: &'static str,
    f: F,
) -> F::Output {
    RUNNING.scope(RunningStep { run, step }, f).await
}

/// Why a step attempt did not produce an outcome.
#[derive(Debug, thiserror::Error)]
pub(super) enum StepFailure {
    #[error("{0:#}")]
    Error(anyhow::Error),
    #[error("timed out after {}", humantime::format_duration(Duration::from_secs(.0.as_secs().max(1))))]
    Timeout(Duration),
    #[error("cancelled")]
    Cancelled,
    #[error("panicked: {0}")]
    Panicked(String),
    #[error("interrupted by a shutdown")]
    Shutdown,
}

/// How long a step gets to stop once the shutdown grace is over: with [`SHUTDOWN_GRACE`] it
/// stays below systemd's default stop timeout.
const SHUTDOWN_STOP_GRACE: Duration = Duration::from_secs(10);

/// Ask a step to stop, and abort its task if it has not within `grace`.
async fn stop(
    handle: &mut tokio::task::JoinHandle<Result<Outcome>>,
    cancel: &CancellationToken,
    grace: Duration,
) {
    cancel.cancel();
    if tokio::time::timeout(grace, &mut *handle).await.is_err() {
        handle.abort();
    }
}

pub(super) async fn run_with_limits(
    step: Arc<dyn Step>,
    cx: StepContext,
    timeout: Duration,
    run_cancel: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<Outcome, StepFailure> {
    let step_cancel = cx.cancel.clone();
    let running = RunningStep {
        run: cx.run,
        step: cx.step,
    };
    let mut handle = tokio::spawn(RUNNING.scope(running, async move { step.run(&cx).await }));
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
            stop(&mut handle, &step_cancel, CANCEL_GRACE).await;
            Err(StepFailure::Timeout(timeout))
        }
        _ = run_cancel.cancelled() => {
            stop(&mut handle, &step_cancel, CANCEL_GRACE).await;
            Err(StepFailure::Cancelled)
        }
        _ = shutdown.cancelled() => {
            // Let the step finish if it can; a short step then needs no repeating.
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut handle).await {
                Ok(r) => joined(r),
                Err(_) => {
                    stop(&mut handle, &step_cancel, SHUTDOWN_STOP_GRACE).await;
                    Err(StepFailure::Shutdown)
                }
            }
        }
    }
}
