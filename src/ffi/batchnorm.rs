//! C entry points of batch normalization: checks, then the safe API of `ops::batchnorm`.

use super::check_flags;
use super::library::{context, nk_context, nk_shape};
use super::{
    Regions, backward_io, call, in_out, nk_bf16, nk_f16, nk_status, optional, optional_mut,
    require, slice, slice_mut,
};
use crate::error::{Error, ErrorKind, Result};
use crate::kernels::moments::Moments;
use crate::ops::batchnorm::{
    self, Activation, Affine, RunningStats, RunningVar, SavedStats, TrainingParams, check_fold,
    check_inference, check_sizes, check_training,
};
use crate::simd::element::Element;

/// Running variance tracks the biased variance (ONNX); default unbiased, count/(count-1)
/// (PyTorch, cuDNN).
pub const NK_BN_RUNNING_VAR_BIASED: u32 = 1;
/// y = max(y, 0); forward inference only.
pub const NK_BN_FUSE_RELU: u32 = 2;

/// The scalars and flags of a training forward as the safe API's parameters, once `flags` is
/// known to have no unknown bit (checked after the shape, in the contract's order).
fn training_params(eps: f32, momentum: f32, flags: u32) -> TrainingParams {
    let running_var = if flags & NK_BN_RUNNING_VAR_BIASED != 0 {
        RunningVar::Biased
    } else {
        RunningVar::Unbiased
    };
    TrainingParams::new(eps, momentum).with_running_var(running_var)
}

/// [`check_training`], then the flags.
fn check_training_flags(
    shape: &crate::shape::Shape,
    count: u64,
    params: &TrainingParams,
    has_running: bool,
    flags: u32,
) -> Result<()> {
    check_training(shape, count, params, has_running)?;
    check_flags(flags, NK_BN_RUNNING_VAR_BIASED, "batch norm training")
}

/// Writes `moments` into the two C arrays `mean` and `m2` (the inverse of [`moments_of`]).
///
/// # Safety
/// `mean` and `m2` are valid for `moments.len()` doubles, with no other reference to them.
unsafe fn write_moments(moments: &[Moments], mean: *mut f64, m2: *mut f64) {
    let c = moments.len();
    // SAFETY: the caller's promise.
    let (mean, m2) = unsafe { (slice_mut(mean, c), slice_mut(m2, c)) };
    for ((m, mean), m2) in moments.iter().zip(mean).zip(m2) {
        (*mean, *m2) = (m.mean, m.m2);
    }
}

/// The moments of `C` channels given as two C arrays, with the global `count`.
///
/// # Safety
/// `mean` and `m2` are valid for `c` doubles.
unsafe fn moments_of(count: u64, mean: *const f64, m2: *const f64, c: usize) -> Vec<Moments> {
    // SAFETY: the caller's promise.
    let (mean, m2) = unsafe { (slice(mean, c), slice(m2, c)) };
    mean.iter()
        .zip(m2)
        .map(|(&mean, &m2)| Moments { count, mean, m2 })
        .collect()
}

/// Lengths of the data and the per-channel arrays, for the NULL checks: zero where the tensor or
/// the channel count is empty, so that NULL is accepted there.
fn null_lens(shape: &nk_shape) -> (usize, usize) {
    (usize::from(!shape.is_empty()), shape.channels)
}

/// Batch norm training forward. Per channel c, over its N*S values: the mean and the biased
/// variance `var`, then `y = gamma[c] * (x - mean) / sqrt(var + eps) + beta[c]`; the running
/// statistics become `(1 - momentum) * running + momentum * batch_stat` (the batch variance
/// unbiased, times count/(count-1), unless NK_BN_RUNNING_VAR_BIASED); the saves receive `mean` and
/// `invstd = 1 / sqrt(var + eps)`.
/// - x, y: N*C*S floats (NULL when C == 0); `y == x` is in place.
/// - gamma, beta (C floats): optional, NULL = 1, 0. save_mean, save_invstd (C floats): optional.
///   running_mean, running_var (C floats): both or neither, whatever C (one alone:
///   NK_ERR_NULL_POINTER).
/// - eps finite and >= 0; momentum in [0, 1], checked without running statistics too (0 keeps
///   them bitwise, 1 replaces them); flags 0 or NK_BN_RUNNING_VAR_BIASED. Else NK_ERR_BAD_ARGUMENT.
/// - NK_ERR_BAD_SHAPE if N*S == 0, or if N*S == 1 with running statistics and an unbiased running
///   variance.
///
/// # Safety
/// Every non-NULL pointer is valid for its extent in the contract (x, y: N*C*S floats;
/// per-channel arrays: C floats).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_batchnorm_forward_training(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const f32,
    y: *mut f32,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    momentum: f32,
    flags: u32,
    running_mean: *mut f32,
    running_var: *mut f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
) -> nk_status {
    // SAFETY: the caller's promise, forwarded.
    unsafe {
        batchnorm_forward_training_typed::<f32>(
            ctx,
            shape,
            x,
            y,
            gamma,
            beta,
            eps,
            momentum,
            flags,
            running_mean,
            running_var,
            save_mean,
            save_invstd,
        )
    }
}

