//! The per-channel affine map `y = (x - shift[c]) * scale[c] + offset[c]`, optionally followed
//! by ReLU, for both layouts.
//!
//! Subtracting the `f32` part of the mean before scaling (with the rest of the mean folded into
//! `offset`) keeps the result exact to `f32` rounding on data with a large offset, where the
//! usual folded form `x * a + b` cancels catastrophically.

use super::backward::fits_f32;
use crate::io::{RowIo, VectorMap, store_vector, unaligned_head};
use crate::simd::element::ElementIo;
use crate::simd::{F32Vec, Kernel, MAX_LANES};

/// Per-channel parameters of the affine map, each of length at least C (the channels-innermost
/// kernel needs them extended cyclically to `2 * C + MAX_LANES`, see [`NscAffine`]).
#[derive(Clone, Copy)]
pub(crate) struct ChannelAffine<'a> {
    pub shift: &'a [f32],
    pub scale: &'a [f32],
    pub offset: &'a [f32],
    /// Every channel's map in `f64` when some channel's does not fit `f32` (see
    /// [`WideAffine`]), else empty. Channels-first rows of such a channel are mapped in `f64`;
    /// channels-innermost rows are mapped in `f64` throughout.
    pub wide: &'a [WideAffine],
}

/// One channel's map `y = (x - mean) * scale + beta` as computed, in `f64`. The vector kernels
/// take it as `(shift, scale, offset)` in `f32` (see [`WideAffine::narrow`]), which is exact
/// enough only while the scale and the offset are each zero or a normal `f32`: `gamma * invstd`
/// beyond the `f32` range (values far below 1 with a large gamma) would give `inf * 0` where
/// the exact output is finite. Such a channel is mapped here, element by element in `f64`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct WideAffine {
    pub mean: f64,
    pub scale: f64,
    pub beta: f64,
}

impl WideAffine {
    /// `(shift, scale, offset)` with `shift = f32(mean)`, `scale = f32(scale)` and the rest of
    /// the mean folded into `offset = beta - (mean - shift) * scale`, so that `(x - shift) *
    /// scale + offset` keeps the precision of the `f64` mean; `None` if the scale or the offset
    /// does not fit `f32` (see [`super::backward::fits_f32`]).
    pub(crate) fn narrow(&self) -> Option<(f32, f32, f32)> {
        let shift = self.mean as f32;
        let scale = self.scale as f32;
        let offset = self.beta - (self.mean - shift as f64) * scale as f64;
        (fits_f32(self.scale) && fits_f32(offset)).then_some((shift, scale, offset as f32))
    }

    /// The output of one element, in `f64`, rounded once (then ReLU if `relu`).
    #[inline]
    pub(crate) fn y(&self, x: f32, relu: bool) -> f32 {
        let y = ((x as f64 - self.mean) * self.scale + self.beta) as f32;
        if relu && 0.0 > y { 0.0 } else { y }
    }
}

