//! Walking the live trees into manifest entries.
//!
//! One file system per tree: a directory on another device is a mount point; it is recorded in
//! `skipped_mounts` and neither entered nor backed up. Names are bytes. Hardlink groups are found
//! by `(dev, ino)` and numbered after the walk.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result};

use super::entry::{Entry, Kind};
use super::exclude::Excludes;
use super::fsx;
use super::manifest::TreeInfo;
use super::path_map::PathMap;
use super::previous::Previous;
use super::xattr_set::Interner;

/// What a walk found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub trees: Vec<TreeInfo>,
    pub entries: Vec<Entry>,
    pub extras: Vec<Vec<u8>>,
    pub extras_absent: Vec<Vec<u8>>,
    pub skipped_mounts: Vec<Vec<u8>>,
    /// When the walk began (see [`Entry::untouched`]).
    pub walked: Option<super::entry::Time>,
}

struct DirJob {
    fd: OwnedFd,
    rel: Vec<u8>,
    dev: u64,
    /// Its names, when the previous generation knows them (an untouched directory,
    /// [`Previous::names_in`]): no listing then.
    names: Option<Vec<std::ffi::OsString>>,
}

#[derive(Default)]
struct DirResult {
    /// Sorted by name, as `list_dir` returns them.
    children: Vec<Entry>,
    mounts: Vec<Vec<u8>>,
}

fn join(parent: &[u8], name: &OsStr) -> Vec<u8> {
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    p.extend_from_slice(parent);
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name.as_bytes());
    p
}

fn node_path(rel: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(rel.len() + 1);
    p.push(b'/');
    p.extend_from_slice(rel);
    p
}

/// A walk over several trees and extra files beneath one root.
pub(crate) struct Walker<'a> {
    pub root: &'a Path,
    pub excludes: &'a Excludes,
    /// Called once per directory; an error (cancellation) stops the walk.
    pub checkpoint: &'a (dyn Fn() -> Result<()> + Sync),
    /// The previous generation, once it is read (a walk can begin before): an entry whose
    /// inode it recorded untouched since takes its xattrs and link target from there instead
    /// of reading them again.
    pub previous: &'a OnceLock<Previous>,
}

