//! podman on a storage of the test's own.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::run;

/// podman with a storage of its own under `dir` (vfs: any filesystem will do), so that the test
/// neither sees nor leaves images on the machine. runc, and limits below this machine's hard
/// ones: here containers cannot raise an rlimit (no CAP_SYS_RESOURCE) and crun refuses
/// hybrid cgroups; neither changes what the image does.
pub struct Podman {
    pub conf: PathBuf,
}

impl Podman {
    pub fn new(dir: &Path) -> Podman {
        Podman::with_graphroot(dir, &dir.join("storage"))
    }

    /// With its images in `graphroot` (a node's `/var/lib/containers/storage`).
    pub fn with_graphroot(dir: &Path, graphroot: &Path) -> Podman {
        Podman::with_store(dir, graphroot, "vfs")
    }

    /// With its images in `graphroot`, kept by `driver` (`vfs`, or `overlay` as CRI-O on a
    /// node, which needs a file system that can be an overlay's upper layer).
    pub fn with_store(dir: &Path, graphroot: &Path, driver: &str) -> Podman {
        let conf = dir.join("storage.conf");
        std::fs::write(
            &conf,
            format!(
                "[storage]\ndriver = \"{driver}\"\ngraphroot = \"{}\"\nrunroot = \"{}/run\"\n",
                graphroot.display(),
                dir.display()
            ),
        )
        .unwrap();
        Podman { conf }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_STORAGE_CONF", &self.conf)
            .args(["--runtime", "runc"]);
        c
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = run(self.cmd().args(args));
        assert_eq!(code, 0, "podman {args:?}: {out}{err}");
        out.trim().to_string()
    }
}
