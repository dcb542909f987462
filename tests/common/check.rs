//! Comparisons and contexts shared by the integration tests.

use normkit::ffi::nk_shape;
use normkit::{Context, Isa, Layout, Shape};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// `got` is within `tol` of `want`; a NaN must be NaN, an infinity the same infinity.
pub fn close(got: f64, want: f64, tol: f64) -> bool {
    if want.is_nan() {
        got.is_nan()
    } else if want.is_infinite() {
        got == want
    } else {
        (got - want).abs() <= tol
    }
}

/// The index of the first element whose bits differ (or the shorter length).
pub fn first_bit_diff(a: &[f32], b: &[f32]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter()
        .zip(b)
        .position(|(p, q)| p.to_bits() != q.to_bits())
}

#[track_caller]
pub fn assert_bits(a: &[f32], b: &[f32], what: &str) {
    if let Some(i) = first_bit_diff(a, b) {
        panic!(
            "{what}: not bitwise equal at {i} of {}: {:?} vs {:?}",
            a.len(),
            a.get(i),
            b.get(i)
        );
    }
}

#[track_caller]
pub fn assert_bits64(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    if let Some(i) = a
        .iter()
        .zip(b)
        .position(|(p, q)| p.to_bits() != q.to_bits())
    {
        panic!("{what}: not bitwise equal at {i}: {} vs {}", a[i], b[i]);
    }
}

/// Where a test context runs its parallel loops: its own pool of some threads, or an executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runner {
    /// `Context::new(threads)`.
    Own(usize),
    /// An executor running every task on the calling thread, in order.
    SerialExecutor,
    /// An executor running the tasks on the calling thread, last first.
    ReversedExecutor,
    /// An executor running the tasks on 3 threads of its own, each taking every third task
    /// from the end.
    ThreadedExecutor,
    /// `Context::current_rayon()`.
    CurrentRayon,
}

impl From<usize> for Runner {
    fn from(threads: usize) -> Self {
        Runner::Own(threads)
    }
}

/// The runners that are not a pool of the context's own: each must give the bits of every
/// other context.
pub const EXECUTORS: [Runner; 4] = [
    Runner::SerialExecutor,
    Runner::ReversedExecutor,
    Runner::ThreadedExecutor,
    Runner::CurrentRayon,
];

/// Runs `task(i)` for `i` in `0..count` on 3 scoped threads, thread `t` taking `count - 1 - t`,
/// `count - 4 - t`, ...
pub fn threaded_executor(count: usize, task: &(dyn Fn(usize) + Sync)) {
    const T: usize = 3;
    std::thread::scope(|s| {
        for t in 0..T {
            s.spawn(move || (0..count).rev().skip(t).step_by(T).for_each(task));
        }
    });
}

fn make_context(runner: Runner) -> Context {
    match runner {
        Runner::Own(threads) => Context::new(threads).expect("context"),
        Runner::SerialExecutor => {
            Context::with_executor(1, |n: usize, task: &(dyn Fn(usize) + Sync)| {
                (0..n).for_each(task)
            })
            .expect("context")
        }
        Runner::ReversedExecutor => {
            Context::with_executor(1, |n: usize, task: &(dyn Fn(usize) + Sync)| {
                (0..n).rev().for_each(task)
            })
            .expect("context")
        }
        Runner::ThreadedExecutor => Context::with_executor(3, threaded_executor).expect("context"),
        Runner::CurrentRayon => Context::current_rayon(),
    }
}

// Contexts: one per (runner, ISA) and test thread, so that tests running at the same time never
// change each other's ISA.
thread_local! {
    static CONTEXTS: RefCell<HashMap<(Runner, Isa), Rc<Context>>> = RefCell::new(HashMap::new());
}

/// This test thread's context on `runner` (a thread count, or an executor), forced to `isa`.
pub fn ctx(runner: impl Into<Runner>, isa: Isa) -> Rc<Context> {
    let runner = runner.into();
    CONTEXTS.with(|m| {
        m.borrow_mut()
            .entry((runner, isa))
            .or_insert_with(|| {
                let c = make_context(runner);
                c.set_isa(Some(isa)).expect("a supported ISA");
                assert_eq!(c.isa(), isa);
                Rc::new(c)
            })
            .clone()
    })
}

