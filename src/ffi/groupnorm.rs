//! The nk_groupnorm_* and nk_instancenorm_* entry points.

use super::library::{context, nk_context, nk_shape};
use super::{
    Regions, backward_io, call, in_out, nk_bf16, nk_f16, nk_status, optional, optional_mut,
    require, slice,
};
use crate::Element;
use crate::ops::groupnorm::{self, Affine, SavedStats};
use crate::ops::instancenorm;

/// Group norm forward: C channels in `groups` consecutive groups (at least 1, dividing C, else
/// NK_ERR_BAD_SHAPE); mean and biased variance per (n, group) over C/groups*S values (each group
/// needs at least one value when batch > 0); y = gamma[c] * (x - mean) * invstd + beta[c].
/// `gamma`, `beta` (length C) and the saves (length batch*groups, index n*groups + g) are
/// optional; y == x is allowed.
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

/// `nk_groupnorm_forward` on bf16 data (see there); x and y are bf16, 2-byte aligned.
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

/// `nk_groupnorm_forward` on f16 data (see there); x and y are f16, 2-byte aligned.
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

/// Group norm backward from the saved statistics (`save_mean`, `save_invstd` required, length
/// batch*groups): dx (optional; dx == dy allowed), dgamma = sum(dy * xhat) and dbeta = sum(dy)
/// per channel (each optional; zeros over no values). A group whose `save_invstd` is `+inf`
/// (what the forward saves when the inverse spread exceeds the float range: values far below 1
/// with `eps == 0`) takes the forward's double statistics, recomputed from `x`, and its
/// gradient in double, as the forward normalized it.
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

/// `nk_groupnorm_backward` on bf16 data (see there); x, dy and dx are bf16, 2-byte aligned.
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

/// `nk_groupnorm_backward` on f16 data (see there); x, dy and dx are f16, 2-byte aligned.
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

/// Instance norm forward: group norm with groups = C (statistics per (n, c) over S values; S >= 1
/// when batch and C are not 0). Saves have length batch*C, index n*C + c; y == x is allowed.
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

/// `nk_instancenorm_forward` on bf16 data (see there); x and y are bf16, 2-byte aligned.
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

/// `nk_instancenorm_forward` on f16 data (see there); x and y are f16, 2-byte aligned.
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
