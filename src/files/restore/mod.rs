//! Making the live trees equal to a generation (`restore`), or listing what that would change
//! (`diff`). Both run the same comparison, so a diff is an exact dry run of a restore.
//!
//! Safety rules:
//! - every path below a tree root is reached through directory handles without following a
//!   symlink; a symlink where the generation has a directory is replaced, never entered;
//! - a tree root that now resolves somewhere else than at backup time is refused;
//! - excluded paths and mount points are neither changed nor removed;
//! - before anything changes, the manifest's hash and the hash of every stored file the restore
//!   will copy are checked; each copy is checked again while it is written, and only renamed into
//!   place when it matches;
//! - files are replaced by writing a temporary file in the same directory and renaming it.
//!
//! A live file that is unchanged since the backup (same size, mtime, device, inode and ctime)
//! is not read; one with the same size but another identity is hashed and compared with the
//! manifest; everything else is copied.

mod between;
mod extras;
mod live_index;
mod metadata;
mod narrow;
mod paths;
mod plan;
mod prewrite;
mod reach;
mod scan;
mod tree;

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result};
use rustix::fs::Stat;
use serde::{Deserialize, Serialize};

use super::backup::Hooks;
use super::copy::ReflinkState;
use super::entry::{Entry, Time};
use super::exclude::Excludes;
use super::fsx;
use super::manifest::Manifest;
use super::path_map::PathMap;
use super::store::Generation;
pub(crate) use between::between;
use live_index::LiveIndex;
pub(crate) use live_index::{LIVE_INDEX, LIVE_INDEX_TMP};
pub(crate) use narrow::{for_target, narrow};
use paths::{node, parent_of};
use plan::Plan;

/// Prefix of the temporary files a restore writes next to their destination.
pub(crate) const TMP_PREFIX: &str = ".recoveryd-tmp.";

/// A difference between the live trees and a generation, always said as what the restore
/// does about it (`diff` prints the same words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ChangeKind {
    /// In the live tree but not in the generation: the restore removes it.
    Remove,
    /// In the generation but missing from the live tree: the restore creates it.
    Create,
    /// Different content: the restore writes the generation's.
    Content,
    /// A different kind of entry (a file became a directory, a directory a symlink, ...): the
    /// restore replaces it.
    Type,
    /// Same content, different mode, owner, mtime or xattrs: the restore sets them back.
    Metadata,
    /// Should be a hardlink of another entry and is not: the restore links it again.
    Link,
}

impl ChangeKind {
    /// What the restore does to the entry, in the words `diff` prints.
    pub(crate) fn action(self) -> &'static str {
        match self {
            ChangeKind::Remove => "remove",
            ChangeKind::Create => "create",
            ChangeKind::Content => "rewrite",
            ChangeKind::Type => "replace",
            ChangeKind::Metadata => "reset",
            ChangeKind::Link => "relink",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Change {
    pub path: String,
    pub change: ChangeKind,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RestoreReport {
    pub changes: Vec<Change>,
    pub files_written: u64,
    pub bytes_written: u64,
    pub hashed_live_files: u64,
    /// Mount points left alone.
    pub mounts_left: Vec<String>,
    /// Parts of the generation left alone, with the reason.
    pub notes: Vec<String>,
}

/// What to restore from a generation.
pub(crate) struct Selection<'a> {
    /// Trees to restore, as configured (`/etc`). Trees absent from the generation are noted.
    pub trees: &'a [String],
    /// Also restore the machine-config files outside the trees.
    pub extras: bool,
}

/// Error for a generation that cannot be trusted; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error("generation {generation} is corrupted; nothing was changed: {}", problems.join("; "))]
pub(crate) struct Corrupted {
    pub generation: String,
    pub problems: Vec<String>,
}

/// List what a restore of `selection` would change.
pub(crate) fn diff(
    root: &Path,
    generation: &Generation,
    manifest: &Manifest,
    selection: &Selection<'_>,
    hooks: &Hooks<'_>,
) -> Result<RestoreReport> {
    Ok(compare(root, generation, manifest, selection, hooks)?.report)
}

/// The comparison pass shared by `diff` and `restore`: nothing is changed.
fn compare<'a>(
    root: &'a Path,
    generation: &'a Generation,
    manifest: &'a Manifest,
    selection: &Selection<'_>,
    hooks: &'a Hooks<'a>,
) -> Result<Restorer<'a>> {
    let mut r = Restorer::new(root, generation, manifest, false, hooks)?;
    r.live_index = LiveIndex::read(generation, live_index::root_identity(root));
    r.run(selection)?;
    Ok(r)
}

