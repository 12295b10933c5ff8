//! Copying the scanned trees into the object store, incrementally.
//!
//! A regular file whose size, mtime and source inode identity (device, inode, ctime) equal its
//! entry in the previous generation is unchanged: its hash is taken from the previous manifest
//! and nothing is read or written. Any other file is read once, hashed while it is written to a
//! temporary file, and renamed to its object name (or dropped, if an object with that content
//! already exists). Content is stored without the node's metadata (mode, owner, xattrs live in
//! the manifest), so sharing depends on content alone.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use anyhow::{Context, Result};

use super::copy::{ReflinkState, copy_and_hash};
use super::entry::{Entry, Kind};
use super::entry::{content_owner, owns_content};
use super::fsx;
use super::object_id::{IdSet, ObjectId};
use super::previous::Previous;
use super::store::{Store, stored_rel};

/// How many bytes between two progress reports of a copy.
const PROGRESS_BYTES: u64 = 64 << 20;

/// Progress and cancellation hooks for long file operations.
pub(crate) struct Hooks<'a> {
    /// Called for every file changed or copied; an error (cancellation, failpoint) stops the
    /// operation.
    pub checkpoint: &'a (dyn Fn() -> Result<()> + Sync),
    /// Called for every file of a read-only pass (a restore's comparison first pass); an
    /// error (cancellation) stops it. Failpoints count `checkpoint` calls only.
    pub check_cancel: &'a (dyn Fn() -> Result<()> + Sync),
    /// `(files done, files total, bytes done, bytes total)`; bytes total is 0 where it is
    /// not known.
    pub progress: &'a (dyn Fn(u64, u64, u64, u64) + Sync),
}

impl Hooks<'_> {
    pub(crate) fn none() -> Hooks<'static> {
        Hooks {
            checkpoint: &|| Ok(()),
            check_cancel: &|| Ok(()),
            progress: &|_, _, _, _| {},
        }
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct CopyStats {
    pub files: u64,
    pub copied_files: u64,
    pub copied_bytes: u64,
    /// Files whose content was already stored (unchanged, or identical to another file).
    pub shared_files: u64,
    pub shared_bytes: u64,
    pub reflinked_files: u64,
    pub hardlinks: u64,
    /// Objects written by this backup, and those it found stored that the previous
    /// generation does not name (an interrupted attempt may have written them): the verify
    /// step re-reads these before anything relies on them.
    #[serde(skip)]
    pub new_objects: Vec<String>,
    /// Entries whose file was gone, or was no longer a regular file, when its turn came: the
    /// walk is stale for them, and the entries cannot go into a manifest as they are.
    #[serde(skip)]
    pub stale: Vec<usize>,
}

/// Bytes the copy will need to write (files that cannot be shared), for the space pre-flight.
pub(crate) fn bytes_to_copy(entries: &[Entry], previous: &Previous) -> u64 {
    (0..entries.len())
        .filter(|&i| owns_content(entries, i))
        .filter(|&i| previous.unchanged_file(&entries[i]).is_none())
        // Whole blocks: a thousand small files take a thousand blocks.
        .map(|i| entries[i].size.div_ceil(4096) * 4096)
        .sum()
}

