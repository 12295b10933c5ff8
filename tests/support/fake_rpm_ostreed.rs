//! A fake rpm-ostree daemon (`org.projectatomic.rpmostree1`) for tests, on the bus named by
//! `DBUS_SYSTEM_BUS_ADDRESS`. It follows rpm-ostree's D-Bus API (`org.projectatomic.rpmostree1.xml`
//! upstream) and its daemon's behaviour as read in its source (`rpmostreed-os.c`,
//! `rpmostreed-transaction-types.c`, `rpmostreed-sysroot.c`, `rpmostree-core` syscore): the
//! Sysroot and one OS object per OS name (stateroot) under an ObjectManager, deployment
//! dictionaries, GError wire names, polkit refusals for callers other than root, "Transaction
//! in progress" while another transaction runs and "System transaction in progress" while the
//! sysroot lock (`ostree/lock`) is held, and `Rollback` and `Cleanup` transactions served on a
//! separate peer-to-peer socket. Built by `cargo test` as the example `fake-rpm-ostreed`.
//!
//! Usage: `fake-rpm-ostreed --state FILE --log FILE --txn-socket PATH [--sysroot DIR]
//! [--sysroot-helper PATH]`
//!
//! With `--sysroot DIR` the deployments are those of the real ostree sysroot at DIR: read with
//! `ostree admin status`, and written (a rollback's new order, a cleanup) through libostree's
//! `ostree_sysroot_write_deployments`, as rpm-ostreed writes them (`ostree-sysroot.py`, the
//! helper). Without it they are the state file's `deployments`. State file (JSON):
//!
//! ```json
//! {"osname": "testos",
//!  "deployments": [{"osname": "testos", "checksum": "aaa…", "serial": 0, "version": "1.0",
//!                   "timestamp": 0, "origin": "testos/stable", "pinned": false}],
//!  "booted": "testos-aaa….0",
//!  "staged": null,
//!  "boot_default": false,
//!  "polkit_allow": [],
//!  "faults": {"busy": false, "no_rollback": false, "hang": false, "crash_mid_txn": false,
//!             "finish_error": null, "txn_delay_ms": 100}}
//! ```
//!
//! Deployments are named as rpm-ostree names them, `<osname>-<checksum>.<serial>`; `booted`
//! and `staged` may also be `<checksum>.<serial>` when that is unique. `staged` marks the first
//! deployment as staged (written by `rpm-ostree upgrade` and finalized at shutdown). With
//! `"boot_default": true` the fake starts like a fresh boot: the staged deployment is finalized
//! and the default deployment (index 0) becomes `booted`. `polkit_allow` lists the uids other
//! than 0 that polkit authorizes. If FILE does not exist, a default state with two deployments
//! (booted = index 0) is written there.
//!
//! Every call (bus and transaction socket) is appended to the log as a JSON line, like
//! `{"call": "Rollback", "args": [{"reboot": false}], "sender": ":1.4", "sender_uid": 0}`, plus
//! events (`TransactionClosed`, `RebootRequested`, `Crash`, `WriteDeployments`). `READY` is
//! printed once the name is owned.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use clap::Parser;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use zbus::message::{Header, Message};
use zbus::names::ErrorName;
use zbus::object_server::SignalEmitter;
use zbus::{Connection, OwnedObjectPath, OwnedVariant, Str, Variant, interface};

const BUS_NAME: &str = "org.projectatomic.rpmostree1";
const ROOT_PATH: &str = "/org/projectatomic/rpmostree1";
const SYSROOT_PATH: &str = "/org/projectatomic/rpmostree1/Sysroot";
/// How GDBus encodes a `G_IO_ERROR` it has no mapping for.
const GIO_ERROR: &str = "org.gtk.GDBus.UnmappedGError.Quark._g_2dio_2derror_2dquark";
/// `FORCE_CLOSE_TXN_TIMEOUT_SECS`.
const FORCE_CLOSE: Duration = Duration::from_secs(30);

#[derive(Parser)]
struct Args {
    /// JSON state file.
    #[arg(long)]
    state: PathBuf,
    /// JSON-lines call log.
    #[arg(long)]
    log: PathBuf,
    /// Where transactions listen (the real daemon uses /run/rpm-ostree-transaction.sock).
    #[arg(long)]
    txn_socket: PathBuf,
    /// The ostree sysroot whose deployments these are.
    #[arg(long)]
    sysroot: Option<PathBuf>,
    /// The libostree helper that writes deployments to the sysroot.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/ostree-sysroot.py"))]
    sysroot_helper: PathBuf,
    /// The ostree CLI that reads the sysroot.
    #[arg(long, default_value = "ostree")]
    ostree: PathBuf,
}

// ---------------------------------------------------------------------------------------------
// State file and call log
// ---------------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Clone)]
struct State {
    /// The OS name of state-file deployments that name none.
    osname: String,
    /// Without a sysroot: the deployments, in boot order.
    #[serde(default)]
    deployments: Vec<Deployment>,
    /// The booted deployment ("" = not booted from ostree).
    #[serde(default)]
    booted: String,
    /// The staged deployment (it is the first one), if any.
    #[serde(default)]
    staged: Option<String>,
    /// At start-up, boot the default deployment (simulates the reboot after a rollback).
    #[serde(default)]
    boot_default: bool,
    /// Uids besides 0 that polkit authorizes for OS operations.
    #[serde(default)]
    polkit_allow: Vec<u32>,
    #[serde(default)]
    faults: Faults,
    #[serde(flatten)]
    extra: serde_json::Map<String, Value>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Deployment {
    #[serde(default)]
    osname: String,
    checksum: String,
    #[serde(default)]
    serial: i32,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    timestamp: u64,
    #[serde(default)]
    origin: Option<String>,
    #[serde(default)]
    pinned: bool,
    /// Filled in from `staged`; not read from the file.
    #[serde(default, skip_deserializing)]
    staged: bool,
    #[serde(flatten)]
    extra: serde_json::Map<String, Value>,
}

impl Deployment {
    /// rpm-ostree's deployment id.
    fn id(&self) -> String {
        format!("{}-{}.{}", self.osname, self.checksum, self.serial)
    }

    /// `<checksum>.<serial>`, as ostree names deployments within a stateroot.
    fn csum_serial(&self) -> String {
        format!("{}.{}", self.checksum, self.serial)
    }

