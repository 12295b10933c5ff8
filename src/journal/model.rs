//! What the journal records, as Rust types.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),* }
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s { $($text => Ok($name::$variant),)* other => Err(format!("unknown {} `{}`", stringify!($name), other)) }
            }
        }
    };
}

string_enum!(
    /// What a run does.
    RunKind { Backup => "backup", Recovery => "recovery" }
);

string_enum!(
    /// Where a run stands.
    RunState {
        Running => "running",
        Paused => "paused",
        AwaitingReboot => "awaiting_reboot",
        Succeeded => "succeeded",
        Failed => "failed",
        Timeout => "timeout",
        Cancelled => "cancelled",
    }
);

impl RunState {
    /// A run that has begun and not ended: it executes, or waits to be continued.
    pub(crate) fn is_open(self) -> bool {
        matches!(
            self,
            RunState::Running | RunState::Paused | RunState::AwaitingReboot
        )
    }

    /// A run in a final state will not be continued.
    pub(crate) fn is_final(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Timeout | RunState::Cancelled
        )
    }
}

string_enum!(
    /// Where one attempt of a step stands.
    StepState {
        Started => "started",
        Done => "done",
        Skipped => "skipped",
        Failed => "failed",
        Interrupted => "interrupted",
        AwaitingReboot => "awaiting_reboot",
    }
);

impl StepState {
    /// The step needs no further attempt.
    pub fn is_complete(self) -> bool {
        matches!(self, StepState::Done | StepState::Skipped)
    }
}

/// One run, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: i64,
    pub kind: RunKind,
    pub state: RunState,
    pub stage: Option<String>,
    pub options: serde_json::Value,
    /// `(stage, step)` pairs of the plan when the run was created.
    pub plan: Vec<(String, String)>,
    pub started: String,
    pub finished: Option<String>,
    pub error: Option<String>,
    pub boot_id: String,
    pub no_progress_boots: u32,
}

impl RunRecord {
    /// A recovery can be continued unless it succeeded, timed out or was cancelled; a backup
    /// that failed is taken again rather than continued.
    pub(crate) fn resumable(&self) -> bool {
        !(self.state.is_final() || self.kind == RunKind::Backup && self.state == RunState::Failed)
    }
}

/// One attempt of one step, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub id: i64,
    pub run: i64,
    pub seq: u32,
    pub name: String,
    pub stage: String,
    pub state: StepState,
    pub attempt: u32,
    pub started: String,
    pub finished: Option<String>,
    pub boot_id: String,
    pub detail: Option<String>,
}

/// A committed generation, as the journal knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationRecord {
    pub id: String,
    pub run: Option<i64>,
    pub state: String,
    pub created: String,
    pub committed: String,
    pub manifest_hash: String,
    pub entries: i64,
    pub bytes: i64,
    pub identity: serde_json::Value,
}
