//! A generation's manifest in a compact binary form, kept beside it (`manifest-cache`), so that
//! the next backup, which reads the previous manifest whole before its walk, need not parse
//! the JSON: at node scale that parse was a tenth of a second backup.
//!
//! The manifest stays the record: a restore, a verify and a collection read the JSON, and this
//! file is only ever a faster way to the same [`Manifest`]. It is a cache, written beside the
//! verify of its generation, without a flush (like the restore's `live-index`): it ends with
//! the BLAKE3 hash of everything before it, names the hash of the manifest it was made from,
//! and one that is missing, damaged, made from another manifest or in a format this recoveryd
//! does not know is ignored, which costs only the parse it would have saved. What it decodes
//! to is then checked by every rule of [`super::validate`], as a parsed manifest is.
//!
//! The layout is written by hand: `Entry`'s serde form leaves out fields at their default,
//! which no format without field names can read back, and a second set of types to feed one
//! would be as long as this and slower. Little-endian; a byte string is its length (u32) and
//! its bytes:
//!
//! ```text
//! magic "recoveryd-manifest-cache\n"   format u32   manifest hash [32]
//! header (JSON bytes)   artifacts (JSON bytes)
//! xattr sets u32, each: pairs u32, each: name bytes, value bytes
//! entries u32, each: path bytes, kind u8, flags u8, mode u32, uid u32, gid u32,
//!     mtime i64 u32, size u64, rdev u64, xattr set u32 (0: none, else index + 1),
//!     dev u64, ino u64, ctime i64 u32, nlink u64,
//!     [hash [32]] [link bytes] [hardlink u64]   (as the flags say)
//! checksum [32]: BLAKE3 of every byte before it
//! ```

use std::collections::HashMap;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

use super::bytetext::ByteText;
use super::entry::{Entry, Kind, Source, Time, hex};
use super::manifest::{Artifact, Hashing, Header, Manifest};
use super::object_id::ObjectId;
use super::xattr_set::XattrSet;

/// The file, in the generation's directory.
pub(crate) const MANIFEST_CACHE: &str = "manifest-cache";
/// Where it is written before it is renamed into place (a crash can leave it).
pub(crate) const MANIFEST_CACHE_TMP: &str = ".manifest-cache.tmp";
const MAGIC: &[u8] = b"recoveryd-manifest-cache\n";
const FORMAT: u32 = 1;
/// Far more than any node's trees need (under 200 bytes an entry, a few MiB at node scale): a
/// larger file is not read (the manifest, which is read in blocks, is parsed instead).
const MAX_BYTES: u64 = 256 << 20;

const HAS_HASH: u8 = 1;
const SPARSE: u8 = 2;
const HAS_LINK: u8 = 4;
const HAS_HARDLINK: u8 = 8;
const IMPLICIT: u8 = 16;

const KINDS: [Kind; 7] = [
    Kind::File,
    Kind::Dir,
    Kind::Symlink,
    Kind::Fifo,
    Kind::Char,
    Kind::Block,
    Kind::Socket,
];

fn kind_code(k: Kind) -> u8 {
    KINDS.iter().position(|&x| x == k).unwrap_or(0) as u8
}

fn put_bytes(w: &mut impl Write, b: &[u8]) -> io::Result<()> {
    let len = u32::try_from(b.len()).map_err(|_| io::Error::other("a field over 4 GiB"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(b)
}

fn put_u32(w: &mut impl Write, v: u32) -> io::Result<()> {
    w.write_all(&v.to_le_bytes())
}

fn put_u64(w: &mut impl Write, v: u64) -> io::Result<()> {
    w.write_all(&v.to_le_bytes())
}

fn put_time(w: &mut impl Write, t: Time) -> io::Result<()> {
    w.write_all(&t.0.to_le_bytes())?;
    put_u32(w, t.1)
}

fn count(n: usize) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::other("more than 2^32 items"))
}

/// An entry's xattrs, (name, value) pairs.
type Pairs = [(Vec<u8>, Vec<u8>)];

