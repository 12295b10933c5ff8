//! The read-only commands: status, journal, verify, diff, generations and the recovery dry run.

use std::sync::Arc;

use anyhow::{Context, Result};

use super::{
    Cli, console, exit, journal_if_present, open_journal, pick_generation, print_json, remote,
    render, runtime,
};
use crate::config::Config;
use crate::status::Status;

/// `status` from the daemon, or from the journal when the daemon does not answer.
pub(super) fn status(cli: &Cli, config: &Config) -> Result<u8> {
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
    local_status(config, cli.json)
}

/// `status` from the journal, without the daemon.
pub(super) fn local_status(config: &Config, json: bool) -> Result<u8> {
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
                    config.journal_path().display()
                );
            }
            return Ok(exit::OK);
        }
        Err(e) => return Err(e),
    };
    let status = Status::read(
        &journal,
        &crate::files::store::Store::new(&config.state_path()),
    )?;
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
    if v["store"].is_object() {
        let b = |k: &str| render::human_bytes(v["store"][k].as_u64().unwrap_or(0));
        println!(
            "store: {} on disk in {} objects ({} referenced, {} unreferenced in {} objects)",
            b("bytes"),
            v["store"]["objects"],
            b("referenced_bytes"),
            b("unreferenced_bytes"),
            v["store"]["unreferenced_objects"]
        );
    }
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

/// `journal`: recent runs, or one run's step attempts.
pub(super) fn journal(cli: &Cli, config: &Config, run: Option<i64>, limit: u32) -> Result<u8> {
    let journal = open_journal(config)?;
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

/// `verify`: re-hash a generation.
pub(super) fn verify(cli: &Cli, config: &Config, generation: &Option<String>) -> Result<u8> {
    let store = crate::files::store::Store::new(&config.state_path());
    let g = pick_generation(&store, generation)?;
    let journal = journal_if_present(config);
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

/// `diff`: what a restore would change.
pub(super) fn diff(cli: &Cli, config: &Config, generation: &Option<String>) -> Result<u8> {
    let store = crate::files::store::Store::new(&config.state_path());
    let g = pick_generation(&store, generation)?;
    let journal = journal_if_present(config);
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

/// `recover --dry-run`: every stage and step and what it would change.
pub(super) fn recovery_dry_run(
    cli: &Cli,
    config: &Config,
    force: bool,
    allow_foreign: bool,
    step: bool,
    generation: &Option<String>,
) -> Result<u8> {
    let plans = crate::plans::PlanContext::new(Arc::new(config.clone()));
    let g = super::checked_generation(config, &plans.store, generation)?;
    let journal = journal_if_present(config).map(Arc::new);
    let options = serde_json::json!({"plan": "recover", "force": force, "allow_foreign": allow_foreign, "step": step, "generation": g.info.id});
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

/// `generations`: the committed generations, newest first.
pub(super) fn generations(cli: &Cli, config: &Config) -> Result<u8> {
    let store = crate::files::store::Store::new(&config.state_path());
    let journal = journal_if_present(config);
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
                g.info
                    .manifest_hash
                    .get(..16)
                    .unwrap_or(&g.info.manifest_hash)
            );
        }
    }
    Ok(exit::OK)
}
