//! The operations every front end offers, decided once: which generation, which run to resume,
//! restart or cancel, typed run options, status, verify, diff, the dry run. The daemon calls
//! them behind its single-run slot; `recoveryctl --offline` calls them in-process. Neither
//! re-derives a decision.

mod aftermath;
mod generations;
mod inspect;
mod metrics;
mod runs;
mod status;

pub(crate) use generations::Mark;
pub(crate) use runs::{NewRun, Resume};
pub(crate) use status::state_word;

use std::sync::Arc;

use anyhow::Result;

use crate::config::Config;
use crate::engine::{Engine, Observer};
use crate::files::stats_cache::StatsCache;
use crate::journal::Journal;
use crate::plans::PlanContext;

/// What the operations work with: the configuration, the journal, the plans.
#[derive(Clone)]
pub(crate) struct Ops {
    pub config: Arc<Config>,
    pub journal: Arc<Journal>,
    pub plans: Arc<PlanContext>,
    /// The store's figures between status requests (see [`StatsCache`]).
    pub store_stats: Arc<StatsCache>,
}

impl Ops {
    /// Open the journal (creating and migrating it) and the plans for a state directory that
    /// exists; the step names configured in `[steps.NAME]` are checked.
    pub fn open(config: Config) -> Result<Ops> {
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
        Ok(Ops {
            config,
            journal,
            plans,
            store_stats: Arc::default(),
        })
    }

    /// For the read-only commands (verify, diff, the dry run, generations): the journal if
    /// there is one, else an empty one in memory, so that nothing is created. A journal that
    /// exists but cannot be read is said, not passed over.
    pub(crate) fn open_read_only(config: Config) -> Result<Ops> {
        let journal = match Journal::open_existing(&config.journal_path()) {
            Ok(j) => j,
            Err(crate::journal::JournalError::Missing(_)) => Journal::in_memory()?,
            Err(e) => {
                eprintln!("recoveryctl: warning: going on without the journal: {e}");
                Journal::in_memory()?
            }
        };
        let config = Arc::new(config);
        let plans = PlanContext::new(config.clone());
        Ok(Ops {
            config,
            journal: Arc::new(journal),
            plans,
            store_stats: Arc::default(),
        })
    }

    pub(crate) fn engine(&self, observer: Arc<dyn Observer>) -> Result<Engine> {
        Engine::new(self.config.clone(), self.journal.clone(), observer)
    }
}
