//! Library, error and context functions, and the shared C types.

use super::{call, nk_status, require_always};
use crate::context::Context;
use crate::error::{Error, ErrorKind, Result};
use crate::shape::{Layout, Shape};
use crate::simd::Isa;
use libc::{c_char, c_int, c_void};

/// Major version; `nk_version()` is `(major << 16) | (minor << 8) | patch`.
pub const NK_VERSION_MAJOR: u32 = 0;
/// Minor version.
pub const NK_VERSION_MINOR: u32 = 1;
/// Patch version.
pub const NK_VERSION_PATCH: u32 = 0;

/// Instruction sets the kernels can use.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum nk_isa {
    /// The best the running CPU has (chosen at run time).
    NK_ISA_AUTO = 0,
    /// Portable SIMD compiled for the build target.
    NK_ISA_PORTABLE = 1,
    /// AVX2 with FMA.
    NK_ISA_AVX2 = 2,
    /// AVX-512 F/BW/DQ/VL.
    NK_ISA_AVX512 = 3,
    /// NEON (aarch64).
    NK_ISA_NEON = 4,
}

/// Tensor layouts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum nk_layout {
    /// Channels-first (NCHW): element (n, c, s) at (n*C + c)*S + s.
    NK_LAYOUT_NCS = 0,
    /// Channels-last (NHWC): element (n, c, s) at (n*S + s)*C + c.
    NK_LAYOUT_NSC = 1,
}

/// An `nk_isa` as passed by C: read as an integer, never transmuted.
pub type nk_isa_value = c_int;
/// An `nk_status` as passed by C: read as an integer, never transmuted.
pub type nk_status_value = c_int;
/// An `nk_layout` as passed by C: read as an integer, never transmuted.
pub type nk_layout_value = c_int;

/// A tensor shape: per-channel statistics are over batch * spatial elements. `layout` is an
/// nk_layout value; any other is NK_ERR_BAD_ARGUMENT, even for an empty tensor.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct nk_shape {
    pub batch: usize,
    pub channels: usize,
    /// Product of the spatial sizes (H*W, D*H*W, or 1 for an (N, C) matrix).
    pub spatial: usize,
    pub layout: nk_layout_value,
}

impl nk_shape {
    /// The shape, with the layout checked (`NK_ERR_BAD_ARGUMENT` for an unknown value).
    pub(crate) fn to_shape(self) -> Result<Shape> {
        let layout = match self.layout {
            0 => Layout::Ncs,
            1 => Layout::Nsc,
            other => {
                return Err(Error::bad_argument(format!("unknown layout {other}")));
            }
        };
        Ok(Shape::new(self.batch, self.channels, self.spatial, layout))
    }

    /// The sizes alone, for the checks that come before the layout's (overflow, shape).
    pub(crate) fn sizes(self) -> Shape {
        Shape::new(self.batch, self.channels, self.spatial, Layout::Ncs)
    }

    /// Whether the tensor has no elements (any size is 0).
    pub(crate) fn is_empty(&self) -> bool {
        self.batch == 0 || self.channels == 0 || self.spatial == 0
    }
}

/// An execution context: where a call's parallel work runs (a thread pool of its own, or the
/// host's executor) and its ISA choice. Create with `nk_context_create` or
/// `nk_context_create_with_executor`.
pub struct nk_context {
    pub(crate) inner: Context,
}

impl nk_context {
    /// The safe context behind the handle (for tests of the C boundary).
    #[doc(hidden)]
    pub fn context(&self) -> &Context {
        &self.inner
    }
}

/// A task of an executor: `task(task_arg, index)`.
pub type nk_task_fn = Option<unsafe extern "C" fn(task_arg: *mut c_void, index: usize)>;

/// The host's thread pool, for `nk_context_create_with_executor`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct nk_executor {
    /// Runs `task(task_arg, i)` exactly once for every i in [0, count), on any of the host's
    /// threads, in any order and grouping, and returns only when all have finished. normkit
    /// calls it from the thread that made the normkit call, never from inside a task; tasks
    /// never unwind or longjmp.
    pub parallel_for: Option<
        unsafe extern "C" fn(
            user: *mut c_void,
            count: usize,
            task: nk_task_fn,
            task_arg: *mut c_void,
        ),
    >,
    /// Passed back unchanged.
    pub user: *mut c_void,
    /// How many threads the host runs tasks on (>= 1).
    pub concurrency: usize,
}

/// An `nk_executor` made usable from Rust: the `Executor` a context created by
/// `nk_context_create_with_executor` runs on.
struct HostExecutor {
    parallel_for: unsafe extern "C" fn(
        user: *mut c_void,
        count: usize,
        task: nk_task_fn,
        task_arg: *mut c_void,
    ),
    user: *mut c_void,
}

// SAFETY: `user` is only passed back to the host's `parallel_for`, never dereferenced here. The
// contract makes the host responsible for calling the context from threads its executor allows
// (several at once only if `parallel_for` is safe to call concurrently).
unsafe impl Send for HostExecutor {}
// SAFETY: as above.
unsafe impl Sync for HostExecutor {}

