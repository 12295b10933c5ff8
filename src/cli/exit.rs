//! Exit codes. The backup Job maps them to TALM's states, so they are an interface. [`TABLE`]
//! is the one list: `recoveryctl --help` and the man page print it, and a test keeps the
//! table in README.md equal to it.

use crate::engine::EngineError;
use crate::journal::RunState;
use crate::protocol::{ApiError, Reply};

pub(crate) const OK: u8 = 0;
/// Any error not listed below.
pub(crate) const ERROR: u8 = 1;
/// Bad usage (clap's own code).
pub(crate) const USAGE: u8 = 2;
/// A backup passed its deadline (TALM `Timeout`).
pub(crate) const TIMEOUT: u8 = 3;
/// A run ended in failure (TALM `Error`).
pub(crate) const FAILED: u8 = 4;
/// Another run holds the lock, or a recovery is open.
pub(crate) const BUSY: u8 = 5;
/// A generation failed verification, or its manifest is corrupt.
pub(crate) const CORRUPTED: u8 = 6;
/// Stopped by SIGINT while waiting for a daemon's run (128 + the signal, as shells say).
pub(crate) const INTERRUPTED: u8 = 130;
/// Stopped by SIGTERM while waiting for a daemon's run: a pod past its deadline or deleted.
pub(crate) const TERMINATED: u8 = 143;
/// `diff` only: restoring would change something (as diff(1)).
pub(crate) const DIFFERENCES: u8 = ERROR;
/// `diff` only: the comparison could not be made (as diff(1)).
pub(crate) const DIFF_TROUBLE: u8 = USAGE;

/// Every exit code and what it means, for `--help`, the man page and README.md.
pub(crate) const TABLE: &[(u8, &str)] = &[
    (
        OK,
        "success, or the run waits for a reboot (it resumes by itself)",
    ),
    (
        ERROR,
        "any other error; for `diff`: restoring would change something",
    ),
    (
        USAGE,
        "bad usage; for `diff`: the comparison could not be made",
    ),
    (TIMEOUT, "a backup passed its deadline"),
    (FAILED, "a run failed or was cancelled"),
    (
        BUSY,
        "another run holds the lock, or a recovery is open (nothing was started or recorded)",
    ),
    (
        CORRUPTED,
        "a generation failed verification or its manifest is corrupt (refused before anything changes)",
    ),
    (
        INTERRUPTED,
        "stopped by SIGINT while waiting; the run goes on in recoveryd",
    ),
    (
        TERMINATED,
        "stopped by SIGTERM while waiting (a pod's deadline); the run goes on in recoveryd",
    ),
];

/// [`TABLE`] as Markdown rows, as README.md has it.
#[cfg(test)]
pub(crate) fn markdown() -> String {
    let mut s = String::from("| exit | meaning |\n|---|---|\n");
    for (code, what) in TABLE {
        s.push_str(&format!("| {code} | {what} |\n"));
    }
    s
}

/// [`TABLE`] for `--help`.
pub(crate) fn help() -> String {
    let mut s = String::from("Exit status:\n");
    for (code, what) in TABLE {
        s.push_str(&format!("  {code}  {what}\n"));
    }
    s
}

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
        Some(
            EngineError::Busy(_)
            | EngineError::RecoveryOpen { .. }
            | EngineError::BackupRefused { .. },
        ) => BUSY,
        _ if crate::files::is_corruption(e) => CORRUPTED,
        _ => ERROR,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_readme_lists_every_exit_code_as_this_file_does() {
        let readme = include_str!("../../README.md");
        assert!(
            readme.contains(&super::markdown()),
            "README.md's exit code table differs from src/cli/exit.rs; it should read:\n{}",
            super::markdown()
        );
    }
}
