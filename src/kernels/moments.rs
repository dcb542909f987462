//! Per-channel moments (count, mean, M2) in one pass over the data.
//!
//! Values are accumulated in blocks. Within a block every lane sums `d = x - K` and `d * d` in
//! `f32`, where the shift `K` is the first value of the run for the first block and the running
//! mean (rounded to `f32`) for every later block, so `d` is small whatever the data's offset and
//! `x - K` is exact for values near `K`. Each block's sums become `(count, mean, M2)` in `f64`,
//! and blocks, chunks and shards are merged with Chan et al.'s pairwise formula, in a fixed order.
//! On `10000 + N(0,1)` data the mean is exact to `f64` rounding of the spread, not of the offset.
//!
//! Two cases would lose digits, and a block in either is recomputed exactly (two passes in `f64`):
//! the first block of a run whose first value lies far from the block's mean (its sums of `d`
//! and `d * d` then cancel; later blocks are shifted by the running mean, where any cancellation
//! is relative to the variance between blocks, which the merge counts in full), and a block whose
//! `f32` sums are not finite (a spread whose squares overflow `f32`, or NaN and infinities).
//!
//! Channels-innermost runs (rows of channels, each lane one channel) keep one shift for every
//! block after a chunk's first: the first block's mean. Their `f32` block sums then add up in
//! `f64` with no merge per block, and become moments once per chunk, checked like a first block.

use crate::simd::{F32Vec, Kernel, MAX_LANES};
use std::ops::Range;

/// Elements per block of a contiguous run: the `f32` lane sums cover at most
/// `BLOCK / (4 * LANES)` values each before they are folded into `f64`.
pub(crate) const BLOCK: usize = 2048;

/// Rows per block of a channels-innermost run (each lane is one channel, so each `f32` lane sum
/// covers at most this many values: the rounding of those sums grows with their length).
pub(crate) const ROW_BLOCK: usize = 64;

/// Widest rows (in channels) the channels-innermost moments sum tile by tile in registers (a
/// block of `ROW_BLOCK` such rows is 64 KiB, in L1 and L2 while its tiles visit it); wider rows
/// are summed row by row with the sums in memory, each row read once, front to back: a tile
/// visiting 128 bytes of every row of several kilobytes defeats the hardware prefetchers (they
/// do not cross pages) and maps every access of a pass to the same few cache sets.
pub(crate) const TILED_MAX_CHANNELS: usize = 256;
/// Floats per 64-byte cache line.
pub(crate) const LINE_FLOATS: usize = 16;

/// Mean squares below this (deviations below about 1e-15) are near `f32`'s subnormal range when
/// squared; such blocks are recomputed exactly.
const TINY_MEAN_SQUARE: f64 = 7.888609052210118e-31; // 2^-100

