//! The execution context: where a call's parallel loops run (the context's own threads, the
//! caller's rayon pool, a host's executor, or the calling thread alone) and which ISA its
//! kernels use; and the process-wide default.
//!
//! Every parallel region of the library is one call of [`Context::for_each`] (or
//! [`Context::map`], built on it): a loop over a fixed number of tasks, fixed by the shape. Only
//! this file and its `pool` module (the context's own threads) know how the tasks reach threads.

mod pool;

use crate::error::{Error, ErrorKind, Result};
use crate::simd::{AtomicSupportedIsa, Isa, SupportedIsa};
use pool::Order;
use rayon::prelude::*;
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Calls with fewer elements than this run on the calling thread: below it, waking the pool
/// costs more than the work. Under Miri, small calls use the pool too, so that the interpreter
/// checks the parallel paths on tensors it can afford (results do not depend on this: the work
/// split is fixed by the shape).
pub(crate) const PARALLEL_MIN_ELEMENTS: usize = if cfg!(miri) { 64 } else { 1 << 15 };

/// Most threads a context may ask for.
const MAX_THREADS: usize = 4096;

/// A host's thread pool, as normkit sees it: something that runs a batch of tasks.
///
/// This is the Rust form of the C `nk_executor`. Closures of the form
/// `|count, task| { ... }` implement it.
pub trait Executor: Send + Sync {
    /// Runs `task(i)` exactly once for every `i` in `0..count`, on any threads, in any order and
    /// grouping, and returns only when all have finished.
    ///
    /// normkit calls this from the thread that made the normkit call, never from inside a task.
    /// Tasks never unwind: a panic inside one is caught, and the normkit call that handed out
    /// the batch panics on the calling thread after `parallel_for` returns.
    fn parallel_for(&self, count: usize, task: &(dyn Fn(usize) + Sync));
}

impl<F> Executor for F
where
    F: Fn(usize, &(dyn Fn(usize) + Sync)) + Send + Sync,
{
    fn parallel_for(&self, count: usize, task: &(dyn Fn(usize) + Sync)) {
        self(count, task)
    }
}

/// Where a context's parallel loops run.
enum Runner {
    /// Everything on the calling thread.
    Serial,
    /// The context's own threads, with the calling thread.
    Pool(pool::Pool),
    /// The rayon pool of the calling thread (rayon's global pool outside any).
    CurrentRayon,
    /// A host's executor (the context's `threads` is its concurrency).
    Executor(Box<dyn Executor>),
}

/// Where the kernels of a call run, and with which ISA. Cheap to share: every operation takes
/// `&Context`, and calls on one context may run concurrently from many threads (for an
/// executor context, if the executor allows it).
///
/// Which to choose:
/// - [`Context::new`]: normkit's own threads (the calling thread and `threads - 1` workers per
///   context, none for one thread; idle workers spin for 100 µs after a call, then sleep).
///   Right for a program with no thread pool of its own, or one whose pool sleeps while normkit
///   runs.
/// - [`Context::with_executor`]: the host's threads. Right inside an engine with its own pool
///   (OpenMP, a task system): a second pool would compete with it for the cores.
/// - [`Context::current_rayon`]: the rayon pool the caller is running in, for programs that
///   already use rayon and must not get a second pool.
///
/// Results are bitwise the same on every kind of context and thread count.
pub struct Context {
    runner: Runner,
    threads: usize,
    /// The chosen ISA, checked against the CPU when it was chosen.
    isa: AtomicSupportedIsa,
    /// Test hook: the task index whose run panics (`usize::MAX`: none).
    fail_task: AtomicUsize,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let runner = match self.runner {
            Runner::Serial => "serial",
            Runner::Pool(_) => "pool",
            Runner::CurrentRayon => "current rayon pool",
            Runner::Executor(_) => "executor",
        };
        f.debug_struct("Context")
            .field("runner", &runner)
            .field("threads", &self.threads())
            .field("isa", &self.isa())
            .finish()
    }
}

