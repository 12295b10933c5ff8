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
const DIRS: usize = 300;

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

/// How many entries of the newest generation changed within two seconds of its walk (read
/// again by the next restore or backup, whatever their inode says).
fn racy_in_newest(node: &Node) -> usize {
    let gens = node.path("/var/recovery/generations");
    let mut dirs: Vec<_> = std::fs::read_dir(&gens)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    dirs.sort();
    let text = std::fs::read_to_string(dirs.last().unwrap().join("manifest")).unwrap();
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let nanos = |t: &serde_json::Value| {
        i128::from(t[0].as_i64().unwrap()) * 1_000_000_000 + i128::from(t[1].as_u64().unwrap())
    };
    let walked = nanos(&header["walked"]);
    lines
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e.get("source").is_some())
        .filter(|e| nanos(&e["source"]["ctime"]) + 2_000_000_000 >= walked)
        .count()
}

/// Wait past the margin within which a backup's walk does not trust an entry's inode (two
/// seconds): files changed before this are recognized by their inode, as on a node.
fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(2100));
}

const STATS: &[&str] = &["newfstatat", "statx", "fstat", "lstat", "stat"];
const LISTS: &[&str] = &["llistxattr", "flistxattr", "listxattr", "listxattrat"];
const READS: &[&str] = &["lgetxattr", "fgetxattr", "getxattr", "getxattrat"];

#[test]
#[ignore = "needs strace (tests/run.sh installs it and runs this)"]
fn a_restore_with_nothing_to_change_walks_once_and_flushes_nothing() {
    let node = Node::new(HOST_OFF);
    for d in ["etc/many", "usr/local/bin", "var/lib/kubelet"] {
        std::fs::create_dir_all(node.path(&format!("/{d}"))).unwrap();
    }
    add_files(&node, 0, FILES);
    // Directories of their own: a walk that lists them makes two calls each.
    for d in 0..DIRS {
        let dir = node.path(&format!("/usr/local/bin/d{d}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("tool"), "#!/bin/sh\n").unwrap();
    }
    // Some files with an xattr each: one more read each, where xattrs are read.
    for i in 0..10 {
        common::sh(&format!(
            "setfattr -n user.test -v {i} {}",
            node.path(&format!("/etc/many/f{i}")).display()
        ));
    }
    // Files changed just before the walk: their inodes say nothing, their xattrs are read.
    backup(&node);
    let racy_entries = racy_in_newest(&node) as f64;
    let racy = counted(&node, &["restore-files", "--yes"]);
    settle();
    backup(&node);
    let small = counted(&node, &["restore-files", "--yes"]);
    // Twice the files: the difference is what each entry costs (the rest is the program's
    // own: configuration, journal, store).
    add_files(&node, FILES, 2 * FILES);
    settle();
    backup(&node);
    let big = counted(&node, &["restore-files", "--yes"]);
    eprintln!("nothing to change, {FILES} more entries: {small:?}\n{big:?}");
    let per_entry =
        |names: &[&str]| (sum(&big, names) as f64 - sum(&small, names) as f64) / FILES as f64;
    let stats = per_entry(STATS);
    let lists = per_entry(LISTS);
    let reads = sum(&big, READS);
    eprintln!("per entry: {stats:.3} stat, {lists:.3} xattr listings; {reads} xattr reads");
    assert!(stats <= 1.01, "{stats} stat calls per entry");
    // An inode untouched since the backup has the xattrs it had: none is read.
    assert!(lists <= 0.01, "{lists} xattr listings per untouched entry");
    assert!(reads <= 10, "{reads} xattr reads of untouched entries");
    // Nor is an untouched directory listed: its names are the generation's (the one listing
    // left is the store's list of generations).
    let listings = sum(&big, &["getdents64", "getdents"]);
    assert!(listings <= 4, "{listings} directory listings: {big:?}");
    for c in [&racy, &small, &big] {
        assert_eq!(c.get("syncfs"), None, "a flush with nothing written: {c:?}");
    }
    // Entries changed within the margin of the walk were read as before: one listing each.
    let entries = FILES as f64;
    let racy_lists = sum(&racy, LISTS) as f64;
    assert!(
        racy_entries >= entries / 2.0,
        "only {racy_entries} entries changed just before the backup: the test is too slow"
    );
    assert!(
        racy_lists >= racy_entries && racy_lists <= 1.01 * racy_entries + 50.0,
        "{racy_lists} xattr listings for {racy_entries} entries changed just before the backup"
    );

    // A backup with nothing changed reads no xattrs either, and lists no directory of the
    // trees: what it lists is the store (its 256 fan-out directories, for the copy, the
    // verify and retention, two calls each).
    let again = counted(&node, &["backup"]);
    let lists = sum(&again, LISTS) as f64;
    eprintln!("a backup with nothing changed: {again:?}");
    assert!(
        lists <= 100.0,
        "{lists} xattr listings for {} untouched entries",
        2 * FILES
    );
    let listings = sum(&again, &["getdents64", "getdents"]);
    assert!(
        listings <= 3 * 256 * 2 + 50,
        "{listings} directory listings with {DIRS} untouched directories in the trees"
    );

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
    let stats = sum(&calls, STATS) as f64 - sum(&big, STATS) as f64;
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
