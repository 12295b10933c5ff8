//! The store's figures for `status`, kept between requests while the store is unchanged.
//!
//! Measuring the store reads every generation's manifest and lists every object (tens of
//! milliseconds and megabytes of allocation at node scale), and a status is asked for often:
//! by TALM's polling, the backup Job, monitoring, an operator's `watch`. The daemon keeps the
//! last figures with a fingerprint of what they were computed from: the committed generations
//! (id and manifest hash) and the modification time of the object directory and of each of its
//! fan-out directories, which every object stored or removed changes. No figures are kept while
//! a backup is writing (a staging directory exists), while anything under `generations/` is
//! unreadable, or when a directory changed so recently that a further change could share its
//! timestamp (the "racily clean" case of Git's index).

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::Result;

use super::store::{Store, StoreStats};

/// How old every timestamp must be before figures are kept: ten times the coarsest kernel
/// clock tick (HZ=100) that stamps directories on file systems with nanosecond timestamps
/// (XFS, ext4, btrfs)...
const SETTLED: Duration = Duration::from_millis(100);
/// ... and on one that stamps whole seconds or two (vfat), seen as timestamps without a
/// fraction.
const SETTLED_COARSE: Duration = Duration::from_secs(3);

#[derive(Debug, PartialEq, Eq)]
struct Fingerprint {
    generations: Vec<(String, String)>,
    /// The object directory, then `00` … `ff` (None: absent).
    dirs: Vec<Option<SystemTime>>,
}

impl Fingerprint {
    /// What the store is now, or None when its figures must not be kept.
    fn of(store: &Store) -> Option<Fingerprint> {
        if !store.staging_dirs().ok()?.is_empty() {
            return None;
        }
        let generations = store
            .list_strict()
            .ok()?
            .into_iter()
            .map(|g| (g.info.id, g.info.manifest_hash))
            .collect();
        let objects = store.objects_dir();
        let mtime = |p: &std::path::Path| std::fs::metadata(p).ok().and_then(|m| m.modified().ok());
        let mut dirs = Vec::with_capacity(257);
        dirs.push(mtime(objects));
        for i in 0..=255u8 {
            dirs.push(mtime(&objects.join(format!("{i:02x}"))));
        }
        Some(Fingerprint { generations, dirs })
    }

    fn settled(&self) -> bool {
        let now = SystemTime::now();
        let stamps = || self.dirs.iter().flatten();
        let coarse = stamps().all(|t| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .is_ok_and(|d| d.subsec_nanos() == 0)
        });
        let settled = if coarse { SETTLED_COARSE } else { SETTLED };
        stamps().all(|t| now.duration_since(*t).is_ok_and(|age| age >= settled))
    }
}

#[derive(Debug, Default)]
pub(crate) struct StatsCache {
    last: Mutex<Option<(Fingerprint, StoreStats)>>,
}

impl StatsCache {
    /// [`Store::stats`], from the last figures when the store has not changed since.
    pub(crate) fn stats(&self, store: &Store) -> Result<StoreStats> {
        let before = Fingerprint::of(store);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(now), Some((then, stats))) = (&before, &*last)
            && now == then
        {
            let mut stats = stats.clone();
            // Half-written objects are not objects: counted every time (a crash leaves them).
            stats.tmp_files = store.tmp_files();
            return Ok(stats);
        }
        let stats = store.stats()?;
        *last = match before {
            Some(fp) if fp.settled() && Fingerprint::of(store).as_ref() == Some(&fp) => {
                Some((fp, stats.clone()))
            }
            _ => None,
        };
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store with one generation referring to one object, its timestamps settled.
    fn store() -> (tempfile::TempDir, Store) {
        let t = tempfile::tempdir().unwrap();
        let s = Store::new(t.path());
        s.ensure().unwrap();
        let id = "20261201T000000Z";
        let dir = s.path(id);
        std::fs::create_dir_all(&dir).unwrap();
        use crate::files::manifest::{FORMAT, Header, Manifest, VERSION};
        let hash = Manifest::new(Header {
            format: FORMAT.into(),
            version: VERSION,
            generation: id.into(),
            trees: Vec::new(),
            extras: Vec::new(),
            extras_absent: Vec::new(),
            exclude: Vec::new(),
            skipped_mounts: Vec::new(),
            images: None,
            walked: None,
        })
        .write_file(&dir.join(crate::files::store::MANIFEST_FILE))
        .unwrap();
        std::fs::write(
            dir.join(crate::files::store::INFO_FILE),
            format!(
                r#"{{"format":1,"id":"{id}","created":"x","manifest_hash":"{hash}","entries":0,"bytes":0,"trees":[]}}"#
            ),
        )
        .unwrap();
        settle(&s);
        (t, s)
    }

