//! The D-Bus API: `org.recoveryd.Recovery1` at `/org/recoveryd/Recovery1`, interface
//! `org.recoveryd.Recovery1.Manager`, and one `org.recoveryd.Recovery1.Run` object per run at
//! `/org/recoveryd/Recovery1/run/<id>`.
//!
//! The methods map onto the protocol's requests and the errors are the protocol's
//! ([`ApiError`], `org.recoveryd.Recovery1.Error.*`). Besides the typed signals (for `busctl`
//! and `gdbus`), every run event is also sent as the protocol's JSON in the `Event` signal, and
//! `GetStatus` answers the protocol's status: what `recoveryctl` reads, so that it prints the
//! same whatever the transport.
//!
//! Methods that change anything are for root only: the shipped bus policy refuses other
//! callers, and each method checks the caller's uid again (defence in depth). Properties,
//! `GetStatus` and introspection are open to everyone.

use std::collections::HashMap;
use std::sync::Arc;

use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{Connection, OwnedObjectPath, OwnedVariant};

use super::manager::{RunManager, Started};
use crate::journal::{Journal, RunState};
use crate::protocol::{self, ApiError, Event, RecoverRequest, Request};

pub(crate) const BUS_NAME: &str = "org.recoveryd.Recovery1";
pub(crate) const PATH: &str = "/org/recoveryd/Recovery1";

pub(crate) fn run_path(run: i64) -> OwnedObjectPath {
    OwnedObjectPath::try_from(format!("{PATH}/run/{run}")).expect("a valid object path")
}

fn root_path() -> OwnedObjectPath {
    OwnedObjectPath::try_from("/").expect("valid")
}

/// Refuse callers other than root.
async fn require_root(hdr: &Header<'_>, conn: &Connection, what: &str) -> Result<(), ApiError> {
    let sender = hdr
        .sender()
        .ok_or_else(|| ApiError::AccessDenied("the call has no sender".into()))?;
    let uid = zbus::fdo::DBusProxy::new(conn)
        .await?
        .get_connection_unix_user(sender.clone().into())
        .await
        .map_err(|e| ApiError::Failed(format!("cannot tell who called: {e}")))?;
    if uid != 0 {
        tracing::warn!("refused {what} from {sender} (uid {uid}): only root may change anything");
        return Err(ApiError::AccessDenied(format!(
            "{what} is for root only (caller uid {uid})"
        )));
    }
    Ok(())
}

/// The `a{sv}` options of `StartRecovery`, refusing unknown keys and wrong types.
fn recover_options(map: &HashMap<String, OwnedVariant>) -> Result<RecoverRequest, ApiError> {
    const KNOWN: [&str; 4] = ["force", "allow_foreign", "step", "generation"];
    let mut o = RecoverRequest::default();
    for (k, v) in map {
        let bad = |t: &str| ApiError::InvalidArgs(format!("option `{k}` must be {t}"));
        let flag = || v.downcast_ref::<bool>().map_err(|_| bad("a boolean"));
        match k.as_str() {
            "force" => o.force = flag()?,
            "allow_foreign" => o.allow_foreign = flag()?,
            "step" => o.step = flag()?,
            "generation" => {
                let g = v.downcast_ref::<&str>().map_err(|_| bad("a string"))?;
                o.generation = (!g.is_empty()).then(|| g.to_string());
            }
            _ => {
                return Err(ApiError::InvalidArgs(format!(
                    "unknown option `{k}` (known: {})",
                    KNOWN.join(", ")
                )));
            }
        }
    }
    Ok(o)
}

pub(crate) struct ManagerIface {
    pub manager: Arc<RunManager>,
}

