//! Executor contexts, through the C functions (called from Rust) and the safe API:
//! `nk_context_create_with_executor`'s error contract; executors written here as C functions (in
//! order, last first, on several threads, each counting its calls) giving the bits of contexts
//! with their own threads for every operation family and ISA; a failing task and a faulty
//! executor (a task skipped, run twice or out of range) reported as `NK_ERR_INTERNAL` with
//! nothing unwinding into the host and the running statistics untouched; one executor context
//! used by several host threads at once; `NK_NUM_THREADS` on the default context (in child
//! processes); `Context::with_executor` with a closure and `Context::current_rayon`; and no
//! thread of normkit's own started by any of them.
//!
//! Every result is compared with contexts that have their own threads (`nk_context_create(1)` and
//! `nk_context_create(2)`), never with the context under test.

// The C functions: built with the default `capi` feature.
#![cfg(feature = "capi")]

mod common;

use common::check::{assert_bits, assert_bits64, isa_value, threaded_executor};
use common::data::{Gen, normals};
use normkit::dropout::Stream;
use normkit::ffi::nk_status::{self, *};
use normkit::ffi::*;
use normkit::{Context, ErrorKind, InOut, Isa, Layout, Shape};
use std::ffi::{CStr, c_void};
use std::process::Command;
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, OnceLock};

const NCS: nk_layout_value = 0;
const NSC: nk_layout_value = 1;

fn shape(batch: usize, channels: usize, spatial: usize, layout: nk_layout_value) -> nk_shape {
    nk_shape {
        batch,
        channels,
        spatial,
        layout,
    }
}

fn elements(s: nk_shape) -> usize {
    s.batch * s.channels * s.spatial
}

