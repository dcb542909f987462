//! normkit's own threads. A context of `T` threads runs each parallel loop on the calling thread
//! and `T - 1` workers. The tasks are cut into `T` contiguous ranges, one per thread (the caller
//! takes the first), so that a thread gets the same part of the data in each pass of a call
//! (statistics, then normalization) and finds it in its own caches; a thread done with its range
//! takes the remaining tasks of the others'. A loop may run each range backward
//! ([`Order::Backward`]): a pass after one over the same data then starts, on every thread, on
//! the data that thread read last, which is still in its own caches.
//!
//! Why not a general-purpose pool: handing a loop to sleeping workers and blocking the caller
//! until they report back costs two thread switches per loop (about 8 to 20 µs on a virtual
//! machine), more than many whole calls take. Here the caller works too and never waits for a
//! worker that has not started: a loop whose workers are asleep runs on the caller alone, at
//! the speed of a serial call, while they wake. Workers that finished a loop spin briefly
//! ([`SPIN`]) before they sleep, so that the next layer's call finds them awake, as OpenMP's
//! threads do.
//!
//! The protocol (all atomics sequentially consistent):
//! - the caller sets each thread's task counter to the start of its range, publishes a pointer
//!   to the loop ([`Job`], on its stack) in `job`, bumps `generation` and wakes sleeping
//!   workers (no worker is inside a loop while the counters are set, see the last point);
//! - a worker that sees a new generation first counts itself in `active`, then reads `job`; if
//!   it is null the loop is over and it leaves, otherwise it takes tasks from the loop;
//! - the caller, when no task index is left, stores null in `job` and waits until `active` is 0.
//!   A worker whose read of `job` came before the null store had counted itself before it, so
//!   the caller sees it and waits for it; one that reads null never touches the loop. So no
//!   worker uses a loop after its caller returns.
//!
//! One loop runs at a time: a call that finds the pool busy (another thread's call on the same
//! context, or a loop started inside a task) runs its tasks on its own thread. Results do not
//! depend on which thread runs a task.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, TryLockError};
use std::time::{Duration, Instant};

/// How long a worker keeps looking for the next loop before it sleeps. (Not under Miri, whose
/// interpreter would spend minutes in the loop.)
const SPIN: Duration = if cfg!(miri) {
    Duration::ZERO
} else {
    Duration::from_micros(100)
};

/// A context's threads: `T - 1` workers; the calling thread is the `T`-th.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    /// Held while a loop runs.
    busy: Mutex<()>,
}

/// What the caller and the workers share.
struct Shared {
    /// Bumped once per loop.
    generation: AtomicU64,
    /// The running loop (a `*const Job` on the caller's stack), null between loops.
    job: AtomicPtr<()>,
    /// Workers between counting themselves in and leaving a loop.
    active: AtomicUsize,
    /// The next task of each thread's range in the running loop (range `k` ends where range
    /// `k + 1` starts), one per thread, reset by the caller before it publishes a loop: no
    /// worker is inside a loop then (see the protocol).
    next: Box<[Counter]>,
    shutdown: AtomicBool,
    /// Sleeping workers (counted under the lock), woken by `wake`.
    sleepers: Mutex<usize>,
    wake: Condvar,
}

/// In which order each thread runs the tasks of its range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Order {
    /// From the range's first task to its last.
    Forward,
    /// From the range's last task to its first.
    Backward,
}

impl Order {
    /// The task a thread runs as the one at index `i` of the range `range` (`i` in the range).
    #[inline]
    pub(crate) fn task(self, i: usize, range: std::ops::Range<usize>) -> usize {
        match self {
            Order::Forward => i,
            // `start <= i < end`: no overflow.
            Order::Backward => range.start + (range.end - 1 - i),
        }
    }
}

/// One parallel loop: tasks `0..items`, in one range per thread.
struct Job<'a> {
    task: &'a (dyn Fn(usize) + Sync),
    items: usize,
    order: Order,
    /// The first panic of a task, raised on the caller once the loop is over.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

/// A task counter alone on its cache lines: the threads' counters change at every task, and
/// counters sharing a line would move it between cores each time (128 bytes: some cores fetch
/// lines in pairs).
#[repr(align(128))]
struct Counter(AtomicUsize);

