//! Comparing and applying owner, mode, xattrs and mtime.

use std::collections::HashSet;

use anyhow::{Context, Result};
use rustix::fs::Stat;

use super::scan::Live;
use super::{ChangeKind, Restorer};
use crate::files::entry::{Entry, Kind, Time};
use crate::files::fsx::Target;

/// Where an entry's metadata is: on the live entry (read and set there), or in what the
/// comparison's scan read of it (`None`: the scan did not see it).
pub(super) enum Meta<'a> {
    Live(Target<'a>),
    Scanned(Option<&'a Live>),
}

impl Restorer<'_> {
    /// Compare metadata and, when applying, fix it.
    pub(super) fn metadata(&mut self, meta: Meta<'_>, e: &Entry, st: &Stat) -> Result<()> {
        // An inode untouched since the backup has the xattrs it had then.
        let read;
        let live_x: &[(Vec<u8>, Vec<u8>)] = if self.untouched(e, st) {
            &e.xattrs
        } else {
            match &meta {
                Meta::Live(target) => {
                    read = target.xattrs()?;
                    &read
                }
                Meta::Scanned(live) => live
                    .and_then(|l| l.xattrs.as_ref())
                    .with_context(|| format!("the xattrs of {} were not read", e.display()))?,
            }
        };
        let diffs = metadata_diffs(e, st, live_x);
        if diffs.is_empty() {
            return Ok(());
        }
        self.change(e.path_bytes(), ChangeKind::Metadata, diffs.join(", "));
        if self.apply {
            let Meta::Live(target) = meta else {
                anyhow::bail!("the comparison was about to change {}", e.display());
            };
            apply_metadata(target, e, st)?;
        }
        Ok(())
    }
}

/// Owner, xattrs (ACLs among them), mode, then mtime, in the order that keeps each one.
pub(super) fn apply_metadata(target: Target<'_>, e: &Entry, st: &Stat) -> Result<()> {
    if st.st_uid != e.uid || st.st_gid != e.gid {
        target.chown(e.uid, e.gid).context("chown")?;
    }
    let live_x = target.xattrs()?;
    for (n, v) in e.xattrs.iter() {
        if live_x.iter().any(|(ln, lv)| ln == n && lv == v) {
            continue;
        }
        target
            .set_xattr(n, v)
            .with_context(|| format!("setting xattr {}", String::from_utf8_lossy(n)))?;
    }
    for (n, _) in &live_x {
        if e.xattrs.iter().any(|(en, _)| en == n) || n.as_slice() == b"security.selinux" {
            continue;
        }
        target
            .remove_xattr(n)
            .with_context(|| format!("removing xattr {}", String::from_utf8_lossy(n)))?;
    }
    if e.kind != Kind::Symlink {
        // chown clears setuid/setgid, and an ACL sets the group bits: mode comes after both.
        target.chmod(e.mode).context("chmod")?;
    }
    target
        .set_mtime(e.mtime.0, e.mtime.1)
        .context("setting mtime")?;
    Ok(())
}

pub(super) fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::File => "file",
        Kind::Dir => "directory",
        Kind::Symlink => "symlink",
        Kind::Fifo => "fifo",
        Kind::Char => "character device",
        Kind::Block => "block device",
        Kind::Socket => "socket",
    }
}

/// Which metadata fields of a live entry differ from the manifest.
pub(super) fn metadata_diffs(
    e: &Entry,
    st: &Stat,
    live_xattrs: &[(Vec<u8>, Vec<u8>)],
) -> Vec<String> {
    let mut d = Vec::new();
    if st.st_uid != e.uid || st.st_gid != e.gid {
        d.push(format!(
            "owner {}:{} -> {}:{}",
            st.st_uid, st.st_gid, e.uid, e.gid
        ));
    }
    if e.kind != Kind::Symlink && st.st_mode & 0o7777 != e.mode {
        d.push(format!("mode {:o} -> {:o}", st.st_mode & 0o7777, e.mode));
    }
    if Time(st.st_mtime, st.st_mtime_nsec as u32) != e.mtime {
        d.push("mtime".into());
    }
    let relevant = |x: &&(Vec<u8>, Vec<u8>)| {
        x.0.as_slice() != b"security.selinux"
            || e.xattrs
                .iter()
                .any(|(n, _)| n.as_slice() == b"security.selinux")
    };
    let live: Vec<_> = live_xattrs.iter().filter(relevant).collect();
    let want: Vec<_> = e.xattrs.iter().collect();
    if live != want {
        let names: HashSet<&[u8]> = live
            .iter()
            .map(|x| &x.0[..])
            .chain(want.iter().map(|x| &x.0[..]))
            .filter(|n| {
                live.iter().find(|x| &x.0[..] == *n) != want.iter().find(|x| &x.0[..] == *n)
            })
            .collect();
        let mut names: Vec<String> = names
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        names.sort();
        d.push(format!("xattrs {}", names.join(" ")));
    }
    d
}
