//! `placement` over generated boot orders: whatever the deployments, their pins, a staged
//! upgrade, other OS names and the tools at hand, a plan it returns makes the target boot
//! next and never removes the booted deployment, a pinned one or the target; and it refuses
//! only for the reasons it names.

use proptest::prelude::*;

use super::deployment::{Action, Placement, PlacementError, Tools, placement};
use crate::host::rpmostree::{Deployment, DeploymentRef, Status};

#[derive(Debug, Clone)]
struct Case {
    deployments: Vec<Deployment>,
    target: DeploymentRef,
    tools: Tools,
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..=6)
        .prop_flat_map(|n| {
            (
                proptest::collection::vec((any::<bool>(), any::<bool>()), n),
                0..n,
                any::<bool>(),
                any::<bool>(),
                0..n + 1,
                any::<bool>(),
                any::<bool>(),
            )
        })
        .prop_map(
            |(flags, booted, staged_first, none_booted, target, set_default, undeploy)| {
                let n = flags.len();
                let deployments: Vec<Deployment> = flags
                    .iter()
                    .enumerate()
                    .map(|(i, (other_os, pinned))| {
                        let osname = if *other_os { "other" } else { "os" }.to_string();
                        let checksum = format!("{:064x}", i + 1);
                        Deployment {
                            id: format!("{osname}-{checksum}.0"),
                            osname,
                            checksum,
                            serial: 0,
                            version: None,
                            booted: !none_booted && i == booted,
                            // Only the first deployment can be staged, and never the booted one.
                            staged: staged_first && i == 0 && (none_booted || booted != 0),
                            // ostree refuses to pin a staged deployment.
                            pinned: *pinned
                                && !(staged_first && i == 0 && (none_booted || booted != 0)),
                        }
                    })
                    .collect();
                // One past the end: a deployment the node no longer has.
                let target = match deployments.get(target) {
                    Some(d) => d.key(),
                    None => DeploymentRef {
                        osname: "os".into(),
                        checksum: format!("{:064x}", n + 100),
                        serial: 0,
                    },
                };
                Case {
                    deployments,
                    target,
                    tools: Tools {
                        set_default,
                        undeploy,
                    },
                }
            },
        )
}

/// Apply a plan to the boot order as rpm-ostree and ostree would, checking each action's
/// preconditions on the way; returns the final order.
fn simulate(case: &Case, plan: &Placement) -> Result<Vec<Deployment>, String> {
    let mut list = case.deployments.clone();
    let protected = |d: &Deployment| d.booted || d.pinned || d.key() == case.target;
    for a in &plan.actions {
        match a {
            Action::CleanupPending { osname, removes } => {
                let b = list.iter().position(|d| d.booted).ok_or("no booted")?;
                let goes = |i: usize, d: &Deployment| i < b && d.osname == *osname && !d.pinned;
                let gone: Vec<String> = list
                    .iter()
                    .enumerate()
                    .filter(|(i, d)| goes(*i, d))
                    .map(|(_, d)| d.id.clone())
                    .collect();
                if gone != *removes {
                    return Err(format!(
                        "cleanup says it removes {removes:?}, it removes {gone:?}"
                    ));
                }
                list = list
                    .into_iter()
                    .enumerate()
                    .filter(|(i, d)| !goes(*i, d))
                    .map(|(_, d)| d)
                    .collect();
                if !list.iter().any(|d| d.key() == case.target) {
                    return Err("the cleanup removed the target".into());
                }
            }
            Action::Rollback { osname, to } => {
                // rpm-ostree's rollback_transaction_execute: refused when the OS's pending
                // deployment is staged; without a rollback deployment the booted one goes
                // back on top.
                let st = Status::new(list.clone());
                let (pending, rollback) = st.pending_and_rollback(osname);
                if pending.is_some_and(|p| list[p].staged) {
                    return Err(
                        "rollback with a staged pending deployment (rpm-ostree refuses)".into(),
                    );
                }
                let r = match (rollback, pending) {
                    (Some(r), _) => r,
                    (None, Some(_)) => list.iter().position(|d| d.booted).ok_or("no booted")?,
                    (None, None) => return Err("rollback without a rollback deployment".into()),
                };
                if list[r].id != *to {
                    return Err(format!(
                        "rollback to {to}, but the rollback is {}",
                        list[r].id
                    ));
                }
                let d = list.remove(r);
                list.insert(0, d);
            }
            Action::SetDefault { target } => {
                if !case.tools.set_default {
                    return Err("set-default without the tool".into());
                }
                let i = list.iter().position(|d| d.id == *target).ok_or("no such")?;
                let d = list.remove(i);
                list.insert(0, d);
            }
            Action::Undeploy { id } => {
                if !case.tools.undeploy {
                    return Err("undeploy without undeploy_to_pinned".into());
                }
                let i = list.iter().position(|d| d.id == *id).ok_or("no such")?;
                if protected(&list[i]) {
                    return Err(format!("undeploy of {id}, which must stay"));
                }
                list.remove(i);
            }
        }
    }
    Ok(list)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn a_plan_boots_the_target_and_removes_nothing_it_must_keep(case in case()) {
        let status = Status::new(case.deployments.clone());
        let result = placement(&status, &case.target, case.tools);
        // Pure: the dry run shows what the recovery does.
        prop_assert_eq!(&result, &placement(&status, &case.target, case.tools));
        let booted = case.deployments.iter().find(|d| d.booted);
        let present = case.deployments.iter().any(|d| d.key() == case.target);
        match result {
            Ok(plan) => {
                let booted = booted.expect("a plan needs a booted deployment");
                prop_assert!(present);
                let end = simulate(&case, &plan).map_err(TestCaseError::fail)?;
                prop_assert_eq!(end[0].key(), case.target.clone(), "the target boots next: {:?}", plan);
                for d in case.deployments.iter().filter(|d| d.booted || d.pinned) {
                    prop_assert!(end.iter().any(|e| e.id == d.id), "{} was removed", d.id);
                }
                prop_assert_eq!(plan.reboot, booted.key() != case.target);
            }
            Err(PlacementError::NotBooted) => prop_assert!(booted.is_none()),
            Err(PlacementError::Gone { .. }) => prop_assert!(booted.is_some() && !present),
            Err(e) => {
                // Only without set-default is anything refused once the target is there.
                prop_assert!(booted.is_some() && present && !case.tools.set_default, "{e}");
            }
        }
    }
}