/// Write the cache of `m`, the manifest hashed `manifest_hash`, to `w` (checksum included).
fn encode(m: &Manifest, manifest_hash: &str, w: impl Write) -> io::Result<()> {
    let id = ObjectId::from_hex(manifest_hash)
        .ok_or_else(|| io::Error::other("the manifest hash is not a content hash"))?;
    let mut w = BufWriter::with_capacity(
        256 << 10,
        Hashing {
            inner: w,
            hasher: blake3::Hasher::new(),
        },
    );
    w.write_all(MAGIC)?;
    put_u32(&mut w, FORMAT)?;
    w.write_all(&id.0)?;
    put_bytes(&mut w, &serde_json::to_vec(&m.header)?)?;
    put_bytes(&mut w, &serde_json::to_vec(&m.artifacts)?)?;
    // Each distinct set once (a node has a few dozen), entries name it by its place.
    let mut sets: HashMap<&Pairs, u32, foldhash::fast::RandomState> = HashMap::default();
    let mut order: Vec<&Pairs> = Vec::new();
    for e in &m.entries {
        if !e.xattrs.is_empty() && !sets.contains_key(&*e.xattrs) {
            sets.insert(&e.xattrs, count(order.len() + 1)?);
            order.push(&e.xattrs);
        }
    }
    put_u32(&mut w, count(order.len())?)?;
    for set in &order {
        put_u32(&mut w, count(set.len())?)?;
        for (name, value) in *set {
            put_bytes(&mut w, name)?;
            put_bytes(&mut w, value)?;
        }
    }
    put_u32(&mut w, count(m.entries.len())?)?;
    for e in &m.entries {
        let hash = match e.hash.as_deref() {
            Some(h) => Some(ObjectId::from_hex(h).ok_or_else(|| {
                io::Error::other(format!("{}: the hash is not a content hash", e.display()))
            })?),
            None => None,
        };
        let flags = [
            (hash.is_some(), HAS_HASH),
            (e.sparse, SPARSE),
            (e.link.is_some(), HAS_LINK),
            (e.hardlink.is_some(), HAS_HARDLINK),
            (e.implicit, IMPLICIT),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |f, (_, bit)| f | bit);
        put_bytes(&mut w, e.path_bytes())?;
        w.write_all(&[kind_code(e.kind), flags])?;
        put_u32(&mut w, e.mode)?;
        put_u32(&mut w, e.uid)?;
        put_u32(&mut w, e.gid)?;
        put_time(&mut w, e.mtime)?;
        put_u64(&mut w, e.size)?;
        put_u64(&mut w, e.rdev)?;
        put_u32(&mut w, sets.get(&*e.xattrs).copied().unwrap_or(0))?;
        put_u64(&mut w, e.source.dev)?;
        put_u64(&mut w, e.source.ino)?;
        put_time(&mut w, e.source.ctime)?;
        put_u64(&mut w, e.source.nlink)?;
        if let Some(h) = hash {
            w.write_all(&h.0)?;
        }
        if let Some(l) = &e.link {
            put_bytes(&mut w, &l.0)?;
        }
        if let Some(g) = e.hardlink {
            put_u64(&mut w, g)?;
        }
    }
    let mut h = w.into_inner().map_err(|e| e.into_error())?;
    let sum = h.hasher.finalize();
    h.inner.write_all(sum.as_bytes())
}

