//! The read-only commands, answered from the state directory in this process: the journal,
//! the generations, verify, diff and the recovery's dry run.

use anyhow::{Context, Result};

use super::{Out, exit};
use crate::config::Config;
use crate::files::restore::RestoreReport;
use crate::journal::Journal;
use crate::ops::Ops;
use crate::protocol::RecoverRequest;
use crate::protocol::inspect::{Diff, GenerationEntry, Generations, RunDetail, Runs};

/// A one-paragraph account of a restore or diff.
pub(crate) fn summarize(r: &RestoreReport) -> String {
    crate::plans::restore::summarize(r)
}

pub(super) fn journal(out: &Out, config: &Config, run: Option<i64>, limit: u32) -> Result<u8> {
    let journal = Journal::open_existing(&config.journal_path())?;
    match run {
        Some(id) => {
            let r = journal
                .run(id)?
                .with_context(|| format!("no run {id} in the journal"))?;
            let d = RunDetail {
                steps: journal.steps(id)?,
                vars: journal.vars(id)?,
                run: r,
            };
            out.print(&d, || d.human());
        }
        None => {
            let runs = Runs {
                runs: journal.runs(limit)?,
            };
            out.print(&runs, || runs.human());
        }
    }
    Ok(exit::OK)
}

pub(super) fn generations(out: &Out, config: &Config) -> Result<u8> {
    let ops = Ops::open_read_only(config.clone())?;
    let gens: Vec<GenerationEntry> = ops
        .plans
        .store
        .list()?
        .into_iter()
        .map(|g| GenerationEntry {
            in_journal: ops.journal.generation(&g.info.id).ok().flatten().is_some(),
            dir: g.dir,
            info: g.info,
        })
        .collect();
    let g = Generations { generations: gens };
    out.print(&g, || g.human(ops.plans.store.dir()));
    Ok(exit::OK)
}

pub(super) fn verify(out: &Out, config: &Config, generation: &Option<String>) -> Result<u8> {
    let ops = Ops::open_read_only(config.clone())?;
    let r = match ops.verify(generation.as_deref()) {
        Ok(r) => r,
        Err(e) => return Ok(out.error(&e)),
    };
    out.print(&r, || r.summary() + "\n");
    Ok(if r.ok { exit::OK } else { exit::CORRUPTED })
}

pub(super) fn diff(out: &Out, config: &Config, generation: &Option<String>) -> Result<u8> {
    let ops = Ops::open_read_only(config.clone())?;
    let (generation, r) = match ops.diff(generation.as_deref()) {
        Ok(x) => x,
        Err(e) => return Ok(out.error(&e)),
    };
    let summary = format!("generation {generation}: {}", summarize(&r));
    let d = Diff {
        generation,
        changes: r.changes,
        mounts_left: r.mounts_left,
        notes: r.notes,
    };
    out.print(&d, || d.human());
    if !out.json {
        eprintln!("{summary}");
    }
    Ok(exit::OK)
}

pub(super) fn dry_run(out: &Out, config: &Config, r: &RecoverRequest) -> Result<u8> {
    let ops = Ops::open_read_only(config.clone())?;
    let result = super::runtime()?.block_on(ops.dry_run(r));
    match result {
        Ok(d) => {
            out.print(&d, || d.human());
            Ok(exit::OK)
        }
        Err(e) => Ok(out.error(&e)),
    }
}