/// Builds per-channel parameters with `fill` (given the first `channels` entries of the shift,
/// scale and offset arrays), extends them cyclically to `2 * channels + MAX_LANES` entries (as
/// the channels-innermost kernel reads them), and runs `then` on them. The arrays start on cache
/// lines and live on the stack for small channel counts (see [`super::with_line_arrays`]).
pub(crate) fn with_channel_affine<R>(
    channels: usize,
    fill: impl FnOnce(&mut [f32], &mut [f32], &mut [f32]) -> Vec<WideAffine>,
    then: impl FnOnce(ChannelAffine<'_>) -> R,
) -> R {
    let len = 2 * channels + MAX_LANES;
    super::with_line_arrays(len, |[shift, scale, offset]| {
        let wide = fill(
            &mut shift[..channels],
            &mut scale[..channels],
            &mut offset[..channels],
        );
        for a in [&mut *shift, &mut *scale, &mut *offset] {
            super::extend_cyclic(a, channels);
        }
        then(ChannelAffine {
            shift,
            scale,
            offset,
            wide: &wide,
        })
    })
}

/// The `f32` maps of channels `0..shift.len()`, `wide(c)` each, into `shift`, `scale`, `offset`
/// (zeros for a channel that does not fit); returns every channel's `WideAffine` if some
/// channel does not fit (the kernels then map it in `f64`), else an empty vector, so the common
/// case allocates nothing.
pub(crate) fn narrow_all(
    wide: impl Fn(usize) -> WideAffine,
    shift: &mut [f32],
    scale: &mut [f32],
    offset: &mut [f32],
) -> Vec<WideAffine> {
    let channels = shift.len();
    let mut all = true;
    for c in 0..channels {
        match wide(c).narrow() {
            Some(p) => (shift[c], scale[c], offset[c]) = p,
            None => all = false,
        }
    }
    if all {
        Vec::new()
    } else {
        (0..channels).map(wide).collect()
    }
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

/// One channel's map.
#[inline(always)]
fn uniform_affine<V: F32Vec, const RELU: bool>(
    shift: f32,
    scale: f32,
    offset: f32,
) -> UniformAffine<V, RELU> {
    UniformAffine {
        shift: V::splat(shift),
        scale: V::splat(scale),
        offset: V::splat(offset),
    }
}

/// Applies one channel's map to a contiguous span, with streaming stores if `stream` (the caller
/// then fences with `V::fence_streams()`).
#[inline(always)]
pub(crate) fn affine_span<V: F32Vec, X: ElementIo, Y: ElementIo, const RELU: bool>(
    io: &mut RowIo<'_, X, Y>,
    shift: f32,
    scale: f32,
    offset: f32,
    stream: bool,
) {
    let map = uniform_affine::<V, RELU>(shift, scale, offset);
    if stream {
        io.map_streaming::<V>(&map);
    } else {
        io.map::<V>(&map);
    }
}

/// Applies one channel's map `w` to a contiguous span: in `f32` vectors where it fits `f32`
/// (see [`WideAffine::narrow`]), else element by element in `f64`.
#[inline(always)]
pub(crate) fn wide_affine_span<V: F32Vec, X: ElementIo, Y: ElementIo, const RELU: bool>(
    io: &mut RowIo<'_, X, Y>,
    w: &WideAffine,
    stream: bool,
) {
    match w.narrow() {
        Some((shift, scale, offset)) => {
            affine_span::<V, X, Y, RELU>(io, shift, scale, offset, stream)
        }
        None => io.map_scalar(|_, x| w.y(x, RELU)),
    }
}

/// Channels-first rows: `io` holds whole rows of `spatial` elements, the first being row
/// `first_row` of the tensor (row `r` belongs to channel `r % channels`).
pub(crate) struct NcsAffine<'a, X = f32, Y = X> {
    pub io: RowIo<'a, X, Y>,
    pub first_row: usize,
    pub spatial: usize,
    pub channels: usize,
    pub params: ChannelAffine<'a>,
    pub relu: bool,
    /// Streaming stores: for outputs much larger than the caches.
    pub stream: bool,
}

impl<X: ElementIo, Y: ElementIo> Kernel for NcsAffine<'_, X, Y> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(mut self) {
        let channels = self.channels;
        let rows = self.io.len() / self.spatial;
        let p = self.params;
        let mut c = self.first_row % channels;
        if p.wide.is_empty() && !self.stream {
            // Every channel's map fits f32 and the output stays cached: one plain loop over the
            // rows (short rows, such as 7x7 maps, cost little more than their vectors).
            return if self.relu {
                ncs_rows::<V, X, Y, true>(&mut self.io, self.spatial, channels, c, p)
            } else {
                ncs_rows::<V, X, Y, false>(&mut self.io, self.spatial, channels, c, p)
            };
        }
        for r in 0..rows {
            let mut row = self.io.part(r * self.spatial..(r + 1) * self.spatial);
            if let Some(w) = p.wide.get(c).filter(|w| w.narrow().is_none()) {
                let relu = self.relu;
                row.map_scalar(|_, x| w.y(x, relu));
            } else if self.relu {
                affine_span::<V, X, Y, true>(
                    &mut row,
                    p.shift[c],
                    p.scale[c],
                    p.offset[c],
                    self.stream,
                );
            } else {
                affine_span::<V, X, Y, false>(
                    &mut row,
                    p.shift[c],
                    p.scale[c],
                    p.offset[c],
                    self.stream,
                );
            }
            c = if c + 1 == channels { 0 } else { c + 1 };
        }
        if self.stream {
            V::fence_streams();
        }
    }
}

