//! Batch normalization: training and inference forward, the mergeable moments of synchronous
//! (cross-process) batch norm, and folding into a preceding layer.
//!
//! Per channel `c`, over the `count = batch * spatial` values of the channel:
//! `y = gamma[c] * (x - mean[c]) * invstd[c] + beta[c]`, `invstd = 1 / sqrt(var + eps)`, with the
//! biased variance. Running statistics follow `running = (1 - momentum) * running + momentum *
//! batch_stat` (PyTorch's and cuDNN's `momentum`), with the unbiased variance unless
//! [`RunningVar::Biased`] is asked for.

use super::{RowParts, TASK_ELEMENTS};
use crate::context::Context;
use crate::error::{Error, Result, check_eps, check_len};
pub use crate::io::BackwardIo;
use crate::io::{InOut, SharedIo};
use crate::kernels::backward::fits_f32;
use crate::kernels::fused::ChannelTraining;
use crate::kernels::moments::{ChannelMoments, FirstRowsMean, Moments, RowPassSums, ShiftedPasses};
use crate::kernels::normalize::{
    ChannelAffine, NcsAffine, NscAffine, WideAffine, narrow_all, with_channel_affine,
};
use crate::kernels::{extend_cyclic, with_line_arrays};
use crate::scratch;
use crate::shape::{Shape, checked_elements};
use crate::simd::element::Element;
use crate::simd::{MAX_LANES, dispatch};

/// Elements of one channel processed as one unit (a chunk). A channels-first channel of at most
/// this many elements is normalized right after its statistics, while it is in cache; larger
/// channels are split into chunks of this size whose moments are merged in order.
const CHANNEL_CHUNK: usize = 1 << 18;
/// Approximate elements per chunk of a channels-innermost reduction: larger than a
/// normalization task because every chunk's sums are added per channel on the calling thread.
const REDUCTION_TASK_ELEMENTS: usize = 1 << 17;
/// Most chunks a channels-innermost reduction is split into.
const MAX_ROW_CHUNKS: usize = 256;
/// Whether to write the output of `io` with streaming stores (see [`super::streams_io`]), in a
/// call that also reads `inputs` other tensors of its size: channels-first outputs are runs of
/// `spatial` elements. A training forward passes 1 for its input's second read (its statistics,
/// then its normalization): cached output lines would push out of the caches the input that
/// the second read, or the next call's first, wants to find there.
fn streams<E: Element>(ctx: &Context, shape: &Shape, io: &InOut<'_, E>, inputs: usize) -> bool {
    let run = if shape.channels_innermost() {
        usize::MAX
    } else {
        shape.spatial
    };
    super::streams_io(ctx, io, inputs, run)
}

/// Optional per-channel scale and shift; `None` means `gamma = 1`, `beta = 0`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Affine<'a> {
    /// `C` scales.
    pub gamma: Option<&'a [f32]>,
    /// `C` shifts.
    pub beta: Option<&'a [f32]>,
}

/// Running statistics, read and updated by a training forward.
#[derive(Debug)]
pub struct RunningStats<'a> {
    /// `C` running means.
    pub mean: &'a mut [f32],
    /// `C` running variances (see [`RunningVar`]).
    pub var: &'a mut [f32],
}

/// Statistics a training forward saves for the backward pass; each optional.
#[derive(Debug, Default)]
pub struct SavedStats<'a> {
    /// `C` batch means.
    pub mean: Option<&'a mut [f32]>,
    /// `C` values `1 / sqrt(var + eps)` of the biased batch variance.
    pub invstd: Option<&'a mut [f32]>,
}

/// Which variance of the batch a training forward blends into the running variance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RunningVar {
    /// `count / (count - 1)` times the batch variance (PyTorch, cuDNN): needs `count >= 2`
    /// when running statistics are given.
    #[default]
    Unbiased,
    /// The batch variance itself, the one that normalizes (ONNX).
    Biased,
}

/// An activation applied to the output of an inference forward, in the same pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Activation {
    /// None: `y` as normalized.
    #[default]
    Identity,
    /// `y = max(y, 0)`, with `max(NaN, 0) = NaN` kept.
    Relu,
}

/// Scalars of a training forward. More may be added: start from [`TrainingParams::default`]
/// or [`TrainingParams::new`] and set fields.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct TrainingParams {
    /// Added to the variance: finite, `>= 0`. Default `1e-5`.
    pub eps: f32,
    /// Weight of the new batch in the running statistics, in [0, 1]. Default `0.1`.
    pub momentum: f32,
    /// The variance blended into the running variance. Default unbiased.
    pub running_var: RunningVar,
}

impl TrainingParams {
    /// `eps` and `momentum`, with the unbiased running variance.
    pub fn new(eps: f32, momentum: f32) -> Self {
        TrainingParams {
            eps,
            momentum,
            running_var: RunningVar::Unbiased,
        }
    }

    /// The same, with `running_var`.
    pub fn with_running_var(mut self, running_var: RunningVar) -> Self {
        self.running_var = running_var;
        self
    }
}

impl Default for TrainingParams {
    fn default() -> Self {
        TrainingParams::new(1e-5, 0.1)
    }
}

// ---------------------------------------------------------------------------------------------
// Validation, in the order of the C contract: overflow, shape, argument. The C layer calls these
// between its pointer checks, so that error precedence holds there too.

