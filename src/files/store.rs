//! Generations on disk: `<state_dir>/generations/<id>/`, built in `.staging-<id>/`.
//!
//! ```text
//! generations/
//!   20261125T121846Z/      committed: generation.json, manifest, files/, cluster/, images/
//!   .staging-20261126T...  being written; removed by the next run if it was abandoned
//!   .trash-...             being deleted (retention); removed by the next run
//! ```
//! A generation is committed by `syncfs` + `rename` + `fsync` of the parent: a directory without
//! the `.staging-` prefix is complete and durable. The previous generation is never touched
//! before the new one is committed.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::fsx;
use super::manifest::{Manifest, TreeInfo};

pub const INFO_FILE: &str = "generation.json";
pub const MANIFEST_FILE: &str = "manifest";
/// Node files are stored beneath this directory at their node path (`files/etc/hosts`).
pub const FILES_DIR: &str = "files";
const STAGING_PREFIX: &str = ".staging-";
const TRASH_PREFIX: &str = ".trash-";

/// `generation.json`: what a generation is, readable without the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationInfo {
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
    pub identity: serde_json::Value,
}

/// A committed generation.
#[derive(Debug, Clone)]
pub struct Generation {
    pub info: GenerationInfo,
    pub dir: PathBuf,
}

impl Generation {
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }

    pub fn files_dir(&self) -> PathBuf {
        self.dir.join(FILES_DIR)
    }

    /// Read the manifest, checking it against the hash in `generation.json`.
    pub fn manifest(&self) -> Result<Manifest> {
        Ok(Manifest::read_file(
            &self.manifest_path(),
            Some(&self.info.manifest_hash),
        )?)
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store inside a state directory (as seen on this machine, i.e. under `root`).
    pub fn new(state_path: &Path) -> Store {
        Store {
            dir: state_path.join("generations"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ensure(&self) -> Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))
    }

    /// A new generation id: the UTC time, unique within the store.
    pub fn new_id(&self) -> String {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let base: String = now.chars().filter(|c| *c != '-' && *c != ':').collect();
        let mut id = base.clone();
        let mut n = 1;
        while self.path(&id).exists() || self.staging_path(&id).exists() {
            n += 1;
            id = format!("{base}-{n}");
        }
        id
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    pub fn staging_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{STAGING_PREFIX}{id}"))
    }

    /// Create an empty staging directory for `id`.
    pub fn create_staging(&self, id: &str) -> Result<PathBuf> {
        self.ensure()?;
        let p = self.staging_path(id);
        if p.exists() {
            remove_dir_all(&p)?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&p)
            .with_context(|| format!("creating {}", p.display()))?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(p.join(FILES_DIR))?;
        Ok(p)
    }

    /// Remove abandoned staging and trash directories (an interrupted backup or prune).
    pub fn clean_abandoned(&self) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.dir.display())),
        };
        for e in rd {
            let e = e?;
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
    pub fn commit(&self, id: &str, info: &GenerationInfo) -> Result<Generation> {
        let staging = self.staging_path(id);
        write_json_synced(&staging.join(INFO_FILE), info)?;
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
        })
    }

    /// Committed generations on disk, oldest first.
    pub fn list(&self) -> Result<Vec<Generation>> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.dir.display())),
        };
        for e in rd {
            let e = e?;
            let name = e.file_name();
            if name.as_encoded_bytes().starts_with(b".") || !e.file_type()?.is_dir() {
                continue;
            }
            match self.open(&name.to_string_lossy()) {
                Ok(g) => out.push(g),
                Err(err) => tracing::warn!("ignoring {}: {err:#}", e.path().display()),
            }
        }
        out.sort_by(|a, b| a.info.id.cmp(&b.info.id));
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
        Ok(Generation { info, dir })
    }

    /// The newest committed generation.
    pub fn latest(&self) -> Result<Option<Generation>> {
        Ok(self.list()?.pop())
    }

    /// Delete a generation: rename it away first (atomic), then remove the files.
    pub fn remove(&self, id: &str) -> Result<()> {
        let from = self.path(id);
        let to = self.dir.join(format!("{TRASH_PREFIX}{id}"));
        std::fs::rename(&from, &to).with_context(|| format!("removing generation {id}"))?;
        sync_dir(&self.dir)?;
        remove_dir_all(&to)
    }
}

fn remove_dir_all(p: &Path) -> Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", p.display())),
    }
}

pub fn sync_dir(p: &Path) -> Result<()> {
    let fd = rustix::fs::open(
        p,
        rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .with_context(|| format!("opening {}", p.display()))?;
    fsx::fsync(fd.as_fd()).with_context(|| format!("flushing {}", p.display()))
}

fn write_json_synced<T: Serialize>(p: &Path, v: &T) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(p)
        .with_context(|| format!("writing {}", p.display()))?;
    serde_json::to_writer_pretty(&mut f, v)?;
    f.write_all(b"\n")?;
    f.sync_all()
        .with_context(|| format!("flushing {}", p.display()))
}

/// The node path of a stored file inside a generation's `files/` directory.
pub fn stored_rel(entry_path: &[u8]) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(OsStr::from_bytes(entry_path))
}
