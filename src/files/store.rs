//! Generations on disk, and the content objects they share.
//!
//! ```text
//! <state_dir>/
//!   objects/ab/cdef...     file content, named by its BLAKE3 hash, shared by every generation
//!   objects/tmp/           content being written (removed by the next run if abandoned)
//!   objects/collected.json the generations the last complete collection saw (`collected`)
//!   generations/
//!     20261125T121846Z/    committed: generation.json, manifest, cluster/, images/
//!     .staging-2026...     being written; removed by the next run if it was abandoned
//!     .trash-...           being deleted (retention); removed by the next run
//! ```
//! Content is stored once per distinct hash: a file unchanged since the previous backup costs
//! no file-system operation at all, identical files share one object, and a hardlink group is
//! one object by construction. The manifest says which object each node path has; objects no
//! committed generation refers to are removed by retention (`gc`).
//!
//! A generation is committed by `syncfs` (which also flushes the objects, on the same file
//! system) + `rename` + `fsync` of the parent: a directory without the `.staging-` prefix is
//! complete and durable, and every object it refers to was flushed before it existed. The
//! previous generation is never touched before the new one is committed.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::fsx;
use super::manifest::{Manifest, ManifestError, TreeInfo};
use super::marks::Marks;
use super::object_id::{IdSet, ObjectId};
use super::parsed::ObjectSet;

pub(crate) const INFO_FILE: &str = "generation.json";
/// Hashes of the objects a backup wrote (kept in the generation; verified after the commit).
pub(crate) const NEW_OBJECTS: &str = "new-objects";
pub(crate) const MANIFEST_FILE: &str = "manifest";
/// Content objects, beside `generations/` in the state directory.
pub(crate) const OBJECTS_DIR: &str = "objects";
const STAGING_PREFIX: &str = ".staging-";
/// Threads listing the store's fan-out directories at once ([`Store::par_fanout`]).
const LIST_THREADS: usize = 4;
const TRASH_PREFIX: &str = ".trash-";

/// `generation.json`: what a generation is, readable without the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GenerationInfo {
    pub format: u32,
    pub id: String,
    pub created: String,
    pub manifest_hash: String,
    pub entries: u64,
    pub bytes: u64,
    pub trees: Vec<TreeInfo>,
    /// The node this generation belongs to (deployment, hostname, cluster); filled by the
    /// backup procedure.
    #[serde(default)]
    pub identity: crate::files::identity::Identity,
    /// The container images in the generation (`[backup] images`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<crate::files::containers::ImagesSummary>,
}

/// A committed generation.
#[derive(Debug, Clone)]
pub(crate) struct Generation {
    pub info: GenerationInfo,
    pub dir: PathBuf,
    /// The store's object directory.
    pub objects: PathBuf,
    /// Protected, label (`marks.json`).
    pub marks: Marks,
}

/// Where the object with this content hash lives.
fn object_path(objects: &Path, hash: &str) -> PathBuf {
    let split = hash.len().min(2);
    objects.join(&hash[..split]).join(hash)
}

/// How many characters of the manifest hash a short id has.
pub(crate) const SHORT_ID: usize = 8;
/// The shortest hash prefix taken as a short id.
const MIN_SHORT_PREFIX: usize = 4;

impl Generation {
    /// The first characters of the manifest hash: an id to tell generations apart at a glance.
    pub(crate) fn short_id(&self) -> &str {
        self.info
            .manifest_hash
            .get(..SHORT_ID)
            .unwrap_or(&self.info.manifest_hash)
    }

