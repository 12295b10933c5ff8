//! A node with everything a recovery touches, for the procedure tests: a private bus with the
//! fake systemd/logind and rpm-ostree (reading a real ostree sysroot), the fake cluster programs,
//! and `recoveryctl --offline` pointed at them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use super::bus::{Fake, TestBus, start_fake};
use super::{Node, install_cluster_fakes, merge_toml, run, sh, sysroot};
use recoveryd::journal::Journal;

/// A node with everything a recovery touches.
pub struct World {
    pub bus: TestBus,
    pub node: Node,
    pub sysroot: sysroot::Sysroot,
    pub systemd: Fake,
    pub rpm: Option<Fake>,
    /// (checksum, serial) of the deployment booted at backup time ("old") and of the upgrade.
    pub old: (String, u32),
    pub new: (String, u32),
    pub rpm_args: Vec<String>,
}

pub const TREES: [&str; 3] = ["etc", "usr/local", "var/lib/kubelet"];

impl World {
    pub fn new(extra: &str) -> World {
        let policy = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/support/org.projectatomic.rpmostree1.conf");
        let bus = TestBus::start(&[&policy]);
        let node = Node::new("");
        let root = node.root();
        let fakes = install_cluster_fakes(&root);
        let sr = sysroot::Sysroot::build(&root.join("sysroot"), node.dir.path());
        let deps = sr.deployments();
        // ostree lists the newer commit first; the node boots the older one at backup time.
        let (new, old) = (deps[0].clone(), deps[1].clone());
        let cfg = merge_toml(&[
            &format!("root = \"{}\"\n", root.display()),
            &fakes,
            "[host]\nsysroot = \"/sysroot\"\n[backup]\nspace_margin = 0\n[recovery]\ncontainer_timeout = 20\nrevision_timeout = 20\n[engine]\nretry_delay = 0\n",
            extra,
        ]);
        std::fs::write(&node.config, cfg).unwrap();
        sh(&format!(
            r#"cd {r}
mkdir -p etc/ssh etc/machine-config-daemon etc/kubernetes/manifests usr/local/bin var/lib/kubelet/pods usr/lib/mco sys/fs/selinux
echo node1 > etc/hostname; echo 0123456789abcdef0123456789abcdef > etc/machine-id
echo 127.0.0.1 localhost > etc/hosts; echo key > etc/ssh/key; chmod 600 etc/ssh/key
echo 'apiVersion: v1' > etc/kubernetes/manifests/etcd.yaml
printf '#!/bin/sh\necho hi\n' > usr/local/bin/helper; chmod 755 usr/local/bin/helper
echo 'kind: KubeletConfiguration' > var/lib/kubelet/config.yaml; echo pod > var/lib/kubelet/pods/p1
echo 'extra=1' > usr/lib/mco/extra.conf
echo '{{"spec":{{"config":{{"storage":{{"files":[{{"path":"/usr/lib/mco/extra.conf"}},{{"path":"/etc/hosts"}}]}}}}}}}}' > etc/machine-config-daemon/currentconfig
echo 1 > sys/fs/selinux/enforce
"#,
            r = root.display()
        ));
        let systemd = start_fake(&bus, "fake-systemd", &[]);
        let mut w = World {
            rpm_args: vec![
                "--state".into(),
                bus.dir.path().join("rpm.json").display().to_string(),
                "--log".into(),
                bus.dir.path().join("rpm.log").display().to_string(),
                "--txn-socket".into(),
                bus.dir.path().join("rpm.sock").display().to_string(),
                "--sysroot".into(),
                sr.path.display().to_string(),
            ],
            bus,
            node,
            sysroot: sr,
            systemd,
            rpm: None,
            old,
            new,
        };
        w.write_rpm_state(&[w.old.clone(), w.new.clone()], &w.old.clone(), false);
        w.start_rpm();
        w
    }

    /// `osname:checksum.serial` of a testos deployment, as the sysroot helper names it.
    pub fn key(&self, d: &(String, u32)) -> String {
        format!("testos:{}.{}", d.0, d.1)
    }

