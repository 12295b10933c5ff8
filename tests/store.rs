//! The store keeps itself clean and never trusts a manifest: objects collected on every prune,
//! failed and cancelled backup (and a kill during collection loses nothing referenced); a
//! full disk cleaned up and retried; tampered manifests refused with nothing changed; two
//! first backups racing; misleading messages made specific.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Node, install_cluster_fakes, merge_toml, run, sh};
use serde_json::Value;

const HOST_OFF: &str =
    "[host]\nsystemd = false\nostree = false\ncluster = false\n[backup]\nspace_margin = 0\n";

fn ctl(node: &Node, args: &[&str]) -> (i32, String, String) {
    ctl_fp(node, None, args)
}

fn ctl_fp(node: &Node, fp: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_recoveryctl"));
    c.arg("--config").arg(&node.config).args(args);
    match fp {
        Some(fp) => c.env("RECOVERYD_FAILPOINTS", fp),
        None => c.env_remove("RECOVERYD_FAILPOINTS"),
    };
    run(&mut c)
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn require_root() {
    assert!(
        is_root(),
        "this test mounts file systems: run tests/run.sh as root"
    );
}

/// A small node: /etc with 60 files in three directories, /usr/local, /var/lib/kubelet, and a
/// machine-config file outside the trees.
fn populate(root: &Path) {
    sh(&format!(
        r#"cd {r}
mkdir -p etc/a etc/b etc/c usr/local/bin var/lib/kubelet usr/lib/mco etc/machine-config-daemon
for d in a b c; do for i in $(seq 1 20); do head -c 2000 /dev/urandom > etc/$d/f$i; done; done
echo 127.0.0.1 localhost > etc/hosts
printf '#!/bin/sh\n' > usr/local/bin/tool; chmod 755 usr/local/bin/tool
echo kubelet > var/lib/kubelet/config.yaml
echo extra=1 > usr/lib/mco/extra.conf
echo '{{"spec":{{"config":{{"storage":{{"files":[{{"path":"/usr/lib/mco/extra.conf"}}]}}}}}}}}' > etc/machine-config-daemon/currentconfig
"#,
        r = root.display()
    ));
}

fn node(extra: &str) -> Node {
    let node = Node::new(&merge_toml(&[HOST_OFF, extra]));
    populate(&node.root());
    node
}

fn state(node: &Node) -> PathBuf {
    node.path("/var/recovery")
}

fn status(node: &Node) -> Value {
    let (code, out, err) = ctl(node, &["--offline", "status", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

/// Every object file in the store, by hash.
fn objects_on_disk(state: &Path) -> HashSet<String> {
    let mut out = HashSet::new();
    for fan in std::fs::read_dir(state.join("objects")).unwrap() {
        let fan = fan.unwrap();
        // tmp/, and the record of the last collection.
        if fan.file_name() == "tmp" || !fan.file_type().unwrap().is_dir() {
            continue;
        }
        for o in std::fs::read_dir(fan.path()).unwrap() {
            out.insert(o.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    out
}

fn generation_dirs(state: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(state.join("generations"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// The hashes the committed generations' manifests refer to, read by the test itself.
fn referenced(state: &Path) -> HashSet<String> {
    let mut out = HashSet::new();
    for g in generation_dirs(state) {
        let name = g.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "left behind: {name}");
        for line in std::fs::read_to_string(g.join("manifest"))
            .unwrap()
            .lines()
            .skip(1)
        {
            let v: Value = serde_json::from_str(line).unwrap();
            if let Some(h) = v["hash"].as_str()
                && v.get("path").is_some()
            {
                out.insert(h.to_string());
            }
        }
    }
    out
}

fn tmp_files(state: &Path) -> usize {
    std::fs::read_dir(state.join("objects/tmp"))
        .map(|r| r.count())
        .unwrap_or(0)
}

/// Change 5 % of the node's files, the way a day of a running node does.
fn change_some(root: &Path, round: usize) {
    sh(&format!(
        "cd {r} && for i in 1 2 3; do head -c 3000 /dev/urandom > etc/a/f$(( ({round} * 3 + i) % 20 + 1 )); done && echo {round} > etc/hosts",
        r = root.display()
    ));
}

#[test]
fn ten_backup_and_prune_cycles_leave_no_unreferenced_object() {
    let node = node("[backup]\nkeep = 2\n");
    let st = state(&node);
    for round in 0..10 {
        change_some(&node.root(), round);
        let (code, out, err) = ctl(&node, &["--offline", "backup"]);
        assert_eq!(code, 0, "round {round}: {out}{err}");
        let on_disk = objects_on_disk(&st);
        let refs = referenced(&st);
        assert_eq!(
            on_disk.difference(&refs).count(),
            0,
            "round {round}: objects no generation refers to"
        );
        assert!(
            refs.is_subset(&on_disk),
            "round {round}: a referenced object is missing"
        );
        assert_eq!(tmp_files(&st), 0);
        assert!(
            generation_dirs(&st).len() <= 2,
            "{:?} {err}",
            generation_dirs(&st)
        );
        let s = status(&node);
        assert_eq!(s["store"]["unreferenced_objects"], 0, "round {round}: {s}");
        assert_eq!(s["store"]["unreferenced_bytes"], 0);
        assert_eq!(s["store"]["objects"], on_disk.len());
        assert_eq!(s["store"]["generations"], 2.min(round + 1));
    }
    let (_, out, _) = ctl(&node, &["--offline", "status"]);
    assert!(
        out.contains("store: ") && out.contains(", 0 B unreferenced in 0 objects"),
        "{out}"
    );
}

/// The detail the latest run journaled for one of its steps.
fn step_detail(node: &Node, step: &str) -> String {
    let (_, out, _) = ctl(node, &["journal", "--json"]);
    let run = common::json_list(&out, "runs")[0]["id"].as_i64().unwrap();
    let (_, out, _) = ctl(node, &["journal", "--run", &run.to_string(), "--json"]);
    let detail: Value = serde_json::from_str(&out).unwrap();
    detail["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == step)
        .unwrap_or_else(|| panic!("no {step} in the journal: {detail}"))["detail"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_preflight_collects_only_when_something_can_have_left_orphans() {
    // keep = 5: no generation is pruned here, so only the preflight can remove orphans of
    // earlier runs before the space is measured.
    let node = node("[backup]\nkeep = 5\n");
    let st = state(&node);
    let record = st.join("objects/collected.json");
    assert_eq!(ctl(&node, &["--offline", "backup"]).0, 0);
    assert!(record.exists(), "a complete collection is recorded");

    // A backup that wrote objects and died: the record went before the first object did.
    change_some(&node.root(), 1);
    let before = objects_on_disk(&st);
    let (code, _, err) = ctl_fp(&node, Some("commit:before"), &["--offline", "backup"]);
    assert_eq!(code, -9, "{err}");
    assert!(!record.exists(), "the record outlived a backup's objects");
    let orphans = objects_on_disk(&st).difference(&before).count();
    assert!(orphans > 0);
    let (code, out, err) = ctl(&node, &["--offline", "backup"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        step_detail(&node, "preflight").contains(&format!("{orphans} unreferenced objects")),
        "{}",
        step_detail(&node, "preflight")
    );
    assert_eq!(objects_on_disk(&st), referenced(&st));

    // Nothing happened since the last collection: the preflight does not collect.
    let (code, out, err) = ctl(&node, &["--offline", "backup"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !step_detail(&node, "preflight").contains("unreferenced"),
        "{}",
        step_detail(&node, "preflight")
    );

    // A generation deleted by hand leaves its objects behind; the record no longer matches.
    change_some(&node.root(), 2);
    assert_eq!(ctl(&node, &["--offline", "backup"]).0, 0);
    let oldest = generation_dirs(&st).remove(0);
    let before = referenced(&st);
    std::fs::remove_dir_all(&oldest).unwrap();
    let gone = before.difference(&referenced(&st)).count();
    assert!(gone > 0, "the oldest generation had objects of its own");
    let (code, out, err) = ctl(&node, &["--offline", "backup"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        step_detail(&node, "preflight").contains(&format!("{gone} unreferenced objects")),
        "{}",
        step_detail(&node, "preflight")
    );

    // A damaged record stands for nothing.
    assert_eq!(ctl(&node, &["--offline", "backup"]).0, 0);
    std::fs::write(&record, "{").unwrap();
    let orphan = st.join("objects/ee").join("e".repeat(64));
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, "left by hand").unwrap();
    let (code, out, err) = ctl(&node, &["--offline", "backup"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!orphan.exists());
    assert!(
        step_detail(&node, "preflight").contains("1 unreferenced objects"),
        "{}",
        step_detail(&node, "preflight")
    );
    assert!(record.exists());
}

#[test]
fn retention_collects_only_when_the_backup_can_have_left_an_object_it_does_not_name() {
    // keep = 5: no generation is pruned. One worker: files are copied in the manifest's order.
    let node = node("[backup]\nkeep = 5\nworkers = 1\n");
    let st = state(&node);
    let record = st.join("objects/collected.json");
    assert_eq!(ctl(&node, &["--offline", "backup"]).0, 0);

    // The pre-flight found the store clean and the copy wrote only what the new generation
    // names: nothing to collect, and the record covers the new generation at once.
    change_some(&node.root(), 1);
    let (code, out, err) = ctl(&node, &["--offline", "backup"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        step_detail(&node, "prune").contains("no objects to collect"),
        "{}",
        step_detail(&node, "prune")
    );
    assert!(record.exists());
    assert_eq!(objects_on_disk(&st), referenced(&st));

    // A copy that had to walk again after it had stored a file that then changed: that
    // first object is named by no generation, and retention collects it.
    std::fs::write(node.path("/etc/a/f1"), "first content\n").unwrap();
    std::fs::write(node.path("/etc/a/f2"), "will be gone\n").unwrap();
    // Stopped before etc/a/f2, after etc/a/f1 was stored.
    let child = backup_stopped_at(&node, "copy-files:during@2:stop");
    let first = blake3::hash(b"first content\n").to_hex().to_string();
    assert!(objects_on_disk(&st).contains(&first));
    std::fs::write(node.path("/etc/a/f1"), "second content\n").unwrap();
    std::fs::remove_file(node.path("/etc/a/f2")).unwrap();
    let out = go_on(child);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(step_detail(&node, "copy-files").contains("walked 2 times"));
    assert!(
        step_detail(&node, "prune").contains("1 unreferenced objects removed"),
        "{}",
        step_detail(&node, "prune")
    );
    assert!(!objects_on_disk(&st).contains(&first));
    assert_eq!(objects_on_disk(&st), referenced(&st));
    assert!(record.exists());
}

#[test]
fn an_object_found_stored_that_no_generation_verified_is_read_again() {
    // keep = 5: nothing is pruned, so the collection record stands and the pre-flight does
    // not collect: a stored object nobody names survives until the copy meets it.
    let node = node("[backup]\nkeep = 5\n");
    let st = state(&node);
    assert_eq!(ctl(&node, &["--offline", "backup"]).0, 0);
    // What an attempt that died mid-write can leave: the object of content the next backup
    // will store, under its name, with other bytes of the same length.
    let content = b"10.0.0.9 new-name\n";
    let hash = blake3::hash(content).to_hex().to_string();
    let object = st.join("objects").join(&hash[..2]).join(&hash);
    std::fs::create_dir_all(object.parent().unwrap()).unwrap();
    std::fs::write(&object, vec![0u8; content.len()]).unwrap();
    std::fs::write(node.path("/etc/hosts"), content).unwrap();
    let (code, out, err) = ctl(&node, &["--offline", "backup"]);
    assert_ne!(
        code, 0,
        "a generation naming a damaged object was committed:\n{out}{err}"
    );
    assert!(
        step_detail(&node, "verify-generation").contains("/etc/hosts"),
        "{}",
        step_detail(&node, "verify-generation")
    );
}

#[test]
fn a_kill_while_objects_are_collected_never_loses_a_referenced_one() {
    let node = node("[backup]\nkeep = 1\n");
    let st = state(&node);
    assert_eq!(ctl(&node, &["--offline", "backup"]).0, 0);
    // Each round leaves the pruned generation's three changed files and /etc/hosts as orphans.
    for (round, n) in [1u32, 2, 4].into_iter().enumerate() {
        change_some(&node.root(), round + 1);
        let fp = format!("prune:during@{n}");
        let (code, _, err) = ctl_fp(&node, Some(&fp), &["--offline", "backup"]);
        assert_eq!(code, -9, "killed at {fp}: {err}");
        // Whatever was committed verifies completely: nothing it needs was collected.
        for g in generation_dirs(&st) {
            let id = g.file_name().unwrap().to_string_lossy().into_owned();
            if id.starts_with('.') {
                continue;
            }
            let (code, out, err) = ctl(&node, &["verify", &id]);
            assert_eq!(code, 0, "after {fp}, generation {id}: {out}{err}");
        }
        assert!(referenced(&st).is_subset(&objects_on_disk(&st)));
    }
    // The next backup collects what the kills left.
    let (code, out, err) = ctl(&node, &["--offline", "backup"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(status(&node)["store"]["unreferenced_objects"], 0);
    assert_eq!(objects_on_disk(&st), referenced(&st));
}

#[test]
fn a_failed_or_cancelled_backup_leaves_nothing_behind() {
    let node = node("");
    let st = state(&node);
    assert_eq!(ctl(&node, &["--offline", "backup"]).0, 0);
    let before = objects_on_disk(&st);
    // New content, then the backup fails after copying it (at the commit).
    sh(&format!(
        "cd {} && for i in 1 2 3 4 5; do head -c 5000 /dev/urandom > etc/b/new$i; done",
        node.root().display()
    ));
    std::fs::create_dir_all(st.join("generations")).unwrap();
    let (code, _, err) = ctl_fp(&node, Some("commit:before"), &["--offline", "backup"]);
    assert_eq!(code, -9, "{err}");
    // Killed: the next run cleans up what the kill left (a staging directory, new objects).
    assert!(objects_on_disk(&st).len() > before.len());
    // An injected failure of a step (not a kill): its cleanup runs and is journaled.
    let fakes = install_cluster_fakes(&node.root());
    let cfg = merge_toml(&[
        &format!("root = \"{}\"\n", node.root().display()),
        HOST_OFF,
        &fakes,
        "[host]\ncluster = true\n",
    ]);
    std::fs::write(&node.config, cfg).unwrap();
    std::fs::write(node.path("/opt/fake-cluster/state/fail-backup"), "").unwrap();
    let (code, out, err) = ctl(&node, &["--offline", "backup"]);
    assert_eq!(code, 4, "{out}{err}");
    assert_eq!(
        objects_on_disk(&st),
        before,
        "objects of the failed backups remain"
    );
    assert_eq!(tmp_files(&st), 0);
    assert_eq!(generation_dirs(&st).len(), 1);
    let (_, out, _) = ctl(&node, &["journal", "--json"]);
    let runs = common::json_list(&out, "runs");
    let run = runs[0]["id"].as_i64().unwrap();
    let (_, out, _) = ctl(&node, &["journal", "--run", &run.to_string(), "--json"]);
    let detail: Value = serde_json::from_str(&out).unwrap();
    let cleanup = detail["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "cleanup")
        .unwrap_or_else(|| panic!("no cleanup in the journal: {detail}"));
    assert_eq!(cleanup["state"], "done");
    assert!(
        cleanup["detail"]
            .as_str()
            .unwrap()
            .contains("removed the partial generation"),
        "{cleanup}"
    );
}

/// Wait until a process is stopped (SIGSTOP) or gone.
/// An offline backup started with `failpoint` (a `:stop` one), once it has stopped there.
fn backup_stopped_at(node: &Node, failpoint: &str) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_recoveryctl"))
        .arg("--config")
        .arg(&node.config)
        .args(["--offline", "backup"])
        .env("RECOVERYD_FAILPOINTS", failpoint)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_stopped(child.id());
    child
}

/// Let a process [`backup_stopped_at`] stopped go on, and wait for it to end.
fn go_on(child: std::process::Child) -> std::process::Output {
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::CONT,
    );
    child.wait_with_output().unwrap()
}

fn wait_stopped(pid: u32) {
    let t = Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next();
        if state == Some("T") || stat.is_empty() {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "process {pid} never stopped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn files_gone_or_replaced_after_the_preflights_walk_are_walked_again() {
    let node = node("");
    assert_eq!(ctl(&node, &["--offline", "backup"]).0, 0);
    std::fs::write(node.path("/etc/a/f1"), "changed before the walk\n").unwrap();
    // Stop the backup after its pre-flight walked the trees, before its copy.
    let child = backup_stopped_at(&node, "copy-files:before:stop");
    // The walk is stale now: a changed file gone, another replaced by a symlink, a directory
    // gone, a file new.
    sh(&format!(
        "cd {r} && rm etc/a/f1 && rm etc/a/f2 && ln -s f3 etc/a/f2 && rm -r etc/c && echo new > etc/b/new",
        r = node.root().display()
    ));
    let out = go_on(child);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let gdir = generation_dirs(&state(&node)).pop().unwrap();
    let manifest = std::fs::read_to_string(gdir.join("manifest")).unwrap();
    let entry = |path: &str| -> Option<Value> {
        manifest
            .lines()
            .skip(1)
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|v| v["path"] == path)
    };
    assert!(
        entry("etc/a/f1").is_none(),
        "a file gone is not in the manifest"
    );
    assert_eq!(entry("etc/a/f2").unwrap()["kind"], "symlink");
    assert!(entry("etc/c").is_none() && entry("etc/c/f1").is_none());
    assert_eq!(entry("etc/b/new").unwrap()["kind"], "file");
    assert!(
        step_detail(&node, "copy-files").contains("walked 2 times"),
        "{}",
        step_detail(&node, "copy-files")
    );
    assert_eq!(ctl(&node, &["verify"]).0, 0);
}

#[test]
#[ignore = "needs root: mounts a small file system (tests/run.sh runs it)"]
fn a_disk_that_fills_during_the_copy_is_cleaned_up_and_the_retry_succeeds() {
    require_root();
    let node = node("");
    let st = state(&node);
    sh(&format!("mount -t tmpfs -o size=6m tmpfs {}", st.display()));
    let _u = Unmount(st.clone());
    // 2 MiB of new content to copy, walked (by name) before the small files, so that the
    // backup has written ~1.4 MiB when it is stopped: what its cleanup frees is then always
    // enough for the journal to record the failure. (Stopped among the 2 KB files instead, the
    // cleanup freed a few pages only, and whether the journal could then write its WAL frames
    // depended on the run.)
    sh(&format!(
        "cd {} && mkdir etc/0big && for i in $(seq 1 16); do head -c 131072 /dev/urandom > etc/0big/b$i; done",
        node.root().display()
    ));
    // Stop the backup once it is copying, fill the disk, let it go on: ENOSPC mid-copy.
    let child = backup_stopped_at(&node, "copy-files:during@12:stop");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k", "status=none"])
        .arg(format!("of={}/filler", st.display()))
        .status();
    let out = go_on(child);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    // Nothing of the failed backup remains: no staging, no half-written, no orphan object.
    assert_eq!(tmp_files(&st), 0);
    assert!(
        generation_dirs(&st).is_empty(),
        "{:?}",
        generation_dirs(&st)
    );
    assert!(objects_on_disk(&st).is_empty());
    // Space freed: the same backup goes through.
    std::fs::remove_file(st.join("filler")).unwrap();
    let (code, out, err) = ctl(&node, &["--offline", "backup"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(ctl(&node, &["verify"]).0, 0);
    assert_eq!(status(&node)["store"]["unreferenced_objects"], 0);
}

/// A digest of every file below `dir`: names, kinds, modes and contents (the journal's WAL
/// side files, which SQLite creates and removes around every connection, left out).
fn dir_digest(dir: &Path) -> String {
    let mut h = blake3::Hasher::new();
    fn walk(base: &Path, d: &Path, h: &mut blake3::Hasher) {
        let mut names: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let n = p.to_string_lossy();
            if n.ends_with("-wal") || n.ends_with("-shm") {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            use std::os::unix::fs::PermissionsExt;
            h.update(p.strip_prefix(base).unwrap().as_os_str().as_encoded_bytes());
            h.update(&m.permissions().mode().to_le_bytes());
            if m.is_dir() {
                walk(base, &p, h);
            } else if m.is_file() {
                h.update(&std::fs::read(&p).unwrap());
            } else if m.file_type().is_symlink() {
                h.update(
                    std::fs::read_link(&p)
                        .unwrap()
                        .as_os_str()
                        .as_encoded_bytes(),
                );
            }
        }
    }
    walk(dir, dir, &mut h);
    h.finalize().to_hex().to_string()
}

/// Rewrite a generation's manifest lines with `edit`, and make every recorded hash agree, as
/// someone who can write the state directory could.
fn tamper(node: &Node, gdir: &Path, edit: impl Fn(&mut Vec<Value>)) {
    let text = std::fs::read_to_string(gdir.join("manifest")).unwrap();
    let mut lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    edit(&mut lines);
    let mut out = String::new();
    for l in &lines {
        out.push_str(&serde_json::to_string(l).unwrap());
        out.push('\n');
    }
    std::fs::write(gdir.join("manifest"), &out).unwrap();
    let hash = blake3::hash(out.as_bytes()).to_hex().to_string();
    let info_path = gdir.join("generation.json");
    let mut info: Value = serde_json::from_slice(&std::fs::read(&info_path).unwrap()).unwrap();
    info["manifest_hash"] = hash.clone().into();
    std::fs::write(&info_path, serde_json::to_vec_pretty(&info).unwrap()).unwrap();
    let db = rusqlite::Connection::open(node.journal_path()).unwrap();
    db.execute(
        "UPDATE generations SET manifest_hash = ?1 WHERE id = ?2",
        rusqlite::params![hash, info["id"].as_str().unwrap()],
    )
    .unwrap();
}

fn entry_index(lines: &[Value], path: &str) -> usize {
    lines
        .iter()
        .position(|l| l["path"] == path)
        .unwrap_or_else(|| panic!("{path} not in the manifest"))
}

#[test]
fn tampered_manifests_are_refused_and_nothing_changes() {
    type Edit = Box<dyn Fn(&mut Vec<Value>)>;
    let set_path = |from: &'static str, to: &'static str| -> Edit {
        Box::new(move |l: &mut Vec<Value>| {
            let i = entry_index(l, from);
            l[i]["path"] = to.into();
        })
    };
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "dot-dot",
            set_path("etc/hosts", "etc/../../canary"),
            "a `..` component",
        ),
        (
            "absolute",
            set_path("etc/hosts", "/etc/hosts"),
            "an absolute path",
        ),
        (
            "dot",
            set_path("etc/hosts", "etc/./hosts"),
            "a `.` component",
        ),
        (
            "empty component",
            set_path("etc/hosts", "etc//hosts"),
            "an empty path component",
        ),
        (
            "duplicate",
            Box::new(|l: &mut Vec<Value>| {
                let i = entry_index(l, "etc/hosts");
                let dup = l[i].clone();
                l.insert(i + 1, dup);
            }),
            "listed twice",
        ),
        (
            "child before parent",
            Box::new(|l: &mut Vec<Value>| {
                let i = entry_index(l, "etc/a");
                let dir = l.remove(i);
                let last_child = l
                    .iter()
                    .rposition(|x| x["path"].as_str().is_some_and(|p| p.starts_with("etc/a/")));
                l.insert(last_child.unwrap() + 1, dir);
            }),
            "is not listed before it",
        ),
        (
            "outside every tree",
            set_path("etc/hosts", "root/.ssh/authorized_keys"),
            "outside every tree",
        ),
        (
            "object name",
            Box::new(|l: &mut Vec<Value>| {
                let i = entry_index(l, "etc/hosts");
                l[i]["hash"] = "../../../../canary".into();
            }),
            "is not a content hash",
        ),
    ];
    for (name, edit, why) in cases {
        let node = node("");
        std::fs::write(node.dir.path().join("canary"), "outside the root").unwrap();
        assert_eq!(ctl(&node, &["--offline", "backup"]).0, 0);
        let g = generation_dirs(&state(&node)).pop().unwrap();
        tamper(&node, &g, edit);
        // The node changes the way an upgrade changes it: a restore would have work to do.
        change_some(&node.root(), 7);
        let before = dir_digest(node.dir.path());
        let (code, out, err) = ctl(&node, &["verify"]);
        assert_eq!(code, 6, "{name}: verify: {out}{err}");
        assert!(out.contains(why), "{name}: verify says: {out}");
        for args in [
            &["--offline", "restore-files"][..],
            &["diff"][..],
            &["--offline", "recover"][..],
            &["recover", "--dry-run"][..],
        ] {
            let (code, out, err) = ctl(&node, args);
            assert_eq!(code, 6, "{name}: {args:?}: {out}{err}");
            assert!(
                err.contains("is corrupt and was not used") && err.contains(why),
                "{name}: {args:?} says: {err}"
            );
        }
        assert_eq!(
            dir_digest(node.dir.path()),
            before,
            "{name}: something changed"
        );
        assert!(node.dir.path().join("canary").exists());
    }
}

/// A node whose cluster backup waits at a gate (`state/hold-backup`) until the test opens it.
fn held_backup_node() -> Node {
    let node = Node::new("");
    let fakes = install_cluster_fakes(&node.root());
    std::fs::write(
        &node.config,
        merge_toml(&[
            &format!("root = \"{}\"\n", node.root().display()),
            HOST_OFF,
            &fakes,
            "[host]\ncluster = true\n",
        ]),
    )
    .unwrap();
    std::fs::write(node.path("/opt/fake-cluster/state/hold-backup"), "").unwrap();
    populate(&node.root());
    node
}

#[test]
fn two_first_backups_started_together_one_succeeds_the_other_is_busy() {
    for round in 0..20 {
        let node = held_backup_node();
        assert!(!node.journal_path().exists());
        let spawn = || {
            Command::new(env!("CARGO_BIN_EXE_recoveryctl"))
                .arg("--config")
                .arg(&node.config)
                .args(["--offline", "backup"])
                .env_remove("RECOVERYD_FAILPOINTS")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let mut children = vec![spawn(), spawn()];
        // The winner waits at the gate with the lock held, so the first to exit is the loser.
        let deadline = Instant::now() + Duration::from_secs(60);
        let first = loop {
            if let Some(i) = (0..2).find(|&i| children[i].try_wait().unwrap().is_some()) {
                break i;
            }
            assert!(Instant::now() < deadline, "round {round}: neither ended");
            std::thread::sleep(Duration::from_millis(10));
        };
        let loser = children.remove(first).wait_with_output().unwrap();
        std::fs::remove_file(node.path("/opt/fake-cluster/state/hold-backup")).unwrap();
        let winner = children.remove(0).wait_with_output().unwrap();
        let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(
            loser.status.code(),
            Some(5),
            "round {round}: {}",
            text(&loser)
        );
        assert_eq!(
            winner.status.code(),
            Some(0),
            "round {round}: {}",
            text(&winner)
        );
        let loser = text(&loser);
        assert!(
            loser.contains("Busy: backup run 1 is in progress (pid "),
            "round {round}: the holder is not named: {loser}"
        );
    }
}

#[test]
fn an_interrupted_restore_says_its_process_is_gone() {
    let node = node("");
    assert_eq!(ctl(&node, &["--offline", "backup"]).0, 0);
    change_some(&node.root(), 3);
    let (code, _, _) = ctl_fp(
        &node,
        Some("restore-files:during@5"),
        &["--offline", "restore-files"],
    );
    assert_eq!(code, -9);
    let (code, _, err) = ctl(&node, &["--offline", "restore-files"]);
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("was interrupted (the process that ran it is gone)")
            && err.contains("recoveryctl resume"),
        "{err}"
    );
    let (code, out, err) = ctl(&node, &["--offline", "resume"]);
    assert_eq!(code, 0, "{out}{err}");
}

fn restore(node: &Node) -> (i32, String, String) {
    ctl(node, &["--offline", "restore-files"])
}

#[test]
fn a_tree_root_turned_into_a_symlink_is_repaired_never_followed() {
    let node = node("");
    assert_eq!(ctl(&node, &["--offline", "backup"]).0, 0);
    let root = node.root();
    // /etc becomes a symlink to another directory: the restore makes /etc a directory again
    // and leaves the symlink's target alone.
    sh(&format!(
        "cd {r} && mv etc etc.moved && mkdir elsewhere && echo keep > elsewhere/mine && ln -s elsewhere etc",
        r = root.display()
    ));
    let (code, out, _) = ctl(&node, &["diff"]);
    assert_eq!(code, 1, "differences");
    assert!(
        out.contains("/etc  (a symlink to elsewhere -> directory)"),
        "{out}"
    );
    let (code, out, err) = restore(&node);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        std::fs::symlink_metadata(root.join("etc"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hosts")).unwrap(),
        "127.0.0.1 localhost\n"
    );
    assert_eq!(
        std::fs::read_dir(root.join("elsewhere")).unwrap().count(),
        1,
        "the symlink's target was written into"
    );
    // A machine-config file's parent turned into a symlink: repaired the same way.
    sh(&format!(
        "cd {r} && rm -r usr/lib/mco && mkdir other && ln -s ../../other usr/lib/mco && echo x > other/extra.conf",
        r = root.display()
    ));
    let (code, out, err) = restore(&node);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        std::fs::symlink_metadata(root.join("usr/lib/mco"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(
        std::fs::read_to_string(root.join("usr/lib/mco/extra.conf")).unwrap(),
        "extra=1\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("other/extra.conf")).unwrap(),
        "x\n"
    );
    // An ancestor the backup does not hold (/usr above /usr/local) is named, never changed.
    sh(&format!(
        "cd {r} && mv usr usr.real && mkdir usr2 && ln -s usr2 usr",
        r = root.display()
    ));
    let (code, _, err) = restore(&node);
    assert_ne!(code, 0);
    assert!(
        err.contains(
            "cannot restore /usr/local: /usr is now a symlink to usr2 (a directory at backup time)"
        ),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(root.join("usr2")).unwrap().count(), 0);
}

#[test]
fn a_machine_config_file_behind_a_symlinked_ancestor_is_restored_through_it_never_over_it() {
    // RHCOS: /opt is a symlink to var/opt, and the machine-config daemon writes files there.
    let node = node("");
    let root = node.root();
    sh(&format!(
        r#"cd {r} && mkdir -p var/opt/mco && echo extra=1 > var/opt/mco/extra.conf && ln -s var/opt opt
echo '{{"spec":{{"config":{{"storage":{{"files":[{{"path":"/opt/mco/extra.conf"}}]}}}}}}}}' > etc/machine-config-daemon/currentconfig"#,
        r = root.display()
    ));
    let (code, out, err) = ctl(&node, &["--offline", "backup"]);
    assert_eq!(code, 0, "{out}{err}");
    std::fs::write(root.join("var/opt/mco/extra.conf"), "extra=2\n").unwrap();
    let (code, out, err) = restore(&node);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        std::fs::symlink_metadata(root.join("opt"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the restore replaced the symlink /opt"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("var/opt/mco/extra.conf")).unwrap(),
        "extra=1\n"
    );
    // The symlink now leads elsewhere: named, and nothing is written there.
    sh(&format!(
        "cd {r} && mkdir -p var/opt2/mco && rm opt && ln -s var/opt2 opt",
        r = root.display()
    ));
    let (code, _, err) = restore(&node);
    assert_ne!(code, 0);
    assert!(
        err.contains(
            "/opt is now a symlink to var/opt2, and was a symlink to var/opt at backup time"
        ),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(root.join("var/opt2/mco"))
            .unwrap()
            .count(),
        0
    );
    // A directory in its place is never replaced.
    let (code, out, err) = ctl(&node, &["--offline", "cancel"]);
    assert_eq!(code, 0, "{out}{err}");
    sh(&format!(
        "cd {r} && rm opt && mkdir opt",
        r = root.display()
    ));
    let (code, _, err) = restore(&node);
    assert_ne!(code, 0);
    assert!(
        err.contains("/opt is now a directory, and was a symlink to var/opt at backup time"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(root.join("opt")).unwrap().count(), 0);
}

/// The stored object of a node file, from the newest generation's manifest.
fn stored_object(node: &Node, node_path: &str) -> PathBuf {
    let gens = state(node).join("generations");
    let newest = std::fs::read_dir(&gens)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .max()
        .unwrap();
    let manifest = std::fs::read_to_string(newest.join("manifest")).unwrap();
    let hash = manifest
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["path"] == node_path)
        .and_then(|e| e["hash"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("{node_path} not in {manifest}"));
    state(node).join("objects").join(&hash[..2]).join(&hash)
}

#[test]
fn check_finds_missing_corrupt_and_orphaned_objects_and_gc_removes_only_orphans() {
    let node = node("");
    let (code, out, err) = ctl(&node, &["--offline", "backup"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = ctl(&node, &["check"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("no orphaned objects"), "{out}");

    // An orphan: an object no generation refers to.
    let orphan = state(&node).join("objects/ee").join("e".repeat(64));
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, "left behind").unwrap();
    let (code, out, err) = ctl(&node, &["check", "--json"]);
    assert_eq!(code, 0, "orphans alone are not damage: {out}{err}");
    let c: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(c["orphans"], serde_json::json!(["e".repeat(64)]), "{out}");

    // A corrupted object: same size, other bytes. Only --read-data sees it.
    let hosts = stored_object(&node, "etc/hosts");
    let len = std::fs::metadata(&hosts).unwrap().len() as usize;
    let mut perms = std::fs::metadata(&hosts).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&hosts, perms).unwrap();
    std::fs::write(&hosts, "x".repeat(len)).unwrap();
    let (code, out, err) = ctl(&node, &["check"]);
    assert_eq!(code, 0, "presence only: {out}{err}");
    let (code, out, err) = ctl(&node, &["check", "--read-data"]);
    assert_eq!(code, 6, "{out}{err}");
    assert!(out.contains("etc/hosts"), "{out}");

    // A missing object: seen without --read-data.
    let tool = stored_object(&node, "usr/local/bin/tool");
    std::fs::remove_file(&tool).unwrap();
    let (code, out, err) = ctl(&node, &["check"]);
    assert_eq!(code, 6, "{out}{err}");
    assert!(out.contains("usr/local/bin/tool"), "{out}");

    // gc removes the orphan and nothing a generation refers to.
    let before: HashSet<PathBuf> = objects(&node);
    let (code, out, err) = ctl(&node, &["gc"]);
    assert_eq!(code, 0, "{out}{err}");
    let after: HashSet<PathBuf> = objects(&node);
    let removed: Vec<&PathBuf> = before.difference(&after).collect();
    assert_eq!(removed, [&orphan], "{out}");
    assert!(
        hosts.exists(),
        "a corrupt but referenced object is evidence, not an orphan"
    );
}

fn objects(node: &Node) -> HashSet<PathBuf> {
    let mut out = HashSet::new();
    for d in std::fs::read_dir(state(node).join("objects")).unwrap() {
        let d = d.unwrap().path();
        if d.file_name().unwrap() == "tmp" || !d.is_dir() {
            continue;
        }
        for e in std::fs::read_dir(&d).unwrap() {
            out.insert(e.unwrap().path());
        }
    }
    out
}

/// The node's files (not the state directory), path -> content.
fn node_files(node: &Node) -> std::collections::BTreeMap<String, Vec<u8>> {
    common::tree_contents(&node.root())
        .into_iter()
        .filter(|(p, _)| !p.starts_with("var/recovery"))
        .collect()
}

#[test]
fn restore_files_with_paths_or_a_target_touches_nothing_else() {
    let node = node("");
    let (code, out, err) = ctl(&node, &["--offline", "backup"]);
    assert_eq!(code, 0, "{out}{err}");
    let backed_up = node_files(&node);
    // An upgrade-like change in several places.
    for (p, c) in [
        ("/etc/a/f1", "changed a"),
        ("/etc/a/new", "new in a"),
        ("/etc/b/f1", "changed b"),
        ("/etc/hosts", "changed hosts"),
        ("/usr/local/bin/tool", "changed tool"),
    ] {
        std::fs::write(node.path(p), c).unwrap();
    }
    let changed = node_files(&node);

    // A dry run of some paths says what it would do and changes nothing.
    let (code, out, err) = ctl(&node, &["restore-files", "--dry-run", "--path", "/etc/b"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rewrite   /etc/b/f1"), "{out}");
    assert!(!out.contains("/etc/a"), "only the path asked for: {out}");
    assert_eq!(node_files(&node), changed);

    // A path that is not in the generation: refused, nothing changed, no run.
    let (code, _, err) = ctl(
        &node,
        &["--offline", "restore-files", "--yes", "--path", "/etc/nope"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("/etc/nope is not in generation"), "{err}");
    assert_eq!(node_files(&node), changed);

    // Into another directory: the generation's trees appear there, the node is untouched.
    let target = node.dir.path().join("restored");
    let (code, out, err) = ctl(
        &node,
        &["restore-files", "--target", target.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(node_files(&node), changed, "the node is untouched");
    let in_target: std::collections::BTreeMap<String, Vec<u8>> = common::tree_contents(&target)
        .into_iter()
        .filter(|(p, _)| !p.ends_with('/'))
        .collect();
    for (p, c) in &backed_up {
        let in_tree = ["etc/", "usr/local/", "var/lib/kubelet/"]
            .iter()
            .any(|t| p.starts_with(t));
        if in_tree && !p.ends_with('/') {
            assert_eq!(in_target.get(p), Some(c), "{p} in the target");
        }
    }

    // In place, one directory and one file: exactly those come back.
    let (code, out, err) = ctl(
        &node,
        &[
            "--offline",
            "restore-files",
            "--yes",
            "--path",
            "/etc/a",
            "--path",
            "/etc/hosts",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let after = node_files(&node);
    for (p, c) in &after {
        let selected = p.starts_with("etc/a/") || p == "etc/hosts";
        let want = if selected {
            backed_up.get(p)
        } else {
            changed.get(p)
        };
        assert_eq!(Some(c), want, "{p}");
    }
    assert!(
        !after.contains_key("etc/a/new"),
        "what the generation lacks under a path goes"
    );
    assert_eq!(
        after.get("etc/b/f1").map(|c| c.as_slice()),
        Some(&b"changed b"[..])
    );
    assert_eq!(
        after.get("usr/local/bin/tool").map(|c| c.as_slice()),
        Some(&b"changed tool"[..])
    );
}

#[test]
fn a_state_directory_holding_talms_backup_is_refused_and_said_everywhere() {
    let node = node("");
    let (code, out, err) = ctl(&node, &["--offline", "backup"]);
    assert_eq!(code, 0, "{out}{err}");
    // What TALM's backup-agent writes into its backup path.
    let state = state(&node);
    std::fs::write(state.join("upgrade-recovery.sh"), "#!/bin/bash\n").unwrap();
    std::fs::create_dir_all(state.join("usrlocal")).unwrap();
    std::fs::write(state.join("etc.exclude.list"), ".updated\n").unwrap();
    let (code, out, err) = ctl(&node, &["--offline", "--json", "backup"]);
    assert_eq!(code, 4, "a failed backup run: {out}{err}");
    assert!(
        out.contains("also holds TALM's backup"),
        "the Job's result: {out}"
    );
    assert!(out.contains("backup: false"), "{out}");
    // The journal has it, and status says it on every call.
    let (_, out, _) = ctl(&node, &["journal", "--json"]);
    assert!(out.contains("also holds TALM's backup"), "{out}");
    let (_, out, _) = ctl(&node, &["--offline", "status", "--json"]);
    let s: Value = serde_json::from_str(&out).unwrap();
    let w = s["warnings"].as_array().unwrap();
    assert!(
        w.iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("upgrade-recovery.sh, etc.exclude.list, usrlocal")),
        "{out}"
    );
    // The generation taken before is untouched.
    let (code, out, err) = ctl(&node, &["verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn the_metrics_textfile_follows_every_run() {
    let node =
        node("[host]\nmetrics_textfile = \"/var/lib/prometheus/node-exporter/recoveryd.prom\"\n");
    let dir = node.path("/var/lib/prometheus/node-exporter");
    std::fs::create_dir_all(&dir).unwrap();
    let (code, out, err) = ctl(&node, &["--offline", "backup"]);
    assert_eq!(code, 0, "{out}{err}");
    let text = std::fs::read_to_string(dir.join("recoveryd.prom")).unwrap();
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let t = value(&text, "recoveryd_last_successful_backup_timestamp_seconds");
    assert!((now - 120.0..=now + 1.0).contains(&t), "{t} vs {now}");
    assert_eq!(value(&text, "recoveryd_generations"), 1.0);
    assert!(value(&text, "recoveryd_newest_generation_bytes") > 100_000.0);
    assert_eq!(
        value(
            &text,
            "recoveryd_last_run_state{kind=\"backup\",state=\"succeeded\"}"
        ),
        1.0
    );
    assert_eq!(value(&text, "recoveryd_recovery_in_progress"), 0.0);
    // Every series has its HELP and TYPE, and no temporary file is left.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let name = l.split(['{', ' ']).next().unwrap();
        assert!(text.contains(&format!("# TYPE {name} gauge")), "{l}");
    }
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["recoveryd.prom"]);

    // A failed backup: the state changes, the last success stays.
    std::fs::write(state(&node).join("upgrade-recovery.sh"), "").unwrap();
    let (code, _, _) = ctl(&node, &["--offline", "backup"]);
    assert_eq!(code, 4);
    let text = std::fs::read_to_string(dir.join("recoveryd.prom")).unwrap();
    assert_eq!(
        value(
            &text,
            "recoveryd_last_run_state{kind=\"backup\",state=\"failed\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&text, "recoveryd_last_successful_backup_timestamp_seconds"),
        t
    );
}

#[test]
#[ignore = "needs root: bind-mounts a tree read-only (tests/run.sh runs it)"]
fn a_backup_of_a_tree_a_recovery_could_not_write_back_is_refused() {
    require_root();
    let node = node("");
    // /usr/local made read-only, as ProtectSystem=strict leaves a path missing from the unit's
    // ReadWritePaths=.
    let local = node.root().join("usr/local");
    std::fs::create_dir_all(&local).unwrap();
    sh(&format!(
        "mount --bind {l} {l} && mount -o remount,bind,ro {l}",
        l = local.display()
    ));
    let _u = Unmount(local.clone());
    let (code, out, err) = ctl(&node, &["--offline", "backup"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("/usr/local read-only for recoveryd")
            && err.contains("ReadWritePaths=")
            && !err.contains("/etc,"),
        "{err}"
    );
    assert!(generation_dirs(&state(&node)).is_empty());
    drop(_u);
    let (code, out, err) = ctl(&node, &["--offline", "backup"]);
    assert_eq!(code, 0, "{out}{err}");
}
