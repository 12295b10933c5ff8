//! A run's options, typed, as the journal keeps them (`runs.options`, JSON).
//!
//! Unknown fields are ignored and missing ones take their defaults when a run is read back:
//! a newer recoveryd may record options an older one does not know (see the journal's
//! compatibility rule), and runs recorded before a field existed still resume.

use serde::{Deserialize, Serialize};

/// Which plan a run executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlanKind {
    #[default]
    Backup,
    Recover,
    RestoreFiles,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOptions {
    /// Absent in backups recorded before it was written: a backup.
    #[serde(default)]
    pub plan: PlanKind,
    /// Skip the deployment check: stay on the booted deployment.
    #[serde(default)]
    pub force: bool,
    /// Accept a generation taken on another node or cluster.
    #[serde(default)]
    pub allow_foreign: bool,
    /// Stop after each stage.
    #[serde(default)]
    pub step: bool,
    /// The generation the run works with (recoveries, file restores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<String>,
    /// A file restore of only these node paths (`restore-files --path`); empty: everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

impl RunOptions {
    pub(crate) fn backup() -> RunOptions {
        RunOptions::default()
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("run options serialize")
    }

    /// What the journal recorded; a malformed record reads as the defaults (logged).
    pub(crate) fn from_json(v: &serde_json::Value) -> RunOptions {
        serde_json::from_value(v.clone()).unwrap_or_else(|e| {
            tracing::warn!("unreadable run options {v}: {e}; using the defaults");
            RunOptions::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_records_and_newer_fields_read() {
        assert_eq!(
            RunOptions::from_json(&serde_json::json!({})),
            RunOptions::backup()
        );
        let o = RunOptions::from_json(&serde_json::json!(
            {"plan": "recover", "force": true, "step": false, "generation": "g1", "later": 1}
        ));
        assert_eq!(o.plan, PlanKind::Recover);
        assert!(o.force && !o.allow_foreign);
        assert_eq!(o.generation.as_deref(), Some("g1"));
        let r = RunOptions {
            plan: PlanKind::RestoreFiles,
            ..Default::default()
        };
        assert_eq!(RunOptions::from_json(&r.to_json()), r);
    }
}
