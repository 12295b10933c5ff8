//! The previous generation's entries by node path: what a backup can take from them for an
//! inode that was not touched since ([`Entry::untouched`]) instead of reading it again.

use std::ffi::{OsStr, OsString};
use std::hash::BuildHasher;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use foldhash::fast::FixedState;
use hashbrown::HashTable;

use super::entry::{Entry, Kind, Time};
use super::manifest::Manifest;
use super::object_id::{IdSet, ObjectId};
use super::path_map::PathMap;

/// The previous generation's manifest, indexed by path. It owns the manifest (so that it can
/// be made on one thread while a walk runs on others, and handed from the pre-flight to the
/// copy): the index is a hash table of the entries' positions, hashed by their paths. A
/// backup looks up every live entry at least twice (the walk, the copy); a bisection of the
/// sorted paths compared long paths with a common prefix a dozen times each (27 ms of CPU in
/// a profile of a cold second backup of 14.6k entries).
pub(crate) struct Previous {
    manifest: Option<Arc<Manifest>>,
    by_path: HashTable<u32>,
    hasher: FixedState,
    /// The content it names.
    objects: IdSet,
    /// The names its walk found in each directory: its entries there, and the mount points it
    /// left alone there.
    names: PathMap<Vec<OsString>>,
}

impl Previous {
    pub(crate) fn new(m: Arc<Manifest>) -> Previous {
        let hasher = FixedState::default();
        let hash = |i: u32| hasher.hash_one(m.entries[i as usize].path_bytes());
        let mut by_path = HashTable::with_capacity(m.entries.len());
        for i in 0..m.entries.len() as u32 {
            by_path.insert_unique(hash(i), i, |&j| hash(j));
        }
        let objects = m
            .entries
            .iter()
            .filter_map(|e| e.hash.as_deref().and_then(ObjectId::from_hex))
            .collect();
        let mut names: PathMap<Vec<OsString>> = PathMap::default();
        let paths = m.entries.iter().map(|e| e.path_bytes());
        for p in paths.chain(m.header.skipped_mounts.iter().map(|x| &x.0[..])) {
            if let Some(slash) = p.iter().rposition(|&b| b == b'/') {
                let name = OsStr::from_bytes(&p[slash + 1..]).to_os_string();
                names.entry(p[..slash].to_vec()).or_default().push(name);
            }
        }
        for v in names.values_mut() {
            v.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            v.dedup();
        }
        Previous {
            manifest: Some(m),
            by_path,
            hasher,
            objects,
            names,
        }
    }

    /// None: the first backup.
    pub(crate) fn of(m: Option<Arc<Manifest>>) -> Previous {
        match m {
            Some(m) => Previous::new(m),
            None => Previous {
                manifest: None,
                by_path: HashTable::new(),
                hasher: FixedState::default(),
                objects: IdSet::default(),
                names: PathMap::default(),
            },
        }
    }

    fn walked(&self) -> Option<Time> {
        self.manifest.as_ref().and_then(|m| m.header.walked)
    }

    /// The previous entry at this path.
    fn at(&self, path: &[u8]) -> Option<&Entry> {
        let entries = &self.manifest.as_ref()?.entries;
        let i = self.by_path.find(self.hasher.hash_one(path), |&i| {
            entries[i as usize].path_bytes() == path
        })?;
        Some(&entries[*i as usize])
    }

    /// The previous entry for `e`'s path when it recorded the same inode, of the same kind,
    /// untouched since: `e` was just made from an `lstat` of the live entry.
    pub(crate) fn untouched(&self, e: &Entry) -> Option<&Entry> {
        let p = self.at(e.path_bytes())?;
        let same = p.kind == e.kind
            && p.source.dev == e.source.dev
            && p.source.ino == e.source.ino
            && p.source.ctime == e.source.ctime
            && !p.racy(self.walked());
        same.then_some(p)
    }

    /// The names in the directory `dir`, when its previous entry is `e`'s inode untouched
    /// since (see [`Self::untouched`]) and the walk excludes what the previous one excluded
    /// (`excludes`): a name added, removed or renamed moves the directory's ctime, so it holds
    /// the names the previous walk found there (its entries, and the mount points it left
    /// alone, which may be mount points no longer). Sorted bytewise, as a listing is.
    pub(crate) fn names_in(&self, e: &Entry, excludes: &[String]) -> Option<Vec<OsString>> {
        let m = self.manifest.as_ref()?;
        if e.kind != Kind::Dir || m.header.exclude != excludes {
            return None;
        }
        self.untouched(e)?;
        Some(self.names.get(e.path_bytes()).cloned().unwrap_or_default())
    }

