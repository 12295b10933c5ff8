//! Checking a manifest before anything uses it.
//!
//! A manifest is read from the state directory, and a restore trusts it more than anything
//! else: it says which paths to create, replace and remove. So every path in it is checked
//! when it is read, before a walk, a verify or a restore sees it: relative, normalized (no
//! empty, `.` or `..` component, no NUL), inside a tree of the generation or one of its
//! machine-config files, its parent listed before it, listed once. Content hashes must be
//! BLAKE3 hex (they become object file names), and hardlink groups must point at an earlier
//! regular file. A manifest that breaks a rule is corrupt: nothing of it is used.

use std::collections::HashSet;

use super::entry::{Entry, Kind};
use super::manifest::{Header, Manifest};
use super::path_map::PathMap;

/// One rule a manifest broke, with the path it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {why}")]
pub(crate) struct Violation {
    /// The entry, tree, artifact or header field concerned (`/etc/passwd`, `header.trees`).
    pub what: String,
    pub why: String,
}

fn violation(what: impl Into<String>, why: impl Into<String>) -> Violation {
    Violation {
        what: what.into(),
        why: why.into(),
    }
}

fn shown(p: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(p))
}

/// Why `p` is not a relative, normalized path, if it is not.
pub(crate) fn relative_path_problem(p: &[u8]) -> Option<&'static str> {
    if p.is_empty() {
        return Some("empty path");
    }
    if p.contains(&0) {
        return Some("the path contains a NUL byte");
    }
    if p[0] == b'/' {
        return Some("an absolute path where a relative one belongs");
    }
    for c in p.split(|b| *b == b'/') {
        match c {
            b"" => return Some("an empty path component (`//` or a trailing `/`)"),
            b"." => return Some("a `.` component"),
            b".." => return Some("a `..` component"),
            _ => {}
        }
    }
    None
}

/// Why `p` is not an absolute, normalized path (a tree as configured, `/etc`), if it is not.
pub(crate) fn absolute_path_problem(p: &str) -> Option<&'static str> {
    match p.as_bytes().strip_prefix(b"/") {
        None => Some("a relative path where an absolute one belongs"),
        Some(rest) => relative_path_problem(rest),
    }
}

/// Is this a BLAKE3 hash as the store names objects (64 lowercase hex digits)?
pub(crate) fn is_hash(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `child` is `parent` or beneath it (byte paths without a leading `/`).
fn within(child: &[u8], parent: &[u8]) -> bool {
    child == parent
        || (child.len() > parent.len() && child.starts_with(parent) && child[parent.len()] == b'/')
}

fn parent_of(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|b| *b == b'/') {
        Some(i) => &p[..i],
        None => b"",
    }
}

/// Trees as relative byte paths (`etc`, `usr/local`).
type RelPaths = Vec<Vec<u8>>;

/// Check the header's trees and lists; returns the trees present at backup time, as relative
/// paths, and all trees.
fn check_header(h: &Header) -> Result<(RelPaths, RelPaths), Violation> {
    if h.generation.is_empty()
        || h.generation.starts_with('.')
        || h.generation.contains(['/', '\0'])
    {
        return Err(violation(
            "header.generation",
            format!("`{}` is not a generation id", h.generation),
        ));
    }
    let mut trees: Vec<Vec<u8>> = Vec::new();
    for t in &h.trees {
        if let Some(why) = absolute_path_problem(&t.path) {
            return Err(violation(format!("tree {}", t.path), why));
        }
        if let Some(r) = &t.resolved
            && let Some(why) = absolute_path_problem(r)
        {
            return Err(violation(format!("tree {} (resolved {r})", t.path), why));
        }
        let rel = t.path.as_bytes()[1..].to_vec();
        if let Some(other) = trees.iter().find(|o| within(&rel, o) || within(o, &rel)) {
            return Err(violation(
                format!("tree {}", t.path),
                format!("overlaps the tree {}", shown(other)),
            ));
        }
        trees.push(rel);
    }
    let present: Vec<Vec<u8>> = h
        .trees
        .iter()
        .zip(&trees)
        .filter(|(t, _)| t.present)
        .map(|(_, rel)| rel.clone())
        .collect();
    let in_tree = |p: &[u8]| trees.iter().any(|t| within(p, t));
    let mut seen = HashSet::new();
    for (list, name) in [(&h.extras, "extra"), (&h.extras_absent, "absent extra")] {
        for x in list {
            if let Some(why) = relative_path_problem(&x.0) {
                return Err(violation(format!("{name} {}", shown(&x.0)), why));
            }
            if in_tree(&x.0) {
                return Err(violation(
                    format!("{name} {}", shown(&x.0)),
                    "a machine-config file listed apart lies inside a tree",
                ));
            }
            if !seen.insert(&x.0[..]) {
                return Err(violation(format!("{name} {}", shown(&x.0)), "listed twice"));
            }
        }
    }
    for m in &h.skipped_mounts {
        if let Some(why) = relative_path_problem(&m.0) {
            return Err(violation(format!("mount point {}", shown(&m.0)), why));
        }
        if !present.iter().any(|t| within(&m.0, t) && m.0 != *t) {
            return Err(violation(
                format!("mount point {}", shown(&m.0)),
                "not inside a tree",
            ));
        }
    }
    if let Some(images) = &h.images {
        check_images(h, images)?;
    }
    for e in &h.exclude {
        if e.contains('\0') || !e.starts_with('/') {
            return Err(violation(
                format!("exclusion `{e}`"),
                "not an absolute node path or glob",
            ));
        }
    }
    Ok((present, trees))
}