    /// Make every timestamp of the object directories old, as if written minutes ago.
    fn settle(s: &Store) {
        let old = SystemTime::now() - Duration::from_secs(600);
        let mut dirs = vec![s.objects_dir().to_path_buf()];
        for e in std::fs::read_dir(s.objects_dir()).unwrap() {
            dirs.push(e.unwrap().path());
        }
        for d in dirs {
            std::fs::File::open(&d).unwrap().set_modified(old).unwrap();
        }
    }

    fn add_orphan(s: &Store, name: &str) {
        let p = s.object(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"x").unwrap();
    }

    #[test]
    fn figures_are_kept_until_an_object_or_a_generation_changes() {
        let (_t, s) = store();
        let cache = StatsCache::default();
        assert!(Fingerprint::of(&s).is_some(), "{:?}", s.stats());
        let first = cache.stats(&s).unwrap();
        assert_eq!(first.objects, 0);
        assert!(
            cache.last.lock().unwrap().is_some(),
            "settled figures are kept"
        );

        add_orphan(&s, &"a".repeat(64));
        let second = cache.stats(&s).unwrap();
        assert_eq!(second.objects, 1, "an object stored since is seen");
        assert!(
            cache.last.lock().unwrap().is_none(),
            "figures of a directory changed just now are not kept"
        );
        settle(&s);
        assert_eq!(cache.stats(&s).unwrap().unreferenced_objects, 1);
        assert!(cache.last.lock().unwrap().is_some());

        // Removed in place, timestamps restored: only the generations can tell now.
        std::fs::remove_dir_all(s.path("20261201T000000Z")).unwrap();
        assert_eq!(cache.stats(&s).unwrap().generations, 0);
    }

    #[test]
    fn nothing_is_kept_while_a_backup_writes_or_a_generation_is_unreadable() {
        let (_t, s) = store();
        let cache = StatsCache::default();
        s.create_staging("20261202T000000Z").unwrap();
        settle(&s);
        cache.stats(&s).unwrap();
        assert!(cache.last.lock().unwrap().is_none());
        std::fs::remove_dir_all(s.staging_path("20261202T000000Z")).unwrap();
        std::fs::create_dir_all(s.path("20261203T000000Z")).unwrap();
        assert!(cache.stats(&s).is_err(), "an unreadable generation is said");
        assert!(cache.last.lock().unwrap().is_none());
    }

    #[test]
    fn timestamps_of_whole_seconds_must_be_older_to_count_as_settled() {
        let at = |age: Duration, whole: bool| {
            let t = SystemTime::now() - age;
            let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
            let nanos = if whole { 0 } else { d.subsec_nanos().max(1) };
            Fingerprint {
                generations: Vec::new(),
                dirs: vec![
                    None,
                    Some(SystemTime::UNIX_EPOCH + Duration::new(d.as_secs(), nanos)),
                ],
            }
        };
        assert!(!at(Duration::from_millis(10), false).settled());
        assert!(at(Duration::from_millis(500), false).settled());
        assert!(
            !at(Duration::from_millis(1500), true).settled(),
            "a vfat stamp"
        );
        assert!(at(Duration::from_secs(5), true).settled());
    }

    #[test]
    fn half_written_objects_are_counted_every_time() {
        let (_t, s) = store();
        let cache = StatsCache::default();
        assert_eq!(cache.stats(&s).unwrap().tmp_files, 0);
        std::fs::write(s.objects_tmp().join("partial"), b"x").unwrap();
        settle(&s);
        assert_eq!(cache.stats(&s).unwrap().tmp_files, 1);
    }
}
