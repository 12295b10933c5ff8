//! What the comparison pass found to do, so that the apply pass walks only there.
//!
//! A restore compares first (nothing is changed until every stored file it needs has been
//! checked), then applies. The apply pass does not walk the live trees again: it visits the
//! entries the comparison found different and the directories on the way to them. Every entry
//! it visits is compared again before it is changed, so what it writes is decided by the live
//! tree as it is then; an entry the comparison found equal is left as it was found.

use std::collections::HashSet;

use super::paths::parent_of;

#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Entries with a change of their own (their path below the root, as in the manifest).
    changed: HashSet<Vec<u8>>,
    /// Directories with a change somewhere below them (the root of everything is `""`).
    dirty: HashSet<Vec<u8>>,
}

impl Plan {
    /// Note a change at `path`, and below every directory above it.
    pub(super) fn record(&mut self, path: &[u8]) {
        self.changed.insert(path.to_vec());
        let mut p = path;
        while !p.is_empty() {
            p = parent_of(p);
            if !self.dirty.insert(p.to_vec()) {
                // Its ancestors are in already.
                break;
            }
        }
    }

    /// Whether anything below the directory `rel` changes.
    pub(super) fn below(&self, rel: &[u8]) -> bool {
        self.dirty.contains(rel)
    }

    /// Whether the apply pass visits the entry `path`.
    pub(super) fn visits(&self, path: &[u8]) -> bool {
        self.changed.contains(path) || self.dirty.contains(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_leads_the_walk_down_to_it_and_nowhere_else() {
        let mut p = Plan::default();
        p.record(b"etc/ssh/sshd_config");
        p.record(b"etc/ssh/moduli");
        p.record(b"etc/hosts");
        for dir in [&b""[..], b"etc", b"etc/ssh"] {
            assert!(p.below(dir), "{}", String::from_utf8_lossy(dir));
            assert!(p.visits(dir));
        }
        assert!(p.visits(b"etc/hosts") && !p.below(b"etc/hosts"));
        assert!(p.visits(b"etc/ssh/moduli"));
        assert!(!p.visits(b"etc/passwd"));
        assert!(!p.visits(b"etc/ssh/ssh_config"));
        assert!(!p.below(b"etc/pki") && !p.visits(b"etc/pki"));
    }
}
