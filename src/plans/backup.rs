//! The file steps of the backup plan: pre-flight, copy, commit, verify, retention.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;

use super::blocking;
use super::context::PlanContext;
use super::vars::{GENERATION, IDENTITY};
use crate::engine::step::get_var;
use crate::engine::{Cleanup, Json, Outcome, PreviewContext, Progress, Step, StepContext};
use crate::files::backup::{Hooks, bytes_to_copy, copy_files};
use crate::files::manifest::{Artifact, FORMAT, Header, Manifest, VERSION};
use crate::files::store::{GenerationInfo, MANIFEST_FILE, NEW_OBJECTS};
use crate::files::walk::Walker;
use crate::files::{bytetext::ByteText, copy::hash_file, fsx, verify};
use crate::journal::{RunKind, RunState};
use crate::text::human_bytes;

const PARTIAL: &str = "files.partial";

pub(super) fn generation_id(cx: &StepContext) -> Result<String> {
    cx.get(&GENERATION)?
        .context("the run has no generation yet (the preflight step did not finish)")
}

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
    super::reconcile(&cx.journal, &p.store)?;

    let excludes = p.excludes()?;
    let extras = p.extras()?;
    let checkpoint = || cx.checkpoint();
    let scan = Walker {
        root: &p.config.root,
        excludes: &excludes,
        checkpoint: &checkpoint,
        sizes_only: true,
    }
    .scan(&p.config.backup.paths, &extras)?;
    let previous = p.store.latest()?.and_then(|g| g.manifest().ok());
    let files = bytes_to_copy(&scan.entries, previous.as_ref());
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
    Ok(Outcome::Done(notes.join("; ")))
}

/// Remove abandoned staging and trash directories, half-written objects, and objects no
/// generation refers to. Returns what was removed, for the journal (empty: nothing).
pub(super) fn clean_store(p: &PlanContext, checkpoint: &dyn Fn() -> Result<()>) -> Result<String> {
    let removed = p.store.clean_abandoned()?;
    let gc = p.store.gc(checkpoint)?;
    let mut parts = removed;
    if gc.removed > 0 {
        parts.push(format!(
            "{} unreferenced objects ({})",
            gc.removed,
            human_bytes(gc.bytes)
        ));
    }
    Ok(if parts.is_empty() {
        String::new()
    } else {
        format!("removed {}", parts.join(", "))
    })
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

/// Copy the trees and the machine-config files into the staging generation.
pub(crate) struct CopyFiles(pub Arc<PlanContext>);

#[async_trait]
impl Step for CopyFiles {
    fn name(&self) -> &'static str {
        "copy-files"
    }
    fn stage(&self) -> &'static str {
        "copy"
    }
    fn describe(&self) -> String {
        let trees: Vec<String> = self
            .0
            .config
            .backup
            .paths
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!(
            "copy {} and the machine-config files, hashing every file",
            trees.join(", ")
        )
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let p = self.0.clone();
        let cx = cx.clone();
        blocking(move || copy(&p, &cx)).await
    }
}

fn copy(p: &PlanContext, cx: &StepContext) -> Result<Outcome> {
    let id = generation_id(cx)?;
    let staging = p.store.staging_path(&id);
    anyhow::ensure!(
        staging.is_dir(),
        "staging directory {} is missing",
        staging.display()
    );
    // A retried attempt starts the copy over (objects already written are reused).
    for leftover in [PARTIAL, NEW_OBJECTS] {
        let l = staging.join(leftover);
        if l.exists() {
            std::fs::remove_file(&l).with_context(|| format!("removing {}", l.display()))?;
        }
    }

    let excludes = p.excludes()?;
    let extras = p.extras()?;
    let checkpoint = || cx.checkpoint();
    let check_cancel = || cx.check_cancel();
    let mut scan = Walker {
        root: &p.config.root,
        excludes: &excludes,
        checkpoint: &checkpoint,
        sizes_only: false,
    }
    .scan(&p.config.backup.paths, &extras)?;
    let prev_gen = p.store.latest()?;
    let prev_manifest = match &prev_gen {
        Some(g) => match g.manifest() {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(
                    "previous generation {} is not usable for sharing: {e:#}",
                    g.info.id
                );
                None
            }
        },
        None => None,
    };
    let progress = |done: u64, total: u64, bytes: u64| {
        cx.progress(Progress {
            done,
            total,
            bytes_done: bytes,
            message: "files copied",
            ..Default::default()
        })
    };
    let hooks = Hooks {
        checkpoint: &checkpoint,
        check_cancel: &check_cancel,
        progress: &progress,
    };
    let stats = copy_files(
        &p.config.root,
        &mut scan.entries,
        &p.store,
        prev_manifest.as_ref(),
        p.config.backup.workers,
        &hooks,
    )?;
    // The objects this backup wrote: the verify step re-reads exactly these.
    let new_objects = staging.join(NEW_OBJECTS);
    std::fs::write(&new_objects, stats.new_objects.join("\n"))
        .with_context(|| format!("writing {}", new_objects.display()))?;
    let mut m = Manifest::new(Header {
        format: FORMAT.into(),
        version: VERSION,
        generation: id.clone(),
        trees: scan.trees,
        extras: scan.extras.into_iter().map(ByteText).collect(),
        extras_absent: scan.extras_absent.into_iter().map(ByteText).collect(),
        exclude: excludes.patterns().to_vec(),
        skipped_mounts: scan.skipped_mounts.into_iter().map(ByteText).collect(),
    });
    m.entries = scan.entries;
    let partial = staging.join(PARTIAL);
    m.write_file(&partial)
        .with_context(|| format!("writing {}", partial.display()))?;
    let mut detail = format!(
        "{} entries; {} files stored ({}), {} already stored ({}), {} hardlinks",
        m.entries.len(),
        stats.copied_files,
        human_bytes(stats.copied_bytes),
        stats.shared_files,
        human_bytes(stats.shared_bytes),
        stats.hardlinks
    );
    if !m.header.skipped_mounts.is_empty() {
        detail.push_str(&format!(
            "; {} mount points skipped",
            m.header.skipped_mounts.len()
        ));
    }
    Ok(Outcome::Done(detail))
}

