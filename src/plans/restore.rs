//! Restoring trees from a generation, as a step.

use std::sync::Arc;

use anyhow::{Context, Result};
use async_trait::async_trait;

use super::blocking;
use super::context::{PlanContext, with_step_hooks};
use super::vars::SELINUX_WAS_ENFORCING;
use crate::engine::{Outcome, PreviewContext, Step, StepContext};
use crate::files::backup::Hooks;
use crate::files::restore::{self, ChangeKind, RestoreReport, Selection};
use crate::files::store::Generation;
use crate::text::human_bytes;

/// Which trees a restore step covers.
#[derive(Debug, Clone)]
pub(crate) enum Trees {
    /// Every tree of the generation.
    All,
    /// Every tree except these.
    Except(Vec<String>),
    /// Only these.
    Only(Vec<String>),
}

impl Trees {
    fn pick(&self, generation_trees: &[String]) -> Vec<String> {
        generation_trees
            .iter()
            .filter(|t| match self {
                Trees::All => true,
                Trees::Except(x) => !x.contains(t),
                Trees::Only(o) => o.contains(t),
            })
            .cloned()
            .collect()
    }
}

pub(crate) struct RestoreStep {
    pub cx: Arc<PlanContext>,
    pub name: &'static str,
    pub stage: &'static str,
    pub trees: Trees,
    pub extras: bool,
    /// Hold a logind shutdown inhibitor while restoring, and apply `[recovery] permissive`.
    pub critical: bool,
}

/// Run `f` under the configured SELinux policy for restores: enforcing by default (labels are
/// restored exactly); with `[recovery] permissive = true`, permissive for the duration, with
/// the previous mode put back on every exit path. The previous mode is journaled *before* the
/// switch, so that a crash at any point after it leaves a record the resume acts on (the
/// recovery's prologue puts enforcing back).
pub(crate) async fn with_selinux_policy<T>(
    p: &PlanContext,
    cx: &StepContext,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    if !p.config.recovery.permissive {
        return f.await;
    }
    let was_enforcing = p.host.selinux.enforcing()? == Some(true);
    if was_enforcing {
        cx.set(&SELINUX_WAS_ENFORCING, &true)?;
        // A crash point of its own (`<step>:during@1`): recorded, not yet switched.
        cx.checkpoint()?;
    }
    let guard = crate::host::selinux::PermissiveGuard::enter(p.host.selinux.clone())?;
    let r = f.await;
    drop(guard);
    if was_enforcing {
        cx.clear(&SELINUX_WAS_ENFORCING)?;
    }
    r
}

/// A one-paragraph account of a restore or diff.
/// A one-paragraph account of a restore (`done`) or of what one would do (a diff, a dry run),
/// in the restore's direction either way.
pub(crate) fn summarize(r: &RestoreReport, done: bool) -> String {
    let count = |k: ChangeKind| r.changes.iter().filter(|c| c.change == k).count();
    let words = if done {
        [
            "removed",
            "created",
            "rewritten",
            "replaced",
            "reset",
            "relinked",
        ]
    } else {
        [
            "to remove",
            "to create",
            "to rewrite",
            "to replace",
            "to reset",
            "to relink",
        ]
    };
    let kinds = [
        ChangeKind::Remove,
        ChangeKind::Create,
        ChangeKind::Content,
        ChangeKind::Type,
        ChangeKind::Metadata,
        ChangeKind::Link,
    ];
    let counts: Vec<String> = kinds
        .iter()
        .zip(words)
        .map(|(k, w)| format!("{} {w}", count(*k)))
        .collect();
    let mut s = format!(
        "{} changes: {}; {} files written ({}), {} live files hashed",
        r.changes.len(),
        counts.join(", "),
        r.files_written,
        human_bytes(r.bytes_written),
        r.hashed_live_files
    );
    if !r.mounts_left.is_empty() {
        s.push_str(&format!(
            "; mount points left alone: {}",
            r.mounts_left.join(", ")
        ));
    }
    for n in &r.notes {
        s.push_str("; ");
        s.push_str(n);
    }
    s
}

