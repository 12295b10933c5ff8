//! Copy the trees and the machine-config files into the staging generation.

use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use async_trait::async_trait;

use crate::engine::{Outcome, Step, StepContext};
use crate::files::backup::copy_files;
use crate::files::bytetext::ByteText;
use crate::files::manifest::{FORMAT, Header, Manifest, VERSION};
use crate::files::previous::Previous;
use crate::files::store::NEW_OBJECTS;
use crate::files::walk::Walker;
use crate::plans::blocking;
use crate::plans::context::PlanContext;
use crate::plans::context::with_step_hooks;
use crate::text::human_bytes;

use super::{generation_id, previous_manifest};

/// How many walks a copy makes before it gives up on a tree whose files keep disappearing.
const MAX_WALKS: u32 = 3;

/// Copy the trees and the machine-config files into the staging generation.
pub(crate) struct CopyFiles(pub Arc<PlanContext>);

#[async_trait]
impl Step for CopyFiles {
    fn name(&self) -> &'static str {
        "copy-files"
    }
    fn stage(&self) -> &'static str {
        "copy"
    }
    fn describe(&self) -> String {
        let trees: Vec<String> = self
            .0
            .config
            .backup
            .paths
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!(
            "copy {} and the machine-config files, hashing every file",
            trees.join(", ")
        )
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let p = self.0.clone();
        let cx = cx.clone();
        blocking(move || copy(&p, &cx)).await
    }
}

