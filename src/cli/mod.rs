//! `recoveryctl`: the command line. The binary in `src/bin/recoveryctl.rs` only calls [`main`].

pub mod console;
pub mod offline;
pub mod remote;
pub mod render;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigSource};
use crate::journal::Journal;
use crate::status::Status;

/// Exit codes. The backup Job maps them to TALM's states, so they are an interface.
pub mod exit {
    pub const OK: u8 = 0;
    /// Any error not listed below.
    pub const ERROR: u8 = 1;
    /// Bad usage (clap's own code).
    pub const USAGE: u8 = 2;
    /// A backup passed its deadline (TALM `Timeout`).
    pub const TIMEOUT: u8 = 3;
    /// A run ended in failure (TALM `Error`).
    pub const FAILED: u8 = 4;
    /// Another run holds the lock.
    pub const BUSY: u8 = 5;
    /// Verification found problems.
    pub const CORRUPTED: u8 = 6;
}

#[derive(Debug, Parser)]
#[command(
    name = "recoveryctl",
    version,
    about = "Back up a node and recover it after a failed upgrade"
)]
pub struct Cli {
    /// Use this configuration file instead of /etc/recoveryd/config.toml and its drop-ins.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Run the engine in this process instead of asking the daemon (rescue shells, tests).
    #[arg(long, global = true, conflicts_with = "socket")]
    pub offline: bool,
    /// Talk to the daemon over this Unix socket instead of D-Bus (the backup Job's way).
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what recoveryd is doing and the generations it holds.
    Status,
    /// Show the journal: recent runs, or every step attempt of one run.
    Journal {
        /// Show this run's steps.
        #[arg(long)]
        run: Option<i64>,
        /// How many runs to list.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Take a backup: a new verified generation of the node's files.
    Backup {
        /// Wait for the backup to finish (always the case with --offline).
        #[arg(long)]
        wait: bool,
    },
    /// Re-hash a generation against its manifest (default: the newest).
    Verify { generation: Option<String> },
    /// Show what a restore of a generation would change in the live trees.
    Diff { generation: Option<String> },
    /// Restore the trees and machine-config files from a generation (nothing else).
    RestoreFiles { generation: Option<String> },
    /// List the committed generations.
    Generations,
    /// Recover the node from a generation: check, restore files, reboot, restore the cluster.
    Recover {
        /// Skip the deployment check, and accept a generation from another node.
        #[arg(long)]
        force: bool,
        /// Run one stage, then stop.
        #[arg(long)]
        step: bool,
        /// Print every stage and step and what it would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// The generation to recover from (default: the newest).
        #[arg(long)]
        generation: Option<String>,
    },
    /// Continue the open recovery after its last completed step.
    Resume {
        /// Run by the boot unit: exit 0 when there is nothing to resume, and count toward the
        /// boot-loop breaker.
        #[arg(long)]
        boot: bool,
        /// Run one stage, then stop.
        #[arg(long)]
        step: bool,
    },
    /// Start the open recovery over from its first step.
    Restart {
        /// Run one stage, then stop.
        #[arg(long)]
        step: bool,
    },
    /// Cancel the open recovery (or the running run).
    Cancel,
}

pub fn load_config(path: &Option<PathBuf>) -> Result<Config> {
    let source = match path {
        Some(p) => ConfigSource::File(p.clone()),
        None => ConfigSource::default(),
    };
    Ok(Config::load(&source)?)
}

fn open_journal(config: &Config) -> Result<Arc<Journal>> {
    let path = config.state_path().join("journal.db");
    Ok(Arc::new(Journal::open_existing(&path)?))
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init("recoveryctl", "warn");
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("recoveryctl: {e:#}");
            let code = match e.downcast_ref::<crate::engine::EngineError>() {
                Some(crate::engine::EngineError::Busy(_)) => exit::BUSY,
                _ => exit::ERROR,
            };
            ExitCode::from(code)
        }
    }
}

fn exit_for(report: &crate::engine::Report) -> u8 {
    use crate::journal::RunState;
    match report.state {
        RunState::Succeeded | RunState::Paused | RunState::AwaitingReboot | RunState::Running => {
            exit::OK
        }
        RunState::Timeout => exit::TIMEOUT,
        RunState::Failed | RunState::Cancelled => exit::FAILED,
    }
}

