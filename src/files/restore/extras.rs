//! Restoring machine-config files kept outside the backed-up trees, and their missing parents.

use std::os::fd::AsFd;

use anyhow::{Context, Result};

use super::paths::{node, parent_of};
use super::tree::Dir;
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
            self.sync_child(Dir::Fd(pfd.as_fd()), i, dev)
                .with_context(|| format!("restoring {}", node(x)))?;
            // One flush per file system when the restore ends, not one per file.
            if self.apply && self.report.changes.len() > changes_before {
                self.flush_later(dev, pfd);
            }
        }
        Ok(())
    }
}
