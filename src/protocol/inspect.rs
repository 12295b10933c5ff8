//! The documents of the read-only commands (`journal`, `generations`, `diff`, the dry run),
//! with their renderings for people. `verify` prints the files layer's `VerifyReport` as is.

use serde::{Deserialize, Serialize};

use crate::files::marks::Marks;
use crate::files::restore::Change;
use crate::files::store::GenerationInfo;
use crate::journal::{RunRecord, StepRecord};
use crate::text::human_bytes;

/// `journal`: recent runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Runs {
    pub runs: Vec<RunRecord>,
}

/// `journal --run N`: one run, every attempt of its steps, its variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RunDetail {
    pub run: RunRecord,
    pub steps: Vec<StepRecord>,
    pub vars: Vec<(String, String)>,
}

/// One entry of `generations`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct GenerationEntry {
    /// The first characters of the manifest hash; any unique prefix of it, or of the id,
    /// names the generation.
    pub short_id: String,
    pub info: GenerationInfo,
    pub dir: std::path::PathBuf,
    pub in_journal: bool,
    #[serde(default)]
    pub marks: Marks,
    /// What a recovery uses without `--generation` (the newest).
    #[serde(default)]
    pub latest: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Generations {
    /// Oldest first.
    pub generations: Vec<GenerationEntry>,
}

/// `diff`: what restoring `generation` would change, on the live node or (`from`) on a node
/// that holds another generation. Every change is said as what the restore does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Diff {
    pub generation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub changes: Vec<Change>,
    pub mounts_left: Vec<String>,
    pub notes: Vec<String>,
}

impl Runs {
    pub(crate) fn human(&self) -> String {
        if self.runs.is_empty() {
            "no runs yet\n".to_string()
        } else {
            self.runs.iter().map(|r| run_line(r) + "\n").collect()
        }
    }
}

impl Generations {
    /// Newest first, for people: what tells generations apart (when, which OS and cluster
    /// version, how big, protected, label).
    pub(crate) fn human(&self, store: &std::path::Path) -> String {
        if self.generations.is_empty() {
            return format!("no generations in {}\n", store.display());
        }
        generation_table(&self.generations)
    }
}

/// The generations as a table, newest first.
pub(crate) fn generation_table(generations: &[GenerationEntry]) -> String {
    let mut out = format!(
        "{:<10} {:<20} {:<26} {:<12} {:>10}  {}\n",
        "SHORT ID", "ID (UTC TIME)", "OS DEPLOYMENT", "OCP", "SIZE", "MARKS"
    );
    for e in generations.iter().rev() {
        let os = match &e.info.identity.deployment {
            Some(d) => format!(
                "{} {}",
                d.version.as_deref().unwrap_or("-"),
                d.checksum.get(..8).unwrap_or(&d.checksum)
            ),
            None => "-".to_string(),
        };
        let ocp = e
            .info
            .identity
            .cluster
            .as_ref()
            .and_then(|c| c.version.clone())
            .unwrap_or_else(|| "-".into());
        let mut marks = Vec::new();
        if e.latest {
            marks.push("latest".to_string());
        }
        if e.marks.protected {
            marks.push("protected".to_string());
        }
        if !e.in_journal {
            marks.push("not in journal".to_string());
        }
        if let Some(l) = &e.marks.label {
            marks.push(format!("\"{l}\""));
        }
        if let Some(i) = &e.info.images {
            marks.push(format!(
                "{} images ({})",
                i.images.len(),
                human_bytes(i.bytes)
            ));
        }
        out.push_str(
            format!(
                "{:<10} {:<20} {:<26} {:<12} {:>10}  {}",
                e.short_id,
                e.info.id,
                os,
                ocp,
                human_bytes(e.info.bytes),
                marks.join(", ")
            )
            .trim_end(),
        );
        out.push('\n');
    }
    out
}

/// What `generations protect|unprotect|label|delete` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GenerationChange {
    pub generation: String,
    pub message: String,
}