    /// The content it names.
    pub(crate) fn objects(&self) -> &IdSet {
        &self.objects
    }

    /// Whether the previous generation names this content (and so verified it).
    pub(crate) fn names_object(&self, hash: &str) -> bool {
        ObjectId::from_hex(hash).is_some_and(|id| self.objects.contains(&id))
    }

    /// The previous entry of a regular file whose content is unchanged (same inode, ctime,
    /// size, mtime and link count), and which has a content hash to share.
    pub(crate) fn unchanged_file(&self, e: &Entry) -> Option<&Entry> {
        self.untouched(e).filter(|p| {
            p.kind == Kind::File
                && p.size == e.size
                && p.mtime == e.mtime
                && p.source.nlink == e.source.nlink
                && p.hash.is_some()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::entry::{RACY_NANOS, Source};
    use crate::files::manifest::{FORMAT, Header, VERSION};

    fn entry(path: &str, kind: Kind, ctime: Time) -> Entry {
        Entry {
            path: crate::files::bytetext::ByteText(path.as_bytes().to_vec()),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: Time(100, 0),
            size: 5,
            hash: (kind == Kind::File).then(|| "ab".repeat(32)),
            sparse: false,
            link: None,
            rdev: 0,
            xattrs: vec![(b"security.selinux".to_vec(), b"etc_t".to_vec())].into(),
            hardlink: None,
            implicit: false,
            source: Source {
                dev: 1,
                ino: 7,
                ctime,
                nlink: 1,
            },
        }
    }

    fn manifest(entries: Vec<Entry>, walked: Option<Time>) -> Manifest {
        let mut m = Manifest::new(Header {
            format: FORMAT.into(),
            version: VERSION,
            generation: "g".into(),
            trees: vec![],
            extras: vec![],
            extras_absent: vec![],
            exclude: vec![],
            skipped_mounts: vec![],
            images: None,
            walked,
        });
        m.entries = entries;
        m
    }

    #[test]
    fn only_the_same_inode_with_the_same_ctime_long_before_the_walk_is_untouched() {
        let ctime = Time(1_000, 500);
        let walked = Time(1_000 + 3, 0);
        let m = manifest(vec![entry("etc/a", Kind::File, ctime)], Some(walked));
        let prev = Previous::new(Arc::new(m.clone()));
        let live = entry("etc/a", Kind::File, ctime);
        assert!(prev.untouched(&live).is_some());
        assert!(prev.unchanged_file(&live).is_some());

        let mut other = live.clone();
        other.source.ino = 8;
        assert!(prev.untouched(&other).is_none(), "another inode");
        let mut other = live.clone();
        other.source.ctime = Time(1_000, 501);
        assert!(prev.untouched(&other).is_none(), "changed since");
        let mut other = live.clone();
        other.source.dev = 2;
        assert!(prev.untouched(&other).is_none(), "another file system");
        let mut other = live.clone();
        other.kind = Kind::Symlink;
        assert!(prev.untouched(&other).is_none(), "another kind");
        let mut other = live.clone();
        other.size = 6;
        assert!(prev.untouched(&other).is_some(), "metadata known");
        assert!(prev.unchanged_file(&other).is_none(), "content not");
        assert!(prev.untouched(&entry("etc/b", Kind::File, ctime)).is_none());
    }

    #[test]
    fn an_entry_changed_within_the_margin_of_its_walk_is_never_untouched() {
        let walked = Time(2_000, 0);
        let margin_s = (RACY_NANOS / 1_000_000_000) as i64;
        for (ctime, racy) in [
            (Time(2_000 - margin_s - 1, 0), false),
            (Time(2_000 - margin_s, 0), true),
            (Time(2_000 - 1, 999_999_999), true),
            (Time(2_000, 0), true),
            (Time(2_005, 0), true),
        ] {
            let m = manifest(vec![entry("etc/a", Kind::Dir, ctime)], Some(walked));
            let prev = Previous::new(Arc::new(m.clone()));
            let live = entry("etc/a", Kind::Dir, ctime);
            assert_eq!(prev.untouched(&live).is_none(), racy, "{ctime:?}");
            assert_eq!(m.entries[0].racy(Some(walked)), racy);
        }
        // A manifest that does not say when its walk began trusts the identity alone.
        let m = manifest(vec![entry("etc/a", Kind::Dir, walked)], None);
        assert!(
            Previous::new(Arc::new(m.clone()))
                .untouched(&m.entries[0])
                .is_some()
        );
        assert!(Previous::of(None).untouched(&m.entries[0]).is_none());
    }
}
