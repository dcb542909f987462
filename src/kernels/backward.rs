//! Batch-norm backward kernels: per-channel gradient reductions and the input gradient.
//!
//! Reductions: per channel, `sum(dy)` and `sum(dy * (x - mean))` (the caller multiplies the
//! second by `invstd` to get `sum(dy * xhat)`), in `f64` lanes (see [`super::sums`]): `x - mean`
//! rounded in `f32` is the only rounding of a term, the product is exact, so a sum is within
//! `2^-24` of the sum of its terms' magnitudes, plus `f64` rounding. Lanes are added in lane
//! order and blocks in order, so a result depends on the block boundaries only, which the
//! caller fixes by the shape. `x - mean` is exact for values near the mean (`mean` is the saved
//! `f32` mean), so a large offset of the data costs no precision.
//!
//! Input gradient: `dx = dy * a[c] + (x - mean[c]) * b[c] + k[c]`, with the per-channel
//! coefficients computed in `f64` by the caller from the reductions.

use super::moments::{LINE_FLOATS, TILED_MAX_CHANNELS, WIDE_GROUP_ROWS, tile_vectors};
use super::normalize::WIDE_ROW_CHANNEL_BLOCK;
use super::sums::Sums2;
use crate::io::{RowIo, VectorMap, store_vector, unaligned_head};
use crate::scratch;
use crate::simd::element::ElementIo;
use crate::simd::{F32Vec, Kernel};
use std::cell::Cell;
use std::ops::Range;

pub(crate) use super::moments::{BLOCK, ROW_BLOCK};

/// `f64` sums of a channel (or of a part of one): `sum(dy)` and `sum(dy * (x - mean))`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct GradSums {
    pub dy: f64,
    pub dy_xm: f64,
}

/// Adds `dy` and `dy * (x - m)` of a contiguous span to the lane sums (two accumulators, so
/// that two chains of `f64` additions run at once).
#[inline(always)]
fn accumulate<V: F32Vec, E: ElementIo>(x: &[E], dy: &[E], m: f32, acc: &mut [Sums2<V>; 2]) {
    let l = V::LANES;
    let mv = V::splat(m);
    let mut xp = x.chunks_exact(2 * l);
    let mut dp = dy.chunks_exact(2 * l);
    for (xs, ds) in (&mut xp).zip(&mut dp) {
        for (j, a) in acc.iter_mut().enumerate() {
            let d = V::read(&ds[j * l..]);
            let xm = V::read(&xs[j * l..]).sub(mv);
            a.add(d, xm);
        }
    }
    let (xr, dr) = (xp.remainder(), dp.remainder());
    if xr.len() >= l {
        acc[0].add(V::read(dr), V::read(xr).sub(mv));
    }
    let full = xr.len() / l * l;
    let (xt, dt) = (&xr[full..], &dr[full..]);
    if !xt.is_empty() {
        // Lanes past the tail load dy = 0 and x = m: both terms are exactly 0.
        let d = V::read_partial(dt, 0.0);
        let xm = V::read_partial(xt, m).sub(mv);
        acc[1].add(d, xm);
    }
}

/// One channel of a channels-first tensor: the virtual elements `range` of the channel, whose
/// values lie in rows of `spatial` elements: virtual element `v` is `x_row(v / spatial)[v %
/// spatial]` (and the same of `dy_row`).
pub(crate) struct ChannelGrad<'r, X, D> {
    pub x_row: &'r X,
    pub dy_row: &'r D,
    pub spatial: usize,
    pub range: Range<usize>,
    /// The saved mean of the channel.
    pub mean: f32,
}

impl<'a, 'b, E, X, D> Kernel for ChannelGrad<'_, X, D>
where
    E: ElementIo,
    X: Fn(usize) -> &'a [E],
    D: Fn(usize) -> &'b [E],
{
    type Output = GradSums;
    #[inline(always)]
    fn run<V: F32Vec>(self) -> GradSums {
        let s = self.spatial;
        let mut acc = GradSums::default();
        let mut start = self.range.start;
        while start < self.range.end {
            let end = self.range.end.min(start + BLOCK);
            let mut sums = [Sums2::<V>::zero(); 2];
            // One division per block, none per row.
            let (mut n, mut i) = (start / s, start % s);
            let mut left = end - start;
            while left > 0 {
                let len = left.min(s - i);
                accumulate(
                    &(self.x_row)(n)[i..i + len],
                    &(self.dy_row)(n)[i..i + len],
                    self.mean,
                    &mut sums,
                );
                left -= len;
                (n, i) = (n + 1, 0);
            }
            let (dy, dy_xm) = sums[0].merge(sums[1]).totals();
            acc.dy += dy;
            acc.dy_xm += dy_xm;
            start = end;
        }
        acc
    }
}