    /// Whether `name` (an id, or a unique `<checksum>.<serial>`) names this deployment.
    fn named(&self, name: &str, all: &[Deployment]) -> bool {
        name == self.id()
            || (name == self.csum_serial()
                && all.iter().filter(|d| d.csum_serial() == name).count() == 1)
    }
}

#[derive(Serialize, Deserialize, Clone)]
struct Faults {
    /// OS methods fail with Code26 "Transaction in progress".
    #[serde(default)]
    busy: bool,
    /// The transaction ends with `Finished(false, "No rollback deployment found")`.
    #[serde(default)]
    no_rollback: bool,
    /// The transaction never sends `Finished`.
    #[serde(default)]
    hang: bool,
    /// The process exits right after `Start` (the bus name vanishes mid-transaction).
    #[serde(default)]
    crash_mid_txn: bool,
    /// The transaction ends with `Finished(false, <text>)`, changing nothing.
    #[serde(default)]
    finish_error: Option<String>,
    /// How long the transaction works before its signals.
    #[serde(default = "default_txn_delay_ms")]
    txn_delay_ms: u64,
    #[serde(flatten)]
    extra: serde_json::Map<String, Value>,
}

fn default_txn_delay_ms() -> u64 {
    100
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            busy: false,
            no_rollback: false,
            hang: false,
            crash_mid_txn: false,
            finish_error: None,
            txn_delay_ms: default_txn_delay_ms(),
            extra: Default::default(),
        }
    }
}

/// The deployments as the daemon sees them now: boot order, booted, staged.
#[derive(Clone)]
struct View {
    deployments: Vec<Deployment>,
    booted: Option<usize>,
}

impl View {
    fn osnames(&self) -> BTreeSet<String> {
        self.deployments.iter().map(|d| d.osname.clone()).collect()
    }

    /// `ostree_sysroot_query_deployments_for (sysroot, osname, &pending, &rollback)`: passing
    /// over the booted deployment (of any OS) and the other OSes' deployments, the first one of
    /// `osname` before the booted one is pending, the first one after it is the rollback.
    fn pending_and_rollback(&self, osname: &str) -> (Option<usize>, Option<usize>) {
        let (mut pending, mut rollback, mut found_booted) = (None, None, false);
        for (i, d) in self.deployments.iter().enumerate() {
            if Some(i) == self.booted {
                found_booted = true;
                continue;
            }
            if d.osname != osname {
                continue;
            }
            if !found_booted && pending.is_none() {
                pending = Some(i);
            }
            if found_booted && rollback.is_none() {
                rollback = Some(i);
            }
        }
        (pending, rollback)
    }
}

/// The state file: loaded before each use, saved atomically (write + rename).
struct StateFile {
    path: PathBuf,
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

/// A D-Bus error reply with any name, as GDBus sends them.
#[derive(Debug)]
struct Failure {
    name: String,
    message: String,
}

impl Failure {
    /// A `G_IO_ERROR` with `code` (0 FAILED, 1 NOT_FOUND, 26 BUSY, ...).
    fn gio(code: u32, message: impl Into<String>) -> Failure {
        Failure {
            name: format!("{GIO_ERROR}.Code{code}"),
            message: message.into(),
        }
    }

