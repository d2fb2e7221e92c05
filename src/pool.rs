//! The worker threads that run hook logic. gRPC's own threads only receive calls and hand them
//! here, so a hook that waits on a database or an HTTP service holds up one worker, never the other
//! calls or the health checks. Jobs beyond the workers queue and start in the order they came.
//!
//! As many workers as cores run the jobs while hooks compute: more runnable threads than cores
//! would only take turns and starve gRPC's threads. A watcher counts the workers whose job has run
//! longer than `STUCK_AFTER` (waiting on I/O, most likely) and starts one more worker for each,
//! up to the maximum; a worker beyond the core count ends when it finds nothing to do.
//!
//! A job returns what it still has to see through: the reply it has sent, which gRPC must not
//! have dropped before it is on its way. The worker polls those between jobs and waits for the
//! rest before it rests, so a busy worker never stops for them.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

/// What a job leaves to finish: a future that needs no more than polling.
pub type Unfinished = Pin<Box<dyn Future<Output = ()> + Send>>;
type Job = Box<dyn FnOnce() -> Option<Unfinished> + Send>;

/// How long a job runs before its worker counts as stuck.
const STUCK_AFTER: Duration = Duration::from_millis(2);
/// How long a worker out of jobs keeps looking for one before it sleeps, while jobs come this
/// often (the last two came less than this apart). A job that comes meanwhile starts at once,
/// without the wake-up of a sleeping thread: tens of microseconds on a virtual machine, a fifth of
/// a call's time when a client sends one call after another. The looking worker gives its core to
/// any thread that wants it at every turn, one worker looks at most, and when jobs come seldom
/// none looks, so they cost no more processor time than their own. Under a processor quota (a
/// container's CPU limit) none looks: the time spent looking would count against the quota, and
/// once it is used up the kernel stops every thread of the server until the next period.
const LOOK_FOR: Duration = Duration::from_micros(200);

pub struct Pool {
    queue: Mutex<Queue>,
    /// The queue's length, for the looking worker to watch without the lock.
    queued: AtomicUsize,
    job_ready: Condvar,
    /// Wakes the watcher when work arrives while it rests.
    work_arrived: Condvar,
    cores: usize,
    max_workers: usize,
    /// LOOK_FOR, or zero under a processor quota.
    look_for: Duration,
}

struct Queue {
    jobs: VecDeque<Job>,
    /// Every worker by its number, with the time its current job started.
    workers: HashMap<usize, Option<Instant>>,
    next_worker: usize,
    idle: usize,
    /// Whether a worker out of jobs is looking for one: it takes the next job without a wake-up.
    looking: bool,
    last_arrival: Instant,
    /// The time between the last two jobs' arrivals.
    arrival_gap: Duration,
    watcher_resting: bool,
}

impl Pool {
    /// A pool of as many workers as `cores` that grows up to `max_workers` while hooks block.
    pub fn new(cores: usize, max_workers: usize) -> Arc<Pool> {
        let look_for = if cpu_quota_set(&read_file) { Duration::ZERO } else { LOOK_FOR };
        Pool::looking_for(look_for, cores, max_workers)
    }

    fn looking_for(look_for: Duration, cores: usize, max_workers: usize) -> Arc<Pool> {
        let queue = Queue {
            jobs: VecDeque::new(),
            workers: HashMap::new(),
            next_worker: 0,
            idle: 0,
            looking: false,
            last_arrival: Instant::now(),
            arrival_gap: Duration::MAX,
            watcher_resting: false,
        };
        let cores = cores.clamp(1, max_workers);
        let pool = Arc::new(Pool {
            queue: Mutex::new(queue),
            queued: AtomicUsize::new(0),
            job_ready: Condvar::new(),
            work_arrived: Condvar::new(),
            cores,
            max_workers,
            look_for,
        });
        if max_workers > cores {
            let watched = pool.clone();
            let started = std::thread::Builder::new().name("hook-watcher".into()).spawn(move || watched.watch());
            if let Err(error) = started {
                log::error!("cannot start the thread that adds workers for blocked hooks: {error}");
            }
        }
        pool
    }

    /// Whether a worker out of jobs looks for the next one before it sleeps (see LOOK_FOR).
    pub fn looks(&self) -> bool {
        !self.look_for.is_zero()
    }

    /// Runs `job` on a worker: the one looking for a job, an idle one, a new one while there are
    /// fewer than the cores, or the first one free.
    pub fn execute(self: &Arc<Self>, job: impl FnOnce() -> Option<Unfinished> + Send + 'static) {
        let mut queue = self.lock();
        queue.jobs.push_back(Box::new(job));
        self.queued.store(queue.jobs.len(), Ordering::Relaxed);
        let now = Instant::now();
        queue.arrival_gap = now - queue.last_arrival;
        queue.last_arrival = now;
        if queue.looking && queue.jobs.len() == 1 {
            // The looking worker sees it; it checks the queue under this lock before it sleeps.
        } else if queue.idle > 0 {
            drop(queue);
            self.job_ready.notify_one();
        } else if queue.workers.len() < self.cores {
            self.start_worker(queue);
        } else if queue.watcher_resting {
            queue.watcher_resting = false;
            drop(queue);
            self.work_arrived.notify_one();
        }
    }

