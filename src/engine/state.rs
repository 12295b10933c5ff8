//! The run state machine: every change of a run's state goes through [`check`], which allows
//! only the transitions in [`ALLOWED`].
//!
//! ```text
//!   (new) -> running -> succeeded | failed | timeout | cancelled     (an end)
//!            running -> paused | awaiting_reboot                     (waits for a person or a boot)
//!   paused | awaiting_reboot | running (after a crash) -> running    (resume, restart)
//!   paused | awaiting_reboot | running | failed (recovery) -> cancelled, failed
//!   failed (recovery) -> running                                     (an operator's resume)
//! ```

use crate::journal::RunState;

use RunState::*;

/// `(from, to)` pairs a run may take.
pub(crate) const ALLOWED: &[(RunState, RunState)] = &[
    (Running, Running),
    (Running, Paused),
    (Running, AwaitingReboot),
    (Running, Succeeded),
    (Running, Failed),
    (Running, Timeout),
    (Running, Cancelled),
    (Paused, Running),
    (Paused, Cancelled),
    (Paused, Failed),
    (AwaitingReboot, Running),
    (AwaitingReboot, Cancelled),
    (AwaitingReboot, Failed),
    (Failed, Running),
    (Failed, Cancelled),
    (Failed, Failed),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("run {run} cannot go from {from} to {to}")]
pub(crate) struct InvalidTransition {
    pub run: i64,
    pub from: RunState,
    pub to: RunState,
}

pub(crate) fn check(run: i64, from: RunState, to: RunState) -> Result<(), InvalidTransition> {
    if ALLOWED.contains(&(from, to)) {
        Ok(())
    } else {
        Err(InvalidTransition { run, from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [RunState; 7] = [
        Running,
        Paused,
        AwaitingReboot,
        Succeeded,
        Failed,
        Timeout,
        Cancelled,
    ];

    #[test]
    fn the_table() {
        for from in ALL {
            for to in ALL {
                let ok = check(1, from, to).is_ok();
                let expected = match (from, to) {
                    // An end is final, except a failed recovery, which an operator may resume
                    // or cancel.
                    (Succeeded | Timeout | Cancelled, _) => false,
                    (Failed, Running | Cancelled | Failed) => true,
                    (Failed, _) => false,
                    // Only a run that executes reaches an end other than cancelled/failed, or
                    // starts to wait.
                    (Running, _) => true,
                    (Paused | AwaitingReboot, Running | Cancelled | Failed) => true,
                    (Paused | AwaitingReboot, _) => false,
                };
                assert_eq!(ok, expected, "{from} -> {to}");
            }
        }
    }
}
