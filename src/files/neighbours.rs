//! Who else writes to the state directory. TALM's backup-agent (`launchBackup` in
//! openshift-kni/cluster-group-upgrades-operator, `recovery/cmd/launchBackup.go`) deletes
//! everything under its backup path before it backs up, then writes `upgrade-recovery.sh`
//! and the script's layout (`cluster/`, `etc/`, `usrlocal/`, `kubelet/`, `etc.exclude.list`,
//! `extras.tgz`) and, during a recovery, `progress`. With the default path that is
//! `/var/recovery`: recoveryd's journal, objects and generations would be deleted without a
//! word at TALM's next backup. So recoveryd refuses to share the directory.

use std::path::Path;

/// What TALM's backup leaves at the top of its backup path.
const TALM_ARTEFACTS: &[&str] = &[
    "upgrade-recovery.sh",
    "progress",
    "etc.exclude.list",
    "extras.tgz",
    "usrlocal",
    "kubelet",
    "etc",
    "cluster",
];

/// TALM's artefacts present in `state_dir`, by name.
pub(crate) fn talm_artefacts(state_dir: &Path) -> Vec<&'static str> {
    TALM_ARTEFACTS
        .iter()
        .copied()
        .filter(|name| state_dir.join(name).symlink_metadata().is_ok())
        .collect()
}

/// Why recoveryd will not back up into `state_dir`, if TALM's backup lives there too.
pub(crate) fn shared_with_talm(state_dir: &Path) -> Option<String> {
    let found = talm_artefacts(state_dir);
    if found.is_empty() {
        return None;
    }
    Some(format!(
        "{} also holds TALM's backup ({}): TALM's backup-agent deletes everything there before \
         it backs up, recoveryd's generations and journal included. Let recoveryd take the \
         backup (backup: false in the ClusterGroupUpgrade; see docs/openshift.md) and remove \
         TALM's files, or give recoveryd another state_dir",
        state_dir.display(),
        found.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn talm_artefacts_are_named_and_recoveryds_own_files_are_not() {
        let d = tempfile::tempdir().unwrap();
        for own in ["journal.db", "recoveryd.lock", "objects", "generations"] {
            std::fs::create_dir_all(d.path().join(own)).unwrap();
        }
        assert_eq!(super::shared_with_talm(d.path()), None);
        std::fs::write(d.path().join("upgrade-recovery.sh"), "#!/bin/bash\n").unwrap();
        std::fs::create_dir(d.path().join("usrlocal")).unwrap();
        let why = super::shared_with_talm(d.path()).unwrap();
        assert!(why.contains("(upgrade-recovery.sh, usrlocal)"), "{why}");
    }
}