    fn start_worker(self: &Arc<Self>, mut queue: MutexGuard<'_, Queue>) {
        let number = queue.next_worker;
        queue.next_worker += 1;
        queue.workers.insert(number, None);
        drop(queue);
        let pool = self.clone();
        if let Err(error) = std::thread::Builder::new().name("hook-worker".into()).spawn(move || pool.work(number)) {
            // The job waits for a worker that exists; with none, the next call tries again.
            self.lock().workers.remove(&number);
            log::error!("cannot start a worker thread: {error}");
        }
    }

    fn work(&self, number: usize) {
        let mut unfinished: Vec<Unfinished> = Vec::new();
        let mut looked = false;
        let mut queue = self.lock();
        loop {
            if let Some(job) = queue.jobs.pop_front() {
                self.queued.store(queue.jobs.len(), Ordering::Relaxed);
                queue.workers.insert(number, Some(Instant::now()));
                drop(queue);
                unfinished.extend(job());
                poll(&mut unfinished);
                queue = self.lock();
                queue.workers.insert(number, None);
                looked = false;
            } else if !looked && !queue.looking && queue.arrival_gap < self.look_for {
                queue.looking = true;
                drop(queue);
                self.look_for_job(&mut unfinished);
                queue = self.lock();
                queue.looking = false;
                looked = true;
            } else if !unfinished.is_empty() {
                drop(queue);
                unfinished.drain(..).for_each(futures_executor::block_on);
                queue = self.lock();
            } else if queue.workers.len() > self.cores {
                // A worker added for blocked hooks ends once it is not needed.
                queue.workers.remove(&number);
                return;
            } else {
                queue.idle += 1;
                queue = self.job_ready.wait(queue).unwrap_or_else(|poisoned| poisoned.into_inner());
                queue.idle -= 1;
                looked = false;
            }
        }
    }

    /// Adds a worker for each one stuck in a job while jobs wait, checking every STUCK_AFTER;
    /// rests while there is nothing to wait for.
    fn watch(self: Arc<Self>) {
        let mut queue = self.lock();
        loop {
            if queue.jobs.is_empty() {
                queue.watcher_resting = true;
                queue = self.work_arrived.wait(queue).unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            }
            let now = Instant::now();
            let stuck = queue.workers.values().flatten().filter(|&&started| now - started >= STUCK_AFTER).count();
            if queue.workers.len() - stuck < self.cores && queue.workers.len() < self.max_workers && queue.idle == 0 {
                self.start_worker(queue);
                queue = self.lock();
                continue;
            }
            drop(queue);
            std::thread::sleep(STUCK_AFTER);
            queue = self.lock();
        }
    }