fn print_report(json: bool, report: &crate::engine::Report) -> Result<()> {
    if json {
        print_json(report)
    } else {
        println!(
            "{} run {} {}: {}",
            report.kind, report.run, report.state, report.message
        );
        Ok(())
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn pick_generation(
    store: &crate::files::store::Store,
    id: &Option<String>,
) -> Result<crate::files::store::Generation> {
    match id {
        Some(id) => store.open(id),
        None => store
            .latest()?
            .context("there is no committed generation; take a backup first"),
    }
}

/// `status` from the journal, without the daemon.
fn local_status(config: &Config, json: bool) -> Result<u8> {
    let journal = match open_journal(config) {
        Ok(j) => j,
        Err(e)
            if e.downcast_ref::<crate::journal::JournalError>()
                .is_some_and(|e| matches!(e, crate::journal::JournalError::Missing(_))) =>
        {
            if json {
                print_json(
                    &serde_json::json!({"state": "idle", "current_run": null, "generations": []}),
                )?;
            } else {
                println!(
                    "state: idle (no journal yet at {})",
                    config.state_path().join("journal.db").display()
                );
            }
            return Ok(exit::OK);
        }
        Err(e) => return Err(e),
    };
    let status = Status::read(&journal)?;
    if json {
        print_json(&status)?;
    } else {
        print!("{}", status.human());
    }
    Ok(exit::OK)
}

/// The daemon's status JSON for a person.
fn print_remote_status(v: &serde_json::Value) {
    println!("state: {}", v["state"].as_str().unwrap_or("unknown"));
    if let Some(step) = v["current_step"].as_str() {
        println!("step: {step} ({}% of the run)", v["progress"]);
    }
    let run = |label: &str, r: &serde_json::Value| {
        if r.is_object() {
            println!(
                "{label}: run {} {} {} ({}), {}/{} steps, started {}",
                r["id"],
                r["kind"].as_str().unwrap_or(""),
                r["state"].as_str().unwrap_or(""),
                r["phase"].as_str().unwrap_or(""),
                r["steps_done"],
                r["steps_total"],
                r["started"].as_str().unwrap_or("")
            );
            if let Some(e) = r["error"].as_str() {
                println!("    error: {e}");
            }
        }
    };
    run("current", &v["current_run"]);
    run("last backup", &v["last_backup"]);
    run("last recovery", &v["last_recovery"]);
    match v["generations"].as_array() {
        Some(g) if !g.is_empty() => {
            println!("generations:");
            for g in g {
                println!(
                    "  {}  committed {}  {} entries",
                    g["id"].as_str().unwrap_or(""),
                    g["committed"].as_str().unwrap_or(""),
                    g["entries"]
                );
            }
        }
        _ => println!("generations: none"),
    }
}

/// How a mutating command reaches the engine.
enum Transport {
    Offline,
    Socket(PathBuf),
    Bus,
}

fn transport(cli: &Cli) -> Transport {
    match (&cli.socket, cli.offline) {
        (_, true) => Transport::Offline,
        (Some(p), false) => Transport::Socket(p.clone()),
        (None, false) => Transport::Bus,
    }
}

/// Start a run through the daemon (socket or D-Bus) and follow it.
fn remote_start(cli: &Cli, start: remote::Start, wait: bool) -> Result<u8> {
    let console = console::Console::new(cli.json);
    let rt = runtime()?;
    match transport(cli) {
        Transport::Socket(path) => {
            let request = match &start {
                remote::Start::Backup => serde_json::json!({"op": "backup", "wait": wait}),
                remote::Start::Recover {
                    force,
                    step,
                    generation,
                } => serde_json::json!({
                    "op": "recover", "force": force, "step": step, "generation": generation, "wait": wait}),
                remote::Start::Resume { boot } => {
                    serde_json::json!({"op": "resume", "boot": boot, "wait": wait})
                }
                remote::Start::Restart => serde_json::json!({"op": "restart", "wait": wait}),
            };
            let result = rt.block_on(remote::socket_request(&path, request, cli.json, &console))?;
            if cli.json {
                println!("{result}");
            } else if let Some(err) = result.get("error") {
                eprintln!(
                    "recoveryctl: {}",
                    err["message"].as_str().unwrap_or("error")
                );
            } else if let Some(m) = result.get("message").and_then(|m| m.as_str()) {
                console.say(&format!(
                    "run {} {}: {m}",
                    result["run"],
                    result["state"].as_str().unwrap_or("")
                ));
            } else {
                console.say(&format!(
                    "run {} {}",
                    result["run"],
                    result["state"].as_str().unwrap_or("")
                ));
            }
            Ok(remote::socket_exit(&result))
        }
        Transport::Bus => rt.block_on(remote::dbus_start(start, wait, cli.json, &console)),
        Transport::Offline => unreachable!("offline runs are handled by the caller"),
    }
}

/// Continue the open recovery in this process.
fn resume_offline(config: Config, json: bool, boot: bool, step: bool) -> Result<u8> {
    let off = offline::Offline::open(config)?;
    let Some(run) = off.journal.open_run(crate::journal::RunKind::Recovery)? else {
        if boot {
            tracing::info!("no interrupted recovery to resume");
            if !json {
                println!("nothing to resume");
            }
            return Ok(exit::OK);
        }
        anyhow::bail!("there is no open recovery to resume");
    };
    if boot
        && matches!(
            run.state,
            crate::journal::RunState::Paused | crate::journal::RunState::Failed
        )
    {
        let msg = format!(
            "recovery run {} is {}; an operator continues it with `recoveryctl resume`",
            run.id, run.state
        );
        tracing::warn!(recovery_run = run.id, "{msg}");
        println!("{msg}");
        return Ok(exit::OK);
    }
    let console = Arc::new(console::Console::new(json));
    let plan = crate::plans::plan_for(run.kind, &run.options, &off.plans);
    let trigger = if boot {
        crate::engine::Trigger::Boot
    } else {
        crate::engine::Trigger::Operator
    };
    let engine = off.engine(console)?;
    // An operator's resume runs to the end unless --step; the boot unit keeps the run's mode.
    let one_stage = if boot { None } else { Some(step) };
    let prepared = engine.prepare_resume(run.id, plan, trigger, one_stage)?;
    let report = runtime()?
        .block_on(engine.execute(prepared, tokio_util::sync::CancellationToken::new()))?;
    print_report(json, &report)?;
    Ok(exit_for(&report))
}

fn dispatch(cli: Cli) -> Result<u8> {
    let config = load_config(&cli.config)?;
    match cli.command {
        Command::Status if !cli.offline => {
            let rt = runtime()?;
            let remote = match &cli.socket {
                Some(path) => {
                    let console = console::Console::new(true);
                    rt.block_on(remote::socket_request(
                        path,
                        serde_json::json!({"op": "status"}),
                        true,
                        &console,
                    ))
                }
                None => rt.block_on(remote::dbus_status()),
            };
            match remote {
                Ok(v) => {
                    if cli.json {
                        print_json(&v)?;
                    } else {
                        print_remote_status(&v);
                    }
                    return Ok(exit::OK);
                }
                Err(e) => {
                    eprintln!(
                        "recoveryctl: the daemon does not answer ({e:#}); reading the journal directly"
                    );
                }
            }
            local_status(&config, cli.json)
        }
        Command::Status => local_status(&config, cli.json),
        Command::Journal { run, limit } => {
            let journal = open_journal(&config)?;
            match run {
                Some(id) => {
                    let r = journal
                        .run(id)?
                        .with_context(|| format!("no run {id} in the journal"))?;
                    let steps = journal.steps(id)?;
                    if cli.json {
                        print_json(
                            &serde_json::json!({"run": r, "steps": steps, "vars": journal.vars(id)?}),
                        )?;
                    } else {
                        print!("{}", render::run_detail(&r, &steps));
                    }
                }
                None => {
                    let runs = journal.runs(limit)?;
                    if cli.json {
                        print_json(&runs)?;
                    } else if runs.is_empty() {
                        println!("no runs yet");
                    } else {
                        for r in &runs {
                            println!("{}", render::run_line(r));
                        }
                    }
                }
            }
            Ok(exit::OK)
        }
        Command::Backup { wait } if !cli.offline => remote_start(&cli, remote::Start::Backup, wait),
        Command::Backup { .. } => {
            let off = offline::Offline::open(config)?;
            let console = Arc::new(console::Console::new(cli.json));
            let plan = crate::plans::backup_plan(&off.plans);
            let report = runtime()?.block_on(off.run_new(plan, serde_json::json!({}), console))?;
            print_report(cli.json, &report)?;
            Ok(exit_for(&report))
        }
        Command::RestoreFiles { generation } => {
            let off = offline::Offline::open(config)?;
            let console = Arc::new(console::Console::new(cli.json));
            let g = pick_generation(&off.plans.store, &generation)?;
            let plan = crate::plans::restore_files_plan(&off.plans);
            let options = serde_json::json!({"plan": "restore-files", "generation": g.info.id});
            let report = runtime()?.block_on(off.run_new(plan, options, console))?;
            print_report(cli.json, &report)?;
            Ok(exit_for(&report))
        }
        Command::Verify { generation } => {
            let store = crate::files::store::Store::new(&config.state_path());
            let g = pick_generation(&store, &generation)?;
            let journal = Journal::open_existing(&config.state_path().join("journal.db")).ok();
            let jh = journal
                .as_ref()
                .and_then(|j| crate::plans::PlanContext::journal_hash(j, &g.info.id));
            let r = crate::files::verify::verify(
                &g,
                jh.as_deref(),
                None,
                config.backup.workers,
                &crate::files::backup::Hooks::none(),
            )?;
            if cli.json {
                print_json(&r)?;
            } else {
                println!("{}", r.summary());
            }
            Ok(if r.ok { exit::OK } else { exit::CORRUPTED })
        }
        Command::Diff { generation } => {
            let store = crate::files::store::Store::new(&config.state_path());
            let g = pick_generation(&store, &generation)?;
            let journal = Journal::open_existing(&config.state_path().join("journal.db")).ok();
            let m = crate::plans::restore::trusted_manifest(&g, journal.as_ref())?;
            let trees: Vec<String> = m.header.trees.iter().map(|t| t.path.clone()).collect();
            let sel = crate::files::restore::Selection {
                trees: &trees,
                extras: true,
            };
            let r = crate::files::restore::diff(
                &config.root,
                &g,
                &m,
                &sel,
                &crate::files::backup::Hooks::none(),
            )?;
            if cli.json {
                print_json(
                    &serde_json::json!({"generation": g.info.id, "changes": r.changes, "mounts_left": r.mounts_left, "notes": r.notes}),
                )?;
            } else {
                for c in &r.changes {
                    let kind = format!("{:?}", c.change).to_lowercase();
                    if c.detail.is_empty() {
                        println!("{kind:<9} {}", c.path);
                    } else {
                        println!("{kind:<9} {}  ({})", c.path, c.detail);
                    }
                }
                eprintln!(
                    "generation {}: {}",
                    g.info.id,
                    crate::plans::restore::summarize(&r)
                );
            }
            Ok(exit::OK)
        }
        Command::Recover {
            force,
            step,
            dry_run: true,
            generation,
        } => {
            let plans = crate::plans::PlanContext::new(Arc::new(config.clone()));
            let g = pick_generation(&plans.store, &generation)?;
            let journal = Journal::open_existing(&config.state_path().join("journal.db"))
                .ok()
                .map(Arc::new);
            let options = serde_json::json!({"plan": "recover", "force": force, "step": step, "generation": g.info.id});
            let plan = crate::plans::recovery_plan(&plans);
            let pc = crate::engine::PreviewContext {
                config: plans.config.clone(),
                journal,
                options,
            };
            let lines = runtime()?.block_on(async {
                let mut out = Vec::new();
                let mut stage = "";
                for (i, s) in plan.steps.iter().enumerate() {
                    if s.stage() != stage {
                        stage = s.stage();
                        out.push(format!("== stage {stage}"));
                    }
                    let text = s
                        .preview(&pc)
                        .await
                        .unwrap_or_else(|e| format!("{} (preview failed: {e:#})", s.describe()));
                    out.push(format!("  {:>2}. {:<22} {text}", i + 1, s.name()));
                }
                out
            });
            if cli.json {
                print_json(&serde_json::json!({"generation": g.info.id, "plan": lines}))?;
            } else {
                println!(
                    "dry run: recovery from generation {} (nothing is changed)",
                    g.info.id
                );
                for l in lines {
                    println!("{l}");
                }
            }
            Ok(exit::OK)
        }
        Command::Recover {
            force,
            step,
            dry_run: false,
            ref generation,
        } if !cli.offline => remote_start(
            &cli,
            remote::Start::Recover {
                force,
                step,
                generation: generation.clone(),
            },
            true,
        ),
        Command::Recover {
            force,
            step,
            dry_run: false,
            generation,
        } => {
            let off = offline::Offline::open(config)?;
            let console = Arc::new(console::Console::new(cli.json));
            let g = pick_generation(&off.plans.store, &generation)?;
            let options = serde_json::json!({"plan": "recover", "force": force, "step": step, "generation": g.info.id});
            let plan = crate::plans::recovery_plan(&off.plans);
            let report = runtime()?.block_on(off.run_new(plan, options, console))?;
            print_report(cli.json, &report)?;
            Ok(exit_for(&report))
        }
        Command::Resume { boot, step: false } if !cli.offline => {
            let r = remote_start(&cli, remote::Start::Resume { boot }, !boot);
            match r {
                Err(e) if boot => {
                    // At boot, a daemon that cannot start must not leave the node half
                    // recovered: continue in this process.
                    eprintln!(
                        "recoveryctl: the daemon is not reachable ({e:#}); resuming in this process"
                    );
                    resume_offline(config, cli.json, true, false)
                }
                r => r,
            }
        }
        Command::Resume { step: true, .. } if !cli.offline => {
            anyhow::bail!("resume --step runs one stage in this process: add --offline")
        }
        Command::Resume { boot, step } => resume_offline(config, cli.json, boot, step),
        Command::Restart { .. } if !cli.offline => remote_start(&cli, remote::Start::Restart, true),
        Command::Cancel if !cli.offline => match transport(&cli) {
            Transport::Socket(path) => {
                let console = console::Console::new(true);
                let r = runtime()?.block_on(remote::socket_request(
                    &path,
                    serde_json::json!({"op": "cancel"}),
                    cli.json,
                    &console,
                ))?;
                println!("{r}");
                Ok(remote::socket_exit(&r))
            }
            _ => runtime()?.block_on(remote::dbus_cancel()),
        },
        Command::Restart { step } => {
            let off = offline::Offline::open(config)?;
            let run = off
                .journal
                .open_run(crate::journal::RunKind::Recovery)?
                .context("there is no open recovery to restart")?;
            let console = Arc::new(console::Console::new(cli.json));
            let plan = crate::plans::plan_for(run.kind, &run.options, &off.plans);
            let engine = off.engine(console)?;
            let prepared = engine.prepare_restart(run.id, plan, Some(step))?;
            let report = runtime()?
                .block_on(engine.execute(prepared, tokio_util::sync::CancellationToken::new()))?;
            print_report(cli.json, &report)?;
            Ok(exit_for(&report))
        }
        Command::Cancel => {
            let off = offline::Offline::open(config)?;
            let run = off
                .journal
                .open_run(crate::journal::RunKind::Recovery)?
                .context("there is no open recovery to cancel")?;
            let engine = off.engine(Arc::new(crate::engine::observer::Silent))?;
            engine.cancel_idle(run.id)?;
            println!("recovery run {} cancelled", run.id);
            Ok(exit::OK)
        }
        Command::Generations => {
            let store = crate::files::store::Store::new(&config.state_path());
            let journal = Journal::open_existing(&config.state_path().join("journal.db")).ok();
            let gens = store.list()?;
            if cli.json {
                let v: Vec<_> = gens
                    .iter()
                    .map(|g| {
                        let recorded = journal
                            .as_ref()
                            .and_then(|j| j.generation(&g.info.id).ok().flatten())
                            .is_some();
                        serde_json::json!({"info": g.info, "dir": g.dir, "in_journal": recorded})
                    })
                    .collect();
                print_json(&v)?;
            } else if gens.is_empty() {
                println!("no generations in {}", store.dir().display());
            } else {
                for g in gens.iter().rev() {
                    println!(
                        "{}  created {}  {} entries  {}  manifest {}",
                        g.info.id,
                        g.info.created,
                        g.info.entries,
                        render::human_bytes(g.info.bytes),
                        &g.info.manifest_hash[..16]
                    );
                }
            }
            Ok(exit::OK)
        }
    }
}
