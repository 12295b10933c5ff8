//! Steps about the OS deployment: pin the booted one at backup time, and at recovery time make
//! the pinned one boot again.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;

use super::context::PlanContext;
use crate::engine::{Outcome, PreviewContext, Step, StepContext};
use crate::host::ostree::{Ostree, OstreeDeployment};
use crate::host::rpmostree::{Deployment, Status};

fn ostree_off(cx: &PlanContext) -> Option<Outcome> {
    (!cx.config.host.ostree).then(|| Outcome::Skipped("[host] ostree = false".into()))
}

/// Where rpm-ostree's deployment sits in `ostree admin status` (the index `pin` and
/// `undeploy` take).
fn ostree_index(list: &[OstreeDeployment], d: &Deployment) -> Result<usize> {
    list.iter()
        .find(|o| o.checksum == d.checksum && o.serial as i32 == d.serial)
        .map(|o| o.index)
        .with_context(|| {
            format!(
                "ostree does not list rpm-ostree's deployment {}",
                d.csum_serial()
            )
        })
}

/// Undeploy these deployments of `list`, highest index first so that the indexes of the others
/// do not move; never a pinned or the booted one.
async fn undeploy(
    ostree: &dyn Ostree,
    list: &[OstreeDeployment],
    mut indexes: Vec<usize>,
) -> Result<Vec<String>> {
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    indexes.dedup();
    let mut done = Vec::new();
    for i in indexes {
        let d = list
            .iter()
            .find(|d| d.index == i)
            .with_context(|| format!("ostree lists no deployment {i}"))?;
        anyhow::ensure!(
            !d.pinned && !d.booted,
            "refusing to undeploy deployment {i} ({}): it is {}",
            d.csum_serial(),
            if d.booted { "booted" } else { "pinned" }
        );
        done.push(ostree.undeploy(i).await?);
    }
    Ok(done)
}

/// Pin the booted deployment so it stays available as the rollback target; optionally remove
/// older unpinned deployments (never the booted one, never a pinned one).
pub struct PinDeployment(pub Arc<PlanContext>);

#[async_trait]
impl Step for PinDeployment {
    fn name(&self) -> &'static str {
        "pin-deployment"
    }
    fn stage(&self) -> &'static str {
        "pin"
    }
    fn describe(&self) -> String {
        let mut s = "pin the booted ostree deployment".to_string();
        if self.0.config.backup.undeploy_old {
            s.push_str(" and remove older unpinned deployments");
        }
        s
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        if let Some(skip) = ostree_off(&self.0) {
            return Ok(skip);
        }
        let host = &self.0.host;
        let status = host.rpm_ostree.status().await?;
        let booted = status
            .booted()
            .context("rpm-ostree reports no booted deployment")?
            .clone();
        let list = host.ostree.deployments().await?;
        let index = ostree_index(&list, &booted)?;
        let pinned = if list[index].pinned {
            format!("{} was already pinned", booted.id)
        } else {
            host.ostree.pin(index).await?
        };
        let mut detail = vec![pinned];
        if self.0.config.backup.undeploy_old {
            let list = host.ostree.deployments().await?;
            let old = list
                .iter()
                .filter(|d| !d.pinned && !d.booted && d.csum_serial() != booted.csum_serial())
                .map(|d| d.index)
                .collect();
            detail.extend(undeploy(host.ostree.as_ref(), &list, old).await?);
        }
        PlanContext::add_identity(
            cx,
            "deployment",
            serde_json::json!({
                "id": booted.id, "osname": booted.osname, "checksum": booted.checksum,
                "serial": booted.serial, "version": booted.version,
            }),
        )?;
        Ok(Outcome::Done(detail.join("; ")))
    }
}

/// What the deployment check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Placement {
    /// The pinned deployment is booted: nothing to do.
    Booted,
    /// The pinned deployment is already the default for the next boot (a rollback happened).
    Default,
    /// The pinned deployment is the rollback target.
    Rollback,
    /// The pinned deployment is further down; these deployments are in the way.
    Below { in_the_way: Vec<String> },
    /// Nothing is pinned.
    NonePinned,
}

pub fn placement(status: &Status) -> Placement {
    if status.booted().is_some_and(|b| b.pinned) {
        return Placement::Booted;
    }
    let Some(p) = status.deployments.iter().position(|d| d.pinned) else {
        return Placement::NonePinned;
    };
    if p == 0 {
        return Placement::Default;
    }
    if Some(p) == status.rollback {
        return Placement::Rollback;
    }
    let from = status.booted.map(|b| b + 1).unwrap_or(0).min(p);
    Placement::Below {
        in_the_way: status.deployments[from..p]
            .iter()
            .map(|d| d.id.clone())
            .collect(),
    }
}

