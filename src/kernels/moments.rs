//! Per-channel moments (count, mean, M2) in one pass over the data.
//!
//! Values are accumulated in blocks. Within a block every lane sums `d = x - K` and `d * d` in
//! `f64` (see [`super::sums`]: `d` is the only rounding, the square is exact), where the shift
//! `K` is the first value of the run for the first block and the running mean (rounded to `f32`)
//! for every later block, so `d` is small whatever the data's offset and `x - K` is exact for
//! values near `K`. Each block's sums become `(count, mean, M2)`, and blocks, chunks and shards
//! are merged with Chan et al.'s pairwise formula, in a fixed order.
//!
//! Accuracy: with `D^2` the mean of `(x - K)^2` over the values, the mean is within
//! `2^-24 * D` and M2 within `2 * 2^-24 * D / sigma` of itself (relative), plus `f64` rounding.
//! The checks below keep `D <= sqrt(18) * sigma` (`sigma^2 = M2 / n`): so the mean is within
//! `4.3 * 2^-24 * sigma` and M2 within `8.5 * 2^-24` relative, whatever the count and offset.
//!
//! A block's sums are not trusted when the first block of a run has its first value far from
//! the block's mean (`sum(d * d) > 16 * M2`: the sums would cancel and `D` grow), or when they
//! are not finite (`x - K` overflowing `f32`, or NaN and infinities). Later blocks are shifted by
//! the running mean, which lies close to them in the sense that counts: over a run,
//! `sum((x - K)^2) <= 16 * M2(first block) + 2 * M2 <= 18 * M2` (Chan's merge of equal-sized
//! blocks).
//!
//! Channels-innermost runs (rows of channels, each lane one channel) shift every row by one
//! value per channel: the mean of the first [`SHIFT_ROWS`] rows. Their sums then add up in `f64`
//! with no merge per block, or per chunk when a tensor is summed in parallel chunks, and become
//! moments once per channel ([`ShiftedPasses`]), checked like a first block. Data whose mean
//! drifts along the rows (the rows far from the first ones) fails that check.
//!
//! Sums that are not trusted are summed again by the same kernels with `f64` shifts (see
//! [`Shift`]): each value widened exactly, the shift subtracted in `f64`, so `d` rounds to
//! `2^-53` of itself and never overflows. The shift is the mean the untrusted sums give (or 0
//! if they are not finite), within `2^-24 * D` of the true mean: one more pass over the values
//! (a block, or the part of a channels-innermost chunk, still in cache) gives sums accurate to
//! `f64` rounding. A pass is settled when its `sum(d * d)` is at most
//! [`WIDE_LIMIT`] times its M2 (the cancellation then costs at most `2^-53 * WIDE_LIMIT`
//! relative) or when it is not finite (NaN or infinities in the data: the moments are then NaN or
//! infinite, as the data's); otherwise its own mean shifts the next pass, at most
//! [`WIDE_PASSES`] in all. The cost of data that fails every check is thus about one more read
//! of each value from cache, vectorized and parallel like the first.

use super::sums::Sums2;
use crate::io::Spread;
use crate::scratch;
use crate::simd::element::ElementIo;
use crate::simd::{F32Vec, F64Vec, Kernel, U32Vec};
use std::ops::Range;

/// Elements per block of a contiguous run: each block's sums become moments (or, in the
/// backward, are added), merged in order. The one definition for every kernel.
pub(crate) const BLOCK: usize = 2048;

/// Rows per block of a channels-innermost run (a block's rows are summed tile by tile while the
/// block is in L1 and L2), and of the column sums of layer and RMS norm. The one definition.
pub(crate) const ROW_BLOCK: usize = 64;

/// Widest rows (in channels) the channels-innermost moments sum tile by tile in registers (a
/// block of `ROW_BLOCK` such rows is 64 KiB, in L1 and L2 while its tiles visit it); wider rows
/// are summed row by row with the sums in memory, each row read once, front to back: a tile
/// visiting 128 bytes of every row of several kilobytes defeats the hardware prefetchers (they
/// do not cross pages) and maps every access of a pass to the same few cache sets.
pub(crate) const TILED_MAX_CHANNELS: usize = 256;
/// Rows the row-by-row kernels for wide rows (wider than [`TILED_MAX_CHANNELS`]) sum per vector
/// of channels in registers before adding to the sums in memory: one load and store of the
/// sums per group instead of per row or two (which bound those kernels by their stores).
pub(crate) const WIDE_GROUP_ROWS: usize = 8;
/// Vectors of channels the row-by-row kernels sum side by side over a group of rows: independent
/// chains of additions, so that the adds' latency overlaps instead of bounding the loop.
pub(crate) const WIDE_TILE: usize = 4;
/// Floats per cache line.
pub(crate) const LINE_FLOATS: usize = crate::simd::LINE_BYTES / 4;

/// A pass with `f64` shifts is settled when `sum(d * d) <= WIDE_LIMIT * M2`, i.e. its shift lies
/// within `sqrt(WIDE_LIMIT) = 1024` spreads of the mean: the cancellation in `M2 = sum(d * d) -
/// sum(d)^2 / n` then loses at most `2^-53 * 2^20 = 2^-33` relative, far below an `f32`
/// rounding.
const WIDE_LIMIT: f64 = (1u64 << 20) as f64;
/// Most passes with `f64` shifts over values whose `f32`-shifted sums failed. The first pass's
/// shift is within `2^-24 * D` of the mean, so a second is needed only if `D` exceeded `2^34`
/// spreads, a third never (each pass shrinks the distance by `2^-53`); the last pass is taken
/// whatever it gives.
const WIDE_PASSES: usize = 3;

/// Count, mean and sum of squared deviations from the mean (M2) of a set of values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Moments {
    /// How many values.
    pub count: u64,
    /// Their mean (0 for no values).
    pub mean: f64,
    /// The sum of their squared deviations from `mean`; the variance is `m2 / count`.
    pub m2: f64,
}

