//! The nk_layernorm_*, nk_rmsnorm_* and nk_weight_standardize entry points: checks, then the
//! safe API of `ops::layernorm` and `ops::rmsnorm`. The layer- and RMS-norm functions have
//! `_bf16` and `_f16` twins: one generic body each, over the data's element type.

use super::library::{context, nk_context};
use super::{
    Regions, backward_io, call, in_out, nk_bf16, nk_f16, nk_status, optional, optional_mut,
    require, slice,
};
use crate::batchnorm::{Affine, SavedStats};
use crate::error::Result;
use crate::io::InOut;
use crate::ops::layernorm::{self, check_forward, check_sizes};
use crate::ops::rmsnorm;
use crate::simd::element::Element;

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
/// own mean and biased variance, then `y = xhat * gamma + beta` (`gamma`, `beta` optional, `cols`
/// floats). `save_mean`, `save_invstd` (optional, `rows` floats) receive each row's statistics.
/// `y == x` is in place. With `cols == 0` nothing is written.
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

/// `nk_layernorm_forward` on bf16 data (see there): x and y are bf16, 2-byte aligned; gamma,
/// beta and the saved statistics stay float.
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

/// `nk_layernorm_forward` on f16 data (see there): x and y are f16, 2-byte aligned; gamma,
/// beta and the saved statistics stay float.
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

/// Layer norm backward from the saved statistics (`save_mean`, `save_invstd` required, `rows`
/// floats): `dx` (optional; `dx == dy` is in place), `dgamma = sum over rows of dy * xhat` and
/// `dbeta = sum over rows of dy` (each optional, `cols` floats; zeros when `rows == 0`).
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

/// `nk_layernorm_backward` on bf16 data (see there): x, dy and dx are bf16, 2-byte aligned;
/// gamma, the saved statistics, dgamma and dbeta stay float.
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

/// `nk_layernorm_backward` on f16 data (see there): x, dy and dx are f16, 2-byte aligned;
/// gamma, the saved statistics, dgamma and dbeta stay float.
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

/// RMS norm forward: `y = x / sqrt(mean(x^2) + eps) * gamma` per row of `cols` contiguous
/// floats (`gamma` optional). `save_invrms` (optional, `rows` floats) receives each row's
/// `1 / sqrt(mean(x^2) + eps)`. `y == x` is in place. With `cols == 0` nothing is written.
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

/// `nk_rmsnorm_forward` on bf16 data (see there): x and y are bf16, 2-byte aligned; gamma and
/// save_invrms stay float.
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

/// `nk_rmsnorm_forward` on f16 data (see there): x and y are f16, 2-byte aligned; gamma and
/// save_invrms stay float.
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

/// RMS norm backward from the saved `save_invrms` (required, `rows` floats): `dx` (optional;
/// `dx == dy` is in place) and `dgamma = sum over rows of dy * x * invrms` (optional, `cols`
/// floats; zeros when `rows == 0`).
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

/// `nk_rmsnorm_backward` on bf16 data (see there): x, dy and dx are bf16, 2-byte aligned;
/// gamma, save_invrms and dgamma stay float.
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

/// `nk_rmsnorm_backward` on f16 data (see there): x, dy and dx are f16, 2-byte aligned;
/// gamma, save_invrms and dgamma stay float.
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

/// Weight standardization: each of `c_out` rows of `fan_in` weights standardized to mean 0 and
/// scale `1 / sqrt(var + eps)` (layer norm without affine). `w_out == w` is in place.
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
