//! The D-Bus host adapters (`src/host/{systemd,power,rpmostree}.rs`) against the fake services
//! (`tests/support/fake_*.rs`) on a private, system-like `dbus-daemon`: every success and every
//! failure the adapters distinguish, checked both on what they return and on what the fakes
//! recorded. Each test has its own bus; the adapters are pointed at it with
//! `SystemBus::with_address` (never through the process-wide environment).

mod common;
use common::bus;
use common::sysroot;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bus::{Fake, TestBus, start_fake};
use recoveryd::host::bus::SystemBus;
use recoveryd::host::command::Runner;
use recoveryd::host::ostree::{Ostree, OstreeCli};
use recoveryd::host::power::{DbusPower, Login1Proxy, Power};
use recoveryd::host::rpmostree::{DbusRpmOstree, RollbackError, RpmOstree};
use recoveryd::host::systemd::{DbusUnits, JobFailed, Units};
use serde_json::{Value, json};

/// The most any single adapter call, or any wait for the fakes, may take.
const WAIT: Duration = Duration::from_secs(20);
/// Job / transaction timeout for the adapters under test (the fakes finish in ~20-100 ms).
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// A short timeout for the tests of things that never finish.
const SHORT: Duration = Duration::from_millis(800);

/// Runs `f`, failing the test instead of hanging if it takes longer than [`WAIT`].
async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not return within {WAIT:?}"))
}

/// Polls `cond` until it holds, at most [`WAIT`].
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A bus connection for the adapters, pointed at the test bus.
fn system_bus(bus: &TestBus) -> Arc<SystemBus> {
    Arc::new(SystemBus::with_address(bus.address.clone(), WAIT))
}

