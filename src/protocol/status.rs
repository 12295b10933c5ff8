//! The status every interface reports (`recoveryctl status`, D-Bus `GetStatus`, the socket).

use serde::{Deserialize, Serialize};

use super::inspect::{GenerationEntry, generation_table};
use crate::files::store::StoreStats;
use crate::journal::{RunKind, RunRecord, RunState};
use crate::text::human_bytes;

/// A backup's state in the names TALM reports.
pub(crate) fn backup_state(run: &RunRecord) -> &'static str {
    match run.state {
        RunState::Running | RunState::Paused | RunState::AwaitingReboot => {
            match run.stage.as_deref() {
                None => "PreparingToStart",
                Some("preflight") => "Starting",
                Some(_) => "Active",
            }
        }
        RunState::Succeeded => "Succeeded",
        RunState::Timeout => "Timeout",
        RunState::Failed | RunState::Cancelled => "Error",
    }
}

/// TALM's name for a backup's outcome (`Active` while it runs); the run state for recoveries.
pub(crate) fn phase(kind: RunKind, state: RunState) -> String {
    match kind {
        RunKind::Backup => match state {
            RunState::Succeeded => "Succeeded".into(),
            RunState::Timeout => "Timeout".into(),
            RunState::Failed | RunState::Cancelled => "Error".into(),
            RunState::Running | RunState::Paused | RunState::AwaitingReboot => "Active".into(),
        },
        RunKind::Recovery => state.to_string(),
    }
}

/// What the status shows as a run's phase: TALM's state for backups, the stage for recoveries.
pub(crate) fn phase_of(run: &RunRecord) -> String {
    match run.kind {
        RunKind::Backup => backup_state(run).to_string(),
        RunKind::Recovery => run.stage.clone().unwrap_or_else(|| "starting".into()),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RunSummary {
    pub id: i64,
    pub kind: RunKind,
    pub state: RunState,
    /// For backups, the TALM state name; for recoveries, the current stage.
    pub phase: String,
    pub stage: Option<String>,
    pub started: String,
    pub finished: Option<String>,
    pub error: Option<String>,
    pub steps_done: u32,
    pub steps_total: u32,
    pub progress: u8,
}

/// Where the executing run is right now (the daemon's view; absent offline).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Live {
    pub run: Option<i64>,
    pub kind: Option<RunKind>,
    pub stage: Option<String>,
    pub step: Option<String>,
    /// Steps done and in the plan.
    pub steps_done: usize,
    pub steps_total: usize,
    /// Inside the step: items and bytes done of their totals (0 when unknown).
    pub done: u64,
    pub total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

impl Live {
    /// Percent of the run's steps that are done.
    pub(crate) fn percent(&self) -> u32 {
        (self.steps_done * 100)
            .checked_div(self.steps_total)
            .unwrap_or(0) as u32
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// `idle`, a backup state (`Active`, ...) or `recovery:<stage>`.
    pub state: String,
    /// The run executing now (or left open by a crash or a reboot).
    pub current_run: Option<RunSummary>,
    /// Progress of the executing run (through the daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<Live>,
    pub last_backup: Option<RunSummary>,
    pub last_recovery: Option<RunSummary>,
    /// The committed generations on disk, oldest first (as `generations` lists them).
    pub generations: Vec<GenerationEntry>,
    /// What the object store holds (absent when it cannot be read; the reason is logged).
    pub store: Option<StoreStats>,
    /// What an operator must know about the state directory (shared with TALM's backup,
    /// emptied under the daemon).
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl Status {
    /// What `recoveryctl status` prints.
    pub(crate) fn human(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "state: {}", self.state);
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        if let Some(l) = &self.live
            && let Some(step) = &l.step
        {
            let _ = writeln!(s, "step: {step} ({}% of the run)", l.percent());
        }
        let line = |r: &RunSummary| {
            let mut l = format!(
                "run {} {} {} ({}), {}/{} steps, started {}",
                r.id, r.kind, r.state, r.phase, r.steps_done, r.steps_total, r.started
            );
            if let Some(e) = &r.error {
                let _ = write!(l, "\n    error: {e}");
            }
            l
        };
        if let Some(r) = &self.current_run {
            let _ = writeln!(s, "current: {}", line(r));
        }
        if let Some(r) = &self.last_backup {
            let _ = writeln!(s, "last backup: {}", line(r));
        }
        if let Some(r) = &self.last_recovery {
            let _ = writeln!(s, "last recovery: {}", line(r));
        }
        if let Some(st) = &self.store {
            let _ = writeln!(
                s,
                "store: {} on disk in {} objects ({} referenced, {} unreferenced in {} objects)",
                human_bytes(st.bytes),
                st.objects,
                human_bytes(st.referenced_bytes),
                human_bytes(st.unreferenced_bytes),
                st.unreferenced_objects
            );
        }
        if self.generations.is_empty() {
            let _ = writeln!(s, "generations: none");
        } else {
            let _ = writeln!(s, "generations:");
            for line in generation_table(&self.generations).lines() {
                let _ = writeln!(s, "  {line}");
            }
        }
        s
    }
}
