//! Byte-path helpers shared by the restore walk.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};

use super::TMP_PREFIX;

pub(super) fn parent_of(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|b| *b == b'/') {
        Some(i) => &p[..i],
        None => b"",
    }
}

pub(super) fn base_of(p: &[u8]) -> &OsStr {
    let start = p
        .iter()
        .rposition(|b| *b == b'/')
        .map(|i| i + 1)
        .unwrap_or(0);
    OsStr::from_bytes(&p[start..])
}

pub(super) fn node(p: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(p))
}

pub(super) fn join(parent: &[u8], name: &OsStr) -> Vec<u8> {
    let mut p = parent.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name.as_bytes());
    p
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

pub(super) fn tmp_name() -> OsString {
    OsString::from(format!(
        "{TMP_PREFIX}{}.{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}
