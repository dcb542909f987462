//! A plain float64 reference of every batch-norm operation of the C contract.
//!
//! Written for clarity, not speed, and without reusing anything of the library but its plain
//! `Shape`/`Layout` data types: each element is found through the index formula of its layout,
//! means and variances are taken in two passes in `f64`, and every formula is the contract's own.
//! Results are `f64`; the tests compare the library's `f32` results against them with
//! tolerances.

use normkit::{Layout, Shape};

/// Where element `(n, c, s)` lives in memory.
pub fn index(shape: &Shape, n: usize, c: usize, s: usize) -> usize {
    let (cs, ss) = (shape.channels, shape.spatial);
    match shape.layout {
        Layout::Ncs => (n * cs + c) * ss + s,
        Layout::Nsc => (n * ss + s) * cs + c,
        _ => unreachable!("a new layout this code does not know"),
    }
}

/// Number of elements of the tensor.
pub fn elements(shape: &Shape) -> usize {
    shape.batch * shape.channels * shape.spatial
}

/// Values per channel: `batch * spatial`.
pub fn count(shape: &Shape) -> u64 {
    (shape.batch * shape.spatial) as u64
}

/// The values of channel `c`, in `f64`, in (n, s) order.
pub fn channel(shape: &Shape, x: &[f32], c: usize) -> Vec<f64> {
    let mut v = Vec::with_capacity(shape.batch * shape.spatial);
    for n in 0..shape.batch {
        for s in 0..shape.spatial {
            v.push(x[index(shape, n, c, s)] as f64);
        }
    }
    v
}

/// Mean and M2 (sum of squared deviations from the mean) of `values`, in two passes; `(0, 0)`
/// for no values.
pub fn mean_m2(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    // Corrected two-pass: the second pass takes the first mean's error out, so the mean is
    // exact to f64 rounding of the spread, not of the offset (tolerances of a few f32 roundings
    // of the spread must not be eaten by the reference's own error).
    let n = values.len() as f64;
    let first = values.iter().sum::<f64>() / n;
    let residue = values.iter().map(|v| v - first).sum::<f64>();
    let mean = first + residue / n;
    let m2 = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>();
    (mean, m2)
}

/// Per-channel mean and M2 of `x` (the reference of `moments`).
pub fn moments(shape: &Shape, x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    (0..shape.channels)
        .map(|c| mean_m2(&channel(shape, x, c)))
        .unzip()
}

/// Chan et al.'s merge of the moments of two disjoint sets of values, per channel; an empty side
/// leaves the other unchanged (the reference of `moments_merge`).
pub fn merge(
    count_a: u64,
    mean_a: &[f64],
    m2_a: &[f64],
    count_b: u64,
    mean_b: &[f64],
    m2_b: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    if count_b == 0 {
        return (mean_a.to_vec(), m2_a.to_vec());
    }
    if count_a == 0 {
        return (mean_b.to_vec(), m2_b.to_vec());
    }
    let (na, nb) = (count_a as f64, count_b as f64);
    let n = na + nb;
    let mut mean = Vec::new();
    let mut m2 = Vec::new();
    for c in 0..mean_a.len() {
        let delta = mean_b[c] - mean_a[c];
        mean.push(mean_a[c] + delta * nb / n);
        m2.push(m2_a[c] + m2_b[c] + delta * delta * na * nb / n);
    }
    (mean, m2)
}

/// The flag bit: running variance tracks the biased variance.
pub const RUNNING_VAR_BIASED: u32 = 1;
/// The flag bit: ReLU after the affine map (inference only).
pub const FUSE_RELU: u32 = 2;

/// Why the contract rejects a training call with valid pointers and sizes that fit in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Count rules: `count >= 1` always, `count >= 2` with an unbiased running variance.
    BadShape,
    /// eps negative or not finite, momentum outside [0, 1], an unknown flag bit.
    BadArgument,
}

/// The contract's checks of a training forward (or a forward from moments with global `count`),
/// in its precedence order: shape before argument.
pub fn check_training(
    count: u64,
    eps: f32,
    momentum: f32,
    flags: u32,
    has_running: bool,
) -> Result<(), Rejected> {
    if count == 0 {
        return Err(Rejected::BadShape);
    }
    let unbiased = flags & RUNNING_VAR_BIASED == 0;
    if has_running && unbiased && count < 2 {
        return Err(Rejected::BadShape);
    }
    if flags & !RUNNING_VAR_BIASED != 0 {
        return Err(Rejected::BadArgument);
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Rejected::BadArgument);
    }
    if !(0.0..=1.0).contains(&momentum) {
        return Err(Rejected::BadArgument);
    }
    Ok(())
}

/// Everything a training forward produces, in `f64`.
#[derive(Clone, Debug)]
pub struct Training {
    pub y: Vec<f64>,
    /// The normalized value `(x - mean) * invstd` of every element, before gamma and beta
    /// (used to scale tolerances).
    pub xhat: Vec<f64>,
    pub save_mean: Vec<f64>,
    pub save_invstd: Vec<f64>,
    /// Biased batch variance per channel.
    pub var: Vec<f64>,
    /// Updated running mean and variance, when running statistics were given.
    pub running: Option<(Vec<f64>, Vec<f64>)>,
}

/// `gamma[c]`, or the neutral 1.
pub fn gamma_at(gamma: Option<&[f32]>, c: usize) -> f64 {
    gamma.map_or(1.0, |g| g[c] as f64)
}

