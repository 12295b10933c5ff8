//! Making one tree equal to the generation: directories, files, hardlinks, removals.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rustix::fs::Stat;

use super::metadata::{Meta, apply_metadata, kind_name};
use super::paths::{base_of, join, node, parent_of, tmp_name};
use super::scan::{LiveScan, ScanCx};
use super::{ChangeKind, Restorer, stat_key};
use crate::files::copy::{ReflinkState, copy_and_hash, hash_file};
use crate::files::entry::{Entry, Kind};
use crate::files::entry::{content_owner, owns_content};
use crate::files::fsx::{self, Target};
use crate::files::manifest::TreeInfo;
use crate::files::store::{Generation, stored_rel};

/// Where a directory's entries are read: the live directory itself (the apply pass, and the
/// machine-config files outside the trees), or what the comparison's scan read of it.
#[derive(Clone, Copy)]
pub(super) enum Dir<'a> {
    Fd(BorrowedFd<'a>),
    Scanned(&'a LiveScan),
}

impl<'a> Dir<'a> {
    /// The descriptor, to change something: the comparison never does.
    fn fd(self) -> Result<BorrowedFd<'a>> {
        match self {
            Dir::Fd(fd) => Ok(fd),
            Dir::Scanned(_) => bail!("the comparison was about to change the live tree"),
        }
    }

    /// The names in the directory `rel`, sorted bytewise.
    fn names(self, rel: &[u8]) -> Result<std::borrow::Cow<'a, [std::ffi::OsString]>> {
        match self {
            Dir::Fd(fd) => Ok(fsx::list_dir(fd)
                .with_context(|| format!("listing {}", node(rel)))?
                .into()),
            Dir::Scanned(scan) => Ok(scan.names(rel)?.into()),
        }
    }

    /// `lstat` of the child `name` (at `path`); `None` when it is not there.
    fn lstat(self, name: &OsStr, path: &[u8]) -> Result<Option<Stat>> {
        match self {
            Dir::Fd(fd) => Ok(fsx::try_lstat_at(fd, name)?),
            Dir::Scanned(scan) => Ok(scan.entry(path).map(|l| l.st)),
        }
    }

    /// A symlink's target.
    fn read_link(self, name: &OsStr, path: &[u8]) -> Result<Vec<u8>> {
        match self {
            Dir::Fd(fd) => Ok(fsx::read_link_at(fd, name)?),
            Dir::Scanned(scan) => scan
                .entry(path)
                .and_then(|l| l.link.clone())
                .with_context(|| format!("the target of {} was not read", node(path))),
        }
    }

    /// Where the metadata of the child `name` (at `path`) is read and set.
    fn meta(self, name: &'a OsStr, path: &[u8]) -> Meta<'a> {
        match self {
            Dir::Fd(fd) => Meta::Live(Target::Child(fd, name)),
            Dir::Scanned(scan) => Meta::Scanned(scan.entry(path)),
        }
    }
}