/// Rows of `spatial` elements of channels `c, c + 1, ...` (cyclically), each mapped in `f32`
/// with its channel's parameters (the first `channels` entries of `p`'s arrays).
#[inline(always)]
fn ncs_rows<V: F32Vec, X: ElementIo, Y: ElementIo, const RELU: bool>(
    io: &mut RowIo<'_, X, Y>,
    spatial: usize,
    channels: usize,
    mut c: usize,
    p: ChannelAffine<'_>,
) {
    let (shift, scale, offset) = (
        &p.shift[..channels],
        &p.scale[..channels],
        &p.offset[..channels],
    );
    // Loops written out, not a closure over the row: a closure body is compiled without the
    // caller's target features (see `VectorMap`). Zipped chunks, not a reborrowed `io.part` per
    // row: the sub-part's bounds checks cost 5% of NCHW (8,2048,7,7) on two threads (37.0-38.8
    // against 39.0-40.0 us).
    match io {
        RowIo::Separate(x, y) => {
            for (x, y) in x.chunks_exact(spatial).zip(y.chunks_exact_mut(spatial)) {
                let map = uniform_affine::<V, RELU>(shift[c], scale[c], offset[c]);
                RowIo::<X, Y>::Separate(x, y).map::<V>(&map);
                c = if c + 1 == channels { 0 } else { c + 1 };
            }
        }
        RowIo::InPlace(b) => {
            for b in b.chunks_exact_mut(spatial) {
                let map = uniform_affine::<V, RELU>(shift[c], scale[c], offset[c]);
                RowIo::<X, Y>::InPlace(b).map::<V>(&map);
                c = if c + 1 == channels { 0 } else { c + 1 };
            }
        }
    }
}

/// Channels-innermost rows: `io` holds whole rows of `channels` elements, treated as one
/// contiguous run in which element `e` belongs to channel `e % C`. The parameters are given
/// extended cyclically to `2 * C + MAX_LANES` entries (`p[j] = p[j % C]`), so a vector starting
/// at channel `c0` takes its `LANES` parameters from `p[c0..c0 + LANES]`, and a run of `C`
/// elements from `p[c0..c0 + C]`, whatever `C` is: rows of any width (even `C < LANES`) run at
/// full vector width. With `stream`, the vector-aligned body
/// of the output is written with streaming stores.
pub(crate) struct NscAffine<'a, X = f32, Y = X> {
    pub io: RowIo<'a, X, Y>,
    pub channels: usize,
    pub params: ChannelAffine<'a>,
    pub relu: bool,
    /// Streaming stores: for outputs much larger than the caches.
    pub stream: bool,
}

/// The cyclically extended parameters of lanes starting at channel `c0`.
#[inline(always)]
fn lane_params<V: F32Vec>(p: &ChannelAffine<'_>, c0: usize, lanes: usize) -> (V, V, V) {
    if lanes == V::LANES {
        (
            V::load(&p.shift[c0..c0 + V::LANES]),
            V::load(&p.scale[c0..c0 + V::LANES]),
            V::load(&p.offset[c0..c0 + V::LANES]),
        )
    } else {
        (
            V::load_partial(&p.shift[c0..c0 + lanes], 0.0),
            V::load_partial(&p.scale[c0..c0 + lanes], 0.0),
            V::load_partial(&p.offset[c0..c0 + lanes], 0.0),
        )
    }
}

/// The channel `lanes` elements after channel `c0`.
#[inline(always)]
fn advance(c0: usize, lanes: usize, channels: usize) -> usize {
    let c = c0 + lanes;
    if c < channels { c } else { c % channels }
}

