//! What the steps of a plan share: configuration, the generation store, the host.

use crate::files::identity::Identity;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context as _, Result};

use super::vars::{GENERATION, IDENTITY};
use crate::config::Config;
use crate::engine::{Json, Progress, StepContext};
use crate::files::backup::Hooks;
use crate::files::collected::Seen;
use crate::files::exclude::{self, Excludes};
use crate::files::manifest::Manifest;
use crate::files::object_id::IdSet;
use crate::files::previous::Previous;
use crate::files::store::{Generation, Store};
use crate::files::walk::Scan;
use crate::host::Host;
use crate::host::transient::Invocation;
use crate::journal::Journal;

/// Shared by every step of a plan.
pub(crate) struct PlanContext {
    pub config: Arc<Config>,
    pub store: Store,
    pub host: Host,
    /// What a backup's pre-flight found, for the copy step of the same run.
    walked: Mutex<Option<Walked>>,
    /// The manifest a backup's copy made (entries, no artifacts), for its commit.
    copied: Mutex<Option<(i64, String, Manifest)>>,
    /// What a backup's copy knows of the store's objects, for its retention.
    clean: Mutex<Option<(i64, String, Seen)>>,
}

/// What a backup's pre-flight found, for the run and generation it was made for.
struct Walked {
    run: i64,
    generation: String,
    found: Found,
}

/// What a backup's pre-flight found and hands to its copy: the walk of the trees, the
/// previous generation the walk compared with, and which of the objects it names the store
/// lacked.
pub(crate) struct Found {
    pub scan: Scan,
    pub previous: Previous,
    pub lacking: IdSet,
    /// The generations there were when the pre-flight had cleaned the store: it held nothing
    /// they do not name.
    pub clean: Seen,
}

impl PlanContext {
    /// Plans for the real host the configuration describes.
    pub fn new(config: Arc<Config>) -> Arc<PlanContext> {
        let host = Host::new(
            &config,
            Arc::new(|| {
                crate::engine::running_step().map(|s| Invocation {
                    run: s.run,
                    step: s.step.to_string(),
                })
            }),
        );
        Self::with_host(config, host)
    }

    /// Plans for the given host adapters.
    pub(crate) fn with_host(config: Arc<Config>, host: Host) -> Arc<PlanContext> {
        let store = Store::new(&config.state_path());
        Arc::new(PlanContext {
            config,
            store,
            host,
            walked: Mutex::new(None),
            copied: Mutex::new(None),
            clean: Mutex::new(None),
        })
    }

    /// Keep the manifest the copy made for the commit of the same run and generation (a
    /// backup is never continued by another process, so it lives in memory only).
    pub(crate) fn keep_copy(&self, run: i64, generation: &str, m: Manifest) {
        *lock(&self.copied) = Some((run, generation.to_string(), m));
    }

    /// The manifest kept for this run and generation, taken (a commit that fails before it
    /// wrote the manifest gives it back with [`Self::keep_copy`], for a retry).
    pub(crate) fn take_copy(&self, run: i64, generation: &str) -> Option<Manifest> {
        let mut c = lock(&self.copied);
        match c.as_ref() {
            Some((r, g, _)) if *r == run && g == generation => c.take().map(|(_, _, m)| m),
            _ => None,
        }
    }

    /// Keep the pre-flight's walk for the copy of the same run and generation, in place of
    /// any walk kept before.
    pub(crate) fn keep_walk(&self, run: i64, generation: &str, found: Found) {
        *lock(&self.walked) = Some(Walked {
            run,
            generation: generation.to_string(),
            found,
        });
    }

    /// What the pre-flight of this run and generation found, if this process made it (taken:
    /// the copy uses it once; a retried copy walks and lists again).
    pub(crate) fn take_walk(&self, run: i64, generation: &str) -> Option<Found> {
        let mut w = lock(&self.walked);
        match w.as_ref() {
            Some(k) if k.run == run && k.generation == generation => w.take().map(|k| k.found),
            _ => None,
        }
    }

    /// Keep, for the retention of this run and generation, the generations the store held
    /// nothing beyond before its copy, when the copy knows it added only objects its manifest
    /// names (`None`: it does not know, and retention collects). In memory only: a backup is
    /// never continued by another process.
    pub(crate) fn keep_clean(&self, run: i64, generation: &str, clean: Option<Seen>) {
        *lock(&self.clean) = clean.map(|c| (run, generation.to_string(), c));
    }

    /// What the copy of this run and generation kept with [`Self::keep_clean`] (taken: a
    /// retried retention collects).
    pub(crate) fn take_clean(&self, run: i64, generation: &str) -> Option<Seen> {
        let (r, g, clean) = lock(&self.clean).take()?;
        (r == run && g == generation).then_some(clean)
    }

    /// Let what a backup kept for its next steps go (a backup that ended before them).
    pub(crate) fn forget_backup(&self) {
        *lock(&self.walked) = None;
        *lock(&self.copied) = None;
        *lock(&self.clean) = None;
    }

