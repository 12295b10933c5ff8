//! `recoveryctl`: the command line. The binary in `src/bin/recoveryctl.rs` only calls [`main`].

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

fn dispatch(cli: Cli) -> Result<u8> {
    let config = load_config(&cli.config)?;
    match cli.command {
        Command::Status => {
            let journal = match open_journal(&config) {
                Ok(j) => j,
                Err(e)
                    if e.downcast_ref::<crate::journal::JournalError>()
                        .is_some_and(|e| matches!(e, crate::journal::JournalError::Missing(_))) =>
                {
                    if cli.json {
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
            if cli.json {
                print_json(&status)?;
            } else {
                print!("{}", status.human());
            }
            Ok(exit::OK)
        }
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
    }
}