/// What `task_arg` points to while a batch runs: the batch's task.
type TaskRef<'a> = &'a (dyn Fn(usize) + Sync);

/// The `nk_task_fn` normkit hands to hosts.
///
/// # Safety
/// `task_arg` is the pointer `HostExecutor::parallel_for` passed with this function, used while
/// that `parallel_for` has not returned.
unsafe extern "C" fn run_task(task_arg: *mut c_void, index: usize) {
    // SAFETY: task_arg points to a `TaskRef` on the stack of `HostExecutor::parallel_for`, which
    // is still running (the host returns only when every task has finished).
    let task = unsafe { *task_arg.cast::<TaskRef<'_>>() };
    // The task catches its own panics (context.rs); this catch only guarantees that nothing
    // ever unwinds into the host's frames.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task(index)));
}

impl crate::context::Executor for HostExecutor {
    fn parallel_for(&self, count: usize, task: &(dyn Fn(usize) + Sync)) {
        let mut task: TaskRef<'_> = task;
        let task_arg: *mut TaskRef<'_> = &mut task;
        // SAFETY: the host's contract: `parallel_for` calls `run_task(task_arg, i)` for i in
        // [0, count) and returns after all of them, so `task` outlives every use of `task_arg`.
        unsafe { (self.parallel_for)(self.user, count, Some(run_task), task_arg.cast()) }
    }
}

/// The context a call runs on: `ctx`, or the process-wide default for NULL.
///
/// # Safety
/// `ctx` is NULL or a live pointer from `nk_context_create`.
pub(crate) unsafe fn context<'a>(ctx: *const nk_context) -> &'a Context {
    // SAFETY: forwarded from the caller.
    match unsafe { ctx.as_ref() } {
        Some(c) => &c.inner,
        None => Context::global(),
    }
}

/// The library version: (major << 16) | (minor << 8) | patch. No status; never fails.
#[unsafe(no_mangle)]
pub extern "C" fn nk_version() -> u32 {
    (NK_VERSION_MAJOR << 16) | (NK_VERSION_MINOR << 8) | NK_VERSION_PATCH
}

/// A static, NUL-terminated description of `status`; "unknown status" for a value outside
/// nk_status. Never NULL; not to be freed.
#[unsafe(no_mangle)]
pub extern "C" fn nk_status_string(status: nk_status_value) -> *const c_char {
    let text: &'static [u8] = match status {
        0 => b"NK_OK: success\0",
        1 => b"NK_ERR_NULL_POINTER: a required pointer is NULL\0",
        2 => b"NK_ERR_BAD_SHAPE: sizes the operation cannot take\0",
        3 => b"NK_ERR_BAD_ARGUMENT: a scalar, flag or enum value out of range\0",
        4 => b"NK_ERR_OVERFLOW: an element or byte count overflows\0",
        5 => b"NK_ERR_ALIAS: forbidden overlap between buffers\0",
        6 => b"NK_ERR_MISALIGNED: a pointer not aligned to its element type\0",
        7 => b"NK_ERR_UNSUPPORTED: not supported on this CPU or build\0",
        8 => b"NK_ERR_INTERNAL: internal error (a bug; please report)\0",
        _ => b"unknown status\0",
    };
    text.as_ptr().cast()
}

/// The message of this thread's last failed call (one that returned a status other than NK_OK),
/// or "" if none; never NULL. Thread-local: calls that succeed leave it unchanged, and the
/// functions without a status (nk_version, nk_status_string, nk_last_error_message,
/// nk_context_destroy, nk_context_isa, nk_philox4x32_10) never set it. Valid until this
/// thread's next failed call or its exit.
#[unsafe(no_mangle)]
pub extern "C" fn nk_last_error_message() -> *const c_char {
    super::last_error_ptr()
}

/// Creates a context with `num_threads` threads (0 = all logical cores; 1 = every call runs on
/// the calling thread alone) and the best ISA of the CPU, and stores it in `*out`
/// (written only on NK_OK). `out` is required and aligned for a pointer. More than 4096 threads:
/// NK_ERR_BAD_ARGUMENT; threads that cannot be started: NK_ERR_UNSUPPORTED. Free it with
/// nk_context_destroy. The calling thread is one of the `num_threads`: each call runs its share
/// of the work there, with `num_threads - 1` workers of the context's own; after a call the
/// workers spin for 100 µs, then sleep. A call never waits for a sleeping worker to wake.
///
/// # Safety
/// `out` is NULL (an error) or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_context_create(
    num_threads: usize,
    out: *mut *mut nk_context,
) -> nk_status {
    call(|| {
        require_always("out", out)?;
        // The argument (num_threads) before alignment, in the contract's order.
        let inner = Context::new(num_threads)?;
        if !(out as usize).is_multiple_of(std::mem::align_of::<*mut nk_context>()) {
            return Err(Error::new(ErrorKind::Misaligned, "out is not aligned"));
        }
        let ctx = Box::new(nk_context { inner });
        // SAFETY: out is non-NULL, aligned, and the caller's to write.
        unsafe { out.write(Box::into_raw(ctx)) };
        Ok(())
    })
}