/// Make the live trees of `selection` equal to the generation.
pub(crate) fn restore(
    root: &Path,
    generation: &Generation,
    manifest: &Manifest,
    selection: &Selection<'_>,
    hooks: &Hooks<'_>,
) -> Result<RestoreReport> {
    let started = std::time::Instant::now();
    // 1. What would change, and can the generation supply it?
    let mut dry = compare(root, generation, manifest, selection, hooks)?;
    dry.update_live_index();
    let compared = started.elapsed();
    let problems = check_sources(generation, manifest, &dry.to_copy, hooks)?;
    tracing::debug!(
        "restore: compared in {compared:?} ({} changes, {} live files hashed), {} sources \
         checked in {:?}",
        dry.report.changes.len(),
        dry.report.hashed_live_files,
        dry.to_copy.len(),
        started.elapsed() - compared
    );
    if !problems.is_empty() {
        return Err(Corrupted {
            generation: generation.info.id.clone(),
            problems,
        }
        .into());
    }
    // Nothing differs: an apply pass would only walk the live trees a second time (and flush
    // file systems nothing was written to). One walk it is.
    if dry.report.changes.is_empty() {
        (hooks.progress)(dry.done, dry.total, 0, 0);
        return Ok(dry.report);
    }
    // 2. Apply where the dry run found something to do, reusing its content comparisons
    // where the live file did not move.
    let mut apply = Restorer::new(root, generation, manifest, true, hooks)?;
    apply.content_cache = std::mem::take(&mut dry.content_cache);
    apply.live_index = std::mem::take(&mut dry.live_index);
    apply.follow = Some(std::mem::take(&mut dry.plan));
    apply.pending = std::mem::take(&mut dry.to_copy);
    let applying = std::time::Instant::now();
    apply.run(selection)?;
    tracing::debug!("restore: applied in {:?}", applying.elapsed());
    let mut report = apply.report;
    report.hashed_live_files += dry.report.hashed_live_files;
    // Mount points in directories the apply pass did not visit again.
    for m in dry.report.mounts_left {
        if !report.mounts_left.contains(&m) {
            report.mounts_left.push(m);
        }
    }
    Ok(report)
}

/// Re-hash every stored file the restore will copy (each content once, on every core):
/// the problems, by node path, of those that are missing or do not match the manifest.
fn check_sources(
    generation: &Generation,
    manifest: &Manifest,
    to_copy: &[usize],
    hooks: &Hooks<'_>,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    let mut unique = Vec::new();
    for &i in to_copy {
        let e = &manifest.entries[i];
        match e.hash.as_deref() {
            None => problems.push(format!("{}: the manifest has no content hash", e.display())),
            Some(h) if seen.insert(h) => unique.push(i),
            Some(_) => {}
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let found = std::sync::Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
    std::thread::scope(|s| {
        for _ in 0..threads.min(unique.len()) {
            s.spawn(|| -> Result<()> {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&i) = unique.get(k) else {
                        return Ok(());
                    };
                    (hooks.check_cancel)()?;
                    let e = &manifest.entries[i];
                    let hash = e.hash.as_deref().unwrap_or_default();
                    if let (Some((_, detail)), _) =
                        super::verify::check_stored(&generation.object(hash), e.size, hash, false)
                    {
                        found
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((i, detail));
                    }
                }
            });
        }
    });
    (hooks.check_cancel)()?;
    let mut found = found.into_inner().unwrap_or_else(|p| p.into_inner());
    found.sort_by_key(|(i, _)| *i);
    problems.extend(
        found
            .into_iter()
            .map(|(i, detail)| format!("{}: {detail}", manifest.entries[i].display())),
    );
    Ok(problems)
}

