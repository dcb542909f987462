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
pub use crate::batchnorm::{Affine, SavedStats};
use crate::context::Context;
use crate::error::{Error, Result, check_eps, check_len};
pub use crate::io::{
    BackwardIo, Dtype, RowData, RowDataMut, RowInput, RowNormIo, RowTarget, Rows, RowsMut,
};
use crate::io::{InOut, RowIo, SharedIo, StridedRows, extent};
use crate::kernels::rownorm::{
    ColumnPass, ColumnSums, GradIo, ROW_BLOCK, RecomputeStats, RowStats, RowTensors, RowsBackward,
    RowsForward,
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

/// Layer norm over strided rows of mixed types, as transformer blocks call it: `h = (x +
/// residual) + bias` is normalized (see [`RowNormIo`]), optionally storing the sum, with `y` of
/// any [`Dtype`] (I8: quantized per row, scales in `io.y_scale`). Saves each row's mean and
/// `invstd` where asked.
///
/// With packed rows, no residual, bias or sum, this is bitwise [`forward`] (for `x` and `y` of
/// one type); with a sum it is bitwise storing the sum, then [`forward`] on it.
pub fn forward_rows(
    ctx: &Context,
    rows: usize,
    cols: usize,
    io: RowNormIo<'_>,
    affine: Affine<'_>,
    eps: f32,
    saved: SavedStats<'_>,
) -> Result<()> {
    rows_forward_io(
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
    )
}

/// Layer norm backward from the saved statistics: `dx` (if `grad` is [`BackwardIo::WithDx`]),
/// `dgamma = sum over rows of dy * xhat` and `dbeta = sum over rows of dy` (each optional).
///
/// A row whose saved `invstd` is `+inf` is one whose inverse spread exceeds the largest `f32`
/// (values far below 1 with `eps = 0`; no positive `eps` allows it), which the forward
/// normalized in `f64`: the backward recomputes the forward's `f64` mean and inverse spread of
/// the row from `x` and computes its gradient in `f64`, so that it is finite where the exact
/// gradient is.
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

/// The forward over packed rows of one element type (the plain functions and their twins).
pub(crate) fn rows_forward<E: Element>(
    ctx: &Context,
    call: RowsCall,
    mut io: InOut<'_, E>,
    affine: Affine<'_>,
    save_mean: Option<&mut [f32]>,
    save_inv: Option<&mut [f32]>,
) {
    let (rows, cols) = (call.rows, call.cols);
    let (x, y, y_is_x) = match &mut io {
        InOut::Separate { x, y } => (
            StridedRows::from_read(E::data(x), rows, cols, cols),
            StridedRows::from_write(E::data_mut(y), rows, cols, cols),
            false,
        ),
        InOut::InPlace(b) => {
            let b = StridedRows::from_write(E::data_mut(b), rows, cols, cols);
            (b, b, true)
        }
    };
    let tensors = row_tensors(ctx.threads(), x, None, None, None, y, y_is_x);
    run_rows(ctx, call, &tensors, affine, save_mean, save_inv, None);
}

/// The tensors of a call, with their streaming stores chosen from them (see
/// [`super::streams_bytes`]): outputs stream when the bytes of the call's distinct tensors (an
/// output that replaces an input counted once) exceed what the caches of its `threads` cores
/// hold.
fn row_tensors<'a>(
    threads: usize,
    x: StridedRows<'a>,
    residual: Option<StridedRows<'a>>,
    bias: Option<&'a [f32]>,
    sum: Option<StridedRows<'a>>,
    y: StridedRows<'a>,
    y_is_x: bool,
) -> RowTensors<'a> {
    let sum_new = sum.filter(|s| !s.same(&x) && !residual.is_some_and(|r| s.same(&r)));
    let footprint = [Some(x), residual, sum_new, (!y_is_x).then_some(y)]
        .iter()
        .flatten()
        .map(StridedRows::bytes)
        .fold(0, usize::saturating_add);
    let cols = x.cols();
    let stream = |t: &StridedRows<'_>| {
        let run = if t.stride() == cols { usize::MAX } else { cols };
        // Quantized rows are written by 8- or 16-byte stores, never streamed.
        t.dtype() != Dtype::I8 && super::streams_bytes(footprint, run, threads)
    };
    RowTensors {
        x,
        residual,
        bias,
        stream_y: stream(&y),
        stream_sum: sum.as_ref().is_some_and(stream),
        sum,
        y,
        y_is_x,
    }
}

