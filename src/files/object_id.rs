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
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        // A table and one check at the end: a store's listing parses every object's name
        // (tens of thousands, three times per backup).
        let mut out = [0u8; 32];
        let mut bad = 0u8;
        for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
            let (hi, lo) = (DIGITS[pair[0] as usize], DIGITS[pair[1] as usize]);
            bad |= (hi | lo) & 0xf0;
            *o = hi << 4 | lo;
        }
        (bad == 0).then_some(ObjectId(out))
    }
}

/// The value of each lowercase hex digit; 0xff for any other byte.
const DIGITS: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

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
        // Each byte next to a digit's range, at the start, in the middle and at the end.
        for c in ['/', ':', '`', 'g', 'A', 'F', ' ', '\0'] {
            for at in [0, 31, 63] {
                let mut bad = h.clone().into_bytes();
                bad[at] = c as u8;
                let bad = String::from_utf8(bad).unwrap();
                assert_eq!(ObjectId::from_hex(&bad), None, "{bad:?}");
            }
        }
        let mut set = IdSet::default();
        set.insert(id);
        assert!(set.contains(&ObjectId::from_hex(&h).unwrap()));
        assert!(!set.contains(&ObjectId([0; 32])));
    }
}