impl Diff {
    pub(crate) fn human(&self) -> String {
        let onto = match &self.from {
            Some(f) => format!("a node that holds generation {f}"),
            None => "the live node".to_string(),
        };
        let mut s = if self.changes.is_empty() {
            format!(
                "restoring generation {} onto {onto} would change nothing\n",
                self.generation
            )
        } else {
            format!(
                "restoring generation {} onto {onto} would:\n",
                self.generation
            )
        };
        for c in &self.changes {
            let kind = c.change.action();
            if c.detail.is_empty() {
                s.push_str(&format!("{kind:<9} {}\n", c.path));
            } else {
                s.push_str(&format!("{kind:<9} {}  ({})\n", c.path, c.detail));
            }
        }
        s
    }
}

/// One step of a dry run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DryRunStep {
    pub index: usize,
    pub stage: String,
    pub step: String,
    /// What the step would do, or why it would not run.
    pub text: String,
}

/// Every stage and step of a recovery, and what each would change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DryRun {
    pub generation: String,
    pub steps: Vec<DryRunStep>,
}

impl DryRun {
    pub(crate) fn human(&self) -> String {
        let mut out = format!(
            "dry run: recovery from generation {} (nothing is changed)\n",
            self.generation
        );
        let mut stage = "";
        for s in &self.steps {
            if s.stage != stage {
                stage = &s.stage;
                out.push_str(&format!("== stage {stage}\n"));
            }
            out.push_str(&format!(
                "  {:>2}. {:<22} {}\n",
                s.index + 1,
                s.step,
                s.text
            ));
        }
        out
    }
}

fn run_line(r: &RunRecord) -> String {
    let mut s = format!(
        "run {:>4}  {:<8}  {:<15}  started {}",
        r.id, r.kind, r.state, r.started
    );
    if let Some(f) = &r.finished {
        s.push_str(&format!("  finished {f}"));
    }
    if let Some(stage) = &r.stage {
        s.push_str(&format!("  stage {stage}"));
    }
    s
}

impl RunDetail {
    pub(crate) fn human(&self) -> String {
        let d = self;
        use std::fmt::Write;
        let r = &d.run;
        let mut s = run_line(r);
        s.push('\n');
        if let Some(e) = &r.error {
            let _ = writeln!(s, "  error: {e}");
        }
        if r.no_progress_boots > 0 {
            let _ = writeln!(s, "  boots without progress: {}", r.no_progress_boots);
        }
        let _ = writeln!(
            s,
            "  {:<22} {:<20} {:<15} {:>3}  {:<24} {:<24} {:<12} detail",
            "stage", "step", "state", "try", "started", "finished", "boot"
        );
        for st in &d.steps {
            let boot: String = st.boot_id.chars().take(12).collect();
            let detail = st.detail.as_deref().unwrap_or("").replace('\n', " ");
            let detail: String = detail.chars().take(160).collect();
            let _ = writeln!(
                s,
                "  {:<22} {:<20} {:<15} {:>3}  {:<24} {:<24} {:<12} {}",
                st.stage,
                st.name,
                st.state.as_str(),
                st.attempt,
                st.started,
                st.finished.as_deref().unwrap_or("-"),
                boot,
                detail
            );
        }
        s
    }
}

/// `check`: the whole store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoreCheck {
    /// Whether every object was re-hashed (`--read-data`), or only checked for presence.
    pub read_data: bool,
    pub ok: bool,
    /// One verification per committed generation, oldest first.
    pub generations: Vec<crate::files::verify::VerifyReport>,
    /// Objects no generation refers to (`recoveryctl gc` removes them).
    pub orphans: Vec<String>,
    pub orphan_bytes: u64,
    /// What under `generations/` is not a readable generation.
    pub unreadable: Vec<String>,
}

impl StoreCheck {
    pub(crate) fn human(&self) -> String {
        let mut s = String::new();
        for g in &self.generations {
            s.push_str(&format!("{}\n", g.summary()));
        }
        for u in &self.unreadable {
            s.push_str(&format!("unreadable: {u}\n"));
        }
        if self.orphans.is_empty() {
            s.push_str("no orphaned objects\n");
        } else {
            s.push_str(&format!(
                "{} orphaned objects ({}) that no generation refers to: `recoveryctl gc` removes them\n",
                self.orphans.len(),
                human_bytes(self.orphan_bytes)
            ));
        }
        s.push_str(if self.ok {
            "the store is consistent\n"
        } else {
            "the store has problems (above); a generation with problems cannot be trusted\n"
        });
        s
    }
}