    /// Looks for a job for up to `look_for`, seeing meanwhile to what earlier jobs left.
    fn look_for_job(&self, unfinished: &mut Vec<Unfinished>) {
        let started = Instant::now();
        while self.queued.load(Ordering::Relaxed) == 0 && started.elapsed() < self.look_for {
            poll(unfinished);
            std::thread::yield_now();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Jobs run outside the lock, so a poisoned lock still holds a sound queue.
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Polls each unfinished future once and keeps those still pending; a worker polls them between
/// jobs, so nothing needs waking.
fn poll(unfinished: &mut Vec<Unfinished>) {
    let mut context = Context::from_waker(Waker::noop());
    unfinished.retain_mut(|future| future.as_mut().poll(&mut context).is_pending());
}

/// Whether a cgroup processor quota applies to this process, read as `read` finds the files.
/// /proc/self/cgroup names the process's group: `0::/path` under cgroup v2 (a quota in `cpu.max`,
/// "max" for none), `N:cpu,cpuacct:/path` under v1 (`cpu.cfs_quota_us`, -1 for none). A container
/// sees its own group at the mount's root when the path given is not there.
fn cpu_quota_set(read: &dyn Fn(&str) -> Option<String>) -> bool {
    let Some(groups) = read("/proc/self/cgroup") else { return false };
    groups.lines().any(|line| {
        let mut fields = line.splitn(3, ':').skip(1);
        let (Some(controllers), Some(path)) = (fields.next(), fields.next()) else { return false };
        let (mount, file) = match controllers {
            "" => ("/sys/fs/cgroup".to_owned(), "cpu.max"),
            _ if controllers.split(',').any(|controller| controller == "cpu") => {
                (format!("/sys/fs/cgroup/{controllers}"), "cpu.cfs_quota_us")
            }
            _ => return false,
        };
        let quota = read(&format!("{mount}{path}/{file}")).or_else(|| read(&format!("{mount}/{file}")));
        quota.is_some_and(|quota| !matches!(quota.split_whitespace().next(), None | Some("max" | "-1")))
    })
}

fn read_file(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_blocked_job_holds_up_only_its_own_worker() {
        let pool = Pool::new(1, 4);
        let (release, blocked) = mpsc::channel::<()>();
        pool.execute(move || {
            let _ = blocked.recv();
            None
        });
        let (done, finished) = mpsc::channel();
        for _ in 0..10 {
            let done = done.clone();
            pool.execute(move || {
                done.send(()).unwrap();
                None
            });
        }
        for _ in 0..10 {
            assert!(finished.recv_timeout(Duration::from_secs(10)).is_ok(), "the jobs ran beside the blocked one");
        }
        release.send(()).unwrap();
    }

    #[test]
    fn jobs_that_come_one_after_another_each_run_whether_a_worker_looks_or_sleeps() {
        // Gaps around LOOK_FOR: a job comes while a worker looks, as it stops looking, or while
        // every worker sleeps. A job the workers missed would never run and fail the wait below.
        // Under a processor quota no worker looks.
        for look_for in [LOOK_FOR, Duration::ZERO] {
            let pool = Pool::looking_for(look_for, 2, 2);
            let (done, finished) = mpsc::channel();
            for i in 0..1000u64 {
                let done = done.clone();
                pool.execute(move || {
                    done.send(()).unwrap();
                    None
                });
                finished.recv_timeout(Duration::from_secs(10)).expect("the job ran");
                std::thread::sleep(LOOK_FOR * (i % 5) as u32 / 2);
            }
        }
    }

    /// cpu_quota_set where /proc/self/cgroup holds `groups` and `path`, holding `text`, is the only
    /// other file.
    fn quota_found(groups: &str, path: &str, text: &str) -> bool {
        cpu_quota_set(&|name: &str| match name {
            "/proc/self/cgroup" => Some(groups.to_owned()),
            _ if name == path => Some(text.to_owned()),
            _ => None,
        })
    }

    #[test]
    fn a_processor_quota_is_found_under_cgroup_v2_and_v1() {
        let v2 = "0::/kubepods/pod1/container\n";
        assert!(quota_found(v2, "/sys/fs/cgroup/kubepods/pod1/container/cpu.max", "50000 100000\n"));
        assert!(!quota_found(v2, "/sys/fs/cgroup/kubepods/pod1/container/cpu.max", "max 100000\n"));
        // A container's own group is the mount's root when the path it is shown is not there.
        assert!(quota_found(v2, "/sys/fs/cgroup/cpu.max", "150000 100000\n"));
        assert!(quota_found("0::/\n", "/sys/fs/cgroup/cpu.max", "50000 100000\n"));

        let v1 = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n";
        assert!(quota_found(v1, "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "50000\n"));
        assert!(!quota_found(v1, "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n"));
        // Only the cpu controller's line counts: cpuacct alone is no quota.
        let v1_apart = "3:cpuacct:/a\n2:memory:/a\n1:cpu:/a\n";
        assert!(quota_found(v1_apart, "/sys/fs/cgroup/cpu/a/cpu.cfs_quota_us", "20000\n"));
        assert!(!quota_found(v1_apart, "/sys/fs/cgroup/cpuacct/a/cpu.cfs_quota_us", "20000\n"));

        assert!(!cpu_quota_set(&|_: &str| None), "no /proc: no quota known");
        assert!(!quota_found("garbage\n0::\n", "/sys/fs/cgroup/cpu.max", "\n"));
    }

    #[test]
    fn jobs_beyond_the_workers_queue_and_start_in_order() {
        let pool = Pool::new(1, 1);
        let (release, blocked) = mpsc::channel::<()>();
        pool.execute(move || {
            let _ = blocked.recv();
            None
        });
        let (sender, order) = mpsc::channel();
        for i in 0..100 {
            let sender = sender.clone();
            pool.execute(move || {
                sender.send(i).unwrap();
                None
            });
        }
        assert!(order.recv_timeout(Duration::from_millis(200)).is_err(), "nothing runs while the one worker is busy");
        release.send(()).unwrap();
        let ran: Vec<i32> = (0..100).map(|_| order.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
        assert_eq!(ran, (0..100).collect::<Vec<_>>());
        assert_eq!(pool.lock().workers.len(), 1);
    }

    #[test]
    fn workers_added_for_blocked_jobs_end_when_done_and_what_jobs_leave_is_finished() {
        let pool = Pool::new(1, 3);
        let (release, blocked) = mpsc::channel::<()>();
        let blocked = Arc::new(Mutex::new(blocked));
        let (done, finished) = mpsc::channel();
        for _ in 0..5 {
            let (blocked, done) = (blocked.clone(), done.clone());
            pool.execute(move || {
                let _ = blocked.lock().unwrap().recv();
                let unfinished: Unfinished = Box::pin(async move { done.send(()).unwrap() });
                Some(unfinished)
            });
        }
        // One worker is blocked in its recv; the others wait for the lock: all stuck.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.lock().workers.len() < 3 {
            assert!(Instant::now() < deadline, "workers are added while jobs are stuck");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(pool.lock().workers.len(), 3, "never more than the maximum");
        for _ in 0..5 {
            release.send(()).unwrap();
        }
        for _ in 0..5 {
            finished.recv_timeout(Duration::from_secs(10)).expect("each job's unfinished part is finished");
        }
        while pool.lock().workers.len() > 1 {
            assert!(Instant::now() < deadline, "the added workers end");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