impl Moments {
    /// The moments of no values: the identity of [`Moments::merge`].
    pub const EMPTY: Moments = Moments {
        count: 0,
        mean: 0.0,
        m2: 0.0,
    };

    /// The moments of the union of two disjoint sets (Chan, Golub and LeVeque). The caller
    /// ensures the counts' sum fits in `u64`.
    #[inline]
    pub fn merge(self, other: Moments) -> Moments {
        if other.count == 0 {
            return self;
        }
        if self.count == 0 {
            return other;
        }
        let count = self.count + other.count;
        let (na, nb, n) = (self.count as f64, other.count as f64, count as f64);
        let delta = other.mean - self.mean;
        Moments {
            count,
            mean: self.mean + delta * (nb / n),
            m2: self.m2 + other.m2 + delta * delta * (na * nb / n),
        }
    }

    /// `acc[i] = acc[i].merge(part[i])` for sets whose counts are the same in every position
    /// (the channels of one chunk): the merge weights are computed once, not per channel.
    pub(crate) fn merge_each(acc: &mut [Moments], part: &[Moments]) {
        let (Some(a0), Some(b0)) = (acc.first().copied(), part.first().copied()) else {
            return;
        };
        let (na, nb) = (a0.count, b0.count);
        let n = (na + nb) as f64;
        let (w_b, w_ab) = (nb as f64 / n, na as f64 * nb as f64 / n);
        for (a, &b) in acc.iter_mut().zip(part) {
            if a.count != na || b.count != nb || na == 0 || nb == 0 {
                *a = a.merge(b);
                continue;
            }
            let delta = b.mean - a.mean;
            *a = Moments {
                count: na + nb,
                mean: a.mean + delta * w_b,
                m2: a.m2 + b.m2 + delta * delta * w_ab,
            };
        }
    }

    /// Whether the `f32`-shifted sums `s1`, `s2` of `n` values can be trusted. Not if not finite
    /// (`x - shift` overflowing `f32`, NaN or infinities in the data), nor, for the first block
    /// of a run (`first`), if the shift lies more than about four spreads from the block's mean
    /// (`s2 > 16 * M2`), which would loosen the accuracy bound (see the module documentation).
    ///
    /// Branch-free, so that a loop over channels vectorizes.
    #[inline(always)]
    fn sums_trusted(n: f64, s1: f64, s2: f64, first: bool) -> bool {
        let finite = (s1.abs() <= f64::MAX) & (s2.abs() <= f64::MAX);
        let cancels = first & (s2 > 16.0 * Moments::shifted_m2(n, s1, s2));
        finite & !cancels
    }

    /// Whether the `f64`-shifted sums `s1`, `s2` of `n` values are final: not finite (NaN or
    /// infinities in the data, which no shift changes), or the shift within `sqrt(WIDE_LIMIT)`
    /// spreads of the mean.
    #[inline(always)]
    fn wide_settled(n: f64, s1: f64, s2: f64) -> bool {
        let finite = (s1.abs() <= f64::MAX) & (s2.abs() <= f64::MAX);
        !finite | (s2 <= WIDE_LIMIT * Moments::shifted_m2(n, s1, s2))
    }

    /// M2 of `n` values from `s1 = sum(x - shift)` and `s2 = sum((x - shift)^2)`. Rounding may
    /// leave a tiny negative M2 for constant data, clamped to 0; NaN stays NaN.
    #[inline(always)]
    fn shifted_m2(n: f64, s1: f64, s2: f64) -> f64 {
        let m2 = s2 - s1 * (s1 / n);
        if m2 < 0.0 { 0.0 } else { m2 }
    }

    /// The moments of `count` values from `s1 = sum(x - shift)` and `s2 = sum((x - shift)^2)`.
    #[inline]
    fn from_shifted_sums(count: usize, shift: f64, s1: f64, s2: f64) -> Moments {
        let n = count as f64;
        Moments {
            count: count as u64,
            mean: shift + s1 / n,
            m2: Moments::shifted_m2(n, s1, s2),
        }
    }

    /// The first `f64` shift for values whose `f32`-shifted sums failed: the mean those sums
    /// give, or 0 where they are not finite (the data's own sums in `f64` then find the mean,
    /// or find it not finite).
    #[inline(always)]
    fn first_wide_shift(count: usize, shift: f32, s1: f64) -> f64 {
        let mean = shift as f64 + s1 / count as f64;
        if mean.is_finite() { mean } else { 0.0 }
    }
}

/// How the sums subtract a shift `K` from each value: an `f32` shift in `f32` (the normal pass:
/// `d = x - K` rounds once, relative to `d`), an `f64` shift in `f64` (the pass over values
/// whose `f32`-shifted sums failed: `x` widened exactly, `d` rounding to `2^-53` of itself).
/// Every summing kernel below is written once over this.
pub(crate) trait Shift: Copy {
    /// The shifts of the lanes of one vector.
    type Lanes<V: F32Vec>: Copy;
    /// Every lane shifted by `self`.
    fn splat<V: F32Vec>(self) -> Self::Lanes<V>;
    /// The shifts of `V::LANES` consecutive lanes, from the front of `shift`.
    fn load<V: F32Vec>(shift: &[Self]) -> Self::Lanes<V>;
    /// The shifts of `T` vectors one after the other, from the front of `shift` (a loop, for
    /// the reason [`F32Vec::read_tile`] gives).
    #[inline(always)]
    fn load_tile<V: F32Vec, const T: usize>(shift: &[Self]) -> [Self::Lanes<V>; T] {
        let mut tile = [Self::load::<V>(shift); T];
        for (j, k) in tile.iter_mut().enumerate().skip(1) {
            *k = Self::load::<V>(&shift[j * V::LANES..]);
        }
        tile
    }
    /// Adds `d = x - k` and `d * d` of every lane to `acc`.
    fn add<V: F32Vec>(acc: &mut Sums2<V>, x: V, k: Self::Lanes<V>);
    /// Adds `d = x - self` and `d * d` of the values of `tail` (fewer than `V::LANES`) to
    /// `acc`, lane by lane; the lanes past the tail add exactly 0.
    fn add_tail<V: F32Vec, X: ElementIo>(self, acc: &mut Sums2<V>, tail: &[X]);
    /// `d = x - self` of one value, rounded as [`Shift::add`] rounds it.
    fn deviation(self, x: f32) -> f64;
}

