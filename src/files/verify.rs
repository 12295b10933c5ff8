//! Verifying a generation against its manifest: every stored file re-hashed, every missing,
//! extra or changed file reported by path.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::Result;
use serde::Serialize;

use super::backup::Hooks;
use super::copy::hash_file;
use super::entry::Kind;
use super::store::{FILES_DIR, Generation, INFO_FILE, MANIFEST_FILE, stored_rel};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    Manifest,
    Missing,
    Extra,
    Changed,
    Unreadable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub path: String,
    pub problem: ProblemKind,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub generation: String,
    pub ok: bool,
    pub files_checked: u64,
    pub bytes_checked: u64,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn summary(&self) -> String {
        if self.ok {
            format!(
                "generation {}: ok ({} files, {} bytes re-hashed)",
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

struct Expect {
    /// Path inside the generation directory.
    rel: PathBuf,
    /// How to name it to a person.
    shown: String,
    size: u64,
    hash: String,
}

/// Verify `generation`. `journal_hash` is the manifest hash the journal recorded, if any.
pub fn verify(
    generation: &Generation,
    journal_hash: Option<&str>,
    workers: usize,
    hooks: &Hooks<'_>,
) -> Result<VerifyReport> {
    let mut report = VerifyReport {
        generation: generation.info.id.clone(),
        ok: false,
        files_checked: 0,
        bytes_checked: 0,
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
    let mut expect: Vec<Expect> = Vec::new();
    for e in &manifest.entries {
        if e.kind == Kind::File {
            expect.push(Expect {
                rel: Path::new(FILES_DIR).join(stored_rel(e.path_bytes())),
                shown: e.display(),
                size: e.size,
                hash: e.hash.clone().unwrap_or_default(),
            });
        }
    }
    for a in &manifest.artifacts {
        expect.push(Expect {
            rel: PathBuf::from(&a.artifact),
            shown: a.artifact.clone(),
            size: a.size,
            hash: a.hash.clone(),
        });
    }

    let next = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    let problems = Mutex::new(Vec::new());
    let stop = std::sync::atomic::AtomicBool::new(false);
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
                    let p = generation.dir.join(&x.rel);
                    let problem = match std::fs::symlink_metadata(&p) {
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            Some((ProblemKind::Missing, "stored copy is missing".to_string()))
                        }
                        Err(e) => Some((ProblemKind::Unreadable, e.to_string())),
                        Ok(m) if !m.file_type().is_file() => Some((
                            ProblemKind::Changed,
                            "stored copy is not a regular file".into(),
                        )),
                        Ok(m) if m.len() != x.size => Some((
                            ProblemKind::Changed,
                            format!("size {} instead of {}", m.len(), x.size),
                        )),
                        Ok(_) => match std::fs::File::open(&p).and_then(|f| hash_file(&f)) {
                            Err(e) => Some((ProblemKind::Unreadable, e.to_string())),
                            Ok((h, n)) => {
                                bytes.fetch_add(n, Ordering::Relaxed);
                                (h != x.hash).then(|| {
                                    (
                                        ProblemKind::Changed,
                                        "content differs from the manifest".to_string(),
                                    )
                                })
                            }
                        },
                    };
                    if let Some((problem, detail)) = problem {
                        problems
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Problem {
                                path: x.shown.clone(),
                                problem,
                                detail,
                            });
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

    // Anything stored that the manifest does not know about.
    let known: HashSet<&Path> = expect.iter().map(|x| x.rel.as_path()).collect();
    for top in [FILES_DIR, "cluster", "images"] {
        let base = generation.dir.join(top);
        if !base.exists() {
            continue;
        }
        let mut stack = vec![base];
        while let Some(d) = stack.pop() {
            for ent in std::fs::read_dir(&d)? {
                let ent = ent?;
                let p = ent.path();
                let ft = ent.file_type()?;
                if ft.is_dir() {
                    stack.push(p);
                    continue;
                }
                let rel = p.strip_prefix(&generation.dir).unwrap_or(&p);
                if !known.contains(rel) {
                    let shown = match rel.strip_prefix(FILES_DIR) {
                        Ok(r) => format!("/{}", r.display()),
                        Err(_) => rel.display().to_string(),
                    };
                    report.problems.push(Problem {
                        path: shown,
                        problem: ProblemKind::Extra,
                        detail: "stored but not in the manifest".into(),
                    });
                }
            }
        }
    }
    report.problems.sort_by(|a, b| a.path.cmp(&b.path));
    report.files_checked = expect.len() as u64;
    report.bytes_checked = bytes.load(Ordering::Relaxed);
    report.ok = report.problems.is_empty();
    Ok(report)
}
