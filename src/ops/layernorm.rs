//! Layer normalization and weight standardization.
//!
//! A `rows x cols` matrix, each row contiguous: every row is normalized with its own mean and
//! biased variance, `y = (x - mean) * invstd * gamma[j] + beta[j]`, `invstd = 1 / sqrt(var +
//! eps)`, with `gamma`, `beta` (optional) of length `cols` and the saved statistics (optional) of
//! length `rows`. Weight standardization is the same map without `gamma` and `beta` over the
//! `c_out` rows of `fan_in` weights of a layer.
//!
//! Rows of zero columns have no statistics: a call with `cols = 0` writes nothing (no saved
//! statistics either). A backward over zero rows writes zeros to `dgamma` and `dbeta`.

use super::TASK_ELEMENTS;
use crate::batchnorm::{Affine, SavedStats};
use crate::context::Context;
use crate::error::{Result, check_eps, check_len};
pub use crate::io::BackwardIo;
use crate::io::{InOut, RowIo, SharedIo};
use crate::kernels::rownorm::{
    ColumnPass, ColumnSums, GradIo, ROW_BLOCK, RowsBackward, RowsForward,
};
use crate::shape::checked_elements;
use crate::simd::element::Element;
use crate::simd::{SupportedIsa, dispatch};

/// Rows of at most this many columns get their `dgamma`, `dbeta` partial sums in the same pass
/// as `dx` (one `f64` accumulator per column and task); wider rows sum columns in a pass of
/// their own, over column chunks.
const FUSED_SUMS_MAX_COLS: usize = 1 << 13;
/// Most `f64` column accumulators alive at once in the fused backward (16 MB of them): tasks run
/// in waves of at most `WAVE_ACCUMULATORS / cols`, merged in order.
const WAVE_ACCUMULATORS: usize = 1 << 20;
/// Columns per task of the separate column-sum pass.
const COLUMN_CHUNK: usize = 1 << 12;

// ---------------------------------------------------------------------------------------------
// Validation, in the order of the C contract: overflow, shape, argument.

/// Checks the element counts of a `rows x cols` call and of its per-row and per-column arrays;
/// returns `rows * cols`.
pub(crate) fn check_sizes(rows: usize, cols: usize) -> Result<usize> {
    checked_elements(&[rows], 4, "per-row array")?;
    checked_elements(&[cols], 4, "per-column array")?;
    checked_elements(&[rows, cols], 4, "tensor")
}

/// Checks a forward (layer norm, RMS norm, weight standardization).
pub(crate) fn check_forward(rows: usize, cols: usize, eps: f32) -> Result<usize> {
    let n = check_sizes(rows, cols)?;
    check_eps(eps)?;
    Ok(n)
}

fn check_optional(name: &str, s: Option<&[f32]>, len: usize) -> Result<()> {
    s.map_or(Ok(()), |s| check_len(name, s, len))
}

// ---------------------------------------------------------------------------------------------
// Public operations.

/// Layer norm forward: every row normalized with its own mean and biased variance, then
/// `y = xhat * gamma + beta`. Saves each row's mean and `invstd` where asked.
///
/// `x` and `y` are `f32`, `bf16` or `f16`: inputs are widened exactly, each output is the `f32`
/// result rounded once to the type; the saved statistics are those of the `f32` call on the
/// widened input.
pub fn forward<E: Element>(
    ctx: &Context,
    rows: usize,
    cols: usize,
    io: InOut<'_, E>,
    affine: Affine<'_>,
    eps: f32,
    saved: SavedStats<'_>,
) -> Result<()> {
    let n = check_forward(rows, cols, eps)?;
    check_len("x", io.input(), n)?;
    check_optional("gamma", affine.gamma, cols)?;
    check_optional("beta", affine.beta, cols)?;
    check_optional("save_mean", saved.mean.as_deref(), rows)?;
    check_optional("save_invstd", saved.invstd.as_deref(), rows)?;
    rows_forward(
        ctx,
        RowsCall {
            rows,
            cols,
            centered: true,
            eps,
        },
        io,
        affine,
        saved.mean,
        saved.invstd,
    );
    Ok(())
}