/// Count, mean and sum of squared deviations from the mean (M2) of a set of values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Moments {
    pub count: u64,
    pub mean: f64,
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

    /// The moments of `values`, exactly to `f64` rounding (two passes).
    fn exact(values: impl Iterator<Item = f32> + Clone) -> Moments {
        let (count, sum) = values
            .clone()
            .fold((0u64, 0.0f64), |(n, s), v| (n + 1, s + v as f64));
        if count == 0 {
            return Moments::EMPTY;
        }
        let mean = sum / count as f64;
        let m2 = values.map(|v| (v as f64 - mean) * (v as f64 - mean)).sum();
        Moments { count, mean, m2 }
    }

    /// The moments of a block from its shifted sums, or `None` if they cannot be trusted (see
    /// [`Moments::sums_trusted`]).
    #[inline]
    fn from_trusted_sums(
        count: usize,
        shift: f32,
        s1: f64,
        s2: f64,
        lane_bound: f64,
        first: bool,
    ) -> Option<Moments> {
        Moments::sums_trusted(count as f64, s1, s2, lane_bound, first)
            .then(|| Moments::from_shifted_sums(count, shift, s1, s2))
    }

    /// Whether the shifted sums `s1`, `s2` of `n` values can be trusted. Not if:
    /// - not finite (squares overflowing `f32`, NaN or infinities in the data);
    /// - squares lost to underflow: `s2` below `lane_bound = sum over lanes of s1_l^2 / count`,
    ///   which exact sums always reach (Cauchy-Schwarz in each lane), or in the subnormal range;
    /// - for the first block of a run (`first`), sums cancelling by more than a factor 16
    ///   because the shift lies more than about four spreads from the block's mean.
    ///
    /// Branch-free, so that a loop over channels vectorizes.
    #[inline(always)]
    fn sums_trusted(n: f64, s1: f64, s2: f64, lane_bound: f64, first: bool) -> bool {
        let underflow = (s2 < 0.5 * lane_bound) | ((s2 > 0.0) & (s2 < n * TINY_MEAN_SQUARE));
        let finite = (s1.abs() <= f64::MAX) & (s2.abs() <= f64::MAX);
        let cancels = first & (s2 > 16.0 * Moments::shifted_m2(n, s1, s2));
        finite & !underflow & !cancels
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
    fn from_shifted_sums(count: usize, shift: f32, s1: f64, s2: f64) -> Moments {
        let n = count as f64;
        Moments {
            count: count as u64,
            mean: shift as f64 + s1 / n,
            m2: Moments::shifted_m2(n, s1, s2),
        }
    }
}

/// Adds `d = x - k` and `d * d` of every element of `seg` to the lane sums.
#[inline(always)]
fn accumulate<V: F32Vec>(seg: &[f32], shift: f32, s1: &mut [V; 4], s2: &mut [V; 4]) {
    let l = V::LANES;
    let k = V::splat(shift);
    let mut quads = seg.chunks_exact(4 * l);
    for q in &mut quads {
        for j in 0..4 {
            let d = V::load(&q[j * l..]).sub(k);
            s1[j] = s1[j].add(d);
            s2[j] = d.mul_add(d, s2[j]);
        }
    }
    let mut singles = quads.remainder().chunks_exact(l);
    for (j, v) in (&mut singles).enumerate() {
        let d = V::load(v).sub(k);
        s1[j] = s1[j].add(d);
        s2[j] = d.mul_add(d, s2[j]);
    }
    let tail = singles.remainder();
    if !tail.is_empty() {
        // Lanes past the tail load `shift`, so their d is exactly 0.
        let d = V::load_partial(tail, shift).sub(k);
        s1[3] = s1[3].add(d);
        s2[3] = d.mul_add(d, s2[3]);
    }
}

/// Loads `src` (at most `LANES` values) into the first lanes; the rest are 0.
#[inline(always)]
fn load_lanes<V: F32Vec>(src: &[f32]) -> V {
    if src.len() == V::LANES {
        V::load(src)
    } else {
        V::load_partial(src, 0.0)
    }
}

/// Stores the first `dst.len()` (at most `LANES`) lanes.
#[inline(always)]
fn store_lanes<V: F32Vec>(v: V, dst: &mut [f32]) {
    if dst.len() == V::LANES {
        v.store(dst)
    } else {
        v.store_partial(dst)
    }
}