/// `nk_batchnorm_forward_training` on bf16 data (bfloat16): `x` and `y` are nk_bf16 (2-byte
/// aligned; overlap is checked in bytes). Each input element is widened to float exactly; each
/// element of `y` is the float function's result rounded once to nearest even; the statistics
/// written are bitwise the float function's on the widened data. Every other argument, rule and
/// status as there.
///
/// # Safety
/// As `nk_batchnorm_forward_training`, with bf16 data.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_batchnorm_forward_training_bf16(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const nk_bf16,
    y: *mut nk_bf16,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    momentum: f32,
    flags: u32,
    running_mean: *mut f32,
    running_var: *mut f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
) -> nk_status {
    // SAFETY: the caller's promise, forwarded; nk_bf16 has the layout of crate::bf16 (one u16).
    unsafe {
        batchnorm_forward_training_typed(
            ctx,
            shape,
            x.cast::<crate::bf16>(),
            y.cast::<crate::bf16>(),
            gamma,
            beta,
            eps,
            momentum,
            flags,
            running_mean,
            running_var,
            save_mean,
            save_invstd,
        )
    }
}

/// `nk_batchnorm_forward_training` on f16 data (IEEE binary16): `x` and `y` are nk_f16 (2-byte
/// aligned; overlap is checked in bytes). Each input element is widened to float exactly; each
/// element of `y` is the float function's result rounded once to nearest even; the statistics
/// written are bitwise the float function's on the widened data. Every other argument, rule and
/// status as there.
///
/// # Safety
/// As `nk_batchnorm_forward_training`, with f16 data.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_batchnorm_forward_training_f16(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const nk_f16,
    y: *mut nk_f16,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    momentum: f32,
    flags: u32,
    running_mean: *mut f32,
    running_var: *mut f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
) -> nk_status {
    // SAFETY: the caller's promise, forwarded; nk_f16 has the layout of crate::f16 (one u16).
    unsafe {
        batchnorm_forward_training_typed(
            ctx,
            shape,
            x.cast::<crate::f16>(),
            y.cast::<crate::f16>(),
            gamma,
            beta,
            eps,
            momentum,
            flags,
            running_mean,
            running_var,
            save_mean,
            save_invstd,
        )
    }
}

/// The body of `nk_batchnorm_forward_training` and its bf16 and f16 twins.
#[allow(clippy::too_many_arguments)]
unsafe fn batchnorm_forward_training_typed<E: Element>(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const E,
    y: *mut E,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    momentum: f32,
    flags: u32,
    running_mean: *mut f32,
    running_var: *mut f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
) -> nk_status {
    call(|| {
        let (data, _) = null_lens(&shape);
        require("x", x, data)?;
        require("y", y, data)?;
        if running_mean.is_null() != running_var.is_null() {
            return Err(Error::new(
                ErrorKind::NullPointer,
                "running_mean and running_var must be both given or both NULL",
            ));
        }
        let params = training_params(eps, momentum, flags);
        let sizes = shape.sizes();
        let count = sizes.count()? as u64;
        check_training_flags(&sizes, count, &params, !running_mean.is_null(), flags)?;
        let shape = shape.to_shape()?;
        let (n, c) = (shape.elements()?, shape.channels);
        Regions::default()
            .input("x", x, n)
            .output_replacing("y", y, n, "x")
            .input("gamma", gamma, c)
            .input("beta", beta, c)
            .output("running_mean", running_mean, c)
            .output("running_var", running_var, c)
            .output("save_mean", save_mean, c)
            .output("save_invstd", save_invstd, c)
            .check()?;
        // SAFETY: pointers checked above (NULL, alignment, overlap); extents are the caller's
        // promise.
        unsafe {
            let running = (!running_mean.is_null()).then(|| RunningStats {
                mean: slice_mut(running_mean, c),
                var: slice_mut(running_var, c),
            });
            batchnorm::forward_training(
                context(ctx),
                shape,
                in_out(x, y, n),
                Affine {
                    gamma: optional(gamma, c),
                    beta: optional(beta, c),
                },
                params,
                running,
                SavedStats {
                    mean: optional_mut(save_mean, c),
                    invstd: optional_mut(save_invstd, c),
                },
            )
        }
    })
}

/// Batch norm inference forward from given statistics:
/// `y = gamma[c] * (x - mean[c]) / sqrt(var[c] + eps) + beta[c]`.
/// - x, y: N*C*S floats (NULL when the tensor is empty; nothing is written then); `y == x` is in
///   place.
/// - mean, var (C floats): required. gamma, beta (C floats): optional, NULL = 1, 0.
/// - eps finite and >= 0; flags 0 or NK_BN_FUSE_RELU (`y = max(y, 0)`: negative results become
///   +0.0, NaN and -0.0 pass unchanged). Else NK_ERR_BAD_ARGUMENT.
///
/// # Safety
/// As `nk_batchnorm_forward_training`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_batchnorm_forward_inference(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const f32,
    y: *mut f32,
    gamma: *const f32,
    beta: *const f32,
    mean: *const f32,
    var: *const f32,
    eps: f32,
    flags: u32,
) -> nk_status {
    // SAFETY: the caller's promise, forwarded.
    unsafe {
        batchnorm_forward_inference_typed::<f32>(
            ctx, shape, x, y, gamma, beta, mean, var, eps, flags,
        )
    }
}

/// `nk_batchnorm_forward_inference` on bf16 data (bfloat16): `x` and `y` are nk_bf16 (2-byte
/// aligned; overlap is checked in bytes). Each input element is widened to float exactly; each
/// element of `y` is the float function's result rounded once to nearest even. Every other
/// argument, rule and status as there.
///
/// # Safety
/// As `nk_batchnorm_forward_inference`, with bf16 data.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_batchnorm_forward_inference_bf16(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const nk_bf16,
    y: *mut nk_bf16,
    gamma: *const f32,
    beta: *const f32,
    mean: *const f32,
    var: *const f32,
    eps: f32,
    flags: u32,
) -> nk_status {
    // SAFETY: the caller's promise, forwarded; nk_bf16 has the layout of crate::bf16 (one u16).
    unsafe {
        batchnorm_forward_inference_typed(
            ctx,
            shape,
            x.cast::<crate::bf16>(),
            y.cast::<crate::bf16>(),
            gamma,
            beta,
            mean,
            var,
            eps,
            flags,
        )
    }
}