fn last_error() -> String {
    // SAFETY: never NULL, NUL-terminated (the contract).
    unsafe { CStr::from_ptr(nk_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

fn nk_isa_of(isa: Isa) -> nk_isa {
    match isa {
        Isa::Portable => nk_isa::NK_ISA_PORTABLE,
        Isa::Avx2 => nk_isa::NK_ISA_AVX2,
        Isa::Avx512 => nk_isa::NK_ISA_AVX512,
        Isa::Neon => nk_isa::NK_ISA_NEON,
        _ => unreachable!("a new ISA this code does not know"),
    }
}

// ---------------------------------------------------------------------------------------------
// Executors written as C functions.

/// What the executors below keep behind their `user` pointer: counts of what they were asked.
#[derive(Debug, Default)]
struct Host {
    /// `parallel_for` calls.
    calls: AtomicUsize,
    /// Tasks run.
    tasks: AtomicUsize,
    /// The largest batch.
    largest: AtomicUsize,
    /// `parallel_for` calls running now, and the most seen at once.
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

/// How an executor runs a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    /// On the calling thread, in order.
    InOrder,
    /// On the calling thread, last first.
    Reversed,
    /// On 3 scoped threads, thread `k` taking `k`, `k + 3`, ...
    Threads,
    /// Faulty: never runs task 0.
    SkipsFirst,
    /// Faulty: runs every task, then task 0 again.
    RunsFirstTwice,
    /// Faulty: runs every task, then task `count`.
    Beyond,
}

/// The executors that honour the contract.
const GOOD: [Style; 3] = [Style::InOrder, Style::Reversed, Style::Threads];

type ParallelFor = unsafe extern "C" fn(*mut c_void, usize, nk_task_fn, *mut c_void);

impl Style {
    fn parallel_for(self) -> ParallelFor {
        match self {
            Style::InOrder => in_order,
            Style::Reversed => reversed,
            Style::Threads => on_threads,
            Style::SkipsFirst => skips_first,
            Style::RunsFirstTwice => runs_first_twice,
            Style::Beyond => beyond,
        }
    }

    fn concurrency(self) -> usize {
        if self == Style::Threads { 3 } else { 1 }
    }
}

/// A task normkit handed to `parallel_for`, callable from any thread while `parallel_for` runs.
#[derive(Clone, Copy)]
struct Task {
    run: unsafe extern "C" fn(*mut c_void, usize),
    arg: *mut c_void,
}

// SAFETY: the contract lets the host run tasks on any of its threads.
unsafe impl Send for Task {}
// SAFETY: as above.
unsafe impl Sync for Task {}

impl Task {
    fn call(&self, host: &Host, index: usize) {
        // SAFETY: the function and argument normkit passed to the `parallel_for` that is running.
        unsafe { (self.run)(self.arg, index) };
        host.tasks.fetch_add(1, SeqCst);
    }
}

/// The body every executor shares: counts the call, then `schedule` runs the tasks.
///
/// # Safety
/// `user` points to a live `Host`.
unsafe fn drive(
    user: *mut c_void,
    count: usize,
    task: nk_task_fn,
    arg: *mut c_void,
    schedule: impl FnOnce(&Host, Task, usize),
) {
    // SAFETY: the caller's promise.
    let host = unsafe { &*user.cast::<Host>() };
    host.calls.fetch_add(1, SeqCst);
    host.largest.fetch_max(count, SeqCst);
    let now = host.in_flight.fetch_add(1, SeqCst) + 1;
    host.most_in_flight.fetch_max(now, SeqCst);
    let run = task.expect("normkit passed a NULL task");
    schedule(host, Task { run, arg }, count);
    host.in_flight.fetch_sub(1, SeqCst);
}

unsafe extern "C" fn in_order(user: *mut c_void, count: usize, task: nk_task_fn, arg: *mut c_void) {
    // SAFETY: `user` is the context's `Host`.
    unsafe {
        drive(user, count, task, arg, |h, t, n| {
            (0..n).for_each(|i| t.call(h, i))
        })
    }
}

unsafe extern "C" fn reversed(user: *mut c_void, count: usize, task: nk_task_fn, arg: *mut c_void) {
    // SAFETY: `user` is the context's `Host`.
    unsafe {
        drive(user, count, task, arg, |h, t, n| {
            (0..n).rev().for_each(|i| t.call(h, i))
        })
    }
}

unsafe extern "C" fn on_threads(
    user: *mut c_void,
    count: usize,
    task: nk_task_fn,
    arg: *mut c_void,
) {
    // SAFETY: `user` is the context's `Host`.
    unsafe {
        drive(user, count, task, arg, |h, t, n| {
            std::thread::scope(|s| {
                for k in 0..3 {
                    s.spawn(move || (k..n).step_by(3).for_each(|i| t.call(h, i)));
                }
            })
        })
    }
}

unsafe extern "C" fn skips_first(
    user: *mut c_void,
    count: usize,
    task: nk_task_fn,
    arg: *mut c_void,
) {
    // SAFETY: `user` is the context's `Host`.
    unsafe {
        drive(user, count, task, arg, |h, t, n| {
            (1..n).for_each(|i| t.call(h, i))
        })
    }
}

unsafe extern "C" fn runs_first_twice(
    user: *mut c_void,
    count: usize,
    task: nk_task_fn,
    arg: *mut c_void,
) {
    // SAFETY: `user` is the context's `Host`.
    unsafe {
        drive(user, count, task, arg, |h, t, n| {
            (0..n).for_each(|i| t.call(h, i));
            t.call(h, 0);
        })
    }
}

unsafe extern "C" fn beyond(user: *mut c_void, count: usize, task: nk_task_fn, arg: *mut c_void) {
    // SAFETY: `user` is the context's `Host`.
    unsafe {
        drive(user, count, task, arg, |h, t, n| {
            (0..=n).for_each(|i| t.call(h, i))
        })
    }
}

/// A C context: `nk_context_create` or `nk_context_create_with_executor` with one of the
/// executors above. Destroyed on drop (before its `Host`).
struct CCtx {
    ptr: *mut nk_context,
    name: String,
    host: Option<Arc<Host>>,
}

fn set_isa(ctx: *mut nk_context, isa: Isa) {
    // SAFETY: a live context.
    let status = unsafe { nk_context_set_isa(ctx, isa_value(isa)) };
    assert_eq!(
        status,
        NK_OK,
        "nk_context_set_isa({isa:?}): {}",
        last_error()
    );
    // SAFETY: a live context.
    assert_eq!(unsafe { nk_context_isa(ctx) }, nk_isa_of(isa));
}

impl CCtx {
    fn own(threads: usize, isa: Isa) -> CCtx {
        let mut ptr = null_mut();
        // SAFETY: a valid out pointer.
        let status = unsafe { nk_context_create(threads, &mut ptr) };
        assert_eq!(status, NK_OK, "nk_context_create({threads})");
        set_isa(ptr, isa);
        CCtx {
            ptr,
            name: format!("{threads} thread(s), {isa:?}"),
            host: None,
        }
    }

    fn executor(style: Style, isa: Isa) -> CCtx {
        let host = Arc::new(Host::default());
        let executor = nk_executor {
            parallel_for: Some(style.parallel_for()),
            user: Arc::as_ptr(&host).cast_mut().cast(),
            concurrency: style.concurrency(),
        };
        let mut ptr = null_mut();
        // SAFETY: valid pointers; the host outlives the context (dropped after it).
        let status = unsafe { nk_context_create_with_executor(&executor, &mut ptr) };
        assert_eq!(
            status,
            NK_OK,
            "nk_context_create_with_executor: {}",
            last_error()
        );
        assert!(!ptr.is_null());
        set_isa(ptr, isa);
        CCtx {
            ptr,
            name: format!("{style:?} executor, {isa:?}"),
            host: Some(host),
        }
    }

    fn host(&self) -> &Host {
        self.host.as_deref().expect("an executor context")
    }

    fn calls(&self) -> usize {
        self.host().calls.load(SeqCst)
    }

    /// The safe context behind the handle.
    fn context(&self) -> &Context {
        // SAFETY: a live context.
        unsafe { (*self.ptr).context() }
    }
}

impl Drop for CCtx {
    fn drop(&mut self) {
        // SAFETY: a context from nk_context_create*, destroyed once.
        unsafe { nk_context_destroy(self.ptr) };
    }
}

/// A context pointer that host threads share (the contexts here allow concurrent calls).
#[derive(Clone, Copy)]
struct Shared(*mut nk_context);
// SAFETY: see above.
unsafe impl Send for Shared {}
// SAFETY: see above.
unsafe impl Sync for Shared {}

impl Shared {
    fn get(self) -> *mut nk_context {
        self.0
    }
}

// ---------------------------------------------------------------------------------------------
// The calls: one C call each, on inputs made once.

struct Inputs {
    /// Data and gradients.
    x: Vec<f32>,
    dy: Vec<f32>,
    /// Per-channel (or per-row, per-column) values of either sign, and positive ones.
    signed: Vec<f32>,
    positive: Vec<f32>,
}

const MAX_ELEMENTS: usize = 200_000;

fn inputs() -> &'static Inputs {
    static INPUTS: OnceLock<Inputs> = OnceLock::new();
    INPUTS.get_or_init(|| Inputs {
        x: normals(1, MAX_ELEMENTS, 0.5, 2.0),
        dy: normals(2, MAX_ELEMENTS, 0.0, 1.0),
        signed: normals(3, 1 << 16, 0.1, 1.0),
        positive: Gen::new(4).uniforms(1 << 16, 0.5, 2.0),
    })
}

/// `k`-th block of `len` values of `v`.
fn part(v: &[f32], k: usize, len: usize) -> &[f32] {
    &v[k * len..(k + 1) * len]
}

/// An output buffer.
#[derive(Clone, Debug, PartialEq)]
enum Out {
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<u8>),
}

/// What one call returned and left in its outputs.
struct Run {
    status: nk_status,
    message: String,
    outs: Vec<Out>,
}

fn finish(status: nk_status, outs: Vec<Out>) -> Run {
    let message = if status == NK_OK {
        String::new()
    } else {
        last_error()
    };
    Run {
        status,
        message,
        outs,
    }
}

/// A value no call writes, in every output before a call.
const UNWRITTEN: f32 = -7.25;

fn out32(n: usize) -> Vec<f32> {
    vec![UNWRITTEN; n]
}

fn out64(n: usize) -> Vec<f64> {
    vec![f64::from(UNWRITTEN); n]
}

type OpFn = fn(*mut nk_context) -> Run;

fn bn_training(ctx: *mut nk_context, sh: nk_shape) -> Run {
    let (i, n, c) = (inputs(), elements(sh), sh.channels);
    let mut y = out32(n);
    let mut rm = part(&i.signed, 0, c).to_vec();
    let mut rv = part(&i.positive, 0, c).to_vec();
    let (mut sm, mut si) = (out32(c), out32(c));
    // SAFETY: every pointer is valid for its extent.
    let status = unsafe {
        nk_batchnorm_forward_training(
            ctx,
            sh,
            i.x.as_ptr(),
            y.as_mut_ptr(),
            part(&i.signed, 1, c).as_ptr(),
            part(&i.signed, 2, c).as_ptr(),
            1e-5,
            0.1,
            0,
            rm.as_mut_ptr(),
            rv.as_mut_ptr(),
            sm.as_mut_ptr(),
            si.as_mut_ptr(),
        )
    };
    finish(
        status,
        vec![
            Out::F32(y),
            Out::F32(rm),
            Out::F32(rv),
            Out::F32(sm),
            Out::F32(si),
        ],
    )
}

fn bn_from_moments(ctx: *mut nk_context, sh: nk_shape) -> Run {
    let (i, n, c) = (inputs(), elements(sh), sh.channels);
    let mean: Vec<f64> = part(&i.signed, 3, c).iter().map(|&v| v.into()).collect();
    let m2: Vec<f64> = part(&i.positive, 3, c)
        .iter()
        .map(|&v| f64::from(v) * 1e4)
        .collect();
    let mut y = out32(n);
    let mut rm = part(&i.signed, 0, c).to_vec();
    let mut rv = part(&i.positive, 0, c).to_vec();
    let (mut sm, mut si) = (out32(c), out32(c));
    // SAFETY: every pointer is valid for its extent.
    let status = unsafe {
        nk_batchnorm_forward_from_moments(
            ctx,
            sh,
            i.x.as_ptr(),
            y.as_mut_ptr(),
            part(&i.signed, 1, c).as_ptr(),
            part(&i.signed, 2, c).as_ptr(),
            (sh.batch * sh.spatial * 3) as u64,
            mean.as_ptr(),
            m2.as_ptr(),
            1e-5,
            0.1,
            0,
            rm.as_mut_ptr(),
            rv.as_mut_ptr(),
            sm.as_mut_ptr(),
            si.as_mut_ptr(),
        )
    };
    finish(
        status,
        vec![
            Out::F32(y),
            Out::F32(rm),
            Out::F32(rv),
            Out::F32(sm),
            Out::F32(si),
        ],
    )
}

fn bn_inference(ctx: *mut nk_context, sh: nk_shape, flags: u32) -> Run {
    let (i, n, c) = (inputs(), elements(sh), sh.channels);
    let mut y = out32(n);
    // SAFETY: every pointer is valid for its extent.
    let status = unsafe {
        nk_batchnorm_forward_inference(
            ctx,
            sh,
            i.x.as_ptr(),
            y.as_mut_ptr(),
            part(&i.signed, 1, c).as_ptr(),
            part(&i.signed, 2, c).as_ptr(),
            part(&i.signed, 0, c).as_ptr(),
            part(&i.positive, 0, c).as_ptr(),
            1e-5,
            flags,
        )
    };
    finish(status, vec![Out::F32(y)])
}

fn moments(ctx: *mut nk_context, sh: nk_shape) -> Run {
    let (i, c) = (inputs(), sh.channels);
    let (mut mean, mut m2) = (out64(c), out64(c));
    // SAFETY: every pointer is valid for its extent.
    let status = unsafe { nk_moments(ctx, sh, i.x.as_ptr(), mean.as_mut_ptr(), m2.as_mut_ptr()) };
    finish(status, vec![Out::F64(mean), Out::F64(m2)])
}

fn bn_backward(ctx: *mut nk_context, sh: nk_shape) -> Run {
    let (i, n, c) = (inputs(), elements(sh), sh.channels);
    let mut dx = out32(n);
    let (mut dgamma, mut dbeta) = (out32(c), out32(c));
    // SAFETY: every pointer is valid for its extent.
    let status = unsafe {
        nk_batchnorm_backward(
            ctx,
            sh,
            i.x.as_ptr(),
            i.dy.as_ptr(),
            dx.as_mut_ptr(),
            part(&i.signed, 1, c).as_ptr(),
            part(&i.signed, 0, c).as_ptr(),
            part(&i.positive, 0, c).as_ptr(),
            dgamma.as_mut_ptr(),
            dbeta.as_mut_ptr(),
        )
    };
    finish(
        status,
        vec![Out::F32(dx), Out::F32(dgamma), Out::F32(dbeta)],
    )
}

fn bn_backward_reduce(ctx: *mut nk_context, sh: nk_shape) -> Run {
    let (i, c) = (inputs(), sh.channels);
    let (mut sum_dy, mut sum_dy_xhat) = (out64(c), out64(c));
    // SAFETY: every pointer is valid for its extent.
    let status = unsafe {
        nk_batchnorm_backward_reduce(
            ctx,
            sh,
            i.x.as_ptr(),
            i.dy.as_ptr(),
            part(&i.signed, 0, c).as_ptr(),
            part(&i.positive, 0, c).as_ptr(),
            sum_dy.as_mut_ptr(),
            sum_dy_xhat.as_mut_ptr(),
        )
    };
    finish(status, vec![Out::F64(sum_dy), Out::F64(sum_dy_xhat)])
}

fn bn_backward_apply(ctx: *mut nk_context, sh: nk_shape) -> Run {
    let (i, n, c) = (inputs(), elements(sh), sh.channels);
    let sum_dy: Vec<f64> = part(&i.signed, 3, c)
        .iter()
        .map(|&v| f64::from(v) * 100.0)
        .collect();
    let sum_dy_xhat: Vec<f64> = part(&i.signed, 2, c)
        .iter()
        .map(|&v| f64::from(v) * 30.0)
        .collect();
    let mut dx = out32(n);
    // SAFETY: every pointer is valid for its extent.
    let status = unsafe {
        nk_batchnorm_backward_apply(
            ctx,
            sh,
            i.x.as_ptr(),
            i.dy.as_ptr(),
            dx.as_mut_ptr(),
            part(&i.signed, 1, c).as_ptr(),
            part(&i.signed, 0, c).as_ptr(),
            part(&i.positive, 0, c).as_ptr(),
            (sh.batch * sh.spatial * 2) as u64,
            sum_dy.as_ptr(),
            sum_dy_xhat.as_ptr(),
        )
    };
    finish(status, vec![Out::F32(dx)])
}

fn layernorm_forward(ctx: *mut nk_context, rows: usize, cols: usize) -> Run {
    let i = inputs();
    let mut y = out32(rows * cols);
    let (mut sm, mut si) = (out32(rows), out32(rows));
    // SAFETY: every pointer is valid for its extent.
    let status = unsafe {
        nk_layernorm_forward(
            ctx,
            rows,
            cols,
            i.x.as_ptr(),
            y.as_mut_ptr(),
            i.signed.as_ptr(),
            i.positive.as_ptr(),
            1e-5,
            sm.as_mut_ptr(),
            si.as_mut_ptr(),
        )
    };
    finish(status, vec![Out::F32(y), Out::F32(sm), Out::F32(si)])
}

fn layernorm_backward(ctx: *mut nk_context, rows: usize, cols: usize) -> Run {
    let i = inputs();
    let mut dx = out32(rows * cols);
    let (mut dgamma, mut dbeta) = (out32(cols), out32(cols));
    // SAFETY: every pointer is valid for its extent.
    let status = unsafe {
        nk_layernorm_backward(
            ctx,
            rows,
            cols,
            i.x.as_ptr(),
            i.dy.as_ptr(),
            dx.as_mut_ptr(),
            i.signed.as_ptr(),
            i.dy.as_ptr(),
            i.positive.as_ptr(),
            dgamma.as_mut_ptr(),
            dbeta.as_mut_ptr(),
        )
    };
    finish(
        status,
        vec![Out::F32(dx), Out::F32(dgamma), Out::F32(dbeta)],
    )
}

fn rmsnorm_forward(ctx: *mut nk_context, rows: usize, cols: usize) -> Run {
    let i = inputs();
    let mut y = out32(rows * cols);
    let mut sr = out32(rows);
    // SAFETY: every pointer is valid for its extent.
    let status = unsafe {
        nk_rmsnorm_forward(
            ctx,
            rows,
            cols,
            i.x.as_ptr(),
            y.as_mut_ptr(),
            i.signed.as_ptr(),
            1e-5,
            sr.as_mut_ptr(),
        )
    };
    finish(status, vec![Out::F32(y), Out::F32(sr)])
}

fn rmsnorm_backward(ctx: *mut nk_context, rows: usize, cols: usize) -> Run {
    let i = inputs();
    let mut dx = out32(rows * cols);
    let mut dgamma = out32(cols);
    // SAFETY: every pointer is valid for its extent.
    let status = unsafe {
        nk_rmsnorm_backward(
            ctx,
            rows,
            cols,
            i.x.as_ptr(),
            i.dy.as_ptr(),
            dx.as_mut_ptr(),
            i.signed.as_ptr(),
            i.positive.as_ptr(),
            dgamma.as_mut_ptr(),
        )
    };
    finish(status, vec![Out::F32(dx), Out::F32(dgamma)])
}

fn weight_standardize(ctx: *mut nk_context, c_out: usize, fan_in: usize) -> Run {
    let mut w = out32(c_out * fan_in);
    // SAFETY: every pointer is valid for its extent.
    let status = unsafe {
        nk_weight_standardize(
            ctx,
            c_out,
            fan_in,
            inputs().x.as_ptr(),
            w.as_mut_ptr(),
            1e-5,
        )
    };
    finish(status, vec![Out::F32(w)])
}

fn groupnorm_forward(ctx: *mut nk_context, sh: nk_shape, groups: usize) -> Run {
    let (i, n, c) = (inputs(), elements(sh), sh.channels);
    let saves = sh.batch * groups;
    let mut y = out32(n);
    let (mut sm, mut si) = (out32(saves), out32(saves));
    // SAFETY: every pointer is valid for its extent.
    let status = unsafe {
        nk_groupnorm_forward(
            ctx,
            sh,
            groups,
            i.x.as_ptr(),
            y.as_mut_ptr(),
            part(&i.signed, 1, c).as_ptr(),
            part(&i.signed, 2, c).as_ptr(),
            1e-5,
            sm.as_mut_ptr(),
            si.as_mut_ptr(),
        )
    };
    finish(status, vec![Out::F32(y), Out::F32(sm), Out::F32(si)])
}

fn groupnorm_backward(ctx: *mut nk_context, sh: nk_shape, groups: usize) -> Run {
    let (i, n, c) = (inputs(), elements(sh), sh.channels);
    let saves = sh.batch * groups;
    let mut dx = out32(n);
    let (mut dgamma, mut dbeta) = (out32(c), out32(c));
    // SAFETY: every pointer is valid for its extent.
    let status = unsafe {
        nk_groupnorm_backward(
            ctx,
            sh,
            groups,
            i.x.as_ptr(),
            i.dy.as_ptr(),
            dx.as_mut_ptr(),
            part(&i.signed, 1, c).as_ptr(),
            part(&i.signed, 0, saves).as_ptr(),
            part(&i.positive, 0, saves).as_ptr(),
            dgamma.as_mut_ptr(),
            dbeta.as_mut_ptr(),
        )
    };
    finish(
        status,
        vec![Out::F32(dx), Out::F32(dgamma), Out::F32(dbeta)],
    )
}

fn instancenorm_forward(ctx: *mut nk_context, sh: nk_shape) -> Run {
    let (i, n, c) = (inputs(), elements(sh), sh.channels);
    let saves = sh.batch * c;
    let mut y = out32(n);
    let (mut sm, mut si) = (out32(saves), out32(saves));
    // SAFETY: every pointer is valid for its extent.
    let status = unsafe {
        nk_instancenorm_forward(
            ctx,
            sh,
            i.x.as_ptr(),
            y.as_mut_ptr(),
            part(&i.signed, 1, c).as_ptr(),
            part(&i.signed, 2, c).as_ptr(),
            1e-5,
            sm.as_mut_ptr(),
            si.as_mut_ptr(),
        )
    };
    finish(status, vec![Out::F32(y), Out::F32(sm), Out::F32(si)])
}

const SEED: u64 = 0x5EED_0FCA_FE00;

fn dropout_forward(ctx: *mut nk_context, n: usize, alpha: bool) -> Run {
    let mut y = out32(n);
    let mut mask = vec![0xA5u8; n.div_ceil(8)];
    let f = if alpha {
        nk_alpha_dropout_forward
    } else {
        nk_dropout_forward
    };
    // SAFETY: every pointer is valid for its extent.
    let status = unsafe {
        f(
            ctx,
            n,
            inputs().x.as_ptr(),
            y.as_mut_ptr(),
            0.3,
            SEED,
            5,
            mask.as_mut_ptr(),
        )
    };
    finish(status, vec![Out::F32(y), Out::Bytes(mask)])
}

/// The mask `nk_dropout_forward(n, p 0.3, SEED, offset 5)` makes, from a 1-thread context.
fn reference_mask(n: usize) -> &'static [u8] {
    static MASK: OnceLock<Vec<u8>> = OnceLock::new();
    let mask = MASK.get_or_init(|| {
        let ctx = CCtx::own(1, Isa::best());
        let mut mask = vec![0u8; MAX_ELEMENTS.div_ceil(8)];
        // SAFETY: a mask of MAX_ELEMENTS bits.
        let status =
            unsafe { nk_dropout_mask(ctx.ptr, MAX_ELEMENTS, 0.3, SEED, 5, mask.as_mut_ptr()) };
        assert_eq!(status, NK_OK);
        mask
    });
    &mask[..n / 8]
}

