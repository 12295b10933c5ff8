//! Configuration: TOML with drop-ins, validated into [`Config`].
//!
//! Files, in the order they are applied (later files override earlier keys):
//! 1. `/usr/lib/recoveryd/config.d/*.toml` (vendor drop-ins; a drop-in of the same name in
//!    `/etc/recoveryd/config.d/` replaces the vendor one, as systemd does);
//! 2. `/etc/recoveryd/config.toml`;
//! 3. `/etc/recoveryd/config.d/*.toml`.
//!
//! `--config FILE` uses that one file instead. Every key is documented in `docs/config.md`.

mod fragment;
mod sources;
pub(crate) mod units;

#[cfg(test)]
mod proptests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) use fragment::Fragment;
pub use sources::{ConfigSource, config_files};

/// A configuration error that names the file and, where there is one, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // Not a `source`: the message carries the reason once (an anyhow chain would repeat it).
    #[error("{file}: cannot read: {error}")]
    Read {
        file: PathBuf,
        error: std::io::Error,
    },
    #[error("{file}: not valid TOML: {message}")]
    Syntax { file: PathBuf, message: String },
    #[error("{file}: unknown key `{key}`")]
    UnknownKey { file: PathBuf, key: String },
    #[error("{file}: key `{key}`: {message}")]
    BadValue {
        file: PathBuf,
        key: String,
        message: String,
    },
    #[error("{origin}: key `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

/// The validated configuration. Host paths in it are as the operator wrote them (absolute, as
/// seen on the node); [`Config::host_path`] resolves one beneath `root`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Every host path is resolved beneath this directory (default `/`).
    pub root: PathBuf,
    /// Where generations and the journal live, as a host path (default `/var/recovery`).
    pub state_dir: PathBuf,
    pub backup: BackupConfig,
    pub recovery: RecoveryConfig,
    pub host: HostConfig,
    pub engine: EngineConfig,
    /// Per-step overrides, keyed by step name.
    pub steps: BTreeMap<String, StepConfig>,
    /// The files this configuration was read from, in order.
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct BackupConfig {
    pub paths: Vec<PathBuf>,
    pub exclude: Vec<String>,
    pub keep: u32,
    pub space_margin: u64,
    pub images: bool,
    pub deadline: Duration,
    pub cluster_backup: PathBuf,
    /// Pass `--force` to `cluster-backup.sh` (as TALM does): skip its "operator progressing"
    /// checks, which fail while the API is unreachable, and mark the snapshot possibly dirty.
    pub cluster_backup_force: bool,
    pub machine_config: PathBuf,
    pub undeploy_old: bool,
    pub require_separate_mount: bool,
    pub workers: usize,
}

#[derive(Debug, Clone)]
pub struct RecoveryConfig {
    pub cluster_restore: PathBuf,
    pub containers: Vec<String>,
    pub container_timeout: Duration,
    pub operators: Vec<String>,
    pub revision_timeout: Duration,
    pub poll_interval: Duration,
    pub undeploy_to_pinned: bool,
    pub reboot_delay: Duration,
    pub boot_attempts: u32,
    /// Switch SELinux to permissive while restoring (set back on every exit path).
    pub permissive: bool,
    /// Fail the recovery when `crictl rmp -fa` or `crio wipe -f` fails (by default their
    /// failure is recorded and the recovery goes on, as upgrade-recovery.sh does).
    pub strict_wipe: bool,
}

#[derive(Debug, Clone)]
pub struct HostConfig {
    pub systemd: bool,
    pub ostree: bool,
    pub cluster: bool,
    pub sysroot: PathBuf,
    /// Where selinuxfs is mounted (its `enforce` file switches the mode).
    pub selinuxfs: PathBuf,
    /// A node-exporter textfile written after every run; none by default.
    pub metrics_textfile: Option<PathBuf>,
    pub kubelet_unit: String,
    pub crio_unit: String,
    pub kubeconfig: PathBuf,
    pub crictl: PathBuf,
    pub crio: PathBuf,
    pub oc: PathBuf,
    /// The containers-storage whose images `[backup] images` saves (CRI-O's graphroot).
    pub container_storage: PathBuf,
    pub ostree_cli: PathBuf,
    pub command_timeout: Duration,
    pub transaction_timeout: Duration,
    pub job_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub step_timeout: Duration,
    pub step_retries: u32,
    pub retry_delay: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct StepConfig {
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
}

/// Per-step limits after applying the `[steps.NAME]` override to the `[engine]` defaults.
#[derive(Debug, Clone, Copy)]
pub struct StepLimits {
    pub timeout: Duration,
    pub retries: u32,
    pub retry_delay: Duration,
}

pub(crate) const DEFAULT_CONTAINERS: [&str; 5] = [
    "etcd",
    "etcd-operator",
    "kube-apiserver-operator",
    "kube-controller-manager-operator",
    "kube-scheduler-operator-container",
];
pub(crate) const DEFAULT_OPERATORS: [&str; 4] = [
    "etcd",
    "kubeapiserver",
    "kubecontrollermanager",
    "kubescheduler",
];

impl Config {
    /// Load from the standard locations (or the one `--config` file).
    pub fn load(source: &ConfigSource) -> Result<Config, ConfigError> {
        let files = config_files(source)?;
        let mut merged = Fragment::default();
        for file in &files {
            merged.merge(sources::read_fragment(file)?);
        }
        Config::from_fragment(merged, files)
    }

