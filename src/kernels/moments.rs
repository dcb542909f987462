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
//! A block is recomputed exactly (two passes in `f64`) when the first block of a run has its
//! first value far from the block's mean (`sum(d * d) > 16 * M2`: the sums would cancel and
//! `D` grow), or when its sums are not finite (`x - K` overflowing `f32`, or NaN and
//! infinities). Later blocks are shifted by the running mean, which lies close to them in the
//! sense that counts: over a run, `sum((x - K)^2) <= 16 * M2(first block) + 2 * M2 <= 18 * M2`
//! (Chan's merge of equal-sized blocks).
//!
//! Channels-innermost runs (rows of channels, each lane one channel) keep one shift for every
//! block after a chunk's first: the first block's mean. Their sums then add up in `f64` with no
//! merge per block, and become moments once per chunk, checked like a first block.

use super::sums::Sums2;
use crate::simd::element::ElementIo;
use crate::simd::{F32Vec, Kernel};
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
/// Floats per cache line.
pub(crate) const LINE_FLOATS: usize = crate::simd::LINE_BYTES / 4;

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
        first: bool,
    ) -> Option<Moments> {
        Moments::sums_trusted(count as f64, s1, s2, first)
            .then(|| Moments::from_shifted_sums(count, shift, s1, s2))
    }

    /// Whether the shifted sums `s1`, `s2` of `n` values can be trusted. Not if not finite
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

/// Adds `d = x - shift` and `d * d` of every element of `seg` to the lane sums (two
/// accumulators, so that two chains of `f64` additions run at once).
#[inline(always)]
fn accumulate<V: F32Vec, X: ElementIo>(seg: &[X], shift: f32, acc: &mut [Sums2<V>; 2]) {
    let l = V::LANES;
    let k = V::splat(shift);
    let mut pairs = seg.chunks_exact(2 * l);
    for p in &mut pairs {
        let d0 = V::read(p).sub(k);
        let d1 = V::read(&p[l..]).sub(k);
        acc[0].add(d0, d0);
        acc[1].add(d1, d1);
    }
    let rest = pairs.remainder();
    if rest.len() >= l {
        let d = V::read(rest).sub(k);
        acc[0].add(d, d);
    }
    let tail = &rest[rest.len() / l * l..];
    if !tail.is_empty() {
        // Lanes past the tail load `shift`, so their d is exactly 0.
        let d = V::read_partial(tail, shift).sub(k);
        acc[1].add(d, d);
    }
}

/// The moments of the virtual elements `range` of one channel whose values lie in rows of
/// `spatial` contiguous elements: virtual element `v` is `row(v / spatial)[v % spatial]`.
#[inline(always)]
pub(crate) fn channel_moments<'a, V: F32Vec, X: ElementIo>(
    row: &impl Fn(usize) -> &'a [X],
    spatial: usize,
    range: Range<usize>,
) -> Moments {
    let mut acc = Moments::EMPTY;
    if range.is_empty() {
        return acc;
    }
    let mut shift = row(range.start / spatial)[range.start % spatial].to_f32();
    let mut start = range.start;
    while start < range.end {
        let end = range.end.min(start + BLOCK);
        let mut sums = [Sums2::<V>::zero(); 2];
        let mut v = start;
        while v < end {
            let (n, s) = (v / spatial, v % spatial);
            let len = (end - v).min(spatial - s);
            accumulate(&row(n)[s..s + len], shift, &mut sums);
            v += len;
        }
        let count = end - start;
        let (s1, s2) = sums[0].merge(sums[1]).totals();
        let first = start == range.start;
        let block = Moments::from_trusted_sums(count, shift, s1, s2, first).unwrap_or_else(|| {
            Moments::exact((start..end).map(|v| row(v / spatial)[v % spatial].to_f32()))
        });
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
        channel_moments::<V, X>(self.row, self.spatial, self.range)
    }
}

/// Per-channel moments of `rows` consecutive rows of `channels` values each (channels
/// innermost), written to `out` (length `channels`).
pub(crate) struct RowMoments<'a, X = f32> {
    pub x: &'a [X],
    pub channels: usize,
    pub out: &'a mut [Moments],
}

