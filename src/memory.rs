//! The heap a run leaves. A run (a walk of the node, hashing, a manifest of every entry) grows
//! the heap by several MiB across the allocator's per-thread arenas, and glibc keeps those
//! pages once the run has freed them: a daemon that rests for days between backups would hold
//! them for days, and a run holds the garbage of its earlier steps beside what it uses now.
//!
//! Two settings of glibc's allocator keep it from doing so:
//! - a fixed trim threshold, in both binaries: by default glibc raises it (up to 64 MiB) each
//!   time a large block is freed (the 1 MiB copy buffers), and the free space at the top of a
//!   thread's arena is only handed back above it; `malloc_trim` does not shrink those tops,
//!   only the main arena's;
//! - in the daemon, `malloc_trim` after each run, for the free pages between blocks still in
//!   use, and again once the run's blocking threads have exited (each hands its cache of small
//!   blocks back to its arena as it exits).
//!
//! Written by hand: neither call has a safe wrapper in a maintained crate, and another
//! allocator (jemalloc, mimalloc) would be a larger binary and a new build dependency for the
//! same effect.

#![allow(unsafe_code)]

use std::time::Duration;

/// Free space above this at the top of an arena goes back to the kernel when a block is freed
/// (glibc's initial value, kept fixed instead of growing with the largest block freed).
const TRIM_THRESHOLD: libc::c_int = 128 * 1024;

/// How long the runtime keeps an idle blocking thread (tokio's default, set explicitly so that
/// [`release_once_threads_exit`] waits long enough).
pub(crate) const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Allocator arenas the daemon uses at most. A run walks and copies on a dozen threads, and
/// glibc gives each its own arena (up to eight per core), each keeping some of what its
/// thread freed, in pieces `malloc_trim` cannot hand back: after a backup of 15k files the
/// daemon at rest held 3.4 MiB of heap with as many arenas, 2.2 MiB with four.
const DAEMON_ARENAS: libc::c_int = 4;

/// In the daemon, at startup, before any thread is started: fewer arenas (see
/// [`DAEMON_ARENAS`]).
pub(crate) fn share_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and changes the allocator's parameters under its
    // lock; M_ARENA_MAX is a parameter every glibc since 2.10 knows.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, DAEMON_ARENAS);
    }
}

/// Set once at startup, before any thread is started.
pub(crate) fn hand_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and changes the allocator's parameters under its
    // lock; M_TRIM_THRESHOLD is a parameter every glibc knows.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Give the allocator's free pages, in every arena, back to the kernel.
pub(crate) fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and touches only the allocator's own free lists,
    // under the allocator's locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trim again once the blocking threads a run used have exited.
pub(crate) async fn release_once_threads_exit() {
    tokio::time::sleep(BLOCKING_KEEP_ALIVE + Duration::from_secs(1)).await;
    release_free_heap();
}
