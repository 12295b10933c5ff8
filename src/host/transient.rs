//! External programs in transient systemd units, one unit per call, the way `systemd-run
//! --pipe --wait` does it: `StartTransientUnit` with the program, its environment, working
//! directory, time limit (`RuntimeMaxSec=`, after which systemd kills the unit's whole
//! cgroup) and sandbox ([`super::sandbox`]); its stdout and stderr come back through pipes
//! handed to systemd as file descriptors; its exit status is read from the unit.
//!
//! The unit is named after the run and step that called it,
//! `recoveryd-tool-<tool>-run<run>-<step>-p<pid>n<seq>.service`, and carries `RECOVERY_RUN=`
//! and `RECOVERY_STEP=` in its journal entries. It is bound (`BindsTo=`, `Before=`) to the unit
//! recoveryd itself runs in, so a tool does not outlive a daemon that was stopped or died; a step
//! that is abandoned (timeout, cancel) stops its tool's unit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::OnceCell;
use zbus::OwnedObjectPath;
use zbus::proxy::CacheProperties;
use zbus::{Fd, Variant as Value};

use super::bus::{SystemBus, error_name};
use super::command::{
    Attempt, CommandError, CommandOutput, CommandSpec, Programs, read_stream, tail_of, with_retries,
};
use super::sandbox::Sandbox;
use super::systemd::{ManagerProxy, UnitProxy};

/// Which run and step is calling, for the unit's name and journal fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub run: i64,
    pub step: String,
}

/// Tells the runner who is calling (the engine's step running in this task, if any).
pub type Caller = Arc<dyn Fn() -> Option<Invocation> + Send + Sync>;

/// How long systemd gives a tool between SIGTERM and SIGKILL when its time is up or its
/// unit is stopped.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// What this side waits beyond the tool's own limit and the stop grace before it kills the
/// unit itself (systemd enforces the limit; this only guards against a wedged manager).
const WAIT_SLACK: Duration = Duration::from_secs(30);
/// systemd's search path for a service, used when this process has no `PATH`.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin";

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
trait Service {
    #[zbus(property, name = "Result")]
    fn outcome(&self) -> zbus::Result<String>;
    /// `CLD_EXITED` (1), `CLD_KILLED` (2) or `CLD_DUMPED` (3).
    #[zbus(property)]
    fn exec_main_code(&self) -> zbus::Result<i32>;
    #[zbus(property)]
    fn exec_main_status(&self) -> zbus::Result<i32>;
}

pub struct TransientUnits {
    bus: Arc<SystemBus>,
    caller: Caller,
    seq: AtomicU64,
    /// The unit this process runs in, if it is a service (resolved once).
    own_unit: OnceCell<Option<String>>,
}

/// How the unit ended.
struct Ended {
    outcome: String,
    code: i32,
    status: i32,
}

impl TransientUnits {
    pub fn new(bus: Arc<SystemBus>, caller: Caller) -> TransientUnits {
        TransientUnits {
            bus,
            caller,
            seq: AtomicU64::new(0),
            own_unit: OnceCell::new(),
        }
    }

    /// The unit's name: tool, run and step, and this process and call, so that no two calls
    /// (nor two daemons one after the other) collide.
    fn unit_name(&self, spec: &CommandSpec, caller: Option<&Invocation>) -> String {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut name = format!("recoveryd-tool-{}-", spec.tool.name());
        if let Some(c) = caller {
            name.push_str(&format!("run{}-{}-", c.run, unit_safe(&c.step)));
        }
        name.push_str(&format!("p{}n{seq}.service", std::process::id()));
        name
    }

    async fn own_unit(&self, manager: &ManagerProxy<'_>) -> Option<String> {
        self.own_unit
            .get_or_init(|| async {
                let path = manager.get_unit_by_pid(std::process::id()).await.ok()?;
                let unit = UnitProxy::builder(manager.inner().connection())
                    .path(path)
                    .cache_properties(CacheProperties::No)
                    .build()
                    .await
                    .ok()?;
                let id = unit.id().await.ok()?;
                id.ends_with(".service").then_some(id)
            })
            .await
            .clone()
    }

