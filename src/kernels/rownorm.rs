//! Row-wise normalization kernels: layer norm, RMS norm and weight standardization.
//!
//! A part is a run of whole rows of `cols` contiguous elements. The forward visits each row once
//! for its statistics and then normalizes it while it is still in L1/L2:
//!
//! - layer norm: the row's moments as one channel of [`channel_moments`] (shifted sums in
//!   `f64` lanes per block, Chan-merged), then
//!   `xhat = (x - m_hi) * s - m_lo * s` with `m_hi = f32(mean)`, `m_lo = mean - m_hi`,
//!   `s = f32(invstd)`, so that the output keeps the precision of the `f64` mean on data with a
//!   large offset;
//! - RMS norm: the mean square from the squares `x * x` of [`GROUP`] vectors at a time summed
//!   in `f32` (one rounding each), those sums added in `f64` lanes ([`Squares`]), then
//!   `xhat = x * s`.
//!
//! Then `y = xhat * gamma + beta` per column.
//!
//! The backward reads the saved statistics: per row, `xhat = (x - mean) * invstd` (mean 0 for
//! RMS norm), `g = dy * gamma`; the row sums of `g` and `g * (x - mean)` are `f64` lane sums
//! of products formed in `f64` (see [`super::sums`]), the latter multiplied by `invstd` once;
//! then `dx = invstd * g - ((x - mean) * b + k)` with `b = invstd^2 * mean(g * xhat)` and `k =
//! invstd * mean(g)` in `f64` (`k = 0` for RMS norm), so that no subnormal `xhat` is rounded on
//! the way. The column sums `dy * xhat` and `dy` (for `dgamma`, `dbeta`) are added to `f64`
//! accumulators the caller adds up after at most [`ROW_BLOCK`] rows.
//!
//! A row whose inverse spread exceeds the largest `f32` (values far below 1 with `eps = 0`) is
//! normalized in `f64` with the `f64` statistics, and saves `+inf`; the backward recomputes
//! those statistics from `x` for such a row ([`RecomputeStats`]) and takes it in `f64`, element
//! by element.

use super::backward::fits_f32;
use super::moments::channel_moments;
use super::sums::{Sums2, lane_sum};
use crate::io::{
    Dtype, RowData, RowDataMut, RowIo, Spread, StridedRows, VectorMap, unaligned_head,
};
use crate::simd::element::ElementIo;
use crate::simd::element::{bf16, f16};
use crate::simd::{F32Vec, F64Vec, Kernel, LINE_BYTES, U32Vec};
use std::ops::Range;

/// Rows per block of column sums (the caller adds each block's column sums into its totals).
pub(crate) use super::moments::ROW_BLOCK;

/// The input of a row part, as it is now (rows in place have one element type).
#[inline(always)]
fn input<'b, E>(io: &'b RowIo<'_, E, E>) -> &'b [E] {
    match io {
        RowIo::Separate(x, _) => x,
        RowIo::InPlace(b) => b,
    }
}

/// Vectors whose squares [`Squares`] sums in `f32` before it widens the sum to `f64` and adds it
/// there: the widening, two instructions per vector on the ports that do the arithmetic, is paid
/// once per group instead of once per vector, and each square is rounded once when it is added
/// (`x * x + acc`), so that the sum is within `GROUP` roundings of itself.
const GROUP: usize = 8;

/// The least mean square [`Squares`] gives that is trusted: `2^-100`, far above the squares that
/// leave `f32`'s normal range (below `2^-126`); a smaller one may have lost squares rounded to
/// `f32`'s subnormals or to 0, which then weigh at most `2^-49` of it.
const SQUARES_FLOOR: f64 = 1.0 / (1u128 << 100) as f64;

/// The sum of squares `x * x` of a row's vectors, added in the order they come (the row's
/// order): the squares of [`GROUP`] vectors summed in `f32` (`x * x + acc`, rounded once each),
/// then widened and added in `f64` lanes. One order for every caller, so that a mean square
/// taken while a row is formed equals the one taken over the formed row afterwards, bitwise.
/// Squares that overflow `f32` or leave its normal range where they carry weight are caught by
/// [`row_stats`], which then sums them again exactly ([`ExactMeanSquare`]).
struct Squares<V: F32Vec> {
    group: V,
    k: usize,
    acc: [V::D; 2],
}

impl<V: F32Vec> Squares<V> {
    #[inline(always)]
    fn zero() -> Self {
        let z = V::D::splat(0.0);
        Squares {
            group: V::splat(0.0),
            k: 0,
            acc: [z; 2],
        }
    }

    /// Adds the squares of `v` (a partial vector's missing lanes 0).
    #[inline(always)]
    fn add(&mut self, v: V) {
        self.group = v.mul_add(v, self.group);
        self.k += 1;
        if self.k == GROUP {
            self.flush();
        }
    }

    #[inline(always)]
    fn flush(&mut self) {
        let (g0, g1) = self.group.widen();
        self.acc[0] = self.acc[0].add(g0);
        self.acc[1] = self.acc[1].add(g1);
        self.group = V::splat(0.0);
        self.k = 0;
    }

    /// The sum over the lanes ([`lane_sum`]), over `n`.
    #[inline(always)]
    fn mean(mut self, n: usize) -> f64 {
        if self.k > 0 {
            self.flush();
        }
        let h = V::D::LANES;
        let mut lanes = [0f64; crate::simd::MAX_LANES];
        self.acc[0].store(&mut lanes[..h]);
        self.acc[1].store(&mut lanes[h..2 * h]);
        lane_sum(&lanes[..V::LANES]) / n as f64
    }
}

/// What [`row_vectors`] hands each vector of a row to. A trait and not a closure: a closure's
/// body is compiled without the target features of the kernel around it, so the vector
/// intrinsics it calls would stay out of line, a call each (RMS norm ran four times slower so).
trait VectorSink<V> {
    fn take(&mut self, v: V);
}

impl<V: F32Vec> VectorSink<V> for Squares<V> {
    #[inline(always)]
    fn take(&mut self, v: V) {
        self.add(v)
    }
}

/// Squares summed exactly in `f64` (through [`Sums2`]), for [`ExactMeanSquare`].
struct ExactSquares<V: F32Vec>(Sums2<V>);

impl<V: F32Vec> VectorSink<V> for ExactSquares<V> {
    #[inline(always)]
    fn take(&mut self, v: V) {
        self.0.add(v, v)
    }
}

/// Hands each vector of a row to `sink`, in order, the partial last one's missing lanes 0,
/// prefetching along as `spread` says.
#[inline(always)]
fn row_vectors<V: F32Vec, X: ElementIo>(row: &[X], sink: &mut impl VectorSink<V>, spread: Spread) {
    let mut vectors = row.chunks_exact(V::LANES);
    for (j, v) in (&mut vectors).enumerate() {
        spread.at::<V, X>(j * V::LANES);
        sink.take(V::read(v));
    }
    let tail = vectors.remainder();
    if !tail.is_empty() {
        sink.take(V::read_partial(tail, 0.0));
    }
}

/// The mean of `x * x` over a row (not empty), through [`Squares`], prefetching along as
/// `spread` says.
#[inline(always)]
fn mean_square<V: F32Vec, X: ElementIo>(row: &[X], spread: Spread) -> f64 {
    let mut sq = Squares::<V>::zero();
    row_vectors::<V, X>(row, &mut sq, spread);
    sq.mean(row.len())
}

/// The mean of `x * x` over a row (not empty) with every square exact in `f64`: only the `f64`
/// additions round. For rows whose `f32` squares failed (see [`Squares`]); run apart
/// ([`F32Vec::run_apart`]), out of the common path's loop but compiled for its ISA.
struct ExactMeanSquare<'a, X>(&'a [X]);

impl<X: ElementIo> Kernel for ExactMeanSquare<'_, X> {
    type Output = f64;
    #[inline(always)]
    fn run<V: F32Vec>(self) -> f64 {
        let mut acc = ExactSquares(Sums2::<V>::zero());
        row_vectors::<V, X>(self.0, &mut acc, Spread::NONE);
        acc.0.totals().1 / self.0.len() as f64
    }
}

