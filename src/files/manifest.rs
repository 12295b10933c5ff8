//! The manifest of a generation: a header line, then one JSON line per entry and per artifact.
//!
//! It lives in the generation (`manifest`), so a generation can be verified and restored with
//! nothing but its own directory, even if the journal is lost. Its BLAKE3 hash is kept in
//! `generation.json` and in the journal; a manifest that does not match is refused before any
//! file is read from the generation.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::bytetext::ByteText;
use super::entry::{Entry, Time};
use super::object_id::ObjectId;
use super::parsed::ObjectSet;

pub(crate) const FORMAT: &str = "recoveryd-manifest";
pub(crate) const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TreeInfo {
    /// The tree as configured (`/etc`).
    pub path: String,
    /// False when the tree did not exist on the node at backup time.
    pub present: bool,
    /// Where the tree resolved to inside the node (`/var/usrlocal` for an RHCOS `/usr/local`).
    /// A restore refuses a tree that now resolves elsewhere (`/etc -> /`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Header {
    pub format: String,
    pub version: u32,
    pub generation: String,
    pub trees: Vec<TreeInfo>,
    /// Machine-config files outside the trees that were backed up.
    pub extras: Vec<ByteText>,
    /// Machine-config paths that did not exist at backup time (left alone by a restore).
    #[serde(default)]
    pub extras_absent: Vec<ByteText>,
    /// Exclusion patterns in force (absolute node paths or globs): neither backed up nor
    /// touched by a restore.
    pub exclude: Vec<String>,
    /// Mount points found inside the trees; their content belongs to another file system and
    /// was not backed up.
    pub skipped_mounts: Vec<ByteText>,
    /// The container images in use at backup time, when `[backup] images` is on: which of
    /// the trees and extras above are theirs, and the store's metadata for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<super::containers::ImagesSection>,
    /// When the walk that recorded the entries began: an entry changed shortly before it (or
    /// during it) is not recognized later by its inode alone ([`Entry::untouched`]). Absent
    /// from manifests written before it was recorded, which trust the identity alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub walked: Option<Time>,
}

/// A file produced by a program into the generation (`cluster/snapshot_*.db`, `images/*.tar`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Artifact {
    pub artifact: String,
    pub size: u64,
    pub hash: String,
}

/// One line after the header.
#[allow(clippy::large_enum_variant)] // moved straight into the manifest: a box would cost an allocation per entry
enum Line {
    Artifact(Artifact),
    Entry(Entry),
}

impl Line {
    /// An entry, or else an artifact; the entry's error when it is neither. Not an untagged
    /// enum for reading: serde would buffer every line in an intermediate tree first, and
    /// entries are nearly every line.
    fn parse(line: &str) -> Result<Line, serde_json::Error> {
        match serde_json::from_str::<Entry>(line) {
            Ok(e) => Ok(Line::Entry(e)),
            Err(entry_error) => serde_json::from_str::<Artifact>(line)
                .map(Line::Artifact)
                .map_err(|_| entry_error),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub header: Header,
    pub entries: Vec<Entry>,
    pub artifacts: Vec<Artifact>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ManifestError {
    #[error("manifest {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(
        "manifest {path} does not match its recorded hash (recorded {expected}, found {found}): the manifest was changed or damaged"
    )]
    HashMismatch {
        path: String,
        expected: String,
        found: String,
    },
    #[error("manifest {path}, line {line}: {message}")]
    Parse {
        path: String,
        line: usize,
        message: String,
    },
    /// The manifest parses but breaks a rule (a `..` path, a child before its parent, ...).
    #[error("manifest {path} is corrupt and was not used: {violation}")]
    Invalid {
        path: String,
        violation: super::validate::Violation,
    },
}

/// A writer that hashes what passes through it.
pub(super) struct Hashing<W> {
    pub inner: W,
    pub hasher: blake3::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Manifest {
    pub fn new(header: Header) -> Manifest {
        Manifest {
            header,
            entries: Vec::new(),
            artifacts: Vec::new(),
        }
    }

    /// Write the manifest to `path` (created; not flushed: a backup's commit flushes the
    /// whole file system once, and a backup is never continued after a crash); returns its
    /// BLAKE3 hash (hex).
    pub(crate) fn write_file(&self, path: &Path) -> io::Result<String> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        // Hashed as the buffer drains (in large writes), not per token serde writes.
        let mut w = io::BufWriter::with_capacity(
            1 << 20,
            Hashing {
                inner: file,
                hasher: blake3::Hasher::new(),
            },
        );
        serde_json::to_writer(&mut w, &self.header)?;
        w.write_all(b"\n")?;
        for e in &self.entries {
            serde_json::to_writer(&mut w, e)?;
            w.write_all(b"\n")?;
        }
        for a in &self.artifacts {
            serde_json::to_writer(&mut w, a)?;
            w.write_all(b"\n")?;
        }
        let w = w.into_inner().map_err(|e| e.into_error())?;
        Ok(w.hasher.finalize().to_hex().to_string())
    }

