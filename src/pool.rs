//! The worker threads that run hook logic. gRPC's own threads only receive calls and hand them
//! here, so a hook that waits on a database or an HTTP service holds up one worker, never the other
//! calls or the health checks. Jobs beyond the workers queue and start in the order they came.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

type Job = Box<dyn FnOnce() + Send>;

pub struct Pool {
    queue: Mutex<Queue>,
    job_ready: Condvar,
    max_workers: usize,
}

struct Queue {
    jobs: VecDeque<Job>,
    workers: usize,
    idle: usize,
}

impl Pool {
    /// A pool that starts threads as calls need them, up to `max_workers`.
    pub fn new(max_workers: usize) -> Arc<Pool> {
        let queue = Queue { jobs: VecDeque::new(), workers: 0, idle: 0 };
        Arc::new(Pool { queue: Mutex::new(queue), job_ready: Condvar::new(), max_workers })
    }

    /// Runs `job` on a worker: an idle one, a new one, or the first one free.
    pub fn execute(self: &Arc<Self>, job: impl FnOnce() + Send + 'static) {
        let mut queue = self.lock();
        queue.jobs.push_back(Box::new(job));
        if queue.idle > 0 {
            drop(queue);
            self.job_ready.notify_one();
        } else if queue.workers < self.max_workers {
            queue.workers += 1;
            drop(queue);
            let pool = self.clone();
            let started = std::thread::Builder::new().name("hook-worker".into()).spawn(move || pool.work());
            if let Err(error) = started {
                // The job waits for a worker that exists; with none, the next call tries again.
                self.lock().workers -= 1;
                log::error!("cannot start a worker thread: {error}");
            }
        }
    }

    fn work(&self) {
        let mut queue = self.lock();
        loop {
            match queue.jobs.pop_front() {
                Some(job) => {
                    drop(queue);
                    job();
                    queue = self.lock();
                }
                None => {
                    queue.idle += 1;
                    queue = self.job_ready.wait(queue).unwrap_or_else(|poisoned| poisoned.into_inner());
                    queue.idle -= 1;
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Jobs run outside the lock, so a poisoned lock still holds a sound queue.
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_blocked_job_holds_up_only_its_own_worker() {
        let pool = Pool::new(2);
        let (release, blocked) = mpsc::channel::<()>();
        pool.execute(move || {
            let _ = blocked.recv();
        });
        let (done, finished) = mpsc::channel();
        pool.execute(move || done.send(()).unwrap());
        assert!(finished.recv_timeout(Duration::from_secs(10)).is_ok(), "the second job ran beside the blocked one");
        release.send(()).unwrap();
    }

    #[test]
    fn jobs_beyond_the_workers_queue_and_start_in_order() {
        let pool = Pool::new(1);
        let (release, blocked) = mpsc::channel::<()>();
        pool.execute(move || {
            let _ = blocked.recv();
        });
        let (sender, order) = mpsc::channel();
        for i in 0..100 {
            let sender = sender.clone();
            pool.execute(move || sender.send(i).unwrap());
        }
        assert!(order.recv_timeout(Duration::from_millis(200)).is_err(), "nothing runs while the one worker is busy");
        release.send(()).unwrap();
        let ran: Vec<i32> = (0..100).map(|_| order.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
        assert_eq!(ran, (0..100).collect::<Vec<_>>());
        assert_eq!(pool.lock().workers, 1);
    }
}