/// Checks the element counts of `shape` and of its per-channel arrays for overflow.
pub(crate) fn check_sizes(shape: &Shape) -> Result<usize> {
    checked_elements(&[shape.channels], 8, "per-channel array")?;
    shape.count()?;
    shape.elements()
}

/// Checks a training forward (or a forward from moments with global `count`, which must cover
/// at least this shard's values).
pub(crate) fn check_training(
    shape: &Shape,
    count: u64,
    params: &TrainingParams,
    has_running: bool,
) -> Result<()> {
    check_global_count(shape, count, "batch norm training")?;
    if has_running && params.running_var == RunningVar::Unbiased && count < 2 {
        return Err(Error::bad_shape(
            "the unbiased running variance needs at least two values per channel",
        ));
    }
    check_training_scalars(params)
}

/// Checks the scalars of a training forward: `eps` and `momentum`.
fn check_training_scalars(params: &TrainingParams) -> Result<()> {
    check_eps(params.eps)?;
    if !(0.0..=1.0).contains(&params.momentum) {
        return Err(Error::bad_argument(format!(
            "momentum must be in [0, 1], got {}",
            params.momentum
        )));
    }
    Ok(())
}

/// Checks an inference forward.
pub(crate) fn check_inference(shape: &Shape, eps: f32) -> Result<()> {
    check_sizes(shape)?;
    check_eps(eps)
}

/// Checks the lengths of the per-channel `gamma` and `beta` that are given.
pub(crate) fn check_affine(affine: &Affine<'_>, channels: usize) -> Result<()> {
    if let Some(g) = affine.gamma {
        check_len("gamma", g, channels)?;
    }
    if let Some(b) = affine.beta {
        check_len("beta", b, channels)?;
    }
    Ok(())
}

