//! Restoring machine-config files kept outside the backed-up trees, and their missing parents.

use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result};

use super::paths::{base_of, node};
use super::{ChangeKind, Restorer};
use crate::files::fsx::{self, Target};
use crate::files::store::stored_rel;

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
        let implicit: Vec<usize> = (0..self.entries.len())
            .filter(|&i| self.entries[i].implicit)
            .collect();
        // Missing ancestors first (created with their recorded metadata, never changed).
        for i in implicit {
            let e = &self.entries[i];
            let p = Path::new("/").join(stored_rel(e.path_bytes()));
            let parent = p.parent().unwrap_or(Path::new("/"));
            let Ok(pfd) = fsx::open_dir_in_root(self.root, parent) else {
                continue;
            };
            if fsx::try_lstat_at(pfd.as_fd(), base_of(e.path_bytes()))?.is_none() {
                self.change(e.path_bytes(), ChangeKind::Removed, "directory");
                if self.apply {
                    fsx::mkdir_at(pfd.as_fd(), base_of(e.path_bytes()), 0o700)?;
                    let d = fsx::open_child_dir(pfd.as_fd(), base_of(e.path_bytes()))?;
                    let st = fsx::fstat(d.as_fd())?;
                    self.apply_metadata(Target::Fd(d.as_fd()), e, &st)?;
                }
            }
        }
        for x in &manifest.header.extras {
            let x = &x.0[..];
            let i = index[x];
            if i == usize::MAX {
                continue;
            }
            let p = Path::new("/").join(stored_rel(x));
            let parent = p.parent().unwrap_or(Path::new("/"));
            let pfd = match fsx::open_dir_in_root(self.root, parent) {
                Ok(fd) => fd,
                Err(_) if !self.apply => {
                    self.change(x, ChangeKind::Removed, "file");
                    self.to_copy.push(i);
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("opening {}", parent.display())),
            };
            let dev = fsx::fstat(pfd.as_fd())?.st_dev;
            self.tick()?;
            self.sync_child(pfd.as_fd(), i, dev)
                .with_context(|| format!("restoring {}", node(x)))?;
            if self.apply {
                to_flush.entry(dev).or_insert(pfd);
            }
        }
        for fd in to_flush.values() {
            fsx::syncfs(fd.as_fd()).context("flushing the machine-config files to disk")?;
        }
        Ok(())
    }
}