/// Make the pinned deployment the one that boots: nothing if it is booted, an rpm-ostree
/// rollback if it is the rollback target, and otherwise a clear error (or, with
/// `[recovery] undeploy_to_pinned`, remove the deployments in between, then roll back).
pub struct CheckDeployment(pub Arc<PlanContext>);

pub const ROLLED_BACK: &str = "rolled-back";

#[async_trait]
impl Step for CheckDeployment {
    fn name(&self) -> &'static str {
        "check-deployment"
    }
    fn stage(&self) -> &'static str {
        "check"
    }
    fn describe(&self) -> String {
        "check that the pinned deployment is booted; roll back to it through rpm-ostree if it is the rollback target".into()
    }
    async fn preview(&self, pc: &PreviewContext) -> Result<String> {
        if !self.0.config.host.ostree {
            return Ok(format!(
                "{} (skipped: [host] ostree = false)",
                self.describe()
            ));
        }
        if pc.option_bool("force") {
            return Ok(format!("{} (skipped: --force)", self.describe()));
        }
        let status = self.0.host.rpm_ostree.status().await?;
        Ok(format!(
            "{}: {}",
            self.describe(),
            match placement(&status) {
                Placement::Booted => "the pinned deployment is booted; nothing to do".to_string(),
                Placement::Default =>
                    "already rolled back; the pinned deployment boots next".into(),
                Placement::Rollback => format!(
                    "would roll back from {} to the pinned {}, then reboot",
                    status.booted().map(|d| d.id.as_str()).unwrap_or("?"),
                    status.rollback().map(|d| d.id.as_str()).unwrap_or("?")
                ),
                Placement::Below { in_the_way } => format!(
                    "the pinned deployment is below {}; {}",
                    in_the_way.join(", "),
                    if self.0.config.recovery.undeploy_to_pinned {
                        "would undeploy them and roll back"
                    } else {
                        "would stop with an error"
                    }
                ),
                Placement::NonePinned => "no deployment is pinned; would stop with an error".into(),
            }
        ))
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        if let Some(skip) = ostree_off(&self.0) {
            return Ok(skip);
        }
        if cx.option_bool("force") {
            return Ok(Outcome::Skipped("--force: deployment check skipped".into()));
        }
        let host = &self.0.host;
        let mut status = host.rpm_ostree.status().await?;
        let booted = status.booted().map(|d| d.id.clone()).unwrap_or_default();
        match placement(&status) {
            Placement::Booted => {
                return Ok(Outcome::Done(format!(
                    "the pinned deployment {booted} is booted"
                )));
            }
            Placement::Default => {
                cx.set_var(ROLLED_BACK, "1")?;
                return Ok(Outcome::Done(format!(
                    "the pinned deployment {} already boots next (rolled back earlier); a reboot follows",
                    status.deployments[0].id
                )));
            }
            Placement::NonePinned => bail!(
                "no deployment is pinned (booted: {booted}), so the deployment this backup belongs to is unknown. \
                 Pin it with `ostree admin pin <index>`, or run `recoveryctl recover --force` to recover without the deployment check"
            ),
            Placement::Below { in_the_way } => {
                if !self.0.config.recovery.undeploy_to_pinned {
                    bail!(
                        "the pinned deployment is not the rollback target: {} are in the way. Remove them with \
                         `ostree admin undeploy <index>` (see `ostree admin status`), or set [recovery] undeploy_to_pinned = true, \
                         then `recoveryctl resume`",
                        in_the_way.join(", ")
                    );
                }
                // Remove what stands between the booted and the pinned deployment.
                let list = host.ostree.deployments().await?;
                let mut indexes = Vec::new();
                for id in &in_the_way {
                    let d = status
                        .deployments
                        .iter()
                        .find(|d| &d.id == id)
                        .with_context(|| format!("rpm-ostree no longer lists deployment {id}"))?;
                    indexes.push(ostree_index(&list, d)?);
                }
                undeploy(host.ostree.as_ref(), &list, indexes).await?;
                status = host.rpm_ostree.status().await?;
                anyhow::ensure!(
                    placement(&status) == Placement::Rollback,
                    "after removing {}, the pinned deployment is still not the rollback target",
                    in_the_way.join(", ")
                );
            }
            Placement::Rollback => {}
        }
        let target = status.rollback().map(|d| d.id.clone()).unwrap_or_default();
        let msg = host.rpm_ostree.rollback().await?;
        cx.set_var(ROLLED_BACK, "1")?;
        Ok(Outcome::Done(format!(
            "rolled back to the pinned {target}: {msg}"
        )))
    }
}
