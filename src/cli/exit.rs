//! Exit codes. The backup Job maps them to TALM's states, so they are an interface; the table
//! in README.md is this file's.

use crate::engine::EngineError;
use crate::journal::RunState;
use crate::protocol::{ApiError, Reply};

pub const OK: u8 = 0;
/// Any error not listed below.
pub const ERROR: u8 = 1;
/// Bad usage (clap's own code).
pub const USAGE: u8 = 2;
/// A backup passed its deadline (TALM `Timeout`).
pub const TIMEOUT: u8 = 3;
/// A run ended in failure (TALM `Error`).
pub const FAILED: u8 = 4;
/// Another run holds the lock, or a recovery is open.
pub const BUSY: u8 = 5;
/// A generation failed verification, or its manifest is corrupt.
pub const CORRUPTED: u8 = 6;

/// The code for a run's state when this invocation ends.
pub fn for_state(state: RunState) -> u8 {
    match state {
        RunState::Succeeded | RunState::Paused | RunState::AwaitingReboot | RunState::Running => OK,
        RunState::Timeout => TIMEOUT,
        RunState::Failed | RunState::Cancelled => FAILED,
    }
}

pub fn for_api_error(e: &ApiError) -> u8 {
    match e {
        ApiError::Busy(_) => BUSY,
        ApiError::Corrupted(_) => CORRUPTED,
        _ => ERROR,
    }
}

pub fn for_reply(r: &Reply) -> u8 {
    match r {
        Reply::Finished(o) => for_state(o.state),
        Reply::Error(e) => for_api_error(e),
        _ => OK,
    }
}

/// The code for an error of this process (not the daemon's answer).
pub fn for_error(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<EngineError>() {
        Some(EngineError::Busy(_) | EngineError::RecoveryOpen { .. }) => BUSY,
        _ if crate::files::is_corruption(e) => CORRUPTED,
        _ => ERROR,
    }
}