fn dropout_backward(ctx: *mut nk_context, n: usize) -> Run {
    assert_eq!(n % 8, 0);
    let mut dx = out32(n);
    // SAFETY: every pointer is valid for its extent.
    let status = unsafe {
        nk_dropout_backward(
            ctx,
            n,
            inputs().dy.as_ptr(),
            dx.as_mut_ptr(),
            0.3,
            SEED,
            5,
            reference_mask(n).as_ptr(),
        )
    };
    finish(status, vec![Out::F32(dx)])
}

fn channel_dropout_forward(ctx: *mut nk_context, sh: nk_shape) -> Run {
    let n = elements(sh);
    let mut y = out32(n);
    let mut mask = vec![0xA5u8; (sh.batch * sh.channels).div_ceil(8)];
    // SAFETY: every pointer is valid for its extent.
    let status = unsafe {
        nk_channel_dropout_forward(
            ctx,
            sh,
            inputs().x.as_ptr(),
            y.as_mut_ptr(),
            0.4,
            SEED,
            3,
            mask.as_mut_ptr(),
        )
    };
    finish(status, vec![Out::F32(y), Out::Bytes(mask)])
}

fn gaussian_dropout_forward(ctx: *mut nk_context, n: usize) -> Run {
    let mut y = out32(n);
    // SAFETY: every pointer is valid for its extent.
    let status = unsafe {
        nk_gaussian_dropout_forward(ctx, n, inputs().x.as_ptr(), y.as_mut_ptr(), 0.2, SEED, 9)
    };
    finish(status, vec![Out::F32(y)])
}