#[inline(always)]
fn nsc_run<V: F32Vec, X: ElementIo, Y: ElementIo, const RELU: bool, const STREAM: bool>(
    io: &mut RowIo<'_, X, Y>,
    channels: usize,
    p: ChannelAffine<'_>,
) {
    let l = V::LANES;
    let len = io.len();
    let head = if STREAM {
        match &*io {
            RowIo::Separate(_, y) => unaligned_head::<V, _>(y),
            RowIo::InPlace(b) => unaligned_head::<V, _>(b),
        }
    } else {
        0
    };
    let full = head + (len - head) / l * l;
    // A partial vector up to an aligned output (for streaming), whole vectors, a partial tail.
    let mut c0 = nsc_vectors::<V, X, Y, RELU, false>(&mut io.part(0..head), head, channels, p, 0);
    let mut periods = 0;
    if channels.is_multiple_of(l) && full - head >= channels {
        // Every run of `channels` elements starts at channel `c0` again: its vectors take their
        // parameters from one fixed window, zipped without any per-vector bookkeeping.
        periods = (full - head) / channels * channels;
        nsc_periods::<V, X, Y, RELU, STREAM>(&mut io.part(head..head + periods), channels, p, c0);
    }
    c0 = nsc_vectors::<V, X, Y, RELU, STREAM>(
        &mut io.part(head + periods..full),
        l,
        channels,
        p,
        c0,
    );
    nsc_vectors::<V, X, Y, RELU, false>(&mut io.part(full..len), l, channels, p, c0);
    if STREAM {
        V::fence_streams();
    }
}

/// Whole periods of `channels` elements (a multiple of `LANES`), each starting at channel `c0`.
#[inline(always)]
fn nsc_periods<V: F32Vec, X: ElementIo, Y: ElementIo, const RELU: bool, const STREAM: bool>(
    io: &mut RowIo<'_, X, Y>,
    channels: usize,
    p: ChannelAffine<'_>,
    c0: usize,
) {
    let l = V::LANES;
    let window = |a: &'_ [f32]| -> std::ops::Range<usize> {
        debug_assert!(a.len() >= c0 + channels);
        c0..c0 + channels
    };
    let (m, s, t) = (
        &p.shift[window(p.shift)],
        &p.scale[window(p.scale)],
        &p.offset[window(p.offset)],
    );
    match channels / l {
        1 => return nsc_periods_in_registers::<V, X, Y, RELU, STREAM, 1>(io, m, s, t),
        2 => return nsc_periods_in_registers::<V, X, Y, RELU, STREAM, 2>(io, m, s, t),
        3 => return nsc_periods_in_registers::<V, X, Y, RELU, STREAM, 3>(io, m, s, t),
        4 => return nsc_periods_in_registers::<V, X, Y, RELU, STREAM, 4>(io, m, s, t),
        _ => {}
    }
    // Wide rows in blocks of channels, each block over every row of the run: the parameters
    // of a block stay in L1 while its rows pass, where a whole row's (three arrays of
    // `channels` floats) would not.
    for cb in (0..channels).step_by(WIDE_ROW_CHANNEL_BLOCK) {
        let block = cb..channels.min(cb + WIDE_ROW_CHANNEL_BLOCK);
        let (m, s, t) = (&m[block.clone()], &s[block.clone()], &t[block.clone()]);
        let params = || {
            m.chunks_exact(l)
                .zip(s.chunks_exact(l))
                .zip(t.chunks_exact(l))
        };
        match io {
            RowIo::Separate(x, y) => {
                for (xp, yp) in x.chunks_exact(channels).zip(y.chunks_exact_mut(channels)) {
                    let (xp, yp) = (&xp[block.clone()], &mut yp[block.clone()]);
                    let lanes = xp.chunks_exact(l).zip(yp.chunks_exact_mut(l));
                    for ((xs, ys), ((m, s), t)) in lanes.zip(params()) {
                        let v = affine::<V, RELU>(V::read(xs), V::load(m), V::load(s), V::load(t));
                        store_vector::<V, _, STREAM>(v, ys);
                    }
                }
            }
            RowIo::InPlace(b) => {
                for bp in b.chunks_exact_mut(channels) {
                    let bp = &mut bp[block.clone()];
                    for (v, ((m, s), t)) in bp.chunks_exact_mut(l).zip(params()) {
                        let y = affine::<V, RELU>(V::read(v), V::load(m), V::load(s), V::load(t));
                        store_vector::<V, _, STREAM>(y, v);
                    }
                }
            }
        }
    }
}

/// Channels per block of [`nsc_periods`] over wide rows (and of the backward's `dx`, whose
/// coefficients are likewise read per vector): three arrays of parameters (the backward's four)
/// of 4 KiB each, in L1 beside the data passing through, and 4 KiB of each `f32` row per visit (a
/// page: blocks of half a page lost a third on data from memory, whose prefetchers restart at
/// every page). Measured on the kernel's loop alone (1 thread, AVX-512, 32 KiB L1), rows of 2048
/// channels: `8 * 2048 * 49` elements (in L3) 90-93 us in blocks of 1024 against 130 us whole
/// rows; `4096 * 1024` (from memory) even (2.2-2.4 ms).
pub(crate) const WIDE_ROW_CHANNEL_BLOCK: usize = 1024;