pub(super) fn copy(p: &PlanContext, cx: &StepContext) -> Result<Outcome> {
    let id = generation_id(cx)?;
    let staging = p.store.staging_path(&id);
    anyhow::ensure!(
        staging.is_dir(),
        "staging directory {} is missing",
        staging.display()
    );
    // A retried attempt starts the copy over (objects already written are reused).
    let l = staging.join(NEW_OBJECTS);
    if l.exists() {
        std::fs::remove_file(&l).with_context(|| format!("removing {}", l.display()))?;
    }

    let excludes = p.excludes()?;
    let (trees, extras, images) = p.backup_sources(cx)?;
    let checkpoint = || cx.checkpoint();
    let walk = |previous: &OnceLock<Previous>| {
        Walker {
            root: &p.config.root,
            excludes: &excludes,
            checkpoint: &checkpoint,
            previous,
        }
        .scan(&trees, &extras)
    };
    // The pre-flight's walk when this process made it for this run, else a walk now. Only
    // the copy that takes it knows what it adds to the store the pre-flight cleaned (`clean`);
    // one after it cannot see what the ones before it wrote.
    let (mut scan, previous, mut lacking, clean) = match p.take_walk(cx.run, &id) {
        Some(found) => (
            found.scan,
            OnceLock::from(found.previous),
            Some(found.lacking),
            Some(found.clean),
        ),
        None => {
            let previous = OnceLock::from(Previous::of(previous_manifest(p)?));
            (walk(&previous)?, previous, None, None)
        }
    };
    let previous_ref = previous.get().expect("set above");
    let mut new_objects: Vec<String> = Vec::new();
    let mut walks = 1;
    let stats = loop {
        let stats = with_step_hooks(cx, Some("files copied"), |hooks| {
            copy_files(
                &p.config.root,
                &mut scan.entries,
                &p.store,
                previous_ref,
                lacking.take(),
                p.config.backup.workers,
                hooks,
            )
        })?;
        // What an earlier round wrote is found stored by the next: still this backup's.
        new_objects.extend(stats.new_objects.iter().cloned());
        if stats.stale.is_empty() {
            break stats;
        }
        // Files gone or replaced since the walk (pods come and go in /var/lib/kubelet while a
        // cluster backup runs): walk again, so that the manifest says what is there now.
        let shown: Vec<String> = stats
            .stale
            .iter()
            .take(3)
            .map(|&i| scan.entries[i].display())
            .collect();
        anyhow::ensure!(
            walks < MAX_WALKS,
            "files keep disappearing or changing kind while they are copied ({} in the last \
             walk, among them {}); take the backup again when the node is quieter",
            stats.stale.len(),
            shown.join(", ")
        );
        tracing::info!(
            recovery_run = cx.run,
            "{} files were gone or had changed kind since the walk ({}); walking again",
            stats.stale.len(),
            shown.join(", ")
        );
        scan = walk(&previous)?;
        walks += 1;
    };
    new_objects.sort();
    new_objects.dedup();
    p.keep_clean(
        cx.run,
        &id,
        clean.filter(|_| all_named(&new_objects, &scan.entries)),
    );
    // The objects this backup wrote: the verify step re-reads exactly these.
    let new_objects_file = staging.join(NEW_OBJECTS);
    std::fs::write(&new_objects_file, new_objects.join("\n"))
        .with_context(|| format!("writing {}", new_objects_file.display()))?;
    let mut m = Manifest::new(Header {
        format: FORMAT.into(),
        version: VERSION,
        generation: id.clone(),
        trees: scan.trees,
        extras: scan.extras.into_iter().map(ByteText).collect(),
        extras_absent: scan.extras_absent.into_iter().map(ByteText).collect(),
        exclude: excludes.patterns().to_vec(),
        skipped_mounts: scan.skipped_mounts.into_iter().map(ByteText).collect(),
        images: images.clone(),
        walked: scan.walked,
    });
    m.entries = scan.entries;
    let mut detail = format!(
        "{} entries; {} files stored ({}), {} already stored ({}), {} hardlinks",
        m.entries.len(),
        stats.copied_files,
        human_bytes(stats.copied_bytes),
        stats.shared_files,
        human_bytes(stats.shared_bytes),
        stats.hardlinks
    );
    if let Some(images) = &images {
        let (files, bytes) = image_share(&m, images);
        detail.push_str(&format!(
            "; of which {} images: {files} files, {}",
            images.images.len(),
            human_bytes(bytes)
        ));
    }
    if walks > 1 {
        detail.push_str(&format!(
            "; walked {walks} times: files had gone or changed kind since the walk before"
        ));
    }
    if !m.header.skipped_mounts.is_empty() {
        detail.push_str(&format!(
            "; {} mount points skipped",
            m.header.skipped_mounts.len()
        ));
    }
    // For the commit, which writes the manifest (one serialization of it per backup).
    p.keep_copy(cx.run, &id, m);
    Ok(Outcome::Done(detail))
}

/// Whether every object in `written` is one of `entries` (a file that changed between two
/// walks of one copy leaves an object the second walk's entry does not name).
fn all_named(written: &[String], entries: &[crate::files::entry::Entry]) -> bool {
    let mut unnamed: std::collections::HashSet<&str> = written.iter().map(String::as_str).collect();
    for e in entries {
        if unnamed.is_empty() {
            break;
        }
        if let Some(hash) = &e.hash {
            unnamed.remove(hash.as_str());
        }
    }
    unnamed.is_empty()
}

/// How many of the manifest's files, and bytes, belong to the images.
pub(crate) fn image_share(
    m: &Manifest,
    images: &crate::files::containers::ImagesSection,
) -> (u64, u64) {
    let roots: std::collections::HashSet<&[u8]> = images
        .trees
        .iter()
        .chain(&images.files)
        .map(|t| t.trim_start_matches('/').as_bytes())
        .collect();
    // An entry is the images' when it or one of its ancestors is one of their roots.
    let theirs = |p: &[u8]| {
        roots.contains(p)
            || p.iter()
                .enumerate()
                .any(|(i, &b)| b == b'/' && roots.contains(&p[..i]))
    };
    let mut files = 0;
    let mut bytes = 0;
    for e in m.entries.iter().filter(|e| theirs(e.path_bytes())) {
        files += 1;
        bytes += e.size;
    }
    (files, bytes)
}
