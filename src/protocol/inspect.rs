//! The documents of the read-only commands (`journal`, `generations`, `diff`, the dry run),
//! with their renderings for people. `verify` prints the files layer's `VerifyReport` as is.

use serde::{Deserialize, Serialize};

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
    pub info: GenerationInfo,
    pub dir: std::path::PathBuf,
    pub in_journal: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Generations {
    /// Oldest first.
    pub generations: Vec<GenerationEntry>,
}

/// `diff`: what a restore would change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Diff {
    pub generation: String,
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
    /// Newest first, for people.
    pub(crate) fn human(&self, store: &std::path::Path) -> String {
        if self.generations.is_empty() {
            return format!("no generations in {}\n", store.display());
        }
        self.generations
            .iter()
            .rev()
            .map(|e| {
                format!(
                    "{}  created {}  {} entries  {}  manifest {}\n",
                    e.info.id,
                    e.info.created,
                    e.info.entries,
                    human_bytes(e.info.bytes),
                    e.info
                        .manifest_hash
                        .get(..16)
                        .unwrap_or(&e.info.manifest_hash)
                )
            })
            .collect()
    }
}

impl Diff {
    pub(crate) fn human(&self) -> String {
        let mut s = String::new();
        for c in &self.changes {
            let kind = format!("{:?}", c.change).to_lowercase();
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