/// Consecutive rows of `channels` values each (channels innermost): per-channel sums added to
/// `out` (length `channels`), in blocks of [`ROW_BLOCK`] rows.
pub(crate) struct RowGrad<'a, E = f32> {
    pub x: &'a [E],
    pub dy: &'a [E],
    pub channels: usize,
    /// Saved means, length `channels`.
    pub mean: &'a [f32],
    pub out: &'a mut [GradSums],
}

impl<E: ElementIo> Kernel for RowGrad<'_, E> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(self) {
        let c = self.channels;
        let mean = self.mean;
        let mut sums = scratch::take(2 * c, 0f64);
        let (s1, s2) = sums.split_at_mut(c);
        for (xb, db) in self
            .x
            .chunks(ROW_BLOCK * c)
            .zip(self.dy.chunks(ROW_BLOCK * c))
        {
            if c <= TILED_MAX_CHANNELS {
                grad_tiles::<V, E>(xb, db, c, mean, s1, s2);
            } else {
                grad_rows::<V, E>(xb, db, c, mean, s1, s2);
            }
        }
        for ((o, &a), &q) in self.out.iter_mut().zip(&*s1).zip(&*s2) {
            o.dy += a;
            o.dy_xm += q;
        }
    }
}

/// Adds `sum(dy)` to `s1[ch]` and `sum(dy * (x - mean[ch]))` to `s2[ch]` over the rows of one
/// block, in channel tiles summed over the block's rows in registers, as the forward's
/// channels-innermost sums are (tiles of [`tile_vectors`] vectors, then of fewer, then the
/// channels past the last whole vector one by one). Each row of a tile prefetches the same part
/// of the next block's row (a tile narrower than the row visits only part of each row, which
/// the hardware prefetchers do not follow; prefetching never faults, wherever it points).
#[inline(always)]
fn grad_tiles<V: F32Vec, E: ElementIo>(
    xb: &[E],
    db: &[E],
    c: usize,
    mean: &[f32],
    s1: &mut [f64],
    s2: &mut [f64],
) {
    let l = V::LANES;
    let mut c0 = 0;
    if tile_vectors::<V>() == 4 {
        while c0 + 4 * l <= c {
            grad_tile::<V, E, 4>(xb, db, c, c0, mean, s1, s2);
            c0 += 4 * l;
        }
    }
    while c0 + 2 * l <= c {
        grad_tile::<V, E, 2>(xb, db, c, c0, mean, s1, s2);
        c0 += 2 * l;
    }
    if c0 + l <= c {
        grad_tile::<V, E, 1>(xb, db, c, c0, mean, s1, s2);
        c0 += l;
    }
    if c0 < c {
        for (xr, dr) in xb.chunks_exact(c).zip(db.chunks_exact(c)) {
            grad_tail(xr, dr, c0, mean, s1, s2);
        }
    }
}

/// Adds the sums of channels `c0..c0 + T * LANES` over the rows of one block (see
/// [`grad_tiles`]).
#[inline(always)]
fn grad_tile<V: F32Vec, E: ElementIo, const T: usize>(
    xb: &[E],
    db: &[E],
    c: usize,
    c0: usize,
    mean: &[f32],
    s1: &mut [f64],
    s2: &mut [f64],
) {
    let l = V::LANES;
    let (x_ahead, dy_ahead) = (
        xb.as_ptr().wrapping_add(xb.len()),
        db.as_ptr().wrapping_add(db.len()),
    );
    let m: [V; T] = V::read_tile(&mean[c0..]);
    let mut acc = [Sums2::<V>::zero(); T];
    for (r, (xr, dr)) in xb.chunks_exact(c).zip(db.chunks_exact(c)).enumerate() {
        for line in (0..T * l).step_by(LINE_FLOATS) {
            V::prefetch(x_ahead.wrapping_add(r * c + c0 + line));
            V::prefetch(dy_ahead.wrapping_add(r * c + c0 + line));
        }
        for (j, a) in acc.iter_mut().enumerate() {
            let d = V::read(&dr[c0 + j * l..]);
            let xm = V::read(&xr[c0 + j * l..]).sub(m[j]);
            a.add(d, xm);
        }
    }
    for (j, a) in acc.iter().enumerate() {
        let at = c0 + j * l..c0 + (j + 1) * l;
        a.add_to(&mut s1[at.clone()], &mut s2[at]);
    }
}

/// As [`grad_tiles`] for rows of any width, with the sums in memory (L1): groups of
/// [`WIDE_GROUP_ROWS`] rows, each vector of channels summed over the group in registers before
/// its sums go to memory; each row read front to back.
#[inline(always)]
fn grad_rows<V: F32Vec, E: ElementIo>(
    xb: &[E],
    db: &[E],
    c: usize,
    mean: &[f32],
    s1: &mut [f64],
    s2: &mut [f64],
) {
    let l = V::LANES;
    let full = c / l * l;
    for (xg, dg) in xb
        .chunks(WIDE_GROUP_ROWS * c)
        .zip(db.chunks(WIDE_GROUP_ROWS * c))
    {
        let rows = xg.len() / c;
        for c0 in (0..full).step_by(l) {
            let m = V::read(&mean[c0..]);
            let mut acc = Sums2::<V>::zero();
            for r in 0..rows {
                let xm = V::read(&xg[r * c + c0..]).sub(m);
                acc.add(V::read(&dg[r * c + c0..]), xm);
            }
            acc.add_to(&mut s1[c0..c0 + l], &mut s2[c0..c0 + l]);
        }
        if full < c {
            for (xr, dr) in xg.chunks_exact(c).zip(dg.chunks_exact(c)) {
                grad_tail(xr, dr, full, mean, s1, s2);
            }
        }
    }
}

