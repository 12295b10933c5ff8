//! Directory-handle file operations that never follow a symlink by accident.
//!
//! Everything below a tree root is reached through directory file descriptors with
//! `O_NOFOLLOW`/`RESOLVE_NO_SYMLINKS`, so a symlink planted in a live tree (`/etc/foo -> /`)
//! can never make a backup read, or a restore write, outside that tree. Written on `rustix`
//! because std has no `*at` API; extended attributes of entries that cannot be opened (symlinks,
//! devices, fifos) are read with `listxattrat`/`getxattrat` and `AT_SYMLINK_NOFOLLOW` where the
//! kernel has them ([`super::xattrat`]), otherwise through `/proc/self/fd/<dir>/<name>`, whose
//! last component is not followed by the `l*xattr` calls.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Stat};

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOFOLLOW);

/// Open `root` and then `path` inside it, resolving symlinks as if `root` were `/`
/// (`RESOLVE_IN_ROOT`). Used for tree roots: on RHCOS `/usr/local` is a symlink to
/// `/var/usrlocal`, and it must resolve inside the node, not inside the host of a test.
pub fn open_dir_in_root(root: &Path, path: &Path) -> io::Result<OwnedFd> {
    let root_fd = rustix::fs::open(root, DIR_FLAGS, Mode::empty())?;
    let rel = path.strip_prefix("/").unwrap_or(path);
    if rel.as_os_str().is_empty() {
        return Ok(root_fd);
    }
    Ok(rustix::fs::openat2(
        &root_fd,
        rel,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// The node path an open directory resolved to, relative to `root` (`/var/usrlocal`).
pub(crate) fn resolved_in_root(root: &Path, fd: BorrowedFd<'_>) -> io::Result<String> {
    let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    let root = std::fs::canonicalize(root)?;
    match target.strip_prefix(&root) {
        Ok(rel) => Ok(format!("/{}", rel.display())),
        Err(_) => Err(io::Error::other(format!(
            "{} is outside {}",
            target.display(),
            root.display()
        ))),
    }
}

/// Open a child directory; fails (ELOOP/ENOTDIR) if the child is a symlink.
pub(crate) fn open_child_dir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())?)
}

/// Open a regular child file for reading, never following a symlink.
pub(crate) fn open_child_file(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY;
    match rustix::fs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(rustix::io::Errno::PERM) => Ok(rustix::fs::openat(dir, name, flags, Mode::empty())?),
        r => Ok(r?),
    }
}

/// Create a new file for writing (fails if it exists).
pub(crate) fn create_child_file(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    mode: u32,
) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(mode),
    )?)
}

/// `lstat` of a child.
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Stat> {
    Ok(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    Ok(rustix::fs::fstat(fd)?)
}

/// `lstat` that answers `None` for a missing child.
pub(crate) fn try_lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The names in a directory (without `.` and `..`), sorted bytewise.
///
/// Read with `getdents64` on the descriptor itself (rustix's `RawDir`), from its start: a
/// `Dir` would open the directory a second time (`openat(fd, ".")`, then `close`), two calls
/// more for every directory of a walk.
pub(crate) fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    // From the first entry, whoever read this descriptor before.
    rustix::fs::seek(dir, rustix::fs::SeekFrom::Start(0))?;
    // Room for a few hundred names a call; the longest name (255 bytes) fits many times.
    let mut buf = Vec::with_capacity(32 * 1024);
    let mut d = rustix::fs::RawDir::new(dir, buf.spare_capacity_mut());
    let mut names = Vec::new();
    while let Some(entry) = d.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        names.push(OsString::from_vec(name.to_vec()));
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

pub(crate) fn read_link_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    Ok(rustix::fs::readlinkat(dir, name, Vec::new())?.into_bytes())
}

/// The `/proc/self/fd` path of a child, for calls that have no `*at` form.
fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(name);
    p
}

/// Extended attributes, sorted by name.
pub(crate) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

fn not_supported(e: rustix::io::Errno) -> bool {
    e == rustix::io::Errno::NOTSUP || e == rustix::io::Errno::OPNOTSUPP
}

fn parse_names(buf: &[u8]) -> Vec<Vec<u8>> {
    buf.split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| n.to_vec())
        .collect()
}

fn grow_list(query: impl Fn(&mut [u8]) -> rustix::io::Result<usize>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    loop {
        match query(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) if buf.len() < (1 << 24) => {
                let len = buf.len() * 4;
                buf.resize(len, 0);
            }
            Err(e) if not_supported(e) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    }
}

fn read_all(
    names: Vec<Vec<u8>>,
    get: impl Fn(&OsStr, &mut [u8]) -> rustix::io::Result<usize>,
) -> io::Result<Xattrs> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let os = OsStr::from_bytes(&name);
        let mut buf = vec![0u8; 256];
        loop {
            match get(os, &mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    break;
                }
                Err(rustix::io::Errno::RANGE) if buf.len() < (1 << 24) => {
                    let len = buf.len() * 4;
                    buf.resize(len, 0);
                }
                // Removed between list and get.
                Err(rustix::io::Errno::NODATA) => {
                    buf.clear();
                    buf.shrink_to_fit();
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        out.push((name, buf));
    }
    out.sort();
    Ok(out)
}