/// `nk_batchnorm_forward_inference` on f16 data (IEEE binary16): `x` and `y` are nk_f16 (2-byte
/// aligned; overlap is checked in bytes). Each input element is widened to float exactly; each
/// element of `y` is the float function's result rounded once to nearest even. Every other
/// argument, rule and status as there.
///
/// # Safety
/// As `nk_batchnorm_forward_inference`, with f16 data.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_batchnorm_forward_inference_f16(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const nk_f16,
    y: *mut nk_f16,
    gamma: *const f32,
    beta: *const f32,
    mean: *const f32,
    var: *const f32,
    eps: f32,
    flags: u32,
) -> nk_status {
    // SAFETY: the caller's promise, forwarded; nk_f16 has the layout of crate::f16 (one u16).
    unsafe {
        batchnorm_forward_inference_typed(
            ctx,
            shape,
            x.cast::<crate::f16>(),
            y.cast::<crate::f16>(),
            gamma,
            beta,
            mean,
            var,
            eps,
            flags,
        )
    }
}

/// The body of `nk_batchnorm_forward_inference` and its bf16 and f16 twins.
#[allow(clippy::too_many_arguments)]
unsafe fn batchnorm_forward_inference_typed<E: Element>(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const E,
    y: *mut E,
    gamma: *const f32,
    beta: *const f32,
    mean: *const f32,
    var: *const f32,
    eps: f32,
    flags: u32,
) -> nk_status {
    call(|| {
        let (data, channels) = null_lens(&shape);
        require("x", x, data)?;
        require("y", y, data)?;
        require("mean", mean, channels)?;
        require("var", var, channels)?;
        check_inference(&shape.sizes(), eps)?;
        check_flags(flags, NK_BN_FUSE_RELU, "batch norm inference")?;
        let shape = shape.to_shape()?;
        let (n, c) = (shape.elements()?, shape.channels);
        Regions::default()
            .input("x", x, n)
            .output_replacing("y", y, n, "x")
            .input("gamma", gamma, c)
            .input("beta", beta, c)
            .input("mean", mean, c)
            .input("var", var, c)
            .check()?;
        // SAFETY: pointers checked above; extents are the caller's promise.
        unsafe {
            batchnorm::forward_inference(
                context(ctx),
                shape,
                in_out(x, y, n),
                Affine {
                    gamma: optional(gamma, c),
                    beta: optional(beta, c),
                },
                slice(mean, c),
                slice(var, c),
                eps,
                if flags & NK_BN_FUSE_RELU != 0 {
                    Activation::Relu
                } else {
                    Activation::Identity
                },
            )
        }
    })
}

/// The moments of this shard for synchronous batch norm, per channel, in double: `mean[c]` and
/// `m2[c]` (the sum of squared deviations from the mean) of the channel's N*S values; zeros when
/// N*S == 0. Their count, N*S, is not written: the caller keeps it. Merge shards' moments with
/// nk_moments_merge.
/// - x: N*C*S floats (NULL when the tensor is empty).
/// - mean, m2: C doubles, required; neither may overlap x or the other.
///
/// # Safety
/// As `nk_batchnorm_forward_training`; `mean`, `m2`: C doubles.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_moments(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const f32,
    mean: *mut f64,
    m2: *mut f64,
) -> nk_status {
    // SAFETY: the caller's promise, forwarded.
    unsafe { moments_typed::<f32>(ctx, shape, x, mean, m2) }
}

/// `nk_moments` on bf16 data (bfloat16): `x` is nk_bf16 (2-byte aligned; overlap is checked in
/// bytes). Each input element is widened to float exactly; `mean` and `m2` are bitwise the float
/// function's on the widened data. Every other argument, rule and status as there.
///
/// # Safety
/// As `nk_moments`, with bf16 data.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_moments_bf16(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const nk_bf16,
    mean: *mut f64,
    m2: *mut f64,
) -> nk_status {
    // SAFETY: the caller's promise, forwarded; nk_bf16 has the layout of crate::bf16 (one u16).
    unsafe { moments_typed(ctx, shape, x.cast::<crate::bf16>(), mean, m2) }
}

/// `nk_moments` on f16 data (IEEE binary16): `x` is nk_f16 (2-byte aligned; overlap is checked in
/// bytes). Each input element is widened to float exactly; `mean` and `m2` are bitwise the float
/// function's on the widened data. Every other argument, rule and status as there.
///
/// # Safety
/// As `nk_moments`, with f16 data.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_moments_f16(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const nk_f16,
    mean: *mut f64,
    m2: *mut f64,
) -> nk_status {
    // SAFETY: the caller's promise, forwarded; nk_f16 has the layout of crate::f16 (one u16).
    unsafe { moments_typed(ctx, shape, x.cast::<crate::f16>(), mean, m2) }
}