/// Adds the channels from `full` to the end of a row (fewer than `LANES`) to the sums, one by
/// one (`x - mean` rounded in `f32` as the vectors round it).
#[inline(always)]
fn grad_tail<E: ElementIo>(
    xr: &[E],
    dr: &[E],
    full: usize,
    mean: &[f32],
    s1: &mut [f64],
    s2: &mut [f64],
) {
    for ch in full..xr.len() {
        let d = dr[ch].to_f32() as f64;
        s1[ch] += d;
        s2[ch] += d * (xr[ch].to_f32() - mean[ch]) as f64;
    }
}

/// Per-channel coefficients of the input gradient: `dx = dy * a + (x - mean) * b + k`. For the
/// channels-innermost kernel each array is extended cyclically to `2 * C + MAX_LANES` entries
/// (`p[j] = p[j % C]`), as the forward's per-channel parameters are.
#[derive(Clone, Copy)]
pub(crate) struct GradCoefficients<'a> {
    pub mean: &'a [f32],
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub k: &'a [f32],
    /// Every channel's coefficients in `f64` when some channel's do not fit `f32` (see
    /// [`WideGrad`]), else empty. Channels-first rows of such a channel are computed in `f64`;
    /// channels-innermost rows are computed in `f64` throughout.
    pub wide: &'a [WideGrad],
}

/// The coefficients of `dx = dy * a + (x - mean) * b + k` as computed, in `f64`. The vector
/// kernels take them rounded to `f32`, which is exact enough only while each is zero or a
/// normal `f32`: one beyond the `f32` range (gamma or the inverse spread near the top of the
/// range) would give `inf * tiny` where the exact product is finite, and a subnormal one has
/// lost its relative precision. Runs of such a channel are computed here, element by element
/// in `f64`, where every term of a finite gradient is finite.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct WideGrad {
    pub mean: f32,
    pub a: f64,
    pub b: f64,
    pub k: f64,
}

impl WideGrad {
    /// `(mean, a, b, k)` rounded to `f32`, if each rounded coefficient is exactly zero, a normal
    /// `f32`, or NaN (which both forms propagate alike).
    pub(crate) fn narrow(&self) -> Option<(f32, f32, f32, f32)> {
        (fits_f32(self.a) && fits_f32(self.b) && fits_f32(self.k)).then_some((
            self.mean,
            self.a as f32,
            self.b as f32,
            self.k as f32,
        ))
    }

    /// The gradient of one element, in `f64`, rounded once.
    #[inline]
    pub(crate) fn dx(&self, dy: f32, x: f32) -> f32 {
        let xm = x as f64 - self.mean as f64;
        (dy as f64 * self.a + xm * self.b + self.k) as f32
    }

    /// A run of one channel: `io` maps `dy` to `dx`, `x` holds the same elements.
    pub(crate) fn apply<E: ElementIo>(&self, x: &[E], io: &mut RowIo<'_, E, E>) {
        apply_wide(x, io, |_| self);
    }
}

/// `dx` in `f64` over rows of channels-innermost data: element `i` of `io` (and of `x`) is
/// channel `i % wide.len()`.
pub(crate) fn apply_wide_cyclic<E: ElementIo>(
    wide: &[WideGrad],
    x: &[E],
    io: &mut RowIo<'_, E, E>,
) {
    let c = wide.len();
    apply_wide(x, io, |i| &wide[i % c]);
}

fn apply_wide<'w, E: ElementIo>(
    x: &[E],
    io: &mut RowIo<'_, E, E>,
    coef: impl Fn(usize) -> &'w WideGrad,
) {
    io.map_scalar(|i, dy| coef(i).dx(dy, x[i].to_f32()));
}

/// Whether `v` rounded to `f32` keeps its value to `f32` precision: exactly zero, a normal `f32`,
/// or NaN (which every form propagates alike). Coefficients that fail (beyond the range, or
/// subnormal) send their channel or row to an `f64` path.
pub(crate) fn fits_f32(v: f64) -> bool {
    let r = v as f32;
    r.is_nan() || (r == 0.0 && v == 0.0) || (r.is_finite() && r.abs() >= f32::MIN_POSITIVE)
}

/// The input gradient of one vector, `dx = (x - m) * b + (dy * a + k)`, with per-channel (or
/// per-row) coefficients: batch and group norm both use it.
#[inline(always)]
pub(crate) fn grad<V: F32Vec>(dy: V, x: V, m: V, a: V, b: V, k: V) -> V {
    x.sub(m).mul_add(b, dy.mul_add(a, k))
}