impl Shift for f32 {
    type Lanes<V: F32Vec> = V;

    #[inline(always)]
    fn splat<V: F32Vec>(self) -> V {
        V::splat(self)
    }

    #[inline(always)]
    fn load<V: F32Vec>(shift: &[f32]) -> V {
        V::load(shift)
    }

    #[inline(always)]
    fn add<V: F32Vec>(acc: &mut Sums2<V>, x: V, k: V) {
        let d = x.sub(k);
        acc.add(d, d);
    }

    #[inline(always)]
    fn add_tail<V: F32Vec, X: ElementIo>(self, acc: &mut Sums2<V>, tail: &[X]) {
        // Lanes past the tail load the shift, so their d is exactly 0.
        let d = V::read_partial(tail, self).sub(V::splat(self));
        acc.add(d, d);
    }

    #[inline(always)]
    fn deviation(self, x: f32) -> f64 {
        (x - self) as f64
    }
}

impl Shift for f64 {
    /// The negated shifts, in the lane order of [`F32Vec::widen`].
    type Lanes<V: F32Vec> = (V::D, V::D);

    #[inline(always)]
    fn splat<V: F32Vec>(self) -> (V::D, V::D) {
        let k = V::D::splat(-self);
        (k, k)
    }

    #[inline(always)]
    fn load<V: F32Vec>(shift: &[f64]) -> (V::D, V::D) {
        let h = V::D::LANES;
        let minus = V::D::splat(-1.0);
        (
            V::D::load(&shift[..h]).mul(minus),
            V::D::load(&shift[h..2 * h]).mul(minus),
        )
    }

    #[inline(always)]
    fn add<V: F32Vec>(acc: &mut Sums2<V>, x: V, k: (V::D, V::D)) {
        let (x0, x1) = x.widen();
        acc.add_wide(x0.add(k.0), x1.add(k.1));
    }

    #[inline(always)]
    fn add_tail<V: F32Vec, X: ElementIo>(self, acc: &mut Sums2<V>, tail: &[X]) {
        // Lanes past the tail load 0 (so their d is -self, finite) and weigh 0.
        let (x0, x1) = V::read_partial(tail, 0.0).widen();
        let w = V::select_bits((1 << tail.len()) - 1, V::splat(1.0), V::splat(0.0));
        let (w0, w1) = w.widen();
        let k = V::D::splat(-self);
        acc.add_wide_weighted((x0.add(k), x1.add(k)), (w0, w1));
    }

    #[inline(always)]
    fn deviation(self, x: f32) -> f64 {
        x as f64 - self
    }
}

/// Adds `d = x - shift` and `d * d` of every element of `seg` to the lane sums (two
/// accumulators, so that two chains of `f64` additions run at once), prefetching along as
/// `spread` says (anchored at `seg[0]`).
#[inline(always)]
fn accumulate<V: F32Vec, X: ElementIo, S: Shift>(
    seg: &[X],
    shift: S,
    acc: &mut [Sums2<V>; 2],
    spread: Spread,
) {
    let l = V::LANES;
    let k = shift.splat::<V>();
    let mut pairs = seg.chunks_exact(2 * l);
    for (j, p) in (&mut pairs).enumerate() {
        spread.at::<V, X>(j * 2 * l);
        S::add(&mut acc[0], V::read(p), k);
        S::add(&mut acc[1], V::read(&p[l..]), k);
    }
    let rest = pairs.remainder();
    if rest.len() >= l {
        S::add(&mut acc[0], V::read(rest), k);
    }
    let tail = &rest[rest.len() / l * l..];
    if !tail.is_empty() {
        shift.add_tail(&mut acc[1], tail);
    }
}

/// `(sum(x - shift), sum((x - shift)^2))` over the virtual elements `range` of one channel
/// (see [`channel_moments`]), prefetching along as `spread` says (anchored at virtual element
/// 0).
#[inline(always)]
fn run_sums<'a, V: F32Vec, X: ElementIo, S: Shift>(
    row: &impl Fn(usize) -> &'a [X],
    spatial: usize,
    range: Range<usize>,
    shift: S,
    spread: Spread,
) -> (f64, f64) {
    let mut sums = [Sums2::<V>::zero(); 2];
    // One division for the first row, none per row after it.
    let (mut n, mut s) = (range.start / spatial, range.start % spatial);
    let mut left = range.len();
    while left > 0 {
        let len = left.min(spatial - s);
        let seg = spread.from::<X>(n * spatial + s);
        accumulate(&row(n)[s..s + len], shift, &mut sums, seg);
        left -= len;
        (n, s) = (n + 1, 0);
    }
    sums[0].merge(sums[1]).totals()
}

/// The moments of `count` values whose `f32`-shifted sums failed, from passes with `f64` shifts
/// (see the module documentation): `pass` (1 first) gave the values' sums `s1` of `x - k` and
/// `s2` of its square, `k` first the mean from [`Moments::first_wide_shift`]. `Ok` when they
/// are the moments, `Err` with the next pass's shift otherwise. (The caller runs the passes: a
/// closure taking the pass would be compiled without its kernel's target features.)
#[inline(always)]
fn wide_moments(count: usize, pass: usize, k: f64, s1: f64, s2: f64) -> Result<Moments, f64> {
    let m = Moments::from_shifted_sums(count, k, s1, s2);
    if pass == WIDE_PASSES || Moments::wide_settled(count as f64, s1, s2) {
        Ok(m)
    } else {
        Err(m.mean)
    }
}

