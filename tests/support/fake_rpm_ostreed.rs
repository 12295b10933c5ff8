//! A fake rpm-ostree daemon (`org.projectatomic.rpmostree1`) for tests, on the bus named by
//! `DBUS_SYSTEM_BUS_ADDRESS`. It follows rpm-ostree's D-Bus API (`org.projectatomic.rpmostree1.xml`
//! upstream): the Sysroot and OS objects under an ObjectManager, deployment dictionaries, GError wire names, and rollback
//! transactions served on a separate peer-to-peer socket. Built by `cargo test` as the example
//! `fake-rpm-ostreed`.
//!
//! Usage: `fake-rpm-ostreed --state FILE --log FILE --txn-socket PATH [--sysroot DIR]`
//!
//! State file (JSON; deployments in boot order, index 0 = default next boot):
//!
//! ```json
//! {"osname": "testos",
//!  "deployments": [{"checksum": "aaa…", "serial": 0, "version": "1.0", "timestamp": 0,
//!                   "origin": "testos/stable", "pinned": false, "staged": false}],
//!  "booted": "aaa….0",
//!  "boot_default": false,
//!  "faults": {"busy": false, "no_rollback": false, "hang": false, "crash_mid_txn": false,
//!             "finish_error": null, "txn_delay_ms": 100}}
//! ```
//!
//! The file is re-read whenever the fake needs it and written back when a rollback reorders the
//! deployments. With `"boot_default": true` the fake starts like a fresh boot: `booted` becomes
//! deployment 0. With `--sysroot DIR`, `pinned` is read live from the ostree origin files under
//! `DIR/ostree/deploy/<osname>/deploy/`. If FILE does not exist, a default state with two
//! deployments (booted = index 0) is written there.
//!
//! Every call (bus and transaction socket) is appended to the log as a JSON line, like
//! `{"call": "Rollback", "args": [{"reboot": false}], "sender": ":1.4", "sender_uid": 0}`, plus
//! events (`TransactionClosed`, `RebootRequested`, `Crash`). `READY` is printed once the name is
//! owned.

use std::collections::HashMap;
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
    /// An ostree sysroot to read `pinned` from.
    #[arg(long)]
    sysroot: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------------
// State file and call log
// ---------------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Clone)]
struct State {
    osname: String,
    deployments: Vec<Deployment>,
    /// `<checksum>.<serial>` of the booted deployment ("" = not booted from ostree).
    #[serde(default)]
    booted: String,
    /// At start-up, boot the default deployment (simulates the reboot after a rollback).
    #[serde(default)]
    boot_default: bool,
    #[serde(default)]
    faults: Faults,
    #[serde(flatten)]
    extra: serde_json::Map<String, Value>,
}

#[derive(Serialize, Deserialize, Clone)]
struct Deployment {
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
    #[serde(default)]
    staged: bool,
    #[serde(flatten)]
    extra: serde_json::Map<String, Value>,
}

impl Deployment {
    /// `<checksum>.<serial>`, as ostree names deployments.
    fn key(&self) -> String {
        format!("{}.{}", self.checksum, self.serial)
    }
}

#[derive(Serialize, Deserialize, Clone)]
struct Faults {
    /// Rollback fails with Code26 "Transaction in progress".
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

impl State {
    fn booted_index(&self) -> Option<usize> {
        self.deployments.iter().position(|d| d.key() == self.booted)
    }

