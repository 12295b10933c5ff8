//! `recoveryctl`: the command line. Parsing and printing only: the decisions are the
//! operations layer's, the transports are the clients', the words are the protocol's.
//! The binary in `src/bin/recoveryctl.rs` only calls [`main`].

mod args;
mod client;
mod console;
mod docs;
pub(crate) mod exit;
mod inspect;
mod out;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

pub(crate) use args::{Cli, Command, GenerationsAction};
pub(crate) use out::Out;

use crate::config::{Config, ConfigSource};
use crate::protocol::{self, ApiError, RecoverRequest, Reply, Request};
use client::Client;

/// `recoveryctl --version`: the program's version and the journal format it reads.
pub(crate) fn version() -> &'static str {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (journal format 2, protocol schema 1)"
    )
}

pub(crate) fn load_config(path: &Option<std::path::PathBuf>) -> Result<Config> {
    let source = match path {
        Some(p) => ConfigSource::File(p.clone()),
        None => ConfigSource::default(),
    };
    Ok(Config::load(&source)?)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    crate::logging::init("recoveryctl", level);
    crate::files::walk::raise_open_file_limit();
    crate::memory::hand_back_freed_memory();
    let out = Out {
        json: cli.json,
        result_file: cli.result_file.clone(),
    };
    match dispatch(&cli, &out) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = exit::for_error(&e);
            let api = if code == exit::CORRUPTED {
                ApiError::Corrupted(format!("{e:#}"))
            } else if code == exit::BUSY {
                ApiError::Busy(format!("{e:#}"))
            } else {
                ApiError::Failed(format!("{e:#}"))
            };
            out.record(&Reply::Error(api.clone()));
            if cli.json {
                out::stdout(&(protocol::to_pretty(&Reply::Error(api)) + "\n"));
            } else {
                eprintln!("recoveryctl: {e:#}");
            }
            ExitCode::from(code)
        }
    }
}

/// On a terminal, ask before a command that changes the node (`--yes` skips it; scripts,
/// without a terminal or with `--json`, are not asked).
fn confirm(
    cli: &Cli,
    config: &Config,
    yes: bool,
    what: &str,
    generation: &Option<String>,
) -> Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes || cli.json || !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Ok(true);
    }
    let ops = crate::ops::Ops::open_read_only(config.clone())?;
    let g = ops.generation(generation.as_deref())?;
    let label = g
        .marks
        .label
        .as_ref()
        .map(|l| format!(" \"{l}\""))
        .unwrap_or_default();
    eprint!(
        "{what} generation {} ({}{label})? [y/N] ",
        g.info.id,
        g.short_id()
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    let yes = matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes");
    if !yes {
        eprintln!("recoveryctl: not confirmed; nothing changed");
    }
    Ok(yes)
}

/// The transport the global options choose.
fn client(cli: &Cli, config: &Config) -> Box<dyn Client> {
    if cli.offline {
        Box::new(client::Offline {
            config: config.clone(),
        })
    } else if let Some(path) = &cli.socket {
        Box::new(client::Socket::new(path.clone()))
    } else {
        Box::new(client::Dbus)
    }
}

/// Send a request through the chosen transport, show its events, print its reply.
///
/// SIGTERM or SIGINT while a daemon's run is followed (a pod past its deadline, a deleted Job,
/// Ctrl-C) ends only the waiting: the result says so and where the run was, and the run goes
/// on in the daemon under its own deadline. (`--offline` is the run itself: it handles the
/// signals as a cancel, in its client.)
fn request(cli: &Cli, config: &Config, out: &Out, req: Request) -> Result<u8> {
    let console = console::Console::new(cli.json || cli.quiet);
    let last = std::cell::RefCell::new(None::<(i64, String)>);
    let on_event = |e: &protocol::Event| {
        if let Some(run) = e.run() {
            let mut last = last.borrow_mut();
            let step = match e {
                protocol::Event::StepStarted { step, .. } => step.clone(),
                _ => last.as_ref().map(|(_, s)| s.clone()).unwrap_or_default(),
            };
            *last = Some((run, step));
        }
        console.event(e)
    };
    let rt = runtime()?;
    let client = client(cli, config);
    let reply = if cli.offline {
        rt.block_on(client.request(req, &on_event))?
    } else {
        let stopped = rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = client.request(req, &on_event) => r.map(Ok),
                _ = term.recv() => Ok(Err(("SIGTERM", exit::TERMINATED))),
                _ = tokio::signal::ctrl_c() => Ok(Err(("SIGINT", exit::INTERRUPTED))),
            }
        })?;
        match stopped {
            Ok(reply) => reply,
            Err((signal, code)) => {
                let mut message = format!("recoveryctl stopped by {signal} while waiting");
                match &*last.borrow() {
                    Some((run, step)) if !step.is_empty() => message.push_str(&format!(
                        " (run {run}, step {step}); the run goes on in recoveryd: recoveryctl status"
                    )),
                    Some((run, _)) => message.push_str(&format!(
                        " (run {run}); the run goes on in recoveryd: recoveryctl status"
                    )),
                    None => message.push_str("; see recoveryctl status"),
                }
                out.error(&ApiError::Failed(message));
                return Ok(code);
            }
        }
    };
    Ok(out.reply(&reply))
}

