//! A fake systemd (PID 1's `org.freedesktop.systemd1`) and logind (`org.freedesktop.login1`) for
//! tests, in one process on the bus named by `DBUS_SYSTEM_BUS_ADDRESS`. It follows systemd's
//! D-Bus API (org.freedesktop.systemd1(5), org.freedesktop.login1(5)): member names, signatures,
//! error names, job/JobRemoved semantics and inhibitor locks. Built by `cargo test` as the example `fake-systemd`.
//!
//! Usage: `fake-systemd --state FILE --log FILE [--no-logind] [--hostnamed]`
//!
//! With `--hostnamed` it also owns `org.freedesktop.hostname1`, whose `Hostname` property is the
//! state's `hostname` (the live kernel hostname, as systemd-hostnamed reports it).
//!
//! The state file (JSON) is the fake's whole model. It is re-read before every call and written
//! back (atomically) whenever a unit changes, so a test can both inject faults and observe units:
//!
//! ```json
//! {"units": {"kubelet.service": {"active": "active", "unit_file_state": "enabled",
//!                                "stop_result": "done", "start_result": "done",
//!                                "hang": false, "job_delay_ms": 20}},
//!  "removed_before_reply": false, "reboot_blocked": false}
//! ```
//!
//! A unit missing from `units` does not exist (`reboot.target` always exists). If FILE does not
//! exist, a default state with `kubelet.service` and `crio.service` is written there.
//!
//! Jobs: a start/stop/restart puts the unit in `activating`/`deactivating`, then after
//! `job_delay_ms` sets `active`/`inactive` (result `done`) or `failed` (any other result) and
//! emits `JobRemoved` (plus PropertiesChanged on the unit), only while some client is subscribed.
//! A unit with `hang` never finishes its jobs. A restart's result is `stop_result` unless that is
//! `done`, else `start_result`.
//!
//! Every method call (and every inhibitor release and accepted reboot, as `InhibitorReleased` /
//! `RebootRequested`) is appended to the log as one JSON line, e.g. `{"call": "StopUnit",
//! "args": ["kubelet.service", "replace"], "sender": ":1.4", "sender_uid": 0}`. Property reads
//! are not logged. `READY` is printed on stdout once the names are owned.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use zbus::message::{Header, Message};
use zbus::names::ErrorName;
use zbus::object_server::SignalEmitter;
use zbus::{Connection, OwnedObjectPath, interface};

const SYSTEMD_NAME: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const LOGIND_NAME: &str = "org.freedesktop.login1";
const LOGIND_PATH: &str = "/org/freedesktop/login1";

/// `job_mode_table` in systemd's `src/core/job.c`.
const JOB_MODES: [&str; 9] = [
    "replace",
    "fail",
    "replace-irreversibly",
    "isolate",
    "flush",
    "ignore-dependencies",
    "ignore-requirements",
    "triggering",
    "restart-dependencies",
];
/// logind `RebootWithFlags` flags.
const SD_LOGIND_ROOT_CHECK_INHIBITORS: u64 = 1;
const SD_LOGIND_SKIP_INHIBITORS: u64 = 1 << 4;
const SD_LOGIND_FLAGS_PUBLIC: u64 = 0b1_1111;

#[derive(Parser)]
struct Args {
    /// JSON state file (read before each call, written back on changes).
    #[arg(long)]
    state: PathBuf,
    /// JSON-lines call log.
    #[arg(long)]
    log: PathBuf,
    /// Do not own `org.freedesktop.login1` (a host without logind).
    #[arg(long)]
    no_logind: bool,
    /// Also own `org.freedesktop.hostname1`.
    #[arg(long)]
    hostnamed: bool,
}

// ---------------------------------------------------------------------------------------------
// State file and call log
// ---------------------------------------------------------------------------------------------

fn default_systemd_version() -> u32 {
    258
}

#[derive(Serialize, Deserialize, Clone)]
struct State {
    #[serde(default)]
    units: BTreeMap<String, UnitState>,
    /// Emit `JobRemoved` before the method reply (the real systemd can).
    #[serde(default)]
    removed_before_reply: bool,
    /// logind refuses every reboot as if a block inhibitor were held.
    #[serde(default)]
    reboot_blocked: bool,
    /// The systemd version whose logind this is: how a refused reboot is said changed
    /// (`verify_shutdown_creds` in `logind-dbus.c`): up to 256 root with
    /// `SD_LOGIND_ROOT_CHECK_INHIBITORS` gets `AccessDenied` "Access denied to root due to active
    /// block inhibitor"; 257 says `AccessDenied` "Access denied due to active block inhibitor";
    /// from 258 on it is `BlockedByInhibitorLock` "Operation denied due to active block
    /// inhibitor". RHEL 9 ships 252.
    #[serde(default = "default_systemd_version")]
    systemd_version: u32,
    /// Keys this fake does not know are kept when it writes the file back.
    #[serde(flatten)]
    extra: serde_json::Map<String, Value>,
}

#[derive(Serialize, Deserialize, Clone)]
struct UnitState {
    /// `ActiveState`: active, inactive, failed, activating, deactivating, ...
    #[serde(default = "default_active")]
    active: String,
    /// `UnitFileState`: enabled, disabled, static, masked, ...
    #[serde(default = "default_unit_file_state")]
    unit_file_state: String,
    /// `JobRemoved` result of a stop job: done, failed, timeout, canceled, ...
    #[serde(default = "default_result")]
    stop_result: String,
    /// `JobRemoved` result of a start job (and of the start half of a restart).
    #[serde(default = "default_result")]
    start_result: String,
    /// Jobs for this unit never finish (no `JobRemoved`).
    #[serde(default)]
    hang: bool,
    /// How long a job runs before `JobRemoved`.
    #[serde(default = "default_job_delay_ms")]
    job_delay_ms: u64,
    #[serde(flatten)]
    extra: serde_json::Map<String, Value>,
}

fn default_active() -> String {
    "active".into()
}
fn default_unit_file_state() -> String {
    "enabled".into()
}
fn default_result() -> String {
    "done".into()
}
fn default_job_delay_ms() -> u64 {
    20
}

impl UnitState {
    fn new(active: &str, unit_file_state: &str) -> UnitState {
        UnitState {
            active: active.into(),
            unit_file_state: unit_file_state.into(),
            stop_result: default_result(),
            start_result: default_result(),
            hang: false,
            job_delay_ms: default_job_delay_ms(),
            extra: Default::default(),
        }
    }
}

