//! RMS normalization.
//!
//! A `rows x cols` matrix, each row contiguous: `y = x * invrms * gamma[j]`,
//! `invrms = 1 / sqrt(mean(x^2) + eps)` per row, with `gamma` (optional) of length `cols` and
//! `save_invrms` (optional) of length `rows`. As for layer norm, a call with `cols = 0` writes
//! nothing, and a backward over zero rows writes zeros to `dgamma`.

pub use super::layernorm::{
    BackwardIo, Dtype, RowData, RowDataMut, RowInput, RowNormIo, RowTarget, Rows, RowsMut,
};

use super::layernorm::{
    RowsCall, check_backward_lens, check_forward, check_sizes, rows_backward, rows_forward,
    rows_forward_io,
};
use crate::batchnorm::Affine;
use crate::context::Context;
use crate::error::{Result, check_len};
use crate::io::InOut;
use crate::simd::element::Element;

/// RMS norm forward; saves each row's `invrms` where asked.
///
/// `x` and `y` are `f32`, `bf16` or `f16`: inputs are widened exactly, each output is the `f32`
/// result rounded once to the type; `save_invrms` is that of the `f32` call on the widened input.
pub fn forward<E: Element>(
    ctx: &Context,
    rows: usize,
    cols: usize,
    io: InOut<'_, E>,
    gamma: Option<&[f32]>,
    eps: f32,
    save_invrms: Option<&mut [f32]>,
) -> Result<()> {
    let n = check_forward(rows, cols, eps)?;
    check_len("x", io.input(), n)?;
    if let Some(g) = gamma {
        check_len("gamma", g, cols)?;
    }
    if let Some(s) = save_invrms.as_deref() {
        check_len("save_invrms", s, rows)?;
    }
    rows_forward(
        ctx,
        RowsCall {
            rows,
            cols,
            centered: false,
            eps,
        },
        io,
        Affine { gamma, beta: None },
        None,
        save_invrms,
    );
    Ok(())
}

/// RMS norm over strided rows of mixed types (see [`super::layernorm::forward_rows`] and
/// [`RowNormIo`]); saves each row's `invrms` where asked.
pub fn forward_rows(
    ctx: &Context,
    rows: usize,
    cols: usize,
    io: RowNormIo<'_>,
    gamma: Option<&[f32]>,
    eps: f32,
    save_invrms: Option<&mut [f32]>,
) -> Result<()> {
    rows_forward_io(
        ctx,
        RowsCall {
            rows,
            cols,
            centered: false,
            eps,
        },
        io,
        Affine { gamma, beta: None },
        None,
        save_invrms,
    )
}

/// RMS norm backward from the saved `invrms`: `dx` (if `grad` is [`BackwardIo::WithDx`]) and
/// `dgamma = sum over rows of dy * x * invrms` (optional). A row whose saved `invrms` is `+inf`
/// is taken as the layer-norm backward takes one whose `invstd` is (see
/// [`super::layernorm::backward`]).
///
/// `x`, `dy` and `dx` are `f32`, `bf16` or `f16` (all of one type): `dx` is the `f32` result on
/// the widened inputs rounded once to the type; `dgamma` is that of the `f32` call.
#[allow(clippy::too_many_arguments)]
pub fn backward<E: Element>(
    ctx: &Context,
    rows: usize,
    cols: usize,
    x: &[E],
    grad: BackwardIo<'_, E>,
    gamma: Option<&[f32]>,
    save_invrms: &[f32],
    dgamma: Option<&mut [f32]>,
) -> Result<()> {
    let n = check_sizes(rows, cols)?;
    check_backward_lens(cols, n, x, &grad, gamma)?;
    check_len("save_invrms", save_invrms, rows)?;
    if let Some(d) = dgamma.as_deref() {
        check_len("dgamma", d, cols)?;
    }
    rows_backward(
        ctx,
        rows,
        cols,
        x,
        grad,
        gamma,
        None,
        save_invrms,
        dgamma,
        None,
    );
    Ok(())
}
