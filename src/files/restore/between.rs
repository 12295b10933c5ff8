//! What restoring one generation would change on a node that holds another: the two manifests
//! compared entry by entry, said in the restore's direction as the live `diff` says it. Reads
//! no file content (the hashes are in the manifests).

use std::collections::BTreeMap;

use super::paths::node;
use super::{Change, ChangeKind};
use crate::files::entry::Entry;
use crate::files::manifest::Manifest;

/// The changes that take a node from `from` to `to`, sorted by path.
pub(crate) fn between(from: &Manifest, to: &Manifest) -> Vec<Change> {
    let index = |m: &Manifest| -> BTreeMap<Vec<u8>, Entry> {
        m.entries
            .iter()
            .map(|e| (e.path.0.clone(), e.clone()))
            .collect()
    };
    let (a, b) = (index(from), index(to));
    let mut out = Vec::new();
    let change = |path: &[u8], change: ChangeKind, detail: String| Change {
        path: node(path),
        change,
        detail,
    };
    for (path, old) in &a {
        match b.get(path) {
            None => out.push(change(path, ChangeKind::Remove, kind_word(old).into())),
            Some(new) if old.kind != new.kind => out.push(change(
                path,
                ChangeKind::Type,
                format!("{} -> {}", kind_word(old), kind_word(new)),
            )),
            Some(new) if old.hash != new.hash || old.link != new.link || old.rdev != new.rdev => {
                out.push(change(path, ChangeKind::Content, String::new()))
            }
            Some(new) => {
                let mut what = Vec::new();
                if old.mode != new.mode {
                    what.push("mode");
                }
                if (old.uid, old.gid) != (new.uid, new.gid) {
                    what.push("owner");
                }
                if old.mtime != new.mtime {
                    what.push("mtime");
                }
                if old.xattrs != new.xattrs {
                    what.push("xattrs");
                }
                if !what.is_empty() {
                    out.push(change(path, ChangeKind::Metadata, what.join(", ")));
                }
            }
        }
    }
    for (path, new) in &b {
        if !a.contains_key(path) {
            out.push(change(path, ChangeKind::Create, kind_word(new).into()));
        }
    }
    out.sort_by(|x, y| x.path.cmp(&y.path));
    out
}

fn kind_word(e: &Entry) -> &'static str {
    super::metadata::kind_name(e.kind)
}
