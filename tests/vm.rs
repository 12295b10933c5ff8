//! recoveryd on a real machine: qemu guests with their own kernel, SELinux enforcing with the
//! package's module, the RPM installed by rpm, real reboots, real power cuts, and a rollback on
//! a guest booted from a real ostree deployment.
//! `tests/vm/harness.sh` does the work; one test runs every scenario from one installed guest
//! (the install is the most expensive boot under emulation).

use std::process::Command;

#[test]
#[ignore = "needs root: builds a guest image and boots qemu guests (tests/run.sh runs it)"]
fn install_cycle_power_cuts_and_ostree_rollback_on_a_real_kernel() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the VM tier builds an image in a chroot and boots guests: run tests/run.sh as root"
    );
    let harness = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vm/harness.sh");
    let status = Command::new(harness)
        .arg("all")
        .status()
        .expect("running the harness");
    assert!(
        status.success(),
        "the VM tier failed ({status}); its output is above"
    );
}