impl<X: ElementIo> Kernel for RowMoments<'_, X> {
    type Output = ();
    /// The first block of `ROW_BLOCK` rows is summed with each channel's first value as its
    /// shift; every later block with the first block's mean, the same for all of them, so their
    /// sums add up with no merge per block. The rest's sums become moments once, checked as a
    /// first block is (a shift more than about four spreads from the rest's mean, or sums not
    /// finite, and the channel is recomputed exactly), then merged with the first block's.
    #[inline(always)]
    fn run<V: F32Vec>(self) {
        let c = self.channels;
        let rows = self.x.len() / c;
        debug_assert_eq!(self.out.len(), c);
        self.out.fill(Moments::EMPTY);
        if rows == 0 {
            return;
        }
        let mut shift: Vec<f32> = self.x[..c].iter().map(|v| v.to_f32()).collect();
        let mut sum1 = vec![0f64; c];
        let mut sum2 = vec![0f64; c];
        let (head, rest) = self.x.split_at(self.x.len().min(ROW_BLOCK * c));
        block_sums::<V, X>(head, c, &shift, &mut sum1, &mut sum2);
        moments_from_sums(head, c, &shift, &sum1, &sum2, self.out);
        if rest.is_empty() {
            return;
        }
        for (k, m) in shift.iter_mut().zip(self.out.iter()) {
            *k = m.mean as f32;
        }
        sum1.fill(0.0);
        sum2.fill(0.0);
        for block in rest.chunks(ROW_BLOCK * c) {
            block_sums::<V, X>(block, c, &shift, &mut sum1, &mut sum2);
        }
        let mut tail = vec![Moments::EMPTY; c];
        moments_from_sums(rest, c, &shift, &sum1, &sum2, &mut tail);
        Moments::merge_each(self.out, &tail);
    }
}

/// The moments of each channel of `rows` (rows of `c` channels) from its sums `sum1 = sum(x -
/// shift)` and `sum2 = sum((x - shift)^2)`, each checked as a first block's are (see
/// [`Moments::sums_trusted`]); a channel that fails is recomputed exactly. The check runs over
/// all channels first, branch-free, so that it and the common all-trusted path vectorize.
fn moments_from_sums<X: ElementIo>(
    rows: &[X],
    c: usize,
    shift: &[f32],
    sum1: &[f64],
    sum2: &[f64],
    out: &mut [Moments],
) {
    let count = rows.len() / c;
    let n = count as f64;
    let ok = |a: f64, q: f64| Moments::sums_trusted(n, a, q, true);
    let mut trusted = true;
    for (&a, &q) in sum1.iter().zip(sum2) {
        trusted &= ok(a, q);
    }
    for ch in 0..c {
        let (a, q) = (sum1[ch], sum2[ch]);
        out[ch] = if trusted || ok(a, q) {
            Moments::from_shifted_sums(count, shift[ch], a, q)
        } else {
            Moments::exact(rows.chunks_exact(c).map(|r| r[ch].to_f32()))
        };
    }
}

/// Adds `sum(x - shift[ch])` to `s1[ch]` and `sum((x - shift[ch])^2)` to `s2[ch]` over the rows
/// of `block` (at most `ROW_BLOCK` rows of `c` channels).
#[inline(always)]
fn block_sums<V: F32Vec, X: ElementIo>(
    block: &[X],
    c: usize,
    shift: &[f32],
    s1: &mut [f64],
    s2: &mut [f64],
) {
    if c <= TILED_MAX_CHANNELS {
        // The next block's rows are prefetched tile by tile while this one is summed.
        let ahead = block.as_ptr().wrapping_add(block.len());
        row_sums::<V, X>(block, c, shift, s1, s2, ahead);
    } else {
        row_sums_in_memory::<V, X>(block, c, shift, s1, s2);
    }
}

