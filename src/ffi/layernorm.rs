//! The nk_layernorm_*, nk_rmsnorm_* and nk_weight_standardize entry points: checks, then the
//! safe API of `ops::layernorm` and `ops::rmsnorm`. The layer- and RMS-norm functions have
//! `_bf16` and `_f16` twins: one generic body each, over the data's element type.

use super::library::{context, nk_context};
use super::{
    Regions, backward_io, call, in_out, nk_bf16, nk_f16, nk_status, optional, optional_mut,
    require, slice, slice_mut,
};
use crate::batchnorm::{Affine, SavedStats};
use crate::error::{Error, Result};
use crate::io::{Dtype, InOut, RowData, RowDataMut, RowInput, RowNormIo, RowTarget, Rows, RowsMut};
use crate::ops::layernorm::{self, TensorSpec, check_forward, check_rows, check_sizes};
use crate::ops::rmsnorm;
use crate::simd::element::Element;
use libc::{c_int, c_void};

/// Whether a `rows x cols` call has data (NULL data pointers are accepted when it has none).
fn has_data(rows: usize, cols: usize) -> usize {
    usize::from(rows > 0 && cols > 0)
}

/// The body of `nk_layernorm_forward` and its twins, for data of element type `E`.
///
/// # Safety
/// As `nk_layernorm_forward`, with `x` and `y` of `rows * cols` elements of `E`.
#[allow(clippy::too_many_arguments)]
unsafe fn layernorm_forward<E: Element>(
    ctx: *mut nk_context,
    rows: usize,
    cols: usize,
    x: *const E,
    y: *mut E,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
) -> nk_status {
    call(|| {
        let data = has_data(rows, cols);
        require("x", x, data)?;
        require("y", y, data)?;
        let n = check_forward(rows, cols, eps)?;
        Regions::default()
            .input("x", x, n)
            .output_replacing("y", y, n, "x")
            .input("gamma", gamma, cols)
            .input("beta", beta, cols)
            .output("save_mean", save_mean, rows)
            .output("save_invstd", save_invstd, rows)
            .check()?;
        // SAFETY: pointers checked above (NULL, alignment, overlap); extents are the caller's
        // promise.
        unsafe {
            layernorm::forward(
                context(ctx),
                rows,
                cols,
                in_out(x, y, n),
                Affine {
                    gamma: optional(gamma, cols),
                    beta: optional(beta, cols),
                },
                eps,
                SavedStats {
                    mean: optional_mut(save_mean, rows),
                    invstd: optional_mut(save_invstd, rows),
                },
            )
        }
    })
}

/// Layer norm forward over `rows` rows of `cols` contiguous floats: each row normalized with its
/// own mean and biased variance `var`, `y = (x - mean) / sqrt(var + eps) * gamma[j] + beta[j]`.
/// - x, y: rows*cols floats (NULL when rows*cols == 0); `y == x` is in place.
/// - gamma, beta (cols floats): optional, NULL = 1, 0. save_mean, save_invstd (rows floats):
///   optional, receive each row's mean and `1 / sqrt(var + eps)`.
/// - eps finite and >= 0. With `cols == 0` nothing is written (no saves either).
///
/// # Safety
/// Every non-NULL pointer is valid for its extent (x, y: rows*cols floats; gamma, beta: cols;
/// save_mean, save_invstd: rows).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_layernorm_forward(
    ctx: *mut nk_context,
    rows: usize,
    cols: usize,
    x: *const f32,
    y: *mut f32,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
) -> nk_status {
    // SAFETY: forwarded to the caller.
    unsafe {
        layernorm_forward(
            ctx,
            rows,
            cols,
            x,
            y,
            gamma,
            beta,
            eps,
            save_mean,
            save_invstd,
        )
    }
}

/// `nk_layernorm_forward` on bf16 data (bfloat16): `x` and `y` are nk_bf16 (2-byte aligned; overlap
/// is checked in bytes). Each input element is widened to float exactly; each element of `y` is the
/// float function's result rounded once to nearest even; the saved statistics are bitwise the float
/// function's on the widened data. Every other argument, rule and status as there.
///
/// # Safety
/// As `nk_layernorm_forward`, with x, y: rows*cols bf16 values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_layernorm_forward_bf16(
    ctx: *mut nk_context,
    rows: usize,
    cols: usize,
    x: *const nk_bf16,
    y: *mut nk_bf16,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
) -> nk_status {
    // SAFETY: forwarded to the caller; nk_bf16 and bf16 have the same layout (one u16).
    unsafe {
        layernorm_forward(
            ctx,
            rows,
            cols,
            x.cast::<crate::bf16>(),
            y.cast::<crate::bf16>(),
            gamma,
            beta,
            eps,
            save_mean,
            save_invstd,
        )
    }
}

