//! The daemon on a private bus with the shipped policy file: introspection, root-only methods,
//! single flight, the socket API with bad input, sd_notify, and SIGTERM in the middle of a run.

mod common;

use common::bus;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus::TestBus;
use common::podman::Podman;
use common::{Node, install_cluster_fakes, run};

const HOST_OFF: &str =
    "[host]\nsystemd = false\nostree = false\ncluster = false\n[backup]\nspace_margin = 0\n";

fn policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/org.recoveryd.Recovery1.conf")
}

/// A running `recoveryd` with a notify socket the test reads (continuously, from a thread:
/// the kernel queues only a few datagrams).
struct Daemon {
    child: Child,
    pub socket: PathBuf,
    notes: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(bus: &TestBus, node: &Node, extra_env: &[(&str, &str)]) -> Daemon {
        Daemon::start_at(
            bus,
            node,
            extra_env,
            &node.dir.path().join("recoveryd.sock"),
        )
    }

    /// With its socket at `socket`.
    fn start_at(bus: &TestBus, node: &Node, extra_env: &[(&str, &str)], socket: &Path) -> Daemon {
        let dir = node.dir.path();
        let notify_path = dir.join(format!("notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        let notes = Arc::new(Mutex::new(Vec::new()));
        let sink = notes.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = notify.recv(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        let socket = socket.to_path_buf();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_recoveryd"));
        cmd.arg("--config")
            .arg(&node.config)
            .arg("--socket")
            .arg(&socket)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .env("NOTIFY_SOCKET", &notify_path)
            .env_remove("RECOVERYD_FAILPOINTS")
            .env_remove("WATCHDOG_PID")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("recoveryd.log")).unwrap());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let mut d = Daemon {
            child,
            socket,
            notes,
        };
        d.wait_note("READY=1", Duration::from_secs(15));
        d
    }

    fn notes(&self) -> Vec<String> {
        self.notes.lock().unwrap().clone()
    }

    /// Wait until a notification contains `what`.
    fn wait_note(&mut self, what: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(n) = self.notes().into_iter().find(|n| n.contains(what)) {
                return n;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // The reader thread may not have stored the last datagrams yet: give it until
                // the deadline.
                while Instant::now() < deadline {
                    if let Some(n) = self.notes().into_iter().find(|n| n.contains(what)) {
                        return n;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                panic!(
                    "recoveryd exited ({status}) before `{what}`; notes: {:?}",
                    self.notes()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "no `{what}` from recoveryd within {timeout:?}; notes: {:?}",
            self.notes()
        )
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        self.send_term();
        self.wait_exit()
    }

    fn send_term(&self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "recoveryd did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctl(bus: &TestBus, node: &Node, args: &[&str]) -> (i32, String, String) {
    run(Command::new(env!("CARGO_BIN_EXE_recoveryctl"))
        .arg("--config")
        .arg(&node.config)
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .env_remove("RECOVERYD_FAILPOINTS"))
}

/// `busctl` against the private bus, optionally as another user.
fn busctl(bus: &TestBus, uid: Option<u32>, args: &[&str]) -> (i32, String, String) {
    let mut c = match uid {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={u}"))
                .arg(format!("--regid={u}"))
                .arg("--clear-groups")
                .arg("busctl");
            c
        }
        None => Command::new("busctl"),
    };
    c.arg(format!("--address={}", bus.address)).args(args);
    run(&mut c)
}

/// One request over the socket, all response lines.
fn socket(path: &Path, request: &[u8]) -> Vec<serde_json::Value> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = s.write_all(request);
    let _ = s.flush();
    BufReader::new(s)
        .lines()
        .map_while(Result::ok)
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("bad line {l}: {e}")))
        .collect()
}

fn populate(node: &Node) {
    for d in ["etc/ssh", "usr/local/bin", "var/lib/kubelet"] {
        std::fs::create_dir_all(node.path(&format!("/{d}"))).unwrap();
    }
    std::fs::write(node.path("/etc/hostname"), "node\n").unwrap();
    std::fs::write(node.path("/etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    std::fs::write(node.path("/usr/local/bin/tool"), "#!/bin/sh\n").unwrap();
    std::fs::write(
        node.path("/var/lib/kubelet/config.yaml"),
        "kind: KubeletConfiguration\n",
    )
    .unwrap();
}

/// Wait until a fake cluster program has been called (a run is in the act).
fn wait_for_cluster_call(node: &Node, program: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !common::cluster_calls(&node.root())
        .iter()
        .any(|c| c.starts_with(program))
    {
        assert!(Instant::now() < deadline, "{program} never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const MANAGER: &str = "org.recoveryd.Recovery1.Manager";
const PATH: &str = "/org/recoveryd/Recovery1";
const NAME: &str = "org.recoveryd.Recovery1";

#[test]
#[ignore = "needs root: the daemon serves only root (tests/run.sh runs it)"]
fn introspection_root_only_methods_and_open_status() {
    let bus = TestBus::start(&[&policy()]);
    let node = Node::new(HOST_OFF);
    populate(&node);
    let _d = Daemon::start(&bus, &node, &[]);

    let (code, out, err) = busctl(&bus, None, &["introspect", NAME, PATH]);
    assert_eq!(code, 0, "{err}");
    for m in [
        ".StartBackup",
        ".StartRecovery",
        ".Resume",
        ".Restart",
        ".Cancel",
        ".Verify",
        ".GetStatus",
        ".State",
        ".Progress",
        ".RunFinished",
    ] {
        assert!(out.contains(m), "introspection lacks {m}:\n{out}");
    }
    // Everyone may read the status and the properties.
    let (code, out, err) = busctl(
        &bus,
        Some(65534),
        &["call", NAME, PATH, MANAGER, "GetStatus"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("idle"), "{out}");
    let (code, out, err) = busctl(
        &bus,
        Some(65534),
        &["get-property", NAME, PATH, MANAGER, "State"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("idle"), "{out}");
    // Nobody but root may change anything.
    for call in [
        vec!["StartBackup", "a{sv}", "0"],
        vec!["StartRecovery", "a{sv}", "0"],
        vec!["Resume"],
        vec!["ResumeAtBoot"],
        vec!["Restart"],
        vec!["Cancel"],
        vec!["Verify", "s", ""],
    ] {
        let mut args = vec!["call", NAME, PATH, MANAGER];
        args.extend(call.iter().copied());
        let (code, _, err) = busctl(&bus, Some(65534), &args);
        assert_ne!(code, 0, "{call:?} was allowed for uid 65534");
        assert!(
            err.contains("Access denied") || err.contains("AccessDenied"),
            "{call:?}: {err}"
        );
    }
    // Root may: a backup over D-Bus, waited for.
    let (code, out, err) = ctl(&bus, &node, &["backup", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("backup run 1 succeeded"), "{err}");
    let (code, out, _) = busctl(
        &bus,
        Some(65534),
        &["get-property", NAME, PATH, MANAGER, "LastBackup"],
    );
    assert_eq!(code, 0);
    assert!(out.starts_with("(ss) \"20"), "{out}");
}

#[test]
#[ignore = "needs root: the daemon serves only root (tests/run.sh runs it)"]
fn the_daemon_checks_the_caller_itself_when_the_policy_lets_a_call_through() {
    // A policy that lets everyone call everything: only the daemon's own check is left.
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open.conf");
    std::fs::write(
        &open,
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><policy context="default"><allow own="*"/><allow send_destination="*"/></policy></busconfig>"#,
    )
    .unwrap();
    let bus = TestBus::start(&[&open]);
    let node = Node::new(HOST_OFF);
    populate(&node);
    let _d = Daemon::start(&bus, &node, &[]);
    for call in [
        vec!["StartBackup", "a{sv}", "0"],
        vec!["Cancel"],
        vec!["Verify", "s", ""],
    ] {
        let mut args = vec!["call", NAME, PATH, MANAGER];
        args.extend(call.iter().copied());
        let (code, _, err) = busctl(&bus, Some(65534), &args);
        assert_ne!(code, 0);
        assert!(err.contains("for root only"), "{call:?}: {err}");
    }
    // Bad options are refused by name.
    let (code, _, err) = busctl(
        &bus,
        None,
        &[
            "call",
            NAME,
            PATH,
            MANAGER,
            "StartRecovery",
            "a{sv}",
            "1",
            "forse",
            "b",
            "true",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("unknown option `forse`"), "{err}");
    let (code, _, err) = busctl(
        &bus,
        None,
        &[
            "call",
            NAME,
            PATH,
            MANAGER,
            "StartRecovery",
            "a{sv}",
            "1",
            "force",
            "s",
            "yes",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("must be a boolean"), "{err}");
}

/// A node whose cluster backup waits at a gate until [`release`] (the run is caught in the act).
fn held_cluster_node() -> Node {
    let node = Node::new("");
    let fakes = install_cluster_fakes(&node.root());
    let cfg = common::merge_toml(&[
        &format!("root = \"{}\"\n", node.root().display()),
        &fakes,
        "[host]\nsystemd = false\nostree = false\ncluster = true\n[backup]\nspace_margin = 0\n",
    ]);
    std::fs::write(&node.config, cfg).unwrap();
    hold(&node, "backup");
    populate(&node);
    node
}

/// Close the gate of a fake cluster script (`backup`, `restore`): it waits at it.
fn hold(node: &Node, what: &str) {
    std::fs::write(
        node.path(&format!("/opt/fake-cluster/state/hold-{what}")),
        "",
    )
    .unwrap();
}

/// Open it: the script goes on.
fn release(node: &Node, what: &str) {
    std::fs::remove_file(node.path(&format!("/opt/fake-cluster/state/hold-{what}"))).unwrap();
}

#[test]
#[ignore = "needs root: the daemon serves only root (tests/run.sh runs it)"]
fn one_run_at_a_time_and_runs_outlive_their_client() {
    let bus = TestBus::start(&[&policy()]);
    let node = held_cluster_node();
    let d = Daemon::start(&bus, &node, &[]);
    // A client that waits for its run, then goes away (the backup Job killed at its deadline):
    // the run goes on.
    {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
        s.write_all(b"{\"op\":\"backup\",\"wait\":true}\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut first = String::new();
        BufReader::new(&s).read_line(&mut first).unwrap();
        let v: serde_json::Value = serde_json::from_str(&first).unwrap();
        assert_eq!(v["event"], "run_started", "{first}");
        assert_eq!(v["run"], 1, "{first}");
    }
    // A second mutating request while the first runs: Busy, naming the run.
    let (code, _, err) = ctl(&bus, &node, &["backup"]);
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("backup run 1 is in progress") && err.contains("Busy"),
        "{err}"
    );
    let r = socket(&d.socket, b"{\"op\":\"recover\"}\n");
    assert_eq!(r[0]["name"], "org.recoveryd.Recovery1.Error.Busy", "{r:?}");
    // The first run, its client gone, finishes.
    release(&node, "backup");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out, _) = ctl(&bus, &node, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        if v["last_backup"]["phase"] == "Succeeded" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backup did not finish: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs root: the daemon serves only root (tests/run.sh runs it)"]
fn the_socket_api_as_the_backup_job_uses_it_and_bad_input() {
    let bus = TestBus::start(&[&policy()]);
    let node = Node::new(HOST_OFF);
    populate(&node);
    let d = Daemon::start(&bus, &node, &[]);
    let sock = d.socket.to_str().unwrap().to_string();
    assert_eq!(
        std::fs::metadata(&d.socket)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap(),
        0o600
    );
    // What the Job runs: the result, one JSON document, is its termination message.
    let result = node.dir.path().join("termination-log");
    let (code, out, err) = ctl(
        &bus,
        &node,
        &[
            "--socket",
            &sock,
            "--result-file",
            result.to_str().unwrap(),
            "backup",
            "--wait",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("succeeded"), "{err}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    assert_eq!(
        (
            doc["schema"].as_u64(),
            doc["reply"].as_str(),
            doc["state"].as_str()
        ),
        (Some(1), Some("finished"), Some("succeeded")),
        "{doc}"
    );
    let lines = socket(&d.socket, b"{\"op\":\"backup\",\"wait\":true}\n");
    let (_, out, _) = ctl(&bus, &node, &["generations", "--json"]);
    let gens: Vec<String> = common::json_list(&out, "generations")
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["info"]["id"].as_str().unwrap().to_string())
        .collect();
    common::golden::check_lines("socket-backup", &lines, &node.root(), &gens);
    let last = lines.last().unwrap();
    assert_eq!(last["reply"], "finished", "{lines:?}");
    assert_eq!(last["state"], "succeeded", "{lines:?}");
    assert_eq!(last["phase"], "Succeeded");
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "step_finished" && l["step"] == "commit"),
        "{lines:?}"
    );

    let big = {
        let mut b = vec![b'{'; 10 << 20];
        b.push(b'\n');
        b
    };
    for (request, expect) in [
        (&b"{this is not json\n"[..], "bad request"),
        (&b"{\"op\":\"reformat-disk\"}\n"[..], "unknown variant"),
        (
            &b"{\"op\":\"backup\",\"wait\":\"yes\"}\n"[..],
            "bad request",
        ),
        (&b"{\"op\":\"backup\",\"colour\":1}\n"[..], "unknown field"),
        (
            &b"{\"op\":\"status\",\"extra\":1}\n"[..],
            "unknown field `extra`",
        ),
        (
            &b"{\"op\":\"cancel\",\"now\":true}\n"[..],
            "unknown field `now`",
        ),
        (&b"{\"op\":\"recover\",\"x\":1}\n"[..], "unknown field `x`"),
        (&b"{\"op\":\"resume\",\"x\":1}\n"[..], "unknown field `x`"),
        (&b"{\"op\":\"restart\",\"x\":1}\n"[..], "unknown field `x`"),
        (&b"\n"[..], "empty request"),
        (&big[..], "longer than 65536 bytes"),
    ] {
        let r = socket(&d.socket, request);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0]["reply"], "error", "{r:?}");
        assert_eq!(r[0]["name"], "org.recoveryd.Recovery1.Error.InvalidArgs");
        assert!(
            r[0]["message"].as_str().unwrap().contains(expect),
            "{expect}: {r:?}"
        );
    }
    // A peer that is not root (the socket opened up for the test) is refused.
    let mode: std::fs::Permissions = std::os::unix::fs::PermissionsExt::from_mode(0o666);
    std::fs::set_permissions(&d.socket, mode).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c"])
        .arg(format!(
            "import socket; s=socket.socket(socket.AF_UNIX); s.connect('{sock}'); s.sendall(b'{{\"op\":\"backup\"}}\\n'); print(s.makefile().readline())"
        ))
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.contains("AccessDenied") && line.contains("uid 65534"),
        "{line}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The daemon is still serving.
    let r = socket(&d.socket, b"{\"op\":\"status\"}\n");
    assert_eq!(r[0]["reply"], "status", "{r:?}");
    assert_eq!(r[0]["state"], "idle");
}

#[test]
#[ignore = "needs root: the daemon serves only root (tests/run.sh runs it)"]
fn sd_notify_ready_status_and_watchdog() {
    let bus = TestBus::start(&[&policy()]);
    let node = Node::new(HOST_OFF);
    populate(&node);
    let mut d = Daemon::start(&bus, &node, &[("WATCHDOG_USEC", "400000")]);
    assert!(
        d.notes()
            .iter()
            .any(|n| n.contains("READY=1") && n.contains("STATUS=")),
        "{:?}",
        d.notes()
    );
    d.wait_note("WATCHDOG=1", Duration::from_secs(5));
    let (code, _, err) = ctl(&bus, &node, &["backup", "--wait"]);
    assert_eq!(code, 0, "{err}");
    d.wait_note("STATUS=backup run 1 succeeded", Duration::from_secs(10));
    for expected in [
        "STATUS=backup run 1 started",
        "STATUS=run 1: stage copy",
        "STATUS=run 1: copy: copy-files",
    ] {
        assert!(
            d.notes().iter().any(|n| n.contains(expected)),
            "no `{expected}` in {:?}",
            d.notes()
        );
    }
    let status = d.terminate();
    assert!(status.success(), "{status}");
    d.wait_note("STOPPING=1", Duration::from_secs(2));
}

#[test]
#[ignore = "needs root: the daemon serves only root (tests/run.sh runs it)"]
fn sigterm_in_the_middle_of_a_run_then_restart_resumes_to_the_same_end() {
    let bus = TestBus::start(&[&policy()]);
    let node = Node::new("");
    let fakes = install_cluster_fakes(&node.root());
    std::fs::write(
        &node.config,
        common::merge_toml(&[
            &format!("root = \"{}\"\n", node.root().display()),
            &fakes,
            "[host]\nsystemd = false\nostree = false\ncluster = true\n[backup]\nspace_margin = 0\n",
        ]),
    )
    .unwrap();
    populate(&node);
    let mut d = Daemon::start(&bus, &node, &[]);
    let (code, _, err) = ctl(&bus, &node, &["backup", "--wait"]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(node.path("/etc/hosts"), "broken by an upgrade\n").unwrap();
    // The recovery stops at its reboot (systemd integration is off here): "reboot" the node.
    let (code, _, err) = ctl(&bus, &node, &["recover"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("awaiting_reboot"), "{err}");
    assert!(d.terminate().success());
    node.set_boot_id("boot-2");
    hold(&node, "restore");
    let mut d = Daemon::start(&bus, &node, &[]);
    // The daemon resumes by itself; stop it while cluster-restore.sh runs, and let the script
    // end once the daemon is stopping: the step finishes within the grace period.
    wait_for_cluster_call(&node, "cluster-restore.sh");
    d.send_term();
    d.wait_note("STOPPING=1", Duration::from_secs(10));
    release(&node, "restore");
    assert!(d.wait_exit().success(), "a clean exit after SIGTERM");
    let j = recoveryd::journal::Journal::open_existing(&node.journal_path()).unwrap();
    let r = j.run(2).unwrap().unwrap();
    assert_eq!(
        r.state,
        recoveryd::journal::RunState::Running,
        "left open to resume"
    );
    let restore = j.last_attempt(2, "cluster-restore").unwrap().unwrap();
    assert_eq!(
        restore.state,
        recoveryd::journal::StepState::Done,
        "the step finished within the grace period"
    );
    drop(j);
    let _d = Daemon::start(&bus, &node, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = recoveryd::journal::Journal::open_existing(&node.journal_path()).unwrap();
        if j.run(2).unwrap().unwrap().state == recoveryd::journal::RunState::Succeeded {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the resumed recovery did not finish"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        std::fs::read_to_string(node.path("/etc/hosts")).unwrap(),
        "127.0.0.1 localhost\n"
    );
    let calls = common::cluster_calls(&node.root());
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("cluster-restore.sh"))
            .count(),
        1,
        "{calls:?}"
    );
}

#[test]
#[ignore = "needs root: the daemon serves only root (tests/run.sh runs it)"]
fn without_the_daemon_a_waiting_client_is_told_and_the_boot_resume_goes_offline() {
    let bus = TestBus::start(&[&policy()]);
    let node = held_cluster_node();
    let mut d = Daemon::start(&bus, &node, &[]);
    // A client waiting for a run learns when the daemon goes away, instead of waiting forever.
    let waiting = {
        let mut c = Command::new(env!("CARGO_BIN_EXE_recoveryctl"));
        c.arg("--config")
            .arg(&node.config)
            .args(["backup", "--wait"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    wait_for_cluster_call(&node, "cluster-backup.sh");
    let _ = d.child.kill();
    let _ = d.child.wait();
    let out = waiting.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("recoveryd stopped before run 1 ended"),
        "{err}"
    );

    // A recovery waiting for its reboot, and no daemon on the bus after the reboot.
    release(&node, "backup");
    let d = Daemon::start(&bus, &node, &[]);
    let (code, _, err) = ctl(&bus, &node, &["backup", "--wait"]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(node.path("/etc/hosts"), "broken by an upgrade\n").unwrap();
    let (code, _, err) = ctl(&bus, &node, &["recover"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("awaiting_reboot"), "{err}");
    drop(d);
    node.set_boot_id("boot-2");
    // An operator is told how to get on.
    let (code, _, err) = ctl(&bus, &node, &["resume"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("recoveryd does not answer") && err.contains("--offline"),
        "{err}"
    );
    // The boot unit fails, naming the unit its failure starts ...
    let (code, _, err) = ctl(&bus, &node, &["resume", "--boot"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("recoveryd-resume-offline.service"), "{err}");
    // ... which finishes the recovery without the daemon.
    let (code, out, err) = ctl(&bus, &node, &["--offline", "resume", "--boot"]);
    assert_eq!(code, 0, "{out}{err}");
    let j = recoveryd::journal::Journal::open_existing(&node.journal_path()).unwrap();
    let r = j.run(3).unwrap().unwrap();
    assert_eq!(
        r.state,
        recoveryd::journal::RunState::Succeeded,
        "{out}{err}"
    );
    assert_eq!(
        std::fs::read_to_string(node.path("/etc/hosts")).unwrap(),
        "127.0.0.1 localhost\n"
    );
}

#[test]
#[ignore = "needs root: the daemon serves only root (tests/run.sh runs it)"]
fn a_daemon_backup_of_a_large_file_reports_bytes_as_they_are_copied() {
    let bus = TestBus::start(&[&policy()]);
    let node = Node::new(HOST_OFF);
    populate(&node);
    // One 1 GiB file of real (not sparse) data: the copy of it is one job of the copy step.
    let big = node.path("/var/lib/kubelet/big.img");
    let f = std::fs::File::create(&big).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let mut w = std::io::BufWriter::new(f);
    for i in 0..1024u32 {
        use std::io::Write;
        w.write_all(&i.to_le_bytes()).unwrap();
        w.write_all(&chunk[4..]).unwrap();
    }
    drop(w);
    let d = Daemon::start(&bus, &node, &[]);
    let lines = socket(&d.socket, b"{\"op\":\"backup\",\"wait\":true}\n");
    assert_eq!(lines.last().unwrap()["state"], "succeeded", "{lines:?}");
    let copy: Vec<(u64, u64, u64)> = lines
        .iter()
        .filter(|l| l["event"] == "step_progress" && l["step"] == "copy-files")
        .map(|l| {
            (
                l["done"].as_u64().unwrap(),
                l["bytes_done"].as_u64().unwrap(),
                l["bytes_total"].as_u64().unwrap(),
            )
        })
        .collect();
    // Reported every 64 MiB: at least a dozen reports while the one large file copies
    // (fewer files done than in total), bytes growing, the total known from the start.
    // (Two workers report, so two reports may arrive out of order: count the 64 MiB marks
    // passed, not the order.)
    let marks: std::collections::BTreeSet<u64> = copy
        .iter()
        .filter(|(_, b, t)| b < t)
        .map(|(_, b, _)| b >> 26)
        .collect();
    assert!(marks.len() >= 12, "{copy:?}");
    assert!(copy.iter().all(|(_, _, t)| *t >= 1 << 30), "{copy:?}");
    assert_eq!(copy.last().unwrap().1, copy.last().unwrap().2, "{copy:?}");
}

#[test]
#[ignore = "needs root: the daemon serves only root (tests/run.sh runs it)"]
fn a_state_directory_emptied_under_the_daemon_is_said_and_no_run_starts() {
    let bus = TestBus::start(&[&policy()]);
    let node = Node::new(HOST_OFF);
    populate(&node);
    let mut d = Daemon::start(&bus, &node, &[]);
    let lines = socket(&d.socket, b"{\"op\":\"backup\",\"wait\":true}\n");
    assert_eq!(lines.last().unwrap()["state"], "succeeded", "{lines:?}");
    // What TALM's backup-agent's Cleanup does: everything under the directory goes.
    let state = node.path("/var/recovery");
    for e in std::fs::read_dir(&state).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    // Still serving, and saying what happened.
    let status = socket(&d.socket, b"{\"op\":\"status\"}\n");
    let s = status.last().unwrap();
    let warnings = s["warnings"].as_array().unwrap_or_else(|| panic!("{s}"));
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("was removed or replaced while recoveryd ran")),
        "{s}"
    );
    // A backup is refused with the same words; nothing is recorded into a deleted file.
    let lines = socket(&d.socket, b"{\"op\":\"backup\",\"wait\":true}\n");
    let last = lines.last().unwrap();
    assert_eq!(last["reply"], "error", "{lines:?}");
    assert!(
        last["message"].as_str().unwrap().contains("restart"),
        "{last}"
    );
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "the daemon is still running"
    );
}

// ------------------------------------------------------------------------------------------
// The backup Job's image, run by podman against the daemon's socket
// ------------------------------------------------------------------------------------------

/// deploy/image/build.sh into `podman`'s storage: (the Job's image, the binaries image).
fn build_images(podman: &Podman) -> (String, String) {
    let (code, out, err) = run(Command::new(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/image/build.sh"),
    )
    .arg("localhost/recoveryd-test")
    .env("CONTAINERS_STORAGE_CONF", &podman.conf));
    assert_eq!(code, 0, "deploy/image/build.sh: {out}{err}");
    let refs: Vec<&str> = out.lines().collect();
    assert_eq!(refs.len(), 2, "{out}");
    assert!(refs[0].contains("/recoveryctl:"), "{out}");
    (refs[0].to_string(), refs[1].to_string())
}

/// The Job's container command, as deploy/backup-job.yaml has it.
fn job_command() -> Vec<String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; j = yaml.safe_load(open(sys.argv[1])); \
             print(json.dumps(j['spec']['template']['spec']['containers'][0]['command']))",
        ])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/backup-job.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The Job's pod, as far as podman can be it: the image, the command, the securityContext
/// (uid 0, no capability, no privilege escalation, read-only root, no network), the socket
/// directory as the only host path, and the termination message file.
fn job_container(podman: &Podman, image: &str, name: &str, run_dir: &Path, log: &Path) -> Command {
    std::fs::write(log, "").unwrap();
    let command = job_command();
    let mut c = podman.cmd();
    c.args(["run", "--name", name, "--network=none", "--read-only"])
        .args([
            "--cap-drop=ALL",
            "--security-opt=no-new-privileges",
            "--user=0:0",
        ])
        .args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ])
        .arg(format!("--volume={}:/run/recoveryd", run_dir.display()))
        .arg(format!("--volume={}:/dev/termination-log", log.display()))
        .arg(format!("--entrypoint={}", command[0]))
        .arg(image)
        .args(&command[1..]);
    c
}

fn termination_message(log: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.len() < 4096, "longer than Kubernetes keeps: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

#[test]
#[ignore = "needs root and podman: the daemon serves only root (tests/run.sh runs it)"]
fn the_job_image_backs_up_over_the_socket_and_reports_each_outcome() {
    let bus = TestBus::start(&[&policy()]);
    let node = Node::new(HOST_OFF);
    populate(&node);
    let podman = Podman::new(node.dir.path());
    let (image, _) = build_images(&podman);
    // FROM scratch: recoveryctl and nothing else.
    let size: u64 = podman
        .ok(&["image", "inspect", "--format", "{{.Size}}", &image])
        .parse()
        .unwrap();
    assert!(size < 20 << 20, "{size} bytes");
    assert_eq!(job_command()[0], "/usr/bin/recoveryctl");

    let run_dir = node.dir.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let log = node.dir.path().join("termination-log");
    let d = Daemon::start_at(&bus, &node, &[], &run_dir.join("recoveryd.sock"));

    // Succeeded: exit 0, the finished run as the termination message.
    let (code, out, err) = run(&mut job_container(&podman, &image, "ok", &run_dir, &log));
    assert_eq!(code, 0, "{out}{err}");
    let m = termination_message(&log);
    assert_eq!(
        (
            m["schema"].as_u64(),
            m["reply"].as_str(),
            m["state"].as_str(),
            m["phase"].as_str()
        ),
        (
            Some(1),
            Some("finished"),
            Some("succeeded"),
            Some("Succeeded")
        ),
        "{m}"
    );

    // Failed: TALM's backup shares the directory; exit 4 and why.
    std::fs::write(
        node.path("/var/recovery/upgrade-recovery.sh"),
        "#!/bin/bash\n",
    )
    .unwrap();
    let (code, out, err) = run(&mut job_container(&podman, &image, "talm", &run_dir, &log));
    assert_eq!(code, 4, "{out}{err}");
    let m = termination_message(&log);
    assert_eq!(
        (m["reply"].as_str(), m["state"].as_str()),
        (Some("finished"), Some("failed")),
        "{m}"
    );
    assert!(m["message"].as_str().unwrap().contains("TALM"), "{m}");
    std::fs::remove_file(node.path("/var/recovery/upgrade-recovery.sh")).unwrap();

    // The daemon is not there (socket gone): exit 1, and the message says so.
    let (code, _, _) = run(&mut job_container(
        &podman,
        &image,
        "nodaemon",
        &node.dir.path().join("root"),
        &log,
    ));
    assert_eq!(code, 1);
    let m = termination_message(&log);
    assert_eq!(m["reply"], "error", "{m}");
    assert!(
        m["message"]
            .as_str()
            .unwrap()
            .contains("/run/recoveryd/recoveryd.sock"),
        "{m}"
    );
    drop(d);

    // The pod's deadline: the kubelet stops the container (SIGTERM) while the backup runs; the
    // daemon is held inside its copy step (SIGSTOP at a failpoint) so the backup is still
    // running then. Exit 143, the message says where the run was, and the run goes on.
    let d = Daemon::start_at(
        &bus,
        &node,
        &[("RECOVERYD_FAILPOINTS", "copy-files:during@1:stop")],
        &run_dir.join("recoveryd.sock"),
    );
    let mut job = job_container(&podman, &image, "deadline", &run_dir, &log);
    let mut child = job
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = d.child.id();
    let stopped = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('T')
            })
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stopped() {
        assert!(
            Instant::now() < deadline,
            "the daemon never reached its failpoint"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    podman.ok(&["stop", "--time", "20", "deadline"]);
    child.wait().unwrap();
    let code = podman.ok(&["inspect", "--format", "{{.State.ExitCode}}", "deadline"]);
    assert_eq!(code, "143");
    let m = termination_message(&log);
    assert_eq!(m["reply"], "error", "{m}");
    let message = m["message"].as_str().unwrap();
    assert!(
        // The step is the last one whose start reached recoveryctl before the daemon stopped.
        message.starts_with("recoveryctl stopped by SIGTERM while waiting (run 3, step ")
            && message.contains("goes on in recoveryd"),
        "{m}"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::CONT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = socket(&d.socket, b"{\"op\":\"status\"}\n");
        if r[0]["state"] == "idle" {
            assert_eq!(
                (
                    r[0]["last_backup"]["id"].as_i64(),
                    r[0]["last_backup"]["state"].as_str()
                ),
                (Some(3), Some("succeeded")),
                "{r:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{r:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The RHCOS installer (deploy/rhcos/recoveryd-install.sh) copies the static binaries out of
/// the binaries image named by digest, once per image; refuses a name without a digest; and
/// keeps installed binaries when the image cannot be fetched (a node recovering offline).
#[test]
#[ignore = "needs root and podman (tests/run.sh runs it)"]
fn the_rhcos_installer_takes_the_binaries_from_their_image_by_digest() {
    let dir = tempfile::tempdir().unwrap();
    let podman = Podman::new(dir.path());
    let (_, binaries) = build_images(&podman);
    let digest = podman.ok(&["image", "inspect", "--format", "{{.Digest}}", &binaries]);
    let name = binaries.rsplit_once(':').unwrap().0;
    let pinned = format!("{name}@{digest}");
    let prefix = dir.path().join("node");
    std::fs::create_dir_all(prefix.join("etc/recoveryd")).unwrap();
    let install = |image: &str| {
        std::fs::write(
            prefix.join("etc/recoveryd/binaries-image"),
            format!("{image}\n"),
        )
        .unwrap();
        run(Command::new("sh")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/rhcos/recoveryd-install.sh"))
            .env("RECOVERYD_INSTALL_PREFIX", &prefix)
            .env("CONTAINERS_STORAGE_CONF", &podman.conf))
    };
    let bin = prefix.join("usr/local/bin");

    // Not pinned: refused, nothing installed.
    let (code, _, err) = install(&binaries);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not pinned by digest"), "{err}");
    assert!(!bin.exists());
    // An image that cannot be fetched, nothing installed yet: a failure.
    let unknown = format!("{name}@sha256:{}", "1".repeat(64));
    let (code, _, err) = install(&unknown);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no recoveryd is installed"), "{err}");

    // Installed: the release build's binaries, stripped, byte for byte, and the image recorded.
    let (code, _, err) = install(&pinned);
    assert_eq!(code, 0, "{err}");
    let bin_dir = std::env::var("RECOVERYD_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(
                String::from_utf8(
                    Command::new(
                        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/build-static.sh"),
                    )
                    .output()
                    .unwrap()
                    .stdout,
                )
                .unwrap()
                .trim(),
            )
        });
    for b in ["recoveryd", "recoveryctl"] {
        let stripped = dir.path().join(format!("{b}.stripped"));
        let (code, _, err) = run(Command::new("strip")
            .arg("-o")
            .arg(&stripped)
            .arg(bin_dir.join(b)));
        assert_eq!(code, 0, "{err}");
        assert!(
            std::fs::read(bin.join(b)).unwrap() == std::fs::read(&stripped).unwrap(),
            "{b} differs from the release build"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(bin.join(b)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o7777, 0o755, "{b}");
    }
    assert_eq!(
        std::fs::read_to_string(prefix.join("usr/local/lib/recoveryd/installed-image")).unwrap(),
        format!("{pinned}\n")
    );
    // Once per image: a second boot changes nothing.
    let before = std::fs::metadata(bin.join("recoveryd"))
        .unwrap()
        .modified()
        .unwrap();
    let (code, _, err) = install(&pinned);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::metadata(bin.join("recoveryd"))
            .unwrap()
            .modified()
            .unwrap(),
        before
    );
    // A new image that cannot be fetched (no registry): the installed binaries stay.
    let (code, _, err) = install(&unknown);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("keeping the installed binaries"), "{err}");
    assert!(
        std::fs::read_dir(&bin).unwrap().count() == 2,
        "leftovers in {}",
        bin.display()
    );
}

/// A backup whose process died (power cut, SIGKILL) is closed as failed before the daemon
/// answers anyone: a status right after a boot never shows it as still running.
#[test]
#[ignore = "needs root: the daemon serves only root (tests/run.sh runs it)"]
fn a_backup_a_crash_left_open_is_failed_before_anyone_is_answered() {
    let bus = TestBus::start(&[&policy()]);
    let node = Node::new(HOST_OFF);
    populate(&node);
    let (code, _, err) = run(Command::new(env!("CARGO_BIN_EXE_recoveryctl"))
        .arg("--config")
        .arg(&node.config)
        .args(["--offline", "backup"])
        .env("RECOVERYD_FAILPOINTS", "copy-files:during@1"));
    assert_ne!(code, 0, "the failpoint kills the backup: {err}");
    {
        let j = recoveryd::journal::Journal::open_existing(&node.journal_path()).unwrap();
        let r = j.run(1).unwrap().unwrap();
        assert_eq!(r.state, recoveryd::journal::RunState::Running, "left open");
    }
    let d = Daemon::start(&bus, &node, &[]);
    let log = std::fs::read_to_string(node.dir.path().join("recoveryd.log")).unwrap();
    let failed = log
        .find("backup run 1 was interrupted; marking it failed")
        .unwrap_or_else(|| panic!("{log}"));
    let serving = log.find("socket API on").unwrap_or_else(|| panic!("{log}"));
    assert!(
        failed < serving,
        "closed before the socket and D-Bus serve: {log}"
    );
    let r = socket(&d.socket, b"{\"op\":\"status\"}\n");
    assert_eq!(r[0]["state"], "idle", "{r:?}");
    assert_eq!(r[0]["last_backup"]["state"], "failed", "{r:?}");
    assert_eq!(r[0]["last_backup"]["phase"], "Error", "{r:?}");
}