/// Bytes being decoded: every length is checked against what is left before anything is
/// allocated for it, so damaged bytes cost no more memory than their own size.
struct Reader<'a> {
    left: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        ensure!(n <= self.left.len(), "ends early");
        let (head, rest) = self.left.split_at(n);
        self.left = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        b.copy_from_slice(self.take(N)?);
        Ok(b)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn time(&mut self) -> Result<Time> {
        Ok(Time(i64::from_le_bytes(self.array()?), self.u32()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        ensure!(n <= self.left.len(), "a length of {n} bytes past the end");
        self.take(n)
    }
    /// A count of items, each at least `min` bytes long.
    fn count(&mut self, min: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        ensure!(
            n.saturating_mul(min) <= self.left.len(),
            "a count of {n} past the end"
        );
        Ok(n)
    }
}

/// Decode a cache's body (everything before its checksum): the hash of the manifest it was
/// made from, and the manifest. Nothing is checked against the manifest's rules here.
fn decode(body: &[u8]) -> Result<(ObjectId, Manifest)> {
    let mut r = Reader { left: body };
    ensure!(
        r.array::<{ MAGIC.len() }>()? == MAGIC,
        "not a manifest cache"
    );
    let format = r.u32()?;
    ensure!(format == FORMAT, "format {format} is not {FORMAT}");
    let id = ObjectId(r.array()?);
    let header: Header = serde_json::from_slice(r.bytes()?).context("its header")?;
    ensure!(
        header.format == super::manifest::FORMAT && header.version == super::manifest::VERSION,
        "a manifest of format {} version {}",
        header.format,
        header.version
    );
    let artifacts: Vec<Artifact> = serde_json::from_slice(r.bytes()?).context("its artifacts")?;
    let mut sets = vec![XattrSet::default()];
    for _ in 0..r.count(4)? {
        let pairs = r.count(8)?;
        let mut set = Vec::with_capacity(pairs);
        for _ in 0..pairs {
            set.push((r.bytes()?.to_vec(), r.bytes()?.to_vec()));
        }
        ensure!(!set.is_empty(), "an empty set of xattrs");
        sets.push(XattrSet::from(set));
    }
    let n = r.count(86)?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let path = ByteText(r.bytes()?.to_vec());
        let (kind, flags) = (r.u8()?, r.u8()?);
        let kind = *KINDS
            .get(usize::from(kind))
            .with_context(|| format!("kind {kind}"))?;
        ensure!(flags < IMPLICIT << 1, "flags {flags:#x}");
        let (mode, uid, gid) = (r.u32()?, r.u32()?, r.u32()?);
        let (mtime, size, rdev) = (r.time()?, r.u64()?, r.u64()?);
        let set = r.u32()? as usize;
        let xattrs = sets
            .get(set)
            .with_context(|| format!("xattr set {set} of {}", sets.len()))?
            .clone();
        let source = Source {
            dev: r.u64()?,
            ino: r.u64()?,
            ctime: r.time()?,
            nlink: r.u64()?,
        };
        let hash = match flags & HAS_HASH {
            0 => None,
            _ => Some(hex(&r.array::<32>()?)),
        };
        let link = match flags & HAS_LINK {
            0 => None,
            _ => Some(ByteText(r.bytes()?.to_vec())),
        };
        let hardlink = match flags & HAS_HARDLINK {
            0 => None,
            _ => Some(r.u64()?),
        };
        entries.push(Entry {
            path,
            kind,
            mode,
            uid,
            gid,
            mtime,
            size,
            hash,
            sparse: flags & SPARSE != 0,
            link,
            rdev,
            xattrs,
            hardlink,
            implicit: flags & IMPLICIT != 0,
            source,
        });
    }
    ensure!(
        r.left.is_empty(),
        "{} bytes after its last entry",
        r.left.len()
    );
    let mut m = Manifest::new(header);
    m.entries = entries;
    m.artifacts = artifacts;
    Ok((id, m))
}

/// Check and decode a whole cache file's bytes: its checksum first (nothing is decoded unless
/// it holds), then its layout.
fn read_from(bytes: &[u8]) -> Result<(ObjectId, Manifest)> {
    ensure!(bytes.len() >= 32, "shorter than its checksum");
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    ensure!(
        blake3::hash(body).as_bytes() == sum,
        "does not match its checksum: damaged"
    );
    decode(body)
}

/// Write the cache of `m` (the manifest hashed `manifest_hash`) into the generation directory
/// `dir`, replacing one there. Not flushed: after a crash it is whole, or refused as damaged.
pub(crate) fn write(dir: &Path, manifest_hash: &str, m: &Manifest) -> Result<()> {
    let tmp = dir.join(MANIFEST_CACHE_TMP);
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    encode(m, manifest_hash, file).with_context(|| format!("writing {}", tmp.display()))?;
    let path = dir.join(MANIFEST_CACHE);
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

/// The manifest hashed `manifest_hash` from the cache in the generation directory `dir`, still
/// to be checked by [`super::validate`]: `None` when there is no cache; an error when there is
/// one that cannot be used (why, for the log).
pub(crate) fn read(dir: &Path, manifest_hash: &str) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST_CACHE);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let len = file.metadata()?.len();
    ensure!(
        len <= MAX_BYTES,
        "{}: larger than {MAX_BYTES} bytes",
        path.display()
    );
    // Read whole: at node scale a few MiB, taken before the walk, when the backup holds
    // little else.
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        bytes.len() as u64 <= MAX_BYTES,
        "{}: larger than {MAX_BYTES} bytes",
        path.display()
    );
    let (id, m) = read_from(&bytes).with_context(|| path.display().to_string())?;
    if ObjectId::from_hex(manifest_hash) != Some(id) {
        bail!(
            "{}: made from manifest {id}, not {manifest_hash}",
            path.display()
        );
    }
    Ok(Some(m))
}

