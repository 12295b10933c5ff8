//! Steps about the OS deployment: at backup time, pin the booted one (and, at prune time, unpin
//! what recoveryd pinned and no kept generation needs); at recovery time, make the node boot the
//! generation's own deployment and no other, and check after every reboot that it did.
//!
//! A deployment is identified by its OS name, checksum and serial ([`DeploymentRef`]); the
//! generation records the one it was taken on. [`placement`] decides, from rpm-ostree's view of
//! the node, what makes that deployment boot next; the table is in `docs/architecture.md`.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;

use super::context::PlanContext;
use super::vars::{ROLLED_BACK, TARGET};
use crate::engine::{Integration, Json, Outcome, PreviewContext, Step, StepContext};
use crate::files::identity::{DeploymentIdentity, RecoverydIdentity};
use crate::files::store::GenerationInfo;
use crate::host::ostree::{Ostree, OstreeDeployment};
use crate::host::rpmostree::{Deployment, DeploymentRef, Status};

const OSTREE: &[Integration] = &[Integration::Ostree];

/// The deployment a generation was taken on, as its identity records it.
pub(crate) fn generation_deployment(info: &GenerationInfo) -> Option<DeploymentRef> {
    let d = info.identity.deployment.as_ref()?;
    Some(DeploymentRef {
        osname: d.osname.clone(),
        checksum: d.checksum.clone(),
        serial: d.serial,
    })
}

/// The run's target deployment, once the deployment check recorded it.
pub(crate) fn target_of(cx: &StepContext) -> Result<Option<DeploymentRef>> {
    Ok(cx.get(&TARGET)?.map(|j| j.0))
}

/// Where a deployment sits in `ostree admin status` (the index `pin` and `undeploy` take).
fn ostree_index(list: &[OstreeDeployment], key: &DeploymentRef) -> Result<usize> {
    list.iter()
        .find(|o| o.key() == *key)
        .map(|o| o.index)
        .with_context(|| format!("ostree does not list the deployment {key}"))
}

/// Undeploy one deployment, found again by identity (indexes move); never a pinned or the
/// booted one (`ostree admin undeploy` itself would remove a pinned one without a word).
async fn undeploy(ostree: &dyn Ostree, key: &DeploymentRef) -> Result<String> {
    let list = ostree.deployments().await?;
    let i = ostree_index(&list, key)?;
    let d = &list[i];
    anyhow::ensure!(
        !d.pinned && !d.booted,
        "refusing to undeploy {key}: it is {}",
        if d.booted { "booted" } else { "pinned" }
    );
    ostree.undeploy(i).await
}

/// What recoveryd records of itself in a generation: whose journal the generation's OS can
/// read, for the check before a recovery crosses versions.
pub(crate) fn recoveryd_identity() -> RecoverydIdentity {
    RecoverydIdentity {
        version: env!("CARGO_PKG_VERSION").into(),
        journal_format: crate::journal::schema::CURRENT,
    }
}

/// Pin the booted deployment so it stays available as the rollback target; optionally remove
/// older unpinned deployments (never the booted one, never a pinned one).
pub(crate) struct PinDeployment(pub Arc<PlanContext>);