/// Write the manifest and commit the generation (fsync, rename, journal record).
pub(crate) struct Commit(pub Arc<PlanContext>);

#[async_trait]
impl Step for Commit {
    fn name(&self) -> &'static str {
        "commit"
    }
    fn stage(&self) -> &'static str {
        "commit"
    }
    fn describe(&self) -> String {
        "write the manifest, flush the generation to disk and commit it atomically".into()
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let p = self.0.clone();
        let cx = cx.clone();
        blocking(move || commit(&p, &cx)).await
    }
}

fn commit(p: &PlanContext, cx: &StepContext) -> Result<Outcome> {
    let id = generation_id(cx)?;
    if let Ok(g) = p.store.open(&id) {
        record(cx, &g.info)?;
        return Ok(Outcome::Done(format!(
            "generation {id} was already committed"
        )));
    }
    let staging = p.store.staging_path(&id);
    let manifest_path = staging.join(MANIFEST_FILE);
    // An earlier attempt may have written the manifest and removed files.partial already:
    // continue from the manifest, recomputing its artifacts.
    let partial = staging.join(PARTIAL);
    let mut m = if partial.exists() || !manifest_path.exists() {
        Manifest::read_file(&partial, None)?
    } else {
        let mut m = Manifest::read_file(&manifest_path, None)?;
        m.artifacts.clear();
        m
    };
    for dir in ["cluster", "images"] {
        let base = staging.join(dir);
        if !base.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        let mut stack = vec![base];
        while let Some(d) = stack.pop() {
            let listing =
                std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))?;
            for e in listing {
                let e = e.with_context(|| format!("listing {}", d.display()))?;
                if e.file_type()?.is_dir() {
                    stack.push(e.path());
                } else {
                    files.push(e.path());
                }
            }
        }
        files.sort();
        for f in files {
            let (hash, size) = std::fs::File::open(&f)
                .and_then(|file| hash_file(&file))
                .with_context(|| format!("hashing {}", f.display()))?;
            let rel = f.strip_prefix(&staging).unwrap_or(&f).display().to_string();
            m.artifacts.push(Artifact {
                artifact: rel,
                size,
                hash,
            });
        }
    }
    if manifest_path.exists() {
        std::fs::remove_file(&manifest_path)
            .with_context(|| format!("removing {}", manifest_path.display()))?;
    }
    let hash = m
        .write_file(&manifest_path)
        .with_context(|| format!("writing {}", manifest_path.display()))?;
    if partial.exists() {
        std::fs::remove_file(&partial)
            .with_context(|| format!("removing {}", partial.display()))?;
    }
    let mut identity = p.identity();
    if let Some(Json(recorded)) = cx.get(&IDENTITY)? {
        identity = identity.merged(recorded);
    }
    let info = GenerationInfo {
        format: 1,
        id: id.clone(),
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        manifest_hash: hash.clone(),
        entries: m.entries.len() as u64,
        bytes: m.content_bytes(),
        trees: m.header.trees.clone(),
        identity,
    };
    cx.checkpoint()?;
    let g = p.store.commit(&id, &info)?;
    record(cx, &g.info)?;
    Ok(Outcome::Done(format!(
        "generation {id} committed: {} entries, {}, manifest {}",
        info.entries,
        human_bytes(info.bytes),
        &hash[..16]
    )))
}

fn record(cx: &StepContext, info: &GenerationInfo) -> Result<()> {
    cx.journal
        .record_generation(&super::committed_record(info, Some(cx.run)))?;
    Ok(())
}

/// Re-read the committed generation and check it against its manifest.
pub(crate) struct VerifyGeneration(pub Arc<PlanContext>);