/// The moments of the virtual elements `range` of one channel whose values lie in rows of
/// `spatial` contiguous elements: virtual element `v` is `row(v / spatial)[v % spatial]`.
#[inline(always)]
pub(crate) fn channel_moments<'a, V: F32Vec>(
    row: &impl Fn(usize) -> &'a [f32],
    spatial: usize,
    range: Range<usize>,
) -> Moments {
    let mut acc = Moments::EMPTY;
    if range.is_empty() {
        return acc;
    }
    let mut shift = row(range.start / spatial)[range.start % spatial];
    let mut start = range.start;
    while start < range.end {
        let end = range.end.min(start + BLOCK);
        let zero = V::splat(0.0);
        let (mut s1, mut s2) = ([zero; 4], [zero; 4]);
        let mut v = start;
        while v < end {
            let (n, s) = (v / spatial, v % spatial);
            let len = (end - v).min(spatial - s);
            accumulate(&row(n)[s..s + len], shift, &mut s1, &mut s2);
            v += len;
        }
        let mut lanes1 = [0f32; MAX_LANES];
        let mut lanes2 = [0f32; MAX_LANES];
        s1[0].add(s1[1]).add(s1[2].add(s1[3])).store(&mut lanes1);
        s2[0].add(s2[1]).add(s2[2].add(s2[3])).store(&mut lanes2);
        let count = end - start;
        let s1: f64 = lanes1.iter().map(|&v| v as f64).sum();
        let s2: f64 = lanes2.iter().map(|&v| v as f64).sum();
        let bound = lanes1.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / count as f64;
        let first = start == range.start;
        let block = Moments::from_trusted_sums(count, shift, s1, s2, bound, first)
            .unwrap_or_else(|| Moments::exact((start..end).map(|v| row(v / spatial)[v % spatial])));
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

impl<'a, F: Fn(usize) -> &'a [f32]> Kernel for ChannelMoments<'_, F> {
    type Output = Moments;
    #[inline(always)]
    fn run<V: F32Vec>(self) -> Moments {
        channel_moments::<V>(self.row, self.spatial, self.range)
    }
}

/// Per-channel moments of `rows` consecutive rows of `channels` values each (channels
/// innermost), written to `out` (length `channels`).
pub(crate) struct RowMoments<'a> {
    pub x: &'a [f32],
    pub channels: usize,
    pub out: &'a mut [Moments],
}

impl Kernel for RowMoments<'_> {
    type Output = ();
    /// The first block of `ROW_BLOCK` rows is summed with each channel's first value as its
    /// shift; every later block with the first block's mean, the same for all of them, so their
    /// `f32` block sums add up in `f64` with no merge per block (two additions per channel).
    /// The rest's sums become moments once, checked as a first block is (a shift more than
    /// about four spreads from the rest's mean, or sums not finite or underflowing, and the
    /// channel is recomputed exactly), then merged with the first block's.
    #[inline(always)]
    fn run<V: F32Vec>(self) {
        let c = self.channels;
        let rows = self.x.len() / c;
        debug_assert_eq!(self.out.len(), c);
        self.out.fill(Moments::EMPTY);
        if rows == 0 {
            return;
        }
        let mut shift = self.x[..c].to_vec();
        let mut s1 = vec![0f32; c];
        let mut s2 = vec![0f32; c];
        let (head, rest) = self.x.split_at(self.x.len().min(ROW_BLOCK * c));
        block_sums::<V>(head, c, &shift, &mut s1, &mut s2);
        let mut sum1: Vec<f64> = s1.iter().map(|&v| v as f64).collect();
        let mut sum2: Vec<f64> = s2.iter().map(|&v| v as f64).collect();
        moments_from_sums(head, c, &shift, &sum1, &sum2, 16.0, self.out);
        if rest.is_empty() {
            return;
        }
        for (k, m) in shift.iter_mut().zip(self.out.iter()) {
            *k = m.mean as f32;
        }
        sum1.fill(0.0);
        sum2.fill(0.0);
        for block in rest.chunks(ROW_BLOCK * c) {
            block_sums::<V>(block, c, &shift, &mut s1, &mut s2);
            for ch in 0..c {
                sum1[ch] += s1[ch] as f64;
                sum2[ch] += s2[ch] as f64;
            }
        }
        let mut tail = vec![Moments::EMPTY; c];
        // The rest's shift is trusted only within about one spread of its mean: its f32 block
        // sums round relative to their distance from the shift, over many blocks.
        moments_from_sums(rest, c, &shift, &sum1, &sum2, 2.0, &mut tail);
        Moments::merge_each(self.out, &tail);
    }
}