thread_local! {
    /// Set while this thread runs a task handed to an executor.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is running a task of an executor context. (Panics there are
/// caught and reported by the call that handed the task out, so the C boundary's panic hook
/// keeps them quiet.)
pub(crate) fn in_executor_task() -> bool {
    IN_TASK.with(Cell::get)
}

/// The thread count of the default context: `NK_NUM_THREADS` if it is a positive integer,
/// otherwise 0 (all logical cores).
fn default_threads(value: Option<&str>) -> usize {
    value
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
}

impl Context {
    fn with_runner(runner: Runner, threads: usize) -> Context {
        Context {
            runner,
            threads,
            isa: AtomicSupportedIsa::new(SupportedIsa::best()),
            fail_task: AtomicUsize::new(usize::MAX),
        }
    }

    /// A context with `num_threads` threads of its own (0 = all logical cores) and the best ISA
    /// of the CPU. One thread means no pool: everything runs on the calling thread.
    pub fn new(num_threads: usize) -> Result<Context> {
        let threads = if num_threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            num_threads
        };
        if threads > MAX_THREADS {
            return Err(Error::bad_argument(format!(
                "num_threads {threads} is more than {MAX_THREADS}"
            )));
        }
        if threads == 1 {
            return Ok(Context::with_runner(Runner::Serial, 1));
        }
        let pool = pool::Pool::new(threads).map_err(|e| {
            Error::new(
                ErrorKind::Unsupported,
                format!("cannot start {threads} threads: {e}"),
            )
        })?;
        Ok(Context::with_runner(Runner::Pool(pool), threads))
    }

    /// A context that runs its parallel work on the host's `executor`, which runs tasks on
    /// `concurrency` threads (at least 1). It never starts a thread of its own.
    ///
    /// ```
    /// use normkit::Context;
    /// // The smallest executor: every task on the calling thread, in order.
    /// let ctx = Context::with_executor(1, |count: usize, task: &(dyn Fn(usize) + Sync)| {
    ///     (0..count).for_each(task)
    /// })
    /// .unwrap();
    /// assert_eq!(ctx.threads(), 1);
    /// ```
    pub fn with_executor(concurrency: usize, executor: impl Executor + 'static) -> Result<Context> {
        if concurrency == 0 {
            return Err(Error::bad_argument("executor concurrency is 0"));
        }
        Ok(Context::with_runner(
            Runner::Executor(Box::new(executor)),
            concurrency,
        ))
    }

    /// A context that runs its parallel work on the rayon pool of the calling thread: inside
    /// `ThreadPool::install` that pool, elsewhere rayon's global pool. For programs that already
    /// use rayon; it starts no pool of its own.
    pub fn current_rayon() -> Context {
        Context::with_runner(Runner::CurrentRayon, 0)
    }

    /// The process-wide default context, created on first use: `NK_NUM_THREADS` threads if
    /// that variable holds a positive integer, otherwise all logical cores; best ISA.
    pub fn global() -> &'static Context {
        static GLOBAL: OnceLock<Context> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            let threads = default_threads(std::env::var("NK_NUM_THREADS").ok().as_deref());
            Context::new(threads)
                .or_else(|_| Context::new(0))
                .unwrap_or_else(|_| Context::with_runner(Runner::Serial, 1))
        })
    }

    /// Number of threads the context runs kernels on (for an executor context, its
    /// concurrency; for [`Context::current_rayon`], that of the calling thread's pool).
    pub fn threads(&self) -> usize {
        match self.runner {
            Runner::CurrentRayon => rayon::current_num_threads(),
            _ => self.threads,
        }
    }

    /// Forces an ISA (`None` = the best the CPU has). Fails with `Unsupported` if the CPU lacks it.
    pub fn set_isa(&self, isa: Option<Isa>) -> Result<()> {
        let isa = isa.unwrap_or_else(Isa::best);
        let Some(supported) = SupportedIsa::new(isa) else {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("this CPU does not support {isa:?}"),
            ));
        };
        self.isa.store(supported);
        Ok(())
    }

    /// The ISA the kernels use.
    pub fn isa(&self) -> Isa {
        self.isa.load().isa()
    }

    /// The ISA the kernels use, as the proof that the CPU has it: a load, no feature detection
    /// (the check was made when the ISA was chosen, in `with_runner` or `set_isa`).
    pub(crate) fn supported_isa(&self) -> SupportedIsa {
        self.isa.load()
    }

    /// Makes task `index` of every later parallel loop on this context panic (`None`: none),
    /// so that tests can check how a failing task is reported. Hidden; not part of the API.
    #[doc(hidden)]
    pub fn fail_task_for_testing(&self, index: Option<usize>) {
        self.fail_task
            .store(index.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    /// Whether a loop of `items` tasks over `elements` elements is worth handing to other
    /// threads. Loops started inside an executor's task run there (an executor is never called
    /// from one of its own tasks).
    fn parallel(&self, elements: usize, items: usize) -> bool {
        items > 1
            && elements >= PARALLEL_MIN_ELEMENTS
            && !matches!(self.runner, Runner::Serial)
            && !in_executor_task()
    }

    /// Runs `f(i)` for every `i < items`: the one parallel loop of the library. `f` must not
    /// depend on which thread runs it, so the result is the same for any runner and thread
    /// count. A panic in `f` reaches the caller once every task has finished.
    pub(crate) fn for_each<F>(&self, elements: usize, items: usize, f: F)
    where
        F: Fn(usize) + Sync + Send,
    {
        self.for_each_in(elements, items, Order::Forward, f)
    }

    /// [`Context::for_each`] for a pass over data a previous pass read with the same split into
    /// tasks: each thread of the context's own pool runs its share of the tasks last first, so
    /// that it starts on what it read last (still in its caches). On one thread the tasks run
    /// from the last to the first; on a host's executor, too (which tasks each of its threads
    /// takes is not known).
    pub(crate) fn for_each_backward<F>(&self, elements: usize, items: usize, f: F)
    where
        F: Fn(usize) + Sync + Send,
    {
        self.for_each_in(elements, items, Order::Backward, f)
    }

    fn for_each_in<F>(&self, elements: usize, items: usize, order: Order, f: F)
    where
        F: Fn(usize) + Sync + Send,
    {
        let task = |i: usize| {
            if i == self.fail_task.load(Ordering::Relaxed) {
                panic!("task {i} failed (test hook)");
            }
            f(i)
        };
        // Runners that do not know the order see the whole loop as one range.
        let ordered = |i: usize| task(order.task(i, 0..items));
        if !self.parallel(elements, items) {
            return (0..items).for_each(ordered);
        }
        match &self.runner {
            Runner::Pool(pool) => pool.run(items, order, &task),
            Runner::CurrentRayon => (0..items).into_par_iter().for_each(ordered),
            Runner::Executor(executor) => run_on_executor(executor.as_ref(), items, &ordered),
            Runner::Serial => (0..items).for_each(ordered),
        }
    }

    /// Runs `f(k, part)` for each part `k` of `parts` split into parts of `width` values (the
    /// last may be shorter), with [`Context::for_each`]: how tasks write per-part results into
    /// one buffer (see [`crate::scratch`]) instead of a vector each.
    pub(crate) fn for_each_part<T, F>(&self, elements: usize, parts: &mut [T], width: usize, f: F)
    where
        T: Send,
        F: Fn(usize, &mut [T]) + Sync + Send,
    {
        // Each lock is taken once, by its part's one task: never contended.
        let slots: Vec<std::sync::Mutex<&mut [T]>> = parts
            .chunks_mut(width.max(1))
            .map(std::sync::Mutex::new)
            .collect();
        self.for_each(elements, slots.len(), |k| {
            let mut part = slots[k].lock().unwrap_or_else(|e| e.into_inner());
            f(k, &mut part)
        });
    }

    /// Maps `f` over `0..items` into a vector in index order, with [`Context::for_each`].
    pub(crate) fn map<T, F>(&self, elements: usize, items: usize, f: F) -> Vec<T>
    where
        T: Send + Sync,
        F: Fn(usize) -> T + Sync + Send,
    {
        if !self.parallel(elements, items) && self.fail_task.load(Ordering::Relaxed) == usize::MAX {
            return (0..items).map(f).collect();
        }
        let slots: Vec<OnceLock<T>> = (0..items).map(|_| OnceLock::new()).collect();
        self.for_each(elements, items, |i| {
            if slots[i].set(f(i)).is_err() {
                panic!("task {i} ran twice");
            }
        });
        slots
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                s.into_inner()
                    .unwrap_or_else(|| panic!("task {i} did not run"))
            })
            .collect()
    }
}

