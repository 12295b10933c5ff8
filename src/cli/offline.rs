//! `--offline`: run the engine in this process (rescue shells, the boot unit without the daemon,
//! tests). Takes the same single-writer lock as the daemon.

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::{Engine, Observer, Plan, Report};
use crate::journal::Journal;
use crate::plans::PlanContext;

pub struct Offline {
    pub config: Arc<Config>,
    pub journal: Arc<Journal>,
    pub plans: Arc<PlanContext>,
}

impl Offline {
    pub fn open(config: Config) -> Result<Offline> {
        let state = config.state_path();
        anyhow::ensure!(
            state.is_dir(),
            "the state directory {} does not exist; create it (on a node: mount the recovery partition there)",
            state.display()
        );
        let journal = Arc::new(Journal::open(&config.journal_path())?);
        let config = Arc::new(config);
        let plans = PlanContext::new(config.clone());
        config.check_step_names(&crate::plans::known_step_names(&plans))?;
        Ok(Offline {
            config,
            journal,
            plans,
        })
    }

    pub fn engine(&self, observer: Arc<dyn Observer>) -> Result<Engine> {
        Engine::new(self.config.clone(), self.journal.clone(), observer)
    }

    /// Start a new run of `plan` and run it to its end (or pause, or reboot).
    pub async fn run_new(
        &self,
        plan: Plan,
        options: serde_json::Value,
        observer: Arc<dyn Observer>,
    ) -> Result<Report> {
        let engine = self.engine(observer)?;
        let prepared = engine.prepare_new(plan, options)?;
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let ctrl_c = tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("recoveryctl: interrupted, cancelling the run");
                c.cancel();
            }
        });
        let r = engine
            .execute(prepared, cancel)
            .await
            .context("running the plan");
        ctrl_c.abort();
        r
    }
}
