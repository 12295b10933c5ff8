//! Machine-config managed files that live outside the backed-up trees.
//!
//! The machine-config daemon keeps the node's rendered MachineConfig in
//! `/etc/machine-config-daemon/currentconfig`; `.spec.config.storage.files[].path` lists every
//! file it writes. Those outside the trees (e.g. `/usr/lib/systemd/...`, `/var/lib/...`) are
//! backed up and restored one by one.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Deserialize)]
struct CurrentConfig {
    spec: Spec,
}
#[derive(Deserialize)]
struct Spec {
    #[serde(default)]
    config: IgnitionConfig,
}
#[derive(Deserialize, Default)]
struct IgnitionConfig {
    #[serde(default)]
    storage: Storage,
}
#[derive(Deserialize, Default)]
struct Storage {
    #[serde(default)]
    files: Vec<FileRef>,
}
#[derive(Deserialize)]
struct FileRef {
    path: String,
}

/// Parse a currentconfig document into its file paths.
pub(crate) fn parse(text: &str) -> Result<Vec<PathBuf>> {
    let cfg: CurrentConfig =
        serde_json::from_str(text).context("parsing machine-config currentconfig")?;
    let mut out = Vec::new();
    for f in cfg.spec.config.storage.files {
        let p = PathBuf::from(&f.path);
        anyhow::ensure!(
            p.is_absolute() && !f.path.split('/').any(|c| c == ".."),
            "machine-config file path `{}` is not a plain absolute path",
            f.path
        );
        out.push(p);
    }
    Ok(out)
}

/// The machine-config files outside `trees`, read from `config_path` beneath `root`.
/// A node without a machine-config daemon (no file) has none.
pub(crate) fn outside_trees(
    root: &Path,
    config_path: &Path,
    trees: &[PathBuf],
) -> Result<Vec<PathBuf>> {
    let file = crate::config::under_root(root, config_path);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let mut paths: Vec<PathBuf> = parse(&text)
        .with_context(|| format!("in {}", file.display()))?
        .into_iter()
        .filter(|p| !trees.iter().any(|t| p.starts_with(t)))
        .collect();
    paths.sort();
    paths.dedup();
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_filters() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("etc/machine-config-daemon/currentconfig");
        std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
        std::fs::write(
            &cfg,
            r#"{"apiVersion":"machineconfiguration.openshift.io/v1","kind":"MachineConfig",
               "spec":{"config":{"ignition":{"version":"3.2.0"},"storage":{"files":[
                 {"path":"/etc/kubernetes/kubelet.conf","contents":{"source":"data:,x"},"mode":420},
                 {"path":"/usr/local/bin/configure-ovs.sh"},
                 {"path":"/var/lib/kubelet/config.json"},
                 {"path":"/usr/lib/systemd/system-generators/x"},
                 {"path":"/var/usrlocal/y"}]}}}}"#,
        )
        .unwrap();
        let trees: Vec<PathBuf> = ["/etc", "/usr/local", "/var/lib/kubelet"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let got = outside_trees(
            d.path(),
            Path::new("/etc/machine-config-daemon/currentconfig"),
            &trees,
        )
        .unwrap();
        assert_eq!(
            got,
            [
                PathBuf::from("/usr/lib/systemd/system-generators/x"),
                PathBuf::from("/var/usrlocal/y")
            ]
        );
        assert!(
            parse(r#"{"spec":{"config":{"storage":{"files":[{"path":"/etc/../x"}]}}}}"#).is_err()
        );
        assert!(
            outside_trees(d.path(), Path::new("/nope"), &trees)
                .unwrap()
                .is_empty()
        );
    }
}