/// The body of `nk_moments` and its bf16 and f16 twins.
unsafe fn moments_typed<E: Element>(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const E,
    mean: *mut f64,
    m2: *mut f64,
) -> nk_status {
    call(|| {
        let (data, channels) = null_lens(&shape);
        require("x", x, data)?;
        require("mean", mean, channels)?;
        require("m2", m2, channels)?;
        check_sizes(&shape.sizes())?;
        let shape = shape.to_shape()?;
        let (n, c) = (shape.elements()?, shape.channels);
        Regions::default()
            .input("x", x, n)
            .output("mean", mean, c)
            .output("m2", m2, c)
            .check()?;
        let mut out = vec![Moments::EMPTY; c];
        // SAFETY: pointers checked above; extents are the caller's promise.
        unsafe { batchnorm::moments(context(ctx), shape, slice(x, n), &mut out)? };
        // SAFETY: as above.
        unsafe { write_moments(&out, mean, m2) };
        Ok(())
    })
}

/// a <- a (+) b: per channel, the moments of the union of two disjoint sets of values (Chan et
/// al.). With n = count_a + count_b and d = mean_b - mean_a: `mean_a += d * count_b / n`,
/// `m2_a += m2_b + d^2 * count_a * count_b / n`; a side whose count is 0 is ignored. The merged
/// count, count_a + count_b, is not written: the caller keeps it.
/// - mean_a, m2_a (read and written), mean_b, m2_b: `channels` doubles each, required (NULL when
///   channels == 0). mean_a and m2_a must not overlap each other or b.
/// - NK_ERR_OVERFLOW if count_a + count_b overflows uint64_t.
/// - Takes no context: runs on the calling thread.
///
/// # Safety
/// Every pointer is valid for `channels` doubles.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_moments_merge(
    channels: usize,
    count_a: u64,
    mean_a: *mut f64,
    m2_a: *mut f64,
    count_b: u64,
    mean_b: *const f64,
    m2_b: *const f64,
) -> nk_status {
    call(|| {
        require("mean_a", mean_a, channels)?;
        require("m2_a", m2_a, channels)?;
        require("mean_b", mean_b, channels)?;
        require("m2_b", m2_b, channels)?;
        crate::shape::checked_elements(&[channels], 8, "channels")?;
        if count_a.checked_add(count_b).is_none() {
            return Err(Error::overflow("count_a + count_b overflows uint64"));
        }
        let c = channels;
        Regions::default()
            .output("mean_a", mean_a, c)
            .output("m2_a", m2_a, c)
            .input("mean_b", mean_b, c)
            .input("m2_b", m2_b, c)
            .check()?;
        // SAFETY: pointers checked above; extents are the caller's promise.
        let (mut a, b) = unsafe {
            (
                moments_of(count_a, mean_a, m2_a, c),
                moments_of(count_b, mean_b, m2_b, c),
            )
        };
        batchnorm::moments_merge(&mut a, &b)?;
        // SAFETY: as above.
        unsafe { write_moments(&a, mean_a, m2_a) };
        Ok(())
    })
}

/// Training forward with global statistics: `mean`, `m2` merged over every shard (nk_moments,
/// nk_moments_merge) and `count`, the global number of values per channel. Otherwise as
/// nk_batchnorm_forward_training: the formulas, gamma, beta, running and saved statistics, eps,
/// momentum, flags and `y == x` in place. Equals nk_batchnorm_forward_training when given this
/// shard's own nk_moments.
/// - x, y: N*C*S floats. The local shard may be empty (x, y NULL): the running and saved
///   statistics are still written.
/// - mean, m2: C doubles, required. A negative m2 gives variance 0.
/// - count >= 1 and >= this shard's N*S, and >= 2 with running statistics and an unbiased running
///   variance; else NK_ERR_BAD_SHAPE.
///
/// # Safety
/// As `nk_batchnorm_forward_training`; `mean`, `m2`: C doubles.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_batchnorm_forward_from_moments(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const f32,
    y: *mut f32,
    gamma: *const f32,
    beta: *const f32,
    count: u64,
    mean: *const f64,
    m2: *const f64,
    eps: f32,
    momentum: f32,
    flags: u32,
    running_mean: *mut f32,
    running_var: *mut f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
) -> nk_status {
    // SAFETY: the caller's promise, forwarded.
    unsafe {
        batchnorm_forward_from_moments_typed::<f32>(
            ctx,
            shape,
            x,
            y,
            gamma,
            beta,
            count,
            mean,
            m2,
            eps,
            momentum,
            flags,
            running_mean,
            running_var,
            save_mean,
            save_invstd,
        )
    }
}

/// `nk_batchnorm_forward_from_moments` on bf16 data (bfloat16): `x` and `y` are nk_bf16 (2-byte
/// aligned; overlap is checked in bytes). Each input element is widened to float exactly; each
/// element of `y` is the float function's result rounded once to nearest even; the statistics
/// written are bitwise the float function's on the widened data. Every other argument, rule and
/// status as there.
///
/// # Safety
/// As `nk_batchnorm_forward_from_moments`, with bf16 data.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_batchnorm_forward_from_moments_bf16(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const nk_bf16,
    y: *mut nk_bf16,
    gamma: *const f32,
    beta: *const f32,
    count: u64,
    mean: *const f64,
    m2: *const f64,
    eps: f32,
    momentum: f32,
    flags: u32,
    running_mean: *mut f32,
    running_var: *mut f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
) -> nk_status {
    // SAFETY: the caller's promise, forwarded; nk_bf16 has the layout of crate::bf16 (one u16).
    unsafe {
        batchnorm_forward_from_moments_typed(
            ctx,
            shape,
            x.cast::<crate::bf16>(),
            y.cast::<crate::bf16>(),
            gamma,
            beta,
            count,
            mean,
            m2,
            eps,
            momentum,
            flags,
            running_mean,
            running_var,
            save_mean,
            save_invstd,
        )
    }
}

