//! Writing a tree's changed files on several threads before the apply pass.
//!
//! The apply pass is one walk, in order: it removes, creates, relinks, and sets each
//! directory's metadata after what it holds. Most of what a restore after an upgrade does is
//! rewriting regular files, and each of those is independent of the others: a copy from the
//! generation, checked against its hash, its metadata set on the new file, and one exchange of
//! names. Those go first, here, on several threads; the apply pass then records each of them
//! in its place in the walk (the report is the same as if it had written them itself) and does
//! everything else, the metadata of the directories they changed among it.
//!
//! Only what is certain is done here: a file the comparison found different that is still a
//! regular file, or still missing, in a directory reached from the tree root without following
//! a symlink or leaving the file system. Anything else is left to the apply pass.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};

use super::paths::{base_of, node, parent_of};
use super::tree::write_file;
use super::{ChangeKind, Restorer, stat_key};
use crate::files::copy::hash_file;
use crate::files::entry::{Kind, Time};
use crate::files::fsx;

/// Threads writing files at once.
const THREADS: usize = 4;

/// A file written ahead of the apply pass: what the pass records for it.
pub(super) struct Written {
    pub change: ChangeKind,
    pub detail: &'static str,
    pub bytes: u64,
}

impl Restorer<'_> {
    /// Write the files the comparison found different below the tree root `root` (`rel`, on
    /// the device `dev`), those that are regular files or missing in a directory that is there.
    pub(super) fn prewrite(&mut self, root: BorrowedFd<'_>, rel: &[u8], dev: u64) -> Result<()> {
        let mut by_dir: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
        for &i in &self.pending {
            let p = self.entries[i].path_bytes();
            if p.len() > rel.len() && p.starts_with(rel) && p[rel.len()] == b'/' {
                by_dir.entry(parent_of(p)).or_default().push(i);
            }
        }
        if by_dir.is_empty() {
            return Ok(());
        }
        let groups: Vec<(&[u8], Vec<usize>)> = by_dir.into_iter().collect();
        let next = AtomicUsize::new(0);
        let written: Mutex<Vec<(Vec<u8>, Written)>> = Mutex::new(Vec::new());
        let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        let this = &*self;
        std::thread::scope(|s| {
            for _ in 0..THREADS.min(groups.len()) {
                s.spawn(|| {
                    while let Some((dir, files)) = groups.get(next.fetch_add(1, Ordering::Relaxed))
                    {
                        if failed.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                            return;
                        }
                        match this.prewrite_dir(root, rel, dev, dir, files) {
                            Ok(done) => written
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .extend(done),
                            Err(e) => {
                                failed
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .get_or_insert(e);
                                return;
                            }
                        }
                    }
                });
            }
        });
        // What was written is recorded even when something failed: the apply pass is not
        // reached then, but the files are in place.
        let written = written.into_inner().unwrap_or_else(|p| p.into_inner());
        self.prewritten.extend(written);
        match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The files of one directory (`dir`, below the tree root `rel`).
    fn prewrite_dir(
        &self,
        root: BorrowedFd<'_>,
        rel: &[u8],
        dev: u64,
        dir: &[u8],
        files: &[usize],
    ) -> Result<Vec<(Vec<u8>, Written)>> {
        let Some(fd) = reach(root, rel, dir, dev)? else {
            return Ok(Vec::new());
        };
        let mut done = Vec::new();
        for &i in files {
            let e = &self.entries[i];
            let path = e.path_bytes();
            let name = base_of(path);
            let write = match fsx::try_lstat_at(fd.as_fd(), name)? {
                None => Some((ChangeKind::Create, "file", false)),
                Some(st) if Kind::of(&st) == Kind::File => {
                    let same = match self.content_cache.get(path) {
                        Some((k, eq)) if *k == stat_key(&st) => *eq,
                        _ if st.st_size as u64 != e.size => false,
                        _ if Time(st.st_mtime, st.st_mtime_nsec as u32) == e.mtime
                            && e.untouched(&st, self.manifest.header.walked) =>
                        {
                            true
                        }
                        // Changed since the comparison: hashed again.
                        _ => {
                            let f = std::fs::File::from(fsx::open_child_file(fd.as_fd(), name)?);
                            Some(&hash_file(&f)?.0) == e.hash.as_ref()
                        }
                    };
                    (!same).then_some((ChangeKind::Content, "", true))
                }
                Some(_) => None,
            };
            let Some((change, detail, replace)) = write else {
                continue;
            };
            (self.hooks.checkpoint)()?;
            let bytes = write_file(self.generation, &self.reflink, fd.as_fd(), e, replace)
                .with_context(|| format!("restoring {}", node(path)))?;
            done.push((
                path.to_vec(),
                Written {
                    change,
                    detail,
                    bytes,
                },
            ));
        }
        Ok(done)
    }
}

/// The directory `dir` below the tree root `root` (`rel`), reached one component at a time
/// without following a symlink; `None` when a component is missing, is not a directory, or is
/// on another file system (the apply pass deals with those).
fn reach(root: BorrowedFd<'_>, rel: &[u8], dir: &[u8], dev: u64) -> Result<Option<OwnedFd>> {
    let mut fd = root.try_clone_to_owned()?;
    let below = dir.get(rel.len() + 1..).unwrap_or_default();
    for part in below.split(|b| *b == b'/').filter(|p| !p.is_empty()) {
        let next = match fsx::open_child_dir(fd.as_fd(), OsStr::from_bytes(part)) {
            Ok(next) => next,
            Err(e)
                if matches!(
                    rustix::io::Errno::from_io_error(&e),
                    Some(
                        rustix::io::Errno::NOENT
                            | rustix::io::Errno::NOTDIR
                            | rustix::io::Errno::LOOP
                    )
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        if fsx::fstat(next.as_fd())?.st_dev != dev {
            return Ok(None);
        }
        fd = next;
    }
    Ok(Some(fd))
}

/// The files written ahead, by path, for the apply pass to record.
pub(super) type Prewritten = HashMap<Vec<u8>, Written>;
