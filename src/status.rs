//! The status every interface reports (`recoveryctl status`, D-Bus `GetStatus`, the socket).

use serde::Serialize;

use crate::journal::{GenerationRecord, Journal, RunKind, RunRecord, RunState};

/// A backup's state in the names TALM reports.
pub fn backup_state(run: &RunRecord) -> &'static str {
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
pub fn phase(kind: RunKind, state: RunState) -> String {
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

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
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

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// `idle`, a backup state (`Active`, ...) or `recovery:<stage>`.
    pub state: String,
    /// The run executing now (or left open by a crash or a reboot).
    pub current_run: Option<RunSummary>,
    pub last_backup: Option<RunSummary>,
    pub last_recovery: Option<RunSummary>,
    pub generations: Vec<GenerationRecord>,
    /// What the object store holds (absent when it cannot be read; the reason is logged).
    pub store: Option<crate::files::store::StoreStats>,
}

pub fn summarize(journal: &Journal, run: &RunRecord) -> anyhow::Result<RunSummary> {
    let done = journal.completed_steps(run.id)?;
    let total = run.plan.len() as u32;
    let progress = (done * 100).checked_div(total).unwrap_or(0).min(100) as u8;
    Ok(RunSummary {
        id: run.id,
        kind: run.kind,
        state: run.state,
        phase: match run.kind {
            RunKind::Backup => backup_state(run).to_string(),
            RunKind::Recovery => run.stage.clone().unwrap_or_else(|| "starting".into()),
        },
        stage: run.stage.clone(),
        started: run.started.clone(),
        finished: run.finished.clone(),
        error: run.error.clone(),
        steps_done: done,
        steps_total: total,
        progress,
    })
}

/// The open run, if any: a recovery before a backup.
fn open_run(
    last_backup: &Option<RunRecord>,
    last_recovery: &Option<RunRecord>,
) -> Option<RunRecord> {
    let open = |r: &Option<RunRecord>| r.as_ref().filter(|r| r.state.is_open()).cloned();
    open(last_recovery).or_else(|| open(last_backup))
}

/// The one-word state every interface shows: `idle`, a backup's TALM state, or
/// `recovery:<stage>`.
fn state_word(open: Option<&RunRecord>) -> String {
    match open {
        None => "idle".to_string(),
        Some(r) if r.kind == RunKind::Backup => backup_state(r).to_string(),
        Some(r) => format!(
            "recovery:{}",
            r.stage.clone().unwrap_or_else(|| "starting".into())
        ),
    }
}

/// Only the state word, from two queries (for signals and properties, read often).
pub fn state(journal: &Journal) -> anyhow::Result<String> {
    let last_backup = journal.latest_run(RunKind::Backup)?;
    let last_recovery = journal.latest_run(RunKind::Recovery)?;
    Ok(state_word(open_run(&last_backup, &last_recovery).as_ref()))
}

impl Status {
    pub fn read(journal: &Journal, store: &crate::files::store::Store) -> anyhow::Result<Status> {
        let last_backup = journal.latest_run(RunKind::Backup)?;
        let last_recovery = journal.latest_run(RunKind::Recovery)?;
        let open = open_run(&last_backup, &last_recovery);
        let summary = |r: &Option<RunRecord>| r.as_ref().map(|r| summarize(journal, r)).transpose();
        let last_backup_summary = summary(&last_backup)?;
        let last_recovery_summary = summary(&last_recovery)?;
        // The open run is one of the two latest runs: reuse its summary.
        let current_run = open.as_ref().and_then(|o| {
            [&last_recovery_summary, &last_backup_summary]
                .into_iter()
                .flatten()
                .find(|s| s.id == o.id)
                .cloned()
        });
        Ok(Status {
            state: state_word(open.as_ref()),
            current_run,
            last_backup: last_backup_summary,
            last_recovery: last_recovery_summary,
            generations: journal.generations()?,
            store: match store.stats() {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("cannot measure the object store: {e:#}");
                    None
                }
            },
        })
    }

    pub fn human(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "state: {}", self.state);
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
            use crate::cli::render::human_bytes;
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
            for g in &self.generations {
                let _ = writeln!(s, "  {}", crate::cli::render::generation_line(g));
            }
        }
        s
    }
}
