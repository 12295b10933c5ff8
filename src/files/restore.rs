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

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use rustix::fs::Stat;
use serde::Serialize;

use super::backup::Hooks;
use super::copy::{ReflinkState, copy_and_hash, hash_file};
use super::entry::{Entry, Kind, Time};
use super::exclude::Excludes;
use super::fsx::{self, Target};
use super::manifest::{Manifest, TreeInfo};
use super::store::{Generation, stored_rel};
use super::walk::content_owner;

/// Prefix of the temporary files a restore writes next to their destination.
pub const TMP_PREFIX: &str = ".recoveryd-tmp.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// In the live tree but not in the generation: removed by a restore.
    Added,
    /// In the generation but missing from the live tree: created by a restore.
    Removed,
    /// Different content.
    Content,
    /// A different kind of entry (a file became a directory, a directory a symlink, ...).
    Type,
    /// Same content, different mode, owner, mtime or xattrs.
    Metadata,
    /// Should be a hardlink of another entry and is not.
    Link,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub path: String,
    pub change: ChangeKind,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct RestoreReport {
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
pub struct Selection<'a> {
    /// Trees to restore, as configured (`/etc`). Trees absent from the generation are noted.
    pub trees: &'a [String],
    /// Also restore the machine-config files outside the trees.
    pub extras: bool,
}

/// Error for a generation that cannot be trusted; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error("generation {generation} is corrupted; nothing was changed: {}", problems.join("; "))]
pub struct Corrupted {
    pub generation: String,
    pub problems: Vec<String>,
}

/// List what a restore of `selection` would change.
pub fn diff(
    root: &Path,
    generation: &Generation,
    manifest: &Manifest,
    selection: &Selection<'_>,
    hooks: &Hooks<'_>,
) -> Result<RestoreReport> {
    let mut r = Restorer::new(root, generation, manifest, false, hooks)?;
    r.run(selection)?;
    Ok(r.report)
}

/// Make the live trees of `selection` equal to the generation.
pub fn restore(
    root: &Path,
    generation: &Generation,
    manifest: &Manifest,
    selection: &Selection<'_>,
    hooks: &Hooks<'_>,
) -> Result<RestoreReport> {
    // 1. What would change, and can the generation supply it?
    let quiet = Hooks::none();
    let mut dry = Restorer::new(root, generation, manifest, false, &quiet)?;
    dry.run(selection)?;
    let mut problems = Vec::new();
    let mut checked = std::collections::HashSet::new();
    for &i in &dry.to_copy {
        let e = &manifest.entries[i];
        if !checked.insert(e.hash.clone()) {
            continue;
        }
        let stored = generation.object(e.hash.as_deref().unwrap_or_default());
        match std::fs::File::open(&stored).and_then(|f| hash_file(&f)) {
            Ok((hash, size)) if Some(&hash) == e.hash.as_ref() && size == e.size => {}
            Ok(_) => problems.push(format!(
                "{}: stored copy does not match the manifest",
                e.display()
            )),
            Err(err) => problems.push(format!("{}: stored copy unreadable: {err}", e.display())),
        }
    }
    if !problems.is_empty() {
        return Err(Corrupted {
            generation: generation.info.id.clone(),
            problems,
        }
        .into());
    }
    // 2. Apply, reusing the dry run's content comparisons where the live file did not move.
    let mut apply = Restorer::new(root, generation, manifest, true, hooks)?;
    apply.content_cache = std::mem::take(&mut dry.content_cache);
    apply.run(selection)?;
    Ok(apply.report)
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
    children: HashMap<&'a [u8], Vec<usize>>,
    excludes: Excludes,
    skipped_mounts: HashSet<&'a [u8]>,
    apply: bool,
    hooks: &'a Hooks<'a>,
    report: RestoreReport,
    /// Dry run: entries whose content would be copied from the generation.
    to_copy: Vec<usize>,
    content_cache: HashMap<Vec<u8>, (StatKey, bool)>,
    /// Hardlink group id -> the live inode of its first member after it was restored.
    group_inode: HashMap<u64, (u64, u64)>,
    /// Dry run: hardlink groups whose first member would be replaced.
    group_changes: HashSet<u64>,
    reflink: ReflinkState,
    done: u64,
    total: u64,
}

fn parent_of(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|b| *b == b'/') {
        Some(i) => &p[..i],
        None => b"",
    }
}

