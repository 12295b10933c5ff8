//! `recoveryctl`: the command line. The binary in `src/bin/recoveryctl.rs` only calls [`main`].

pub mod console;
mod inspect;
pub mod offline;
pub mod remote;
pub mod render;
mod start;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigSource};
use crate::journal::Journal;
use start::{remote_start, resume_offline};

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

    use crate::engine::EngineError;
    use crate::journal::RunState;

    /// The code for a run's state when this invocation ends.
    pub fn for_state(state: RunState) -> u8 {
        match state {
            RunState::Succeeded
            | RunState::Paused
            | RunState::AwaitingReboot
            | RunState::Running => OK,
            RunState::Timeout => TIMEOUT,
            RunState::Failed | RunState::Cancelled => FAILED,
        }
    }

    /// The code for a state named by the daemon (D-Bus property, socket line).
    pub fn for_state_name(state: &str) -> u8 {
        state.parse().map(for_state).unwrap_or(FAILED)
    }

    /// The code for an error the daemon named (D-Bus error name, socket `error.name`).
    pub fn for_error_name(name: Option<&str>) -> u8 {
        match name {
            Some("org.recoveryd.Recovery1.Error.Busy") => BUSY,
            Some("org.recoveryd.Recovery1.Error.Corrupted") => CORRUPTED,
            _ => ERROR,
        }
    }

    /// The code for an error of a run started in this process: the same as the daemon's.
    pub fn for_error(e: &anyhow::Error) -> u8 {
        match e.downcast_ref::<EngineError>() {
            Some(EngineError::Busy(_) | EngineError::RecoveryOpen { .. }) => BUSY,
            _ if crate::files::is_corruption(e) => CORRUPTED,
            _ => ERROR,
        }
    }
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
        /// Skip the deployment check: recover onto the booted deployment instead of the one the
        /// backup was taken on (what upgrade-recovery.sh's --force does).
        #[arg(long)]
        force: bool,
        /// Accept a generation taken on another node or cluster.
        #[arg(long)]
        allow_foreign: bool,
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
    Ok(Arc::new(Journal::open_existing(&config.journal_path())?))
}

/// The journal for a command that can do without it (its record of manifest hashes makes
/// checks stronger). A journal that exists but cannot be read is said, not passed over.
fn journal_if_present(config: &Config) -> Option<Journal> {
    match Journal::open_existing(&config.journal_path()) {
        Ok(j) => Some(j),
        Err(crate::journal::JournalError::Missing(_)) => None,
        Err(e) => {
            eprintln!("recoveryctl: warning: going on without the journal: {e}");
            None
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init("recoveryctl", "warn");
    crate::files::walk::raise_open_file_limit();
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("recoveryctl: {e:#}");
            ExitCode::from(exit::for_error(&e))
        }
    }
}

fn exit_for(report: &crate::engine::Report) -> u8 {
    exit::for_state(report.state)
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

/// The generation a restore or recovery will use, with its manifest checked before any run
/// exists: a damaged or tampered manifest is refused here (exit 6), and nothing changes.
fn checked_generation(
    config: &Config,
    store: &crate::files::store::Store,
    id: &Option<String>,
) -> Result<crate::files::store::Generation> {
    let g = pick_generation(store, id)?;
    let journal = journal_if_present(config);
    crate::plans::restore::trusted_manifest(&g, journal.as_ref())?;
    Ok(g)
}

fn dispatch(cli: Cli) -> Result<u8> {
    let config = load_config(&cli.config)?;
    match cli.command {
        Command::Status if !cli.offline => inspect::status(&cli, &config),
        Command::Status => inspect::local_status(&config, cli.json),
        Command::Journal { run, limit } => inspect::journal(&cli, &config, run, limit),
        Command::Backup { wait } if !cli.offline => remote_start(&cli, remote::Start::Backup, wait),
        Command::Backup { .. } => start::new_offline(cli.json, config, |plans| {
            Ok((crate::plans::backup_plan(plans), serde_json::json!({})))
        }),
        Command::RestoreFiles { ref generation } => start::new_offline(cli.json, config, |plans| {
            let g = checked_generation(&plans.config, &plans.store, generation)?;
            let options = serde_json::json!({"plan": "restore-files", "generation": g.info.id});
            Ok((crate::plans::restore_files_plan(plans), options))
        }),
        Command::Verify { ref generation } => inspect::verify(&cli, &config, generation),
        Command::Diff { ref generation } => inspect::diff(&cli, &config, generation),
        Command::Recover {
            force,
            allow_foreign,
            step,
            dry_run: true,
            ref generation,
        } => inspect::recovery_dry_run(&cli, &config, force, allow_foreign, step, generation),
        Command::Recover {
            force,
            allow_foreign,
            step,
            dry_run: false,
            ref generation,
        } if !cli.offline => remote_start(
            &cli,
            remote::Start::Recover {
                force,
                allow_foreign,
                step,
                generation: generation.clone(),
            },
            true,
        ),
        Command::Recover {
            force,
            allow_foreign,
            step,
            dry_run: false,
            ref generation,
        } => start::new_offline(cli.json, config, |plans| {
            let g = checked_generation(&plans.config, &plans.store, generation)?;
            if !force && let Some(j) = journal_if_present(&plans.config) {
                crate::plans::check::journal_readable_after_rollback(&g.info, &j)?;
            }
            let options = serde_json::json!({"plan": "recover", "force": force, "allow_foreign": allow_foreign, "step": step, "generation": g.info.id});
            Ok((crate::plans::recovery_plan(plans), options))
        }),
        Command::Resume { boot, step: false } if !cli.offline => {
            remote_start(&cli, remote::Start::Resume { boot }, !boot).map_err(|e| {
                if boot {
                    // Not resumed here: this runs in recoveryd-resume.service, which kubelet
                    // waits for, and the recovery starts kubelet itself. The unit's failure
                    // starts recoveryd-resume-offline.service, which resumes without the daemon.
                    e.context("the boot resume is left to recoveryd-resume-offline.service")
                } else {
                    e
                }
            })
        }
        Command::Resume { step: true, .. } if !cli.offline => {
            anyhow::bail!("resume --step runs one stage in this process: add --offline")
        }
        Command::Resume { boot, step } => resume_offline(config, cli.json, boot, step),
        Command::Restart { step: true } if !cli.offline => {
            anyhow::bail!("restart --step runs one stage in this process: add --offline")
        }
        Command::Restart { .. } if !cli.offline => remote_start(&cli, remote::Start::Restart, true),
        Command::Cancel if !cli.offline => start::cancel_remote(&cli),
        Command::Restart { step } => start::restart_offline(&cli, config, step),
        Command::Cancel => start::cancel_offline(config),
        Command::Generations => inspect::generations(&cli, &config),
    }
}