/// The moments of the virtual elements `range` of one channel whose values lie in rows of
/// `spatial` contiguous elements: virtual element `v` is `row(v / spatial)[v % spatial]`. The
/// first pass over the values prefetches along as `spread` says (anchored at virtual element
/// 0; the rare retry passes in `f64` do not).
#[inline(always)]
pub(crate) fn channel_moments<'a, V: F32Vec, X: ElementIo>(
    row: &impl Fn(usize) -> &'a [X],
    spatial: usize,
    range: Range<usize>,
    spread: Spread,
) -> Moments {
    let mut acc = Moments::EMPTY;
    if range.is_empty() {
        return acc;
    }
    let mut shift = row(range.start / spatial)[range.start % spatial].to_f32();
    let mut start = range.start;
    while start < range.end {
        let end = range.end.min(start + BLOCK);
        let (s1, s2) = run_sums::<V, X, f32>(row, spatial, start..end, shift, spread);
        let count = end - start;
        let first = start == range.start;
        let block = if Moments::sums_trusted(count as f64, s1, s2, first) {
            Moments::from_shifted_sums(count, shift as f64, s1, s2)
        } else {
            let mut k = Moments::first_wide_shift(count, shift, s1);
            let mut pass = 1;
            loop {
                let (s1, s2) = run_sums::<V, X, f64>(row, spatial, start..end, k, Spread::NONE);
                match wide_moments(count, pass, k, s1, s2) {
                    Ok(m) => break m,
                    Err(next) => (k, pass) = (next, pass + 1),
                }
            }
        };
        acc = acc.merge(block);
        if acc.mean.is_nan() {
            // NaN in the data: the result is NaN whatever follows.
            return Moments {
                count: range.len() as u64,
                mean: f64::NAN,
                m2: f64::NAN,
            };
        }
        shift = acc.mean as f32;
        start = end;
    }
    acc
}

/// [`channel_moments`] as a dispatchable kernel.
pub(crate) struct ChannelMoments<'r, F> {
    pub row: &'r F,
    pub spatial: usize,
    pub range: Range<usize>,
}

impl<'a, X: ElementIo, F: Fn(usize) -> &'a [X]> Kernel for ChannelMoments<'_, F> {
    type Output = Moments;
    #[inline(always)]
    fn run<V: F32Vec>(self) -> Moments {
        channel_moments::<V, X>(self.row, self.spatial, self.range, Spread::NONE)
    }
}

/// Rows whose mean shifts every value of a channels-innermost run (see [`first_rows_mean`]).
pub(crate) const SHIFT_ROWS: usize = 8;

/// Per-channel moments of `rows` consecutive rows of `channels` values each (channels
/// innermost), written to `out` (length `channels`).
pub(crate) struct RowMoments<'a, X = f32> {
    pub x: &'a [X],
    pub channels: usize,
    pub out: &'a mut [Moments],
}

impl<X: ElementIo> Kernel for RowMoments<'_, X> {
    type Output = ();
    /// Every row is summed with one shift per channel, the mean of the first rows
    /// ([`first_rows_mean`]), so the sums of all blocks add up with no merge; the sums become
    /// moments once, through [`ShiftedPasses`].
    #[inline(always)]
    fn run<V: F32Vec>(self) {
        let c = self.channels;
        debug_assert_eq!(self.out.len(), c);
        self.out.fill(Moments::EMPTY);
        if self.x.len() < c || c == 0 {
            return;
        }
        // The shifts and the sums: all the memory the kernel needs, from this thread's scratch.
        let mut shift = scratch::take(c, 0f32);
        let mut sums = scratch::take(3 * c, 0f64);
        first_rows_mean::<V, X>(self.x, c, &mut shift, &mut sums);
        let mut passes = ShiftedPasses::new(self.x.len() / c, &shift, &mut sums, self.out);
        while let Some((shift, sums)) = passes.next() {
            row_pass_sums::<V, X>(self.x, c, shift, sums);
            passes.settle();
        }
    }
}

/// The shift of each channel of rows `x` (of `c` channels) for [`ShiftedPasses`]: the mean of
/// its first [`SHIFT_ROWS`] rows (or all, if fewer), summed with the first row's value as the
/// shift, rounded to `f32`; the first value where that mean is not finite (NaN or infinities in
/// those rows: the sums then fail, whatever the shift). `sums` holds at least `2 * c` values.
///
/// Any shift gives the exact moments up to roundings that grow with the shift's distance from
/// the mean (see the module documentation); the mean of several rows lies within a fraction of
/// a spread of the mean of stationary data, where a single value lies four spreads away often
/// enough that a pass over a tensor of thousands of channels would need its `f64` pass.
#[inline(always)]
pub(crate) fn first_rows_mean<V: F32Vec, X: ElementIo>(
    x: &[X],
    c: usize,
    shift: &mut [f32],
    sums: &mut [f64],
) {
    let head = &x[..x.len().min(SHIFT_ROWS * c)];
    let n = (head.len() / c) as f64;
    for (k, v) in shift.iter_mut().zip(&x[..c]) {
        *k = v.to_f32();
    }
    let (s1, rest) = sums.split_at_mut(c);
    let s2 = &mut rest[..c];
    s1.fill(0.0);
    s2.fill(0.0);
    block_sums::<V, X, f32>(head, c, shift, s1, s2);
    for (k, &a) in shift.iter_mut().zip(s1.iter()) {
        let mean = *k as f64 + a / n;
        if mean.is_finite() {
            *k = mean as f32;
        }
    }
}