/// The names of the recorded calls, in order.
fn call_names(fake: &Fake) -> Vec<String> {
    fake.calls()
        .iter()
        .map(|c| c["call"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Position of the first call named `name` at or after `from`.
fn position_after(names: &[String], from: usize, name: &str) -> usize {
    names[from..]
        .iter()
        .position(|n| n == name)
        .map(|i| i + from)
        .unwrap_or_else(|| panic!("no {name} after call #{from} in {names:?}"))
}

// ---------------------------------------------------------------------------------------------
// systemd: DbusUnits
// ---------------------------------------------------------------------------------------------

struct Systemd {
    // Field order: the fake and the bus go after the adapter.
    units: DbusUnits,
    fake: Fake,
    _bus: TestBus,
}

/// fake-systemd on a fresh bus (default state: kubelet and crio active and enabled), with
/// `edit` applied to its state, and a `DbusUnits` with `job_timeout`.
fn systemd(job_timeout: Duration, edit: impl FnOnce(&mut Value)) -> Systemd {
    let bus = TestBus::start(&[]);
    let fake = start_fake(&bus, "fake-systemd", &[]);
    let mut state = fake.read_state();
    edit(&mut state);
    fake.write_state(&state);
    Systemd {
        units: DbusUnits::new(system_bus(&bus), job_timeout),
        fake,
        _bus: bus,
    }
}

impl Systemd {
    fn unit_state(&self, unit: &str) -> Value {
        self.fake.read_state()["units"][unit].clone()
    }
}

#[tokio::test]
async fn systemd_stop_start_restart_change_the_unit_and_wait_for_the_job() {
    let s = systemd(OP_TIMEOUT, |st| {
        st["units"]["kubelet.service"]["job_delay_ms"] = json!(150);
    });
    let u = &s.units;

    let out = bounded("stop", u.stop("kubelet.service")).await.unwrap();
    assert_eq!(out, "kubelet.service inactive");
    assert_eq!(s.unit_state("kubelet.service")["active"], "inactive");
    assert_eq!(
        bounded("active_state", u.active_state("kubelet.service"))
            .await
            .unwrap(),
        "inactive"
    );

    let out = bounded("start", u.start("kubelet.service")).await.unwrap();
    assert_eq!(out, "kubelet.service active");
    assert_eq!(s.unit_state("kubelet.service")["active"], "active");

    let out = bounded("restart", u.restart("kubelet.service"))
        .await
        .unwrap();
    assert_eq!(out, "kubelet.service active");
    assert_eq!(s.unit_state("kubelet.service")["active"], "active");

    // Subscribed for each job (a repeated Subscribe gets AlreadySubscribed, which is accepted),
    // each job in mode "replace", and nothing touched the other unit.
    let names = call_names(&s.fake);
    let jobs: Vec<Value> = s
        .fake
        .calls()
        .into_iter()
        .filter(|c| ["StopUnit", "StartUnit", "RestartUnit"].contains(&c["call"].as_str().unwrap()))
        .map(|c| json!([c["call"], c["args"]]))
        .collect();
    assert_eq!(
        jobs,
        vec![
            json!(["StopUnit", ["kubelet.service", "replace"]]),
            json!(["StartUnit", ["kubelet.service", "replace"]]),
            json!(["RestartUnit", ["kubelet.service", "replace"]]),
        ]
    );
    assert_eq!(names.iter().filter(|n| *n == "Subscribe").count(), 3);
    // Subscribe precedes the first job call.
    assert!(
        names.iter().position(|n| n == "Subscribe") < names.iter().position(|n| n == "StopUnit"),
        "{names:?}"
    );
    assert!(s.fake.calls().iter().all(|c| c["sender_uid"] == 0));
    assert_eq!(s.unit_state("crio.service")["active"], "active");
}

#[tokio::test]
async fn systemd_job_removed_before_the_method_reply_is_still_matched() {
    let s = systemd(OP_TIMEOUT, |st| {
        st["removed_before_reply"] = json!(true);
    });
    let out = bounded("stop", s.units.stop("crio.service")).await.unwrap();
    assert_eq!(out, "crio.service inactive");
    let out = bounded("start", s.units.start("crio.service"))
        .await
        .unwrap();
    assert_eq!(out, "crio.service active");
    assert_eq!(s.fake.calls_named("StopUnit").len(), 1);
    assert_eq!(s.fake.calls_named("StartUnit").len(), 1);
}

#[tokio::test]
async fn systemd_concurrent_jobs_each_get_their_own_job_removed() {
    // Two jobs on one connection: crio's JobRemoved arrives while kubelet's job still runs and
    // must not be taken for it (and vice versa).
    let s = systemd(OP_TIMEOUT, |st| {
        st["units"]["kubelet.service"]["job_delay_ms"] = json!(400);
        st["units"]["crio.service"]["job_delay_ms"] = json!(20);
        st["units"]["crio.service"]["stop_result"] = json!("timeout");
    });
    let (kubelet, crio) = bounded("two stops", async {
        tokio::join!(
            s.units.stop("kubelet.service"),
            s.units.stop("crio.service")
        )
    })
    .await;
    assert_eq!(kubelet.unwrap(), "kubelet.service inactive");
    let err = crio.unwrap_err();
    let failed = err.downcast_ref::<JobFailed>().expect("a JobFailed");
    assert_eq!(
        (failed.unit.as_str(), failed.result.as_str()),
        ("crio.service", "timeout")
    );
}

#[tokio::test]
async fn systemd_stop_that_ends_failed_names_the_unit_and_the_result() {
    let s = systemd(OP_TIMEOUT, |st| {
        st["units"]["kubelet.service"]["stop_result"] = json!("failed");
    });
    let err = bounded("stop", s.units.stop("kubelet.service"))
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("kubelet.service") && msg.contains("failed"),
        "{msg}"
    );
    let failed = err.downcast_ref::<JobFailed>().expect("a JobFailed");
    assert_eq!(failed.verb, "stopping");
    assert_eq!(failed.unit, "kubelet.service");
    assert_eq!(failed.result, "failed");
    assert_eq!(s.unit_state("kubelet.service")["active"], "failed");
    assert_eq!(
        s.fake.calls_named("StopUnit")[0]["args"],
        json!(["kubelet.service", "replace"])
    );
}

#[tokio::test]
async fn systemd_restart_whose_start_fails_is_an_error() {
    let s = systemd(OP_TIMEOUT, |st| {
        st["units"]["crio.service"]["start_result"] = json!("dependency");
    });
    let err = bounded("restart", s.units.restart("crio.service"))
        .await
        .unwrap_err();
    let failed = err.downcast_ref::<JobFailed>().expect("a JobFailed");
    assert_eq!(
        (failed.verb, failed.unit.as_str(), failed.result.as_str()),
        ("restarting", "crio.service", "dependency")
    );
    assert_eq!(s.fake.calls_named("RestartUnit").len(), 1);
}

#[tokio::test]
async fn systemd_job_that_never_finishes_times_out() {
    let s = systemd(SHORT, |st| {
        st["units"]["kubelet.service"]["hang"] = json!(true);
    });
    let t = Instant::now();
    let err = bounded("stop", s.units.stop("kubelet.service"))
        .await
        .unwrap_err();
    let elapsed = t.elapsed();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("kubelet.service") && msg.contains("did not finish within"),
        "{msg}"
    );
    assert!(err.downcast_ref::<JobFailed>().is_none());
    assert!(
        elapsed >= SHORT && elapsed < SHORT + Duration::from_secs(5),
        "{elapsed:?}"
    );
    // The job is still running in "systemd".
    assert_eq!(s.unit_state("kubelet.service")["active"], "deactivating");
    assert_eq!(s.fake.calls_named("StopUnit").len(), 1);
}

#[tokio::test]
async fn systemd_unknown_unit_is_an_error() {
    let s = systemd(OP_TIMEOUT, |_| {});
    for (verb, result) in [
        ("stop", bounded("stop", s.units.stop("nope.service")).await),
        (
            "start",
            bounded("start", s.units.start("nope.service")).await,
        ),
        (
            "restart",
            bounded("restart", s.units.restart("nope.service")).await,
        ),
    ] {
        let msg = format!("{:#}", result.unwrap_err());
        assert!(
            msg.contains("nope.service") && msg.contains("NoSuchUnit"),
            "{verb}: {msg}"
        );
    }
    let err = bounded("active_state", s.units.active_state("nope.service"))
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("nope.service does not exist"),
        "{err:#}"
    );
    let err = bounded("unit_file_state", s.units.unit_file_state("nope.service"))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("nope.service"), "{err:#}");
    let err = bounded("enable", s.units.enable("nope.service"))
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("enabling nope.service"),
        "{err:#}"
    );
    // The calls reached "systemd" and changed nothing.
    assert_eq!(s.fake.calls_named("StopUnit").len(), 1);
    assert_eq!(s.fake.calls_named("EnableUnitFiles").len(), 1);
    assert!(
        s.fake.calls_named("Reload").is_empty(),
        "no reload after a failed enable"
    );
    assert!(s.fake.read_state()["units"].get("nope.service").is_none());
}