/// Check the generation's manifest against the journal before trusting it.
pub(crate) fn trusted_manifest(
    g: &Generation,
    journal: Option<&crate::journal::Journal>,
) -> Result<Arc<crate::files::manifest::Manifest>> {
    if let Some(j) = journal
        && let Some(h) = PlanContext::journal_hash(j, &g.info.id)
        && h != g.info.manifest_hash
    {
        return Err(crate::files::manifest::ManifestError::HashMismatch {
            path: g.dir.join(crate::files::store::INFO_FILE).display().to_string(),
            expected: h,
            found: g.info.manifest_hash.clone(),
        })
        .with_context(|| {
            format!(
                "generation {}: generation.json and the journal record different manifests; refusing to use it",
                g.info.id
            )
        });
    }
    g.manifest()
}

#[async_trait]
impl Step for RestoreStep {
    fn name(&self) -> &'static str {
        self.name
    }
    fn stage(&self) -> &'static str {
        self.stage
    }
    fn describe(&self) -> String {
        let mut what = match &self.trees {
            Trees::All => vec!["every tree".to_string()],
            Trees::Except(x) => vec![format!("every other tree than {}", x.join(", "))],
            Trees::Only(o) => o.clone(),
        };
        if self.extras {
            what.push("the machine-config files outside the trees".into());
        }
        format!(
            "restore {} exactly as backed up, removing what was added",
            what.join(" and ")
        )
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let p = self.cx.clone();
        let cx = cx.clone();
        let trees = self.trees.clone();
        let extras = self.extras;
        let inhibitor = if self.critical && self.cx.config.host.systemd {
            Some(self.cx.host.power.inhibit("restoring node files").await?)
        } else {
            None
        };
        let policy_cx = cx.clone();
        let work = blocking(move || {
            let g = p.generation_for(&cx)?;
            let mut m = trusted_manifest(&g, Some(&cx.journal))?;
            if !cx.options.paths.is_empty() {
                m = restore::narrow(&m, &cx.options.paths)?.into();
            }
            let names: Vec<String> = m.header.trees.iter().map(|t| t.path.clone()).collect();
            let selection = Selection {
                trees: &trees.pick(&names),
                extras,
            };
            if selection.trees.is_empty() && !selection.extras {
                return Ok(Outcome::Skipped("no such tree in this generation".into()));
            }
            let r = with_step_hooks(&cx, Some("entries restored"), |hooks| {
                restore::restore(&p.config.root, &g, &m, &selection, hooks)
            })?;
            Ok(Outcome::Done(format!(
                "from generation {}: {}",
                g.info.id,
                summarize(&r, true)
            )))
        });
        let r = if self.critical {
            with_selinux_policy(&self.cx, &policy_cx, work).await
        } else {
            work.await
        };
        drop(inhibitor);
        r
    }
    async fn preview(&self, pc: &PreviewContext) -> Result<String> {
        let p = self.cx.clone();
        let trees = self.trees.clone();
        let extras = self.extras;
        let wanted = pc.options.generation.clone();
        let journal = pc.journal.clone();
        let desc = self.describe();
        blocking(move || {
            let Some(g) = p.preview_generation(wanted.as_deref())? else {
                return Ok(format!("{desc} (no generation yet)"));
            };
            let m = trusted_manifest(&g, journal.as_deref())?;
            let names: Vec<String> = m.header.trees.iter().map(|t| t.path.clone()).collect();
            let selection = Selection {
                trees: &trees.pick(&names),
                extras,
            };
            let r = restore::diff(&p.config.root, &g, &m, &selection, &Hooks::none())?;
            let mut s = format!(
                "{desc}; from generation {}: {}",
                g.info.id,
                summarize(&r, false)
            );
            for c in r.changes.iter().take(200) {
                s.push_str(&format!(
                    "\n      {:<8} {} {}",
                    c.change.action(),
                    c.path,
                    c.detail
                ));
            }
            if r.changes.len() > 200 {
                s.push_str(&format!("\n      ... and {} more", r.changes.len() - 200));
            }
            Ok(s)
        })
        .await
    }
}