/// The shifts of one pass over channels-innermost rows: `f32` (the first pass) or `f64` (the
/// passes over channels whose sums failed; NaN marks a channel already settled, whose sums are
/// then NaN and unused).
#[derive(Clone, Copy, Debug)]
pub(crate) enum RowShift<'a> {
    Narrow(&'a [f32]),
    Wide(&'a [f64]),
}

/// Sets `sums` (`2 * c` values) to `sum(x - shift)` of each channel then `sum((x - shift)^2)`
/// of each channel, over the rows `x` (of `c` channels).
#[inline(always)]
fn row_pass_sums<V: F32Vec, X: ElementIo>(
    x: &[X],
    c: usize,
    shift: RowShift<'_>,
    sums: &mut [f64],
) {
    let (s1, s2) = sums.split_at_mut(c);
    s1.fill(0.0);
    s2.fill(0.0);
    for block in x.chunks(ROW_BLOCK * c) {
        match shift {
            RowShift::Narrow(k) => block_sums::<V, X, f32>(block, c, k, s1, s2),
            RowShift::Wide(k) => block_sums::<V, X, f64>(block, c, k, s1, s2),
        }
    }
}

/// [`row_pass_sums`] as a dispatchable kernel: `sums` gets the pass's sums over the rows `x`.
pub(crate) struct RowPassSums<'a, X = f32> {
    pub x: &'a [X],
    pub channels: usize,
    pub shift: RowShift<'a>,
    pub sums: &'a mut [f64],
}

impl<X: ElementIo> Kernel for RowPassSums<'_, X> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(self) {
        row_pass_sums::<V, X>(self.x, self.channels, self.shift, self.sums)
    }
}

/// [`first_rows_mean`] as a dispatchable kernel.
pub(crate) struct FirstRowsMean<'a, X = f32> {
    pub x: &'a [X],
    pub channels: usize,
    pub shift: &'a mut [f32],
}

impl<X: ElementIo> Kernel for FirstRowsMean<'_, X> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(self) {
        let mut sums = scratch::take(2 * self.channels, 0f64);
        first_rows_mean::<V, X>(self.x, self.channels, self.shift, &mut sums);
    }
}

/// The moments of `count` values per channel (each channel's values shifted by `shift`) from
/// passes over them that the caller runs: the first pass's sums become moments where they are
/// trusted (see [`Moments::sums_trusted`]); the channels that fail are summed again with `f64`
/// shifts, every channel at once by the same kernels (settled channels have a NaN shift), at
/// most [`WIDE_PASSES`] times ([`wide_moments`] for one run). The check runs over all channels
/// first, branch-free, so that it and the common all-trusted path vectorize.
///
/// ```ignore
/// while let Some((shift, sums)) = passes.next() {
///     // sums = [sum(x - shift) per channel, sum((x - shift)^2) per channel]
///     passes.settle();
/// }
/// ```
pub(crate) struct ShiftedPasses<'a> {
    count: usize,
    shift: &'a [f32],
    /// The pass's sums (`2 * c`), then the `f64` shifts of the next pass (`c`).
    sums: &'a mut [f64],
    out: &'a mut [Moments],
    /// Passes settled so far.
    done: usize,
    pending: bool,
}

impl<'a> ShiftedPasses<'a> {
    /// `shift` and `out` hold `c` values, `sums` at least `3 * c`.
    pub(crate) fn new(
        count: usize,
        shift: &'a [f32],
        sums: &'a mut [f64],
        out: &'a mut [Moments],
    ) -> Self {
        ShiftedPasses {
            count,
            shift,
            sums,
            out,
            done: 0,
            pending: true,
        }
    }

    /// The shifts of the next pass and the sums it must set, or `None` when every channel is
    /// settled.
    pub(crate) fn next(&mut self) -> Option<(RowShift<'_>, &mut [f64])> {
        if !self.pending {
            return None;
        }
        let c = self.out.len();
        let (sums, wide) = self.sums.split_at_mut(2 * c);
        let shift = if self.done == 0 {
            RowShift::Narrow(self.shift)
        } else {
            RowShift::Wide(&wide[..c])
        };
        Some((shift, sums))
    }

    /// Takes the sums of the pass [`ShiftedPasses::next`] gave.
    pub(crate) fn settle(&mut self) {
        let c = self.out.len();
        let count = self.count;
        let n = count as f64;
        let (sum1, rest) = self.sums.split_at_mut(c);
        let (sum2, wide) = rest.split_at_mut(c);
        let out = &mut *self.out;
        self.done += 1;
        if self.done == 1 {
            let shift = self.shift;
            let ok = |a: f64, q: f64| Moments::sums_trusted(n, a, q, true);
            let mut trusted = true;
            for (&a, &q) in sum1.iter().zip(sum2.iter()) {
                trusted &= ok(a, q);
            }
            if trusted {
                for (ch, m) in out.iter_mut().enumerate() {
                    *m = Moments::from_shifted_sums(count, shift[ch] as f64, sum1[ch], sum2[ch]);
                }
                self.pending = false;
                return;
            }
            // Channels still to settle carry their next f64 shift in `wide`, the others NaN.
            for ch in 0..c {
                let (a, q) = (sum1[ch], sum2[ch]);
                if ok(a, q) {
                    out[ch] = Moments::from_shifted_sums(count, shift[ch] as f64, a, q);
                    wide[ch] = f64::NAN;
                } else {
                    wide[ch] = Moments::first_wide_shift(count, shift[ch], a);
                }
            }
            return;
        }
        let last = self.done > WIDE_PASSES;
        let mut pending = false;
        for ch in 0..c {
            let k = wide[ch];
            if k.is_nan() {
                continue;
            }
            let (a, q) = (sum1[ch], sum2[ch]);
            let m = Moments::from_shifted_sums(count, k, a, q);
            if last || Moments::wide_settled(n, a, q) {
                out[ch] = m;
                wide[ch] = f64::NAN;
            } else {
                wide[ch] = m.mean;
                pending = true;
            }
        }
        self.pending = pending;
    }
}