/// Where range `k` of `ranges` ranges of `items` tasks starts.
fn range_start(items: usize, k: usize, ranges: usize) -> usize {
    // The product fits in u128; the quotient is at most `items`.
    (items as u128 * k as u128 / ranges as u128) as usize
}

impl Job<'_> {
    /// Runs the tasks of range `me`, then those left in the others; a panicking task is
    /// recorded and the others go on.
    fn work(&self, next: &[Counter], me: usize) {
        let ranges = next.len();
        for k in (me..ranges).chain(0..me) {
            let end = range_start(self.items, k + 1, ranges);
            // The counter counts up from the range's start in either order.
            let range = range_start(self.items, k, ranges)..end;
            loop {
                let i = next[k].0.fetch_add(1, SeqCst);
                if i >= end {
                    break;
                }
                let task = self.order.task(i, range.clone());
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| (self.task)(task))) {
                    let mut first = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                    first.get_or_insert(p);
                }
            }
        }
    }
}

impl Pool {
    /// Starts `threads - 1` workers (`threads` >= 2), named `normkit-1`, `normkit-2`, ...
    pub(crate) fn new(threads: usize) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            active: AtomicUsize::new(0),
            next: (0..threads).map(|_| Counter(AtomicUsize::new(0))).collect(),
            shutdown: AtomicBool::new(false),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
        });
        let pool = Pool {
            shared,
            busy: Mutex::new(()),
        };
        for i in 1..threads {
            let shared = Arc::clone(&pool.shared);
            // On failure `pool` is dropped, which stops the workers already started.
            std::thread::Builder::new()
                .name(format!("normkit-{i}"))
                .spawn(move || shared.worker(i))?;
        }
        Ok(pool)
    }

    /// Runs `task(i)` for every `i < items` on the calling thread and the workers that are
    /// awake, each range in `order`; returns when every task has run, raising the first task's
    /// panic, if any.
    pub(crate) fn run(&self, items: usize, order: Order, task: &(dyn Fn(usize) + Sync)) {
        let guard = match self.busy.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => {
                (0..items).for_each(|i| task(order.task(i, 0..items)));
                return;
            }
        };
        let job = Job {
            task,
            items,
            order,
            panic: Mutex::new(None),
        };
        let s = &*self.shared;
        let threads = s.next.len();
        for (k, next) in s.next.iter().enumerate() {
            next.0.store(range_start(items, k, threads), SeqCst);
        }
        s.job.store(&job as *const Job<'_> as *mut (), SeqCst);
        s.generation.fetch_add(1, SeqCst);
        {
            let sleepers = s.sleepers.lock().unwrap_or_else(|e| e.into_inner());
            if *sleepers > 0 {
                s.wake.notify_all();
            }
        }
        job.work(&s.next, 0);
        s.job.store(std::ptr::null_mut(), SeqCst);
        // Workers still inside the loop are finishing their last task.
        let mut spins = 0u32;
        while s.active.load(SeqCst) != 0 {
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        drop(guard);
        let panic = job.panic.into_inner().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = panic {
            resume_unwind(p);
        }
    }
}

impl Drop for Pool {
    /// Tells the workers to exit, without waiting for them (they hold their own share).
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        let _sleepers = self
            .shared
            .sleepers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.shared.wake.notify_all();
    }
}

