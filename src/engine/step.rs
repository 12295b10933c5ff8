//! A step: one named, idempotent unit of work, and the context it runs in.

use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::observer::{Event, Observer};
use crate::config::Config;
use crate::journal::{Journal, RunKind};

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The side effect happened (or was already in place); the detail is journaled.
    Done(String),
    /// Nothing to do here (a disabled integration, a condition not met); the reason is journaled.
    Skipped(String),
    /// A reboot was requested; the step is complete once the boot id differs.
    AwaitReboot(String),
}

/// A step of a plan. Implementations must be idempotent: the engine runs a step again when a
/// crash interrupted it, and the second run must reach the same end state.
#[async_trait]
pub trait Step: Send + Sync {
    /// Stable name, used in the journal, in failpoints and in `[steps.NAME]`.
    fn name(&self) -> &'static str;
    /// The stage this step belongs to (shown to operators; `--step` stops between stages).
    fn stage(&self) -> &'static str;
    /// One line saying what the step does.
    fn describe(&self) -> String;
    /// True for a step whose completion is a reboot: once it has started in one boot, it is
    /// done in any later boot.
    fn reboot_barrier(&self) -> bool {
        false
    }
    /// For a reboot barrier: checked when the run resumes in a later boot, before the barrier
    /// counts as done (the node booted what it should). An error stops the run, leaves the
    /// barrier waiting and counts as no progress; the detail returned is journaled.
    async fn after_reboot(&self, _cx: &StepContext) -> Result<String> {
        Ok(String::new())
    }
    /// Do the work.
    async fn run(&self, cx: &StepContext) -> Result<Outcome>;
    /// What running the step would change, without changing anything (`--dry-run`).
    async fn preview(&self, _cx: &PreviewContext) -> Result<String> {
        Ok(self.describe())
    }
}

/// What a step can see of the run it belongs to.
#[derive(Clone)]
pub struct StepContext {
    pub run: i64,
    pub kind: RunKind,
    pub step: &'static str,
    pub stage: &'static str,
    pub attempt: u32,
    pub boot_id: String,
    pub journal: Arc<Journal>,
    pub config: Arc<Config>,
    /// Cancelled when the step times out or the run is cancelled. Long steps check it.
    pub cancel: CancellationToken,
    pub(super) observer: Arc<dyn Observer>,
    pub options: serde_json::Value,
}

impl StepContext {
    /// A value kept for later steps of this run (survives crashes and reboots).
    pub fn set_var(&self, key: &str, value: &str) -> Result<()> {
        Ok(self.journal.set_var(self.run, key, value)?)
    }

    pub fn var(&self, key: &str) -> Result<Option<String>> {
        Ok(self.journal.var(self.run, key)?)
    }

    /// Report progress inside the step (shown by `recoveryctl`, the `Progress` property and
    /// STATUS=).
    pub fn progress(&self, done: u64, total: u64, message: &str) {
        self.observer.event(&Event::StepProgress {
            run: self.run,
            step: self.step,
            done,
            total,
            message,
        });
    }

    /// A progress hook for blocking code: counts a checkpoint for `during@N` failpoints and
    /// returns an error once the step is cancelled.
    pub fn checkpoint(&self) -> Result<()> {
        super::failpoints::tick(self.step);
        if self.cancel.is_cancelled() {
            anyhow::bail!("step {} was cancelled", self.step);
        }
        Ok(())
    }

    /// Returns an error once the step is cancelled; counts no failpoint checkpoint (for
    /// read-only passes).
    pub fn check_cancel(&self) -> Result<()> {
        if self.cancel.is_cancelled() {
            anyhow::bail!("step {} was cancelled", self.step);
        }
        Ok(())
    }

    pub fn option_bool(&self, key: &str) -> bool {
        option_bool(&self.options, key)
    }

    pub fn option_str(&self, key: &str) -> Option<String> {
        option_str(&self.options, key)
    }
}

/// A boolean run option (`force`, `step`); absent is false.
pub fn option_bool(options: &serde_json::Value, key: &str) -> bool {
    options.get(key).and_then(|v| v.as_bool()).unwrap_or(false)
}

/// A string run option (`generation`, `plan`).
pub fn option_str(options: &serde_json::Value, key: &str) -> Option<String> {
    options
        .get(key)
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

/// What a step can see when previewing (no run exists).
#[derive(Clone)]
pub struct PreviewContext {
    pub config: Arc<Config>,
    pub journal: Option<Arc<Journal>>,
    pub options: serde_json::Value,
}

impl PreviewContext {
    pub fn option_bool(&self, key: &str) -> bool {
        option_bool(&self.options, key)
    }

    pub fn option_str(&self, key: &str) -> Option<String> {
        option_str(&self.options, key)
    }
}
