//! The nk_groupnorm_* and nk_instancenorm_* entry points.

use super::library::{context, nk_context, nk_shape};
use super::{
    Regions, backward_io, call, in_out, nk_bf16, nk_f16, nk_status, optional, optional_mut,
    require, slice,
};
use crate::Element;
use crate::ops::groupnorm::{self, Affine, SavedStats};
use crate::ops::instancenorm;

/// Group norm forward: the C channels form `groups` consecutive groups (`groups` >= 1 and dividing
/// C, else NK_ERR_BAD_SHAPE); per (n, group), the mean and biased variance `var` of its C/groups*S
/// values, then `y = gamma[c] * (x - mean) / sqrt(var + eps) + beta[c]`. Both layouts.
/// - x, y: N*C*S floats; `y == x` is in place. With N > 0 every group needs a value (C > 0 and
///   S > 0, else NK_ERR_BAD_SHAPE); N == 0 is an empty call (x, y may be NULL, nothing is written).
/// - gamma, beta (C floats): optional, NULL = 1, 0. save_mean, save_invstd (N*groups floats,
///   index n*groups + g): optional, receive each group's mean and `1 / sqrt(var + eps)`.
/// - eps finite and >= 0.
///
/// # Safety
/// Every non-NULL pointer is valid for its extent in the contract (x, y: N*C*S floats; gamma,
/// beta: C floats; save_mean, save_invstd: batch*groups floats).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_groupnorm_forward(
    ctx: *mut nk_context,
    shape: nk_shape,
    groups: usize,
    x: *const f32,
    y: *mut f32,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
) -> nk_status {
    // SAFETY: the caller's promise, passed on.
    unsafe {
        groupnorm_forward(
            ctx,
            shape,
            groups,
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

/// `nk_groupnorm_forward` on bf16 data (bfloat16): `x` and `y` are nk_bf16 (2-byte aligned; overlap
/// is checked in bytes). Each input element is widened to float exactly; each element of `y` is the
/// float function's result rounded once to nearest even; the saved statistics are bitwise the float
/// function's on the widened data. Every other argument, rule and status as there.
///
/// # Safety
/// As `nk_groupnorm_forward`, with x, y: N*C*S bf16 values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_groupnorm_forward_bf16(
    ctx: *mut nk_context,
    shape: nk_shape,
    groups: usize,
    x: *const nk_bf16,
    y: *mut nk_bf16,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
) -> nk_status {
    // SAFETY: nk_bf16 and bf16 have the same layout (one u16); the caller's promise, passed on.
    unsafe {
        groupnorm_forward(
            ctx,
            shape,
            groups,
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

/// `nk_groupnorm_forward` on f16 data (IEEE binary16): `x` and `y` are nk_f16 (2-byte aligned;
/// overlap is checked in bytes). Each input element is widened to float exactly; each element of
/// `y` is the float function's result rounded once to nearest even; the saved statistics are
/// bitwise the float function's on the widened data. Every other argument, rule and status as
/// there.
///
/// # Safety
/// As `nk_groupnorm_forward`, with x, y: N*C*S f16 values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_groupnorm_forward_f16(
    ctx: *mut nk_context,
    shape: nk_shape,
    groups: usize,
    x: *const nk_f16,
    y: *mut nk_f16,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
) -> nk_status {
    // SAFETY: nk_f16 and f16 have the same layout (one u16); the caller's promise, passed on.
    unsafe {
        groupnorm_forward(
            ctx,
            shape,
            groups,
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

/// The group norm forward entry points on data of type `E`.
///
/// # Safety
/// As `nk_groupnorm_forward`, with x, y: N*C*S values of type `E`.
#[allow(clippy::too_many_arguments)]
unsafe fn groupnorm_forward<E: Element>(
    ctx: *mut nk_context,
    shape: nk_shape,
    groups: usize,
    x: *const E,
    y: *mut E,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
) -> nk_status {
    call(|| {
        let data = usize::from(!shape.is_empty());
        require("x", x, data)?;
        require("y", y, data)?;
        groupnorm::check_forward(&shape.sizes(), groups, eps, false)?;
        let shape = shape.to_shape()?;
        let (n, c, saves) = (shape.elements()?, shape.channels, shape.batch * groups);
        Regions::default()
            .input("x", x, n)
            .output_replacing("y", y, n, "x")
            .input("gamma", gamma, c)
            .input("beta", beta, c)
            .output("save_mean", save_mean, saves)
            .output("save_invstd", save_invstd, saves)
            .check()?;
        // SAFETY: pointers checked above (NULL, alignment, overlap); extents are the caller's
        // promise.
        unsafe {
            groupnorm::forward(
                context(ctx),
                shape,
                groups,
                in_out(x, y, n),
                Affine {
                    gamma: optional(gamma, c),
                    beta: optional(beta, c),
                },
                eps,
                SavedStats {
                    mean: optional_mut(save_mean, saves),
                    invstd: optional_mut(save_invstd, saves),
                },
            )
        }
    })
}

/// Group norm backward from the saved statistics. Per (n, group), with
/// `xhat = (x - save_mean) * save_invstd`, `g = dy * gamma[c]` and means over the group's values:
/// `dx = save_invstd * (g - mean(g) - xhat * mean(g * xhat))`; per channel, over n and s,
/// `dgamma = sum(dy * xhat)` and `dbeta = sum(dy)`. `groups` as for nk_groupnorm_forward (>= 1,
/// dividing C), but a group may hold no value.
/// - x, dy: N*C*S floats (NULL when the tensor is empty). save_mean, save_invstd (N*groups
///   floats): required. gamma (C floats): optional, NULL = 1.
/// - dx (N*C*S floats), dgamma, dbeta (C floats; zeros when the tensor is empty): each optional.
///   `dx == dy` is in place; dx over x is NK_ERR_ALIAS.
/// - A group whose `save_invstd` is `+inf` (what the forward saves when the inverse spread
///   exceeds the float range: values far below 1 with `eps == 0`) takes the forward's double
///   statistics, recomputed from `x`, and its gradient in double, as the forward normalized it.
///
/// # Safety
/// As `nk_groupnorm_forward`; dy, dx: N*C*S floats; dgamma, dbeta: C floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_groupnorm_backward(
    ctx: *mut nk_context,
    shape: nk_shape,
    groups: usize,
    x: *const f32,
    dy: *const f32,
    dx: *mut f32,
    gamma: *const f32,
    save_mean: *const f32,
    save_invstd: *const f32,
    dgamma: *mut f32,
    dbeta: *mut f32,
) -> nk_status {
    // SAFETY: the caller's promise, passed on.
    unsafe {
        groupnorm_backward(
            ctx,
            shape,
            groups,
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

/// `nk_groupnorm_backward` on bf16 data (bfloat16): `x`, `dy` and `dx` are nk_bf16 (2-byte aligned;
/// overlap is checked in bytes). Each input element is widened to float exactly; each element of
/// `dx` is the float function's result rounded once to nearest even; `dgamma` and `dbeta` are
/// bitwise the float function's on the widened data. Every other argument, rule and status as
/// there.
///
/// # Safety
/// As `nk_groupnorm_backward`, with x, dy, dx: N*C*S bf16 values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_groupnorm_backward_bf16(
    ctx: *mut nk_context,
    shape: nk_shape,
    groups: usize,
    x: *const nk_bf16,
    dy: *const nk_bf16,
    dx: *mut nk_bf16,
    gamma: *const f32,
    save_mean: *const f32,
    save_invstd: *const f32,
    dgamma: *mut f32,
    dbeta: *mut f32,
) -> nk_status {
    // SAFETY: nk_bf16 and bf16 have the same layout (one u16); the caller's promise, passed on.
    unsafe {
        groupnorm_backward(
            ctx,
            shape,
            groups,
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

/// `nk_groupnorm_backward` on f16 data (IEEE binary16): `x`, `dy` and `dx` are nk_f16 (2-byte
/// aligned; overlap is checked in bytes). Each input element is widened to float exactly; each
/// element of `dx` is the float function's result rounded once to nearest even; `dgamma` and
/// `dbeta` are bitwise the float function's on the widened data. Every other argument, rule and
/// status as there.
///
/// # Safety
/// As `nk_groupnorm_backward`, with x, dy, dx: N*C*S f16 values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_groupnorm_backward_f16(
    ctx: *mut nk_context,
    shape: nk_shape,
    groups: usize,
    x: *const nk_f16,
    dy: *const nk_f16,
    dx: *mut nk_f16,
    gamma: *const f32,
    save_mean: *const f32,
    save_invstd: *const f32,
    dgamma: *mut f32,
    dbeta: *mut f32,
) -> nk_status {
    // SAFETY: nk_f16 and f16 have the same layout (one u16); the caller's promise, passed on.
    unsafe {
        groupnorm_backward(
            ctx,
            shape,
            groups,
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

/// The group norm backward entry points on data of type `E`.
///
/// # Safety
/// As `nk_groupnorm_backward`, with x, dy, dx: N*C*S values of type `E`.
#[allow(clippy::too_many_arguments)]
unsafe fn groupnorm_backward<E: Element>(
    ctx: *mut nk_context,
    shape: nk_shape,
    groups: usize,
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
        let data = usize::from(!shape.is_empty());
        let saves_needed = shape.batch.saturating_mul(groups);
        require("x", x, data)?;
        require("dy", dy, data)?;
        require("save_mean", save_mean, saves_needed)?;
        require("save_invstd", save_invstd, saves_needed)?;
        groupnorm::check_backward(&shape.sizes(), groups)?;
        let shape = shape.to_shape()?;
        let (n, c, saves) = (shape.elements()?, shape.channels, shape.batch * groups);
        Regions::default()
            .input("x", x, n)
            .input("dy", dy, n)
            .output_replacing("dx", dx, n, "dy")
            .input("gamma", gamma, c)
            .input("save_mean", save_mean, saves)
            .input("save_invstd", save_invstd, saves)
            .output("dgamma", dgamma, c)
            .output("dbeta", dbeta, c)
            .check()?;
        // SAFETY: pointers checked above; extents are the caller's promise.
        unsafe {
            let grad = backward_io(dy, dx, n);
            groupnorm::backward(
                context(ctx),
                shape,
                groups,
                slice(x, n),
                grad,
                optional(gamma, c),
                slice(save_mean, saves),
                slice(save_invstd, saves),
                optional_mut(dgamma, c),
                optional_mut(dbeta, c),
            )
        }
    })
}

/// Instance norm forward: group norm with groups = C, statistics per (n, c) over its S values.
/// - x, y: N*C*S floats; `y == x` is in place. With N > 0 and C > 0, S must be >= 1 (else
///   NK_ERR_BAD_SHAPE); N == 0 or C == 0 is an empty call (x, y may be NULL, nothing is written).
/// - gamma, beta (C floats): optional, NULL = 1, 0. save_mean, save_invstd (N*C floats, index
///   n*C + c): optional.
/// - eps finite and >= 0.
///
/// # Safety
/// As `nk_groupnorm_forward`, with batch*C floats for each save.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_instancenorm_forward(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const f32,
    y: *mut f32,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
) -> nk_status {
    // SAFETY: the caller's promise, passed on.
    unsafe { instancenorm_forward(ctx, shape, x, y, gamma, beta, eps, save_mean, save_invstd) }
}

/// `nk_instancenorm_forward` on bf16 data (bfloat16): `x` and `y` are nk_bf16 (2-byte aligned;
/// overlap is checked in bytes). Each input element is widened to float exactly; each element of
/// `y` is the float function's result rounded once to nearest even; the saved statistics are
/// bitwise the float function's on the widened data. Every other argument, rule and status as
/// there.
///
/// # Safety
/// As `nk_instancenorm_forward`, with x, y: N*C*S bf16 values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_instancenorm_forward_bf16(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const nk_bf16,
    y: *mut nk_bf16,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
) -> nk_status {
    // SAFETY: nk_bf16 and bf16 have the same layout (one u16); the caller's promise, passed on.
    unsafe {
        instancenorm_forward(
            ctx,
            shape,
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

/// `nk_instancenorm_forward` on f16 data (IEEE binary16): `x` and `y` are nk_f16 (2-byte aligned;
/// overlap is checked in bytes). Each input element is widened to float exactly; each element of
/// `y` is the float function's result rounded once to nearest even; the saved statistics are
/// bitwise the float function's on the widened data. Every other argument, rule and status as
/// there.
///
/// # Safety
/// As `nk_instancenorm_forward`, with x, y: N*C*S f16 values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_instancenorm_forward_f16(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const nk_f16,
    y: *mut nk_f16,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
) -> nk_status {
    // SAFETY: nk_f16 and f16 have the same layout (one u16); the caller's promise, passed on.
    unsafe {
        instancenorm_forward(
            ctx,
            shape,
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

/// The instance norm forward entry points on data of type `E`.
///
/// # Safety
/// As `nk_instancenorm_forward`, with x, y: N*C*S values of type `E`.
#[allow(clippy::too_many_arguments)]
unsafe fn instancenorm_forward<E: Element>(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const E,
    y: *mut E,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
) -> nk_status {
    call(|| {
        let data = usize::from(!shape.is_empty());
        require("x", x, data)?;
        require("y", y, data)?;
        instancenorm::check_forward(&shape.sizes(), eps)?;
        let shape = shape.to_shape()?;
        let (n, c) = (shape.elements()?, shape.channels);
        let saves = shape.batch * c;
        Regions::default()
            .input("x", x, n)
            .output_replacing("y", y, n, "x")
            .input("gamma", gamma, c)
            .input("beta", beta, c)
            .output("save_mean", save_mean, saves)
            .output("save_invstd", save_invstd, saves)
            .check()?;
        // SAFETY: pointers checked above; extents are the caller's promise.
        unsafe {
            instancenorm::forward(
                context(ctx),
                shape,
                in_out(x, y, n),
                Affine {
                    gamma: optional(gamma, c),
                    beta: optional(beta, c),
                },
                eps,
                SavedStats {
                    mean: optional_mut(save_mean, saves),
                    invstd: optional_mut(save_invstd, saves),
                },
            )
        }
    })
}
