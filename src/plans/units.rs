//! Steps that drive systemd and logind: units, daemon-reload, reboots.

use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;

use super::context::PlanContext;
use crate::engine::{Integration, Outcome, PreviewContext, Step, StepContext, Var};

/// Which of the node's units.
#[derive(Debug, Clone, Copy)]
pub(crate) enum NodeUnit {
    Kubelet,
    Crio,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnitVerb {
    Stop,
    Start,
    Restart,
    Enable,
    Disable,
}

pub(crate) struct UnitStep {
    pub cx: Arc<PlanContext>,
    pub name: &'static str,
    pub stage: &'static str,
    pub verb: UnitVerb,
    pub unit: NodeUnit,
}

impl UnitStep {
    fn unit(&self) -> String {
        match self.unit {
            NodeUnit::Kubelet => self.cx.config.host.kubelet_unit.clone(),
            NodeUnit::Crio => self.cx.config.host.crio_unit.clone(),
        }
    }
}

const SYSTEMD: &[Integration] = &[Integration::Systemd];

#[async_trait]
impl Step for UnitStep {
    fn name(&self) -> &'static str {
        self.name
    }
    fn stage(&self) -> &'static str {
        self.stage
    }
    fn describe(&self) -> String {
        let verb = match self.verb {
            UnitVerb::Stop => "stop",
            UnitVerb::Start => "start",
            UnitVerb::Restart => "restart",
            UnitVerb::Enable => "enable",
            UnitVerb::Disable => "disable",
        };
        format!("{verb} {} through systemd's D-Bus API", self.unit())
    }
    fn needs(&self) -> &'static [Integration] {
        SYSTEMD
    }
    async fn run(&self, _cx: &StepContext) -> Result<Outcome> {
        let units = &self.cx.host.units;
        let unit = self.unit();
        let detail = match self.verb {
            UnitVerb::Stop => units.stop(&unit).await?,
            UnitVerb::Start => units.start(&unit).await?,
            UnitVerb::Restart => units.restart(&unit).await?,
            UnitVerb::Enable => units.enable(&unit).await?,
            UnitVerb::Disable => units.disable(&unit).await?,
        };
        Ok(Outcome::Done(detail))
    }
    async fn preview(&self, _pc: &PreviewContext) -> Result<String> {
        let unit = self.unit();
        let units = &self.cx.host.units;
        let now = match self.verb {
            UnitVerb::Enable | UnitVerb::Disable => units.unit_file_state(&unit).await,
            _ => units.active_state(&unit).await,
        };
        Ok(match now {
            Ok(state) => format!("{} (now {state})", self.describe()),
            Err(e) => format!("{} (state unknown: {e:#})", self.describe()),
        })
    }
}

/// `systemctl daemon-reload`, after unit files may have been restored.
pub(crate) struct DaemonReload(pub Arc<PlanContext>);

#[async_trait]
impl Step for DaemonReload {
    fn name(&self) -> &'static str {
        "daemon-reload"
    }
    fn stage(&self) -> &'static str {
        "restore-files"
    }
    fn describe(&self) -> String {
        "reload systemd's unit files (restored files may include units)".into()
    }
    fn needs(&self) -> &'static [Integration] {
        SYSTEMD
    }
    async fn run(&self, _cx: &StepContext) -> Result<Outcome> {
        self.0.host.units.reload().await?;
        Ok(Outcome::Done("systemd reloaded".into()))
    }
}

/// Reboot, and count as done once the node has booted again.
pub(crate) struct Reboot {
    pub cx: Arc<PlanContext>,
    pub name: &'static str,
    pub stage: &'static str,
    /// Only reboot when this run variable is set (e.g. after a rollback); otherwise skip.
    pub only_if_var: Option<Var<bool>>,
}

#[async_trait]
impl Step for Reboot {
    fn name(&self) -> &'static str {
        self.name
    }
    fn stage(&self) -> &'static str {
        self.stage
    }
    fn reboot_barrier(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        match self.only_if_var {
            Some(_) => {
                "reboot into the rolled-back deployment (only if a rollback was needed)".into()
            }
            None => "reboot the node; the recovery resumes by itself at the next boot".into(),
        }
    }
    async fn after_reboot(&self, cx: &StepContext) -> Result<String> {
        super::deployment::expect_booted(&self.cx, cx).await
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        if let Some(var) = &self.only_if_var
            && cx.get(var)? != Some(true)
        {
            return Ok(Outcome::Skipped("no rollback was needed: no reboot".into()));
        }
        if !self.cx.config.host.systemd {
            return Ok(Outcome::AwaitReboot(
                "[host] systemd = false: reboot the node yourself, then run `recoveryctl resume`"
                    .into(),
            ));
        }
        let how = self
            .cx
            .host
            .power
            .reboot(self.cx.config.recovery.reboot_delay)
            .await?;
        Ok(Outcome::AwaitReboot(format!(
            "reboot requested ({how}) in boot {}",
            cx.boot_id
        )))
    }
}