/// Layer norm backward from the saved statistics: `dx` (if `grad` is [`BackwardIo::WithDx`]),
/// `dgamma = sum over rows of dy * xhat` and `dbeta = sum over rows of dy` (each optional).
///
/// `x`, `dy` and `dx` are `f32`, `bf16` or `f16` (all of one type): `dx` is the `f32` result on
/// the widened inputs rounded once to the type; `dgamma` and `dbeta` are those of the `f32` call.
#[allow(clippy::too_many_arguments)]
pub fn backward<E: Element>(
    ctx: &Context,
    rows: usize,
    cols: usize,
    x: &[E],
    grad: BackwardIo<'_, E>,
    gamma: Option<&[f32]>,
    save_mean: &[f32],
    save_invstd: &[f32],
    dgamma: Option<&mut [f32]>,
    dbeta: Option<&mut [f32]>,
) -> Result<()> {
    let n = check_sizes(rows, cols)?;
    check_backward_lens(cols, n, x, &grad, gamma)?;
    check_len("save_mean", save_mean, rows)?;
    check_len("save_invstd", save_invstd, rows)?;
    check_optional("dgamma", dgamma.as_deref(), cols)?;
    check_optional("dbeta", dbeta.as_deref(), cols)?;
    rows_backward(
        ctx,
        rows,
        cols,
        x,
        grad,
        gamma,
        Some(save_mean),
        save_invstd,
        dgamma,
        dbeta,
    );
    Ok(())
}

/// Weight standardization: each of `c_out` rows of `fan_in` weights is standardized to mean 0
/// and scale `1 / sqrt(var + eps)` (layer norm without affine). `io` may be in place.
pub fn weight_standardize(
    ctx: &Context,
    c_out: usize,
    fan_in: usize,
    io: InOut<'_>,
    eps: f32,
) -> Result<()> {
    let n = check_forward(c_out, fan_in, eps)?;
    check_len("w", io.input(), n)?;
    rows_forward(
        ctx,
        RowsCall {
            rows: c_out,
            cols: fan_in,
            centered: true,
            eps,
        },
        io,
        Affine::default(),
        None,
        None,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The data path, shared with RMS norm.

/// Checks the lengths of a backward's inputs (`x`, `dy`: `n`; `gamma`: `cols`).
pub(crate) fn check_backward_lens<E: Element>(
    cols: usize,
    n: usize,
    x: &[E],
    grad: &BackwardIo<'_, E>,
    gamma: Option<&[f32]>,
) -> Result<()> {
    check_len("x", x, n)?;
    check_len("dy", grad.dy(), n)?;
    check_optional("gamma", gamma, cols)
}

#[derive(Clone, Copy)]
pub(crate) struct RowsCall {
    pub rows: usize,
    pub cols: usize,
    /// Layer norm (true) or RMS norm.
    pub centered: bool,
    pub eps: f32,
}

/// Rows per task: about `TASK_ELEMENTS` elements, at least one row.
fn rows_per_task(cols: usize) -> usize {
    (TASK_ELEMENTS / cols.max(1)).max(1)
}

/// A per-row output array as a value parallel tasks can share, each taking its rows.
fn share_rows<'s>(out: &'s mut Option<InOut<'_>>) -> Option<SharedIo<'s>> {
    out.as_mut().map(|o| o.share())
}

/// The rows `range` of a shared per-row output.
///
/// # Safety
/// Ranges taken by different tasks must be disjoint.
unsafe fn rows_of<'a>(
    shared: &Option<SharedIo<'a>>,
    range: std::ops::Range<usize>,
) -> Option<&'a mut [f32]> {
    // SAFETY: forwarded to the caller.
    shared.as_ref().map(|s| match unsafe { s.part(range) } {
        RowIo::InPlace(b) => b,
        RowIo::Separate(_, y) => y,
    })
}

