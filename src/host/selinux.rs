//! SELinux enforcement through `<root>/sys/fs/selinux/enforce`, and a guard that puts the
//! previous mode back on every exit path: return, error, panic (its `Drop` runs while
//! unwinding). A crash cannot run a destructor, so callers also record the previous mode in the
//! journal and restore it when the run resumes; and the mode is runtime state, which a reboot
//! resets from `/etc/selinux/config`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

pub trait Enforcement: Send + Sync {
    /// `None` where SELinux is absent (no selinuxfs).
    fn enforcing(&self) -> Result<Option<bool>>;
    fn set_enforcing(&self, enforcing: bool) -> Result<()>;
}

/// selinuxfs beneath `root`.
pub struct SelinuxFs {
    pub enforce: PathBuf,
}

impl SelinuxFs {
    /// selinuxfs at its usual place beneath `root`.
    pub fn new(root: &std::path::Path) -> SelinuxFs {
        Self::at(root, std::path::Path::new("/sys/fs/selinux"))
    }

    /// selinuxfs mounted at `selinuxfs` (a host path) beneath `root`.
    pub(crate) fn at(root: &std::path::Path, selinuxfs: &std::path::Path) -> SelinuxFs {
        SelinuxFs {
            enforce: crate::config::under_root(root, &selinuxfs.join("enforce")),
        }
    }
}

impl Enforcement for SelinuxFs {
    fn enforcing(&self) -> Result<Option<bool>> {
        match std::fs::read_to_string(&self.enforce) {
            Ok(s) => match s.trim() {
                "1" => Ok(Some(true)),
                "0" => Ok(Some(false)),
                other => anyhow::bail!("{}: unexpected content `{other}`", self.enforce.display()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.enforce.display())),
        }
    }

    fn set_enforcing(&self, enforcing: bool) -> Result<()> {
        std::fs::write(&self.enforce, if enforcing { "1" } else { "0" })
            .with_context(|| format!("writing {}", self.enforce.display()))
    }
}

/// Permissive while it lives; the previous mode comes back when it is dropped.
pub struct PermissiveGuard {
    selinux: Arc<dyn Enforcement>,
    previous: Option<bool>,
}

impl PermissiveGuard {
    /// Switch to permissive (a no-op where SELinux is absent or already permissive).
    pub fn enter(selinux: Arc<dyn Enforcement>) -> Result<PermissiveGuard> {
        let previous = selinux.enforcing()?;
        if previous == Some(true) {
            selinux.set_enforcing(false)?;
            tracing::warn!(
                "SELinux set to permissive for this step; it is set back to enforcing when the step ends"
            );
        }
        Ok(PermissiveGuard { selinux, previous })
    }

    /// The mode before the guard (what the journal records for crash recovery).
    pub fn previous(&self) -> Option<bool> {
        self.previous
    }
}

impl Drop for PermissiveGuard {
    fn drop(&mut self) {
        if self.previous == Some(true) {
            match self.selinux.set_enforcing(true) {
                Ok(()) => tracing::info!("SELinux set back to enforcing"),
                Err(e) => tracing::error!("could not set SELinux back to enforcing: {e:#}"),
            }
        }
    }
}
