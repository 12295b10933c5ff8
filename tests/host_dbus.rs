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
    assert!(
        s.fake
            .calls()
            .iter()
            .all(|c| c["sender_uid"] == common::bus::test_uid())
    );
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
    assert_eq!(reloads[0]["sender_uid"], common::bus::test_uid());
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
    assert_eq!((*uid, *pid), (common::bus::test_uid(), std::process::id()));
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
    assert_eq!(calls[0]["sender_uid"], common::bus::test_uid());
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
async fn logind_inhibitor_refusals_are_understood_in_every_systemd_version() {
    // RHEL 9 (252) and 257 refuse with AccessDenied, 258 and later with BlockedByInhibitorLock.
    for version in [252, 257, 258] {
        let l = logind(&[], |st| st["systemd_version"] = json!(version)).await;
        let login = Login1Proxy::new(&l.conn).await.unwrap();
        let other_lock = bounded(
            "Inhibit",
            login.inhibit("shutdown", "other-tool", "firmware update", "block"),
        )
        .await
        .unwrap();
        // What this logind says, as a client sees it.
        let raw = bounded("RebootWithFlags", login.reboot_with_flags(1))
            .await
            .unwrap_err();
        let name = recoveryd::host::bus::error_name(&raw).unwrap();
        let expected = if version < 258 {
            "org.freedesktop.DBus.Error.AccessDenied"
        } else {
            "org.freedesktop.login1.BlockedByInhibitorLock"
        };
        assert_eq!(name, expected, "systemd {version}");
        let err = bounded("reboot", l.power.reboot(Duration::ZERO))
            .await
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("blocked by a shutdown inhibitor") && msg.contains("other-tool"),
            "systemd {version}: {msg}"
        );
        assert!(l.fake.calls_named("RebootRequested").is_empty());
        drop(other_lock);
    }
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

    let out = bounded("rollback", r.client.rollback("testos"))
        .await
        .unwrap();
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
    let out = bounded("second rollback", r.client.rollback("testos"))
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
    let err = bounded("rollback", r.client.rollback("testos"))
        .await
        .unwrap_err();
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
async fn a_transaction_in_progress_makes_another_one_busy() {
    // A cleanup that does not finish (another client's, say) holds the daemon's one slot.
    let mut state = default_rpm_state();
    state["faults"]["hang"] = json!(true);
    let r = std::sync::Arc::new(rpm_ostree(state, OP_TIMEOUT, &[]));
    let first = {
        let r = r.clone();
        tokio::spawn(async move { r.client.cleanup_pending("testos").await })
    };
    eventually("the cleanup transaction starts", || {
        !r.fake.calls_named("Start").is_empty()
    })
    .await;
    let err = bounded("rollback", r.client.rollback("testos"))
        .await
        .unwrap_err();
    match rollback_error(&err) {
        RollbackError::Busy(text) => assert_eq!(text, "Transaction in progress: cleanup"),
        other => panic!("expected Busy, got {other:?}"),
    }
    first.abort();
}

#[tokio::test]
async fn rpm_ostree_without_a_rollback_target_is_rollback_error_no_rollback() {
    // Only the booted deployment: rpm-ostree finds nothing to roll back to.
    let mut state = default_rpm_state();
    state["deployments"] = json!([deployment('b', "2.0")]);
    let r = rpm_ostree(state, OP_TIMEOUT, &[]);
    let err = bounded("rollback", r.client.rollback("testos"))
        .await
        .unwrap_err();
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
    let err = bounded("rollback", r.client.rollback("testos"))
        .await
        .unwrap_err();
    assert!(
        matches!(rollback_error(&err), RollbackError::NoRollback),
        "{err:#}"
    );
    assert_eq!(r.fake.read_state()["deployments"][0]["checksum"], csum('b'));
}