/// [`nsc_periods`] for `K * LANES` channels (up to 4 vectors: 12 registers of parameters), with
/// the parameters loaded once into registers: with fewer channels than that, the loads of three
/// parameter vectors per vector of data would be most of the loads.
#[inline(always)]
fn nsc_periods_in_registers<
    V: F32Vec,
    X: ElementIo,
    Y: ElementIo,
    const RELU: bool,
    const STREAM: bool,
    const K: usize,
>(
    io: &mut RowIo<'_, X, Y>,
    m: &[f32],
    s: &[f32],
    t: &[f32],
) {
    let l = V::LANES;
    let (m, s, t): ([V; K], [V; K], [V; K]) = (V::read_tile(m), V::read_tile(s), V::read_tile(t));
    match io {
        RowIo::Separate(x, y) => {
            for (xp, yp) in x.chunks_exact(K * l).zip(y.chunks_exact_mut(K * l)) {
                for j in 0..K {
                    let v = affine::<V, RELU>(V::read(&xp[j * l..]), m[j], s[j], t[j]);
                    store_vector::<V, _, STREAM>(v, &mut yp[j * l..(j + 1) * l]);
                }
            }
        }
        RowIo::InPlace(b) => {
            for bp in b.chunks_exact_mut(K * l) {
                for j in 0..K {
                    let v = &mut bp[j * l..(j + 1) * l];
                    let y = affine::<V, RELU>(V::read(v), m[j], s[j], t[j]);
                    store_vector::<V, _, STREAM>(y, v);
                }
            }
        }
    }
}

/// Any run, in pieces of `step` elements (`LANES`, or the length of a single partial piece),
/// starting at channel `c0`; returns the channel after the run.
#[inline(always)]
fn nsc_vectors<V: F32Vec, X: ElementIo, Y: ElementIo, const RELU: bool, const STREAM: bool>(
    io: &mut RowIo<'_, X, Y>,
    step: usize,
    channels: usize,
    p: ChannelAffine<'_>,
    mut c0: usize,
) -> usize {
    let l = V::LANES;
    if io.len() == 0 {
        return c0;
    }
    match io {
        RowIo::Separate(x, y) => {
            for (xs, ys) in x.chunks(step).zip(y.chunks_mut(step)) {
                let (m, s, t) = lane_params::<V>(&p, c0, xs.len());
                if xs.len() == l {
                    store_vector::<V, _, STREAM>(affine::<V, RELU>(V::read(xs), m, s, t), ys);
                } else {
                    affine::<V, RELU>(V::read_partial(xs, 0.0), m, s, t).write_partial(ys);
                }
                c0 = advance(c0, xs.len(), channels);
            }
        }
        RowIo::InPlace(b) => {
            for v in b.chunks_mut(step) {
                let (m, s, t) = lane_params::<V>(&p, c0, v.len());
                if v.len() == l {
                    store_vector::<V, _, STREAM>(affine::<V, RELU>(V::read(v), m, s, t), v);
                } else {
                    let y = affine::<V, RELU>(V::read_partial(v, 0.0), m, s, t);
                    y.write_partial(v);
                }
                c0 = advance(c0, v.len(), channels);
            }
        }
    }
    c0
}

impl<X: ElementIo, Y: ElementIo> Kernel for NscAffine<'_, X, Y> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(mut self) {
        let (c, p) = (self.channels, self.params);
        if !p.wide.is_empty() {
            let relu = self.relu;
            self.io.map_scalar(|i, x| p.wide[i % c].y(x, relu));
            return;
        }
        match (self.relu, self.stream) {
            (true, true) => nsc_run::<V, X, Y, true, true>(&mut self.io, c, p),
            (true, false) => nsc_run::<V, X, Y, true, false>(&mut self.io, c, p),
            (false, true) => nsc_run::<V, X, Y, false, true>(&mut self.io, c, p),
            (false, false) => nsc_run::<V, X, Y, false, false>(&mut self.io, c, p),
        }
    }
}