/// How one row is normalized: `xhat = (x - shift) * scale + offset`, and what is saved.
#[derive(Clone, Copy)]
struct RowParams {
    shift: f32,
    scale: f32,
    offset: f32,
    mean: f32,
    inv: f32,
    /// The mean (0 for RMS norm) and the inverse spread in `f64`.
    mean64: f64,
    inv64: f64,
}

/// A row's statistics in `f64`, as the forward computes them: the mean (0 for RMS norm) and
/// the inverse spread `1 / sqrt(var + eps)` (`1 / sqrt(mean(x^2) + eps)` for RMS norm).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct RowStats {
    pub mean: f64,
    pub inv: f64,
}

/// The statistics of a row (not empty): layer norm if `centered`, else RMS norm (with the mean
/// square if already known). The one computation of the forward's statistics, which the
/// backward repeats for rows whose saved inverse spread overflowed (see [`RecomputeStats`]).
/// The pass over the row prefetches along as `spread` says.
#[inline(always)]
fn row_stats<V: F32Vec, X: ElementIo>(
    row: &[X],
    centered: bool,
    eps: f32,
    known_mean_square: Option<f64>,
    spread: Spread,
) -> RowStats {
    let cols = row.len();
    if centered {
        let m = channel_moments::<V, _>(&|_| row, cols, 0..cols, spread);
        let var = m.m2 / cols as f64;
        let var = if var < 0.0 { 0.0 } else { var };
        RowStats {
            mean: m.mean,
            inv: 1.0 / (var + eps as f64).sqrt(),
        }
    } else {
        let ms = match known_mean_square {
            Some(ms) => ms,
            None => mean_square::<V, X>(row, spread),
        };
        // Squares that overflowed `f32`, or left its normal range where they carry weight
        // (`SQUARES_FLOOR`), or NaN: exactly.
        let ms = if (SQUARES_FLOOR..=f64::MAX).contains(&ms) {
            ms
        } else {
            V::run_apart(ExactMeanSquare(row))
        };
        RowStats {
            mean: 0.0,
            inv: 1.0 / (ms + eps as f64).sqrt(),
        }
    }
}

/// The parameters of a row (not empty): layer norm if `centered`, else RMS norm; see
/// [`row_stats`] for `spread`.
#[inline(always)]
fn row_params<V: F32Vec, X: ElementIo>(
    row: &[X],
    centered: bool,
    eps: f32,
    known_mean_square: Option<f64>,
    spread: Spread,
) -> RowParams {
    let st = row_stats::<V, X>(row, centered, eps, known_mean_square, spread);
    let scale = st.inv as f32;
    if centered {
        let shift = st.mean as f32;
        let rest = st.mean - shift as f64;
        RowParams {
            shift,
            scale,
            offset: -((rest * scale as f64) as f32),
            mean: shift,
            inv: scale,
            mean64: st.mean,
            inv64: st.inv,
        }
    } else {
        // `x * scale - 0.0` is `x * scale` exactly, the sign of zero included.
        RowParams {
            shift: 0.0,
            scale,
            offset: -0.0,
            mean: 0.0,
            inv: scale,
            mean64: 0.0,
            inv64: st.inv,
        }
    }
}

/// `y = ((x - shift) * scale + offset) * gamma[i] + beta[i]` with the terms a row has, one
/// variant per combination so that the loop over a row holds no test: without `CENTERED` (RMS
/// norm: `shift = 0`, `offset = -0.0`) `xhat = x * scale`; an absent gamma (`G` false) is 1 and
/// an absent beta (`B` false) `-0.0`, so `fma(xhat, g, b)` becomes `xhat * g`, `xhat + b` or
/// `xhat`, bitwise the same values, the sign of zero included.
struct RowMap<'p, V, const CENTERED: bool, const G: bool, const B: bool> {
    shift: V,
    scale: V,
    offset: V,
    gamma: &'p [f32],
    beta: &'p [f32],
}

impl<V: F32Vec, const CENTERED: bool, const G: bool, const B: bool> VectorMap<V>
    for RowMap<'_, V, CENTERED, G, B>
{
    #[inline(always)]
    fn apply(&self, x: V, i: usize, lanes: usize) -> V {
        let xhat = if CENTERED {
            x.sub(self.shift).mul_add(self.scale, self.offset)
        } else {
            x.mul(self.scale)
        };
        match (G, B) {
            (true, true) => xhat.mul_add(
                V::read_lanes(&self.gamma[i..i + lanes], 1.0),
                V::read_lanes(&self.beta[i..i + lanes], -0.0),
            ),
            (true, false) => xhat.mul(V::read_lanes(&self.gamma[i..i + lanes], 1.0)),
            (false, true) => xhat.add(V::read_lanes(&self.beta[i..i + lanes], -0.0)),
            (false, false) => xhat,
        }
    }
}

/// What is done with a row's map ([`RowJob::with_map`] picks the variant).
trait WithMap<V: F32Vec> {
    type Out;
    fn with<M: VectorMap<V>>(self, m: &M) -> Self::Out;
}

/// `y = map(x)` over a row, streaming or not, prefetching along as `spread` says (see
/// [`RowIo::map_spread`]).
struct Normalize<'a, X, Y> {
    io: RowIo<'a, X, Y>,
    stream: bool,
    spread: Spread,
}

impl<V: F32Vec, X: ElementIo, Y: ElementIo> WithMap<V> for Normalize<'_, X, Y> {
    type Out = ();
    #[inline(always)]
    fn with<M: VectorMap<V>>(mut self, m: &M) {
        self.io.map_spread::<V>(m, self.stream, self.spread)
    }
}

/// `map(x)` of a row quantized to `y`; gives the row's scale.
struct Quantize<'a, X> {
    x: &'a [X],
    y: &'a mut [i8],
}

impl<V: F32Vec, X: ElementIo> WithMap<V> for Quantize<'_, X> {
    type Out = f32;
    #[inline(always)]
    fn with<M: VectorMap<V>>(self, m: &M) -> f32 {
        quantize_row::<V, X, M>(self.x, self.y, m)
    }
}

/// The tensors of a forward call, shared by its tasks (each takes its own rows): `y =
/// norm(h)` with `h = (x + residual) + bias` (absent terms skipped, each widened to `f32` and
/// added in that order); with `sum`, `h` is rounded to the sum's type, stored there, and that
/// rounded value is what is normalized.
pub(crate) struct RowTensors<'a> {
    pub x: StridedRows<'a>,
    pub residual: Option<StridedRows<'a>>,
    pub bias: Option<&'a [f32]>,
    pub sum: Option<StridedRows<'a>>,
    /// F32, BF16, F16 or I8 (quantized per row).
    pub y: StridedRows<'a>,
    /// `y` is exactly `x`.
    pub y_is_x: bool,
    pub stream_y: bool,
    pub stream_sum: bool,
}

impl RowTensors<'_> {
    /// Whether rows go through an `f32` row buffer (formed from `x`, `residual`, `bias`, and
    /// rounded through `sum`) rather than straight from `x`. Straight paths exist for what the
    /// plain functions do: `x` and `y` of one type, `f32` into any type, any type into `i8`.
    pub(crate) fn staged(&self) -> bool {
        let (x, y) = (self.x.dtype(), self.y.dtype());
        self.residual.is_some()
            || self.bias.is_some()
            || self.sum.is_some()
            || !(x == y || x == Dtype::F32 || y == Dtype::I8)
    }
}

/// Forward of the rows `rows` of a call: for each row, `h`, its statistics, then the
/// normalization (or quantization) while the row is in L1/L2.
pub(crate) struct RowsForward<'a, 'p> {
    pub t: &'p RowTensors<'p>,
    pub rows: Range<usize>,
    /// Layer norm (subtract the mean) or RMS norm.
    pub centered: bool,
    pub gamma: Option<&'p [f32]>,
    pub beta: Option<&'p [f32]>,
    pub eps: f32,
    /// The mean of every row of the part (layer norm only).
    pub save_mean: Option<&'a mut [f32]>,
    /// `invstd` (layer norm) or `invrms` (RMS norm) of every row of the part.
    pub save_inv: Option<&'a mut [f32]>,
    /// The scale of every row of the part, when `y` is I8.
    pub y_scale: Option<&'a mut [f32]>,
}

