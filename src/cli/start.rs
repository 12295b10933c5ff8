//! The commands that start or change a run, through the daemon or in this process.

use std::sync::Arc;

use anyhow::{Context, Result};

use super::{Cli, console, exit, exit_for, offline, print_report, remote, runtime};
use crate::config::Config;
use crate::engine::Plan;
use crate::plans::PlanContext;

/// Start a run through the daemon (socket or D-Bus) and follow it.
pub(super) fn remote_start(cli: &Cli, start: remote::Start, wait: bool) -> Result<u8> {
    let console = console::Console::new(cli.json);
    let rt = runtime()?;
    match &cli.socket {
        Some(path) => {
            let request = match &start {
                remote::Start::Backup => serde_json::json!({"op": "backup", "wait": wait}),
                remote::Start::Recover {
                    force,
                    allow_foreign,
                    step,
                    generation,
                } => serde_json::json!({
                    "op": "recover", "force": force, "allow_foreign": allow_foreign, "step": step,
                    "generation": generation, "wait": wait}),
                remote::Start::Resume { boot } => {
                    serde_json::json!({"op": "resume", "boot": boot, "wait": wait})
                }
                remote::Start::Restart => serde_json::json!({"op": "restart", "wait": wait}),
            };
            let result = rt.block_on(remote::socket_request(path, request, cli.json, &console))?;
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
        None => rt.block_on(remote::dbus_start(start, wait, cli.json, &console)),
    }
}

/// Continue the open recovery in this process.
pub(super) fn resume_offline(config: Config, json: bool, boot: bool, step: bool) -> Result<u8> {
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

/// `restart --offline`: start the open recovery over in this process.
pub(super) fn restart_offline(cli: &Cli, config: Config, step: bool) -> Result<u8> {
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

/// `cancel --offline`: mark the open, idle recovery cancelled.
pub(super) fn cancel_offline(config: Config) -> Result<u8> {
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

/// `cancel` through the daemon.
pub(super) fn cancel_remote(cli: &Cli) -> Result<u8> {
    match &cli.socket {
        Some(path) => {
            let console = console::Console::new(true);
            let r = runtime()?.block_on(remote::socket_request(
                path,
                serde_json::json!({"op": "cancel"}),
                cli.json,
                &console,
            ))?;
            println!("{r}");
            Ok(remote::socket_exit(&r))
        }
        None => runtime()?.block_on(remote::dbus_cancel()),
    }
}

/// Start a new run of the plan `build` returns, in this process.
pub(super) fn new_offline(
    json: bool,
    config: Config,
    build: impl FnOnce(&Arc<PlanContext>) -> Result<(Plan, serde_json::Value)>,
) -> Result<u8> {
    let off = offline::Offline::open(config)?;
    let console = Arc::new(console::Console::new(json));
    let (plan, options) = build(&off.plans)?;
    let report = runtime()?.block_on(off.run_new(plan, options, console))?;
    print_report(json, &report)?;
    Ok(exit_for(&report))
}