type StatKey = (u64, u64, u64, Time, Time);

fn stat_key(st: &Stat) -> StatKey {
    (
        st.st_dev,
        st.st_ino,
        st.st_size as u64,
        Time(st.st_mtime, st.st_mtime_nsec as u32),
        Time(st.st_ctime, st.st_ctime_nsec as u32),
    )
}

struct Restorer<'a> {
    root: &'a Path,
    generation: &'a Generation,
    entries: &'a [Entry],
    manifest: &'a Manifest,
    children: PathMap<Vec<usize>, &'a [u8]>,
    excludes: Excludes,
    skipped_mounts: HashSet<&'a [u8]>,
    apply: bool,
    hooks: &'a Hooks<'a>,
    report: RestoreReport,
    /// Dry run: entries whose content would be copied from the generation.
    to_copy: Vec<usize>,
    content_cache: PathMap<(StatKey, bool)>,
    /// Hardlink group id -> the live inode of its first member after it was restored.
    group_inode: HashMap<u64, (u64, u64)>,
    /// Dry run: hardlink groups whose first member would be replaced.
    group_changes: HashSet<u64>,
    reflink: ReflinkState,
    done: u64,
    total: u64,
    /// The recorded parent directories of machine-config files outside the trees, by path.
    implicit: HashMap<&'a [u8], usize>,
    /// Outside directories whose change is already reported (shared by several files).
    reported: HashSet<Vec<u8>>,
    /// Dry run: where the changes are.
    plan: Plan,
    /// Apply: the dry run's plan, to visit only where it found changes.
    follow: Option<Plan>,
    /// Apply: a directory of each file system written to, flushed once at the end.
    to_flush: HashMap<u64, OwnedFd>,
    /// Apply: the files the comparison found to be copied, for [`Self::prewrite`].
    pending: Vec<usize>,
    /// Apply: the files written ahead of the walk, recorded by it in its order.
    prewritten: prewrite::Prewritten,
    /// The live inodes earlier comparisons found equal to the generation.
    live_index: LiveIndex,
    /// Dry run: when the comparison began, and the live inodes it found equal that neither
    /// the manifest nor the live index knew (path, device, inode, ctime).
    compared_at: Time,
    found_equal: Vec<(Vec<u8>, u64, u64, Time)>,
}