/// The coefficients `((mean, a), (b, k))` of one vector of channels, as [`nsc_periods`] zips
/// them from its four arrays.
type CoefficientSlices<'a> = ((&'a [f32], &'a [f32]), (&'a [f32], &'a [f32]));

/// [`grad`] of the vectors at `dy` and `x`, with the coefficient vectors at `c`.
#[inline(always)]
fn grad_at<V: F32Vec, E: ElementIo>(dy: &[E], x: &[E], c: CoefficientSlices<'_>) -> V {
    let ((m, a), (b, k)) = c;
    grad(
        V::read(dy),
        V::read(x),
        V::read(m),
        V::read(a),
        V::read(b),
        V::read(k),
    )
}

/// One channel's gradient over a span: `dy` is what the map receives, `x` the matching span.
struct UniformGrad<'a, V, E> {
    x: &'a [E],
    m: V,
    a: V,
    b: V,
    k: V,
}

impl<V: F32Vec, E: ElementIo> VectorMap<V> for UniformGrad<'_, V, E> {
    #[inline(always)]
    fn apply(&self, dy: V, i: usize, lanes: usize) -> V {
        grad(
            dy,
            V::read_lanes(&self.x[i..i + lanes], 0.0),
            self.m,
            self.a,
            self.b,
            self.k,
        )
    }
}

/// Channels-first rows: `io` maps whole rows of `dy` (read) to `dx` (written, possibly in
/// place), `x` holds the same rows; the first is row `first_row` of the tensor (row `r` belongs
/// to channel `r % channels`).
pub(crate) struct NcsGrad<'a, E = f32> {
    pub x: &'a [E],
    pub io: RowIo<'a, E, E>,
    pub first_row: usize,
    pub spatial: usize,
    pub channels: usize,
    pub coef: GradCoefficients<'a>,
    /// Streaming stores: for outputs much larger than the caches.
    pub stream: bool,
}

impl<E: ElementIo> Kernel for NcsGrad<'_, E> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(mut self) {
        let s = self.spatial;
        let rows = self.io.len() / s;
        let p = self.coef;
        let mut c = self.first_row % self.channels;
        for r in 0..rows {
            let span = r * s..(r + 1) * s;
            if let Some(w) = p.wide.get(c).filter(|w| w.narrow().is_none()) {
                w.apply(&self.x[span.clone()], &mut self.io.part(span));
                c = if c + 1 == self.channels { 0 } else { c + 1 };
                continue;
            }
            let map = UniformGrad {
                x: &self.x[span.clone()],
                m: V::splat(p.mean[c]),
                a: V::splat(p.a[c]),
                b: V::splat(p.b[c]),
                k: V::splat(p.k[c]),
            };
            let mut row = self.io.part(span);
            if self.stream {
                row.map_streaming::<V>(&map);
            } else {
                row.map::<V>(&map);
            }
            c = if c + 1 == self.channels { 0 } else { c + 1 };
        }
        if self.stream {
            V::fence_streams();
        }
    }
}

/// Channels-innermost rows: `io` maps whole rows of `channels` elements of `dy` to `dx`, `x`
/// holds the same rows. The vectors are visited in order; `channel` follows the channel of the
/// next vector's first lane.
struct CyclicGrad<'a, E> {
    x: &'a [E],
    coef: GradCoefficients<'a>,
    channels: usize,
    channel: Cell<usize>,
}

impl<V: F32Vec, E: ElementIo> VectorMap<V> for CyclicGrad<'_, E> {
    #[inline(always)]
    fn apply(&self, dy: V, i: usize, lanes: usize) -> V {
        let c0 = self.channel.get();
        let p = &self.coef;
        let (m, a, b, k) = if lanes == V::LANES {
            (
                V::read(&p.mean[c0..c0 + V::LANES]),
                V::read(&p.a[c0..c0 + V::LANES]),
                V::read(&p.b[c0..c0 + V::LANES]),
                V::read(&p.k[c0..c0 + V::LANES]),
            )
        } else {
            (
                V::read_partial(&p.mean[c0..c0 + lanes], 0.0),
                V::read_partial(&p.a[c0..c0 + lanes], 0.0),
                V::read_partial(&p.b[c0..c0 + lanes], 0.0),
                V::read_partial(&p.k[c0..c0 + lanes], 0.0),
            )
        };
        let next = c0 + lanes;
        self.channel.set(if next < self.channels {
            next
        } else {
            next % self.channels
        });
        grad(dy, V::read_lanes(&self.x[i..i + lanes], 0.0), m, a, b, k)
    }
}

/// Channels-innermost rows of `channels` elements: `io` maps `dy` to `dx`, `x` holds the same
/// rows. The coefficients are extended cyclically (see [`GradCoefficients`]).
pub(crate) struct NscGrad<'a, E = f32> {
    pub x: &'a [E],
    pub io: RowIo<'a, E, E>,
    pub channels: usize,
    pub coef: GradCoefficients<'a>,
    /// Streaming stores: for outputs much larger than the caches.
    pub stream: bool,
}

