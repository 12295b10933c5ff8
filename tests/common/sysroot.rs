//! A real ostree sysroot for tests, built with Debian's `ostree` CLI (`ostree admin init-fs`,
//! `os-init`, `commit`, `deploy`): two commits of a tiny OS, two deployments, refs kept so old
//! commits stay deployable.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Sysroot {
    pub path: PathBuf,
    pub osname: String,
    /// Where new commits' trees are built.
    scratch: PathBuf,
}

/// The libostree helper (`tests/support/ostree-sysroot.py`).
pub fn helper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/ostree-sysroot.py")
}

fn sh(script: &str) -> String {
    let out = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .env("OSTREE_SYSROOT_DEBUG", "mutable-deployments")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Sysroot {
    /// A sysroot at `path` with deployments of versions 1.0 (index 1) and 2.0 (index 0).
    pub fn build(path: &Path, scratch: &Path) -> Sysroot {
        let (s, t) = (path.display(), scratch.join("tree"));
        let t = t.display();
        sh(&format!(
            r#"
mkdir -p {s} {t}/usr/bin {t}/usr/lib/modules/6.1.0-test {t}/usr/etc
ostree admin init-fs {s} >/dev/null
ostree admin os-init --sysroot={s} testos >/dev/null
echo k > {t}/usr/lib/modules/6.1.0-test/vmlinuz; echo i > {t}/usr/lib/modules/6.1.0-test/initramfs.img
printf 'ID=testos\nNAME=testos\nPRETTY_NAME="Test OS"\nVERSION_ID=1\n' > {t}/usr/lib/os-release
ln -sf ../usr/lib/os-release {t}/usr/etc/os-release
c1=$(ostree --repo={s}/ostree/repo commit -b testos/stable --add-metadata-string=version=1.0 -s v1 --tree=dir={t})
ostree --repo={s}/ostree/repo refs --create=keep/v1 $c1
ostree admin deploy --sysroot={s} --os=testos testos/stable >/dev/null
echo two > {t}/usr/bin/two
c2=$(ostree --repo={s}/ostree/repo commit -b testos/stable --add-metadata-string=version=2.0 -s v2 --tree=dir={t})
ostree admin deploy --sysroot={s} --os=testos --retain testos/stable >/dev/null
"#
        ));
        Sysroot {
            path: path.to_path_buf(),
            osname: "testos".into(),
            scratch: scratch.to_path_buf(),
        }
    }

    /// Commit a new version of the tree and deploy it in `osname` (created if new) as the new
    /// first deployment, keeping the others; returns its `(checksum, serial)`.
    pub fn deploy(&self, osname: &str, version: &str) -> (String, u32) {
        let (s, t) = (self.path.display(), self.scratch.join("tree"));
        let t = t.display();
        let out = sh(&format!(
            r#"
[ -d {s}/ostree/deploy/{osname} ] || ostree admin os-init --sysroot={s} {osname} >/dev/null
echo {version} > {t}/usr/bin/version
c=$(ostree --repo={s}/ostree/repo commit -b {osname}/stable --add-metadata-string=version={version} -s {version} --tree=dir={t})
ostree --repo={s}/ostree/repo refs --create=keep/{osname}-{version} $c
ostree admin deploy --sysroot={s} --os={osname} --retain $c >/dev/null
echo $c
"#
        ));
        let checksum = out.lines().last().unwrap().trim().to_string();
        let serial = self
            .list()
            .into_iter()
            .find(|(o, c, _)| o == osname && *c == checksum)
            .map(|(_, _, s)| s)
            .unwrap();
        (checksum, serial)
    }

    /// `(osname, checksum, serial)` of each deployment in boot order.
    pub fn list(&self) -> Vec<(String, String, u32)> {
        self.status()
            .lines()
            .filter(|l| !l.starts_with("    "))
            .filter_map(|l| {
                let mut w = l.trim_start_matches(['*', ' ']).split_whitespace();
                let os = w.next()?.to_string();
                let (c, s) = w.next()?.rsplit_once('.')?;
                Some((os, c.to_string(), s.parse().ok()?))
            })
            .collect()
    }

    /// Write this boot order (what rpm-ostree's rollback does, through libostree); deployments
    /// not named are removed. Names are `osname:checksum.serial`.
    pub fn set_order(&self, order: &[String]) {
        let out = Command::new(helper())
            .arg("write")
            .arg(&self.path)
            .args(order)
            .env("OSTREE_SYSROOT_DEBUG", "mutable-deployments")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn pin(&self, index: usize, pin: bool) {
        sh(&format!(
            "ostree admin pin {} --sysroot={} {index}",
            if pin { "" } else { "--unpin" },
            self.path.display()
        ));
    }

    pub fn status(&self) -> String {
        sh(&format!(
            "ostree admin status --sysroot={}",
            self.path.display()
        ))
    }

    /// `(checksum, serial)` of each deployment in `ostree admin status` order.
    pub fn deployments(&self) -> Vec<(String, u32)> {
        self.status()
            .lines()
            .filter(|l| !l.starts_with("    "))
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(|id| {
                let (c, s) = id.rsplit_once('.').unwrap();
                (c.to_string(), s.parse().unwrap())
            })
            .collect()
    }

    pub fn origin(&self, checksum: &str, serial: u32) -> PathBuf {
        self.origin_in(&self.osname, checksum, serial)
    }

    pub fn origin_in(&self, osname: &str, checksum: &str, serial: u32) -> PathBuf {
        self.path.join(format!(
            "ostree/deploy/{osname}/deploy/{checksum}.{serial}.origin"
        ))
    }

    pub fn pinned(&self, checksum: &str, serial: u32) -> bool {
        self.pinned_in(&self.osname, checksum, serial)
    }

    pub fn pinned_in(&self, osname: &str, checksum: &str, serial: u32) -> bool {
        std::fs::read_to_string(self.origin_in(osname, checksum, serial))
            .unwrap()
            .lines()
            .any(|l| l.trim() == "pinned=true")
    }
}