#[async_trait]
impl Step for PinDeployment {
    fn name(&self) -> &'static str {
        "pin-deployment"
    }
    fn stage(&self) -> &'static str {
        "pin"
    }
    fn needs(&self) -> &'static [Integration] {
        OSTREE
    }
    fn describe(&self) -> String {
        let mut s = "pin the booted ostree deployment".to_string();
        if self.0.config.backup.undeploy_old {
            s.push_str(" and remove older unpinned deployments");
        }
        s
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let host = &self.0.host;
        let status = host.rpm_ostree.status().await?;
        let booted = status
            .booted()
            .context("rpm-ostree reports no booted deployment")?
            .clone();
        let key = booted.key();
        let list = host.ostree.deployments().await?;
        let index = ostree_index(&list, &key)?;
        let pin_key = (key.osname.as_str(), key.checksum.as_str(), key.serial);
        let pinned = if !list[index].pinned {
            // Journaled before the side effect: a crash after the pin still knows it is ours.
            cx.journal.record_pin(pin_key, cx.run)?;
            host.ostree.pin(index).await?
        } else if let Some(run) = cx.journal.active_pin(pin_key)? {
            format!("{} was already pinned by recoveryd (run {run})", booted.id)
        } else {
            format!(
                "{} was already pinned, not by recoveryd: that pin is never removed by recoveryd",
                booted.id
            )
        };
        let mut detail = vec![pinned];
        if self.0.config.backup.undeploy_old {
            let list = host.ostree.deployments().await?;
            let old: Vec<DeploymentRef> = list
                .iter()
                .filter(|d| !d.pinned && !d.booted && d.key() != key)
                .map(OstreeDeployment::key)
                .collect();
            for d in old {
                detail.push(undeploy(host.ostree.as_ref(), &d).await?);
            }
        }
        PlanContext::record_identity(cx, |id| {
            id.deployment = Some(DeploymentIdentity {
                id: booted.id.clone(),
                osname: booted.osname.clone(),
                checksum: booted.checksum.clone(),
                serial: booted.serial,
                version: booted.version.clone(),
            })
        })?;
        Ok(Outcome::Done(detail.join("; ")))
    }
}

/// Unpin the deployments recoveryd pinned for generations that are gone, when no kept
/// generation was taken on them (called by the prune step, which holds the run lock).
pub(crate) async fn unpin_unused(p: &PlanContext, cx: &StepContext) -> Result<Vec<String>> {
    if !p.config.host.ostree {
        return Ok(Vec::new());
    }
    let kept: BTreeSet<DeploymentRef> = p
        .store
        .list()?
        .iter()
        .filter_map(|g| generation_deployment(&g.info))
        .collect();
    let mut done = Vec::new();
    for (osname, checksum, serial) in cx.journal.active_pins()? {
        let key = DeploymentRef {
            osname,
            checksum,
            serial,
        };
        if kept.contains(&key) {
            continue;
        }
        let pin_key = (key.osname.as_str(), key.checksum.as_str(), key.serial);
        let list = p.host.ostree.deployments().await?;
        match list.iter().find(|d| d.key() == key) {
            Some(d) if d.pinned => {
                p.host.ostree.unpin(d.index).await?;
                cx.journal.record_unpin(pin_key)?;
                done.push(format!("unpinned {key}"));
            }
            // Someone unpinned or removed it meanwhile: the pin is gone either way.
            _ => cx.journal.record_unpin(pin_key)?,
        }
    }
    Ok(done)
}

/// One thing to do so that the target deployment boots next, and the real API that does it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// rpm-ostree `Cleanup(["pending-deploy"])` on this OS: removes its unpinned deployments
    /// before the booted one, a staged one included.
    CleanupPending {
        osname: String,
        removes: Vec<String>,
    },
    /// rpm-ostree `Rollback` on this OS: its rollback deployment becomes the first.
    Rollback { osname: String, to: String },
    /// `ostree admin set-default`: the target becomes the first, the others stay.
    SetDefault { target: String },
    /// `ostree admin undeploy` of an unpinned deployment between the booted one and the target.
    Undeploy { id: String },
}

impl Action {
    pub(crate) fn describe(&self) -> String {
        match self {
            Action::CleanupPending { osname, removes } => format!(
                "remove the pending deployment(s) {} of {osname} (rpm-ostree Cleanup pending-deploy)",
                removes.join(", ")
            ),
            Action::Rollback { osname, to } => {
                format!("roll {osname} back to {to} (rpm-ostree Rollback)")
            }
            Action::SetDefault { target } => {
                format!("make {target} the default (ostree admin set-default)")
            }
            Action::Undeploy { id } => {
                format!("remove the deployment {id} (ostree admin undeploy)")
            }
        }
    }
}