/// Store the content of `entries` (read from `root`) as objects, filling in their hashes.
/// `lacking`: which objects `previous` names the store lacks, when it was listed since
/// anything last removed objects (else it is listed now, while the changed files are copied).
pub(crate) fn copy_files(
    root: &Path,
    entries: &mut [Entry],
    store: &Store,
    previous: &Previous,
    lacking: Option<IdSet>,
    workers: usize,
    hooks: &Hooks<'_>,
) -> Result<CopyStats> {
    store.ensure()?;
    let started = std::time::Instant::now();
    let mut stats = CopyStats::default();
    // Files unchanged since the previous generation share its objects, once the store's
    // listing says they are there; the others are copied meanwhile.
    let mut unchanged: Vec<(usize, ObjectId)> = Vec::new();
    let mut jobs: Vec<usize> = Vec::new();
    for i in 0..entries.len() {
        if !owns_content(entries, i) {
            continue;
        }
        match previous
            .unchanged_file(&entries[i])
            .and_then(|p| p.hash.as_deref().and_then(ObjectId::from_hex))
        {
            Some(id) => unchanged.push((i, id)),
            None => jobs.push(i),
        }
    }
    let job = Job {
        root,
        store,
        workers,
        hooks,
        tmp_dir: store.objects_tmp(),
        reflink: ReflinkState::new(true),
    };
    let (lacking, mut results) = std::thread::scope(|s| {
        let listing = s.spawn(|| match lacking {
            Some(lacking) => Ok(lacking),
            None => store.lacking(previous.objects()),
        });
        let results = job.copy(entries, &jobs);
        let lacking = match listing.join() {
            Ok(l) => l,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        (lacking, results)
    });
    // `lacking` answers only for the objects the previous generation names, and an unchanged
    // file's object is one of those: one not lacking is stored, one lacking is copied again.
    let lacking = lacking?;
    let mut missing = Vec::new();
    for &(i, id) in &unchanged {
        // A shared file is a file done too: cancellation and `during@N` failpoints count it,
        // so that they do not depend on how much changed since the last backup.
        (hooks.checkpoint)()?;
        if !lacking.contains(&id) {
            let p = previous
                .unchanged_file(&entries[i])
                .expect("unchanged above");
            let (hash, sparse) = (p.hash.clone(), p.sparse);
            let e = &mut entries[i];
            e.hash = hash;
            e.sparse = sparse;
            stats.shared_files += 1;
            stats.shared_bytes += e.size;
        } else {
            missing.push(i);
        }
    }
    if !missing.is_empty() {
        tracing::warn!(
            "{} objects of the previous generation were missing from the store; copied again",
            missing.len()
        );
        results.extend(job.copy(entries, &missing));
    }
    let total = jobs.len() + missing.len();

    results.sort_by_key(|(i, _)| *i);
    for (i, r) in results {
        let Some(d) = r? else {
            stats.stale.push(i);
            continue;
        };
        let e = &mut entries[i];
        if let Some(fresh) = d.refreshed {
            *e = fresh;
        }
        e.hash = Some(d.hash.clone());
        e.sparse = d.sparse;
        if d.new_object {
            stats.copied_files += 1;
            stats.copied_bytes += d.size;
            stats.new_objects.push(d.hash);
        } else {
            stats.shared_files += 1;
            stats.shared_bytes += d.size;
            // Found stored, but not by a generation that verified it: an attempt that a
            // crash or a failure interrupted may have written it, and nothing re-read it.
            if !previous.names_object(&d.hash) {
                stats.new_objects.push(d.hash);
            }
        }
        if d.reflinked {
            stats.reflinked_files += 1;
        }
    }

    // Hardlink group members carry their first member's content.
    for i in 0..entries.len() {
        let owner = content_owner(entries, i);
        if entries[i].kind != Kind::File || owner == i {
            continue;
        }
        let (hash, sparse, size) = (
            entries[owner].hash.clone(),
            entries[owner].sparse,
            entries[owner].size,
        );
        let e = &mut entries[i];
        e.hash = hash;
        e.sparse = sparse;
        e.size = size;
        stats.hardlinks += 1;
    }
    stats.files = entries.iter().filter(|e| e.kind == Kind::File).count() as u64;
    tracing::debug!(
        "copy: {} files copied, {} objects of the previous generation missing, in {:?}",
        total,
        lacking.len(),
        started.elapsed()
    );
    Ok(stats)
}

/// What copying files needs; [`Job::copy`] copies some of them.
struct Job<'a> {
    root: &'a Path,
    store: &'a Store,
    workers: usize,
    hooks: &'a Hooks<'a>,
    tmp_dir: PathBuf,
    reflink: ReflinkState,
}

impl Job<'_> {
    /// Copy the files of `entries` at these positions on `workers` threads; each one's
    /// result, the first error stopping the others.
    fn copy(&self, entries: &[Entry], jobs: &[usize]) -> Vec<(usize, Result<Option<Done>>)> {
        let Job {
            root, store, hooks, ..
        } = *self;
        let total = jobs.len() as u64;
        let bytes_total: u64 = jobs.iter().map(|&i| entries[i].size).sum();
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let done = AtomicU64::new(0);
        let bytes = AtomicU64::new(0);
        let results: Mutex<Vec<(usize, Result<Option<Done>>)>> =
            Mutex::new(Vec::with_capacity(jobs.len()));
        std::thread::scope(|s| {
            for _ in 0..self.workers.max(1).min(jobs.len()) {
                s.spawn(|| {
                    let mut dirs = DirCache::default();
                    loop {
                        if failed.load(Ordering::Relaxed) {
                            return;
                        }
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&i) = jobs.get(k) else { return };
                        let e = &entries[i];
                        // Bytes as they are copied, with a report each PROGRESS_BYTES, so that
                        // progress moves inside a large file (a deterministic count, no timer).
                        let meter = |n: u64| {
                            let before = bytes.fetch_add(n, Ordering::Relaxed);
                            if before / PROGRESS_BYTES != (before + n) / PROGRESS_BYTES {
                                (hooks.progress)(
                                    done.load(Ordering::Relaxed),
                                    total,
                                    before + n,
                                    bytes_total,
                                );
                            }
                        };
                        let r = (hooks.checkpoint)().and_then(|()| {
                            one_file(
                                root,
                                e,
                                store,
                                &self.tmp_dir,
                                &self.reflink,
                                &mut dirs,
                                &meter,
                            )
                            .with_context(|| format!("backing up {}", e.display()))
                        });
                        if r.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_multiple_of(256) || n == total {
                            (hooks.progress)(n, total, bytes.load(Ordering::Relaxed), bytes_total);
                        }
                        results
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((i, r));
                    }
                });
            }
        });
        results.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

