//! Plain float64 reference of layer norm, RMS norm and weight standardization: straight loops
//! over the definitions, two passes for the statistics.

// Index loops follow the definitions most directly.
#![allow(clippy::needless_range_loop)]

/// Forward results: the output and each row's statistics (mean 0 for RMS norm).
pub struct Forward {
    pub y: Vec<f64>,
    pub mean: Vec<f64>,
    pub inv: Vec<f64>,
}

/// Backward results, with a scale per element of `dx` (the size of the terms it is made of,
/// for tolerances) and per column of the sums (the sums of absolute values).
pub struct Backward {
    pub dx: Vec<f64>,
    pub dx_scale: Vec<f64>,
    pub dgamma: Vec<f64>,
    pub dgamma_scale: Vec<f64>,
    pub dbeta: Vec<f64>,
    pub dbeta_scale: Vec<f64>,
}

fn at(v: Option<&[f32]>, j: usize, neutral: f64) -> f64 {
    v.map_or(neutral, |v| v[j] as f64)
}

/// Layer norm (`centered`) or RMS norm forward over `rows` rows of `cols` values.
pub fn forward(
    rows: usize,
    cols: usize,
    x: &[f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
    centered: bool,
) -> Forward {
    let mut out = Forward {
        y: vec![0.0; rows * cols],
        mean: vec![0.0; rows],
        inv: vec![0.0; rows],
    };
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let n = cols as f64;
        let mean = if centered {
            row.iter().map(|&v| v as f64).sum::<f64>() / n
        } else {
            0.0
        };
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let inv = 1.0 / (var + eps as f64).sqrt();
        out.mean[r] = mean;
        out.inv[r] = inv;
        for j in 0..cols {
            let xhat = (row[j] as f64 - mean) * inv;
            out.y[r * cols + j] = xhat * at(gamma, j, 1.0) + at(beta, j, 0.0);
        }
    }
    out
}

/// Layer norm (`centered`) or RMS norm backward with the given statistics (`mean` ignored for
/// RMS norm).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    rows: usize,
    cols: usize,
    x: &[f32],
    dy: &[f32],
    gamma: Option<&[f32]>,
    mean: &[f64],
    inv: &[f64],
    centered: bool,
) -> Backward {
    let mut out = Backward {
        dx: vec![0.0; rows * cols],
        dx_scale: vec![0.0; rows * cols],
        dgamma: vec![0.0; cols],
        dgamma_scale: vec![0.0; cols],
        dbeta: vec![0.0; cols],
        dbeta_scale: vec![0.0; cols],
    };
    let n = cols as f64;
    for r in 0..rows {
        let m = if centered { mean[r] } else { 0.0 };
        let s = inv[r];
        let xhat: Vec<f64> = (0..cols)
            .map(|j| (x[r * cols + j] as f64 - m) * s)
            .collect();
        let dyr: Vec<f64> = (0..cols).map(|j| dy[r * cols + j] as f64).collect();
        let g: Vec<f64> = (0..cols).map(|j| dyr[j] * at(gamma, j, 1.0)).collect();
        let mg = if centered {
            g.iter().sum::<f64>() / n
        } else {
            0.0
        };
        let mgx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / n;
        let abs_g = g.iter().map(|v| v.abs()).sum::<f64>() / n;
        let abs_gx = g.iter().zip(&xhat).map(|(a, b)| (a * b).abs()).sum::<f64>() / n;
        for j in 0..cols {
            out.dx[r * cols + j] = s * (g[j] - mg - xhat[j] * mgx);
            out.dx_scale[r * cols + j] = s.abs() * (g[j].abs() + abs_g + xhat[j].abs() * abs_gx);
            out.dgamma[j] += dyr[j] * xhat[j];
            out.dgamma_scale[j] += (dyr[j] * xhat[j]).abs();
            out.dbeta[j] += dyr[j];
            out.dbeta_scale[j] += dyr[j].abs();
        }
    }
    out
}

/// `sum(dy * y)` for the forward of `x` with the given parameters: the loss whose gradient the
/// backward computes, for finite differences (in `f64` throughout).
#[allow(clippy::too_many_arguments)]
pub fn loss(
    rows: usize,
    cols: usize,
    x: &[f64],
    dy: &[f64],
    gamma: &[f64],
    beta: &[f64],
    eps: f64,
    centered: bool,
) -> f64 {
    let mut total = 0.0;
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let n = cols as f64;
        let mean = if centered {
            row.iter().sum::<f64>() / n
        } else {
            0.0
        };
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let inv = 1.0 / (var + eps).sqrt();
        for j in 0..cols {
            total += dy[r * cols + j] * ((row[j] - mean) * inv * gamma[j] + beta[j]);
        }
    }
    total
}