impl<'a> Restorer<'a> {
    fn new(
        root: &'a Path,
        generation: &'a Generation,
        manifest: &'a Manifest,
        apply: bool,
        hooks: &'a Hooks<'a>,
    ) -> Result<Restorer<'a>> {
        let entries = &manifest.entries[..];
        let mut children: PathMap<Vec<usize>, &[u8]> = PathMap::default();
        for (i, e) in entries.iter().enumerate() {
            children
                .entry(parent_of(e.path_bytes()))
                .or_default()
                .push(i);
        }
        for v in children.values_mut() {
            v.sort_by(|a, b| entries[*a].path_bytes().cmp(entries[*b].path_bytes()));
        }
        Ok(Restorer {
            root,
            generation,
            entries,
            manifest,
            children,
            excludes: Excludes::new(manifest.header.exclude.clone())?,
            skipped_mounts: manifest
                .header
                .skipped_mounts
                .iter()
                .map(|m| &m.0[..])
                .collect(),
            apply,
            hooks,
            report: RestoreReport::default(),
            to_copy: Vec::new(),
            content_cache: PathMap::default(),
            group_inode: HashMap::new(),
            group_changes: HashSet::new(),
            reflink: ReflinkState::new(true),
            done: 0,
            total: entries.len() as u64,
            implicit: entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.implicit)
                .map(|(i, e)| (e.path_bytes(), i))
                .collect(),
            reported: HashSet::new(),
            plan: Plan::default(),
            follow: None,
            to_flush: HashMap::new(),
            pending: Vec::new(),
            prewritten: HashMap::new(),
            // Read by the comparison, handed on to the apply pass.
            live_index: LiveIndex::default(),
            compared_at: Time::of(std::time::SystemTime::now()),
            found_equal: Vec::new(),
        })
    }

    /// Whether the live inode `st` is untouched since the backup recorded `e`, or since an
    /// earlier comparison found it equal to `e` ([`LiveIndex`]): its xattrs and link target
    /// are then `e`'s, and its content too when size and mtime match.
    fn untouched(&self, e: &Entry, st: &Stat) -> bool {
        e.untouched(st, self.manifest.header.walked) || self.live_index.vouches(e, st)
    }

    /// Dry run: `e`'s live inode `st` was found equal to it, content and metadata. Recorded
    /// for the live index unless the manifest or the index already knows it.
    fn found_equal(&mut self, e: &Entry, st: &Stat) {
        if !self.apply && live_index::eligible(e) && !self.untouched(e, st) {
            self.found_equal.push((
                e.path_bytes().to_vec(),
                st.st_dev,
                st.st_ino,
                Time(st.st_ctime, st.st_ctime_nsec as u32),
            ));
        }
    }

    /// Dry run done: record what it found equal in the generation's live index (a cache: a
    /// failure to write it is only said).
    fn update_live_index(&mut self) {
        let changed: HashSet<Vec<u8>> = self
            .report
            .changes
            .iter()
            .map(|c| c.path.as_bytes()[1..].to_vec())
            .collect();
        let found = std::mem::take(&mut self.found_equal);
        if let Err(e) = self
            .live_index
            .update(self.generation, self.compared_at, found, &changed)
        {
            tracing::warn!("{e:#}");
        }
    }

    /// Flush the file system of `dev` (through `fd`, a directory on it) when the pass ends.
    fn flush_later(&mut self, dev: u64, fd: OwnedFd) {
        self.to_flush.entry(dev).or_insert(fd);
    }

    fn change(&mut self, path: &[u8], change: ChangeKind, detail: impl Into<String>) {
        if !self.apply {
            self.plan.record(path);
        }
        self.report.changes.push(Change {
            path: node(path),
            change,
            detail: detail.into(),
        });
    }

    fn tick(&mut self) -> Result<()> {
        self.done += 1;
        if self.apply {
            (self.hooks.checkpoint)()?;
            if self.done.is_multiple_of(512) {
                (self.hooks.progress)(self.done, self.total, self.report.bytes_written, 0);
            }
        } else {
            (self.hooks.check_cancel)()?;
        }
        Ok(())
    }

    fn run(&mut self, selection: &Selection<'_>) -> Result<()> {
        for tree in selection.trees {
            let Some(info) = self
                .manifest
                .header
                .trees
                .iter()
                .find(|t| &t.path == tree)
                .cloned()
            else {
                self.report
                    .notes
                    .push(format!("{tree}: not in this generation; left alone"));
                continue;
            };
            if !info.present {
                self.report
                    .notes
                    .push(format!("{tree}: did not exist at backup time; left alone"));
                continue;
            }
            self.restore_tree(&info)
                .with_context(|| format!("restoring {tree}"))?;
        }
        if selection.extras {
            self.restore_extras()
                .context("restoring machine-config files")?;
        }
        // A file written ahead that the walk did not come to (it always does): in the report
        // all the same.
        let mut left: Vec<_> = std::mem::take(&mut self.prewritten).into_iter().collect();
        left.sort_by(|a, b| a.0.cmp(&b.0));
        for (path, w) in left {
            self.change(&path, w.change, w.detail);
            self.report.files_written += 1;
            self.report.bytes_written += w.bytes;
        }
        // Nothing is committed before it is on disk: one flush per file system written to.
        for fd in std::mem::take(&mut self.to_flush).into_values() {
            fsx::syncfs(fd.as_fd()).context("flushing the restored files to disk")?;
        }
        if self.apply {
            (self.hooks.progress)(self.done, self.total, self.report.bytes_written, 0);
        }
        Ok(())
    }
}
