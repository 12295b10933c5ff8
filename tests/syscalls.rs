//! What a restore costs in system calls, counted with strace: with nothing to change, one
//! walk of the live tree (one stat and one xattr listing per entry, a read per xattr) and no
//! flush; with something to change, a flush of what was written.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::{Node, run};

const HOST_OFF: &str =
    "[host]\nsystemd = false\nostree = false\ncluster = false\n[backup]\nspace_margin = 0\n";

const FILES: usize = 2000;

/// `recoveryctl --offline ARGS` under `strace -f`: the calls of each kind. Counted from the
/// full trace, not `strace -c`, which leaves out the calls it has no name for: an older strace
/// prints `listxattrat`/`getxattrat` (Linux 6.13) as `syscall_0x1d1`/`syscall_0x1d0`.
fn counted(node: &Node, args: &[&str]) -> BTreeMap<String, u64> {
    let log = node.dir.path().join("strace.txt");
    let (code, out, err) = run(Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(&log)
        .arg(env!("CARGO_BIN_EXE_recoveryctl"))
        .arg("--config")
        .arg(&node.config)
        .arg("--offline")
        .args(args)
        .env_remove("RECOVERYD_FAILPOINTS"));
    assert_eq!(code, 0, "{out}{err}");
    let mut calls = BTreeMap::new();
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        // "PID name(args) = result", or "PID name(args <unfinished ...>" and later
        // "PID <... name resumed>...": each call counted once, at its start.
        let Some((_, call)) = line.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        let Some((name, _)) = call.split_once('(') else {
            continue;
        };
        if name.is_empty() || name.starts_with('<') || name.contains(' ') {
            continue;
        }
        let name = match name {
            "syscall_0x1d0" => "getxattrat",
            "syscall_0x1d1" => "listxattrat",
            n => n,
        };
        *calls.entry(name.to_string()).or_insert(0) += 1;
    }
    calls
}

fn sum(calls: &BTreeMap<String, u64>, names: &[&str]) -> u64 {
    names.iter().filter_map(|n| calls.get(*n)).sum()
}

fn backup(node: &Node) {
    let (code, out, err) = run(Command::new(env!("CARGO_BIN_EXE_recoveryctl"))
        .arg("--config")
        .arg(&node.config)
        .args(["--offline", "backup"]));
    assert_eq!(code, 0, "{out}{err}");
}

fn add_files(node: &Node, from: usize, to: usize) {
    for i in from..to {
        std::fs::write(node.path(&format!("/etc/many/f{i}")), format!("{i}\n")).unwrap();
    }
}

#[test]
#[ignore = "needs strace (tests/run.sh installs it and runs this)"]
fn a_restore_with_nothing_to_change_walks_once_and_flushes_nothing() {
    let node = Node::new(HOST_OFF);
    for d in ["etc/many", "usr/local/bin", "var/lib/kubelet"] {
        std::fs::create_dir_all(node.path(&format!("/{d}"))).unwrap();
    }
    add_files(&node, 0, FILES);
    // Some files with an xattr each: one more read each.
    for i in 0..10 {
        common::sh(&format!(
            "setfattr -n user.test -v {i} {}",
            node.path(&format!("/etc/many/f{i}")).display()
        ));
    }
    backup(&node);
    let small = counted(&node, &["restore-files", "--yes"]);
    // Twice the files: the difference is what each entry costs (the rest is the program's
    // own: configuration, journal, store).
    add_files(&node, FILES, 2 * FILES);
    backup(&node);
    let big = counted(&node, &["restore-files", "--yes"]);
    eprintln!("nothing to change, {FILES} more entries: {small:?}\n{big:?}");
    let per_entry =
        |names: &[&str]| (sum(&big, names) as f64 - sum(&small, names) as f64) / FILES as f64;
    let stats = per_entry(&["newfstatat", "statx", "fstat", "lstat", "stat"]);
    let lists = per_entry(&["llistxattr", "flistxattr", "listxattr", "listxattrat"]);
    let reads = sum(&big, &["lgetxattr", "fgetxattr", "getxattr", "getxattrat"]);
    eprintln!("per entry: {stats:.3} stat, {lists:.3} xattr listings; {reads} xattr reads");
    assert!(stats <= 1.01, "{stats} stat calls per entry");
    assert!(lists <= 1.01, "{lists} xattr listings per entry");
    assert!(reads <= 10 + 10, "{reads} xattr reads for 10 xattrs");
    for c in [&small, &big] {
        assert_eq!(c.get("syncfs"), None, "a flush with nothing written: {c:?}");
    }

    // Something to change: what was written is flushed, and the live tree is still walked
    // once: the apply pass visits only what the comparison found different.
    let changed = 2 * FILES / 20;
    for i in 0..changed {
        std::fs::write(node.path(&format!("/etc/many/f{i}")), "changed\n").unwrap();
    }
    let calls = counted(&node, &["restore-files", "--yes"]);
    eprintln!("5 % changed: {calls:?}");
    assert!(calls.get("syncfs").copied().unwrap_or(0) >= 1, "{calls:?}");
    let entries = (2 * FILES) as f64;
    let stats = sum(&calls, &["newfstatat", "statx", "fstat", "lstat", "stat"]) as f64
        - sum(&big, &["newfstatat", "statx", "fstat", "lstat", "stat"]) as f64;
    eprintln!("5 % changed: {stats} stat calls more than with nothing to change");
    assert!(
        stats <= 8.0 * changed as f64 && stats < entries / 2.0,
        "{stats} more stat calls for {changed} changed files of {entries} entries: a second walk?"
    );
    assert_eq!(
        std::fs::read_to_string(node.path("/etc/many/f0")).unwrap(),
        "0\n"
    );
}