/// Creates a context that runs its parallel work on the host's threads through `executor`
/// (the struct is copied; the context never starts a thread of its own) and stores it in `*out`
/// (written only on NK_OK).
/// - `executor`, `executor->parallel_for` and `out` are required (NK_ERR_NULL_POINTER), aligned
///   for their types; `concurrency` 0 is NK_ERR_BAD_ARGUMENT.
/// - `user` must stay valid, and `parallel_for` keep its contract, until nk_context_destroy.
///   Calls on the context may be made from several threads at once only if `parallel_for` may
///   be called concurrently.
/// - Results are bitwise those of any other context: the work split depends on the shape
///   only, never on `concurrency`. A failure inside a task makes the call return
///   NK_ERR_INTERNAL after `parallel_for` returns; nothing unwinds into the host.
///
/// # Safety
/// `executor` is NULL (an error) or valid for reading; its `parallel_for` honours the contract
/// above for as long as the context lives; `out` is NULL (an error) or valid for writing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_context_create_with_executor(
    executor: *const nk_executor,
    out: *mut *mut nk_context,
) -> nk_status {
    call(|| {
        require_always("executor", executor)?;
        let executor_ptr = executor;
        // SAFETY: non-NULL (checked above); readable by the caller's promise. Read unaligned:
        // alignment is checked after the NULL checks, in the contract's order.
        let executor = unsafe { executor.read_unaligned() };
        let Some(parallel_for) = executor.parallel_for else {
            return Err(Error::new(
                ErrorKind::NullPointer,
                "executor->parallel_for is NULL",
            ));
        };
        require_always("out", out)?;
        if executor.concurrency == 0 {
            return Err(Error::bad_argument("executor->concurrency is 0"));
        }
        if !(executor_ptr as usize).is_multiple_of(std::mem::align_of::<nk_executor>()) {
            return Err(Error::new(ErrorKind::Misaligned, "executor is not aligned"));
        }
        if !(out as usize).is_multiple_of(std::mem::align_of::<*mut nk_context>()) {
            return Err(Error::new(ErrorKind::Misaligned, "out is not aligned"));
        }
        let host = HostExecutor {
            parallel_for,
            user: executor.user,
        };
        let ctx = Box::new(nk_context {
            inner: Context::with_executor(executor.concurrency, host)?,
        });
        // SAFETY: out is non-NULL, aligned, and the caller's to write.
        unsafe { out.write(Box::into_raw(ctx)) };
        Ok(())
    })
}

/// Destroys a context; NULL is a no-op. A context with threads of its own tells them to exit
/// and returns without waiting for them; an executor context calls `parallel_for` no more. No
/// call may be using `ctx`, and it must not be used afterwards.
///
/// # Safety
/// `ctx` is NULL or a pointer from `nk_context_create` or `nk_context_create_with_executor` not
/// destroyed before, with no call using it in flight.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_context_destroy(ctx: *mut nk_context) {
    if !ctx.is_null() {
        // SAFETY: the caller passes ownership back; dropping cannot panic across the boundary
        // (the pool's drop only signals its threads).
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
            drop(Box::from_raw(ctx))
        }));
    }
}

/// Forces the ISA of `ctx` (NK_ISA_AUTO = the best the CPU has). `ctx` is required (the default
/// context cannot be changed: NULL is NK_ERR_NULL_POINTER); a value outside nk_isa is
/// NK_ERR_BAD_ARGUMENT; an ISA this CPU or build lacks (e.g. NK_ISA_NEON on x86-64) is
/// NK_ERR_UNSUPPORTED. May be called while other calls run on `ctx`: a call in flight may run
/// some of its passes with the old ISA and the rest with the new one.
///
/// # Safety
/// `ctx` is NULL (an error) or a live context.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_context_set_isa(ctx: *mut nk_context, isa: nk_isa_value) -> nk_status {
    call(|| {
        require_always("ctx", ctx)?;
        let isa = match isa {
            0 => None,
            1 => Some(Isa::Portable),
            2 => Some(Isa::Avx2),
            3 => Some(Isa::Avx512),
            4 => Some(Isa::Neon),
            other => return Err(Error::bad_argument(format!("unknown isa {other}"))),
        };
        // SAFETY: ctx is a live context (caller's promise), non-NULL (checked).
        unsafe { &(*ctx).inner }.set_isa(isa)
    })
}

/// The ISA the kernels of `ctx` use, never NK_ISA_AUTO. NULL means the default context, which
/// this creates (starting its threads) if no call has yet. No status.
///
/// # Safety
/// `ctx` is NULL or a live context.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_context_isa(ctx: *const nk_context) -> nk_isa {
    // SAFETY: forwarded.
    match unsafe { context(ctx) }.isa() {
        Isa::Portable => nk_isa::NK_ISA_PORTABLE,
        Isa::Avx2 => nk_isa::NK_ISA_AVX2,
        Isa::Avx512 => nk_isa::NK_ISA_AVX512,
        Isa::Neon => nk_isa::NK_ISA_NEON,
    }
}
