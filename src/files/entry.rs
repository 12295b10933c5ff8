//! One entry of a tree, with everything a faithful restore needs.

use rustix::fs::{FileType, Stat};
use serde::{Deserialize, Serialize};

use super::bytetext::ByteText;
use super::xattr_set::XattrSet;

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
/// space), so its content need not be hashed again, nor its xattrs or link target read again:
/// every change of content, owner, mode, xattrs or link count moves ctime, and so does every
/// name added to or removed from a directory. See [`Entry::untouched`].
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
    #[serde(default, skip_serializing_if = "is_empty", with = "xattr_hex")]
    pub xattrs: XattrSet,
    /// Hardlink group: entries with the same group were one inode in the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardlink: Option<u64>,
    /// An ancestor directory of a machine-config file outside the trees: created if missing,
    /// never changed or emptied.
    #[serde(default, skip_serializing_if = "is_false")]
    pub implicit: bool,
    pub source: Source,
}

/// How long before the walk that recorded an entry its last change must be for its identity to
/// be trusted later. File systems stamp ctime from a clock that ticks (every few milliseconds
/// on Linux before 6.13, every second on ext4 with small inodes, every two on FAT), so a file
/// changed again within the tick of a change the walk just read keeps its ctime: the walk
/// read one state and the inode holds another under the same identity (git's "racy" entries).
/// An entry changed this close to its walk, or during it, is therefore read again next time.
/// A clock stepped back by more than this during a walk defeats it; nothing else does.
pub(crate) const RACY_NANOS: i128 = 2_000_000_000;

impl Time {
    fn nanos(self) -> i128 {
        i128::from(self.0) * 1_000_000_000 + i128::from(self.1)
    }

    /// Whether a change at this time (a ctime) is far enough before `walked`, when a walk
    /// that read it began, for the identity it left to be trusted later ([`RACY_NANOS`]).
    pub(crate) fn settled_before(self, walked: Time) -> bool {
        self.nanos() + RACY_NANOS < walked.nanos()
    }

    /// The time of a `SystemTime` (the start of a walk).
    pub(crate) fn of(t: std::time::SystemTime) -> Time {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Time(d.as_secs() as i64, d.subsec_nanos()),
            Err(_) => Time(0, 0),
        }
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}
fn is_empty(v: &XattrSet) -> bool {
    v.is_empty()
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
            xattrs: XattrSet::default(),
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

    /// Whether the live inode `st` is the one this entry recorded, untouched since: the same
    /// device, inode number and ctime, and the entry's last change long enough before
    /// `walked`, when the walk that recorded it began, not to be racy (see [`RACY_NANOS`]; a
    /// manifest that does not say when its walk began trusts the identity alone). Its xattrs
    /// and link target are then the recorded ones; its content too when size and mtime also
    /// match.
    pub(crate) fn untouched(&self, st: &Stat, walked: Option<Time>) -> bool {
        st.st_dev == self.source.dev
            && st.st_ino == self.source.ino
            && Time(st.st_ctime, st.st_ctime_nsec as u32) == self.source.ctime
            && !self.racy(walked)
    }

    /// Whether the entry's last change was too close to `walked` (or after it) for its
    /// identity to say it is unchanged ([`RACY_NANOS`]).
    pub(crate) fn racy(&self, walked: Option<Time>) -> bool {
        walked.is_some_and(|w| !self.source.ctime.settled_before(w))
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
    // A table, not `write!("{b:02x}")` per byte: every xattr value of a manifest passes here,
    // and the formatting machinery was a visible part of writing one.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Lowercase or uppercase hex back to bytes. Read from manifests, so anything else (an odd
/// length, a character that is not a hex digit, one that is not ASCII) is an error.
pub(crate) fn unhex(s: &str) -> Result<Vec<u8>, String> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd-length hex `{s}`"));
    }
    s.as_bytes()
        .chunks_exact(2)
        .map(|pair| match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
            _ => Err(format!("bad hex `{s}`")),
        })
        .collect()
}

mod xattr_hex {
    //! `[[name, hex value], ...]`. Both ways without intermediate copies: every file of a
    //! manifest has its SELinux label here, so this is on the path of every manifest read or
    //! written.
    use std::fmt;

    use serde::de::{Error, SeqAccess, Visitor};
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::super::bytetext::ByteText;
    use super::{hex, unhex};

    /// A name as [`ByteText`] writes it, borrowed.
    struct Name<'a>(&'a [u8]);

    impl Serialize for Name<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            crate::files::bytetext::serialize_bytes(self.0, s)
        }
    }

    pub(crate) fn serialize<S: Serializer>(
        v: &[(Vec<u8>, Vec<u8>)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for (n, val) in v {
            seq.serialize_element(&(Name(n), hex(val)))?;
        }
        seq.end()
    }

    /// A hex value, decoded straight from the string the deserializer hands over.
    struct HexValue(Vec<u8>);

    impl<'de> Deserialize<'de> for HexValue {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = HexValue;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string of hex digits")
                }
                fn visit_str<E: Error>(self, v: &str) -> Result<HexValue, E> {
                    unhex(v).map(HexValue).map_err(E::custom)
                }
            }
            d.deserialize_str(V)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<super::super::xattr_set::XattrSet, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = super::super::xattr_set::XattrSet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of [name, hex value] pairs")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some((n, v)) = seq.next_element::<(ByteText, HexValue)>()? {
                    out.push((n.0, v.0));
                }
                Ok(super::super::xattr_set::parsed(out))
            }
        }
        d.deserialize_seq(Pairs)
    }
}
