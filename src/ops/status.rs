//! The status, read from the journal and the store (and the daemon's live view).

use anyhow::Result;

use crate::journal::{Journal, RunKind, RunRecord};
use crate::protocol::status::{backup_state, phase_of};
use crate::protocol::{Live, RunSummary, Status};

use super::Ops;

fn summarize(journal: &Journal, run: &RunRecord) -> Result<RunSummary> {
    let done = journal.completed_steps(run.id)?;
    let total = run.plan.len() as u32;
    let progress = (done * 100).checked_div(total).unwrap_or(0).min(100) as u8;
    Ok(RunSummary {
        id: run.id,
        kind: run.kind,
        state: run.state,
        phase: phase_of(run),
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
fn word(open: Option<&RunRecord>) -> String {
    match open {
        None => "idle".to_string(),
        Some(r) if r.kind == RunKind::Backup => backup_state(r).to_string(),
        Some(r) => format!(
            "recovery:{}",
            r.stage.clone().unwrap_or_else(|| "starting".into())
        ),
    }
}

/// Only the state word, from two queries (for signals and properties, read often). With the
/// daemon's live view, the executing run's stage is the live one.
pub(crate) fn state_word(journal: &Journal, live: Option<&Live>) -> Result<String> {
    if let Some(l) = live
        && let (Some(run), Some(kind)) = (l.run, l.kind)
    {
        return Ok(match kind {
            RunKind::Backup => match journal.run(run)? {
                Some(r) => backup_state(&r).to_string(),
                None => "Active".into(),
            },
            RunKind::Recovery => format!("recovery:{}", l.stage.clone().unwrap_or_default()),
        });
    }
    let last_backup = journal.latest_run(RunKind::Backup)?;
    let last_recovery = journal.latest_run(RunKind::Recovery)?;
    Ok(word(open_run(&last_backup, &last_recovery).as_ref()))
}

impl Ops {
    pub(crate) fn status(&self, live: Option<Live>) -> Result<Status> {
        let journal = &self.journal;
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
        let live = live.filter(|l| l.run.is_some());
        Ok(Status {
            state: state_word(journal, live.as_ref())?,
            current_run,
            live,
            last_backup: last_backup_summary,
            last_recovery: last_recovery_summary,
            generations: match self.generations() {
                Ok(g) => g.generations,
                Err(e) => {
                    tracing::warn!("cannot list the generations: {e}");
                    Vec::new()
                }
            },
            warnings: self.warnings(),
            store: match self.store_stats.stats(&self.plans.store) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!("cannot measure the object store: {e:#}");
                    None
                }
            },
        })
    }
}

impl Ops {
    /// What is wrong with the state directory itself.
    pub(crate) fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.journal.still_on_disk() {
            out.push(format!(
                "{} was removed or replaced while recoveryd ran (the state directory was emptied?); \
                 nothing is recorded any more and no run starts: restart recoveryd (systemctl restart recoveryd)",
                self.journal.path().display()
            ));
        }
        if let Some(why) = crate::files::neighbours::shared_with_talm(&self.config.state_path()) {
            out.push(why);
        }
        out
    }
}