/// The runners a "same bits on any context" test compares with one thread: own pools of 2, 3
/// and 8 threads and every executor.
pub fn parallel_runners() -> Vec<Runner> {
    [2, 3, 8]
        .map(Runner::Own)
        .into_iter()
        .chain(EXECUTORS)
        .collect()
}

/// The C value (`nk_isa`) of an ISA.
pub fn isa_value(isa: Isa) -> normkit::ffi::nk_isa_value {
    match isa {
        Isa::Portable => 1,
        Isa::Avx2 => 2,
        Isa::Avx512 => 3,
        Isa::Neon => 4,
        _ => unreachable!("a new ISA this code does not know"),
    }
}

/// The C value (`nk_shape`) of a shape.
pub fn c_shape(shape: Shape) -> nk_shape {
    nk_shape {
        batch: shape.batch,
        channels: shape.channels,
        spatial: shape.spatial,
        layout: match shape.layout {
            Layout::Ncs => 0,
            Layout::Nsc => 1,
            _ => unreachable!("a new layout this code does not know"),
        },
    }
}

/// The C flag of batch norm training: the biased running variance (as `NK_BN_RUNNING_VAR_BIASED`).
pub const BN_RUNNING_VAR_BIASED: u32 = 1;
/// The C flag of batch norm inference: a fused ReLU (as `NK_BN_FUSE_RELU`).
pub const BN_FUSE_RELU: u32 = 2;

/// The safe API's training parameters of the C arguments `eps`, `momentum`, `flags`.
pub fn training_params(eps: f32, momentum: f32, flags: u32) -> normkit::batchnorm::TrainingParams {
    use normkit::batchnorm::{RunningVar, TrainingParams};
    let running_var = if flags & BN_RUNNING_VAR_BIASED != 0 {
        RunningVar::Biased
    } else {
        RunningVar::Unbiased
    };
    TrainingParams::new(eps, momentum).with_running_var(running_var)
}

/// The safe API's activation of the C inference `flags`.
pub fn activation(flags: u32) -> normkit::batchnorm::Activation {
    use normkit::batchnorm::Activation;
    if flags & BN_FUSE_RELU != 0 {
        Activation::Relu
    } else {
        Activation::Identity
    }
}

/// Per-channel moments of the C form (`count`, `mean[c]`, `m2[c]`).
pub fn moments_of(count: u64, mean: &[f64], m2: &[f64]) -> Vec<normkit::Moments> {
    mean.iter()
        .zip(m2)
        .map(|(&mean, &m2)| normkit::Moments { count, mean, m2 })
        .collect()
}

/// `batchnorm::moments` into the C form: per-channel `mean` and `m2`.
pub fn moments_c<E: normkit::Element>(
    ctx: &Context,
    shape: Shape,
    x: &[E],
    mean: &mut [f64],
    m2: &mut [f64],
) -> normkit::Result<()> {
    let mut out = vec![normkit::Moments::EMPTY; shape.channels];
    normkit::batchnorm::moments(ctx, shape, x, &mut out)?;
    for ((m, mean), m2) in out.iter().zip(mean).zip(m2) {
        (*mean, *m2) = (m.mean, m.m2);
    }
    Ok(())
}

/// `batchnorm::moments_merge` on the C form: `a <- a (+) b`, returning the merged count.
pub fn merge_c(
    count_a: u64,
    mean_a: &mut [f64],
    m2_a: &mut [f64],
    count_b: u64,
    mean_b: &[f64],
    m2_b: &[f64],
) -> normkit::Result<u64> {
    let mut a = moments_of(count_a, mean_a, m2_a);
    normkit::batchnorm::moments_merge(&mut a, &moments_of(count_b, mean_b, m2_b))?;
    for ((m, mean), m2) in a.iter().zip(mean_a).zip(m2_a) {
        (*mean, *m2) = (m.mean, m.m2);
    }
    Ok(count_a + count_b)
}
