//! The per-channel affine map `y = (x - shift[c]) * scale[c] + offset[c]`, optionally followed
//! by ReLU, for both layouts.
//!
//! Subtracting the `f32` part of the mean before scaling (with the rest of the mean folded into
//! `offset`) keeps the result exact to `f32` rounding on data with a large offset, where the
//! usual folded form `x * a + b` cancels catastrophically.

use crate::io::RowIo;
use crate::simd::{F32Vec, Kernel};

/// Per-channel parameters of the affine map, each of length C.
#[derive(Clone, Copy)]
pub(crate) struct ChannelAffine<'a> {
    pub shift: &'a [f32],
    pub scale: &'a [f32],
    pub offset: &'a [f32],
}

#[inline(always)]
fn affine<V: F32Vec, const RELU: bool>(x: V, shift: V, scale: V, offset: V) -> V {
    let y = x.sub(shift).mul_add(scale, offset);
    if RELU { y.relu() } else { y }
}

/// Applies one channel's map to a contiguous span.
#[inline(always)]
pub(crate) fn affine_span<V: F32Vec, const RELU: bool>(
    io: &mut RowIo<'_>,
    shift: f32,
    scale: f32,
    offset: f32,
) {
    let (m, s, t) = (V::splat(shift), V::splat(scale), V::splat(offset));
    io.map::<V>(|x, _, _| affine::<V, RELU>(x, m, s, t));
}

/// Channels-first rows: `io` holds whole rows of `spatial` elements, the first being row
/// `first_row` of the tensor (row `r` belongs to channel `r % channels`).
pub(crate) struct NcsAffine<'a> {
    pub io: RowIo<'a>,
    pub first_row: usize,
    pub spatial: usize,
    pub params: ChannelAffine<'a>,
    pub relu: bool,
}

impl Kernel for NcsAffine<'_> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(mut self) {
        let channels = self.params.shift.len();
        let rows = self.io.len() / self.spatial;
        let p = self.params;
        for r in 0..rows {
            let c = (self.first_row + r) % channels;
            let mut row = self.io.part(r * self.spatial..(r + 1) * self.spatial);
            if self.relu {
                affine_span::<V, true>(&mut row, p.shift[c], p.scale[c], p.offset[c]);
            } else {
                affine_span::<V, false>(&mut row, p.shift[c], p.scale[c], p.offset[c]);
            }
        }
    }
}

/// Channels-innermost rows: `io` holds whole rows of `channels` elements.
pub(crate) struct NscAffine<'a> {
    pub io: RowIo<'a>,
    pub params: ChannelAffine<'a>,
    pub relu: bool,
}

#[inline(always)]
fn load_at<V: F32Vec>(src: &[f32], i: usize, lanes: usize) -> V {
    if lanes == V::LANES {
        V::load(&src[i..])
    } else {
        V::load_partial(&src[i..i + lanes], 0.0)
    }
}

#[inline(always)]
fn nsc_rows<V: F32Vec, const RELU: bool>(io: &mut RowIo<'_>, p: ChannelAffine<'_>) {
    let c = p.shift.len();
    let rows = io.len() / c;
    for r in 0..rows {
        io.part(r * c..(r + 1) * c).map::<V>(|x, i, lanes| {
            let m = load_at::<V>(p.shift, i, lanes);
            let s = load_at::<V>(p.scale, i, lanes);
            let t = load_at::<V>(p.offset, i, lanes);
            affine::<V, RELU>(x, m, s, t)
        });
    }
}

impl Kernel for NscAffine<'_> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(mut self) {
        if self.relu {
            nsc_rows::<V, true>(&mut self.io, self.params)
        } else {
            nsc_rows::<V, false>(&mut self.io, self.params)
        }
    }
}