/// `beta[c]`, or the neutral 0.
pub fn beta_at(beta: Option<&[f32]>, c: usize) -> f64 {
    beta.map_or(0.0, |b| b[c] as f64)
}

/// The contract's running-statistic update: `(1 - momentum) * running + momentum * batch`;
/// momentum 1 replaces.
pub fn blend(old: f32, batch: f64, momentum: f32) -> f64 {
    if momentum == 1.0 {
        batch
    } else {
        let m = momentum as f64;
        (1.0 - m) * old as f64 + m * batch
    }
}

/// Training forward with global statistics `count`, `mean`, `m2` (the reference of
/// `forward_from_moments`); `x` may be an empty local shard.
#[allow(clippy::too_many_arguments)]
pub fn forward_from_moments(
    shape: &Shape,
    x: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    count: u64,
    mean: &[f64],
    m2: &[f64],
    eps: f32,
    momentum: f32,
    flags: u32,
    running: Option<(&[f32], &[f32])>,
) -> Result<Training, Rejected> {
    check_training(count, eps, momentum, flags, running.is_some())?;
    let channels = shape.channels;
    let mut var = vec![0.0; channels];
    let mut invstd = vec![0.0; channels];
    for c in 0..channels {
        let v = m2[c] / count as f64;
        var[c] = if v < 0.0 { 0.0 } else { v };
        invstd[c] = 1.0 / (var[c] + eps as f64).sqrt();
    }
    let len = elements(shape);
    let mut y = vec![0.0; len];
    let mut xhat = vec![0.0; len];
    for n in 0..shape.batch {
        for c in 0..channels {
            for s in 0..shape.spatial {
                let i = index(shape, n, c, s);
                let h = (x[i] as f64 - mean[c]) * invstd[c];
                xhat[i] = h;
                y[i] = gamma_at(gamma, c) * h + beta_at(beta, c);
            }
        }
    }
    let running = running.map(|(rm, rv)| {
        let mut new_mean = vec![0.0; channels];
        let mut new_var = vec![0.0; channels];
        for c in 0..channels {
            let batch_var = if flags & RUNNING_VAR_BIASED != 0 {
                var[c]
            } else {
                let v = m2[c] / (count - 1) as f64;
                if v < 0.0 { 0.0 } else { v }
            };
            new_mean[c] = blend(rm[c], mean[c], momentum);
            new_var[c] = blend(rv[c], batch_var, momentum);
        }
        (new_mean, new_var)
    });
    Ok(Training {
        y,
        xhat,
        save_mean: mean.to_vec(),
        save_invstd: invstd,
        var,
        running,
    })
}

/// Training forward (the reference of `forward_training`): the batch's own moments, then
/// [`forward_from_moments`].
#[allow(clippy::too_many_arguments)]
pub fn forward_training(
    shape: &Shape,
    x: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
    momentum: f32,
    flags: u32,
    running: Option<(&[f32], &[f32])>,
) -> Result<Training, Rejected> {
    let (mean, m2) = moments(shape, x);
    forward_from_moments(
        shape,
        x,
        gamma,
        beta,
        count(shape),
        &mean,
        &m2,
        eps,
        momentum,
        flags,
        running,
    )
}

/// Inference forward: `y = gamma * (x - mean) / sqrt(var + eps) + beta`, then `max(y, 0)` with
/// `relu` (a NaN stays NaN). Returns `(y, xhat)`.
#[allow(clippy::too_many_arguments)]
pub fn forward_inference(
    shape: &Shape,
    x: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    mean: &[f32],
    var: &[f32],
    eps: f32,
    relu: bool,
) -> (Vec<f64>, Vec<f64>) {
    let len = elements(shape);
    let mut y = vec![0.0; len];
    let mut xhat = vec![0.0; len];
    for n in 0..shape.batch {
        for c in 0..shape.channels {
            let invstd = 1.0 / (var[c] as f64 + eps as f64).sqrt();
            for s in 0..shape.spatial {
                let i = index(shape, n, c, s);
                let h = (x[i] as f64 - mean[c] as f64) * invstd;
                let mut v = gamma_at(gamma, c) * h + beta_at(beta, c);
                if relu && v < 0.0 {
                    v = 0.0;
                }
                xhat[i] = h;
                y[i] = v;
            }
        }
    }
    (y, xhat)
}

/// Folding inference batch norm into the preceding layer (`weight` row-major
/// `[c_out][fan_in]`, `bias` `[c_out]`): returns the new `(weight, bias)` with
/// `w' = w * k`, `b' = (b - mean) * k + beta`, `k = gamma / sqrt(var + eps)`.
#[allow(clippy::too_many_arguments)]
pub fn fold(
    c_out: usize,
    fan_in: usize,
    weight: &[f32],
    bias: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    mean: &[f32],
    var: &[f32],
    eps: f32,
) -> (Vec<f64>, Vec<f64>) {
    let mut w = vec![0.0; c_out * fan_in];
    let mut b = vec![0.0; c_out];
    for o in 0..c_out {
        let k = gamma_at(gamma, o) / (var[o] as f64 + eps as f64).sqrt();
        for i in 0..fan_in {
            w[o * fan_in + i] = weight[o * fan_in + i] as f64 * k;
        }
        b[o] = (bias[o] as f64 - mean[o] as f64) * k + beta_at(beta, o);
    }
    (w, b)
}
