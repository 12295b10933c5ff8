//! The sandbox of each external program when it runs in a transient unit of its own: one table,
//! decided per tool from what the real tool does, instead of everything the daemon may do.
//!
//! A program not in the table ([`Tool::Other`]) runs with systemd's defaults for a root
//! service, as the daemon's children did before. An operator can widen or narrow a tool's
//! sandbox with a prefix drop-in, as systemd applies to transient units too:
//! `/etc/systemd/system/recoveryd-tool-crictl-.service.d/*.conf` for every `crictl` call,
//! `recoveryd-tool-.service.d/` for all of them (the unit names are in [`super::transient`]).

/// The external programs recoveryd runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `crictl`: a client of CRI-O's socket, nothing else.
    Crictl,
    /// `crio wipe`: removes CRI-O's containers and images from the container storage.
    CrioWipe,
    /// `oc`: a client of the API server.
    Oc,
    /// `cluster-backup.sh` and `cluster-restore.sh`.
    ClusterScript,
    /// The `ostree` CLI on the sysroot.
    Ostree,
    /// Anything else: systemd's defaults.
    Other,
}

/// What a tool's unit is allowed. `None` fields keep systemd's default. Every unit also gets
/// `LockPersonality=`, `RestrictRealtime=` and `SystemCallArchitectures=native`, which cost no
/// tool anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// `PrivateNetwork=`: the unit gets a network namespace of its own (loopback only; Unix
    /// sockets in the file system still work).
    pub private_network: bool,
    /// `RestrictAddressFamilies=` (an allow list).
    pub address_families: Option<&'static [&'static str]>,
    /// `ProtectSystem=` and `ProtectHome=`; both need a mount namespace of the unit's own.
    pub protect_system: Option<&'static str>,
    pub protect_home: Option<&'static str>,
    pub private_tmp: bool,
    /// `ProtectKernelTunables=`, `ProtectKernelModules=`, `ProtectKernelLogs=`,
    /// `ProtectControlGroups=` (a mount namespace too).
    pub protect_kernel: bool,
    /// `CapabilityBoundingSet=` as a mask; `None`: every capability.
    pub capabilities: Option<u64>,
    /// `NoNewPrivileges=`: also stops SELinux domain transitions the host policy gives a tool,
    /// so only for tools that run in the caller's domain anyway.
    pub no_new_privileges: bool,
    /// `RestrictNamespaces=yes`.
    pub restrict_namespaces: bool,
    /// `MemoryDenyWriteExecute=`: inherited by everything the tool starts.
    pub deny_write_execute: bool,
    /// Environment for the tool beyond `PATH` and the call's own.
    pub environment: &'static [&'static str],
}

const NONE: Sandbox = Sandbox {
    private_network: false,
    address_families: None,
    protect_system: None,
    protect_home: None,
    private_tmp: false,
    protect_kernel: false,
    capabilities: None,
    no_new_privileges: false,
    restrict_namespaces: false,
    deny_write_execute: false,
    environment: &[],
};

impl Tool {
    /// The name in unit names and messages.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Crictl => "crictl",
            Tool::CrioWipe => "crio",
            Tool::Oc => "oc",
            Tool::ClusterScript => "cluster",
            Tool::Ostree => "ostree",
            Tool::Other => "other",
        }
    }

    /// This tool's sandbox, and why.
    pub fn sandbox(self) -> Sandbox {
        match self {
            // crictl only talks to /var/run/crio/crio.sock (a socket on a read-only mount can
            // still be connected to), reads /etc/crictl.yaml and needs no capability as root.
            Tool::Crictl => Sandbox {
                private_network: true,
                address_families: Some(&["AF_UNIX"]),
                protect_system: Some("strict"),
                protect_home: Some("yes"),
                private_tmp: true,
                protect_kernel: true,
                capabilities: Some(0),
                no_new_privileges: true,
                restrict_namespaces: true,
                deny_write_execute: true,
                environment: &[],
            },
            // `crio wipe` removes containers and images from /var/lib/containers/storage and
            // unmounts their layers: that must happen in the host's mount namespace (a private
            // one would keep the host's mounts), so no file system sandbox; it needs root's
            // capabilities for the storage. It uses no network. No NoNewPrivileges=: the host
            // policy runs crio in its own SELinux domain (container_runtime_t).
            Tool::CrioWipe => Sandbox {
                private_network: true,
                address_families: Some(&["AF_UNIX"]),
                ..NONE
            },
            // oc reads its kubeconfig (root's, 0600) and talks to the API server: the network,
            // no capability, nothing to write but its discovery cache, which goes to the
            // unit's private /tmp.
            Tool::Oc => Sandbox {
                private_network: false,
                address_families: Some(&["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"]),
                protect_system: Some("strict"),
                protect_home: Some("read-only"),
                private_tmp: true,
                protect_kernel: true,
                capabilities: Some(0),
                no_new_privileges: true,
                restrict_namespaces: true,
                deny_write_execute: true,
                environment: &["HOME=/tmp"],
            },
            // cluster-backup.sh and cluster-restore.sh (openshift/cluster-etcd-operator) stop
            // and start static pods, move /etc/kubernetes/manifests and /var/lib/etcd, and may
            // pull and run the etcdctl image with podman: the node's whole power, in the host's
            // mount namespace, with the network. They get systemd's defaults.
            Tool::ClusterScript => NONE,
            // ostree remounts /sysroot read-write in a mount namespace of its own and writes
            // /boot: the host's mount namespace and root's capabilities; no network.
            Tool::Ostree => Sandbox {
                private_network: true,
                address_families: Some(&["AF_UNIX"]),
                ..NONE
            },
            Tool::Other => NONE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_that_needs_the_host_mount_namespace_gets_no_file_system_sandbox() {
        for tool in [
            Tool::CrioWipe,
            Tool::ClusterScript,
            Tool::Ostree,
            Tool::Other,
        ] {
            let s = tool.sandbox();
            assert!(
                s.protect_system.is_none() && s.protect_home.is_none(),
                "{tool:?}"
            );
            assert!(!s.private_tmp && !s.protect_kernel, "{tool:?}");
        }
    }

    #[test]
    fn only_the_api_client_has_the_network() {
        for tool in [Tool::Crictl, Tool::CrioWipe, Tool::Ostree] {
            assert!(tool.sandbox().private_network, "{tool:?}");
        }
        assert!(!Tool::Oc.sandbox().private_network);
    }
}
