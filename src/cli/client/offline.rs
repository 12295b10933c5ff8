//! `--offline`: the engine in this process (rescue shells, the boot unit without the daemon,
//! tests), through the same operations the daemon uses and under the same single-writer lock.

use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{Client, OnEvent};
use crate::config::Config;
use crate::engine::{Engine, Observer, Prepared, Report};
use crate::ops::{NewRun, Ops, Resume};
use crate::protocol::{self, ApiError, Event, Reply, Request, RunOutcome};

pub(crate) struct Offline {
    pub config: Config,
}

/// Passes the engine's events on as protocol events.
struct Forward<'a>(&'a OnEvent<'a>);

/// The engine's observer must be `'static`; the events reach the caller's closure through a
/// channel drained after each step of the run (they are printed in order, as they came).
struct Channel(std::sync::mpsc::Sender<Event>);

impl Observer for Channel {
    fn event(&self, e: &crate::engine::Event<'_>) {
        let _ = self.0.send(Event::from(e));
    }
}

fn outcome(r: Report) -> Reply {
    Reply::Finished(RunOutcome {
        run: r.run,
        kind: r.kind,
        state: r.state,
        phase: protocol::status::phase(r.kind, r.state),
        message: r.message,
    })
}

impl Forward<'_> {
    /// Execute a prepared run, passing its events on while it goes; Ctrl-C cancels it.
    async fn execute(
        &self,
        engine: Engine,
        rx: std::sync::mpsc::Receiver<Event>,
        prepared: Prepared,
    ) -> Result<Reply> {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let ctrl_c = tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("recoveryctl: interrupted, cancelling the run");
                c.cancel();
            }
        });
        let run = engine.execute(prepared, cancel);
        tokio::pin!(run);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
        let report = loop {
            tokio::select! {
                r = &mut run => break r,
                _ = tick.tick() => while let Ok(e) = rx.try_recv() { (self.0)(&e) },
            }
        };
        while let Ok(e) = rx.try_recv() {
            (self.0)(&e);
        }
        ctrl_c.abort();
        Ok(outcome(report?))
    }
}

impl Offline {
    fn engine(&self, ops: &Ops) -> Result<(Engine, std::sync::mpsc::Receiver<Event>)> {
        let (tx, rx) = std::sync::mpsc::channel();
        let observer: Arc<dyn Observer> = Arc::new(Channel(tx));
        Ok((ops.engine(observer)?, rx))
    }

    /// Start a new run and follow it to its end (or pause, or reboot).
    pub(crate) async fn run_new(
        &self,
        ops: &Ops,
        new: Result<NewRun, ApiError>,
        events: &OnEvent<'_>,
    ) -> Result<Reply> {
        let new = match new {
            Ok(n) => n,
            Err(e) => return Ok(Reply::Error(e)),
        };
        let (engine, rx) = self.engine(ops)?;
        let prepared = match engine.prepare_new(new.plan, new.options) {
            Ok(p) => p,
            Err(e) => return Ok(Reply::Error(ApiError::from_anyhow(&e))),
        };
        Forward(events).execute(engine, rx, prepared).await
    }
}

#[async_trait(?Send)]
impl Client for Offline {
    async fn request(&self, request: Request, events: &OnEvent<'_>) -> Result<Reply> {
        if let Request::Status {} = request {
            let ops = Ops::open_read_only(self.config.clone())?;
            return Ok(Reply::Status(Box::new(ops.status(None)?)));
        }
        let ops = Ops::open(self.config.clone())?;
        let reply = self.handle(&ops, &request, events).await;
        ops.write_metrics();
        reply
    }
}

impl Offline {
    /// A request that starts, continues or cancels a run, in this process.
    async fn handle(&self, ops: &Ops, request: &Request, events: &OnEvent<'_>) -> Result<Reply> {
        match request {
            Request::Backup { .. } => self.run_new(ops, Ok(ops.backup()), events).await,
            Request::Recover { .. } => {
                let r = request.recover_options().unwrap_or_default();
                self.run_new(ops, ops.recovery(&r), events).await
            }
            Request::Resume { boot, step, .. } => {
                let (run, plan, trigger) = match ops.resume(*boot) {
                    Ok(Resume::Run { run, plan, trigger }) => (run, plan, trigger),
                    Ok(Resume::Nothing(message)) => {
                        tracing::info!("{message}");
                        return Ok(Reply::NothingToResume { message });
                    }
                    Err(e) => return Ok(Reply::Error(e)),
                };
                let (engine, rx) = self.engine(ops)?;
                // An operator's resume runs to the end unless --step; the boot unit keeps the
                // run's mode.
                let one_stage = if *boot { None } else { Some(*step) };
                match engine.prepare_resume(run.id, plan, trigger, one_stage) {
                    Ok(p) => Forward(events).execute(engine, rx, p).await,
                    Err(e) => Ok(Reply::Error(ApiError::from_anyhow(&e))),
                }
            }
            Request::Restart { step, .. } => {
                let (run, plan) = match ops.restart() {
                    Ok(x) => x,
                    Err(e) => return Ok(Reply::Error(e)),
                };
                let (engine, rx) = self.engine(ops)?;
                match engine.prepare_restart(run.id, plan, Some(*step)) {
                    Ok(p) => Forward(events).execute(engine, rx, p).await,
                    Err(e) => Ok(Reply::Error(ApiError::from_anyhow(&e))),
                }
            }
            Request::Cancel {} => {
                let run = match ops.cancel_target() {
                    Ok(r) => r,
                    Err(e) => return Ok(Reply::Error(e)),
                };
                let (engine, _rx) = self.engine(ops)?;
                match engine.cancel_idle(run.id) {
                    Ok(r) => Ok(Reply::Cancel {
                        run: r.id,
                        kind: r.kind,
                        message: ops.after_cancel(&run),
                    }),
                    Err(e) => Ok(Reply::Error(ApiError::from_anyhow(&e))),
                }
            }
            Request::Status {} => unreachable!("answered above"),
        }
    }
}