/// [`block_sums`] in channel tiles of two vectors, each summed over the block's rows in
/// registers (no stores in the row loop), then the rest of the channels one vector at a time
/// and, past the last whole vector, one by one. A tile visits only part of each row, an access
/// pattern the hardware prefetchers do not follow, so each row of a tile also prefetches the
/// same part of the row `ahead` points to (the next block's; prefetching never faults,
/// wherever it points).
#[inline(always)]
fn row_sums<V: F32Vec, X: ElementIo>(
    block: &[X],
    c: usize,
    shift: &[f32],
    s1: &mut [f64],
    s2: &mut [f64],
    ahead: *const X,
) {
    let l = V::LANES;
    let full = c / l * l;
    let tiles = c / (2 * l) * (2 * l);
    for c0 in (0..tiles).step_by(2 * l) {
        let k = [V::read(&shift[c0..]), V::read(&shift[c0 + l..])];
        let mut acc = [Sums2::<V>::zero(); 2];
        for (r, row) in block.chunks_exact(c).enumerate() {
            for line in (0..2 * l).step_by(LINE_FLOATS) {
                V::prefetch(ahead.wrapping_add(r * c + c0 + line));
            }
            for (j, a) in acc.iter_mut().enumerate() {
                let d = V::read(&row[c0 + j * l..]).sub(k[j]);
                a.add(d, d);
            }
        }
        for (j, a) in acc.iter().enumerate() {
            let at = c0 + j * l..c0 + (j + 1) * l;
            a.add_to(&mut s1[at.clone()], &mut s2[at]);
        }
    }
    for c0 in (tiles..full).step_by(l) {
        let k = V::read(&shift[c0..]);
        let mut acc = Sums2::<V>::zero();
        for (r, row) in block.chunks_exact(c).enumerate() {
            V::prefetch(ahead.wrapping_add(r * c + c0));
            let d = V::read(&row[c0..]).sub(k);
            acc.add(d, d);
        }
        acc.add_to(&mut s1[c0..c0 + l], &mut s2[c0..c0 + l]);
    }
    if full < c {
        for row in block.chunks_exact(c) {
            row_tail(row, full, shift, s1, s2);
        }
    }
}

/// As [`row_sums`] for rows of any width, with the sums in memory (L1): two rows at a time,
/// each row read front to back.
#[inline(always)]
fn row_sums_in_memory<V: F32Vec, X: ElementIo>(
    block: &[X],
    c: usize,
    shift: &[f32],
    s1: &mut [f64],
    s2: &mut [f64],
) {
    let l = V::LANES;
    let full = c / l * l;
    let mut pairs = block.chunks_exact(2 * c);
    for p in &mut pairs {
        let (r0, r1) = p.split_at(c);
        for c0 in (0..full).step_by(l) {
            let k = V::read(&shift[c0..]);
            let d0 = V::read(&r0[c0..]).sub(k);
            let d1 = V::read(&r1[c0..]).sub(k);
            let mut acc = Sums2::<V>::zero();
            acc.add(d0, d0);
            acc.add(d1, d1);
            acc.add_to(&mut s1[c0..c0 + l], &mut s2[c0..c0 + l]);
        }
        if full < c {
            row_tail(r0, full, shift, s1, s2);
            row_tail(r1, full, shift, s1, s2);
        }
    }
    for row in pairs.remainder().chunks_exact(c) {
        for c0 in (0..full).step_by(l) {
            let d = V::read(&row[c0..]).sub(V::read(&shift[c0..]));
            let mut acc = Sums2::<V>::zero();
            acc.add(d, d);
            acc.add_to(&mut s1[c0..c0 + l], &mut s2[c0..c0 + l]);
        }
        if full < c {
            row_tail(row, full, shift, s1, s2);
        }
    }
}

/// Adds the channels from `full` to the end of `row` (fewer than `LANES`) to the sums, one by
/// one (`d` rounded in `f32` as the vectors round it).
#[inline(always)]
fn row_tail<X: ElementIo>(row: &[X], full: usize, shift: &[f32], s1: &mut [f64], s2: &mut [f64]) {
    for ch in full..row.len() {
        let d = (row[ch].to_f32() - shift[ch]) as f64;
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