    /// Read a manifest, refusing it if `expected_hash` is given and does not match.
    pub(crate) fn read_file(
        path: &Path,
        expected_hash: Option<&str>,
    ) -> Result<Manifest, ManifestError> {
        let p = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| ManifestError::Io {
            path: p.clone(),
            source,
        })?;
        // All of it will be read: ask for it at once, not a window at a time (a cold
        // manifest of 50k entries is 20 MB from disk). Only a hint.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::WillNeed);
        let started = std::time::Instant::now();
        let m = Manifest::read_from(file, &p, expected_hash)?;
        tracing::debug!(
            "{p}: {} entries read in {:?}",
            m.entries.len(),
            started.elapsed()
        );
        Ok(m)
    }

    /// [`Self::read_file`] against `expected_hash`, the parse shared with the last read or
    /// write of the same bytes ([`super::parsed`]): the file is read and hashed every time.
    pub(crate) fn read_shared(
        path: &Path,
        expected_hash: &str,
    ) -> Result<Arc<Manifest>, ManifestError> {
        if let Some(m) = super::parsed::get(expected_hash) {
            check_hash(path, expected_hash)?;
            return Ok(m);
        }
        let m = Arc::new(Manifest::read_file(path, Some(expected_hash))?);
        super::parsed::keep(expected_hash, m.clone());
        Ok(m)
    }

    /// Write the manifest to `path` as [`Self::write_file`] does, checked by
    /// [`super::validate`] first; returns its hash.
    pub(crate) fn write_checked(&self, path: &Path) -> Result<String, ManifestError> {
        let name = path.display().to_string();
        super::validate::validate(self).map_err(|violation| ManifestError::Invalid {
            path: name.clone(),
            violation,
        })?;
        self.write_file(path)
            .map_err(|source| ManifestError::Io { path: name, source })
    }

    /// Parse and check a manifest's bytes (`name` for messages), refusing them if
    /// `expected_hash` is given and does not match.
    pub(crate) fn read_bytes(
        bytes: &[u8],
        name: &str,
        expected_hash: Option<&str>,
    ) -> Result<Manifest, ManifestError> {
        Manifest::read_from(bytes, name, expected_hash)
    }

    /// Read, parse (on [`PARSE_THREADS`] threads) and check a manifest from `src`.
    fn read_from(
        src: impl io::Read,
        name: &str,
        expected_hash: Option<&str>,
    ) -> Result<Manifest, ManifestError> {
        let read = super::manifest_read::read(src, name, expected_hash, PARSE_THREADS, |t, n| {
            let (mut entries, mut artifacts) = (Vec::new(), Vec::new());
            for (n, line) in super::manifest_read::lines(t, n) {
                match Line::parse(line).map_err(|e| parse_error(name, n, e.to_string()))? {
                    Line::Entry(e) => entries.push(e),
                    Line::Artifact(a) => artifacts.push(a),
                }
            }
            Ok((entries, artifacts))
        })?;
        let mut m = Manifest::new(read.header);
        m.entries
            .reserve_exact(read.blocks.iter().map(|(e, _)| e.len()).sum());
        for (entries, artifacts) in read.blocks {
            m.entries.extend(entries);
            m.artifacts.extend(artifacts);
        }
        super::validate::validate(&m).map_err(|violation| ManifestError::Invalid {
            path: name.to_string(),
            violation,
        })?;
        Ok(m)
    }

