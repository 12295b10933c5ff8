//! Properties of the data path's formats, over generated input: any bytes survive as a name,
//! any valid manifest survives its file, a damaged manifest is refused (never a panic), and a
//! walk reads file names byte for byte.

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use proptest::collection::{btree_set, vec};
use proptest::prelude::*;

use super::bytetext::ByteText;
use super::entry::{Entry, Kind, Source, Time};
use super::exclude::Excludes;
use super::manifest::{Artifact, FORMAT, Header, Manifest, ManifestError, TreeInfo, VERSION};
use super::walk::Walker;

/// One name component: any bytes but `/` and NUL, never `.` or `..`.
fn component() -> impl Strategy<Value = Vec<u8>> {
    vec(1u8..=255, 1..8)
        .prop_map(|mut c| {
            c.retain(|b| *b != b'/');
            c
        })
        .prop_filter("a real name", |c| !c.is_empty() && c != b"." && c != b"..")
}

/// Relative paths of up to three components under a tree.
fn paths() -> impl Strategy<Value = BTreeSet<Vec<Vec<u8>>>> {
    btree_set(vec(component(), 1..4), 0..24)
}

fn hash() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[0-9a-f]{64}").unwrap()
}

#[derive(Debug, Clone)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    size: u64,
    hash: String,
    link: Vec<u8>,
    rdev: u64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    kind: u8,
}

fn meta() -> impl Strategy<Value = Meta> {
    (
        (0u32..=0o7777, any::<u32>(), any::<u32>()),
        (any::<i64>(), 0u32..1_000_000_000, any::<u64>()),
        hash(),
        vec(1u8..=255, 1..40),
        (any::<u64>(), 0u8..5),
        vec((vec(1u8..=255, 1..12), vec(any::<u8>(), 0..12)), 0..3),
    )
        .prop_map(
            |((mode, uid, gid), (secs, nanos, size), hash, link, (rdev, kind), mut xattrs)| {
                xattrs.sort();
                xattrs.dedup_by(|a, b| a.0 == b.0);
                Meta {
                    mode,
                    uid,
                    gid,
                    mtime: (secs, nanos),
                    size,
                    hash,
                    link,
                    rdev,
                    xattrs,
                    kind,
                }
            },
        )
}

/// A valid manifest of the tree `etc`: every ancestor a directory listed before its children,
/// leaves of every kind with random metadata.
fn manifest() -> impl Strategy<Value = Manifest> {
    (
        paths(),
        vec(meta(), 32),
        proptest::string::string_regex("[0-9A-Za-z-]{1,20}").unwrap(),
        // Keyed by name: a manifest lists each artifact once.
        proptest::collection::btree_map(
            proptest::string::string_regex("cluster/[a-z_]{1,12}\\.db").unwrap(),
            (any::<u64>(), hash()),
            0..3,
        ),
    )
        .prop_map(|(leaves, metas, generation, artifacts)| {
            let mut all: BTreeSet<Vec<u8>> = BTreeSet::new();
            let mut dirs: BTreeSet<Vec<u8>> = BTreeSet::new();
            dirs.insert(b"etc".to_vec());
            for leaf in &leaves {
                let mut p = b"etc".to_vec();
                for (i, c) in leaf.iter().enumerate() {
                    p.push(b'/');
                    p.extend_from_slice(c);
                    if i + 1 < leaf.len() {
                        dirs.insert(p.clone());
                    }
                }
                all.insert(p);
            }
            all.extend(dirs.iter().cloned());
            // Sorted bytewise, a parent comes before its children.
            let entries = all
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let m = &metas[i % metas.len()];
                    let kind = if dirs.contains(p) {
                        Kind::Dir
                    } else {
                        [
                            Kind::File,
                            Kind::Symlink,
                            Kind::Fifo,
                            Kind::Char,
                            Kind::File,
                        ][m.kind as usize]
                    };
                    Entry {
                        path: ByteText(p.clone()),
                        kind,
                        mode: m.mode,
                        uid: m.uid,
                        gid: m.gid,
                        mtime: Time(m.mtime.0, m.mtime.1),
                        size: if kind == Kind::File { m.size } else { 0 },
                        hash: (kind == Kind::File).then(|| m.hash.clone()),
                        sparse: kind == Kind::File && m.size % 2 == 1,
                        link: (kind == Kind::Symlink).then(|| ByteText(m.link.clone())),
                        rdev: if kind == Kind::Char { m.rdev } else { 0 },
                        xattrs: m.xattrs.clone().into(),
                        hardlink: None,
                        implicit: false,
                        source: Source {
                            dev: m.rdev,
                            ino: i as u64,
                            ctime: Time(m.mtime.0, m.mtime.1),
                            nlink: 1,
                        },
                    }
                })
                .collect();
            Manifest {
                header: Header {
                    format: FORMAT.into(),
                    version: VERSION,
                    generation,
                    trees: vec![TreeInfo {
                        path: "/etc".into(),
                        present: true,
                        resolved: Some("/etc".into()),
                    }],
                    extras: vec![],
                    extras_absent: vec![],
                    exclude: vec!["/etc/*.tmp".into()],
                    skipped_mounts: vec![],
                    images: None,
                    walked: metas.first().map(|m| Time(m.mtime.0, m.mtime.1)),
                },
                entries,
                artifacts: artifacts
                    .into_iter()
                    .map(|(artifact, (size, hash))| Artifact {
                        artifact,
                        size,
                        hash,
                    })
                    .collect(),
            }
        })
}

