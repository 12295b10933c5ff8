//! Commit the staging generation and verify what was committed.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;

use crate::engine::{Json, Outcome, Step, StepContext};
use crate::files::manifest::{Artifact, Manifest};
use crate::files::store::{GenerationInfo, MANIFEST_FILE, NEW_OBJECTS};
use crate::files::{copy::hash_file, verify};
use crate::plans::blocking;
use crate::plans::context::{PlanContext, with_step_hooks};
use crate::plans::vars::IDENTITY;
use crate::text::human_bytes;

use super::generation_id;

/// Write the manifest and commit the generation (fsync, rename, journal record).
pub(crate) struct Commit(pub Arc<PlanContext>);

#[async_trait]
impl Step for Commit {
    fn name(&self) -> &'static str {
        "commit"
    }
    fn stage(&self) -> &'static str {
        "commit"
    }
    fn describe(&self) -> String {
        "write the manifest, flush the generation to disk and commit it atomically".into()
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let p = self.0.clone();
        let cx = cx.clone();
        let hostname = p.node_name().await;
        blocking(move || commit(&p, &cx, hostname)).await
    }
}

fn commit(p: &PlanContext, cx: &StepContext, hostname: String) -> Result<Outcome> {
    let id = generation_id(cx)?;
    if let Ok(g) = p.store.open(&id) {
        record(cx, &g.info)?;
        return Ok(Outcome::Done(format!(
            "generation {id} was already committed"
        )));
    }
    let staging = p.store.staging_path(&id);
    let manifest_path = staging.join(MANIFEST_FILE);
    // The copy's list, kept in memory for this step. A retry of this step after an attempt
    // that had written it out and then failed finds none: the copy again (it walks, and
    // finds what it stored already stored).
    let m = match p.take_copy(cx.run, &id) {
        Some(m) => Some(m),
        None => {
            tracing::info!(
                recovery_run = cx.run,
                "the copy's list of generation {id} is not in this process: copying again"
            );
            super::copy::copy(p, cx)?;
            p.take_copy(cx.run, &id)
        }
    };
    let mut m = m.with_context(|| format!("the copy left no list for generation {id}"))?;
    let started = std::time::Instant::now();
    let hash = match write_manifest(&staging, &manifest_path, &mut m) {
        Ok(hash) => hash,
        Err(e) => {
            // A retry of this step starts from the same list.
            p.keep_copy(cx.run, &id, m);
            return Err(e);
        }
    };
    // Kept parsed for the verify step, which reads it next.
    let m = std::sync::Arc::new(m);
    crate::files::parsed::keep(&hash, m.clone());
    let mut identity = p.identity(hostname);
    if let Some(Json(recorded)) = cx.get(&IDENTITY)? {
        identity = identity.merged(recorded);
    }
    let info = GenerationInfo {
        format: 1,
        id: id.clone(),
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        manifest_hash: hash.clone(),
        entries: m.entries.len() as u64,
        bytes: m.content_bytes(),
        // The configured trees; the images' directories are summed up apart.
        trees: m
            .header
            .trees
            .iter()
            .filter(|t| {
                m.header
                    .images
                    .as_ref()
                    .is_none_or(|i| !i.trees.contains(&t.path))
            })
            .cloned()
            .collect(),
        identity,
        images: m.header.images.as_ref().map(|s| {
            let (entries, bytes) = super::image_share(&m, s);
            crate::files::containers::ImagesSummary {
                images: crate::plans::images::image_names(s),
                layers: s.layers_json.len() as u64,
                entries,
                bytes,
            }
        }),
    };
    cx.checkpoint()?;
    let written = started.elapsed();
    let g = p.store.commit(&id, &info)?;
    tracing::debug!(
        "commit: manifest checked and written in {written:?}, generation flushed and renamed in {:?}",
        started.elapsed() - written
    );
    record(cx, &g.info)?;
    Ok(Outcome::Done(format!(
        "generation {id} committed: {} entries, {}, manifest {}",
        info.entries,
        human_bytes(info.bytes),
        &hash[..16]
    )))
}

