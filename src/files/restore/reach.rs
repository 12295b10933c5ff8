//! Reaching a tree root, or the directory of a machine-config file, without following a
//! symlink the backup did not follow.
//!
//! One rule wherever the path is: a component that was a directory at backup time and is now a
//! symlink (or a file) is replaced by a directory, as inside a tree, when the generation
//! records that directory; a component the generation does not record (`/usr` above
//! `/usr/local`) is never changed, and the restore stops with a message naming it and what it
//! is now. A tree that was reached through a symlink at backup time (RHCOS: `/usr/local ->
//! var/usrlocal`) is followed inside the node, and only to where it led then.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Result, bail};

use super::metadata::{apply_metadata, kind_name};
use super::paths::node;
use super::{ChangeKind, Restorer};
use crate::files::entry::Kind;
use crate::files::fsx::{self, Target};
use crate::files::manifest::TreeInfo;

/// The node's root directory (followed if it is a symlink itself: it is configuration).
fn open_root(root: &std::path::Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        root,
        rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

/// The components of a relative byte path, each with the path up to and including it.
fn components(rel: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let mut end = 0;
    for (k, part) in rel.split(|b| *b == b'/').enumerate() {
        end += part.len() + usize::from(k > 0);
        out.push((part, &rel[..end]));
    }
    out
}

/// What a path component is now, in words (`a symlink to /x`, `a regular file`).
fn what_it_is(dir: BorrowedFd<'_>, name: &std::ffi::OsStr, kind: Kind) -> String {
    match kind {
        Kind::Symlink => match fsx::read_link_at(dir, name) {
            Ok(t) => format!("a symlink to {}", String::from_utf8_lossy(&t)),
            Err(_) => "a symlink".into(),
        },
        k => format!("a {}", kind_name(k)),
    }
}

impl Restorer<'_> {
    /// Open the root of `info` for a restore, or `None` in a dry run where it would be created
    /// or replaced (the change is recorded; everything below it would be created too).
    pub(super) fn reach_tree_root(
        &mut self,
        info: &TreeInfo,
        rel: &[u8],
    ) -> Result<Option<OwnedFd>> {
        let tree = Path::new(&info.path);
        if let Some(then) = info.resolved.as_deref().filter(|r| *r != info.path) {
            let fd = match fsx::open_dir_in_root(self.root, tree) {
                Ok(fd) => fd,
                Err(e) => bail!(
                    "{} led to {then} at backup time (through a symlink), and now cannot be opened ({e}); \
                     refusing to guess where to restore it. Make {} lead to {then} again, then run the restore again",
                    info.path,
                    info.path
                ),
            };
            let now = fsx::resolved_in_root(self.root, fd.as_fd())?;
            if now != then {
                bail!(
                    "{} resolves to {now} inside the node, but to {then} when it was backed up; \
                     refusing to restore through it. Make {} lead to {then} again, then run the restore again",
                    info.path,
                    info.path
                );
            }
            return Ok(Some(fd));
        }
        let mut dir = open_root(self.root)?;
        let parts = components(rel);
        let n = parts.len();
        for (k, (part, here)) in parts.into_iter().enumerate() {
            let name = std::ffi::OsStr::from_bytes(part);
            let last = k + 1 == n;
            let st = fsx::try_lstat_at(dir.as_fd(), name)?;
            match st.as_ref().map(Kind::of) {
                Some(Kind::Dir) => {}
                None if last => {
                    self.change(rel, ChangeKind::Create, "tree root");
                    if !self.apply {
                        return Ok(None);
                    }
                    fsx::mkdir_at(dir.as_fd(), name, 0o700)?;
                }
                None => bail!(
                    "cannot restore {}: {} does not exist (it did at backup time). Create it, then run the restore again",
                    info.path,
                    node(here)
                ),
                Some(kind) if last => {
                    let was = what_it_is(dir.as_fd(), name, kind);
                    self.change(rel, ChangeKind::Type, format!("{was} -> directory"));
                    if !self.apply {
                        return Ok(None);
                    }
                    fsx::unlink_at(dir.as_fd(), name)?;
                    fsx::mkdir_at(dir.as_fd(), name, 0o700)?;
                }
                Some(kind) => bail!(
                    "cannot restore {}: {} is now {} (a directory at backup time), and it is not part of the backup; \
                     recoveryd never restores through it. Make {} a directory again, then run the restore again",
                    info.path,
                    node(here),
                    what_it_is(dir.as_fd(), name, kind),
                    node(here)
                ),
            }
            dir = fsx::open_child_dir(dir.as_fd(), name)?;
        }
        Ok(Some(dir))
    }

    /// Open the directory `rel` (the parent of a machine-config file outside the trees),
    /// creating or repairing the ancestors the generation recorded. `None` in a dry run where
    /// one of them would be created or replaced.
    pub(super) fn reach_outside_dir(&mut self, rel: &[u8]) -> Result<Option<OwnedFd>> {
        let mut dir = open_root(self.root)?;
        if rel.is_empty() {
            return Ok(Some(dir));
        }
        for (part, here) in components(rel) {
            let here = here.to_vec();
            let name = std::ffi::OsStr::from_bytes(part);
            let st = fsx::try_lstat_at(dir.as_fd(), name)?;
            let implicit = self.implicit.get(&here[..]).copied();
            if let Some(i) = implicit.filter(|&i| self.entries[i].kind == Kind::Symlink) {
                dir = self.through_recorded_symlink(dir.as_fd(), name, &here, i, st.as_ref())?;
                continue;
            }
            let recorded = implicit.filter(|&i| self.entries[i].kind == Kind::Dir);
            match (st.as_ref().map(Kind::of), recorded) {
                (Some(Kind::Dir), _) => {}
                (None, Some(i)) => {
                    if self.reported.insert(here.clone()) {
                        self.change(&here, ChangeKind::Create, "directory");
                    }
                    if !self.apply {
                        return Ok(None);
                    }
                    fsx::mkdir_at(dir.as_fd(), name, 0o700)?;
                    self.repaired_dir(dir.as_fd(), name, i)?;
                }
                (Some(kind), Some(i)) => {
                    let was = what_it_is(dir.as_fd(), name, kind);
                    if self.reported.insert(here.clone()) {
                        self.change(&here, ChangeKind::Type, format!("{was} -> directory"));
                    }
                    if !self.apply {
                        return Ok(None);
                    }
                    fsx::unlink_at(dir.as_fd(), name)?;
                    fsx::mkdir_at(dir.as_fd(), name, 0o700)?;
                    self.repaired_dir(dir.as_fd(), name, i)?;
                }
                (None, None) => bail!(
                    "{} does not exist, and the generation does not record it; create it, then run the restore again",
                    node(&here)
                ),
                (Some(kind), None) => bail!(
                    "{} is now {}, and the generation does not record it; recoveryd never restores through it. \
                     Make it a directory again, then run the restore again",
                    node(&here),
                    what_it_is(dir.as_fd(), name, kind)
                ),
            }
            dir = fsx::open_child_dir(dir.as_fd(), name)?;
        }
        Ok(Some(dir))
    }

    /// Follow an ancestor that was a symlink at backup time (RHCOS: `/opt -> var/opt`), inside
    /// the node, if it still leads where it did; anything else stops the restore: replacing a
    /// symlink with a directory would hide what it leads to.
    fn through_recorded_symlink(
        &self,
        dir: BorrowedFd<'_>,
        name: &std::ffi::OsStr,
        here: &[u8],
        i: usize,
        now: Option<&rustix::fs::Stat>,
    ) -> Result<OwnedFd> {
        let then = self.entries[i]
            .link
            .as_ref()
            .map(|l| &l.0[..])
            .unwrap_or(b"");
        let then_text = String::from_utf8_lossy(then);
        match now.map(Kind::of) {
            Some(Kind::Symlink) => {
                let target = fsx::read_link_at(dir, name)?;
                if target != then {
                    bail!(
                        "{} is now a symlink to {}, and was a symlink to {then_text} at backup time; \
                         recoveryd never restores through it. Make it lead to {then_text} again, then run the restore again",
                        node(here),
                        String::from_utf8_lossy(&target)
                    );
                }
                Ok(fsx::open_dir_in_root(self.root, Path::new(&node(here)))?)
            }
            None => bail!(
                "{} does not exist; it was a symlink to {then_text} at backup time. Create it, then run the restore again",
                node(here)
            ),
            Some(kind) => bail!(
                "{} is now {}, and was a symlink to {then_text} at backup time; recoveryd never replaces it. \
                 Make it a symlink to {then_text} again, then run the restore again",
                node(here),
                what_it_is(dir, name, kind)
            ),
        }
    }

    /// Give a directory just created for entry `i` its recorded metadata.
    fn repaired_dir(&self, parent: BorrowedFd<'_>, name: &std::ffi::OsStr, i: usize) -> Result<()> {
        let d = fsx::open_child_dir(parent, name)?;
        let st = fsx::fstat(d.as_fd())?;
        apply_metadata(Target::Fd(d.as_fd()), &self.entries[i], &st)
    }
}