/// One call of every operation family on tensors of 2^15 elements and more (split into several
/// tasks), shapes chosen to reach the different work splits (many or few channels, rows or
/// columns, both layouts).
fn big_ops() -> Vec<(&'static str, OpFn)> {
    vec![
        ("bn training NCS", |c| {
            bn_training(c, shape(4, 8, 2053, NCS))
        }),
        ("bn training NSC", |c| {
            bn_training(c, shape(8, 16, 515, NSC))
        }),
        ("bn training NSC, 3 channels", |c| {
            bn_training(c, shape(16, 3, 2001, NSC))
        }),
        ("bn from moments NCS", |c| {
            bn_from_moments(c, shape(4, 8, 2053, NCS))
        }),
        ("bn inference NCS, fused ReLU", |c| {
            bn_inference(c, shape(4, 8, 2053, NCS), 2)
        }),
        ("bn inference NSC", |c| {
            bn_inference(c, shape(8, 16, 515, NSC), 0)
        }),
        ("moments NCS", |c| moments(c, shape(3, 5, 7001, NCS))),
        ("moments NSC", |c| moments(c, shape(100, 9, 201, NSC))),
        ("bn backward NCS", |c| {
            bn_backward(c, shape(4, 8, 2053, NCS))
        }),
        ("bn backward NSC", |c| {
            bn_backward(c, shape(8, 16, 515, NSC))
        }),
        ("bn backward reduce NSC", |c| {
            bn_backward_reduce(c, shape(16, 16, 700, NSC))
        }),
        ("bn backward apply NCS", |c| {
            bn_backward_apply(c, shape(4, 8, 2053, NCS))
        }),
        ("layer norm forward 96x1031", |c| {
            layernorm_forward(c, 96, 1031)
        }),
        ("layer norm forward 3x40000", |c| {
            layernorm_forward(c, 3, 40_000)
        }),
        ("layer norm backward 96x1031", |c| {
            layernorm_backward(c, 96, 1031)
        }),
        ("layer norm backward 3x40000", |c| {
            layernorm_backward(c, 3, 40_000)
        }),
        ("rms norm forward 96x1031", |c| rmsnorm_forward(c, 96, 1031)),
        ("rms norm backward 96x1031", |c| {
            rmsnorm_backward(c, 96, 1031)
        }),
        ("rms norm backward 3x40000", |c| {
            rmsnorm_backward(c, 3, 40_000)
        }),
        ("weight standardize 64x1031", |c| {
            weight_standardize(c, 64, 1031)
        }),
        ("group norm forward NCS", |c| {
            groupnorm_forward(c, shape(3, 12, 2731, NCS), 4)
        }),
        ("group norm forward NSC", |c| {
            groupnorm_forward(c, shape(4, 32, 300, NSC), 8)
        }),
        ("group norm backward NCS", |c| {
            groupnorm_backward(c, shape(3, 12, 2731, NCS), 4)
        }),
        ("group norm backward NSC", |c| {
            groupnorm_backward(c, shape(4, 32, 300, NSC), 8)
        }),
        ("instance norm NCS", |c| {
            instancenorm_forward(c, shape(2, 6, 5003, NCS))
        }),
        ("instance norm NSC", |c| {
            instancenorm_forward(c, shape(4, 16, 600, NSC))
        }),
        ("dropout forward", |c| dropout_forward(c, 100_003, false)),
        ("dropout backward with mask", |c| {
            dropout_backward(c, 100_000)
        }),
        ("alpha dropout forward", |c| {
            dropout_forward(c, 70_001, true)
        }),
        ("channel dropout NSC", |c| {
            channel_dropout_forward(c, shape(6, 40, 300, NSC))
        }),
        ("gaussian dropout", |c| gaussian_dropout_forward(c, 65_537)),
    ]
}

