//! What clients see of a run as it happens: the engine's events, owned and serializable.

use serde::{Deserialize, Serialize};

use crate::engine::{self, render};
use crate::journal::{RunKind, RunState, StepState};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum Event {
    RunStarted {
        run: i64,
        kind: RunKind,
        resumed: bool,
    },
    StageStarted {
        run: i64,
        stage: String,
    },
    StepStarted {
        run: i64,
        stage: String,
        step: String,
        attempt: u32,
        index: usize,
        total: usize,
    },
    StepProgress {
        run: i64,
        step: String,
        done: u64,
        total: u64,
        bytes_done: u64,
        bytes_total: u64,
        message: String,
    },
    StepFinished {
        run: i64,
        stage: String,
        step: String,
        state: StepState,
        detail: String,
        index: usize,
        total: usize,
    },
    RunFinished {
        run: i64,
        kind: RunKind,
        state: RunState,
        /// For backups, TALM's name for the outcome (`Succeeded`, `Timeout`, `Error`).
        phase: String,
        message: String,
    },
    /// No run executes any more (after `RunFinished`, once the daemon's slot is free).
    Idle,
}

impl Event {
    pub fn run(&self) -> Option<i64> {
        match self {
            Event::RunStarted { run, .. }
            | Event::StageStarted { run, .. }
            | Event::StepStarted { run, .. }
            | Event::StepProgress { run, .. }
            | Event::StepFinished { run, .. }
            | Event::RunFinished { run, .. } => Some(*run),
            Event::Idle => None,
        }
    }

    /// A run's end as the reply to a client that waited for it.
    pub(crate) fn outcome(&self) -> Option<super::RunOutcome> {
        match self {
            Event::RunFinished {
                run,
                kind,
                state,
                phase,
                message,
            } => Some(super::RunOutcome {
                run: *run,
                kind: *kind,
                state: *state,
                phase: phase.clone(),
                message: message.clone(),
            }),
            _ => None,
        }
    }

    /// The engine's borrowed form, for the one renderer ([`render`]).
    pub(crate) fn as_engine(&self) -> Option<engine::Event<'_>> {
        Some(match self {
            Event::RunStarted { run, kind, resumed } => engine::Event::RunStarted {
                run: *run,
                kind: *kind,
                resumed: *resumed,
            },
            Event::StageStarted { run, stage } => engine::Event::StageStarted { run: *run, stage },
            Event::StepStarted {
                run,
                stage,
                step,
                attempt,
                index,
                total,
            } => engine::Event::StepStarted {
                run: *run,
                stage,
                step,
                attempt: *attempt,
                index: *index,
                total: *total,
            },
            Event::StepProgress {
                run,
                step,
                done,
                total,
                bytes_done,
                bytes_total,
                message,
            } => engine::Event::StepProgress {
                run: *run,
                step,
                done: *done,
                total: *total,
                bytes_done: *bytes_done,
                bytes_total: *bytes_total,
                message,
            },
            Event::StepFinished {
                run,
                stage,
                step,
                state,
                detail,
                index,
                total,
            } => engine::Event::StepFinished {
                run: *run,
                stage,
                step,
                state: *state,
                detail,
                index: *index,
                total: *total,
            },
            Event::RunFinished {
                run,
                kind,
                state,
                message,
                ..
            } => engine::Event::RunFinished {
                run: *run,
                kind: *kind,
                state: *state,
                message,
            },
            Event::Idle => return None,
        })
    }

    /// The line a person sees for this event (`None`: progress, drawn instead).
    pub(crate) fn line(&self) -> Option<String> {
        self.as_engine().and_then(|e| render::line(&e))
    }
}

impl From<&engine::Event<'_>> for Event {
    fn from(e: &engine::Event<'_>) -> Event {
        match *e {
            engine::Event::RunStarted { run, kind, resumed } => {
                Event::RunStarted { run, kind, resumed }
            }
            engine::Event::StageStarted { run, stage } => Event::StageStarted {
                run,
                stage: stage.into(),
            },
            engine::Event::StepStarted {
                run,
                stage,
                step,
                attempt,
                index,
                total,
            } => Event::StepStarted {
                run,
                stage: stage.into(),
                step: step.into(),
                attempt,
                index,
                total,
            },
            engine::Event::StepProgress {
                run,
                step,
                done,
                total,
                bytes_done,
                bytes_total,
                message,
            } => Event::StepProgress {
                run,
                step: step.into(),
                done,
                total,
                bytes_done,
                bytes_total,
                message: message.into(),
            },
            engine::Event::StepFinished {
                run,
                stage,
                step,
                state,
                detail,
                index,
                total,
            } => Event::StepFinished {
                run,
                stage: stage.into(),
                step: step.into(),
                state,
                detail: detail.into(),
                index,
                total,
            },
            engine::Event::RunFinished {
                run,
                kind,
                state,
                message,
            } => Event::RunFinished {
                run,
                kind,
                state,
                phase: super::status::phase(kind, state),
                message: message.into(),
            },
        }
    }
}
