//! Instance normalization: group norm with one group per channel.
//!
//! Per batch item `n` and channel `c`, the mean and biased variance are taken over the `spatial`
//! values of the channel; saved statistics have length `batch * channels`, index `n * C + c`.
//! Every (batch item, channel) needs at least one value: `spatial >= 1` when `batch` and
//! `channels` are not 0 (else `BadShape`). With `spatial == 1` each value is its own mean, so
//! `y = beta` (for `eps > 0`).

use crate::context::Context;
use crate::error::Result;
use crate::io::InOut;
use crate::ops::groupnorm;
pub use crate::ops::groupnorm::{Affine, SavedStats};
use crate::shape::Shape;
use crate::simd::element::Element;

/// Checks an instance-norm forward (sizes, then `eps`).
pub(crate) fn check_forward(shape: &Shape, eps: f32) -> Result<()> {
    groupnorm::check_forward(shape, shape.channels, eps, true)
}

/// Instance norm forward: group norm forward with `groups = C` (for `C == 0`, a call without
/// groups that does nothing), on data of any [`Element`] type.
pub fn forward<E: Element>(
    ctx: &Context,
    shape: Shape,
    io: InOut<'_, E>,
    affine: Affine<'_>,
    eps: f32,
    saved: SavedStats<'_>,
) -> Result<()> {
    check_forward(&shape, eps)?;
    groupnorm::forward_checked(ctx, shape, shape.channels, io, affine, eps, saved)
}