fn dispatch(cli: &Cli, out: &Out) -> Result<u8> {
    // Neither needs a configuration.
    match &cli.command {
        Command::Completion { shell } => return docs::completion(*shell),
        Command::GenerateDocs {
            man_dir,
            completions_dir,
        } => return docs::generate(man_dir, completions_dir),
        _ => {}
    }
    let config = load_config(&cli.config)?;
    let offline_only = |what: &str| -> Result<u8> {
        anyhow::bail!("{what} runs one stage in this process: add --offline")
    };
    match &cli.command {
        Command::Status => {
            let reply =
                runtime()?.block_on(client(cli, &config).request(Request::Status {}, &|_| {}));
            let reply = match reply {
                Ok(r) => r,
                // The daemon does not answer: the journal has the same facts.
                Err(e) if !cli.offline => {
                    eprintln!(
                        "recoveryctl: the daemon does not answer ({e:#}); reading the journal directly"
                    );
                    runtime()?.block_on(
                        client::Offline {
                            config: config.clone(),
                        }
                        .request(Request::Status {}, &|_| {}),
                    )?
                }
                Err(e) => return Err(e),
            };
            Ok(out.reply(&reply))
        }
        Command::Journal { run, limit } => inspect::journal(out, &config, *run, *limit),
        Command::Generations { action } => inspect::generations(out, &config, action.as_ref()),
        Command::Verify { generation } => inspect::verify(out, &config, generation),
        Command::Diff { generation, other } => inspect::diff(
            out,
            &config,
            generation.as_deref(),
            other.as_deref(),
            cli.quiet,
        ),
        Command::Backup { wait } => request(
            cli,
            &config,
            out,
            Request::Backup {
                wait: *wait || cli.offline,
            },
        ),
        Command::RestoreFiles {
            generation,
            target,
            paths,
            dry_run,
            yes,
        } => {
            if *dry_run || target.is_some() {
                let ops = crate::ops::Ops::open_read_only(config.clone())?;
                return match ops.restore_elsewhere(
                    generation.as_deref(),
                    paths,
                    target.as_deref(),
                    *dry_run,
                ) {
                    Ok((id, r)) => {
                        let where_ = match target {
                            Some(t) => format!("into {}", t.display()),
                            None => "in place".to_string(),
                        };
                        let doc = crate::protocol::inspect::Diff {
                            generation: id.clone(),
                            from: None,
                            changes: r.changes.clone(),
                            mounts_left: r.mounts_left.clone(),
                            notes: r.notes.clone(),
                        };
                        out.print(&doc, || {
                            format!(
                                "{}generation {id} {where_}: {}\n",
                                if *dry_run { doc.human() } else { String::new() },
                                inspect::summarize(&r, !*dry_run)
                            )
                        });
                        Ok(exit::OK)
                    }
                    Err(e) => Ok(out.error(&e)),
                };
            }
            if !confirm(
                cli,
                &config,
                *yes,
                "Restore the trees and machine-config files of",
                generation,
            )? {
                return Ok(exit::FAILED);
            }
            let off = client::Offline {
                config: config.clone(),
            };
            let console = console::Console::new(cli.json || cli.quiet);
            let reply = runtime()?.block_on(async {
                let ops = crate::ops::Ops::open(config.clone())?;
                let new = ops.restore_files(generation.as_deref(), paths);
                let reply = off.run_new(&ops, new, &|e| console.event(e)).await;
                ops.write_metrics();
                reply
            })?;
            Ok(out.reply(&reply))
        }
        Command::Recover {
            force,
            allow_foreign,
            step,
            dry_run,
            generation,
            yes,
        } => {
            if !*dry_run
                && !confirm(
                    cli,
                    &config,
                    *yes,
                    "Recover the node (stop kubelet and CRI-O, restore files, reboot, restore etcd) from",
                    generation,
                )?
            {
                return Ok(exit::FAILED);
            }
            let r = RecoverRequest {
                force: *force,
                allow_foreign: *allow_foreign,
                step: *step,
                generation: generation.clone(),
            };
            if *dry_run {
                inspect::dry_run(out, &config, &r)
            } else {
                request(cli, &config, out, Request::recover(r, true))
            }
        }
        Command::Resume { step: true, .. } if !cli.offline => offline_only("resume --step"),
        Command::Resume { boot, step } => {
            let req = Request::Resume {
                boot: *boot,
                step: *step,
                wait: !*boot || cli.offline,
            };
            request(cli, &config, out, req).map_err(|e| {
                if *boot && !cli.offline {
                    // Not resumed here: this runs in recoveryd-resume.service, which kubelet
                    // waits for, and the recovery starts kubelet itself. The unit's failure
                    // starts recoveryd-resume-offline.service, which resumes without the daemon.
                    e.context("the boot resume is left to recoveryd-resume-offline.service")
                } else {
                    e
                }
            })
        }
        Command::Restart { step: true } if !cli.offline => offline_only("restart --step"),
        Command::Restart { step } => request(
            cli,
            &config,
            out,
            Request::Restart {
                step: *step,
                wait: true,
            },
        ),
        Command::Cancel => request(cli, &config, out, Request::Cancel {}),
        Command::Check { read_data } => inspect::check(out, &config, *read_data),
        Command::Gc => inspect::gc(out, &config),
        Command::Completion { .. } | Command::GenerateDocs { .. } => unreachable!("handled above"),
    }
}
