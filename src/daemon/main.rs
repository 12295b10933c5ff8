//! The daemon's entry point: wiring only. `src/bin/recoveryd.rs` calls [`main`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tokio_util::sync::CancellationToken;

use super::dbus::{BUS_NAME, serve as serve_dbus};
use super::manager::RunManager;
use super::notify::{Notifier, watchdog_interval};
use super::socket;
use crate::config::{Config, ConfigSource};
use crate::ops::Ops;

/// Exit code for errors a restart cannot fix (bad configuration, unreadable journal); the unit
/// lists it in `RestartPreventExitStatus=` so systemd does not loop on it.
pub const EXIT_CONFIG: u8 = 78;

pub const DEFAULT_SOCKET: &str = "/run/recoveryd/recoveryd.sock";

#[derive(Debug, Parser)]
#[command(
    name = "recoveryd",
    version,
    about = "Node backup and upgrade-recovery daemon"
)]
struct Args {
    /// Use this configuration file instead of /etc/recoveryd/config.toml and its drop-ins.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Bind the socket API here when systemd does not pass one (default beneath `root`:
    /// /run/recoveryd/recoveryd.sock).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

/// A startup error that restarting will not fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Permanent(String);

pub fn main() -> ExitCode {
    let args = Args::parse();
    // Inherited sockets must be taken before any thread starts (the variables are unset).
    let activated = listenfd::ListenFd::from_env()
        .take_unix_listener(0)
        .ok()
        .flatten();
    crate::logging::init("recoveryd", "info");
    crate::files::walk::raise_open_file_limit();
    crate::memory::hand_back_freed_memory();
    crate::memory::share_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(crate::memory::BLOCKING_KEEP_ALIVE)
        .enable_all()
        .thread_name("recoveryd")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("recoveryd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, activated)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("recoveryd: {e:#}");
            let notifier = Notifier::from_env();
            notifier.status(&format!("failed: {e:#}"));
            if e.downcast_ref::<Permanent>().is_some() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(args: Args, activated: Option<std::os::unix::net::UnixListener>) -> Result<()> {
    if let Err(e) = crate::engine::failpoints::check_env() {
        return Err(Permanent(e).into());
    }
    let source = match &args.config {
        Some(f) => ConfigSource::File(f.clone()),
        None => ConfigSource::default(),
    };
    let config = Config::load(&source).map_err(|e| Permanent(e.to_string()))?;
    let ops = Ops::open(config).map_err(|e| Permanent(format!("{e:#}")))?;
    crate::plans::reconcile(&ops.journal, &ops.plans.store)?;
    ops.write_metrics();

    let notifier = Arc::new(Notifier::from_env());
    let shutdown = CancellationToken::new();
    let config = ops.config.clone();
    let manager = RunManager::new(ops, notifier.clone(), shutdown.clone())?;
    manager.close_interrupted_backups();

    // D-Bus: serve the objects first, then take the name, so that a client never sees the
    // name without the interface.
    let conn = zbus::connection::Builder::system()
        .build()
        .await
        .context("connecting to the system D-Bus")?;
    serve_dbus(&conn, manager.clone()).await?;
    conn.request_name(BUS_NAME)
        .await
        .with_context(|| format!("owning {BUS_NAME} on the system bus"))?;

    let listener = match activated {
        Some(l) => {
            tracing::info!("socket API on the socket systemd passed");
            l
        }
        None => {
            let path = args
                .socket
                .clone()
                .unwrap_or_else(|| config.host_path(DEFAULT_SOCKET));
            let l = socket::bind(&path)?;
            tracing::info!("socket API on {}", path.display());
            l
        }
    };
    let socket_task = tokio::spawn(socket::serve(listener, manager.clone(), shutdown.clone()));

    manager.resume_interrupted();
    notifier.ready(&format!(
        "{}; {BUS_NAME} and the socket are up",
        manager.state()
    ));
    tracing::info!("recoveryd ready ({})", manager.state());

    if let Some(interval) = watchdog_interval() {
        let n = notifier.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(interval / 2);
            loop {
                t.tick().await;
                n.watchdog();
            }
        });
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => tracing::info!("SIGHUP: configuration changes take effect at the next start"),
        }
    }
    tracing::info!(
        "stopping: the running step may finish, then the run stays open and resumes at the next start"
    );
    notifier.stopping();
    shutdown.cancel();
    if tokio::time::timeout(Duration::from_secs(80), manager.drain())
        .await
        .is_err()
    {
        tracing::warn!(
            "the run did not stop in time; its step is recorded as interrupted at the next start"
        );
    }
    socket_task.abort();
    let _ = conn.release_name(BUS_NAME).await;
    Ok(())
}