/// Adds `sum(x - shift[ch])` to `s1[ch]` and `sum((x - shift[ch])^2)` to `s2[ch]` over the rows
/// of `block` (at most `ROW_BLOCK` rows of `c` channels).
#[inline(always)]
fn block_sums<V: F32Vec, X: ElementIo, S: Shift>(
    block: &[X],
    c: usize,
    shift: &[S],
    s1: &mut [f64],
    s2: &mut [f64],
) {
    if c <= TILED_MAX_CHANNELS {
        // The next block's rows are prefetched tile by tile while this one is summed.
        let ahead = block.as_ptr().wrapping_add(block.len());
        row_sums::<V, X, S>(block, c, shift, s1, s2, ahead);
    } else {
        row_sums_in_memory::<V, X, S>(block, c, shift, s1, s2);
    }
}

/// [`block_sums`] in channel tiles, each summed over the block's rows in registers (no stores
/// in the row loop): tiles of [`tile_vectors`] vectors, then of fewer for the rest of the
/// vectors, then the channels past the last whole vector one by one. A tile narrower than the
/// row visits only part of each row, an access pattern the hardware prefetchers do not follow,
/// so each row of a tile also prefetches the same part of the row `ahead` points to (the next
/// block's; prefetching never faults, wherever it points).
#[inline(always)]
fn row_sums<V: F32Vec, X: ElementIo, S: Shift>(
    block: &[X],
    c: usize,
    shift: &[S],
    s1: &mut [f64],
    s2: &mut [f64],
    ahead: *const X,
) {
    let l = V::LANES;
    let mut c0 = 0;
    if tile_vectors::<V>() == 4 {
        while c0 + 4 * l <= c {
            row_tile::<V, X, S, 4>(block, c, c0, shift, s1, s2, ahead);
            c0 += 4 * l;
        }
    }
    while c0 + 2 * l <= c {
        row_tile::<V, X, S, 2>(block, c, c0, shift, s1, s2, ahead);
        c0 += 2 * l;
    }
    if c0 + l <= c {
        row_tile::<V, X, S, 1>(block, c, c0, shift, s1, s2, ahead);
        c0 += l;
    }
    if c0 < c {
        for row in block.chunks_exact(c) {
            row_tail(row, c0, shift, s1, s2);
        }
    }
}

/// Vectors of channels a tile of the channels-innermost sums holds: four where the ISA has 32
/// vector registers (the tile's 16 `f64` accumulators fit beside its shifts and temporaries, and
/// a row of 64 `f32` channels is one tile, read front to back), two where it has 16.
#[inline(always)]
pub(crate) fn tile_vectors<V: F32Vec>() -> usize {
    if <V::U as U32Vec>::REGISTERS >= 32 {
        4
    } else {
        2
    }
}

/// Adds the sums of channels `c0..c0 + T * LANES` over the rows of `block` (see [`row_sums`]).
#[inline(always)]
fn row_tile<V: F32Vec, X: ElementIo, S: Shift, const T: usize>(
    block: &[X],
    c: usize,
    c0: usize,
    shift: &[S],
    s1: &mut [f64],
    s2: &mut [f64],
    ahead: *const X,
) {
    let l = V::LANES;
    let k: [_; T] = S::load_tile::<V, T>(&shift[c0..]);
    let mut acc = [Sums2::<V>::zero(); T];
    for (r, row) in block.chunks_exact(c).enumerate() {
        for line in (0..T * l).step_by(LINE_FLOATS) {
            V::prefetch(ahead.wrapping_add(r * c + c0 + line));
        }
        for (j, a) in acc.iter_mut().enumerate() {
            S::add(a, V::read(&row[c0 + j * l..]), k[j]);
        }
    }
    for (j, a) in acc.iter().enumerate() {
        let at = c0 + j * l..c0 + (j + 1) * l;
        a.add_to(&mut s1[at.clone()], &mut s2[at]);
    }
}

