//! The live inodes a restore's comparison found equal to a generation, kept beside it
//! (`live-index`), so that the next restore trusts them as it trusts the inodes the manifest
//! recorded instead of reading and hashing them again.
//!
//! A restore replaces a changed file by a new inode; a package update or an editor does the
//! same with equal content. Such a file no longer has the identity the manifest recorded, so
//! every later restore would read and hash it, and compare its xattrs, to find it equal again.
//! The comparison that does so once records the identity it found (device, inode, ctime),
//! like git's index: any later change of the inode's content or metadata moves its ctime.
//!
//! The same rules as the manifest's identities hold: an identity whose ctime is within
//! [`RACY_NANOS`](crate::files::entry::RACY_NANOS) of the comparison's start is not recorded,
//! and only regular files outside hardlink groups and symlinks are (a directory's names are
//! always read when its inode is not the recorded one). The file is a cache, written without
//! a flush: its content is checked against the BLAKE3 hash it ends with, and one that is
//! missing, damaged, written for another manifest or another target directory, or in a format
//! this recoveryd does not know is ignored, which costs only the reading it would have saved.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::files::bytetext::ByteText;
use crate::files::entry::{Entry, Kind, Time};
use crate::files::path_map::PathMap;
use crate::files::store::Generation;

/// The file, in the generation's directory.
pub(crate) const LIVE_INDEX: &str = "live-index";
/// Where it is written before it replaces the last one (a crash can leave it).
pub(crate) const LIVE_INDEX_TMP: &str = ".live-index.tmp";
const FORMAT: u32 = 1;
/// Far more than any node's trees need (a few dozen bytes an entry): a larger file is not read.
const MAX_BYTES: u64 = 64 << 20;

/// One live inode found equal to the generation's entry at `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Known {
    path: ByteText,
    dev: u64,
    ino: u64,
    ctime: Time,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    format: u32,
    /// The manifest the identities were compared with.
    manifest_hash: String,
    /// The directory restored into (device, inode).
    root: (u64, u64),
    /// When the comparison that found them began.
    walked: Time,
    /// Sorted by path.
    entries: Vec<Known>,
}

/// The identities a generation's live index vouches for, in one target directory.
#[derive(Debug, Default)]
pub(super) struct LiveIndex {
    known: PathMap<(u64, u64, Time)>,
    walked: Option<Time>,
    root: Option<(u64, u64)>,
}

