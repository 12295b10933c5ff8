//! The D-Bus API: `org.recoveryd.Recovery1` at `/org/recoveryd/Recovery1`, interface
//! `org.recoveryd.Recovery1.Manager`, and one `org.recoveryd.Recovery1.Run` object per run at
//! `/org/recoveryd/Recovery1/run/<id>`.
//!
//! Methods that change anything are for root only: the shipped bus policy refuses other
//! callers, and each method checks the caller's uid again (defence in depth). Properties,
//! `GetStatus` and introspection are open to everyone.

use std::collections::HashMap;
use std::sync::Arc;

use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{Connection, OwnedObjectPath, OwnedVariant};

use super::manager::{ApiError, DaemonEvent, RecoverOptions, RunManager};
use crate::journal::{Journal, RunState};

pub const BUS_NAME: &str = "org.recoveryd.Recovery1";
pub const PATH: &str = "/org/recoveryd/Recovery1";

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.recoveryd.Recovery1.Error")]
pub enum BusError {
    #[zbus(error)]
    ZBus(zbus::Error),
    Busy(String),
    NotFound(String),
    InvalidArgs(String),
    Corrupted(String),
    AccessDenied(String),
    Failed(String),
}

impl From<ApiError> for BusError {
    fn from(e: ApiError) -> BusError {
        match e {
            ApiError::Busy(m) => BusError::Busy(m),
            ApiError::NotFound(m) => BusError::NotFound(m),
            ApiError::InvalidArgs(m) => BusError::InvalidArgs(m),
            ApiError::Corrupted(m) => BusError::Corrupted(m),
            ApiError::AccessDenied(m) => BusError::AccessDenied(m),
            ApiError::Failed(m) => BusError::Failed(m),
        }
    }
}

pub fn run_path(run: i64) -> OwnedObjectPath {
    OwnedObjectPath::try_from(format!("{PATH}/run/{run}")).expect("a valid object path")
}

fn root_path() -> OwnedObjectPath {
    OwnedObjectPath::try_from("/").expect("valid")
}

/// Refuse callers other than root.
async fn require_root(hdr: &Header<'_>, conn: &Connection, what: &str) -> Result<(), BusError> {
    let sender = hdr
        .sender()
        .ok_or_else(|| BusError::AccessDenied("the call has no sender".into()))?;
    let uid = zbus::fdo::DBusProxy::new(conn)
        .await?
        .get_connection_unix_user(sender.clone().into())
        .await
        .map_err(|e| BusError::Failed(format!("cannot tell who called: {e}")))?;
    if uid != 0 {
        tracing::warn!("refused {what} from {sender} (uid {uid}): only root may change anything");
        return Err(BusError::AccessDenied(format!(
            "{what} is for root only (caller uid {uid})"
        )));
    }
    Ok(())
}

/// Read the `a{sv}` options of a call, refusing unknown keys and wrong types.
fn options(
    map: &HashMap<String, OwnedVariant>,
    allowed: &[&str],
) -> Result<RecoverOptions, BusError> {
    let mut o = RecoverOptions::default();
    for (k, v) in map {
        if !allowed.contains(&k.as_str()) {
            return Err(BusError::InvalidArgs(format!(
                "unknown option `{k}` (known: {})",
                allowed.join(", ")
            )));
        }
        let bad = |t: &str| BusError::InvalidArgs(format!("option `{k}` must be {t}"));
        match k.as_str() {
            "force" => o.force = v.downcast_ref::<bool>().map_err(|_| bad("a boolean"))?,
            "allow_foreign" => {
                o.allow_foreign = v.downcast_ref::<bool>().map_err(|_| bad("a boolean"))?
            }
            "step" => o.step = v.downcast_ref::<bool>().map_err(|_| bad("a boolean"))?,
            "generation" => {
                let g = v.downcast_ref::<&str>().map_err(|_| bad("a string"))?;
                o.generation = (!g.is_empty()).then(|| g.to_string());
            }
            _ => unreachable!("checked above"),
        }
    }
    Ok(o)
}

pub struct ManagerIface {
    pub manager: Arc<RunManager>,
}