/// Hands `items` tasks to a host's executor. Every task runs inside `catch_unwind`, so nothing
/// unwinds into the host's threads; after `parallel_for` returns, the first failure (a panic, a
/// task run twice or never, an index out of range) becomes a panic on the calling thread.
fn run_on_executor(executor: &dyn Executor, items: usize, task: &(dyn Fn(usize) + Sync)) {
    let done: Vec<AtomicBool> = (0..items).map(|_| AtomicBool::new(false)).collect();
    let failure = std::sync::Mutex::new(None::<Box<dyn std::any::Any + Send>>);
    let fail = |what: Box<dyn std::any::Any + Send>| {
        // The lock is never held across a panic; a poisoned one still holds valid data.
        let mut first = failure.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(what);
    };
    let guarded = |i: usize| {
        let Some(flag) = done.get(i) else {
            return fail(Box::new(format!(
                "the executor ran task {i} of a batch of {items}"
            )));
        };
        if flag.swap(true, Ordering::AcqRel) {
            return fail(Box::new(format!("the executor ran task {i} twice")));
        }
        let outer = IN_TASK.with(|t| t.replace(true));
        let result = catch_unwind(AssertUnwindSafe(|| task(i)));
        IN_TASK.with(|t| t.set(outer));
        if let Err(panic) = result {
            fail(panic);
        }
    };
    executor.parallel_for(items, &guarded);
    let failure = failure.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(panic) = failure {
        resume_unwind(panic);
    }
    if let Some(i) = done.iter().position(|d| !d.load(Ordering::Acquire)) {
        panic!("the executor returned without running task {i} of {items}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nk_num_threads_values() {
        assert_eq!(default_threads(None), 0);
        assert_eq!(default_threads(Some("")), 0);
        assert_eq!(default_threads(Some("0")), 0);
        assert_eq!(default_threads(Some("3")), 3);
        assert_eq!(default_threads(Some(" 2 ")), 2);
        assert_eq!(default_threads(Some("-1")), 0);
        assert_eq!(default_threads(Some("two")), 0);
        assert_eq!(default_threads(Some("1.5")), 0);
    }

    fn serial(count: usize, task: &(dyn Fn(usize) + Sync)) {
        (0..count).for_each(task)
    }

    #[test]
    fn executor_runs_every_task_and_map_keeps_order() {
        let reversed =
            |count: usize, task: &(dyn Fn(usize) + Sync)| (0..count).rev().for_each(task);
        for ctx in [
            Context::with_executor(1, serial).unwrap(),
            Context::with_executor(3, reversed).unwrap(),
        ] {
            let n = PARALLEL_MIN_ELEMENTS;
            assert_eq!(
                ctx.map(n, 37, |i| i * i),
                (0..37).map(|i| i * i).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn executor_faults_become_panics_on_the_caller() {
        let n = PARALLEL_MIN_ELEMENTS;
        let skips = |count: usize, task: &(dyn Fn(usize) + Sync)| (1..count).for_each(task);
        let twice = |count: usize, task: &(dyn Fn(usize) + Sync)| {
            (0..count).for_each(task);
            task(0)
        };
        let beyond = |count: usize, task: &(dyn Fn(usize) + Sync)| (0..=count).for_each(task);
        for ctx in [
            Context::with_executor(1, skips).unwrap(),
            Context::with_executor(1, twice).unwrap(),
            Context::with_executor(1, beyond).unwrap(),
        ] {
            let r = catch_unwind(AssertUnwindSafe(|| ctx.for_each(n, 4, |_| {})));
            assert!(r.is_err(), "{ctx:?}");
        }
        let ctx = Context::with_executor(2, serial).unwrap();
        ctx.fail_task_for_testing(Some(2));
        let ran = AtomicUsize::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            ctx.for_each(n, 5, |_| {
                ran.fetch_add(1, Ordering::Relaxed);
            })
        }));
        assert!(r.is_err());
        // Every other task still ran: the failure waits for the batch to finish.
        assert_eq!(ran.load(Ordering::Relaxed), 4);
        assert!(!in_executor_task());
    }

    #[test]
    fn zero_concurrency_is_refused() {
        assert_eq!(
            Context::with_executor(0, serial).unwrap_err().kind(),
            ErrorKind::BadArgument
        );
    }

    #[test]
    fn set_isa_keeps_the_checked_isa() {
        let ctx = Context::new(1).unwrap();
        assert_eq!(ctx.supported_isa().isa(), Isa::best());
        for isa in Isa::ALL {
            let before = ctx.isa();
            match ctx.set_isa(Some(isa)) {
                Ok(()) => {
                    assert!(isa.is_supported());
                    assert_eq!(ctx.isa(), isa);
                    assert_eq!(ctx.supported_isa().isa(), isa);
                }
                Err(e) => {
                    assert!(!isa.is_supported());
                    assert_eq!(e.kind(), ErrorKind::Unsupported);
                    assert_eq!(ctx.supported_isa().isa(), before, "unchanged after {isa:?}");
                }
            }
        }
        ctx.set_isa(None).unwrap();
        assert_eq!(ctx.supported_isa().isa(), Isa::best());
    }
}
