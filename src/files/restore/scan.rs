//! The live side of a tree, read for the comparison pass on several threads.
//!
//! The comparison decides, entry by entry, what a restore would change; deciding is cheap, the
//! reading (a listing per directory, a stat per entry, xattrs and link targets where the inode
//! is not the one the manifest recorded, and the content of files that may have changed) is
//! not. This reads exactly what the comparison will ask for, and nothing it will not, from
//! [`par_walk::THREADS`](super::super::par_walk::THREADS) threads; the comparison then runs over
//! it in order, without a system call. The apply pass never uses it: it reads the live tree
//! again for every entry it changes.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use rustix::fs::Stat;

use super::paths::{base_of, join, node, parent_of};
use crate::files::copy::hash_file;
use crate::files::entry::{Entry, Kind, Time, content_owner};
use crate::files::exclude::Excludes;
use crate::files::fsx::{self, Xattrs};
use crate::files::path_map::PathMap;

/// One live entry, as the comparison will look at it.
#[derive(Debug)]
pub(super) struct Live {
    pub st: Stat,
    /// Read where the inode is not the untouched one the manifest recorded (else the
    /// manifest's are the live ones).
    pub xattrs: Option<Xattrs>,
    /// A symlink's target, likewise.
    pub link: Option<Vec<u8>>,
    /// A regular file of the recorded size that is not provably unchanged: whether its content
    /// hashes to the manifest's.
    pub same_content: Option<bool>,
}

/// One directory the scan read.
#[derive(Debug, Default)]
struct ScannedDir {
    /// Its names, sorted bytewise (as `fsx::list_dir` gives them).
    names: Vec<OsString>,
    /// What each name is, in the same order; `None` for an excluded path or a mount point
    /// left alone, and for an entry gone between the listing and its stat.
    lives: Vec<Option<Live>>,
}

/// What the scan read: each directory's names and what they are.
#[derive(Debug, Default)]
pub(super) struct LiveScan {
    dirs: PathMap<ScannedDir>,
    /// Live files hashed to compare their content.
    pub hashed: u64,
}

impl LiveScan {
    pub(super) fn names(&self, rel: &[u8]) -> Result<&[OsString]> {
        self.dirs
            .get(rel)
            .map(|d| d.names.as_slice())
            .with_context(|| format!("{} was not read before the comparison", node(rel)))
    }

    pub(super) fn entry(&self, path: &[u8]) -> Option<&Live> {
        let d = self.dirs.get(parent_of(path))?;
        let name = base_of(path).as_bytes();
        let i = d.names.binary_search_by(|n| n.as_bytes().cmp(name)).ok()?;
        d.lives[i].as_ref()
    }
}

/// What the scan needs of the restore: the manifest's entries by parent, what is left alone,
/// and when the manifest's walk began.
pub(super) struct ScanCx<'a> {
    pub entries: &'a [Entry],
    pub children: &'a PathMap<Vec<usize>, &'a [u8]>,
    pub excludes: &'a Excludes,
    pub skipped_mounts: &'a HashSet<&'a [u8]>,
    pub walked: Option<Time>,
    /// The live inodes earlier comparisons found equal: as good as untouched.
    pub live_index: &'a super::live_index::LiveIndex,
    pub check_cancel: &'a (dyn Fn() -> Result<()> + Sync),
}

struct Job {
    fd: OwnedFd,
    rel: Vec<u8>,
    /// The directory is the inode the manifest recorded, untouched since: it holds the names
    /// the generation lists (a name added, removed or renamed moves its ctime), and what it
    /// holds beside them (excluded paths, mount points) is left alone anyway. Its names are
    /// taken from the manifest instead of being read: on ext4 a listing builds a hash tree of
    /// the directory's names every time, the largest part of a restore with nothing to do.
    untouched: bool,
}

type DirRead = (Vec<u8>, ScannedDir);