/// The moments of each channel of `rows` (rows of `c` channels) from its sums `sum1 = sum(x -
/// shift)` and `sum2 = sum((x - shift)^2)`, each checked as a first block's are (see
/// [`Moments::sums_trusted`]); a channel that fails is recomputed exactly. The check runs over
/// all channels first, branch-free, so that it and the common all-trusted path vectorize.
fn moments_from_sums(
    rows: &[f32],
    c: usize,
    shift: &[f32],
    sum1: &[f64],
    sum2: &[f64],
    cancel_limit: f64,
    out: &mut [Moments],
) {
    let count = rows.len() / c;
    let n = count as f64;
    let ok = |a: f64, q: f64| {
        Moments::sums_trusted(n, a, q, a * (a / n), true)
            & (q <= cancel_limit * Moments::shifted_m2(n, a, q))
    };
    let mut trusted = true;
    for (&a, &q) in sum1.iter().zip(sum2) {
        trusted &= ok(a, q);
    }
    for ch in 0..c {
        let (a, q) = (sum1[ch], sum2[ch]);
        out[ch] = if trusted || ok(a, q) {
            Moments::from_shifted_sums(count, shift[ch], a, q)
        } else {
            Moments::exact(rows.chunks_exact(c).map(|r| r[ch]))
        };
    }
}

/// `s1[ch] = sum(x - shift[ch])` and `s2[ch] = sum((x - shift[ch])^2)` over the rows of
/// `block` (at most `ROW_BLOCK` rows of `c` channels), in `f32`.
#[inline(always)]
fn block_sums<V: F32Vec>(block: &[f32], c: usize, shift: &[f32], s1: &mut [f32], s2: &mut [f32]) {
    if c <= TILED_MAX_CHANNELS {
        // The next block's rows are prefetched tile by tile while this one is summed.
        let ahead = block.as_ptr().wrapping_add(block.len());
        row_sums::<V>(block, c, shift, s1, s2, ahead);
    } else {
        row_sums_in_memory::<V>(block, c, shift, s1, s2);
    }
}

/// `s1[ch] = sum(x - shift[ch])`, `s2[ch] = sum((x - shift[ch])^2)` over the rows of `block`
/// (`c` channels each): channel tiles of four vectors, each summed over the block's rows in
/// registers (no stores in the row loop), then the rest of the channels one vector at a time.
/// A tile visits only part of each row, an access pattern the hardware prefetchers do not
/// follow, so each row of a tile also prefetches the same part of the row `ahead` points to
/// (the next block's; prefetching never faults, wherever it points).
#[inline(always)]
fn row_sums<V: F32Vec>(
    block: &[f32],
    c: usize,
    shift: &[f32],
    s1: &mut [f32],
    s2: &mut [f32],
    ahead: *const f32,
) {
    let l = V::LANES;
    let tiles = c / (4 * l) * (4 * l);
    for c0 in (0..tiles).step_by(4 * l) {
        let k = [
            V::load(&shift[c0..]),
            V::load(&shift[c0 + l..]),
            V::load(&shift[c0 + 2 * l..]),
            V::load(&shift[c0 + 3 * l..]),
        ];
        let (mut a, mut q) = ([V::splat(0.0); 4], [V::splat(0.0); 4]);
        for (r, row) in block.chunks_exact(c).enumerate() {
            for line in (0..4 * l).step_by(LINE_FLOATS) {
                V::prefetch(ahead.wrapping_add(r * c + c0 + line));
            }
            let xs = &row[c0..c0 + 4 * l];
            for j in 0..4 {
                let d = V::load(&xs[j * l..]).sub(k[j]);
                a[j] = a[j].add(d);
                q[j] = d.mul_add(d, q[j]);
            }
        }
        for j in 0..4 {
            a[j].store(&mut s1[c0 + j * l..]);
            q[j].store(&mut s2[c0 + j * l..]);
        }
    }
    for c0 in (tiles..c).step_by(l) {
        let lanes = l.min(c - c0);
        let k = load_lanes::<V>(&shift[c0..c0 + lanes]);
        let (mut a, mut q) = (V::splat(0.0), V::splat(0.0));
        for (r, row) in block.chunks_exact(c).enumerate() {
            V::prefetch(ahead.wrapping_add(r * c + c0));
            // Lanes past the channels load 0 in both x and the shift: their d is 0.
            let d = load_lanes::<V>(&row[c0..c0 + lanes]).sub(k);
            a = a.add(d);
            q = d.mul_add(d, q);
        }
        store_lanes(a, &mut s1[c0..c0 + lanes]);
        store_lanes(q, &mut s2[c0..c0 + lanes]);
    }
}

