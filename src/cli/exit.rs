//! Exit codes. The backup Job maps them to TALM's states, so they are an interface; the table
//! in README.md is this file's.

use crate::engine::EngineError;
use crate::journal::RunState;
use crate::protocol::{ApiError, Reply};

pub(crate) const OK: u8 = 0;
/// Any error not listed below.
pub(crate) const ERROR: u8 = 1;
/// Bad usage (clap's own code).
#[expect(
    dead_code,
    reason = "clap exits with it itself; listed so that this file is the table"
)]
pub(crate) const USAGE: u8 = 2;
/// A backup passed its deadline (TALM `Timeout`).
pub(crate) const TIMEOUT: u8 = 3;
/// A run ended in failure (TALM `Error`).
pub(crate) const FAILED: u8 = 4;
/// Another run holds the lock, or a recovery is open.
pub(crate) const BUSY: u8 = 5;
/// A generation failed verification, or its manifest is corrupt.
pub(crate) const CORRUPTED: u8 = 6;
/// `diff` only: restoring would change something (as diff(1)).
pub(crate) const DIFFERENCES: u8 = 1;
/// `diff` only: the comparison could not be made (as diff(1)).
pub(crate) const DIFF_TROUBLE: u8 = 2;

/// The code for a run's state when this invocation ends.
pub(crate) fn for_state(state: RunState) -> u8 {
    match state {
        RunState::Succeeded | RunState::Paused | RunState::AwaitingReboot | RunState::Running => OK,
        RunState::Timeout => TIMEOUT,
        RunState::Failed | RunState::Cancelled => FAILED,
    }
}

pub(crate) fn for_api_error(e: &ApiError) -> u8 {
    match e {
        ApiError::Busy(_) => BUSY,
        ApiError::Corrupted(_) => CORRUPTED,
        _ => ERROR,
    }
}

pub(crate) fn for_reply(r: &Reply) -> u8 {
    match r {
        Reply::Finished(o) => for_state(o.state),
        Reply::Error(e) => for_api_error(e),
        _ => OK,
    }
}

/// The code for an error of this process (not the daemon's answer).
pub(crate) fn for_error(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<EngineError>() {
        Some(EngineError::Busy(_) | EngineError::RecoveryOpen { .. }) => BUSY,
        _ if crate::files::is_corruption(e) => CORRUPTED,
        _ => ERROR,
    }
}