fn check_state(
    running: &Option<RunningStats<'_>>,
    saved: &SavedStats<'_>,
    channels: usize,
) -> Result<()> {
    if let Some(r) = running {
        check_len("running_mean", r.mean, channels)?;
        check_len("running_var", r.var, channels)?;
    }
    if let Some(m) = &saved.mean {
        check_len("save_mean", m, channels)?;
    }
    if let Some(s) = &saved.invstd {
        check_len("save_invstd", s, channels)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Public operations.

/// Per-channel [`Moments`] of `x` (`out` has `C` entries), each over the channel's
/// `batch * spatial` values; count 0, mean 0 and M2 0 for an empty shard. Mergeable with
/// [`moments_merge`]; [`forward_from_moments`] normalizes with the merged moments.
pub fn moments<E: Element>(
    ctx: &Context,
    shape: Shape,
    x: &[E],
    out: &mut [Moments],
) -> Result<()> {
    let elements = check_sizes(&shape)?;
    check_len("x", x, elements)?;
    check_len("out", out, shape.channels)?;
    channel_moments(ctx, &shape, x, out);
    Ok(())
}

/// `a <- a (+) b`, channel by channel: the moments of the union of two disjoint sets of values
/// (Chan, Golub and LeVeque; [`Moments::merge`]). Fails, writing nothing, with `BadShape` if the
/// lengths differ and with `Overflow` if a channel's counts sum beyond `u64`.
pub fn moments_merge(a: &mut [Moments], b: &[Moments]) -> Result<()> {
    check_len("b", b, a.len())?;
    if a.iter()
        .zip(b)
        .any(|(a, b)| a.count.checked_add(b.count).is_none())
    {
        return Err(Error::overflow("a count plus b count overflows u64"));
    }
    for (a, &b) in a.iter_mut().zip(b) {
        *a = a.merge(b);
    }
    Ok(())
}

/// Training forward: batch statistics, normalization, running statistics update, saved
/// statistics. Equals [`moments`] followed by [`forward_from_moments`], bit for bit.
pub fn forward_training<E: Element>(
    ctx: &Context,
    shape: Shape,
    mut io: InOut<'_, E>,
    affine: Affine<'_>,
    params: TrainingParams,
    running: Option<RunningStats<'_>>,
    saved: SavedStats<'_>,
) -> Result<()> {
    let count = shape.count()? as u64;
    check_training(&shape, count, &params, running.is_some())?;
    let elements = shape.elements()?;
    check_len("x", io.input(), elements)?;
    check_affine(&affine, shape.channels)?;
    check_state(&running, &saved, shape.channels)?;

    let mut invstd = scratch::take(shape.channels, 0f64);
    let mut stats = scratch::take(shape.channels, Moments::EMPTY);
    if fuses_channels(&shape) {
        fused_training(ctx, &shape, &mut io, affine, params.eps, &mut stats);
        channel_invstd(&stats, params.eps, &mut invstd);
    } else {
        channel_moments(ctx, &shape, io.input(), &mut stats);
        channel_invstd(&stats, params.eps, &mut invstd);
        normalize_with_moments(ctx, &shape, &mut io, affine, &stats, &invstd);
    }
    write_state(&stats, &invstd, &params, running, saved);
    Ok(())
}

/// Training forward with statistics computed elsewhere: `moments` (`C` entries) merged from
/// every shard's [`moments`], so each channel's count is the global count (the same for every
/// channel, and at least this shard's `batch * spatial`). The local shard (`shape`) may be
/// empty; running and saved statistics are still written.
#[allow(clippy::too_many_arguments)]
pub fn forward_from_moments<E: Element>(
    ctx: &Context,
    shape: Shape,
    mut io: InOut<'_, E>,
    affine: Affine<'_>,
    moments: &[Moments],
    params: TrainingParams,
    running: Option<RunningStats<'_>>,
    saved: SavedStats<'_>,
) -> Result<()> {
    check_sizes(&shape)?;
    check_len("moments", moments, shape.channels)?;
    match moments.first() {
        Some(first) => {
            if moments.iter().any(|m| m.count != first.count) {
                return Err(Error::bad_shape(
                    "every channel's moments must have the same (global) count",
                ));
            }
            check_training(&shape, first.count, &params, running.is_some())?;
        }
        // No channel, no count: nothing is normalized or written, whatever count the caller
        // holds (the C function checks the one it is given before it gets here).
        None => check_training_scalars(&params)?,
    }
    let elements = shape.elements()?;
    check_len("x", io.input(), elements)?;
    check_affine(&affine, shape.channels)?;
    check_state(&running, &saved, shape.channels)?;

    let mut invstd = scratch::take(shape.channels, 0f64);
    channel_invstd(moments, params.eps, &mut invstd);
    normalize_with_moments(ctx, &shape, &mut io, affine, moments, &invstd);
    write_state(moments, &invstd, &params, running, saved);
    Ok(())
}

/// Inference forward from given statistics (`mean`, `var` of length C), with an optional fused
/// activation.
#[allow(clippy::too_many_arguments)]
pub fn forward_inference<E: Element>(
    ctx: &Context,
    shape: Shape,
    mut io: InOut<'_, E>,
    affine: Affine<'_>,
    mean: &[f32],
    var: &[f32],
    eps: f32,
    activation: Activation,
) -> Result<()> {
    check_inference(&shape, eps)?;
    let elements = shape.elements()?;
    check_len("x", io.input(), elements)?;
    check_affine(&affine, shape.channels)?;
    check_len("mean", mean, shape.channels)?;
    check_len("var", var, shape.channels)?;
    if elements == 0 {
        return Ok(());
    }
    let fill = |shift: &mut [f32], scale: &mut [f32], offset: &mut [f32]| {
        shift.copy_from_slice(mean);
        // Branch-free loops over whole arrays (the compiler vectorizes the f64 sqrt and divide).
        let invstd = |v: f32| 1.0 / (v as f64 + eps as f64).sqrt();
        match affine.gamma {
            Some(gamma) => {
                for ((s, &v), &g) in scale.iter_mut().zip(var).zip(gamma) {
                    *s = (g as f64 * invstd(v)) as f32;
                }
            }
            None => {
                for (s, &v) in scale.iter_mut().zip(var) {
                    *s = invstd(v) as f32;
                }
            }
        }
        match affine.beta {
            Some(beta) => offset.copy_from_slice(beta),
            None => offset.fill(0.0),
        }
        // A gamma * invstd beyond f32 or subnormal (see WideAffine): every channel in f64 form.
        if scale.iter().all(|&s| fits_f32(s as f64)) {
            return Vec::new();
        }
        let wide = |c: usize| WideAffine {
            mean: mean[c] as f64,
            scale: gamma_of(&affine, c) as f64 * invstd(var[c]),
            beta: beta_of(&affine, c) as f64,
        };
        narrow_all(wide, shift, scale, offset)
    };
    with_channel_affine(shape.channels, fill, |params| {
        apply_affine(
            ctx,
            &shape,
            &mut io,
            params,
            activation == Activation::Relu,
            0,
        )
    });
    Ok(())
}

/// Folds inference batch norm into the preceding conv or linear layer: `weight` is row-major
/// `[c_out][fan_in]`, `bias` is `[c_out]` (the layer's bias, or zeros); both are rewritten so the
/// layer alone computes layer-then-BN.
#[allow(clippy::too_many_arguments)]
pub fn fold(
    c_out: usize,
    fan_in: usize,
    weight: &mut [f32],
    bias: &mut [f32],
    affine: Affine<'_>,
    mean: &[f32],
    var: &[f32],
    eps: f32,
) -> Result<()> {
    let elements = check_fold(c_out, fan_in, eps)?;
    check_len("weight", weight, elements)?;
    check_len("bias", bias, c_out)?;
    check_affine(&affine, c_out)?;
    check_len("mean", mean, c_out)?;
    check_len("var", var, c_out)?;
    for o in 0..c_out {
        let scale = gamma_of(&affine, o) as f64 / (var[o] as f64 + eps as f64).sqrt();
        if fan_in > 0 {
            for w in &mut weight[o * fan_in..(o + 1) * fan_in] {
                *w = (*w as f64 * scale) as f32;
            }
        }
        bias[o] = ((bias[o] as f64 - mean[o] as f64) * scale + beta_of(&affine, o) as f64) as f32;
    }
    Ok(())
}

pub(crate) fn check_fold(c_out: usize, fan_in: usize, eps: f32) -> Result<usize> {
    let elements = checked_elements(&[c_out, fan_in], 4, "weight")?;
    checked_elements(&[c_out], 4, "bias")?;
    check_eps(eps)?;
    Ok(elements)
}

// ---------------------------------------------------------------------------------------------
// The data path.

fn gamma_of(affine: &Affine<'_>, c: usize) -> f32 {
    affine.gamma.map_or(1.0, |g| g[c])
}

fn beta_of(affine: &Affine<'_>, c: usize) -> f32 {
    affine.beta.map_or(0.0, |b| b[c])
}

/// The affine map of one channel of mean `mean` and `invstd = 1 / sqrt(var + eps)`: `y = (x -
/// mean) * (gamma * invstd) + beta` in `f64` (see [`WideAffine::narrow`] for its `f32` form).
fn channel_affine(mean: f64, invstd: f64, gamma: f32, beta: f32) -> WideAffine {
    WideAffine {
        mean,
        scale: gamma as f64 * invstd,
        beta: beta as f64,
    }
}

/// `1 / sqrt(var + eps)` of the biased variance of statistics `m`.
fn invstd_of(m: Moments, eps: f32) -> f64 {
    1.0 / (biased_var(m) + eps as f64).sqrt()
}

/// [`invstd_of`] of every channel, into `out`: in loops of their own over whole arrays, which
/// the compiler vectorizes (the division and square root per channel are most of the
/// per-channel work of a training forward with thousands of small channels).
fn channel_invstd(stats: &[Moments], eps: f32, out: &mut [f64]) {
    for (o, &m) in out.iter_mut().zip(stats) {
        *o = biased_var(m);
    }
    for o in out.iter_mut() {
        *o = 1.0 / (*o + eps as f64).sqrt();
    }
}

fn biased_var(m: Moments) -> f64 {
    let var = m.m2 / m.count as f64;
    if var < 0.0 { 0.0 } else { var }
}

/// Whether a training forward visits each channel once (statistics, then normalization).
fn fuses_channels(shape: &Shape) -> bool {
    let count = shape.batch * shape.spatial;
    !shape.channels_innermost() && count > 0 && count <= CHANNEL_CHUNK && shape.channels > 0
}

/// Rows per chunk of a channels-innermost reduction over `rows` rows of `channels` values.
fn row_chunk(rows: usize, channels: usize) -> usize {
    // At least two blocks: every chunk's sums are zeroed, then added per channel on the calling
    // thread (2 * C values each), which two blocks of rows make small.
    let target = REDUCTION_TASK_ELEMENTS
        .div_ceil(channels)
        .next_multiple_of(crate::kernels::moments::ROW_BLOCK)
        .max(2 * crate::kernels::moments::ROW_BLOCK);
    // Chunks of equal size, so that an even number of them splits evenly between threads
    // (392 rows: 4 chunks of 98, not 3 of 128 and one of 8).
    let chunks = rows.div_ceil(target).clamp(1, MAX_ROW_CHUNKS);
    rows.div_ceil(chunks).max(1)
}

/// Per-channel moments of a whole tensor, into `total` (`C` entries). Chunks are fixed by the
/// shape and combined in order, so the result does not depend on the thread count.
fn channel_moments<E: Element>(ctx: &Context, shape: &Shape, x: &[E], total: &mut [Moments]) {
    let (c, s) = (shape.channels, shape.spatial);
    let count = shape.batch * s;
    if c == 0 || count == 0 {
        total.fill(Moments::EMPTY);
        return;
    }
    let isa = ctx.supported_isa();
    if shape.channels_innermost() {
        // Every row is summed with the same shifts, so the chunks' sums add up (in chunk order)
        // and become moments once per channel, after all chunks: no merge per chunk.
        let rows = count;
        let chunk = row_chunk(rows, c);
        let chunks = rows.div_ceil(chunk);
        let mut shift = scratch::take(c, 0f32);
        dispatch(
            isa,
            FirstRowsMean {
                x,
                channels: c,
                shift: &mut shift,
            },
        );
        let mut partials = scratch::take(chunks * 2 * c, 0f64);
        let mut sums = scratch::take(3 * c, 0f64);
        let mut passes = ShiftedPasses::new(rows, &shift, &mut sums, total);
        while let Some((shift, sums)) = passes.next() {
            ctx.for_each_part(x.len(), &mut partials, 2 * c, |k, part| {
                let r = k * chunk..rows.min((k + 1) * chunk);
                dispatch(
                    isa,
                    RowPassSums {
                        x: &x[r.start * c..r.end * c],
                        channels: c,
                        shift,
                        sums: part,
                    },
                );
            });
            sums.fill(0.0);
            for p in partials.chunks(2 * c) {
                for (s, v) in sums.iter_mut().zip(p) {
                    *s += v;
                }
            }
            passes.settle();
        }
    } else {
        let chunks = count.div_ceil(CHANNEL_CHUNK);
        let partials = ctx.map(x.len(), c * chunks, |i| {
            let (ch, k) = (i / chunks, i % chunks);
            let row = |n: usize| &x[(n * c + ch) * s..(n * c + ch + 1) * s];
            dispatch(
                isa,
                ChannelMoments {
                    row: &row,
                    spatial: s,
                    range: k * CHANNEL_CHUNK..count.min((k + 1) * CHANNEL_CHUNK),
                },
            )
        });
        for (t, p) in total.iter_mut().zip(partials.chunks(chunks)) {
            *t = p.iter().fold(Moments::EMPTY, |a, &b| a.merge(b));
        }
    }
}

/// Channels-first training forward, one task per channel: moments (into `stats`, `C` entries),
/// then normalization while the channel is in cache.
fn fused_training<E: Element>(
    ctx: &Context,
    shape: &Shape,
    io: &mut InOut<'_, E>,
    affine: Affine<'_>,
    eps: f32,
    stats: &mut [Moments],
) {
    let (c, s, rows) = (shape.channels, shape.spatial, shape.batch);
    let isa = ctx.supported_isa();
    let elements = io.len();
    let stream = streams(ctx, shape, io, 1);
    let shared: SharedIo<'_, E> = io.share();
    let range = |ch: usize, n: usize| (n * c + ch) * s..(n * c + ch + 1) * s;
    // SAFETY: a task alone touches the rows of its channels. A channel's input slices are
    // used only for its moments, before its rows are written through `row_out`.
    let row_in = |ch: usize, n: usize| unsafe { shared.input(range(ch, n)) };
    // SAFETY: as above; one row is written at a time.
    let row_out = |ch: usize, n: usize| unsafe { shared.part(range(ch, n)) };
    let params = |ch: usize, m: Moments| {
        channel_affine(
            m.mean,
            invstd_of(m, eps),
            gamma_of(&affine, ch),
            beta_of(&affine, ch),
        )
    };
    let per_task = (TASK_ELEMENTS / (rows * s).max(1)).max(1);
    ctx.for_each_part(elements, stats, per_task, |k, out| {
        let first = k * per_task;
        dispatch(
            isa,
            ChannelTraining {
                rows,
                spatial: s,
                channels: first..first + out.len(),
                total: c,
                row_in: &row_in,
                row_out: &row_out,
                params: &params,
                out,
                stream,
            },
        )
    });
}

/// Normalizes `io` with per-channel statistics `stats` (and their [`channel_invstd`]).
fn normalize_with_moments<E: Element>(
    ctx: &Context,
    shape: &Shape,
    io: &mut InOut<'_, E>,
    affine: Affine<'_>,
    stats: &[Moments],
    invstd: &[f64],
) {
    if io.is_empty() {
        return;
    }
    let fill = |shift: &mut [f32], scale: &mut [f32], offset: &mut [f32]| {
        let wide = |c: usize| {
            channel_affine(
                stats[c].mean,
                invstd[c],
                gamma_of(&affine, c),
                beta_of(&affine, c),
            )
        };
        narrow_all(wide, shift, scale, offset)
    };
    with_channel_affine(shape.channels, fill, |params| {
        apply_affine(ctx, shape, io, params, false, 1)
    });
}

/// `y = (x - shift[c]) * scale[c] + offset[c]` (then ReLU if `relu`) over the whole tensor, in
/// parallel parts of about `TASK_ELEMENTS` whole rows; `rereads` is 1 when the input was read
/// for its statistics just before (see [`streams`]).
fn apply_affine<E: Element>(
    ctx: &Context,
    shape: &Shape,
    io: &mut InOut<'_, E>,
    params: ChannelAffine<'_>,
    relu: bool,
    rereads: usize,
) {
    let elements = io.len();
    if elements == 0 {
        return;
    }
    let isa = ctx.supported_isa();
    let parts = RowParts::new(elements, shape.row_len());
    let stream = streams(ctx, shape, io, rereads);
    let shared = io.share();
    // Each thread's part last first: after a statistics pass over a tensor larger than its
    // caches, the data a thread read last is what its caches still hold.
    ctx.for_each_backward(elements, parts.tasks(), |k| {
        let r = parts.rows(k);
        // SAFETY: tasks cover disjoint row ranges.
        let part = unsafe { shared.part(parts.span(&r)) };
        if shape.channels_innermost() {
            dispatch(
                isa,
                NscAffine {
                    io: part,
                    channels: shape.channels,
                    params,
                    relu,
                    stream,
                },
            )
        } else {
            dispatch(
                isa,
                NcsAffine {
                    io: part,
                    first_row: r.start,
                    spatial: shape.spatial,
                    channels: shape.channels,
                    params,
                    relu,
                    stream,
                },
            )
        }
    });
}

/// Writes saved and running statistics from the batch moments and their [`channel_invstd`]
/// (after the output, so that a failure while normalizing leaves the running statistics
/// untouched). Each a loop over whole arrays.
fn write_state(
    stats: &[Moments],
    invstd: &[f64],
    params: &TrainingParams,
    running: Option<RunningStats<'_>>,
    saved: SavedStats<'_>,
) {
    if let Some(out) = saved.mean {
        for (o, m) in out.iter_mut().zip(stats) {
            *o = m.mean as f32;
        }
    }
    if let Some(out) = saved.invstd {
        for (o, &v) in out.iter_mut().zip(invstd) {
            *o = v as f32;
        }
    }
    let Some(running) = running else {
        return;
    };
    let momentum = params.momentum as f64;
    // momentum 1 replaces and 0 keeps, exactly, even where the other side is NaN or inf.
    let blend = |old: f32, new: f64| -> f32 {
        if params.momentum == 1.0 {
            new as f32
        } else if params.momentum == 0.0 {
            old
        } else {
            ((1.0 - momentum) * old as f64 + momentum * new) as f32
        }
    };
    let mut batch_var = scratch::take(stats.len(), 0f64);
    for (v, &m) in batch_var.iter_mut().zip(stats) {
        *v = if params.running_var == RunningVar::Biased {
            biased_var(m)
        } else {
            let unbiased = m.m2 / (m.count - 1) as f64;
            if unbiased < 0.0 { 0.0 } else { unbiased }
        };
    }
    for (r, m) in running.mean.iter_mut().zip(stats) {
        *r = blend(*r, m.mean);
    }
    for (r, &v) in running.var.iter_mut().zip(batch_var.iter()) {
        *r = blend(*r, v);
    }
}

// ---------------------------------------------------------------------------------------------
// Backward passes (training mode), local and synchronous.
//
// `xhat = (x - save_mean[c]) * save_invstd[c]`. The reduction gives `sum_dy[c] = sum(dy)` and
// `sum_dy_xhat[c] = sum(dy * xhat)` over the channel's `batch * spatial` values; the input
// gradient is `dx = gamma[c] * save_invstd[c] * (dy - sum_dy / count - xhat * sum_dy_xhat /
// count)` with `count` the global number of values per channel.

use crate::kernels::backward::{
    ChannelBackward, ChannelGrad, GradCoefficients, GradSums, NcsGrad, NscGrad, RowGrad, WideGrad,
};

/// Checks the global `count` of a [`backward_apply`]: at least one value per channel, and at
/// least this shard's values.
pub(crate) fn check_apply_count(shape: &Shape, count: u64) -> Result<()> {
    check_global_count(shape, count, "the batch norm backward")
}

/// Checks the global `count` of a sharded call (`what` names it): at least this shard's values
/// per channel, and at least one.
fn check_global_count(shape: &Shape, count: u64, what: &str) -> Result<()> {
    let local = check_sizes(shape).and_then(|_| shape.count())? as u64;
    if count < local {
        return Err(Error::bad_shape(format!(
            "the global count {count} is smaller than this shard's {local} values per channel"
        )));
    }
    if count < 1 {
        return Err(Error::bad_shape(format!(
            "{what} needs at least one value per channel (count >= 1)"
        )));
    }
    Ok(())
}

fn check_saved(channels: usize, save_mean: &[f32], save_invstd: &[f32]) -> Result<()> {
    check_len("save_mean", save_mean, channels)?;
    check_len("save_invstd", save_invstd, channels)
}

/// Training-mode backward of one batch: the input gradient `dx` (if `io` has one), `dgamma =
/// sum(dy * xhat)` and `dbeta = sum(dy)` (each optional), from the input `x`, the output
/// gradient `dy` and the statistics the forward saved. `gamma` `None` means ones. Equals
/// [`backward_reduce`] followed by [`backward_apply`] with this batch's count, bit for bit; an
/// empty batch writes zero `dgamma` and `dbeta`.
#[allow(clippy::too_many_arguments)]
pub fn backward<E: Element>(
    ctx: &Context,
    shape: Shape,
    x: &[E],
    io: BackwardIo<'_, E>,
    gamma: Option<&[f32]>,
    save_mean: &[f32],
    save_invstd: &[f32],
    dgamma: Option<&mut [f32]>,
    dbeta: Option<&mut [f32]>,
) -> Result<()> {
    let elements = check_sizes(&shape)?;
    let c = shape.channels;
    check_len("x", x, elements)?;
    check_len("dy", io.dy(), elements)?;
    if let Some(g) = gamma {
        check_len("gamma", g, c)?;
    }
    check_saved(c, save_mean, save_invstd)?;
    if let Some(d) = &dgamma {
        check_len("dgamma", d, c)?;
    }
    if let Some(d) = &dbeta {
        check_len("dbeta", d, c)?;
    }
    let wants_dx = matches!(io, BackwardIo::WithDx(_));
    if !wants_dx && dgamma.is_none() && dbeta.is_none() {
        return Ok(());
    }
    let count = shape.count()?;
    let sums = match io {
        BackwardIo::WithDx(mut io)
            if !shape.channels_innermost() && count > 0 && count <= CHANNEL_CHUNK && c > 0 =>
        {
            fused_backward(ctx, &shape, x, &mut io, gamma, save_mean, save_invstd)
        }
        BackwardIo::WithDx(mut io) => {
            let sums = grad_sums(ctx, &shape, x, io.input(), save_mean, save_invstd);
            if elements > 0 {
                let n = count as u64;
                apply_grad(
                    ctx,
                    &shape,
                    x,
                    &mut io,
                    gamma,
                    save_mean,
                    save_invstd,
                    n,
                    &sums,
                );
            }
            sums
        }
        BackwardIo::DyOnly(dy) => grad_sums(ctx, &shape, x, dy, save_mean, save_invstd),
    };
    if let Some(d) = dgamma {
        for (o, s) in d.iter_mut().zip(&sums) {
            *o = s.dy_xm as f32;
        }
    }
    if let Some(d) = dbeta {
        for (o, s) in d.iter_mut().zip(&sums) {
            *o = s.dy as f32;
        }
    }
    Ok(())
}

/// The per-channel sums of a backward over this shard: `sum_dy[c] = sum(dy)` and
/// `sum_dy_xhat[c] = sum(dy * xhat)`, in `f64` (zeros for an empty shard). Shards' sums add up
/// to the whole batch's; give the totals to [`backward_apply`].
#[allow(clippy::too_many_arguments)]
pub fn backward_reduce<E: Element>(
    ctx: &Context,
    shape: Shape,
    x: &[E],
    dy: &[E],
    save_mean: &[f32],
    save_invstd: &[f32],
    sum_dy: &mut [f64],
    sum_dy_xhat: &mut [f64],
) -> Result<()> {
    let elements = check_sizes(&shape)?;
    let c = shape.channels;
    check_len("x", x, elements)?;
    check_len("dy", dy, elements)?;
    check_saved(c, save_mean, save_invstd)?;
    check_len("sum_dy", sum_dy, c)?;
    check_len("sum_dy_xhat", sum_dy_xhat, c)?;
    let sums = grad_sums(ctx, &shape, x, dy, save_mean, save_invstd);
    for ((a, b), s) in sum_dy.iter_mut().zip(sum_dy_xhat.iter_mut()).zip(&sums) {
        *a = s.dy;
        *b = s.dy_xm;
    }
    Ok(())
}

/// The input gradient from the sums of every shard's [`backward_reduce`] (added up) and the
/// global `count` of values per channel: `io` reads `dy` and writes `dx` (separately, or in
/// place over `dy`). `count` must be at least 1 and at least this shard's `batch * spatial`.
#[allow(clippy::too_many_arguments)]
pub fn backward_apply<E: Element>(
    ctx: &Context,
    shape: Shape,
    x: &[E],
    mut io: InOut<'_, E>,
    gamma: Option<&[f32]>,
    save_mean: &[f32],
    save_invstd: &[f32],
    count: u64,
    sum_dy: &[f64],
    sum_dy_xhat: &[f64],
) -> Result<()> {
    check_apply_count(&shape, count)?;
    let elements = shape.elements()?;
    let c = shape.channels;
    check_len("x", x, elements)?;
    check_len("dy", io.input(), elements)?;
    if let Some(g) = gamma {
        check_len("gamma", g, c)?;
    }
    check_saved(c, save_mean, save_invstd)?;
    check_len("sum_dy", sum_dy, c)?;
    check_len("sum_dy_xhat", sum_dy_xhat, c)?;
    if elements == 0 {
        return Ok(());
    }
    let sums: Vec<GradSums> = sum_dy
        .iter()
        .zip(sum_dy_xhat)
        .map(|(&dy, &dy_xm)| GradSums { dy, dy_xm })
        .collect();
    apply_grad(
        ctx,
        &shape,
        x,
        &mut io,
        gamma,
        save_mean,
        save_invstd,
        count,
        &sums,
    );
    Ok(())
}

/// Per-channel `sum(dy)` and `sum(dy * xhat)` (in the `dy_xm` field, already multiplied by
/// `invstd`). Chunks are fixed by the shape and added in order, so the result does not depend on
/// the thread count.
fn grad_sums<E: Element>(
    ctx: &Context,
    shape: &Shape,
    x: &[E],
    dy: &[E],
    save_mean: &[f32],
    save_invstd: &[f32],
) -> Vec<GradSums> {
    let (c, s) = (shape.channels, shape.spatial);
    let count = shape.batch * s;
    let mut total = vec![GradSums::default(); c];
    if c == 0 || count == 0 {
        return total;
    }
    let isa = ctx.supported_isa();
    if shape.channels_innermost() {
        let rows = count;
        let chunk = row_chunk(rows, c);
        let chunks = rows.div_ceil(chunk);
        let mut partials = scratch::take(chunks * c, GradSums::default());
        ctx.for_each_part(2 * x.len(), &mut partials, c, |k, out| {
            let r = k * chunk..rows.min((k + 1) * chunk);
            let span = r.start * c..r.end * c;
            dispatch(
                isa,
                RowGrad {
                    x: &x[span.clone()],
                    dy: &dy[span],
                    channels: c,
                    mean: save_mean,
                    out,
                },
            );
        });
        for p in partials.chunks(c) {
            for (t, q) in total.iter_mut().zip(p) {
                t.dy += q.dy;
                t.dy_xm += q.dy_xm;
            }
        }
    } else {
        let chunks = count.div_ceil(CHANNEL_CHUNK);
        let partials = ctx.map(2 * x.len(), c * chunks, |i| {
            let (ch, k) = (i / chunks, i % chunks);
            dispatch(
                isa,
                ChannelGrad {
                    x_row: &|n: usize| &x[(n * c + ch) * s..(n * c + ch + 1) * s],
                    dy_row: &|n: usize| &dy[(n * c + ch) * s..(n * c + ch + 1) * s],
                    spatial: s,
                    range: k * CHANNEL_CHUNK..count.min((k + 1) * CHANNEL_CHUNK),
                    mean: save_mean[ch],
                },
            )
        });
        for (t, p) in total.iter_mut().zip(partials.chunks(chunks)) {
            for q in p {
                t.dy += q.dy;
                t.dy_xm += q.dy_xm;
            }
        }
    }
    for (t, &invstd) in total.iter_mut().zip(save_invstd) {
        t.dy_xm *= invstd as f64;
    }
    total
}

/// The coefficients `(mean, a, b, k)` of `dx = dy * a + (x - mean) * b + k` for channel `ch`
/// with sums `s` (`s.dy_xm = sum(dy * xhat)`): `a = gamma * invstd`, `b = -a * invstd *
/// sum_dy_xhat / count`, `k = -a * sum_dy / count`, in `f64`.
fn grad_coefficients(
    gamma: Option<&[f32]>,
    save_mean: &[f32],
    save_invstd: &[f32],
    count: u64,
    ch: usize,
    s: GradSums,
) -> WideGrad {
    let n = count as f64;
    let invstd = save_invstd[ch] as f64;
    let scale = gamma.map_or(1.0, |g| g[ch] as f64) * invstd;
    WideGrad {
        mean: save_mean[ch],
        a: scale,
        b: -scale * invstd * (s.dy_xm / n),
        k: -scale * (s.dy / n),
    }
}

/// The sums of a channel as [`grad_sums`] gives them, from its one chunk's kernel result.
fn channel_total(part: GradSums, invstd: f32) -> GradSums {
    let mut t = GradSums::default();
    t.dy += part.dy;
    t.dy_xm += part.dy_xm;
    t.dy_xm *= invstd as f64;
    t
}

/// Channels-first backward, one task per channel of at most `CHANNEL_CHUNK` values: the
/// channel's sums, then its input gradient while the channel is in cache. The same blocks, sums
/// and coefficients as [`grad_sums`] then [`apply_grad`], so the same bits.
#[allow(clippy::too_many_arguments)]
fn fused_backward<E: Element>(
    ctx: &Context,
    shape: &Shape,
    x: &[E],
    io: &mut InOut<'_, E>,
    gamma: Option<&[f32]>,
    save_mean: &[f32],
    save_invstd: &[f32],
) -> Vec<GradSums> {
    let (c, s, rows) = (shape.channels, shape.spatial, shape.batch);
    let count = rows * s;
    let isa = ctx.supported_isa();
    let elements = io.len();
    let stream = streams(ctx, shape, io, 1);
    let shared: SharedIo<'_, E> = io.share();
    ctx.map(2 * elements, c, |ch| {
        let range = |n: usize| (n * c + ch) * s..(n * c + ch + 1) * s;
        // SAFETY: this task alone touches the rows of channel `ch`. Its `dy` slices are read only
        // by the reduction, before any row is written through `io_row`.
        let dy_row = |n: usize| unsafe { shared.input(range(n)) };
        let x_row = |n: usize| &x[range(n)];
        // SAFETY: as above; one row is written at a time, after the reduction.
        let io_row = |n: usize| unsafe { shared.part(range(n)) };
        let coef = |part: GradSums| {
            let t = channel_total(part, save_invstd[ch]);
            grad_coefficients(gamma, save_mean, save_invstd, count as u64, ch, t)
        };
        let part = dispatch(
            isa,
            ChannelBackward {
                grad: ChannelGrad {
                    x_row: &x_row,
                    dy_row: &dy_row,
                    spatial: s,
                    range: 0..count,
                    mean: save_mean[ch],
                },
                rows,
                io_row: &io_row,
                coef: &coef,
                stream,
            },
        );
        channel_total(part, save_invstd[ch])
    })
}

/// `dx = gamma * invstd * (dy - sum_dy / count - xhat * sum_dy_xhat / count)` over the whole
/// tensor, as `dx = dy * a + (x - mean) * b + k` with per-channel `a`, `b`, `k` from `f64`, in
/// parallel parts of about `TASK_ELEMENTS` whole rows.
#[allow(clippy::too_many_arguments)]
fn apply_grad<E: Element>(
    ctx: &Context,
    shape: &Shape,
    x: &[E],
    io: &mut InOut<'_, E>,
    gamma: Option<&[f32]>,
    save_mean: &[f32],
    save_invstd: &[f32],
    count: u64,
    sums: &[GradSums],
) {
    let elements = io.len();
    let c = shape.channels;
    if elements == 0 || c == 0 {
        return;
    }
    // Coefficients extended cyclically to `2 * C + MAX_LANES` entries (see GradCoefficients),
    // each array on cache lines.
    with_line_arrays(2 * c + MAX_LANES, |[mean, a, b, k]| {
        let mut wide: Vec<WideGrad> = (0..c)
            .map(|ch| grad_coefficients(gamma, save_mean, save_invstd, count, ch, sums[ch]))
            .collect();
        let mut all_narrow = true;
        for (ch, w) in wide.iter().enumerate() {
            // A channel that does not fit f32 is computed from `wide` (see WideGrad); its f32
            // coefficients stay zero.
            match w.narrow() {
                Some(p) => (mean[ch], a[ch], b[ch], k[ch]) = p,
                None => all_narrow = false,
            }
        }
        if all_narrow {
            wide.clear();
        }
        for p in [&mut *mean, &mut *a, &mut *b, &mut *k] {
            extend_cyclic(p, c);
        }
        let coef = GradCoefficients {
            mean,
            a,
            b,
            k,
            wide: &wide,
        };

        let isa = ctx.supported_isa();
        let parts = RowParts::new(elements, shape.row_len());
        let stream = streams(ctx, shape, io, 1);
        let shared = io.share();
        // Each thread's part last first: the reduction read it last, so it is what the thread's
        // caches still hold.
        ctx.for_each_backward(2 * elements, parts.tasks(), |t| {
            let r = parts.rows(t);
            let span = parts.span(&r);
            // SAFETY: tasks cover disjoint row ranges.
            let part = unsafe { shared.part(span.clone()) };
            if shape.channels_innermost() {
                dispatch(
                    isa,
                    NscGrad {
                        x: &x[span],
                        io: part,
                        channels: c,
                        coef,
                        stream,
                    },
                )
            } else {
                dispatch(
                    isa,
                    NcsGrad {
                        x: &x[span],
                        io: part,
                        first_row: r.start,
                        spatial: shape.spatial,
                        channels: c,
                        coef,
                        stream,
                    },
                )
            }
        });
    })
}