    /// A small file of the host, trimmed; `None` when it is missing or empty.
    pub(crate) fn host_file(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.config.host_path(path))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// The node's name as the cluster knows it: its hostname (`/etc/hostname`, else the host's
    /// kernel hostname, asked of the host since the daemon's own may be stale). A backup records
    /// it and a recovery compares it, so both read it here.
    pub(crate) async fn node_name(&self) -> String {
        if let Some(name) = self.host_file("/etc/hostname") {
            return name;
        }
        match self.host.hostname.hostname().await {
            Ok(name) => name,
            Err(e) => {
                tracing::warn!("reading the hostname: {e:#}");
                String::new()
            }
        }
    }

    /// Add to what the run records of the node's identity (the commit step puts it in the
    /// generation).
    pub(crate) fn record_identity(cx: &StepContext, add: impl FnOnce(&mut Identity)) -> Result<()> {
        let mut identity = cx.get(&IDENTITY)?.map(|j| j.0).unwrap_or_default();
        add(&mut identity);
        cx.set(&IDENTITY, &Json(identity))
    }

    /// Who the node is, as a generation records it (`hostname` from [`Self::node_name`]).
    pub(crate) fn identity(&self, hostname: String) -> Identity {
        Identity {
            hostname: Some(hostname),
            machine_id: self.host_file("/etc/machine-id"),
            recoveryd: Some(super::deployment::recoveryd_identity()),
            ..Default::default()
        }
    }

    /// The exclusion set for a backup taken now.
    pub(crate) fn excludes(&self) -> Result<Excludes> {
        let mut patterns: Vec<String> = exclude::FIXED.iter().map(|s| s.to_string()).collect();
        patterns.extend(exclude::tmpfiles_paths(&self.config.root)?);
        patterns.extend(self.config.backup.exclude.iter().cloned());
        Excludes::new(patterns)
    }

    /// What a backup walks: the configured trees and the machine-config files, plus the
    /// image directories and files of the images `select-images` chose.
    pub(crate) fn backup_sources(
        &self,
        cx: &crate::engine::StepContext,
    ) -> Result<(
        Vec<PathBuf>,
        Vec<PathBuf>,
        Option<crate::files::containers::ImagesSection>,
    )> {
        let mut trees = self.config.backup.paths.clone();
        let mut extras = self.extras()?;
        let images = cx.get(&super::vars::IMAGES)?.map(|j| j.0);
        if let Some(s) = &images {
            trees.extend(s.trees.iter().map(PathBuf::from));
            extras.extend(s.files.iter().map(PathBuf::from));
        }
        Ok((trees, extras, images))
    }

    /// The machine-config files outside the trees.
    pub(crate) fn extras(&self) -> Result<Vec<PathBuf>> {
        crate::files::extras::outside_trees(
            &self.config.root,
            &self.config.backup.machine_config,
            &self.config.backup.paths,
        )
    }

    /// The generation a dry run previews: the one its options name, else the newest committed
    /// one; `None` when there is none yet.
    pub(crate) fn preview_generation(&self, wanted: Option<&str>) -> Result<Option<Generation>> {
        match wanted {
            Some(id) => Ok(Some(self.store.open(id)?)),
            None => self.store.latest(),
        }
    }

    /// The generation a run works with: the one named in its options or variables, else the
    /// newest committed one.
    pub(crate) fn generation_for(&self, cx: &StepContext) -> Result<Generation> {
        if let Some(id) = cx.get(&GENERATION)? {
            return self.store.open(&id);
        }
        if let Some(id) = &cx.options.generation {
            let g = self.store.open(id)?;
            cx.set(&GENERATION, id)?;
            return Ok(g);
        }
        let g = self
            .store
            .latest()?
            .context("there is no committed generation to work with; take a backup first")?;
        cx.set(&GENERATION, &g.info.id)?;
        Ok(g)
    }

    /// The manifest hash the journal recorded for a generation, if it knows it.
    pub(crate) fn journal_hash(journal: &Journal, id: &str) -> Option<String> {
        journal
            .generation(id)
            .ok()
            .flatten()
            .map(|g| g.manifest_hash)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run `f` with the data path's hooks tied to the step: its failpoints and cancellation, and
/// its progress reported as `message` ("files copied"); `None` reports none.
pub(crate) fn with_step_hooks<R>(
    cx: &StepContext,
    message: Option<&'static str>,
    f: impl FnOnce(&Hooks) -> R,
) -> R {
    let checkpoint = || cx.checkpoint();
    let check_cancel = || cx.check_cancel();
    let progress = |done: u64, total: u64, bytes_done: u64, bytes_total: u64| {
        if let Some(message) = message {
            cx.progress(Progress {
                done,
                total,
                bytes_done,
                bytes_total,
                message,
            })
        }
    };
    f(&Hooks {
        checkpoint: &checkpoint,
        check_cancel: &check_cancel,
        progress: &progress,
    })
}
