//! The recovery boots the backup's own OS deployment and no other, on a real ostree sysroot
//! with the fake rpm-ostree reading and writing it: several deployments across two OS names,
//! two generations, a foreign pin, a staged upgrade, a deployment that is gone, a reboot into
//! the wrong one, the pins of five upgrade cycles, and a journal that crosses versions.

mod common;

use std::path::Path;

use common::world::World;
use recoveryd::journal::{RunState, StepState};
use serde_json::Value;

/// The id of the newest generation, from `recoveryctl generations --json`.
fn newest_generation(w: &World) -> String {
    let (_, out, _) = w.ctl(&["generations", "--json"]);
    let gens = common::json_list(&out, "generations");
    let gens = gens.as_array().unwrap();
    gens.last().unwrap()["info"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn set_default_cli() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support/ostree-with-set-default")
        .display()
        .to_string()
}

/// An upgrade: a new testos version is deployed and the node boots it. Returns it.
fn upgrade(w: &mut World, version: &str, boot: &str) -> (String, u32) {
    let d = w.sysroot.deploy("testos", version);
    let id = w.id(&d);
    w.reboot_into(boot, &id);
    d
}

/// Which deployments (as `osname:checksum.serial`) are pinned in the sysroot.
fn pinned(w: &World) -> Vec<String> {
    w.sysroot
        .list()
        .into_iter()
        .filter(|(os, c, s)| w.sysroot.pinned_in(os, c, *s))
        .map(|(os, c, s)| format!("{os}:{c}.{s}"))
        .collect()
}

/// A node that took a backup on 1.0, was upgraded to 2.0 and took one there, then got a
/// foreign, pinned deployment of another OS and an upgrade to 3.0 that it boots now.
struct TwoGenerations {
    w: World,
    v1: (String, u32),
    v2: (String, u32),
    v3: (String, u32),
    other: (String, u32),
    gen1: String,
    gen2: String,
}

fn two_generations(extra: &str) -> TwoGenerations {
    let mut w = World::new(extra);
    let (v1, v2) = (w.old.clone(), w.new.clone());
    let (code, out, err) = w.ctl(&["backup"]);
    assert_eq!(code, 0, "{out}{err}");
    let gen1 = newest_generation(&w);
    // The upgrade to 2.0: it is first and boots.
    w.write_rpm_state(&[v2.clone(), v1.clone()], &v2, false);
    w.reboot_into("boot-2", &w.id(&v2));
    let (code, out, err) = w.ctl(&["backup"]);
    assert_eq!(code, 0, "{out}{err}");
    let gen2 = newest_generation(&w);
    assert_ne!(gen1, gen2);
    // Another OS name, deployed and pinned by someone else.
    let other = w.sysroot.deploy("otheros", "9.0");
    let i = w
        .sysroot
        .list()
        .iter()
        .position(|(os, _, _)| os == "otheros")
        .unwrap();
    w.sysroot.pin(i, true);
    let v3 = upgrade(&mut w, "3.0", "boot-3");
    let order: Vec<String> = w.sysroot.list().into_iter().map(|(os, _, _)| os).collect();
    assert_eq!(
        order,
        ["testos", "otheros", "testos", "testos"],
        "{}",
        w.sysroot.status()
    );
    assert_eq!((w.sysroot.list()[2].1.clone(), w.sysroot.list()[2].2), v2);
    TwoGenerations {
        w,
        v1,
        v2,
        v3,
        other,
        gen1,
        gen2,
    }
}

#[test]
fn recovery_from_each_generation_targets_its_own_deployment_and_never_a_foreign_pin() {
    let mut t = two_generations("");
    let w = &mut t.w;
    let other_key = format!("otheros:{}.{}", t.other.0, t.other.1);
    assert!(pinned(w).contains(&other_key));
    // From the newer generation: its deployment (2.0) is the rollback of the booted 3.0.
    let (code, out, err) = w.ctl(&["recover", "--generation", &t.gen2, "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("target {}", w.id(&t.v2)))
            && out.contains(&format!("would roll testos back to {}", w.id(&t.v2))),
        "{out}"
    );
    let (code, out, err) = w.ctl(&["recover", "--generation", &t.gen2]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.sysroot.list()[0].1, t.v2.0, "{}", w.sysroot.status());
    w.reboot("boot-4");
    assert_eq!(w.booted(), format!("{}.{}", t.v2.0, t.v2.1));
    let (code, _, err) = w.ctl(&["resume", "--boot"]);
    assert_eq!(code, 0, "{err}");
    assert!(pinned(w).contains(&other_key), "the foreign pin stays");
    assert_eq!(
        w.ctl(&["cancel"]).0,
        0,
        "stop the recovery after its file restore"
    );

    // From the older generation: 1.0 is below 2.0 (pinned for the newer generation), and this
    // ostree (2022.7) has no set-default: refused, naming what is in the way, nothing changed.
    let order = vec![
        w.key(&t.v3),
        format!("otheros:{}.{}", t.other.0, t.other.1),
        w.key(&t.v2),
        w.key(&t.v1),
    ];
    w.sysroot.set_order(&order);
    w.reboot_into("boot-5", &w.id(&t.v3.clone()));
    let before = w.sysroot.status();
    let (code, _, err) = w.ctl(&["recover", "--generation", &t.gen1]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains(&format!("{} cannot be made the default", w.id(&t.v1)))
            || err.contains(&format!("{} is not the rollback deployment", w.id(&t.v1))),
        "{err}"
    );
    assert!(
        err.contains(&w.id(&t.v2)),
        "names what is in the way: {err}"
    );
    assert_eq!(w.sysroot.status(), before, "nothing changed");
    assert!(w.rpm().calls_named("Cleanup").is_empty());
    assert_eq!(w.ctl(&["cancel"]).0, 0);
}

#[test]
fn with_set_default_the_older_generations_deployment_boots_and_nothing_else_moves() {
    let mut t = two_generations(&format!("[host]\nostree_cli = \"{}\"\n", set_default_cli()));
    let w = &mut t.w;
    let (code, out, err) = w.ctl(&["recover", "--generation", &t.gen1, "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "would make {} the default (ostree admin set-default)",
            w.id(&t.v1)
        )),
        "{out}"
    );
    let mut pins_before = pinned(w);
    pins_before.sort();
    let (code, out, err) = w.ctl(&["recover", "--generation", &t.gen1]);
    assert_eq!(code, 0, "{out}{err}");
    let list = w.sysroot.list();
    assert_eq!(
        (list[0].1.clone(), list[0].2),
        t.v1.clone(),
        "{}",
        w.sysroot.status()
    );
    assert_eq!(list.len(), 4, "nothing removed");
    let mut pins_after = pinned(w);
    pins_after.sort();
    assert_eq!(pins_after, pins_before, "no pin changed");
    assert!(
        w.rpm().calls_named("Rollback").is_empty(),
        "set-default, not rollback"
    );
    w.reboot("boot-4");
    assert_eq!(w.booted(), format!("{}.{}", t.v1.0, t.v1.1));
    let (code, _, err) = w.ctl(&["resume", "--boot"]);
    assert_eq!(code, 0, "{err}");
    w.reboot("boot-5");
    let (code, _, err) = w.ctl(&["resume", "--boot"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("succeeded"), "{err}");
}

#[test]
fn undeploy_to_pinned_removes_only_the_unpinned_deployments_in_the_way_and_says_so() {
    let mut w = World::new("[recovery]\nundeploy_to_pinned = true\n");
    let (v1, v2) = (w.old.clone(), w.new.clone());
    assert_eq!(w.ctl(&["backup"]).0, 0);
    // Two upgrades without a backup: 2.0 is unpinned and stands between 3.0 and 1.0.
    w.write_rpm_state(&[v2.clone(), v1.clone()], &v2, false);
    let v3 = upgrade(&mut w, "3.0", "boot-2");
    let order: Vec<(String, u32)> = w
        .sysroot
        .list()
        .into_iter()
        .map(|(_, c, s)| (c, s))
        .collect();
    assert_eq!(order, [v3.clone(), v2.clone(), v1.clone()]);
    let (code, out, err) = w.ctl(&["recover", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "remove the deployment {} (ostree admin undeploy)",
            w.id(&v2)
        )) && out.contains(&format!("roll testos back to {}", w.id(&v1))),
        "{out}"
    );
    let (code, out, err) = w.ctl(&["recover"]);
    assert_eq!(code, 0, "{out}{err}");
    let list: Vec<(String, u32)> = w
        .sysroot
        .list()
        .into_iter()
        .map(|(_, c, s)| (c, s))
        .collect();
    assert_eq!(list, [v1.clone(), v3], "{}", w.sysroot.status());
}

#[test]
fn a_staged_upgrade_is_removed_before_each_reboot_and_never_boots() {
    let mut w = World::new("");
    let reference = w.backup_then_break();
    // The failed upgrade staged another deployment, finalized at shutdown.
    let staged = w.sysroot.deploy("testos", "3.0");
    let staged_id = w.id(&staged);
    w.write_rpm_booted(&w.id(&w.new.clone()), Some(&staged_id), false);
    w.reboot_into("boot-1b", &w.id(&w.new.clone()));
    w.write_rpm_booted(&w.id(&w.new.clone()), Some(&staged_id), false);
    let (code, out, err) = w.ctl(&["recover", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "remove the pending deployment(s) {staged_id} of testos (rpm-ostree Cleanup pending-deploy)"
        )),
        "{out}"
    );
    let (code, out, err) = w.ctl(&["recover"]);
    assert_eq!(code, 0, "{out}{err}");
    let j = w.journal();
    let run = j
        .latest_run(recoveryd::journal::RunKind::Recovery)
        .unwrap()
        .unwrap();
    let check = j.last_attempt(run.id, "check-deployment").unwrap().unwrap();
    assert!(
        check.detail.as_deref().unwrap().contains(&format!(
            "removed the pending deployment(s) {staged_id} (staged)"
        )),
        "{check:?}"
    );
    assert!(
        w.sysroot.list().iter().all(|(_, c, _)| *c != staged.0),
        "the staged one is gone"
    );
    w.reboot("boot-2");
    assert_eq!(w.booted(), format!("{}.{}", w.old.0, w.old.1));
    // While the recovery restores files, an upgrade is staged again.
    let again = w.sysroot.deploy("testos", "4.0");
    w.write_rpm_booted(&w.id(&w.old.clone()), Some(&w.id(&again)), false);
    let (code, out, err) = w.ctl(&["resume", "--boot"]);
    assert_eq!(code, 0, "{out}{err}");
    let next = j.last_attempt(run.id, "check-next-boot").unwrap().unwrap();
    assert_eq!(next.state, StepState::Done);
    assert!(
        next.detail
            .as_deref()
            .unwrap()
            .contains("removed the pending"),
        "{next:?}"
    );
    w.reboot("boot-3");
    assert_eq!(
        w.booted(),
        format!("{}.{}", w.old.0, w.old.1),
        "the staged upgrade never booted"
    );
    let (code, _, err) = w.ctl(&["resume", "--boot"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(w.differences(&reference), "");
    assert_eq!(j.run(run.id).unwrap().unwrap().state, RunState::Succeeded);
}

#[test]
fn a_resume_after_booting_the_wrong_deployment_stops_with_the_reason() {
    let mut w = World::new("");
    let reference = w.backup_then_break();
    let (code, _, err) = w.ctl(&["recover"]);
    assert_eq!(code, 0, "{err}");
    // The rollback made 1.0 the default, but the node came back on 2.0 (a boot loader's
    // fallback, say).
    w.reboot_into("boot-2", &w.id(&w.new.clone()));
    let (code, _, err) = w.ctl(&["resume", "--boot"]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains(&format!(
            "the node booted {} (version 2.0), not the recovery's deployment {} (version 1.0)",
            w.id(&w.new),
            w.id(&w.old)
        )) && err.contains("recoveryctl resume"),
        "{err}"
    );
    let j = w.journal();
    let run = j.run(2).unwrap().unwrap();
    assert_eq!(run.state, RunState::Failed);
    assert_eq!(run.no_progress_boots, 1, "not progress for the breaker");
    let barrier = j.last_attempt(2, "reboot-after-rollback").unwrap().unwrap();
    assert_eq!(
        barrier.state,
        StepState::AwaitingReboot,
        "the barrier still waits"
    );
    assert!(
        w.unit_calls().iter().all(|c| !c.starts_with("StopUnit")),
        "nothing restored"
    );
    // Booted right, the operator resumes and it goes on.
    w.reboot_into("boot-3", &w.id(&w.old.clone()));
    let (code, _, err) = w.ctl(&["resume"]);
    assert_eq!(code, 0, "{err}");
    w.reboot("boot-4");
    let (code, _, err) = w.ctl(&["resume", "--boot"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(w.differences(&reference), "");
}

#[test]
fn five_backup_and_upgrade_cycles_with_keep_2_leave_at_most_two_recoveryd_pins() {
    let mut w = World::new("[backup]\nkeep = 2\n");
    // A pin someone else made, on the deployment the node does not boot.
    let foreign = w.new.clone();
    let i = w
        .sysroot
        .deployments()
        .iter()
        .position(|d| *d == foreign)
        .unwrap();
    w.sysroot.pin(i, true);
    let foreign_key = w.key(&foreign);
    for cycle in 0..5 {
        let (code, out, err) = w.ctl(&["backup"]);
        assert_eq!(code, 0, "cycle {cycle}: {out}{err}");
        let pins = pinned(&w);
        assert!(
            pins.contains(&foreign_key),
            "cycle {cycle}: the foreign pin is kept"
        );
        let ours: Vec<&String> = pins.iter().filter(|p| **p != foreign_key).collect();
        assert!(
            ours.len() <= 2,
            "cycle {cycle}: {ours:?}\n{}",
            w.sysroot.status()
        );
        let (_, out, _) = w.ctl(&["generations", "--json"]);
        let gens = common::json_list(&out, "generations");
        assert!(gens.as_array().unwrap().len() <= 2);
        // Every kept generation's deployment is still pinned.
        for g in gens.as_array().unwrap() {
            let d = &g["info"]["identity"]["deployment"];
            let k = format!(
                "{}:{}.{}",
                d["osname"].as_str().unwrap(),
                d["checksum"].as_str().unwrap(),
                d["serial"]
            );
            assert!(pins.contains(&k), "cycle {cycle}: {k} unpinned while kept");
        }
        upgrade(
            &mut w,
            &format!("{}.0", cycle + 3),
            &format!("boot-{}", cycle + 2),
        );
    }
    let j = w.journal();
    assert!(j.active_pins().unwrap().len() <= 2);
}

#[test]
fn a_journal_a_newer_recoveryd_extended_is_resumed_and_an_unreadable_one_refused_up_front() {
    let mut w = World::new("");
    let reference = w.backup_then_break();
    let (code, _, err) = w.ctl(&["recover", "--step"]);
    assert_eq!(code, 0, "{err}");
    // A newer recoveryd of the same format added a feature (a table this build does not know).
    {
        let db = rusqlite::Connection::open(w.node.journal_path()).unwrap();
        db.execute_batch(
            "CREATE TABLE future_feature (x TEXT); INSERT INTO features (name) VALUES ('future-feature');",
        )
        .unwrap();
    }
    let (code, _, err) = w.ctl(&["resume"]);
    assert_eq!(code, 0, "{err}");
    for boot in ["boot-2", "boot-3"] {
        w.reboot(boot);
        let (code, _, err) = w.ctl(&["resume", "--boot"]);
        assert_eq!(code, 0, "{err}");
    }
    assert_eq!(w.differences(&reference), "");
    let features = w.journal().features().unwrap();
    assert!(
        features.contains(&"future-feature".to_string()) && features.contains(&"pins".to_string())
    );

    // A generation taken by a recoveryd that reads an older journal format: after the rollback
    // it could not resume, so the recovery is refused before anything changes.
    let (_, out, _) = w.ctl(&["generations", "--json"]);
    let gens = common::json_list(&out, "generations");
    let info_path = Path::new(gens[0]["dir"].as_str().unwrap()).join("generation.json");
    let mut info: Value = serde_json::from_slice(&std::fs::read(&info_path).unwrap()).unwrap();
    info["identity"]["recoveryd"]["journal_format"] = 1.into();
    info["identity"]["recoveryd"]["version"] = "0.0.9".into();
    std::fs::write(&info_path, serde_json::to_vec_pretty(&info).unwrap()).unwrap();
    let runs_before = w.journal().runs(100).unwrap().len();
    let rollbacks = w.rpm().calls_named("Rollback").len();
    let (code, _, err) = w.ctl(&["recover"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("was taken by recoveryd 0.0.9")
            && err.contains("reads journal format 1")
            && err.contains("this journal is format 2")
            && err.contains("Nothing was changed"),
        "{err}"
    );
    assert_eq!(
        w.journal().runs(100).unwrap().len(),
        runs_before,
        "no run was created"
    );
    assert_eq!(w.rpm().calls_named("Rollback").len(), rollbacks);
}

/// The generations' ids and marks, oldest first.
fn generations(w: &World) -> Vec<(String, String, bool)> {
    let (code, out, err) = w.ctl(&["generations", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    common::json_list(&out, "generations")
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["info"]["id"].as_str().unwrap().to_string(),
                g["short_id"].as_str().unwrap().to_string(),
                g["marks"]["protected"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn ids(gens: &[(String, String, bool)]) -> Vec<String> {
    gens.iter().map(|g| g.0.clone()).collect()
}

#[test]
fn retention_keeps_protected_generations_and_the_newest_of_the_rollback_deployment() {
    let mut w = World::new("[backup]\nkeep = 2\n");
    let (v1, v2) = (w.old.clone(), w.new.clone());
    let backup = |w: &World| {
        let (code, out, err) = w.ctl(&["backup"]);
        assert_eq!(code, 0, "{out}{err}");
        newest_generation(w)
    };
    let gen1 = backup(&w);
    // A failed upgrade: 2.0 boots, 1.0 is what a recovery would roll back to.
    w.write_rpm_state(&[v2.clone(), v1.clone()], &v2, false);
    w.reboot_into("boot-2", &w.id(&v2));
    let gen2 = backup(&w);
    // Protected by a prefix of its short id.
    let short2 = generations(&w)
        .iter()
        .find(|g| g.0 == gen2)
        .unwrap()
        .1
        .clone();
    let (code, out, err) = w.ctl(&["generations", "protect", &short2[..6]]);
    assert_eq!(code, 0, "{out}{err}");
    // Marks are not content: a protected, labelled generation (and a marks file a crash left
    // half-written) still verifies, so it can still be recovered from.
    let (code, out, err) = w.ctl(&["generations", "label", &gen2, "last good before 2.0"]);
    assert_eq!(code, 0, "{out}{err}");
    let gen2_dir = w.root().join("var/recovery/generations").join(&gen2);
    std::fs::write(gen2_dir.join(".marks.json.tmp"), "{\"protec").unwrap();
    let (code, out, err) = w.ctl(&["verify", &gen2]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = w.ctl(&["recover", "--dry-run", "--generation", &gen2]);
    assert_eq!(code, 0, "{out}{err}");
    let gen3 = backup(&w);
    let gen4 = backup(&w);
    let gens = generations(&w);
    assert_eq!(
        ids(&gens),
        [gen1.clone(), gen2.clone(), gen3, gen4.clone()],
        "gen1 is the newest on the rollback deployment, gen2 is protected"
    );
    assert!(gens[1].2, "gen2 is marked protected");

    // Unprotected, it goes with the next backup; gen1 still stays.
    let (code, out, err) = w.ctl(&["generations", "unprotect", &gen2]);
    assert_eq!(code, 0, "{out}{err}");
    let gen5 = backup(&w);
    assert_eq!(
        ids(&generations(&w)),
        [gen1.clone(), gen4.clone(), gen5.clone()]
    );

    // Delete: the newest only with --force, a protected one only with --force; `latest` works.
    let (code, out, err) = w.ctl(&["generations", "delete", "latest"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("newest"), "{err}");
    let (code, _, err) = w.ctl(&["generations", "protect", &gen4]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = w.ctl(&["generations", "delete", &gen4]);
    assert_ne!(code, 0);
    assert!(err.contains("protected"), "{err}");
    let (code, out, err) = w.ctl(&["generations", "delete", &gen4, "--force"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(ids(&generations(&w)), [gen1.clone(), gen5.clone()]);
    // What remains verifies: the delete's collection kept every object still referred to.
    for g in [&gen1, &gen5] {
        let (code, out, err) = w.ctl(&["verify", g]);
        assert_eq!(code, 0, "{g}: {out}{err}");
    }
    // A prefix that fits several generations is refused, naming them.
    let (code, _, err) = w.ctl(&["verify", "20"]);
    assert_ne!(code, 0);
    assert!(err.contains("fits 2 generations"), "{err}");
}

#[test]
fn a_backup_refused_while_a_recovery_is_open_exits_5_and_records_no_run() {
    let w = World::new("");
    let (code, out, err) = w.ctl(&["backup"]);
    assert_eq!(code, 0, "{out}{err}");
    // One stage of a recovery, then it stops: the recovery is open.
    let (code, out, err) = w.ctl(&["recover", "--step"]);
    assert_eq!(code, 0, "{out}{err}");
    let runs_before = w.journal().runs(100).unwrap().len();
    let (code, out, err) = w.ctl(&["backup"]);
    assert_eq!(code, 5, "{out}{err}");
    assert!(err.contains("backups are refused"), "{err}");
    assert_eq!(
        w.journal().runs(100).unwrap().len(),
        runs_before,
        "no run recorded"
    );
    let (_, out, _) = w.ctl(&["status", "--json"]);
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["last_backup"]["state"], "succeeded", "{out}");

    // The restore-files stage, then a cancel: it says what is down and how to get out.
    let (code, out, err) = w.ctl(&["resume", "--step"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = w.ctl(&["cancel"]);
    assert_eq!(code, 0, "{out}{err}");
    let said = format!("{out}{err}");
    assert!(said.contains("kubelet is stopped and disabled"), "{said}");
    assert!(said.contains("CRI-O is stopped"), "{said}");
    assert!(
        said.contains("systemctl start crio && systemctl enable --now kubelet"),
        "{said}"
    );
    assert!(said.contains("recoveryctl recover --generation"), "{said}");
}
