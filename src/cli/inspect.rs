//! The read-only commands, answered from the state directory in this process: the journal,
//! the generations, verify, diff and the recovery's dry run.

use anyhow::{Context, Result};

use super::GenerationsAction;
use super::{Out, exit};
use crate::config::Config;
use crate::files::restore::RestoreReport;
use crate::journal::Journal;
use crate::ops::Mark;
use crate::ops::Ops;
use crate::protocol::ApiError;
use crate::protocol::RecoverRequest;
use crate::protocol::inspect::{Diff, GenerationChange, RunDetail, Runs};

/// A one-paragraph account of a restore (`done`) or of what one would do.
pub(crate) fn summarize(r: &RestoreReport, done: bool) -> String {
    crate::plans::restore::summarize(r, done)
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

pub(super) fn generations(
    out: &Out,
    config: &Config,
    action: Option<&GenerationsAction>,
) -> Result<u8> {
    let change = |r: Result<GenerationChange, ApiError>| -> Result<u8> {
        match r {
            Ok(c) => {
                out.print(&c, || {
                    format!("generation {}: {}\n", c.generation, c.message)
                });
                Ok(exit::OK)
            }
            Err(e) => Ok(out.error(&e)),
        }
    };
    match action {
        None | Some(GenerationsAction::List) => {
            let ops = Ops::open_read_only(config.clone())?;
            match ops.generations() {
                Ok(g) => {
                    out.print(&g, || g.human(ops.plans.store.dir()));
                    Ok(exit::OK)
                }
                Err(e) => Ok(out.error(&e)),
            }
        }
        Some(GenerationsAction::Protect { generation }) => {
            let ops = Ops::open(config.clone())?;
            change(ops.mark(generation, Mark::Protect))
        }
        Some(GenerationsAction::Unprotect { generation }) => {
            let ops = Ops::open(config.clone())?;
            change(ops.mark(generation, Mark::Unprotect))
        }
        Some(GenerationsAction::Label { generation, text }) => {
            let ops = Ops::open(config.clone())?;
            change(ops.mark(generation, Mark::Label(text.clone())))
        }
        Some(GenerationsAction::Delete { generation, force }) => {
            let ops = Ops::open(config.clone())?;
            change(ops.delete(generation, *force))
        }
    }
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

/// `diff`: exit 0 when restoring would change nothing, 1 when it would, and (as diff(1))
/// 2 when the comparison could not be made, 6 for a generation that cannot be trusted.
pub(super) fn diff(
    out: &Out,
    config: &Config,
    generation: Option<&str>,
    other: Option<&str>,
    quiet: bool,
) -> Result<u8> {
    let trouble = |e: &ApiError| {
        if quiet {
            eprintln!("recoveryctl: {e}");
            if matches!(e, ApiError::Corrupted(_)) {
                exit::CORRUPTED
            } else {
                exit::DIFF_TROUBLE
            }
        } else {
            match out.error(e) {
                exit::CORRUPTED => exit::CORRUPTED,
                _ => exit::DIFF_TROUBLE,
            }
        }
    };
    let ops = match Ops::open_read_only(config.clone()) {
        Ok(o) => o,
        Err(e) => return Ok(trouble(&ApiError::from_anyhow(&e))),
    };
    let (d, summary) = match other {
        None => match ops.diff(generation) {
            Ok((generation, r)) => {
                let summary = format!("generation {generation}: {}", summarize(&r, false));
                let d = Diff {
                    generation,
                    from: None,
                    changes: r.changes,
                    mounts_left: r.mounts_left,
                    notes: r.notes,
                };
                (d, summary)
            }
            Err(e) => return Ok(trouble(&e)),
        },
        Some(to) => {
            let from = generation.unwrap_or("latest");
            match ops.diff_generations(from, to) {
                Ok((from, to, changes)) => {
                    let summary = format!(
                        "generation {to} over generation {from}: {} changes",
                        changes.len()
                    );
                    let d = Diff {
                        generation: to,
                        from: Some(from),
                        changes,
                        mounts_left: Vec::new(),
                        notes: Vec::new(),
                    };
                    (d, summary)
                }
                Err(e) => return Ok(trouble(&e)),
            }
        }
    };
    if !quiet {
        out.print(&d, || d.human());
        if !out.json {
            eprintln!("{summary}");
        }
    }
    Ok(if d.changes.is_empty() {
        exit::OK
    } else {
        exit::DIFFERENCES
    })
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

pub(super) fn check(out: &Out, config: &Config, read_data: bool) -> Result<u8> {
    let ops = Ops::open_read_only(config.clone())?;
    match ops.check(read_data) {
        Ok(c) => {
            out.print(&c, || c.human());
            Ok(if c.ok { exit::OK } else { exit::CORRUPTED })
        }
        Err(e) => Ok(out.error(&e)),
    }
}

pub(super) fn gc(out: &Out, config: &Config) -> Result<u8> {
    let ops = Ops::open(config.clone())?;
    match ops.gc() {
        Ok(g) => {
            out.print(&g, || {
                format!(
                    "{} objects no generation refers to removed ({}), {} kept\n",
                    g.removed,
                    crate::text::human_bytes(g.bytes),
                    g.kept
                )
            });
            Ok(exit::OK)
        }
        Err(e) => Ok(out.error(&e)),
    }
}
