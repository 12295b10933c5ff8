//! The store's record of its last complete collection of objects (`objects/collected.json`):
//! which committed generations there were when every object none of them refers to had just
//! been removed.
//!
//! A backup's pre-flight collects objects so that what a crash or a failed backup left is freed
//! before the space is measured; retention collects again after removing generations. In the
//! steady state nothing happened between the two, and a collection reads every manifest and
//! lists every object: the record lets the pre-flight skip it. Orphans can only appear by an
//! object being written (a backup, which always has a staging directory, and the record is
//! removed — durably — before that directory is created) or a generation going away (which the
//! comparison with the generations on disk sees, whoever removed it). The record is therefore
//! a hint in one direction only: when it stands, skipping the collection leaves no orphan
//! behind; when it is missing, damaged, or names other generations, the collection runs. A
//! wrong record can cost space until the next retention pass, never an object a generation
//! needs, because it only ever makes recoveryd remove less.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::fsx;
use super::store::Generation;

const FILE: &str = "collected.json";
const FORMAT: u32 = 1;

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    format: u32,
    /// Each generation's id and manifest hash, oldest first.
    generations: Vec<(String, String)>,
}

fn key(generations: &[Generation]) -> Vec<(String, String)> {
    generations
        .iter()
        .map(|g| (g.info.id.clone(), g.info.manifest_hash.clone()))
        .collect()
}

/// The committed generations at one moment, as a record names them: for a backup to say,
/// after its commit, that they were all the store held then ([`Store::collected_since`]).
///
/// [`Store::collected_since`]: super::store::Store::collected_since
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen(Vec<(String, String)>);

impl Seen {
    pub(super) fn of(generations: &[Generation]) -> Seen {
        Seen(key(generations))
    }

    /// Whether `now` is exactly these generations and then the one named `added`.
    pub(super) fn then_only(&self, now: &[Generation], added: &str) -> bool {
        match now.split_last() {
            Some((last, before)) => last.info.id == added && key(before) == self.0,
            None => false,
        }
    }
}

fn path(objects: &Path) -> PathBuf {
    objects.join(FILE)
}

/// Whether the last complete collection saw exactly these generations.
pub(super) fn stands_for(objects: &Path, generations: &[Generation]) -> bool {
    let Ok(text) = std::fs::read(path(objects)) else {
        return false;
    };
    match serde_json::from_slice::<Record>(&text) {
        Ok(r) => r.format == FORMAT && r.generations == key(generations),
        Err(e) => {
            tracing::debug!("{}: {e}; objects are collected", path(objects).display());
            false
        }
    }
}

/// Record a complete collection over `generations`. Not flushed: a record lost to a crash
/// only means one more collection. Written under a temporary name and renamed, so that it is
/// whole or absent.
pub(super) fn record(objects: &Path, generations: &[Generation]) -> Result<()> {
    let r = Record {
        format: FORMAT,
        generations: key(generations),
    };
    let tmp = objects.join(format!(".{FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(&r)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path(objects))
        .with_context(|| format!("writing {}", path(objects).display()))
}

/// Remove the record before objects are written, and make the removal durable: a record that
/// came back after a power cut would hide the objects of the backup the cut interrupted.
pub(super) fn forget(objects: &Path) -> Result<()> {
    let p = path(objects);
    match std::fs::remove_file(&p) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
    }
    let dir = rustix::fs::open(
        objects,
        rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .with_context(|| format!("opening {}", objects.display()))?;
    fsx::fsync(dir.as_fd()).with_context(|| format!("flushing {}", objects.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::store::Store;

    /// A store with two committed generations (no objects: the record is about generations).
    fn store() -> (tempfile::TempDir, Store) {
        let t = tempfile::tempdir().unwrap();
        let s = Store::new(t.path());
        s.ensure().unwrap();
        for id in ["20261201T000000Z", "20261202T000000Z"] {
            let dir = s.path(id);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join(crate::files::store::INFO_FILE),
                format!(
                    r#"{{"format":1,"id":"{id}","created":"x","manifest_hash":"h{id}","entries":0,"bytes":0,"trees":[]}}"#
                ),
            )
            .unwrap();
        }
        (t, s)
    }

    fn objects(t: &tempfile::TempDir) -> PathBuf {
        t.path().join(crate::files::store::OBJECTS_DIR)
    }

    #[test]
    fn a_record_stands_only_for_the_generations_it_names() {
        let (t, s) = store();
        let gens = s.list_strict().unwrap();
        assert!(!stands_for(&objects(&t), &gens), "no record yet");
        record(&objects(&t), &gens).unwrap();
        assert!(stands_for(&objects(&t), &gens));
        assert!(!stands_for(&objects(&t), &gens[1..]), "one generation gone");
        let mut changed = gens.clone();
        changed[0].info.manifest_hash = "other".into();
        assert!(!stands_for(&objects(&t), &changed), "a manifest replaced");
    }

    #[test]
    fn a_damaged_or_unknown_record_stands_for_nothing() {
        let (t, s) = store();
        let gens = s.list_strict().unwrap();
        record(&objects(&t), &gens).unwrap();
        let p = path(&objects(&t));
        let good = std::fs::read_to_string(&p).unwrap();
        for bad in [
            String::new(),
            good[..good.len() / 2].to_string(),
            good.replace("\"format\":1", "\"format\":2"),
            good.replace('}', ",\"extra\":1}"),
            "[]".to_string(),
        ] {
            std::fs::write(&p, &bad).unwrap();
            assert!(!stands_for(&objects(&t), &gens), "{bad:?}");
        }
    }

    #[test]
    fn a_backup_records_a_collection_only_over_what_it_saw_and_its_own_generation() {
        let (t, s) = store();
        let gens = s.list_strict().unwrap();
        let (before, added) = (Seen::of(&gens[..1]), gens[1].info.id.as_str());
        assert!(
            !s.collected_since(&before, "20261203T000000Z").unwrap(),
            "not the generation the backup committed"
        );
        assert!(
            !s.collected_since(&Seen::of(&gens), added).unwrap(),
            "a generation more than the backup saw and committed"
        );
        assert!(
            !s.collected_since(&Seen::of(&[]), added).unwrap(),
            "a generation the backup did not see"
        );
        std::fs::create_dir(s.staging_path("20261203T000000Z")).unwrap();
        assert!(
            !s.collected_since(&before, added).unwrap(),
            "another backup is writing objects"
        );
        assert!(!stands_for(&objects(&t), &gens), "nothing recorded so far");
        std::fs::remove_dir(s.staging_path("20261203T000000Z")).unwrap();
        assert!(s.collected_since(&before, added).unwrap());
        assert!(stands_for(&objects(&t), &gens));
    }

    #[test]
    fn forgetting_removes_the_record_and_is_quiet_without_one() {
        let (t, s) = store();
        let gens = s.list_strict().unwrap();
        forget(&objects(&t)).unwrap();
        record(&objects(&t), &gens).unwrap();
        forget(&objects(&t)).unwrap();
        assert!(!path(&objects(&t)).exists());
        assert!(!stands_for(&objects(&t), &gens));
    }
}
