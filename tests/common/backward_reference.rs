//! Plain float64 reference of the batch-norm backward passes.
//!
//! Written for clarity, not speed: each element is found through the index formula of its
//! layout, every sum runs over the elements in (n, s) order in `f64`, and every formula is the
//! contract's own. Inputs are `f64` (the tests widen their `f32` data), so the same functions
//! serve the finite-difference check of the formulas themselves.

use normkit::{Layout, Shape};

/// Where element `(n, c, s)` lives in memory.
pub fn index(shape: &Shape, n: usize, c: usize, s: usize) -> usize {
    match shape.layout {
        Layout::Ncs => (n * shape.channels + c) * shape.spatial + s,
        Layout::Nsc => (n * shape.spatial + s) * shape.channels + c,
        _ => unreachable!("a new layout this code does not know"),
    }
}

/// Every `(n, s)` position of a channel, in order.
fn positions(shape: &Shape) -> impl Iterator<Item = (usize, usize)> + '_ {
    (0..shape.batch).flat_map(move |n| (0..shape.spatial).map(move |s| (n, s)))
}

/// Widens `f32` values to `f64`.
pub fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&v| v as f64).collect()
}

/// A training forward in `f64`: `(y, mean, invstd)` with the biased variance.
pub fn forward(
    shape: &Shape,
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let count = (shape.batch * shape.spatial) as f64;
    let mut y = vec![0.0; x.len()];
    let (mut means, mut invstds) = (Vec::new(), Vec::new());
    for c in 0..shape.channels {
        let mean = positions(shape)
            .map(|(n, s)| x[index(shape, n, c, s)])
            .sum::<f64>()
            / count;
        let var = positions(shape)
            .map(|(n, s)| (x[index(shape, n, c, s)] - mean).powi(2))
            .sum::<f64>()
            / count;
        let invstd = 1.0 / (var + eps).sqrt();
        for (n, s) in positions(shape) {
            let i = index(shape, n, c, s);
            y[i] = gamma[c] * (x[i] - mean) * invstd + beta[c];
        }
        means.push(mean);
        invstds.push(invstd);
    }
    (y, means, invstds)
}

/// `(sum_dy, sum_dy_xhat)` per channel, `xhat = (x - mean) * invstd`.
pub fn reduce(
    shape: &Shape,
    x: &[f64],
    dy: &[f64],
    mean: &[f64],
    invstd: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    (0..shape.channels)
        .map(|c| {
            let mut sum_dy = 0.0;
            let mut sum_dy_xhat = 0.0;
            for (n, s) in positions(shape) {
                let i = index(shape, n, c, s);
                sum_dy += dy[i];
                sum_dy_xhat += dy[i] * (x[i] - mean[c]) * invstd[c];
            }
            (sum_dy, sum_dy_xhat)
        })
        .unzip()
}

/// `dx = gamma * invstd * (dy - sum_dy / count - xhat * sum_dy_xhat / count)`.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    shape: &Shape,
    x: &[f64],
    dy: &[f64],
    gamma: &[f64],
    mean: &[f64],
    invstd: &[f64],
    count: f64,
    sum_dy: &[f64],
    sum_dy_xhat: &[f64],
) -> Vec<f64> {
    let mut dx = vec![0.0; x.len()];
    for c in 0..shape.channels {
        for (n, s) in positions(shape) {
            let i = index(shape, n, c, s);
            let xhat = (x[i] - mean[c]) * invstd[c];
            dx[i] =
                gamma[c] * invstd[c] * (dy[i] - sum_dy[c] / count - xhat * sum_dy_xhat[c] / count);
        }
    }
    dx
}

/// The whole local backward: `(dx, dgamma, dbeta)`.
pub fn backward(
    shape: &Shape,
    x: &[f64],
    dy: &[f64],
    gamma: &[f64],
    mean: &[f64],
    invstd: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (sum_dy, sum_dy_xhat) = reduce(shape, x, dy, mean, invstd);
    let count = (shape.batch * shape.spatial) as f64;
    let dx = apply(
        shape,
        x,
        dy,
        gamma,
        mean,
        invstd,
        count,
        &sum_dy,
        &sum_dy_xhat,
    );
    (dx, sum_dy_xhat, sum_dy)
}