fn base_of(p: &[u8]) -> &OsStr {
    let start = p
        .iter()
        .rposition(|b| *b == b'/')
        .map(|i| i + 1)
        .unwrap_or(0);
    OsStr::from_bytes(&p[start..])
}

fn node(p: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(p))
}

fn join(parent: &[u8], name: &OsStr) -> Vec<u8> {
    let mut p = parent.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name.as_bytes());
    p
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn tmp_name() -> OsString {
    OsString::from(format!(
        "{TMP_PREFIX}{}.{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
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
        let mut children: HashMap<&[u8], Vec<usize>> = HashMap::new();
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
            content_cache: HashMap::new(),
            group_inode: HashMap::new(),
            group_changes: HashSet::new(),
            reflink: ReflinkState::new(true),
            done: 0,
            total: entries.len() as u64,
        })
    }

    fn change(&mut self, path: &[u8], change: ChangeKind, detail: impl Into<String>) {
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
                (self.hooks.progress)(self.done, self.total, self.report.bytes_written);
            }
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
        (self.hooks.progress)(self.done, self.total, self.report.bytes_written);
        Ok(())
    }

    fn restore_tree(&mut self, info: &TreeInfo) -> Result<()> {
        let tree = Path::new(&info.path);
        let rel: &[u8] = &tree.as_os_str().as_bytes()[1..];
        let Some(root_idx) = self.entries.iter().position(|e| e.path_bytes() == rel) else {
            bail!("the manifest has no entry for the tree root");
        };
        let fd = match fsx::open_dir_in_root(self.root, tree) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.change(rel, ChangeKind::Removed, "tree root");
                if !self.apply {
                    self.count_missing(rel);
                    return Ok(());
                }
                let parent = tree.parent().unwrap_or(Path::new("/"));
                let pfd = fsx::open_dir_in_root(self.root, parent)
                    .with_context(|| format!("opening {}", parent.display()))?;
                fsx::mkdir_at(
                    pfd.as_fd(),
                    tree.file_name().context("tree has no name")?,
                    0o700,
                )?;
                fsx::open_dir_in_root(self.root, tree)?
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", tree.display())),
        };
        let now = fsx::resolved_in_root(self.root, fd.as_fd())?;
        if let Some(then) = &info.resolved
            && *then != now
        {
            bail!(
                "{} resolves to {now} inside the node, but to {then} when it was backed up; refusing to restore through it",
                info.path
            );
        }
        let dev = fsx::fstat(fd.as_fd())?.st_dev;
        self.sync_dir(fd.as_fd(), rel, dev)?;
        let root_entry = &self.entries[root_idx];
        self.metadata(Target::Fd(fd.as_fd()), root_entry, &fsx::fstat(fd.as_fd())?)?;
        if self.apply {
            fsx::syncfs(fd.as_fd()).context("flushing the restored tree to disk")?;
        }
        Ok(())
    }

    /// Dry run below a directory that does not exist: everything in it would be created.
    fn count_missing(&mut self, rel: &[u8]) {
        let kids = self.children.get(rel).cloned().unwrap_or_default();
        for i in kids {
            let e = &self.entries[i];
            let p = e.path_bytes().to_vec();
            self.change(&p, ChangeKind::Removed, "");
            if e.kind == Kind::File && content_owner(self.entries, i) == i {
                self.to_copy.push(i);
            }
            if e.kind == Kind::Dir {
                self.count_missing(&p);
            }
        }
    }

    fn excluded(&self, rel: &[u8]) -> bool {
        let mut n = Vec::with_capacity(rel.len() + 1);
        n.push(b'/');
        n.extend_from_slice(rel);
        self.excludes.excludes(&n)
    }

    fn sync_dir(&mut self, dir: BorrowedFd<'_>, rel: &[u8], dev: u64) -> Result<()> {
        let wanted: Vec<usize> = self.children.get(rel).cloned().unwrap_or_default();
        let wanted_names: HashSet<&[u8]> = wanted
            .iter()
            .map(|&i| base_of(self.entries[i].path_bytes()).as_bytes())
            .collect();
        // Remove what the generation does not have.
        for name in fsx::list_dir(dir).with_context(|| format!("listing {}", node(rel)))? {
            if wanted_names.contains(name.as_bytes()) {
                continue;
            }
            let child = join(rel, &name);
            if self.excluded(&child) || self.skipped_mounts.contains(&child[..]) {
                continue;
            }
            let Some(st) = fsx::try_lstat_at(dir, &name)? else {
                continue;
            };
            if Kind::of(&st) == Kind::Dir && st.st_dev != dev {
                self.report.mounts_left.push(node(&child));
                continue;
            }
            self.change(&child, ChangeKind::Added, kind_name(Kind::of(&st)));
            if self.apply {
                let mut mounts = Vec::new();
                fsx::remove_tree_at(dir, &name, dev, &mut mounts, Path::new(&node(rel)))
                    .with_context(|| format!("removing {}", node(&child)))?;
                self.report
                    .mounts_left
                    .extend(mounts.into_iter().map(|m| m.display().to_string()));
            }
        }
        for i in wanted {
            let e = &self.entries[i];
            let path = e.path_bytes().to_vec();
            if self.excluded(&path) || self.skipped_mounts.contains(&path[..]) {
                continue;
            }
            self.tick()?;
            self.sync_child(dir, i, dev)
                .with_context(|| format!("restoring {}", node(&path)))?;
        }
        Ok(())
    }

    fn sync_child(&mut self, dir: BorrowedFd<'_>, i: usize, dev: u64) -> Result<()> {
        let e = &self.entries[i];
        let path = e.path_bytes();
        let name = base_of(path);
        let live = fsx::try_lstat_at(dir, name)?;
        let live_kind = live.as_ref().map(Kind::of);
        match e.kind {
            Kind::Dir => {
                if let (Some(st), Some(Kind::Dir)) = (&live, live_kind)
                    && st.st_dev != dev
                {
                    self.report.mounts_left.push(node(path));
                    return Ok(());
                }
                match live_kind {
                    Some(Kind::Dir) => {}
                    None => {
                        self.change(path, ChangeKind::Removed, "directory");
                        if !self.apply {
                            self.count_missing(path);
                            return Ok(());
                        }
                        fsx::mkdir_at(dir, name, 0o700)?;
                    }
                    Some(k) => {
                        self.change(
                            path,
                            ChangeKind::Type,
                            format!("{} -> directory", kind_name(k)),
                        );
                        if !self.apply {
                            self.count_missing(path);
                            return Ok(());
                        }
                        fsx::unlink_at(dir, name)?;
                        fsx::mkdir_at(dir, name, 0o700)?;
                    }
                }
                let child = fsx::open_child_dir(dir, name)?;
                self.sync_dir(child.as_fd(), path, dev)?;
                let st = fsx::fstat(child.as_fd())?;
                self.metadata(Target::Fd(child.as_fd()), e, &st)
            }
            Kind::File if content_owner(self.entries, i) != i => self.sync_hardlink(dir, i, live),
            Kind::File => self.sync_file(dir, i, live),
            Kind::Symlink => {
                let target = e.link.as_ref().map(|l| l.0.clone()).unwrap_or_default();
                let same =
                    live_kind == Some(Kind::Symlink) && fsx::read_link_at(dir, name)? == target;
                if same {
                    let st = live.expect("exists");
                    return self.metadata(Target::Child(dir, name), e, &st);
                }
                self.replace(dir, i, live_kind, "symlink", |d, tmp| {
                    fsx::symlink_at(&target, d, tmp).map_err(Into::into)
                })
            }
            kind => {
                let same = live_kind == Some(kind)
                    && live.as_ref().is_some_and(|st| {
                        !matches!(kind, Kind::Char | Kind::Block) || st.st_rdev == e.rdev
                    });
                if same {
                    let st = live.expect("exists");
                    return self.metadata(Target::Child(dir, name), e, &st);
                }
                let (bits, rdev) = (kind.type_bits() | (e.mode & 0o7777), e.rdev);
                self.replace(dir, i, live_kind, kind_name(kind), |d, tmp| {
                    fsx::mknod_at(d, tmp, bits, rdev).map_err(Into::into)
                })
            }
        }
    }

    /// Replace (or create) a non-file entry by making it under a temporary name and renaming.
    fn replace(
        &mut self,
        dir: BorrowedFd<'_>,
        i: usize,
        live_kind: Option<Kind>,
        what: &str,
        make: impl Fn(BorrowedFd<'_>, &OsStr) -> Result<()>,
    ) -> Result<()> {
        let e = &self.entries[i];
        let path = e.path_bytes();
        let name = base_of(path);
        match live_kind {
            None => self.change(path, ChangeKind::Removed, what),
            Some(k) if k == e.kind => {
                self.change(path, ChangeKind::Content, format!("different {what}"))
            }
            Some(k) => self.change(
                path,
                ChangeKind::Type,
                format!("{} -> {what}", kind_name(k)),
            ),
        }
        if !self.apply {
            return Ok(());
        }
        if live_kind == Some(Kind::Dir) {
            self.remove_dir(dir, path)?;
        }
        let tmp = tmp_name();
        make(dir, &tmp)?;
        let r = (|| {
            let st = fsx::lstat_at(dir, &tmp)?;
            self.apply_metadata(Target::Child(dir, &tmp), e, &st)?;
            fsx::rename_at(dir, &tmp, name)?;
            Ok(())
        })();
        if r.is_err() {
            let _ = fsx::unlink_at(dir, &tmp);
        }
        r
    }

    fn remove_dir(&mut self, dir: BorrowedFd<'_>, path: &[u8]) -> Result<()> {
        let mut mounts = Vec::new();
        let dev = fsx::fstat(dir)?.st_dev;
        fsx::remove_tree_at(
            dir,
            base_of(path),
            dev,
            &mut mounts,
            Path::new(&node(parent_of(path))),
        )?;
        anyhow::ensure!(
            mounts.is_empty(),
            "cannot replace {}: it holds mount points ({})",
            node(path),
            mounts
                .iter()
                .map(|m| m.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(())
    }

    fn content_equal(&mut self, dir: BorrowedFd<'_>, e: &Entry, st: &Stat) -> Result<bool> {
        if st.st_size as u64 != e.size {
            return Ok(false);
        }
        let key = stat_key(st);
        let unchanged_since_backup = key.0 == e.source.dev
            && key.1 == e.source.ino
            && key.3 == e.mtime
            && key.4 == e.source.ctime;
        if unchanged_since_backup {
            return Ok(true);
        }
        if let Some((k, eq)) = self.content_cache.get(e.path_bytes())
            && *k == key
        {
            return Ok(*eq);
        }
        let f = std::fs::File::from(fsx::open_child_file(dir, base_of(e.path_bytes()))?);
        let (hash, _) = hash_file(&f)?;
        self.report.hashed_live_files += 1;
        let eq = Some(&hash) == e.hash.as_ref();
        self.content_cache
            .insert(e.path_bytes().to_vec(), (key, eq));
        Ok(eq)
    }

    fn sync_file(&mut self, dir: BorrowedFd<'_>, i: usize, live: Option<Stat>) -> Result<()> {
        let e = &self.entries[i];
        let path = e.path_bytes();
        let name = base_of(path);
        let live_kind = live.as_ref().map(Kind::of);
        if let (Some(st), Some(Kind::File)) = (&live, live_kind)
            && self.content_equal(dir, e, st)?
        {
            self.metadata(Target::Child(dir, name), e, st)?;
            if let Some(g) = e.hardlink {
                let st = fsx::lstat_at(dir, name)?;
                self.group_inode.insert(g, (st.st_dev, st.st_ino));
            }
            return Ok(());
        }
        match live_kind {
            None => self.change(path, ChangeKind::Removed, "file"),
            Some(Kind::File) => self.change(path, ChangeKind::Content, ""),
            Some(k) => self.change(path, ChangeKind::Type, format!("{} -> file", kind_name(k))),
        }
        if let Some(g) = e.hardlink {
            self.group_changes.insert(g);
        }
        if !self.apply {
            self.to_copy.push(i);
            return Ok(());
        }
        if live_kind == Some(Kind::Dir) {
            self.remove_dir(dir, path)?;
        }
        let tmp = tmp_name();
        let r = (|| -> Result<()> {
            let stored = self
                .generation
                .object(e.hash.as_deref().unwrap_or_default());
            let src: OwnedFd = std::fs::File::open(&stored)
                .with_context(|| format!("opening {}", stored.display()))?
                .into();
            let dst = fsx::create_child_file(dir, &tmp, 0o600)?;
            let copied = copy_and_hash(src, &dst, &self.reflink, e.hash.as_deref())
                .with_context(|| format!("copying from {}", stored.display()))?;
            let st = fsx::fstat(dst.as_fd())?;
            self.apply_metadata(Target::Fd(dst.as_fd()), e, &st)?;
            drop(dst);
            fsx::rename_at(dir, &tmp, name)?;
            self.report.files_written += 1;
            self.report.bytes_written += copied.size;
            Ok(())
        })();
        if r.is_err() {
            let _ = fsx::unlink_at(dir, &tmp);
        }
        r?;
        if let Some(g) = e.hardlink {
            let st = fsx::lstat_at(dir, name)?;
            self.group_inode.insert(g, (st.st_dev, st.st_ino));
        }
        Ok(())
    }

    fn sync_hardlink(&mut self, dir: BorrowedFd<'_>, i: usize, live: Option<Stat>) -> Result<()> {
        let e = &self.entries[i];
        let path = e.path_bytes();
        let name = base_of(path);
        let g = e.hardlink.expect("group member");
        let owner = &self.entries[content_owner(self.entries, i)];
        let owner_path = owner.path_bytes().to_vec();
        let linked = match (&live, self.group_inode.get(&g)) {
            (Some(st), Some((dev, ino))) => {
                Kind::of(st) == Kind::File && st.st_dev == *dev && st.st_ino == *ino
            }
            (Some(st), None) if !self.apply && !self.group_changes.contains(&g) => {
                // Dry run: compare with the owner's live inode.
                let owner_node = Path::new("/").join(stored_rel(&owner_path));
                fsx::open_dir_in_root(self.root, owner_node.parent().unwrap_or(Path::new("/")))
                    .ok()
                    .and_then(|d| {
                        fsx::try_lstat_at(d.as_fd(), base_of(&owner_path))
                            .ok()
                            .flatten()
                    })
                    .is_some_and(|o| o.st_dev == st.st_dev && o.st_ino == st.st_ino)
            }
            _ => false,
        };
        if linked {
            return Ok(());
        }
        self.change(
            path,
            ChangeKind::Link,
            format!("hardlink of {}", node(&owner_path)),
        );
        if !self.apply {
            return Ok(());
        }
        if live.as_ref().map(Kind::of) == Some(Kind::Dir) {
            self.remove_dir(dir, path)?;
        }
        let owner_node = Path::new("/").join(stored_rel(&owner_path));
        let owner_dir =
            fsx::open_dir_in_root(self.root, owner_node.parent().unwrap_or(Path::new("/")))?;
        let tmp = tmp_name();
        fsx::link_at(owner_dir.as_fd(), base_of(&owner_path), dir, &tmp)
            .with_context(|| format!("linking to {}", node(&owner_path)))?;
        if let Err(err) = fsx::rename_at(dir, &tmp, name) {
            let _ = fsx::unlink_at(dir, &tmp);
            return Err(err.into());
        }
        Ok(())
    }

    fn restore_extras(&mut self) -> Result<()> {
        let extras: Vec<Vec<u8>> = self
            .manifest
            .header
            .extras
            .iter()
            .map(|x| x.0.clone())
            .collect();
        let implicit: Vec<usize> = (0..self.entries.len())
            .filter(|&i| self.entries[i].implicit)
            .collect();
        // Missing ancestors first (created with their recorded metadata, never changed).
        for i in implicit {
            let e = &self.entries[i];
            let p = Path::new("/").join(stored_rel(e.path_bytes()));
            let parent = p.parent().unwrap_or(Path::new("/"));
            let Ok(pfd) = fsx::open_dir_in_root(self.root, parent) else {
                continue;
            };
            if fsx::try_lstat_at(pfd.as_fd(), base_of(e.path_bytes()))?.is_none() {
                self.change(e.path_bytes(), ChangeKind::Removed, "directory");
                if self.apply {
                    fsx::mkdir_at(pfd.as_fd(), base_of(e.path_bytes()), 0o700)?;
                    let d = fsx::open_child_dir(pfd.as_fd(), base_of(e.path_bytes()))?;
                    let st = fsx::fstat(d.as_fd())?;
                    self.apply_metadata(Target::Fd(d.as_fd()), e, &st)?;
                }
            }
        }
        for x in extras {
            let Some(i) = self
                .entries
                .iter()
                .position(|e| e.path_bytes() == x && !e.implicit)
            else {
                continue;
            };
            let p = Path::new("/").join(stored_rel(&x));
            let parent = p.parent().unwrap_or(Path::new("/"));
            let pfd = match fsx::open_dir_in_root(self.root, parent) {
                Ok(fd) => fd,
                Err(_) if !self.apply => {
                    self.change(&x, ChangeKind::Removed, "file");
                    self.to_copy.push(i);
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("opening {}", parent.display())),
            };
            let dev = fsx::fstat(pfd.as_fd())?.st_dev;
            self.tick()?;
            self.sync_child(pfd.as_fd(), i, dev)
                .with_context(|| format!("restoring {}", node(&x)))?;
            if self.apply {
                fsx::syncfs(pfd.as_fd())?;
            }
        }
        Ok(())
    }

    /// Compare metadata and, when applying, fix it.
    fn metadata(&mut self, target: Target<'_>, e: &Entry, st: &Stat) -> Result<()> {
        let live_x = target.xattrs()?;
        let diffs = metadata_diffs(e, st, &live_x);
        if diffs.is_empty() {
            return Ok(());
        }
        self.change(e.path_bytes(), ChangeKind::Metadata, diffs.join(", "));
        if self.apply {
            self.apply_metadata(target, e, st)?;
        }
        Ok(())
    }

    /// Owner, xattrs (ACLs among them), mode, then mtime, in the order that keeps each one.
    fn apply_metadata(&self, target: Target<'_>, e: &Entry, st: &Stat) -> Result<()> {
        if st.st_uid != e.uid || st.st_gid != e.gid {
            target.chown(e.uid, e.gid).context("chown")?;
        }
        let live_x = target.xattrs()?;
        for (n, v) in &e.xattrs {
            if live_x.iter().any(|(ln, lv)| ln == n && lv == v) {
                continue;
            }
            target
                .set_xattr(n, v)
                .with_context(|| format!("setting xattr {}", String::from_utf8_lossy(n)))?;
        }
        for (n, _) in &live_x {
            if e.xattrs.iter().any(|(en, _)| en == n) || n.as_slice() == b"security.selinux" {
                continue;
            }
            target
                .remove_xattr(n)
                .with_context(|| format!("removing xattr {}", String::from_utf8_lossy(n)))?;
        }
        if e.kind != Kind::Symlink {
            // chown clears setuid/setgid, and an ACL sets the group bits: mode comes after both.
            target.chmod(e.mode).context("chmod")?;
        }
        target
            .set_mtime(e.mtime.0, e.mtime.1)
            .context("setting mtime")?;
        Ok(())
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::File => "file",
        Kind::Dir => "directory",
        Kind::Symlink => "symlink",
        Kind::Fifo => "fifo",
        Kind::Char => "character device",
        Kind::Block => "block device",
        Kind::Socket => "socket",
    }
}

/// Which metadata fields of a live entry differ from the manifest.
pub fn metadata_diffs(e: &Entry, st: &Stat, live_xattrs: &[(Vec<u8>, Vec<u8>)]) -> Vec<String> {
    let mut d = Vec::new();
    if st.st_uid != e.uid || st.st_gid != e.gid {
        d.push(format!(
            "owner {}:{} -> {}:{}",
            st.st_uid, st.st_gid, e.uid, e.gid
        ));
    }
    if e.kind != Kind::Symlink && st.st_mode & 0o7777 != e.mode {
        d.push(format!("mode {:o} -> {:o}", st.st_mode & 0o7777, e.mode));
    }
    if Time(st.st_mtime, st.st_mtime_nsec as u32) != e.mtime {
        d.push("mtime".into());
    }
    let relevant = |x: &&(Vec<u8>, Vec<u8>)| {
        x.0.as_slice() != b"security.selinux"
            || e.xattrs
                .iter()
                .any(|(n, _)| n.as_slice() == b"security.selinux")
    };
    let live: Vec<_> = live_xattrs.iter().filter(relevant).collect();
    let want: Vec<_> = e.xattrs.iter().collect();
    if live != want {
        let names: HashSet<&[u8]> = live
            .iter()
            .map(|x| &x.0[..])
            .chain(want.iter().map(|x| &x.0[..]))
            .filter(|n| {
                live.iter().find(|x| &x.0[..] == *n) != want.iter().find(|x| &x.0[..] == *n)
            })
            .collect();
        let mut names: Vec<String> = names
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        names.sort();
        d.push(format!("xattrs {}", names.join(" ")));
    }
    d
}