    /// `ostree_sysroot_query_deployments_for`: skipping the booted deployment, the first one
    /// before it is *pending*, the first one after it is *rollback*.
    fn pending_and_rollback(&self) -> (Option<usize>, Option<usize>) {
        let (mut pending, mut rollback, mut seen_booted) = (None, None, false);
        for (i, d) in self.deployments.iter().enumerate() {
            if d.key() == self.booted {
                seen_booted = true;
            } else if !seen_booted && pending.is_none() {
                pending = Some(i);
            } else if seen_booted && rollback.is_none() {
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
// The daemon model
// ---------------------------------------------------------------------------------------------

/// One transaction (only one exists at a time).
struct Txn {
    /// Method and parameters that created it: an identical request joins it.
    method: String,
    options: HashMap<String, OwnedVariant>,
    /// Unique bus name of the initiating client.
    sender: String,
    os_path: String,
    address: String,
    client_description: String,
    reboot: bool,
    cancel: CancellationToken,
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
    sysroot: Option<PathBuf>,
    txn_socket: PathBuf,
    os_path: OwnedObjectPath,
    /// Our bus connection (set once built).
    bus: OnceLock<Connection>,
    txn: Mutex<Option<Arc<Txn>>>,
    /// RegisterClient ids by unique name.
    clients: Mutex<HashMap<String, String>>,
    /// A reboot was requested: no new transactions.
    rebooting: AtomicBool,
    /// Deployments as last announced, to tell whether `Reload` changes anything.
    announced: Mutex<Value>,
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

    /// `pinned` of deployment `d`: from its ostree origin file when we have a sysroot.
    fn pinned(&self, osname: &str, d: &Deployment) -> bool {
        let Some(sysroot) = &self.sysroot else {
            return d.pinned;
        };
        let origin = sysroot.join(format!("ostree/deploy/{osname}/deploy/{}.origin", d.key()));
        match std::fs::read_to_string(origin) {
            Ok(text) => origin_is_pinned(&text),
            Err(_) => d.pinned,
        }
    }

    /// The deployment dictionary rpm-ostree puts in `Deployments`/`BootedDeployment`.
    fn deployment_dict(&self, state: &State, d: &Deployment) -> HashMap<String, OwnedVariant> {
        let s = |v: &str| OwnedVariant::from(Str::from(v.to_string()));
        let strings = |v: Vec<String>| OwnedVariant::try_from(Variant::from(v)).unwrap();
        let mut m = HashMap::new();
        let id = format!("{}-{}", state.osname, d.key());
        m.insert("id".into(), s(&id));
        m.insert("osname".into(), s(&state.osname));
        m.insert("checksum".into(), s(&d.checksum));
        m.insert("serial".into(), OwnedVariant::from(d.serial));
        m.insert("booted".into(), OwnedVariant::from(d.key() == state.booted));
        m.insert("staged".into(), OwnedVariant::from(d.staged));
        m.insert(
            "pinned".into(),
            OwnedVariant::from(self.pinned(&state.osname, d)),
        );
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
        let state = self.state.load();
        state
            .deployments
            .iter()
            .map(|d| self.deployment_dict(&state, d))
            .collect()
    }

    /// The dict of the deployment at `index`, or `{}`.
    fn dict_at(&self, index: Option<usize>) -> HashMap<String, OwnedVariant> {
        let state = self.state.load();
        match index {
            Some(i) => self.deployment_dict(&state, &state.deployments[i]),
            None => HashMap::new(),
        }
    }

    /// A comparable snapshot of what the deployment properties show.
    fn deployments_snapshot(&self) -> Value {
        let state = self.state.load();
        let pins: Vec<bool> = state
            .deployments
            .iter()
            .map(|d| self.pinned(&state.osname, d))
            .collect();
        json!([serde_json::to_value(&state).unwrap(), pins])
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
            if let Ok(os) = server.interface::<_, Os>(self.os_path.as_str()).await {
                let (e, o) = (os.signal_emitter(), os.get().await);
                let _ = o.booted_deployment_changed(e).await;
                let _ = o.default_deployment_changed(e).await;
                let _ = o.rollback_deployment_changed(e).await;
            }
        }
    }

    /// Ends `txn`'s life: ActiveTransaction clears, the socket goes away, peers are dropped.
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

    /// Creates the transaction: binds the socket and starts serving it.
    async fn create_txn(
        self: &Arc<Self>,
        sender: &str,
        options: HashMap<String, OwnedVariant>,
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
        let reboot = options
            .get("reboot")
            .and_then(|v| bool::try_from(v.try_clone().ok()?).ok())
            .unwrap_or(false);
        let txn = Arc::new(Txn {
            method: "Rollback".into(),
            options,
            sender: sender.into(),
            os_path: self.os_path.to_string(),
            address: format!("unix:path={}", self.txn_socket.display()),
            client_description,
            reboot,
            cancel: CancellationToken::new(),
            inner: Mutex::new(TxnInner::default()),
        });
        let accept = tokio::spawn(accept_peers(self.clone(), txn.clone(), listener));
        let watch = tokio::spawn(watch_initiator(self.clone(), txn.clone()));
        txn.inner.lock().unwrap().tasks.extend([accept, watch]);
        Ok(txn)
    }
}

/// `pinned=true` in the `[libostree-transient]` group of an origin file (GKeyFile syntax).
fn origin_is_pinned(text: &str) -> bool {
    let mut group = "";
    for line in text.lines().map(str::trim) {
        if let Some(g) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            group = g;
        } else if group == "libostree-transient"
            && let Some((key, value)) = line.split_once('=')
            && key.trim() == "pinned"
        {
            return matches!(value.trim(), "true" | "1");
        }
    }
    false
}

/// `org.freedesktop.DBus.GetConnectionUnixUser(sender)`.
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

    /// A sync barrier; announces deployment changes made to the state file since last time.
    async fn reload(&self, #[zbus(header)] hdr: Header<'_>, #[zbus(connection)] conn: &Connection) {
        self.0.record(conn, &hdr, "Reload", json!([])).await;
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
        if name.is_empty() || name == self.0.state.load().osname {
            Ok(self.0.os_path.clone())
        } else {
            Err(Failure::gio(1, format!("OS name \"{name}\" not found")))
        }
    }

    /// The booted OS object, or `/` when not booted from ostree.
    #[zbus(property)]
    fn booted(&self) -> OwnedObjectPath {
        if self.0.state.load().booted_index().is_some() {
            self.0.os_path.clone()
        } else {
            OwnedObjectPath::try_from("/").unwrap()
        }
    }

    #[zbus(property)]
    fn path(&self) -> String {
        match &self.0.sysroot {
            Some(p) => p.display().to_string(),
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
// org.projectatomic.rpmostree1.OS
// ---------------------------------------------------------------------------------------------

struct Os(Arc<Daemon>);

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
        self.0
            .record(conn, &hdr, "Rollback", json!([options_json(&options)]))
            .await;
        let sender = hdr.sender().map(|s| s.to_string()).unwrap_or_default();
        if self.0.rebooting.load(Ordering::SeqCst) {
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
        let _creating = self.0.creating.lock().await;
        if let Some(txn) = self.0.txn.lock().unwrap().clone() {
            if txn.method == "Rollback" && txn.options == options {
                // "Client joining existing transaction".
                return Ok(txn.address.clone());
            }
            return Err(busy("rollback"));
        }
        if self.0.state.load().faults.busy {
            return Err(busy("rollback"));
        }
        let txn = self.0.create_txn(&sender, options).await?;
        *self.0.txn.lock().unwrap() = Some(txn.clone());
        self.0.announce(true, false).await;
        Ok(txn.address.clone())
    }

    #[zbus(property)]
    fn name(&self) -> String {
        self.0.state.load().osname
    }

    /// `{}` unless this OS is booted.
    #[zbus(property)]
    fn booted_deployment(&self) -> HashMap<String, OwnedVariant> {
        self.0.dict_at(self.0.state.load().booted_index())
    }

    /// The pending deployment if there is one, else the booted one.
    #[zbus(property)]
    fn default_deployment(&self) -> HashMap<String, OwnedVariant> {
        let state = self.0.state.load();
        let (pending, _) = state.pending_and_rollback();
        self.0.dict_at(pending.or(state.booted_index()))
    }

    /// `{}` when there is no rollback target.
    #[zbus(property)]
    fn rollback_deployment(&self) -> HashMap<String, OwnedVariant> {
        let (_, rollback) = self.0.state.load().pending_and_rollback();
        self.0.dict_at(rollback)
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

/// The rollback job, run once on the first `Start` of the transaction.
async fn run_rollback(daemon: Arc<Daemon>, txn: Arc<Txn>) {
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
        rollback_deployments(&daemon, &txn, faults.no_rollback).await
    };
    let outcome = match outcome {
        Ok(()) if txn.reboot => reboot(&daemon).await,
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

/// Moves the rollback target (or, without one, the booted deployment) to index 0.
async fn rollback_deployments(daemon: &Daemon, txn: &Txn, no_rollback: bool) -> Result<(), String> {
    let state = daemon.state.load();
    let (pending, rollback) = state.pending_and_rollback();
    if no_rollback || (rollback.is_none() && pending.is_none()) {
        return Err("No rollback deployment found".into());
    }
    if pending.is_some_and(|i| state.deployments[i].staged) {
        return Err("Staged deployment (remove with cleanup -p)".into());
    }
    let target = rollback.or(state.booted_index()).unwrap();
    let key = state.deployments[target].key();
    broadcast(txn, |e| {
        let text = format!("Moving '{key}' to be first deployment");
        async move { Transaction::message(&e, &text).await }
    })
    .await;
    broadcast(txn, |e| async move {
        Transaction::task_begin(&e, "Writing deployments").await
    })
    .await;
    daemon.state.update(|s| {
        if let Some(i) = s.deployments.iter().position(|d| d.key() == key) {
            let d = s.deployments.remove(i);
            s.deployments.insert(0, d);
        }
    });
    broadcast(txn, |e| async move {
        Transaction::percent_progress(&e, "Writing deployments", 100).await?;
        Transaction::progress_end(&e).await?;
        Transaction::task_end(&e, "done").await
    })
    .await;
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
            tokio::spawn(run_rollback(self.daemon.clone(), self.txn.clone()));
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
        "rollback".into()
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
        booted: deployments[0].key(),
        deployments,
        boot_default: false,
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
    // A fresh boot boots the default deployment.
    state.update(|s| {
        if s.boot_default
            && let Some(d) = s.deployments.first()
        {
            s.booted = d.key();
        }
    });
    let osname = state.load().osname;
    let daemon = Arc::new(Daemon {
        state,
        log: CallLog::open(&args.log),
        sysroot: args.sysroot,
        txn_socket: args.txn_socket,
        os_path: os_object_path(&osname),
        bus: OnceLock::new(),
        txn: Mutex::new(None),
        clients: Mutex::new(HashMap::new()),
        rebooting: AtomicBool::new(false),
        announced: Mutex::new(Value::Null),
        creating: tokio::sync::Mutex::new(()),
    });
    *daemon.announced.lock().unwrap() = daemon.deployments_snapshot();

    // Build without serving, so `bus` is set before any call can arrive.
    let conn = zbus::connection::Builder::system().build().await?;
    daemon.bus.set(conn.clone()).ok();
    let server = conn.object_server();
    server.at(ROOT_PATH, zbus::fdo::ObjectManager).await?;
    server.at(SYSROOT_PATH, Sysroot(daemon.clone())).await?;
    server.at(&daemon.os_path, Os(daemon.clone())).await?;
    server.at(&daemon.os_path, OsExperimental).await?;
    conn.request_name(BUS_NAME).await?;

    println!("READY");
    std::io::stdout().flush()?;
    std::future::pending::<()>().await;
    Ok(())
}
