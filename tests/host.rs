//! Host adapters without D-Bus: the external-program helper, the SELinux guard, and ostree on a
//! real test sysroot.

mod common;

use common::sysroot;
use std::sync::Arc;
use std::time::{Duration, Instant};

use recoveryd::host::command::{CommandError, CommandSpec, Programs, Runner};
use recoveryd::host::ostree::{Ostree, OstreeCli};
use recoveryd::host::selinux::{Enforcement, PermissiveGuard, SelinuxFs};

#[tokio::test]
async fn a_failing_program_reports_its_exit_code_and_stderr_tail() {
    let spec = CommandSpec::new("sh", Duration::from_secs(10))
        .arg("-c")
        .arg("for i in $(seq 1 2000); do echo noise $i >&2; done; echo 'the real reason' >&2; exit 3");
    let err = Runner.run(&spec).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CommandError::Failed { .. }), "{msg}");
    assert!(
        msg.contains("exit status: 3") && msg.contains("the real reason"),
        "{msg}"
    );
    assert!(
        msg.len() < 6000,
        "only the tail is kept: {} bytes",
        msg.len()
    );
}

#[tokio::test]
async fn a_program_past_its_timeout_is_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child");
    // The child outlives its parent unless the whole process group is killed. The program
    // writes its child's pid before the timeout can strike (the timeout is long enough for
    // that, and the check below does not depend on how long anything took).
    let script = format!(
        "sleep 300 & echo $! > {p}.tmp && mv {p}.tmp {p}; sleep 300",
        p = pidfile.display()
    );
    let spec = CommandSpec::new("sh", Duration::from_secs(2))
        .arg("-c")
        .arg(script);
    let t = Instant::now();
    let err = Runner.run(&spec).await.unwrap_err();
    assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(30));
    let pid = std::fs::read_to_string(&pidfile).expect("the program started its child");
    let proc_dir = format!("/proc/{}", pid.trim());
    // Gone, or a zombie waiting for whoever adopted it to reap it: not running either way.
    let running = || {
        std::fs::read_to_string(format!("{proc_dir}/stat"))
            .map(|s| {
                let state = s.rsplit(')').next().unwrap_or("").trim_start();
                !state.starts_with('Z')
            })
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while running() {
        assert!(
            Instant::now() < deadline,
            "the program's child {} is still running",
            pid.trim()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn retries_are_spent_then_the_last_error_is_returned() {
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    let script = format!(
        "echo x >> {c}; [ $(wc -l < {c}) -ge 3 ]",
        c = count.display()
    );
    let spec = CommandSpec::new("sh", Duration::from_secs(10))
        .arg("-c")
        .arg(&script)
        .retries(2, Duration::from_millis(10));
    let out = Runner.run(&spec).await.unwrap();
    assert_eq!(out.attempts, 3);
    std::fs::remove_file(&count).unwrap();
    let spec = spec.retries(1, Duration::from_millis(10));
    let err = Runner.run(&spec).await.unwrap_err();
    assert!(err.to_string().contains("attempt 2"), "{err}");
    let missing = CommandSpec::new("/nonexistent/cluster-backup.sh", Duration::from_secs(1));
    assert!(matches!(
        Runner.run(&missing).await.unwrap_err(),
        CommandError::Spawn { .. }
    ));
}

fn selinux_root(enforcing: bool) -> (tempfile::TempDir, Arc<SelinuxFs>) {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("sys/fs/selinux")).unwrap();
    std::fs::write(
        d.path().join("sys/fs/selinux/enforce"),
        if enforcing { "1" } else { "0" },
    )
    .unwrap();
    let s = Arc::new(SelinuxFs::new(d.path()));
    (d, s)
}

#[test]
fn the_selinux_guard_restores_enforcing_after_an_error() {
    let (_d, s) = selinux_root(true);
    let r: anyhow::Result<()> = (|| {
        let _g = PermissiveGuard::enter(s.clone())?;
        assert_eq!(s.enforcing()?, Some(false));
        anyhow::bail!("the restore failed")
    })();
    assert!(r.is_err());
    assert_eq!(s.enforcing().unwrap(), Some(true));
}

#[test]
fn the_selinux_guard_restores_enforcing_after_a_panic() {
    let (_d, s) = selinux_root(true);
    let s2 = s.clone();
    let r = std::panic::catch_unwind(move || {
        let _g = PermissiveGuard::enter(s2.clone()).unwrap();
        assert_eq!(s2.enforcing().unwrap(), Some(false));
        panic!("boom");
    });
    assert!(r.is_err());
    assert_eq!(s.enforcing().unwrap(), Some(true));
}

#[test]
fn the_selinux_guard_leaves_permissive_and_absent_alone() {
    let (_d, s) = selinux_root(false);
    drop(PermissiveGuard::enter(s.clone()).unwrap());
    assert_eq!(s.enforcing().unwrap(), Some(false));
    let empty = tempfile::tempdir().unwrap();
    let none = Arc::new(SelinuxFs::new(empty.path()));
    let g = PermissiveGuard::enter(none.clone()).unwrap();
    assert_eq!(g.previous(), None);
    drop(g);
    assert_eq!(none.enforcing().unwrap(), None);
}

#[tokio::test]
async fn ostree_pin_and_status_on_a_real_sysroot() {
    let d = tempfile::tempdir().unwrap();
    let sr = sysroot::Sysroot::build(&d.path().join("sysroot"), d.path());
    let cli = OstreeCli {
        program: "ostree".into(),
        sysroot: sr.path.clone(),
        timeout: Duration::from_secs(60),
        programs: Arc::new(Runner),
    };
    let list = cli.deployments().await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].version.as_deref(), Some("2.0"));
    assert_eq!(list[1].version.as_deref(), Some("1.0"));
    assert!(list.iter().all(|d| !d.pinned));
    let msg = cli.pin(1).await.unwrap();
    assert!(msg.contains("is now pinned"), "{msg}");
    let list = cli.deployments().await.unwrap();
    assert!(list[1].pinned && !list[0].pinned);
    // The pin is libostree state in the origin file: what rpm-ostree reports as `pinned`.
    assert!(sr.pinned(&list[1].checksum, list[1].serial));
    // Pinning again is harmless.
    cli.pin(1).await.unwrap();
    let err = cli.pin(7).await.unwrap_err();
    assert!(format!("{err:#}").contains("Out of range"), "{err:#}");
    cli.undeploy(0).await.unwrap();
    let list = cli.deployments().await.unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].pinned && list[0].version.as_deref() == Some("1.0"));
}
