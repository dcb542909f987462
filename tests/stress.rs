//! Concurrency: many threads calling different operations through the C entry points at once,
//! on one shared context, on contexts of their own and on the default context (NULL). Every
//! result must be bitwise what the same call gives when run alone: contexts share nothing a
//! call can disturb, and results do not depend on the thread count.

// The C functions: built with the default `capi` feature.
#![cfg(feature = "capi")]

mod common;

use common::data::normals;
use normkit::ffi::nk_status::NK_OK;
use normkit::ffi::*;
use std::ptr::{null, null_mut};
use std::sync::Barrier;

const NCS: nk_layout_value = 0;
const NSC: nk_layout_value = 1;
/// Big enough (2^16 elements) for calls to use a context's thread pool.
const BATCH: usize = 4;
const CHANNELS: usize = 16;
const SPATIAL: usize = 1024;
const ELEMENTS: usize = BATCH * CHANNELS * SPATIAL;

/// The operations the threads mix.
#[derive(Clone, Copy, Debug)]
enum Op {
    TrainingNcs,
    TrainingNsc,
    Inference,
    Moments,
    Dropout,
    Gaussian,
    Channel,
    LayerNorm,
    GroupNormNsc,
    BackwardNcs,
    RmsBackward,
}

const OPS: [Op; 11] = [
    Op::TrainingNcs,
    Op::TrainingNsc,
    Op::Inference,
    Op::Moments,
    Op::Dropout,
    Op::Gaussian,
    Op::Channel,
    Op::LayerNorm,
    Op::GroupNormNsc,
    Op::BackwardNcs,
    Op::RmsBackward,
];

struct Inputs {
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
}

fn shape(layout: nk_layout_value) -> nk_shape {
    nk_shape {
        batch: BATCH,
        channels: CHANNELS,
        spatial: SPATIAL,
        layout,
    }
}

/// Bytes of every output of `op` on `ctx`; panics on a status other than `NK_OK`.
fn run(op: Op, ctx: *mut nk_context, input: &Inputs, seed: u64) -> Vec<u8> {
    let mut y = vec![0f32; ELEMENTS];
    let mut stats = vec![0f32; 4 * CHANNELS];
    let mut moments = vec![0f64; 2 * CHANNELS];
    let mut mask = vec![0u8; ELEMENTS.div_ceil(8)];
    // Per-row or per-group statistics and per-column sums of the other normalizations.
    let mut rows = vec![0f32; 2 * BATCH * CHANNELS + SPATIAL];
    let (x, g, b) = (input.x.as_ptr(), input.gamma.as_ptr(), input.beta.as_ptr());
    let yp = y.as_mut_ptr();
    // SAFETY (every call): each pointer is valid for the extent its function reads or writes
    // (ELEMENTS data values, CHANNELS per-channel values, the mask's bytes), buffers of one
    // call do not overlap, and nothing else accesses them during the call.
    let status = unsafe {
        match op {
            Op::TrainingNcs | Op::TrainingNsc => {
                let layout = if matches!(op, Op::TrainingNcs) {
                    NCS
                } else {
                    NSC
                };
                stats[CHANNELS..2 * CHANNELS].fill(1.0);
                let s = stats.as_mut_ptr();
                nk_batchnorm_forward_training(
                    ctx,
                    shape(layout),
                    x,
                    yp,
                    g,
                    b,
                    1e-5,
                    0.1,
                    0,
                    s,
                    s.add(CHANNELS),
                    s.add(2 * CHANNELS),
                    s.add(3 * CHANNELS),
                )
            }
            Op::Inference => nk_batchnorm_forward_inference(
                ctx,
                shape(NSC),
                x,
                yp,
                g,
                b,
                input.mean.as_ptr(),
                input.var.as_ptr(),
                1e-3,
                2,
            ),
            Op::Moments => {
                let m = moments.as_mut_ptr();
                nk_moments(ctx, shape(NCS), x, m, m.add(CHANNELS))
            }
            Op::Dropout => {
                nk_dropout_forward(ctx, ELEMENTS, x, yp, 0.3, seed, 7, mask.as_mut_ptr())
            }
            Op::Gaussian => nk_gaussian_dropout_forward(ctx, ELEMENTS, x, yp, 0.2, seed, 3),
            Op::LayerNorm => {
                let r = rows.as_mut_ptr();
                let cols = SPATIAL;
                let n_rows = BATCH * CHANNELS;
                nk_layernorm_forward(
                    ctx,
                    n_rows,
                    cols,
                    x,
                    yp,
                    null(),
                    null(),
                    1e-5,
                    r,
                    r.add(n_rows),
                )
            }
            Op::GroupNormNsc => {
                let r = rows.as_mut_ptr();
                nk_groupnorm_forward(ctx, shape(NSC), 4, x, yp, g, b, 1e-5, r, r.add(BATCH * 4))
            }
            Op::BackwardNcs => {
                // The statistics of a forward first, then the backward with dy = the input.
                let st = stats.as_mut_ptr();
                let s1 = nk_batchnorm_forward_training(
                    ctx,
                    shape(NCS),
                    x,
                    yp,
                    g,
                    b,
                    1e-5,
                    0.1,
                    0,
                    null_mut(),
                    null_mut(),
                    st,
                    st.add(CHANNELS),
                );
                assert_eq!(s1, NK_OK);
                nk_batchnorm_backward(
                    ctx,
                    shape(NCS),
                    x,
                    x,
                    yp,
                    g,
                    st,
                    st.add(CHANNELS),
                    st.add(2 * CHANNELS),
                    st.add(3 * CHANNELS),
                )
            }
            Op::RmsBackward => {
                let (n_rows, cols) = (BATCH * CHANNELS, SPATIAL);
                let r = rows.as_mut_ptr();
                let s1 = nk_rmsnorm_forward(ctx, n_rows, cols, x, yp, null(), 1e-6, r);
                assert_eq!(s1, NK_OK);
                nk_rmsnorm_backward(ctx, n_rows, cols, x, x, yp, null(), r, r.add(n_rows))
            }
            Op::Channel => {
                nk_channel_dropout_forward(ctx, shape(NSC), x, yp, 0.5, seed, 11, mask.as_mut_ptr())
            }
        }
    };
    assert_eq!(status, NK_OK, "{op:?}");
    let mut bytes: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
    bytes.extend(stats.iter().flat_map(|v| v.to_le_bytes()));
    bytes.extend(moments.iter().flat_map(|v| v.to_le_bytes()));
    bytes.extend(mask);
    bytes.extend(rows.iter().flat_map(|v| v.to_le_bytes()));
    bytes
}