impl Walker<'_> {
    pub(crate) fn scan(&self, trees: &[PathBuf], extras: &[PathBuf]) -> Result<Scan> {
        let mut scan = Scan {
            walked: Some(super::entry::Time::of(std::time::SystemTime::now())),
            ..Scan::default()
        };
        // One copy of each distinct set of xattrs for the whole walk.
        let interner = Interner::default();
        for tree in trees {
            let resolved = self
                .walk_tree(tree, &mut scan, &interner)
                .with_context(|| format!("walking {}", tree.display()))?;
            scan.trees.push(TreeInfo {
                path: tree.display().to_string(),
                present: resolved.is_some(),
                resolved,
            });
        }
        for extra in extras {
            self.add_extra(extra, trees, &mut scan)
                .with_context(|| format!("reading machine-config file {}", extra.display()))?;
        }
        number_hardlinks(&mut scan.entries);
        Ok(scan)
    }

    /// Walk one tree; `None` when it does not exist, else where it resolved to.
    fn walk_tree(
        &self,
        tree: &Path,
        scan: &mut Scan,
        interner: &Interner,
    ) -> Result<Option<String>> {
        let fd = match fsx::open_dir_in_root(self.root, tree) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let resolved = fsx::resolved_in_root(self.root, fd.as_fd())?;
        let rel = tree
            .as_os_str()
            .as_bytes()
            .strip_prefix(b"/")
            .unwrap_or(tree.as_os_str().as_bytes())
            .to_vec();
        let st = fsx::fstat(fd.as_fd())?;
        let mut e = Entry::from_stat(&rel, &st);
        e.xattrs = interner.intern(fsx::xattrs_fd(fd.as_fd())?);
        let names = self.known_names(&e);
        scan.entries.push(e);
        let mut dirs = self.walk_parallel(
            DirJob {
                fd,
                rel: rel.clone(),
                dev: st.st_dev,
                names,
            },
            interner,
        )?;
        // Depth first, children sorted by name: the same order on every walk.
        fn emit(rel: &[u8], dirs: &mut PathMap<DirResult>, scan: &mut Scan) {
            let Some(r) = dirs.remove(rel) else { return };
            scan.skipped_mounts.extend(r.mounts);
            for e in r.children {
                let is_dir = e.kind == Kind::Dir;
                let path = e.path.0.clone();
                scan.entries.push(e);
                if is_dir {
                    emit(&path, dirs, scan);
                }
            }
        }
        emit(&rel, &mut dirs, scan);
        Ok(Some(resolved))
    }

    /// List directories on several threads ([`super::par_walk`]), each directory's result by
    /// its path.
    fn walk_parallel(&self, top: DirJob, interner: &Interner) -> Result<PathMap<DirResult>> {
        let results = super::par_walk::visit_tree(top, |job| {
            let rel = job.rel.clone();
            let (result, subdirs) = self.read_dir(job, interner)?;
            Ok(((rel, result), subdirs))
        })?;
        Ok(results.into_iter().collect())
    }

    /// The names of the directory `e` (just stat'ed) as the previous generation knows them.
    fn known_names(&self, e: &Entry) -> Option<Vec<std::ffi::OsString>> {
        self.previous
            .get()
            .and_then(|p| p.names_in(e, self.excludes.patterns()))
    }

    /// One directory: its children's entries, and the child directories to walk next.
    fn read_dir(&self, job: DirJob, interner: &Interner) -> Result<(DirResult, Vec<DirJob>)> {
        let dir = job.fd.as_fd();
        let rel = &job.rel;
        let mut result = DirResult::default();
        let mut subdirs = Vec::new();
        (self.checkpoint)()?;
        let names = match job.names {
            Some(names) => names,
            None => fsx::list_dir(dir)
                .with_context(|| format!("listing /{}", String::from_utf8_lossy(rel)))?,
        };
        for name in names {
            let child = join(rel, &name);
            if self.excludes.excludes(&node_path(&child)) {
                continue;
            }
            let st = match fsx::try_lstat_at(dir, &name)? {
                Some(st) => st,
                None => continue, // removed while we walked
            };
            let mut e = Entry::from_stat(&child, &st);
            let ctx = || format!("reading /{}", String::from_utf8_lossy(&child));
            // What an untouched inode had is what it has: nothing more to read.
            let known = self.previous.get().and_then(|p| p.untouched(&e));
            if let Some(p) = known {
                e.xattrs = p.xattrs.clone();
                e.link = p.link.clone();
            }
            match e.kind {
                Kind::Dir => {
                    if st.st_dev != job.dev {
                        result.mounts.push(child);
                        continue;
                    }
                    let fd = fsx::open_child_dir(dir, &name).with_context(ctx)?;
                    if known.is_none() {
                        e.xattrs = interner.intern(fsx::xattrs_fd(fd.as_fd()).with_context(ctx)?);
                    }
                    subdirs.push(DirJob {
                        fd,
                        rel: child,
                        dev: job.dev,
                        names: self.known_names(&e),
                    });
                    result.children.push(e);
                }
                kind => {
                    if known.is_none() {
                        if kind == Kind::Symlink {
                            e.link = Some(super::bytetext::ByteText(
                                fsx::read_link_at(dir, &name).with_context(ctx)?,
                            ));
                        }
                        e.xattrs = interner.intern(fsx::xattrs_at(dir, &name).with_context(ctx)?);
                    }
                    result.children.push(e);
                }
            }
        }
        Ok((result, subdirs))
    }

    fn add_extra(&self, path: &Path, trees: &[PathBuf], scan: &mut Scan) -> Result<()> {
        let rel = path
            .as_os_str()
            .as_bytes()
            .strip_prefix(b"/")
            .unwrap_or(path.as_os_str().as_bytes())
            .to_vec();
        if self.excludes.excludes(&node_path(&rel)) {
            return Ok(());
        }
        let (parent, name) = match (path.parent(), path.file_name()) {
            (Some(p), Some(n)) => (p, n),
            _ => anyhow::bail!("not a file path"),
        };
        let dir = match fsx::open_dir_in_root(self.root, parent) {
            Ok(d) => d,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::NotADirectory =>
            {
                scan.extras_absent.push(rel);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let Some(st) = fsx::try_lstat_at(dir.as_fd(), name)? else {
            scan.extras_absent.push(rel);
            return Ok(());
        };
        let mut e = Entry::from_stat(&rel, &st);
        anyhow::ensure!(
            e.kind != Kind::Dir,
            "is a directory; only files can be listed as machine-config files"
        );
        // Ancestors (outside the trees) first, so a restore can recreate them.
        let mut ancestors: Vec<&Path> = parent
            .ancestors()
            .filter(|a| *a != Path::new("/"))
            .collect();
        ancestors.reverse();
        for a in ancestors {
            if trees.iter().any(|t| a.starts_with(t)) {
                continue;
            }
            let arel = a.as_os_str().as_bytes()[1..].to_vec();
            if scan.entries.iter().any(|x| x.path.0 == arel) {
                continue;
            }
            // An ancestor that is a symlink is recorded as one (RHCOS: `/opt -> var/opt`), so
            // that a restore follows it, and only to where it led, instead of putting a
            // directory in its place.
            if let (Some(ap), Some(an)) = (a.parent(), a.file_name()) {
                let pfd = fsx::open_dir_in_root(self.root, ap)?;
                if let Some(lst) = fsx::try_lstat_at(pfd.as_fd(), an)?
                    && Kind::of(&lst) == Kind::Symlink
                {
                    let mut ae = Entry::from_stat(&arel, &lst);
                    ae.link = Some(super::bytetext::ByteText(fsx::read_link_at(
                        pfd.as_fd(),
                        an,
                    )?));
                    ae.xattrs = fsx::xattrs_at(pfd.as_fd(), an)?.into();
                    ae.implicit = true;
                    scan.entries.push(ae);
                    continue;
                }
            }
            let afd = fsx::open_dir_in_root(self.root, a)?;
            let ast = fsx::fstat(afd.as_fd())?;
            let mut ae = Entry::from_stat(&arel, &ast);
            ae.xattrs = fsx::xattrs_fd(afd.as_fd())?.into();
            ae.implicit = true;
            scan.entries.push(ae);
        }
        if e.kind == Kind::Symlink {
            e.link = Some(super::bytetext::ByteText(fsx::read_link_at(
                dir.as_fd(),
                name,
            )?));
        }
        e.xattrs = fsx::xattrs_at(dir.as_fd(), name)?.into();
        scan.extras.push(rel);
        scan.entries.push(e);
        Ok(())
    }
}

/// Give every hardlink group (two or more entries sharing a regular file's inode) an id: the
/// position of its first member plus one.
fn number_hardlinks(entries: &mut [Entry]) {
    let mut groups: HashMap<(u64, u64), Vec<usize>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if e.kind == Kind::File && e.source.nlink > 1 {
            groups
                .entry((e.source.dev, e.source.ino))
                .or_default()
                .push(i);
        }
    }
    for members in groups.into_values() {
        if members.len() < 2 {
            continue;
        }
        let id = members[0] as u64 + 1;
        for i in members {
            entries[i].hardlink = Some(id);
        }
    }
}

/// Raise the soft limit of open files to the hard one. The walk keeps a directory open for
/// every directory it has queued, and a tree with a thousand subdirectories in one place
/// would otherwise run into the usual soft limit of 1024 (systemd leaves the hard limit high
/// and expects programs that need more to raise the soft one themselves).
pub(crate) fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!("could not raise the open files limit: {e}");
        }
    }
}