/// Software prefetch of the inputs' rows ahead. The hardware prefetchers follow the lines of a
/// row within a page but do not jump to the next row of a strided view (QK-norm's heads, one page
/// apart), so each row prefetches the head of the row [`rows_ahead`] rows further, which starts
/// that row's page walk and first lines early. Only the head: prefetching whole rows of kilobytes
/// at once fills the miss queue in bursts that stall the work on the current row (measured on
/// Zen 4, RMS norm (8192, 4096) on one core: 12.1 ms with whole next rows, 8.0 ms with none).
const PREFETCH_HEAD: usize = 512;

/// Prefetches the head of row `r` (if it exists) of the inputs.
#[inline(always)]
fn prefetch_inputs<V: F32Vec>(t: &RowTensors<'_>, r: usize) {
    t.x.prefetch::<V>(r, PREFETCH_HEAD);
    if let Some(res) = &t.residual {
        res.prefetch::<V>(r, PREFETCH_HEAD);
    }
}

/// Rows of these many bytes prefetch the next row while they are read (see [`next_row`]). Measured
/// on one and two cores of a Zen 5 (AVX-512), layer and RMS norm: rows of 8 and 16 KiB gained
/// 10-30% (RMS norm (8192, 4096), 1 thread: 7.6-8.1 to 5.5-5.9 ms; layer norm (4096, 2048), 1
/// thread: 2.0-2.3 to 1.5-1.6 ms); rows of 4 KiB lost on layer norm (the hardware prefetchers
/// already keep ahead of them), and so did layer norm's rows of 32 KiB on one core, whose next row
/// no longer fits the 48 KiB L1 beside the current one. On an Intel Xeon (AVX-512, 2 MiB L2 per
/// core) rows from 2 KiB gain too ([`PREFETCH_NEXT_ROW_BYTES_INTEL`]). (The Zen 5 figures were
/// measured with the whole next row prefetched during the normalization; the spread over both
/// passes was measured on the Intel Xeon only.)
const PREFETCH_NEXT_ROW_BYTES: std::ops::RangeInclusive<usize> = 8 << 10..=16 << 10;

/// [`PREFETCH_NEXT_ROW_BYTES`] on Intel CPUs, whose prefetchers leave the statistics of narrow
/// rows waiting on memory. Measured on an Intel Xeon (AVX-512, 2 MiB L2 per core), medians of
/// 100-200 calls, alternating: layer norm (8192, 768) 1 thread 2.9-3.2 to 2.2-2.6 ms, 2 threads
/// 1.26-1.47 to 1.07-1.18 ms; RMS norm (8192, 768) 1 thread 2.5-2.9 to 2.2-2.4 ms; layer norm
/// (16384, 512) 1 thread 9.0-9.1 to 6.4-6.7 ms. Rows of 1 KiB and of 4 KiB measured within the
/// noise; 4 KiB stays in the band, between widths that gain. Rows wider than 16 KiB gain most
/// (medians of 20-40 calls, without then with the prefetch, about 64 MB in and out each): layer
/// norm (1024, 8192) 1 thread 7.6 to 3.7 ms, 2 threads 2.02 to 1.82 ms; (512, 16384) 8.1 to 4.2
/// and 2.29 to 1.82 ms; (128, 65536) 8.0 to 4.3 and 2.24 to 1.84 ms; (64, 131072) 8.0 to 6.0 and
/// 2.51 to 2.03 ms. So the band has no upper end there.
const PREFETCH_NEXT_ROW_BYTES_INTEL: std::ops::RangeInclusive<usize> = 2 << 10..=usize::MAX;

/// The distance in elements from a row of `x` to its next row, which the two passes over a row
/// prefetch line by line as they go (0: no prefetch), decided once per part: the statistics
/// the next row's first half, the normalization its second half ([`Spread`]). Without it the
/// statistics of a row read it from memory while nothing is written, and its normalization
/// writes it from L1 while nothing is read; with the next row prefetched along both passes,
/// reads stay in flight all the time and overlap the writes, as in a copy. (The whole next row
/// prefetched during the normalization alone leaves the statistics without reads in flight: on
/// an Intel Xeon, AVX-512, medians of 40-100 calls alternating, layer norm (2048, 4096) took
/// 1.83-1.86 ms so on two threads and 1.64-1.68 ms spread; (8192, 768) 1.13
/// and 1.03 ms; (4096, 2048) 1.71-1.72 and 1.54-1.58 ms; on one thread 3.61 and 3.34-3.39 ms,
/// 2.22-2.25 and 2.13-2.14 ms.) Other rows only prefetch heads ([`prefetch_inputs`]).
#[inline(always)]
fn next_row_distance(x: &StridedRows<'_>) -> usize {
    let band = if crate::simd::intel_cpu() {
        PREFETCH_NEXT_ROW_BYTES_INTEL
    } else {
        PREFETCH_NEXT_ROW_BYTES
    };
    if band.contains(&(x.cols() * x.dtype().bytes())) {
        x.stride()
    } else {
        0
    }
}

/// The prefetch of the row after row `r` of `x` (`row`, as read) that the statistics and the
/// normalization of row `r` spread over their passes ([`Spread`]), if [`RowJob::next_row`]
/// says so: none after the last row.
#[inline(always)]
fn next_row<V, X>(j: &RowJob<'_, V>, x: &StridedRows<'_>, r: usize, row: &[X]) -> Spread {
    if j.next_row > 0 && r + 1 < x.rows() {
        Spread::to(row.as_ptr().wrapping_add(j.next_row))
    } else {
        Spread::NONE
    }
}

/// How many rows ahead the inputs are prefetched: about 2 KiB of rows in flight, 1 to 16 rows.
#[inline(always)]
fn rows_ahead(row_bytes: usize) -> usize {
    (2048 / row_bytes.max(1)).clamp(1, 16)
}

impl Kernel for RowsForward<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(self) {
        forward_rows::<V>(self)
    }
}

/// What every row of a part shares.
struct RowJob<'p, V> {
    centered: bool,
    eps: f32,
    gamma: Option<&'p [f32]>,
    beta: Option<&'p [f32]>,
    stream: bool,
    /// Elements from a row to the next, prefetched while the row is normalized (0: none); see
    /// [`next_row_distance`].
    next_row: usize,
    _v: std::marker::PhantomData<V>,
}

/// What a row gives back: its statistics and, for I8 output, its scale.
struct RowOut {
    p: RowParams,
    y_scale: f32,
}

/// The element types of `x` and `y` a part of rows is read and written as; each case runs
/// apart (see [`F32Vec::run_apart`]).
#[inline(always)]
fn forward_rows<V: F32Vec>(k: RowsForward<'_, '_>) {
    use Dtype::{Bf16, F16, F32, I8};
    let t = k.t;
    if t.x.cols() == 0 {
        return;
    }
    let (x, y) = (t.x.dtype(), t.y.dtype());
    match (t.staged(), t.y_is_x, x, y) {
        (true, _, _, F32) => V::run_apart(Part::<Staged<f32>>::new(k)),
        (true, _, _, Bf16) => V::run_apart(Part::<Staged<bf16>>::new(k)),
        (true, _, _, F16) => V::run_apart(Part::<Staged<f16>>::new(k)),
        (true, _, _, I8) => V::run_apart(Part::<StagedI8>::new(k)),
        (false, true, _, F32) => V::run_apart(Part::<InPlace<f32>>::new(k)),
        (false, true, _, Bf16) => V::run_apart(Part::<InPlace<bf16>>::new(k)),
        (false, true, _, F16) => V::run_apart(Part::<InPlace<f16>>::new(k)),
        (false, false, F32, F32) => V::run_apart(Part::<Straight<f32, f32>>::new(k)),
        (false, false, F32, Bf16) => V::run_apart(Part::<Straight<f32, bf16>>::new(k)),
        (false, false, F32, F16) => V::run_apart(Part::<Straight<f32, f16>>::new(k)),
        (false, false, Bf16, Bf16) => V::run_apart(Part::<Straight<bf16, bf16>>::new(k)),
        (false, false, F16, F16) => V::run_apart(Part::<Straight<f16, f16>>::new(k)),
        (false, false, F32, I8) => V::run_apart(Part::<StraightI8<f32>>::new(k)),
        (false, false, Bf16, I8) => V::run_apart(Part::<StraightI8<bf16>>::new(k)),
        (false, false, F16, I8) => V::run_apart(Part::<StraightI8<f16>>::new(k)),
        _ => unreachable!("other combinations are staged or refused"),
    }
    if t.stream_y || t.stream_sum {
        V::fence_streams();
    }
}