#[async_trait]
impl Step for VerifyGeneration {
    fn name(&self) -> &'static str {
        "verify-generation"
    }
    fn stage(&self) -> &'static str {
        "commit"
    }
    fn describe(&self) -> String {
        "re-hash every stored file of the new generation against its manifest".into()
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let p = self.0.clone();
        let cx = cx.clone();
        blocking(move || {
            let id = generation_id(&cx)?;
            let g = p.store.open(&id)?;
            let checkpoint = || cx.checkpoint();
            let check_cancel = || cx.check_cancel();
            let progress = |_: u64, _: u64, _: u64| {};
            let hooks = Hooks {
                checkpoint: &checkpoint,
                check_cancel: &check_cancel,
                progress: &progress,
            };
            let jh = PlanContext::journal_hash(&cx.journal, &id);
            // Re-read what this backup wrote; objects of earlier backups were verified when
            // they were written and are checked for presence.
            // Without the list (an unreadable file), every object is re-read.
            let new: Option<std::collections::HashSet<String>> = match std::fs::read_to_string(
                g.dir.join(NEW_OBJECTS),
            ) {
                Ok(t) => Some(t.lines().map(str::to_string).collect()),
                Err(e) => {
                    tracing::warn!(
                        "{NEW_OBJECTS} of generation {id} unreadable ({e}); re-hashing every object"
                    );
                    None
                }
            };
            let r = verify::verify(
                &g,
                jh.as_deref(),
                new.as_ref(),
                p.config.backup.workers,
                &hooks,
            )?;
            if !r.ok {
                bail!("{}", r.summary());
            }
            Ok(Outcome::Done(r.summary()))
        })
        .await
    }
}

/// Keep the newest `[backup] keep` generations and any that a recovery still needs.
pub(crate) struct Prune(pub Arc<PlanContext>);

#[async_trait]
impl Step for Prune {
    fn name(&self) -> &'static str {
        "prune"
    }
    fn stage(&self) -> &'static str {
        "retention"
    }
    fn describe(&self) -> String {
        format!(
            "remove generations beyond the newest {}",
            self.0.config.backup.keep
        )
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let p = self.0.clone();
        let bcx = cx.clone();
        let (removed, gc, kept) = blocking(move || {
            let cx = bcx;
            let current = generation_id(&cx)?;
            let mut protected = vec![current.clone()];
            if let Some(r) = cx.journal.open_run(RunKind::Recovery)?
                && let Some(g) = get_var(&cx.journal, r.id, &GENERATION)?
            {
                protected.push(g);
            }
            let gens = p.store.list()?;
            let keep = p.config.backup.keep as usize;
            let mut removed = Vec::new();
            let n = gens.len();
            for (i, g) in gens.into_iter().enumerate() {
                let newest_enough = n - i <= keep;
                if newest_enough || protected.contains(&g.info.id) {
                    continue;
                }
                p.store.remove(&g.info.id)?;
                cx.journal.mark_generation_pruned(&g.info.id)?;
                removed.push(g.info.id);
            }
            // Their content, and anything else no generation refers to any more.
            let gc = p.store.gc(&|| cx.checkpoint())?;
            Ok((removed, gc, n.min(keep)))
        })
        .await?;
        // The pins recoveryd made for deployments no kept generation was taken on.
        let unpinned = super::deployment::unpin_unused(&self.0, cx).await?;
        let mut collected = format!(
            "{} unreferenced objects removed ({}), {} kept",
            gc.removed,
            human_bytes(gc.bytes),
            gc.kept
        );
        if !unpinned.is_empty() {
            collected.push_str("; ");
            collected.push_str(&unpinned.join(", "));
        }
        Ok(
            if removed.is_empty() && gc.removed == 0 && unpinned.is_empty() {
                Outcome::Skipped(format!(
                    "{kept} generation(s) kept, none to remove; {collected}"
                ))
            } else if removed.is_empty() {
                Outcome::Done(collected)
            } else {
                Outcome::Done(format!("removed {}; {collected}", removed.join(", ")))
            },
        )
    }
}

/// On failure, timeout or cancellation: remove the partial generation and every object only
/// it referred to; the previous generation stays as it was, and the store holds nothing that
/// no generation refers to.
pub(crate) struct RemoveStaging(pub Arc<PlanContext>);

#[async_trait]
impl Cleanup for RemoveStaging {
    async fn cleanup(&self, cx: &StepContext, state: RunState) -> Result<String> {
        let p = self.0.clone();
        let id = cx.get(&GENERATION)?;
        blocking(move || {
            let mut parts = Vec::new();
            if let Some(id) = &id {
                let staging = p.store.staging_path(id);
                if staging.exists() {
                    std::fs::remove_dir_all(&staging)
                        .with_context(|| format!("removing {}", staging.display()))?;
                    parts.push(format!("removed the partial generation {id}"));
                }
            }
            let freed = clean_store(&p, &|| Ok(()))?;
            if !freed.is_empty() {
                parts.push(freed);
            }
            let text = if parts.is_empty() {
                format!("backup ended {state}; nothing to clean up")
            } else {
                format!("backup ended {state}: {}", parts.join("; "))
            };
            Ok(text)
        })
        .await
    }
}
