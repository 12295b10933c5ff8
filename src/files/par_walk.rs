//! Visiting a tree of directories on several threads.
//!
//! Reading a directory or an inode that is not cached is a disk read: with a few requests in
//! flight at once a cold walk is several times faster, and a warm one spreads its system calls
//! over every core. Each directory is one job; visiting it yields its result, and queues the
//! jobs of the directories below it as it finds them, so that other threads start on them
//! while it goes on (the subdirectories of one directory are often in as many block groups,
//! one disk read each). Written by hand (a queue, a count of jobs not done, a condition
//! variable): the crates that walk in parallel (jwalk, ignore) open directories by path and
//! follow no descriptor, and every walk here stays on descriptors.

use std::sync::{Condvar, Mutex, MutexGuard};

use anyhow::Result;

/// Threads visiting directories at once. Eight measured best for a cold walk of a node's
/// trees on two cores (the walk is mostly waiting for the disk then); more gained nothing.
pub(crate) const THREADS: usize = 8;

struct Queue<J> {
    jobs: Vec<J>,
    /// Jobs queued or being visited.
    pending: usize,
    failed: Option<anyhow::Error>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a visit queues the jobs it finds ([`visit_tree`]).
pub(crate) struct Jobs<'a, J> {
    queue: &'a Mutex<Queue<J>>,
    wake: &'a Condvar,
}

impl<J> Jobs<'_, J> {
    /// Queue a job: an idle thread takes it at once.
    pub(crate) fn push(&self, job: J) {
        let mut q = lock(self.queue);
        q.pending += 1;
        q.jobs.push(job);
        drop(q);
        self.wake.notify_one();
    }
}

/// Visit `tops` and every job a visit queues, on [`THREADS`] threads; the results in no
/// particular order. The first error stops the walk and is returned.
pub(crate) fn visit_tree<J: Send, R: Send>(
    tops: Vec<J>,
    visit: impl Fn(J, &Jobs<'_, J>) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let queue = Mutex::new(Queue {
        pending: tops.len(),
        jobs: tops,
        failed: None,
    });
    let wake = Condvar::new();
    let jobs = Jobs {
        queue: &queue,
        wake: &wake,
    };
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
                    let failed = match visit(job, &jobs) {
                        Ok(result) => {
                            lock(&results).push(result);
                            None
                        }
                        Err(e) => Some(e),
                    };
                    let mut q = lock(&queue);
                    q.pending -= 1;
                    if let Some(e) = failed {
                        q.failed.get_or_insert(e);
                    }
                    let done = q.failed.is_some() || (q.jobs.is_empty() && q.pending == 0);
                    drop(q);
                    if done {
                        wake.notify_all();
                    }
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
        let all = visit_tree(vec![0u32], |depth, jobs| {
            if depth < 3 {
                (0..3).for_each(|_| jobs.push(depth + 1));
            }
            Ok(depth)
        })
        .unwrap();
        let count = |d| all.iter().filter(|&&x| x == d).count();
        assert_eq!((count(0), count(1), count(2), count(3)), (1, 3, 9, 27));

        let failed = visit_tree(vec![0u32], |depth, jobs| {
            anyhow::ensure!(depth < 2, "too deep");
            (0..2).for_each(|_| jobs.push(depth + 1));
            Ok(depth)
        });
        assert_eq!(failed.unwrap_err().to_string(), "too deep");
    }
}