/// The rows of a call's part, of one case `C` of element types.
struct Part<'a, 'p, C> {
    k: RowsForward<'a, 'p>,
    _case: std::marker::PhantomData<C>,
}

impl<'a, 'p, C> Part<'a, 'p, C> {
    #[inline(always)]
    fn new(k: RowsForward<'a, 'p>) -> Self {
        Part {
            k,
            _case: std::marker::PhantomData,
        }
    }
}

/// How one row of a case is normalized.
trait Case {
    /// Whether rows go through the `f32` row buffer.
    const STAGED: bool;
    /// Row `r` of `t`; `buf` is the row buffer (empty unless `STAGED`).
    fn row<V: F32Vec>(job: &RowJob<'_, V>, t: &RowTensors<'_>, r: usize, buf: &mut [f32])
    -> RowOut;
}

/// The rows of one element type in a [`RowData`] or [`RowDataMut`] whose type a case knows.
trait Rows: ElementIo {
    fn of(d: RowData<'_>) -> &[Self];
    fn of_mut(d: RowDataMut<'_>) -> &mut [Self];
}

macro_rules! rows_of {
    ($t:ty, $v:ident) => {
        impl Rows for $t {
            #[inline(always)]
            fn of(d: RowData<'_>) -> &[Self] {
                match d {
                    RowData::$v(s) => s,
                    _ => unreachable!("the case matches the tensor's type"),
                }
            }
            #[inline(always)]
            fn of_mut(d: RowDataMut<'_>) -> &mut [Self] {
                match d {
                    RowDataMut::$v(s) => s,
                    _ => unreachable!("the case matches the tensor's type"),
                }
            }
        }
    };
}
rows_of!(f32, F32);
rows_of!(bf16, Bf16);
rows_of!(f16, F16);

/// `y` of the row buffer (staged rows).
struct Staged<Y>(Y);
/// I8 `y` of the row buffer.
struct StagedI8;
/// `y` over `x`, one type.
struct InPlace<Y>(Y);
/// `y` straight from `x`.
struct Straight<X, Y>(X, Y);
/// I8 `y` straight from `x`.
struct StraightI8<X>(X);

// SAFETY (every row access of the cases): the task owns row r of every output; each slice lives
// only while no other reference to its memory does (inputs are read, and their slices dropped,
// before an output that may replace them is made).

impl<Y: Rows> Case for Staged<Y> {
    const STAGED: bool = true;
    #[inline(always)]
    fn row<V: F32Vec>(j: &RowJob<'_, V>, t: &RowTensors<'_>, r: usize, buf: &mut [f32]) -> RowOut {
        let ms = stage::<V>(t, r, buf, !j.centered);
        let y = Y::of_mut(unsafe { t.y.row_mut(r) });
        j.row::<f32, Y>(RowIo::Separate(buf, y), ms, Spread::NONE)
    }
}

impl Case for StagedI8 {
    const STAGED: bool = true;
    #[inline(always)]
    fn row<V: F32Vec>(j: &RowJob<'_, V>, t: &RowTensors<'_>, r: usize, buf: &mut [f32]) -> RowOut {
        let ms = stage::<V>(t, r, buf, !j.centered);
        let RowDataMut::I8(y) = (unsafe { t.y.row_mut(r) }) else {
            unreachable!("the case matches the tensor's type")
        };
        j.row_i8::<f32>(buf, y, ms)
    }
}

impl<Y: Rows> Case for InPlace<Y> {
    const STAGED: bool = false;
    #[inline(always)]
    fn row<V: F32Vec>(j: &RowJob<'_, V>, t: &RowTensors<'_>, r: usize, _: &mut [f32]) -> RowOut {
        let b = Y::of_mut(unsafe { t.y.row_mut(r) });
        let next = next_row(j, &t.x, r, b);
        j.row::<Y, Y>(RowIo::InPlace(b), None, next)
    }
}

impl<X: Rows, Y: Rows> Case for Straight<X, Y> {
    const STAGED: bool = false;
    #[inline(always)]
    fn row<V: F32Vec>(j: &RowJob<'_, V>, t: &RowTensors<'_>, r: usize, _: &mut [f32]) -> RowOut {
        let (x, y) = unsafe { (X::of(t.x.row(r)), Y::of_mut(t.y.row_mut(r))) };
        j.row::<X, Y>(RowIo::Separate(x, y), None, next_row(j, &t.x, r, x))
    }
}

impl<X: Rows> Case for StraightI8<X> {
    const STAGED: bool = false;
    #[inline(always)]
    fn row<V: F32Vec>(j: &RowJob<'_, V>, t: &RowTensors<'_>, r: usize, _: &mut [f32]) -> RowOut {
        let x = X::of(unsafe { t.x.row(r) });
        let RowDataMut::I8(y) = (unsafe { t.y.row_mut(r) }) else {
            unreachable!("the case matches the tensor's type")
        };
        j.row_i8::<X>(x, y, None)
    }
}

impl<C: Case> Kernel for Part<'_, '_, C> {
    type Output = ();
    /// For each row: `h`, its statistics, then the normalization (or quantization) while the
    /// row is in L1/L2.
    #[inline(always)]
    fn run<V: F32Vec>(self) {
        let RowsForward {
            t,
            rows,
            centered,
            gamma,
            beta,
            eps,
            mut save_mean,
            mut save_inv,
            mut y_scale,
        } = self.k;
        let job = RowJob::<V> {
            centered,
            eps,
            gamma,
            beta,
            stream: t.stream_y,
            next_row: next_row_distance(&t.x),
            _v: std::marker::PhantomData,
        };
        let mut buf = if C::STAGED {
            vec![0f32; t.x.cols()]
        } else {
            Vec::new()
        };
        let first = rows.start;
        let ahead = rows_ahead(t.x.cols() * t.x.dtype().bytes());
        for r in first + 1..(first + ahead).min(rows.end) {
            prefetch_inputs::<V>(t, r);
        }
        for r in rows {
            prefetch_inputs::<V>(t, r + ahead);
            let out = C::row::<V>(&job, t, r, &mut buf);
            let i = r - first;
            if let Some(m) = save_mean.as_deref_mut() {
                m[i] = out.p.mean;
            }
            if let Some(s) = save_inv.as_deref_mut() {
                s[i] = out.p.inv;
            }
            if let Some(s) = y_scale.as_deref_mut() {
                s[i] = out.y_scale;
            }
        }
    }
}

/// `buf = (x + residual) + bias` of row `r`; with a sum, rounded to its type and stored there.
/// With `squares`, gives the mean square of `buf` when it was taken on the way (see
/// [`round_through`]).
#[inline(always)]
fn stage<V: F32Vec>(t: &RowTensors<'_>, r: usize, buf: &mut [f32], squares: bool) -> Option<f64> {
    // SAFETY (row accesses): as in `forward_rows`; the input slices die before the sum (which
    // may replace x or residual) is made.
    match unsafe { t.x.row(r) } {
        RowData::F32(x) => form_with::<V, f32>(x, t, r, buf),
        RowData::Bf16(x) => form_with::<V, bf16>(x, t, r, buf),
        RowData::F16(x) => form_with::<V, f16>(x, t, r, buf),
    }
    let sum = t.sum.as_ref()?;
    let stream = t.stream_sum;
    match unsafe { sum.row_mut(r) } {
        RowDataMut::F32(s) => round_through::<V, f32>(buf, s, stream, squares),
        RowDataMut::Bf16(s) => round_through::<V, bf16>(buf, s, stream, squares),
        RowDataMut::F16(s) => round_through::<V, f16>(buf, s, stream, squares),
        RowDataMut::I8(_) => unreachable!("a sum is never i8"),
    }
}

/// [`form`] with row `r` of the residual, if any, of its type.
#[inline(always)]
fn form_with<V: F32Vec, X: ElementIo>(x: &[X], t: &RowTensors<'_>, r: usize, buf: &mut [f32]) {
    let bias = t.bias;
    // SAFETY: as in `stage`.
    match t.residual.as_ref().map(|res| unsafe { res.row(r) }) {
        None => form::<V, X, f32, false>(x, &[], bias, buf),
        Some(RowData::F32(a)) => form::<V, X, f32, true>(x, a, bias, buf),
        Some(RowData::Bf16(a)) => form::<V, X, bf16, true>(x, a, bias, buf),
        Some(RowData::F16(a)) => form::<V, X, f16, true>(x, a, bias, buf),
    }
}

/// How far ahead of the element being formed `x` and the residual are prefetched, in bytes
/// (past the row's end: into the next row of packed rows; prefetching never faults).
const FORM_AHEAD_BYTES: usize = 4096;

/// `buf = (x + a) + bias` (without `a` unless `RES`; without `bias` if `None`), widened and
/// added in `f32`.
#[inline(always)]
fn form<V: F32Vec, X: ElementIo, A: ElementIo, const RES: bool>(
    x: &[X],
    a: &[A],
    bias: Option<&[f32]>,
    buf: &mut [f32],
) {
    let l = V::LANES;
    let n = buf.len();
    // Slices of exactly `n` elements: the bounds below are then known to hold.
    let (x, a) = (&x[..n], if RES { &a[..n] } else { a });
    let bias = bias.map(|b| &b[..n]);
    let full = n / l * l;
    let mut i = 0;
    // Whole vectors, then the partial one: no length test per vector.
    while i < full {
        if (i * X::BYTES).is_multiple_of(LINE_BYTES) {
            V::prefetch(x.as_ptr().wrapping_add(i + FORM_AHEAD_BYTES / X::BYTES));
        }
        if RES && (i * A::BYTES).is_multiple_of(LINE_BYTES) {
            V::prefetch(a.as_ptr().wrapping_add(i + FORM_AHEAD_BYTES / A::BYTES));
        }
        let mut h = V::read(&x[i..i + l]);
        if RES {
            h = h.add(V::read(&a[i..i + l]));
        }
        if let Some(b) = bias {
            h = h.add(V::read(&b[i..i + l]));
        }
        h.write(&mut buf[i..i + l]);
        i += l;
    }
    if i < n {
        let mut h = V::read_partial(&x[i..n], 0.0);
        if RES {
            h = h.add(V::read_partial(&a[i..n], 0.0));
        }
        if let Some(b) = bias {
            h = h.add(V::read_partial(&b[i..n], 0.0));
        }
        h.write_partial(&mut buf[i..n]);
    }
}

/// `sum = round(buf)`, then `buf = sum` widened (rounding once); streaming stores for the
/// vector-aligned body of `sum` if `stream`. With `squares`, and when the body starts at the
/// row's first element (not streamed, or the row aligned), also gives the mean square of the
/// new `buf`, taken in the order of [`mean_square`] while the vectors are in registers.
#[inline(always)]
fn round_through<V: F32Vec, S: ElementIo>(
    buf: &mut [f32],
    sum: &mut [S],
    stream: bool,
    squares: bool,
) -> Option<f64> {
    // Streaming needs whole aligned vectors: a partial head first, then the body, then a tail.
    let head = if stream {
        unaligned_head::<V, S>(sum)
    } else {
        0
    };
    if head > 0 {
        round_part::<V, S>(&mut buf[..head], &mut sum[..head]);
    }
    round_body::<V, S>(
        &mut buf[head..],
        &mut sum[head..],
        stream,
        squares && head == 0,
    )
}

/// [`round_through`] from a vector-aligned start of `sum` (if `stream`): whole vectors, then a
/// partial one; the mean square if `squares`, its vectors added in the order [`mean_square`]
/// adds them.
#[inline(always)]
fn round_body<V: F32Vec, S: ElementIo>(
    buf: &mut [f32],
    sum: &mut [S],
    stream: bool,
    squares: bool,
) -> Option<f64> {
    let l = V::LANES;
    let n = buf.len();
    let sum = &mut sum[..n];
    let mut sq = Squares::<V>::zero();
    let mut i = 0;
    while i + l <= n {
        let r = round_vector::<V, S>(&mut buf[i..i + l], &mut sum[i..i + l], stream);
        if squares {
            sq.add(r);
        }
        i += l;
    }
    if i < n {
        let r = round_part::<V, S>(&mut buf[i..], &mut sum[i..]);
        if squares {
            sq.add(r);
        }
    }
    (squares && n > 0).then(|| sq.mean(n))
}

/// One whole vector of [`round_through`]: `sum = round(buf)`, `buf = sum` widened; gives the
/// widened value.
#[inline(always)]
fn round_vector<V: F32Vec, S: ElementIo>(buf: &mut [f32], sum: &mut [S], stream: bool) -> V {
    let v = V::read(buf);
    let r = if stream {
        S::store_round::<V, true>(v, sum)
    } else {
        S::store_round::<V, false>(v, sum)
    };
    if S::BYTES != 4 {
        r.write(buf);
    }
    r
}

/// [`round_through`] of fewer than `LANES` elements.
#[inline(always)]
fn round_part<V: F32Vec, S: ElementIo>(buf: &mut [f32], sum: &mut [S]) -> V {
    let r = S::store_round::<V, false>(V::read_partial(buf, 0.0), sum);
    r.write_partial(buf);
    r
}

impl<V: F32Vec> RowJob<'_, V> {
    /// The statistics of a row (the mean square `ms` if already known), then `y` from them.
    #[inline(always)]
    fn row<X: ElementIo, Y: ElementIo>(
        &self,
        mut io: RowIo<'_, X, Y>,
        ms: Option<f64>,
        next: Spread,
    ) -> RowOut {
        let (c, eps) = (self.centered, self.eps);
        let p = match &io {
            RowIo::Separate(x, _) => row_params::<V, X>(x, c, eps, ms, next),
            RowIo::InPlace(b) => row_params::<V, Y>(b, c, eps, ms, next),
        };
        if p.scale.is_infinite() && p.inv64.is_finite() {
            // Values far below 1 with a tiny eps: the inverse spread exceeds the largest f32
            // although the normalized values need not. Such a row is normalized in f64.
            let gb = self.params();
            io.map_scalar(|j, x| p.in_f64(j, x, gb));
        } else {
            let stream = self.stream;
            // The second half of the next row (the statistics prefetched the first).
            let spread = next.from::<X>(io.len());
            self.with_map(p, Normalize { io, stream, spread });
        }
        RowOut { p, y_scale: 0.0 }
    }

    /// The statistics of a row, then its `f32` output `v` quantized to `y` per
    /// [`quantize_row`].
    #[inline(always)]
    fn row_i8<X: ElementIo>(&self, x: &[X], y: &mut [i8], ms: Option<f64>) -> RowOut {
        let p = row_params::<V, X>(x, self.centered, self.eps, ms, Spread::NONE);
        let y_scale = if p.scale.is_infinite() && p.inv64.is_finite() {
            let gb = self.params();
            let v: Vec<f32> = (0..x.len())
                .map(|j| p.in_f64(j, x[j].to_f32(), gb))
                .collect();
            quantize_row::<V, f32, _>(&v, y, &Identity)
        } else {
            self.with_map(p, Quantize { x, y })
        };
        RowOut { p, y_scale }
    }

    fn params(&self) -> (Option<&[f32]>, Option<&[f32]>) {
        (self.gamma, self.beta)
    }

    /// Runs `w` with the map of row parameters `p`, the variant of the terms this call has.
    #[inline(always)]
    fn with_map<W: WithMap<V>>(&self, p: RowParams, w: W) -> W::Out {
        #[inline(always)]
        fn map<'p, V: F32Vec, const C: bool, const G: bool, const B: bool>(
            p: RowParams,
            gamma: &'p [f32],
            beta: &'p [f32],
        ) -> RowMap<'p, V, C, G, B> {
            RowMap {
                shift: V::splat(p.shift),
                scale: V::splat(p.scale),
                offset: V::splat(p.offset),
                gamma,
                beta,
            }
        }
        // RMS norm's rows (shift 0, offset -0.0) may take the centered variants too: those
        // give the same values.
        match (self.centered, self.gamma, self.beta) {
            (false, None, None) => w.with(&map::<V, false, false, false>(p, &[], &[])),
            (false, Some(g), None) => w.with(&map::<V, false, true, false>(p, g, &[])),
            (_, None, None) => w.with(&map::<V, true, false, false>(p, &[], &[])),
            (_, Some(g), None) => w.with(&map::<V, true, true, false>(p, g, &[])),
            (_, None, Some(b)) => w.with(&map::<V, true, false, true>(p, &[], b)),
            (_, Some(g), Some(b)) => w.with(&map::<V, true, true, true>(p, g, b)),
        }
    }
}

