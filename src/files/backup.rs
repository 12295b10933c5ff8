//! Copying the scanned trees into a staging generation, incrementally.
//!
//! A regular file whose size, mtime and source inode identity (device, inode, ctime) equal its
//! entry in the previous generation is unchanged: its stored copy is hardlinked from the previous
//! generation and its hash reused, without reading it. Where only size and mtime match (a
//! metadata change, or a file rewritten with the same timestamp), the file is copied and hashed,
//! and if the hash equals the previous one the copy is replaced by a link to save space. Content
//! is stored without the node's metadata (mode, owner, xattrs live in the manifest), so sharing
//! between generations depends on content alone.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use anyhow::{Context, Result};

use super::copy::{ReflinkState, copy_and_hash};
use super::entry::{Entry, Kind};
use super::fsx;
use super::manifest::Manifest;
use super::store::{FILES_DIR, stored_rel};
use super::walk::content_owner;

/// Progress and cancellation hooks for long file operations.
pub struct Hooks<'a> {
    /// Called for every file; an error (cancellation, failpoint) stops the operation.
    pub checkpoint: &'a (dyn Fn() -> Result<()> + Sync),
    /// `(files done, files total, bytes done)`.
    pub progress: &'a (dyn Fn(u64, u64, u64) + Sync),
}

impl Hooks<'_> {
    pub fn none() -> Hooks<'static> {
        Hooks {
            checkpoint: &|| Ok(()),
            progress: &|_, _, _| {},
        }
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CopyStats {
    pub files: u64,
    pub copied_files: u64,
    pub copied_bytes: u64,
    pub shared_files: u64,
    pub shared_bytes: u64,
    pub reflinked_files: u64,
    pub hardlinks: u64,
}

/// The previous generation, for sharing unchanged files.
pub struct Previous<'a> {
    pub manifest: &'a Manifest,
    pub files_dir: PathBuf,
}

enum Job {
    Share { prev_hash: String, sparse: bool },
    Copy { doubt: Option<String> },
}

/// Decide for each content-carrying file whether it can be shared with the previous generation.
fn unchanged<'a>(prev: &HashMap<&'a [u8], &'a Entry>, e: &Entry) -> Option<&'a Entry> {
    prev.get(e.path_bytes()).copied().filter(|p| {
        p.kind == Kind::File && p.size == e.size && p.mtime == e.mtime && p.hash.is_some()
    })
}

/// Bytes the copy will need to write (files that cannot be shared), for the space pre-flight.
pub fn bytes_to_copy(entries: &[Entry], previous: Option<&Manifest>) -> u64 {
    let prev: HashMap<&[u8], &Entry> = previous
        .map(|m| m.entries.iter().map(|e| (e.path_bytes(), e)).collect())
        .unwrap_or_default();
    (0..entries.len())
        .filter(|&i| entries[i].kind == Kind::File && content_owner(entries, i) == i)
        .filter(|&i| {
            let e = &entries[i];
            !unchanged(&prev, e).is_some_and(|p| p.source == e.source)
        })
        // Whole blocks: a thousand small files take a thousand blocks.
        .map(|i| entries[i].size.div_ceil(4096) * 4096)
        .sum()
}

/// Copy the content of `entries` (from `root`) into `staging/files`, filling in hashes.
pub fn copy_files(
    root: &Path,
    entries: &mut [Entry],
    staging: &Path,
    previous: Option<Previous<'_>>,
    workers: usize,
    hooks: &Hooks<'_>,
) -> Result<CopyStats> {
    let files_dir = staging.join(FILES_DIR);
    let prev_index: HashMap<&[u8], &Entry> = previous
        .as_ref()
        .map(|p| {
            p.manifest
                .entries
                .iter()
                .map(|e| (e.path_bytes(), e))
                .collect()
        })
        .unwrap_or_default();

    // Decide the work, and create the directories that will hold stored files.
    let mut jobs: Vec<(usize, Job)> = Vec::new();
    let mut made_dirs: std::collections::HashSet<PathBuf> = Default::default();
    for i in 0..entries.len() {
        let e = &entries[i];
        if e.kind != Kind::File {
            continue;
        }
        let dst = files_dir.join(stored_rel(e.path_bytes()));
        if let Some(parent) = dst.parent()
            && made_dirs.insert(parent.to_path_buf())
        {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        if content_owner(entries, i) != i {
            continue;
        }
        let job = match unchanged(&prev_index, e) {
            Some(p) if p.source == e.source => Job::Share {
                prev_hash: p.hash.clone().unwrap_or_default(),
                sparse: p.sparse,
            },
            Some(p) => Job::Copy {
                doubt: p.hash.clone(),
            },
            None => Job::Copy { doubt: None },
        };
        jobs.push((i, job));
    }

    let total = jobs.len() as u64;
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let reflink = ReflinkState::new(true);
    let results: Mutex<Vec<(usize, Result<Done>)>> = Mutex::new(Vec::with_capacity(jobs.len()));
    let prev_files = previous.as_ref().map(|p| p.files_dir.clone());
    let entries_ro: &[Entry] = entries;

    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| {
                let mut dirs = DirCache::default();
                loop {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some((i, job)) = jobs.get(k) else { return };
                    let e = &entries_ro[*i];
                    let r = (hooks.checkpoint)().and_then(|()| {
                        one_file(
                            root,
                            e,
                            job,
                            &files_dir,
                            prev_files.as_deref(),
                            &reflink,
                            &mut dirs,
                        )
                        .with_context(|| format!("backing up {}", e.display()))
                    });
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    if let Ok(d) = &r {
                        bytes.fetch_add(d.copied_bytes, Ordering::Relaxed);
                    }
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_multiple_of(256) || n == total {
                        (hooks.progress)(n, total, bytes.load(Ordering::Relaxed));
                    }
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((*i, r));
                }
            });
        }
    });

    let mut stats = CopyStats::default();
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(i, _)| *i);
    for (i, r) in results {
        let d = r?;
        let e = &mut entries[i];
        if let Some(fresh) = d.refreshed {
            *e = fresh;
        }
        e.hash = Some(d.hash);
        e.sparse = d.sparse;
        if d.shared {
            stats.shared_files += 1;
            stats.shared_bytes += e.size;
        } else {
            stats.copied_files += 1;
            stats.copied_bytes += d.copied_bytes;
        }
        if d.reflinked {
            stats.reflinked_files += 1;
        }
    }
    anyhow::ensure!(!failed.load(Ordering::Relaxed), "backup stopped");

    // Hardlink group members share their first member's stored copy.
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
        let from = files_dir.join(stored_rel(entries[owner].path_bytes()));
        let to = files_dir.join(stored_rel(entries[i].path_bytes()));
        std::fs::hard_link(&from, &to)
            .with_context(|| format!("linking {} to {}", to.display(), from.display()))?;
        let e = &mut entries[i];
        e.hash = hash;
        e.sparse = sparse;
        e.size = size;
        stats.hardlinks += 1;
    }
    stats.files = entries.iter().filter(|e| e.kind == Kind::File).count() as u64;
    Ok(stats)
}