/// The images section names only trees and extras of this header, beneath its store, and
/// metadata a store can take.
fn check_images(h: &Header, images: &super::containers::ImagesSection) -> Result<(), Violation> {
    let storage = &images.storage;
    if let Some(why) = absolute_path_problem(storage) {
        return Err(violation("header.images.storage", why));
    }
    let under = |p: &str| {
        p.strip_prefix(storage.trim_end_matches('/'))
            .is_some_and(|rest| rest.starts_with('/'))
    };
    for t in &images.trees {
        if !under(t) || !h.trees.iter().any(|x| &x.path == t) {
            return Err(violation(
                format!("image tree {t}"),
                "not a tree of this manifest beneath the image store",
            ));
        }
    }
    for f in &images.files {
        let rel = f.as_bytes().strip_prefix(b"/").unwrap_or(f.as_bytes());
        let listed = h.extras.iter().chain(&h.extras_absent).any(|x| x.0 == rel);
        if !under(f) || !listed {
            return Err(violation(
                format!("image file {f}"),
                "not an extra of this manifest beneath the image store",
            ));
        }
    }
    for (doc, name) in [
        (&images.images_json, "images"),
        (&images.layers_json, "layers"),
    ] {
        if let Err(e) = super::containers::check_entries(doc) {
            return Err(violation(
                format!("header.images.{name}_json"),
                format!("{e:#}"),
            ));
        }
    }
    Ok(())
}

fn check_entry(
    i: usize,
    e: &Entry,
    entries: &[Entry],
    trees: &[Vec<u8>],
    extras: &HashSet<&[u8]>,
    extra_ancestors: &HashSet<&[u8]>,
    dirs: &PathMap<usize, &[u8]>,
) -> Result<(), Violation> {
    let p = e.path_bytes();
    // Formatted only for a violation: this runs for every entry of every manifest read.
    let what = || shown(p);
    if let Some(why) = relative_path_problem(p) {
        return Err(violation(what(), why));
    }
    let is_tree_root = trees.iter().any(|t| t == p);
    let in_tree = trees.iter().any(|t| within(p, t));
    if e.implicit {
        if in_tree || !extra_ancestors.contains(p) || !matches!(e.kind, Kind::Dir | Kind::Symlink) {
            return Err(violation(
                what(),
                "marked as a machine-config file's parent directory, but it is not one",
            ));
        }
    } else if !in_tree && !extras.contains(p) {
        return Err(violation(
            what(),
            "outside every tree and machine-config file of the generation",
        ));
    }
    if is_tree_root && e.kind != Kind::Dir {
        return Err(violation(what(), "a tree root that is not a directory"));
    }
    // Parents before children: a tree root and a top-level outside path have none to list.
    let parent = parent_of(p);
    let needs_parent = !is_tree_root && !parent.is_empty();
    if needs_parent && !dirs.contains_key(parent) {
        return Err(violation(
            what(),
            format!(
                "its parent {} is not listed before it as a directory",
                shown(parent)
            ),
        ));
    }
    if e.mode & !0o7777 != 0 {
        return Err(violation(
            what(),
            format!("mode {:o} has bits beyond 07777", e.mode),
        ));
    }
    for (name, _) in e.xattrs.iter() {
        if name.is_empty() || name.contains(&0) {
            return Err(violation(
                what(),
                "an extended attribute with an empty or NUL name",
            ));
        }
    }
    match e.kind {
        Kind::File => match &e.hash {
            Some(h) if is_hash(h) => {}
            Some(h) => return Err(violation(what(), format!("`{h}` is not a content hash"))),
            None => return Err(violation(what(), "a regular file without a content hash")),
        },
        _ if e.hash.is_some() => {
            return Err(violation(
                what(),
                "a content hash on something that is not a regular file",
            ));
        }
        Kind::Symlink if e.link.is_none() => {
            return Err(violation(what(), "a symlink without a target"));
        }
        _ => {}
    }
    if e.link.is_some() && e.kind != Kind::Symlink {
        return Err(violation(
            what(),
            "a link target on something that is not a symlink",
        ));
    }
    if let Some(g) = e.hardlink {
        let owner = (g as usize).checked_sub(1);
        let ok = e.kind == Kind::File
            && owner.is_some_and(|o| {
                o <= i && entries[o].kind == Kind::File && entries[o].hardlink == Some(g)
            });
        if !ok {
            return Err(violation(
                what(),
                format!(
                    "hardlink group {g} does not name an earlier regular file of the same group"
                ),
            ));
        }
    }
    Ok(())
}