/// All extended attributes of an open file or directory.
pub(crate) fn xattrs_fd(fd: BorrowedFd<'_>) -> io::Result<Xattrs> {
    let list = grow_list(|b| rustix::fs::flistxattr(fd, b))?;
    read_all(parse_names(&list), |n, b| rustix::fs::fgetxattr(fd, n, b))
}

/// All extended attributes of a child that is not opened (symlinks, devices, fifos).
pub(crate) fn xattrs_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Xattrs> {
    if let Some(child) = super::xattrat::Child::new(dir, name) {
        let list = grow_list(|b| child.list(b))?;
        return read_all(parse_names(&list), |n, b| child.get(n, b));
    }
    xattrs_through_proc(dir, name)
}

/// [`xattrs_at`] where the kernel has no `*xattrat` calls.
pub(super) fn xattrs_through_proc(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Xattrs> {
    let p = proc_path(dir, name);
    let list = grow_list(|b| rustix::fs::llistxattr(&p, b))?;
    read_all(parse_names(&list), |n, b| rustix::fs::lgetxattr(&p, n, b))
}

/// Where to apply metadata: an open descriptor, or a child that must not be opened.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    Fd(BorrowedFd<'a>),
    Child(BorrowedFd<'a>, &'a OsStr),
}

impl Target<'_> {
    pub(crate) fn xattrs(&self) -> io::Result<Xattrs> {
        match *self {
            Target::Fd(fd) => xattrs_fd(fd),
            Target::Child(dir, name) => xattrs_at(dir, name),
        }
    }

    pub(crate) fn set_xattr(&self, name: &[u8], value: &[u8]) -> io::Result<()> {
        let n = OsStr::from_bytes(name);
        let flags = rustix::fs::XattrFlags::empty();
        match *self {
            Target::Fd(fd) => rustix::fs::fsetxattr(fd, n, value, flags)?,
            Target::Child(dir, child) => {
                rustix::fs::lsetxattr(proc_path(dir, child), n, value, flags)?
            }
        }
        Ok(())
    }

    pub(crate) fn remove_xattr(&self, name: &[u8]) -> io::Result<()> {
        let n = OsStr::from_bytes(name);
        match *self {
            Target::Fd(fd) => rustix::fs::fremovexattr(fd, n)?,
            Target::Child(dir, child) => rustix::fs::lremovexattr(proc_path(dir, child), n)?,
        }
        Ok(())
    }

    pub(crate) fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        let (u, g) = (
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        );
        match *self {
            Target::Fd(fd) => rustix::fs::fchown(fd, u, g)?,
            Target::Child(dir, child) => {
                rustix::fs::chownat(dir, child, u, g, AtFlags::SYMLINK_NOFOLLOW)?
            }
        }
        Ok(())
    }

    /// Permission bits; a no-op for symlinks (Linux has no symlink modes). A child is never
    /// followed: Linux has no lchmod (and `fchmodat` with `AT_SYMLINK_NOFOLLOW` is not
    /// supported everywhere), so the child is pinned with `O_PATH | O_NOFOLLOW`, checked, and
    /// changed through its `/proc/self/fd` link, which names that inode and no other.
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        let m = Mode::from_raw_mode(mode & 0o7777);
        match *self {
            Target::Fd(fd) => rustix::fs::fchmod(fd, m)?,
            Target::Child(dir, child) => {
                let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let pinned = rustix::fs::openat(dir, child, flags, Mode::empty())?;
                let st = rustix::fs::fstat(&pinned)?;
                if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink
                {
                    return Ok(());
                }
                rustix::fs::chmod(format!("/proc/self/fd/{}", pinned.as_raw_fd()), m)?;
            }
        }
        Ok(())
    }

    pub(crate) fn set_mtime(&self, sec: i64, nsec: u32) -> io::Result<()> {
        let times = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: sec,
                tv_nsec: nsec as _,
            },
        };
        match *self {
            Target::Fd(fd) => rustix::fs::futimens(fd, &times)?,
            Target::Child(dir, child) => {
                rustix::fs::utimensat(dir, child, &times, AtFlags::SYMLINK_NOFOLLOW)?
            }
        }
        Ok(())
    }
}

/// Remove a child of any type; directories are removed with their content, without crossing
/// into another file system (a mount point found inside is left alone and reported).
pub(crate) fn remove_tree_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    dev: u64,
    skipped_mounts: &mut Vec<PathBuf>,
    at: &Path,
) -> io::Result<()> {
    let st = match try_lstat_at(dir, name)? {
        Some(st) => st,
        None => return Ok(()),
    };
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
        return Ok(());
    }
    if st.st_dev != dev {
        skipped_mounts.push(at.join(name));
        return Ok(());
    }
    let child = open_child_dir(dir, name)?;
    let mut kept_mount = false;
    for n in list_dir(child.as_fd())? {
        let before = skipped_mounts.len();
        remove_tree_at(child.as_fd(), &n, dev, skipped_mounts, &at.join(name))?;
        kept_mount |= skipped_mounts.len() > before;
    }
    if !kept_mount {
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    }
    Ok(())
}