/// Calls under 2^15 elements: an executor may or may not see them.
fn small_ops() -> Vec<(&'static str, OpFn)> {
    vec![
        ("small bn training", |c| {
            bn_training(c, shape(2, 3, 50, NCS))
        }),
        ("small layer norm", |c| layernorm_forward(c, 4, 33)),
        ("small group norm backward", |c| {
            groupnorm_backward(c, shape(2, 8, 20, NSC), 2)
        }),
        ("small dropout", |c| dropout_forward(c, 1000, false)),
    ]
}

#[track_caller]
fn expect_ok(name: &str, ctx_name: &str, run: Run) -> Vec<Out> {
    assert_eq!(
        run.status, NK_OK,
        "{name} on {ctx_name}: {:?} ({})",
        run.status, run.message
    );
    run.outs
}

#[track_caller]
fn assert_same_outs(got: &[Out], want: &[Out], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: outputs");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        let what = format!("{what}, output {k}");
        match (g, w) {
            (Out::F32(g), Out::F32(w)) => assert_bits(g, w, &what),
            (Out::F64(g), Out::F64(w)) => assert_bits64(g, w, &what),
            (Out::Bytes(g), Out::Bytes(w)) => assert!(g == w, "{what}: bytes differ"),
            _ => panic!("{what}: output kinds differ"),
        }
    }
}

