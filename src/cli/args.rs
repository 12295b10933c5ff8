//! The command line, as clap parses it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "recoveryctl",
    version = crate::cli::version(),
    about = "Back up a node and recover it after a failed upgrade",
    after_help = crate::cli::exit::help()
)]
pub(crate) struct Cli {
    /// Say more: -v logs what each step does, -vv everything (RECOVERYD_LOG overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Say less: no progress, no warnings; errors and the result only (`diff`: nothing, the
    /// exit code says).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Use this configuration file instead of /etc/recoveryd/config.toml and its drop-ins.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print machine-readable JSON (one document, with a `schema` field; errors too).
    #[arg(long, global = true)]
    pub json: bool,
    /// Run the engine in this process instead of asking the daemon (rescue shells, tests).
    #[arg(long, global = true, conflicts_with = "socket")]
    pub offline: bool,
    /// Also write the result, as one JSON document, into this file (the backup Job's
    /// terminationMessagePath, so that `oc get pod -o yaml` and the hub see it).
    #[arg(long, global = true, value_name = "FILE")]
    pub result_file: Option<PathBuf>,
    /// Talk to the daemon over this Unix socket instead of D-Bus (the backup Job's way).
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    /// Show what restoring a generation would change: on the live node, or (with a second
    /// generation) on a node that holds the first. Exit 0: nothing; 1: differences; 2: trouble.
    Diff {
        /// The generation restored (default: the newest); with OTHER, the one the node holds.
        generation: Option<String>,
        /// The generation restored onto a node that holds GENERATION.
        other: Option<String>,
    },
    /// Restore the trees and machine-config files from a generation (nothing else), in place
    /// or into another directory, all of them or some paths.
    RestoreFiles {
        generation: Option<String>,
        /// Restore into this directory instead of the node (the trees appear under it; the
        /// node is not touched and no run is recorded).
        #[arg(long, value_name = "DIR")]
        target: Option<PathBuf>,
        /// Only this node path (a directory and what is under it, or one file); repeatable.
        #[arg(long = "path", value_name = "PATH")]
        paths: Vec<String>,
        /// Show what the restore would do; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation on a terminal.
        #[arg(long, short)]
        yes: bool,
    },
    /// List the committed generations, or protect, label or delete one.
    Generations {
        #[command(subcommand)]
        action: Option<GenerationsAction>,
    },
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
        /// Do not ask for confirmation on a terminal.
        #[arg(long, short)]
        yes: bool,
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
    /// Check the whole store: every generation's manifest and objects, and orphaned objects.
    Check {
        /// Re-hash every object (reads all the content), not only check that it is there.
        #[arg(long)]
        read_data: bool,
    },
    /// Remove the objects no generation refers to.
    Gc,
    /// Print a shell completion script (bash, zsh, fish).
    Completion { shell: clap_complete::Shell },
    /// Write the man pages and completion files (what packaging runs).
    #[command(hide = true)]
    GenerateDocs {
        #[arg(long, value_name = "DIR")]
        man_dir: PathBuf,
        #[arg(long, value_name = "DIR")]
        completions_dir: PathBuf,
    },
}

/// A generation is named by `latest`, its id, or a unique prefix of its id or short id.
#[derive(Debug, Subcommand)]
pub(crate) enum GenerationsAction {
    /// List them, newest first (the default).
    List,
    /// Keep a generation whatever `[backup] keep` says, and refuse to delete it.
    Protect { generation: String },
    /// Let retention remove a generation again.
    Unprotect { generation: String },
    /// Give a generation a label (an empty text removes it).
    Label { generation: String, text: String },
    /// Delete a generation and the content only it refers to.
    Delete {
        generation: String,
        /// Also a protected generation, or the newest.
        #[arg(long)]
        force: bool,
    },
}