impl ScanCx<'_> {
    fn excluded(&self, rel: &[u8]) -> bool {
        let mut n = Vec::with_capacity(rel.len() + 1);
        n.push(b'/');
        n.extend_from_slice(rel);
        self.excludes.excludes(&n)
    }

    /// Read the tree below the directory `fd` (the tree root `rel`, on the device `dev`);
    /// `untouched`: the root is the inode the manifest recorded, untouched since.
    pub(super) fn scan(
        &self,
        fd: OwnedFd,
        rel: &[u8],
        dev: u64,
        untouched: bool,
    ) -> Result<LiveScan> {
        let hashed = AtomicU64::new(0);
        let read = crate::files::par_walk::visit_tree(
            Job {
                fd,
                rel: rel.to_vec(),
                untouched,
            },
            |job| self.read_dir(job, dev, &hashed),
        )?;
        let mut scan = LiveScan {
            hashed: hashed.into_inner(),
            ..LiveScan::default()
        };
        scan.dirs.reserve(read.len());
        scan.dirs.extend(read);
        Ok(scan)
    }

    /// One directory: its names, its entries, and the directories below it the comparison
    /// will enter (a directory in the generation that is a directory on the same file system
    /// now, not excluded, not a mount point left alone).
    fn read_dir(&self, job: Job, dev: u64, hashed: &AtomicU64) -> Result<(DirRead, Vec<Job>)> {
        (self.check_cancel)()?;
        let dir = job.fd.as_fd();
        let kids: &[usize] = self.children.get(&job.rel[..]).map_or(&[], Vec::as_slice);
        let base = |i: usize| base_of(self.entries[i].path_bytes());
        let names = if job.untouched {
            // Sorted by path, so by name: the order a listing gives.
            kids.iter().map(|&i| base(i).to_os_string()).collect()
        } else {
            fsx::list_dir(dir).with_context(|| format!("listing {}", node(&job.rel)))?
        };
        let wanted: HashMap<&[u8], usize> = kids.iter().map(|&i| (base(i).as_bytes(), i)).collect();
        let mut lives = Vec::with_capacity(names.len());
        let mut below = Vec::new();
        for name in &names {
            let path = join(&job.rel, name);
            if self.excluded(&path) || self.skipped_mounts.contains(&path[..]) {
                lives.push(None);
                continue;
            }
            let Some(st) = fsx::try_lstat_at(dir, name)? else {
                lives.push(None);
                continue;
            };
            let mut live = Live {
                st,
                xattrs: None,
                link: None,
                same_content: None,
            };
            let ctx = || format!("reading {}", node(&path));
            if let Some(&i) = wanted.get(name.as_bytes()) {
                let e = &self.entries[i];
                let kind = Kind::of(&st);
                let untouched = e.untouched(&st, self.walked) || self.live_index.vouches(e, &st);
                match e.kind {
                    Kind::Dir if kind == Kind::Dir && st.st_dev == dev => {
                        let child = fsx::open_child_dir(dir, name).with_context(ctx)?;
                        if !untouched {
                            live.xattrs = Some(fsx::xattrs_fd(child.as_fd()).with_context(ctx)?);
                        }
                        below.push(Job {
                            fd: child,
                            rel: path,
                            untouched,
                        });
                    }
                    Kind::Dir => {}
                    // A later member of a hardlink group is compared by its inode only.
                    Kind::File if content_owner(self.entries, i) != i => {}
                    Kind::File if kind == Kind::File => {
                        let unchanged =
                            Time(st.st_mtime, st.st_mtime_nsec as u32) == e.mtime && untouched;
                        if st.st_size as u64 == e.size && !unchanged {
                            let f = std::fs::File::from(
                                fsx::open_child_file(dir, name).with_context(ctx)?,
                            );
                            let (hash, _) = hash_file(&f).with_context(ctx)?;
                            hashed.fetch_add(1, Ordering::Relaxed);
                            live.same_content = Some(Some(&hash) == e.hash.as_ref());
                        }
                        if !untouched {
                            live.xattrs = Some(fsx::xattrs_at(dir, name).with_context(ctx)?);
                        }
                    }
                    want if want == kind && !untouched => {
                        if kind == Kind::Symlink {
                            live.link = Some(fsx::read_link_at(dir, name).with_context(ctx)?);
                        }
                        live.xattrs = Some(fsx::xattrs_at(dir, name).with_context(ctx)?);
                    }
                    _ => {}
                }
            }
            lives.push(Some(live));
        }
        Ok(((job.rel, ScannedDir { names, lives }), below))
    }
}