/// The device and inode of the directory a restore writes into.
pub(super) fn root_identity(root: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(root).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether a live inode of this kind may be vouched for: not a directory (its names would be
/// taken from the manifest), not a member of a hardlink group (compared by its inode).
pub(super) fn eligible(e: &Entry) -> bool {
    matches!(e.kind, Kind::File | Kind::Symlink) && e.hardlink.is_none()
}

impl LiveIndex {
    /// The index of `generation` for the target directory `root`: empty when there is none
    /// or it cannot be trusted (said at debug level: it is a cache).
    pub(super) fn read(generation: &Generation, root: Option<(u64, u64)>) -> LiveIndex {
        let path = generation.dir.join(LIVE_INDEX);
        match Self::try_read(&path, &generation.info.manifest_hash, root) {
            Ok(Some(index)) => index,
            Ok(None) => LiveIndex {
                root,
                ..LiveIndex::default()
            },
            Err(e) => {
                tracing::debug!("{}: {e:#}; not used", path.display());
                LiveIndex {
                    root,
                    ..LiveIndex::default()
                }
            }
        }
    }

    fn try_read(
        path: &Path,
        manifest_hash: &str,
        root: Option<(u64, u64)>,
    ) -> Result<Option<LiveIndex>> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut bytes = Vec::new();
        file.take(MAX_BYTES + 1).read_to_end(&mut bytes)?;
        anyhow::ensure!(
            bytes.len() as u64 <= MAX_BYTES,
            "larger than {MAX_BYTES} bytes"
        );
        let doc = parse(&bytes)?;
        anyhow::ensure!(
            doc.format == FORMAT,
            "format {} is not {FORMAT}",
            doc.format
        );
        anyhow::ensure!(
            doc.manifest_hash == manifest_hash,
            "written for another manifest"
        );
        anyhow::ensure!(
            Some(doc.root) == root,
            "written for another target directory"
        );
        let mut known = PathMap::default();
        known.reserve(doc.entries.len());
        for k in doc.entries {
            known.insert(k.path.0, (k.dev, k.ino, k.ctime));
        }
        Ok(Some(LiveIndex {
            known,
            walked: Some(doc.walked),
            root,
        }))
    }

    /// Whether the live inode `st` at `e`'s path is one this index vouches for: the entry's
    /// content, metadata, xattrs and link target are then the live ones.
    pub(super) fn vouches(&self, e: &Entry, st: &rustix::fs::Stat) -> bool {
        let Some(walked) = self.walked else {
            return false;
        };
        eligible(e)
            && self
                .known
                .get(e.path_bytes())
                .is_some_and(|&(dev, ino, ctime)| {
                    dev == st.st_dev
                        && ino == st.st_ino
                        && ctime == Time(st.st_ctime, st.st_ctime_nsec as u32)
                        && ctime.settled_before(walked)
                })
    }

    /// Replace the index with `found` (the comparison that began at `walked` found these
    /// inodes equal; `changed`: the paths it found different), keeping what the old one knew
    /// of paths the comparison did not vouch for and did not find changed. Nothing is written
    /// when that is what the index already holds.
    pub(super) fn update(
        &self,
        generation: &Generation,
        walked: Time,
        found: Vec<(Vec<u8>, u64, u64, Time)>,
        changed: &std::collections::HashSet<Vec<u8>>,
    ) -> Result<()> {
        let Some(root) = self.root else {
            return Ok(());
        };
        let mut next: PathMap<(u64, u64, Time)> = PathMap::default();
        for (path, &known) in &self.known {
            if !changed.contains(path) {
                next.insert(path.clone(), known);
            }
        }
        for (path, dev, ino, ctime) in found {
            if ctime.settled_before(walked) {
                next.insert(path, (dev, ino, ctime));
            }
        }
        if self.walked.is_some() && next == self.known {
            return Ok(());
        }
        if next.is_empty() && self.walked.is_none() {
            return Ok(());
        }
        let mut entries: Vec<Known> = next
            .into_iter()
            .map(|(path, (dev, ino, ctime))| Known {
                path: ByteText(path),
                dev,
                ino,
                ctime,
            })
            .collect();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        // The old identities are as trustworthy as when their own comparison vouched for
        // them; the new walked time is the later one, so every kept entry is settled by it.
        let doc = Document {
            format: FORMAT,
            manifest_hash: generation.info.manifest_hash.clone(),
            root,
            walked,
            entries,
        };
        let tmp = generation.dir.join(LIVE_INDEX_TMP);
        std::fs::write(&tmp, render(&doc)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, generation.dir.join(LIVE_INDEX))
            .with_context(|| format!("writing {}", generation.dir.join(LIVE_INDEX).display()))
    }
}

/// The document, a newline, and the BLAKE3 hash (hex) of the document.
fn render(doc: &Document) -> Result<Vec<u8>> {
    let mut out = serde_json::to_vec(doc)?;
    let hash = blake3::hash(&out).to_hex();
    out.push(b'\n');
    out.extend_from_slice(hash.as_bytes());
    out.push(b'\n');
    Ok(out)
}

fn parse(bytes: &[u8]) -> Result<Document> {
    let text = bytes
        .strip_suffix(b"\n")
        .context("not ended by a newline")?;
    let split = text
        .iter()
        .rposition(|&b| b == b'\n')
        .context("no hash line")?;
    let (body, hash) = (&text[..split], &text[split + 1..]);
    anyhow::ensure!(
        blake3::hash(body).to_hex().as_bytes() == hash,
        "its content does not match its hash"
    );
    Ok(serde_json::from_slice(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::entry::Source;

    fn generation(dir: &Path) -> Generation {
        Generation {
            info: serde_json::from_value(serde_json::json!({
                "format": 1, "id": "20261201T000000Z", "created": "x",
                "manifest_hash": "m1", "entries": 0, "bytes": 0, "trees": []
            }))
            .unwrap(),
            dir: dir.to_path_buf(),
            objects: dir.join("objects"),
            marks: Default::default(),
        }
    }

    fn entry(path: &str, kind: Kind) -> Entry {
        let mut e: Entry = serde_json::from_value(serde_json::json!({
            "path": path, "kind": "file", "mode": 420, "uid": 0, "gid": 0,
            "mtime": [1, 0], "source": {"dev": 1, "ino": 1, "ctime": [1, 0], "nlink": 1}
        }))
        .unwrap();
        e.kind = kind;
        e.source = Source {
            dev: 1,
            ino: 1,
            ctime: Time(1, 0),
            nlink: 1,
        };
        e
    }

    fn stat(dev: u64, ino: u64, ctime: i64) -> rustix::fs::Stat {
        let mut st = rustix::fs::stat("/").unwrap();
        st.st_dev = dev;
        st.st_ino = ino;
        st.st_ctime = ctime;
        st.st_ctime_nsec = 0;
        st
    }

    const ROOT: Option<(u64, u64)> = Some((7, 2));

    #[test]
    fn vouched_identities_are_trusted_only_when_settled_and_equal() {
        let t = tempfile::tempdir().unwrap();
        let g = generation(t.path());
        let index = LiveIndex::read(&g, ROOT);
        let found = vec![
            (b"etc/a".to_vec(), 5, 50, Time(100, 0)),
            // Changed within the margin of the comparison's start: not recorded.
            (b"etc/b".to_vec(), 5, 51, Time(199, 0)),
        ];
        index
            .update(&g, Time(200, 0), found, &Default::default())
            .unwrap();
        let index = LiveIndex::read(&g, ROOT);
        let a = entry("etc/a", Kind::File);
        assert!(index.vouches(&a, &stat(5, 50, 100)));
        assert!(!index.vouches(&a, &stat(5, 50, 101)), "another ctime");
        assert!(!index.vouches(&a, &stat(5, 49, 100)), "another inode");
        assert!(!index.vouches(&a, &stat(6, 50, 100)), "another device");
        assert!(!index.vouches(&entry("etc/b", Kind::File), &stat(5, 51, 199)));
        let mut linked = entry("etc/a", Kind::File);
        linked.hardlink = Some(1);
        assert!(
            !index.vouches(&linked, &stat(5, 50, 100)),
            "a hardlink member"
        );
        assert!(
            !index.vouches(&entry("etc/a", Kind::Dir), &stat(5, 50, 100)),
            "a directory"
        );
        assert!(
            !LiveIndex::read(&g, Some((7, 3))).vouches(&a, &stat(5, 50, 100)),
            "another target directory"
        );
        let mut other = generation(t.path());
        other.info.manifest_hash = "m2".into();
        assert!(
            !LiveIndex::read(&other, ROOT).vouches(&a, &stat(5, 50, 100)),
            "another manifest"
        );

        // A later comparison keeps what it did not find changed, drops what it did.
        let before = std::fs::read(t.path().join(LIVE_INDEX)).unwrap();
        index
            .update(&g, Time(300, 0), Vec::new(), &Default::default())
            .unwrap();
        assert_eq!(
            std::fs::read(t.path().join(LIVE_INDEX)).unwrap(),
            before,
            "nothing new: not rewritten"
        );
        let changed = [b"etc/a".to_vec()].into_iter().collect();
        index
            .update(&g, Time(300, 0), Vec::new(), &changed)
            .unwrap();
        assert!(!LiveIndex::read(&g, ROOT).vouches(&a, &stat(5, 50, 100)));
    }

    #[test]
    fn a_damaged_or_unknown_index_vouches_for_nothing() {
        let t = tempfile::tempdir().unwrap();
        let g = generation(t.path());
        LiveIndex::read(&g, ROOT)
            .update(
                &g,
                Time(200, 0),
                vec![(b"etc/a".to_vec(), 5, 50, Time(100, 0))],
                &Default::default(),
            )
            .unwrap();
        let a = entry("etc/a", Kind::File);
        let good = std::fs::read(t.path().join(LIVE_INDEX)).unwrap();
        assert!(LiveIndex::read(&g, ROOT).vouches(&a, &stat(5, 50, 100)));
        let text = String::from_utf8(good.clone()).unwrap();
        let (body, _) = text.trim_end().rsplit_once('\n').unwrap();
        let rehashed = |b: &str| format!("{b}\n{}\n", blake3::hash(b.as_bytes()).to_hex());
        for bad in [
            String::new(),
            text[..text.len() / 2].to_string(),
            text.replace("\"ino\":50", "\"ino\":51"),
            rehashed(&body.replace("\"format\":1", "\"format\":2")),
            rehashed(&body.replace("\"format\":1", "\"format\":1,\"extra\":1")),
            rehashed("[]"),
        ] {
            std::fs::write(t.path().join(LIVE_INDEX), &bad).unwrap();
            assert!(
                !LiveIndex::read(&g, ROOT).vouches(&a, &stat(5, 50, 100)),
                "{bad:?}"
            );
        }
    }
}
