//! Restoring machine-config files kept outside the backed-up trees, and their missing parents.

use std::os::fd::AsFd;

use anyhow::{Context, Result};

use super::paths::{node, parent_of};
use super::{ChangeKind, Restorer};
use crate::files::fsx;

impl Restorer<'_> {
    pub(super) fn restore_extras(&mut self) -> Result<()> {
        let manifest = self.manifest;
        // Where each extra file's entry is (extras are few; entries are many).
        let mut index: std::collections::HashMap<&[u8], usize> = manifest
            .header
            .extras
            .iter()
            .map(|x| (&x.0[..], usize::MAX))
            .collect();
        for (i, e) in self.entries.iter().enumerate() {
            if !e.implicit
                && let Some(slot) = index.get_mut(e.path_bytes())
            {
                *slot = i;
            }
        }
        // One flush per file system at the end, not one per file.
        let mut to_flush: std::collections::HashMap<u64, std::os::fd::OwnedFd> = Default::default();
        for x in &manifest.header.extras {
            let x = &x.0[..];
            let i = index[x];
            if i == usize::MAX {
                continue;
            }
            // The parent chain, created or repaired as the generation recorded it, never
            // followed through a symlink.
            let pfd = self
                .reach_outside_dir(parent_of(x))
                .with_context(|| format!("restoring {}", node(x)))?;
            let Some(pfd) = pfd else {
                self.change(x, ChangeKind::Create, "file");
                self.to_copy.push(i);
                continue;
            };
            let dev = fsx::fstat(pfd.as_fd())?.st_dev;
            self.tick()?;
            let changes_before = self.report.changes.len();
            self.sync_child(pfd.as_fd(), i, dev)
                .with_context(|| format!("restoring {}", node(x)))?;
            if self.apply && self.report.changes.len() > changes_before {
                to_flush.entry(dev).or_insert(pfd);
            }
        }
        for fd in to_flush.values() {
            fsx::syncfs(fd.as_fd()).context("flushing the machine-config files to disk")?;
        }
        Ok(())
    }
}
