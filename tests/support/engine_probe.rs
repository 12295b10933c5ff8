//! A test plan of seven steps with side effects under `root`, run by the real engine in its own
//! process so that failpoints can kill it. Used by `tests/engine.rs`.
//!
//! Usage: `engine-probe CONFIG start|resume|boot-resume|status`

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use async_trait::async_trait;
use recoveryd::config::{Config, ConfigSource};
use recoveryd::engine::{
    Engine, Outcome, Plan, RunOptions, Step, StepContext, Trigger, Var, observer::Silent,
};
use recoveryd::journal::{Journal, RunKind};
use tokio_util::sync::CancellationToken;

/// Passed from `derive` to `summary` through the journal.
const DERIVED_LEN: Var<i64> = Var::new("derived-len");

struct Probe {
    name: &'static str,
    stage: &'static str,
    barrier: bool,
    action: fn(&StepContext, &PathBuf) -> Result<Outcome>,
}

#[async_trait]
impl Step for Probe {
    fn name(&self) -> &'static str {
        self.name
    }
    fn stage(&self) -> &'static str {
        self.stage
    }
    fn describe(&self) -> String {
        format!("probe step {}", self.name)
    }
    fn reboot_barrier(&self) -> bool {
        self.barrier
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let work = cx.config.host_path("/srv/probe");
        (self.action)(cx, &work)
    }
}

fn done(s: &str) -> Result<Outcome> {
    Ok(Outcome::Done(s.to_string()))
}

fn plan(with_barrier: bool) -> Plan {
    let mut p = Plan::new(RunKind::Recovery);
    let steps: Vec<Probe> = vec![
        Probe {
            name: "make-dir",
            stage: "one",
            barrier: false,
            action: |_, w| {
                std::fs::create_dir_all(w.join("out"))?;
                done("made out/")
            },
        },
        Probe {
            name: "write-seed",
            stage: "one",
            barrier: false,
            action: |_, w| {
                std::fs::write(w.join("out/seed"), b"seed")?;
                done("wrote seed")
            },
        },
        Probe {
            name: "derive",
            stage: "two",
            barrier: false,
            action: |cx, w| {
                let seed = std::fs::read(w.join("out/seed")).context("seed")?;
                let mut d = seed.clone();
                d.extend_from_slice(b"+derived");
                std::fs::write(w.join("out/derived.tmp"), &d)?;
                cx.set(&DERIVED_LEN, &(d.len() as i64))?;
                done("derived")
            },
        },
        Probe {
            name: "rename",
            stage: "two",
            barrier: false,
            action: |_, w| {
                let (from, to) = (w.join("out/derived.tmp"), w.join("out/derived"));
                if from.exists() {
                    std::fs::rename(&from, &to)?;
                }
                anyhow::ensure!(to.exists(), "derived is missing");
                done("renamed")
            },
        },
        Probe {
            name: "many",
            stage: "three",
            barrier: false,
            action: |cx, w| {
                for i in 0..5 {
                    std::fs::write(w.join(format!("out/n{i}")), i.to_string())?;
                    cx.checkpoint()?;
                }
                done("wrote 5 files")
            },
        },
        Probe {
            name: "remove-seed",
            stage: "three",
            barrier: false,
            action: |_, w| match std::fs::remove_file(w.join("out/seed")) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => done("removed seed"),
            },
        },
        Probe {
            name: "summary",
            stage: "four",
            barrier: false,
            action: |cx, w| {
                let len = cx.get(&DERIVED_LEN)?.context("derived-len not set")?;
                let mut names: Vec<_> = std::fs::read_dir(w.join("out"))?
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                std::fs::write(w.join("summary"), format!("{len} {}", names.join(",")))?;
                done("summary written")
            },
        },
    ];
    for (i, s) in steps.into_iter().enumerate() {
        p.steps.push(Arc::new(s));
        if with_barrier && i == 3 {
            p.steps.push(Arc::new(Probe {
                name: "reboot",
                stage: "reboot",
                barrier: true,
                action: |_, w| {
                    let n = std::fs::read_to_string(w.join("reboots"))
                        .unwrap_or_default()
                        .len();
                    std::fs::write(w.join("reboots"), "r".repeat(n + 1))?;
                    Ok(Outcome::AwaitReboot("reboot requested".into()))
                },
            }));
        }
    }
    p
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let config = Arc::new(Config::load(&ConfigSource::File(PathBuf::from(&args[1])))?);
    let with_barrier = std::env::var_os("PROBE_BARRIER").is_some();
    let state = config.state_path();
    std::fs::create_dir_all(&state)?;
    let journal = Arc::new(Journal::open(&state.join("journal.db"))?);
    let engine = Engine::new(config, journal.clone(), Arc::new(Silent))?;
    let plan = plan(with_barrier);
    let prepared = match args[2].as_str() {
        "start" => engine.prepare_new(plan, RunOptions::default())?,
        "start-step" => engine.prepare_new(
            plan,
            RunOptions {
                step: true,
                ..Default::default()
            },
        )?,
        "resume" | "boot-resume" => {
            let run = journal.latest_run(RunKind::Recovery)?.context("no run")?.id;
            let trigger = if args[2] == "boot-resume" {
                Trigger::Boot
            } else {
                Trigger::Operator
            };
            engine.prepare_resume(run, plan, trigger, None)?
        }
        other => anyhow::bail!("unknown command {other}"),
    };
    let report = engine.execute(prepared, CancellationToken::new()).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