#[tokio::test]
async fn systemd_daemon_reload() {
    let s = systemd(OP_TIMEOUT, |_| {});
    bounded("reload", s.units.reload()).await.unwrap();
    let reloads = s.fake.calls_named("Reload");
    assert_eq!(reloads.len(), 1);
    assert_eq!(reloads[0]["args"], json!([]));
    assert_eq!(reloads[0]["sender_uid"], 0);
}

#[tokio::test]
async fn systemd_enable_and_disable_change_the_unit_file_state() {
    let s = systemd(OP_TIMEOUT, |_| {});
    let u = &s.units;
    let state = |unit: &'static str| async move {
        bounded("unit_file_state", u.unit_file_state(unit))
            .await
            .unwrap()
    };
    assert_eq!(state("kubelet.service").await, "enabled");

    let out = bounded("disable", u.disable("kubelet.service"))
        .await
        .unwrap();
    assert!(
        out.starts_with("kubelet.service disabled: unlink "),
        "{out}"
    );
    assert_eq!(state("kubelet.service").await, "disabled");
    let out = bounded("disable", u.disable("kubelet.service"))
        .await
        .unwrap();
    assert_eq!(out, "kubelet.service was already disabled");

    let out = bounded("enable", u.enable("kubelet.service"))
        .await
        .unwrap();
    assert!(
        out.starts_with("kubelet.service enabled: symlink "),
        "{out}"
    );
    assert_eq!(state("kubelet.service").await, "enabled");
    assert_eq!(state("crio.service").await, "enabled");

    // Each change is followed by a daemon-reload, as `systemctl enable/disable` does.
    let changes: Vec<Value> = s
        .fake
        .calls()
        .into_iter()
        .filter(|c| {
            ["EnableUnitFiles", "DisableUnitFiles", "Reload"].contains(&c["call"].as_str().unwrap())
        })
        .map(|c| json!([c["call"], c["args"]]))
        .collect();
    assert_eq!(
        changes,
        vec![
            json!(["DisableUnitFiles", [["kubelet.service"], false]]),
            json!(["Reload", []]),
            json!(["DisableUnitFiles", [["kubelet.service"], false]]),
            json!(["Reload", []]),
            json!(["EnableUnitFiles", [["kubelet.service"], false, false]]),
            json!(["Reload", []]),
        ]
    );
    assert_eq!(
        s.unit_state("kubelet.service")["unit_file_state"],
        "enabled"
    );
}

