//! A plan: an ordered list of steps, and what to do when a run of it ends badly.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::step::{Step, StepContext};
use crate::journal::{RunKind, RunState};

/// Called once when a run ends in failure, timeout or cancellation (e.g. remove a partial
/// generation). Must be idempotent and must not fail the run a second time. It is journaled as
/// a `cleanup` attempt of its own; the text it returns is that attempt's detail.
#[async_trait]
pub trait Cleanup: Send + Sync {
    async fn cleanup(&self, cx: &StepContext, state: RunState) -> anyhow::Result<String>;
}

/// The name and stage under which a run's cleanup is journaled.
pub(crate) const CLEANUP: &str = "cleanup";

/// Called when a run starts or resumes, before its first step (e.g. repair what a crash in the
/// previous process left behind). An error fails the run.
#[async_trait]
pub trait Prologue: Send + Sync {
    async fn prologue(&self, cx: &StepContext) -> anyhow::Result<()>;
}

#[derive(Clone)]
pub struct Plan {
    pub kind: RunKind,
    pub steps: Vec<Arc<dyn Step>>,
    /// The whole run must finish within this time, or it ends in `timeout`.
    pub deadline: Option<Duration>,
    pub cleanup: Option<Arc<dyn Cleanup>>,
    pub prologue: Option<Arc<dyn Prologue>>,
}

impl Plan {
    pub fn new(kind: RunKind) -> Plan {
        Plan {
            kind,
            steps: Vec::new(),
            deadline: None,
            cleanup: None,
            prologue: None,
        }
    }

    pub fn step(mut self, step: impl Step + 'static) -> Plan {
        self.steps.push(Arc::new(step));
        self
    }

    /// `(stage, name)` of each step, as recorded with the run.
    pub(crate) fn outline(&self) -> Vec<(String, String)> {
        self.steps
            .iter()
            .map(|s| (s.stage().to_string(), s.name().to_string()))
            .collect()
    }

    pub(crate) fn step_names(&self) -> Vec<&'static str> {
        self.steps.iter().map(|s| s.name()).collect()
    }
}