struct Done {
    hash: String,
    size: u64,
    sparse: bool,
    new_object: bool,
    reflinked: bool,
    refreshed: Option<Entry>,
}

/// Source directories opened by one worker (files of one directory come in a row).
#[derive(Default)]
struct DirCache {
    path: PathBuf,
    fd: Option<OwnedFd>,
}

impl DirCache {
    fn open(&mut self, root: &Path, parent: &Path) -> std::io::Result<&OwnedFd> {
        if self.fd.is_none() || self.path != parent {
            self.fd = Some(fsx::open_dir_in_root(root, parent)?);
            self.path = parent.to_path_buf();
        }
        Ok(self.fd.as_ref().expect("just set"))
    }
}

static TMP: AtomicU64 = AtomicU64::new(0);

/// Whether opening a path failed because it is no longer what the walk found there: gone
/// (`ENOENT`), a directory on the way gone or replaced (`ENOTDIR`), or a symlink now (`ELOOP`,
/// `O_NOFOLLOW`).
fn gone(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
        || e.kind() == std::io::ErrorKind::NotADirectory
        || e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
}

/// Store one file; `None` when it is gone or no longer a regular file (the walk is stale).
fn one_file(
    root: &Path,
    e: &Entry,
    store: &Store,
    tmp_dir: &Path,
    reflink: &ReflinkState,
    dirs: &mut DirCache,
    meter: &dyn Fn(u64),
) -> Result<Option<Done>> {
    let node_path = Path::new("/").join(stored_rel(e.path_bytes()));
    let parent = node_path.parent().unwrap_or(Path::new("/"));
    let name = node_path.file_name().context("entry has no file name")?;
    let dir = match dirs.open(root, parent) {
        Err(err) if gone(&err) => return Ok(None),
        r => r?,
    };
    let src = match fsx::open_child_file(dir.as_fd(), name) {
        Err(err) if gone(&err) => return Ok(None),
        r => r?,
    };
    let st = fsx::fstat(src.as_fd())?;
    if Kind::of(&st) != Kind::File {
        return Ok(None);
    }
    // Changed since the walk (an editor's atomic rename, an in-place write): record what is
    // actually copied, so that the manifest's metadata and hash describe the same content.
    let refreshed = if st.st_ino != e.source.ino
        || st.st_dev != e.source.dev
        || st.st_size as u64 != e.size
        || st.st_mtime != e.mtime.0
        || st.st_mtime_nsec as u32 != e.mtime.1
    {
        let mut fresh = Entry::from_stat(e.path_bytes(), &st);
        fresh.xattrs = fsx::xattrs_fd(src.as_fd())?.into();
        fresh.hardlink = e.hardlink;
        Some(fresh)
    } else {
        None
    };
    let tmp = tmp_dir.join(format!(
        "{}.{}",
        std::process::id(),
        TMP.fetch_add(1, Ordering::Relaxed)
    ));
    let dst: OwnedFd = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?
        .into();
    let copied = match copy_and_hash(src, &dst, reflink, None, meter) {
        Ok(c) => c,
        Err(err) => {
            drop(dst);
            let _ = std::fs::remove_file(&tmp);
            return Err(err.into());
        }
    };
    drop(dst);
    let new_object = store.put_object(&tmp, &copied.hash)?;
    Ok(Some(Done {
        hash: copied.hash,
        size: copied.size,
        sparse: copied.sparse,
        new_object,
        reflinked: copied.reflinked,
        refreshed,
    }))
}
