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

use crate::simd::{F32Vec, Kernel, MAX_LANES};
use std::ops::Range;

/// Elements per block of a contiguous run: the `f32` lane sums cover at most
/// `BLOCK / (4 * LANES)` values each before they are folded into `f64`.
pub(crate) const BLOCK: usize = 2048;

/// Rows per block of a channels-innermost run (each lane is one channel, so each `f32` lane sum
/// covers at most this many values: the rounding of those sums grows with their length).
pub(crate) const ROW_BLOCK: usize = 64;

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

    /// The moments of a block from its shifted sums, or `None` if they cannot be trusted:
    /// - not finite (squares overflowing `f32`, NaN or infinities in the data);
    /// - squares lost to underflow: `s2` below `lane_bound = sum over lanes of s1_l^2 / count`,
    ///   which exact sums always reach (Cauchy-Schwarz in each lane), or in the subnormal range;
    /// - for the first block of a run (`first`), sums cancelling by more than a factor 16
    ///   because the shift lies more than about four spreads from the block's mean.
    #[inline]
    fn from_trusted_sums(
        count: usize,
        shift: f32,
        s1: f64,
        s2: f64,
        lane_bound: f64,
        first: bool,
    ) -> Option<Moments> {
        let n = count as f64;
        let underflow = s2 < 0.5 * lane_bound || (s2 > 0.0 && s2 < n * TINY_MEAN_SQUARE);
        if !(s1.is_finite() && s2.is_finite()) || underflow {
            return None;
        }
        let m = Moments::from_shifted_sums(count, shift, s1, s2);
        (!first || s2 <= 16.0 * m.m2).then_some(m)
    }

    /// The moments of `count` values from `s1 = sum(x - shift)` and `s2 = sum((x - shift)^2)`.
    #[inline]
    fn from_shifted_sums(count: usize, shift: f32, s1: f64, s2: f64) -> Moments {
        let n = count as f64;
        let m2 = s2 - s1 * (s1 / n);
        Moments {
            count: count as u64,
            mean: shift as f64 + s1 / n,
            // Rounding may leave a tiny negative M2 for constant data; NaN stays NaN.
            m2: if m2 < 0.0 { 0.0 } else { m2 },
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
        let l = V::LANES;
        for (b, block) in self.x.chunks(ROW_BLOCK * c).enumerate() {
            // Channel tiles of four vectors, each summed over the block's rows in registers
            // (no stores in the row loop), then the rest of the channels one vector at a time.
            let tiles = c / (4 * l) * (4 * l);
            for c0 in (0..tiles).step_by(4 * l) {
                let k = [
                    V::load(&shift[c0..]),
                    V::load(&shift[c0 + l..]),
                    V::load(&shift[c0 + 2 * l..]),
                    V::load(&shift[c0 + 3 * l..]),
                ];
                let (mut a, mut q) = ([V::splat(0.0); 4], [V::splat(0.0); 4]);
                for row in block.chunks_exact(c) {
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
                for row in block.chunks_exact(c) {
                    // Lanes past the channels load 0 in both x and the shift: their d is 0.
                    let d = load_lanes::<V>(&row[c0..c0 + lanes]).sub(k);
                    a = a.add(d);
                    q = d.mul_add(d, q);
                }
                store_lanes(a, &mut s1[c0..c0 + lanes]);
                store_lanes(q, &mut s2[c0..c0 + lanes]);
            }
            // Every channel has the same counts, so the merge weights are shared: no division
            // per channel in this loop (the same formulas as `Moments::merge`).
            let n = block.len() / c;
            let before = (b * ROW_BLOCK) as f64;
            let (nf, total) = (n as f64, before + n as f64);
            let (w_block, w_cross) = (nf / total, before * nf / total);
            for ch in 0..c {
                let (a, b2) = (s1[ch] as f64, s2[ch] as f64);
                let block_moments =
                    Moments::from_trusted_sums(n, shift[ch], a, b2, a * (a / nf), b == 0)
                        .unwrap_or_else(|| Moments::exact(block.chunks_exact(c).map(|r| r[ch])));
                let acc = &mut self.out[ch];
                if b == 0 {
                    *acc = block_moments;
                } else {
                    let delta = block_moments.mean - acc.mean;
                    acc.mean += delta * w_block;
                    acc.m2 += block_moments.m2 + delta * delta * w_cross;
                    acc.count += n as u64;
                }
                shift[ch] = acc.mean as f32;
            }
        }
    }
}
