//! Refuse a backup early, before anything changes, when it cannot succeed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;

use crate::engine::{Outcome, PreviewContext, Step, StepContext};
use crate::files::backup::bytes_to_copy;
use crate::files::fsx;
use crate::files::previous::Previous;
use crate::files::walk::Walker;
use crate::journal::RunKind;
use crate::plans::blocking;
use crate::plans::context::{Found, PlanContext};
use crate::plans::vars::GENERATION;
use crate::text::human_bytes;

use super::{clean_store, previous_manifest};

/// Refuse early (nothing changed) when the backup cannot succeed.
pub(crate) struct Preflight(pub Arc<PlanContext>);

#[derive(Debug, thiserror::Error)]
#[error(
    "not enough space in {dir}: the backup needs {} plus a margin of {}, but only {} is free \
     (files already stored are not counted; {})",
    human_bytes(*need), human_bytes(*margin), human_bytes(*free),
    if cleaned.is_empty() { "nothing was left to clean up" } else { cleaned.as_str() }
)]
pub(crate) struct NoSpace {
    pub dir: String,
    pub need: u64,
    pub margin: u64,
    pub free: u64,
    /// What the pre-flight removed before it measured.
    pub cleaned: String,
}

#[async_trait]
impl Step for Preflight {
    fn name(&self) -> &'static str {
        "preflight"
    }
    fn stage(&self) -> &'static str {
        "preflight"
    }
    fn describe(&self) -> String {
        "check that no recovery is in progress, that the state directory is in place and has room"
            .into()
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let p = self.0.clone();
        let cx = cx.clone();
        blocking(move || preflight(&p, &cx)).await
    }
    async fn preview(&self, _cx: &PreviewContext) -> Result<String> {
        Ok(self.describe())
    }
}

/// A backup of a tree a recovery could not write back is refused now, not found out during a
/// recovery: under `ProtectSystem=strict` only the unit's `ReadWritePaths=` are writable.
fn refuse_unrestorable(p: &PlanContext, trees: &[PathBuf], extras: &[PathBuf]) -> Result<()> {
    let mut read_only = Vec::new();
    for path in trees.iter().chain(extras) {
        let host = p.config.host_path(path);
        if fsx::on_read_only_mount(&host)
            .with_context(|| format!("checking whether {} is writable", host.display()))?
        {
            read_only.push(path.display().to_string());
        }
    }
    if !read_only.is_empty() {
        bail!(
            "{} read-only for recoveryd, so a recovery could not restore {}: its unit writes only \
             the paths in ReadWritePaths= (systemd/recoveryd.service); add them with a drop-in \
             for recoveryd.service and recoveryd-resume-offline.service, or leave them out of \
             [backup] paths",
            read_only.join(", "),
            if read_only.len() == 1 { "it" } else { "them" }
        );
    }
    Ok(())
}