/// The forward over all rows, in tasks of whole rows fixed by the shape.
pub(crate) fn rows_forward<E: Element>(
    ctx: &Context,
    call: RowsCall,
    mut io: InOut<'_, E>,
    affine: Affine<'_>,
    save_mean: Option<&mut [f32]>,
    save_inv: Option<&mut [f32]>,
) {
    let RowsCall {
        rows,
        cols,
        centered,
        eps,
    } = call;
    let elements = io.len();
    if elements == 0 {
        return;
    }
    let isa = ctx.supported_isa();
    let stream = super::streams::<E>(elements, usize::MAX);
    let per_task = rows_per_task(cols);
    let tasks = rows.div_ceil(per_task);
    let mut mean_out = save_mean.map(InOut::InPlace);
    let mut inv_out = save_inv.map(InOut::InPlace);
    let shared = io.share();
    let (mean_shared, inv_shared) = (share_rows(&mut mean_out), share_rows(&mut inv_out));
    ctx.for_each(elements, tasks, |k| {
        let r = k * per_task..rows.min((k + 1) * per_task);
        // SAFETY: tasks cover disjoint row ranges of the data and of the per-row outputs.
        let (part, save_mean, save_inv) = unsafe {
            (
                shared.part(r.start * cols..r.end * cols),
                rows_of(&mean_shared, r.clone()),
                rows_of(&inv_shared, r.clone()),
            )
        };
        dispatch(
            isa,
            RowsForward {
                io: part,
                cols,
                centered,
                gamma: affine.gamma,
                beta: affine.beta,
                eps,
                save_mean,
                save_inv,
                stream,
                more_after: k + 1 < tasks,
            },
        );
    });
}

/// The backward over all rows. `mean` is `None` for RMS norm.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows_backward<E: Element>(
    ctx: &Context,
    rows: usize,
    cols: usize,
    x: &[E],
    mut grad: BackwardIo<'_, E>,
    gamma: Option<&[f32]>,
    mean: Option<&[f32]>,
    inv: &[f32],
    mut dgamma: Option<&mut [f32]>,
    mut dbeta: Option<&mut [f32]>,
) {
    let elements = rows * cols;
    let want_sums = dgamma.is_some() || dbeta.is_some();
    if elements == 0 {
        // Sums over no rows are zero; rows of no columns have nothing to write.
        for out in [dgamma, dbeta].into_iter().flatten() {
            out.fill(0.0);
        }
        return;
    }
    let isa = ctx.supported_isa();
    let fused = want_sums && cols <= FUSED_SUMS_MAX_COLS;
    let per_task = rows_per_task(cols);
    let tasks = rows.div_ceil(per_task);
    let job = BackwardJob {
        isa,
        cols,
        x,
        gamma,
        mean,
        inv,
    };
    let want_dx = matches!(grad, BackwardIo::WithDx(_));
    let dy_only: &[E];
    let mut shared_holder = None;
    match &mut grad {
        BackwardIo::DyOnly(dy) => dy_only = dy,
        BackwardIo::WithDx(io) => {
            dy_only = &[];
            shared_holder = Some(io.share());
        }
    }
    let shared = shared_holder.as_ref();
    // The gradient of rows `r`.
    // SAFETY (callers): tasks take disjoint row ranges.
    let grad_of = |r: &std::ops::Range<usize>| -> GradIo<'_, E> {
        match shared {
            // SAFETY: see above.
            Some(s) => GradIo::Dx(unsafe { s.part(r.start * cols..r.end * cols) }),
            None => GradIo::Dy(&dy_only[r.start * cols..r.end * cols]),
        }
    };

    if fused {
        if tasks == 1 && rows <= ROW_BLOCK {
            // One block: its sums are the result (the general path gives the same bits).
            // On the stack for the usual widths, so small calls do not allocate.
            const STACK: usize = 2 * 2048;
            let mut stack = [0f64; STACK];
            let mut heap = Vec::new();
            let block: &mut [f64] = if 2 * cols <= STACK {
                &mut stack[..2 * cols]
            } else {
                heap.resize(2 * cols, 0.0);
                &mut heap
            };
            let (a, b) = block.split_at_mut(cols);
            let sums = ColumnSums { dy_xhat: a, dy: b };
            job.run(0..rows, grad_of(&(0..rows)), Some(sums));
            write_sums(block.iter().copied(), cols, dgamma, dbeta);
            return;
        }
        let mut total = vec![0f64; 2 * cols];
        let wave = (WAVE_ACCUMULATORS / cols).max(1);
        let mut first = 0;
        while first < tasks {
            let count = wave.min(tasks - first);
            let partials = ctx.map(elements, count, |k| {
                let k = first + k;
                let r = k * per_task..rows.min((k + 1) * per_task);
                let mut acc = vec![0f64; 2 * cols];
                let mut block = vec![0f64; 2 * cols];
                let mut b0 = r.start;
                while b0 < r.end {
                    let b = b0..r.end.min(b0 + ROW_BLOCK);
                    block.fill(0.0);
                    let (s1, s2) = block.split_at_mut(cols);
                    let sums = ColumnSums {
                        dy_xhat: s1,
                        dy: s2,
                    };
                    job.run(b.clone(), grad_of(&b), Some(sums));
                    for (a, &v) in acc.iter_mut().zip(&block) {
                        *a += v;
                    }
                    b0 = b.end;
                }
                acc
            });
            for p in &partials {
                for (t, &v) in total.iter_mut().zip(p) {
                    *t += v;
                }
            }
            first += count;
        }
        write_sums(total.into_iter(), cols, dgamma, dbeta);
        return;
    }

    if want_sums {
        // Before dx: in place, dx overwrites dy.
        let dy = match shared {
            // SAFETY: no part of the data is written until this pass is done.
            Some(s) => unsafe { s.input(0..elements) },
            None => dy_only,
        };
        let chunks = cols.div_ceil(COLUMN_CHUNK);
        let partials = ctx.map(elements, chunks, |k| {
            let c = k * COLUMN_CHUNK..cols.min((k + 1) * COLUMN_CHUNK);
            let w = c.len();
            let mut acc = vec![0f64; 2 * w];
            let mut block = vec![0f64; 2 * w];
            let mut b0 = 0;
            while b0 < rows {
                let b = b0..rows.min(b0 + ROW_BLOCK);
                block.fill(0.0);
                let (s1, s2) = block.split_at_mut(w);
                dispatch(
                    isa,
                    ColumnPass {
                        x: &x[b.start * cols..b.end * cols],
                        dy: &dy[b.start * cols..b.end * cols],
                        cols,
                        c0: c.start,
                        mean: mean.map(|m| &m[b.clone()]),
                        inv: &inv[b.clone()],
                        sums: ColumnSums {
                            dy_xhat: s1,
                            dy: s2,
                        },
                    },
                );
                for (a, &v) in acc.iter_mut().zip(&block) {
                    *a += v;
                }
                b0 = b.end;
            }
            acc
        });
        for (k, p) in partials.iter().enumerate() {
            let c = k * COLUMN_CHUNK..cols.min((k + 1) * COLUMN_CHUNK);
            let w = c.len();
            if let Some(d) = dgamma.as_deref_mut() {
                for (o, &v) in d[c.clone()].iter_mut().zip(&p[..w]) {
                    *o = v as f32;
                }
            }
            if let Some(d) = dbeta.as_deref_mut() {
                for (o, &v) in d[c].iter_mut().zip(&p[w..]) {
                    *o = v as f32;
                }
            }
        }
    }
    if want_dx {
        ctx.for_each(elements, tasks, |k| {
            let r = k * per_task..rows.min((k + 1) * per_task);
            job.run(r.clone(), grad_of(&r), None);
        });
    }
}

