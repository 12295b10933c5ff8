//! Engine events in words: one rendering for the console, the daemon's clients, sd_notify's
//! STATUS and the engine's own log lines, so that each thing has one name everywhere.

use super::observer::Event;
use crate::journal::StepState;

/// How a step ended, in one word or two.
pub(crate) fn step_state_word(state: StepState) -> &'static str {
    match state {
        StepState::Done => "done",
        StepState::Skipped => "skipped",
        StepState::Failed => "FAILED",
        StepState::AwaitingReboot => "awaiting reboot",
        StepState::Interrupted => "interrupted",
        StepState::Started => "started",
    }
}

/// The line an event prints as, or `None` for progress (drawn, not printed).
pub(crate) fn line(e: &Event<'_>) -> Option<String> {
    Some(match *e {
        Event::RunStarted { run, kind, resumed } => {
            format!(
                "{kind} run {run} {}",
                if resumed { "resumes" } else { "starts" }
            )
        }
        Event::StageStarted { stage, .. } => format!("== {stage}"),
        Event::StepStarted {
            step,
            attempt,
            index,
            total,
            ..
        } => {
            let again = if attempt > 1 {
                format!(" (attempt {attempt})")
            } else {
                String::new()
            };
            format!("[{}/{total}] {step}{again} ...", index + 1)
        }
        Event::StepProgress { .. } => return None,
        Event::StepFinished {
            step,
            state,
            detail,
            ..
        } => format!("      {step}: {}: {detail}", step_state_word(state)),
        Event::RunFinished {
            run,
            kind,
            state,
            message,
        } => format!("{kind} run {run} {state}: {message}"),
    })
}

/// A short status for sd_notify (`STATUS=`): where the run is (a state, so in the past).
pub(crate) fn status_line(e: &Event<'_>) -> Option<String> {
    Some(match *e {
        Event::RunStarted { run, kind, resumed } => {
            format!(
                "{kind} run {run} {}",
                if resumed { "resumed" } else { "started" }
            )
        }
        Event::StageStarted { run, stage } => format!("run {run}: stage {stage}"),
        Event::StepStarted {
            run,
            stage,
            step,
            index,
            total,
            ..
        } => format!("run {run}: {stage}: {step} ({}/{total})", index + 1),
        Event::RunFinished {
            run, kind, state, ..
        } => format!("{kind} run {run} {state}"),
        Event::StepProgress { .. } | Event::StepFinished { .. } => return None,
    })
}