impl RowParams {
    /// `y = (x - mean) * inv * gamma + beta` in `f64`, rounded once.
    fn in_f64(&self, j: usize, x: f32, (gamma, beta): (Option<&[f32]>, Option<&[f32]>)) -> f32 {
        let g = gamma.map_or(1.0, |g| g[j] as f64);
        let b = beta.map_or(0.0, |b| b[j] as f64);
        ((x as f64 - self.mean64) * self.inv64 * g + b) as f32
    }
}

/// The identity map (values already computed).
struct Identity;

impl<V: F32Vec> VectorMap<V> for Identity {
    #[inline(always)]
    fn apply(&self, x: V, _: usize, _: usize) -> V {
        x
    }
}

/// Quantizes `v = f(x)` of a row to `y`, symmetric, and returns the scale: `amax = max |v|`,
/// `scale = amax / 127`, `y = nearbyint(v * (127 / amax))` (ties to even; the product is at
/// most 127 in magnitude, so no clamp is needed). A row with `amax = 0` gets scale 0 and zeros;
/// a row with a NaN or infinite `v`, scale NaN and zeros. Where `127 / amax` overflows (`amax
/// < 127 / f32::MAX`), `v * 2^32 * (127 / (amax * 2^32))` is used: the formula's value with an
/// unbounded exponent (both scalings are exact).
///
/// `v` is computed twice, once for `amax` and once to quantize, by the same instructions.
#[inline(always)]
pub(crate) fn quantize_row<V: F32Vec, X: ElementIo, M: VectorMap<V>>(
    x: &[X],
    y: &mut [i8],
    f: &M,
) -> f32 {
    let l = V::LANES;
    let n = x.len();
    // |v| as bits: for non-negative floats, the unsigned order of the bits is the order of
    // the values, with infinity above every finite value and NaN above infinity.
    let magnitude = V::U::splat(0x7FFF_FFFF);
    let mut top = [V::U::splat(0); 2];
    let mut i = 0;
    while i + 2 * l <= n {
        for (k, t) in top.iter_mut().enumerate() {
            let j = i + k * l;
            let v = f.apply(V::read(&x[j..j + l]), j, l);
            *t = t.max(v.to_bits().and(magnitude));
        }
        i += 2 * l;
    }
    while i + l <= n {
        let v = f.apply(V::read(&x[i..i + l]), i, l);
        top[0] = top[0].max(v.to_bits().and(magnitude));
        i += l;
    }
    if i < n {
        let lanes = n - i;
        let v = f.apply(V::read_partial(&x[i..n], 0.0), i, lanes);
        let v = V::select_bits((1u32 << lanes) - 1, v, V::splat(0.0));
        top[1] = top[1].max(v.to_bits().and(magnitude));
    }
    let mut lanes = [0u32; crate::simd::MAX_LANES];
    top[0].max(top[1]).store(&mut lanes[..l]);
    let amax_bits = lanes[..l].iter().copied().max().unwrap_or(0);
    if amax_bits >= 0x7F80_0000 || amax_bits == 0 {
        y.fill(0);
        return if amax_bits == 0 { 0.0 } else { f32::NAN };
    }
    let amax = f32::from_bits(amax_bits);
    let (pre, mult) = if (127.0f32 / amax).is_finite() {
        (1.0, 127.0f32 / amax)
    } else {
        let two32 = 4294967296.0f32;
        (two32, 127.0f32 / (amax * two32))
    };
    let (pre, mult) = (V::splat(pre), V::splat(mult));
    let full = n / l * l;
    let mut i = 0;
    while i < full {
        let v = f.apply(V::read(&x[i..i + l]), i, l);
        v.mul(pre).mul(mult).round_even().write_i8(&mut y[i..i + l]);
        i += l;
    }
    if i < n {
        let v = f.apply(V::read_partial(&x[i..n], 0.0), i, n - i);
        v.mul(pre).mul(mult).round_even().write_i8(&mut y[i..n]);
    }
    amax / 127.0
}

