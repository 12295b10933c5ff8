//! Copying file content while hashing it, reading every byte once.
//!
//! Holes stay holes: a file with fewer allocated blocks than its size is copied extent by extent
//! (`SEEK_DATA`/`SEEK_HOLE`) and the hash covers the holes as zeros, so it equals the hash of
//! the logical content. Where source and destination share a file system that can clone extents
//! (XFS, Btrfs), a reflink replaces the copy and the source is only read to be hashed.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::SeekFrom;

const BUF: usize = 1 << 20;
static ZEROS: [u8; BUF] = [0; BUF];
/// From this size on a chunk is hashed on every core (BLAKE3 is a tree: its halves hash
/// independently); below it the threads cost more than they save.
const PARALLEL_HASH: usize = 256 * 1024;

/// Hash `data` into `h`, on every core when it is large. A big file is otherwise hashed on one
/// core while the other waits: with the verify step that reads it again, hashing was most of a
/// first backup's time.
fn feed(h: &mut blake3::Hasher, data: &[u8]) {
    if data.len() >= PARALLEL_HASH {
        h.update_rayon(data);
    } else {
        h.update(data);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Copied {
    pub hash: String,
    pub size: u64,
    pub sparse: bool,
    pub reflinked: bool,
}

/// Whether reflinks are worth trying; cleared after the first refusal so that a copy between
/// file systems does not pay a failing ioctl per file.
#[derive(Debug)]
pub(crate) struct ReflinkState(AtomicBool);

impl ReflinkState {
    pub fn new(try_reflink: bool) -> ReflinkState {
        ReflinkState(AtomicBool::new(try_reflink))
    }
    fn enabled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    fn disable(&self) {
        self.0.store(false, Ordering::Relaxed)
    }
}

fn hash_zeros(h: &mut blake3::Hasher, mut n: u64) {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        feed(h, &ZEROS[..k]);
        n -= k as u64;
    }
}

/// Walk a sparse file's data extents (`SEEK_DATA`/`SEEK_HOLE`): holes are hashed as zeros
/// without being read, data is read once, hashed, and handed to `data` with its offset.
fn for_each_extent(
    src: &File,
    size: u64,
    buf: &mut [u8],
    h: &mut blake3::Hasher,
    mut data: impl FnMut(&[u8], u64) -> io::Result<()>,
) -> io::Result<()> {
    let mut pos = 0u64;
    while pos < size {
        let start = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(d) => d.min(size),
            Err(rustix::io::Errno::NXIO) => size,
            Err(e) => return Err(e.into()),
        };
        hash_zeros(h, start - pos);
        if start >= size {
            break;
        }
        let hole = rustix::fs::seek(src, SeekFrom::Hole(start))?.min(size);
        let mut off = start;
        while off < hole {
            let want = ((hole - off) as usize).min(buf.len());
            let n = src.read_at(&mut buf[..want], off)?;
            if n == 0 {
                return Err(io::Error::other("file shrank while it was read"));
            }
            feed(h, &buf[..n]);
            data(&buf[..n], off)?;
            off += n as u64;
        }
        pos = hole;
    }
    Ok(())
}

/// Hash a whole file. Holes of a sparse file are hashed as zeros without being read.
pub(crate) fn hash_file(src: &File) -> io::Result<(String, u64)> {
    hash_file_metered(src, &|_| {})
}

/// [`hash_file`], telling `meter` how many bytes each read covered (for progress in bytes).
fn hash_file_metered(src: &File, meter: &dyn Fn(u64)) -> io::Result<(String, u64)> {
    let st = rustix::fs::fstat(src)?;
    let size = st.st_size as u64;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; BUF.min(size.max(4096) as usize)];
    if (st.st_blocks as u64) * 512 < size {
        for_each_extent(src, size, &mut buf, &mut h, |chunk, _| {
            meter(chunk.len() as u64);
            Ok(())
        })?;
        return Ok((h.finalize().to_hex().to_string(), size));
    }
    let mut total = 0u64;
    let mut r = src;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        feed(&mut h, &buf[..n]);
        total += n as u64;
        meter(n as u64);
    }
    Ok((h.finalize().to_hex().to_string(), total))
}

/// Copy `src` into the empty file `dst` and hash it. `expect` (a hex hash) makes the copy fail
/// if the content differs, so that unverified bytes are never put in place. `meter` is told
/// the bytes of every chunk as it is done, so that progress moves inside a large file.
pub(crate) fn copy_and_hash(
    src: OwnedFd,
    dst: &OwnedFd,
    reflink: &ReflinkState,
    expect: Option<&str>,
    meter: &dyn Fn(u64),
) -> io::Result<Copied> {
    let st = rustix::fs::fstat(&src)?;
    let size = st.st_size as u64;
    let src = File::from(src);
    let dst_file = dst.as_fd();

    let copied = if reflink.enabled() && size > 0 {
        match rustix::fs::ioctl_ficlone(dst_file, &src) {
            Ok(()) => {
                let (hash, n) = hash_file_metered(&src, meter)?;
                if n != size {
                    return Err(io::Error::other("file changed size while it was copied"));
                }
                Copied {
                    hash,
                    size,
                    sparse: (st.st_blocks as u64) * 512 < size,
                    reflinked: true,
                }
            }
            Err(_) => {
                reflink.disable();
                copy_bytes(&src, dst, size, st.st_blocks as u64, meter)?
            }
        }
    } else {
        copy_bytes(&src, dst, size, st.st_blocks as u64, meter)?
    };
    if let Some(e) = expect
        && e != copied.hash
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "content hash {} differs from the manifest's {e}",
                copied.hash
            ),
        ));
    }
    Ok(copied)
}

fn copy_bytes(
    src: &File,
    dst: &OwnedFd,
    size: u64,
    blocks: u64,
    meter: &dyn Fn(u64),
) -> io::Result<Copied> {
    let mut out = File::from(rustix::io::fcntl_dupfd_cloexec(dst, 0)?);
    let mut h = blake3::Hasher::new();
    let sparse = blocks * 512 < size;
    if !sparse {
        let mut buf = vec![0u8; BUF.min(size.max(4096) as usize)];
        let mut total = 0u64;
        let mut r = src;
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            feed(&mut h, &buf[..n]);
            out.write_all(&buf[..n])?;
            total += n as u64;
            meter(n as u64);
        }
        if total != size {
            return Err(io::Error::other(format!(
                "file changed size while it was copied ({size} -> {total} bytes)"
            )));
        }
        return Ok(Copied {
            hash: h.finalize().to_hex().to_string(),
            size,
            sparse: false,
            reflinked: false,
        });
    }
    // Extent by extent.
    let mut buf = vec![0u8; BUF];
    for_each_extent(src, size, &mut buf, &mut h, |chunk, offset| {
        meter(chunk.len() as u64);
        out.write_all_at(chunk, offset)
    })?;
    out.set_len(size)?;
    Ok(Copied {
        hash: h.finalize().to_hex().to_string(),
        size,
        sparse: true,
        reflinked: false,
    })
}