    /// Parse one TOML text (used by tests).
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let fragment = sources::parse_fragment(text, origin)?;
        Config::from_fragment(fragment, vec![origin.to_path_buf()])
    }

    fn from_fragment(f: Fragment, files: Vec<PathBuf>) -> Result<Config, ConfigError> {
        let origin = if files.is_empty() {
            "built-in defaults".to_string()
        } else {
            files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            origin: origin.clone(),
            key: key.to_string(),
            message,
        };
        let abs = |key: &str, p: PathBuf| -> Result<PathBuf, ConfigError> {
            if p.is_absolute() {
                Ok(p)
            } else {
                Err(invalid(
                    key,
                    format!("`{}` must be an absolute path", p.display()),
                ))
            }
        };
        let secs =
            |s: Option<units::Seconds>, d: u64| s.map(|s| s.0).unwrap_or(Duration::from_secs(d));

        let b = f.backup.unwrap_or_default();
        let r = f.recovery.unwrap_or_default();
        let h = f.host.unwrap_or_default();
        let e = f.engine.unwrap_or_default();

        let mut paths = Vec::new();
        for p in b.paths.unwrap_or_else(|| {
            ["/etc", "/usr/local", "/var/lib/kubelet"]
                .iter()
                .map(PathBuf::from)
                .collect()
        }) {
            paths.push(abs("backup.paths", p)?);
        }
        for (i, a) in paths.iter().enumerate() {
            for b in &paths[i + 1..] {
                if a.starts_with(b) || b.starts_with(a) {
                    return Err(invalid(
                        "backup.paths",
                        format!("`{}` and `{}` overlap", a.display(), b.display()),
                    ));
                }
            }
            if a == Path::new("/") {
                return Err(invalid(
                    "backup.paths",
                    "`/` cannot be backed up as a tree".into(),
                ));
            }
        }
        let keep = b.keep.unwrap_or(2);
        if keep == 0 {
            return Err(invalid("backup.keep", "must be at least 1".into()));
        }
        let exclude = b.exclude.unwrap_or_default();
        for pat in &exclude {
            if !pat.starts_with('/') {
                return Err(invalid(
                    "backup.exclude",
                    format!("`{pat}` must be an absolute path or pattern"),
                ));
            }
            globset::Glob::new(pat).map_err(|e| invalid("backup.exclude", e.to_string()))?;
        }
        let workers = b.workers.unwrap_or(2);
        if workers == 0 || workers > 64 {
            return Err(invalid("backup.workers", "must be between 1 and 64".into()));
        }
        let boot_attempts = r.boot_attempts.unwrap_or(3);
        if boot_attempts == 0 {
            return Err(invalid(
                "recovery.boot_attempts",
                "must be at least 1".into(),
            ));
        }

        let mut steps = BTreeMap::new();
        for (name, s) in f.steps.unwrap_or_default() {
            steps.insert(
                name,
                StepConfig {
                    timeout: s.timeout.map(|t| t.0),
                    retries: s.retries,
                },
            );
        }

        let cfg = Config {
            root: abs("root", f.root.unwrap_or_else(|| PathBuf::from("/")))?,
            state_dir: abs(
                "state_dir",
                f.state_dir.unwrap_or_else(|| PathBuf::from("/var/recovery")),
            )?,
            backup: BackupConfig {
                paths,
                exclude,
                keep,
                space_margin: b.space_margin.map(|b| b.0).unwrap_or(10 << 30),
                images: b.images.unwrap_or(false),
                deadline: secs(b.deadline, 480),
                cluster_backup: abs(
                    "backup.cluster_backup",
                    b.cluster_backup
                        .unwrap_or_else(|| "/usr/local/bin/cluster-backup.sh".into()),
                )?,
                machine_config: abs(
                    "backup.machine_config",
                    b.machine_config
                        .unwrap_or_else(|| "/etc/machine-config-daemon/currentconfig".into()),
                )?,
                cluster_backup_force: b.cluster_backup_force.unwrap_or(true),
                undeploy_old: b.undeploy_old.unwrap_or(false),
                require_separate_mount: b.require_separate_mount.unwrap_or(false),
                workers,
            },
            recovery: RecoveryConfig {
                cluster_restore: abs(
                    "recovery.cluster_restore",
                    r.cluster_restore
                        .unwrap_or_else(|| "/usr/local/bin/cluster-restore.sh".into()),
                )?,
                containers: r
                    .containers
                    .unwrap_or_else(|| DEFAULT_CONTAINERS.iter().map(|s| s.to_string()).collect()),
                container_timeout: secs(r.container_timeout, 1200),
                operators: r
                    .operators
                    .unwrap_or_else(|| DEFAULT_OPERATORS.iter().map(|s| s.to_string()).collect()),
                revision_timeout: secs(r.revision_timeout, 1200),
                poll_interval: secs(r.poll_interval, 5),
                undeploy_to_pinned: r.undeploy_to_pinned.unwrap_or(false),
                reboot_delay: secs(r.reboot_delay, 0),
                boot_attempts,
                permissive: r.permissive.unwrap_or(false),
                strict_wipe: r.strict_wipe.unwrap_or(false),
            },
            host: HostConfig {
                systemd: h.systemd.unwrap_or(true),
                ostree: h.ostree.unwrap_or(true),
                cluster: h.cluster.unwrap_or(true),
                sysroot: abs("host.sysroot", h.sysroot.unwrap_or_else(|| "/".into()))?,
                selinuxfs: abs(
                    "host.selinuxfs",
                    h.selinuxfs.unwrap_or_else(|| "/sys/fs/selinux".into()),
                )?,
                metrics_textfile: h
                    .metrics_textfile
                    .map(|p| abs("host.metrics_textfile", p))
                    .transpose()?,
                kubelet_unit: h.kubelet_unit.unwrap_or_else(|| "kubelet.service".into()),
                crio_unit: h.crio_unit.unwrap_or_else(|| "crio.service".into()),
                kubeconfig: abs(
                    "host.kubeconfig",
                    h.kubeconfig.unwrap_or_else(|| {
                        "/etc/kubernetes/static-pod-resources/kube-apiserver-certs/secrets/node-kubeconfigs/localhost.kubeconfig".into()
                    }),
                )?,
                crictl: h.crictl.unwrap_or_else(|| "crictl".into()),
                crio: h.crio.unwrap_or_else(|| "crio".into()),
                oc: h.oc.unwrap_or_else(|| "oc".into()),
                container_storage: abs(
                    "host.container_storage",
                    h.container_storage
                        .unwrap_or_else(|| "/var/lib/containers/storage".into()),
                )?,
                ostree_cli: h.ostree_cli.unwrap_or_else(|| "ostree".into()),
                command_timeout: secs(h.command_timeout, 600),
                transaction_timeout: secs(h.transaction_timeout, 600),
                job_timeout: secs(h.job_timeout, 300),
            },
            engine: EngineConfig {
                step_timeout: secs(e.step_timeout, 3600),
                step_retries: e.step_retries.unwrap_or(0),
                retry_delay: secs(e.retry_delay, 5),
            },
            steps,
            files,
        };
        if cfg.state_dir == Path::new("/") {
            return Err(invalid("state_dir", "cannot be `/`".into()));
        }
        for p in &cfg.backup.paths {
            if cfg.state_dir.starts_with(p) {
                return Err(invalid(
                    "state_dir",
                    format!(
                        "`{}` lies inside the backed-up tree `{}`",
                        cfg.state_dir.display(),
                        p.display()
                    ),
                ));
            }
        }
        Ok(cfg)
    }

