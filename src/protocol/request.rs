//! What a client asks. The socket receives these as JSON lines; D-Bus methods map onto them.
//! Unknown fields are refused on every op (each op is a struct variant: serde checks
//! `deny_unknown_fields` only on fields it reads, so a unit variant would take anything).

use serde::{Deserialize, Serialize};

/// The options of a recovery (`recoveryctl recover`, D-Bus `StartRecovery`, socket `recover`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecoverRequest {
    /// Skip the deployment check: stay on the booted deployment.
    #[serde(default)]
    pub force: bool,
    /// Accept a generation taken on another node or cluster.
    #[serde(default)]
    pub allow_foreign: bool,
    /// Stop after each stage.
    #[serde(default)]
    pub step: bool,
    /// The generation (default: the newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) enum Request {
    Status {},
    Backup {
        #[serde(default)]
        wait: bool,
    },
    Recover {
        #[serde(default)]
        force: bool,
        #[serde(default)]
        allow_foreign: bool,
        #[serde(default)]
        step: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        generation: Option<String>,
        #[serde(default)]
        wait: bool,
    },
    Resume {
        /// Run by the boot unit: a paused or failed run is left for an operator, nothing to
        /// resume is fine, and the call counts toward the boot-loop breaker.
        #[serde(default)]
        boot: bool,
        /// One stage, then stop (in the caller's process only: `--offline`).
        #[serde(default)]
        step: bool,
        #[serde(default)]
        wait: bool,
    },
    Restart {
        /// One stage, then stop (in the caller's process only: `--offline`).
        #[serde(default)]
        step: bool,
        #[serde(default)]
        wait: bool,
    },
    Cancel {},
}

impl Request {
    /// Whether the request changes anything (root only).
    pub(crate) fn mutating(&self) -> bool {
        !matches!(self, Request::Status {})
    }

    /// Whether the client follows the run to its end.
    pub(crate) fn waits(&self) -> bool {
        match self {
            Request::Backup { wait }
            | Request::Recover { wait, .. }
            | Request::Resume { wait, .. }
            | Request::Restart { wait, .. } => *wait,
            Request::Status {} | Request::Cancel {} => false,
        }
    }

    pub(crate) fn recover(r: RecoverRequest, wait: bool) -> Request {
        Request::Recover {
            force: r.force,
            allow_foreign: r.allow_foreign,
            step: r.step,
            generation: r.generation,
            wait,
        }
    }

    /// The recovery options of a `recover` request.
    pub(crate) fn recover_options(&self) -> Option<RecoverRequest> {
        match self {
            Request::Recover {
                force,
                allow_foreign,
                step,
                generation,
                ..
            } => Some(RecoverRequest {
                force: *force,
                allow_foreign: *allow_foreign,
                step: *step,
                generation: generation.clone(),
            }),
            _ => None,
        }
    }
}