    async fn once(&self, spec: &CommandSpec, attempt: u32) -> Result<Attempt, CommandError> {
        let caller = (self.caller)();
        let name = self.unit_name(spec, caller.as_ref());
        let command = format!("{} [{name}]", spec.display());
        let spawn_error = |e: std::io::Error| CommandError::Spawn {
            command: command.clone(),
            source: e,
        };
        let program = resolve(&spec.program).map_err(spawn_error)?;
        let conn = self
            .bus
            .get()
            .await
            .map_err(|e| spawn_error(std::io::Error::other(format!("{e:#}"))))?;
        let bus_error =
            |what: &str, e: zbus::Error| spawn_error(std::io::Error::other(format!("{what}: {e}")));
        let manager = ManagerProxy::new(conn)
            .await
            .map_err(|e| bus_error("systemd", e))?;
        let bound_to = self.own_unit(&manager).await;

        let (out_read, out_write) = pipe().map_err(spawn_error)?;
        let (err_read, err_write) = pipe().map_err(spawn_error)?;
        let properties = properties(
            spec,
            &program,
            caller.as_ref(),
            bound_to.as_deref(),
            Fd::from(&out_write),
            Fd::from(&err_write),
        );
        let started = manager
            .start_transient_unit(&name, "fail", &properties, &[])
            .await;
        // systemd holds its own copies now; ours would keep the pipes open.
        drop((out_write, err_write));
        started.map_err(|e| bus_error("StartTransientUnit", e))?;
        let guard = StopOnDrop {
            conn: conn.clone(),
            name: Some(name.clone()),
        };
        tracing::debug!("{command}: started");

        let out_task = tokio::spawn(read_stream(out_read, false));
        let err_task = tokio::spawn(read_stream(err_read, true));
        let deadline = Instant::now() + spec.timeout + STOP_GRACE + WAIT_SLACK;
        let ended = wait_ended(&manager, &name, deadline).await;
        let ended = match ended {
            Ok(e) => e,
            Err(e) => {
                // systemd did not end it in time (or could not be asked): kill it here.
                let _ = manager.kill_unit(&name, "all", 9).await;
                drop(guard);
                out_task.abort();
                err_task.abort();
                return Err(CommandError::Timeout {
                    command,
                    timeout: spec.timeout,
                    attempt,
                    stderr: format!("waiting for the unit: {e}"),
                });
            }
        };
        // Let systemd collect the unit (CollectMode=inactive-or-failed), which also closes its
        // copies of the pipes, so the readers see their end.
        release(&manager, &name).await;
        guard.disarm();
        let out = collect(out_task).await;
        let err = collect(err_task).await;
        match ended.outcome.as_str() {
            "success" => Ok((out, err, Some(name))),
            "timeout" => Err(CommandError::Timeout {
                command,
                timeout: spec.timeout,
                attempt,
                stderr: tail_of(&err),
            }),
            _ => Err(CommandError::failed(
                command,
                describe_status(&ended),
                attempt,
                &out,
                &err,
            )),
        }
    }
}

#[async_trait]
impl Programs for TransientUnits {
    async fn run(&self, spec: &CommandSpec) -> Result<CommandOutput, CommandError> {
        with_retries(spec, |attempt| self.once(spec, attempt)).await
    }
}

/// A step name as it may appear in a unit name (they are `[a-z0-9-]` already; anything else
/// becomes `_`).
fn unit_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// An absolute program path: systemd wants one, and resolves nothing itself; a bare name is
/// looked up in `PATH` here, as `systemd-run` does.
fn resolve(program: &Path) -> std::io::Result<PathBuf> {
    if program.is_absolute() {
        return Ok(program.to_path_buf());
    }
    if program.components().count() > 1 {
        return std::path::absolute(program);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if let Ok(meta) = std::fs::metadata(&candidate)
            && meta.is_file()
            && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0
        {
            return Ok(candidate);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!(
            "{} is not in PATH ({})",
            program.display(),
            path.to_string_lossy()
        ),
    ))
}

/// A pipe whose write end goes to systemd (blocking, as a program expects its stdout) and whose
/// read end is read here.
fn pipe() -> std::io::Result<(tokio::net::unix::pipe::Receiver, std::os::fd::OwnedFd)> {
    let (read, write) = std::io::pipe()?;
    Ok((
        tokio::net::unix::pipe::Receiver::from_owned_fd(read.into())?,
        write.into(),
    ))
}