impl<E: ElementIo> Kernel for NscGrad<'_, E> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(mut self) {
        let (c, l) = (self.channels, V::LANES);
        if !self.coef.wide.is_empty() {
            apply_wide_cyclic(self.coef.wide, self.x, &mut self.io);
            return;
        }
        if c.is_multiple_of(l) {
            // A partial run up to an aligned output (for streaming), whole periods of `c`
            // elements (each starting at the same channel, so vector `j` of a period takes the
            // coefficients of window `j`, without per-vector bookkeeping), then the rest.
            let len = self.io.len();
            let head = if self.stream {
                match &self.io {
                    RowIo::Separate(_, y) => unaligned_head::<V, _>(y),
                    RowIo::InPlace(b) => unaligned_head::<V, _>(b),
                }
            } else {
                0
            };
            let body = head + (len - head) / c * c;
            let cyclic = |x, first| CyclicGrad {
                x,
                coef: self.coef,
                channels: c,
                channel: Cell::new(first),
            };
            self.io.part(0..head).map::<V>(&cyclic(&self.x[..head], 0));
            let mut part = self.io.part(head..body);
            if self.stream {
                nsc_periods::<V, E, true>(&self.x[head..body], &mut part, c, head, &self.coef);
                V::fence_streams();
            } else {
                nsc_periods::<V, E, false>(&self.x[head..body], &mut part, c, head, &self.coef);
            }
            self.io
                .part(body..len)
                .map::<V>(&cyclic(&self.x[body..], head));
            return;
        }
        let map = CyclicGrad {
            x: self.x,
            coef: self.coef,
            channels: self.channels,
            channel: Cell::new(0),
        };
        if self.stream {
            self.io.map_streaming::<V>(&map);
            V::fence_streams();
        } else {
            self.io.map::<V>(&map);
        }
    }
}

/// One channel of a channels-first tensor in one visit: its sums (`grad`, over all its `rows`
/// rows), then its input gradient while its rows are still in cache: `io_row(n)` maps row `n`
/// of `dy` to `dx`; `coef` turns the sums (as [`ChannelGrad`] gives
/// them) into the channel's coefficients. Returns the sums.
pub(crate) struct ChannelBackward<'r, X, D, Io, P> {
    pub grad: ChannelGrad<'r, X, D>,
    pub rows: usize,
    pub io_row: &'r Io,
    pub coef: &'r P,
    /// Streaming stores: for outputs much larger than the caches.
    pub stream: bool,
}

impl<'a, 'b, 'o, E, X, D, Io, P> Kernel for ChannelBackward<'_, X, D, Io, P>
where
    E: ElementIo,
    X: Fn(usize) -> &'a [E],
    D: Fn(usize) -> &'b [E],
    Io: Fn(usize) -> RowIo<'o, E, E>,
    P: Fn(GradSums) -> WideGrad,
{
    type Output = GradSums;
    #[inline(always)]
    fn run<V: F32Vec>(self) -> GradSums {
        let x_row = self.grad.x_row;
        let sums = self.grad.run::<V>();
        let wide = (self.coef)(sums);
        let Some((m, a, b, k)) = wide.narrow() else {
            for n in 0..self.rows {
                wide.apply(x_row(n), &mut (self.io_row)(n));
            }
            return sums;
        };
        for n in 0..self.rows {
            let map = UniformGrad {
                x: x_row(n),
                m: V::splat(m),
                a: V::splat(a),
                b: V::splat(b),
                k: V::splat(k),
            };
            let mut row = (self.io_row)(n);
            if self.stream {
                row.map_streaming::<V>(&map);
            } else {
                row.map::<V>(&map);
            }
        }
        if self.stream {
            V::fence_streams();
        }
        sums
    }
}