/// `nk_batchnorm_forward_from_moments` on f16 data (IEEE binary16): `x` and `y` are nk_f16 (2-byte
/// aligned; overlap is checked in bytes). Each input element is widened to float exactly; each
/// element of `y` is the float function's result rounded once to nearest even; the statistics
/// written are bitwise the float function's on the widened data. Every other argument, rule and
/// status as there.
///
/// # Safety
/// As `nk_batchnorm_forward_from_moments`, with f16 data.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_batchnorm_forward_from_moments_f16(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const nk_f16,
    y: *mut nk_f16,
    gamma: *const f32,
    beta: *const f32,
    count: u64,
    mean: *const f64,
    m2: *const f64,
    eps: f32,
    momentum: f32,
    flags: u32,
    running_mean: *mut f32,
    running_var: *mut f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
) -> nk_status {
    // SAFETY: the caller's promise, forwarded; nk_f16 has the layout of crate::f16 (one u16).
    unsafe {
        batchnorm_forward_from_moments_typed(
            ctx,
            shape,
            x.cast::<crate::f16>(),
            y.cast::<crate::f16>(),
            gamma,
            beta,
            count,
            mean,
            m2,
            eps,
            momentum,
            flags,
            running_mean,
            running_var,
            save_mean,
            save_invstd,
        )
    }
}

/// The body of `nk_batchnorm_forward_from_moments` and its bf16 and f16 twins.
#[allow(clippy::too_many_arguments)]
unsafe fn batchnorm_forward_from_moments_typed<E: Element>(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const E,
    y: *mut E,
    gamma: *const f32,
    beta: *const f32,
    count: u64,
    mean: *const f64,
    m2: *const f64,
    eps: f32,
    momentum: f32,
    flags: u32,
    running_mean: *mut f32,
    running_var: *mut f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
) -> nk_status {
    call(|| {
        let (data, channels) = null_lens(&shape);
        require("x", x, data)?;
        require("y", y, data)?;
        require("mean", mean, channels)?;
        require("m2", m2, channels)?;
        if running_mean.is_null() != running_var.is_null() {
            return Err(Error::new(
                ErrorKind::NullPointer,
                "running_mean and running_var must be both given or both NULL",
            ));
        }
        let params = training_params(eps, momentum, flags);
        check_training_flags(
            &shape.sizes(),
            count,
            &params,
            !running_mean.is_null(),
            flags,
        )?;
        let shape = shape.to_shape()?;
        let (n, c) = (shape.elements()?, shape.channels);
        Regions::default()
            .input("x", x, n)
            .output_replacing("y", y, n, "x")
            .input("gamma", gamma, c)
            .input("beta", beta, c)
            .input("mean", mean, c)
            .input("m2", m2, c)
            .output("running_mean", running_mean, c)
            .output("running_var", running_var, c)
            .output("save_mean", save_mean, c)
            .output("save_invstd", save_invstd, c)
            .check()?;
        // SAFETY: pointers checked above; extents are the caller's promise.
        unsafe {
            let running = (!running_mean.is_null()).then(|| RunningStats {
                mean: slice_mut(running_mean, c),
                var: slice_mut(running_var, c),
            });
            batchnorm::forward_from_moments(
                context(ctx),
                shape,
                in_out(x, y, n),
                Affine {
                    gamma: optional(gamma, c),
                    beta: optional(beta, c),
                },
                &moments_of(count, mean, m2, c),
                params,
                running,
                SavedStats {
                    mean: optional_mut(save_mean, c),
                    invstd: optional_mut(save_invstd, c),
                },
            )
        }
    })
}

