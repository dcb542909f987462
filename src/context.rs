//! The execution context: a thread pool and an ISA choice, and the process-wide default.

use crate::error::{Error, ErrorKind, Result};
use crate::simd::{Isa, SupportedIsa};
use rayon::prelude::*;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

/// Calls with fewer elements than this run on the calling thread: below it, waking the pool
/// costs more than the work. Under Miri, small calls use the pool too, so that the interpreter
/// checks the parallel paths on tensors it can afford (results do not depend on this: the work
/// split is fixed by the shape).
pub(crate) const PARALLEL_MIN_ELEMENTS: usize = if cfg!(miri) { 64 } else { 1 << 15 };

/// Owns a thread pool and the ISA its kernels use. Cheap to share: every operation takes
/// `&Context`, and calls on one context may run concurrently from many threads.
pub struct Context {
    /// `None` for a single-threaded context: everything runs on the calling thread.
    pool: Option<rayon::ThreadPool>,
    threads: usize,
    /// The chosen ISA as an index into `Isa::ALL`; always one the CPU supports.
    isa: AtomicU8,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("threads", &self.threads)
            .field("isa", &self.isa())
            .finish()
    }
}

fn isa_index(isa: Isa) -> u8 {
    Isa::ALL.iter().position(|&i| i == isa).unwrap() as u8
}

impl Context {
    /// A context with `num_threads` threads (0 = all logical cores) and the best ISA of the CPU.
    pub fn new(num_threads: usize) -> Result<Context> {
        let threads = if num_threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            num_threads
        };
        if threads > 4096 {
            return Err(Error::bad_argument(format!(
                "num_threads {threads} is more than 4096"
            )));
        }
        let pool = if threads > 1 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("normkit-{i}"))
                .build()
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Unsupported,
                        format!("cannot start {threads} threads: {e}"),
                    )
                })?;
            Some(pool)
        } else {
            None
        };
        Ok(Context {
            pool,
            threads,
            isa: AtomicU8::new(isa_index(Isa::best())),
        })
    }

    /// The process-wide default context: all logical cores, best ISA. Created on first use.
    pub fn global() -> &'static Context {
        static GLOBAL: OnceLock<Context> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            Context::new(0).unwrap_or_else(|_| Context::new(1).expect("a 1-thread context"))
        })
    }

    /// Number of threads the context runs kernels on.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Forces an ISA (`None` = the best the CPU has). Fails with `Unsupported` if the CPU lacks it.
    pub fn set_isa(&self, isa: Option<Isa>) -> Result<()> {
        let isa = isa.unwrap_or_else(Isa::best);
        if !isa.is_supported() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("this CPU does not support {isa:?}"),
            ));
        }
        self.isa.store(isa_index(isa), Ordering::Relaxed);
        Ok(())
    }

    /// The ISA the kernels use.
    pub fn isa(&self) -> Isa {
        Isa::ALL[self.isa.load(Ordering::Relaxed) as usize]
    }

    pub(crate) fn supported_isa(&self) -> SupportedIsa {
        // Only supported ISAs are ever stored (see `new` and `set_isa`).
        SupportedIsa::new(self.isa()).unwrap_or_else(SupportedIsa::best)
    }

    /// Whether a call touching `elements` elements should use the pool.
    fn parallel(&self, elements: usize) -> bool {
        self.pool.is_some() && elements >= PARALLEL_MIN_ELEMENTS
    }

    /// Runs `f(i)` for every `i < items`, on the pool when `elements` is large enough. `f` must
    /// not depend on which thread runs it, so the result is the same for any thread count.
    pub(crate) fn for_each<F>(&self, elements: usize, items: usize, f: F)
    where
        F: Fn(usize) + Sync + Send,
    {
        match &self.pool {
            Some(pool) if items > 1 && self.parallel(elements) => {
                pool.install(|| (0..items).into_par_iter().for_each(f))
            }
            _ => (0..items).for_each(f),
        }
    }

    /// Maps `f` over `0..items` into a vector in index order, on the pool when `elements` is
    /// large enough.
    pub(crate) fn map<T, F>(&self, elements: usize, items: usize, f: F) -> Vec<T>
    where
        T: Send,
        F: Fn(usize) -> T + Sync + Send,
    {
        match &self.pool {
            Some(pool) if items > 1 && self.parallel(elements) => {
                pool.install(|| (0..items).into_par_iter().map(f).collect())
            }
            _ => (0..items).map(f).collect(),
        }
    }
}