    /// Resolve a host path (as seen on the node, e.g. `/etc`) beneath `root`.
    pub fn host_path(&self, host: impl AsRef<Path>) -> PathBuf {
        under_root(&self.root, host.as_ref())
    }

    /// The state directory on this machine (`root` + `state_dir`).
    pub fn state_path(&self) -> PathBuf {
        self.host_path(&self.state_dir)
    }

    /// The journal, in the state directory.
    pub(crate) fn journal_path(&self) -> PathBuf {
        self.state_path().join("journal.db")
    }

    /// The limits of one step: the `[steps.NAME]` override, else the `[engine]` defaults.
    pub fn step_limits(&self, step: &str) -> StepLimits {
        let o = self.steps.get(step);
        StepLimits {
            timeout: o
                .and_then(|s| s.timeout)
                .unwrap_or(self.engine.step_timeout),
            retries: o
                .and_then(|s| s.retries)
                .unwrap_or(self.engine.step_retries),
            retry_delay: self.engine.retry_delay,
        }
    }

    /// Check that every `[steps.NAME]` names a step that exists in some plan.
    pub fn check_step_names(&self, known: &[&str]) -> Result<(), ConfigError> {
        for name in self.steps.keys() {
            if !known.contains(&name.as_str()) {
                let mut known: Vec<_> = known.to_vec();
                known.sort();
                known.dedup();
                return Err(ConfigError::Invalid {
                    origin: self
                        .files
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    key: format!("steps.{name}"),
                    message: format!(
                        "no step is called `{name}`; known steps: {}",
                        known.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Join a host path beneath a root, ignoring the host path's leading `/`.
pub(crate) fn under_root(root: &Path, host: &Path) -> PathBuf {
    let rel = host.strip_prefix("/").unwrap_or(host);
    if rel.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::from_fragment(Fragment::default(), Vec::new()).expect("built-in defaults are valid")
    }
}