pub(crate) fn rename_at(dir: BorrowedFd<'_>, from: &OsStr, to: &OsStr) -> io::Result<()> {
    Ok(rustix::fs::renameat(dir, from, dir, to)?)
}

/// Put the new file `from` in the place of the existing entry `to` atomically, and remove what
/// was there. The two names are exchanged (`RENAME_EXCHANGE`), then the old entry, now under
/// `from`, is unlinked: at every moment `to` names one whole file, as with a plain rename. A
/// plain rename over an existing file makes ext4 start writing the new file's data back there
/// and then (`auto_da_alloc`, for programs that replace files without fsync), a request per
/// file; a restore flushes everything it wrote with one `syncfs` at the end instead. Where
/// the file system cannot exchange, a plain rename.
pub(crate) fn replace_at(dir: BorrowedFd<'_>, from: &OsStr, to: &OsStr) -> io::Result<()> {
    match rustix::fs::renameat_with(dir, from, dir, to, rustix::fs::RenameFlags::EXCHANGE) {
        Ok(()) => Ok(rustix::fs::unlinkat(dir, from, AtFlags::empty())?),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::NOTSUP) => {
            rename_at(dir, from, to)
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?)
}

pub(crate) fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode))?)
}

pub(crate) fn symlink_at(target: &[u8], dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    Ok(rustix::fs::symlinkat(OsStr::from_bytes(target), dir, name)?)
}

pub(crate) fn link_at(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
) -> io::Result<()> {
    Ok(rustix::fs::linkat(
        from_dir,
        from,
        to_dir,
        to,
        AtFlags::empty(),
    )?)
}

/// Create a device node, fifo or socket.
pub(crate) fn mknod_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    kind_mode: u32,
    rdev: u64,
) -> io::Result<()> {
    let ft = rustix::fs::FileType::from_raw_mode(kind_mode);
    Ok(rustix::fs::mknodat(
        dir,
        name,
        ft,
        Mode::from_raw_mode(kind_mode & 0o7777),
        rdev,
    )?)
}

/// Flush every dirty page of the file system holding `fd` (one call instead of one fsync per
/// file; nothing is committed before it returns).
pub(crate) fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::fs::syncfs(fd)?)
}

pub(crate) fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::fs::fsync(fd)?)
}

/// Free bytes for unprivileged writers on the file system holding `path`.
pub(crate) fn free_bytes(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Whether `path` (or, if it does not exist yet, its nearest existing ancestor) is on a mount
/// this process cannot write: a read-only file system, or outside the `ReadWritePaths=` of a
/// `ProtectSystem=strict` unit.
pub(crate) fn on_read_only_mount(path: &Path) -> io::Result<bool> {
    let mut p = path;
    loop {
        match rustix::fs::statvfs(p) {
            Ok(st) => return Ok(st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY)),
            Err(rustix::io::Errno::NOENT) => match p.parent() {
                Some(parent) => p = parent,
                None => return Ok(false),
            },
            Err(e) => return Err(e.into()),
        }
    }
}

/// The file system id of a path (`st_dev`).
pub(crate) fn dev_of(path: &Path) -> io::Result<u64> {
    Ok(rustix::fs::stat(path)?.st_dev)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn dir(p: &Path) -> OwnedFd {
        rustix::fs::open(p, DIR_FLAGS, Mode::empty()).unwrap()
    }

    #[test]
    fn replacing_leaves_the_new_file_under_the_name_and_nothing_else() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), "old").unwrap();
        std::fs::hard_link(t.path().join("f"), t.path().join("other-link")).unwrap();
        let old_ino = std::fs::metadata(t.path().join("f")).unwrap().ino();
        std::fs::write(t.path().join("tmp"), "new").unwrap();
        let d = dir(t.path());
        replace_at(d.as_fd(), OsStr::new("tmp"), OsStr::new("f")).unwrap();
        assert_eq!(std::fs::read_to_string(t.path().join("f")).unwrap(), "new");
        assert!(
            !t.path().join("tmp").exists(),
            "the old file went with the name"
        );
        // Another name of the old inode keeps it, as after a plain rename over it.
        let kept = std::fs::metadata(t.path().join("other-link")).unwrap();
        assert_eq!((kept.ino(), kept.nlink()), (old_ino, 1));
        assert_eq!(
            std::fs::read_to_string(t.path().join("other-link")).unwrap(),
            "old"
        );
        // Nothing to replace: an error, the new file still under its own name.
        assert!(replace_at(d.as_fd(), OsStr::new("f"), OsStr::new("missing")).is_err());
        assert!(t.path().join("f").exists());
    }
}
