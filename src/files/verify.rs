//! Verifying a generation against its manifest: every stored object re-hashed, every missing,
//! extra or changed file reported by node path.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::backup::Hooks;
use super::copy::hash_file;
use super::entry::Kind;
use super::marks::{MARKS_FILE, MARKS_TMP};
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
struct Expect {
    file: PathBuf,
    /// The node paths (or artifact name) that have this content.
    shown: Vec<String>,
    size: u64,
    hash: String,
    /// Check presence only.
    presence_only: bool,
}

/// Verify `generation`; `journal_hash` is the manifest hash the journal recorded, if any.
///
/// With `only_rehash`, only the objects in that set (those the backup just wrote) are
/// re-hashed; the others, written and verified by earlier backups, are checked for presence.
/// Without it (`recoveryctl verify`, the recovery's check) every byte is re-hashed.
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
    let mut objects: BTreeMap<String, Expect> = BTreeMap::new();
    for e in manifest.entries.iter().filter(|e| e.kind == Kind::File) {
        let Some(hash) = e.hash.clone() else {
            report.problems.push(Problem {
                path: e.display(),
                problem: ProblemKind::Manifest,
                detail: "regular file without a content hash".into(),
            });
            continue;
        };
        objects
            .entry(hash.clone())
            .or_insert_with(|| Expect {
                file: generation.object(&hash),
                shown: Vec::new(),
                size: e.size,
                presence_only: only_rehash.is_some_and(|n| !n.contains(&hash)),
                hash,
            })
            .shown
            .push(e.display());
    }
    let mut expect: Vec<Expect> = objects.into_values().collect();
    for a in &manifest.artifacts {
        expect.push(Expect {
            file: generation.dir.join(&a.artifact),
            shown: vec![a.artifact.clone()],
            size: a.size,
            hash: a.hash.clone(),
            presence_only: false,
        });
    }

    let next = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    let presence = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let total = expect.len() as u64;
    let bytes_total: u64 = expect
        .iter()
        .filter(|x| !x.presence_only)
        .map(|x| x.size)
        .sum();
    let problems = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(x) = expect.get(k) else { return };
                    if stop.load(Ordering::Relaxed) || (hooks.checkpoint)().is_err() {
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                    let (problem, read) = check_stored(&x.file, x.size, &x.hash, x.presence_only);
                    if x.presence_only && problem.is_none() {
                        presence.fetch_add(1, Ordering::Relaxed);
                    }
                    bytes.fetch_add(read, Ordering::Relaxed);
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_multiple_of(256) || n == total {
                        (hooks.progress)(n, total, bytes.load(Ordering::Relaxed), bytes_total);
                    }
                    if let Some((problem, detail)) = problem {
                        let mut p = problems.lock().unwrap_or_else(|p| p.into_inner());
                        for shown in &x.shown {
                            p.push(Problem {
                                path: shown.clone(),
                                problem,
                                detail: detail.clone(),
                            });
                        }
                    }
                }
            });
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
    // it fail verification (and so its recovery).
    let top_level = [INFO_FILE, MANIFEST_FILE, NEW_OBJECTS, MARKS_FILE, MARKS_TMP];
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
    report.files_checked = expect.len() as u64;
    report.bytes_checked = bytes.load(Ordering::Relaxed);
    report.shared_unchanged = presence.load(Ordering::Relaxed);
    report.ok = report.problems.is_empty();
    Ok(report)
}
