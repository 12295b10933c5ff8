//! One configuration file as written: every key optional, unknown keys rejected.
//!
//! Fragments are merged in order (later files win key by key) and then validated into
//! [`super::Config`]. Keeping the on-disk shape separate from the validated settings lets a
//! drop-in change a single key without restating the rest.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::units::{Bytes, Seconds};

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fragment {
    pub root: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub backup: Option<BackupFragment>,
    pub recovery: Option<RecoveryFragment>,
    pub host: Option<HostFragment>,
    pub engine: Option<EngineFragment>,
    pub steps: Option<BTreeMap<String, StepFragment>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupFragment {
    pub paths: Option<Vec<PathBuf>>,
    pub exclude: Option<Vec<String>>,
    pub keep: Option<u32>,
    pub space_margin: Option<Bytes>,
    pub images: Option<bool>,
    pub deadline: Option<Seconds>,
    pub cluster_backup: Option<PathBuf>,
    pub machine_config: Option<PathBuf>,
    pub undeploy_old: Option<bool>,
    pub require_separate_mount: Option<bool>,
    pub workers: Option<usize>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryFragment {
    pub cluster_restore: Option<PathBuf>,
    pub containers: Option<Vec<String>>,
    pub container_timeout: Option<Seconds>,
    pub operators: Option<Vec<String>>,
    pub revision_timeout: Option<Seconds>,
    pub poll_interval: Option<Seconds>,
    pub undeploy_to_pinned: Option<bool>,
    pub reboot_delay: Option<Seconds>,
    pub boot_attempts: Option<u32>,
    pub permissive: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFragment {
    pub systemd: Option<bool>,
    pub ostree: Option<bool>,
    pub cluster: Option<bool>,
    pub sysroot: Option<PathBuf>,
    pub selinuxfs: Option<PathBuf>,
    pub kubelet_unit: Option<String>,
    pub crio_unit: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub crictl: Option<PathBuf>,
    pub crio: Option<PathBuf>,
    pub oc: Option<PathBuf>,
    pub podman: Option<PathBuf>,
    pub ostree_cli: Option<PathBuf>,
    pub command_timeout: Option<Seconds>,
    pub transaction_timeout: Option<Seconds>,
    pub job_timeout: Option<Seconds>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineFragment {
    pub step_timeout: Option<Seconds>,
    pub step_retries: Option<u32>,
    pub retry_delay: Option<Seconds>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepFragment {
    pub timeout: Option<Seconds>,
    pub retries: Option<u32>,
}

/// Overlay `$b` onto `$a` field by field: a key set in the later file wins.
macro_rules! overlay {
    ($a:expr, $b:expr, [$($f:ident),* $(,)?]) => {
        $( if $b.$f.is_some() { $a.$f = $b.$f; } )*
    };
}

fn merge_section<T: Default>(a: &mut Option<T>, b: Option<T>, f: impl FnOnce(&mut T, T)) {
    if let Some(b) = b {
        f(a.get_or_insert_with(T::default), b);
    }
}

impl Fragment {
    /// Merge `later` over `self`.
    pub fn merge(&mut self, later: Fragment) {
        overlay!(self, later, [root, state_dir]);
        merge_section(&mut self.backup, later.backup, |a, b| {
            overlay!(
                a,
                b,
                [
                    paths,
                    exclude,
                    keep,
                    space_margin,
                    images,
                    deadline,
                    cluster_backup,
                    machine_config,
                    undeploy_old,
                    require_separate_mount,
                    workers
                ]
            );
        });
        merge_section(&mut self.recovery, later.recovery, |a, b| {
            overlay!(
                a,
                b,
                [
                    cluster_restore,
                    containers,
                    container_timeout,
                    operators,
                    revision_timeout,
                    poll_interval,
                    undeploy_to_pinned,
                    reboot_delay,
                    boot_attempts,
                    permissive
                ]
            );
        });
        merge_section(&mut self.host, later.host, |a, b| {
            overlay!(
                a,
                b,
                [
                    systemd,
                    ostree,
                    cluster,
                    sysroot,
                    selinuxfs,
                    kubelet_unit,
                    crio_unit,
                    kubeconfig,
                    crictl,
                    crio,
                    oc,
                    podman,
                    ostree_cli,
                    command_timeout,
                    transaction_timeout
                ]
            );
        });
        merge_section(&mut self.engine, later.engine, |a, b| {
            overlay!(a, b, [step_timeout, step_retries, retry_delay]);
        });
        merge_section(&mut self.steps, later.steps, |a, b| {
            for (name, step) in b {
                let entry = a.entry(name).or_default();
                overlay!(entry, step, [timeout, retries]);
            }
        });
    }
}
