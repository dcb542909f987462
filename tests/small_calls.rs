//! The C entry points on small tensors: every raw-pointer path of the boundary (slices made from
//! C pointers, in place and out of place, optional pointers, the alignment and overlap checks,
//! errors that must write nothing) and calls big enough for a context's thread pool, or a host's
//! executor (`nk_context_create_with_executor`), to split them. Sizes are small so that Miri can
//! run this file in a few minutes:
//!
//! ```text
//! cargo +nightly miri test --test small_calls
//! ```
//!
//! Values are checked against plain float64 loops written here; the full references and
//! property tests are in the other test files.

// The C functions: built with the default `capi` feature.
#![cfg(feature = "capi")]

use normkit::ffi::nk_status::{self, *};
use normkit::ffi::*;
use std::ffi::c_void;
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// Values with a per-channel offset, deterministic, not multiples of the vector width.
fn data(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.125 + (i % 3) as f32)
        .collect()
}

/// Index of element (n, c, s).
fn at(
    layout: nk_layout_value,
    c_count: usize,
    s_count: usize,
    n: usize,
    c: usize,
    s: usize,
) -> usize {
    if layout == NCS {
        (n * c_count + c) * s_count + s
    } else {
        (n * s_count + s) * c_count + c
    }
}

/// Mean and biased variance of each channel, in f64.
fn channel_stats(
    x: &[f32],
    b: usize,
    c_count: usize,
    s: usize,
    layout: nk_layout_value,
) -> Vec<(f64, f64)> {
    (0..c_count)
        .map(|c| {
            let values: Vec<f64> = (0..b)
                .flat_map(|n| (0..s).map(move |k| (n, k)))
                .map(|(n, k)| f64::from(x[at(layout, c_count, s, n, c, k)]))
                .collect();
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let var =
                values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / values.len() as f64;
            (mean, var)
        })
        .collect()
}

fn close(got: f32, want: f64, what: &str) {
    assert!(
        (f64::from(got) - want).abs() <= 1e-4 * (1.0 + want.abs()),
        "{what}: got {got}, expected {want}"
    );
}

fn context(threads: usize) -> *mut nk_context {
    let mut ctx = null_mut();
    // SAFETY: `ctx` is a valid place for the pointer.
    assert_eq!(unsafe { nk_context_create(threads, &mut ctx) }, NK_OK);
    ctx
}

#[test]
fn batchnorm_training_and_inference_both_layouts_in_and_out_of_place() {
    let ctx = context(1);
    for layout in [NCS, NSC] {
        let (b, c, s) = (3, 5, 7);
        let n = b * c * s;
        let x = data(n);
        let gamma: Vec<f32> = (0..c).map(|k| 1.0 + k as f32 * 0.5).collect();
        let beta: Vec<f32> = (0..c).map(|k| k as f32 - 2.0).collect();
        let mut y = vec![0f32; n];
        let mut running = [vec![0f32; c], vec![1f32; c]];
        let mut saved = [vec![0f32; c], vec![0f32; c]];
        let [rm, rv] = &mut running;
        let [sm, si] = &mut saved;
        // SAFETY: every pointer is valid for its extent (n data values, c per channel).
        let status = unsafe {
            nk_batchnorm_forward_training(
                ctx,
                shape(b, c, s, layout),
                x.as_ptr(),
                y.as_mut_ptr(),
                gamma.as_ptr(),
                beta.as_ptr(),
                1e-5,
                0.25,
                0,
                rm.as_mut_ptr(),
                rv.as_mut_ptr(),
                sm.as_mut_ptr(),
                si.as_mut_ptr(),
            )
        };
        assert_eq!(status, NK_OK);
        let stats = channel_stats(&x, b, c, s, layout);
        for k in 0..n {
            let ch = if layout == NCS { k / s % c } else { k % c };
            let (mean, var) = stats[ch];
            let want = f64::from(gamma[ch]) * (f64::from(x[k]) - mean)
                / (var + 1e-5f32 as f64).sqrt()
                + f64::from(beta[ch]);
            close(y[k], want, "training y");
        }
        for ch in 0..c {
            let (mean, var) = stats[ch];
            close(rm[ch], 0.25 * mean, "running mean");
            let unbiased = var * (b * s) as f64 / (b * s - 1) as f64;
            close(rv[ch], 0.75 + 0.25 * unbiased, "running var");
            close(sm[ch], mean, "saved mean");
        }
        // Inference in place with the saved statistics as (mean, var = 1) gives the same
        // centred values.
        let mut inplace = x.clone();
        let ones = vec![1f32; c];
        let p = inplace.as_mut_ptr();
        // SAFETY: in place: input and output are the same buffer of n values.
        let status = unsafe {
            nk_batchnorm_forward_inference(
                ctx,
                shape(b, c, s, layout),
                p,
                p,
                null(),
                null(),
                sm.as_ptr(),
                ones.as_ptr(),
                0.0,
                0,
            )
        };
        assert_eq!(status, NK_OK);
        for k in 0..n {
            let ch = if layout == NCS { k / s % c } else { k % c };
            close(
                inplace[k],
                f64::from(x[k]) - f64::from(sm[ch]),
                "inference in place",
            );
        }
    }
    // SAFETY: created above, no longer used.
    unsafe { nk_context_destroy(ctx) };
}