/// Every output of `ops` on `ctx`.
fn run_ops(ctx: &CCtx, ops: &[(&'static str, OpFn)]) -> Vec<Vec<Out>> {
    ops.iter()
        .map(|(name, op)| expect_ok(name, &ctx.name, op(ctx.ptr)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Creation.

fn good_executor(host: &Host) -> nk_executor {
    nk_executor {
        parallel_for: Some(in_order),
        user: std::ptr::from_ref(host).cast_mut().cast(),
        concurrency: 2,
    }
}

/// A pointer value no call writes, in `out` before a failing call.
fn untouched_out() -> *mut nk_context {
    std::ptr::without_provenance_mut(0x5A5A_5A50)
}

#[test]
fn create_with_executor_error_contract() {
    let host = Host::default();
    let good = good_executor(&host);
    let no_fn = nk_executor {
        parallel_for: None,
        ..good
    };
    let zero = nk_executor {
        concurrency: 0,
        ..good
    };
    let mut out = untouched_out();
    let cases: [(&str, *const nk_executor, *mut *mut nk_context, nk_status); 6] = [
        ("executor NULL", null(), &mut out, NK_ERR_NULL_POINTER),
        ("parallel_for NULL", &no_fn, &mut out, NK_ERR_NULL_POINTER),
        ("out NULL", &good, null_mut(), NK_ERR_NULL_POINTER),
        ("concurrency 0", &zero, &mut out, NK_ERR_BAD_ARGUMENT),
        // Precedence: NULL before the argument check.
        (
            "concurrency 0 and out NULL",
            &zero,
            null_mut(),
            NK_ERR_NULL_POINTER,
        ),
        (
            "parallel_for NULL, concurrency 0",
            &no_fn,
            &mut out,
            NK_ERR_NULL_POINTER,
        ),
    ];
    for (what, executor, out_ptr, want) in cases {
        // SAFETY: each pointer is NULL or valid.
        let status = unsafe { nk_context_create_with_executor(executor, out_ptr) };
        assert_eq!(status, want, "{what}: {}", last_error());
        assert!(!last_error().is_empty(), "{what}: no message");
        assert_eq!(out, untouched_out(), "{what}: out was written");
    }
    assert!(host.calls.load(SeqCst) == 0);

    // Misaligned: the executor struct one byte into a buffer, `out` one byte into a buffer.
    let mut storage = [0u64; 8];
    let base: *mut u8 = storage.as_mut_ptr().cast();
    let odd_executor = |e: nk_executor| {
        let p = base.wrapping_add(1).cast::<nk_executor>();
        // SAFETY: inside `storage`, unaligned write.
        unsafe { p.write_unaligned(e) };
        p.cast_const()
    };
    let mut slots = [0x5A5A_5A5A_5A5A_5A5Au64; 3];
    let before = slots;
    let odd_out: *mut *mut nk_context = slots.as_mut_ptr().cast::<u8>().wrapping_add(1).cast();
    let aligned_out: *mut *mut nk_context = &mut out;

    let p = odd_executor(good);
    // SAFETY: readable (unaligned) executor, valid out.
    let status = unsafe { nk_context_create_with_executor(p, aligned_out) };
    assert_eq!(
        status,
        NK_ERR_MISALIGNED,
        "misaligned executor: {}",
        last_error()
    );
    assert_eq!(out, untouched_out());

    let p = odd_executor(zero);
    // SAFETY: as above.
    let status = unsafe { nk_context_create_with_executor(p, aligned_out) };
    assert_eq!(
        status, NK_ERR_BAD_ARGUMENT,
        "misaligned executor, concurrency 0"
    );

    let p = odd_executor(no_fn);
    // SAFETY: as above.
    let status = unsafe { nk_context_create_with_executor(p, aligned_out) };
    assert_eq!(
        status, NK_ERR_NULL_POINTER,
        "misaligned executor, parallel_for NULL"
    );
    assert_eq!(out, untouched_out());

    // SAFETY: a valid executor; `odd_out` inside `slots`, misaligned.
    let status = unsafe { nk_context_create_with_executor(&good, odd_out) };
    assert_eq!(
        status,
        NK_ERR_MISALIGNED,
        "misaligned out: {}",
        last_error()
    );
    assert_eq!(slots, before, "misaligned out was written");

    // SAFETY: a valid executor; `odd_out` inside `slots`, misaligned.
    let status = unsafe { nk_context_create_with_executor(&zero, odd_out) };
    assert_eq!(status, NK_ERR_BAD_ARGUMENT, "misaligned out, concurrency 0");
    assert_eq!(slots, before);
    assert_eq!(
        host.calls.load(SeqCst),
        0,
        "parallel_for called on creation"
    );
}

#[test]
fn executor_context_isa_and_destroy() {
    let host = Host::default();
    let mut executor = good_executor(&host);
    let mut ctx = untouched_out();
    // SAFETY: valid pointers; `host` outlives the context.
    assert_eq!(
        unsafe { nk_context_create_with_executor(&executor, &mut ctx) },
        NK_OK
    );
    assert!(!ctx.is_null() && ctx != untouched_out());
    // The struct was copied: changing it now changes nothing.
    let other = Host::default();
    executor.parallel_for = Some(reversed);
    executor.user = std::ptr::from_ref(&other).cast_mut().cast();
    assert_eq!(executor.concurrency, 2);

    // SAFETY: a live context.
    assert_eq!(unsafe { nk_context_isa(ctx) }, nk_isa_of(Isa::best()));
    for isa in Isa::ALL {
        // SAFETY: a live context.
        let status = unsafe { nk_context_set_isa(ctx, isa_value(isa)) };
        if isa.is_supported() {
            assert_eq!(status, NK_OK, "{isa:?}");
            // SAFETY: a live context.
            assert_eq!(unsafe { nk_context_isa(ctx) }, nk_isa_of(isa));
            // SAFETY: as above.
            let c = unsafe { (*ctx).context() };
            assert_eq!(c.isa(), isa);
            assert_eq!(c.threads(), 2, "the executor's concurrency");
        } else {
            assert_eq!(status, NK_ERR_UNSUPPORTED, "{isa:?}");
            // SAFETY: a live context.
            assert_ne!(unsafe { nk_context_isa(ctx) }, nk_isa_of(isa));
        }
    }
    // SAFETY: a live context.
    let before = unsafe { nk_context_isa(ctx) };
    // SAFETY: a live context.
    assert_eq!(unsafe { nk_context_set_isa(ctx, 99) }, NK_ERR_BAD_ARGUMENT);
    // SAFETY: a live context.
    assert_eq!(unsafe { nk_context_isa(ctx) }, before);
    // SAFETY: a live context.
    assert_eq!(unsafe { nk_context_set_isa(ctx, 0) }, NK_OK);
    // SAFETY: a live context.
    assert_eq!(unsafe { nk_context_isa(ctx) }, nk_isa_of(Isa::best()));

    let run = dropout_forward(ctx, 100_003, false);
    assert_eq!(run.status, NK_OK, "{}", run.message);
    assert!(host.calls.load(SeqCst) > 0, "the executor was not called");
    assert_eq!(
        other.calls.load(SeqCst),
        0,
        "the context read the caller's struct after creation"
    );
    let calls = host.calls.load(SeqCst);
    // SAFETY: created above, no call in flight.
    unsafe { nk_context_destroy(ctx) };
    assert_eq!(
        host.calls.load(SeqCst),
        calls,
        "destroy called parallel_for"
    );
    // SAFETY: NULL is a no-op.
    unsafe { nk_context_destroy(null_mut()) };
}

// ---------------------------------------------------------------------------------------------
// Bits.

/// Every operation family, every ISA: executors in order, last first and on 3 threads give the
/// bits of contexts with 1 and 2 threads of their own, and every large call reaches the executor.
#[test]
fn executors_give_the_bits_of_own_thread_contexts() {
    let ops = big_ops();
    let small = small_ops();
    for isa in Isa::supported() {
        let one = CCtx::own(1, isa);
        let two = CCtx::own(2, isa);
        let want = run_ops(&one, &ops);
        let want_small = run_ops(&one, &small);
        for ((name, _), (w, g)) in ops.iter().zip(want.iter().zip(run_ops(&two, &ops))) {
            assert_same_outs(&g, w, &format!("{name}: {} vs {}", two.name, one.name));
        }
        for style in GOOD {
            let ctx = CCtx::executor(style, isa);
            for ((name, op), w) in ops.iter().zip(&want) {
                let calls = ctx.calls();
                let got = expect_ok(name, &ctx.name, op(ctx.ptr));
                assert!(
                    ctx.calls() > calls,
                    "{name} on {}: parallel_for was never called",
                    ctx.name
                );
                assert_same_outs(&got, w, &format!("{name}: {} vs {}", ctx.name, one.name));
            }
            for ((name, op), w) in small.iter().zip(&want_small) {
                let got = expect_ok(name, &ctx.name, op(ctx.ptr));
                assert_same_outs(&got, w, &format!("{name}: {} vs {}", ctx.name, one.name));
            }
            let host = ctx.host();
            assert!(
                host.largest.load(SeqCst) > 1,
                "{}: no batch of 2+",
                ctx.name
            );
            assert!(host.tasks.load(SeqCst) > host.calls.load(SeqCst));
            assert_eq!(host.in_flight.load(SeqCst), 0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Failures.

/// The BN training call of the failure tests: outputs are y, running mean and var, saved mean
/// and invstd.
fn bn_training_big(ctx: *mut nk_context) -> Run {
    bn_training(ctx, shape(4, 8, 2053, NCS))
}

/// What a failed BN training call must leave: the running statistics as given, the saved ones
/// unwritten.
#[track_caller]
fn assert_state_untouched(run: &Run, what: &str) {
    let (i, c) = (inputs(), 8);
    assert_same_outs(
        &run.outs[1..],
        &[
            Out::F32(part(&i.signed, 0, c).to_vec()),
            Out::F32(part(&i.positive, 0, c).to_vec()),
            Out::F32(out32(c)),
            Out::F32(out32(c)),
        ],
        &format!("{what}: running and saved statistics"),
    );
}

/// A panicking task (the test hook), on the calling thread and on a host thread: the call
/// returns `NK_ERR_INTERNAL` with the panic's message, the running statistics are untouched, the
/// rest of the batch still ran; without the hook the same context gives the reference bits.
#[test]
fn a_failing_task_is_reported_after_the_batch() {
    let one = CCtx::own(1, Isa::best());
    let want = expect_ok("bn training", &one.name, bn_training_big(one.ptr));
    let want_ln = expect_ok(
        "layer norm",
        &one.name,
        layernorm_forward(one.ptr, 96, 1031),
    );
    for (style, task) in [
        (Style::InOrder, 0),
        (Style::Threads, 1),
        (Style::Reversed, 2),
    ] {
        let ctx = CCtx::executor(style, Isa::best());
        ctx.context().fail_task_for_testing(Some(task));
        let what = format!("{}, task {task} fails", ctx.name);

        let run = bn_training_big(ctx.ptr);
        assert_eq!(run.status, NK_ERR_INTERNAL, "{what}: {}", run.message);
        assert!(
            run.message.contains(&format!("task {task} failed")),
            "{what}: message {:?}",
            run.message
        );
        assert_state_untouched(&run, &what);
        let host = ctx.host();
        assert!(host.calls.load(SeqCst) > 0);
        let largest = host.largest.load(SeqCst);
        assert!(largest > task, "{what}: batches of {largest}");
        // Only one batch ran (the failure stops the call after it), and all of it ran.
        assert_eq!(host.calls.load(SeqCst), 1, "{what}");
        assert_eq!(host.tasks.load(SeqCst), largest, "{what}");

        // A loop with outputs per task (for_each, not map).
        for run in [
            layernorm_forward(ctx.ptr, 96, 1031),
            dropout_forward(ctx.ptr, 100_003, false),
        ] {
            assert_eq!(run.status, NK_ERR_INTERNAL, "{what}: {}", run.message);
            assert!(run.message.contains(&format!("task {task} failed")));
        }

        ctx.context().fail_task_for_testing(None);
        let got = expect_ok("bn training", &ctx.name, bn_training_big(ctx.ptr));
        assert_same_outs(&got, &want, &format!("{what}, then the hook removed"));
        let got = expect_ok(
            "layer norm",
            &ctx.name,
            layernorm_forward(ctx.ptr, 96, 1031),
        );
        assert_same_outs(&got, &want_ln, &format!("{what}, then the hook removed"));
    }
}

/// Executors that break the contract (a task skipped, run twice, or an index past the batch):
/// `NK_ERR_INTERNAL`, no crash, the running statistics untouched.
#[test]
fn faulty_executors_are_reported_as_internal_errors() {
    for (style, words) in [
        (Style::SkipsFirst, "without running task 0"),
        (Style::RunsFirstTwice, "ran task 0 twice"),
        (Style::Beyond, "of a batch of"),
    ] {
        let ctx = CCtx::executor(style, Isa::best());
        let run = bn_training_big(ctx.ptr);
        assert_eq!(run.status, NK_ERR_INTERNAL, "{}: {}", ctx.name, run.message);
        assert!(
            run.message.contains(words),
            "{}: message {:?}",
            ctx.name,
            run.message
        );
        assert_state_untouched(&run, &ctx.name);
        for (name, op) in big_ops() {
            let run = op(ctx.ptr);
            assert_eq!(
                run.status, NK_ERR_INTERNAL,
                "{name} on {}: {}",
                ctx.name, run.message
            );
            assert!(
                run.message.contains("executor"),
                "{name}: {:?}",
                run.message
            );
        }
        assert!(ctx.calls() > big_ops().len());
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrency.

/// One executor context (tasks on 3 scoped threads per batch) used by 4 host threads at once,
/// each running every operation in its own order, twice: the bits of a 1-thread context.
#[test]
fn one_executor_context_from_several_host_threads() {
    const HOSTS: usize = 4;
    let ops = big_ops();
    let one = CCtx::own(1, Isa::best());
    let want = run_ops(&one, &ops);
    let ctx = CCtx::executor(Style::Threads, Isa::best());
    let shared = Shared(ctx.ptr);
    let barrier = Barrier::new(HOSTS);
    std::thread::scope(|s| {
        for h in 0..HOSTS {
            let (ops, want, barrier) = (&ops, &want, &barrier);
            s.spawn(move || {
                barrier.wait();
                for round in 0..2 {
                    for k in 0..ops.len() {
                        let j = (k * (h + 1) + h * 7 + round) % ops.len();
                        let (name, op) = ops[j];
                        let what = format!("{name} on host thread {h}, round {round}");
                        let got = expect_ok(&what, "the shared executor context", op(shared.get()));
                        assert_same_outs(&got, &want[j], &what);
                    }
                }
            });
        }
    });
    let host = ctx.host();
    assert!(host.calls.load(SeqCst) >= HOSTS * 2 * ops.len());
    assert_eq!(host.in_flight.load(SeqCst), 0);
    // How many batches overlapped depends on timing; print it for the record.
    println!(
        "most parallel_for calls at once: {}",
        host.most_in_flight.load(SeqCst)
    );
}

// ---------------------------------------------------------------------------------------------
// Child processes: the default context reads NK_NUM_THREADS once per process, and thread names
// are per process.

const CHILD_ENV: &str = "NORMKIT_EXECUTOR_TEST_CHILD";
const CHILD_TEST: &str = "child_process_checks";

/// Runs `child_process_checks` in a new process of this executable with `CHILD_ENV = mode` and
/// `NK_NUM_THREADS` as given (absent for `None`); returns its standard output.
fn run_child(mode: &str, nk_num_threads: Option<&str>) -> String {
    let mut cmd = Command::new(std::env::current_exe().expect("this test's executable"));
    cmd.args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode);
    match nk_num_threads {
        Some(v) => cmd.env("NK_NUM_THREADS", v),
        None => cmd.env_remove("NK_NUM_THREADS"),
    };
    let out = cmd.output().expect("the child process starts");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child {mode:?} with NK_NUM_THREADS {nk_num_threads:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains(&format!("child done: {mode}")),
        "child {mode:?} did not run its checks:\n{stdout}\n{stderr}"
    );
    stdout
}

/// The names of this process's threads (Linux; `None` elsewhere).
fn thread_names() -> Option<Vec<String>> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    Some(
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|n| n.trim_end().to_string())
            .collect(),
    )
}

fn normkit_threads() -> Option<usize> {
    thread_names().map(|names| names.iter().filter(|n| n.starts_with("normkit-")).count())
}

/// What the child processes check; does nothing in the test run itself.
#[test]
fn child_process_checks() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    if let Some(threads) = mode.strip_prefix("default:") {
        let want: usize = threads.parse().unwrap();
        assert_eq!(
            Context::global().threads(),
            want,
            "Context::global().threads()"
        );
        // SAFETY: NULL is the default context.
        assert_eq!(unsafe { nk_context_isa(null()) }, nk_isa_of(Isa::best()));
        let one = CCtx::own(1, Isa::best());
        let ops = [big_ops(), small_ops()].concat();
        let want = run_ops(&one, &ops);
        for ((name, op), w) in ops.iter().zip(&want) {
            let got = expect_ok(name, "the default context", op(null_mut()));
            assert_same_outs(&got, w, &format!("{name}: default context vs {}", one.name));
        }
    } else if mode == "no-threads" {
        let Some(before) = normkit_threads() else {
            println!("child done: {mode} (no /proc/self/task here)");
            return;
        };
        assert_eq!(before, 0);
        let ops = big_ops();
        for style in GOOD {
            let ctx = CCtx::executor(style, Isa::best());
            run_ops(&ctx, &ops);
        }
        safe_api_calls(&Context::with_executor(3, threaded_executor).unwrap());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| safe_api_calls(&Context::current_rayon()));
        safe_api_calls(&Context::current_rayon());
        assert_eq!(
            normkit_threads(),
            Some(0),
            "executor or current-rayon contexts started threads: {:?}",
            thread_names()
        );
        // The check can fail: a context with its own threads shows them, two threads being the
        // calling thread and one worker. A new thread takes its name when it first runs, which
        // may be after the calls (the caller did them all), so the name is awaited for a while.
        let own = Context::new(2).unwrap();
        safe_api_calls(&own);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while normkit_threads() != Some(1) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(normkit_threads(), Some(1), "{:?}", thread_names());
    } else {
        panic!("unknown child mode {mode:?}");
    }
    println!("child done: {mode}");
}

/// The default context (`ctx = NULL`) takes its thread count from `NK_NUM_THREADS`: a positive
/// integer is the count; absent, empty, 0 or anything else means all logical cores. Each value
/// in its own process (the default context is made once per process).
#[test]
fn nk_num_threads_sets_the_default_context() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (value, want) in [
        (Some("1"), 1),
        (Some("3"), 3),
        (Some("0"), cores),
        (Some(""), cores),
        (Some("garbage"), cores),
        (Some("-2"), cores),
        (None, cores),
    ] {
        run_child(&format!("default:{want}"), value);
    }
}

/// Executor contexts (C and Rust) and `Context::current_rayon` start no thread of normkit's own
/// (in a process of its own, where no other test makes a context).
#[test]
fn executor_contexts_start_no_threads() {
    run_child("no-threads", Some("1"));
}

// ---------------------------------------------------------------------------------------------
// The safe API.

/// A few calls through the safe API, their outputs.
fn safe_api_calls(ctx: &Context) -> Vec<Vec<f32>> {
    use normkit::batchnorm::{self, Affine, RunningStats, SavedStats, TrainingParams};
    let i = inputs();
    let sh = Shape::new(4, 8, 2053, Layout::Ncs);
    let n = sh.batch * sh.channels * sh.spatial;
    let x = &i.x[..n];
    let mut y = vec![0f32; n];
    let mut rm = part(&i.signed, 0, 8).to_vec();
    let mut rv = part(&i.positive, 0, 8).to_vec();
    let (mut sm, mut si) = (vec![0f32; 8], vec![0f32; 8]);
    batchnorm::forward_training(
        ctx,
        sh,
        InOut::separate(x, &mut y).unwrap(),
        Affine {
            gamma: Some(part(&i.signed, 1, 8)),
            beta: None,
        },
        TrainingParams::default(),
        Some(RunningStats {
            mean: &mut rm,
            var: &mut rv,
        }),
        SavedStats {
            mean: Some(&mut sm),
            invstd: Some(&mut si),
        },
    )
    .unwrap();

    let (rows, cols) = (3, 40_000);
    let mut ln = i.x[..rows * cols].to_vec();
    let mut ln_mean = vec![0f32; rows];
    normkit::layernorm::forward(
        ctx,
        rows,
        cols,
        InOut::InPlace(&mut ln),
        Affine {
            gamma: Some(&i.signed[..cols]),
            beta: Some(&i.positive[..cols]),
        },
        1e-5,
        SavedStats {
            mean: Some(&mut ln_mean),
            invstd: None,
        },
    )
    .unwrap();

    let gsh = Shape::new(4, 32, 300, Layout::Nsc);
    let gn_n = 4 * 32 * 300;
    let mut gn = vec![0f32; gn_n];
    normkit::groupnorm::forward(
        ctx,
        gsh,
        8,
        InOut::separate(&i.x[..gn_n], &mut gn).unwrap(),
        Affine::default(),
        1e-5,
        SavedStats::default(),
    )
    .unwrap();

    let dn = 100_003;
    let mut drop = vec![0f32; dn];
    let mut mask = vec![0u8; normkit::dropout::mask_len(dn)];
    normkit::dropout::forward(
        ctx,
        InOut::separate(&i.x[..dn], &mut drop).unwrap(),
        0.3,
        Stream::new(SEED, 5),
        Some(&mut mask),
    )
    .unwrap();
    let mask = mask.iter().map(|&b| f32::from(b)).collect();
    vec![y, rm, rv, sm, si, ln, ln_mean, gn, drop, mask]
}

#[track_caller]
fn assert_same_calls(got: &[Vec<f32>], want: &[Vec<f32>], what: &str) {
    assert_eq!(got.len(), want.len());
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert_bits(g, w, &format!("{what}, output {k}"));
    }
}

/// `Context::with_executor` with closures (counting, on scoped threads, last first) gives the
/// bits of `Context::new(1)` and `Context::new(2)` on every ISA, and calls its executor.
#[test]
fn safe_executor_contexts_give_the_same_bits() {
    let zero = Context::with_executor(0, |n: usize, t: &(dyn Fn(usize) + Sync)| (0..n).for_each(t));
    assert_eq!(zero.unwrap_err().kind(), ErrorKind::BadArgument);
    for isa in Isa::supported() {
        let one = Context::new(1).unwrap();
        one.set_isa(Some(isa)).unwrap();
        let want = safe_api_calls(&one);
        let two = Context::new(2).unwrap();
        two.set_isa(Some(isa)).unwrap();
        assert_same_calls(&safe_api_calls(&two), &want, &format!("2 threads, {isa:?}"));

        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let threaded = Context::with_executor(4, move |n: usize, t: &(dyn Fn(usize) + Sync)| {
            counted.fetch_add(1, SeqCst);
            threaded_executor(n, t)
        })
        .unwrap();
        threaded.set_isa(Some(isa)).unwrap();
        assert_eq!(threaded.threads(), 4);
        assert_eq!(threaded.isa(), isa);
        assert_same_calls(
            &safe_api_calls(&threaded),
            &want,
            &format!("threaded, {isa:?}"),
        );
        assert!(calls.load(SeqCst) >= 4, "the executor was not called");

        let reversed = Context::with_executor(1, |n: usize, t: &(dyn Fn(usize) + Sync)| {
            (0..n).rev().for_each(t)
        })
        .unwrap();
        reversed.set_isa(Some(isa)).unwrap();
        assert_same_calls(
            &safe_api_calls(&reversed),
            &want,
            &format!("reversed, {isa:?}"),
        );
    }
}

/// `Context::current_rayon` inside a 3-thread pool's `install`: 3 threads there, the global
/// pool's count outside, the bits of `Context::new(1)` in both.
#[test]
fn current_rayon_follows_the_calling_pool() {
    let one = Context::new(1).unwrap();
    let want = safe_api_calls(&one);
    let ctx = Context::current_rayon();
    assert_eq!(ctx.threads(), rayon::current_num_threads());
    assert_same_calls(&safe_api_calls(&ctx), &want, "current rayon, global pool");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let (threads, got, inner_threads) = pool.install(|| {
        let inner = Context::current_rayon();
        (ctx.threads(), safe_api_calls(&ctx), inner.threads())
    });
    assert_eq!(threads, 3, "a context made outside, used inside install");
    assert_eq!(inner_threads, 3, "a context made inside install");
    assert_same_calls(&got, &want, "current rayon, 3-thread pool");
    for isa in Isa::supported() {
        ctx.set_isa(Some(isa)).unwrap();
        one.set_isa(Some(isa)).unwrap();
        let want = safe_api_calls(&one);
        let got = pool.install(|| safe_api_calls(&ctx));
        assert_same_calls(&got, &want, &format!("current rayon, {isa:?}"));
    }
}