#[tokio::test]
async fn rpm_ostree_transaction_failure_is_rollback_error_failed() {
    let mut state = default_rpm_state();
    state["faults"]["finish_error"] = json!("error: Writing deployments: No space left on device");
    let r = rpm_ostree(state, OP_TIMEOUT, &[]);
    let err = bounded("rollback", r.client.rollback("testos"))
        .await
        .unwrap_err();
    match rollback_error(&err) {
        RollbackError::Failed(text) => {
            assert_eq!(text, "error: Writing deployments: No space left on device")
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(r.fake.calls_named("UnregisterClient").len(), 1);
    assert_eq!(r.fake.read_state()["deployments"][0]["checksum"], csum('b'));
}

#[tokio::test]
async fn a_staged_deployment_refuses_the_rollback_until_cleanup_removes_it() {
    // The failed upgrade staged c (finalized at shutdown): rpm-ostree refuses to roll back.
    let mut state = default_rpm_state();
    state["deployments"] = json!([
        deployment('c', "3.0"),
        deployment('b', "2.0"),
        deployment('a', "1.0")
    ]);
    state["staged"] = json!(format!("testos-{}.0", csum('c')));
    let r = rpm_ostree(state, OP_TIMEOUT, &[]);
    let status = bounded("status", r.client.status()).await.unwrap();
    assert!(status.deployments[0].staged);
    assert_eq!(
        (status.pending, status.booted, status.rollback),
        (Some(0), Some(1), Some(2))
    );
    let err = bounded("rollback", r.client.rollback("testos"))
        .await
        .unwrap_err();
    match rollback_error(&err) {
        RollbackError::Staged(text) => {
            assert_eq!(text, "Staged deployment (remove with cleanup -p)")
        }
        other => panic!("expected Staged, got {other:?}"),
    }
    // Cleanup(["pending-deploy"]) through its own transaction removes it.
    let out = bounded("cleanup", r.client.cleanup_pending("testos"))
        .await
        .unwrap();
    assert_eq!(
        out,
        format!(
            "removed the pending deployment(s) testos-{}.0 (staged)",
            csum('c')
        )
    );
    let cleanup = r.fake.calls_named("Cleanup");
    assert_eq!(cleanup[0]["args"], json!([["pending-deploy"]]));
    let state = r.fake.read_state();
    assert_eq!(state["staged"], Value::Null);
    assert_eq!(state["deployments"].as_array().unwrap().len(), 2);
    eventually("the cleanup transaction closes", || {
        r.fake.calls_named("TransactionClosed").len() == 2
    })
    .await;
    bounded("rollback", r.client.rollback("testos"))
        .await
        .unwrap();
    assert_eq!(r.fake.read_state()["deployments"][0]["checksum"], csum('a'));
}

#[tokio::test]
async fn cleanup_keeps_pinned_deployments_and_other_os_names() {
    // Before the booted b: another OS's deployment and a pinned and an unpinned one of testos.
    let mut pinned = deployment('p', "2.1");
    pinned["pinned"] = json!(true);
    let mut other = deployment('o', "9.0");
    other["osname"] = json!("otheros");
    let mut state = default_rpm_state();
    state["deployments"] = json!([
        deployment('c', "3.0"),
        other,
        pinned,
        deployment('b', "2.0"),
        deployment('a', "1.0")
    ]);
    let r = rpm_ostree(state, OP_TIMEOUT, &[]);
    bounded("cleanup", r.client.cleanup_pending("testos"))
        .await
        .unwrap();
    let left: Vec<String> = r.fake.read_state()["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["checksum"].as_str().unwrap()[..1].to_string())
        .collect();
    assert_eq!(left, ["o", "p", "b", "a"]);
    // The other OS has its own object; its pending deployment goes through it.
    bounded("cleanup otheros", r.client.cleanup_pending("otheros"))
        .await
        .unwrap();
    let status = bounded("status", r.client.status()).await.unwrap();
    let ids: Vec<&str> = status
        .deployments
        .iter()
        .map(|d| &d.checksum[..1])
        .collect();
    assert_eq!(ids, ["p", "b", "a"]);
    assert_eq!(
        r.fake.calls_named("GetOS").last().unwrap()["args"],
        json!(["otheros"])
    );
}

#[tokio::test]
async fn rpm_ostree_rollback_stays_within_the_booted_os() {
    // otheros's deployment lies between the booted b and testos's a: a is still the rollback.
    let mut other = deployment('o', "9.0");
    other["osname"] = json!("otheros");
    let mut state = default_rpm_state();
    state["deployments"] = json!([deployment('b', "2.0"), other, deployment('a', "1.0")]);
    let r = rpm_ostree(state, OP_TIMEOUT, &[]);
    let status = bounded("status", r.client.status()).await.unwrap();
    assert_eq!(
        (status.booted, status.pending, status.rollback),
        (Some(0), None, Some(2))
    );
    bounded("rollback", r.client.rollback("testos"))
        .await
        .unwrap();
    let first = &r.fake.read_state()["deployments"][0];
    assert_eq!(first["checksum"], csum('a'));
}

#[tokio::test]
async fn the_sysroot_lock_held_by_ostree_is_rollback_error_busy() {
    let dir = tempfile::tempdir().unwrap();
    let sr = tokio::task::spawn_blocking({
        let (path, scratch) = (dir.path().join("sysroot"), dir.path().to_path_buf());
        move || sysroot::Sysroot::build(&path, &scratch)
    })
    .await
    .unwrap();
    let deps = sr.deployments();
    let state = json!({"osname": "testos", "booted": format!("{}.{}", deps[0].0, deps[0].1)});
    let sysroot_arg = sr.path.display().to_string();
    let r = rpm_ostree(state, OP_TIMEOUT, &["--sysroot", sysroot_arg.as_str()]);
    // What `ostree admin` takes while it works.
    let lock = std::fs::File::create(sr.path.join("ostree/lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let err = bounded("rollback", r.client.rollback("testos"))
        .await
        .unwrap_err();
    match rollback_error(&err) {
        RollbackError::Busy(text) => assert_eq!(text, "System transaction in progress"),
        other => panic!("expected Busy, got {other:?}"),
    }
    drop(lock);
    // Released: the rollback writes the real sysroot, and ostree sees the new order.
    bounded("rollback", r.client.rollback("testos"))
        .await
        .unwrap();
    assert_eq!(sr.deployments(), [deps[1].clone(), deps[0].clone()]);
}

/// Call an OS method on the fake with GDBus (which prints the error's name and text, where
/// busctl prints only an errno's), as root or (through setpriv) as `uid`. `params` is a GVariant
/// text such as `({},)`.
fn os_call(bus: &TestBus, uid: Option<u32>, method: &str, params: &str) -> (i32, String, String) {
    let script = format!(
        r#"import sys
from gi.repository import Gio, GLib
c = Gio.DBusConnection.new_for_address_sync("{addr}",
    Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION, None, None)
try:
    c.call_sync("org.projectatomic.rpmostree1", "/org/projectatomic/rpmostree1/testos",
        "org.projectatomic.rpmostree1.OS", "{method}", GLib.Variant.parse(None, "{params}", None, None),
        None, Gio.DBusCallFlags.NONE, 10000, None)
except GLib.Error as e:
    print(e.message, file=sys.stderr)
    sys.exit(1)
"#,
        addr = bus.address
    );
    let mut c = std::process::Command::new(if uid.is_some() {
        "setpriv"
    } else {
        "/usr/bin/python3"
    });
    if let Some(u) = uid {
        c.args([
            &format!("--reuid={u}"),
            &format!("--regid={u}"),
            "--clear-groups",
            "/usr/bin/python3",
        ]);
    }
    c.args(["-c", &script]);
    common::run(&mut c)
}

#[test]
#[ignore = "needs root: calls as other users with setpriv (tests/run.sh runs it)"]
fn a_caller_polkit_does_not_authorize_is_refused() {
    // rpm-ostree's own bus policy lets anyone reach the OS interface; polkit decides.
    let policy = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support/org.projectatomic.rpmostree1.conf");
    let bus = TestBus::start(&[&policy]);
    let fake = start_fake(&bus, "fake-rpm-ostreed", &[]);
    for (method, params) in [
        ("Rollback", "(@a{sv} {},)"),
        ("Cleanup", "(['pending-deploy'],)"),
    ] {
        let (code, out, err) = os_call(&bus, Some(65534), method, params);
        assert_ne!(code, 0, "{method}: {out}");
        assert!(
            err.contains(&format!(
                "org.freedesktop.DBus.Error.AccessDenied: rpmostreed OS operation {method} not allowed for user"
            )),
            "{method}: {err}"
        );
    }
    // Nothing started: no transaction, no change.
    assert!(fake.calls_named("Start").is_empty());
    assert!(fake.calls_named("WriteDeployments").is_empty());
    // An unknown cleanup element, from root: refused by name.
    let (code, _, err) = os_call(&bus, None, "Cleanup", "(['everything'],)");
    assert_ne!(code, 0);
    assert!(err.contains("Invalid cleanup type: everything"), "{err}");
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

// ---------------------------------------------------------------------------------------------
// External programs in transient units: TransientUnits
// ---------------------------------------------------------------------------------------------

use recoveryd::host::command::{CommandError, CommandSpec, Programs, Tool};
use recoveryd::host::transient::{Invocation, TransientUnits};

struct Transient {
    runner: TransientUnits,
    fake: Fake,
    _bus: TestBus,
}

/// fake-systemd on a fresh bus and a runner that says step `restore-etcd` of run 7 is calling.
fn transient() -> Transient {
    let bus = TestBus::start(&[]);
    let fake = start_fake(&bus, "fake-systemd", &[]);
    let runner = TransientUnits::new(
        system_bus(&bus),
        Arc::new(|| {
            Some(Invocation {
                run: 7,
                step: "restore-etcd".into(),
            })
        }),
    );
    Transient {
        runner,
        fake,
        _bus: bus,
    }
}

/// The properties of the one `StartTransientUnit` call, by name.
fn transient_properties(fake: &Fake) -> (String, serde_json::Map<String, Value>) {
    let calls = fake.calls_named("StartTransientUnit");
    assert_eq!(calls.len(), 1, "{calls:?}");
    let args = &calls[0]["args"];
    let props = args[2]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].clone()))
        .collect();
    (args[0].as_str().unwrap().to_string(), props)
}

#[tokio::test]
async fn a_tool_runs_in_its_own_unit_named_after_run_and_step_with_its_sandbox() {
    let t = transient();
    let dir = tempfile::tempdir().unwrap();
    let spec = CommandSpec::new("sh", Duration::from_secs(30))
        .arg("-c")
        .arg("echo out; echo err >&2; echo \"$GREETING from $(pwd)\"")
        .env("GREETING", "hello")
        .cwd(dir.path())
        .tool(Tool::Crictl);
    let out = bounded("a transient run", t.runner.run(&spec))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("out\nhello from {}\n", dir.path().display())
    );
    assert_eq!(out.stderr_tail, "err");
    let (name, props) = transient_properties(&t.fake);
    let pid = std::process::id();
    assert_eq!(
        name,
        format!("recoveryd-tool-crictl-run7-restore-etcd-p{pid}n1.service")
    );
    assert_eq!(out.unit.as_deref(), Some(name.as_str()));
    assert!(out.summary().contains(&name), "{}", out.summary());
    assert_eq!(props["Type"], "exec");
    assert_eq!(props["ExecStart"][0][0], props["ExecStart"][0][1][0]);
    assert!(props["ExecStart"][0][0].as_str().unwrap().ends_with("/sh"));
    assert_eq!(props["RuntimeMaxUSec"], 30_000_000u64);
    assert_eq!(props["KillMode"], "control-group");
    assert_eq!(props["AddRef"], true);
    assert_eq!(props["CollectMode"], "inactive-or-failed");
    assert_eq!(props["StandardOutputFileDescriptor"], "fd");
    assert_eq!(
        props["LogExtraFields"],
        json!([
            "RECOVERY_RUN=7".bytes().collect::<Vec<u8>>(),
            "RECOVERY_STEP=restore-etcd".bytes().collect::<Vec<u8>>()
        ])
    );
    // crictl's sandbox, from the one table.
    assert_eq!(props["PrivateNetwork"], true);
    assert_eq!(props["ProtectSystem"], "strict");
    assert_eq!(props["CapabilityBoundingSet"], 0);
    assert_eq!(props["NoNewPrivileges"], true);
    assert_eq!(props["RestrictAddressFamilies"], json!([true, ["AF_UNIX"]]));
    assert!(
        props["Environment"]
            .as_array()
            .unwrap()
            .contains(&json!("GREETING=hello"))
    );
    // Not bound: this test process is in no unit of the fake.
    assert!(!props.contains_key("BindsTo"));
    // Released and collected.
    assert!(call_names(&t.fake).contains(&"UnrefUnit".to_string()));
    eventually("the unit is collected", || {
        t.fake.read_state()["units"].get(&name).is_none()
    })
    .await;
}

#[tokio::test]
async fn a_failing_tool_reports_its_exit_status_and_stderr_and_its_unit() {
    let t = transient();
    let spec = CommandSpec::new("sh", Duration::from_secs(30))
        .arg("-c")
        .arg("for i in $(seq 1 2000); do echo noise $i >&2; done; echo 'the real reason' >&2; exit 3")
        .tool(Tool::Oc);
    let err = bounded("a failing run", t.runner.run(&spec))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CommandError::Failed { .. }), "{msg}");
    assert!(
        msg.contains("exit status: 3")
            && msg.contains("the real reason")
            && msg.contains("[recoveryd-tool-oc-run7-restore-etcd-"),
        "{msg}"
    );
    assert!(msg.len() < 6000, "only the tail is kept: {}", msg.len());
    let (_, props) = transient_properties(&t.fake);
    assert!(!props.contains_key("PrivateNetwork"), "oc has the network");
    assert!(
        props["Environment"]
            .as_array()
            .unwrap()
            .contains(&json!("HOME=/tmp"))
    );
}