#[test]
fn moments_merge_and_from_moments_of_two_shards_equal_the_whole_batch() {
    let (c, s) = (3, 5);
    let whole = data(4 * c * s);
    let mut mean = [vec![0f64; c], vec![0f64; c]];
    let mut m2 = [vec![0f64; c], vec![0f64; c]];
    for (half, (mean, m2)) in mean.iter_mut().zip(&mut m2).enumerate() {
        let part = &whole[half * 2 * c * s..(half + 1) * 2 * c * s];
        // SAFETY: valid extents; NULL context = the default one.
        let status = unsafe {
            nk_moments(
                null_mut(),
                shape(2, c, s, NCS),
                part.as_ptr(),
                mean.as_mut_ptr(),
                m2.as_mut_ptr(),
            )
        };
        assert_eq!(status, NK_OK);
    }
    let [mean_a, mean_b] = &mut mean;
    let [m2_a, m2_b] = &mut m2;
    // SAFETY: valid, disjoint extents of c values.
    let status = unsafe {
        nk_moments_merge(
            c,
            2 * s as u64,
            mean_a.as_mut_ptr(),
            m2_a.as_mut_ptr(),
            2 * s as u64,
            mean_b.as_ptr(),
            m2_b.as_ptr(),
        )
    };
    assert_eq!(status, NK_OK);
    let stats = channel_stats(&whole, 4, c, s, NCS);
    for ch in 0..c {
        assert!((mean_a[ch] - stats[ch].0).abs() <= 1e-9 * (1.0 + stats[ch].0.abs()));
        assert!((m2_a[ch] / (4 * s) as f64 - stats[ch].1).abs() <= 1e-9 * (1.0 + stats[ch].1));
    }
    let mut y = vec![0f32; 2 * c * s];
    // SAFETY: valid extents; optional state NULL.
    let status = unsafe {
        nk_batchnorm_forward_from_moments(
            null_mut(),
            shape(2, c, s, NCS),
            whole.as_ptr(),
            y.as_mut_ptr(),
            null(),
            null(),
            4 * s as u64,
            mean_a.as_ptr(),
            m2_a.as_ptr(),
            0.0,
            0.1,
            0,
            null_mut(),
            null_mut(),
            null_mut(),
            null_mut(),
        )
    };
    assert_eq!(status, NK_OK);
    for k in 0..2 * c * s {
        let (m, v) = stats[k / s % c];
        close(y[k], (f64::from(whole[k]) - m) / v.sqrt(), "from moments");
    }
}

