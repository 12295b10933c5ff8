//! Exclusions: node paths that a backup does not copy and a restore does not touch.
//!
//! The same set as the existing script (`etc.exclude.list`): every `/etc` path named in
//! `/etc/tmpfiles.d/*.conf` (systemd-tmpfiles recreates them), `/etc/.updated`,
//! `/etc/kubernetes/manifests`, plus `[backup] exclude`. A pattern excludes the path itself and
//! everything beneath it; `*`, `?` and `[...]` match within one path component.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

pub(crate) const FIXED: [&str; 2] = ["/etc/.updated", "/etc/kubernetes/manifests"];

#[derive(Debug, Clone)]
pub(crate) struct Excludes {
    patterns: Vec<String>,
    literal: Vec<Vec<u8>>,
    globs: GlobSet,
}

fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

impl Excludes {
    pub fn new(patterns: Vec<String>) -> Result<Excludes> {
        let mut patterns: Vec<String> = patterns
            .into_iter()
            .map(|p| {
                let t = p.trim_end_matches('/');
                if t.is_empty() {
                    "/".into()
                } else {
                    t.to_string()
                }
            })
            .collect();
        patterns.sort();
        patterns.dedup();
        let mut literal = Vec::new();
        let mut b = GlobSetBuilder::new();
        for p in &patterns {
            if is_glob(p) {
                b.add(
                    GlobBuilder::new(p)
                        .literal_separator(true)
                        .build()
                        .with_context(|| format!("exclusion pattern `{p}`"))?,
                );
            } else {
                literal.push(p.as_bytes().to_vec());
            }
        }
        Ok(Excludes {
            patterns,
            literal,
            globs: b.build()?,
        })
    }

    /// The patterns, as recorded in the manifest.
    pub(crate) fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Is this node path (with its leading `/`) excluded, or beneath an excluded path?
    pub(crate) fn excludes(&self, node_path: &[u8]) -> bool {
        for l in &self.literal {
            if node_path == l.as_slice()
                || (node_path.len() > l.len()
                    && node_path.starts_with(l)
                    && node_path[l.len()] == b'/')
            {
                return true;
            }
        }
        if self.globs.is_empty() {
            return false;
        }
        // A glob matches the path or any of its ancestors.
        let mut end = node_path.len();
        loop {
            if self
                .globs
                .is_match(Path::new(OsStr::from_bytes(&node_path[..end])))
            {
                return true;
            }
            match node_path[..end].iter().rposition(|b| *b == b'/') {
                Some(0) | None => return false,
                Some(i) => end = i,
            }
        }
    }
}

/// The `/etc` paths named by `<root>/etc/tmpfiles.d/*.conf` (second field of each line).
pub(crate) fn tmpfiles_paths(root: &Path) -> Result<Vec<String>> {
    let dir = crate::config::under_root(root, Path::new("/etc/tmpfiles.d"));
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut files: Vec<_> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        for line in String::from_utf8_lossy(&text).lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some(path) = line.split_whitespace().nth(1) else {
                continue;
            };
            let path = path.trim_matches('"');
            // Specifiers (%h, %t, ...) expand at boot; they never name /etc paths we can match.
            if path.contains('%') {
                continue;
            }
            if path == "/etc" || path.starts_with("/etc/") {
                out.push(path.to_string());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_and_glob() {
        let x = Excludes::new(vec![
            "/etc/kubernetes/manifests".into(),
            "/etc/ssh/ssh_host_*".into(),
            "/etc/foo/".into(),
        ])
        .unwrap();
        assert!(x.excludes(b"/etc/kubernetes/manifests"));
        assert!(x.excludes(b"/etc/kubernetes/manifests/etcd.yaml"));
        assert!(!x.excludes(b"/etc/kubernetes/manifests2"));
        assert!(!x.excludes(b"/etc/kubernetes"));
        assert!(x.excludes(b"/etc/ssh/ssh_host_rsa_key"));
        assert!(!x.excludes(b"/etc/ssh/sshd_config"));
        assert!(x.excludes(b"/etc/foo/bar"));
    }

    #[test]
    fn tmpfiles() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc/tmpfiles.d")).unwrap();
        std::fs::write(
            d.path().join("etc/tmpfiles.d/a.conf"),
            "# comment\nd /etc/cni 0755 root root -\nL /etc/resolv.conf - - - - /run/x\nd /var/lib/x\nd %h/foo\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/tmpfiles.d/ignored.txt"), "d /etc/no\n").unwrap();
        assert_eq!(
            tmpfiles_paths(d.path()).unwrap(),
            ["/etc/cni", "/etc/resolv.conf"]
        );
    }
}
