//! A private, system-bus-like `dbus-daemon` for tests, and helpers to run the fake D-Bus services
//! (`fake-systemd`, `fake-rpm-ostreed`, built from `tests/support` as cargo examples) on it.
//!
//! Include it with `#[path = "common/bus.rs"] mod bus;`. It uses only std, tempfile and
//! serde_json.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long to wait for the daemon's address or a fake's `READY` line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Names the real services' own policy files (`/usr/share/dbus-1/system.d/*.conf`) let root own
/// and call. Our fakes stand in for those services.
const SERVICE_NAMES: [&str; 4] = [
    "org.freedesktop.systemd1",
    "org.freedesktop.login1",
    "org.freedesktop.hostname1",
    "org.projectatomic.rpmostree1",
];

/// A running `dbus-daemon` with a policy modelled on Debian's `/usr/share/dbus-1/system.conf`.
pub struct TestBus {
    /// The address clients connect to (`unix:path=…/bus,guid=…`).
    pub address: String,
    /// Holds the config, the socket, the daemon's stderr and anything a test wants to put there.
    pub dir: tempfile::TempDir,
    child: Child,
}

impl TestBus {
    /// Starts a bus whose config also `<include>`s each of `policy_files` (may be empty).
    pub fn start(policy_files: &[&Path]) -> TestBus {
        let dir = tempfile::Builder::new()
            .prefix("recoveryd-bus-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("bus.conf");
        let policies = as_this_user(dir.path(), policy_files);
        let policies: Vec<&Path> = policies.iter().map(PathBuf::as_path).collect();
        std::fs::write(&config, config_xml(&dir.path().join("bus"), &policies)).unwrap();
        let stderr_path = dir.path().join("dbus-daemon.stderr");
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("dbus-daemon is installed");
        // The daemon prints its address as the first line once it listens.
        let lines = line_channel(child.stdout.take().unwrap());
        let address = match lines.recv_timeout(STARTUP_TIMEOUT) {
            Ok(line) if !line.trim().is_empty() => line.trim().to_string(),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "dbus-daemon did not print its address within {STARTUP_TIMEOUT:?}; stderr:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        };
        TestBus {
            address,
            dir,
            child,
        }
    }

    /// The environment variable that points clients (and the fakes) at this bus.
    pub fn env(&self) -> (&str, String) {
        ("DBUS_SYSTEM_BUS_ADDRESS", self.address.clone())
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon config: Debian's default context, root allowed to own and call the three services,
/// and the given policy files.
/// The uid the tests run as (0 under tests/run.sh).
pub fn test_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The user the tests run as: `root` under tests/run.sh, anyone under a plain `cargo test`.
pub fn user_name() -> String {
    let uid = rustix::process::geteuid().as_raw();
    if uid == 0 {
        return "root".into();
    }
    let out = Command::new("id").arg("-un").output().expect("id(1) runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The policies as a private test bus should apply them. The shipped policies grant root
/// (`<policy user="root">`); a test run by another user stands in for root on its own bus, so
/// the same rules apply to it: what root may do, it may, and everyone else is refused as
/// before. As root the files are used as they are.
fn as_this_user(dir: &Path, policy_files: &[&Path]) -> Vec<PathBuf> {
    let user = user_name();
    policy_files
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if user == "root" {
                return p.to_path_buf();
            }
            let text = std::fs::read_to_string(p).unwrap();
            let copy = dir.join(format!("policy-{i}.conf"));
            std::fs::write(
                &copy,
                text.replace("user=\"root\"", &format!("user=\"{user}\"")),
            )
            .unwrap();
            copy
        })
        .collect()
}

fn config_xml(socket: &Path, policy_files: &[&Path]) -> String {
    let mut services = String::new();
    for name in SERVICE_NAMES {
        services.push_str(&format!(
            "    <allow own=\"{name}\"/>\n    <allow send_destination=\"{name}\"/>\n"
        ));
    }
    let mut includes = String::new();
    for p in policy_files {
        includes.push_str(&format!("  <include>{}</include>\n", p.display()));
    }
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Peer"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Debug.Stats"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.systemd1.Activator"/>
  </policy>
  <policy user="{user}">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
{services}  </policy>
{includes}</busconfig>
"#,
        socket = socket.display(),
        user = user_name()
    )
}

/// Forwards each line of `stream` to the returned channel, from a thread that drains it to EOF
/// (so the writer never blocks on a full pipe).
fn line_channel(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    rx
}

/// A fake service process (see `tests/support/fake_*.rs`).
pub struct Fake {
    child: Child,
    /// The fake's call log: one JSON object per line.
    pub log: PathBuf,
    /// The fake's state file (JSON).
    pub state: PathBuf,
    /// Where the fake's stderr goes.
    pub stderr: PathBuf,
}

/// Starts the cargo example `example` (e.g. `fake-systemd`) on `bus` and waits until it has
/// printed `READY`, i.e. owns its bus names.
///
/// `--log FILE` and `--state FILE` (and for `fake-rpm-ostreed`, `--txn-socket PATH`) are taken
/// from `args` if present; otherwise they are added, pointing into `bus.dir` (`<example>.log`,
/// `<example>.state.json`, `<example>.txn.sock`). A fake given a state file that does not exist
/// writes its default state there.
pub fn start_fake(bus: &TestBus, example: &str, args: &[&str]) -> Fake {
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut file_arg = |flag: &str, default: String| -> PathBuf {
        match args.iter().position(|a| a == flag) {
            Some(i) => PathBuf::from(&args[i + 1]),
            None => {
                let p = bus.dir.path().join(default);
                args.push(flag.to_string());
                args.push(p.display().to_string());
                p
            }
        }
    };
    let log = file_arg("--log", format!("{example}.log"));
    let state = file_arg("--state", format!("{example}.state.json"));
    if example == "fake-rpm-ostreed" {
        file_arg("--txn-socket", format!("{example}.txn.sock"));
    }
    let stderr = bus.dir.path().join(format!("{example}.stderr"));

    let (key, value) = bus.env();
    let mut child = Command::new(super::example(example, false))
        .args(&args)
        .env(key, value)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {example}: {e}"));
    let lines = line_channel(child.stdout.take().unwrap());
    let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.trim() == "READY" => break,
            Ok(_) => continue,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{example} did not print READY within {STARTUP_TIMEOUT:?}; stderr:\n{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
        }
    }
    Fake {
        child,
        log,
        state,
        stderr,
    }
}

impl Fake {
    /// Every call recorded so far, in order.
    pub fn calls(&self) -> Vec<serde_json::Value> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        // Only complete lines: the fake may be writing the last one right now.
        let complete = &log[..log.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The recorded calls named `call` (e.g. `"StopUnit"`).
    pub fn calls_named(&self, call: &str) -> Vec<serde_json::Value> {
        self.calls()
            .into_iter()
            .filter(|c| c["call"] == call)
            .collect()
    }

    /// The current state file.
    pub fn read_state(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&self.state).unwrap()).unwrap()
    }

    /// Replaces the state file atomically (the fakes re-read it before each call).
    pub fn write_state(&self, state: &serde_json::Value) {
        let tmp = self.state.with_extension("tmp-test");
        std::fs::write(&tmp, serde_json::to_vec_pretty(state).unwrap()).unwrap();
        std::fs::rename(&tmp, &self.state).unwrap();
    }

    /// The process id, e.g. to signal it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited (e.g. after a `crash_mid_txn` fault).
    pub fn try_exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Kills and reaps the fake now (its bus names vanish).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop();
    }
}