#[test]
fn fold_rewrites_the_layer() {
    let (c_out, fan_in) = (3, 4);
    let mut w = data(c_out * fan_in);
    let mut bias = vec![0.5f32; c_out];
    let (gamma, beta, mean, var) = (
        [2.0f32, 1.0, 0.5],
        [0.0f32, 1.0, -1.0],
        [1.0f32, 0.0, 2.0],
        [4.0f32, 1.0, 0.25],
    );
    let w0 = w.clone();
    // SAFETY: valid extents.
    let status = unsafe {
        nk_batchnorm_fold(
            c_out,
            fan_in,
            w.as_mut_ptr(),
            bias.as_mut_ptr(),
            gamma.as_ptr(),
            beta.as_ptr(),
            mean.as_ptr(),
            var.as_ptr(),
            0.0,
        )
    };
    assert_eq!(status, NK_OK);
    for o in 0..c_out {
        let scale = f64::from(gamma[o]) / f64::from(var[o]).sqrt();
        for i in 0..fan_in {
            close(
                w[o * fan_in + i],
                f64::from(w0[o * fan_in + i]) * scale,
                "folded weight",
            );
        }
        close(
            bias[o],
            (0.5 - f64::from(mean[o])) * scale + f64::from(beta[o]),
            "folded bias",
        );
    }
}