fn inputs() -> Inputs {
    Inputs {
        x: normals(1, ELEMENTS, 3.0, 2.0),
        gamma: normals(2, CHANNELS, 1.0, 0.2),
        beta: normals(3, CHANNELS, 0.0, 1.0),
        mean: normals(4, CHANNELS, 3.0, 0.1),
        var: normals(5, CHANNELS, 4.0, 0.5)
            .into_iter()
            .map(f32::abs)
            .collect(),
    }
}

fn create(threads: usize) -> *mut nk_context {
    let mut ctx = null_mut();
    // SAFETY: `ctx` is a valid place for the new context's pointer.
    assert_eq!(unsafe { nk_context_create(threads, &mut ctx) }, NK_OK);
    ctx
}

/// A context pointer that may be shared between threads (nk_context calls are thread-safe).
#[derive(Clone, Copy)]
struct Shared(*mut nk_context);
// SAFETY: the C API documents every call as safe to make concurrently on one context.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so that closures capture the whole `Shared`).
    fn get(self) -> *mut nk_context {
        self.0
    }
}

#[test]
fn concurrent_calls_on_shared_own_and_default_contexts_match_calls_made_alone() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 40;
    let input = inputs();
    let seed = |t: usize, r: usize| 0x5eed + (t * ROUNDS + r) as u64 % 5;

    // Expected results: each operation alone, on a one-thread context.
    let alone = create(1);
    let expected: Vec<Vec<Vec<u8>>> = OPS
        .iter()
        .map(|&op| (0..5).map(|s| run(op, alone, &input, 0x5eed + s)).collect())
        .collect();
    // SAFETY: created above, no longer used.
    unsafe { nk_context_destroy(alone) };

    let shared = Shared(create(2));
    let barrier = Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (input, expected, barrier) = (&input, &expected, &barrier);
            scope.spawn(move || {
                let own = create(1 + t % 3);
                barrier.wait();
                for r in 0..ROUNDS {
                    let ctx = match (t + r) % 3 {
                        0 => shared.get(),
                        1 => own,
                        _ => null_mut(),
                    };
                    let k = (t + r) % OPS.len();
                    let s = seed(t, r);
                    let got = run(OPS[k], ctx, input, s);
                    assert!(
                        got == expected[k][(s - 0x5eed) as usize],
                        "{:?} on thread {t}, round {r}: differs from the call made alone",
                        OPS[k]
                    );
                }
                // SAFETY: this thread's own context, no longer used.
                unsafe { nk_context_destroy(own) };
            });
        }
    });
    // SAFETY: every thread that used it has finished.
    unsafe { nk_context_destroy(shared.get()) };
}

/// Contexts created and destroyed while other threads compute on theirs.
#[test]
fn contexts_come_and_go_while_others_compute() {
    let input = inputs();
    let alone = create(1);
    let expected = run(Op::TrainingNcs, alone, &input, 1);
    // SAFETY: created above, no longer used.
    unsafe { nk_context_destroy(alone) };
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (input, expected) = (&input, &expected);
            scope.spawn(move || {
                for r in 0..6 {
                    let ctx = create(1 + (t + r) % 4);
                    assert!(run(Op::TrainingNcs, ctx, input, 1) == *expected);
                    // SAFETY: created in this iteration, no longer used.
                    unsafe { nk_context_destroy(ctx) };
                }
            });
        }
    });
    // The default context still works afterwards.
    assert!(run(Op::TrainingNcs, null_mut(), &input, 1) == expected);
}