/// `nk_layernorm_forward` on f16 data (IEEE binary16): `x` and `y` are nk_f16 (2-byte aligned;
/// overlap is checked in bytes). Each input element is widened to float exactly; each element of
/// `y` is the float function's result rounded once to nearest even; the saved statistics are
/// bitwise the float function's on the widened data. Every other argument, rule and status as
/// there.
///
/// # Safety
/// As `nk_layernorm_forward`, with x, y: rows*cols f16 values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_layernorm_forward_f16(
    ctx: *mut nk_context,
    rows: usize,
    cols: usize,
    x: *const nk_f16,
    y: *mut nk_f16,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
) -> nk_status {
    // SAFETY: forwarded to the caller; nk_f16 and f16 have the same layout (one u16).
    unsafe {
        layernorm_forward(
            ctx,
            rows,
            cols,
            x.cast::<crate::f16>(),
            y.cast::<crate::f16>(),
            gamma,
            beta,
            eps,
            save_mean,
            save_invstd,
        )
    }
}

/// The body of `nk_layernorm_backward` and its twins, for data of element type `E`.
///
/// # Safety
/// As `nk_layernorm_backward`, with `x`, `dy`, `dx` of `rows * cols` elements of `E`.
#[allow(clippy::too_many_arguments)]
unsafe fn layernorm_backward<E: Element>(
    ctx: *mut nk_context,
    rows: usize,
    cols: usize,
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
        let data = has_data(rows, cols);
        require("x", x, data)?;
        require("dy", dy, data)?;
        require("save_mean", save_mean, rows)?;
        require("save_invstd", save_invstd, rows)?;
        let n = check_sizes(rows, cols)?;
        Regions::default()
            .input("x", x, n)
            .input("dy", dy, n)
            .output_replacing("dx", dx, n, "dy")
            .input("gamma", gamma, cols)
            .input("save_mean", save_mean, rows)
            .input("save_invstd", save_invstd, rows)
            .output("dgamma", dgamma, cols)
            .output("dbeta", dbeta, cols)
            .check()?;
        // SAFETY: pointers checked above; extents are the caller's promise.
        unsafe {
            layernorm::backward(
                context(ctx),
                rows,
                cols,
                slice(x, n),
                backward_io(dy, dx, n),
                optional(gamma, cols),
                slice(save_mean, rows),
                slice(save_invstd, rows),
                optional_mut(dgamma, cols),
                optional_mut(dbeta, cols),
            )
        }
    })
}