#[test]
fn dropout_family_forward_backward_and_masks() {
    let n = 37;
    let x = data(n);
    let mut y = vec![0f32; n];
    let mut mask = vec![0u8; n.div_ceil(8)];
    let p = 0.4f32;
    // SAFETY (all calls): valid extents of n floats and ceil(n / 8) mask bytes.
    unsafe {
        assert_eq!(
            nk_dropout_forward(
                null_mut(),
                n,
                x.as_ptr(),
                y.as_mut_ptr(),
                p,
                9,
                5,
                mask.as_mut_ptr()
            ),
            NK_OK
        );
        let mut again = vec![0u8; mask.len()];
        assert_eq!(
            nk_dropout_mask(null_mut(), n, p, 9, 5, again.as_mut_ptr()),
            NK_OK
        );
        assert_eq!(again, mask);
        let scale = (1.0 / (1.0 - f64::from(p))) as f32;
        for i in 0..n {
            let kept = mask[i / 8] >> (i % 8) & 1 == 1;
            assert_eq!(
                y[i].to_bits(),
                if kept { (x[i] * scale).to_bits() } else { 0 }
            );
        }
        // Backward in place, from the mask and regenerated.
        let mut dx = x.clone();
        let d = dx.as_mut_ptr();
        assert_eq!(
            nk_dropout_backward(null_mut(), n, d, d, p, 9, 5, mask.as_ptr()),
            NK_OK
        );
        assert_eq!(dx, y);
        let mut regenerated = vec![0f32; n];
        assert_eq!(
            nk_dropout_backward(
                null_mut(),
                n,
                x.as_ptr(),
                regenerated.as_mut_ptr(),
                p,
                9,
                5,
                null()
            ),
            NK_OK
        );
        assert_eq!(regenerated, y);
        // The other variants: forward then backward with the same stream give factor * dy.
        let mut out = vec![0f32; n];
        let mut back = vec![0f32; n];
        assert_eq!(
            nk_alpha_dropout_forward(
                null_mut(),
                n,
                x.as_ptr(),
                out.as_mut_ptr(),
                p,
                1,
                2,
                null_mut()
            ),
            NK_OK
        );
        assert_eq!(
            nk_alpha_dropout_backward(
                null_mut(),
                n,
                x.as_ptr(),
                back.as_mut_ptr(),
                p,
                1,
                2,
                null()
            ),
            NK_OK
        );
        assert_eq!(
            nk_gaussian_dropout_forward(null_mut(), n, x.as_ptr(), out.as_mut_ptr(), 0.3, 1, 2),
            NK_OK
        );
        assert_eq!(
            nk_gaussian_dropout_backward(null_mut(), n, x.as_ptr(), back.as_mut_ptr(), 0.3, 1, 2),
            NK_OK
        );
        assert_eq!(
            out, back,
            "Gaussian: forward and backward apply the same factors"
        );
        assert_eq!(
            nk_uniform_dropout_forward(null_mut(), n, x.as_ptr(), out.as_mut_ptr(), 0.5, 1, 2),
            NK_OK
        );
        assert_eq!(
            nk_uniform_dropout_backward(null_mut(), n, x.as_ptr(), back.as_mut_ptr(), 0.5, 1, 2),
            NK_OK
        );
        assert_eq!(
            out, back,
            "uniform: forward and backward apply the same factors"
        );
        for layout in [NCS, NSC] {
            let (b, c, s) = (2, 3, 5);
            let xs = data(b * c * s);
            let mut ys = vec![0f32; b * c * s];
            let mut pairs = vec![0u8; 1];
            let sh = shape(b, c, s, layout);
            assert_eq!(
                nk_channel_dropout_forward(
                    null_mut(),
                    sh,
                    xs.as_ptr(),
                    ys.as_mut_ptr(),
                    0.5,
                    4,
                    0,
                    pairs.as_mut_ptr()
                ),
                NK_OK
            );
            let mut ds = vec![0f32; b * c * s];
            assert_eq!(
                nk_channel_dropout_backward(
                    null_mut(),
                    sh,
                    xs.as_ptr(),
                    ds.as_mut_ptr(),
                    0.5,
                    4,
                    0,
                    pairs.as_ptr()
                ),
                NK_OK
            );
            assert_eq!(ys, ds);
            for nn in 0..b {
                for ch in 0..c {
                    let kept = pairs[0] >> (nn * c + ch) & 1 == 1;
                    for k in 0..s {
                        let i = at(layout, c, s, nn, ch, k);
                        assert_eq!(
                            ys[i].to_bits(),
                            if kept { (xs[i] * 2.0).to_bits() } else { 0 }
                        );
                    }
                }
            }
        }
        let mut block = [0u32; 4];
        nk_philox4x32_10([0u32; 4].as_ptr(), [0u32; 2].as_ptr(), block.as_mut_ptr());
        assert_eq!(block, [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
    }
}

#[test]
fn errors_write_nothing() {
    let x = data(16);
    let mut y = vec![7f32; 17];
    let mean = [0f32; 2];
    let var = [1f32; 2];
    let check = |status: nk_status, want: nk_status, y: &[f32]| {
        assert_eq!(status, want);
        assert!(
            y.iter().all(|v| *v == 7.0),
            "an output was written despite {want:?}"
        );
        // SAFETY: the message is a NUL-terminated string owned by this thread.
        let message = unsafe { std::ffi::CStr::from_ptr(nk_last_error_message()) };
        assert!(!message.to_bytes().is_empty());
    };
    let sh = shape(2, 2, 4, NCS);
    // SAFETY (all calls): extents valid, or the call must reject the pointer before any access.
    unsafe {
        let yp = y.as_mut_ptr();
        check(
            nk_batchnorm_forward_inference(
                null_mut(),
                sh,
                null(),
                yp,
                null(),
                null(),
                mean.as_ptr(),
                var.as_ptr(),
                0.0,
                0,
            ),
            NK_ERR_NULL_POINTER,
            &y,
        );
        check(
            nk_batchnorm_forward_inference(
                null_mut(),
                sh,
                x.as_ptr(),
                yp,
                null(),
                null(),
                mean.as_ptr(),
                var.as_ptr(),
                -1.0,
                0,
            ),
            NK_ERR_BAD_ARGUMENT,
            &y,
        );
        let misaligned = (yp as *mut u8).add(1) as *mut f32;
        check(
            nk_batchnorm_forward_inference(
                null_mut(),
                sh,
                x.as_ptr(),
                misaligned,
                null(),
                null(),
                mean.as_ptr(),
                var.as_ptr(),
                0.0,
                0,
            ),
            NK_ERR_MISALIGNED,
            &y,
        );
        // Output overlapping the input by one element.
        let mut buffer = vec![7f32; 17];
        let bp = buffer.as_mut_ptr();
        check(
            nk_batchnorm_forward_inference(
                null_mut(),
                sh,
                bp,
                bp.add(1),
                null(),
                null(),
                mean.as_ptr(),
                var.as_ptr(),
                0.0,
                0,
            ),
            NK_ERR_ALIAS,
            &buffer,
        );
        check(
            nk_dropout_forward(null_mut(), 16, x.as_ptr(), yp, 1.5, 0, 0, null_mut()),
            NK_ERR_BAD_ARGUMENT,
            &y,
        );
        let mut mask = [7u8; 2];
        check(
            nk_dropout_forward(null_mut(), 16, bp, bp.add(1), 0.5, 0, 0, mask.as_mut_ptr()),
            NK_ERR_ALIAS,
            &buffer,
        );
        assert_eq!(mask, [7, 7]);
    }
}

/// Calls large enough (2^15 elements and more; under Miri, where small calls use the pool too,
/// a few hundred) for a two-thread context to run their parts on its pool: the parts are made
/// from raw pointers by `io`.
#[test]
fn calls_split_over_a_thread_pool() {
    let ctx = context(2);
    let (b, c, s) = if cfg!(miri) { (2, 4, 41) } else { (2, 4, 4100) };
    let n = b * c * s;
    let x = data(n);
    for layout in [NCS, NSC] {
        let mut y = vec![0f32; n];
        let mut mean = vec![0f32; c];
        let mut invstd = vec![0f32; c];
        // SAFETY: valid extents.
        let status = unsafe {
            nk_batchnorm_forward_training(
                ctx,
                shape(b, c, s, layout),
                x.as_ptr(),
                y.as_mut_ptr(),
                null(),
                null(),
                0.0,
                0.1,
                0,
                null_mut(),
                null_mut(),
                mean.as_mut_ptr(),
                invstd.as_mut_ptr(),
            )
        };
        assert_eq!(status, NK_OK);
        let stats = channel_stats(&x, b, c, s, layout);
        for k in (0..n).step_by(61) {
            let ch = if layout == NCS { k / s % c } else { k % c };
            close(
                y[k],
                (f64::from(x[k]) - stats[ch].0) / stats[ch].1.sqrt(),
                "pooled training",
            );
        }
    }
    let mut y = vec![0f32; n];
    let mut mask = vec![0u8; n.div_ceil(8)];
    // SAFETY: valid extents.
    let status = unsafe {
        nk_dropout_forward(
            ctx,
            n,
            x.as_ptr(),
            y.as_mut_ptr(),
            0.5,
            3,
            1,
            mask.as_mut_ptr(),
        )
    };
    assert_eq!(status, NK_OK);
    for i in (0..n).step_by(53) {
        let kept = mask[i / 8] >> (i % 8) & 1 == 1;
        assert_eq!(
            y[i].to_bits(),
            if kept { (x[i] * 2.0).to_bits() } else { 0 }
        );
    }
    // SAFETY: created above, no longer used.
    unsafe { nk_context_destroy(ctx) };
}

/// A task handed to an executor, callable from the executor's threads.
#[derive(Clone, Copy)]
struct HostTask {
    run: unsafe extern "C" fn(*mut c_void, usize),
    arg: *mut c_void,
}

// SAFETY: the executor contract lets tasks run on any of the host's threads.
unsafe impl Send for HostTask {}
// SAFETY: as above.
unsafe impl Sync for HostTask {}

impl HostTask {
    /// The task of a `parallel_for` call; counts the call in the `AtomicUsize` at `user`.
    ///
    /// # Safety
    /// `user` points to a live `AtomicUsize`.
    unsafe fn new(user: *mut c_void, task: nk_task_fn, arg: *mut c_void) -> HostTask {
        // SAFETY: the caller's promise.
        unsafe { &*user.cast::<AtomicUsize>() }.fetch_add(1, Ordering::Relaxed);
        HostTask {
            run: task.expect("a task function"),
            arg,
        }
    }

    fn call(&self, index: usize) {
        // SAFETY: the task and argument of the `parallel_for` that is running.
        unsafe { (self.run)(self.arg, index) }
    }
}

/// An executor running every task on the calling thread, in order.
unsafe extern "C" fn in_order_executor(
    user: *mut c_void,
    count: usize,
    task: nk_task_fn,
    arg: *mut c_void,
) {
    // SAFETY: `user` is the test's counter.
    let task = unsafe { HostTask::new(user, task, arg) };
    (0..count).for_each(|i| task.call(i));
}

/// An executor running the tasks on 2 scoped threads, odd and even indices.
unsafe extern "C" fn two_thread_executor(
    user: *mut c_void,
    count: usize,
    task: nk_task_fn,
    arg: *mut c_void,
) {
    // SAFETY: `user` is the test's counter.
    let task = unsafe { HostTask::new(user, task, arg) };
    std::thread::scope(|s| {
        for t in 0..2 {
            s.spawn(move || (t..count).step_by(2).for_each(|i| task.call(i)));
        }
    });
}

/// Batch norm training (NCHW) and group norm forward with saved statistics: every output.
fn executor_calls(ctx: *mut nk_context, b: usize, c: usize, s: usize) -> (nk_status, Vec<f32>) {
    let n = b * c * s;
    let x = data(n);
    let gamma: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.25).collect();
    let mut y = vec![0f32; n];
    let (mut mean, mut invstd) = (vec![0f32; c], vec![0f32; c]);
    let (mut running_mean, mut running_var) = (vec![0f32; c], vec![1f32; c]);
    let mut g = vec![0f32; n];
    let (mut g_mean, mut g_invstd) = (vec![0f32; b * 2], vec![0f32; b * 2]);
    // SAFETY: valid extents.
    let status = unsafe {
        nk_batchnorm_forward_training(
            ctx,
            shape(b, c, s, NCS),
            x.as_ptr(),
            y.as_mut_ptr(),
            gamma.as_ptr(),
            null(),
            1e-5,
            0.1,
            0,
            running_mean.as_mut_ptr(),
            running_var.as_mut_ptr(),
            mean.as_mut_ptr(),
            invstd.as_mut_ptr(),
        )
    };
    if status != NK_OK {
        return (status, running_mean);
    }
    // SAFETY: valid extents.
    let status = unsafe {
        nk_groupnorm_forward(
            ctx,
            shape(b, c, s, NSC),
            2,
            x.as_ptr(),
            g.as_mut_ptr(),
            gamma.as_ptr(),
            null(),
            1e-5,
            g_mean.as_mut_ptr(),
            g_invstd.as_mut_ptr(),
        )
    };
    let outputs = [
        y,
        mean,
        invstd,
        running_mean,
        running_var,
        g,
        g_mean,
        g_invstd,
    ]
    .concat();
    (status, outputs)
}

/// Contexts on a host's executor (C functions written here: in order on the calling thread, and
/// on 2 threads), for calls large enough to reach the executor (under Miri, a few hundred
/// elements): `run_task` and the batch's bookkeeping run on the host's threads, a failing task
/// is reported, and the bits are those of a 1-thread context.
#[test]
fn calls_split_over_a_host_executor() {
    let (b, c, s) = if cfg!(miri) { (2, 4, 41) } else { (2, 4, 4100) };
    let reference = context(1);
    let (status, want) = executor_calls(reference, b, c, s);
    assert_eq!(status, NK_OK);
    type ParallelFor = unsafe extern "C" fn(*mut c_void, usize, nk_task_fn, *mut c_void);
    let executors: [(ParallelFor, usize); 2] = [(in_order_executor, 1), (two_thread_executor, 2)];
    for (parallel_for, concurrency) in executors {
        let calls = AtomicUsize::new(0);
        let executor = nk_executor {
            parallel_for: Some(parallel_for),
            user: std::ptr::from_ref(&calls).cast_mut().cast(),
            concurrency,
        };
        let mut ctx = null_mut();
        // SAFETY: valid pointers; `calls` outlives the context.
        assert_eq!(
            unsafe { nk_context_create_with_executor(&executor, &mut ctx) },
            NK_OK
        );
        let (status, got) = executor_calls(ctx, b, c, s);
        assert_eq!(status, NK_OK, "concurrency {concurrency}");
        assert!(
            calls.load(Ordering::Relaxed) > 0,
            "the executor was not called"
        );
        let same = got
            .iter()
            .zip(&want)
            .all(|(g, w)| g.to_bits() == w.to_bits());
        assert!(same && got.len() == want.len(), "concurrency {concurrency}");

        // The first task: the training call of a few small channels is a single task.
        // SAFETY: a live context.
        unsafe { (*ctx).context() }.fail_task_for_testing(Some(0));
        let (status, running_mean) = executor_calls(ctx, b, c, s);
        assert_eq!(status, NK_ERR_INTERNAL, "a failing task");
        assert_eq!(running_mean, vec![0f32; c], "running statistics written");
        // SAFETY: created above, no call in flight.
        unsafe { nk_context_destroy(ctx) };
    }
    // SAFETY: created above, no call in flight.
    unsafe { nk_context_destroy(reference) };
}

/// Strided rows through the C row norms, on a thread pool: the residual added and the sum
/// stored over the residual (in place), y over x (in place), elements between rows untouched;
/// then an int8 output. Checked against the packed float call on the stored sum.
#[test]
fn row_norms_strided_in_place_and_int8() {
    let (rows, cols, stride) = (9usize, 19usize, 23usize);
    let extent = (rows - 1) * stride + cols;
    let mut x = data(extent);
    let mut res: Vec<f32> = data(extent + 3).split_off(3);
    let gamma = data(cols);
    let x0 = x.clone();
    let res0 = res.clone();
    let ctx = context(2);
    let t = |p: *mut f32, dtype: i32| nk_rows {
        data: p.cast(),
        dtype,
        stride,
    };
    let mut inv = vec![0f32; rows];
    // SAFETY: every buffer spans the extent of its rows; y is exactly x, sum exactly residual.
    let status = unsafe {
        nk_rmsnorm_forward_rows(
            ctx,
            rows,
            cols,
            t(x.as_mut_ptr(), 0),
            t(res.as_mut_ptr(), 0),
            null(),
            t(res.as_mut_ptr(), 0),
            t(x.as_mut_ptr(), 0),
            gamma.as_ptr(),
            1e-5,
            inv.as_mut_ptr(),
            null_mut(),
        )
    };
    assert_eq!(status, NK_OK);
    for (r, got_inv) in inv.iter().enumerate() {
        let row = r * stride..r * stride + cols;
        let h: Vec<f32> = row.clone().map(|i| x0[i] + res0[i]).collect();
        assert_eq!(&res[row.clone()], &h[..], "sum of row {r}");
        let mut y = vec![0f32; cols];
        let mut want_inv = 0f32;
        // SAFETY: h and y hold cols floats, gamma cols, want_inv one.
        let s = unsafe {
            nk_rmsnorm_forward(
                null_mut(),
                1,
                cols,
                h.as_ptr(),
                y.as_mut_ptr(),
                gamma.as_ptr(),
                1e-5,
                &mut want_inv,
            )
        };
        assert_eq!(s, NK_OK);
        assert_eq!(&x[row], &y[..], "y of row {r}");
        assert_eq!(got_inv.to_bits(), want_inv.to_bits());
        if r + 1 < rows {
            let gap = r * stride + cols..(r + 1) * stride;
            assert_eq!(&x[gap.clone()], &x0[gap.clone()], "gap after row {r}");
            assert_eq!(&res[gap.clone()], &res0[gap], "gap after row {r}");
        }
    }
    // int8 output of the (now normalized) x, packed.
    let mut q = vec![0i8; rows * cols];
    let mut scale = vec![0f32; rows];
    let packed = |p: *mut c_void, dtype: i32| nk_rows {
        data: p,
        dtype,
        stride: 0,
    };
    let src: Vec<f32> = (0..rows)
        .flat_map(|r| x[r * stride..r * stride + cols].to_vec())
        .collect();
    let none = nk_rows {
        data: null_mut(),
        dtype: 0,
        stride: 0,
    };
    // SAFETY: src holds rows*cols floats, q rows*cols bytes, scale rows floats.
    let status = unsafe {
        nk_layernorm_forward_rows(
            ctx,
            rows,
            cols,
            packed(src.as_ptr().cast_mut().cast(), 0),
            none,
            null(),
            none,
            packed(q.as_mut_ptr().cast(), 3),
            null(),
            null(),
            1e-5,
            null_mut(),
            null_mut(),
            scale.as_mut_ptr(),
        )
    };
    assert_eq!(status, NK_OK);
    for r in 0..rows {
        let mut v = vec![0f32; cols];
        // SAFETY: the row and v hold cols floats.
        let s = unsafe {
            nk_layernorm_forward(
                null_mut(),
                1,
                cols,
                src[r * cols..].as_ptr(),
                v.as_mut_ptr(),
                null(),
                null(),
                1e-5,
                null_mut(),
                null_mut(),
            )
        };
        assert_eq!(s, NK_OK);
        let amax = v.iter().fold(0f32, |m, a| m.max(a.abs()));
        assert_eq!(scale[r].to_bits(), (amax / 127.0).to_bits());
        for j in 0..cols {
            let want = (v[j] * (127.0 / amax)).round_ties_even() as i8;
            assert_eq!(q[r * cols + j], want, "row {r} col {j}");
        }
    }
    // SAFETY: made by nk_context_create above.
    unsafe { nk_context_destroy(ctx) };
}