/// The gradient of a backward part: `dy` alone (no `dx` wanted), or `dy` and `dx` (separate or
/// in place).
pub(crate) enum GradIo<'a, E = f32> {
    Dy(&'a [E]),
    Dx(RowIo<'a, E, E>),
}

/// Column sums of a block of rows, added to by the kernels: `dy * xhat` and `dy`, in `f64`
/// (`dy * (x - mean) * inv` formed in `f64`, so that no subnormal `xhat` is rounded first).
pub(crate) struct ColumnSums<'a> {
    pub dy_xhat: &'a mut [f64],
    pub dy: &'a mut [f64],
}

/// Backward of a part of whole rows.
pub(crate) struct RowsBackward<'a, 'p, E = f32> {
    pub x: &'a [E],
    pub grad: GradIo<'a, E>,
    pub cols: usize,
    pub gamma: Option<&'p [f32]>,
    /// The saved mean of every row of the part; `None` for RMS norm.
    pub mean: Option<&'p [f32]>,
    /// The saved `invstd` (or `invrms`) of every row of the part.
    pub inv: &'p [f32],
    /// The forward's statistics of every row of the part (see [`RecomputeStats`]), or nothing
    /// when no row's saved inverse spread is `+inf`.
    pub exact: &'p [RowStats],
    /// Column sums to add to (length `cols`), if `dgamma` or `dbeta` is wanted.
    pub sums: Option<ColumnSums<'a>>,
}

impl<E: ElementIo> Kernel for RowsBackward<'_, '_, E> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(self) {
        match (self.gamma.is_some(), self.sums.is_some()) {
            (true, true) => backward_rows::<V, E, true, true>(self),
            (true, false) => backward_rows::<V, E, true, false>(self),
            (false, true) => backward_rows::<V, E, false, true>(self),
            (false, false) => backward_rows::<V, E, false, false>(self),
        }
    }
}

/// The row's values at one vector position, for [`row_pass`].
struct RowAt<'r, 'c, V: F32Vec, E> {
    x: &'r [E],
    dy: &'r [E],
    gamma: &'r [f32],
    mean: f32,
    m: V,
    s: <V as F32Vec>::D,
    sums: &'r mut Option<ColumnSums<'c>>,
}