    pub(crate) fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }

    /// The stored content of a file with this hash.
    pub(crate) fn object(&self, hash: &str) -> PathBuf {
        object_path(&self.objects, hash)
    }

    /// Read the manifest, checking it against the hash in `generation.json` and every rule of
    /// [`super::validate`].
    pub(crate) fn manifest(&self) -> Result<std::sync::Arc<Manifest>> {
        let m = Manifest::read_shared(&self.manifest_path(), &self.info.manifest_hash)?;
        self.check_names_this(&m.header)?;
        Ok(m)
    }

    /// The manifest for a backup that shares what did not change since this generation: from
    /// the generation's manifest cache ([`super::manifest_cache`]) when it holds a copy that
    /// every rule accepts, else read as [`Self::manifest`] reads it. A backup reads its previous
    /// generation's manifest whole before its walk, and the cache spares it the parse. The
    /// manifest file is then not read: like the objects of that generation, it is checked by
    /// a verify, a restore or a collection, not by the next backup. A cache that cannot be used
    /// is said in the log and the manifest is parsed.
    pub(crate) fn manifest_for_sharing(&self) -> Result<Arc<Manifest>> {
        let hash = &self.info.manifest_hash;
        if super::parsed::get(hash).is_none() {
            let started = std::time::Instant::now();
            match self.cached_manifest() {
                Ok(Some(m)) => {
                    tracing::debug!(
                        "{}: {} entries read from its cache in {:?}",
                        self.manifest_path().display(),
                        m.entries.len(),
                        started.elapsed()
                    );
                    let m = Arc::new(m);
                    super::parsed::keep(hash, m.clone());
                    return Ok(m);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("{e:#}: not used; the manifest is parsed instead"),
            }
        }
        self.manifest()
    }

    /// The manifest from the generation's cache, checked as a parsed one is.
    fn cached_manifest(&self) -> Result<Option<Manifest>> {
        let Some(m) = super::manifest_cache::read(&self.dir, &self.info.manifest_hash)? else {
            return Ok(None);
        };
        super::validate::validate(&m).map_err(|violation| ManifestError::Invalid {
            path: self
                .dir
                .join(super::manifest_cache::MANIFEST_CACHE)
                .display()
                .to_string(),
            violation,
        })?;
        self.check_names_this(&m.header)?;
        Ok(Some(m))
    }

    /// The object ids the manifest names, read with the same checks of its bytes and header
    /// as [`Self::manifest`] and without building its entries (a collection of objects needs
    /// nothing else).
    pub(crate) fn object_set(&self) -> Result<Arc<ObjectSet>> {
        let set = Manifest::object_set(&self.manifest_path(), &self.info.manifest_hash)?;
        self.check_generation(&set.generation)?;
        Ok(set)
    }

    fn check_names_this(&self, header: &super::manifest::Header) -> Result<()> {
        self.check_generation(&header.generation)
    }

    fn check_generation(&self, named: &str) -> Result<()> {
        if named != self.info.id {
            return Err(super::manifest::ManifestError::Invalid {
                path: self.manifest_path().display().to_string(),
                violation: super::validate::Violation {
                    what: "header.generation".into(),
                    why: format!(
                        "names generation {named}, but it is the manifest of {}",
                        self.info.id
                    ),
                },
            }
            .into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Store {
    dir: PathBuf,
    objects: PathBuf,
}

/// What a garbage collection of objects did.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct GcStats {
    pub removed: u64,
    /// Bytes on disk freed.
    pub bytes: u64,
    pub kept: u64,
}

/// What the object store holds; bytes are bytes on disk (allocated blocks), so a sparse file
/// counts what it really takes of the recovery partition.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoreStats {
    pub generations: u64,
    pub objects: u64,
    pub bytes: u64,
    pub referenced_objects: u64,
    pub referenced_bytes: u64,
    pub unreferenced_objects: u64,
    pub unreferenced_bytes: u64,
    /// Half-written objects (a copy in progress, or one a crash interrupted).
    pub tmp_files: u64,
}

fn disk_bytes(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.blocks() * 512
}

impl Store {
    /// The store inside a state directory (as seen on this machine, i.e. under `root`).
    pub fn new(state_path: &Path) -> Store {
        Store {
            dir: state_path.join("generations"),
            objects: state_path.join(OBJECTS_DIR),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn objects_dir(&self) -> &Path {
        &self.objects
    }

    /// How many half-written objects there are (a copy in progress, or one a crash left).
    pub(crate) fn tmp_files(&self) -> u64 {
        std::fs::read_dir(self.objects_tmp())
            .map(|rd| rd.count() as u64)
            .unwrap_or(0)
    }

    /// Where content is written before it is renamed to its object name.
    pub(crate) fn objects_tmp(&self) -> PathBuf {
        self.objects.join("tmp")
    }

    pub(crate) fn object(&self, hash: &str) -> PathBuf {
        object_path(&self.objects, hash)
    }

    /// Move a fully written temporary file into place as the object `hash`. Returns false if
    /// the object already existed (the temporary file is then removed). The rename never
    /// replaces an object, so that two workers storing the same content count it once.
    pub(crate) fn put_object(&self, tmp: &Path, hash: &str) -> Result<bool> {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        let object = self.object(hash);
        let store = || renameat_with(CWD, tmp, CWD, &object, RenameFlags::NOREPLACE);
        let stored = match store() {
            // First object of this fan-out directory.
            Err(rustix::io::Errno::NOENT) if tmp.exists() => {
                let dir = object.parent().expect("objects have a parent");
                match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                        return Err(e).with_context(|| format!("creating {}", dir.display()));
                    }
                    _ => {}
                }
                store()
            }
            r => r,
        };
        // A file system without RENAME_NOREPLACE: check, then rename.
        let stored = match stored {
            Err(rustix::io::Errno::INVAL) if object.exists() => Err(rustix::io::Errno::EXIST),
            Err(rustix::io::Errno::INVAL) => std::fs::rename(tmp, &object)
                .map_err(|e| rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO)),
            r => r,
        };
        match stored {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::EXIST) => {
                std::fs::remove_file(tmp).with_context(|| format!("removing {}", tmp.display()))?;
                Ok(false)
            }
            Err(e) => {
                Err(io::Error::from(e)).with_context(|| format!("storing {}", object.display()))
            }
        }
    }

    pub(crate) fn ensure(&self) -> Result<()> {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        b.create(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        b.create(self.objects_tmp())
            .with_context(|| format!("creating {}", self.objects.display()))?;
        Ok(())
    }

    fn par_fanout<T: Send>(&self, work: impl Fn(&Path) -> Result<T> + Sync) -> Result<Vec<T>> {
        par_fanout(&self.objects, work)
    }

    /// The names in one fan-out directory (none when it does not exist), each with the object
    /// id it is, if it is one.
    fn fanout_names(dir: &Path) -> Result<Vec<(std::ffi::OsString, Option<ObjectId>)>> {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        let mut out = Vec::new();
        for e in rd {
            let name = e
                .with_context(|| format!("reading {}", dir.display()))?
                .file_name();
            let id = name.to_str().and_then(ObjectId::from_hex);
            out.push((name, id));
        }
        Ok(out)
    }

    /// Of `wanted`, the objects the store does not hold (usually none). One listing, kept as
    /// sorted ids only while it is compared: a set of every object would be twice the memory,
    /// and a caller that keeps the answer keeps only what is missing.
    pub(crate) fn lacking(&self, wanted: &IdSet) -> Result<IdSet> {
        // A first backup wants nothing: no listing.
        if wanted.is_empty() {
            return Ok(IdSet::default());
        }
        let lists = self.par_fanout(|d| {
            Ok(Self::fanout_names(d)?
                .into_iter()
                .filter_map(|(_, id)| id)
                .collect::<Vec<_>>())
        })?;
        let mut listed = lists.concat();
        listed.sort_unstable();
        Ok(wanted
            .iter()
            .filter(|id| listed.binary_search(id).is_err())
            .copied()
            .collect())
    }

    /// Every object id a committed generation, or a staging generation's finished copy,
    /// refers to. Strict: anything under `generations/` that is not a readable generation
    /// is an error, because its objects would otherwise look unreferenced.
    pub(crate) fn referenced_objects(&self) -> Result<IdSet> {
        self.referenced_by(&self.list_strict()?)
    }

    /// What [`Self::referenced_objects`] says, for generations already listed (strictly):
    /// their manifests read on two threads, each only when no read of this run kept its ids.
    fn referenced_by(&self, generations: &[Generation]) -> Result<IdSet> {
        let next = AtomicUsize::new(0);
        let sets: Mutex<Vec<Result<Arc<ObjectSet>>>> = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..2.min(generations.len()) {
                s.spawn(|| {
                    while let Some(g) = generations.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let set = g.object_set().with_context(|| {
                            format!(
                                "reading the manifest of generation {} to keep its objects",
                                g.info.id
                            )
                        });
                        sets.lock().unwrap_or_else(|p| p.into_inner()).push(set);
                    }
                });
            }
        });
        let mut out = IdSet::default();
        for set in sets.into_inner().unwrap_or_else(|p| p.into_inner()) {
            out.extend(set?.ids.iter().copied());
        }
        // A backup in progress (this process holds the run lock): what its copy recorded.
        for staging in self.staging_dirs()? {
            if let Ok(t) = std::fs::read_to_string(staging.join(NEW_OBJECTS)) {
                out.extend(t.lines().filter_map(ObjectId::from_hex));
            }
        }
        Ok(out)
    }

    /// Objects no generation refers to, and the bytes on disk they take (what `gc` would
    /// remove); an error while anything under `generations/` is unreadable.
    pub(crate) fn orphans(&self) -> Result<(Vec<String>, u64)> {
        let referenced = self.referenced_objects()?;
        let found = self.par_fanout(|d| {
            let mut found = Vec::new();
            for (name, id) in Self::fanout_names(d)? {
                if id.is_some_and(|id| referenced.contains(&id)) {
                    continue;
                }
                let len = std::fs::symlink_metadata(d.join(&name))
                    .map(|m| disk_bytes(&m))
                    .unwrap_or(0);
                found.push((name.to_string_lossy().into_owned(), len));
            }
            Ok(found)
        })?;
        let (mut names, mut bytes) = (Vec::new(), 0);
        for (name, len) in found.into_iter().flatten() {
            bytes += len;
            names.push(name);
        }
        names.sort();
        Ok((names, bytes))
    }

    /// The entries under `generations/` that are not readable generations, with the reason.
    pub(crate) fn unreadable(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = self
            .generation_dirs()?
            .into_iter()
            .filter_map(|(path, name)| {
                self.open(&name)
                    .err()
                    .map(|err| format!("{}: {err:#}", path.display()))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Everything under `generations/` (none when it does not exist yet).
    fn entries(&self) -> Result<Vec<std::fs::DirEntry>> {
        match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd
                .collect::<io::Result<Vec<_>>>()
                .with_context(|| format!("reading {}", self.dir.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.dir.display())),
        }
    }

    /// What under `generations/` could be a committed generation: its directories that are
    /// not staging or trash (their path and name).
    fn generation_dirs(&self) -> Result<Vec<(PathBuf, String)>> {
        let mut out = Vec::new();
        for e in self.entries()? {
            let name = e.file_name();
            if name.as_encoded_bytes().starts_with(b".") || !e.file_type()?.is_dir() {
                continue;
            }
            out.push((e.path(), name.to_string_lossy().into_owned()));
        }
        Ok(out)
    }

    /// Remove objects no generation refers to (left by pruned generations, failed or cancelled
    /// backups, a crash). Must run under the run lock, so that no backup is copying at the same
    /// time. Crash-safe: what is referenced is read before anything is removed, and only
    /// unreferenced objects are removed; a kill part-way leaves fewer orphans, never a missing
    /// object. `checkpoint` is called before each removal (cancellation, failpoints).
    /// With no backup in progress, a collection that completes is recorded
    /// ([`super::collected`]) for [`Self::gc_unless_collected`].
    pub(crate) fn gc(&self, checkpoint: &(dyn Fn() -> Result<()> + Sync)) -> Result<GcStats> {
        let generations = self.list_strict()?;
        let in_progress = !self.staging_dirs()?.is_empty();
        let started = std::time::Instant::now();
        let referenced = self.referenced_by(&generations)?;
        tracing::debug!(
            "collection: what {} generations name read in {:?}",
            generations.len(),
            started.elapsed()
        );
        let parts = self.par_fanout(|d| {
            let mut stats = GcStats::default();
            for (name, id) in Self::fanout_names(d)? {
                if id.is_some_and(|id| referenced.contains(&id)) {
                    stats.kept += 1;
                    continue;
                }
                checkpoint()?;
                let path = d.join(&name);
                let len = std::fs::symlink_metadata(&path)
                    .map(|m| disk_bytes(&m))
                    .unwrap_or(0);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                    Err(err) => {
                        return Err(err)
                            .with_context(|| format!("removing object {}", path.display()));
                    }
                }
                stats.removed += 1;
                stats.bytes += len;
            }
            Ok(stats)
        })?;
        let mut stats = GcStats::default();
        for p in parts {
            stats.removed += p.removed;
            stats.bytes += p.bytes;
            stats.kept += p.kept;
        }
        // A staging directory's objects are kept but not named by any generation: if it is
        // abandoned they become orphans, so a collection that saw one is not recorded.
        // The record is a hint: a store it cannot be written to is collected every time.
        if !in_progress
            && self.objects.is_dir()
            && let Err(e) = super::collected::record(&self.objects, &generations)
        {
            tracing::warn!("{e:#}");
        }
        Ok(stats)
    }

    /// [`Self::gc`], unless the last complete collection saw exactly the generations there are
    /// now and no backup has written objects since (`None`: nothing to collect).
    pub(crate) fn gc_unless_collected(
        &self,
        checkpoint: &(dyn Fn() -> Result<()> + Sync),
    ) -> Result<Option<GcStats>> {
        if self.staging_dirs()?.is_empty()
            && super::collected::stands_for(&self.objects, &self.list_strict()?)
        {
            return Ok(None);
        }
        self.gc(checkpoint).map(Some)
    }

    /// The committed generations now, as a collection record names them.
    pub(crate) fn seen(&self) -> Result<super::collected::Seen> {
        Ok(super::collected::Seen::of(&self.list_strict()?))
    }

    /// Record a complete collection without making one, for a backup that knows the store
    /// held nothing its generations did not name when they were `before`, and that every
    /// object written since is named by the generation `added` it has just committed.
    /// Recorded (and `true`) only when the generations are exactly `before` and then `added`
    /// and no backup is being written; otherwise nothing is recorded and the caller collects.
    pub(crate) fn collected_since(
        &self,
        before: &super::collected::Seen,
        added: &str,
    ) -> Result<bool> {
        let now = self.list_strict()?;
        if !self.staging_dirs()?.is_empty() || !before.then_only(&now, added) {
            return Ok(false);
        }
        // A record that cannot be written costs one collection at the next backup.
        if let Err(e) = super::collected::record(&self.objects, &now) {
            tracing::warn!("{e:#}");
        }
        Ok(true)
    }

    /// How much the store holds, and how much of it no generation refers to.
    pub(crate) fn stats(&self) -> Result<StoreStats> {
        let referenced = self.referenced_objects()?;
        let parts = self.par_fanout(|d| {
            let mut s = StoreStats::default();
            for (name, id) in Self::fanout_names(d)? {
                let len = std::fs::symlink_metadata(d.join(&name))
                    .map(|m| disk_bytes(&m))
                    .unwrap_or(0);
                s.objects += 1;
                s.bytes += len;
                if id.is_some_and(|id| referenced.contains(&id)) {
                    s.referenced_objects += 1;
                    s.referenced_bytes += len;
                } else {
                    s.unreferenced_objects += 1;
                    s.unreferenced_bytes += len;
                }
            }
            Ok(s)
        })?;
        let mut s = StoreStats::default();
        for p in parts {
            s.objects += p.objects;
            s.bytes += p.bytes;
            s.referenced_objects += p.referenced_objects;
            s.referenced_bytes += p.referenced_bytes;
            s.unreferenced_objects += p.unreferenced_objects;
            s.unreferenced_bytes += p.unreferenced_bytes;
        }
        s.tmp_files = self.tmp_files();
        s.generations = self.list()?.len() as u64;
        Ok(s)
    }

    /// A new generation id: the UTC time to the second (`20261125T121846Z`), made later than
    /// every id on disk and in `known` (the journal's, pruned ones included) with a `-N`
    /// suffix when needed. Ids therefore sort in the order the generations were taken (see
    /// [`id_order`]) even within one second or when the clock steps back, and are never reused.
    pub(crate) fn new_id(&self, known: &[String]) -> String {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let candidate: String = now.chars().filter(|c| *c != '-' && *c != ':').collect();
        let mut on_disk: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .map(|n| {
                        n.strip_prefix(STAGING_PREFIX)
                            .or_else(|| n.strip_prefix(TRASH_PREFIX))
                            .unwrap_or(&n)
                            .to_string()
                    })
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        on_disk.extend(known.iter().cloned());
        match on_disk.iter().max_by(|a, b| id_order(a).cmp(&id_order(b))) {
            Some(latest) if id_order(&candidate) <= id_order(latest) => {
                let (base, n) = id_order(latest);
                format!("{base}-{}", n + 1)
            }
            _ => candidate,
        }
    }

    pub(crate) fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    pub(crate) fn staging_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{STAGING_PREFIX}{id}"))
    }

    /// Create an empty staging directory for `id`.
    pub(crate) fn create_staging(&self, id: &str) -> Result<PathBuf> {
        self.ensure()?;
        // Objects are about to be written that no generation names yet.
        super::collected::forget(&self.objects)?;
        let p = self.staging_path(id);
        if p.exists() {
            remove_dir_all(&p)?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&p)
            .with_context(|| format!("creating {}", p.display()))?;
        Ok(p)
    }

    /// Remove abandoned staging and trash directories and half-written objects (an
    /// interrupted backup or prune).
    pub(crate) fn clean_abandoned(&self) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.objects_tmp()) {
            let mut n = 0;
            for e in rd {
                let p = e?.path();
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
                n += 1;
            }
            if n > 0 {
                removed.push(format!("{n} half-written objects"));
            }
        }
        for e in self.entries()? {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(STAGING_PREFIX) || name.starts_with(TRASH_PREFIX) {
                remove_dir_all(&e.path())?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// Make a staging directory the committed generation `id`: flush the whole file system
    /// once, rename, and flush the parent directory.
    pub(crate) fn commit(&self, id: &str, info: &GenerationInfo) -> Result<Generation> {
        let staging = self.staging_path(id);
        // Flushed with everything else by the syncfs below.
        write_json(&staging.join(INFO_FILE), info)?;
        let staging_fd = rustix::fs::open(
            &staging,
            rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        fsx::syncfs(staging_fd.as_fd()).context("flushing the generation to disk")?;
        fsx::fsync(staging_fd.as_fd())?;
        let final_path = self.path(id);
        std::fs::rename(&staging, &final_path).with_context(|| {
            format!(
                "committing {} as {}",
                staging.display(),
                final_path.display()
            )
        })?;
        sync_dir(&self.dir)?;
        Ok(Generation {
            info: info.clone(),
            dir: final_path,
            objects: self.objects.clone(),
            marks: Marks::default(),
        })
    }

    /// The staging directories present (a backup being written, or one abandoned).
    pub(super) fn staging_dirs(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for e in self.entries()? {
            if e.file_name()
                .as_encoded_bytes()
                .starts_with(STAGING_PREFIX.as_bytes())
            {
                out.push(e.path());
            }
        }
        Ok(out)
    }

    /// Committed generations, oldest first; an entry that is not a readable generation is an
    /// error (for collecting objects, where skipping one would lose its content).
    pub(crate) fn list_strict(&self) -> Result<Vec<Generation>> {
        self.list_with(true)
    }

    /// Committed generations on disk, oldest first (unreadable ones are logged and skipped).
    pub(crate) fn list(&self) -> Result<Vec<Generation>> {
        self.list_with(false)
    }

    fn list_with(&self, strict: bool) -> Result<Vec<Generation>> {
        let mut out = Vec::new();
        for (path, name) in self.generation_dirs()? {
            match self.open(&name) {
                Ok(g) => out.push(g),
                Err(err) if strict => {
                    return Err(err.context(format!(
                        "{} is not a readable generation; objects are not collected while it is \
                         there (move it out of the state directory if it is damaged beyond use)",
                        path.display()
                    )));
                }
                Err(err) => tracing::warn!("ignoring {}: {err:#}", path.display()),
            }
        }
        out.sort_by(|a, b| id_order(&a.info.id).cmp(&id_order(&b.info.id)));
        Ok(out)
    }

    pub fn open(&self, id: &str) -> Result<Generation> {
        anyhow::ensure!(
            !id.is_empty() && !id.contains('/') && !id.starts_with('.'),
            "`{id}` is not a generation id"
        );
        let dir = self.path(id);
        let info_path = dir.join(INFO_FILE);
        let text = std::fs::read_to_string(&info_path).with_context(|| {
            if dir.exists() {
                format!("generation {id} has no readable {INFO_FILE}")
            } else {
                format!("no generation {id} in {}", self.dir.display())
            }
        })?;
        let info: GenerationInfo = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", info_path.display()))?;
        anyhow::ensure!(
            info.id == id,
            "{} names generation {}",
            info_path.display(),
            info.id
        );
        Ok(Generation {
            marks: Marks::read(&dir),
            info,
            dir,
            objects: self.objects.clone(),
        })
    }

    /// The generation an operator means: `latest`, a full id, or a prefix of one generation's
    /// id or of its short id (the first characters of its manifest hash, as `generations`
    /// shows it). A prefix that fits two generations is refused, naming both.
    pub(crate) fn resolve(&self, spec: &str) -> Result<Generation> {
        let spec = spec.trim();
        anyhow::ensure!(!spec.is_empty(), "an empty generation id");
        let all = self.list()?;
        if spec == "latest" {
            return all
                .into_iter()
                .next_back()
                .context("there is no committed generation; take a backup first");
        }
        if let Some(g) = all.iter().find(|g| g.info.id == spec) {
            return Ok(g.clone());
        }
        let by_id: Vec<&Generation> = all.iter().filter(|g| g.info.id.starts_with(spec)).collect();
        let by_hash: Vec<&Generation> = if spec.len() >= MIN_SHORT_PREFIX {
            all.iter()
                .filter(|g| g.info.manifest_hash.starts_with(spec))
                .collect()
        } else {
            Vec::new()
        };
        let mut found: Vec<&Generation> = by_id;
        for g in by_hash {
            if !found.iter().any(|f| f.info.id == g.info.id) {
                found.push(g);
            }
        }
        match found.as_slice() {
            [g] => Ok((*g).clone()),
            [] => {
                // The exact error of `open`: no such directory, or one that is not readable.
                self.open(spec)?;
                anyhow::bail!("no generation {spec} in {}", self.dir.display())
            }
            many => anyhow::bail!(
                "`{spec}` fits {} generations ({}); give more of the id",
                many.len(),
                many.iter()
                    .map(|g| format!("{} ({})", g.info.id, g.short_id()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Replace the marks of a committed generation.
    pub(crate) fn set_marks(&self, id: &str, marks: &Marks) -> Result<()> {
        let g = self.open(id)?;
        marks.write(&g.dir)
    }

    /// The newest committed generation.
    pub(crate) fn latest(&self) -> Result<Option<Generation>> {
        Ok(self.list()?.pop())
    }

    /// Delete a generation: rename it away first (atomic), then remove the files.
    pub(crate) fn remove(&self, id: &str) -> Result<()> {
        let from = self.path(id);
        let to = self.dir.join(format!("{TRASH_PREFIX}{id}"));
        std::fs::rename(&from, &to).with_context(|| format!("removing generation {id}"))?;
        sync_dir(&self.dir)?;
        remove_dir_all(&to)
    }
}

/// Run `work` on every fan-out directory of `objects` (`00` .. `ff`), from [`LIST_THREADS`]
/// threads, and return what it gave in directory order. Reading a directory that is not
/// cached is a disk read: a few in flight at once make a cold listing of the store several
/// times faster.
fn par_fanout<T: Send>(objects: &Path, work: impl Fn(&Path) -> Result<T> + Sync) -> Result<Vec<T>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Result<T>)>> = Mutex::new(Vec::with_capacity(256));
    std::thread::scope(|s| {
        for _ in 0..LIST_THREADS {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i > 255 {
                        return;
                    }
                    let r = work(&objects.join(format!("{i:02x}")));
                    let failed = r.is_err();
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((i, r));
                    if failed {
                        next.store(256, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// The ids of every object in the store's object directory `objects`.
pub(crate) fn present_objects_in(objects: &Path) -> Result<IdSet> {
    let lists = par_fanout(objects, Store::fanout_names)?;
    Ok(lists
        .into_iter()
        .flatten()
        .filter_map(|(_, id)| id)
        .collect())
}

/// The order of generation ids: by their time, then by their `-N` suffix (`…Z` is 1), so that
/// `…Z-10` comes after `…Z-9`.
pub(crate) fn id_order(id: &str) -> (&str, u64) {
    match id.rsplit_once('-') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (base, n.parse().unwrap_or(u64::MAX))
        }
        _ => (id, 1),
    }
}

fn remove_dir_all(p: &Path) -> Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

pub(crate) fn sync_dir(p: &Path) -> Result<()> {
    let fd = rustix::fs::open(
        p,
        rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .with_context(|| format!("opening {}", p.display()))?;
    fsx::fsync(fd.as_fd()).with_context(|| format!("flushing {}", p.display()))
}

/// Write a JSON file (not flushed: the caller flushes the file system).
fn write_json<T: Serialize>(p: &Path, v: &T) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(p)
        .with_context(|| format!("writing {}", p.display()))?;
    serde_json::to_writer_pretty(&mut f, v)?;
    f.write_all(b"\n")
        .with_context(|| format!("writing {}", p.display()))
}

/// A node path (manifest form, no leading `/`) as a relative path.
pub(crate) fn stored_rel(entry_path: &[u8]) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(OsStr::from_bytes(entry_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is wanted and not stored is lacking, and nothing else; a name beside the objects
    /// that is not an object stands for none.
    #[test]
    fn lacking_is_what_is_wanted_and_not_stored() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::new(t.path());
        s.ensure().unwrap();
        let id = |x: u8| ObjectId(*blake3::hash(&[x]).as_bytes());
        let stored: Vec<ObjectId> = (0..40).map(id).collect();
        for o in &stored {
            let tmp = s.objects_tmp().join("t");
            std::fs::write(&tmp, b"x").unwrap();
            assert!(s.put_object(&tmp, &o.to_string()).unwrap());
        }
        let dir = s.object(&stored[0].to_string());
        std::fs::write(dir.parent().unwrap().join("not-an-object"), b"").unwrap();
        let absent: IdSet = (100..110).map(id).collect();
        let wanted: IdSet = stored[..20].iter().chain(&absent).copied().collect();
        assert_eq!(s.lacking(&wanted).unwrap(), absent);
        assert!(s.lacking(&IdSet::default()).unwrap().is_empty());

        let empty = tempfile::tempdir().unwrap();
        assert_eq!(Store::new(empty.path()).lacking(&wanted).unwrap(), wanted);
    }
}
