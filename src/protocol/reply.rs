//! The answer to a request: how a run ended (or that it started, or waits), a status, an error.

use serde::{Deserialize, Serialize};

use super::{ApiError, Status};
use crate::journal::{RunKind, RunState};

/// How an invocation of a run ended: finished, paused, or waiting for a reboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RunOutcome {
    pub run: i64,
    pub kind: RunKind,
    pub state: RunState,
    /// For backups, TALM's name for the outcome; for recoveries, the state.
    pub phase: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub(crate) enum Reply {
    /// A waited-for run stopped (see its state).
    Finished(RunOutcome),
    /// A run started and goes on (the request did not wait).
    Started {
        run: i64,
        kind: RunKind,
    },
    /// A boot-time resume found nothing to do.
    NothingToResume {
        message: String,
    },
    /// A cancel was asked of a run (executing: it stops soon; idle: it is cancelled now).
    Cancel {
        run: i64,
        kind: RunKind,
        message: String,
    },
    Status(Box<Status>),
    Error(ApiError),
}

impl Reply {
    /// One line for a person.
    pub(crate) fn human(&self) -> String {
        match self {
            Reply::Finished(o) => format!("{} run {} {}: {}", o.kind, o.run, o.state, o.message),
            Reply::Started { run, kind } => format!("{kind} run {run} started"),
            Reply::NothingToResume { message } | Reply::Cancel { message, .. } => message.clone(),
            Reply::Status(s) => s.human(),
            Reply::Error(e) => format!("{}: {}", e.short_name(), e.message()),
        }
    }
}