#[tokio::test]
async fn a_tool_past_its_time_is_ended_by_the_unit_limit_with_everything_it_started() {
    let t = transient();
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child");
    let script = format!(
        "sleep 300 & echo $! > {p}.tmp && mv {p}.tmp {p}; sleep 300",
        p = pidfile.display()
    );
    let spec = CommandSpec::new("sh", Duration::from_secs(2))
        .arg("-c")
        .arg(script)
        .tool(Tool::ClusterScript);
    let err = bounded("a run past its time", t.runner.run(&spec))
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("no result after 2s"), "{err}");
    let (_, props) = transient_properties(&t.fake);
    assert_eq!(props["RuntimeMaxUSec"], 2_000_000u64);
    let pid = std::fs::read_to_string(&pidfile).expect("the program started its child");
    let stat = format!("/proc/{}/stat", pid.trim());
    eventually("the tool's child is gone", || {
        std::fs::read_to_string(&stat)
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    })
    .await;
}

#[tokio::test]
async fn a_missing_tool_is_not_started_and_a_refused_unit_is_an_error() {
    let t = transient();
    let spec = CommandSpec::new("no-such-tool-anywhere", Duration::from_secs(5));
    let err = t.runner.run(&spec).await.unwrap_err();
    assert!(matches!(err, CommandError::Spawn { .. }), "{err}");
    assert!(err.to_string().contains("is not in PATH"), "{err}");
    assert!(t.fake.calls_named("StartTransientUnit").is_empty());
    // A unit that exists already is refused by systemd: named in the error, not retried. (The
    // call above took the name with n1.)
    let mut state = t.fake.read_state();
    let pid = std::process::id();
    state["units"][format!("recoveryd-tool-other-run7-restore-etcd-p{pid}n2.service")] =
        json!({"active": "active"});
    t.fake.write_state(&state);
    let spec = CommandSpec::new("true", Duration::from_secs(5)).retries(3, Duration::ZERO);
    let err = t.runner.run(&spec).await.unwrap_err();
    assert!(
        matches!(err, CommandError::Spawn { .. }) && err.to_string().contains("UnitExists"),
        "{err}"
    );
}