/// As [`row_sums`] for rows of any width, with the sums in memory (L1): four rows at a time
/// (one load and store of each sum per four rows), each row read front to back.
#[inline(always)]
fn row_sums_in_memory<V: F32Vec>(
    block: &[f32],
    c: usize,
    shift: &[f32],
    s1: &mut [f32],
    s2: &mut [f32],
) {
    let l = V::LANES;
    let full = c / l * l;
    s1.fill(0.0);
    s2.fill(0.0);
    let mut quads = block.chunks_exact(4 * c);
    for q in &mut quads {
        let (r0, rest) = q.split_at(c);
        let (r1, rest) = rest.split_at(c);
        let (r2, r3) = rest.split_at(c);
        for c0 in (0..full).step_by(l) {
            let k = V::load(&shift[c0..c0 + l]);
            let d0 = V::load(&r0[c0..c0 + l]).sub(k);
            let d1 = V::load(&r1[c0..c0 + l]).sub(k);
            let d2 = V::load(&r2[c0..c0 + l]).sub(k);
            let d3 = V::load(&r3[c0..c0 + l]).sub(k);
            let sum = d0.add(d1).add(d2.add(d3));
            let squares = d0.mul_add(d0, d1.mul(d1)).add(d2.mul_add(d2, d3.mul(d3)));
            V::load(&s1[c0..c0 + l]).add(sum).store(&mut s1[c0..c0 + l]);
            V::load(&s2[c0..c0 + l])
                .add(squares)
                .store(&mut s2[c0..c0 + l]);
        }
        if full < c {
            for row in [r0, r1, r2, r3] {
                row_tail::<V>(row, full, shift, s1, s2);
            }
        }
    }
    for row in quads.remainder().chunks_exact(c) {
        for c0 in (0..full).step_by(l) {
            let d = V::load(&row[c0..c0 + l]).sub(V::load(&shift[c0..c0 + l]));
            V::load(&s1[c0..c0 + l]).add(d).store(&mut s1[c0..c0 + l]);
            d.mul_add(d, V::load(&s2[c0..c0 + l]))
                .store(&mut s2[c0..c0 + l]);
        }
        if full < c {
            row_tail::<V>(row, full, shift, s1, s2);
        }
    }
}

/// Adds the channels from `full` to the end of `row` (fewer than `LANES`) to the sums.
#[inline(always)]
fn row_tail<V: F32Vec>(row: &[f32], full: usize, shift: &[f32], s1: &mut [f32], s2: &mut [f32]) {
    // Lanes past the channels load 0 in both x and the shift: their d is 0.
    let d = load_lanes::<V>(&row[full..]).sub(load_lanes::<V>(&shift[full..]));
    store_lanes(load_lanes::<V>(&s1[full..]).add(d), &mut s1[full..]);
    store_lanes(d.mul_add(d, load_lanes::<V>(&s2[full..])), &mut s2[full..]);
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
            assert!(
                (got.mean - mean).abs() <= 1e-6 * spread + 1e-12 * mean.abs(),
                "{ctx}"
            );
            assert!((got.m2 - m2).abs() <= 1e-5 * m2 + 1e-30, "{ctx}");
        }
    }

    fn all<V: F32Vec>() {
        let narrow = [1, 3, V::LANES, 4 * V::LANES + 1, TILED_MAX_CHANNELS];
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