    /// What `os_authorize_method` returns when polkit says no.
    fn denied(method: &str) -> Failure {
        Failure {
            name: "org.freedesktop.DBus.Error.AccessDenied".into(),
            message: format!("rpmostreed OS operation {method} not allowed for user"),
        }
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
        Failure {
            name: "org.freedesktop.DBus.Error.Failed".into(),
            message: e.to_string(),
        }
    }
}

/// A variant as JSON, for the call log.
fn variant_json(v: &Variant<'_>) -> Value {
    match v {
        Variant::Bool(b) => json!(b),
        Variant::I32(n) => json!(n),
        Variant::U32(n) => json!(n),
        Variant::I64(n) => json!(n),
        Variant::U64(n) => json!(n),
        Variant::Str(s) => json!(s.as_str()),
        Variant::Variant(inner) => variant_json(inner),
        other => json!(other.to_string()),
    }
}

fn options_json(options: &HashMap<String, OwnedVariant>) -> Value {
    Value::Object(
        options
            .iter()
            .map(|(k, v)| (k.clone(), variant_json(v)))
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// Reading and writing a real sysroot
// ---------------------------------------------------------------------------------------------

/// `ostree admin status --sysroot=DIR`: deployments in boot order, with their version and pin,
/// and the one libostree found booted (marked `*`) when the machine runs from this sysroot.
/// (The fake's own parser: the code under test has its own, and the two are not shared.)
fn parse_ostree_status(text: &str) -> (Vec<Deployment>, Option<usize>) {
    let mut out: Vec<Deployment> = Vec::new();
    let mut booted = None;
    for line in text.lines() {
        if let Some(prop) = line.strip_prefix("    ") {
            if let Some(d) = out.last_mut() {
                if let Some(v) = prop.strip_prefix("Version: ") {
                    d.version = Some(v.trim().to_string());
                } else if prop.trim() == "Pinned: yes" {
                    d.pinned = true;
                } else if let Some(o) = prop.strip_prefix("origin refspec: ") {
                    d.origin = Some(o.trim().to_string());
                }
            }
            continue;
        }
        if line.starts_with('*') {
            booted = Some(out.len());
        }
        let mut words = line.trim_start_matches(['*', ' ']).split_whitespace();
        let (Some(osname), Some(id)) = (words.next(), words.next()) else {
            continue;
        };
        let Some((checksum, serial)) = id.rsplit_once('.') else {
            continue;
        };
        out.push(Deployment {
            osname: osname.into(),
            checksum: checksum.into(),
            serial: serial.parse().unwrap_or(0),
            version: None,
            timestamp: 0,
            origin: None,
            pinned: false,
            staged: false,
            extra: Default::default(),
        });
    }
    (out, booted)
}

type Deployments = (Vec<Deployment>, Option<usize>);

/// The sysroot's deployments, cached until libostree bumps `ostree/deploy`'s mtime (it does on
/// every deployment or pin change).
struct SysrootReader {
    dir: PathBuf,
    ostree: PathBuf,
    helper: PathBuf,
    cache: Mutex<Option<(std::time::SystemTime, Deployments)>>,
}

impl SysrootReader {
    fn stamp(&self) -> std::time::SystemTime {
        std::fs::metadata(self.dir.join("ostree/deploy"))
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH)
    }

    /// The deployments, and the booted one's index if the machine runs from this sysroot.
    fn deployments(&self) -> Deployments {
        let stamp = self.stamp();
        if let Some((s, d)) = &*self.cache.lock().unwrap()
            && *s == stamp
        {
            return d.clone();
        }
        let out = std::process::Command::new(&self.ostree)
            .arg("admin")
            .arg("status")
            .arg(format!("--sysroot={}", self.dir.display()))
            .env("OSTREE_SYSROOT_DEBUG", "mutable-deployments")
            .output()
            .expect("running ostree admin status");
        assert!(
            out.status.success(),
            "ostree admin status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let d = parse_ostree_status(&String::from_utf8_lossy(&out.stdout));
        *self.cache.lock().unwrap() = Some((stamp, d.clone()));
        d
    }

    /// `ostree_sysroot_write_deployments` with these deployments, in this order.
    fn write(&self, order: &[Deployment]) -> Result<(), String> {
        let keys: Vec<String> = order
            .iter()
            .map(|d| format!("{}:{}", d.osname, d.csum_serial()))
            .collect();
        let out = std::process::Command::new(&self.helper)
            .arg("write")
            .arg(&self.dir)
            .args(&keys)
            .env("OSTREE_SYSROOT_DEBUG", "mutable-deployments")
            .output()
            .map_err(|e| format!("running {}: {e}", self.helper.display()))?;
        *self.cache.lock().unwrap() = None;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// `ostree_sysroot_try_lock`: an exclusive, non-blocking flock on `ostree/lock`.
    fn try_lock(&self) -> Option<std::fs::File> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("ostree/lock"))
            .ok()?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .ok()
            .map(|()| f)
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon model
// ---------------------------------------------------------------------------------------------

/// What a transaction does.
#[derive(Clone, Debug, PartialEq)]
enum TxnKind {
    Rollback { reboot: bool },
    Cleanup { pending: bool, rollback: bool },
}

impl TxnKind {
    fn title(&self) -> &'static str {
        match self {
            TxnKind::Rollback { .. } => "rollback",
            TxnKind::Cleanup { .. } => "cleanup",
        }
    }
}

/// One transaction (only one exists at a time).
struct Txn {
    /// Method and parameters that created it: an identical request joins it.
    method: String,
    kind: TxnKind,
    /// The OS the method was called on.
    osname: String,
    /// Unique bus name of the initiating client.
    sender: String,
    os_path: String,
    address: String,
    client_description: String,
    cancel: CancellationToken,
    /// The sysroot lock, held for the transaction's life (as rpm-ostreed holds it).
    sysroot_lock: Mutex<Option<std::fs::File>>,
    inner: Mutex<TxnInner>,
}

#[derive(Default)]
struct TxnInner {
    started: bool,
    finished: Option<(bool, String)>,
    closed: bool,
    /// Open peer-to-peer connections, by a serial number.
    peers: Vec<(u64, Connection)>,
    next_peer: u64,
    /// The accept loop and the client name watch, stopped on close.
    tasks: Vec<JoinHandle<()>>,
}

struct Daemon {
    state: StateFile,
    log: CallLog,
    sysroot: Option<SysrootReader>,
    txn_socket: PathBuf,
    /// Our bus connection (set once built).
    bus: OnceLock<Connection>,
    txn: Mutex<Option<Arc<Txn>>>,
    /// RegisterClient ids by unique name.
    clients: Mutex<HashMap<String, String>>,
    /// A reboot was requested: no new transactions.
    rebooting: AtomicBool,
    /// Deployments as last announced, to tell whether `Reload` changes anything.
    announced: Mutex<Value>,
    /// OS objects served, by OS name.
    served: Mutex<BTreeSet<String>>,
    /// Serialises transaction creation (the real daemon is single-threaded).
    creating: tokio::sync::Mutex<()>,
}

impl Daemon {
    /// Logs a bus method call with its caller, before replying.
    async fn record(&self, conn: &Connection, hdr: &Header<'_>, call: &str, args: Value) {
        let sender = hdr.sender().map(|s| s.to_string());
        let uid = match &sender {
            Some(s) => caller_uid(conn, s).await,
            None => None,
        };
        self.log
            .record(json!({"call": call, "args": args, "sender": sender, "sender_uid": uid}));
    }

    fn bus(&self) -> &Connection {
        self.bus
            .get()
            .expect("bus connection is set before serving")
    }

    /// The deployments now, in boot order, with `staged` and `booted` resolved.
    fn view(&self) -> View {
        let state = self.state.load();
        let (mut deployments, booted_here) = match &self.sysroot {
            Some(s) => s.deployments(),
            None => (
                state
                    .deployments
                    .iter()
                    .cloned()
                    .map(|mut d| {
                        if d.osname.is_empty() {
                            d.osname = state.osname.clone();
                        }
                        d
                    })
                    .collect(),
                None,
            ),
        };
        let all = deployments.clone();
        if let Some(staged) = &state.staged
            && let Some(first) = deployments.first_mut()
            && first.named(staged, &all)
        {
            first.staged = true;
        }
        // Booted from this sysroot: the one libostree found booted; otherwise the state's.
        let booted = booted_here.or_else(|| {
            deployments
                .iter()
                .position(|d| d.named(&state.booted, &all))
        });
        View {
            deployments,
            booted,
        }
    }

    /// Write the deployments in this order (those left out are removed), as
    /// `ostree_sysroot_write_deployments` does; a staged deployment left out is discarded.
    fn write_deployments(&self, order: Vec<Deployment>) -> Result<(), String> {
        self.log.record(json!({"call": "WriteDeployments",
            "order": order.iter().map(Deployment::id).collect::<Vec<_>>()}));
        match &self.sysroot {
            Some(s) => s.write(&order)?,
            None => self.state.update(|st| {
                st.deployments = order.clone();
            }),
        }
        self.state.update(|st| {
            if let Some(staged) = st.staged.clone()
                && !order.first().is_some_and(|d| d.named(&staged, &order))
            {
                st.staged = None;
            }
        });
        Ok(())
    }

    /// The deployment dictionary rpm-ostree puts in `Deployments`/`BootedDeployment`.
    fn deployment_dict(&self, view: &View, i: usize) -> HashMap<String, OwnedVariant> {
        let d = &view.deployments[i];
        let s = |v: &str| OwnedVariant::from(Str::from(v.to_string()));
        let strings = |v: Vec<String>| OwnedVariant::try_from(Variant::from(v)).unwrap();
        let mut m = HashMap::new();
        m.insert("id".into(), s(&d.id()));
        m.insert("osname".into(), s(&d.osname));
        m.insert("checksum".into(), s(&d.checksum));
        m.insert("serial".into(), OwnedVariant::from(d.serial));
        m.insert("booted".into(), OwnedVariant::from(view.booted == Some(i)));
        m.insert("staged".into(), OwnedVariant::from(d.staged));
        m.insert("pinned".into(), OwnedVariant::from(d.pinned));
        m.insert("unlocked".into(), s("none"));
        m.insert("timestamp".into(), OwnedVariant::from(d.timestamp));
        if let Some(v) = &d.version {
            m.insert("version".into(), s(v));
        }
        if let Some(o) = &d.origin {
            m.insert("origin".into(), s(o));
        }
        m.insert(
            "base-commit-meta".into(),
            OwnedVariant::from(HashMap::<String, OwnedVariant>::new()),
        );
        m.insert("regenerate-initramfs".into(), OwnedVariant::from(false));
        for key in [
            "packages",
            "requested-packages",
            "requested-local-packages",
            "requested-local-fileoverride-packages",
            "requested-base-removals",
            "requested-base-local-replacements",
        ] {
            m.insert(key.into(), strings(Vec::new()));
        }
        m
    }

    fn deployments(&self) -> Vec<HashMap<String, OwnedVariant>> {
        let view = self.view();
        (0..view.deployments.len())
            .map(|i| self.deployment_dict(&view, i))
            .collect()
    }

    /// The dict of the deployment at `index`, or `{}`.
    fn dict_at(&self, view: &View, index: Option<usize>) -> HashMap<String, OwnedVariant> {
        match index {
            Some(i) => self.deployment_dict(view, i),
            None => HashMap::new(),
        }
    }

    /// A comparable snapshot of what the deployment properties show.
    fn deployments_snapshot(&self) -> Value {
        let view = self.view();
        json!([
            view.deployments
                .iter()
                .map(|d| json!([d.id(), d.pinned, d.staged, d.version]))
                .collect::<Vec<_>>(),
            view.booted
        ])
    }

    /// Serve an OS object for every OS name that has deployments (new ones appear when a test
    /// adds a stateroot to the sysroot).
    async fn serve_os_objects(self: &Arc<Self>) {
        let mut names = self.view().osnames();
        names.insert(self.state.load().osname);
        for name in names {
            if self.served.lock().unwrap().insert(name.clone()) {
                let server = self.bus().object_server();
                let path = os_object_path(&name);
                let _ = server
                    .at(
                        &path,
                        Os {
                            daemon: self.clone(),
                            osname: name.clone(),
                        },
                    )
                    .await;
                let _ = server.at(&path, OsExperimental).await;
            }
        }
    }

    /// Emits PropertiesChanged for the transaction and/or deployment properties.
    async fn announce(&self, txn: bool, deployments: bool) {
        let server = self.bus().object_server();
        if let Ok(sysroot) = server.interface::<_, Sysroot>(SYSROOT_PATH).await {
            let (e, s) = (sysroot.signal_emitter(), sysroot.get().await);
            if txn {
                let _ = s.active_transaction_changed(e).await;
                let _ = s.active_transaction_path_changed(e).await;
            }
            if deployments {
                let _ = s.deployments_changed(e).await;
                let _ = s.booted_changed(e).await;
            }
        }
        if deployments {
            *self.announced.lock().unwrap() = self.deployments_snapshot();
            let names: Vec<String> = self.served.lock().unwrap().iter().cloned().collect();
            for name in names {
                if let Ok(os) = server
                    .interface::<_, Os>(os_object_path(&name).as_str())
                    .await
                {
                    let (e, o) = (os.signal_emitter(), os.get().await);
                    let _ = o.booted_deployment_changed(e).await;
                    let _ = o.default_deployment_changed(e).await;
                    let _ = o.rollback_deployment_changed(e).await;
                }
            }
        }
    }

    /// Ends `txn`'s life: ActiveTransaction clears, the socket goes away, peers are dropped,
    /// the sysroot lock is released.
    async fn close_txn(&self, txn: &Arc<Txn>, reason: &str) {
        let (tasks, peers) = {
            let mut inner = txn.inner.lock().unwrap();
            if inner.closed {
                return;
            }
            inner.closed = true;
            (
                std::mem::take(&mut inner.tasks),
                std::mem::take(&mut inner.peers),
            )
        };
        {
            let mut current = self.txn.lock().unwrap();
            if current.as_ref().is_some_and(|t| Arc::ptr_eq(t, txn)) {
                *current = None;
            }
        }
        txn.cancel.cancel();
        txn.sysroot_lock.lock().unwrap().take();
        for t in tasks {
            t.abort();
        }
        for (_, p) in peers {
            let _ = p.close().await;
        }
        let _ = std::fs::remove_file(&self.txn_socket);
        self.log
            .record(json!({"call": "TransactionClosed", "reason": reason}));
        self.announce(true, false).await;
    }

    /// Closes `txn` if it has finished and no peer is connected.
    async fn close_if_done(&self, txn: &Arc<Txn>) {
        let done = {
            let inner = txn.inner.lock().unwrap();
            inner.finished.is_some() && inner.peers.is_empty()
        };
        if done {
            self.close_txn(txn, "finished").await;
        }
    }

    /// What every OS method that starts a transaction checks first, in rpm-ostreed's order:
    /// polkit (`os_authorize_method`), a reboot in progress and an active transaction
    /// (`rpmostreed_sysroot_prep_for_txn`), then the sysroot lock (`transaction_initable_init`).
    /// Returns the transaction to join, or the lock to hold for a new one.
    async fn prepare_txn(
        &self,
        hdr: &Header<'_>,
        method: &str,
        kind: &TxnKind,
        osname: &str,
    ) -> Result<Result<Arc<Txn>, Option<std::fs::File>>, Failure> {
        let sender = hdr.sender().map(|s| s.to_string()).unwrap_or_default();
        let uid = caller_uid(self.bus(), &sender).await.unwrap_or(u32::MAX);
        if !stands_for_root(uid) && !self.state.load().polkit_allow.contains(&uid) {
            return Err(Failure::denied(method));
        }
        if self.rebooting.load(Ordering::SeqCst) {
            return Err(Failure::gio(
                0,
                "Reboot initiated, cannot start new transaction",
            ));
        }
        let busy = |title: &str| {
            Failure::gio(
                26,
                format!(
                    "Transaction in progress: {title}\n You can cancel the current transaction with `rpm-ostree cancel`"
                ),
            )
        };
        if let Some(txn) = self.txn.lock().unwrap().clone() {
            if txn.method == method && txn.kind == *kind && txn.osname == osname {
                // "Client joining existing transaction".
                return Ok(Ok(txn));
            }
            return Err(busy(txn.kind.title()));
        }
        if self.state.load().faults.busy {
            return Err(busy(kind.title()));
        }
        match &self.sysroot {
            Some(s) => match s.try_lock() {
                Some(lock) => Ok(Err(Some(lock))),
                None => Err(Failure::gio(26, "System transaction in progress")),
            },
            None => Ok(Err(None)),
        }
    }

    /// Creates the transaction: binds the socket and starts serving it.
    async fn create_txn(
        self: &Arc<Self>,
        sender: &str,
        method: &str,
        kind: TxnKind,
        osname: &str,
        lock: Option<std::fs::File>,
    ) -> Result<Arc<Txn>, Failure> {
        let io = |e: std::io::Error| Failure::gio(0, e.to_string());
        let _ = std::fs::remove_file(&self.txn_socket);
        let listener = tokio::net::UnixListener::bind(&self.txn_socket).map_err(io)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.txn_socket, std::fs::Permissions::from_mode(0o666))
            .map_err(io)?;

        let uid = caller_uid(self.bus(), sender).await.unwrap_or(u32::MAX);
        let client_description = match self.clients.lock().unwrap().get(sender) {
            Some(id) => format!(
                "client(id:{id} dbus:{} uid:{uid})",
                sender.trim_start_matches(':')
            ),
            None => format!("caller {sender}"),
        };
        let txn = Arc::new(Txn {
            method: method.into(),
            kind,
            osname: osname.into(),
            sender: sender.into(),
            os_path: os_object_path(osname).to_string(),
            address: format!("unix:path={}", self.txn_socket.display()),
            client_description,
            cancel: CancellationToken::new(),
            sysroot_lock: Mutex::new(lock),
            inner: Mutex::new(TxnInner::default()),
        });
        let accept = tokio::spawn(accept_peers(self.clone(), txn.clone(), listener));
        let watch = tokio::spawn(watch_initiator(self.clone(), txn.clone()));
        txn.inner.lock().unwrap().tasks.extend([accept, watch]);
        Ok(txn)
    }

    /// An OS method that runs a transaction: checks, then joins or creates one.
    async fn start_txn(
        self: &Arc<Self>,
        hdr: &Header<'_>,
        method: &str,
        kind: TxnKind,
        osname: &str,
    ) -> Result<String, Failure> {
        let sender = hdr.sender().map(|s| s.to_string()).unwrap_or_default();
        let _creating = self.creating.lock().await;
        let lock = match self.prepare_txn(hdr, method, &kind, osname).await? {
            Ok(join) => return Ok(join.address.clone()),
            Err(lock) => lock,
        };
        let txn = self.create_txn(&sender, method, kind, osname, lock).await?;
        *self.txn.lock().unwrap() = Some(txn.clone());
        self.announce(true, false).await;
        Ok(txn.address.clone())
    }
}

/// `org.freedesktop.DBus.GetConnectionUnixUser(sender)`.
/// Root, or the user this fake runs as: a test run by a normal user stands in for root on its
/// private bus (see `tests/common/bus.rs`); as root this is exactly rpm-ostree's rule.
fn stands_for_root(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

async fn caller_uid(conn: &Connection, sender: &str) -> Option<u32> {
    let dbus = zbus::fdo::DBusProxy::new(conn).await.ok()?;
    dbus.get_connection_unix_user(sender.try_into().ok()?)
        .await
        .ok()
}

/// rpm-ostree's OS object path escaping: `[A-Za-z0-9_]` kept, `/` and `-` become `_`, other
/// bytes `_XX` (uppercase hex).
fn os_object_path(osname: &str) -> OwnedObjectPath {
    let mut p = format!("{ROOT_PATH}/");
    for b in osname.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' => p.push(b as char),
            b'/' | b'-' => p.push('_'),
            _ => p.push_str(&format!("_{b:02X}")),
        }
    }
    OwnedObjectPath::try_from(p).unwrap()
}

// ---------------------------------------------------------------------------------------------
// org.projectatomic.rpmostree1.Sysroot
// ---------------------------------------------------------------------------------------------

struct Sysroot(Arc<Daemon>);

#[interface(name = "org.projectatomic.rpmostree1.Sysroot")]
impl Sysroot {
    async fn register_client(
        &self,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) {
        self.0
            .record(
                conn,
                &hdr,
                "RegisterClient",
                json!([options_json(&options)]),
            )
            .await;
        let id = options
            .get("id")
            .and_then(|v| String::try_from(v.try_clone().ok()?).ok())
            .unwrap_or_default();
        if let Some(sender) = hdr.sender() {
            self.0
                .clients
                .lock()
                .unwrap()
                .insert(sender.to_string(), id);
        }
    }