/// Check every rule; the first violation found is returned.
pub(crate) fn validate(m: &Manifest) -> Result<(), Violation> {
    let (trees, all_trees) = check_header(&m.header)?;
    let extras: HashSet<&[u8]> = m.header.extras.iter().map(|x| &x.0[..]).collect();
    let mut extra_ancestors: HashSet<&[u8]> = HashSet::new();
    for x in &extras {
        let mut p = parent_of(x);
        while !p.is_empty() {
            extra_ancestors.insert(p);
            p = parent_of(p);
        }
    }
    let mut seen: HashSet<&[u8], foldhash::fast::RandomState> =
        HashSet::with_capacity_and_hasher(m.entries.len(), Default::default());
    let mut dirs: PathMap<usize, &[u8]> = PathMap::default();
    for (i, e) in m.entries.iter().enumerate() {
        if !trees.iter().any(|t| within(e.path_bytes(), t))
            && all_trees.iter().any(|t| within(e.path_bytes(), t))
        {
            return Err(violation(
                shown(e.path_bytes()),
                "inside a tree that did not exist at backup time",
            ));
        }
        check_entry(i, e, &m.entries, &trees, &extras, &extra_ancestors, &dirs)?;
        if !seen.insert(e.path_bytes()) {
            return Err(violation(shown(e.path_bytes()), "listed twice"));
        }
        // A machine-config file's ancestor that was a symlink (RHCOS: /opt -> var/opt) holds
        // the rest of the chain: a restore follows it.
        if e.kind == Kind::Dir || (e.implicit && e.kind == Kind::Symlink) {
            dirs.insert(e.path_bytes(), i);
        }
    }
    for t in &trees {
        if !dirs.contains_key(&t[..]) {
            return Err(violation(
                shown(t),
                "a tree present at backup time has no entry",
            ));
        }
    }
    let mut artifacts = HashSet::new();
    for a in &m.artifacts {
        let what = format!("artifact {}", a.artifact);
        if let Some(why) = relative_path_problem(a.artifact.as_bytes()) {
            return Err(violation(what, why));
        }
        if !(a.artifact.starts_with("cluster/") || a.artifact.starts_with("images/")) {
            return Err(violation(what, "not under cluster/ or images/"));
        }
        if !is_hash(&a.hash) {
            return Err(violation(
                what,
                format!("`{}` is not a content hash", a.hash),
            ));
        }
        if !artifacts.insert(&a.artifact) {
            return Err(violation(what, "listed twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(relative_path_problem(b"etc/hosts"), None);
        for bad in [
            &b""[..],
            b"/etc",
            b"etc//x",
            b"etc/",
            b"etc/./x",
            b"etc/../x",
            b"..",
            b"a\0b",
        ] {
            assert!(relative_path_problem(bad).is_some(), "{bad:?}");
        }
        assert_eq!(absolute_path_problem("/etc"), None);
        assert!(absolute_path_problem("etc").is_some());
        assert!(absolute_path_problem("/").is_some());
        assert!(is_hash(&"a".repeat(64)));
        assert!(!is_hash(&"A".repeat(64)));
        assert!(!is_hash("../../etc/passwd"));
    }
}