impl Shared {
    /// The life of worker `me` (its range in each loop): wait for a loop, join it, until
    /// shutdown.
    fn worker(&self, me: usize) {
        let mut seen = self.generation.load(SeqCst);
        while let Some(generation) = self.next_loop(seen) {
            seen = generation;
            self.active.fetch_add(1, SeqCst);
            let job = self.job.load(SeqCst);
            if !job.is_null() {
                // SAFETY: a non-null `job` read after counting in `active` points to the
                // caller's live `Job`: the caller stores null and then waits for `active` to be
                // 0 before its `Job` goes out of scope (see the module documentation), and only
                // one loop is published at a time (`busy`).
                let job = unsafe { &*(job as *const Job<'_>) };
                job.work(&self.next, me);
            }
            self.active.fetch_sub(1, SeqCst);
        }
    }

    /// Waits until the generation differs from `seen` (spinning for [`SPIN`], then sleeping);
    /// `None` on shutdown.
    fn next_loop(&self, seen: u64) -> Option<u64> {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if self.shutdown.load(SeqCst) {
                return None;
            }
            let g = self.generation.load(SeqCst);
            if g != seen {
                return Some(g);
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && start.elapsed() >= SPIN {
                break;
            }
            std::hint::spin_loop();
        }
        let mut sleepers = self.sleepers.lock().unwrap_or_else(|e| e.into_inner());
        *sleepers += 1;
        // The caller bumps the generation before it takes this lock to wake sleepers, so a
        // generation read here under the lock is either new or will be followed by a wake-up.
        let result = loop {
            if self.shutdown.load(SeqCst) {
                break None;
            }
            let g = self.generation.load(SeqCst);
            if g != seen {
                break Some(g);
            }
            sleepers = self.wake.wait(sleepers).unwrap_or_else(|e| e.into_inner());
        };
        *sleepers -= 1;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn a_thread_alone_runs_the_ranges_in_order() {
        // The workers of a new pool may not have started: the caller may run every task. Run
        // on the caller alone (the pool busy), a backward loop is the whole range reversed.
        let pool = Pool::new(2).unwrap();
        let _busy = pool.busy.lock().unwrap();
        for (order, want) in [
            (Order::Forward, vec![0, 1, 2, 3, 4]),
            (Order::Backward, vec![4, 3, 2, 1, 0]),
        ] {
            let seen = Mutex::new(Vec::new());
            pool.run(5, order, &|i| seen.lock().unwrap().push(i));
            assert_eq!(seen.into_inner().unwrap(), want);
        }
    }

    #[test]
    fn every_task_runs_once_on_any_thread_count() {
        for threads in [2, 3, 5] {
            let pool = Pool::new(threads).unwrap();
            for items in [0, 1, 2, 7, 100] {
                for order in [Order::Forward, Order::Backward] {
                    let runs: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
                    pool.run(items, order, &|i| {
                        runs[i].fetch_add(1, SeqCst);
                    });
                    assert!(
                        runs.iter().all(|r| r.load(SeqCst) == 1),
                        "{threads} {items} {order:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_panic_reaches_the_caller_after_every_other_task() {
        let pool = Pool::new(2).unwrap();
        let ran = AtomicUsize::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(9, Order::Forward, &|i| {
                ran.fetch_add(1, SeqCst);
                assert_ne!(i, 4, "task 4 fails");
            })
        }));
        assert!(r.is_err());
        assert_eq!(ran.load(SeqCst), 9);
        // The pool still works.
        let sum = AtomicUsize::new(0);
        pool.run(10, Order::Forward, &|i| {
            sum.fetch_add(i, SeqCst);
        });
        assert_eq!(sum.load(SeqCst), 45);
    }

    #[test]
    fn nested_and_concurrent_loops_run_on_their_own_thread() {
        let pool = Pool::new(3).unwrap();
        let total = AtomicUsize::new(0);
        pool.run(4, Order::Forward, &|_| {
            // Inside a loop the pool is busy: this one runs here, whole.
            pool.run(5, Order::Backward, &|_| {
                total.fetch_add(1, SeqCst);
            });
        });
        assert_eq!(total.load(SeqCst), 20);
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..20 {
                        pool.run(6, Order::Forward, &|_| {
                            total.fetch_add(1, SeqCst);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(SeqCst), 3 * 20 * 6);
    }

    #[test]
    fn sleeping_workers_wake_for_the_next_loop() {
        let pool = Pool::new(2).unwrap();
        let worker_ran = AtomicUsize::new(0);
        let caller = std::thread::current().id();
        for _ in 0..if cfg!(miri) { 2 } else { 50 } {
            std::thread::sleep(SPIN + Duration::from_micros(200));
            pool.run(64, Order::Forward, &|_| {
                if std::thread::current().id() != caller {
                    worker_ran.fetch_add(1, SeqCst);
                }
                std::thread::sleep(Duration::from_micros(50));
            });
        }
        assert!(worker_ran.load(SeqCst) > 0, "the worker never woke");
    }
}
