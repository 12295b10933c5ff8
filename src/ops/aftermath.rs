//! What a cancelled (or stopped) recovery left on the node, read from its journaled steps, and
//! the commands that get out of it. A recovery is not a transaction: cancelled after the
//! restore-files stage, kubelet is disabled and CRI-O's storage wiped, and an operator must be
//! told so, not only "cancelled".

use std::collections::HashSet;

use crate::journal::{StepRecord, StepState};

/// The node's state after the steps of a recovery that got this far, and what to run.
pub(crate) fn describe(steps: &[StepRecord], generation: Option<&str>) -> String {
    // A step counts when its latest attempt is done (or it started: it may have acted).
    let mut done = HashSet::new();
    let mut touched = HashSet::new();
    for s in steps {
        touched.insert(s.name.as_str());
        if s.state == StepState::Done {
            done.insert(s.name.as_str());
        }
    }
    let d = |n: &str| done.contains(n);
    let t = |n: &str| touched.contains(n);
    let mut state = Vec::new();
    let mut commands = Vec::new();
    if d("reboot-after-rollback") || d("check-deployment") && t("reboot-after-rollback") {
        state.push(
            "the OS deployment of the backup boots next (it may differ from the one booted before)"
                .to_string(),
        );
    }
    let restored: Vec<&str> = [
        "restore-usr-local",
        "restore-etc",
        "restore-other-trees",
        "restore-extras",
        "restore-kubelet",
    ]
    .into_iter()
    .filter(|s| t(s))
    .collect();
    if !restored.is_empty() {
        state.push(format!(
            "files were restored from the backup ({})",
            restored.join(", ")
        ));
    }
    let kubelet_back = d("enable-kubelet") && d("restart-kubelet");
    if d("disable-kubelet") && !d("enable-kubelet") {
        state.push("kubelet is stopped and disabled (it does not start at boot)".into());
        commands.push("systemctl enable --now kubelet");
    } else if t("stop-kubelet") && !kubelet_back {
        state.push("kubelet is stopped".into());
        commands.push("systemctl start kubelet");
    }
    if t("stop-crio") && !d("start-crio") {
        state.push("CRI-O is stopped".into());
        commands.insert(0, "systemctl start crio");
    }
    if t("wipe-crio") && !d("wait-containers") {
        state.push(
            "CRI-O's containers and images were wiped: pods start again only when their images can be pulled or loaded".into(),
        );
    }
    if t("cluster-restore") && !d("redeploy-operators") {
        state.push("etcd was being restored from the backup's snapshot".into());
    }
    if state.is_empty() {
        return "nothing on the node was changed".into();
    }
    let again = match generation {
        Some(g) => format!("recoveryctl recover --generation {g}"),
        None => "recoveryctl recover".into(),
    };
    let mut s = format!("node state: {}.", state.join("; "));
    if !commands.is_empty() {
        s.push_str(&format!(
            " To bring the services back: {}.",
            commands.join(" && ")
        ));
    }
    s.push_str(&format!(" To recover after all: {again}."));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, state: StepState) -> StepRecord {
        StepRecord {
            id: 0,
            run: 1,
            seq: 0,
            name: name.into(),
            stage: String::new(),
            state,
            attempt: 1,
            started: String::new(),
            finished: None,
            boot_id: String::new(),
            detail: None,
        }
    }

    #[test]
    fn cancelled_in_the_check_stage_nothing_changed() {
        let steps = [
            step("verify-backup", StepState::Done),
            step("check-identity", StepState::Done),
        ];
        assert_eq!(
            describe(&steps, Some("g1")),
            "nothing on the node was changed"
        );
    }

    #[test]
    fn cancelled_after_restore_files_says_what_is_down_and_how_to_get_out() {
        let mut steps: Vec<StepRecord> = [
            "verify-backup",
            "check-identity",
            "check-deployment",
            "stop-kubelet",
            "remove-pods",
            "stop-crio",
            "wipe-crio",
            "restore-usr-local",
            "restore-etc",
            "restore-other-trees",
            "restore-extras",
            "daemon-reload",
            "disable-kubelet",
        ]
        .iter()
        .map(|n| step(n, StepState::Done))
        .collect();
        steps.push(step("check-next-boot", StepState::Interrupted));
        let s = describe(&steps, Some("g1"));
        assert!(s.contains("kubelet is stopped and disabled"), "{s}");
        assert!(s.contains("CRI-O is stopped"), "{s}");
        assert!(s.contains("wiped"), "{s}");
        assert!(
            s.contains("systemctl start crio && systemctl enable --now kubelet"),
            "{s}"
        );
        assert!(s.contains("recoveryctl recover --generation g1"), "{s}");
    }

    #[test]
    fn cancelled_after_kubelet_is_back_leaves_only_the_restore() {
        let steps: Vec<StepRecord> = [
            "stop-kubelet",
            "stop-crio",
            "wipe-crio",
            "restore-etc",
            "disable-kubelet",
            "restore-kubelet",
            "start-crio",
            "cluster-restore",
            "enable-kubelet",
            "restart-kubelet",
            "restart-crio",
            "wait-containers",
        ]
        .iter()
        .map(|n| step(n, StepState::Done))
        .collect();
        let s = describe(&steps, None);
        assert!(!s.contains("kubelet is stopped"), "{s}");
        assert!(!s.contains("CRI-O is stopped"), "{s}");
        assert!(s.contains("etcd was being restored"), "{s}");
    }
}
