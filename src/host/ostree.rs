//! ostree deployments through the `ostree admin` CLI, against a sysroot beneath `root`:
//! list them, pin and unpin one, undeploy one, make one the default (`set-default`, ostree
//! 2023.6 and later; probed, since older ones lack it).
//!
//! rpm-ostree has no pin method on D-Bus (a pin is libostree state in the deployment's origin
//! file), so pinning goes through `ostree admin pin`. Debian's and RHEL's ostree have no
//! `--json` for `admin status`, so its text is parsed here, strictly: a line that is not
//! understood is an error, never skipped. The parser is tested on real output.
//!
//! Note that `ostree admin undeploy` removes a pinned deployment without a word: the callers
//! never ask it to.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use serde::Serialize;

use super::command::{CommandSpec, Programs, Tool};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OstreeDeployment {
    /// Position in `ostree admin status` (what `pin` and `undeploy` take).
    pub index: usize,
    pub osname: String,
    pub checksum: String,
    pub serial: u32,
    pub booted: bool,
    pub staged: bool,
    pub pending: bool,
    pub rollback: bool,
    pub pinned: bool,
    pub version: Option<String>,
}

impl OstreeDeployment {
    pub fn csum_serial(&self) -> String {
        format!("{}.{}", self.checksum, self.serial)
    }

    pub(crate) fn key(&self) -> super::rpmostree::DeploymentRef {
        super::rpmostree::DeploymentRef {
            osname: self.osname.clone(),
            checksum: self.checksum.clone(),
            serial: self.serial as i32,
        }
    }
}

/// Parse the output of `ostree admin status`.
pub(crate) fn parse_status(text: &str) -> Result<Vec<OstreeDeployment>> {
    let mut out: Vec<OstreeDeployment> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        if line.trim() == "No deployments." {
            continue;
        }
        if let Some(prop) = line.strip_prefix("    ") {
            let d = out.last_mut().with_context(|| {
                format!("ostree admin status line {n}: a property before any deployment: `{line}`")
            })?;
            match prop.split_once(": ") {
                Some(("Version", v)) => d.version = Some(v.trim().to_string()),
                Some(("Pinned", "yes")) => d.pinned = true,
                Some(("Pinned", other)) => {
                    bail!("ostree admin status line {n}: unexpected pin state `{other}`")
                }
                // origin refspec, GPG, Unlocked, Deployment...: not needed here.
                Some(_) => {}
                None if prop.trim_end().ends_with(':') || prop.starts_with(' ') => {}
                None => bail!("ostree admin status line {n}: cannot read `{line}`"),
            }
            continue;
        }
        let (booted, rest) = if let Some(r) = line.strip_prefix("* ") {
            (true, r)
        } else if let Some(r) = line.strip_prefix("  ") {
            (false, r)
        } else {
            bail!("ostree admin status line {n}: cannot read `{line}`");
        };
        let mut words = rest.split(' ');
        let osname = words.next().filter(|w| !w.is_empty());
        let id = words.next();
        let (Some(osname), Some(id)) = (osname, id) else {
            bail!(
                "ostree admin status line {n}: expected `<osname> <checksum>.<serial>`: `{line}`"
            );
        };
        let (checksum, serial) = id.rsplit_once('.').with_context(|| {
            format!("ostree admin status line {n}: `{id}` is not <checksum>.<serial>")
        })?;
        if checksum.len() != 64 || !checksum.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("ostree admin status line {n}: `{checksum}` is not a checksum");
        }
        let serial: u32 = serial
            .parse()
            .with_context(|| format!("ostree admin status line {n}: bad serial in `{id}`"))?;
        let mut d = OstreeDeployment {
            index: out.len(),
            osname: osname.to_string(),
            checksum: checksum.to_string(),
            serial,
            booted,
            staged: false,
            pending: false,
            rollback: false,
            pinned: false,
            version: None,
        };
        let flags: Vec<&str> = words.collect();
        let flags = flags.join(" ");
        let mut rest = flags.as_str();
        while !rest.is_empty() {
            let Some(inner) = rest.strip_prefix('(') else {
                bail!("ostree admin status line {n}: unexpected `{rest}`");
            };
            let (flag, after) = inner
                .split_once(')')
                .with_context(|| format!("ostree admin status line {n}: unclosed `(`"))?;
            match flag {
                "staged" => d.staged = true,
                "pending" => d.pending = true,
                "rollback" => d.rollback = true,
                "finalization locked" | "soft-reboot" => {}
                other => bail!("ostree admin status line {n}: unknown deployment state `{other}`"),
            }
            rest = after.trim_start();
        }
        out.push(d);
    }
    Ok(out)
}

#[async_trait]
pub trait Ostree: Send + Sync {
    async fn deployments(&self) -> Result<Vec<OstreeDeployment>>;
    async fn pin(&self, index: usize) -> Result<String>;
    async fn unpin(&self, index: usize) -> Result<String>;
    async fn undeploy(&self, index: usize) -> Result<String>;
    /// Whether this ostree has `admin set-default`.
    async fn can_set_default(&self) -> Result<bool>;
    /// Make deployment `index` the first (the default for the next boot), keeping the others.
    async fn set_default(&self, index: usize) -> Result<String>;
}

/// The `ostree` CLI on a sysroot.
pub struct OstreeCli {
    pub program: PathBuf,
    /// The sysroot as seen on this machine (`root` + `[host] sysroot`).
    pub sysroot: PathBuf,
    pub timeout: Duration,
    pub programs: Arc<dyn Programs>,
}