impl State {
    /// The unit `name`, if it exists. `reboot.target` always exists, like on a real system.
    fn unit(&self, name: &str) -> Option<UnitState> {
        match self.units.get(name) {
            Some(u) => Some(u.clone()),
            None if name == "reboot.target" => Some(UnitState::new("inactive", "static")),
            None => None,
        }
    }
}

/// The state file: loaded before each use, saved atomically (write + rename) after changes.
struct StateFile {
    path: PathBuf,
    /// Serialises our own load-modify-save cycles.
    lock: Mutex<()>,
}

impl StateFile {
    fn load(&self) -> State {
        // A test may be rewriting the file right now: retry a torn read for a moment.
        for _ in 0..50 {
            if let Ok(text) = std::fs::read_to_string(&self.path)
                && let Ok(state) = serde_json::from_str(&text)
            {
                return state;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("cannot read state file {}", self.path.display());
    }

    fn save(&self, state: &State) {
        let tmp = self.path.with_extension("tmp-fake");
        std::fs::write(&tmp, serde_json::to_vec_pretty(state).unwrap()).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    /// Load, change, save.
    fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let _guard = self.lock.lock().unwrap();
        let mut state = self.load();
        let r = f(&mut state);
        self.save(&state);
        r
    }
}

/// The JSON-lines call log. Each entry is flushed at once.
struct CallLog(Mutex<std::fs::File>);

impl CallLog {
    fn open(path: &Path) -> CallLog {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        CallLog(Mutex::new(file))
    }

    fn record(&self, entry: Value) {
        let mut line = serde_json::to_vec(&entry).unwrap();
        line.push(b'\n');
        let mut file = self.0.lock().unwrap();
        file.write_all(&line).unwrap();
        file.flush().unwrap();
    }
}

/// A D-Bus error reply with any name (`org.freedesktop.systemd1.NoSuchUnit`, ...).
#[derive(Debug)]
struct Failure {
    name: String,
    message: String,
}

impl Failure {
    fn new(name: &str, message: impl Into<String>) -> Failure {
        Failure {
            name: name.into(),
            message: message.into(),
        }
    }
    fn invalid_args(message: impl Into<String>) -> Failure {
        Failure::new("org.freedesktop.DBus.Error.InvalidArgs", message)
    }
    fn no_such_unit(message: impl Into<String>) -> Failure {
        Failure::new("org.freedesktop.systemd1.NoSuchUnit", message)
    }
    fn file_not_found(message: impl Into<String>) -> Failure {
        Failure::new("org.freedesktop.DBus.Error.FileNotFound", message)
    }
}

impl zbus::DBusError for Failure {
    fn create_reply(&self, call: &Header<'_>) -> zbus::Result<Message> {
        Message::error(call, self.name.as_str()).build(&self.message)
    }
    fn name(&self) -> ErrorName<'_> {
        ErrorName::from_str_unchecked(&self.name)
    }
    fn description(&self) -> Option<&str> {
        Some(&self.message)
    }
}

impl From<zbus::Error> for Failure {
    fn from(e: zbus::Error) -> Failure {
        Failure::new("org.freedesktop.DBus.Error.Failed", e.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Shared model
// ---------------------------------------------------------------------------------------------

/// An active logind inhibitor lock.
struct Inhibitor {
    id: u32,
    what: String,
    who: String,
    why: String,
    mode: String,
    uid: u32,
    pid: u32,
}

/// Everything both services share.
struct Fake {
    state: StateFile,
    log: CallLog,
    next_job: AtomicU32,
    /// Unique names of the clients that called `Subscribe` (systemd tracks them per client).
    subscribers: Mutex<HashSet<String>>,
    inhibitors: Mutex<Vec<Inhibitor>>,
    next_inhibitor: AtomicU32,
    /// `ScheduleShutdown` (type, usec), if any.
    scheduled: Mutex<Option<(String, u64)>>,
    /// Transient units (`StartTransientUnit`) by name.
    transient: Mutex<BTreeMap<String, Transient>>,
}

impl Fake {
    /// Logs a method call with its caller, before replying.
    async fn record(&self, conn: &Connection, hdr: &Header<'_>, call: &str, args: Value) {
        let sender = hdr.sender().map(|s| s.to_string());
        let uid = match &sender {
            Some(s) => caller_uid(conn, s).await,
            None => None,
        };
        self.log
            .record(json!({"call": call, "args": args, "sender": sender, "sender_uid": uid}));
    }

    /// Sets a unit's `ActiveState`; subscribers get PropertiesChanged on the unit object.
    async fn set_active(&self, conn: &Connection, unit: &str, active: &str) {
        self.state.update(|s| {
            let mut u = s
                .unit(unit)
                .unwrap_or_else(|| UnitState::new("inactive", ""));
            u.active = active.into();
            s.units.insert(unit.into(), u);
        });
        if !self.has_subscribers() {
            return;
        }
        if let Ok(iface) = conn
            .object_server()
            .interface::<_, Unit>(unit_path(unit))
            .await
        {
            let (e, u) = (iface.signal_emitter(), iface.get().await);
            let _ = u.active_state_changed(e).await;
            let _ = u.sub_state_changed(e).await;
        }
    }

    fn has_subscribers(&self) -> bool {
        !self.subscribers.lock().unwrap().is_empty()
    }
}

/// `org.freedesktop.DBus.GetConnectionUnixUser(sender)`.
/// Root, or the user this fake runs as: a test run by a normal user stands in for root on its
/// private bus (see `tests/common/bus.rs`); as root this is exactly logind's rule.
fn stands_for_root(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

async fn caller_uid(conn: &Connection, sender: &str) -> Option<u32> {
    let dbus = zbus::fdo::DBusProxy::new(conn).await.ok()?;
    dbus.get_connection_unix_user(sender.try_into().ok()?)
        .await
        .ok()
}

/// `/org/freedesktop/systemd1/unit/<escaped>`: `[A-Za-z0-9]` kept, other bytes `_xx`.
fn unit_path(name: &str) -> OwnedObjectPath {
    let mut p = String::from("/org/freedesktop/systemd1/unit/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() {
            p.push(b as char);
        } else {
            p.push_str(&format!("_{b:02x}"));
        }
    }
    OwnedObjectPath::try_from(p).unwrap()
}

fn job_path(id: u32) -> OwnedObjectPath {
    OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{id}")).unwrap()
}

/// A plausible `SubState` for an `ActiveState`.
fn sub_state(unit: &str, active: &str) -> &'static str {
    let target = unit.ends_with(".target");
    match active {
        "active" if target => "active",
        "active" => "running",
        "activating" => "start",
        "deactivating" => "stop-sigterm",
        "reloading" => "reload",
        "failed" => "failed",
        _ => "dead",
    }
}

// ---------------------------------------------------------------------------------------------
// org.freedesktop.systemd1.Manager
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum JobKind {
    Start,
    Stop,
    Restart,
}

struct Manager(Arc<Fake>);

impl Manager {
    /// Queues a start/stop/restart job and returns its path. The job's outcome comes from the
    /// unit's state entry; `JobRemoved` goes to subscribers after `job_delay_ms`, or before the
    /// reply when `removed_before_reply` is set.
    async fn queue_job(
        &self,
        kind: JobKind,
        name: &str,
        mode: &str,
        conn: &Connection,
    ) -> Result<OwnedObjectPath, Failure> {
        if !JOB_MODES.contains(&mode) {
            return Err(Failure::invalid_args(format!("Job mode {mode} invalid.")));
        }
        if kind != JobKind::Start && mode == "isolate" {
            return Err(Failure::invalid_args("Isolate is only valid for start."));
        }
        let state = self.0.state.load();
        let Some(unit) = state.unit(name) else {
            return Err(Failure::no_such_unit(format!("Unit {name} not found.")));
        };
        // Make sure the unit object exists (a unit may have been added to the state file).
        conn.object_server()
            .at(
                unit_path(name),
                Unit {
                    name: name.into(),
                    fake: self.0.clone(),
                },
            )
            .await?;

        let id = self.0.next_job.fetch_add(1, Ordering::SeqCst);
        let result = match kind {
            JobKind::Stop => unit.stop_result.clone(),
            JobKind::Start => unit.start_result.clone(),
            JobKind::Restart if unit.stop_result != "done" => unit.stop_result.clone(),
            JobKind::Restart => unit.start_result.clone(),
        };
        let (running, done) = match kind {
            JobKind::Stop => ("deactivating", "inactive"),
            JobKind::Start | JobKind::Restart => ("activating", "active"),
        };
        if kind == JobKind::Start && name == "reboot.target" {
            self.0.log.record(
                json!({"call": "RebootRequested", "via": "systemd1.StartUnit", "mode": mode}),
            );
        }
        self.0.set_active(conn, name, running).await;
        let job = Job {
            id,
            unit: name.into(),
            final_state: if result == "done" { done } else { "failed" }.into(),
            result,
            delay: Duration::from_millis(unit.job_delay_ms),
            fake: self.0.clone(),
            conn: conn.clone(),
        };
        job.announce().await;
        if unit.hang {
            // Never finishes: no JobRemoved, the unit stays activating/deactivating.
        } else if state.removed_before_reply {
            job.finish().await;
        } else {
            tokio::spawn(job.finish());
        }
        Ok(job_path(id))
    }

    fn install_changes(
        &self,
        files: &[String],
        enable: bool,
        runtime: bool,
    ) -> Result<Vec<(String, String, String)>, Failure> {
        self.0.state.update(|s| {
            let mut changes = Vec::new();
            for file in files {
                // As install_error() in systemd's dbus-manager.c answers -ENOENT.
                let Some(mut unit) = s.unit(file) else {
                    return Err(Failure::no_such_unit(format!(
                        "Unit file {file} does not exist."
                    )));
                };
                if unit.unit_file_state == "masked" {
                    return Err(Failure::new(
                        "org.freedesktop.systemd1.UnitMasked",
                        format!("Unit file {file} is masked."),
                    ));
                }
                let was_runtime = unit.unit_file_state == "enabled-runtime";
                let dir = if (enable && runtime) || (!enable && was_runtime) {
                    "/run/systemd/system"
                } else {
                    "/etc/systemd/system"
                };
                let link = format!("{dir}/multi-user.target.wants/{file}");
                let is_enabled = unit.unit_file_state.starts_with("enabled");
                if enable && !is_enabled && unit.unit_file_state != "static" {
                    unit.unit_file_state = if runtime {
                        "enabled-runtime"
                    } else {
                        "enabled"
                    }
                    .into();
                    changes.push((
                        "symlink".into(),
                        link,
                        format!("/usr/lib/systemd/system/{file}"),
                    ));
                } else if !enable && is_enabled {
                    unit.unit_file_state = "disabled".into();
                    changes.push(("unlink".into(), link, String::new()));
                }
                s.units.insert(file.clone(), unit);
            }
            Ok(changes)
        })
    }
}

/// A queued job; `finish` applies its outcome.
struct Job {
    id: u32,
    unit: String,
    result: String,
    final_state: String,
    delay: Duration,
    fake: Arc<Fake>,
    conn: Connection,
}

impl Job {
    /// `JobNew` to subscribers (a courtesy: clients wait for `JobRemoved` only).
    async fn announce(&self) {
        if self.fake.has_subscribers() {
            let e = SignalEmitter::new(&self.conn, SYSTEMD_PATH).unwrap();
            let _ = Manager::job_new(&e, self.id, job_path(self.id), &self.unit).await;
        }
    }

    async fn finish(self) {
        tokio::time::sleep(self.delay).await;
        self.fake
            .set_active(&self.conn, &self.unit, &self.final_state)
            .await;
        // Like systemd, signals go out only while someone is subscribed.
        if self.fake.has_subscribers() {
            let e = SignalEmitter::new(&self.conn, SYSTEMD_PATH).unwrap();
            let _ = Manager::job_removed(&e, self.id, job_path(self.id), &self.unit, &self.result)
                .await;
        }
    }
}

#[interface(name = "org.freedesktop.systemd1.Manager")]
impl Manager {
    async fn subscribe(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Failure> {
        self.0.record(conn, &hdr, "Subscribe", json!([])).await;
        let sender = hdr.sender().map(|s| s.to_string()).unwrap_or_default();
        if !self.0.subscribers.lock().unwrap().insert(sender) {
            return Err(Failure::new(
                "org.freedesktop.systemd1.AlreadySubscribed",
                "Client is already subscribed.",
            ));
        }
        Ok(())
    }

    async fn unsubscribe(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Failure> {
        self.0.record(conn, &hdr, "Unsubscribe", json!([])).await;
        let sender = hdr.sender().map(|s| s.to_string()).unwrap_or_default();
        if !self.0.subscribers.lock().unwrap().remove(&sender) {
            return Err(Failure::new(
                "org.freedesktop.systemd1.NotSubscribed",
                "Client is not subscribed.",
            ));
        }
        Ok(())
    }

    #[zbus(out_args("unit"))]
    async fn get_unit(
        &self,
        name: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Failure> {
        self.0.record(conn, &hdr, "GetUnit", json!([name])).await;
        if self.0.state.load().unit(&name).is_none() {
            return Err(Failure::no_such_unit(format!("Unit {name} not loaded.")));
        }
        self.serve_unit(conn, &name).await?;
        Ok(unit_path(&name))
    }

    /// Returns a unit object even for a unit that does not exist (`LoadState` `not-found`).
    #[zbus(out_args("unit"))]
    async fn load_unit(
        &self,
        name: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Failure> {
        self.0.record(conn, &hdr, "LoadUnit", json!([name])).await;
        self.serve_unit(conn, &name).await?;
        Ok(unit_path(&name))
    }

    #[zbus(out_args("job"))]
    async fn start_unit(
        &self,
        name: String,
        mode: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Failure> {
        self.0
            .record(conn, &hdr, "StartUnit", json!([name, mode]))
            .await;
        self.queue_job(JobKind::Start, &name, &mode, conn).await
    }

    #[zbus(out_args("job"))]
    async fn stop_unit(
        &self,
        name: String,
        mode: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Failure> {
        self.0
            .record(conn, &hdr, "StopUnit", json!([name, mode]))
            .await;
        let pid = self
            .0
            .transient
            .lock()
            .unwrap()
            .get(&name)
            .and_then(|t| t.pid);
        if let Some(pid) = pid {
            // A transient unit's stop: SIGTERM to its process group (KillMode=control-group).
            kill_group(pid, 15);
        }
        self.queue_job(JobKind::Stop, &name, &mode, conn).await
    }

    #[zbus(out_args("job"))]
    async fn restart_unit(
        &self,
        name: String,
        mode: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Failure> {
        self.0
            .record(conn, &hdr, "RestartUnit", json!([name, mode]))
            .await;
        self.queue_job(JobKind::Restart, &name, &mode, conn).await
    }

    /// daemon-reload: nothing to reload here; emits `Reloading(true/false)` to subscribers.
    async fn reload(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] e: SignalEmitter<'_>,
    ) -> Result<(), Failure> {
        self.0.record(conn, &hdr, "Reload", json!([])).await;
        if self.0.has_subscribers() {
            Manager::reloading(&e, true).await?;
            Manager::reloading(&e, false).await?;
        }
        Ok(())
    }

    #[zbus(out_args("carries_install_info", "changes"))]
    async fn enable_unit_files(
        &self,
        files: Vec<String>,
        runtime: bool,
        force: bool,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] e: SignalEmitter<'_>,
    ) -> Result<(bool, Vec<(String, String, String)>), Failure> {
        self.0
            .record(
                conn,
                &hdr,
                "EnableUnitFiles",
                json!([files, runtime, force]),
            )
            .await;
        let changes = self.install_changes(&files, true, runtime)?;
        if self.0.has_subscribers() {
            Manager::unit_files_changed(&e).await?;
        }
        Ok((true, changes))
    }

    #[zbus(out_args("changes"))]
    async fn disable_unit_files(
        &self,
        files: Vec<String>,
        runtime: bool,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] e: SignalEmitter<'_>,
    ) -> Result<Vec<(String, String, String)>, Failure> {
        self.0
            .record(conn, &hdr, "DisableUnitFiles", json!([files, runtime]))
            .await;
        let changes = self.install_changes(&files, false, runtime)?;
        if self.0.has_subscribers() {
            Manager::unit_files_changed(&e).await?;
        }
        Ok(changes)
    }

    #[zbus(out_args("state"))]
    async fn get_unit_file_state(
        &self,
        file: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, Failure> {
        self.0
            .record(conn, &hdr, "GetUnitFileState", json!([file]))
            .await;
        match self.0.state.load().unit(&file) {
            Some(u) => Ok(u.unit_file_state),
            None => Err(Failure::file_not_found("No such file or directory")),
        }
    }

    /// `StartTransientUnit`: only `.service` units with `ExecStart=`, as recoveryd sends them
    /// (see "Transient units" below).
    #[zbus(out_args("job"))]
    async fn start_transient_unit(
        &self,
        name: String,
        mode: String,
        properties: Vec<(String, zbus::OwnedVariant)>,
        aux: Vec<(String, Vec<(String, zbus::OwnedVariant)>)>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Failure> {
        let logged: Vec<Value> = properties
            .iter()
            .map(|(k, v)| json!([k, render_value(v)]))
            .collect();
        self.0
            .record(
                conn,
                &hdr,
                "StartTransientUnit",
                json!([name, mode, logged, aux.len()]),
            )
            .await;
        self.start_transient(conn, &name, &mode, properties).await
    }

    #[zbus(name = "GetUnitByPID", out_args("unit"))]
    async fn get_unit_by_pid(
        &self,
        pid: u32,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Failure> {
        self.0
            .record(conn, &hdr, "GetUnitByPID", json!([pid]))
            .await;
        let found = self
            .0
            .transient
            .lock()
            .unwrap()
            .iter()
            .find(|(_, t)| t.pid == Some(pid))
            .map(|(n, _)| n.clone());
        match found {
            Some(n) => Ok(unit_path(&n)),
            None => Err(Failure::new(
                "org.freedesktop.systemd1.NoUnitForPID",
                format!("PID {pid} does not belong to any loaded unit."),
            )),
        }
    }

    async fn kill_unit(
        &self,
        name: String,
        whom: String,
        signal: i32,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Failure> {
        self.0
            .record(conn, &hdr, "KillUnit", json!([name, whom, signal]))
            .await;
        let pid = self.0.transient.lock().unwrap().get(&name).map(|t| t.pid);
        match pid {
            None => Err(Failure::no_such_unit(format!("Unit {name} not loaded."))),
            Some(Some(pid)) => {
                kill_group(pid, signal);
                Ok(())
            }
            Some(None) => Err(Failure::new(
                "org.freedesktop.systemd1.NoSuchProcess",
                "No matching processes to kill",
            )),
        }
    }

    async fn unref_unit(
        &self,
        name: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Failure> {
        self.0.record(conn, &hdr, "UnrefUnit", json!([name])).await;
        let mut map = self.0.transient.lock().unwrap();
        let Some(t) = map.get_mut(&name) else {
            return Err(Failure::no_such_unit(format!("Unit {name} not loaded.")));
        };
        t.referenced = false;
        if t.ended.is_some() {
            map.remove(&name);
            drop(map);
            self.0.state.update(|s| s.units.remove(&name));
        }
        Ok(())
    }

    #[zbus(signal)]
    async fn job_new(
        e: &SignalEmitter<'_>,
        id: u32,
        job: OwnedObjectPath,
        unit: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn job_removed(
        e: &SignalEmitter<'_>,
        id: u32,
        job: OwnedObjectPath,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn unit_files_changed(e: &SignalEmitter<'_>) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn reloading(e: &SignalEmitter<'_>, active: bool) -> zbus::Result<()>;
}

impl Manager {
    async fn serve_unit(&self, conn: &Connection, name: &str) -> zbus::Result<()> {
        let unit = Unit {
            name: name.into(),
            fake: self.0.clone(),
        };
        conn.object_server().at(unit_path(name), unit).await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Transient units
// ---------------------------------------------------------------------------------------------
//
// What systemd's `transient_unit_from_message` (dbus-manager.c) and the service's transient
// property setters (dbus-service.c, dbus-execute.c, dbus-unit.c) do, for the properties
// recoveryd sends: a name that is loaded already is `UnitExists`; a property this fake does not
// know is refused as systemd refuses an unknown one ("Cannot set property X, or unknown
// property.", `PropertyReadOnly`); `Type=exec` starts `ExecStart=`'s first command with exactly
// `Environment=`, `WorkingDirectory=` and the passed stdout/stderr descriptors, in a process
// group standing in for the unit's cgroup; `RuntimeMaxUSec=` ends it with SIGTERM, then SIGKILL
// after `TimeoutStopUSec=`, and `Result` `timeout`; otherwise `Result` is `success`,
// `exit-code` or `signal` with `ExecMainCode`/`ExecMainStatus` as in `service_sigchld_event`.
// The unit is `active` while it runs, then `inactive` (success) or `failed`; with `AddRef=` it
// stays until `UnrefUnit` (or the client leaves), without it it is collected at its end
// (`CollectMode=inactive-or-failed`). Sandbox properties are accepted and recorded, not enforced.

/// The properties recoveryd sends (and systemd accepts for a transient service).
const TRANSIENT_PROPERTIES: &[&str] = &[
    "Description",
    "Type",
    "ExecStart",
    "Environment",
    "WorkingDirectory",
    "StandardInput",
    "StandardOutputFileDescriptor",
    "StandardErrorFileDescriptor",
    "RuntimeMaxUSec",
    "TimeoutStopUSec",
    "KillMode",
    "SendSIGKILL",
    "AddRef",
    "CollectMode",
    "LockPersonality",
    "RestrictRealtime",
    "SystemCallArchitectures",
    "LogExtraFields",
    "BindsTo",
    "Before",
    "PrivateNetwork",
    "RestrictAddressFamilies",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "CapabilityBoundingSet",
    "NoNewPrivileges",
    "RestrictNamespaces",
    "MemoryDenyWriteExecute",
];

struct Transient {
    pid: Option<u32>,
    referenced: bool,
    /// (Result, ExecMainCode, ExecMainStatus) once it ended.
    ended: Option<(String, i32, i32)>,
}

/// A property value for the call log (descriptors as "fd").
fn render_value(v: &zbus::OwnedVariant) -> Value {
    use zbus::Variant as V;
    fn go(v: &V<'_>) -> Value {
        match v {
            V::Bool(b) => json!(b),
            V::U64(n) => json!(n),
            V::I32(n) => json!(n),
            V::U32(n) => json!(n),
            V::U8(n) => json!(n),
            V::Str(s) => json!(s.as_str()),
            V::Fd(_) => json!("fd"),
            V::Array(a) => Value::Array(a.iter().map(go).collect()),
            V::Structure(st) => Value::Array(st.fields().iter().map(go).collect()),
            V::Variant(inner) => go(inner),
            other => json!(other.to_string()),
        }
    }
    go(v)
}

fn kill_group(pid: u32, signal: i32) {
    if let (Some(pid), Some(sig)) = (
        rustix::process::Pid::from_raw(pid as i32),
        rustix::process::Signal::from_named_raw(signal),
    ) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

impl Manager {
    async fn start_transient(
        &self,
        conn: &Connection,
        name: &str,
        mode: &str,
        properties: Vec<(String, zbus::OwnedVariant)>,
    ) -> Result<OwnedObjectPath, Failure> {
        if !JOB_MODES.contains(&mode) {
            return Err(Failure::invalid_args(format!("Job mode {mode} invalid.")));
        }
        if !name.ends_with(".service") {
            return Err(Failure::invalid_args(format!(
                "Unit type of {name} not supported by this fake."
            )));
        }
        if self.0.state.load().unit(name).is_some()
            || self.0.transient.lock().unwrap().contains_key(name)
        {
            return Err(Failure::new(
                "org.freedesktop.systemd1.UnitExists",
                format!("Unit {name} was already loaded or has a fragment file."),
            ));
        }
        let mut exec: Option<(String, Vec<String>)> = None;
        let mut env: Vec<String> = Vec::new();
        let mut cwd = String::from("/");
        let mut stdout: Option<std::os::fd::OwnedFd> = None;
        let mut stderr: Option<std::os::fd::OwnedFd> = None;
        let mut runtime_max = u64::MAX;
        let mut stop_timeout = 90_000_000u64;
        let mut add_ref = false;
        for (key, value) in properties {
            if !TRANSIENT_PROPERTIES.contains(&key.as_str()) {
                return Err(Failure::new(
                    "org.freedesktop.DBus.Error.PropertyReadOnly",
                    format!("Cannot set property {key}, or unknown property."),
                ));
            }
            let bad = || Failure::invalid_args(format!("Invalid value for {key}"));
            match key.as_str() {
                "ExecStart" => {
                    let list: Vec<(String, Vec<String>, bool)> =
                        value.try_into().map_err(|_| bad())?;
                    let (path, argv, _) = list.into_iter().next().ok_or_else(bad)?;
                    if !path.starts_with('/') {
                        return Err(Failure::invalid_args(format!(
                            "Path {path} is not absolute."
                        )));
                    }
                    exec = Some((path, argv));
                }
                "Environment" => env = value.try_into().map_err(|_| bad())?,
                "WorkingDirectory" => cwd = value.try_into().map_err(|_| bad())?,
                "StandardOutputFileDescriptor" | "StandardErrorFileDescriptor" => {
                    let fd = match &*value {
                        zbus::Variant::Fd(fd) => fd.try_to_owned().map_err(|_| bad())?,
                        _ => return Err(bad()),
                    };
                    let fd: std::os::fd::OwnedFd = zbus::OwnedFd::from(fd).into();
                    if key == "StandardOutputFileDescriptor" {
                        stdout = Some(fd);
                    } else {
                        stderr = Some(fd);
                    }
                }
                "RuntimeMaxUSec" => runtime_max = value.try_into().map_err(|_| bad())?,
                "TimeoutStopUSec" => stop_timeout = value.try_into().map_err(|_| bad())?,
                "AddRef" => add_ref = value.try_into().map_err(|_| bad())?,
                "Type" => {
                    let t: String = value.try_into().map_err(|_| bad())?;
                    if t != "exec" {
                        return Err(Failure::invalid_args(format!(
                            "Type={t} not supported by this fake."
                        )));
                    }
                }
                _ => {}
            }
        }
        let Some((path, argv)) = exec else {
            return Err(Failure::invalid_args(
                "Service has no ExecStart=, ExecStop=, or SuccessAction=. Refusing.",
            ));
        };
        let mut cmd = tokio::process::Command::new(&path);
        cmd.args(argv.iter().skip(1))
            .env_clear()
            .envs(env.iter().filter_map(|e| e.split_once('=')))
            .current_dir(&cwd)
            .stdin(std::process::Stdio::null())
            .process_group(0);
        if let Some(fd) = stdout {
            cmd.stdout(std::process::Stdio::from(fd));
        }
        if let Some(fd) = stderr {
            cmd.stderr(std::process::Stdio::from(fd));
        }
        let child = cmd.spawn();
        // The command keeps copies of the descriptors: drop them, as systemd does once the
        // process has them.
        drop(cmd);
        self.0.state.update(|s| {
            s.units
                .insert(name.to_string(), UnitState::new("active", "transient"))
        });
        self.serve_unit(conn, name).await?;
        let _ = conn
            .object_server()
            .at(
                unit_path(name),
                ServiceObject {
                    name: name.into(),
                    fake: self.0.clone(),
                },
            )
            .await;
        let pid = child.as_ref().ok().and_then(|c| c.id());
        self.0.transient.lock().unwrap().insert(
            name.to_string(),
            Transient {
                pid,
                referenced: add_ref,
                ended: None,
            },
        );
        let fake = self.0.clone();
        let conn = conn.clone();
        let unit = name.to_string();
        tokio::spawn(async move {
            let ended = match child {
                // 203/EXEC, as systemd's child reports a failed execve().
                Err(_) => ("exit-code".to_string(), 1, 203),
                Ok(mut child) => {
                    let limit = Duration::from_micros(runtime_max.min(1 << 40));
                    match tokio::time::timeout(limit, child.wait()).await {
                        Ok(status) => exit_result(status.ok()),
                        Err(_) => {
                            if let Some(pid) = pid {
                                kill_group(pid, 15);
                            }
                            let grace = Duration::from_micros(stop_timeout);
                            let status = match tokio::time::timeout(grace, child.wait()).await {
                                Ok(s) => s.ok(),
                                Err(_) => {
                                    if let Some(pid) = pid {
                                        kill_group(pid, 9);
                                    }
                                    child.wait().await.ok()
                                }
                            };
                            let (_, code, st) = exit_result(status);
                            ("timeout".to_string(), code, st)
                        }
                    }
                }
            };
            // KillMode=control-group: what the main process left behind goes too.
            if let Some(pid) = pid {
                kill_group(pid, 9);
            }
            let active = if ended.0 == "success" {
                "inactive"
            } else {
                "failed"
            };
            let keep = {
                let mut map = fake.transient.lock().unwrap();
                match map.get_mut(&unit) {
                    Some(t) => {
                        t.ended = Some(ended);
                        t.pid = None;
                        t.referenced
                    }
                    None => false,
                }
            };
            fake.set_active(&conn, &unit, active).await;
            if !keep {
                fake.transient.lock().unwrap().remove(&unit);
                fake.state.update(|s| s.units.remove(&unit));
            }
        });
        let id = self.0.next_job.fetch_add(1, Ordering::SeqCst);
        Ok(job_path(id))
    }
}

/// `Result`, `ExecMainCode`, `ExecMainStatus` of an exit status.
fn exit_result(status: Option<std::process::ExitStatus>) -> (String, i32, i32) {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) if s.success() => ("success".into(), 1, 0),
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => ("exit-code".into(), 1, c),
            (None, Some(sig)) => ("signal".into(), 2, sig),
            _ => ("exit-code".into(), 1, 255),
        },
        None => ("exit-code".into(), 1, 255),
    }
}

/// `org.freedesktop.systemd1.Service` of a transient unit.
struct ServiceObject {
    name: String,
    fake: Arc<Fake>,
}

impl ServiceObject {
    fn ended(&self) -> (String, i32, i32) {
        self.fake
            .transient
            .lock()
            .unwrap()
            .get(&self.name)
            .and_then(|t| t.ended.clone())
            .unwrap_or_else(|| ("success".into(), 0, 0))
    }
}

#[interface(name = "org.freedesktop.systemd1.Service")]
impl ServiceObject {
    #[zbus(property, name = "Result")]
    fn outcome(&self) -> String {
        self.ended().0
    }

    #[zbus(property)]
    fn exec_main_code(&self) -> i32 {
        self.ended().1
    }

    #[zbus(property)]
    fn exec_main_status(&self) -> i32 {
        self.ended().2
    }
}

// ---------------------------------------------------------------------------------------------
// org.freedesktop.systemd1.Unit
// ---------------------------------------------------------------------------------------------

/// A unit object; its properties are read from the state file on every access.
struct Unit {
    name: String,
    fake: Arc<Fake>,
}

impl Unit {
    fn current(&self) -> Option<UnitState> {
        self.fake.state.load().unit(&self.name)
    }
}

#[interface(name = "org.freedesktop.systemd1.Unit")]
impl Unit {
    #[zbus(property)]
    fn id(&self) -> String {
        self.name.clone()
    }

    #[zbus(property)]
    fn load_state(&self) -> String {
        if self.current().is_some() {
            "loaded"
        } else {
            "not-found"
        }
        .into()
    }

    #[zbus(property)]
    fn active_state(&self) -> String {
        self.current()
            .map(|u| u.active)
            .unwrap_or_else(|| "inactive".into())
    }

    #[zbus(property)]
    fn sub_state(&self) -> String {
        sub_state(&self.name, &self.active_state()).into()
    }

    #[zbus(property)]
    fn unit_file_state(&self) -> String {
        self.current()
            .map(|u| u.unit_file_state)
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// org.freedesktop.hostname1
// ---------------------------------------------------------------------------------------------

struct Hostnamed(Arc<Fake>);

#[interface(name = "org.freedesktop.hostname1")]
impl Hostnamed {
    #[zbus(property)]
    fn hostname(&self) -> String {
        self.0
            .state
            .load()
            .extra
            .get("hostname")
            .and_then(|h| h.as_str())
            .unwrap_or_default()
            .to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// org.freedesktop.login1.Manager
// ---------------------------------------------------------------------------------------------

struct Login(Arc<Fake>);

impl Login {
    /// logind's verdict on a reboot by `uid` with `flags`. Root bypasses `block` inhibitors
    /// unless it passes `SD_LOGIND_ROOT_CHECK_INHIBITORS` (systemd ≤ 256); others are always
    /// refused while one is held (no polkit here). `block-weak` locks of the caller's own uid
    /// never count. `reboot_blocked` in the state refuses every reboot.
    fn check_reboot(&self, uid: Option<u32>, flags: u64) -> Result<(), Failure> {
        let state = self.0.state.load();
        let root = uid.is_some_and(stands_for_root);
        let blocked = match state.systemd_version {
            ..=256 if root => Failure::new(
                "org.freedesktop.DBus.Error.AccessDenied",
                "Access denied to root due to active block inhibitor",
            ),
            ..=256 => Failure::new(
                "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
                "Interactive authentication required.",
            ),
            257 => Failure::new(
                "org.freedesktop.DBus.Error.AccessDenied",
                "Access denied due to active block inhibitor",
            ),
            _ => Failure::new(
                "org.freedesktop.login1.BlockedByInhibitorLock",
                "Operation denied due to active block inhibitor",
            ),
        };
        if state.reboot_blocked {
            return Err(blocked);
        }
        if root && flags & SD_LOGIND_SKIP_INHIBITORS != 0 {
            return Ok(());
        }
        let held = self.0.inhibitors.lock().unwrap().iter().any(|i| {
            i.what.split(':').any(|w| w == "shutdown")
                && (i.mode == "block" || (i.mode == "block-weak" && Some(i.uid) != uid))
        });
        if held && (!root || flags & SD_LOGIND_ROOT_CHECK_INHIBITORS != 0) {
            return Err(blocked);
        }
        Ok(())
    }

    async fn reboot_now(&self, e: &SignalEmitter<'_>, via: &str, flags: u64) {
        self.0
            .log
            .record(json!({"call": "RebootRequested", "via": via, "flags": flags}));
        let _ = Login::prepare_for_shutdown(e, true).await;
    }

    /// Watches the read end of an inhibitor's pipe: EOF means every copy of the client's write
    /// end is closed, i.e. the lock is released.
    fn watch_release(&self, id: u32, reader: std::io::PipeReader) {
        let fake = self.0.clone();
        tokio::spawn(async move {
            if let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into()) {
                let mut buf = [0u8; 64];
                while let Ok(n) = rx.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            }
            let mut list = fake.inhibitors.lock().unwrap();
            if let Some(pos) = list.iter().position(|i| i.id == id) {
                let i = list.remove(pos);
                fake.log
                    .record(json!({"call": "InhibitorReleased", "inhibitor_id": id,
                    "args": [i.what, i.who, i.why, i.mode], "sender_uid": i.uid}));
            }
        });
    }

    fn inhibited(&self, mode: &str) -> String {
        let list = self.0.inhibitors.lock().unwrap();
        let mut what: Vec<&str> = list
            .iter()
            .filter(|i| i.mode == mode)
            .flat_map(|i| i.what.split(':'))
            .collect();
        what.sort();
        what.dedup();
        what.join(":")
    }
}

const INHIBIT_WHATS: [&str; 8] = [
    "shutdown",
    "sleep",
    "idle",
    "handle-power-key",
    "handle-suspend-key",
    "handle-hibernate-key",
    "handle-lid-switch",
    "handle-reboot-key",
];

#[interface(name = "org.freedesktop.login1.Manager")]
impl Login {
    /// Returns the write end of a pipe (logind hands out the write end of a FIFO). The lock is
    /// held until every copy of it is closed.
    #[zbus(out_args("pipe_fd"))]
    async fn inhibit(
        &self,
        what: String,
        who: String,
        why: String,
        mode: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<zbus::OwnedFd, Failure> {
        let id = self.0.next_inhibitor.fetch_add(1, Ordering::SeqCst);
        let sender = hdr.sender().map(|s| s.to_string()).unwrap_or_default();
        let uid = caller_uid(conn, &sender).await;
        self.0
            .log
            .record(json!({"call": "Inhibit", "args": [what, who, why, mode],
            "sender": sender, "sender_uid": uid, "inhibitor_id": id}));
        if what.is_empty() || !what.split(':').all(|w| INHIBIT_WHATS.contains(&w)) {
            return Err(Failure::invalid_args("Invalid what specification"));
        }
        if !["block", "delay", "block-weak"].contains(&mode.as_str()) {
            return Err(Failure::invalid_args("Invalid mode specification"));
        }
        let pid = match zbus::fdo::DBusProxy::new(conn).await {
            Ok(dbus) => dbus
                .get_connection_unix_process_id(sender.as_str().try_into()?)
                .await
                .unwrap_or(0),
            Err(_) => 0,
        };
        let (reader, writer) = std::io::pipe()
            .map_err(|e| Failure::new("org.freedesktop.DBus.Error.Failed", e.to_string()))?;
        self.0.inhibitors.lock().unwrap().push(Inhibitor {
            id,
            what,
            who,
            why,
            mode,
            uid: uid.unwrap_or(u32::MAX),
            pid,
        });
        self.watch_release(id, reader);
        Ok(std::os::fd::OwnedFd::from(writer).into())
    }

    #[zbus(out_args("inhibitors"))]
    async fn list_inhibitors(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Vec<(String, String, String, String, u32, u32)> {
        self.0.record(conn, &hdr, "ListInhibitors", json!([])).await;
        let list = self.0.inhibitors.lock().unwrap();
        list.iter()
            .map(|i| {
                let (what, who, why, mode) = (&i.what, &i.who, &i.why, &i.mode);
                (
                    what.clone(),
                    who.clone(),
                    why.clone(),
                    mode.clone(),
                    i.uid,
                    i.pid,
                )
            })
            .collect()
    }

    async fn reboot(
        &self,
        interactive: bool,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] e: SignalEmitter<'_>,
    ) -> Result<(), Failure> {
        self.0
            .record(conn, &hdr, "Reboot", json!([interactive]))
            .await;
        let uid = caller_uid(conn, &hdr.sender().unwrap().to_string()).await;
        self.check_reboot(uid, 0)?;
        self.reboot_now(&e, "login1.Reboot", 0).await;
        Ok(())
    }

    async fn reboot_with_flags(
        &self,
        flags: u64,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        #[zbus(signal_emitter)] e: SignalEmitter<'_>,
    ) -> Result<(), Failure> {
        self.0
            .record(conn, &hdr, "RebootWithFlags", json!([flags]))
            .await;
        if flags & !SD_LOGIND_FLAGS_PUBLIC != 0 {
            return Err(Failure::invalid_args("Invalid flags parameter"));
        }
        let uid = caller_uid(conn, &hdr.sender().unwrap().to_string()).await;
        self.check_reboot(uid, flags)?;
        self.reboot_now(&e, "login1.RebootWithFlags", flags).await;
        Ok(())
    }

    /// `usec` is absolute CLOCK_REALTIME µs. Nothing is executed; the request is recorded.
    async fn schedule_shutdown(
        &self,
        kind: String,
        usec: u64,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Failure> {
        self.0
            .record(conn, &hdr, "ScheduleShutdown", json!([kind, usec]))
            .await;
        let known = [
            "poweroff",
            "dry-poweroff",
            "reboot",
            "dry-reboot",
            "halt",
            "dry-halt",
            "kexec",
            "soft-reboot",
        ];
        if !known.contains(&kind.as_str()) {
            return Err(Failure::invalid_args("Unsupported shutdown type"));
        }
        *self.0.scheduled.lock().unwrap() = Some((kind, usec));
        Ok(())
    }

    #[zbus(out_args("cancelled"))]
    async fn cancel_scheduled_shutdown(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> bool {
        self.0
            .record(conn, &hdr, "CancelScheduledShutdown", json!([]))
            .await;
        self.0.scheduled.lock().unwrap().take().is_some()
    }

    #[zbus(property)]
    fn block_inhibited(&self) -> String {
        self.inhibited("block")
    }

    #[zbus(property)]
    fn delay_inhibited(&self) -> String {
        self.inhibited("delay")
    }

    #[zbus(property)]
    fn scheduled_shutdown(&self) -> (String, u64) {
        self.0.scheduled.lock().unwrap().clone().unwrap_or_default()
    }

    #[zbus(signal)]
    async fn prepare_for_shutdown(e: &SignalEmitter<'_>, start: bool) -> zbus::Result<()>;
}

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

fn default_state() -> State {
    let mut units = BTreeMap::new();
    units.insert(
        "kubelet.service".into(),
        UnitState::new("active", "enabled"),
    );
    units.insert("crio.service".into(), UnitState::new("active", "enabled"));
    State {
        units,
        removed_before_reply: false,
        reboot_blocked: false,
        systemd_version: default_systemd_version(),
        extra: Default::default(),
    }
}

/// Forgets the subscription of a client that leaves the bus, as systemd does.
async fn drop_vanished_subscribers(conn: Connection, fake: Arc<Fake>) -> zbus::Result<()> {
    let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
    let mut changes = dbus.receive_name_owner_changed().await?;
    while let Some(signal) = changes.next().await {
        let args = signal.args()?;
        if args.new_owner().is_none() {
            fake.subscribers
                .lock()
                .unwrap()
                .remove(args.name().as_str());
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let state = StateFile {
        path: args.state.clone(),
        lock: Mutex::new(()),
    };
    if !args.state.exists() {
        state.save(&default_state());
    }
    let units: Vec<String> = state.load().units.into_keys().collect();
    let fake = Arc::new(Fake {
        state,
        log: CallLog::open(&args.log),
        next_job: AtomicU32::new(1),
        subscribers: Mutex::new(HashSet::new()),
        inhibitors: Mutex::new(Vec::new()),
        next_inhibitor: AtomicU32::new(1),
        scheduled: Mutex::new(None),
        transient: Mutex::new(BTreeMap::new()),
    });

    // Objects first, then the names (the builder requests names last).
    let mut builder = zbus::connection::Builder::system()
        .serve_at(SYSTEMD_PATH, Manager(fake.clone()))
        .name(SYSTEMD_NAME);
    for name in units.iter().map(String::as_str).chain(["reboot.target"]) {
        let unit = Unit {
            name: name.into(),
            fake: fake.clone(),
        };
        builder = builder.serve_at(unit_path(name), unit);
    }
    if args.hostnamed {
        builder = builder
            .serve_at("/org/freedesktop/hostname1", Hostnamed(fake.clone()))
            .name("org.freedesktop.hostname1");
    }
    if !args.no_logind {
        builder = builder
            .serve_at(LOGIND_PATH, Login(fake.clone()))
            .name(LOGIND_NAME);
    }
    let conn = builder.build().await?;
    tokio::spawn(drop_vanished_subscribers(conn.clone(), fake.clone()));

    println!("READY");
    std::io::stdout().flush()?;
    std::future::pending::<()>().await;
    Ok(())
}
