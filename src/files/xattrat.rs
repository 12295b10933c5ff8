//! `listxattrat(2)` and `getxattrat(2)` (Linux 6.13): the extended attributes of a directory's
//! child, named relative to the directory's descriptor and with `AT_SYMLINK_NOFOLLOW`.
//!
//! Without them a child that is not opened is reached as `/proc/self/fd/<dir>/<name>`, and the
//! kernel resolves that path (the `/proc` mount, `self`, the descriptor's magic link) for every
//! listing and every read: at node scale that was half of the time a restore with nothing to
//! change spends in xattr calls (27,041 entries: 197–221 ms through `/proc`, 107–111 ms with
//! these calls, one listing and one read each). No crate wraps them yet (rustix 1.1 does not;
//! libc 0.2 names them for one architecture), so they are called raw here. Where the kernel
//! lacks them (RHEL 9's 5.14) or a seccomp filter refuses them (systemd's `@system-service`
//! of an older systemd answers `EPERM` under `SystemCallErrorNumber=EPERM`), one probe says so
//! and every call goes through `/proc` as before.
//!
//! The only `unsafe` of the crate: two system calls with buffers whose lengths go with them.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;

/// The calls' numbers, the same on every architecture that has them (the unified syscall
/// table of new calls); only these two are built in.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SYS_GETXATTRAT: libc::c_long = 464;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SYS_LISTXATTRAT: libc::c_long = 465;

/// `struct xattr_args` (include/uapi/linux/xattr.h, `XATTR_ARGS_SIZE_VER0`).
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// A raw call's result: a byte count, or the error in `errno`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn bytes_or_errno(r: libc::c_long) -> rustix::io::Result<usize> {
    if r < 0 {
        Err(
            rustix::io::Errno::from_io_error(&std::io::Error::last_os_error())
                .unwrap_or(rustix::io::Errno::IO),
        )
    } else {
        Ok(r as usize)
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn list_raw(dir: libc::c_int, name: &CStr, buf: &mut [u8]) -> rustix::io::Result<usize> {
    // SAFETY: `name` is NUL-terminated and `buf` is writable for `buf.len()` bytes for the
    // duration of the call; the kernel writes at most that many.
    let r = unsafe {
        libc::syscall(
            SYS_LISTXATTRAT,
            dir,
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    bytes_or_errno(r)
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn get_raw(
    dir: libc::c_int,
    name: &CStr,
    attr: &CStr,
    buf: &mut [u8],
) -> rustix::io::Result<usize> {
    let mut args = XattrArgs {
        value: buf.as_mut_ptr() as u64,
        size: u32::try_from(buf.len()).unwrap_or(u32::MAX),
        flags: 0,
    };
    // SAFETY: both names are NUL-terminated; `args` points at `buf`, writable for
    // `args.size` bytes, and lives for the duration of the call, as its size says.
    let r = unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            dir,
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
            attr.as_ptr(),
            &mut args as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    };
    bytes_or_errno(r)
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn list_raw(_: libc::c_int, _: &CStr, _: &mut [u8]) -> rustix::io::Result<usize> {
    Err(rustix::io::Errno::NOSYS)
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn get_raw(_: libc::c_int, _: &CStr, _: &CStr, _: &mut [u8]) -> rustix::io::Result<usize> {
    Err(rustix::io::Errno::NOSYS)
}

/// Whether both calls work here: asked once, of `/`, which always exists.
fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let refused =
            |e: rustix::io::Errno| e == rustix::io::Errno::NOSYS || e == rustix::io::Errno::PERM;
        let root = c"/";
        let listed = list_raw(libc::AT_FDCWD, root, &mut []);
        let read = get_raw(libc::AT_FDCWD, root, c"user.recoveryd.probe", &mut []);
        let works =
            !matches!(listed, Err(e) if refused(e)) && !matches!(read, Err(e) if refused(e));
        tracing::debug!(works, "listxattrat/getxattrat");
        works
    })
}

/// A child's extended-attribute calls, or None where the kernel does not have them.
pub(super) struct Child<'a> {
    dir: BorrowedFd<'a>,
    name: CString,
}

impl<'a> Child<'a> {
    pub(super) fn new(dir: BorrowedFd<'a>, name: &OsStr) -> Option<Child<'a>> {
        if !available() {
            return None;
        }
        // A name read from a directory has no NUL; one that had could not be reached anyway.
        let name = CString::new(name.as_bytes()).ok()?;
        Some(Child { dir, name })
    }

    pub(super) fn list(&self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        list_raw(self.dir.as_raw_fd(), &self.name, buf)
    }

    pub(super) fn get(&self, attr: &OsStr, buf: &mut [u8]) -> rustix::io::Result<usize> {
        let attr = CString::new(attr.as_bytes()).map_err(|_| rustix::io::Errno::INVAL)?;
        get_raw(self.dir.as_raw_fd(), &self.name, &attr, buf)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::super::fsx;

    /// Both ways read the same attributes, and neither follows a symlink.
    #[test]
    fn the_at_calls_read_what_the_proc_path_reads() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let set = rustix::fs::setxattr(&file, "user.one", b"1", rustix::fs::XattrFlags::empty());
        if set.is_err() {
            eprintln!("no user xattrs on {}: {set:?}", t.path().display());
        }
        std::os::unix::fs::symlink("f", t.path().join("l")).unwrap();
        let dir = rustix::fs::open(
            t.path(),
            rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        eprintln!("listxattrat/getxattrat here: {}", super::available());
        for name in ["f", "l"] {
            let name = std::ffi::OsStr::new(name);
            let at = fsx::xattrs_at(dir.as_fd(), name).unwrap();
            let proc = fsx::xattrs_through_proc(dir.as_fd(), name).unwrap();
            assert_eq!(at, proc, "{name:?}");
        }
        let file_x = fsx::xattrs_at(dir.as_fd(), "f".as_ref()).unwrap();
        let link_x = fsx::xattrs_at(dir.as_fd(), "l".as_ref()).unwrap();
        if set.is_ok() {
            assert!(file_x.contains(&(b"user.one".to_vec(), b"1".to_vec())));
        }
        assert!(
            !link_x.iter().any(|(n, _)| n == b"user.one"),
            "followed the symlink: {link_x:?}"
        );
        assert!(
            fsx::xattrs_at(dir.as_fd(), "missing".as_ref()).is_err(),
            "a missing child is an error"
        );
    }
}