#[zbus::interface(name = "org.recoveryd.Recovery1.Manager")]
impl ManagerIface {
    /// Start a backup; returns the run's object path at once (watch `RunFinished`).
    #[zbus(out_args("run"))]
    async fn start_backup(
        &self,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, BusError> {
        require_root(&hdr, conn, "StartBackup").await?;
        options_none(&options)?;
        Ok(run_path(self.manager.start_backup()?))
    }

    /// Start a recovery. Options: `force` (b), `allow_foreign` (b), `step` (b), `generation` (s).
    #[zbus(out_args("run"))]
    async fn start_recovery(
        &self,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, BusError> {
        require_root(&hdr, conn, "StartRecovery").await?;
        let o = self::options(&options, &["force", "allow_foreign", "step", "generation"])?;
        Ok(run_path(self.manager.start_recovery(o)?))
    }

    /// Continue the open recovery.
    #[zbus(out_args("run"))]
    async fn resume(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, BusError> {
        require_root(&hdr, conn, "Resume").await?;
        Ok(self
            .manager
            .resume(false)?
            .map(run_path)
            .unwrap_or_else(root_path))
    }

    /// What the boot unit calls: continue an interrupted recovery if there is one (`/` when
    /// there is none); counts toward the boot-loop breaker.
    #[zbus(out_args("run"))]
    async fn resume_at_boot(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, BusError> {
        require_root(&hdr, conn, "ResumeAtBoot").await?;
        Ok(self
            .manager
            .resume(true)?
            .map(run_path)
            .unwrap_or_else(root_path))
    }

    /// Start the open recovery over from its first step.
    #[zbus(out_args("run"))]
    async fn restart(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, BusError> {
        require_root(&hdr, conn, "Restart").await?;
        Ok(run_path(self.manager.restart()?))
    }

    async fn cancel(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), BusError> {
        require_root(&hdr, conn, "Cancel").await?;
        self.manager.cancel()?;
        Ok(())
    }

    /// Re-hash a generation (`""`: the newest) against its manifest.
    #[zbus(out_args("ok", "problems"))]
    async fn verify(
        &self,
        generation: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(bool, Vec<String>), BusError> {
        require_root(&hdr, conn, "Verify").await?;
        let plans = self.manager.plans.clone();
        let journal = self.manager.journal.clone();
        let workers = self.manager.config.backup.workers;
        let report = tokio::task::spawn_blocking(move || {
            let g = if generation.is_empty() {
                plans
                    .store
                    .latest()
                    .map_err(|e| ApiError::Failed(format!("{e:#}")))?
                    .ok_or_else(|| ApiError::NotFound("there is no committed generation".into()))?
            } else {
                plans
                    .store
                    .open(&generation)
                    .map_err(|e| ApiError::NotFound(format!("{e:#}")))?
            };
            let jh = crate::plans::PlanContext::journal_hash(&journal, &g.info.id);
            crate::files::verify::verify(
                &g,
                jh.as_deref(),
                None,
                workers,
                &crate::files::backup::Hooks::none(),
            )
            .map_err(|e| ApiError::Failed(format!("{e:#}")))
        })
        .await
        .map_err(|e| BusError::Failed(e.to_string()))??;
        let problems = report
            .problems
            .iter()
            .map(|p| format!("{:?} {}: {}", p.problem, p.path, p.detail))
            .collect();
        Ok((report.ok, problems))
    }

    /// Everything `recoveryctl status --json` shows.
    async fn get_status(&self) -> Result<String, BusError> {
        let status = self.manager.status()?;
        let live = self
            .manager
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut v = serde_json::to_value(&status).map_err(|e| BusError::Failed(e.to_string()))?;
        v["state"] = self.manager.state().into();
        v["progress"] = live.percent().into();
        v["current_step"] = live.step.into();
        Ok(v.to_string())
    }

    #[zbus(property)]
    async fn state(&self) -> String {
        self.manager.state()
    }

    #[zbus(property)]
    async fn current_run(&self) -> OwnedObjectPath {
        self.manager
            .current()
            .map(|(r, _)| run_path(r))
            .unwrap_or_else(root_path)
    }

    /// Percent of the executing run's steps that are done.
    #[zbus(property)]
    async fn progress(&self) -> u32 {
        self.manager
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .percent()
    }

    /// `(generation id, committed at)` of the newest generation, or empty strings.
    #[zbus(property)]
    async fn last_backup(&self) -> (String, String) {
        match self.manager.journal.generations() {
            Ok(g) => g
                .first()
                .map(|g| (g.id.clone(), g.committed.clone()))
                .unwrap_or_default(),
            Err(_) => Default::default(),
        }
    }

    /// (The `State` property's own change notification is `PropertiesChanged`.)
    #[zbus(signal, name = "StateChanged")]
    async fn state_changed_signal(emitter: &SignalEmitter<'_>, state: &str) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn step_started(
        emitter: &SignalEmitter<'_>,
        run: OwnedObjectPath,
        stage: &str,
        step: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn step_finished(
        emitter: &SignalEmitter<'_>,
        run: OwnedObjectPath,
        step: &str,
        state: &str,
        detail: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn run_finished(
        emitter: &SignalEmitter<'_>,
        run: OwnedObjectPath,
        success: bool,
        message: &str,
    ) -> zbus::Result<()>;
}

fn options_none(map: &HashMap<String, OwnedVariant>) -> Result<(), BusError> {
    match map.keys().next() {
        Some(k) => Err(BusError::InvalidArgs(format!(
            "StartBackup takes no options (got `{k}`)"
        ))),
        None => Ok(()),
    }
}

/// One run, read from the journal.
pub struct RunObject {
    pub id: i64,
    pub journal: Arc<Journal>,
}

#[zbus::interface(name = "org.recoveryd.Recovery1.Run")]
impl RunObject {
    #[zbus(property)]
    async fn id(&self) -> i64 {
        self.id
    }
    #[zbus(property)]
    async fn kind(&self) -> String {
        self.record()
            .map(|r| r.kind.to_string())
            .unwrap_or_default()
    }
    #[zbus(property)]
    async fn state(&self) -> String {
        self.record()
            .map(|r| r.state.to_string())
            .unwrap_or_default()
    }
    #[zbus(property)]
    async fn stage(&self) -> String {
        self.record().and_then(|r| r.stage).unwrap_or_default()
    }
    #[zbus(property)]
    async fn error(&self) -> String {
        self.record().and_then(|r| r.error).unwrap_or_default()
    }
}

impl RunObject {
    fn record(&self) -> Option<crate::journal::RunRecord> {
        self.journal.run(self.id).ok().flatten()
    }
}

/// Serve the interface and turn the manager's events into signals and property changes.
pub async fn serve(conn: &Connection, manager: Arc<RunManager>) -> anyhow::Result<()> {
    let server = conn.object_server();
    server
        .at(
            PATH,
            ManagerIface {
                manager: manager.clone(),
            },
        )
        .await?;
    for r in manager.journal.runs(50)? {
        server
            .at(
                run_path(r.id),
                RunObject {
                    id: r.id,
                    journal: manager.journal.clone(),
                },
            )
            .await?;
    }
    let iface = server.interface::<_, ManagerIface>(PATH).await?;
    let mut rx = manager.events.subscribe();
    let conn = conn.clone();
    tokio::spawn(async move {
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            let emitter = iface.signal_emitter();
            let guard = iface.get().await;
            let r = match &ev {
                DaemonEvent::RunStarted { run, .. } => {
                    let _ = conn
                        .object_server()
                        .at(
                            run_path(*run),
                            RunObject {
                                id: *run,
                                journal: guard.manager.journal.clone(),
                            },
                        )
                        .await;
                    let _ = guard.current_run_changed(emitter).await;
                    let _ = guard.state_changed(emitter).await;
                    ManagerIface::state_changed_signal(emitter, &guard.manager.state()).await
                }
                DaemonEvent::StageStarted { .. } => {
                    let _ = guard.state_changed(emitter).await;
                    ManagerIface::state_changed_signal(emitter, &guard.manager.state()).await
                }
                DaemonEvent::StepStarted {
                    run, stage, step, ..
                } => ManagerIface::step_started(emitter, run_path(*run), stage, step).await,
                DaemonEvent::StepFinished {
                    run,
                    step,
                    state,
                    detail,
                    ..
                } => {
                    let _ = guard.progress_changed(emitter).await;
                    ManagerIface::step_finished(emitter, run_path(*run), step, state, detail).await
                }
                DaemonEvent::StepProgress { .. } => Ok(()),
                DaemonEvent::Idle => {
                    let _ = guard.current_run_changed(emitter).await;
                    let _ = guard.progress_changed(emitter).await;
                    let _ = guard.state_changed(emitter).await;
                    ManagerIface::state_changed_signal(emitter, &guard.manager.state()).await
                }
                DaemonEvent::RunFinished {
                    run,
                    state,
                    message,
                    ..
                } => {
                    let _ = guard.current_run_changed(emitter).await;
                    let _ = guard.last_backup_changed(emitter).await;
                    let _ = guard.state_changed(emitter).await;
                    let _ =
                        ManagerIface::state_changed_signal(emitter, &guard.manager.state()).await;
                    ManagerIface::run_finished(
                        emitter,
                        run_path(*run),
                        *state == RunState::Succeeded,
                        message,
                    )
                    .await
                }
            };
            if let Err(e) = r {
                tracing::debug!("emitting a D-Bus signal failed: {e}");
            }
        }
    });
    Ok(())
}