    pub fn rpm_state_path(&self) -> PathBuf {
        PathBuf::from(&self.rpm_args[1])
    }

    /// The node as rpm-ostree sees it: this boot order written to the real sysroot (as a
    /// rollback writes it) and this deployment booted. The fake reads the deployments from
    /// the sysroot.
    pub fn write_rpm_state(
        &self,
        order: &[(String, u32)],
        booted: &(String, u32),
        boot_default: bool,
    ) {
        let keys: Vec<String> = order.iter().map(|d| self.key(d)).collect();
        let mut all: Vec<String> = keys.clone();
        for (os, c, s) in self.sysroot.list() {
            let k = format!("{os}:{c}.{s}");
            if !all.contains(&k) {
                all.push(k);
            }
        }
        self.sysroot.set_order(&all);
        self.write_rpm_booted(
            &format!("testos-{}.{}", booted.0, booted.1),
            None,
            boot_default,
        );
    }

    /// Only the fake's own state: which deployment is booted and which (the first) is staged.
    pub fn write_rpm_booted(&self, booted: &str, staged: Option<&str>, boot_default: bool) {
        let state = json!({
            "osname": "testos",
            "booted": booted,
            "staged": staged,
            "boot_default": boot_default,
            "faults": {"busy": false, "no_rollback": false, "hang": false, "crash_mid_txn": false, "finish_error": null, "txn_delay_ms": 50},
        });
        std::fs::write(
            self.rpm_state_path(),
            serde_json::to_vec_pretty(&state).unwrap(),
        )
        .unwrap();
    }

    pub fn start_rpm(&mut self) {
        let args: Vec<&str> = self.rpm_args.iter().map(String::as_str).collect();
        self.rpm = Some(start_fake(&self.bus, "fake-rpm-ostreed", &args));
    }

    pub fn rpm(&self) -> &Fake {
        self.rpm.as_ref().unwrap()
    }