fn write(dir: &Path, m: &Manifest) -> (PathBuf, String) {
    let p = dir.join("manifest");
    let _ = std::fs::remove_file(&p);
    let h = m.write_file(&p).unwrap();
    (p, h)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_bytes_survive_as_text(b in vec(any::<u8>(), 0..64)) {
        let j = serde_json::to_string(&ByteText(b.clone())).unwrap();
        let back: ByteText = serde_json::from_str(&j).unwrap();
        prop_assert_eq!(back.0, b);
    }

    #[test]
    fn a_manifest_survives_its_file(m in manifest()) {
        let dir = tempfile::tempdir().unwrap();
        let (p, h) = write(dir.path(), &m);
        let back = Manifest::read_file(&p, Some(&h)).unwrap();
        prop_assert_eq!(back, m);
    }

    /// The binary cache of a manifest reads back as the manifest itself; any damaged byte of
    /// it is refused, never decoded into something else.
    #[test]
    fn a_manifest_survives_its_cache(m in manifest(), at in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let dir = tempfile::tempdir().unwrap();
        let (_, h) = write(dir.path(), &m);
        crate::files::manifest_cache::write(dir.path(), &h, &m).unwrap();
        let back = crate::files::manifest_cache::read(dir.path(), &h).unwrap().unwrap();
        prop_assert_eq!(back, m);
        let cache = dir.path().join(crate::files::manifest_cache::MANIFEST_CACHE);
        let mut bytes = std::fs::read(&cache).unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= xor;
        std::fs::write(&cache, &bytes).unwrap();
        prop_assert!(crate::files::manifest_cache::read(dir.path(), &h).is_err());
    }

    /// A collection reads the same hashes a full read finds, and nothing but them (artifacts
    /// are kept too); a damaged file is refused by both.
    #[test]
    fn a_collection_sees_every_hash_a_full_read_sees(m in manifest(), at in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let dir = tempfile::tempdir().unwrap();
        let (p, h) = write(dir.path(), &m);
        let set = Manifest::object_set(&p, &h).unwrap();
        prop_assert_eq!(&set.generation, &m.header.generation);
        let mut want: Vec<String> = m.entries.iter().filter_map(|e| e.hash.clone())
            .chain(m.artifacts.iter().map(|a| a.hash.clone()))
            .collect();
        want.sort();
        want.dedup();
        let found: Vec<String> = set.ids.iter().map(|id| id.to_string()).collect();
        prop_assert_eq!(found, want);
        // And the same ids from a whole manifest kept by a read of the same bytes.
        prop_assert_eq!(&*set, &crate::files::parsed::ObjectSet::of(&m));
        let mut bytes = std::fs::read(&p).unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= xor;
        std::fs::write(&p, &bytes).unwrap();
        let refused = matches!(
            Manifest::object_set(&p, &h),
            Err(ManifestError::HashMismatch { .. })
        );
        prop_assert!(refused);
    }

    /// One byte changed anywhere: refused by its hash; read without the hash, it is either
    /// refused with a reason or is a manifest that passes every check. Never a panic.
    #[test]
    fn a_damaged_manifest_is_refused(m in manifest(), at in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let dir = tempfile::tempdir().unwrap();
        let (p, h) = write(dir.path(), &m);
        let mut bytes = std::fs::read(&p).unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= xor;
        std::fs::write(&p, &bytes).unwrap();
        let hash_mismatch = matches!(
            Manifest::read_file(&p, Some(&h)),
            Err(ManifestError::HashMismatch { .. })
        );
        prop_assert!(hash_mismatch);
        if let Ok(read) = Manifest::read_file(&p, None) {
            prop_assert!(super::validate::validate(&read).is_ok());
        }
    }

    /// Arbitrary bytes as a manifest: an error, never a panic.
    #[test]
    fn garbage_is_an_error_not_a_panic(lines in vec(vec(any::<u8>(), 0..80), 0..6)) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("manifest");
        let bytes = lines.join(&b'\n');
        std::fs::write(&p, &bytes).unwrap();
        let _ = Manifest::read_file(&p, None);
        let _ = Manifest::object_set(&p, &blake3::hash(&bytes).to_hex());
    }

    /// Files named with any bytes are walked under exactly those names.
    #[test]
    fn a_walk_reads_names_byte_for_byte(names in btree_set(component(), 1..12)) {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        for n in &names {
            std::fs::write(etc.join(std::ffi::OsStr::from_bytes(n)), n).unwrap();
        }
        let excludes = Excludes::new(vec![]).unwrap();
        let scan = Walker {
            root: root.path(),
            excludes: &excludes,
            checkpoint: &|| Ok(()),
            previous: &std::sync::OnceLock::new(),
        }
        .scan(&[PathBuf::from("/etc")], &[])
        .unwrap();
        let walked: BTreeSet<Vec<u8>> = scan
            .entries
            .iter()
            .filter_map(|e| e.path_bytes().strip_prefix(b"etc/").map(<[u8]>::to_vec))
            .collect();
        prop_assert_eq!(walked, names);
    }
}