/// As [`row_sums`] for rows of any width, with the sums in memory (L1): groups of
/// [`WIDE_GROUP_ROWS`] rows, each vector of channels summed over the group in registers before
/// its sums go to memory; each row read front to back.
#[inline(always)]
fn row_sums_in_memory<V: F32Vec, X: ElementIo, S: Shift>(
    block: &[X],
    c: usize,
    shift: &[S],
    s1: &mut [f64],
    s2: &mut [f64],
) {
    let l = V::LANES;
    let full = c / l * l;
    let tiles = c / (WIDE_TILE * l) * (WIDE_TILE * l);
    for group in block.chunks(WIDE_GROUP_ROWS * c) {
        let rows = group.len() / c;
        for c0 in (0..tiles).step_by(WIDE_TILE * l) {
            let k: [_; WIDE_TILE] = S::load_tile::<V, WIDE_TILE>(&shift[c0..]);
            let mut acc = [Sums2::<V>::zero(); WIDE_TILE];
            for r in 0..rows {
                let row = &group[r * c + c0..r * c + c0 + WIDE_TILE * l];
                for (j, a) in acc.iter_mut().enumerate() {
                    S::add(a, V::read(&row[j * l..]), k[j]);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                let at = c0 + j * l..c0 + (j + 1) * l;
                a.add_to(&mut s1[at.clone()], &mut s2[at]);
            }
        }
        for c0 in (tiles..full).step_by(l) {
            let k = S::load::<V>(&shift[c0..]);
            let mut acc = Sums2::<V>::zero();
            for r in 0..rows {
                S::add(&mut acc, V::read(&group[r * c + c0..]), k);
            }
            acc.add_to(&mut s1[c0..c0 + l], &mut s2[c0..c0 + l]);
        }
        if full < c {
            for row in group.chunks_exact(c) {
                row_tail(row, full, shift, s1, s2);
            }
        }
    }
}

/// Adds the channels from `full` to the end of `row` (fewer than `LANES`) to the sums, one by
/// one (`d` rounded as the vectors round it).
#[inline(always)]
fn row_tail<X: ElementIo, S: Shift>(
    row: &[X],
    full: usize,
    shift: &[S],
    s1: &mut [f64],
    s2: &mut [f64],
) {
    for ch in full..row.len() {
        let d = shift[ch].deviation(row[ch].to_f32());
        s1[ch] += d;
        s2[ch] += d * d;
    }
}

#[cfg(test)]
mod tests {
    //! The channels-innermost moments with 16, 8 and 4 emulated lanes (the code paths of
    //! AVX-512, AVX2 and NEON on any CPU) against two-pass `f64` loops, on rows narrow enough for
    //! the tiled path and wide enough for the row-by-row one, with data whose mean drifts along
    //! the rows (the shift after the first block is then far from later rows), large offsets,
    //! constant channels and non-finite values.

    use super::*;
    use crate::simd::emulated::Emulated;

    /// Values of row `r`, channel `ch`: a channel offset, a drift along the rows and noise.
    fn data(rows: usize, c: usize, offset: f32, drift: f32) -> Vec<f32> {
        let mut x = Vec::with_capacity(rows * c);
        for r in 0..rows {
            for ch in 0..c {
                let h = ((r * c + ch) as u32)
                    .wrapping_mul(2_654_435_761)
                    .rotate_left(13);
                let noise = (h % 20_000) as f32 / 10_000.0 - 1.0;
                x.push(offset + ch as f32 * 0.25 + drift * r as f32 + noise);
            }
        }
        x
    }

    fn check<V: F32Vec>(x: &[f32], c: usize, what: &str) {
        let rows = x.len() / c;
        let mut out = vec![Moments::EMPTY; c];
        RowMoments {
            x,
            channels: c,
            out: &mut out,
        }
        .run::<V>();
        for (ch, got) in out.iter().enumerate() {
            let values = || (0..rows).map(|r| x[r * c + ch] as f64);
            let mean = values().sum::<f64>() / rows as f64;
            let m2: f64 = values().map(|v| (v - mean) * (v - mean)).sum();
            let ctx = format!("{what}: {rows}x{c} channel {ch}: got {got:?}, want {mean} {m2}");
            assert_eq!(got.count, rows as u64, "{ctx}");
            if !m2.is_finite() {
                assert!(
                    got.mean.is_nan() || got.m2.is_nan() || !got.m2.is_finite(),
                    "{ctx}"
                );
                continue;
            }
            let spread = (m2 / rows as f64).sqrt();
            // The accuracy bound (module documentation): 4.24 and 8.5 roundings, plus f64.
            let u = 1.0 / (1u64 << 24) as f64;
            assert!(
                (got.mean - mean).abs() <= 4.5 * u * spread + 1e-12 * mean.abs(),
                "{ctx}"
            );
            assert!((got.m2 - m2).abs() <= 9.0 * u * m2 + 1e-30, "{ctx}");
        }
    }

    fn all<V: F32Vec>() {
        // Narrow rows cover tiles of four, two and one vectors and the channels past them.
        let l = V::LANES;
        let narrow = [1, 3, l, 3 * l + 2, 4 * l + 1, 7 * l + 5, TILED_MAX_CHANNELS];
        let wide = [TILED_MAX_CHANNELS + 1, TILED_MAX_CHANNELS + V::LANES + 3];
        for &c in narrow.iter().chain(&wide) {
            for rows in [
                1,
                2,
                ROW_BLOCK - 1,
                ROW_BLOCK,
                ROW_BLOCK + 1,
                3 * ROW_BLOCK + 5,
            ] {
                for (offset, drift) in [(0.0, 0.0), (10_000.0, 0.0), (0.0, 0.5), (-300.0, 40.0)] {
                    let what = format!("offset {offset} drift {drift}");
                    check::<V>(&data(rows, c, offset, drift), c, &what);
                }
                let mut x = data(rows, c, 5.0, 0.0);
                // A constant channel, and the last channel non-finite in the last row.
                for r in 0..rows {
                    x[r * c] = 7.5;
                }
                x[rows * c - 1] = f32::INFINITY;
                check::<V>(&x, c, "constant and infinite channels");
                x[rows * c - 1] = f32::NAN;
                check::<V>(&x, c, "NaN channel");
            }
        }
    }

    /// Two-pass `f64` moments of `values`.
    fn reference(values: impl Iterator<Item = f32> + Clone) -> (f64, f64, f64) {
        let n = values.clone().count() as f64;
        let mean = values.clone().map(|v| v as f64).sum::<f64>() / n;
        let m2: f64 = values.map(|v| (v as f64 - mean) * (v as f64 - mean)).sum();
        (n, mean, m2)
    }

    /// Whether the `f32`-shifted sums of each channel of `rows` (rows of `c` channels) with the
    /// shifts `shift` fail the check: the channels [`ShiftedPasses`] sums again in `f64`.
    fn rows_fail<V: F32Vec>(rows: &[f32], c: usize, shift: &[f32]) -> Vec<bool> {
        let (mut s1, mut s2) = (vec![0.0; c], vec![0.0; c]);
        for block in rows.chunks(ROW_BLOCK * c) {
            block_sums::<V, f32, f32>(block, c, shift, &mut s1, &mut s2);
        }
        let n = (rows.len() / c) as f64;
        s1.iter()
            .zip(&s2)
            .map(|(&a, &q)| !Moments::sums_trusted(n, a, q, true))
            .collect()
    }

    /// The shifts [`RowMoments`] sums `rows` (rows of `c` channels) with.
    fn shifts<V: F32Vec>(rows: &[f32], c: usize) -> Vec<f32> {
        let (mut shift, mut sums) = (vec![0f32; c], vec![0f64; 2 * c]);
        first_rows_mean::<V, f32>(rows, c, &mut shift, &mut sums);
        shift
    }

    /// Rows whose mean drifts so that the `f32`-shifted sums fail, checked to fail (so that the
    /// `f64` passes run), then the kernel's moments checked against `f64`: the first
    /// `SHIFT_ROWS` rows (whose mean is every row's shift) at about 0 and the rest at 10000
    /// (more than four spreads from the shift when the first rows are fewer than 6% of all); a
    /// first row at 0 and the rest at 10000 (the shift an eighth of the way); and the same with
    /// NaN and infinity in the last row.
    fn drifting_rows<V: F32Vec>() {
        for c in [
            1,
            3,
            V::LANES,
            4 * V::LANES + 1,
            TILED_MAX_CHANNELS + V::LANES + 3,
        ] {
            for rows in [ROW_BLOCK + 1, 3 * ROW_BLOCK + 5] {
                let mut x = data(rows, c, 0.0, 0.0);
                for v in &mut x[SHIFT_ROWS * c..] {
                    *v += 10_000.0;
                }
                if rows > 16 * SHIFT_ROWS {
                    assert!(
                        rows_fail::<V>(&x, c, &shifts::<V>(&x, c))
                            .iter()
                            .all(|&f| f)
                    );
                }
                check::<V>(&x, c, "rows drifted from the first rows");

                let mut x = data(rows, c, 10_000.0, 0.0);
                x[..c].fill(0.0);
                check::<V>(&x, c, "first row far from the rest");
                x[rows * c - 1] = f32::INFINITY;
                x[rows * c - 2] = f32::NAN;
                check::<V>(&x, c, "first row far, NaN and infinity");
            }
        }
    }

    /// A shift `2^34` spreads and more from the values' mean (at 1e30; the values near 1 with a
    /// spread near 1e-6): the first `f64` pass, shifted
    /// by the mean of the failed sums (0), is itself too far; a second settles. Every channel's
    /// moments exact to `f64` rounding.
    fn far_shift<V: F32Vec>() {
        for c in [1, V::LANES + 1, TILED_MAX_CHANNELS + 1] {
            let rows = 2 * ROW_BLOCK + 3;
            let x: Vec<f32> = data(rows, c, 0.0, 0.0)
                .iter()
                .map(|v| 1.0 + 1e-6 * v)
                .collect();
            let shift = vec![1e30f32; c];
            assert!(rows_fail::<V>(&x, c, &shift).iter().all(|&f| f));
            let (mut sums, mut out) = (vec![0f64; 3 * c], vec![Moments::EMPTY; c]);
            let mut passes = ShiftedPasses::new(rows, &shift, &mut sums, &mut out);
            while let Some((k, sums)) = passes.next() {
                row_pass_sums::<V, f32>(&x, c, k, sums);
                passes.settle();
            }
            for (ch, got) in out.iter().enumerate() {
                let (n, mean, m2) = reference(x.chunks_exact(c).map(|r| r[ch]));
                let ctx = format!("{c} channels, channel {ch}: {got:?}, want {mean} {m2}");
                assert_eq!(got.count, n as u64, "{ctx}");
                assert!((got.mean - mean).abs() <= 1e-12 * (m2 / n).sqrt(), "{ctx}");
                assert!((got.m2 - m2).abs() <= 1e-12 * m2, "{ctx}");
            }
        }
    }

    /// Contiguous runs (channels-first channels, group-norm groups, layer-norm rows) whose first
    /// value is far from the first block's mean, checked to fail, and a run whose second block
    /// lies beyond `f32` range of the first (`x - K` overflows `f32`: the sums are not finite;
    /// the first `f64` pass, shifted by 0, is `3e38` from the mean, the second settles). Against
    /// `f64`, to the accuracy bound (and to `f64` rounding where every block took `f64` passes).
    fn drifting_runs<V: F32Vec>() {
        for spatial in [1, 7, 49, BLOCK, BLOCK + 3] {
            for count in [17, 100, BLOCK, BLOCK + 1, 3 * BLOCK + 5] {
                let mut x = data(count, 1, 10_000.0, 0.0);
                x[0] = 0.0;
                let row = |n: usize| &x[n * spatial..((n + 1) * spatial).min(count)];
                let first = 0..count.min(BLOCK);
                let (s1, s2) =
                    run_sums::<V, f32, f32>(&row, spatial, first.clone(), x[0], Spread::NONE);
                assert!(!Moments::sums_trusted(first.len() as f64, s1, s2, true));
                let got = channel_moments::<V, f32>(&row, spatial, 0..count, Spread::NONE);
                let (n, mean, m2) = reference(x.iter().copied());
                let ctx = format!("spatial {spatial}, count {count}: {got:?}, want {mean} {m2}");
                let u = 1.0 / (1u64 << 24) as f64;
                assert_eq!(got.count, n as u64, "{ctx}");
                assert!(
                    (got.mean - mean).abs() <= 4.5 * u * (m2 / n).sqrt(),
                    "{ctx}"
                );
                assert!((got.m2 - m2).abs() <= 9.0 * u * m2, "{ctx}");
            }
        }
        let x: Vec<f32> = (0..2 * BLOCK)
            .map(|i| if i < BLOCK { -3e38 } else { 3e38 })
            .collect();
        let got = channel_moments::<V, f32>(&|_| &x[..], x.len(), 0..x.len(), Spread::NONE);
        let (_, mean, m2) = reference(x.iter().copied());
        assert_eq!(got.mean, mean);
        assert!((got.m2 - m2).abs() <= 1e-12 * m2, "{got:?}, want {m2}");
    }

    fn wide<V: F32Vec>() {
        drifting_rows::<V>();
        far_shift::<V>();
        drifting_runs::<V>();
    }

    #[test]
    fn sixteen_lanes() {
        all::<Emulated<16>>();
        wide::<Emulated<16>>();
    }

    #[test]
    fn eight_lanes() {
        all::<Emulated<8>>();
        wide::<Emulated<8>>();
    }

    #[test]
    fn four_lanes() {
        all::<Emulated<4>>();
        wide::<Emulated<4>>();
    }

    #[test]
    fn this_cpu() {
        crate::simd::on_every_isa!(wide);
    }
}