#[tokio::test]
async fn systemd_active_state_reads_the_unit() {
    let s = systemd(OP_TIMEOUT, |st| {
        st["units"]["crio.service"]["active"] = json!("failed");
    });
    let u = &s.units;
    assert_eq!(
        bounded("active_state", u.active_state("kubelet.service"))
            .await
            .unwrap(),
        "active"
    );
    assert_eq!(
        bounded("active_state", u.active_state("crio.service"))
            .await
            .unwrap(),
        "failed"
    );
    // Read fresh each time (no stale property cache).
    let mut st = s.fake.read_state();
    st["units"]["kubelet.service"]["active"] = json!("inactive");
    s.fake.write_state(&st);
    assert_eq!(
        bounded("active_state", u.active_state("kubelet.service"))
            .await
            .unwrap(),
        "inactive"
    );
    let loads: Vec<Value> = s
        .fake
        .calls_named("LoadUnit")
        .into_iter()
        .map(|c| c["args"].clone())
        .collect();
    assert_eq!(
        loads,
        vec![
            json!(["kubelet.service"]),
            json!(["crio.service"]),
            json!(["kubelet.service"])
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// logind: DbusPower
// ---------------------------------------------------------------------------------------------

struct Logind {
    power: DbusPower,
    /// A connection of our own, for what the adapter does not expose (ListInhibitors, or an
    /// inhibitor held by "another program").
    conn: zbus::Connection,
    fake: Fake,
    bus: TestBus,
}

async fn logind(args: &[&str], edit: impl FnOnce(&mut Value)) -> Logind {
    let bus = TestBus::start(&[]);
    let fake = start_fake(&bus, "fake-systemd", args);
    let mut state = fake.read_state();
    edit(&mut state);
    fake.write_state(&state);
    let conn = bounded(
        "connecting",
        zbus::connection::Builder::address(bus.address.as_str())
            .method_timeout(WAIT)
            .build(),
    )
    .await
    .unwrap();
    Logind {
        power: DbusPower::new(system_bus(&bus)),
        conn,
        fake,
        bus,
    }
}

impl Logind {
    async fn inhibitors(&self) -> Vec<(String, String, String, String, u32, u32)> {
        let login = Login1Proxy::new(&self.conn).await.unwrap();
        bounded("ListInhibitors", login.list_inhibitors())
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn logind_inhibit_holds_a_block_shutdown_lock_until_dropped() {
    let l = logind(&[], |_| {}).await;
    let inhibitor = bounded("inhibit", l.power.inhibit("restoring /etc"))
        .await
        .unwrap();
    assert!(inhibitor.held());

    let list = l.inhibitors().await;
    assert_eq!(list.len(), 1, "{list:?}");
    let (what, who, why, mode, uid, pid) = &list[0];
    assert_eq!(
        (what.as_str(), who.as_str(), why.as_str(), mode.as_str()),
        ("shutdown", "recoveryd", "restoring /etc", "block")
    );
    assert_eq!((*uid, *pid), (0, std::process::id()));
    let taken = l.fake.calls_named("Inhibit");
    assert_eq!(taken.len(), 1);
    assert_eq!(
        taken[0]["args"],
        json!(["shutdown", "recoveryd", "restoring /etc", "block"])
    );
    assert!(l.fake.calls_named("InhibitorReleased").is_empty());

    drop(inhibitor);
    eventually("the fake logs the release", || {
        !l.fake.calls_named("InhibitorReleased").is_empty()
    })
    .await;
    let released = l.fake.calls_named("InhibitorReleased");
    assert_eq!(released.len(), 1);
    assert_eq!(released[0]["inhibitor_id"], taken[0]["inhibitor_id"]);
    assert_eq!(
        released[0]["args"],
        json!(["shutdown", "recoveryd", "restoring /etc", "block"])
    );
    assert!(l.inhibitors().await.is_empty());
}

#[tokio::test]
async fn logind_released_inhibitor_no_longer_blocks_our_reboot() {
    let l = logind(&[], |_| {}).await;
    let inhibitor = bounded("inhibit", l.power.inhibit("restoring"))
        .await
        .unwrap();
    // Our own lock counts too (we ask logind to check inhibitors even though we are root).
    let err = bounded("reboot", l.power.reboot(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("blocked"), "{err:#}");
    inhibitor.release();
    eventually("the release", || {
        !l.fake.calls_named("InhibitorReleased").is_empty()
    })
    .await;
    let how = bounded("reboot", l.power.reboot(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(how, "logind RebootWithFlags");
    assert_eq!(l.fake.calls_named("RebootRequested").len(), 1);
}

#[tokio::test]
async fn logind_reboot_now_uses_reboot_with_flags_checking_inhibitors() {
    let l = logind(&[], |_| {}).await;
    let how = bounded("reboot", l.power.reboot(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(how, "logind RebootWithFlags");
    let calls = l.fake.calls_named("RebootWithFlags");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["args"], json!([1]));
    assert_eq!(calls[0]["sender_uid"], 0);
    let done = l.fake.calls_named("RebootRequested");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["via"], "login1.RebootWithFlags");
    assert_eq!(done[0]["flags"], 1);
    assert!(l.fake.calls_named("StartUnit").is_empty());
    assert!(l.fake.calls_named("ScheduleShutdown").is_empty());
}

#[tokio::test]
async fn logind_reboot_with_a_delay_schedules_it() {
    let l = logind(&[], |_| {}).await;
    let delay = Duration::from_secs(90);
    let now_us = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64
    };
    let before = now_us();
    let how = bounded("reboot", l.power.reboot(delay)).await.unwrap();
    let after = now_us();
    assert_eq!(how, "logind ScheduleShutdown in 90s");
    let calls = l.fake.calls_named("ScheduleShutdown");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["args"][0], "reboot");
    let usec = calls[0]["args"][1].as_u64().unwrap();
    let d = delay.as_micros() as u64;
    assert!(
        usec >= before + d && usec <= after + d,
        "{usec} not within [{}, {}]",
        before + d,
        after + d
    );
    // Scheduled, not done: nothing reboots now.
    assert!(l.fake.calls_named("RebootRequested").is_empty());
    assert!(l.fake.calls_named("RebootWithFlags").is_empty());
}

#[tokio::test]
async fn logind_reboot_blocked_by_another_programs_inhibitor_is_an_error() {
    let l = logind(&[], |_| {}).await;
    // Another program's lock, on a connection of its own.
    let login = Login1Proxy::new(&l.conn).await.unwrap();
    let other_lock = bounded(
        "Inhibit",
        login.inhibit("shutdown:sleep", "other-tool", "firmware update", "block"),
    )
    .await
    .unwrap();

    let err = bounded("reboot", l.power.reboot(Duration::ZERO))
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("blocked"), "{msg}");
    assert!(
        msg.contains("other-tool") && msg.contains("firmware update"),
        "the error names the holder: {msg}"
    );
    assert_eq!(l.fake.calls_named("RebootWithFlags")[0]["args"], json!([1]));
    assert_eq!(l.fake.calls_named("ListInhibitors").len(), 1);
    assert!(l.fake.calls_named("RebootRequested").is_empty());
    // No fallback around logind to PID 1: that would ignore the lock.
    assert!(l.fake.calls_named("StartUnit").is_empty());
    drop(other_lock);
}

#[tokio::test]
async fn logind_reboot_refused_by_logind_is_an_error() {
    let l = logind(&[], |st| {
        st["reboot_blocked"] = json!(true);
    })
    .await;
    let err = bounded("reboot", l.power.reboot(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("blocked"), "{err:#}");
    assert_eq!(l.fake.calls_named("RebootWithFlags").len(), 1);
    assert!(l.fake.calls_named("RebootRequested").is_empty());
    assert!(l.fake.calls_named("StartUnit").is_empty());
}

#[tokio::test]
async fn without_logind_reboot_falls_back_to_systemd_and_inhibit_holds_nothing() {
    let l = logind(&["--no-logind"], |_| {}).await;
    let inhibitor = bounded("inhibit", l.power.inhibit("restoring"))
        .await
        .unwrap();
    assert!(!inhibitor.held());
    drop(inhibitor);

    let how = bounded("reboot", l.power.reboot(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(how, "systemd reboot.target (logind absent)");
    let starts = l.fake.calls_named("StartUnit");
    assert_eq!(starts.len(), 1);
    assert_eq!(
        starts[0]["args"],
        json!(["reboot.target", "replace-irreversibly"])
    );
    let done = l.fake.calls_named("RebootRequested");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["via"], "systemd1.StartUnit");
    assert_eq!(done[0]["mode"], "replace-irreversibly");
    // logind is not on the bus: none of its calls reached the fake.
    for call in ["Inhibit", "RebootWithFlags", "Reboot", "ScheduleShutdown"] {
        assert!(l.fake.calls_named(call).is_empty(), "{call}");
    }
    let _ = &l.bus;
}

// ---------------------------------------------------------------------------------------------
// rpm-ostree: DbusRpmOstree
// ---------------------------------------------------------------------------------------------

fn csum(c: char) -> String {
    c.to_string().repeat(64)
}

fn deployment(c: char, version: &str) -> Value {
    json!({"checksum": csum(c), "serial": 0, "version": version, "timestamp": 0,
           "origin": "testos/stable", "pinned": false, "staged": false})
}

/// The fake's default state: b (2.0, booted, index 0) and a (1.0, the rollback target).
fn default_rpm_state() -> Value {
    json!({
        "osname": "testos",
        "deployments": [deployment('b', "2.0"), deployment('a', "1.0")],
        "booted": format!("{}.0", csum('b')),
        "faults": {"txn_delay_ms": 50},
    })
}

struct RpmOstreeFake {
    client: DbusRpmOstree,
    fake: Fake,
    _bus: TestBus,
}

/// fake-rpm-ostreed started on a fresh bus with `state` (plus `extra_args`), and a client with
/// transaction timeout `timeout`.
fn rpm_ostree(state: Value, timeout: Duration, extra_args: &[&str]) -> RpmOstreeFake {
    let bus = TestBus::start(&[]);
    let state_file = bus.dir.path().join("rpm-ostreed.state.json");
    std::fs::write(&state_file, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
    let state_arg = state_file.display().to_string();
    let mut args = vec!["--state", state_arg.as_str()];
    args.extend_from_slice(extra_args);
    let fake = start_fake(&bus, "fake-rpm-ostreed", &args);
    RpmOstreeFake {
        client: DbusRpmOstree::new(system_bus(&bus), timeout),
        fake,
        _bus: bus,
    }
}

fn rollback_error(err: &anyhow::Error) -> &RollbackError {
    err.downcast_ref::<RollbackError>()
        .unwrap_or_else(|| panic!("not a RollbackError: {err:#}"))
}

#[tokio::test]
async fn rpm_ostree_status_reports_booted_pending_rollback_and_pinned() {
    let mut state = default_rpm_state();
    let mut pinned = deployment('a', "1.0");
    pinned["pinned"] = json!(true);
    state["deployments"] = json!([deployment('c', "3.0"), deployment('b', "2.0"), pinned]);
    let r = rpm_ostree(state, OP_TIMEOUT, &[]);

    let status = bounded("status", r.client.status()).await.unwrap();
    let ids: Vec<&str> = status.deployments.iter().map(|d| d.id.as_str()).collect();
    let id = |c| format!("testos-{}.0", csum(c));
    assert_eq!(ids, [id('c'), id('b'), id('a')]);
    assert_eq!(
        (status.booted, status.pending, status.rollback),
        (Some(1), Some(0), Some(2))
    );
    let booted = status.booted().unwrap();
    assert!(booted.booted && !booted.pinned && !booted.staged);
    assert_eq!(booted.checksum, csum('b'));
    assert_eq!(booted.csum_serial(), format!("{}.0", csum('b')));
    assert_eq!(booted.version.as_deref(), Some("2.0"));
    assert_eq!(booted.osname, "testos");
    let rollback = status.rollback().unwrap();
    assert_eq!(rollback.checksum, csum('a'));
    assert!(rollback.pinned && !rollback.booted);
    let pinned: Vec<&str> = status.pinned().iter().map(|d| d.id.as_str()).collect();
    assert_eq!(pinned, [id('a')]);
    // Reload is the sync barrier before the properties are read.
    assert_eq!(call_names(&r.fake), ["Reload"]);
}

#[tokio::test]
async fn rpm_ostree_status_without_a_rollback_target() {
    let mut state = default_rpm_state();
    state["deployments"] = json!([deployment('b', "2.0")]);
    let r = rpm_ostree(state, OP_TIMEOUT, &[]);
    let status = bounded("status", r.client.status()).await.unwrap();
    assert_eq!(
        (status.booted, status.pending, status.rollback),
        (Some(0), None, None)
    );
    assert!(status.rollback().is_none() && status.pinned().is_empty());
}

#[tokio::test]
async fn rpm_ostree_rollback_runs_the_whole_transaction_protocol() {
    let r = rpm_ostree(default_rpm_state(), OP_TIMEOUT, &[]);
    let (a, b) = (
        format!("testos-{}.0", csum('a')),
        format!("testos-{}.0", csum('b')),
    );

    let out = bounded("rollback", r.client.rollback()).await.unwrap();
    assert_eq!(
        out,
        format!("default deployment for the next boot: {b} -> {a}")
    );
    let state = r.fake.read_state();
    assert_eq!(state["deployments"][0]["checksum"], csum('a'));
    assert_eq!(state["deployments"][1]["checksum"], csum('b'));
    assert_eq!(state["booted"], format!("{}.0", csum('b')), "no reboot");

    // RegisterClient, Rollback(reboot=false), Start on the p2p socket, UnregisterClient.
    let calls = r.fake.calls();
    let names = call_names(&r.fake);
    let register = position_after(&names, 0, "RegisterClient");
    let rollback = position_after(&names, register, "Rollback");
    let start = position_after(&names, rollback, "Start");
    let unregister = position_after(&names, start, "UnregisterClient");
    assert_eq!(calls[register]["args"], json!([{"id": "recoveryd"}]));
    assert_eq!(calls[rollback]["args"], json!([{"reboot": false}]));
    assert_eq!(calls[rollback]["sender"], calls[register]["sender"]);
    assert_eq!(calls[start]["peer"], "p2p");
    assert_eq!(calls[unregister]["sender"], calls[register]["sender"]);
    for name in ["RegisterClient", "Rollback", "Start", "UnregisterClient"] {
        assert_eq!(
            names.iter().filter(|n| *n == name).count(),
            1,
            "{name} once: {names:?}"
        );
    }
    assert!(calls.iter().all(|c| c["call"] != "Cancel"));
    assert!(calls.iter().all(|c| c["call"] != "RebootRequested"));

    // The client hung up on the transaction right after Finished, so it closed at once (not by
    // the 30 s forced close), and a new rollback (back again) is not refused as busy.
    eventually("the transaction closes", || {
        r.fake
            .calls_named("TransactionClosed")
            .iter()
            .any(|c| c["reason"] == "finished")
    })
    .await;
    let out = bounded("second rollback", r.client.rollback())
        .await
        .unwrap();
    assert_eq!(
        out,
        format!("default deployment for the next boot: {a} -> {b}")
    );
    assert_eq!(r.fake.read_state()["deployments"][0]["checksum"], csum('b'));
    assert_eq!(r.fake.calls_named("Start").len(), 2);

    let status = bounded("status", r.client.status()).await.unwrap();
    assert_eq!(status.booted().unwrap().checksum, csum('b'));
    assert_eq!(status.rollback().unwrap().checksum, csum('a'));
}

#[tokio::test]
async fn rpm_ostree_busy_is_rollback_error_busy() {
    let mut state = default_rpm_state();
    state["faults"]["busy"] = json!(true);
    let r = rpm_ostree(state, OP_TIMEOUT, &[]);
    let err = bounded("rollback", r.client.rollback()).await.unwrap_err();
    match rollback_error(&err) {
        RollbackError::Busy(text) => {
            assert_eq!(text, "Transaction in progress: rollback")
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    let names = call_names(&r.fake);
    let register = position_after(&names, 0, "RegisterClient");
    let rollback = position_after(&names, register, "Rollback");
    position_after(&names, rollback, "UnregisterClient");
    assert!(r.fake.calls_named("Start").is_empty());
    assert_eq!(r.fake.read_state()["deployments"][0]["checksum"], csum('b'));
}

#[tokio::test]
async fn rpm_ostree_without_a_rollback_target_is_rollback_error_no_rollback() {
    // Only the booted deployment: rpm-ostree finds nothing to roll back to.
    let mut state = default_rpm_state();
    state["deployments"] = json!([deployment('b', "2.0")]);
    let r = rpm_ostree(state, OP_TIMEOUT, &[]);
    let err = bounded("rollback", r.client.rollback()).await.unwrap_err();
    assert!(
        matches!(rollback_error(&err), RollbackError::NoRollback),
        "{err:#}"
    );
    assert_eq!(r.fake.calls_named("Start").len(), 1);
    assert_eq!(r.fake.calls_named("UnregisterClient").len(), 1);

    // The fault, with a rollback target present.
    let mut state = default_rpm_state();
    state["faults"]["no_rollback"] = json!(true);
    let r = rpm_ostree(state, OP_TIMEOUT, &[]);
    let err = bounded("rollback", r.client.rollback()).await.unwrap_err();
    assert!(
        matches!(rollback_error(&err), RollbackError::NoRollback),
        "{err:#}"
    );
    assert_eq!(r.fake.read_state()["deployments"][0]["checksum"], csum('b'));
}

#[tokio::test]
async fn rpm_ostree_transaction_failure_is_rollback_error_failed() {
    let mut state = default_rpm_state();
    state["faults"]["finish_error"] = json!("Staged deployment (remove with cleanup -p)");
    let r = rpm_ostree(state, OP_TIMEOUT, &[]);
    let err = bounded("rollback", r.client.rollback()).await.unwrap_err();
    match rollback_error(&err) {
        RollbackError::Failed(text) => {
            assert_eq!(text, "Staged deployment (remove with cleanup -p)")
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(r.fake.calls_named("UnregisterClient").len(), 1);
    assert_eq!(r.fake.read_state()["deployments"][0]["checksum"], csum('b'));
}

#[tokio::test]
async fn rpm_ostree_not_booted_from_ostree_is_rollback_error_failed() {
    let mut state = default_rpm_state();
    state["booted"] = json!("");
    let r = rpm_ostree(state, OP_TIMEOUT, &[]);
    let err = bounded("rollback", r.client.rollback()).await.unwrap_err();
    match rollback_error(&err) {
        RollbackError::Failed(text) => assert!(text.contains("not booted"), "{text}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(r.fake.calls_named("Rollback").is_empty());
    assert_eq!(r.fake.calls_named("UnregisterClient").len(), 1);
}

#[tokio::test]
async fn rpm_ostree_daemon_crash_mid_transaction_is_rollback_error_daemon_vanished() {
    let mut state = default_rpm_state();
    state["faults"]["crash_mid_txn"] = json!(true);
    let mut r = rpm_ostree(state, OP_TIMEOUT, &[]);
    let t = Instant::now();
    let err = bounded("rollback", r.client.rollback()).await.unwrap_err();
    assert!(
        matches!(rollback_error(&err), RollbackError::DaemonVanished),
        "{err:#}"
    );
    assert!(
        t.elapsed() < OP_TIMEOUT,
        "noticed before the timeout: {:?}",
        t.elapsed()
    );
    let names = call_names(&r.fake);
    let start = position_after(&names, 0, "Start");
    position_after(&names, start, "Crash");
    eventually("the fake exits", || r.fake.try_exit_status().is_some()).await;
}

#[tokio::test]
async fn rpm_ostree_transaction_that_never_finishes_is_rollback_error_timeout() {
    let mut state = default_rpm_state();
    state["faults"]["hang"] = json!(true);
    let r = rpm_ostree(state, SHORT, &[]);
    let t = Instant::now();
    let err = bounded("rollback", r.client.rollback()).await.unwrap_err();
    let elapsed = t.elapsed();
    match rollback_error(&err) {
        RollbackError::Timeout(d) => assert_eq!(*d, SHORT),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(
        elapsed >= SHORT && elapsed < SHORT + Duration::from_secs(5),
        "{elapsed:?}"
    );
    let names = call_names(&r.fake);
    let start = position_after(&names, 0, "Start");
    position_after(&names, start, "UnregisterClient");
    assert_eq!(r.fake.read_state()["deployments"][0]["checksum"], csum('b'));
}

#[tokio::test]
async fn rpm_ostree_absent_from_the_bus_is_rollback_error_absent() {
    let bus = TestBus::start(&[]);
    let client = DbusRpmOstree::new(system_bus(&bus), OP_TIMEOUT);
    let err = bounded("rollback", client.rollback()).await.unwrap_err();
    match rollback_error(&err) {
        RollbackError::Absent(text) => {
            assert!(text.contains("ServiceUnknown"), "{text}")
        }
        other => panic!("expected Absent, got {other:?}"),
    }
    let err = bounded("status", client.status()).await.unwrap_err();
    assert!(
        matches!(rollback_error(&err), RollbackError::Absent(_)),
        "{err:#}"
    );
}

// ---------------------------------------------------------------------------------------------
// ostree pin, seen through rpm-ostree
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_ostree_pin_shows_as_pinned_in_rpm_ostree_status() {
    let dir = tempfile::tempdir().unwrap();
    let sr = tokio::task::spawn_blocking({
        let (path, scratch) = (dir.path().join("sysroot"), dir.path().to_path_buf());
        move || sysroot::Sysroot::build(&path, &scratch)
    })
    .await
    .unwrap();
    let on_disk = sr.deployments();
    assert_eq!(on_disk.len(), 2, "{}", sr.status());
    let ostree = OstreeCli {
        program: "ostree".into(),
        sysroot: sr.path.clone(),
        timeout: Duration::from_secs(60),
        programs: Arc::new(Runner),
    };
    let listed = bounded("ostree status", ostree.deployments())
        .await
        .unwrap();
    // The older deployment (1.0), and its index in `ostree admin status`.
    let older = listed
        .iter()
        .find(|d| d.version.as_deref() == Some("1.0"))
        .expect("a 1.0 deployment")
        .clone();
    assert_eq!(
        listed
            .iter()
            .map(|d| (d.checksum.clone(), d.serial))
            .collect::<Vec<_>>(),
        on_disk
    );

    // rpm-ostree sees the sysroot's deployments, in the same order, booted into the older one.
    let deployments: Vec<Value> = listed
        .iter()
        .map(|d| {
            json!({"checksum": d.checksum, "serial": d.serial, "version": d.version,
                   "origin": "testos/stable", "pinned": false, "staged": false})
        })
        .collect();
    let state = json!({
        "osname": sr.osname,
        "deployments": deployments,
        "booted": older.csum_serial(),
    });
    let sysroot_arg = sr.path.display().to_string();
    let r = rpm_ostree(state, OP_TIMEOUT, &["--sysroot", sysroot_arg.as_str()]);

    let before = bounded("status", r.client.status()).await.unwrap();
    assert_eq!(before.booted, Some(older.index));
    let booted = before.booted().unwrap();
    assert_eq!(booted.csum_serial(), older.csum_serial());
    assert!(!booted.pinned);
    assert!(before.pinned().is_empty());

    let out = bounded("pin", ostree.pin(older.index)).await.unwrap();
    assert!(out.contains("is now pinned"), "{out}");
    assert!(sr.pinned(&older.checksum, older.serial));

    let after = bounded("status", r.client.status()).await.unwrap();
    let booted = after.booted().unwrap();
    assert_eq!(booted.csum_serial(), older.csum_serial());
    assert!(
        booted.pinned,
        "rpm-ostree reports the pin from the origin file"
    );
    let pinned: Vec<String> = after.pinned().iter().map(|d| d.csum_serial()).collect();
    assert_eq!(pinned, [older.csum_serial()]);
    assert_eq!(after.deployments.len(), 2);
    // The other deployment is the pending one, untouched.
    assert_eq!(after.pending, Some(1 - older.index));
    assert!(!after.deployments[1 - older.index].pinned);
}