impl ManagerIface {
    /// A request that starts or continues a run, answered with the run's object path (`/`:
    /// nothing to do).
    fn start(&self, request: &Request) -> Result<OwnedObjectPath, ApiError> {
        Ok(match self.manager.start(request)? {
            Started::Run { run, .. } => run_path(run),
            Started::Nothing(_) => root_path(),
        })
    }
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
    ) -> Result<OwnedObjectPath, ApiError> {
        require_root(&hdr, conn, "StartBackup").await?;
        if let Some(k) = options.keys().next() {
            return Err(ApiError::InvalidArgs(format!(
                "StartBackup takes no options (got `{k}`)"
            )));
        }
        self.start(&Request::Backup { wait: false })
    }

    /// Start a recovery. Options: `force` (b), `allow_foreign` (b), `step` (b), `generation` (s).
    #[zbus(out_args("run"))]
    async fn start_recovery(
        &self,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, ApiError> {
        require_root(&hdr, conn, "StartRecovery").await?;
        self.start(&Request::recover(recover_options(&options)?, false))
    }

    /// Continue the open recovery.
    #[zbus(out_args("run"))]
    async fn resume(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, ApiError> {
        require_root(&hdr, conn, "Resume").await?;
        self.start(&Request::Resume {
            boot: false,
            step: false,
            wait: false,
        })
    }

    /// What the boot unit calls: continue an interrupted recovery if there is one (`/` when
    /// there is none); counts toward the boot-loop breaker.
    #[zbus(out_args("run"))]
    async fn resume_at_boot(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, ApiError> {
        require_root(&hdr, conn, "ResumeAtBoot").await?;
        self.start(&Request::Resume {
            boot: true,
            step: false,
            wait: false,
        })
    }

    /// Start the open recovery over from its first step.
    #[zbus(out_args("run"))]
    async fn restart(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, ApiError> {
        require_root(&hdr, conn, "Restart").await?;
        self.start(&Request::Restart {
            step: false,
            wait: false,
        })
    }

    /// Cancel the executing run, or else the open recovery; returns what happened (the
    /// protocol's reply, JSON).
    #[zbus(out_args("reply"))]
    async fn cancel(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, ApiError> {
        require_root(&hdr, conn, "Cancel").await?;
        Ok(protocol::to_line(&self.manager.cancel()?))
    }

    /// Re-hash a generation (`""`: the newest) against its manifest.
    #[zbus(out_args("ok", "problems"))]
    async fn verify(
        &self,
        generation: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(bool, Vec<String>), ApiError> {
        require_root(&hdr, conn, "Verify").await?;
        let ops = self.manager.ops.clone();
        let report = tokio::task::spawn_blocking(move || {
            let r = ops.verify((!generation.is_empty()).then_some(generation.as_str()));
            // Nothing after it reads that manifest again.
            crate::files::parsed::release();
            r
        })
        .await
        .map_err(|e| ApiError::Failed(e.to_string()))??;
        let problems = report
            .problems
            .iter()
            .map(|p| format!("{:?} {}: {}", p.problem, p.path, p.detail))
            .collect();
        Ok((report.ok, problems))
    }

    /// Everything `recoveryctl status --json` shows: the protocol's status (JSON).
    async fn get_status(&self) -> Result<String, ApiError> {
        Ok(protocol::to_line(&self.manager.status()?))
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
        self.manager.live().percent()
    }

    /// `(bytes done, bytes total)` of the executing step, where it works in bytes.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn progress_bytes(&self) -> (u64, u64) {
        let l = self.manager.live();
        (l.bytes_done, l.bytes_total)
    }

    /// `(generation id, committed at)` of the newest generation, or empty strings.
    #[zbus(property)]
    async fn last_backup(&self) -> (String, String) {
        match self.manager.ops.journal.generations() {
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

    /// Inside a step: items done of total, and bytes done of total where the step copies or
    /// reads bytes (0 of 0 otherwise).
    #[zbus(signal)]
    async fn step_progress(
        emitter: &SignalEmitter<'_>,
        run: OwnedObjectPath,
        step: &str,
        done: u64,
        total: u64,
        bytes_done: u64,
        bytes_total: u64,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn run_finished(
        emitter: &SignalEmitter<'_>,
        run: OwnedObjectPath,
        success: bool,
        message: &str,
    ) -> zbus::Result<()>;

    /// Every run event, as the protocol's JSON document (what `recoveryctl` follows).
    #[zbus(signal, name = "Event")]
    async fn event_signal(emitter: &SignalEmitter<'_>, event: &str) -> zbus::Result<()>;
}

/// One run, read from the journal.
pub(crate) struct RunObject {
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
pub(crate) async fn serve(conn: &Connection, manager: Arc<RunManager>) -> anyhow::Result<()> {
    let server = conn.object_server();
    server
        .at(
            PATH,
            ManagerIface {
                manager: manager.clone(),
            },
        )
        .await?;
    for r in manager.ops.journal.runs(50)? {
        server
            .at(
                run_path(r.id),
                RunObject {
                    id: r.id,
                    journal: manager.ops.journal.clone(),
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
            if let Err(e) = signal(&conn, &guard, emitter, &ev).await {
                tracing::debug!("emitting a D-Bus signal failed: {e}");
            }
        }
    });
    Ok(())
}

/// The signals and property changes of one event.
async fn signal(
    conn: &Connection,
    iface: &ManagerIface,
    emitter: &SignalEmitter<'_>,
    ev: &Event,
) -> zbus::Result<()> {
    let state_changed = || async {
        let _ = iface.state_changed(emitter).await;
        ManagerIface::state_changed_signal(emitter, &iface.manager.state()).await
    };
    match ev {
        Event::RunStarted { run, .. } => {
            let _ = conn
                .object_server()
                .at(
                    run_path(*run),
                    RunObject {
                        id: *run,
                        journal: iface.manager.ops.journal.clone(),
                    },
                )
                .await;
            let _ = iface.current_run_changed(emitter).await;
            state_changed().await?;
        }
        Event::StageStarted { .. } => state_changed().await?,
        Event::StepStarted {
            run, stage, step, ..
        } => ManagerIface::step_started(emitter, run_path(*run), stage, step).await?,
        Event::StepFinished {
            run,
            step,
            state,
            detail,
            ..
        } => {
            let _ = iface.progress_changed(emitter).await;
            ManagerIface::step_finished(emitter, run_path(*run), step, state.as_str(), detail)
                .await?
        }
        Event::StepProgress {
            run,
            step,
            done,
            total,
            bytes_done,
            bytes_total,
            ..
        } => {
            ManagerIface::step_progress(
                emitter,
                run_path(*run),
                step,
                *done,
                *total,
                *bytes_done,
                *bytes_total,
            )
            .await?
        }
        Event::Idle => {
            let _ = iface.current_run_changed(emitter).await;
            let _ = iface.progress_changed(emitter).await;
            state_changed().await?;
        }
        Event::RunFinished {
            run,
            state,
            message,
            ..
        } => {
            let _ = iface.current_run_changed(emitter).await;
            let _ = iface.last_backup_changed(emitter).await;
            state_changed().await?;
            ManagerIface::run_finished(
                emitter,
                run_path(*run),
                *state == RunState::Succeeded,
                message,
            )
            .await?
        }
    }
    ManagerIface::event_signal(emitter, &protocol::to_line(ev)).await
}
