//! A small thread pool for the engine's parallel loops. A decode step is ~150 parallel loops of tens of
//! microseconds each; rayon's sleep/wake round trip per loop cost a third of the time (measured with perf:
//! `sched_yield` and context switches), so here the workers spin on an epoch counter while work keeps
//! coming, then yield, then sleep on a condition variable after a few milliseconds of idleness (an idle
//! server does not burn its cores). The calling thread works too. While one caller is running a loop,
//! another caller (a second HTTP request) runs its loop on its own thread instead of waiting.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

type Task = dyn Fn(usize) + Sync;

struct Job {
    f: *const Task,
    tasks: usize,
}

struct Shared {
    epoch: AtomicUsize,
    next: AtomicUsize,
    pending: AtomicUsize,
    panicked: AtomicBool,
    job: UnsafeCell<Job>,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the thread holding `Pool::running`, before the epoch is published
// (Release) and while no worker is inside a job; workers read it after observing the epoch (Acquire).
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Pool {
    shared: Arc<Shared>,
    workers: usize,
    running: Mutex<()>,
}

/// How long an idle worker spins, then yields, before it sleeps.
const SPIN: Duration = Duration::from_micros(200);
const YIELD: Duration = Duration::from_millis(5);

impl Pool {
    /// A pool of `threads` threads in all (the caller counts as one).
    #[must_use]
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            job: UnsafeCell::new(Job {
                f: std::ptr::null::<fn(usize)>() as *const Task,
                tasks: 0,
            }),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = threads.max(1) - 1;
        for i in 0..workers {
            let s = Arc::clone(&shared);
            // A pool that cannot start a thread runs with fewer workers: `pending` counts only started ones.
            if std::thread::Builder::new()
                .name(format!("strata-cpu-{i}"))
                .spawn(move || worker(&s))
                .is_err()
            {
                return Self {
                    shared,
                    workers: i,
                    running: Mutex::new(()),
                };
            }
        }
        Self {
            shared,
            workers,
            running: Mutex::new(()),
        }
    }

    /// Threads in all, the caller included.
    #[must_use]
    pub fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Runs `f(0) … f(tasks − 1)` on the pool's threads and returns when all have finished.
    ///
    /// # Panics
    /// When a task panicked.
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if tasks == 0 {
            return;
        }
        let guard = match self.running.try_lock() {
            Ok(g) if self.workers > 0 && tasks > 1 => g,
            _ => {
                (0..tasks).for_each(f);
                return;
            }
        };
        let s = &*self.shared;
        // SAFETY: the `running` lock is held and the previous job has fully finished (pending was 0), so no
        // worker reads `job` now. The pointer's lifetime is erased; it is dereferenced only until `pending`
        // drops to 0, which this function waits for before returning.
        unsafe {
            let f: *const (dyn Fn(usize) + Sync + '_) = f;
            *s.job.get() = Job {
                #[allow(clippy::transmute_ptr_to_ptr)] // erasing a lifetime, the one thing `as` cannot do
                f: std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const Task>(f),
                tasks,
            };
        }
        s.next.store(0, Ordering::Relaxed);
        s.pending.store(self.workers, Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s
                .sleep
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            s.wake.notify_all();
        }
        loop {
            let i = s.next.fetch_add(1, Ordering::Relaxed);
            if i >= tasks {
                break;
            }
            // a panic here must not leave before the workers are done with `f`
            if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        while s.pending.load(Ordering::Acquire) > 0 {
            std::hint::spin_loop();
        }
        drop(guard);
        assert!(
            !s.panicked.swap(false, Ordering::Relaxed),
            "a CPU engine task panicked"
        );
    }
}

fn worker(s: &Shared) {
    let mut seen = 0usize;
    loop {
        // wait for a new epoch: spin, then yield, then sleep
        let start = Instant::now();
        let mut spins = 0u32;
        while s.epoch.load(Ordering::Acquire) == seen {
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            let idle = start.elapsed();
            if idle < SPIN {
                std::hint::spin_loop();
            } else if idle < YIELD {
                std::thread::yield_now();
            } else {
                let mut g = s
                    .sleep
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                while s.epoch.load(Ordering::SeqCst) == seen {
                    g = s
                        .wake
                        .wait(g)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        }
        seen = s.epoch.load(Ordering::Acquire);
        // SAFETY: published before the epoch; stays valid until `pending` reaches 0 (see `Pool::run`).
        let (f, tasks) = unsafe {
            let j = &*s.job.get();
            (&*j.f, j.tasks)
        };
        loop {
            let i = s.next.fetch_add(1, Ordering::Relaxed);
            if i >= tasks {
                break;
            }
            if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

static GLOBAL: OnceLock<Pool> = OnceLock::new();

/// Sizes the engine's pool: the program's one thread setting (`strata --threads`), passed once, before the
/// first forward. Returns false when the pool was already running (it keeps its size).
pub fn set_threads(n: usize) -> bool {
    let mut fresh = false;
    GLOBAL.get_or_init(|| {
        fresh = true;
        Pool::new(n.max(1))
    });
    fresh
}

/// The engine's pool: as [`set_threads`] sized it, else one thread per CPU.
pub fn global() -> &'static Pool {
    GLOBAL.get_or_init(|| Pool::new(std::thread::available_parallelism().map_or(1, usize::from)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_across_many_jobs() {
        let pool = Pool::new(3);
        for tasks in [1, 2, 5, 100] {
            for _ in 0..50 {
                let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                pool.run(tasks, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn workers_wake_after_sleeping_and_concurrent_callers_both_finish() {
        let pool = Arc::new(Pool::new(2));
        std::thread::sleep(YIELD * 2); // the worker is asleep now
        let sum = AtomicUsize::new(0);
        pool.run(10, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 45);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let p = Arc::clone(&pool);
                std::thread::spawn(move || {
                    let s = AtomicUsize::new(0);
                    for _ in 0..100 {
                        p.run(8, &|i| {
                            s.fetch_add(i, Ordering::Relaxed);
                        });
                    }
                    s.load(Ordering::Relaxed)
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), 2800);
        }
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_pool_still_works() {
        let pool = Pool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(4, &|i| assert!(i != 3 && i != 2, "boom"));
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.run(4, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 4);
    }
}
