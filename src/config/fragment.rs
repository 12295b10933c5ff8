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
pub(crate) struct Fragment {
    pub root: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub backup: Option<BackupFragment>,
    pub recovery: Option<RecoveryFragment>,
    pub host: Option<HostFragment>,
    pub engine: Option<EngineFragment>,
    pub steps: Option<BTreeMap<String, StepFragment>>,
}

/// Declare a section of a configuration file: every key optional, unknown keys rejected, and an
/// `overlay` that lets a later file win key by key. The field list is written once, so a key
/// cannot be parsed but forgotten when files are merged.
macro_rules! section {
    ($(#[$meta:meta])* $name:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Default, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct $name {
            $(pub $field: Option<$ty>,)*
        }

        impl $name {
            /// Overlay `later` onto `self`: a key set in the later file wins.
            pub(crate) fn overlay(&mut self, later: $name) {
                $(if later.$field.is_some() {
                    self.$field = later.$field;
                })*
            }
        }
    };
}

section!(BackupFragment {
    paths: Vec<PathBuf>,
    exclude: Vec<String>,
    keep: u32,
    space_margin: Bytes,
    images: bool,
    deadline: Seconds,
    cluster_backup: PathBuf,
    cluster_backup_force: bool,
    machine_config: PathBuf,
    undeploy_old: bool,
    require_separate_mount: bool,
    workers: usize,
});

section!(RecoveryFragment {
    cluster_restore: PathBuf,
    containers: Vec<String>,
    container_timeout: Seconds,
    operators: Vec<String>,
    revision_timeout: Seconds,
    poll_interval: Seconds,
    undeploy_to_pinned: bool,
    reboot_delay: Seconds,
    boot_attempts: u32,
    permissive: bool,
    strict_wipe: bool,
});

section!(HostFragment {
    systemd: bool,
    ostree: bool,
    cluster: bool,
    sysroot: PathBuf,
    selinuxfs: PathBuf,
    metrics_textfile: PathBuf,
    kubelet_unit: String,
    crio_unit: String,
    kubeconfig: PathBuf,
    crictl: PathBuf,
    crio: PathBuf,
    oc: PathBuf,
    container_storage: PathBuf,
    ostree_cli: PathBuf,
    command_timeout: Seconds,
    transaction_timeout: Seconds,
    job_timeout: Seconds,
});

section!(EngineFragment {
    step_timeout: Seconds,
    step_retries: u32,
    retry_delay: Seconds,
});

section!(StepFragment {
    timeout: Seconds,
    retries: u32,
});

fn merge_section<T: Default>(a: &mut Option<T>, b: Option<T>, f: impl FnOnce(&mut T, T)) {
    if let Some(b) = b {
        f(a.get_or_insert_with(T::default), b);
    }
}

impl Fragment {
    /// Merge `later` over `self`.
    pub(crate) fn merge(&mut self, later: Fragment) {
        if later.root.is_some() {
            self.root = later.root;
        }
        if later.state_dir.is_some() {
            self.state_dir = later.state_dir;
        }
        merge_section(&mut self.backup, later.backup, BackupFragment::overlay);
        merge_section(
            &mut self.recovery,
            later.recovery,
            RecoveryFragment::overlay,
        );
        merge_section(&mut self.host, later.host, HostFragment::overlay);
        merge_section(&mut self.engine, later.engine, EngineFragment::overlay);
        merge_section(&mut self.steps, later.steps, |a, b| {
            for (name, step) in b {
                a.entry(name).or_default().overlay(step);
            }
        });
    }
}