impl Restorer<'_> {
    pub(super) fn restore_tree(&mut self, info: &TreeInfo) -> Result<()> {
        let rel: &[u8] = &info.path.as_bytes()[1..];
        let Some(root_idx) = self.entries.iter().position(|e| e.path_bytes() == rel) else {
            bail!("the manifest has no entry for the tree root");
        };
        let Some(fd) = self.reach_tree_root(info, rel)? else {
            // A dry run: the root would be created or replaced, and everything in it created.
            self.count_missing(rel);
            return Ok(());
        };
        let dev = fsx::fstat(fd.as_fd())?.st_dev;
        let changes_before = self.report.changes.len();
        if self.apply {
            // The changed files first, on several threads; then the walk, in order.
            self.prewrite(fd.as_fd(), rel, dev)?;
            self.sync_dir(Dir::Fd(fd.as_fd()), rel, dev)?;
        } else {
            // The comparison: everything it will look at read first, on several threads.
            let untouched = self.entries[root_idx]
                .untouched(&fsx::fstat(fd.as_fd())?, self.manifest.header.walked);
            let scan = ScanCx {
                entries: self.entries,
                children: &self.children,
                excludes: &self.excludes,
                skipped_mounts: &self.skipped_mounts,
                walked: self.manifest.header.walked,
                live_index: &self.live_index,
                check_cancel: self.hooks.check_cancel,
            }
            .scan(fd.try_clone()?, rel, dev, untouched)?;
            self.report.hashed_live_files += scan.hashed;
            self.sync_dir(Dir::Scanned(&scan), rel, dev)?;
        }
        let root_entry = &self.entries[root_idx];
        self.metadata(
            Meta::Live(Target::Fd(fd.as_fd())),
            root_entry,
            &fsx::fstat(fd.as_fd())?,
        )?;
        // Flushed, once per file system, when something in this tree was written.
        if self.apply && self.report.changes.len() > changes_before {
            self.flush_later(dev, fd);
        }
        Ok(())
    }

    /// Dry run below a directory that does not exist: everything in it would be created.
    pub(super) fn count_missing(&mut self, rel: &[u8]) {
        let kids = self.children.get(rel).cloned().unwrap_or_default();
        for i in kids {
            let e = &self.entries[i];
            let p = e.path_bytes().to_vec();
            self.change(&p, ChangeKind::Create, "");
            if owns_content(self.entries, i) {
                self.to_copy.push(i);
            }
            if e.kind == Kind::Dir {
                self.count_missing(&p);
            }
        }
    }

    pub(super) fn excluded(&self, rel: &[u8]) -> bool {
        let mut n = Vec::with_capacity(rel.len() + 1);
        n.push(b'/');
        n.extend_from_slice(rel);
        self.excludes.excludes(&n)
    }

    pub(super) fn sync_dir(&mut self, dir: Dir<'_>, rel: &[u8], dev: u64) -> Result<()> {
        if self.follow.as_ref().is_some_and(|plan| !plan.below(rel)) {
            return self.tick_unchanged(rel);
        }
        let wanted: Vec<usize> = self.children.get(rel).cloned().unwrap_or_default();
        let wanted_names: HashSet<&[u8]> = wanted
            .iter()
            .map(|&i| base_of(self.entries[i].path_bytes()).as_bytes())
            .collect();
        // Remove what the generation does not have.
        for name in dir.names(rel)?.iter() {
            if wanted_names.contains(name.as_bytes()) {
                continue;
            }
            let child = join(rel, name);
            if self.excluded(&child) || self.skipped_mounts.contains(&child[..]) {
                continue;
            }
            let Some(st) = dir.lstat(name, &child)? else {
                continue;
            };
            if Kind::of(&st) == Kind::Dir && st.st_dev != dev {
                self.report.mounts_left.push(node(&child));
                continue;
            }
            self.change(&child, ChangeKind::Remove, kind_name(Kind::of(&st)));
            if self.apply {
                let mut mounts = Vec::new();
                fsx::remove_tree_at(dir.fd()?, name, dev, &mut mounts, Path::new(&node(rel)))
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
            if self.follow.as_ref().is_some_and(|plan| !plan.visits(&path)) {
                if e.kind == Kind::Dir {
                    self.tick_unchanged(&path)?;
                }
                continue;
            }
            self.sync_child(dir, i, dev)
                .with_context(|| format!("restoring {}", node(&path)))?;
        }
        Ok(())
    }

    /// Apply: count the entries below a directory the dry run found equal as done, without
    /// reading the live tree again (progress and `during@N` failpoints count them as before).
    fn tick_unchanged(&mut self, rel: &[u8]) -> Result<()> {
        let kids = self.children.get(rel).cloned().unwrap_or_default();
        for i in kids {
            let e = &self.entries[i];
            let path = e.path_bytes();
            if self.excluded(path) || self.skipped_mounts.contains(path) {
                continue;
            }
            self.tick()?;
            if e.kind == Kind::Dir {
                self.tick_unchanged(path)?;
            }
        }
        Ok(())
    }

    pub(super) fn sync_child(&mut self, dir: Dir<'_>, i: usize, dev: u64) -> Result<()> {
        let e = &self.entries[i];
        let path = e.path_bytes();
        let name = base_of(path);
        let live = dir.lstat(name, path)?;
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
                        self.change(path, ChangeKind::Create, "directory");
                        if !self.apply {
                            self.count_missing(path);
                            return Ok(());
                        }
                        fsx::mkdir_at(dir.fd()?, name, 0o700)?;
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
                        fsx::unlink_at(dir.fd()?, name)?;
                        fsx::mkdir_at(dir.fd()?, name, 0o700)?;
                    }
                }
                match dir {
                    Dir::Fd(fd) => {
                        let child = fsx::open_child_dir(fd, name)?;
                        self.sync_dir(Dir::Fd(child.as_fd()), path, dev)?;
                        let st = fsx::fstat(child.as_fd())?;
                        self.metadata(Meta::Live(Target::Fd(child.as_fd())), e, &st)
                    }
                    Dir::Scanned(scan) => {
                        self.sync_dir(dir, path, dev)?;
                        let st = live.expect("a directory the scan read");
                        self.metadata(Meta::Scanned(scan.entry(path)), e, &st)
                    }
                }
            }
            Kind::File if content_owner(self.entries, i) != i => self.sync_hardlink(dir, i, live),
            Kind::File => self.sync_file(dir, i, live),
            Kind::Symlink => {
                let target = e.link.as_ref().map(|l| l.0.clone()).unwrap_or_default();
                // A symlink's target cannot change in place: an untouched one still has it.
                let same = live_kind == Some(Kind::Symlink)
                    && (live.as_ref().is_some_and(|st| self.untouched(e, st))
                        || dir.read_link(name, path)? == target);
                if same {
                    let st = live.expect("exists");
                    let before = self.report.changes.len();
                    self.metadata(dir.meta(name, path), e, &st)?;
                    if self.report.changes.len() == before {
                        self.found_equal(e, &st);
                    }
                    return Ok(());
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
                    return self.metadata(dir.meta(name, path), e, &st);
                }
                let (bits, rdev) = (kind.type_bits() | (e.mode & 0o7777), e.rdev);
                self.replace(dir, i, live_kind, kind_name(kind), |d, tmp| {
                    fsx::mknod_at(d, tmp, bits, rdev).map_err(Into::into)
                })
            }
        }
    }

    /// Replace (or create) a non-file entry by making it under a temporary name and renaming.
    pub(super) fn replace(
        &mut self,
        dir: Dir<'_>,
        i: usize,
        live_kind: Option<Kind>,
        what: &str,
        make: impl Fn(BorrowedFd<'_>, &OsStr) -> Result<()>,
    ) -> Result<()> {
        let e = &self.entries[i];
        let path = e.path_bytes();
        let name = base_of(path);
        match live_kind {
            None => self.change(path, ChangeKind::Create, what),
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
        let dir = dir.fd()?;
        if live_kind == Some(Kind::Dir) {
            self.remove_dir(dir, path)?;
        }
        let tmp = tmp_name();
        make(dir, &tmp)?;
        let r = (|| {
            let st = fsx::lstat_at(dir, &tmp)?;
            apply_metadata(Target::Child(dir, &tmp), e, &st)?;
            fsx::rename_at(dir, &tmp, name)?;
            Ok(())
        })();
        if r.is_err() {
            let _ = fsx::unlink_at(dir, &tmp);
        }
        r
    }

    pub(super) fn remove_dir(&mut self, dir: BorrowedFd<'_>, path: &[u8]) -> Result<()> {
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

    pub(super) fn content_equal(&mut self, dir: Dir<'_>, e: &Entry, st: &Stat) -> Result<bool> {
        if st.st_size as u64 != e.size {
            return Ok(false);
        }
        let key = stat_key(st);
        if key.3 == e.mtime && self.untouched(e, st) {
            return Ok(true);
        }
        if let Some((k, eq)) = self.content_cache.get(e.path_bytes())
            && *k == key
        {
            return Ok(*eq);
        }
        let eq = match dir {
            Dir::Fd(fd) => {
                let f = std::fs::File::from(fsx::open_child_file(fd, base_of(e.path_bytes()))?);
                let (hash, _) = hash_file(&f)?;
                self.report.hashed_live_files += 1;
                Some(&hash) == e.hash.as_ref()
            }
            // Hashed by the scan (and counted there).
            Dir::Scanned(scan) => scan
                .entry(e.path_bytes())
                .and_then(|l| l.same_content)
                .with_context(|| format!("{} was not hashed by the scan", e.display()))?,
        };
        self.content_cache
            .insert(e.path_bytes().to_vec(), (key, eq));
        Ok(eq)
    }

    pub(super) fn sync_file(&mut self, dir: Dir<'_>, i: usize, live: Option<Stat>) -> Result<()> {
        let e = &self.entries[i];
        let path = e.path_bytes();
        let name = base_of(path);
        // Written ahead of the walk ([`Self::prewrite`]): recorded here, in its place.
        if let Some(w) = self.prewritten.remove(path) {
            self.change(path, w.change, w.detail);
            self.report.files_written += 1;
            self.report.bytes_written += w.bytes;
            if let Some(g) = e.hardlink {
                self.group_changes.insert(g);
                let st = fsx::lstat_at(dir.fd()?, name)?;
                self.group_inode.insert(g, (st.st_dev, st.st_ino));
            }
            return Ok(());
        }
        let live_kind = live.as_ref().map(Kind::of);
        if let (Some(st), Some(Kind::File)) = (&live, live_kind)
            && self.content_equal(dir, e, st)?
        {
            let before = self.report.changes.len();
            self.metadata(dir.meta(name, path), e, st)?;
            if self.report.changes.len() == before {
                self.found_equal(e, st);
            }
            // Metadata is set in place: the inode is the one stat'ed.
            if let Some(g) = e.hardlink {
                self.group_inode.insert(g, (st.st_dev, st.st_ino));
            }
            return Ok(());
        }
        match live_kind {
            None => self.change(path, ChangeKind::Create, "file"),
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
        let dir = dir.fd()?;
        if live_kind == Some(Kind::Dir) {
            self.remove_dir(dir, path)?;
        }
        // Something still there to replace (a directory was removed above).
        let replace = live_kind.is_some_and(|k| k != Kind::Dir);
        let written = write_file(self.generation, &self.reflink, dir, e, replace)?;
        self.report.files_written += 1;
        self.report.bytes_written += written;
        if let Some(g) = e.hardlink {
            let st = fsx::lstat_at(dir, name)?;
            self.group_inode.insert(g, (st.st_dev, st.st_ino));
        }
        Ok(())
    }

    pub(super) fn sync_hardlink(
        &mut self,
        dir: Dir<'_>,
        i: usize,
        live: Option<Stat>,
    ) -> Result<()> {
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
            // The owner was not visited in this pass (another tree): compare with its live
            // inode, in a dry run and a restore alike, so that a diff lists what a restore does.
            (Some(st), None) if !self.group_changes.contains(&g) => self
                .owner_dir(&owner_path)
                .ok()
                .and_then(|d| {
                    fsx::try_lstat_at(d.as_fd(), base_of(&owner_path))
                        .ok()
                        .flatten()
                })
                .is_some_and(|o| o.st_dev == st.st_dev && o.st_ino == st.st_ino),
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
        let dir = dir.fd()?;
        if live.as_ref().map(Kind::of) == Some(Kind::Dir) {
            self.remove_dir(dir, path)?;
        }
        let owner_dir = self.owner_dir(&owner_path)?;
        let tmp = tmp_name();
        fsx::link_at(owner_dir.as_fd(), base_of(&owner_path), dir, &tmp)
            .with_context(|| format!("linking to {}", node(&owner_path)))?;
        if let Err(err) = fsx::rename_at(dir, &tmp, name) {
            let _ = fsx::unlink_at(dir, &tmp);
            return Err(err.into());
        }
        Ok(())
    }

    /// The directory that holds the owner of a hardlink group.
    fn owner_dir(&self, owner_path: &[u8]) -> std::io::Result<OwnedFd> {
        let owner_node = Path::new("/").join(stored_rel(owner_path));
        fsx::open_dir_in_root(self.root, owner_node.parent().unwrap_or(Path::new("/")))
    }
}

/// Put entry `e`'s content, from the generation, in `dir` under its name, with its metadata:
/// written under a temporary name, checked against the manifest's hash while it is copied, then
/// exchanged with what is there (`replace`: a file, a symlink, a device) or renamed into place.
/// Returns the bytes written.
pub(super) fn write_file(
    generation: &Generation,
    reflink: &ReflinkState,
    dir: BorrowedFd<'_>,
    e: &Entry,
    replace: bool,
) -> Result<u64> {
    let name = base_of(e.path_bytes());
    let tmp = tmp_name();
    let r = (|| -> Result<u64> {
        let stored = generation.object(e.hash.as_deref().unwrap_or_default());
        let src: OwnedFd = std::fs::File::open(&stored)
            .with_context(|| format!("opening {}", stored.display()))?
            .into();
        let dst = fsx::create_child_file(dir, &tmp, 0o600)?;
        let copied = copy_and_hash(src, &dst, reflink, e.hash.as_deref(), &|_| {})
            .with_context(|| format!("copying from {}", stored.display()))?;
        let st = fsx::fstat(dst.as_fd())?;
        apply_metadata(Target::Fd(dst.as_fd()), e, &st)?;
        drop(dst);
        if replace {
            fsx::replace_at(dir, &tmp, name)?;
        } else {
            fsx::rename_at(dir, &tmp, name)?;
        }
        Ok(copied.size)
    })();
    if r.is_err() {
        let _ = fsx::unlink_at(dir, &tmp);
    }
    r
}