impl<V: F32Vec, E: ElementIo> RowAt<'_, '_, V, E> {
    /// Adds the `lanes` values from `i` to the row sums (if `ROW`: `sum(g)` and `sum(g * (x -
    /// mean))` in `row`) and to the column sums (if `SUMS`).
    #[inline(always)]
    fn step<const G: bool, const SUMS: bool, const ROW: bool>(
        &mut self,
        i: usize,
        lanes: usize,
        row: &mut Sums2<V>,
    ) {
        // Lanes past the row hold x = mean and dy = 0: they add exactly 0.
        let xv = V::read_lanes(&self.x[i..i + lanes], self.mean);
        let dv = V::read_lanes(&self.dy[i..i + lanes], 0.0);
        let (x0, x1) = xv.sub(self.m).widen();
        if ROW {
            let gamma = if G {
                V::read_lanes(&self.gamma[i..i + lanes], 0.0)
            } else {
                V::splat(1.0)
            };
            row.add3(dv, gamma, (x0, x1));
        }
        if SUMS {
            let Some(c) = self.sums.as_mut() else {
                return;
            };
            let mut col = Sums2::<V>::zero();
            col.add3(dv, V::splat(1.0), (x0.mul(self.s), x1.mul(self.s)));
            col.add_to(&mut c.dy[i..i + lanes], &mut c.dy_xhat[i..i + lanes]);
        }
    }
}

/// One row's first backward pass: adds `dy * xhat` and `dy` to the column sums (if `SUMS`) and
/// returns the row sums of `g` and `g * xhat` (if `ROW`), `g = dy * gamma`, in `f64`: `g` and
/// its product with `x - mean` are formed in `f64`, and `inv` multiplies the sum, so that no
/// product is rounded to a subnormal `f32` on the way.
#[inline(always)]
fn row_pass<V: F32Vec, E: ElementIo, const G: bool, const SUMS: bool, const ROW: bool>(
    x: &[E],
    dy: &[E],
    gamma: &[f32],
    mean: f32,
    inv: f32,
    sums: &mut Option<ColumnSums<'_>>,
) -> (f64, f64) {
    let l = V::LANES;
    let mut at = RowAt {
        x,
        dy,
        gamma,
        mean,
        m: V::splat(mean),
        s: V::D::splat(inv as f64),
        sums,
    };
    let mut acc = [Sums2::<V>::zero(); 2];
    let n = x.len();
    let mut i = 0;
    while i + 2 * l <= n {
        let (a0, a1) = acc.split_at_mut(1);
        at.step::<G, SUMS, ROW>(i, l, &mut a0[0]);
        at.step::<G, SUMS, ROW>(i + l, l, &mut a1[0]);
        i += 2 * l;
    }
    while i < n {
        let lanes = l.min(n - i);
        at.step::<G, SUMS, ROW>(i, lanes, &mut acc[0]);
        i += lanes;
    }
    if !ROW {
        return (0.0, 0.0);
    }
    let (g, gx) = acc[0].merge(acc[1]).totals();
    (g, gx * inv as f64)
}

/// `dx = g * inv - ((x - mean) * b + k)`, from `dy`, with `x` and `gamma` read at the same
/// index: `inv * (g - mean(g) - xhat * mean(g * xhat))` with the row's coefficients
/// `b = inv^2 * mean(g * xhat)` and `k = inv * mean(g)` computed in `f64`. `x - mean` is
/// multiplied by `b` directly, never rounded to an `xhat` first: for values far below 1, `xhat`
/// would be subnormal and lose digits that the product keeps.
struct DxMap<'p, V, E, const G: bool> {
    x: &'p [E],
    gamma: &'p [f32],
    mean: f32,
    m: V,
    s: V,
    b: V,
    k: V,
}

impl<V: F32Vec, E: ElementIo, const G: bool> VectorMap<V> for DxMap<'_, V, E, G> {
    #[inline(always)]
    fn apply(&self, dy: V, i: usize, lanes: usize) -> V {
        let xm = V::read_lanes(&self.x[i..i + lanes], self.mean).sub(self.m);
        let g = if G {
            dy.mul(V::read_lanes(&self.gamma[i..i + lanes], 0.0))
        } else {
            dy
        };
        g.mul(self.s).sub(xm.mul_add(self.b, self.k))
    }
}

#[inline(always)]
fn backward_rows<V: F32Vec, E: ElementIo, const G: bool, const SUMS: bool>(
    k: RowsBackward<'_, '_, E>,
) {
    let RowsBackward {
        x,
        mut grad,
        cols,
        gamma,
        mean,
        inv,
        exact,
        mut sums,
    } = k;
    if cols == 0 {
        return;
    }
    let gamma = gamma.unwrap_or(&[]);
    let rows = x.len() / cols;
    let n = cols as f64;
    for r in 0..rows {
        let xr = &x[r * cols..(r + 1) * cols];
        let (mu, s) = (mean.map_or(0.0, |m| m[r]), inv[r]);
        if s == f32::INFINITY
            && let Some(&st) = exact.get(r)
        {
            // The forward normalized this row in f64 (see `RecomputeStats`): so is its
            // gradient, from the forward's f64 statistics.
            match &mut grad {
                GradIo::Dy(dy) => {
                    let dyr = &dy[r * cols..(r + 1) * cols];
                    exact_sums::<E, G, SUMS>(xr, dyr, gamma, st, &mut sums);
                }
                GradIo::Dx(io) => {
                    let mut row = io.part(r * cols..(r + 1) * cols);
                    let (sg, sgx) = exact_sums::<E, G, SUMS>(xr, input(&row), gamma, st, &mut sums);
                    let mg = if mean.is_some() { sg / n } else { 0.0 };
                    let bk = (st.inv * st.inv * (sgx / n), st.inv * mg);
                    dx_in_f64::<E, G>(&mut row, xr, gamma, st, bk);
                }
            }
            continue;
        }
        match &mut grad {
            GradIo::Dy(dy) => {
                let dyr = &dy[r * cols..(r + 1) * cols];
                row_pass::<V, E, G, SUMS, false>(xr, dyr, gamma, mu, s, &mut sums);
            }
            GradIo::Dx(io) => {
                let mut row = io.part(r * cols..(r + 1) * cols);
                let (sg, sgx) =
                    row_pass::<V, E, G, SUMS, true>(xr, input(&row), gamma, mu, s, &mut sums);
                let mg = if mean.is_some() { sg / n } else { 0.0 };
                let inv = s as f64;
                let (b, k) = (inv * inv * (sgx / n), inv * mg);
                if fits_f32(b) && fits_f32(k) {
                    let map = DxMap::<V, E, G> {
                        x: xr,
                        gamma,
                        mean: mu,
                        m: V::splat(mu),
                        s: V::splat(s),
                        b: V::splat(b as f32),
                        k: V::splat(k as f32),
                    };
                    row.map::<V>(&map);
                } else {
                    // Coefficients beyond f32 (an inverse spread near the top of the range) or
                    // subnormal: the row in f64, where every term of a finite dx is finite.
                    let st = RowStats {
                        mean: mu as f64,
                        inv,
                    };
                    dx_in_f64::<E, G>(&mut row, xr, gamma, st, (b, k));
                }
            }
        }
    }
}

/// `dx = g * inv - ((x - mean) * b + k)` of a row in `f64`, element by element, each rounded
/// once, from `dy` (`g = dy * gamma` if `G`), with `x` and `gamma` read at the same index.
fn dx_in_f64<E: ElementIo, const G: bool>(
    row: &mut RowIo<'_, E, E>,
    x: &[E],
    gamma: &[f32],
    st: RowStats,
    (b, k): (f64, f64),
) {
    row.map_scalar(|i, d| {
        let g = if G {
            d as f64 * gamma[i] as f64
        } else {
            d as f64
        };
        (g * st.inv - ((x[i].to_f32() as f64 - st.mean) * b + k)) as f32
    });
}

/// [`row_pass`] in `f64`, element by element, with the row's `f64` statistics: adds `dy` and
/// `dy * xhat` to the column sums (if `SUMS`; index `i` of `x` is column `i` of the sums) and
/// returns the sums of `g` and `g * xhat`, `xhat = (x - mean) * inv` formed in `f64`. For rows
/// whose inverse spread is beyond `f32` (then `xhat` is still of the order of 1).
fn exact_sums<E: ElementIo, const G: bool, const SUMS: bool>(
    x: &[E],
    dy: &[E],
    gamma: &[f32],
    st: RowStats,
    sums: &mut Option<ColumnSums<'_>>,
) -> (f64, f64) {
    let (mut sg, mut sgx) = (0.0, 0.0);
    for (i, (xv, dv)) in x.iter().zip(dy).enumerate() {
        let d = dv.to_f32() as f64;
        let xhat = (xv.to_f32() as f64 - st.mean) * st.inv;
        let g = if G { d * gamma[i] as f64 } else { d };
        sg += g;
        sgx += g * xhat;
        if SUMS && let Some(c) = sums.as_mut() {
            c.dy[i] += d;
            c.dy_xhat[i] += d * xhat;
        }
    }
    (sg, sgx)
}