/// Hash the artifacts the cluster backup (and the images) put in the staging directory into
/// the manifest, and write it (validated first; not flushed: the commit flushes the file
/// system once). Returns its hash; on an error the manifest is still the copy's.
fn write_manifest(
    staging: &std::path::Path,
    manifest_path: &std::path::Path,
    m: &mut Manifest,
) -> Result<String> {
    let mut artifacts = Vec::new();
    for dir in ["cluster", "images"] {
        let base = staging.join(dir);
        if !base.is_dir() {
            continue;
        }
        let mut files = Vec::new();
        let mut stack = vec![base];
        while let Some(d) = stack.pop() {
            let listing =
                std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))?;
            for e in listing {
                let e = e.with_context(|| format!("listing {}", d.display()))?;
                if e.file_type()?.is_dir() {
                    stack.push(e.path());
                } else {
                    files.push(e.path());
                }
            }
        }
        files.sort();
        for f in files {
            let (hash, size) = std::fs::File::open(&f)
                .and_then(|file| hash_file(&file))
                .with_context(|| format!("hashing {}", f.display()))?;
            let rel = f.strip_prefix(staging).unwrap_or(&f).display().to_string();
            artifacts.push(Artifact {
                artifact: rel,
                size,
                hash,
            });
        }
    }
    // What an earlier attempt left.
    if manifest_path.exists() {
        std::fs::remove_file(manifest_path)
            .with_context(|| format!("removing {}", manifest_path.display()))?;
    }
    m.artifacts = artifacts;
    let written = m
        .write_checked(manifest_path)
        .with_context(|| format!("writing {}", manifest_path.display()));
    if written.is_err() {
        m.artifacts.clear();
    }
    written
}

fn record(cx: &StepContext, info: &GenerationInfo) -> Result<()> {
    cx.journal
        .record_generation(&crate::plans::committed_record(info, Some(cx.run)))?;
    Ok(())
}

/// Re-read the committed generation and check it against its manifest.
pub(crate) struct VerifyGeneration(pub Arc<PlanContext>);

#[async_trait]
impl Step for VerifyGeneration {
    fn name(&self) -> &'static str {
        "verify-generation"
    }
    fn stage(&self) -> &'static str {
        "commit"
    }
    fn describe(&self) -> String {
        "re-hash every stored file of the new generation against its manifest".into()
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let p = self.0.clone();
        let cx = cx.clone();
        blocking(move || {
            let id = generation_id(&cx)?;
            let g = p.store.open(&id)?;
            let jh = PlanContext::journal_hash(&cx.journal, &id);
            // Re-read what this backup wrote; objects of earlier backups were verified when
            // they were written and are checked for presence.
            // Without the list (an unreadable file), every object is re-read.
            let new: Option<std::collections::HashSet<String>> = match std::fs::read_to_string(
                g.dir.join(NEW_OBJECTS),
            ) {
                Ok(t) => Some(t.lines().map(str::to_string).collect()),
                Err(e) => {
                    tracing::warn!(
                        "{NEW_OBJECTS} of generation {id} unreadable ({e}); re-hashing every object"
                    );
                    None
                }
            };
            // Beside the verify, the manifest's cache for the next backup, which reads this
            // manifest whole before its walk; from the manifest the commit kept in memory
            // (none when this step runs in another process than the commit: no cache then).
            let kept = crate::files::parsed::get(&g.info.manifest_hash);
            let r = std::thread::scope(|s| {
                if let Some(m) = &kept {
                    s.spawn(|| write_cache(&g, m, cx.run));
                }
                with_step_hooks(&cx, None, |hooks| {
                    verify::verify(
                        &g,
                        jh.as_deref(),
                        new.as_ref(),
                        p.config.backup.workers,
                        hooks,
                    )
                })
            })?;
            if !r.ok {
                bail!("{}", r.summary());
            }
            Ok(Outcome::Done(r.summary()))
        })
        .await
    }
}

/// Write the manifest cache of `g`, whose manifest is `m`; a failure is said, and costs the
/// next backup a parse.
fn write_cache(g: &crate::files::store::Generation, m: &Manifest, run: i64) {
    let started = std::time::Instant::now();
    match crate::files::manifest_cache::write(&g.dir, &g.info.manifest_hash, m) {
        Ok(()) => tracing::debug!("manifest cache written in {:?}", started.elapsed()),
        Err(e) => tracing::warn!(
            recovery_run = run,
            "{e:#}; the next backup parses the manifest instead"
        ),
    }
}
