//! Verifying a generation against its manifest: every stored object re-hashed, every missing,
//! extra or changed file reported by node path.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::backup::Hooks;
use super::copy::hash_file;
use super::entry::Kind;
use super::manifest_cache::{MANIFEST_CACHE, MANIFEST_CACHE_TMP};
use super::marks::{MARKS_FILE, MARKS_TMP};
use super::object_id::ObjectId;
use super::restore::{LIVE_INDEX, LIVE_INDEX_TMP};
use super::store::{Generation, INFO_FILE, MANIFEST_FILE, NEW_OBJECTS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ProblemKind {
    Manifest,
    Missing,
    Extra,
    Changed,
    Unreadable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Problem {
    pub path: String,
    pub problem: ProblemKind,
    pub detail: String,
}

/// Check one stored file against its manifest record: present, a regular file of the right
/// size and, unless `presence_only`, the right content. Returns the problem, if any, and the
/// bytes read.
pub(crate) fn check_stored(
    file: &Path,
    size: u64,
    hash: &str,
    presence_only: bool,
) -> (Option<(ProblemKind, String)>, u64) {
    let problem = match std::fs::symlink_metadata(file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Some((ProblemKind::Missing, "stored copy is missing".to_string()))
        }
        Err(e) => Some((ProblemKind::Unreadable, e.to_string())),
        Ok(m) if !m.file_type().is_file() => Some((
            ProblemKind::Changed,
            "stored copy is not a regular file".into(),
        )),
        Ok(m) if m.len() != size => Some((
            ProblemKind::Changed,
            format!("stored copy has {} bytes instead of {size}", m.len()),
        )),
        Ok(_) if presence_only => None,
        Ok(_) => match std::fs::File::open(file).and_then(|f| hash_file(&f)) {
            Err(e) => Some((ProblemKind::Unreadable, e.to_string())),
            Ok((h, n)) => {
                let changed = (h != hash).then(|| {
                    (
                        ProblemKind::Changed,
                        "content differs from the manifest".to_string(),
                    )
                });
                return (changed, n);
            }
        },
    };
    (problem, 0)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VerifyReport {
    pub generation: String,
    pub ok: bool,
    pub files_checked: u64,
    pub bytes_checked: u64,
    /// Objects written by earlier backups, checked for presence only (incremental check).
    pub shared_unchanged: u64,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub(crate) fn summary(&self) -> String {
        if self.ok {
            let shared = if self.shared_unchanged > 0 {
                format!(
                    ", {} objects of earlier backups checked for presence",
                    self.shared_unchanged
                )
            } else {
                String::new()
            };
            format!(
                "generation {}: ok ({} objects, {} bytes re-hashed{shared})",
                self.generation, self.files_checked, self.bytes_checked
            )
        } else {
            let mut s = format!(
                "generation {}: {} problem(s)",
                self.generation,
                self.problems.len()
            );
            for p in self.problems.iter().take(50) {
                s.push_str(&format!("\n  {:?} {}: {}", p.problem, p.path, p.detail));
            }
            if self.problems.len() > 50 {
                s.push_str(&format!("\n  ... and {} more", self.problems.len() - 50));
            }
            s
        }
    }
}

/// One piece of content to check.
struct Expect<'m> {
    /// An object, or an artifact's file in the generation.
    file: PathBuf,
    /// Who has this content: entries of the manifest, or an artifact's name.
    shown: Shown<'m>,
    size: u64,
    hash: &'m str,
}

enum Shown<'m> {
    /// The files with this content: (hash, entry index).
    Files(&'m [(&'m str, usize)]),
    Artifact(&'m str),
}

/// Small objects read at once per configured worker. Reading small objects back is mostly
/// waiting on the disk (in hash order, cold): at ×4 of the bench tree (48k files, cold cache)
/// 2 readers took 6.7–6.8 s, 8 readers 4.0–4.1 s. Big objects are read by `workers` of the
/// readers only: each holds a buffer of up to 1 MiB, and a big object's hash runs on every
/// core anyway (eight readers of any size raised the first backup's peak at ×4 by 6 MiB).
const READERS_PER_WORKER: usize = 4;