/// One tensor of a row-norm call, for the checks: its type (`None`: a value outside the enum,
/// from C) and stride (0: `cols`).
#[derive(Clone, Copy)]
pub(crate) struct TensorSpec {
    pub name: &'static str,
    pub dtype: Option<Dtype>,
    pub stride: usize,
}

impl TensorSpec {
    /// The stride in elements (`cols` for 0).
    pub(crate) fn stride_for(&self, cols: usize) -> usize {
        if self.stride == 0 { cols } else { self.stride }
    }

    /// Elements the rows span (`usize::MAX` on overflow, which the checks report first).
    pub(crate) fn extent(&self, rows: usize, cols: usize) -> usize {
        extent(rows, cols, self.stride_for(cols)).unwrap_or(usize::MAX)
    }
}

/// Checks a row-norm call in the contract's order: sizes and every tensor's extent (overflow),
/// strides (shape), `eps` and the types (argument: I8 only for `y`). `specs` are those of x,
/// residual, sum and y, `None` for a tensor not given.
pub(crate) fn check_rows(
    rows: usize,
    cols: usize,
    eps: f32,
    specs: [Option<TensorSpec>; 4],
) -> Result<()> {
    let specs = specs.iter().flatten();
    check_sizes(rows, cols)?;
    for s in specs.clone() {
        let n = extent(rows, cols, s.stride_for(cols))
            .ok_or_else(|| Error::overflow(format!("the extent of {} overflows", s.name)))?;
        checked_elements(&[n], s.dtype.map_or(4, Dtype::bytes), s.name)?;
    }
    for s in specs.clone() {
        if s.stride != 0 && s.stride < cols {
            return Err(Error::bad_shape(format!(
                "{} has stride {} below cols {cols}",
                s.name, s.stride
            )));
        }
    }
    check_eps(eps)?;
    for s in specs {
        match s.dtype {
            None => return Err(Error::bad_argument(format!("unknown dtype of {}", s.name))),
            Some(Dtype::I8) if s.name != "y" => {
                return Err(Error::bad_argument(format!("{} cannot be i8", s.name)));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The forward of `forward_rows`: checks, then the tensors' rows in tasks.
pub(crate) fn rows_forward_io(
    ctx: &Context,
    call: RowsCall,
    io: RowNormIo<'_>,
    affine: Affine<'_>,
    save_mean: Option<&mut [f32]>,
    save_inv: Option<&mut [f32]>,
) -> Result<()> {
    let RowsCall { rows, cols, .. } = call;
    let RowNormIo {
        mut x,
        mut residual,
        bias,
        mut sum,
        mut y,
        y_scale,
    } = io;
    // An output over an input has the input's type and stride.
    let x_spec = input_spec("x", &x);
    let res_spec = residual.as_ref().map(|r| input_spec("residual", r));
    let target_spec = |t: &RowTarget<'_>, name| -> Result<TensorSpec> {
        let over = match t {
            RowTarget::Into(r) => return Ok(spec_mut(name, r)),
            RowTarget::X => x_spec,
            RowTarget::Residual => res_spec.ok_or_else(|| {
                Error::bad_argument(format!("{name} replaces a residual not given"))
            })?,
        };
        Ok(TensorSpec { name, ..over })
    };
    let sum_spec = sum.as_ref().map(|t| target_spec(t, "sum")).transpose()?;
    let y_spec = target_spec(&y, "y")?;
    check_rows(
        rows,
        cols,
        call.eps,
        [Some(x_spec), res_spec, sum_spec, Some(y_spec)],
    )?;
    check_min_len("x", input_len(&x), x_spec.extent(rows, cols))?;
    if let (Some(r), Some(s)) = (&residual, res_spec) {
        check_min_len("residual", input_len(r), s.extent(rows, cols))?;
    }
    if let (Some(RowTarget::Into(r)), Some(s)) = (&sum, sum_spec) {
        check_min_len("sum", r.data.len(), s.extent(rows, cols))?;
    }
    if let RowTarget::Into(r) = &y {
        check_min_len("y", r.data.len(), y_spec.extent(rows, cols))?;
    }
    check_optional("bias", bias, cols)?;
    check_optional("gamma", affine.gamma, cols)?;
    check_optional("beta", affine.beta, cols)?;
    check_optional("save_mean", save_mean.as_deref(), rows)?;
    check_optional("save_inv", save_inv.as_deref(), rows)?;
    match (&y_scale, y_spec.dtype == Some(Dtype::I8)) {
        (Some(s), true) => check_len("y_scale", s, rows)?,
        (None, false) => {}
        (None, true) => return Err(Error::bad_argument("i8 y needs y_scale")),
        (Some(_), false) => return Err(Error::bad_argument("y_scale given for a y not i8")),
    }
    // Outputs over inputs: y only over x, never together with sum; the input must be
    // writable.
    if matches!(y, RowTarget::Residual)
        || (matches!(y, RowTarget::X) && matches!(sum, Some(RowTarget::X)))
    {
        return Err(Error::alias(
            "y may replace only x, and not together with sum",
        ));
    }
    let writes_x = matches!(y, RowTarget::X) || matches!(sum, Some(RowTarget::X));
    let writes_res = matches!(sum, Some(RowTarget::Residual));
    if (writes_x && matches!(x, RowInput::Read(_)))
        || (writes_res && matches!(residual, Some(RowInput::Read(_))))
    {
        return Err(Error::bad_argument(
            "an output replaces an input given read-only (pass it as RowInput::Write)",
        ));
    }
    let x_rows = strided_input(&mut x, rows, cols, x_spec.stride_for(cols));
    let res_rows = residual
        .as_mut()
        .zip(res_spec)
        .map(|(r, s)| strided_input(r, rows, cols, s.stride_for(cols)));
    let sum_rows = sum.as_mut().zip(sum_spec).map(|(t, s)| match t {
        RowTarget::Into(r) => StridedRows::write(r, rows, cols, s.stride_for(cols)),
        RowTarget::X => x_rows,
        RowTarget::Residual => res_rows.expect("checked above"),
    });
    let y_is_x = matches!(y, RowTarget::X);
    let y_rows = match &mut y {
        RowTarget::Into(r) => StridedRows::write(r, rows, cols, y_spec.stride_for(cols)),
        _ => x_rows,
    };
    let tensors = row_tensors(
        ctx.threads(),
        x_rows,
        res_rows,
        bias,
        sum_rows,
        y_rows,
        y_is_x,
    );
    run_rows(ctx, call, &tensors, affine, save_mean, save_inv, y_scale);
    Ok(())
}

fn input_spec(name: &'static str, i: &RowInput<'_>) -> TensorSpec {
    match i {
        RowInput::Read(r) => TensorSpec {
            name,
            dtype: Some(r.data.dtype()),
            stride: r.stride,
        },
        RowInput::Write(r) => spec_mut(name, r),
    }
}

fn spec_mut(name: &'static str, r: &RowsMut<'_>) -> TensorSpec {
    TensorSpec {
        name,
        dtype: Some(r.data.dtype()),
        stride: r.stride,
    }
}

fn input_len(i: &RowInput<'_>) -> usize {
    match i {
        RowInput::Read(r) => r.data.len(),
        RowInput::Write(r) => r.data.len(),
    }
}

fn strided_input<'a>(
    i: &'a mut RowInput<'_>,
    rows: usize,
    cols: usize,
    stride: usize,
) -> StridedRows<'a> {
    match i {
        RowInput::Read(r) => StridedRows::from_read(r.data, rows, cols, stride),
        RowInput::Write(r) => StridedRows::write(r, rows, cols, stride),
    }
}

fn check_min_len(name: &str, len: usize, need: usize) -> Result<()> {
    if len >= need {
        Ok(())
    } else {
        Err(Error::bad_shape(format!(
            "{name} has {len} elements, its rows span {need}"
        )))
    }
}

/// Runs the forward over all rows, in tasks of whole rows fixed by the shape.
fn run_rows(
    ctx: &Context,
    call: RowsCall,
    tensors: &RowTensors<'_>,
    affine: Affine<'_>,
    save_mean: Option<&mut [f32]>,
    save_inv: Option<&mut [f32]>,
    y_scale: Option<&mut [f32]>,
) {
    let RowsCall {
        rows,
        cols,
        centered,
        eps,
    } = call;
    let elements = rows * cols;
    if elements == 0 {
        return;
    }
    let isa = ctx.supported_isa();
    let per_task = rows_per_task(cols);
    let tasks = rows.div_ceil(per_task);
    let mut mean_out = save_mean.map(InOut::InPlace);
    let mut inv_out = save_inv.map(InOut::InPlace);
    let mut scale_out = y_scale.map(InOut::InPlace);
    let (mean_shared, inv_shared, scale_shared) = (
        share_rows(&mut mean_out),
        share_rows(&mut inv_out),
        share_rows(&mut scale_out),
    );
    ctx.for_each(elements, tasks, |k| {
        let r = k * per_task..rows.min((k + 1) * per_task);
        // SAFETY: tasks cover disjoint row ranges of the per-row outputs.
        let (save_mean, save_inv, y_scale) = unsafe {
            (
                rows_of(&mean_shared, r.clone()),
                rows_of(&inv_shared, r.clone()),
                rows_of(&scale_shared, r.clone()),
            )
        };
        dispatch(
            isa,
            RowsForward {
                t: tensors,
                rows: r,
                centered,
                gamma: affine.gamma,
                beta: affine.beta,
                eps,
                save_mean,
                save_inv,
                y_scale,
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
    let exact = overflowed_rows(ctx, rows, cols, x, mean.is_some(), inv);
    let exact = &exact[..];
    let job = BackwardJob {
        isa,
        cols,
        x,
        gamma,
        mean,
        inv,
        exact,
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
                        exact: exact.get(b.clone()).unwrap_or_default(),
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

/// The forward's statistics of the rows whose saved inverse spread is `+inf` (index: row;
/// other rows' entries unused), or nothing if no row's is (the usual case: one scan of the
/// saved values). Such a row was normalized with `f64` statistics that its saved `f32` ones
/// cannot represent (see [`RecomputeStats`]): they are recomputed from `x`, in tasks of whole
/// rows.
fn overflowed_rows<E: Element>(
    ctx: &Context,
    rows: usize,
    cols: usize,
    x: &[E],
    centered: bool,
    inv: &[f32],
) -> Vec<RowStats> {
    if !inv.contains(&f32::INFINITY) {
        return Vec::new();
    }
    let isa = ctx.supported_isa();
    let per_task = rows_per_task(cols);
    let parts = ctx.map(rows * cols, rows.div_ceil(per_task), |k| {
        let r = k * per_task..rows.min((k + 1) * per_task);
        let mut out = vec![RowStats::default(); r.len()];
        dispatch(
            isa,
            RecomputeStats {
                x: &x[r.start * cols..r.end * cols],
                cols,
                centered,
                inv: &inv[r],
                out: &mut out,
            },
        );
        out
    });
    parts.concat()
}

/// What every backward task shares.
struct BackwardJob<'p, E> {
    isa: SupportedIsa,
    cols: usize,
    x: &'p [E],
    gamma: Option<&'p [f32]>,
    mean: Option<&'p [f32]>,
    inv: &'p [f32],
    /// See [`overflowed_rows`].
    exact: &'p [RowStats],
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
                inv: &self.inv[r.clone()],
                exact: self.exact.get(r).unwrap_or_default(),
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