/// Whole periods of `channels` elements (a multiple of `LANES`), each starting at channel `c0`;
/// with `STREAM` the output is vector-aligned and written with streaming stores.
#[inline(always)]
fn nsc_periods<V: F32Vec, E: ElementIo, const STREAM: bool>(
    x: &[E],
    io: &mut RowIo<'_, E, E>,
    channels: usize,
    c0: usize,
    p: &GradCoefficients<'_>,
) {
    let l = V::LANES;
    let w = c0..c0 + channels;
    let (m, a, b, k) = (
        &p.mean[w.clone()],
        &p.a[w.clone()],
        &p.b[w.clone()],
        &p.k[w],
    );
    let wide_registers = tile_vectors::<V>() == 4;
    match channels / l {
        1 => return nsc_periods_in_registers::<V, E, STREAM, 1>(x, io, [m, a, b, k]),
        2 => return nsc_periods_in_registers::<V, E, STREAM, 2>(x, io, [m, a, b, k]),
        3 if wide_registers => {
            return nsc_periods_in_registers::<V, E, STREAM, 3>(x, io, [m, a, b, k]);
        }
        4 if wide_registers => {
            return nsc_periods_in_registers::<V, E, STREAM, 4>(x, io, [m, a, b, k]);
        }
        _ => {}
    }
    // Wide rows in blocks of channels, each over every row of the run (see
    // `normalize::WIDE_ROW_CHANNEL_BLOCK`).
    for cb in (0..channels).step_by(WIDE_ROW_CHANNEL_BLOCK) {
        let block = cb..channels.min(cb + WIDE_ROW_CHANNEL_BLOCK);
        let [m, a, b, k] = [m, a, b, k].map(|c| &c[block.clone()]);
        let coef = || {
            m.chunks_exact(l)
                .zip(a.chunks_exact(l))
                .zip(b.chunks_exact(l).zip(k.chunks_exact(l)))
        };
        match io {
            RowIo::Separate(dy, dx) => {
                let rows = x
                    .chunks_exact(channels)
                    .zip(dy.chunks_exact(channels))
                    .zip(dx.chunks_exact_mut(channels));
                for ((xr, dr), or) in rows {
                    let (xr, dr, or) = (
                        &xr[block.clone()],
                        &dr[block.clone()],
                        &mut or[block.clone()],
                    );
                    let data = xr.chunks_exact(l).zip(dr.chunks_exact(l));
                    for (((xs, ds), os), c) in data.zip(or.chunks_exact_mut(l)).zip(coef()) {
                        store_vector::<V, _, STREAM>(grad_at::<V, E>(ds, xs, c), os);
                    }
                }
            }
            RowIo::InPlace(buf) => {
                let rows = x.chunks_exact(channels).zip(buf.chunks_exact_mut(channels));
                for (xr, br) in rows {
                    let (xr, br) = (&xr[block.clone()], &mut br[block.clone()]);
                    let data = xr.chunks_exact(l).zip(br.chunks_exact_mut(l));
                    for ((xs, bs), c) in data.zip(coef()) {
                        store_vector::<V, _, STREAM>(grad_at::<V, E>(bs, xs, c), bs);
                    }
                }
            }
        }
    }
}