    pub fn root(&self) -> PathBuf {
        self.node.root()
    }

    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        self.ctl_env(args, None)
    }

    pub fn ctl_env(&self, args: &[&str], failpoints: Option<&str>) -> (i32, String, String) {
        let mut c = Command::new(env!("CARGO_BIN_EXE_recoveryctl"));
        c.arg("--config")
            .arg(&self.node.config)
            .arg("--offline")
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus.address)
            .env_remove("RECOVERYD_FAILPOINTS");
        if let Some(fp) = failpoints {
            c.env("RECOVERYD_FAILPOINTS", fp);
        }
        run(&mut c)
    }

    /// Take the backup, keep an independent copy of the trees, then break the node the way a
    /// failed upgrade does.
    pub fn backup_then_break(&self) -> PathBuf {
        let (code, out, err) = self.ctl(&["backup"]);
        assert_eq!(code, 0, "backup: {out}{err}");
        let reference = self.node.dir.path().join("reference");
        for t in TREES {
            std::fs::create_dir_all(reference.join(t)).unwrap();
            sh(&format!(
                "rsync -aAXH --numeric-ids {}/{t}/ {}/{t}/",
                self.root().display(),
                reference.display()
            ));
        }
        std::fs::create_dir_all(reference.join("extra")).unwrap();
        std::fs::copy(
            self.root().join("usr/lib/mco/extra.conf"),
            reference.join("extra/extra.conf"),
        )
        .unwrap();
        // The upgrade: a new deployment boots, the old one is the rollback target.
        self.write_rpm_state(
            &[self.new.clone(), self.old.clone()],
            &self.new.clone(),
            false,
        );
        sh(&format!(
            r#"cd {r}
echo 10.0.0.9 upgraded >> etc/hosts; rm etc/ssh/key; echo new > etc/added.conf
echo changed > usr/local/bin/helper; echo added > usr/local/bin/new-tool
echo 'kind: Changed' > var/lib/kubelet/config.yaml; rm var/lib/kubelet/pods/p1; echo x > var/lib/kubelet/pods/p2
echo 'extra=2' > usr/lib/mco/extra.conf
echo manifest-from-upgrade > etc/kubernetes/manifests/etcd.yaml
"#,
            r = self.root().display()
        ));
        reference
    }

    /// The node reboots: a new boot id, and rpm-ostree boots its default deployment.
    pub fn reboot(&mut self, boot: &str) {
        self.node.set_boot_id(boot);
        if let Some(mut f) = self.rpm.take() {
            f.stop();
        }
        let mut state: Value =
            serde_json::from_slice(&std::fs::read(self.rpm_state_path()).unwrap()).unwrap();
        state["boot_default"] = json!(true);
        std::fs::write(
            self.rpm_state_path(),
            serde_json::to_vec_pretty(&state).unwrap(),
        )
        .unwrap();
        self.start_rpm();
    }

    /// The node reboots into `booted` (an rpm-ostree id), whatever the default is: a boot menu
    /// choice, or a boot loader falling back.
    pub fn reboot_into(&mut self, boot: &str, booted: &str) {
        self.node.set_boot_id(boot);
        if let Some(mut f) = self.rpm.take() {
            f.stop();
        }
        let mut state: Value =
            serde_json::from_slice(&std::fs::read(self.rpm_state_path()).unwrap()).unwrap();
        state["boot_default"] = json!(false);
        state["booted"] = json!(booted);
        state["staged"] = Value::Null;
        std::fs::write(
            self.rpm_state_path(),
            serde_json::to_vec_pretty(&state).unwrap(),
        )
        .unwrap();
        self.start_rpm();
    }

    /// The rpm-ostree id of a testos deployment.
    pub fn id(&self, d: &(String, u32)) -> String {
        format!("testos-{}.{}", d.0, d.1)
    }

    /// `checksum.serial` of the booted deployment, as the fake reports it.
    pub fn booted(&self) -> String {
        let b = self.rpm().read_state()["booted"]
            .as_str()
            .unwrap()
            .to_string();
        match b.rsplit_once('-') {
            Some((_, cs)) => cs.to_string(),
            None => b,
        }
    }

    /// rsync's differences between the reference and the live trees (empty when equal).
    pub fn differences(&self, reference: &Path) -> String {
        let mut all = String::new();
        for t in TREES {
            let out = Command::new("rsync")
                .args([
                    "-naAXHc",
                    "--delete",
                    "--numeric-ids",
                    "--itemize-changes",
                    "--exclude",
                    "/kubernetes/manifests",
                ])
                .arg(format!("{}/{t}/", reference.display()))
                .arg(format!("{}/{t}/", self.root().display()))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "rsync: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            all.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        if std::fs::read(reference.join("extra/extra.conf")).unwrap()
            != std::fs::read(self.root().join("usr/lib/mco/extra.conf")).unwrap()
        {
            all.push_str("extra.conf differs\n");
        }
        all
    }

    /// The unit and reboot calls systemd and logind received, in order.
    pub fn unit_calls(&self) -> Vec<String> {
        self.systemd
            .calls()
            .into_iter()
            .filter_map(|c| {
                let call = c["call"].as_str()?.to_string();
                let arg = c["args"].get(0).map(|a| match a {
                    Value::String(s) => s.clone(),
                    Value::Array(v) => v
                        .iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    other => other.to_string(),
                });
                match call.as_str() {
                    "StopUnit" | "StartUnit" | "RestartUnit" | "EnableUnitFiles"
                    | "DisableUnitFiles" => Some(format!("{call} {}", arg.unwrap_or_default())),
                    "Reload" | "RebootWithFlags" | "ScheduleShutdown" => Some(call),
                    _ => None,
                }
            })
            .collect()
    }

    pub fn unit(&self, name: &str) -> Value {
        self.systemd.read_state()["units"][name].clone()
    }

    pub fn journal(&self) -> Journal {
        Journal::open_existing(&self.node.journal_path()).unwrap()
    }
}

pub fn subsequence(haystack: &[String], needles: &[&str]) -> bool {
    let mut it = haystack.iter();
    needles.iter().all(|n| it.any(|h| h.starts_with(n)))
}
