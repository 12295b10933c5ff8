//! recoveryd under a real systemd (PID 1) in systemd-nspawn, reboots included, installed from
//! its RPM's payload: `tests/e2e/harness.sh` does the work; each scenario is a test here.
//! The scenarios run one after another (each boots containers several times).

use std::process::Command;
use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn scenario(name: &str) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    assert!(
        rustix::process::geteuid().is_root(),
        "the end-to-end tests boot containers: run tests/run.sh as root"
    );
    let harness = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/harness.sh");
    let status = Command::new(harness)
        .arg(name)
        .status()
        .expect("running the harness");
    assert!(
        status.success(),
        "end-to-end scenario `{name}` failed ({status}); its output is above"
    );
}

#[test]
#[ignore = "needs root: boots systemd-nspawn containers (tests/run.sh runs it)"]
fn backup_failed_upgrade_recovery_reboot_and_automatic_resume() {
    scenario("cycle");
}

#[test]
#[ignore = "needs root: boots systemd-nspawn containers (tests/run.sh runs it)"]
fn a_daemon_killed_while_restoring_is_finished_after_a_reboot() {
    scenario("kill-mid-restore");
}

#[test]
#[ignore = "needs root: boots systemd-nspawn containers (tests/run.sh runs it)"]
fn the_boot_loop_breaker_stops_a_resume_that_makes_no_progress() {
    scenario("breaker");
}

#[test]
#[ignore = "needs root: boots systemd-nspawn containers (tests/run.sh runs it)"]
fn without_the_daemon_the_offline_resume_unit_finishes_the_recovery() {
    scenario("no-daemon");
}