/// Folds inference batch norm into the preceding conv or linear layer, so that the layer alone
/// computes layer-then-BN: per output channel o, `s = gamma[o] / sqrt(var[o] + eps)`,
/// `weight[o][i] *= s`, `bias[o] = (bias[o] - mean[o]) * s + beta[o]` (in double, each result
/// rounded once to float).
/// - weight: c_out*fan_in floats, row-major [c_out][fan_in], required.
/// - bias (in: the layer's bias or zeros), mean, var: c_out floats, required. gamma, beta (c_out
///   floats): optional, NULL = 1, 0.
/// - weight and bias must not overlap each other or the inputs. eps finite and >= 0.
/// - Takes no context: runs on the calling thread.
///
/// # Safety
/// `weight`: c_out*fan_in floats; `bias`, `gamma`, `beta`, `mean`, `var`: c_out floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_batchnorm_fold(
    c_out: usize,
    fan_in: usize,
    weight: *mut f32,
    bias: *mut f32,
    gamma: *const f32,
    beta: *const f32,
    mean: *const f32,
    var: *const f32,
    eps: f32,
) -> nk_status {
    call(|| {
        require("weight", weight, usize::from(c_out > 0 && fan_in > 0))?;
        require("bias", bias, c_out)?;
        require("mean", mean, c_out)?;
        require("var", var, c_out)?;
        let n = check_fold(c_out, fan_in, eps)?;
        Regions::default()
            .output("weight", weight, n)
            .output("bias", bias, c_out)
            .input("gamma", gamma, c_out)
            .input("beta", beta, c_out)
            .input("mean", mean, c_out)
            .input("var", var, c_out)
            .check()?;
        // SAFETY: pointers checked above; extents are the caller's promise.
        unsafe {
            batchnorm::fold(
                c_out,
                fan_in,
                slice_mut(weight, n),
                slice_mut(bias, c_out),
                Affine {
                    gamma: optional(gamma, c_out),
                    beta: optional(beta, c_out),
                },
                slice(mean, c_out),
                slice(var, c_out),
                eps,
            )
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Backward passes.

use crate::ops::batchnorm::check_apply_count;

/// Batch norm backward (training mode) from the statistics the forward saved. Per channel c, with
/// `xhat = (x - save_mean[c]) * save_invstd[c]` and sums over the channel's count = N*S values:
/// `dgamma[c] = sum(dy * xhat)`, `dbeta[c] = sum(dy)`, and
/// `dx = gamma[c] * save_invstd[c] * (dy - sum(dy) / count - xhat * sum(dy * xhat) / count)`.
/// Equals nk_batchnorm_backward_reduce then nk_batchnorm_backward_apply with count N*S.
/// - x, dy: N*C*S floats (NULL when the tensor is empty). save_mean, save_invstd (C floats):
///   required. gamma (C floats): optional, NULL = 1.
/// - dx (N*C*S floats), dgamma, dbeta (C floats; zeros when N*S == 0): each optional. `dx == dy`
///   is in place; dx over x is NK_ERR_ALIAS.
///
/// # Safety
/// Every non-NULL pointer is valid for its extent in the contract (x, dy, dx: N*C*S floats;
/// per-channel arrays: C floats).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_batchnorm_backward(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const f32,
    dy: *const f32,
    dx: *mut f32,
    gamma: *const f32,
    save_mean: *const f32,
    save_invstd: *const f32,
    dgamma: *mut f32,
    dbeta: *mut f32,
) -> nk_status {
    // SAFETY: the caller's promise, forwarded.
    unsafe {
        batchnorm_backward_typed::<f32>(
            ctx,
            shape,
            x,
            dy,
            dx,
            gamma,
            save_mean,
            save_invstd,
            dgamma,
            dbeta,
        )
    }
}

/// `nk_batchnorm_backward` on bf16 data (bfloat16): `x`, `dy` and `dx` are nk_bf16 (2-byte aligned;
/// overlap is checked in bytes). Each input element is widened to float exactly; each element of
/// `dx` is the float function's result rounded once to nearest even; `dgamma` and `dbeta` are
/// bitwise the float function's on the widened data. Every other argument, rule and status as
/// there.
///
/// # Safety
/// As `nk_batchnorm_backward`, with bf16 data.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_batchnorm_backward_bf16(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const nk_bf16,
    dy: *const nk_bf16,
    dx: *mut nk_bf16,
    gamma: *const f32,
    save_mean: *const f32,
    save_invstd: *const f32,
    dgamma: *mut f32,
    dbeta: *mut f32,
) -> nk_status {
    // SAFETY: the caller's promise, forwarded; nk_bf16 has the layout of crate::bf16 (one u16).
    unsafe {
        batchnorm_backward_typed(
            ctx,
            shape,
            x.cast::<crate::bf16>(),
            dy.cast::<crate::bf16>(),
            dx.cast::<crate::bf16>(),
            gamma,
            save_mean,
            save_invstd,
            dgamma,
            dbeta,
        )
    }
}

/// `nk_batchnorm_backward` on f16 data (IEEE binary16): `x`, `dy` and `dx` are nk_f16 (2-byte
/// aligned; overlap is checked in bytes). Each input element is widened to float exactly; each
/// element of `dx` is the float function's result rounded once to nearest even; `dgamma` and
/// `dbeta` are bitwise the float function's on the widened data. Every other argument, rule and
/// status as there.
///
/// # Safety
/// As `nk_batchnorm_backward`, with f16 data.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_batchnorm_backward_f16(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const nk_f16,
    dy: *const nk_f16,
    dx: *mut nk_f16,
    gamma: *const f32,
    save_mean: *const f32,
    save_invstd: *const f32,
    dgamma: *mut f32,
    dbeta: *mut f32,
) -> nk_status {
    // SAFETY: the caller's promise, forwarded; nk_f16 has the layout of crate::f16 (one u16).
    unsafe {
        batchnorm_backward_typed(
            ctx,
            shape,
            x.cast::<crate::f16>(),
            dy.cast::<crate::f16>(),
            dx.cast::<crate::f16>(),
            gamma,
            save_mean,
            save_invstd,
            dgamma,
            dbeta,
        )
    }
}

/// The body of `nk_batchnorm_backward` and its bf16 and f16 twins.
#[allow(clippy::too_many_arguments)]
unsafe fn batchnorm_backward_typed<E: Element>(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const E,
    dy: *const E,
    dx: *mut E,
    gamma: *const f32,
    save_mean: *const f32,
    save_invstd: *const f32,
    dgamma: *mut f32,
    dbeta: *mut f32,
) -> nk_status {
    call(|| {
        let (data, channels) = null_lens(&shape);
        require("x", x, data)?;
        require("dy", dy, data)?;
        require("save_mean", save_mean, channels)?;
        require("save_invstd", save_invstd, channels)?;
        check_sizes(&shape.sizes())?;
        let shape = shape.to_shape()?;
        let (n, c) = (shape.elements()?, shape.channels);
        Regions::default()
            .input("x", x, n)
            .input("dy", dy, n)
            .output_replacing("dx", dx, n, "dy")
            .input("gamma", gamma, c)
            .input("save_mean", save_mean, c)
            .input("save_invstd", save_invstd, c)
            .output("dgamma", dgamma, c)
            .output("dbeta", dbeta, c)
            .check()?;
        // SAFETY: pointers checked above (NULL, alignment, overlap); extents are the caller's
        // promise.
        unsafe {
            let io = backward_io(dy, dx, n);
            batchnorm::backward(
                context(ctx),
                shape,
                slice(x, n),
                io,
                optional(gamma, c),
                slice(save_mean, c),
                slice(save_invstd, c),
                optional_mut(dgamma, c),
                optional_mut(dbeta, c),
            )
        }
    })
}

/// The per-channel sums of a synchronous batch norm backward over this shard, in double:
/// `sum_dy[c] = sum(dy)` and `sum_dy_xhat[c] = sum(dy * xhat)` with
/// `xhat = (x - save_mean[c]) * save_invstd[c]`; zeros when N*S == 0. Add up every shard's sums,
/// then call nk_batchnorm_backward_apply.
/// - x, dy: N*C*S floats (NULL when the tensor is empty). save_mean, save_invstd (C floats):
///   required.
/// - sum_dy, sum_dy_xhat: C doubles, required; neither may overlap an input or the other.
///
/// # Safety
/// As `nk_batchnorm_backward`; `sum_dy`, `sum_dy_xhat`: C doubles.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_batchnorm_backward_reduce(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const f32,
    dy: *const f32,
    save_mean: *const f32,
    save_invstd: *const f32,
    sum_dy: *mut f64,
    sum_dy_xhat: *mut f64,
) -> nk_status {
    // SAFETY: the caller's promise, forwarded.
    unsafe {
        batchnorm_backward_reduce_typed::<f32>(
            ctx,
            shape,
            x,
            dy,
            save_mean,
            save_invstd,
            sum_dy,
            sum_dy_xhat,
        )
    }
}