/// What makes the target boot next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    /// In order.
    pub actions: Vec<Action>,
    /// The target is not booted: a reboot follows.
    pub reboot: bool,
}

/// What the node can do besides rpm-ostree's rollback and cleanup.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tools {
    /// ostree has `admin set-default` (2023.6 and later).
    pub set_default: bool,
    /// `[recovery] undeploy_to_pinned`: unpinned deployments between the booted one and the
    /// target may be undeployed.
    pub undeploy: bool,
}

/// Why the target cannot be made to boot next; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PlacementError {
    #[error("the node is not booted from an ostree deployment")]
    NotBooted,
    #[error(
        "this node no longer has the deployment {target} (deployments now: {present}); nothing was changed"
    )]
    Gone { target: String, present: String },
    #[error(
        "{target} cannot be made the default: {blocking} would boot before it, and recoveryd removes \
         neither a pinned deployment nor one whose removal would take {target} with it; this ostree \
         has no `admin set-default` (2023.6+). Nothing was changed: choose {target} in the boot menu, \
         or remove what is in the way yourself, then `recoveryctl resume`"
    )]
    PinnedInTheWay { target: String, blocking: String },
    #[error(
        "{target} is not the rollback deployment: {in_the_way} stand between it and the booted \
         deployment, and this ostree has no `admin set-default` (2023.6+). Nothing was changed: set \
         [recovery] undeploy_to_pinned = true to let recoveryd remove them, or remove them with \
         `ostree admin undeploy <index>` (see `ostree admin status`), then `recoveryctl resume`"
    )]
    NeedsUndeploy { target: String, in_the_way: String },
    #[error(
        "{target} belongs to the OS {target_os}, the booted deployment to {booted_os}: rpm-ostree's \
         rollback stays within one OS, and this ostree has no `admin set-default` (2023.6+). Nothing \
         was changed: choose {target} in the boot menu, then `recoveryctl resume`"
    )]
    OtherOs {
        target: String,
        target_os: String,
        booted_os: String,
    },
}

/// `Cleanup(pending-deploy)` of `os` on a simulated list: its unpinned deployments before the
/// booted one go (`rpmostree_syscore_filter_deployments`).
fn without_pending(list: &[Deployment], os: &str) -> Vec<Deployment> {
    let mut found_booted = false;
    list.iter()
        .filter(|d| {
            if d.booted {
                found_booted = true;
                return true;
            }
            found_booted || d.osname != os || d.pinned
        })
        .cloned()
        .collect()
}