fn libc_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

struct Done {
    hash: String,
    sparse: bool,
    shared: bool,
    reflinked: bool,
    copied_bytes: u64,
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

fn one_file(
    root: &Path,
    e: &Entry,
    job: &Job,
    files_dir: &Path,
    prev_files: Option<&Path>,
    reflink: &ReflinkState,
    dirs: &mut DirCache,
) -> Result<Done> {
    let rel = stored_rel(e.path_bytes());
    let dst_path = files_dir.join(rel);
    if let Job::Share { prev_hash, sparse } = job {
        let prev = prev_files
            .expect("sharing needs a previous generation")
            .join(rel);
        match std::fs::hard_link(&prev, &dst_path) {
            Ok(()) => {
                return Ok(Done {
                    hash: prev_hash.clone(),
                    sparse: *sparse,
                    shared: true,
                    reflinked: false,
                    copied_bytes: 0,
                    refreshed: None,
                });
            }
            // Too many links, or the previous copy is gone: copy instead.
            Err(err) => tracing::debug!("cannot share {}: {err}", prev.display()),
        }
    }
    let node_path = Path::new("/").join(rel);
    let parent = node_path.parent().unwrap_or(Path::new("/"));
    let name = node_path.file_name().context("entry has no file name")?;
    let dir = dirs.open(root, parent)?;
    let src = fsx::open_child_file(dir.as_fd(), name)?;
    let st = fsx::fstat(src.as_fd())?;
    anyhow::ensure!(
        Kind::of(&st) == Kind::File,
        "changed from a regular file while the backup ran; take the backup again"
    );
    // Replaced since the walk (an editor's atomic rename): record what we actually copy.
    let refreshed = if st.st_ino != e.source.ino || st.st_dev != e.source.dev {
        let mut fresh = Entry::from_stat(e.path_bytes(), &st);
        fresh.xattrs = fsx::xattrs_fd(src.as_fd())?;
        fresh.hardlink = e.hardlink;
        Some(fresh)
    } else {
        None
    };
    let dst: OwnedFd = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc_nofollow())
        .open(&dst_path)
        .with_context(|| format!("creating {}", dst_path.display()))?
        .into();
    let copied = copy_and_hash(src, &dst, reflink, None)?;
    drop(dst);
    if let (
        Job::Copy {
            doubt: Some(prev_hash),
        },
        Some(prev_files),
    ) = (job, prev_files)
        && *prev_hash == copied.hash
    {
        // Same content as before: keep one copy.
        let prev = prev_files.join(rel);
        static N: AtomicU64 = AtomicU64::new(0);
        let staging = files_dir.parent().unwrap_or(files_dir);
        let tmp = staging.join(format!(".share-{}", N.fetch_add(1, Ordering::Relaxed)));
        if std::fs::hard_link(&prev, &tmp).is_ok() {
            std::fs::rename(&tmp, &dst_path)?;
            return Ok(Done {
                hash: copied.hash,
                sparse: copied.sparse,
                shared: true,
                reflinked: false,
                copied_bytes: 0,
                refreshed,
            });
        }
    }
    Ok(Done {
        hash: copied.hash,
        sparse: copied.sparse,
        shared: false,
        reflinked: copied.reflinked,
        copied_bytes: copied.size,
        refreshed,
    })
}