/// Layer norm backward from the saved statistics. Per row, with
/// `xhat = (x - save_mean) * save_invstd`, `g = dy * gamma[j]` and means over the row:
/// `dx = save_invstd * (g - mean(g) - xhat * mean(g * xhat))`; per column, over the rows,
/// `dgamma = sum(dy * xhat)` and `dbeta = sum(dy)`.
/// - x, dy: rows*cols floats (NULL when rows*cols == 0). save_mean, save_invstd (rows floats):
///   required. gamma (cols floats): optional, NULL = 1.
/// - dx (rows*cols floats), dgamma, dbeta (cols floats; zeros when rows == 0): each optional.
///   Only `dx == dy` is in place (dx over x: NK_ERR_ALIAS).
/// - A row whose `save_invstd` is `+inf` (what the forward saves when the inverse spread exceeds
///   the float range: values far below 1 with `eps == 0`) takes the forward's double statistics,
///   recomputed from `x`, and its gradient in double, as the forward normalized it.
///
/// # Safety
/// As `nk_layernorm_forward`; dy, dx: rows*cols floats; dgamma, dbeta: cols.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_layernorm_backward(
    ctx: *mut nk_context,
    rows: usize,
    cols: usize,
    x: *const f32,
    dy: *const f32,
    dx: *mut f32,
    gamma: *const f32,
    save_mean: *const f32,
    save_invstd: *const f32,
    dgamma: *mut f32,
    dbeta: *mut f32,
) -> nk_status {
    // SAFETY: forwarded to the caller.
    unsafe {
        layernorm_backward(
            ctx,
            rows,
            cols,
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

/// `nk_layernorm_backward` on bf16 data (bfloat16): `x`, `dy` and `dx` are nk_bf16 (2-byte aligned;
/// overlap is checked in bytes). Each input element is widened to float exactly; each element of
/// `dx` is the float function's result rounded once to nearest even; `dgamma` and `dbeta` are
/// bitwise the float function's on the widened data. Every other argument, rule and status as
/// there.
///
/// # Safety
/// As `nk_layernorm_backward`, with x, dy, dx: rows*cols bf16 values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_layernorm_backward_bf16(
    ctx: *mut nk_context,
    rows: usize,
    cols: usize,
    x: *const nk_bf16,
    dy: *const nk_bf16,
    dx: *mut nk_bf16,
    gamma: *const f32,
    save_mean: *const f32,
    save_invstd: *const f32,
    dgamma: *mut f32,
    dbeta: *mut f32,
) -> nk_status {
    // SAFETY: forwarded to the caller; nk_bf16 and bf16 have the same layout (one u16).
    unsafe {
        layernorm_backward(
            ctx,
            rows,
            cols,
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

/// `nk_layernorm_backward` on f16 data (IEEE binary16): `x`, `dy` and `dx` are nk_f16 (2-byte
/// aligned; overlap is checked in bytes). Each input element is widened to float exactly; each
/// element of `dx` is the float function's result rounded once to nearest even; `dgamma` and
/// `dbeta` are bitwise the float function's on the widened data. Every other argument, rule and
/// status as there.
///
/// # Safety
/// As `nk_layernorm_backward`, with x, dy, dx: rows*cols f16 values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_layernorm_backward_f16(
    ctx: *mut nk_context,
    rows: usize,
    cols: usize,
    x: *const nk_f16,
    dy: *const nk_f16,
    dx: *mut nk_f16,
    gamma: *const f32,
    save_mean: *const f32,
    save_invstd: *const f32,
    dgamma: *mut f32,
    dbeta: *mut f32,
) -> nk_status {
    // SAFETY: forwarded to the caller; nk_f16 and f16 have the same layout (one u16).
    unsafe {
        layernorm_backward(
            ctx,
            rows,
            cols,
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

/// The body of `nk_rmsnorm_forward` and its twins, for data of element type `E`.
///
/// # Safety
/// As `nk_rmsnorm_forward`, with `x` and `y` of `rows * cols` elements of `E`.
#[allow(clippy::too_many_arguments)]
unsafe fn rmsnorm_forward<E: Element>(
    ctx: *mut nk_context,
    rows: usize,
    cols: usize,
    x: *const E,
    y: *mut E,
    gamma: *const f32,
    eps: f32,
    save_invrms: *mut f32,
) -> nk_status {
    call(|| {
        let data = has_data(rows, cols);
        require("x", x, data)?;
        require("y", y, data)?;
        let n = check_forward(rows, cols, eps)?;
        Regions::default()
            .input("x", x, n)
            .output_replacing("y", y, n, "x")
            .input("gamma", gamma, cols)
            .output("save_invrms", save_invrms, rows)
            .check()?;
        // SAFETY: pointers checked above; extents are the caller's promise.
        unsafe {
            rmsnorm::forward(
                context(ctx),
                rows,
                cols,
                in_out(x, y, n),
                optional(gamma, cols),
                eps,
                optional_mut(save_invrms, rows),
            )
        }
    })
}

/// RMS norm forward over `rows` rows of `cols` contiguous floats: `y = x * invrms * gamma[j]`,
/// `invrms = 1 / sqrt(mean(x^2) + eps)` per row (0 for a row holding an infinity and no NaN).
/// - x, y: rows*cols floats (NULL when rows*cols == 0); `y == x` is in place.
/// - gamma (cols floats): optional, NULL = 1. save_invrms (rows floats): optional, receives each
///   row's invrms.
/// - eps finite and >= 0. With `cols == 0` nothing is written.
///
/// # Safety
/// As `nk_layernorm_forward`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_rmsnorm_forward(
    ctx: *mut nk_context,
    rows: usize,
    cols: usize,
    x: *const f32,
    y: *mut f32,
    gamma: *const f32,
    eps: f32,
    save_invrms: *mut f32,
) -> nk_status {
    // SAFETY: forwarded to the caller.
    unsafe { rmsnorm_forward(ctx, rows, cols, x, y, gamma, eps, save_invrms) }
}

/// `nk_rmsnorm_forward` on bf16 data (bfloat16): `x` and `y` are nk_bf16 (2-byte aligned; overlap
/// is checked in bytes). Each input element is widened to float exactly; each element of `y` is the
/// float function's result rounded once to nearest even; `save_invrms` is bitwise the float
/// function's on the widened data. Every other argument, rule and status as there.
///
/// # Safety
/// As `nk_rmsnorm_forward`, with x, y: rows*cols bf16 values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_rmsnorm_forward_bf16(
    ctx: *mut nk_context,
    rows: usize,
    cols: usize,
    x: *const nk_bf16,
    y: *mut nk_bf16,
    gamma: *const f32,
    eps: f32,
    save_invrms: *mut f32,
) -> nk_status {
    // SAFETY: forwarded to the caller; nk_bf16 and bf16 have the same layout (one u16).
    unsafe {
        rmsnorm_forward(
            ctx,
            rows,
            cols,
            x.cast::<crate::bf16>(),
            y.cast::<crate::bf16>(),
            gamma,
            eps,
            save_invrms,
        )
    }
}

/// `nk_rmsnorm_forward` on f16 data (IEEE binary16): `x` and `y` are nk_f16 (2-byte aligned;
/// overlap is checked in bytes). Each input element is widened to float exactly; each element of
/// `y` is the float function's result rounded once to nearest even; `save_invrms` is bitwise the
/// float function's on the widened data. Every other argument, rule and status as there.
///
/// # Safety
/// As `nk_rmsnorm_forward`, with x, y: rows*cols f16 values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_rmsnorm_forward_f16(
    ctx: *mut nk_context,
    rows: usize,
    cols: usize,
    x: *const nk_f16,
    y: *mut nk_f16,
    gamma: *const f32,
    eps: f32,
    save_invrms: *mut f32,
) -> nk_status {
    // SAFETY: forwarded to the caller; nk_f16 and f16 have the same layout (one u16).
    unsafe {
        rmsnorm_forward(
            ctx,
            rows,
            cols,
            x.cast::<crate::f16>(),
            y.cast::<crate::f16>(),
            gamma,
            eps,
            save_invrms,
        )
    }
}

/// The body of `nk_rmsnorm_backward` and its twins, for data of element type `E`.
///
/// # Safety
/// As `nk_rmsnorm_backward`, with `x`, `dy`, `dx` of `rows * cols` elements of `E`.
#[allow(clippy::too_many_arguments)]
unsafe fn rmsnorm_backward<E: Element>(
    ctx: *mut nk_context,
    rows: usize,
    cols: usize,
    x: *const E,
    dy: *const E,
    dx: *mut E,
    gamma: *const f32,
    save_invrms: *const f32,
    dgamma: *mut f32,
) -> nk_status {
    call(|| {
        let data = has_data(rows, cols);
        require("x", x, data)?;
        require("dy", dy, data)?;
        require("save_invrms", save_invrms, rows)?;
        let n = check_sizes(rows, cols)?;
        Regions::default()
            .input("x", x, n)
            .input("dy", dy, n)
            .output_replacing("dx", dx, n, "dy")
            .input("gamma", gamma, cols)
            .input("save_invrms", save_invrms, rows)
            .output("dgamma", dgamma, cols)
            .check()?;
        // SAFETY: pointers checked above; extents are the caller's promise.
        unsafe {
            rmsnorm::backward(
                context(ctx),
                rows,
                cols,
                slice(x, n),
                backward_io(dy, dx, n),
                optional(gamma, cols),
                slice(save_invrms, rows),
                optional_mut(dgamma, cols),
            )
        }
    })
}

/// RMS norm backward from the saved `save_invrms`. Per row, with `xhat = x * save_invrms`,
/// `g = dy * gamma[j]` and the mean over the row: `dx = save_invrms * (g - xhat * mean(g * xhat))`;
/// per column, over the rows, `dgamma = sum(dy * xhat)`.
/// - x, dy: rows*cols floats (NULL when rows*cols == 0). save_invrms (rows floats): required.
///   gamma (cols floats): optional, NULL = 1.
/// - dx (rows*cols floats), dgamma (cols floats; zeros when rows == 0): each optional. Only
///   `dx == dy` is in place (dx over x: NK_ERR_ALIAS).
/// - A row whose `save_invrms` is `+inf` is taken as `nk_layernorm_backward` takes one whose
///   `save_invstd` is.
///
/// # Safety
/// As `nk_layernorm_backward`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_rmsnorm_backward(
    ctx: *mut nk_context,
    rows: usize,
    cols: usize,
    x: *const f32,
    dy: *const f32,
    dx: *mut f32,
    gamma: *const f32,
    save_invrms: *const f32,
    dgamma: *mut f32,
) -> nk_status {
    // SAFETY: forwarded to the caller.
    unsafe { rmsnorm_backward(ctx, rows, cols, x, dy, dx, gamma, save_invrms, dgamma) }
}

/// `nk_rmsnorm_backward` on bf16 data (bfloat16): `x`, `dy` and `dx` are nk_bf16 (2-byte aligned;
/// overlap is checked in bytes). Each input element is widened to float exactly; each element of
/// `dx` is the float function's result rounded once to nearest even; `dgamma` is bitwise the float
/// function's on the widened data. Every other argument, rule and status as there.
///
/// # Safety
/// As `nk_rmsnorm_backward`, with x, dy, dx: rows*cols bf16 values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_rmsnorm_backward_bf16(
    ctx: *mut nk_context,
    rows: usize,
    cols: usize,
    x: *const nk_bf16,
    dy: *const nk_bf16,
    dx: *mut nk_bf16,
    gamma: *const f32,
    save_invrms: *const f32,
    dgamma: *mut f32,
) -> nk_status {
    // SAFETY: forwarded to the caller; nk_bf16 and bf16 have the same layout (one u16).
    unsafe {
        rmsnorm_backward(
            ctx,
            rows,
            cols,
            x.cast::<crate::bf16>(),
            dy.cast::<crate::bf16>(),
            dx.cast::<crate::bf16>(),
            gamma,
            save_invrms,
            dgamma,
        )
    }
}

/// `nk_rmsnorm_backward` on f16 data (IEEE binary16): `x`, `dy` and `dx` are nk_f16 (2-byte
/// aligned; overlap is checked in bytes). Each input element is widened to float exactly; each
/// element of `dx` is the float function's result rounded once to nearest even; `dgamma` is bitwise
/// the float function's on the widened data. Every other argument, rule and status as there.
///
/// # Safety
/// As `nk_rmsnorm_backward`, with x, dy, dx: rows*cols f16 values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_rmsnorm_backward_f16(
    ctx: *mut nk_context,
    rows: usize,
    cols: usize,
    x: *const nk_f16,
    dy: *const nk_f16,
    dx: *mut nk_f16,
    gamma: *const f32,
    save_invrms: *const f32,
    dgamma: *mut f32,
) -> nk_status {
    // SAFETY: forwarded to the caller; nk_f16 and f16 have the same layout (one u16).
    unsafe {
        rmsnorm_backward(
            ctx,
            rows,
            cols,
            x.cast::<crate::f16>(),
            dy.cast::<crate::f16>(),
            dx.cast::<crate::f16>(),
            gamma,
            save_invrms,
            dgamma,
        )
    }
}

/// Weight standardization: each of `c_out` rows of `fan_in` weights becomes
/// `(w - mean) / sqrt(var + eps)` with the row's mean and biased variance `var`: layer norm
/// without gamma and beta, bitwise nk_layernorm_forward with NULL gamma and beta.
/// - w, w_out: c_out*fan_in floats (NULL when c_out*fan_in == 0). Only `w_out == w` is in place.
/// - eps finite and >= 0.
///
/// # Safety
/// `w`, `w_out`: c_out*fan_in floats each, unless NULL for an empty tensor.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_weight_standardize(
    ctx: *mut nk_context,
    c_out: usize,
    fan_in: usize,
    w: *const f32,
    w_out: *mut f32,
    eps: f32,
) -> nk_status {
    call(|| -> Result<()> {
        let data = has_data(c_out, fan_in);
        require("w", w, data)?;
        require("w_out", w_out, data)?;
        let n = check_forward(c_out, fan_in, eps)?;
        Regions::default()
            .input("w", w, n)
            .output_replacing("w_out", w_out, n, "w")
            .check()?;
        // SAFETY: pointers checked above; extents are the caller's promise.
        unsafe {
            let io: InOut<'_> = in_out(w, w_out, n);
            layernorm::weight_standardize(context(ctx), c_out, fan_in, io, eps)
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Row norms over strided rows of mixed types.

/// Element types of the row norms' tensors.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum nk_dtype {
    NK_DTYPE_F32 = 0,
    NK_DTYPE_BF16 = 1,
    NK_DTYPE_F16 = 2,
    /// Signed 8-bit integers: only the quantized output `y`.
    NK_DTYPE_I8 = 3,
}

/// An `nk_dtype` as passed by C: read as an integer, never transmuted.
pub type nk_dtype_value = c_int;

/// Rows of a tensor: row r starts at element `r * stride` of `data` (elements of `dtype`);
/// `stride` 0 means `cols` (packed). `data` NULL means "not given" where the tensor is optional.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct nk_rows {
    pub data: *mut c_void,
    pub dtype: nk_dtype_value,
    pub stride: usize,
}

fn dtype_of(v: nk_dtype_value) -> Option<Dtype> {
    match v {
        0 => Some(Dtype::F32),
        1 => Some(Dtype::Bf16),
        2 => Some(Dtype::F16),
        3 => Some(Dtype::I8),
        _ => None,
    }
}

/// A checked `nk_rows` of a call with `rows x cols`.
#[derive(Clone, Copy)]
struct CRows {
    name: &'static str,
    data: *mut c_void,
    dtype: Dtype,
    /// Effective stride (`cols` for 0).
    stride: usize,
    /// Elements spanned.
    extent: usize,
}

impl CRows {
    fn addr(&self) -> *const u8 {
        self.data as *const u8
    }

    /// Whether `other` is exactly this tensor (address, type and, over several rows, stride).
    fn same_as(&self, other: &CRows, rows: usize) -> bool {
        self.data == other.data
            && self.dtype == other.dtype
            && (self.stride == other.stride || rows <= 1)
    }

    /// The elements to read.
    ///
    /// # Safety
    /// `data` is valid for reads of `extent` elements of `dtype` (checked for NULL, alignment
    /// and overlap), with no writer while the result lives.
    unsafe fn read<'a>(&self) -> Rows<'a> {
        let n = self.extent;
        // SAFETY: forwarded.
        let data = unsafe {
            match self.dtype {
                Dtype::F32 => RowData::F32(slice(self.data.cast(), n)),
                Dtype::Bf16 => RowData::Bf16(slice(self.data.cast(), n)),
                Dtype::F16 => RowData::F16(slice(self.data.cast(), n)),
                Dtype::I8 => unreachable!("inputs are never i8 (checked)"),
            }
        };
        Rows::new(data, self.stride)
    }

    /// The elements to write (or read and write).
    ///
    /// # Safety
    /// As [`CRows::read`], for writes, with no other reference while the result lives.
    unsafe fn write<'a>(&self) -> RowsMut<'a> {
        let n = self.extent;
        // SAFETY: forwarded.
        let data = unsafe {
            match self.dtype {
                Dtype::F32 => RowDataMut::F32(slice_mut(self.data.cast(), n)),
                Dtype::Bf16 => RowDataMut::Bf16(slice_mut(self.data.cast(), n)),
                Dtype::F16 => RowDataMut::F16(slice_mut(self.data.cast(), n)),
                Dtype::I8 => RowDataMut::I8(slice_mut(self.data.cast(), n)),
            }
        };
        RowsMut::new(data, self.stride)
    }
}

/// The body of `nk_layernorm_forward_rows` (`centered`) and `nk_rmsnorm_forward_rows`.
///
/// # Safety
/// As those functions.
#[allow(clippy::too_many_arguments)]
unsafe fn forward_rows(
    ctx: *mut nk_context,
    rows: usize,
    cols: usize,
    tensors: [nk_rows; 4],
    bias: *const f32,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    save_mean: *mut f32,
    save_inv: *mut f32,
    y_scale: *mut f32,
    centered: bool,
) -> nk_status {
    call(|| {
        let [x, residual, sum, y] = tensors;
        let data = has_data(rows, cols);
        require("x", x.data, data)?;
        require("y", y.data, data)?;
        if y.dtype == nk_dtype::NK_DTYPE_I8 as c_int {
            require("y_scale", y_scale, data * rows)?;
        }
        // Optional tensors are absent when NULL (also when the call has no data).
        // Optional tensors are absent when NULL (also when the call has no data).
        let spec = |t: &nk_rows, name| TensorSpec {
            name,
            dtype: dtype_of(t.dtype),
            stride: t.stride,
        };
        let (x_spec, y_spec) = (spec(&x, "x"), spec(&y, "y"));
        let res_spec = (!residual.data.is_null()).then(|| spec(&residual, "residual"));
        let sum_spec = (!sum.data.is_null()).then(|| spec(&sum, "sum"));
        check_rows(
            rows,
            cols,
            eps,
            [Some(x_spec), res_spec, sum_spec, Some(y_spec)],
        )?;
        if !y_scale.is_null() && y_spec.dtype != Some(Dtype::I8) {
            return Err(Error::bad_argument("y_scale given for a y not NK_DTYPE_I8"));
        }
        // The types are known now (checked), and the extents do not overflow.
        let checked = |t: nk_rows, s: TensorSpec| CRows {
            name: s.name,
            data: t.data,
            dtype: s.dtype.unwrap_or(Dtype::F32),
            stride: s.stride_for(cols),
            extent: s.extent(rows, cols),
        };
        let x = checked(x, x_spec);
        let y = checked(y, y_spec);
        let residual = res_spec.map(|s| checked(residual, s));
        let sum = sum_spec.map(|s| checked(sum, s));
        // In place only as the contract allows: y over x, sum over x or (else) residual.
        let y_is_x = y.same_as(&x, rows);
        let sum_is_x = sum.is_some_and(|s| s.same_as(&x, rows));
        let sum_is_residual =
            !sum_is_x && sum.is_some_and(|s| residual.is_some_and(|r| s.same_as(&r, rows)));
        let mut regions = Regions::default();
        let mut add = |t: &CRows, writes, replaces| {
            let bytes = t.extent * t.dtype.bytes();
            regions.raw(t.name, t.addr(), bytes, t.dtype.bytes(), writes, replaces);
        };
        add(&x, false, None);
        if let Some(r) = &residual {
            add(r, false, None);
        }
        if let Some(s) = &sum {
            let over = if sum_is_x {
                Some("x")
            } else {
                sum_is_residual.then_some("residual")
            };
            add(s, true, over);
        }
        add(&y, true, y_is_x.then_some("x"));
        regions
            .input("bias", bias, cols)
            .input("gamma", gamma, cols)
            .input("beta", beta, cols)
            .output("save_mean", save_mean, rows)
            .output(
                if centered {
                    "save_invstd"
                } else {
                    "save_invrms"
                },
                save_inv,
                rows,
            )
            .output("y_scale", y_scale, rows)
            .check()?;
        if data == 0 {
            return Ok(());
        }
        // SAFETY: every pointer was checked above (NULL, alignment, overlap; outputs replace
        // inputs only exactly, and such an input is made writable and read through the same
        // slice); extents are the caller's promise.
        unsafe {
            let x_in = if y_is_x || sum_is_x {
                RowInput::Write(x.write())
            } else {
                RowInput::Read(x.read())
            };
            let mut io = RowNormIo::new(
                x_in,
                if y_is_x {
                    RowTarget::X
                } else {
                    RowTarget::Into(y.write())
                },
            );
            if let Some(r) = &residual {
                io = io.residual(if sum_is_residual {
                    RowInput::Write(r.write())
                } else {
                    RowInput::Read(r.read())
                });
            }
            if let Some(s) = &sum {
                io = io.sum(if sum_is_x {
                    RowTarget::X
                } else if sum_is_residual {
                    RowTarget::Residual
                } else {
                    RowTarget::Into(s.write())
                });
            }
            io.bias = optional(bias, cols);
            io.y_scale = optional_mut(y_scale, rows);
            let ctx = context(ctx);
            if centered {
                layernorm::forward_rows(
                    ctx,
                    rows,
                    cols,
                    io,
                    Affine {
                        gamma: optional(gamma, cols),
                        beta: optional(beta, cols),
                    },
                    eps,
                    SavedStats {
                        mean: optional_mut(save_mean, rows),
                        invstd: optional_mut(save_inv, rows),
                    },
                )
            } else {
                rmsnorm::forward_rows(
                    ctx,
                    rows,
                    cols,
                    io,
                    optional(gamma, cols),
                    eps,
                    optional_mut(save_inv, rows),
                )
            }
        }
    })
}

/// Layer norm as transformer engines call it: `h = (x + residual) + bias` (each widened to
/// float and added in float in that order; `residual` (`data` NULL) and `bias` (NULL, `cols`
/// floats) optional) is normalized per row, `y = (h - mean) / sqrt(var + eps) * gamma[j] + beta[j]`
/// (`gamma`, `beta`: optional, `cols` floats, NULL = 1, 0). When `sum.data` is not NULL, `h` is
/// first rounded to `sum.dtype` and stored there, and that rounded value is what gets normalized
/// (bitwise: storing the sum, then normalizing it). With `rows == 0` or `cols == 0` nothing is
/// written and the data pointers may be NULL. eps finite and >= 0.
///
/// Rows: row r of a tensor starts at element `r * stride` (`stride` 0: `cols`; below `cols`:
/// NK_ERR_BAD_SHAPE); a tensor spans `(rows - 1) * stride + cols` elements. `x`, `residual`,
/// `sum` are NK_DTYPE_F32, _BF16 or _F16; `y` any `nk_dtype` (another value, or I8 elsewhere:
/// NK_ERR_BAD_ARGUMENT). Every pointer is aligned to its element type (`nk_rows` data to its
/// dtype's size; the float arrays to 4 bytes).
///
/// `y` of NK_DTYPE_I8 is quantized per row from the float output `v`: `amax = max |v|`,
/// `y_scale[r] = amax / 127`, `y = nearbyint(v * (127 / amax))` (ties to even, within
/// [-127, 127]); `amax == 0` gives scale 0 and zeros, a NaN or infinite `v` scale NaN and zeros.
/// `y_scale` (`rows` floats) is required then (unless rows*cols == 0) and must be NULL otherwise
/// (NK_ERR_BAD_ARGUMENT). Where `127 / amax` overflows, the product is formed as
/// `(v * 2^32) * (127 / (amax * 2^32))`, exactly the formula's value.
///
/// Aliasing: `y` may be exactly `x` (same address, stride and dtype; the stride may differ when
/// `rows <= 1`), `sum` exactly `x` or exactly `residual`, not both `y` and `sum` over `x`; any
/// other overlap of an output with anything is NK_ERR_ALIAS. With packed f32 rows and no
/// residual, bias or sum this is bitwise `nk_layernorm_forward`; with bf16 or f16 `x` and `y`,
/// the `_bf16` or `_f16` twin. `save_mean`, `save_invstd` (optional, `rows` floats) and the order
/// of errors are as for `nk_layernorm_forward`.
///
/// # Safety
/// Every non-NULL pointer is valid for its extent.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_layernorm_forward_rows(
    ctx: *mut nk_context,
    rows: usize,
    cols: usize,
    x: nk_rows,
    residual: nk_rows,
    bias: *const f32,
    sum: nk_rows,
    y: nk_rows,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
    y_scale: *mut f32,
) -> nk_status {
    // SAFETY: forwarded to the caller.
    unsafe {
        forward_rows(
            ctx,
            rows,
            cols,
            [x, residual, sum, y],
            bias,
            gamma,
            beta,
            eps,
            save_mean,
            save_invstd,
            y_scale,
            true,
        )
    }
}

/// RMS norm as transformer engines call it: `y = h * invrms * gamma[j]` per row, with `h`, the
/// rows, types, alignment, `sum`, I8 output and `y_scale`, aliasing and errors as for
/// `nk_layernorm_forward_rows`; `gamma` (`cols` floats) optional, NULL = 1; eps finite and >= 0.
/// With packed f32 rows and no residual, bias or sum this is bitwise `nk_rmsnorm_forward`.
/// `save_invrms` (optional, `rows` floats) receives each row's `invrms`.
///
/// # Safety
/// Every non-NULL pointer is valid for its extent.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_rmsnorm_forward_rows(
    ctx: *mut nk_context,
    rows: usize,
    cols: usize,
    x: nk_rows,
    residual: nk_rows,
    bias: *const f32,
    sum: nk_rows,
    y: nk_rows,
    gamma: *const f32,
    eps: f32,
    save_invrms: *mut f32,
    y_scale: *mut f32,
) -> nk_status {
    // SAFETY: forwarded to the caller.
    unsafe {
        forward_rows(
            ctx,
            rows,
            cols,
            [x, residual, sum, y],
            bias,
            gamma,
            std::ptr::null(),
            eps,
            std::ptr::null_mut(),
            save_invrms,
            y_scale,
            false,
        )
    }
}