/// Above this size an object is big (see [`READERS_PER_WORKER`]).
const SMALL_OBJECT: u64 = 128 << 10;

/// Verify `generation`; `journal_hash` is the manifest hash the journal recorded, if any.
///
/// With `only_rehash`, only the objects in that set (those the backup just wrote) are
/// re-hashed; the others, written and verified by earlier backups, are checked for presence,
/// against one listing of the store. Without it (`recoveryctl verify`, the recovery's check)
/// every byte is re-hashed.
pub(crate) fn verify(
    generation: &Generation,
    journal_hash: Option<&str>,
    only_rehash: Option<&HashSet<String>>,
    workers: usize,
    hooks: &Hooks<'_>,
) -> Result<VerifyReport> {
    let mut report = VerifyReport {
        generation: generation.info.id.clone(),
        ok: false,
        files_checked: 0,
        bytes_checked: 0,
        shared_unchanged: 0,
        problems: Vec::new(),
    };
    if let Some(j) = journal_hash
        && j != generation.info.manifest_hash
    {
        report.problems.push(Problem {
            path: INFO_FILE.into(),
            problem: ProblemKind::Manifest,
            detail: format!(
                "records manifest hash {}, the journal {j}",
                generation.info.manifest_hash
            ),
        });
    }
    let manifest = match generation.manifest() {
        Ok(m) => m,
        Err(e) => {
            report.problems.push(Problem {
                path: MANIFEST_FILE.into(),
                problem: ProblemKind::Manifest,
                detail: format!("{e:#}"),
            });
            return Ok(report);
        }
    };
    // Every regular file by content: each distinct content is one run of this list.
    let mut files: Vec<(&str, usize)> = Vec::new();
    for (i, e) in manifest.entries.iter().enumerate() {
        if e.kind != Kind::File {
            continue;
        }
        match e.hash.as_deref() {
            Some(hash) => files.push((hash, i)),
            None => report.problems.push(Problem {
                path: e.display(),
                problem: ProblemKind::Manifest,
                detail: "regular file without a content hash".into(),
            }),
        }
    }
    files.sort_unstable();
    // Objects of earlier backups: present is enough (they were re-read when written); the
    // others are re-hashed.
    let mut present_only: Vec<&[(&str, usize)]> = Vec::new();
    let mut expect: Vec<Expect<'_>> = Vec::new();
    for same in files.chunk_by(|a, b| a.0 == b.0) {
        let (hash, i) = same[0];
        if only_rehash.is_some_and(|n| !n.contains(hash)) {
            present_only.push(same);
        } else {
            expect.push(Expect {
                file: generation.object(hash),
                shown: Shown::Files(same),
                size: manifest.entries[i].size,
                hash,
            });
        }
    }
    for a in &manifest.artifacts {
        expect.push(Expect {
            file: generation.dir.join(&a.artifact),
            shown: Shown::Artifact(&a.artifact),
            size: a.size,
            hash: &a.hash,
        });
    }
    let problems_of = |shown: &Shown<'_>, problem: ProblemKind, detail: &str| -> Vec<Problem> {
        let paths: Vec<String> = match shown {
            Shown::Files(v) => v
                .iter()
                .map(|&(_, i)| manifest.entries[i].display())
                .collect(),
            Shown::Artifact(a) => vec![a.to_string()],
        };
        paths
            .into_iter()
            .map(|path| Problem {
                path,
                problem,
                detail: detail.to_string(),
            })
            .collect()
    };
    let mut present = 0;
    if !present_only.is_empty() {
        (hooks.checkpoint)()?;
        let stored = super::store::present_objects_in(&generation.objects)?;
        for same in &present_only {
            if ObjectId::from_hex(same[0].0).is_some_and(|id| stored.contains(&id)) {
                present += 1;
            } else {
                report.problems.extend(problems_of(
                    &Shown::Files(same),
                    ProblemKind::Missing,
                    "stored copy is missing (or not a regular file)",
                ));
            }
        }
    }

    // The big objects first, then the small ones: a reader takes the next of the queues it
    // may read.
    let (big, small): (Vec<usize>, Vec<usize>) =
        (0..expect.len()).partition(|&k| expect[k].size > SMALL_OBJECT);
    let (next_big, next_small) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let take = |may_read_big: bool| {
        if may_read_big && let Some(&k) = big.get(next_big.fetch_add(1, Ordering::Relaxed)) {
            return Some(k);
        }
        small
            .get(next_small.fetch_add(1, Ordering::Relaxed))
            .copied()
    };
    let bytes = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let total = expect.len() as u64;
    let bytes_total: u64 = expect.iter().map(|x| x.size).sum();
    let problems = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let read_all = |may_read_big: bool| {
        while let Some(k) = take(may_read_big) {
            let x = &expect[k];
            if stop.load(Ordering::Relaxed) || (hooks.checkpoint)().is_err() {
                stop.store(true, Ordering::Relaxed);
                return;
            }
            let (problem, read) = check_stored(&x.file, x.size, x.hash, false);
            bytes.fetch_add(read, Ordering::Relaxed);
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(256) || n == total {
                (hooks.progress)(n, total, bytes.load(Ordering::Relaxed), bytes_total);
            }
            if let Some((problem, detail)) = problem {
                let found = problems_of(&x.shown, problem, &detail);
                problems
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(found);
            }
        }
    };
    std::thread::scope(|s| {
        let readers = (workers.max(1) * READERS_PER_WORKER).min(expect.len());
        for r in 0..readers {
            let read_all = &read_all;
            s.spawn(move || read_all(r < workers.max(1)));
        }
    });
    if stop.load(Ordering::Relaxed) {
        (hooks.checkpoint)()?;
        anyhow::bail!("verification stopped");
    }
    report
        .problems
        .extend(problems.into_inner().unwrap_or_else(|p| p.into_inner()));

    // Anything in the generation directory that the manifest does not account for.
    let known: HashSet<PathBuf> = manifest
        .artifacts
        .iter()
        .map(|a| generation.dir.join(&a.artifact))
        .collect();
    // The operator's marks are not content: protecting or labelling a generation must not make
    // it fail verification (and so its recovery); nor are the caches kept there (the live index
    // a restore keeps, the manifest's binary form a backup reads).
    let top_level = [
        INFO_FILE,
        MANIFEST_FILE,
        NEW_OBJECTS,
        MARKS_FILE,
        MARKS_TMP,
        LIVE_INDEX,
        LIVE_INDEX_TMP,
        MANIFEST_CACHE,
        MANIFEST_CACHE_TMP,
    ];
    let mut stack = vec![generation.dir.clone()];
    while let Some(d) = stack.pop() {
        let listing = |e| format!("listing {}: {e}", d.display());
        for ent in std::fs::read_dir(&d).map_err(|e| anyhow::anyhow!(listing(e)))? {
            let ent = ent.map_err(|e| anyhow::anyhow!(listing(e)))?;
            let p = ent.path();
            if ent
                .file_type()
                .map_err(|e| anyhow::anyhow!(listing(e)))?
                .is_dir()
            {
                stack.push(p);
                continue;
            }
            let name = ent.file_name();
            if (d == generation.dir && top_level.iter().any(|t| name == *t)) || known.contains(&p) {
                continue;
            }
            report.problems.push(Problem {
                path: p
                    .strip_prefix(&generation.dir)
                    .unwrap_or(&p)
                    .display()
                    .to_string(),
                problem: ProblemKind::Extra,
                detail: "in the generation but not in its manifest".into(),
            });
        }
    }
    report.problems.sort_by(|a, b| a.path.cmp(&b.path));
    report.files_checked = (expect.len() + present_only.len()) as u64;
    report.bytes_checked = bytes.load(Ordering::Relaxed);
    report.shared_unchanged = present;
    report.ok = report.problems.is_empty();
    Ok(report)
}
