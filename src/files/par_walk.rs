//! Visiting a tree of directories on several threads.
//!
//! Reading a directory or an inode that is not cached is a disk read: with a few requests in
//! flight at once a cold walk is several times faster, and a warm one spreads its system calls
//! over every core. Each directory is one job; visiting it yields its result and the jobs of
//! the directories below it to visit next. Written by hand (a queue, a count of jobs not done,
//! a condition variable): the crates that walk in parallel (jwalk, ignore) open directories by
//! path and follow no descriptor, and every walk here stays on descriptors.

use std::sync::{Condvar, Mutex, MutexGuard};

use anyhow::Result;

/// Threads visiting directories at once. Eight measured best for a cold walk of a node's
/// trees on two cores (the walk is mostly waiting for the disk then); more gained nothing.
pub(crate) const THREADS: usize = 8;

/// Visit `top` and every directory job `visit` returns, on [`THREADS`] threads; the results
/// in no particular order. The first error stops the walk and is returned.
pub(crate) fn visit_tree<J: Send, R: Send>(
    top: J,
    visit: impl Fn(J) -> Result<(R, Vec<J>)> + Sync,
) -> Result<Vec<R>> {
    struct Queue<J> {
        jobs: Vec<J>,
        /// Jobs queued or being visited.
        pending: usize,
        failed: Option<anyhow::Error>,
    }
    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }
    let queue = Mutex::new(Queue {
        jobs: vec![top],
        pending: 1,
        failed: None,
    });
    let wake = Condvar::new();
    let results: Mutex<Vec<R>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                loop {
                    let job = {
                        let mut q = lock(&queue);
                        loop {
                            if q.failed.is_some() || (q.jobs.is_empty() && q.pending == 0) {
                                wake.notify_all();
                                return;
                            }
                            if let Some(j) = q.jobs.pop() {
                                break j;
                            }
                            q = wake.wait(q).unwrap_or_else(|p| p.into_inner());
                        }
                    };
                    match visit(job) {
                        Ok((result, below)) => {
                            lock(&results).push(result);
                            let mut q = lock(&queue);
                            q.pending += below.len();
                            q.pending -= 1;
                            q.jobs.extend(below);
                        }
                        Err(e) => {
                            let mut q = lock(&queue);
                            q.failed.get_or_insert(e);
                            q.pending -= 1;
                        }
                    }
                    wake.notify_all();
                }
            });
        }
    });
    let q = queue.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = q.failed {
        return Err(e);
    }
    Ok(results.into_inner().unwrap_or_else(|p| p.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree of 1 + 3 + 9 + 27 nodes: every one is visited once.
    #[test]
    fn every_job_is_visited_once_and_an_error_stops_the_walk() {
        let all = visit_tree(0u32, |depth| {
            let below = if depth < 3 {
                vec![depth + 1; 3]
            } else {
                vec![]
            };
            Ok((depth, below))
        })
        .unwrap();
        let count = |d| all.iter().filter(|&&x| x == d).count();
        assert_eq!((count(0), count(1), count(2), count(3)), (1, 3, 9, 27));

        let failed = visit_tree(0u32, |depth| {
            anyhow::ensure!(depth < 2, "too deep");
            Ok((depth, vec![depth + 1; 2]))
        });
        assert_eq!(failed.unwrap_err().to_string(), "too deep");
    }
}