    /// The object ids a manifest file names, for a collection of objects: the same checks of
    /// its bytes (the recorded hash, UTF-8, the header, every line a JSON object) without
    /// building its entries, which is most of the cost of reading one, or none at all when a
    /// read or write of the same bytes kept them ([`super::parsed`]). Every line's `hash` is
    /// taken (artifacts' too: keeping more is safe), and one that is not a content hash
    /// refuses the manifest, as [`super::validate`] would.
    pub(crate) fn object_set(
        path: &Path,
        expected_hash: &str,
    ) -> Result<Arc<ObjectSet>, ManifestError> {
        if let Some(set) = super::parsed::object_set(expected_hash) {
            check_hash(path, expected_hash)?;
            return Ok(set);
        }
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|source| ManifestError::Io {
            path: name.clone(),
            source,
        })?;
        /// A line with nothing but its hash (serde skips the other fields).
        #[derive(Deserialize)]
        struct HashOnly<'a> {
            #[serde(borrow, default)]
            hash: Option<&'a str>,
        }
        let read = super::manifest_read::read(file, &name, Some(expected_hash), 1, |t, n| {
            let mut ids = Vec::new();
            for (n, line) in super::manifest_read::lines(t, n) {
                let l: HashOnly<'_> =
                    serde_json::from_str(line).map_err(|e| parse_error(&name, n, e.to_string()))?;
                if let Some(h) = l.hash {
                    let Some(id) = ObjectId::from_hex(h) else {
                        return Err(parse_error(
                            &name,
                            n,
                            format!("{h:?} is not a content hash"),
                        ));
                    };
                    ids.push(id);
                }
            }
            Ok(ids)
        })?;
        let mut ids: Vec<ObjectId> = read.blocks.into_iter().flatten().collect();
        ids.sort_unstable();
        ids.dedup();
        let set = Arc::new(ObjectSet {
            generation: read.header.generation,
            ids,
        });
        super::parsed::keep_set(expected_hash, set.clone());
        Ok(set)
    }

    /// Total bytes of regular-file content and artifacts.
    pub(crate) fn content_bytes(&self) -> u64 {
        super::entry::content_bytes(&self.entries)
            + self.artifacts.iter().map(|a| a.size).sum::<u64>()
    }
}

/// Threads parsing one manifest (the reading and hashing thread apart).
const PARSE_THREADS: usize = 2;

/// The BLAKE3 hash (hex) of a file, read in blocks (not held whole). On one core: ~3 GB/s,
/// and rayon's workers would spin for milliseconds afterwards on the cores the rest of the
/// step needs.
fn file_hash(path: &Path) -> Result<String, ManifestError> {
    let io = |source| ManifestError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut h = blake3::Hasher::new();
    h.update_reader(file).map_err(io)?;
    Ok(h.finalize().to_hex().to_string())
}

/// Refuse the file unless its hash is `expected`.
fn check_hash(path: &Path, expected: &str) -> Result<(), ManifestError> {
    let found = file_hash(path)?;
    if found != expected {
        return Err(ManifestError::HashMismatch {
            path: path.display().to_string(),
            expected: expected.to_string(),
            found,
        });
    }
    Ok(())
}

fn parse_error(name: &str, line: usize, message: String) -> ManifestError {
    ManifestError::Parse {
        path: name.to_string(),
        line,
        message,
    }
}