/// Decode a cache's bytes without its checksum (the fuzz target: the checksum would refuse
/// nearly every input before the decoder saw it). Whether they decoded to a manifest that
/// every rule of [`super::validate`] accepts.
pub(crate) fn decodes(bytes: &[u8]) -> bool {
    decode(bytes).is_ok_and(|(_, m)| super::validate::validate(&m).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz seed's manifest, with a bit of every kind an entry can carry.
    fn sample() -> (Manifest, String) {
        let text = include_bytes!("../../fuzz/seeds/manifest/files-only");
        let mut m = Manifest::read_bytes(text, "seed", None).unwrap();
        let hash = blake3::hash(text).to_hex().to_string();
        let label = |l: &str| {
            XattrSet::from(vec![(
                b"security.selinux".to_vec(),
                format!("system_u:object_r:{l}:s0\0").into_bytes(),
            )])
        };
        for (i, e) in m.entries.iter_mut().enumerate() {
            e.xattrs = label(if i % 2 == 0 { "etc_t" } else { "bin_t" });
            e.sparse = e.kind == Kind::File;
            e.implicit = i == 1;
        }
        m.artifacts.push(Artifact {
            artifact: "cluster/snapshot.db".into(),
            size: 7,
            hash: "ab".repeat(32),
        });
        (m, hash)
    }

    fn bytes_of(m: &Manifest, hash: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode(m, hash, &mut out).unwrap();
        out
    }

    #[test]
    fn reads_back_what_it_was_made_from_and_names_the_manifest() {
        let (m, hash) = sample();
        let bytes = bytes_of(&m, &hash);
        let (id, back) = read_from(&bytes).unwrap();
        assert_eq!(id.to_string(), hash);
        assert_eq!(back, m);
        assert!(decode(&bytes[..bytes.len() - 32]).is_ok());

        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path(), &hash).unwrap().is_none(), "none written");
        write(dir.path(), &hash, &m).unwrap();
        assert_eq!(read(dir.path(), &hash).unwrap(), Some(m.clone()));
        assert!(!dir.path().join(MANIFEST_CACHE_TMP).exists());
        let other = "cd".repeat(32);
        let e = read(dir.path(), &other).unwrap_err();
        assert!(format!("{e:#}").contains("made from manifest"), "{e:#}");
    }

    #[test]
    fn a_damaged_or_cut_cache_is_refused() {
        let (m, hash) = sample();
        let bytes = bytes_of(&m, &hash);
        for at in 0..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0x10;
            let e = read_from(&b).unwrap_err();
            assert!(format!("{e:#}").contains("checksum"), "byte {at}: {e:#}");
        }
        for cut in [0, 10, 31, 32, bytes.len() / 2, bytes.len() - 1] {
            assert!(read_from(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// Bytes with a good checksum and a layout that lies (a forged or mis-written cache) are
    /// refused by the decoder, without allocating what their lengths claim.
    #[test]
    fn a_layout_that_lies_is_refused_whatever_its_checksum() {
        let (m, hash) = sample();
        let body = {
            let b = bytes_of(&m, &hash);
            b[..b.len() - 32].to_vec()
        };
        let sealed = |body: &[u8]| {
            let mut b = body.to_vec();
            b.extend_from_slice(blake3::hash(body).as_bytes());
            read_from(&b)
        };
        assert!(sealed(&body).is_ok());
        // The largest u32 at every place: where a length or a count was, it is refused for
        // what it claims (nothing is allocated for it); elsewhere it is a value.
        let mut why = Vec::new();
        for at in MAGIC.len() + 4 + 32..body.len() - 4 {
            let mut b = body.clone();
            b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            if let Err(e) = sealed(&b) {
                why.push(format!("{e:#}"));
            }
        }
        for claim in [
            "a length of 4294967295 bytes past the end",
            "a count of 4294967295 past the end",
        ] {
            assert!(why.iter().any(|w| w.contains(claim)), "{claim}: {why:?}");
        }
        // Another format, another magic, bytes left over, an unknown kind.
        let mut b = body.clone();
        b[MAGIC.len()] = 2;
        assert!(format!("{:#}", sealed(&b).unwrap_err()).contains("format 2"));
        let mut b = body.clone();
        b[0] = b'x';
        assert!(sealed(&b).is_err());
        let mut b = body.clone();
        b.push(0);
        assert!(format!("{:#}", sealed(&b).unwrap_err()).contains("after its last entry"));
        assert!(!decodes(b"recoveryd-manifest-cache\n\x01\0\0\0"));
    }

    /// The fuzz seed is the cache of the manifest seed (without its checksum, which the fuzz
    /// target does not check); `UPDATE_GOLDEN=1` writes it again.
    #[test]
    fn the_fuzz_seed_is_the_cache_of_the_manifest_seed() {
        let text = include_bytes!("../../fuzz/seeds/manifest/files-only");
        let m = Manifest::read_bytes(text, "seed", None).unwrap();
        let bytes = bytes_of(&m, &blake3::hash(text).to_hex());
        let body = &bytes[..bytes.len() - 32];
        let seed =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/manifest_cache/files-only");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(seed.parent().unwrap()).unwrap();
            std::fs::write(&seed, body).unwrap();
        }
        assert_eq!(
            std::fs::read(&seed).unwrap(),
            body,
            "UPDATE_GOLDEN=1 writes it"
        );
    }
}
