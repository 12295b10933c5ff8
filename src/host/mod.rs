//! Every side effect on the host, each behind a narrow trait with one home:
//! systemd units ([`systemd`]), reboots and inhibitors ([`power`]), rpm-ostree
//! ([`rpmostree`]), ostree deployments ([`ostree`]), SELinux ([`selinux`]), external programs
//! ([`command`], run in transient units by [`transient`] with the sandboxes of [`sandbox`]) and
//! the cluster's tools built on them ([`cluster`]).
//!
//! `[host] systemd`, `ostree` and `cluster` switch integrations off for hosts that lack them;
//! the steps that need one then end `skipped` with that reason in the journal.

pub mod bus;
pub(crate) mod cluster;
pub mod command;
pub mod hostname;
pub mod ostree;
pub mod power;
pub mod rpmostree;
pub mod sandbox;
pub mod selinux;
pub mod systemd;
pub mod transient;

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;

/// The host as the plans see it.
#[derive(Clone)]
pub(crate) struct Host {
    pub units: Arc<dyn systemd::Units>,
    pub power: Arc<dyn power::Power>,
    pub rpm_ostree: Arc<dyn rpmostree::RpmOstree>,
    pub ostree: Arc<dyn ostree::Ostree>,
    pub selinux: Arc<dyn selinux::Enforcement>,
    pub cluster: Arc<dyn cluster::Cluster>,
    pub hostname: Arc<dyn hostname::Hostname>,
}

impl Host {
    /// The real host described by `config` (nothing is connected until first used). External
    /// programs run in transient units of their own when `[host] systemd` is on, as children
    /// otherwise; `caller` names the run and step calling them.
    pub fn new(config: &Config, caller: transient::Caller) -> Host {
        let bus = Arc::new(bus::SystemBus::new(Duration::from_secs(300)));
        let programs: Arc<dyn command::Programs> = if config.host.systemd {
            Arc::new(transient::TransientUnits::new(bus.clone(), caller))
        } else {
            Arc::new(command::Runner)
        };
        let h = &config.host;
        let hostname: Arc<dyn hostname::Hostname> = if h.systemd {
            Arc::new(hostname::Hostnamed::new(bus.clone()))
        } else {
            Arc::new(hostname::Uname)
        };
        Host {
            hostname,
            units: Arc::new(systemd::DbusUnits::new(bus.clone(), h.job_timeout)),
            power: Arc::new(power::DbusPower::new(bus.clone())),
            rpm_ostree: Arc::new(rpmostree::DbusRpmOstree::new(bus, h.transaction_timeout)),
            ostree: Arc::new(ostree::OstreeCli {
                program: h.ostree_cli.clone(),
                sysroot: config.host_path(&h.sysroot),
                timeout: h.command_timeout,
                programs: programs.clone(),
            }),
            selinux: Arc::new(selinux::SelinuxFs::at(&config.root, &h.selinuxfs)),
            cluster: Arc::new(cluster::ClusterCli {
                programs,
                crictl: h.crictl.clone(),
                crio: h.crio.clone(),
                oc: h.oc.clone(),
                kubeconfig: config.host_path(&h.kubeconfig),
                timeout: h.command_timeout,
            }),
        }
    }
}