/// `nk_batchnorm_backward_reduce` on bf16 data (bfloat16): `x` and `dy` are nk_bf16 (2-byte
/// aligned; overlap is checked in bytes). Each input element is widened to float exactly; `sum_dy`
/// and `sum_dy_xhat` are bitwise the float function's on the widened data. Every other argument,
/// rule and status as there.
///
/// # Safety
/// As `nk_batchnorm_backward_reduce`, with bf16 data.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_batchnorm_backward_reduce_bf16(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const nk_bf16,
    dy: *const nk_bf16,
    save_mean: *const f32,
    save_invstd: *const f32,
    sum_dy: *mut f64,
    sum_dy_xhat: *mut f64,
) -> nk_status {
    // SAFETY: the caller's promise, forwarded; nk_bf16 has the layout of crate::bf16 (one u16).
    unsafe {
        batchnorm_backward_reduce_typed(
            ctx,
            shape,
            x.cast::<crate::bf16>(),
            dy.cast::<crate::bf16>(),
            save_mean,
            save_invstd,
            sum_dy,
            sum_dy_xhat,
        )
    }
}

/// `nk_batchnorm_backward_reduce` on f16 data (IEEE binary16): `x` and `dy` are nk_f16 (2-byte
/// aligned; overlap is checked in bytes). Each input element is widened to float exactly; `sum_dy`
/// and `sum_dy_xhat` are bitwise the float function's on the widened data. Every other argument,
/// rule and status as there.
///
/// # Safety
/// As `nk_batchnorm_backward_reduce`, with f16 data.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_batchnorm_backward_reduce_f16(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const nk_f16,
    dy: *const nk_f16,
    save_mean: *const f32,
    save_invstd: *const f32,
    sum_dy: *mut f64,
    sum_dy_xhat: *mut f64,
) -> nk_status {
    // SAFETY: the caller's promise, forwarded; nk_f16 has the layout of crate::f16 (one u16).
    unsafe {
        batchnorm_backward_reduce_typed(
            ctx,
            shape,
            x.cast::<crate::f16>(),
            dy.cast::<crate::f16>(),
            save_mean,
            save_invstd,
            sum_dy,
            sum_dy_xhat,
        )
    }
}

/// The body of `nk_batchnorm_backward_reduce` and its bf16 and f16 twins.
#[allow(clippy::too_many_arguments)]
unsafe fn batchnorm_backward_reduce_typed<E: Element>(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const E,
    dy: *const E,
    save_mean: *const f32,
    save_invstd: *const f32,
    sum_dy: *mut f64,
    sum_dy_xhat: *mut f64,
) -> nk_status {
    call(|| {
        let (data, channels) = null_lens(&shape);
        require("x", x, data)?;
        require("dy", dy, data)?;
        require("save_mean", save_mean, channels)?;
        require("save_invstd", save_invstd, channels)?;
        require("sum_dy", sum_dy, channels)?;
        require("sum_dy_xhat", sum_dy_xhat, channels)?;
        check_sizes(&shape.sizes())?;
        let shape = shape.to_shape()?;
        let (n, c) = (shape.elements()?, shape.channels);
        Regions::default()
            .input("x", x, n)
            .input("dy", dy, n)
            .input("save_mean", save_mean, c)
            .input("save_invstd", save_invstd, c)
            .output("sum_dy", sum_dy, c)
            .output("sum_dy_xhat", sum_dy_xhat, c)
            .check()?;
        // SAFETY: pointers checked above; extents are the caller's promise.
        unsafe {
            batchnorm::backward_reduce(
                context(ctx),
                shape,
                slice(x, n),
                slice(dy, n),
                slice(save_mean, c),
                slice(save_invstd, c),
                slice_mut(sum_dy, c),
                slice_mut(sum_dy_xhat, c),
            )
        }
    })
}