    async fn unregister_client(
        &self,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) {
        self.0
            .record(
                conn,
                &hdr,
                "UnregisterClient",
                json!([options_json(&options)]),
            )
            .await;
        if let Some(sender) = hdr.sender() {
            self.0.clients.lock().unwrap().remove(sender.as_str());
        }
    }

    /// A sync barrier; announces deployment changes made since last time (a test's edit of the
    /// state file, an `ostree admin` command on the sysroot).
    async fn reload(&self, #[zbus(header)] hdr: Header<'_>, #[zbus(connection)] conn: &Connection) {
        self.0.record(conn, &hdr, "Reload", json!([])).await;
        self.0.serve_os_objects().await;
        let changed = *self.0.announced.lock().unwrap() != self.0.deployments_snapshot();
        if changed {
            self.0.announce(false, true).await;
        }
    }

    async fn reload_config(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) {
        self.0.record(conn, &hdr, "ReloadConfig", json!([])).await;
    }

    #[zbus(name = "GetOS", out_args("object_path"))]
    async fn get_os(
        &self,
        name: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, Failure> {
        self.0.record(conn, &hdr, "GetOS", json!([name])).await;
        self.0.serve_os_objects().await;
        let view = self.0.view();
        let name = if name.is_empty() {
            match view.booted {
                Some(b) => view.deployments[b].osname.clone(),
                None => self.0.state.load().osname,
            }
        } else {
            name
        };
        if self.0.served.lock().unwrap().contains(&name) {
            Ok(os_object_path(&name))
        } else {
            Err(Failure::gio(1, format!("OS name \"{name}\" not found")))
        }
    }

    /// The booted OS object, or `/` when not booted from ostree.
    #[zbus(property)]
    fn booted(&self) -> OwnedObjectPath {
        let view = self.0.view();
        match view.booted {
            Some(b) => os_object_path(&view.deployments[b].osname),
            None => OwnedObjectPath::try_from("/").unwrap(),
        }
    }

    #[zbus(property)]
    fn path(&self) -> String {
        match &self.0.sysroot {
            Some(s) => s.dir.display().to_string(),
            None => "/".into(),
        }
    }

    #[zbus(property)]
    fn deployments(&self) -> Vec<HashMap<String, OwnedVariant>> {
        self.0.deployments()
    }

    /// `(method, sender, object path)` of the active transaction, or empty strings.
    #[zbus(property)]
    fn active_transaction(&self) -> (String, String, String) {
        match &*self.0.txn.lock().unwrap() {
            Some(t) => (t.method.clone(), t.sender.clone(), t.os_path.clone()),
            None => Default::default(),
        }
    }

    /// The transaction's D-Bus address (not an object path), or "".
    #[zbus(property)]
    fn active_transaction_path(&self) -> String {
        match &*self.0.txn.lock().unwrap() {
            Some(t) => t.address.clone(),
            None => String::new(),
        }
    }

    #[zbus(property)]
    fn automatic_update_policy(&self) -> String {
        "none".into()
    }
}

// ---------------------------------------------------------------------------------------------
// org.projectatomic.rpmostree1.OS, one object per OS name
// ---------------------------------------------------------------------------------------------

struct Os {
    daemon: Arc<Daemon>,
    osname: String,
}

#[interface(name = "org.projectatomic.rpmostree1.OS")]
impl Os {
    /// Starts (or joins) a rollback transaction and returns its peer-to-peer address.
    #[zbus(out_args("transaction_address"))]
    async fn rollback(
        &self,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, Failure> {
        self.daemon
            .record(conn, &hdr, "Rollback", json!([options_json(&options)]))
            .await;
        let reboot = options
            .get("reboot")
            .and_then(|v| bool::try_from(v.try_clone().ok()?).ok())
            .unwrap_or(false);
        self.daemon
            .start_txn(&hdr, "Rollback", TxnKind::Rollback { reboot }, &self.osname)
            .await
    }

    /// `Cleanup(as elements)`: `base`, `pending-deploy`, `rollback-deploy`, `repomd`.
    #[zbus(out_args("transaction_address"))]
    async fn cleanup(
        &self,
        elements: Vec<String>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, Failure> {
        self.daemon
            .record(conn, &hdr, "Cleanup", json!([elements]))
            .await;
        let sender = hdr.sender().map(|s| s.to_string()).unwrap_or_default();
        let uid = caller_uid(self.daemon.bus(), &sender)
            .await
            .unwrap_or(u32::MAX);
        if !stands_for_root(uid) && !self.daemon.state.load().polkit_allow.contains(&uid) {
            return Err(Failure::denied("Cleanup"));
        }
        let (mut pending, mut rollback) = (false, false);
        for e in &elements {
            match e.as_str() {
                "base" | "repomd" => {}
                "pending-deploy" => pending = true,
                "rollback-deploy" => rollback = true,
                other => {
                    return Err(Failure::gio(0, format!("Invalid cleanup type: {other}")));
                }
            }
        }
        self.daemon
            .start_txn(
                &hdr,
                "Cleanup",
                TxnKind::Cleanup { pending, rollback },
                &self.osname,
            )
            .await
    }

    #[zbus(property)]
    fn name(&self) -> String {
        self.osname.clone()
    }

    /// `{}` unless this OS is booted.
    #[zbus(property)]
    fn booted_deployment(&self) -> HashMap<String, OwnedVariant> {
        let view = self.daemon.view();
        let b = view
            .booted
            .filter(|&b| view.deployments[b].osname == self.osname);
        self.daemon.dict_at(&view, b)
    }

    /// The pending deployment if there is one, else the booted one.
    #[zbus(property)]
    fn default_deployment(&self) -> HashMap<String, OwnedVariant> {
        let view = self.daemon.view();
        let (pending, _) = view.pending_and_rollback(&self.osname);
        let b = view.booted;
        self.daemon.dict_at(&view, pending.or(b))
    }

    /// `{}` when there is no rollback target.
    #[zbus(property)]
    fn rollback_deployment(&self) -> HashMap<String, OwnedVariant> {
        let view = self.daemon.view();
        let (_, rollback) = view.pending_and_rollback(&self.osname);
        self.daemon.dict_at(&view, rollback)
    }

    #[zbus(property)]
    fn cached_update(&self) -> HashMap<String, OwnedVariant> {
        HashMap::new()
    }

    #[zbus(property)]
    fn has_cached_update_rpm_diff(&self) -> bool {
        false
    }
}

/// The real OS object also carries this interface; none of its members are faked.
struct OsExperimental;

#[interface(name = "org.projectatomic.rpmostree1.OSExperimental")]
impl OsExperimental {}

// ---------------------------------------------------------------------------------------------
// The transaction: p2p socket, org.projectatomic.rpmostree1.Transaction at "/"
// ---------------------------------------------------------------------------------------------

/// Serves each connection to the transaction socket.
async fn accept_peers(daemon: Arc<Daemon>, txn: Arc<Txn>, listener: tokio::net::UnixListener) {
    while let Ok((stream, _)) = listener.accept().await {
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let iface = Transaction {
            daemon: daemon.clone(),
            txn: txn.clone(),
        };
        let built = zbus::connection::Builder::unix_stream(stream)
            .server(zbus::Guid::generate())
            .p2p()
            .serve_at("/", iface)
            .build()
            .await;
        let Ok(peer) = built else { continue };
        let id = {
            let mut inner = txn.inner.lock().unwrap();
            inner.next_peer += 1;
            let id = inner.next_peer;
            inner.peers.push((id, peer.clone()));
            id
        };
        // Forget the peer when it hangs up; the txn closes once finished and unattended.
        let (daemon, txn) = (daemon.clone(), txn.clone());
        tokio::spawn(async move {
            peer.closed().await;
            txn.inner.lock().unwrap().peers.retain(|(i, _)| *i != id);
            daemon.close_if_done(&txn).await;
        });
    }
}

/// Before `Start`, the transaction dies with its initiating client.
async fn watch_initiator(daemon: Arc<Daemon>, txn: Arc<Txn>) {
    let vanished = async {
        let dbus = zbus::fdo::DBusProxy::new(daemon.bus()).await?;
        let mut changes = dbus
            .receive_name_owner_changed_with_args(&[(0, txn.sender.as_str())])
            .await?;
        if !dbus.name_has_owner(txn.sender.as_str().try_into()?).await? {
            return Ok::<_, zbus::Error>(());
        }
        while let Some(signal) = changes.next().await {
            if signal.args()?.new_owner().is_none() {
                break;
            }
        }
        Ok(())
    };
    if vanished.await.is_ok() && !txn.inner.lock().unwrap().started {
        daemon
            .close_txn(&txn, "client disconnected before calling Start")
            .await;
    }
}

struct Transaction {
    daemon: Arc<Daemon>,
    txn: Arc<Txn>,
}

impl Transaction {
    async fn record(&self, conn: &Connection, call: &str) {
        let uid = conn.peer_creds().await.ok().and_then(|c| c.unix_user_id());
        self.daemon
            .log
            .record(json!({"call": call, "args": [], "peer": "p2p", "sender_uid": uid}));
    }
}

/// Sends a Transaction signal to every connected peer.
async fn broadcast<F, Fut>(txn: &Txn, emit: F)
where
    F: Fn(SignalEmitter<'static>) -> Fut,
    Fut: Future<Output = zbus::Result<()>>,
{
    let peers = txn.inner.lock().unwrap().peers.clone();
    for (_, peer) in peers {
        if let Ok(e) = SignalEmitter::new(&peer, "/") {
            let _ = emit(e.into_owned()).await;
        }
    }
}

/// The transaction's job, run once on the first `Start`.
async fn run_txn(daemon: Arc<Daemon>, txn: Arc<Txn>) {
    let faults = daemon.state.load().faults;
    if faults.crash_mid_txn {
        // Let the Start reply go out, then die like a crashing daemon.
        tokio::time::sleep(Duration::from_millis(50)).await;
        daemon.log.record(json!({"call": "Crash"}));
        std::process::exit(70);
    }
    let delay = tokio::time::sleep(Duration::from_millis(faults.txn_delay_ms));
    let cancelled = tokio::select! {
        _ = delay => false,
        _ = txn.cancel.cancelled() => true,
    };
    if faults.hang {
        std::future::pending::<()>().await;
    }
    let outcome = if cancelled {
        Err("Operation was cancelled".to_string())
    } else if let Some(text) = faults.finish_error {
        Err(text)
    } else {
        match txn.kind {
            TxnKind::Rollback { .. } => {
                rollback_deployments(&daemon, &txn, faults.no_rollback).await
            }
            TxnKind::Cleanup { pending, rollback } => {
                cleanup_deployments(&daemon, &txn, pending, rollback).await
            }
        }
    };
    let outcome = match outcome {
        Ok(()) if txn.kind == (TxnKind::Rollback { reboot: true }) => reboot(&daemon).await,
        other => other,
    };
    let (success, message) = match outcome {
        Ok(()) => (true, String::new()),
        Err(m) => (false, m),
    };
    txn.inner.lock().unwrap().finished = Some((success, message.clone()));
    broadcast(&txn, |e| {
        let message = message.clone();
        async move { Transaction::finished(&e, success, &message).await }
    })
    .await;
    daemon.close_if_done(&txn).await;
    // Peers that stay connected do not keep the transaction alive for long.
    tokio::time::sleep(FORCE_CLOSE).await;
    daemon.close_txn(&txn, "forced close after finishing").await;
}

/// `rollback_transaction_execute`: the OS's rollback deployment (or, with only a pending one,
/// the booted one) becomes the first deployment; a staged pending deployment is refused.
async fn rollback_deployments(daemon: &Daemon, txn: &Txn, no_rollback: bool) -> Result<(), String> {
    let view = daemon.view();
    let (pending, rollback) = view.pending_and_rollback(&txn.osname);
    if no_rollback || (rollback.is_none() && pending.is_none()) {
        return Err("No rollback deployment found".into());
    }
    if pending.is_some_and(|i| view.deployments[i].staged) {
        return Err("Staged deployment (remove with cleanup -p)".into());
    }
    let Some(target) = rollback.or(view.booted) else {
        return Err("No rollback deployment found".into());
    };
    let d = view.deployments[target].clone();
    let text = format!("Moving '{}' to be first deployment", d.csum_serial());
    broadcast(txn, |e| {
        let text = text.clone();
        async move { Transaction::message(&e, &text).await }
    })
    .await;
    broadcast(txn, |e| async move {
        Transaction::task_begin(&e, "Writing deployments").await
    })
    .await;
    if target != 0 {
        let mut order = vec![d.clone()];
        order.extend(
            view.deployments
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != target)
                .map(|(_, x)| x.clone()),
        );
        daemon.write_deployments(order)?;
    }
    broadcast(txn, |e| async move {
        Transaction::percent_progress(&e, "Writing deployments", 100).await?;
        Transaction::progress_end(&e).await?;
        Transaction::task_end(&e, "done").await
    })
    .await;
    daemon.announce(false, true).await;
    Ok(())
}

/// `cleanup_transaction_execute` with `rpmostree_syscore_filter_deployments`: drop this OS's
/// unpinned deployments before the booted one (`pending-deploy`, the staged one included)
/// and/or after it (`rollback-deploy`); the booted one, other OSes' and pinned ones stay.
async fn cleanup_deployments(
    daemon: &Daemon,
    txn: &Txn,
    pending: bool,
    rollback: bool,
) -> Result<(), String> {
    if !pending && !rollback {
        return Ok(());
    }
    let view = daemon.view();
    let mut keep = Vec::new();
    let mut found_booted = false;
    for (i, d) in view.deployments.iter().enumerate() {
        if Some(i) == view.booted {
            found_booted = true;
            keep.push(d.clone());
            continue;
        }
        if d.osname != txn.osname || d.pinned {
            keep.push(d.clone());
            continue;
        }
        if (!found_booted && pending) || (found_booted && rollback) {
            continue;
        }
        keep.push(d.clone());
    }
    if keep.len() == view.deployments.len() {
        broadcast(txn, |e| async move {
            Transaction::message(&e, "Deployments unchanged.").await
        })
        .await;
        return Ok(());
    }
    daemon.write_deployments(keep)?;
    daemon.announce(false, true).await;
    Ok(())
}

/// `reboot=true`: refuse if logind has a block shutdown inhibitor (the deployments are already
/// written), else ask logind (or PID 1) to reboot and refuse new transactions.
async fn reboot(daemon: &Daemon) -> Result<(), String> {
    let bus = daemon.bus();
    let inhibitors: Vec<(String, String, String, String, u32, u32)> = match bus
        .call_method(
            Some("org.freedesktop.login1"),
            "/org/freedesktop/login1",
            Some("org.freedesktop.login1.Manager"),
            "ListInhibitors",
            &(),
        )
        .await
    {
        Ok(reply) => reply.body().deserialize().unwrap_or_default(),
        Err(_) => Vec::new(), // no logind, no inhibitors
    };
    let blocking: Vec<_> = inhibitors
        .iter()
        .filter(|i| i.3 == "block" && i.0.split(':').any(|w| w == "shutdown"))
        .collect();
    if let Some(first) = blocking.first() {
        let mut msg = format!(
            "Reboot blocked by a systemd inhibitor lock in `block` mode\nHeld by: {}\nReason: {}",
            first.1, first.2
        );
        if blocking.len() > 1 {
            msg.push_str(&format!(
                "\nand {} other blocking inhibitor lock(s)\nUse `systemd-inhibit --list` to see details",
                blocking.len() - 1
            ));
        }
        return Err(msg);
    }
    daemon.rebooting.store(true, Ordering::SeqCst);
    // `systemctl reboot` as root: logind first, PID 1's reboot.target if logind is absent.
    let via_logind = bus
        .call_method(
            Some("org.freedesktop.login1"),
            "/org/freedesktop/login1",
            Some("org.freedesktop.login1.Manager"),
            "RebootWithFlags",
            &(0u64),
        )
        .await;
    let via = match via_logind {
        Ok(_) => "login1.RebootWithFlags".to_string(),
        Err(e) => {
            let r = bus
                .call_method(
                    Some("org.freedesktop.systemd1"),
                    "/org/freedesktop/systemd1",
                    Some("org.freedesktop.systemd1.Manager"),
                    "StartUnit",
                    &("reboot.target", "replace-irreversibly"),
                )
                .await;
            format!("systemd1.StartUnit (logind: {e}; systemd: {})", r.is_ok())
        }
    };
    daemon
        .log
        .record(json!({"call": "RebootRequested", "via": via}));
    Ok(())
}

#[interface(name = "org.projectatomic.rpmostree1.Transaction")]
impl Transaction {
    /// `true` if this call started the job. A late caller of a finished transaction gets
    /// `Finished` again, on its connection only, right after the reply.
    #[zbus(out_args("started"))]
    async fn start(&self, #[zbus(connection)] conn: &Connection) -> bool {
        self.record(conn, "Start").await;
        let (first, finished) = {
            let mut inner = self.txn.inner.lock().unwrap();
            let first = !inner.started;
            inner.started = true;
            (first, inner.finished.clone())
        };
        if first {
            tokio::spawn(run_txn(self.daemon.clone(), self.txn.clone()));
        } else if let Some((success, message)) = finished {
            let conn = conn.clone();
            tokio::spawn(async move {
                // zbus sends the reply when this method returns; give it a head start.
                tokio::time::sleep(Duration::from_millis(20)).await;
                if let Ok(e) = SignalEmitter::new(&conn, "/") {
                    let _ = Transaction::finished(&e, success, &message).await;
                }
            });
        }
        first
    }

    /// The job still ends with `Finished` (unless it hangs).
    async fn cancel(&self, #[zbus(connection)] conn: &Connection) {
        self.record(conn, "Cancel").await;
        self.txn.cancel.cancel();
    }

    #[zbus(property)]
    fn title(&self) -> String {
        self.txn.kind.title().into()
    }

    #[zbus(property)]
    fn initiating_client_description(&self) -> String {
        self.txn.client_description.clone()
    }

    #[zbus(signal)]
    async fn finished(
        e: &SignalEmitter<'_>,
        success: bool,
        error_message: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn message(e: &SignalEmitter<'_>, text: &str) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn task_begin(e: &SignalEmitter<'_>, text: &str) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn task_end(e: &SignalEmitter<'_>, text: &str) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn percent_progress(
        e: &SignalEmitter<'_>,
        text: &str,
        percentage: u32,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn progress_end(e: &SignalEmitter<'_>) -> zbus::Result<()>;
}

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

fn default_state() -> State {
    let deployment = |checksum: &str, version: &str| Deployment {
        osname: "testos".into(),
        checksum: checksum.repeat(64),
        serial: 0,
        version: Some(version.into()),
        timestamp: 0,
        origin: Some("testos/stable".into()),
        pinned: false,
        staged: false,
        extra: Default::default(),
    };
    let deployments = vec![deployment("b", "2.0"), deployment("a", "1.0")];
    State {
        osname: "testos".into(),
        booted: deployments[0].id(),
        staged: None,
        deployments,
        boot_default: false,
        polkit_allow: Vec::new(),
        faults: Faults::default(),
        extra: Default::default(),
    }
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
    let daemon = Arc::new(Daemon {
        state,
        log: CallLog::open(&args.log),
        sysroot: args.sysroot.map(|dir| SysrootReader {
            dir,
            ostree: args.ostree.clone(),
            helper: args.sysroot_helper.clone(),
            cache: Mutex::new(None),
        }),
        txn_socket: args.txn_socket,
        bus: OnceLock::new(),
        txn: Mutex::new(None),
        clients: Mutex::new(HashMap::new()),
        rebooting: AtomicBool::new(false),
        announced: Mutex::new(Value::Null),
        served: Mutex::new(BTreeSet::new()),
        creating: tokio::sync::Mutex::new(()),
    });
    // A fresh boot finalizes the staged deployment and boots the default one.
    if daemon.state.load().boot_default {
        let first = daemon.view().deployments.first().map(Deployment::id);
        daemon.state.update(|s| {
            s.staged = None;
            if let Some(first) = first {
                s.booted = first;
            }
        });
    }
    *daemon.announced.lock().unwrap() = daemon.deployments_snapshot();

    // Build without serving, so `bus` is set before any call can arrive.
    let conn = zbus::connection::Builder::system().build().await?;
    daemon.bus.set(conn.clone()).ok();
    let server = conn.object_server();
    server.at(ROOT_PATH, zbus::fdo::ObjectManager).await?;
    server.at(SYSROOT_PATH, Sysroot(daemon.clone())).await?;
    daemon.serve_os_objects().await;
    conn.request_name(BUS_NAME).await?;

    println!("READY");
    std::io::stdout().flush()?;
    std::future::pending::<()>().await;
    Ok(())
}