/// The unit's properties, as `systemd-run` would send them.
fn properties<'a>(
    spec: &'a CommandSpec,
    program: &Path,
    caller: Option<&Invocation>,
    bound_to: Option<&str>,
    stdout: Fd<'a>,
    stderr: Fd<'a>,
) -> Vec<(&'static str, Value<'a>)> {
    let mut argv = vec![program.to_string_lossy().into_owned()];
    argv.extend(spec.args.iter().map(|a| a.to_string_lossy().into_owned()));
    let exec: Vec<(String, Vec<String>, bool)> =
        vec![(program.to_string_lossy().into_owned(), argv, false)];
    let sandbox = spec.tool.sandbox();
    let mut env = vec![format!(
        "PATH={}",
        std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into())
    )];
    env.extend(sandbox.environment.iter().map(|e| e.to_string()));
    env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
    let mut description = match caller {
        Some(c) => format!(
            "recoveryd run {} step {}: {}",
            c.run,
            c.step,
            spec.display()
        ),
        None => format!("recoveryd: {}", spec.display()),
    };
    if description.len() > 200 {
        let mut cut = 200;
        while !description.is_char_boundary(cut) {
            cut -= 1;
        }
        description.truncate(cut);
    }
    let mut fields: Vec<Vec<u8>> = Vec::new();
    if let Some(c) = caller {
        fields.push(format!("RECOVERY_RUN={}", c.run).into_bytes());
        fields.push(format!("RECOVERY_STEP={}", c.step).into_bytes());
    }
    let cwd = spec
        .cwd
        .as_deref()
        .unwrap_or(Path::new("/"))
        .to_string_lossy()
        .into_owned();
    let mut p: Vec<(&'static str, Value<'a>)> = vec![
        ("Description", Value::from(description)),
        ("Type", Value::from("exec")),
        ("ExecStart", Value::from(exec)),
        ("Environment", Value::from(env)),
        ("WorkingDirectory", Value::from(cwd)),
        ("StandardInput", Value::from("null")),
        ("StandardOutputFileDescriptor", Value::from(stdout)),
        ("StandardErrorFileDescriptor", Value::from(stderr)),
        (
            "RuntimeMaxUSec",
            Value::from(spec.timeout.as_micros().min(u64::MAX as u128) as u64),
        ),
        (
            "TimeoutStopUSec",
            Value::from(STOP_GRACE.as_micros() as u64),
        ),
        ("KillMode", Value::from("control-group")),
        ("SendSIGKILL", Value::from(true)),
        // Kept until this side has read how it ended (Unref), then collected, failed or not.
        ("AddRef", Value::from(true)),
        ("CollectMode", Value::from("inactive-or-failed")),
        ("LockPersonality", Value::from(true)),
        ("RestrictRealtime", Value::from(true)),
        (
            "SystemCallArchitectures",
            Value::from(vec!["native".to_string()]),
        ),
    ];
    if !fields.is_empty() {
        p.push(("LogExtraFields", Value::from(fields)));
    }
    if let Some(unit) = bound_to {
        // Stopped when the daemon's unit stops, but after it (stop order is the reverse of
        // Before=): the step in progress gets the daemon's stop grace to finish, as when the
        // tools were its children under KillMode=mixed. Before= never makes this start wait
        // for the daemon's own start job.
        p.push(("BindsTo", Value::from(vec![unit.to_string()])));
        p.push(("Before", Value::from(vec![unit.to_string()])));
    }
    p.extend(sandbox_properties(&sandbox));
    p
}

fn sandbox_properties(s: &Sandbox) -> Vec<(&'static str, Value<'static>)> {
    let mut p: Vec<(&'static str, Value<'static>)> = Vec::new();
    if s.private_network {
        p.push(("PrivateNetwork", Value::from(true)));
    }
    if let Some(families) = s.address_families {
        let list: Vec<String> = families.iter().map(|f| f.to_string()).collect();
        p.push(("RestrictAddressFamilies", Value::from((true, list))));
    }
    if let Some(v) = s.protect_system {
        p.push(("ProtectSystem", Value::from(v)));
    }
    if let Some(v) = s.protect_home {
        p.push(("ProtectHome", Value::from(v)));
    }
    if s.private_tmp {
        p.push(("PrivateTmp", Value::from(true)));
    }
    if s.protect_kernel {
        for k in [
            "ProtectKernelTunables",
            "ProtectKernelModules",
            "ProtectKernelLogs",
            "ProtectControlGroups",
        ] {
            p.push((k, Value::from(true)));
        }
    }
    if let Some(mask) = s.capabilities {
        p.push(("CapabilityBoundingSet", Value::from(mask)));
    }
    if s.no_new_privileges {
        p.push(("NoNewPrivileges", Value::from(true)));
    }
    if s.restrict_namespaces {
        // The namespaces allowed: none.
        p.push(("RestrictNamespaces", Value::from(0u64)));
    }
    if s.deny_write_execute {
        p.push(("MemoryDenyWriteExecute", Value::from(true)));
    }
    p
}

