//! The backup and recovery procedures end to end, in-process (`recoveryctl --offline`), with
//! fake systemd/logind and rpm-ostree on a private bus, a real ostree sysroot, and fake cluster
//! programs: every call checked in order, the trees compared with what was backed up, and the
//! failure modes an operator meets.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::world::{World, subsequence};
use common::{Node, cluster_calls, install_cluster_fakes, merge_toml, run, sh};
use recoveryd::journal::{RunKind, RunState, StepState};
use serde_json::{Value, json};

#[test]
fn backup_then_recovery_with_rollback_and_reboots_restores_everything() {
    let mut w = World::new("");
    let reference = w.backup_then_break();
    // The backup pinned the booted deployment through ostree; rpm-ostree reports it pinned.
    assert!(
        w.sysroot.pinned(&w.old.0, w.old.1),
        "{}",
        w.sysroot.status()
    );
    let calls = cluster_calls(&w.root());
    assert!(
        calls.iter().any(|c| c.starts_with("cluster-backup.sh ")),
        "{calls:?}"
    );
    assert!(
        calls.iter().any(|c| c.starts_with("oc get clusterversion")),
        "{calls:?}"
    );
    let (_, out, _) = w.ctl(&["generations", "--json"]);
    let gens = common::json_list(&out, "generations");
    let identity = &gens[0]["info"]["identity"];
    assert_eq!(
        identity["deployment"]["checksum"],
        json!(w.old.0),
        "{identity}"
    );
    assert_eq!(
        identity["cluster"]["id"],
        "3c9d7f1e-2b4a-4c8d-9e6f-5a1b2c3d4e5f"
    );
    assert_eq!(identity["hostname"], "node1");

    // Recovery: the pinned deployment is the rollback target -> rollback, then a reboot.
    let (code, out, err) = w.ctl(&["recover"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("awaiting_reboot"), "{err}");
    let rpm_calls: Vec<String> = w
        .rpm()
        .calls()
        .iter()
        .filter_map(|c| c["call"].as_str().map(str::to_string))
        .collect();
    assert!(
        subsequence(
            &rpm_calls,
            &["RegisterClient", "Rollback", "Start", "UnregisterClient"]
        ),
        "{rpm_calls:?}"
    );
    assert_eq!(
        w.unit_calls(),
        ["RebootWithFlags"],
        "nothing stopped before the rollback reboot"
    );
    assert_ne!(w.differences(&reference), "", "files not touched yet");

    w.reboot("boot-2");
    assert_eq!(
        w.booted(),
        format!("{}.{}", w.old.0, w.old.1),
        "the rolled-back deployment booted"
    );
    let (code, out, err) = w.ctl(&["resume", "--boot"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("awaiting_reboot"), "{err}");
    assert_eq!(
        w.unit_calls(),
        [
            "RebootWithFlags",
            "StopUnit kubelet.service",
            "StopUnit crio.service",
            "Reload",
            "DisableUnitFiles kubelet.service",
            "Reload",
            "RebootWithFlags"
        ]
    );
    assert_eq!(w.unit("kubelet.service")["unit_file_state"], "disabled");
    assert_eq!(w.unit("kubelet.service")["active"], "inactive");

    w.reboot("boot-3");
    let (code, out, err) = w.ctl(&["resume", "--boot"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("recovery run 2 succeeded"), "{err}");
    assert_eq!(w.differences(&reference), "", "the trees equal the backup");
    assert_eq!(
        std::fs::read_to_string(w.root().join("etc/kubernetes/manifests/etcd.yaml")).unwrap(),
        "manifest-from-upgrade\n",
        "excluded paths are left alone"
    );
    let units = w.unit_calls();
    assert_eq!(
        &units[7..],
        [
            "StartUnit crio.service",
            "EnableUnitFiles kubelet.service",
            "Reload",
            "RestartUnit kubelet.service",
            "RestartUnit crio.service"
        ]
    );
    assert_eq!(w.unit("kubelet.service")["active"], "active");
    assert_eq!(w.unit("kubelet.service")["unit_file_state"], "enabled");
    assert_eq!(w.unit("crio.service")["active"], "active");
    let calls = cluster_calls(&w.root());
    assert!(
        subsequence(
            &calls,
            &[
                "crictl rmp -fa",
                "crio wipe -f",
                "crictl ps",
                "cluster-restore.sh",
                "crictl ps",
                "oc patch etcd",
                "oc patch kubeapiserver",
                "oc patch kubecontrollermanager",
                "oc patch kubescheduler"
            ]
        ),
        "{calls:?}"
    );
    // The inhibitor was held while files were restored, and released.
    let inhibits = w.systemd.calls_named("Inhibit").len();
    assert!(inhibits >= 5, "{inhibits}");
    // The fake records a release when it sees the descriptor close, a moment later.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while w.systemd.calls_named("InhibitorReleased").len() < inhibits
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(w.systemd.calls_named("InhibitorReleased").len(), inhibits);
    // The journal: every step, in three boots.
    let j = w.journal();
    let steps = j.steps(2).unwrap();
    let boots: std::collections::BTreeSet<&str> =
        steps.iter().map(|s| s.boot_id.as_str()).collect();
    assert_eq!(boots.len(), 3, "{boots:?}");
    assert_eq!(j.run(2).unwrap().unwrap().state, RunState::Succeeded);
    assert_eq!(
        std::fs::read_to_string(w.root().join("sys/fs/selinux/enforce"))
            .unwrap()
            .trim(),
        "1"
    );
}

#[test]
fn when_the_pinned_deployment_is_booted_there_is_no_rollback() {
    let mut w = World::new("");
    let reference = w.backup_then_break();
    // No OS upgrade happened after all: the old deployment is still booted.
    w.write_rpm_state(&[w.old.clone(), w.new.clone()], &w.old.clone(), false);
    let (code, out, err) = w.ctl(&["recover"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(w.rpm().calls_named("Rollback").is_empty());
    let j = w.journal();
    assert_eq!(
        j.last_attempt(2, "check-deployment")
            .unwrap()
            .unwrap()
            .state,
        StepState::Done
    );
    assert_eq!(
        j.last_attempt(2, "reboot-after-rollback")
            .unwrap()
            .unwrap()
            .state,
        StepState::Skipped
    );
    assert_eq!(
        w.unit_calls()[0],
        "StopUnit kubelet.service",
        "straight to restoring files"
    );
    w.reboot("boot-2");
    let (code, out, err) = w.ctl(&["resume", "--boot"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.differences(&reference), "");
}

#[test]
fn when_the_generations_deployment_is_gone_nothing_changes_and_force_stays_on_the_booted_one() {
    let w = World::new("");
    let reference = w.backup_then_break();
    // Someone removed the old deployment (it was pinned: unpin first, then undeploy).
    let idx = w
        .sysroot
        .deployments()
        .iter()
        .position(|d| *d == w.old)
        .unwrap();
    w.sysroot.pin(idx, false);
    sh(&format!(
        "ostree admin undeploy --sysroot={} {idx}",
        w.sysroot.path.display()
    ));
    let before = w.differences(&reference);
    let (code, _, err) = w.ctl(&["recover"]);
    assert_eq!(code, 4, "{err}");
    let gone = format!("testos-{}.{}", w.old.0, w.old.1);
    assert!(
        err.contains(&format!("this node no longer has the deployment {gone}"))
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(w.unit_calls().is_empty());
    assert!(
        w.rpm().calls_named("Rollback").is_empty() && w.rpm().calls_named("Cleanup").is_empty()
    );
    assert_eq!(
        w.differences(&reference),
        before,
        "the node was not touched"
    );
    // --force skips the deployment check: the recovery stays on the booted deployment.
    assert_eq!(w.ctl(&["cancel"]).0, 0);
    let (code, _, err) = w.ctl(&["recover", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "--force: the deployment check is skipped; the recovery stays on the booted testos-"
        ),
        "{err}"
    );
}

#[test]
fn a_corrupted_generation_stops_the_recovery_before_anything_changes() {
    let w = World::new("");
    let reference = w.backup_then_break();
    let (_, out, _) = w.ctl(&["generations", "--json"]);
    let gens = common::json_list(&out, "generations");
    let gdir = PathBuf::from(gens[0]["dir"].as_str().unwrap());
    let snapshot = std::fs::read_dir(gdir.join("cluster"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("snapshot_"))
        .unwrap();
    let mut bytes = std::fs::read(&snapshot).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&snapshot, bytes).unwrap();
    let before = w.differences(&reference);
    let (code, _, err) = w.ctl(&["recover"]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("cannot be trusted") && err.contains("snapshot_"),
        "{err}"
    );
    assert!(w.unit_calls().is_empty() && w.rpm().calls_named("Rollback").is_empty());
    assert_eq!(w.differences(&reference), before);
}

#[test]
fn a_generation_from_another_node_needs_allow_foreign_not_force() {
    let w = World::new("");
    w.backup_then_break();
    std::fs::write(
        w.root().join("etc/machine-id"),
        "ffffffffffffffffffffffffffffffff\n",
    )
    .unwrap();
    let (code, _, err) = w.ctl(&["recover"]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("taken elsewhere")
            && err.contains("machine-id")
            && err.contains("--allow-foreign"),
        "{err}"
    );
    assert!(w.unit_calls().is_empty());
    assert_eq!(w.ctl(&["cancel"]).0, 0);
    // --force only skips the deployment check: a foreign backup is still refused.
    let (code, _, err) = w.ctl(&["recover", "--force"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("taken elsewhere"), "{err}");
    assert_eq!(w.ctl(&["cancel"]).0, 0);
    let (code, _, err) = w.ctl(&["recover", "--allow-foreign"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("accepted with --allow-foreign"), "{err}");
}

#[test]
fn a_unit_that_fails_to_stop_fails_the_run_and_a_resume_finishes_it() {
    let mut w = World::new("");
    let reference = w.backup_then_break();
    w.write_rpm_state(&[w.old.clone(), w.new.clone()], &w.old.clone(), false);
    let mut s = w.systemd.read_state();
    s["units"]["kubelet.service"]["stop_result"] = json!("failed");
    w.systemd.write_state(&s);
    let (code, _, err) = w.ctl(&["recover"]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("stopping kubelet.service: systemd job ended `failed`"),
        "{err}"
    );
    assert!(
        err.contains("kubelet.service is"),
        "the node's state is reported: {err}"
    );
    assert_ne!(w.differences(&reference), "");
    assert!(
        cluster_calls(&w.root())
            .iter()
            .all(|c| !c.starts_with("crio wipe")),
        "stopped before the wipe"
    );
    // Fixed: the operator resumes.
    let mut s = w.systemd.read_state();
    s["units"]["kubelet.service"]["stop_result"] = json!("done");
    s["units"]["kubelet.service"]["active"] = json!("active");
    w.systemd.write_state(&s);
    let (code, _, err) = w.ctl(&["resume"]);
    assert_eq!(code, 0, "{err}");
    w.reboot("boot-2");
    let (code, _, err) = w.ctl(&["resume", "--boot"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(w.differences(&reference), "");
}

#[test]
fn a_container_that_never_restarts_fails_the_run_with_selinux_enforcing_again() {
    let mut w = World::new("[recovery]\ncontainer_timeout = 2\npermissive = true\n");
    w.backup_then_break();
    w.write_rpm_state(&[w.old.clone(), w.new.clone()], &w.old.clone(), false);
    std::fs::write(w.root().join("opt/fake-cluster/state/never-restart"), "").unwrap();
    let (code, _, err) = w.ctl(&["recover"]);
    assert_eq!(code, 0, "{err}");
    w.reboot("boot-2");
    let (code, _, err) = w.ctl(&["resume", "--boot"]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("step wait-containers failed: etcd did not run again with a new id within 2s"),
        "{err}"
    );
    assert!(
        err.contains("kubelet.service is active and enabled"),
        "kubelet state reported: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(w.root().join("sys/fs/selinux/enforce"))
            .unwrap()
            .trim(),
        "1"
    );
    // permissive = true: the restore steps ran permissive, and put enforcing back.
    let j = w.journal();
    let r = j.run(2).unwrap().unwrap();
    assert_eq!(r.state, RunState::Failed);
    let end = j.var(2, "node-state-at-end").unwrap().unwrap();
    assert!(end.contains("SELinux enforcing"), "{end}");
}

#[test]
fn step_mode_resume_and_restart() {
    let mut w = World::new("");
    let reference = w.backup_then_break();
    w.write_rpm_state(&[w.old.clone(), w.new.clone()], &w.old.clone(), false);
    let (code, _, err) = w.ctl(&["recover", "--step"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("paused") && err.contains("stopped after stage check"),
        "{err}"
    );
    assert!(w.unit_calls().is_empty(), "only the check stage ran");
    // Boot resumes leave a paused run to the operator.
    let (code, out, _) = w.ctl(&["resume", "--boot"]);
    assert_eq!(code, 0);
    assert!(out.contains("is paused"), "{out}");
    let (code, _, err) = w.ctl(&["resume", "--step"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("stopped after stage restore-files"), "{err}");
    // Start over: every step again from the first.
    let (code, _, err) = w.ctl(&["restart", "--step"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("stopped after stage check"), "{err}");
    let (code, _, err) = w.ctl(&["resume"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("awaiting_reboot"), "{err}");
    w.reboot("boot-2");
    let (code, _, err) = w.ctl(&["resume", "--boot"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(w.differences(&reference), "");
    let j = w.journal();
    assert_eq!(j.run(2).unwrap().unwrap().state, RunState::Succeeded);
}

#[test]
fn dry_run_shows_the_plan_and_changes_nothing() {
    let w = World::new("");
    let reference = w.backup_then_break();
    let before = w.differences(&reference);
    let systemd_before = w.unit_calls();
    let (code, out, err) = w.ctl(&["recover", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    for expected in [
        "== stage check",
        "would roll testos back to testos-",
        "== stage restore-files",
        "stop kubelet.service through systemd's D-Bus API (now active)",
        "rewrite  /etc/hosts",
        "remove   /etc/added.conf",
        "create   /etc/ssh/key",
        "== stage reboot",
        "== stage restore-cluster",
        "rewrite  /var/lib/kubelet/config.yaml",
        "== stage post-restore",
    ] {
        assert!(out.contains(expected), "dry run lacks `{expected}`:\n{out}");
    }
    assert_eq!(w.differences(&reference), before);
    assert_eq!(w.unit_calls(), systemd_before);
    assert!(w.rpm().calls_named("Rollback").is_empty());
    let j = w.journal();
    assert_eq!(j.runs(10).unwrap().len(), 1, "no recovery run was created");
}

fn err_has_succeeded(err: &str) -> bool {
    err.contains("recovery run") && err.contains("succeeded")
}

#[test]
fn crash_matrix_over_the_recovery_plan() {
    // One world, set up once; each crash point starts from a copy of the broken node. The
    // restores run permissive, so that every crash point also checks SELinux ends enforcing.
    let mut w = World::new("[recovery]\npermissive = true\n");
    let reference = w.backup_then_break();
    w.write_rpm_state(&[w.old.clone(), w.new.clone()], &w.old.clone(), false);
    let template = w.node.dir.path().join("template");
    sh(&format!(
        "cp -a {} {}",
        w.root().display(),
        template.display()
    ));
    let rpm_template = std::fs::read(w.rpm_state_path()).unwrap();
    let systemd_template = w.systemd.read_state();
    let steps: Vec<String> = {
        let (_, out, _) = w.ctl(&["recover", "--dry-run", "--json"]);
        common::json_list(&out, "steps")
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["step"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(steps.len(), 26, "{steps:?}");
    let mut points: Vec<String> = Vec::new();
    for s in &steps {
        points.push(format!("{s}:before"));
        points.push(format!("{s}:after"));
    }
    // Inside the restores: the SELinux mode recorded but not switched (@1), then permissive
    // and restoring (@2, @3).
    for p in ["restore-etc", "restore-kubelet"] {
        for n in 1..=3 {
            points.push(format!("{p}:during@{n}"));
        }
    }
    for fp in &points {
        sh(&format!(
            "rm -rf {r} && cp -a {t} {r}",
            r = w.root().display(),
            t = template.display()
        ));
        std::fs::write(w.rpm_state_path(), &rpm_template).unwrap();
        w.systemd.write_state(&systemd_template);
        w.node.set_boot_id("boot-1");
        // The failpoint stays armed until it has killed the process once (a step after a reboot
        // is only reached by a resume); then the run is resumed to its end, rebooting whenever
        // it waits for a reboot or was killed.
        let (mut code, out, err) = w.ctl_env(&["recover"], Some(fp));
        let mut crashed = code == -9;
        assert!(crashed || code == 0, "{fp}: {code}: {out}{err}");
        let mut boot = 1;
        loop {
            if !crashed && err_has_succeeded(&err) {
                panic!("{fp}: the run finished without reaching the failpoint");
            }
            boot += 1;
            assert!(boot < 10, "{fp}: too many reboots");
            w.reboot(&format!("boot-{boot}"));
            let (c, out, err) = w.ctl_env(&["resume", "--boot"], (!crashed).then_some(fp.as_str()));
            code = c;
            if code == -9 {
                crashed = true;
                continue;
            }
            assert_eq!(code, 0, "{fp}: {out}{err}");
            if crashed && err_has_succeeded(&err) {
                break;
            }
            if !crashed && err_has_succeeded(&err) {
                panic!("{fp}: the run finished without reaching the failpoint");
            }
        }
        assert_eq!(w.differences(&reference), "", "{fp}: trees");
        assert_eq!(w.unit("kubelet.service")["active"], "active", "{fp}");
        assert_eq!(
            w.unit("kubelet.service")["unit_file_state"],
            "enabled",
            "{fp}"
        );
        assert_eq!(w.unit("crio.service")["active"], "active", "{fp}");
        assert_eq!(w.booted(), format!("{}.{}", w.old.0, w.old.1), "{fp}");
        assert_eq!(
            std::fs::read_to_string(w.root().join("sys/fs/selinux/enforce"))
                .unwrap()
                .trim(),
            "1",
            "{fp}: SELinux"
        );
        let j = w.journal();
        let run = j
            .latest_run(recoveryd::journal::RunKind::Recovery)
            .unwrap()
            .unwrap();
        assert_eq!(run.state, RunState::Succeeded, "{fp}");
        for s in &steps {
            let a = j.last_attempt(run.id, s).unwrap().unwrap();
            assert!(a.state.is_complete(), "{fp}: {s} is {}", a.state);
        }
    }
    println!(
        "recovery crash matrix: {} crash points, each resumed to the same end state",
        points.len()
    );
}

/// `permissive = true`: the restore records that SELinux was enforcing, then switches it. A crash
/// after the record and before the switch (`during@1`), or while permissive (`during@2`), is
/// resumed in the same boot (nothing resets the mode): the node ends enforcing. Were the switch
/// made before the record, the resumed step would find the node permissive, take that for the
/// mode to restore, and leave it permissive.
#[test]
fn a_crash_around_the_selinux_switch_ends_enforcing_after_the_resume() {
    let mut w = World::new("[recovery]\npermissive = true\n");
    let reference = w.backup_then_break();
    w.write_rpm_state(&[w.old.clone(), w.new.clone()], &w.old.clone(), false);
    let template = w.node.dir.path().join("template");
    sh(&format!(
        "cp -a {} {}",
        w.root().display(),
        template.display()
    ));
    let rpm_template = std::fs::read(w.rpm_state_path()).unwrap();
    let systemd_template = w.systemd.read_state();
    let enforce = |w: &World| {
        std::fs::read_to_string(w.root().join("sys/fs/selinux/enforce"))
            .unwrap()
            .trim()
            .to_string()
    };
    for (fp, at_crash) in [("restore-etc:during@1", "1"), ("restore-etc:during@2", "0")] {
        sh(&format!(
            "rm -rf {r} && cp -a {t} {r}",
            r = w.root().display(),
            t = template.display()
        ));
        std::fs::write(w.rpm_state_path(), &rpm_template).unwrap();
        w.systemd.write_state(&systemd_template);
        w.node.set_boot_id("boot-1");
        // To the crash: the rollback reboots once before the restore.
        let (mut code, out, err) = w.ctl_env(&["recover"], Some(fp));
        let mut boot = 1;
        while code != -9 {
            assert_eq!(code, 0, "{fp}: {out}{err}");
            assert!(!err_has_succeeded(&err), "{fp}: never reached");
            boot += 1;
            assert!(boot < 5, "{fp}: too many reboots");
            w.reboot(&format!("boot-{boot}"));
            code = w.ctl_env(&["resume", "--boot"], Some(fp)).0;
        }
        assert_eq!(enforce(&w), at_crash, "{fp}: the mode at the crash");
        let j = w.journal();
        let run = j.latest_run(RunKind::Recovery).unwrap().unwrap();
        assert_eq!(
            j.var(run.id, "selinux-was-enforcing").unwrap().as_deref(),
            Some("1"),
            "{fp}: the previous mode is on record before any switch"
        );
        // The operator resumes in the same boot; later reboots as the plan asks.
        let (mut code, mut out, mut err) = w.ctl(&["resume"]);
        while !err_has_succeeded(&err) {
            assert_eq!(code, 0, "{fp}: {out}{err}");
            boot += 1;
            assert!(boot < 8, "{fp}: too many reboots");
            w.reboot(&format!("boot-{boot}"));
            (code, out, err) = w.ctl(&["resume", "--boot"]);
        }
        assert_eq!(enforce(&w), "1", "{fp}: SELinux is enforcing again");
        assert_eq!(w.differences(&reference), "", "{fp}: trees");
        let j = w.journal();
        let run = j.latest_run(RunKind::Recovery).unwrap().unwrap();
        assert_eq!(run.state, RunState::Succeeded, "{fp}");
        assert_eq!(
            j.var(run.id, "selinux-was-enforcing").unwrap().as_deref(),
            Some(""),
            "{fp}: cleared once enforcing again"
        );
    }
}

#[test]
fn a_backup_past_its_deadline_ends_in_timeout_and_keeps_the_previous_generation() {
    // No bus needed: the cluster programs are fakes, the other integrations are off.
    let node = Node::new("");
    let root = node.root();
    let fakes = install_cluster_fakes(&root);
    std::fs::write(
        &node.config,
        merge_toml(&[
            &format!("root = \"{}\"\n", root.display()),
            &fakes,
            "[host]\nsystemd = false\nostree = false\ncluster = true\n[backup]\nspace_margin = 0\n",
        ]),
    )
    .unwrap();
    sh(&format!(
        "mkdir -p {r}/etc {r}/usr/local {r}/var/lib/kubelet && echo a > {r}/etc/a",
        r = root.display()
    ));
    let ctl = |args: &[&str]| {
        run(Command::new(env!("CARGO_BIN_EXE_recoveryctl"))
            .arg("--config")
            .arg(&node.config)
            .args(args)
            .env_remove("RECOVERYD_FAILPOINTS"))
    };
    let (code, out, err) = ctl(&["--offline", "backup"]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = ctl(&["generations", "--json"]);
    let first = common::json_list(&out, "generations");
    let first_id = first[0]["info"]["id"].as_str().unwrap().to_string();
    // etcd's snapshot never ends (the fake waits at a gate never opened) and the backup has a
    // deadline (set only now: on a loaded machine the first backup alone could take two
    // seconds).
    let config = std::fs::read_to_string(&node.config).unwrap();
    std::fs::write(
        &node.config,
        config.replace("space_margin = 0\n", "space_margin = 0\ndeadline = 2\n"),
    )
    .unwrap();
    std::fs::write(root.join("opt/fake-cluster/state/hold-backup"), "").unwrap();
    std::fs::write(root.join("etc/a"), "changed").unwrap();
    let (code, out, err) = ctl(&["--offline", "--json", "backup"]);
    assert_eq!(code, 3, "exit 3 is TALM's Timeout: {out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["state"], "timeout", "{report}");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("deadline of 2s passed during step cluster-backup"),
        "{report}"
    );
    let (_, out, _) = ctl(&["status", "--offline", "--json"]);
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["last_backup"]["phase"], "Timeout", "{status}");
    // The partial generation is gone; the previous one is the only one, and intact.
    let names: Vec<String> = std::fs::read_dir(root.join("var/recovery/generations"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, std::slice::from_ref(&first_id), "{names:?}");
    let (code, out, _) = ctl(&["verify", &first_id]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_backup_with_undeploy_old_keeps_the_booted_deployment_pinned_and_alone() {
    let w = World::new("[backup]\nundeploy_old = true\n");
    assert_eq!(w.sysroot.deployments().len(), 2);
    let (code, out, err) = w.ctl(&["backup"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        w.sysroot.deployments(),
        vec![w.old.clone()],
        "the unpinned, not booted deployment is gone"
    );
    assert!(w.sysroot.pinned(&w.old.0, w.old.1));
    let j = w.journal();
    let pin = j.last_attempt(1, "pin-deployment").unwrap().unwrap();
    assert!(
        pin.detail
            .as_deref()
            .unwrap_or_default()
            .contains("deployment count change: -1"),
        "{pin:?}"
    );
}

/// As TALM's upgrade-recovery.sh: `cluster-backup.sh --force DIR`, and a failing `crictl rmp
/// -fa` or `crio wipe -f` recorded but not fatal; `strict_wipe` makes them fatal.
#[test]
fn cluster_steps_match_the_script_forced_backup_and_wipes_that_may_fail() {
    let w = World::new("");
    let reference = w.backup_then_break();
    let calls = cluster_calls(&w.root());
    let backup = calls
        .iter()
        .find(|c| c.starts_with("cluster-backup.sh "))
        .unwrap();
    assert!(
        backup.starts_with("cluster-backup.sh --force /"),
        "{backup}"
    );
    let (_, out, _) = w.ctl(&["verify", "--json"]);
    assert!(out.contains("\"ok\": true"), "{out}");

    // Both clean-up commands fail: the recovery goes on and says so.
    let state = w.root().join("opt/fake-cluster/state");
    std::fs::write(state.join("fail-rmp"), "").unwrap();
    std::fs::write(state.join("fail-wipe"), "").unwrap();
    w.write_rpm_state(&[w.old.clone(), w.new.clone()], &w.old.clone(), false);
    let (code, out, err) = w.ctl(&["recover"]);
    assert_eq!(code, 0, "{out}{err}");
    let j = w.journal();
    for step in ["remove-pods", "wipe-crio"] {
        let a = j.last_attempt(2, step).unwrap().unwrap();
        assert_eq!(a.state, StepState::Done, "{step}");
        let detail = a.detail.unwrap_or_default();
        assert!(
            detail.contains("failed, not fatal") && detail.contains("injected failure"),
            "{step}: {detail}"
        );
    }
    // Every call of a cluster tool ran in a transient unit of its own, named after its tool,
    // run and step (this recovery stops at its first reboot).
    let units: Vec<String> = w
        .systemd
        .calls_named("StartTransientUnit")
        .iter()
        .map(|c| c["args"][0].as_str().unwrap().to_string())
        .filter(|n| !n.starts_with("recoveryd-tool-ostree-"))
        .collect();
    assert_eq!(units.len(), cluster_calls(&w.root()).len(), "{units:?}");
    for (prefix, step) in [
        ("recoveryd-tool-cluster-run1-", "cluster-backup"),
        ("recoveryd-tool-crictl-run2-", "remove-pods"),
        ("recoveryd-tool-crio-run2-", "wipe-crio"),
    ] {
        assert!(
            units
                .iter()
                .any(|u| u.starts_with(&format!("{prefix}{step}-p"))),
            "no {prefix}{step}-*: {units:?}"
        );
    }
    let _ = reference;
}

#[test]
fn with_strict_wipe_a_failing_crio_wipe_fails_the_recovery() {
    let w = World::new("[recovery]\nstrict_wipe = true\n");
    let _reference = w.backup_then_break();
    std::fs::write(w.root().join("opt/fake-cluster/state/fail-wipe"), "").unwrap();
    w.write_rpm_state(&[w.old.clone(), w.new.clone()], &w.old.clone(), false);
    let (code, out, err) = w.ctl(&["recover"]);
    assert_eq!(code, 4, "{out}{err}");
    let a = w.journal().last_attempt(2, "wipe-crio").unwrap().unwrap();
    assert_eq!(a.state, StepState::Failed);
}