impl OstreeCli {
    fn admin(&self, args: &[String]) -> CommandSpec {
        CommandSpec::new(&self.program, self.timeout)
            .tool(Tool::Ostree)
            .arg("admin")
            .args(args.iter().map(String::as_str))
            .arg(format!("--sysroot={}", self.sysroot.display()))
    }
}

#[async_trait]
impl Ostree for OstreeCli {
    async fn deployments(&self) -> Result<Vec<OstreeDeployment>> {
        let out = self.programs.run(&self.admin(&["status".into()])).await?;
        parse_status(&String::from_utf8_lossy(&out.stdout))
    }

    async fn pin(&self, index: usize) -> Result<String> {
        let out = self
            .programs
            .run(&self.admin(&["pin".into(), index.to_string()]))
            .await?;
        let after = self.deployments().await?;
        let d = after
            .get(index)
            .with_context(|| format!("deployment {index} vanished after pinning it"))?;
        anyhow::ensure!(
            d.pinned,
            "ostree says it pinned deployment {index}, but it is not pinned"
        );
        Ok(format!("{} ({})", out.stdout_tail.trim(), d.csum_serial()))
    }

    async fn unpin(&self, index: usize) -> Result<String> {
        let out = self
            .programs
            .run(&self.admin(&["pin".into(), "--unpin".into(), index.to_string()]))
            .await?;
        let after = self.deployments().await?;
        let d = after
            .get(index)
            .with_context(|| format!("deployment {index} vanished after unpinning it"))?;
        anyhow::ensure!(
            !d.pinned,
            "ostree says it unpinned deployment {index}, but it is still pinned"
        );
        Ok(format!("{} ({})", out.stdout_tail.trim(), d.csum_serial()))
    }

    async fn can_set_default(&self) -> Result<bool> {
        // `ostree admin --help` lists the verbs this ostree has, one per line after two spaces
        // (an unknown verb with --help prints that same list and exits 0, so it tells nothing).
        let spec = CommandSpec::new(&self.program, self.timeout)
            .tool(Tool::Ostree)
            .args(["admin", "--help"]);
        let out = self.programs.run(&spec).await?;
        Ok(has_verb(
            &String::from_utf8_lossy(&out.stdout),
            "set-default",
        ))
    }

    async fn set_default(&self, index: usize) -> Result<String> {
        let out = self
            .programs
            .run(&self.admin(&["set-default".into(), index.to_string()]))
            .await?;
        Ok(out
            .stdout_tail
            .lines()
            .last()
            .unwrap_or_default()
            .to_string())
    }

    async fn undeploy(&self, index: usize) -> Result<String> {
        let out = self
            .programs
            .run(&self.admin(&["undeploy".into(), index.to_string()]))
            .await?;
        Ok(out
            .stdout_tail
            .lines()
            .next()
            .unwrap_or_default()
            .to_string())
    }
}

/// Whether `ostree admin --help` lists `verb` among its builtin commands.
fn has_verb(help: &str, verb: &str) -> bool {
    help.lines()
        .filter_map(|l| l.strip_prefix("  "))
        .any(|l| l.split_whitespace().next() == Some(verb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_from_the_help() {
        let help = "Builtin \"admin\" Commands:\n  cleanup            Delete untagged deployments\n  set-default        Set the default deployment\n\nHelp Options:\n  -h, --help         Show help options\n";
        assert!(has_verb(help, "set-default"));
        assert!(has_verb(help, "cleanup"));
        assert!(!has_verb(help, "set-origin"));
        assert!(!has_verb(help, "--help"));
    }

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn real_debian_output() {
        let d = parse_status(&fixture("ostree-admin-status-debian-one-pinned.txt")).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].version.as_deref(), Some("2.0"));
        assert!(!d[0].pinned && d[1].pinned);
        assert!(
            !d[0].booted && !d[1].booted,
            "a test sysroot is never booted"
        );
        assert_eq!(d[1].serial, 0);
        assert_eq!(d[1].index, 1);
        let d = parse_status(&fixture("ostree-admin-status-debian-two-pinned.txt")).unwrap();
        assert!(d[0].pinned && d[1].pinned);
    }

    #[test]
    fn booted_node_output() {
        let d = parse_status(&fixture("ostree-admin-status-rhcos-booted.txt")).unwrap();
        assert!(d[0].booted && !d[0].pinned);
        assert!(d[1].rollback && d[1].pinned && !d[1].booted);
        assert_eq!(d[1].version.as_deref(), Some("415.92.202402201450-0"));
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        let c = "0c94a19d8115be5d7d95f34c6c09e22aba73c78f7b58d19bfaeed1c8e44f3c05";
        assert!(parse_status(&format!("  testos {c}.0 (exploded)\n")).is_err());
        assert!(parse_status(&format!("x testos {c}.0\n")).is_err());
        assert!(parse_status("  testos nothex.0\n").is_err());
        assert!(parse_status("    Version: 1\n").is_err());
        assert!(parse_status(&format!("  testos {c}.0\n    Pinned: maybe\n")).is_err());
        assert!(parse_status(&format!("  testos {c}.0 (staged) (pending)\n")).unwrap()[0].staged);
        assert!(parse_status("No deployments.\n").unwrap().is_empty());
    }
}