/// Poll the unit until it is inactive or failed, then read how it ended. A short program
/// ends within the first polls; the interval grows to 200 ms for long ones.
async fn wait_ended(
    manager: &ManagerProxy<'_>,
    name: &str,
    deadline: Instant,
) -> anyhow::Result<Ended> {
    let path: OwnedObjectPath = manager.get_unit(name).await?;
    let conn = manager.inner().connection();
    let unit = UnitProxy::builder(conn)
        .path(path.clone())
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let mut interval = Duration::from_millis(5);
    loop {
        let state = unit.active_state().await?;
        if state == "inactive" || state == "failed" {
            break;
        }
        if Instant::now() >= deadline {
            anyhow::bail!("{name} was still {state} past its time limit");
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(200));
    }
    let service = ServiceProxy::builder(conn)
        .path(path)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    Ok(Ended {
        outcome: service.outcome().await?,
        code: service.exec_main_code().await?,
        status: service.exec_main_status().await?,
    })
}

/// Drop this side's reference so that systemd collects the unit.
async fn release(manager: &ManagerProxy<'_>, name: &str) {
    if let Err(e) = manager.unref_unit(name).await
        && error_name(&e).as_deref() != Some("org.freedesktop.systemd1.NoSuchUnit")
    {
        tracing::debug!("releasing {name}: {e}");
    }
}

/// What a reader got; a pipe still open after the unit was collected is not waited for.
async fn collect(task: tokio::task::JoinHandle<Vec<u8>>) -> Vec<u8> {
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(buf)) => buf,
        _ => Vec::new(),
    }
}

fn describe_status(e: &Ended) -> String {
    match (e.outcome.as_str(), e.code) {
        (_, 1) => format!("exit status: {}", e.status),
        (_, 2) | (_, 3) => format!("signal: {} (unit result {})", e.status, e.outcome),
        (outcome, _) => format!("unit result {outcome}"),
    }
}

/// Stops the unit if the caller goes away before it ended (a step that timed out or was
/// cancelled is dropped mid-call).
struct StopOnDrop {
    conn: zbus::Connection,
    name: Option<String>,
}

impl StopOnDrop {
    fn disarm(mut self) {
        self.name = None;
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let conn = self.conn.clone();
        handle.spawn(async move {
            if let Ok(m) = ManagerProxy::new(&conn).await {
                match m.stop_unit(&name, "replace").await {
                    Ok(_) => tracing::info!("stopped {name}: its caller went away"),
                    Err(e) => tracing::debug!("stopping {name}: {e}"),
                }
                let _ = m.unref_unit(&name).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::sandbox::Tool;

    #[test]
    fn unit_names_carry_tool_run_and_step_and_are_unique() {
        let t = TransientUnits::new(
            Arc::new(SystemBus::new(Duration::from_secs(1))),
            Arc::new(|| None),
        );
        let spec = CommandSpec::new("crictl", Duration::from_secs(1)).tool(Tool::Crictl);
        let caller = Invocation {
            run: 7,
            step: "restore-etcd".into(),
        };
        let a = t.unit_name(&spec, Some(&caller));
        let b = t.unit_name(&spec, Some(&caller));
        let pid = std::process::id();
        assert_eq!(
            a,
            format!("recoveryd-tool-crictl-run7-restore-etcd-p{pid}n1.service")
        );
        assert_ne!(a, b);
        assert_eq!(
            t.unit_name(&spec, None),
            format!("recoveryd-tool-crictl-p{pid}n3.service")
        );
    }

    #[test]
    fn bare_names_are_found_in_path_and_missing_ones_named() {
        assert!(resolve(Path::new("sh")).unwrap().is_absolute());
        let e = resolve(Path::new("no-such-tool-here")).unwrap_err();
        assert!(
            e.to_string().contains("no-such-tool-here is not in PATH"),
            "{e}"
        );
    }
}
