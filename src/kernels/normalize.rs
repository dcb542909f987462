//! The per-channel affine map `y = (x - shift[c]) * scale[c] + offset[c]`, optionally followed
//! by ReLU, for both layouts.
//!
//! Subtracting the `f32` part of the mean before scaling (with the rest of the mean folded into
//! `offset`) keeps the result exact to `f32` rounding on data with a large offset, where the
//! usual folded form `x * a + b` cancels catastrophically.

use crate::io::{RowIo, VectorMap};
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

/// One channel's map: the same parameters for every lane.
struct UniformAffine<V, const RELU: bool> {
    shift: V,
    scale: V,
    offset: V,
}

impl<V: F32Vec, const RELU: bool> VectorMap<V> for UniformAffine<V, RELU> {
    #[inline(always)]
    fn apply(&self, x: V, _: usize, _: usize) -> V {
        affine::<V, RELU>(x, self.shift, self.scale, self.offset)
    }
}

/// Applies one channel's map to a contiguous span.
#[inline(always)]
pub(crate) fn affine_span<V: F32Vec, const RELU: bool>(
    io: &mut RowIo<'_>,
    shift: f32,
    scale: f32,
    offset: f32,
) {
    io.map::<V>(&UniformAffine::<V, RELU> {
        shift: V::splat(shift),
        scale: V::splat(scale),
        offset: V::splat(offset),
    });
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

/// One row of `C` channels: lane `i` uses channel `i`'s parameters.
#[inline(always)]
fn nsc_row<V: F32Vec, const RELU: bool>(io: RowIo<'_>, p: ChannelAffine<'_>) {
    let l = V::LANES;
    let full = p.shift.len() / l * l;
    let (m, m_tail) = p.shift.split_at(full);
    let (s, s_tail) = p.scale.split_at(full);
    let (t, t_tail) = p.offset.split_at(full);
    let params = m
        .chunks_exact(l)
        .zip(s.chunks_exact(l))
        .zip(t.chunks_exact(l))
        .map(|((m, s), t)| (V::load(m), V::load(s), V::load(t)));
    let tail_params = || {
        (
            V::load_partial(m_tail, 0.0),
            V::load_partial(s_tail, 0.0),
            V::load_partial(t_tail, 0.0),
        )
    };
    match io {
        RowIo::Separate(x, y) => {
            let (x, x_tail) = x.split_at(full);
            let (y, y_tail) = y.split_at_mut(full);
            for ((xs, ys), (m, s, t)) in x.chunks_exact(l).zip(y.chunks_exact_mut(l)).zip(params) {
                affine::<V, RELU>(V::load(xs), m, s, t).store(ys);
            }
            if !x_tail.is_empty() {
                let (m, s, t) = tail_params();
                affine::<V, RELU>(V::load_partial(x_tail, 0.0), m, s, t).store_partial(y_tail);
            }
        }
        RowIo::InPlace(b) => {
            let (b, b_tail) = b.split_at_mut(full);
            for (v, (m, s, t)) in b.chunks_exact_mut(l).zip(params) {
                affine::<V, RELU>(V::load(v), m, s, t).store(v);
            }
            if !b_tail.is_empty() {
                let (m, s, t) = tail_params();
                affine::<V, RELU>(V::load_partial(b_tail, 0.0), m, s, t).store_partial(b_tail);
            }
        }
    }
}

#[inline(always)]
fn nsc_rows<V: F32Vec, const RELU: bool>(io: &mut RowIo<'_>, p: ChannelAffine<'_>) {
    let c = p.shift.len();
    let rows = io.len() / c;
    for r in 0..rows {
        nsc_row::<V, RELU>(io.part(r * c..(r + 1) * c), p);
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