/// The input gradient of a synchronous batch norm backward:
/// `dx = gamma[c] * save_invstd[c] * (dy - sum_dy[c] / count - xhat * sum_dy_xhat[c] / count)`,
/// `xhat = (x - save_mean[c]) * save_invstd[c]`, with the sums added up over every shard and
/// `count` the global number of values per channel (>= 1 and >= this shard's N*S, else
/// NK_ERR_BAD_SHAPE).
/// - x, dy, dx: N*C*S floats (NULL when the tensor is empty; nothing is written then). dx is
///   required; `dx == dy` is in place, dx over x is NK_ERR_ALIAS.
/// - save_mean, save_invstd (C floats), sum_dy, sum_dy_xhat (C doubles): required. gamma (C
///   floats): optional, NULL = 1.
///
/// # Safety
/// As `nk_batchnorm_backward`; `sum_dy`, `sum_dy_xhat`: C doubles.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_batchnorm_backward_apply(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const f32,
    dy: *const f32,
    dx: *mut f32,
    gamma: *const f32,
    save_mean: *const f32,
    save_invstd: *const f32,
    count: u64,
    sum_dy: *const f64,
    sum_dy_xhat: *const f64,
) -> nk_status {
    // SAFETY: the caller's promise, forwarded.
    unsafe {
        batchnorm_backward_apply_typed::<f32>(
            ctx,
            shape,
            x,
            dy,
            dx,
            gamma,
            save_mean,
            save_invstd,
            count,
            sum_dy,
            sum_dy_xhat,
        )
    }
}

/// `nk_batchnorm_backward_apply` on bf16 data (bfloat16): `x`, `dy` and `dx` are nk_bf16 (2-byte
/// aligned; overlap is checked in bytes). Each input element is widened to float exactly; each
/// element of `dx` is the float function's result rounded once to nearest even. Every other
/// argument, rule and status as there.
///
/// # Safety
/// As `nk_batchnorm_backward_apply`, with bf16 data.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_batchnorm_backward_apply_bf16(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const nk_bf16,
    dy: *const nk_bf16,
    dx: *mut nk_bf16,
    gamma: *const f32,
    save_mean: *const f32,
    save_invstd: *const f32,
    count: u64,
    sum_dy: *const f64,
    sum_dy_xhat: *const f64,
) -> nk_status {
    // SAFETY: the caller's promise, forwarded; nk_bf16 has the layout of crate::bf16 (one u16).
    unsafe {
        batchnorm_backward_apply_typed(
            ctx,
            shape,
            x.cast::<crate::bf16>(),
            dy.cast::<crate::bf16>(),
            dx.cast::<crate::bf16>(),
            gamma,
            save_mean,
            save_invstd,
            count,
            sum_dy,
            sum_dy_xhat,
        )
    }
}

/// `nk_batchnorm_backward_apply` on f16 data (IEEE binary16): `x`, `dy` and `dx` are nk_f16 (2-byte
/// aligned; overlap is checked in bytes). Each input element is widened to float exactly; each
/// element of `dx` is the float function's result rounded once to nearest even. Every other
/// argument, rule and status as there.
///
/// # Safety
/// As `nk_batchnorm_backward_apply`, with f16 data.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_batchnorm_backward_apply_f16(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const nk_f16,
    dy: *const nk_f16,
    dx: *mut nk_f16,
    gamma: *const f32,
    save_mean: *const f32,
    save_invstd: *const f32,
    count: u64,
    sum_dy: *const f64,
    sum_dy_xhat: *const f64,
) -> nk_status {
    // SAFETY: the caller's promise, forwarded; nk_f16 has the layout of crate::f16 (one u16).
    unsafe {
        batchnorm_backward_apply_typed(
            ctx,
            shape,
            x.cast::<crate::f16>(),
            dy.cast::<crate::f16>(),
            dx.cast::<crate::f16>(),
            gamma,
            save_mean,
            save_invstd,
            count,
            sum_dy,
            sum_dy_xhat,
        )
    }
}

/// The body of `nk_batchnorm_backward_apply` and its bf16 and f16 twins.
#[allow(clippy::too_many_arguments)]
unsafe fn batchnorm_backward_apply_typed<E: Element>(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const E,
    dy: *const E,
    dx: *mut E,
    gamma: *const f32,
    save_mean: *const f32,
    save_invstd: *const f32,
    count: u64,
    sum_dy: *const f64,
    sum_dy_xhat: *const f64,
) -> nk_status {
    call(|| {
        let (data, channels) = null_lens(&shape);
        require("x", x, data)?;
        require("dy", dy, data)?;
        require("dx", dx, data)?;
        require("save_mean", save_mean, channels)?;
        require("save_invstd", save_invstd, channels)?;
        require("sum_dy", sum_dy, channels)?;
        require("sum_dy_xhat", sum_dy_xhat, channels)?;
        check_apply_count(&shape.sizes(), count)?;
        let shape = shape.to_shape()?;
        let (n, c) = (shape.elements()?, shape.channels);
        Regions::default()
            .input("x", x, n)
            .input("dy", dy, n)
            .output_replacing("dx", dx, n, "dy")
            .input("gamma", gamma, c)
            .input("save_mean", save_mean, c)
            .input("save_invstd", save_invstd, c)
            .input("sum_dy", sum_dy, c)
            .input("sum_dy_xhat", sum_dy_xhat, c)
            .check()?;
        // SAFETY: pointers checked above; extents are the caller's promise.
        unsafe {
            batchnorm::backward_apply(
                context(ctx),
                shape,
                slice(x, n),
                in_out(dy, dx, n),
                optional(gamma, c),
                slice(save_mean, c),
                slice(save_invstd, c),
                count,
                slice(sum_dy, c),
                slice(sum_dy_xhat, c),
            )
        }
    })
}