fn preflight(p: &PlanContext, cx: &StepContext) -> Result<Outcome> {
    if let Some(r) = cx.journal.open_run(RunKind::Recovery)? {
        bail!(
            "recovery run {} is {} (stage {}); backups are refused until it finishes or is cancelled",
            r.id,
            r.state,
            r.stage.as_deref().unwrap_or("-")
        );
    }
    let state = p.config.state_path();
    anyhow::ensure!(
        state.is_dir(),
        "the state directory {} does not exist",
        state.display()
    );
    if let Some(why) = crate::files::neighbours::shared_with_talm(&state) {
        bail!("{why}");
    }
    let mut notes = Vec::new();
    let parent = state.parent().unwrap_or(Path::new("/"));
    if fsx::dev_of(&state)? == fsx::dev_of(parent)? {
        let msg = format!(
            "{} is not a separate mount: a full disk there also fills {}",
            p.config.state_dir.display(),
            parent.display()
        );
        if p.config.backup.require_separate_mount {
            bail!("{msg} ([backup] require_separate_mount = true)");
        }
        tracing::warn!(recovery_run = cx.run, "{msg}");
        notes.push("state directory is not a separate mount".to_string());
    }
    p.store.ensure()?;
    // Start from a clean store: what a crash left (staging, trash, half-written objects) and
    // objects no generation refers to are removed before the space is measured.
    let freed = clean_store(p, &|| cx.checkpoint())?;
    if !freed.is_empty() {
        notes.push(freed.clone());
    }
    crate::plans::reconcile(&cx.journal, &p.store)?;
    // The store now holds nothing these generations do not name.
    let clean = p.store.seen()?;

    let excludes = p.excludes()?;
    // The images select-images chose count like any other file (unchanged layers are shared
    // with the previous generation, as unchanged files are).
    let (trees, extras, _) = p.backup_sources(cx)?;
    refuse_unrestorable(p, &trees, &extras)?;
    // The walk the copy needs, made now and kept for it: one walk per backup (the copy walks
    // again only when a file it lists has gone or changed kind by then). The listing of the
    // store it needs too, made beside the walk: both mostly wait for the disk (begun during
    // the manifest's parse, it slowed the parse, which has the two cores to itself). Only
    // what it lacks of the previous generation is kept (usually nothing; a set of every
    // object held through the walk raised the peak memory at x4 by 4 MiB). Nothing removes
    // objects until the copy (the run lock is held, and the store was cleaned above), so
    // the answer still holds then; the verify step lists again on its own.
    let started = std::time::Instant::now();
    let previous = OnceLock::from(Previous::of(previous_manifest(p)?));
    let read = started.elapsed();
    let named = previous.get().expect("set above").objects();
    let (scan, lacking) = std::thread::scope(|s| {
        let listing = s.spawn(|| p.store.lacking(named));
        let checkpoint = || cx.checkpoint();
        let scan = Walker {
            root: &p.config.root,
            excludes: &excludes,
            checkpoint: &checkpoint,
            previous: &previous,
        }
        .scan(&trees, &extras);
        let lacking = listing
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        anyhow::Ok((scan?, lacking?))
    })?;
    tracing::debug!(
        "preflight: the previous generation read in {read:?}, {} entries walked in {:?}, \
         beside a listing of the store ({} objects the previous generation names missing)",
        scan.entries.len(),
        started.elapsed() - read,
        lacking.len()
    );
    let previous = previous.into_inner().unwrap_or_else(|| Previous::of(None));
    let files = bytes_to_copy(&scan.entries, &previous);
    let extra = if p.config.host.cluster {
        cluster_backup_size(&p.config.root)
    } else {
        0
    };
    let need = files + extra + scan.entries.len() as u64 * 512;
    let free = fsx::free_bytes(&state)?;
    let margin = p.config.backup.space_margin;
    if need.saturating_add(margin) > free {
        return Err(NoSpace {
            dir: p.config.state_dir.display().to_string(),
            need,
            margin,
            free,
            cleaned: freed,
        }
        .into());
    }
    let id = match cx.get(&GENERATION)? {
        Some(id) => id,
        None => {
            let id = p.store.new_id(&cx.journal.generation_ids()?);
            cx.set(&GENERATION, &id)?;
            id
        }
    };
    p.store.create_staging(&id)?;
    notes.insert(
        0,
        format!(
            "generation {id}: {} entries, {} to copy, {} free",
            scan.entries.len(),
            human_bytes(need),
            human_bytes(free)
        ),
    );
    p.keep_walk(
        cx.run,
        &id,
        Found {
            scan,
            previous,
            lacking,
            clean,
        },
    );
    Ok(Outcome::Done(notes.join("; ")))
}

/// What `cluster-backup.sh` will write, measured as the existing script does: the etcd
/// database and the static pod resources (without their `bin/`).
fn cluster_backup_size(root: &Path) -> u64 {
    let db = std::fs::metadata(crate::config::under_root(
        root,
        Path::new("/var/lib/etcd/member/snap/db"),
    ))
    .map(|m| m.len())
    .unwrap_or(0);
    let res = crate::config::under_root(root, Path::new("/etc/kubernetes/static-pod-resources"));
    let mut total = 0;
    let mut stack = vec![res.clone()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                if e.path() != res.join("bin") {
                    stack.push(e.path());
                }
            } else {
                total += m.len();
            }
        }
    }
    db + total
}
