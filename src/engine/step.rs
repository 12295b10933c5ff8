//! A step: one named, idempotent unit of work, and the context it runs in.

use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::observer::{Event, Observer};
use super::options::RunOptions;
use super::vars::{Var, VarValue};
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

/// A host integration a step needs; with it switched off (`[host] ... = false`) the engine
/// records the step as skipped without running it, and the dry run says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integration {
    Systemd,
    Ostree,
    Cluster,
}

impl Integration {
    pub(crate) fn key(self) -> &'static str {
        match self {
            Integration::Systemd => "systemd",
            Integration::Ostree => "ostree",
            Integration::Cluster => "cluster",
        }
    }

    pub(crate) fn enabled(self, config: &Config) -> bool {
        match self {
            Integration::Systemd => config.host.systemd,
            Integration::Ostree => config.host.ostree,
            Integration::Cluster => config.host.cluster,
        }
    }
}

/// Why a step that needs `needs` does not run with this configuration, if it does not.
pub(crate) fn gated(config: &Config, needs: &[Integration]) -> Option<String> {
    needs
        .iter()
        .find(|i| !i.enabled(config))
        .map(|i| format!("[host] {} = false", i.key()))
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
    /// The host integrations the step needs (see [`Integration`]).
    fn needs(&self) -> &'static [Integration] {
        &[]
    }
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
    pub options: RunOptions,
}

impl StepContext {
    /// A value kept for later steps of this run (survives crashes and reboots).
    pub fn set<T: VarValue>(&self, var: &Var<T>, value: &T) -> Result<()> {
        Ok(self.journal.set_var(self.run, var.key(), &value.encode())?)
    }

    /// A value an earlier step kept; an empty one reads as absent.
    pub fn get<T: VarValue>(&self, var: &Var<T>) -> Result<Option<T>> {
        get_var(&self.journal, self.run, var)
    }

    /// Forget a value.
    pub(crate) fn clear<T>(&self, var: &Var<T>) -> Result<()> {
        Ok(self.journal.set_var(self.run, var.key(), "")?)
    }

    /// Report progress inside the step (shown by `recoveryctl`, the `Progress` property and
    /// STATUS=): items done of total, and bytes done of total when the work is bytes.
    pub(crate) fn progress(&self, p: Progress<'_>) {
        self.observer.event(&Event::StepProgress {
            run: self.run,
            step: self.step,
            done: p.done,
            total: p.total,
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
            message: p.message,
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
    pub(crate) fn check_cancel(&self) -> Result<()> {
        if self.cancel.is_cancelled() {
            anyhow::bail!("step {} was cancelled", self.step);
        }
        Ok(())
    }
}

/// A run variable of any run (an empty one reads as absent).
pub(crate) fn get_var<T: VarValue>(journal: &Journal, run: i64, var: &Var<T>) -> Result<Option<T>> {
    match journal.var(run, var.key())? {
        Some(s) if !s.is_empty() => Ok(Some(T::decode(&s)?)),
        _ => Ok(None),
    }
}

/// One progress report of a step.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress<'a> {
    pub done: u64,
    pub total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub message: &'a str,
}

/// What a step can see when previewing (no run exists).
#[derive(Clone)]
pub struct PreviewContext {
    pub config: Arc<Config>,
    pub journal: Option<Arc<Journal>>,
    pub options: RunOptions,
}