/// The forward's statistics of the rows of a part whose saved inverse spread is `+inf` (into
/// `out`, one per row; other rows are left alone). Such a value exceeds the largest `f32`, so
/// `var + eps < 2^-256`, which the smallest positive `eps` (`2^-149`) rules out: the forward had
/// `eps = 0`. It normalized such a row in `f64` with these statistics (`f32` ones cannot
/// represent it), and the backward follows it with the same: recomputed from `x` by the
/// forward's own [`row_stats`] (bitwise the forward's on the same ISA).
pub(crate) struct RecomputeStats<'a, 'p, E = f32> {
    pub x: &'a [E],
    pub cols: usize,
    /// Layer norm (true) or RMS norm.
    pub centered: bool,
    /// The saved inverse spread of every row of the part.
    pub inv: &'p [f32],
    pub out: &'a mut [RowStats],
}

impl<E: ElementIo> Kernel for RecomputeStats<'_, '_, E> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(self) {
        if self.cols == 0 {
            return;
        }
        let rows = self.x.chunks_exact(self.cols);
        for ((row, &s), o) in rows.zip(self.inv).zip(self.out.iter_mut()) {
            if s == f32::INFINITY {
                *o = row_stats::<V, E>(row, self.centered, 0.0, None, Spread::NONE);
            }
        }
    }
}

/// Column sums only, over the columns `c0..c0 + width` of a block of rows of `cols` elements
/// (for rows too wide to keep one accumulator per column for every task).
pub(crate) struct ColumnPass<'a, 'p, E = f32> {
    pub x: &'a [E],
    pub dy: &'a [E],
    pub cols: usize,
    pub c0: usize,
    pub mean: Option<&'p [f32]>,
    pub inv: &'p [f32],
    /// As [`RowsBackward::exact`].
    pub exact: &'p [RowStats],
    pub sums: ColumnSums<'a>,
}

impl<E: ElementIo> Kernel for ColumnPass<'_, '_, E> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(self) {
        let width = self.sums.dy.len();
        let rows = self.x.len() / self.cols;
        let mut sums = Some(self.sums);
        for r in 0..rows {
            let at = r * self.cols + self.c0..r * self.cols + self.c0 + width;
            let (mu, s) = (self.mean.map_or(0.0, |m| m[r]), self.inv[r]);
            if s == f32::INFINITY
                && let Some(&st) = self.exact.get(r)
            {
                let (x, dy) = (&self.x[at.clone()], &self.dy[at]);
                exact_sums::<E, false, true>(x, dy, &[], st, &mut sums);
                continue;
            }
            row_pass::<V, E, false, true, false>(
                &self.x[at.clone()],
                &self.dy[at],
                &[],
                mu,
                s,
                &mut sums,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::emulated::Emulated;

    fn data(n: usize, seed: u64, offset: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                offset + ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            })
            .collect()
    }

    /// RMS norm's mean square where `f32` squares leave `f32`'s range (below its normal range,
    /// overflowing, all zero) is summed again exactly: against `f64`, with `eps = 0` so that
    /// the statistic alone decides the inverse spread; and a row in range is within the grouped
    /// sums' bound.
    #[test]
    fn mean_squares_out_of_range_are_exact() {
        fn check<V: F32Vec>() {
            for cols in [5, 8 * 16 + 3, 700] {
                let base = data(cols, 3, 0.0);
                for (scale, tol) in [(1e-25f32, 1e-12), (1e25, 1e-12), (0.0, 0.0), (1.0, 1e-6)] {
                    let row: Vec<f32> = base.iter().map(|v| v * scale).collect();
                    let got = row_stats::<V, f32>(&row, false, 0.0, None, Spread::NONE).inv;
                    let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / cols as f64;
                    let want = 1.0 / ms.sqrt();
                    let ok = if want.is_infinite() {
                        got == want
                    } else {
                        (got - want).abs() <= tol * want
                    };
                    assert!(ok, "{cols} columns, scale {scale}: {got} against {want}");
                }
            }
        }
        check::<Emulated<16>>();
        check::<Emulated<8>>();
        crate::simd::on_every_isa!(check);
    }

    /// The 16-lane code paths (AVX-512 widths) agree with a plain f64 computation.
    #[test]
    fn sixteen_lanes_match_f64() {
        for cols in [1, 7, 16, 17, 33, 100, 2049, 4100] {
            for centered in [true, false] {
                let rows = 3;
                let x = data(rows * cols, cols as u64, 100.0);
                let gamma = data(cols, 7, 1.0);
                let beta = data(cols, 8, 0.0);
                let mut y = vec![0f32; x.len()];
                let mut mean = vec![0f32; rows];
                let mut inv = vec![0f32; rows];
                let t = RowTensors {
                    x: StridedRows::from_read((&x[..]).into(), rows, cols, cols),
                    residual: None,
                    bias: None,
                    sum: None,
                    y: StridedRows::from_write((&mut y[..]).into(), rows, cols, cols),
                    y_is_x: false,
                    stream_y: false,
                    stream_sum: false,
                };
                RowsForward {
                    t: &t,
                    rows: 0..rows,
                    centered,
                    gamma: Some(&gamma),
                    beta: Some(&beta),
                    eps: 1e-5,
                    save_mean: Some(&mut mean),
                    save_inv: Some(&mut inv),
                    y_scale: None,
                }
                .run::<Emulated<16>>();
                for r in 0..rows {
                    let row = &x[r * cols..(r + 1) * cols];
                    let n = cols as f64;
                    let mu = if centered {
                        row.iter().map(|&v| v as f64).sum::<f64>() / n
                    } else {
                        0.0
                    };
                    let var = row.iter().map(|&v| (v as f64 - mu).powi(2)).sum::<f64>() / n;
                    let is = 1.0 / (var + 1e-5f32 as f64).sqrt();
                    assert!((inv[r] as f64 - is).abs() <= 1e-5 * is);
                    for j in 0..cols {
                        let want = (row[j] as f64 - mu) * is * gamma[j] as f64 + beta[j] as f64;
                        let got = y[r * cols + j] as f64;
                        assert!((got - want).abs() < 1e-4, "{cols} {centered} {got} {want}");
                    }
                }
                // Backward: the 16-lane result equals the 8-lane one closely.
                let dy = data(rows * cols, 99, 0.0);
                let mut dxs = Vec::new();
                for lanes16 in [true, false] {
                    let mut dx = vec![0f32; x.len()];
                    let (mut a, mut b) = (vec![0f64; cols], vec![0f64; cols]);
                    let k = RowsBackward {
                        x: &x,
                        grad: GradIo::Dx(RowIo::Separate(&dy, &mut dx)),
                        cols,
                        gamma: Some(&gamma),
                        mean: centered.then_some(&mean[..]),
                        inv: &inv,
                        exact: &[],
                        sums: Some(ColumnSums {
                            dy_xhat: &mut a,
                            dy: &mut b,
                        }),
                    };
                    if lanes16 {
                        k.run::<Emulated<16>>();
                    } else {
                        k.run::<Emulated<8>>();
                    }
                    dxs.push((dx, a, b));
                }
                for (p, q) in dxs[0].0.iter().zip(&dxs[1].0) {
                    assert!((p - q).abs() <= 1e-4 * (1.0 + q.abs()), "{p} {q}");
                }
                for (p, q) in dxs[0].1.iter().zip(&dxs[1].1) {
                    assert!((p - q).abs() <= 1e-4 * (1.0 + q.abs()), "{p} {q}");
                }
            }
        }
    }
}
