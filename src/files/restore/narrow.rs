//! A generation's manifest cut down to some node paths (`restore-files --path P`), and moved
//! to another directory (`--target DIR`), so that the one restore routine restores exactly
//! that and leaves everything else alone.
//!
//! A directory P becomes a tree of its own (P and everything under it; what is under P on the
//! node and not in the generation is removed, as in any tree). A file, symlink or device P
//! becomes a lone file like a machine-config file: its parent directories are created if
//! missing and never changed. Nothing outside the paths asked for is in the result, so
//! nothing outside them is touched. The result is validated like any manifest read from disk.

use anyhow::{Context, Result, bail};

use super::super::bytetext::ByteText;
use super::super::entry::Kind;
use super::super::manifest::{Manifest, TreeInfo};
use super::super::validate::{absolute_path_problem, validate};

/// `m` restricted to `paths` (absolute node paths); every path must be in the generation.
pub(crate) fn narrow(m: &Manifest, paths: &[String]) -> Result<Manifest> {
    let mut trees: Vec<TreeInfo> = Vec::new();
    let mut lone: Vec<Vec<u8>> = Vec::new();
    for p in paths {
        if let Some(why) = absolute_path_problem(p) {
            bail!("--path {p}: {why}");
        }
        let rel = p
            .trim_end_matches('/')
            .trim_start_matches('/')
            .as_bytes()
            .to_vec();
        let entry = m
            .entries
            .iter()
            .find(|e| e.path.0 == rel)
            .with_context(|| format!("{p} is not in generation {}", m.header.generation))?;
        if entry.kind == Kind::Dir && !entry.implicit {
            let path = format!("/{}", String::from_utf8_lossy(&rel));
            // Reached the way the tree that holds it was (RHCOS: /usr/local -> /var/usrlocal).
            let resolved = m
                .header
                .trees
                .iter()
                .find(|t| under(&rel, t.path.trim_start_matches('/').as_bytes()))
                .and_then(|t| {
                    let suffix = &path[t.path.len()..];
                    t.resolved.as_ref().map(|r| format!("{r}{suffix}"))
                });
            trees.push(TreeInfo {
                path,
                present: true,
                resolved,
            });
        } else {
            lone.push(rel);
        }
    }
    let tree_rels: Vec<Vec<u8>> = trees
        .iter()
        .map(|t| t.path.trim_start_matches('/').as_bytes().to_vec())
        .collect();
    for (i, a) in tree_rels.iter().enumerate() {
        for (j, b) in tree_rels.iter().enumerate() {
            if i != j && under(a, b) {
                bail!(
                    "--path {} is inside --path {}: give one of them",
                    trees[i].path,
                    trees[j].path
                );
            }
        }
    }
    lone.retain(|l| !tree_rels.iter().any(|t| under(l, t)));
    let mut out = Manifest {
        header: m.header.clone(),
        entries: Vec::new(),
        artifacts: Vec::new(),
    };
    out.header.trees = trees;
    out.header.extras = lone.iter().cloned().map(ByteText).collect();
    out.header.extras_absent = Vec::new();
    for e in &m.entries {
        let p = &e.path.0;
        if tree_rels.iter().any(|t| under(p, t)) || lone.contains(p) {
            let mut e = e.clone();
            e.implicit = false;
            out.entries.push(e);
        } else if lone.iter().any(|l| under(l, p) && l != p) {
            // A parent of a lone file: created if missing, never changed.
            let mut e = e.clone();
            e.implicit = true;
            out.entries.push(e);
        }
    }
    validate(&out).map_err(|v| {
        anyhow::anyhow!("the paths asked for do not make a restorable selection: {v}")
    })?;
    Ok(out)
}

/// The same manifest restored under another directory: the trees are plain directories there
/// (no symlink of the node is followed to reach them).
pub(crate) fn for_target(mut m: Manifest) -> Manifest {
    for t in &mut m.header.trees {
        t.resolved = None;
    }
    m
}

/// Whether `path` is `dir` or inside it (relative byte paths).
fn under(path: &[u8], dir: &[u8]) -> bool {
    path == dir || (path.starts_with(dir) && path.get(dir.len()) == Some(&b'/'))
}