/// What every backward task shares.
struct BackwardJob<'p, E> {
    isa: SupportedIsa,
    cols: usize,
    x: &'p [E],
    gamma: Option<&'p [f32]>,
    mean: Option<&'p [f32]>,
    inv: &'p [f32],
}

impl<E: Element> BackwardJob<'_, E> {
    /// The backward kernel over the rows `r`.
    fn run(&self, r: std::ops::Range<usize>, grad: GradIo<'_, E>, sums: Option<ColumnSums<'_>>) {
        let cols = self.cols;
        dispatch(
            self.isa,
            RowsBackward {
                x: &self.x[r.start * cols..r.end * cols],
                grad,
                cols,
                gamma: self.gamma,
                mean: self.mean.map(|m| &m[r.clone()]),
                inv: &self.inv[r],
                sums,
            },
        );
    }
}

/// Writes the column sums `dy * xhat` (first `cols`) and `dy` (next `cols`).
fn write_sums(
    sums: impl Iterator<Item = f64>,
    cols: usize,
    mut dgamma: Option<&mut [f32]>,
    mut dbeta: Option<&mut [f32]>,
) {
    for (j, v) in sums.enumerate() {
        let out = if j < cols {
            dgamma.as_deref_mut().map(|d| &mut d[j])
        } else {
            dbeta.as_deref_mut().map(|d| &mut d[j - cols])
        };
        if let Some(o) = out {
            *o = v as f32;
        }
    }
}
