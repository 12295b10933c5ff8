//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub mod bus;
mod examples;
pub mod golden;
pub mod podman;
pub mod sysroot;
pub mod world;

pub use examples::example;

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

/// Install the fake cluster programs in `<root>/opt/fake-cluster/bin` (outside the backed-up
/// trees) and return the config lines that point recoveryd at them.
pub fn install_cluster_fakes(root: &Path) -> String {
    let dir = root.join("opt/fake-cluster");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/cluster-bin");
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), bin.join(e.file_name())).unwrap();
    }
    let b = bin.display();
    format!(
        "[host]\ncrictl = \"{b}/crictl\"\ncrio = \"{b}/crio\"\noc = \"{b}/oc\"\n\
         [backup]\ncluster_backup = \"/opt/fake-cluster/bin/cluster-backup.sh\"\n\
         [recovery]\ncluster_restore = \"/opt/fake-cluster/bin/cluster-restore.sh\"\npoll_interval = 0.2\n"
    )
}

/// The calls the fake cluster programs recorded, one per line (`crictl rmp -fa`, ...).
pub fn cluster_calls(root: &Path) -> Vec<String> {
    std::fs::read_to_string(root.join("opt/fake-cluster/calls.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            l.split(' ')
                .filter(|w| !w.starts_with("--kubeconfig="))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Merge TOML snippets that may repeat section headers (later keys win) into one document.
pub fn merge_toml(parts: &[&str]) -> String {
    let mut root = toml_table(parts[0]);
    for p in &parts[1..] {
        merge_into(&mut root, toml_table(p));
    }
    root.to_string()
}

fn toml_table(s: &str) -> toml::Table {
    s.parse()
        .unwrap_or_else(|e| panic!("bad TOML in test: {e}\n{s}"))
}

fn merge_into(a: &mut toml::Table, b: toml::Table) {
    for (k, v) in b {
        match (a.get_mut(&k), v) {
            (Some(toml::Value::Table(at)), toml::Value::Table(bt)) => merge_into(at, bt),
            (_, v) => {
                a.insert(k, v);
            }
        }
    }
}

/// Run a bash script (strict mode); panic with its output if it fails.
pub fn sh(script: &str) {
    sh_out(script);
}

/// `sh`, and its standard output.
pub fn sh_out(script: &str) -> String {
    let (code, out, err) = run(Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script));
    assert_eq!(code, 0, "{script}\n{out}{err}");
    out
}

/// A `recoveryctl --json` document, checked for its schema.
pub fn json_doc(out: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(out).unwrap_or_else(|e| panic!("not a JSON document ({e}): {out}"));
    assert_eq!(v["schema"], 1, "{out}");
    v
}

/// The list under `key` of a `recoveryctl --json` document (`generations`, `runs`, `steps`).
pub fn json_list(out: &str, key: &str) -> serde_json::Value {
    let v = json_doc(out);
    assert!(v[key].is_array(), "no list `{key}` in {out}");
    v[key].clone()
}