#[tokio::test]
async fn a_tool_whose_caller_goes_away_is_stopped() {
    let t = transient();
    let spec = CommandSpec::new("sleep", Duration::from_secs(300)).arg("300");
    let run = t.runner.run(&spec);
    // The step is abandoned (a timeout or cancel of the step drops its future).
    let _ = tokio::time::timeout(Duration::from_millis(700), run).await;
    eventually("the abandoned tool's unit is stopped", || {
        t.fake.calls_named("StopUnit").iter().any(|c| {
            c["args"][0]
                .as_str()
                .is_some_and(|n| n.starts_with("recoveryd-tool-other-run7-"))
        })
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The hostname: systemd-hostnamed, else uname()
// ---------------------------------------------------------------------------------------------

use recoveryd::host::hostname::{Hostname, Hostnamed};

#[tokio::test]
async fn the_hostname_is_the_hosts_live_one_from_hostnamed_else_unames() {
    let bus = TestBus::start(&[]);
    let fake = start_fake(&bus, "fake-systemd", &["--hostnamed"]);
    let mut state = fake.read_state();
    state["hostname"] = json!("node-renamed-by-dhcp");
    fake.write_state(&state);
    let names = Hostnamed::new(system_bus(&bus));
    assert_eq!(names.hostname().await.unwrap(), "node-renamed-by-dhcp");
    // Changed after the daemon started: still the live one.
    state["hostname"] = json!("node-042");
    fake.write_state(&state);
    assert_eq!(names.hostname().await.unwrap(), "node-042");

    // No hostnamed on the bus: this process's uname().
    let bus = TestBus::start(&[]);
    let _fake = start_fake(&bus, "fake-systemd", &[]);
    let uname = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let names = Hostnamed::new(system_bus(&bus));
    assert_eq!(names.hostname().await.unwrap(), uname);
}
