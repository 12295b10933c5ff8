//! Engine events, for whoever shows progress: the CLI, the D-Bus signals, sd_notify.

use crate::journal::{RunKind, RunState, StepState};

#[derive(Debug, Clone)]
pub enum Event<'a> {
    RunStarted {
        run: i64,
        kind: RunKind,
        resumed: bool,
    },
    StageStarted {
        run: i64,
        stage: &'a str,
    },
    StepStarted {
        run: i64,
        stage: &'a str,
        step: &'a str,
        attempt: u32,
        index: usize,
        total: usize,
    },
    StepProgress {
        run: i64,
        step: &'a str,
        done: u64,
        total: u64,
        bytes_done: u64,
        bytes_total: u64,
        message: &'a str,
    },
    StepFinished {
        run: i64,
        stage: &'a str,
        step: &'a str,
        state: StepState,
        detail: &'a str,
        index: usize,
        total: usize,
    },
    RunFinished {
        run: i64,
        kind: RunKind,
        state: RunState,
        message: &'a str,
    },
}

pub trait Observer: Send + Sync {
    fn event(&self, event: &Event<'_>);
}

/// Observes nothing.
pub struct Silent;

impl Observer for Silent {
    fn event(&self, _: &Event<'_>) {}
}
