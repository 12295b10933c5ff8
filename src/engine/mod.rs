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

mod execute;
pub(crate) mod failpoints;
mod limits;
mod messages;
pub mod observer;
pub(crate) mod options;
pub(crate) mod plan;
mod prepare;
pub(crate) mod render;
pub(crate) mod state;
pub(crate) mod step;
pub(crate) mod vars;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

pub use limits::{RunningStep, running_step};
pub(crate) use messages::RunMessage;
pub use observer::{Event, Observer};
pub use options::{PlanKind, RunOptions};
pub use plan::{Cleanup, Plan, Prologue};
pub use step::{Integration, Outcome, PreviewContext, Progress, Step, StepContext};
pub use vars::{Json, Var};

use crate::config::Config;
use crate::journal::{Journal, RunKind, RunLock, RunState};

/// How long a step gets to notice cancellation before the engine records it as ended.
const CANCEL_GRACE: Duration = Duration::from_secs(30);
/// How long a step may go on after a shutdown request (SIGTERM) before it is interrupted. Kept
/// below systemd's default stop timeout (90 s) so that the journal is written before a SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(45);

/// Run variable: the boot in which the breaker last counted an automatic resume.
const BREAKER_BOOT: Var<String> = Var::new("breaker-boot");

/// Errors callers tell apart (the daemon maps them to D-Bus error names).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("busy: {0}")]
    Busy(String),
    #[error("no run {0} in the journal")]
    NotFound(i64),
    #[error(
        "recovery run {run} {}: continue it with `recoveryctl resume`, start it over with \
         `recoveryctl restart`, or cancel it with `recoveryctl cancel`",
        if *interrupted {
            "was interrupted (the process that ran it is gone)".to_string()
        } else {
            format!("is {state}")
        }
    )]
    RecoveryOpen {
        run: i64,
        state: RunState,
        /// Recorded as running, but no process holds the lock: it was killed or crashed.
        interrupted: bool,
    },
    /// A backup asked for while a recovery is open: refused before any run is recorded, so
    /// that a refusal never reads as a failed backup.
    #[error(
        "recovery run {run} is {state} (stage {stage}); backups are refused until it finishes \
         or is cancelled (`recoveryctl status` shows it)"
    )]
    BackupRefused {
        run: i64,
        state: RunState,
        stage: String,
    },
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
    options: RunOptions,
    one_stage: bool,
    lock: RunLock,
    /// Set when the boot-loop breaker stopped the run before anything ran.
    stopped: Option<Report>,
}

/// Read the boot id beneath `root` (`/proc/sys/kernel/random/boot_id` on a node).
pub(crate) fn read_boot_id(config: &Config) -> Result<String> {
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

    /// Record a run's new state, checked against the state machine ([`state::ALLOWED`]).
    fn set_state(&self, run: i64, to: RunState, error: Option<&str>) -> Result<()> {
        let from = self
            .journal
            .run(run)?
            .ok_or(EngineError::NotFound(run))?
            .state;
        state::check(run, from, to)?;
        self.journal.set_run_state(run, to, error)?;
        Ok(())
    }

    fn lock(&self) -> Result<RunLock> {
        // A run journaled into a deleted file would be recorded nowhere: refuse it.
        anyhow::ensure!(
            self.journal.still_on_disk(),
            "{} was removed or replaced while recoveryd ran (the state directory was emptied?); \
             no run starts until recoveryd is restarted (systemctl restart recoveryd)",
            self.journal.path().display()
        );
        match RunLock::acquire(&self.config.state_path()) {
            Ok(l) => Ok(l),
            Err(crate::journal::LockError::Busy { holder }) => {
                Err(EngineError::Busy(holder).into())
            }
            Err(e) => Err(e.into()),
        }
    }
}
