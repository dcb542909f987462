//! Plain float64 reference of group and instance norm.
//!
//! Written for clarity, not speed, and without reusing anything of the library but its plain
//! `Shape`/`Layout` types: every element is found through the index formula of its layout,
//! means and variances are taken in two passes in `f64`, and every formula is the contract's own.

use super::reference::index;
use normkit::Shape;

/// The values of group `g` of batch item `n`, in (channel, spatial) order, with their indices.
pub fn group_indices(shape: &Shape, groups: usize, n: usize, g: usize) -> Vec<(usize, usize)> {
    let per = shape.channels / groups;
    let mut v = Vec::new();
    for c in g * per..(g + 1) * per {
        for s in 0..shape.spatial {
            v.push((c, index(shape, n, c, s)));
        }
    }
    v
}

/// Everything a forward produces, in `f64`.
#[derive(Clone, Debug)]
pub struct Forward {
    pub y: Vec<f64>,
    /// `(x - mean) * invstd` of every element.
    pub xhat: Vec<f64>,
    /// Per (n, g), index `n * groups + g`.
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    pub invstd: Vec<f64>,
}

/// Group norm forward: mean and biased variance per (n, g) in two passes.
pub fn forward(
    shape: &Shape,
    groups: usize,
    x: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
) -> Forward {
    let len = shape.batch * shape.channels * shape.spatial;
    let mut out = Forward {
        y: vec![0.0; len],
        xhat: vec![0.0; len],
        mean: vec![0.0; shape.batch * groups],
        var: vec![0.0; shape.batch * groups],
        invstd: vec![0.0; shape.batch * groups],
    };
    for n in 0..shape.batch {
        for g in 0..groups {
            let members = group_indices(shape, groups, n, g);
            let count = members.len() as f64;
            let mean = members.iter().map(|&(_, i)| x[i] as f64).sum::<f64>() / count;
            let var = members
                .iter()
                .map(|&(_, i)| (x[i] as f64 - mean).powi(2))
                .sum::<f64>()
                / count;
            let invstd = 1.0 / (var + eps as f64).sqrt();
            let k = n * groups + g;
            (out.mean[k], out.var[k], out.invstd[k]) = (mean, var, invstd);
            for &(c, i) in &members {
                let h = (x[i] as f64 - mean) * invstd;
                out.xhat[i] = h;
                let ga = gamma.map_or(1.0, |v| v[c] as f64);
                let be = beta.map_or(0.0, |v| v[c] as f64);
                out.y[i] = ga * h + be;
            }
        }
    }
    out
}

/// Everything a backward produces, in `f64`.
#[derive(Clone, Debug)]
pub struct Backward {
    pub dx: Vec<f64>,
    pub dgamma: Vec<f64>,
    pub dbeta: Vec<f64>,
}

/// Group norm backward from saved statistics (`save_mean`, `save_invstd` per (n, g)):
/// `xhat = (x - mean) * invstd`, `g_i = dy_i * gamma[c_i]`,
/// `dx = invstd * (g - mean(g) - xhat * mean(g * xhat))` over each group's values,
/// `dgamma[c] = sum(dy * xhat)`, `dbeta[c] = sum(dy)`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    shape: &Shape,
    groups: usize,
    x: &[f32],
    dy: &[f32],
    gamma: Option<&[f32]>,
    save_mean: &[f64],
    save_invstd: &[f64],
) -> Backward {
    let len = shape.batch * shape.channels * shape.spatial;
    let mut out = Backward {
        dx: vec![0.0; len],
        dgamma: vec![0.0; shape.channels],
        dbeta: vec![0.0; shape.channels],
    };
    for n in 0..shape.batch {
        for g in 0..groups {
            let k = n * groups + g;
            let (mean, invstd) = (save_mean[k], save_invstd[k]);
            let members = group_indices(shape, groups, n, g);
            let count = members.len() as f64;
            let ga = |c: usize| gamma.map_or(1.0, |v| v[c] as f64);
            let xhat = |i: usize| (x[i] as f64 - mean) * invstd;
            let mut mean_g = 0.0;
            let mut mean_gx = 0.0;
            for &(c, i) in &members {
                let gi = dy[i] as f64 * ga(c);
                mean_g += gi;
                mean_gx += gi * xhat(i);
                out.dgamma[c] += dy[i] as f64 * xhat(i);
                out.dbeta[c] += dy[i] as f64;
            }
            mean_g /= count;
            mean_gx /= count;
            for &(c, i) in &members {
                let gi = dy[i] as f64 * ga(c);
                out.dx[i] = invstd * (gi - mean_g - xhat(i) * mean_gx);
            }
        }
    }
    out
}

/// The loss `sum(w * y)` of a forward, for finite differences of the reference backward (in
/// `f64` throughout: the inputs are `f64` values).
#[allow(clippy::too_many_arguments)]
pub fn loss(
    shape: &Shape,
    groups: usize,
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    eps: f64,
    w: &[f64],
) -> f64 {
    let mut total = 0.0;
    for n in 0..shape.batch {
        for g in 0..groups {
            let members = group_indices(shape, groups, n, g);
            let count = members.len() as f64;
            let mean = members.iter().map(|&(_, i)| x[i]).sum::<f64>() / count;
            let var = members
                .iter()
                .map(|&(_, i)| (x[i] - mean).powi(2))
                .sum::<f64>()
                / count;
            let invstd = 1.0 / (var + eps).sqrt();
            for &(c, i) in &members {
                total += w[i] * (gamma[c] * (x[i] - mean) * invstd + beta[c]);
            }
        }
    }
    total
}
