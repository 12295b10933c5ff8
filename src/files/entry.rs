//! One entry of a tree, with everything a faithful restore needs.

use rustix::fs::{FileType, Stat};
use serde::{Deserialize, Serialize};

use super::bytetext::ByteText;
use super::fsx::Xattrs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Char,
    Block,
    Socket,
}

impl Kind {
    pub(crate) fn of(st: &Stat) -> Kind {
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::Fifo => Kind::Fifo,
            FileType::CharacterDevice => Kind::Char,
            FileType::BlockDevice => Kind::Block,
            FileType::Socket => Kind::Socket,
            FileType::Unknown => Kind::File,
        }
    }

    /// The `S_IF*` bits for `mknod`.
    pub(crate) fn type_bits(self) -> u32 {
        match self {
            Kind::File => 0o100000,
            Kind::Dir => 0o040000,
            Kind::Symlink => 0o120000,
            Kind::Fifo => 0o010000,
            Kind::Char => 0o020000,
            Kind::Block => 0o060000,
            Kind::Socket => 0o140000,
        }
    }
}

/// A point in time with nanoseconds, as `stat` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Time(pub i64, pub u32);

/// Identity of the source inode at backup time. A live file whose device, inode, ctime, size
/// and mtime all still match was not touched since the backup (ctime cannot be set from user
/// space), so its content need not be hashed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Source {
    pub dev: u64,
    pub ino: u64,
    pub ctime: Time,
    pub nlink: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// The node path without its leading `/` (`etc/hosts`); bytes, not text.
    pub path: ByteText,
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`mode & 07777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Time,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// BLAKE3 of the content, hex (regular files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// The source had holes; the copy keeps them.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sparse: bool,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<ByteText>,
    /// Device number (char and block devices).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
    /// Extended attributes, values in hex, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "xattr_hex")]
    pub xattrs: Xattrs,
    /// Hardlink group: entries with the same group were one inode in the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardlink: Option<u64>,
    /// An ancestor directory of a machine-config file outside the trees: created if missing,
    /// never changed or emptied.
    #[serde(default, skip_serializing_if = "is_false")]
    pub implicit: bool,
    pub source: Source,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

/// The position of the entry whose content entry `i` carries: itself, or the first member of
/// its hardlink group (group ids are that position plus one).
pub(crate) fn content_owner(entries: &[Entry], i: usize) -> usize {
    match entries[i].hardlink {
        Some(g) if g >= 1 && (g as usize - 1) < entries.len() => g as usize - 1,
        _ => i,
    }
}

/// Whether entry `i` is a regular file that carries its own content (not a later hardlink).
pub(crate) fn owns_content(entries: &[Entry], i: usize) -> bool {
    entries[i].kind == Kind::File && content_owner(entries, i) == i
}

/// Bytes of regular-file content, each hardlinked inode once.
pub(crate) fn content_bytes(entries: &[Entry]) -> u64 {
    (0..entries.len())
        .filter(|&i| owns_content(entries, i))
        .map(|i| entries[i].size)
        .sum()
}

impl Entry {
    /// An entry from `lstat` data; content hash and xattrs are filled in by the caller.
    pub(crate) fn from_stat(path: &[u8], st: &Stat) -> Entry {
        let kind = Kind::of(st);
        Entry {
            path: ByteText(path.to_vec()),
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: Time(st.st_mtime, st.st_mtime_nsec as u32),
            size: if kind == Kind::File {
                st.st_size as u64
            } else {
                0
            },
            hash: None,
            sparse: false,
            link: None,
            rdev: if matches!(kind, Kind::Char | Kind::Block) {
                st.st_rdev
            } else {
                0
            },
            xattrs: Vec::new(),
            hardlink: None,
            implicit: false,
            source: Source {
                dev: st.st_dev,
                ino: st.st_ino,
                ctime: Time(st.st_ctime, st.st_ctime_nsec as u32),
                nlink: st.st_nlink,
            },
        }
    }

    pub(crate) fn path_bytes(&self) -> &[u8] {
        &self.path.0
    }

    /// The node path with a leading `/`, for messages.
    pub(crate) fn display(&self) -> String {
        format!("/{}", String::from_utf8_lossy(&self.path.0))
    }
}

/// Render bytes as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Lowercase or uppercase hex back to bytes. Read from manifests, so anything else (an odd
/// length, a character that is not a hex digit, one that is not ASCII) is an error.
pub(crate) fn unhex(s: &str) -> Result<Vec<u8>, String> {
    fn digit(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd-length hex `{s}`"));
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
            _ => Err(format!("bad hex `{s}`")),
        })
        .collect()
}

mod xattr_hex {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::super::bytetext::ByteText;
    use super::{hex, unhex};

    pub(crate) fn serialize<S: Serializer>(
        v: &[(Vec<u8>, Vec<u8>)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let pairs: Vec<(ByteText, String)> = v
            .iter()
            .map(|(n, val)| (ByteText(n.clone()), hex(val)))
            .collect();
        pairs.serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<super::super::fsx::Xattrs, D::Error> {
        let pairs: Vec<(ByteText, String)> = Vec::deserialize(d)?;
        pairs
            .into_iter()
            .map(|(n, v)| Ok((n.0, unhex(&v).map_err(D::Error::custom)?)))
            .collect()
    }
}