/// Decide what makes `target` boot next (see `docs/architecture.md` for the table). Pure: the
/// dry run shows exactly what the recovery will do.
pub(crate) fn placement(
    status: &Status,
    target: &DeploymentRef,
    tools: Tools,
) -> Result<Placement, PlacementError> {
    let booted = status.booted().ok_or(PlacementError::NotBooted)?.clone();
    if status.find(target).is_none() {
        return Err(PlacementError::Gone {
            target: target.to_string(),
            present: status
                .deployments
                .iter()
                .map(Deployment::describe)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let id = target.to_string();
    let mut list = status.deployments.clone();
    let mut actions = Vec::new();
    // Whatever would boot before the target goes the supported way: a staged or pending
    // deployment through rpm-ostree's cleanup (never when that would remove the target), the
    // target itself forward through rpm-ostree's rollback when it is the booted OS's rollback.
    for _ in 0..list.len() + 1 {
        let t = list
            .iter()
            .position(|d| d.key() == *target)
            .expect("present");
        if t == 0 {
            break;
        }
        let first = &list[0];
        let b = list.iter().position(|d| d.booted).expect("booted");
        // Cleaning the first deployment's OS would also remove the target when the target is
        // pending (before the booted one), unpinned and of that OS.
        let removes_target = t < b && list[t].osname == first.osname && !list[t].pinned;
        if b > 0 && !first.pinned && !removes_target {
            let os = first.osname.clone();
            let next = without_pending(&list, &os);
            let removes = list
                .iter()
                .filter(|d| !next.iter().any(|n| n.key() == d.key()))
                .map(|d| d.id.clone())
                .collect();
            actions.push(Action::CleanupPending {
                osname: os,
                removes,
            });
            list = next;
            continue;
        }
        let st = Status::new(list.clone());
        let (pending, rollback) = st.pending_and_rollback(&booted.osname);
        let staged_pending = pending.is_some_and(|i| st.deployments[i].staged);
        if target.osname == booted.osname && rollback == Some(t) && !staged_pending {
            actions.push(Action::Rollback {
                osname: booted.osname.clone(),
                to: id.clone(),
            });
            let d = list.remove(t);
            list.insert(0, d);
            continue;
        }
        break;
    }
    let t = list
        .iter()
        .position(|d| d.key() == *target)
        .expect("present");
    if t != 0 {
        let b = list.iter().position(|d| d.booted).expect("booted");
        if tools.set_default {
            actions.push(Action::SetDefault { target: id.clone() });
        } else if t <= b {
            return Err(PlacementError::PinnedInTheWay {
                target: id,
                blocking: list[..t]
                    .iter()
                    .map(|d| d.id.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        } else if target.osname != booted.osname {
            return Err(PlacementError::OtherOs {
                target: id,
                target_os: target.osname.clone(),
                booted_os: booted.osname.clone(),
            });
        } else {
            let between: Vec<&Deployment> = list[b + 1..t]
                .iter()
                .filter(|d| d.osname == booted.osname)
                .collect();
            let names = || {
                between
                    .iter()
                    .map(|d| d.id.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if let Some(p) = between.iter().find(|d| d.pinned) {
                return Err(PlacementError::PinnedInTheWay {
                    target: id,
                    blocking: p.id.clone(),
                });
            }
            if !tools.undeploy {
                return Err(PlacementError::NeedsUndeploy {
                    target: id,
                    in_the_way: names(),
                });
            }
            for d in &between {
                actions.push(Action::Undeploy { id: d.id.clone() });
            }
            actions.push(Action::Rollback {
                osname: booted.osname.clone(),
                to: id.clone(),
            });
        }
    }
    Ok(Placement {
        actions,
        reboot: booted.key() != *target,
    })
}

/// The deployment a recovery from this generation makes boot: the generation's, or with
/// `--force` the booted one.
async fn choose_target(p: &PlanContext, g: &GenerationInfo, force: bool) -> Result<DeploymentRef> {
    if force {
        let status = p.host.rpm_ostree.status().await?;
        return Ok(status
            .booted()
            .context("rpm-ostree reports no booted deployment")?
            .key());
    }
    generation_deployment(g).with_context(|| {
        format!(
            "generation {} does not record the OS deployment it was taken on (it was taken with \
             [host] ostree = false); nothing was changed. `recoveryctl recover --force` recovers \
             onto the booted deployment",
            g.id
        )
    })
}

async fn tools(p: &PlanContext) -> Result<Tools> {
    Ok(Tools {
        set_default: p.host.ostree.can_set_default().await?,
        undeploy: p.config.recovery.undeploy_to_pinned,
    })
}

/// Carry out one action through the host adapters.
async fn execute(p: &PlanContext, a: &Action, target: &DeploymentRef) -> Result<String> {
    let host = &p.host;
    Ok(match a {
        Action::CleanupPending { osname, .. } => host.rpm_ostree.cleanup_pending(osname).await?,
        Action::Rollback { osname, .. } => host.rpm_ostree.rollback(osname).await?,
        Action::SetDefault { .. } => {
            let list = host.ostree.deployments().await?;
            let i = ostree_index(&list, target)?;
            let out = host.ostree.set_default(i).await?;
            format!("{target} is the default: {out}")
        }
        Action::Undeploy { id } => {
            let status = host.rpm_ostree.status().await?;
            let d = status
                .deployments
                .iter()
                .find(|d| &d.id == id)
                .with_context(|| format!("rpm-ostree no longer lists {id}"))?;
            undeploy(host.ostree.as_ref(), &d.key()).await?
        }
    })
}

/// Make the target boot next: decide, act, and check the result.
async fn make_target_next(
    p: &PlanContext,
    target: &DeploymentRef,
) -> Result<(Placement, Vec<String>)> {
    let status = p.host.rpm_ostree.status().await?;
    let placed = placement(&status, target, tools(p).await?)?;
    let mut done = Vec::new();
    for a in &placed.actions {
        done.push(execute(p, a, target).await.with_context(|| a.describe())?);
    }
    let after = p.host.rpm_ostree.status().await?;
    let first = after.deployments.first().map(Deployment::key);
    anyhow::ensure!(
        first.as_ref() == Some(target),
        "after {}, {} still boots next, not {target}",
        if done.is_empty() {
            "nothing".to_string()
        } else {
            done.join("; ")
        },
        first
            .map(|f| f.to_string())
            .unwrap_or_else(|| "nothing".into())
    );
    Ok((placed, done))
}

/// Make the generation's deployment the one that boots next (see [`placement`]).
pub(crate) struct CheckDeployment(pub Arc<PlanContext>);

#[async_trait]
impl Step for CheckDeployment {
    fn name(&self) -> &'static str {
        "check-deployment"
    }
    fn stage(&self) -> &'static str {
        "check"
    }
    fn needs(&self) -> &'static [Integration] {
        OSTREE
    }
    fn describe(&self) -> String {
        "make the deployment the backup was taken on the one that boots next: rpm-ostree cleanup of a \
         staged or pending deployment, rpm-ostree rollback, or ostree set-default"
            .into()
    }
    async fn preview(&self, pc: &PreviewContext) -> Result<String> {
        let Some(id) = &pc.options.generation else {
            return Ok(self.describe());
        };
        let g = self.0.store.open(id)?;
        let force = pc.options.force;
        let target = choose_target(&self.0, &g.info, force).await?;
        let status = self.0.host.rpm_ostree.status().await?;
        let what = match placement(&status, &target, tools(&self.0).await?) {
            Err(e) => format!("would stop: {e}"),
            Ok(pl) if pl.actions.is_empty() && !pl.reboot => {
                format!("{target} is booted and boots next; nothing to do")
            }
            Ok(pl) => {
                let mut steps: Vec<String> = pl.actions.iter().map(Action::describe).collect();
                if pl.reboot {
                    steps.push(format!("reboot into {target}"));
                }
                format!("would {}", steps.join(", then "))
            }
        };
        let whose = if force {
            "--force: the booted deployment"
        } else {
            "the generation's deployment"
        };
        Ok(format!(
            "{}: target {target} ({whose}); {what}",
            self.describe()
        ))
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let g = self.0.generation_for(cx)?;
        let force = cx.options.force;
        let target = match target_of(cx)? {
            Some(t) => t,
            None => {
                let t = choose_target(&self.0, &g.info, force).await?;
                cx.set(&TARGET, &Json(t.clone()))?;
                t
            }
        };
        if force {
            return Ok(Outcome::Skipped(format!(
                "--force: the deployment check is skipped; the recovery stays on the booted {target}"
            )));
        }
        let (placed, done) = make_target_next(&self.0, &target).await?;
        if placed.reboot {
            cx.set(&ROLLED_BACK, &true)?;
        }
        Ok(Outcome::Done(match (done.is_empty(), placed.reboot) {
            (true, false) => format!("{target} (the generation's deployment) is booted"),
            (true, true) => {
                format!("{target} already boots next (rolled back earlier); a reboot follows")
            }
            (false, reboot) => format!(
                "{}{}",
                done.join("; "),
                if reboot {
                    "; a reboot into it follows"
                } else {
                    ""
                }
            ),
        }))
    }
}

/// Before the recovery's own reboot: nothing may boot instead of the target (an upgrade staged
/// while the recovery ran is removed the supported way).
pub(crate) struct CheckNextBoot(pub Arc<PlanContext>);

#[async_trait]
impl Step for CheckNextBoot {
    fn name(&self) -> &'static str {
        "check-next-boot"
    }
    fn stage(&self) -> &'static str {
        "reboot"
    }
    fn needs(&self) -> &'static [Integration] {
        OSTREE
    }
    fn describe(&self) -> String {
        "make sure the next boot is the recovery's deployment (remove a staged or pending one)"
            .into()
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let Some(target) = target_of(cx)? else {
            return Ok(Outcome::Skipped("no target deployment was recorded".into()));
        };
        let (_, done) = make_target_next(&self.0, &target).await?;
        Ok(Outcome::Done(if done.is_empty() {
            format!("{target} boots next")
        } else {
            format!("{}; {target} boots next", done.join("; "))
        }))
    }
}

/// After a reboot (and whenever a run resumes past the rollback): the node must run the
/// target deployment. Otherwise restoring files would put an old `/etc` onto another OS.
pub(crate) async fn expect_booted(p: &PlanContext, cx: &StepContext) -> Result<String> {
    if !p.config.host.ostree {
        return Ok(String::new());
    }
    let Some(target) = target_of(cx)? else {
        return Ok(String::new());
    };
    let status = p.host.rpm_ostree.status().await?;
    let booted = status
        .booted()
        .context("rpm-ostree reports no booted deployment")?;
    if booted.key() != target {
        let expected = status
            .find(&target)
            .map(|i| status.deployments[i].describe())
            .unwrap_or_else(|| format!("{target} (no longer present)"));
        bail!(
            "the node booted {}, not the recovery's deployment {expected}. The recovery stops here, \
             before it changes anything on this OS. Boot {target} (the boot menu, or \
             `ostree admin set-default`), then run `recoveryctl resume`",
            booted.describe()
        );
    }
    Ok(format!("booted {}", booted.describe()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(os: &str, c: char, booted: bool, pinned: bool, staged: bool) -> Deployment {
        let checksum = c.to_string().repeat(64);
        Deployment {
            id: format!("{os}-{checksum}.0"),
            osname: os.into(),
            checksum,
            serial: 0,
            version: None,
            booted,
            staged,
            pinned,
        }
    }

    fn key(os: &str, c: char) -> DeploymentRef {
        DeploymentRef {
            osname: os.into(),
            checksum: c.to_string().repeat(64),
            serial: 0,
        }
    }

    const PLAIN: Tools = Tools {
        set_default: false,
        undeploy: false,
    };

    fn kinds(p: &Placement) -> Vec<&'static str> {
        p.actions
            .iter()
            .map(|a| match a {
                Action::CleanupPending { .. } => "cleanup",
                Action::Rollback { .. } => "rollback",
                Action::SetDefault { .. } => "set-default",
                Action::Undeploy { .. } => "undeploy",
            })
            .collect()
    }

    /// The table in docs/architecture.md, case by case.
    #[test]
    fn placement_table() {
        let t = key("os", 'a');
        // Booted, nothing before it: nothing to do.
        let s = Status::new(vec![
            dep("os", 'a', true, true, false),
            dep("os", 'b', false, false, false),
        ]);
        let p = placement(&s, &t, PLAIN).unwrap();
        assert_eq!((kinds(&p), p.reboot), (vec![], false));
        // Booted, a staged upgrade first: cleanup, no reboot needed for it.
        let s = Status::new(vec![
            dep("os", 'c', false, false, true),
            dep("os", 'a', true, true, false),
        ]);
        let p = placement(&s, &t, PLAIN).unwrap();
        assert_eq!((kinds(&p), p.reboot), (vec!["cleanup"], false));
        // The rollback target: rollback, then reboot.
        let s = Status::new(vec![
            dep("os", 'b', true, false, false),
            dep("os", 'a', false, true, false),
        ]);
        let p = placement(&s, &t, PLAIN).unwrap();
        assert_eq!((kinds(&p), p.reboot), (vec!["rollback"], true));
        // A staged deployment in front: cleanup first (rpm-ostree refuses otherwise), then rollback.
        let s = Status::new(vec![
            dep("os", 'c', false, false, true),
            dep("os", 'b', true, false, false),
            dep("os", 'a', false, true, false),
        ]);
        assert_eq!(
            kinds(&placement(&s, &t, PLAIN).unwrap()),
            ["cleanup", "rollback"]
        );
        // Already first, not booted: only the reboot.
        let s = Status::new(vec![
            dep("os", 'a', false, true, false),
            dep("os", 'b', true, false, false),
        ]);
        let p = placement(&s, &t, PLAIN).unwrap();
        assert_eq!((kinds(&p), p.reboot), (vec![], true));
        // Another OS's deployment in between does not hide the rollback.
        let s = Status::new(vec![
            dep("os", 'b', true, false, false),
            dep("other", 'x', false, true, false),
            dep("os", 'a', false, true, false),
        ]);
        assert_eq!(kinds(&placement(&s, &t, PLAIN).unwrap()), ["rollback"]);
        // Deeper: refused without set-default and undeploy, set-default when there is one,
        // undeploy of the unpinned one in between when allowed.
        let deeper = Status::new(vec![
            dep("os", 'c', true, false, false),
            dep("os", 'b', false, false, false),
            dep("os", 'a', false, true, false),
        ]);
        assert!(matches!(
            placement(&deeper, &t, PLAIN),
            Err(PlacementError::NeedsUndeploy { .. })
        ));
        let with_sd = Tools {
            set_default: true,
            undeploy: false,
        };
        assert_eq!(
            kinds(&placement(&deeper, &t, with_sd).unwrap()),
            ["set-default"]
        );
        let with_ud = Tools {
            set_default: false,
            undeploy: true,
        };
        assert_eq!(
            kinds(&placement(&deeper, &t, with_ud).unwrap()),
            ["undeploy", "rollback"]
        );
        // A pinned one in between is never undeployed.
        let pinned_between = Status::new(vec![
            dep("os", 'c', true, false, false),
            dep("os", 'b', false, true, false),
            dep("os", 'a', false, true, false),
        ]);
        assert!(matches!(
            placement(&pinned_between, &t, with_ud),
            Err(PlacementError::PinnedInTheWay { .. })
        ));
        // Another OS: only set-default can.
        let other = Status::new(vec![
            dep("x", 'c', true, false, false),
            dep("os", 'a', false, true, false),
        ]);
        assert!(matches!(
            placement(&other, &t, PLAIN),
            Err(PlacementError::OtherOs { .. })
        ));
        assert_eq!(
            kinds(&placement(&other, &t, with_sd).unwrap()),
            ["set-default"]
        );
        // Gone.
        let gone = Status::new(vec![dep("os", 'c', true, false, false)]);
        assert!(matches!(
            placement(&gone, &t, with_sd),
            Err(PlacementError::Gone { .. })
        ));
        // The target itself pending and unpinned: never cleaned away with the staged one.
        let s = Status::new(vec![
            dep("os", 'c', false, false, true),
            dep("os", 'a', false, false, false),
            dep("os", 'b', true, false, false),
        ]);
        let r = placement(&s, &t, PLAIN);
        assert!(
            matches!(r, Err(PlacementError::PinnedInTheWay { .. })),
            "{r:?}"
        );
        assert_eq!(kinds(&placement(&s, &t, with_sd).unwrap()), ["set-default"]);
    }
}