/// [`nsc_periods`] for `K * LANES` channels, with the coefficients `[mean, a, b, k]` loaded
/// once into registers (`4 * K` of them: up to 4 vectors where the ISA has 32 registers, up to
/// 2 where it has 16): with so few channels, the loads of four coefficient vectors per vector of
/// data would be most of the loads, and a row is a handful of vectors.
#[inline(always)]
fn nsc_periods_in_registers<V: F32Vec, E: ElementIo, const STREAM: bool, const K: usize>(
    x: &[E],
    io: &mut RowIo<'_, E, E>,
    coef: [&[f32]; 4],
) {
    let l = V::LANES;
    let [m, a, b, k]: [[V; K]; 4] = [
        V::read_tile(coef[0]),
        V::read_tile(coef[1]),
        V::read_tile(coef[2]),
        V::read_tile(coef[3]),
    ];
    match io {
        RowIo::Separate(dy, dx) => {
            let rows = x
                .chunks_exact(K * l)
                .zip(dy.chunks_exact(K * l))
                .zip(dx.chunks_exact_mut(K * l));
            for ((xr, dr), or) in rows {
                for j in 0..K {
                    let at = j * l..(j + 1) * l;
                    let v = grad(
                        V::read(&dr[at.clone()]),
                        V::read(&xr[at.clone()]),
                        m[j],
                        a[j],
                        b[j],
                        k[j],
                    );
                    store_vector::<V, _, STREAM>(v, &mut or[at]);
                }
            }
        }
        RowIo::InPlace(buf) => {
            for (xr, br) in x.chunks_exact(K * l).zip(buf.chunks_exact_mut(K * l)) {
                for j in 0..K {
                    let at = j * l..(j + 1) * l;
                    let v = grad(
                        V::read(&br[at.clone()]),
                        V::read(&xr[at.clone()]),
                        m[j],
                        a[j],
                        b[j],
                        k[j],
                    );
                    store_vector::<V, _, STREAM>(v, &mut br[at]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The kernels with 16 and 8 emulated lanes (the code paths of AVX-512 and AVX2 on any CPU)
    //! against plain `f64` loops; the operations are checked against a separate reference in
    //! the integration tests.

    use super::*;
    use crate::simd::MAX_LANES;
    use crate::simd::emulated::Emulated;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32 ^ seed)
                    .wrapping_mul(2_654_435_761)
                    .rotate_left(13);
                (h % 20_000) as f32 / 1000.0 - 10.0
            })
            .collect()
    }

    fn close(got: f64, want: f64, scale: f64) -> bool {
        (got - want).abs() <= 1e-5 * scale + 1e-30
    }

    fn row_grad<V: F32Vec>(rows: usize, c: usize) {
        let (x, dy, mean) = (data(rows * c, 1), data(rows * c, 2), data(c, 3));
        let mut out = vec![GradSums::default(); c];
        RowGrad {
            x: &x,
            dy: &dy,
            channels: c,
            mean: &mean,
            out: &mut out,
        }
        .run::<V>();
        for ch in 0..c {
            let (mut s1, mut s2, mut a1, mut a2) = (0.0, 0.0, 0.0, 0.0);
            for r in 0..rows {
                let (xv, d) = (x[r * c + ch] as f64, dy[r * c + ch] as f64);
                s1 += d;
                s2 += d * (xv - mean[ch] as f64);
                a1 += d.abs();
                a2 += (d * (xv - mean[ch] as f64)).abs();
            }
            assert!(close(out[ch].dy, s1, a1), "{rows}x{c} channel {ch}");
            assert!(close(out[ch].dy_xm, s2, a2), "{rows}x{c} channel {ch}");
        }
    }

    fn channel_grad<V: F32Vec>(rows: usize, s: usize, range: Range<usize>) {
        let (x, dy) = (data(rows * s, 4), data(rows * s, 5));
        let x_row = |n: usize| &x[n * s..(n + 1) * s];
        let dy_row = |n: usize| &dy[n * s..(n + 1) * s];
        let got = ChannelGrad {
            x_row: &x_row,
            dy_row: &dy_row,
            spatial: s,
            range: range.clone(),
            mean: 0.5,
        }
        .run::<V>();
        let (mut s1, mut s2, mut a) = (0.0, 0.0, 0.0);
        for v in range {
            let (xv, d) = (x[v] as f64, dy[v] as f64);
            s1 += d;
            s2 += d * (xv - 0.5);
            a += d.abs() * (1.0 + (xv - 0.5).abs());
        }
        assert!(
            close(got.dy, s1, a) && close(got.dy_xm, s2, a),
            "{rows}x{s}"
        );
    }

    /// Per-channel coefficients extended cyclically, as the ops layer makes them.
    fn coefficients(c: usize) -> Vec<Vec<f32>> {
        (0..4)
            .map(|k| {
                let base = data(c, 10 + k);
                (0..2 * c + MAX_LANES).map(|j| base[j % c]).collect()
            })
            .collect()
    }

    fn want_dx(x: &[f32], dy: &[f32], p: &[Vec<f32>], ch: usize, i: usize) -> (f64, f64) {
        let (m, a, b, k) = (
            p[0][ch] as f64,
            p[1][ch] as f64,
            p[2][ch] as f64,
            p[3][ch] as f64,
        );
        let (xv, d) = (x[i] as f64, dy[i] as f64);
        let t = [d * a, (xv - m) * b, k];
        (t.iter().sum(), t.iter().map(|v| v.abs()).sum())
    }

    fn nsc_grad<V: F32Vec>(rows: usize, c: usize, stream: bool, offset: usize) {
        let n = rows * c;
        let (x, dy) = (data(n, 6), data(n, 7));
        let p = coefficients(c);
        let coef = GradCoefficients {
            mean: &p[0],
            a: &p[1],
            b: &p[2],
            k: &p[3],
            wide: &[],
        };
        let mut buf = vec![0f32; n + offset];
        NscGrad {
            x: &x,
            io: RowIo::Separate(&dy, &mut buf[offset..]),
            channels: c,
            coef,
            stream,
        }
        .run::<V>();
        for i in 0..n {
            let (want, scale) = want_dx(&x, &dy, &p, i % c, i);
            let got = buf[offset + i] as f64;
            assert!(
                close(got, want, scale),
                "{rows}x{c} at {i}: {got} vs {want}"
            );
        }
    }

    fn ncs_grad<V: F32Vec>(rows: usize, c: usize, s: usize, first_row: usize, stream: bool) {
        let n = rows * s;
        let (x, dy) = (data(n, 8), data(n, 9));
        let p = coefficients(c);
        let coef = GradCoefficients {
            mean: &p[0],
            a: &p[1],
            b: &p[2],
            k: &p[3],
            wide: &[],
        };
        let mut dx = dy.clone();
        NcsGrad {
            x: &x,
            io: RowIo::InPlace(&mut dx),
            first_row,
            spatial: s,
            channels: c,
            coef,
            stream,
        }
        .run::<V>();
        for (i, &got) in dx.iter().enumerate() {
            let ch = (first_row + i / s) % c;
            let (want, scale) = want_dx(&x, &dy, &p, ch, i);
            assert!(close(got as f64, want, scale), "{rows}x{s} at {i}");
        }
    }

    /// Channel 1's coefficient of `x - mean` is beyond f32 (about 1e45) while every gradient
    /// is finite: its rows (channels first) or every row (channels innermost) take the `f64`
    /// path; the other channels keep the vector form.
    fn wide_grad<V: F32Vec>(rows: usize, c: usize, s: usize) {
        let n = rows * c * s;
        let x: Vec<f32> = data(n, 20).iter().map(|v| v * 1e-10).collect();
        let dy = data(n, 21);
        let wide: Vec<WideGrad> = (0..c)
            .map(|ch| {
                let big = if ch == 1 { 1e35 } else { 1.0 };
                WideGrad {
                    mean: 1e-10,
                    a: 0.5 * big,
                    b: -3e10 * big,
                    k: 0.25 * big,
                }
            })
            .collect();
        let p = coefficients(c);
        let mut q = p.clone();
        for (ch, w) in wide.iter().enumerate() {
            if let Some((m, a, b, k)) = w.narrow() {
                for j in (ch..q[0].len()).step_by(c) {
                    (q[0][j], q[1][j], q[2][j], q[3][j]) = (m, a, b, k);
                }
            }
        }
        let coef = GradCoefficients {
            mean: &q[0],
            a: &q[1],
            b: &q[2],
            k: &q[3],
            wide: &wide,
        };
        let want = |i: usize, ch: usize| {
            let w = &wide[ch];
            let v = dy[i] as f64 * w.a + (x[i] as f64 - w.mean as f64) * w.b + w.k;
            let scale = (dy[i] as f64 * w.a).abs()
                + ((x[i] as f64 - w.mean as f64) * w.b).abs()
                + w.k.abs();
            (v, scale)
        };
        // Channels first: rows of `s` elements, row r of channel r % c.
        let mut dx = vec![0f32; n];
        NcsGrad {
            x: &x,
            io: RowIo::Separate(&dy, &mut dx),
            first_row: 0,
            spatial: s,
            channels: c,
            coef,
            stream: false,
        }
        .run::<V>();
        for (i, &got) in dx.iter().enumerate() {
            let (w, scale) = want(i, (i / s) % c);
            assert!(
                got.is_finite() && close(got as f64, w, scale),
                "ncs {i}: {got} vs {w}"
            );
        }
        let x_row = |r: usize| &x[(r * c + 1) * s..(r * c + 2) * s];
        let dy_row = |r: usize| &dy[(r * c + 1) * s..(r * c + 2) * s];
        let mut out = dy.clone();
        let ptr = out.as_mut_ptr() as usize;
        let io_row = |r: usize| {
            let start = (r * c + 1) * s;
            // SAFETY: rows are disjoint parts of `out`, each borrowed once, one at a time, and
            // `dy_row` reads `dy`, not `out`.
            RowIo::InPlace(unsafe {
                std::slice::from_raw_parts_mut((ptr as *mut f32).add(start), s)
            })
        };
        ChannelBackward {
            grad: ChannelGrad {
                x_row: &x_row,
                dy_row: &dy_row,
                spatial: s,
                range: 0..rows * s,
                mean: 1e-10,
            },
            rows,
            io_row: &io_row,
            coef: &|_| wide[1],
            stream: false,
        }
        .run::<V>();
        for r in 0..rows {
            let span = (r * c + 1) * s..(r * c + 2) * s;
            for (i, &got) in span.clone().zip(&out[span]) {
                let (w, scale) = want(i, 1);
                assert!(
                    got.is_finite() && close(got as f64, w, scale),
                    "channel {i}: {got}"
                );
            }
        }
        // Channels innermost: every element in f64.
        let mut dx = vec![0f32; rows * s * c];
        NscGrad {
            x: &x,
            io: RowIo::Separate(&dy, &mut dx),
            channels: c,
            coef,
            stream: false,
        }
        .run::<V>();
        for (i, &got) in dx.iter().enumerate() {
            let (w, scale) = want(i, i % c);
            assert!(
                got.is_finite() && close(got as f64, w, scale),
                "nsc {i}: {got} vs {w}"
            );
        }
    }

    fn all<V: F32Vec>() {
        // Rows wider than TILED_MAX_CHANNELS take the row-by-row reduction.
        for c in [TILED_MAX_CHANNELS, TILED_MAX_CHANNELS + 1, 300, 1029] {
            row_grad::<V>(70, c);
        }
        for c in [1, 3, 8, 16, 17, 24, 32, 48, 64, 67, 112, 119] {
            row_grad::<V>(150, c);
            for stream in [false, true] {
                for offset in [0, 1, 5] {
                    nsc_grad::<V>(9, c, stream, offset);
                }
            }
        }
        wide_grad::<V>(3, 2, 37);
        wide_grad::<V>(5, 17, 1);
        wide_grad::<V>(2, 3, 40);
        channel_grad::<V>(5, 37, 0..185);
        channel_grad::<V>(3, 1000, 10..2990);
        channel_grad::<V>(2, 3000, 100..5000);
        for stream in [false, true] {
            ncs_grad::<V>(7, 3, 37, 2, stream);
            ncs_grad::<V>(2, 5, 100, 4, stream);
        }
    }

    #[test]
    fn sixteen_lanes() {
        all::<Emulated<16>>();
    }

    #[test]
    fn eight_lanes() {
        all::<Emulated<8>>();
    }

    #[test]
    fn four_lanes() {
        all::<Emulated<4>>();
    }
}
