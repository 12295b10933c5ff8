//! What a monitoring system needs to know about recoveryd on this node, as a Prometheus
//! textfile for node_exporter's textfile collector: when the last backup succeeded, its size
//! and duration, how many generations there are, how each kind of run last ended, whether a
//! recovery is open, whether the boot-loop breaker stopped one. Written after every run and at
//! daemon start, atomically (temporary file, fsync, rename), so the collector never reads half.
//!
//! The exposition format is a few lines of text; it is written by hand rather than with a
//! client library, which would bring a registry and an HTTP stack for six gauges.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::journal::{RunKind, RunRecord, RunState};

use super::Ops;

/// Seconds since the epoch of a journal time (`2026-12-01T10:00:00.123Z`).
fn epoch(t: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64())
}

const STATES: [RunState; 7] = [
    RunState::Running,
    RunState::Paused,
    RunState::AwaitingReboot,
    RunState::Succeeded,
    RunState::Failed,
    RunState::Timeout,
    RunState::Cancelled,
];

impl Ops {
    /// The metrics as the textfile collector reads them.
    pub(crate) fn metrics_text(&self) -> Result<String> {
        let j = &self.journal;
        let mut s = String::new();
        let mut gauge = |name: &str, help: &str, lines: Vec<(String, f64)>| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, v) in lines {
                let _ = writeln!(s, "{name}{labels} {v}");
            }
        };
        let runs = j.runs(1000)?;
        let last_ok_backup = runs
            .iter()
            .find(|r| r.kind == RunKind::Backup && r.state == RunState::Succeeded);
        // One listing of the store for both the newest generation and the count.
        let gens = self.plans.store.list().unwrap_or_default();
        let newest = gens.last();
        gauge(
            "recoveryd_last_successful_backup_timestamp_seconds",
            "When the last backup that succeeded finished (0: none yet).",
            vec![(
                String::new(),
                last_ok_backup
                    .and_then(|r| r.finished.as_deref().and_then(epoch))
                    .unwrap_or(0.0),
            )],
        );
        gauge(
            "recoveryd_last_successful_backup_duration_seconds",
            "How long the last backup that succeeded took.",
            vec![(
                String::new(),
                last_ok_backup
                    .and_then(|r| Some(epoch(r.finished.as_deref()?)? - epoch(&r.started)?))
                    .unwrap_or(0.0),
            )],
        );
        gauge(
            "recoveryd_newest_generation_bytes",
            "Bytes of node files in the newest generation.",
            vec![(
                String::new(),
                newest.as_ref().map_or(0.0, |g| g.info.bytes as f64),
            )],
        );
        gauge(
            "recoveryd_generations",
            "Committed generations in the state directory.",
            vec![(String::new(), gens.len() as f64)],
        );
        let mut last = Vec::new();
        for kind in [RunKind::Backup, RunKind::Recovery] {
            let latest: Option<&RunRecord> = runs.iter().find(|r| r.kind == kind);
            for state in STATES {
                let v = latest.is_some_and(|r| r.state == state);
                last.push((
                    format!("{{kind=\"{kind}\",state=\"{state}\"}}"),
                    f64::from(u8::from(v)),
                ));
            }
        }
        gauge(
            "recoveryd_last_run_state",
            "1 for the state the last run of each kind is in.",
            last,
        );
        let open = j.open_run(RunKind::Recovery)?;
        gauge(
            "recoveryd_recovery_in_progress",
            "1 while a recovery is open (running, paused or waiting for a reboot).",
            vec![(String::new(), f64::from(u8::from(open.is_some())))],
        );
        let latest_recovery = runs.iter().find(|r| r.kind == RunKind::Recovery);
        let tripped = latest_recovery.is_some_and(|r| {
            r.state == RunState::Failed && r.no_progress_boots >= self.config.recovery.boot_attempts
        });
        gauge(
            "recoveryd_boot_loop_breaker_tripped",
            "1 when the boot-loop breaker stopped the last recovery: the node needs a person.",
            vec![(String::new(), f64::from(u8::from(tripped)))],
        );
        Ok(s)
    }

    /// Write the textfile, if one is configured.
    pub(crate) fn write_metrics(&self) {
        let Some(file) = &self.config.host.metrics_textfile else {
            return;
        };
        let path = self.config.host_path(file);
        if let Err(e) = self
            .metrics_text()
            .and_then(|text| write_atomically(&path, &text))
        {
            tracing::warn!("writing the metrics to {}: {e:#}", path.display());
        }
    }
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().context("a metrics file has a directory")?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
