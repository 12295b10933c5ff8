//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Path of a test program built from `tests/support` as a cargo example.
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/examples/<name>
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let p = profile_dir.join("examples").join(name);
    assert!(
        p.exists(),
        "{} is not built (cargo test builds examples)",
        p.display()
    );
    p
}

/// A throwaway node: a temp directory used as `root`, with a boot id and a config file.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Node {
    pub fn new(extra_config: &str) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("recoveryd-node-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("proc/sys/kernel/random")).unwrap();
        std::fs::create_dir_all(root.join("var/recovery")).unwrap();
        let node = Node {
            config: dir.path().join("config.toml"),
            dir,
        };
        node.set_boot_id("boot-1");
        std::fs::write(
            &node.config,
            format!("root = \"{}\"\n{}\n", root.display(), extra_config),
        )
        .unwrap();
        node
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn path(&self, host: &str) -> PathBuf {
        self.root().join(host.trim_start_matches('/'))
    }

    pub fn set_boot_id(&self, id: &str) {
        std::fs::write(
            self.path("/proc/sys/kernel/random/boot_id"),
            format!("{id}\n"),
        )
        .unwrap();
    }

    pub fn journal_path(&self) -> PathBuf {
        self.path("/var/recovery/journal.db")
    }
}

/// Every regular file beneath `dir` with its content, sorted (a cheap tree fingerprint).
pub fn tree_contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.push((format!("{rel}/"), Vec::new()));
                walk(base, &p, out);
            } else if ft.is_file() {
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Run a command, returning (exit code or -signal, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    use std::os::unix::process::ExitStatusExt;
    let out = cmd.output().unwrap();
    let code = out
        .status
        .code()
        .unwrap_or_else(|| -out.status.signal().unwrap_or(0));
    (
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
