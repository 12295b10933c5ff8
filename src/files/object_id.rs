//! The name of a stored object as 32 bytes: its BLAKE3 digest. Sets of them are what a
//! collection of objects compares (every object of the store against what every generation
//! names), so they are kept as digests, not as 64-character strings.

use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ObjectId(pub [u8; 32]);

impl ObjectId {
    /// The id a store name stands for: exactly 64 lowercase hex digits (what
    /// [`super::validate::is_hash`] accepts), else `None`.
    pub(crate) fn from_hex(s: &str) -> Option<ObjectId> {
        fn digit(c: u8) -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            }
        }
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(ObjectId(out))
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&super::entry::hex(&self.0))
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Hashes an [`ObjectId`] by its first eight bytes. Written by hand (a few lines) rather than
/// taken from a crate: the ids are BLAKE3 digests, as evenly spread as any hash of them would
/// be, and SipHash over 32 bytes was a visible part of collecting a store of 50k objects.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its length, then its bytes: keep the first eight bytes of the
        // longest write, which is the digest.
        if bytes.len() >= 8 {
            self.0 = u64::from_le_bytes(bytes[..8].try_into().expect("eight bytes"));
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

/// A set of object ids.
pub(crate) type IdSet = HashSet<ObjectId, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_names_and_only_they_are_ids() {
        let h = blake3::hash(b"x").to_hex().to_string();
        let id = ObjectId::from_hex(&h).unwrap();
        assert_eq!(id.to_string(), h);
        assert_eq!(id.0, *blake3::hash(b"x").as_bytes());
        for bad in [
            &h[..63],
            &format!("{h}0")[..],
            &h.to_uppercase()[..],
            &format!("g{}", &h[1..])[..],
            "",
        ] {
            assert_eq!(ObjectId::from_hex(bad), None, "{bad}");
        }
        let mut set = IdSet::default();
        set.insert(id);
        assert!(set.contains(&ObjectId::from_hex(&h).unwrap()));
        assert!(!set.contains(&ObjectId([0; 32])));
    }
}
