//! The dropout family: inverted dropout (and DropConnect, the same call on a weight buffer),
//! channel (spatial) dropout, alpha dropout, Gaussian dropout and uniform ("Uout") dropout,
//! each with its backward pass.
//!
//! # Reproducible randomness
//!
//! Every random value comes from a stream of 32-bit words fixed by a `seed`: word `w` is
//! `out[w & 3]` of [`philox4x32_10`] with counter `{lo32(w >> 2), hi32(w >> 2), 0, 0}` and key
//! `{lo32(seed), hi32(seed)}` ([`stream_word`]). Element `i` of a call reads word
//! `offset + i` (two-word operations read `2 (offset + i)` and `2 (offset + i) + 1`; channel
//! dropout reads one word per (batch, channel) pair). So:
//!
//! - a tensor cut into pieces, each piece called with `offset` = its first element's index,
//!   gives exactly the result of one call over the whole tensor (on any thread count and ISA);
//! - a backward pass can make the forward's decisions again from `(seed, offset)` instead of
//!   storing a mask.
//!
//! From a word `r`, `u = (r >> 8) * 2^-24` is uniform in [0, 1); an element is kept iff
//! `(r >> 8) >= ceil(p * 2^24)`. Masks are bit-packed, LSB first: element `i` is bit `i & 7` of
//! byte `i >> 3`, 1 = kept; unused high bits of the last byte are 0 ([`mask_len`] bytes).
//!
//! Every variant, Gaussian dropout included, gives bitwise the same result on every ISA (the
//! Gaussian transform uses only correctly rounded operations, no fused multiply-add).
//!
//! # Element types
//!
//! Every function that takes data is generic over its [`Element`] type: `f32`, `bf16` or
//! `f16`. Each input element is widened to `f32` exactly, the `f32` function's arithmetic runs
//! on it, and each output element is that result rounded once to the type (to nearest, ties to
//! even). So a half-precision call gives bitwise `E::from_f32` of what the `f32` call gives on
//! the widened input, and its masks are bitwise the `f32` call's (they depend on the stream
//! only).

use super::TASK_ELEMENTS;
use crate::context::Context;
use crate::error::{Error, Result, check_len};
use crate::io::{InOut, RowIo};
use crate::kernels::dropout::{
    ChannelKernel, ChannelRows, Decisions, GaussianKernel, Keep, KeepKernel, KeepMap, MaskKernel,
    UniformKernel,
};
use crate::kernels::philox;
use crate::shape::{Shape, checked_elements};
use crate::simd::dispatch;
use crate::simd::element::Element;
use std::sync::Mutex;

/// The negative saturation value of SELU, `-lambda * alpha`, that alpha dropout gives dropped
/// elements before its affine correction.
const ALPHA_PRIME: f64 = -1.758_099_340_847_376_6;

/// Philox4x32-10 (Random123): the block of four words of `counter` under `key`.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    philox::philox4x32_10(counter, key)
}

/// Word `index` of the stream of `seed`: `out[index & 3]` of
/// `philox4x32_10({lo32(index >> 2), hi32(index >> 2), 0, 0}, {lo32(seed), hi32(seed)})`.
pub fn stream_word(seed: u64, index: u64) -> u32 {
    philox::stream_word(seed, index)
}

/// Where a call's random words start: the stream of `seed`, from word `offset` on (element `i`
/// of the call reads word `offset + i`, or `2 (offset + i)` and the next for two-word
/// operations; see the module's documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stream {
    /// Selects the stream (the Philox key).
    pub seed: u64,
    /// The index of the call's first element in the stream.
    pub offset: u64,
}

impl Stream {
    /// The stream of `seed` from element `offset` on.
    pub fn new(seed: u64, offset: u64) -> Self {
        Stream { seed, offset }
    }

    /// The same stream `elements` further on: the stream of the part of a tensor that starts
    /// `elements` after this one's first element. `None` if the offset would overflow.
    pub fn skip(self, elements: u64) -> Option<Stream> {
        Some(Stream {
            seed: self.seed,
            offset: self.offset.checked_add(elements)?,
        })
    }
}

/// Bytes of a packed mask of `n` elements: `ceil(n / 8)`.
pub fn mask_len(n: usize) -> usize {
    n.div_ceil(8)
}

// ---------------------------------------------------------------------------------------------
// Validation, in the order of the C contract (overflow, shape, argument); the C layer calls
// these between its pointer checks.

/// Checks that `n` floats fit in memory and that the last word a call reads,
/// `(offset + n) * words_per_element - 1`, fits in 64 bits. `n = 0` reads no word.
pub(crate) fn check_elementwise(n: usize, offset: u64, words_per_element: u64) -> Result<()> {
    checked_elements(&[n], 4, "tensor")?;
    check_words(n, offset, words_per_element)
}

/// Checks that the last word a call reads, `(offset + n) * words_per_element - 1`, fits in
/// 64 bits. `n = 0` reads no word.
pub(crate) fn check_words(n: usize, offset: u64, words_per_element: u64) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let end = (u128::from(offset) + n as u128) * u128::from(words_per_element);
    if end - 1 > u128::from(u64::MAX) {
        return Err(Error::overflow(format!(
            "offset {offset} + {n} elements runs past the last word of the stream (2^64 - 1)"
        )));
    }
    Ok(())
}

/// Checks a channel dropout's sizes; returns the element count and the number of (batch,
/// channel) pairs. The pairs' words are checked only when there is data (otherwise the call
/// reads no word).
pub(crate) fn check_channel(shape: &Shape, offset: u64) -> Result<(usize, usize)> {
    let elements = shape.elements()?;
    let pairs = checked_elements(&[shape.batch, shape.channels], 1, "mask")?;
    if elements > 0 {
        check_words(pairs, offset, 1)?;
    }
    Ok((elements, pairs))
}

/// Checks a drop probability: in [0, 1] (`-0.0` is 0), not NaN.
pub(crate) fn check_p(p: f32) -> Result<()> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(Error::bad_argument(format!("p must be in [0, 1], got {p}")))
    }
}

/// Checks the `p` of Gaussian dropout: in [0, 1), whose variance `p / (1 - p)` is finite.
pub(crate) fn check_p_gaussian(p: f32) -> Result<()> {
    if (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(Error::bad_argument(format!(
            "p of Gaussian dropout must be in [0, 1), got {p}"
        )))
    }
}

/// Checks the `beta` of uniform dropout: finite and `>= 0`.
pub(crate) fn check_beta(beta: f32) -> Result<()> {
    if beta.is_finite() && beta >= 0.0 {
        Ok(())
    } else {
        Err(Error::bad_argument(format!(
            "beta must be finite and >= 0, got {beta}"
        )))
    }
}

fn check_mask<T>(mask: Option<&[T]>, elements: usize) -> Result<()> {
    match mask {
        Some(m) => check_len("mask", m, mask_len(elements)),
        None => Ok(()),
    }
}

/// `(float)(1.0 / (1.0 - p))`, the factor of kept elements.
fn inverted_scale(p: f32) -> f32 {
    (1.0 / (1.0 - f64::from(p))) as f32
}

/// Alpha dropout's `a`, `b` and the value of dropped elements, `alpha' * a + b` (in `f32`, as
/// the kernel computes kept ones). `p = 1` drops everything to `+0.0`.
fn alpha_constants(p: f32) -> (f32, f32, f32) {
    if p >= 1.0 {
        return (0.0, 0.0, 0.0);
    }
    // -0.0 counts as 0: b must be +0.0, not -0.0.
    let p = if p == 0.0 { 0.0 } else { f64::from(p) };
    let a = 1.0 / ((1.0 - p) * (1.0 + p * ALPHA_PRIME * ALPHA_PRIME)).sqrt();
    let b = -a * ALPHA_PRIME * p;
    let (a, b) = (a as f32, b as f32);
    (a, b, ALPHA_PRIME as f32 * a + b)
}

/// The checks of an elementwise keep-or-drop call of `n` elements with an optional mask.
fn check_keep(n: usize, offset: u64, mask: Option<&[u8]>, p: f32) -> Result<()> {
    check_elementwise(n, offset, 1)?;
    check_mask(mask, n)?;
    check_p(p)
}

// ---------------------------------------------------------------------------------------------
// Public operations.

/// The keep mask of `n` elements (`mask`: [`mask_len`]`(n)` bytes): element `i` is kept iff
/// `(r >> 8) >= ceil(p * 2^24)` for word `r = offset + i` of the stream of `seed`.
pub fn mask(ctx: &Context, n: usize, p: f32, stream: Stream, mask: &mut [u8]) -> Result<()> {
    let Stream { seed, offset } = stream;
    check_words(n, offset, 1)?;
    check_len("mask", mask, mask_len(n))?;
    check_p(p)?;
    fill_mask(ctx, n, Keep::new(p), seed, offset, mask);
    Ok(())
}

/// Inverted dropout: kept elements `y = x * (float)(1 / (1 - p))`, dropped ones `+0.0` (a
/// select, so NaN and infinity do not leak). `mask` (optional, [`mask_len`] bytes) receives
/// the keep mask. Applied to a weight buffer, this is DropConnect.
pub fn forward<E: Element>(
    ctx: &Context,
    mut io: InOut<'_, E>,
    p: f32,
    stream: Stream,
    mask: Option<&mut [u8]>,
) -> Result<()> {
    let Stream { seed, offset } = stream;
    check_keep(io.len(), offset, mask.as_deref(), p)?;
    let map = KeepMap::Scale(inverted_scale(p));
    run_keep(ctx, &mut io, stream_decisions(seed, offset, p), map, mask);
    Ok(())
}

/// Backward of [`forward`]: `dx = dy * scale` where the forward kept the element, `+0.0`
/// where it dropped it. The decisions come from `mask` when given, else are made again from
/// `(seed, offset)`. `io` is `dy` in, `dx` out.
pub fn backward<E: Element>(
    ctx: &Context,
    mut io: InOut<'_, E>,
    p: f32,
    stream: Stream,
    mask: Option<&[u8]>,
) -> Result<()> {
    let Stream { seed, offset } = stream;
    check_keep(io.len(), offset, mask, p)?;
    let map = KeepMap::Scale(inverted_scale(p));
    run_keep(ctx, &mut io, decisions(mask, seed, offset, p), map, None);
    Ok(())
}

/// Alpha dropout (self-normalizing networks, SELU): dropped elements take
/// `alpha' = -1.7580993408473766`, then `y = a * x' + b` with
/// `a = ((1 - p) (1 + p alpha'^2))^-1/2`, `b = -a alpha' p` (computed in double, rounded to
/// float; the product and the sum are each rounded). `p = 1` gives `+0.0` everywhere.
pub fn alpha_forward<E: Element>(
    ctx: &Context,
    mut io: InOut<'_, E>,
    p: f32,
    stream: Stream,
    mask: Option<&mut [u8]>,
) -> Result<()> {
    let Stream { seed, offset } = stream;
    check_keep(io.len(), offset, mask.as_deref(), p)?;
    let (a, b, dropped) = alpha_constants(p);
    let map = KeepMap::Affine { a, b, dropped };
    run_keep(ctx, &mut io, stream_decisions(seed, offset, p), map, mask);
    Ok(())
}

/// Backward of [`alpha_forward`]: `dx = dy * a` where kept, `+0.0` where dropped.
pub fn alpha_backward<E: Element>(
    ctx: &Context,
    mut io: InOut<'_, E>,
    p: f32,
    stream: Stream,
    mask: Option<&[u8]>,
) -> Result<()> {
    let Stream { seed, offset } = stream;
    check_keep(io.len(), offset, mask, p)?;
    let (a, _, _) = alpha_constants(p);
    run_keep(
        ctx,
        &mut io,
        decisions(mask, seed, offset, p),
        KeepMap::Scale(a),
        None,
    );
    Ok(())
}

/// Channel (spatial) dropout: one decision per (batch, channel) pair, from word
/// `offset + n * channels + c`, applied to the pair's whole spatial map (kept: `x * scale`,
/// dropped: `+0.0`). `mask` (optional) receives `batch * channels` bits. A tensor without
/// elements reads no word and writes nothing, not even the mask.
pub fn channel_forward<E: Element>(
    ctx: &Context,
    shape: Shape,
    mut io: InOut<'_, E>,
    p: f32,
    stream: Stream,
    mask: Option<&mut [u8]>,
) -> Result<()> {
    let Stream { seed, offset } = stream;
    let (elements, pairs) = check_channel(&shape, offset)?;
    check_len("x", io.input(), elements)?;
    check_mask(mask.as_deref(), pairs)?;
    check_p(p)?;
    if elements == 0 {
        return Ok(());
    }
    let keep = Keep::new(p);
    let mut own = Vec::new();
    let bits: &[u8] = match mask {
        Some(m) => {
            fill_mask(ctx, pairs, keep, seed, offset, m);
            m
        }
        None => {
            own.resize(mask_len(pairs), 0);
            fill_mask(ctx, pairs, keep, seed, offset, &mut own);
            &own
        }
    };
    apply_channel(ctx, &shape, &mut io, bits, inverted_scale(p));
    Ok(())
}

/// Backward of [`channel_forward`], from `mask` or with the decisions made again.
pub fn channel_backward<E: Element>(
    ctx: &Context,
    shape: Shape,
    mut io: InOut<'_, E>,
    p: f32,
    stream: Stream,
    mask: Option<&[u8]>,
) -> Result<()> {
    let Stream { seed, offset } = stream;
    let (elements, pairs) = check_channel(&shape, offset)?;
    check_len("dy", io.input(), elements)?;
    check_mask(mask, pairs)?;
    check_p(p)?;
    if elements == 0 {
        return Ok(());
    }
    let mut own = Vec::new();
    // With p = 1 every pair is dropped whatever a mask says (see `decisions`).
    let bits: &[u8] = match mask {
        Some(m) if p < 1.0 => m,
        _ => {
            own.resize(mask_len(pairs), 0);
            fill_mask(ctx, pairs, Keep::new(p), seed, offset, &mut own);
            &own
        }
    };
    apply_channel(ctx, &shape, &mut io, bits, inverted_scale(p));
    Ok(())
}

/// Gaussian dropout: `y = x * e`, `e = 1 + sqrt(p / (1 - p)) * sqrt(-2 ln u1) * cos(2 pi u2)`
/// (Box-Muller) with `u1 = ((r0 >> 8) + 1) 2^-24`, `u2 = (r1 >> 8) 2^-24` from words
/// `2 (offset + i)` and `2 (offset + i) + 1`. `p` in [0, 1).
pub fn gaussian_forward<E: Element>(
    ctx: &Context,
    mut io: InOut<'_, E>,
    p: f32,
    stream: Stream,
) -> Result<()> {
    let Stream { seed, offset } = stream;
    let n = io.len();
    check_elementwise(n, offset, 2)?;
    check_p_gaussian(p)?;
    run_gaussian(ctx, &mut io, p, seed, offset);
    Ok(())
}

/// Backward of [`gaussian_forward`]: `dx = dy * e`, the same factors.
pub fn gaussian_backward<E: Element>(
    ctx: &Context,
    io: InOut<'_, E>,
    p: f32,
    stream: Stream,
) -> Result<()> {
    gaussian_forward(ctx, io, p, stream)
}

/// Uniform dropout ("Uout", Li et al., CVPR 2019): `y = x * (1 + r)`, `r = beta * (2u - 1)`
/// with `u` from word `offset + i`. `beta` finite and `>= 0`.
pub fn uniform_forward<E: Element>(
    ctx: &Context,
    mut io: InOut<'_, E>,
    beta: f32,
    stream: Stream,
) -> Result<()> {
    let Stream { seed, offset } = stream;
    let n = io.len();
    check_elementwise(n, offset, 1)?;
    check_beta(beta)?;
    run_uniform(ctx, &mut io, beta, seed, offset);
    Ok(())
}

/// Backward of [`uniform_forward`]: `dx = dy * (1 + r)`, the same factors.
pub fn uniform_backward<E: Element>(
    ctx: &Context,
    io: InOut<'_, E>,
    beta: f32,
    stream: Stream,
) -> Result<()> {
    uniform_forward(ctx, io, beta, stream)
}

// ---------------------------------------------------------------------------------------------
// The data path. Tasks are fixed by the element count alone (TASK_ELEMENTS each); a task that
// starts at element `first` reads the stream from word `offset + first`, so the result does not
// depend on the thread count.

/// One task: its part of the data and of the mask written.
struct Part<'a, E> {
    io: RowIo<'a, E>,
    mask_out: Option<&'a mut [u8]>,
}

impl<E> Part<'_, E> {
    /// The part's data, reborrowed for one kernel call.
    fn data(&mut self) -> RowIo<'_, E> {
        let n = self.io.len();
        self.io.part(0..n)
    }
}

/// The data of a call cut into tasks of `size` elements (and, when a mask is written, its
/// `size / 8` bytes each).
fn parts<'a, E: Element>(
    io: &'a mut InOut<'_, E>,
    mask_out: Option<&'a mut [u8]>,
    size: usize,
) -> Vec<Mutex<Part<'a, E>>> {
    let ios: Vec<RowIo<'a, E>> = match io {
        InOut::Separate { x, y } => x
            .chunks(size)
            .zip(y.chunks_mut(size))
            .map(|(x, y)| RowIo::Separate(x, y))
            .collect(),
        InOut::InPlace(b) => b.chunks_mut(size).map(RowIo::InPlace).collect(),
    };
    let mut masks = mask_out.map(|m| m.chunks_mut(size / 8));
    ios.into_iter()
        .map(|io| {
            let mask_out = masks.as_mut().and_then(|m| m.next());
            Mutex::new(Part { io, mask_out })
        })
        .collect()
}

/// Decisions from the stream of `seed` from word `offset`, for probability `p`.
fn stream_decisions(seed: u64, offset: u64, p: f32) -> Decisions<'static> {
    Decisions::Stream {
        seed,
        first_word: offset,
        keep: Keep::new(p),
    }
}

/// Decisions from `mask` when given, else from the stream. With `p = 1` every element is
/// dropped whatever a mask says (no forward with `p = 1` keeps any), so that every gradient is
/// `+0.0` rather than `dy` times an infinite or zero factor.
fn decisions(mask: Option<&[u8]>, seed: u64, offset: u64, p: f32) -> Decisions<'_> {
    match mask {
        Some(mask) if p < 1.0 => Decisions::Mask { mask, first_bit: 0 },
        _ => stream_decisions(seed, offset, p),
    }
}

/// `decisions` (for the whole call) as seen from element `first`.
fn decisions_from(decisions: Decisions<'_>, first: usize) -> Decisions<'_> {
    match decisions {
        Decisions::Stream {
            seed,
            first_word,
            keep,
        } => Decisions::Stream {
            seed,
            first_word: first_word + first as u64,
            keep,
        },
        Decisions::Mask { mask, first_bit } => Decisions::Mask {
            mask,
            first_bit: first_bit + first,
        },
    }
}

fn run_keep<E: Element>(
    ctx: &Context,
    io: &mut InOut<'_, E>,
    decisions: Decisions<'_>,
    map: KeepMap,
    mask_out: Option<&mut [u8]>,
) {
    let n = io.len();
    let stream = super::streams_io(ctx, io, 0, usize::MAX);
    let isa = ctx.supported_isa();
    let tasks = parts(io, mask_out, TASK_ELEMENTS);
    ctx.for_each(n, tasks.len(), |t| {
        let mut part = tasks[t].lock().unwrap_or_else(|e| e.into_inner());
        let part = &mut *part;
        let n = part.io.len();
        dispatch(
            isa,
            KeepKernel {
                io: part.io.part(0..n),
                decisions: decisions_from(decisions, t * TASK_ELEMENTS),
                map,
                mask_out: part.mask_out.as_deref_mut(),
                stream,
            },
        );
    });
}

/// Writes the keep mask of `n` elements from word `offset` on.
fn fill_mask(ctx: &Context, n: usize, keep: Keep, seed: u64, offset: u64, mask: &mut [u8]) {
    let isa = ctx.supported_isa();
    ctx.for_each_part(n, mask, TASK_ELEMENTS / 8, |t, part| {
        let first = t * TASK_ELEMENTS;
        dispatch(
            isa,
            MaskKernel {
                mask: part,
                elements: (n - first).min(TASK_ELEMENTS),
                seed,
                first_word: offset + first as u64,
                keep,
            },
        );
    });
}

/// Applies a (batch, channel) mask to a tensor of `shape`.
fn apply_channel<E: Element>(
    ctx: &Context,
    shape: &Shape,
    io: &mut InOut<'_, E>,
    mask: &[u8],
    scale: f32,
) {
    let n = io.len();
    let (row_len, rows) = if shape.channels_innermost() {
        let rows = ChannelRows::Innermost {
            channels: shape.channels,
            spatial: shape.spatial,
        };
        (shape.channels, rows)
    } else {
        (shape.spatial, ChannelRows::Maps)
    };
    let rows_per_task = (TASK_ELEMENTS / row_len).max(1);
    let stream = super::streams_io(ctx, io, 0, row_len);
    let isa = ctx.supported_isa();
    let tasks = parts(io, None, rows_per_task * row_len);
    ctx.for_each(n, tasks.len(), |t| {
        let mut part = tasks[t].lock().unwrap_or_else(|e| e.into_inner());
        dispatch(
            isa,
            ChannelKernel {
                io: part.data(),
                first_row: t * rows_per_task,
                row_len,
                rows,
                mask,
                scale,
                stream,
            },
        );
    });
}

fn run_gaussian<E: Element>(ctx: &Context, io: &mut InOut<'_, E>, p: f32, seed: u64, offset: u64) {
    if p == 0.0 {
        // sigma = 0: every factor is exactly 1.
        run_keep(
            ctx,
            io,
            stream_decisions(seed, offset, 0.0),
            KeepMap::Scale(1.0),
            None,
        );
        return;
    }
    let p = f64::from(p);
    let sigma = (p / (1.0 - p)).sqrt() as f32;
    let n = io.len();
    let stream = super::streams_io(ctx, io, 0, usize::MAX);
    let isa = ctx.supported_isa();
    let tasks = parts(io, None, TASK_ELEMENTS);
    ctx.for_each(n, tasks.len(), |t| {
        let mut part = tasks[t].lock().unwrap_or_else(|e| e.into_inner());
        dispatch(
            isa,
            GaussianKernel {
                io: part.data(),
                seed,
                first_element: offset + (t * TASK_ELEMENTS) as u64,
                sigma,
                stream,
            },
        );
    });
}

fn run_uniform<E: Element>(
    ctx: &Context,
    io: &mut InOut<'_, E>,
    beta: f32,
    seed: u64,
    offset: u64,
) {
    if beta == 0.0 {
        // r = 0: every factor is exactly 1.
        run_keep(
            ctx,
            io,
            stream_decisions(seed, offset, 0.0),
            KeepMap::Scale(1.0),
            None,
        );
        return;
    }
    let n = io.len();
    let stream = super::streams_io(ctx, io, 0, usize::MAX);
    let isa = ctx.supported_isa();
    let tasks = parts(io, None, TASK_ELEMENTS);
    ctx.for_each(n, tasks.len(), |t| {
        let mut part = tasks[t].lock().unwrap_or_else(|e| e.into_inner());
        dispatch(
            isa,
            UniformKernel {
                io: part.data(),
                seed,
                first_word: offset + (t * TASK_ELEMENTS) as u64,
                beta,
                stream,
            },
        );
    });
}

#[cfg(test)]
mod tests {
    //! The operations against a plain scalar reference of the word-stream rules, on every ISA
    //! and on one and two threads; the broad contract tests live in `tests/`.

    use super::*;
    use crate::error::ErrorKind;
    use crate::shape::Layout;
    use crate::simd::Isa;

    /// A context per (supported ISA, thread count).
    fn contexts() -> Vec<Context> {
        let mut all = Vec::new();
        for isa in Isa::supported() {
            for threads in [1, 2] {
                let ctx = Context::new(threads).unwrap();
                ctx.set_isa(Some(isa)).unwrap();
                all.push(ctx);
            }
        }
        all
    }

    fn keeps(seed: u64, word: u64, p: f32) -> bool {
        let threshold = (f64::from(p) * 16_777_216.0).ceil() as u64;
        u64::from(stream_word(seed, word) >> 8) >= threshold
    }

    fn reference_mask(n: usize, p: f32, seed: u64, offset: u64) -> Vec<u8> {
        let mut mask = vec![0u8; mask_len(n)];
        for i in 0..n {
            if keeps(seed, offset + i as u64, p) {
                mask[i / 8] |= 1 << (i % 8);
            }
        }
        mask
    }

    /// Values with a sign, a spread of magnitudes, and a NaN and infinities sprinkled in.
    fn data(n: usize, salt: u64) -> Vec<f32> {
        (0..n)
            .map(|i| match i % 97 {
                13 => f32::NAN,
                41 => f32::INFINITY,
                77 => f32::NEG_INFINITY,
                _ => {
                    let r = stream_word(salt, i as u64);
                    (r as f32 / u32::MAX as f32 - 0.5) * 8.0
                }
            })
            .collect()
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    const SIZES: [usize; 12] = [0, 1, 7, 8, 9, 31, 33, 64, 100, 257, 1000, 70_001];
    const PS: [f32; 7] = [0.0, 1e-9, 0.1, 0.5, 0.9, 0.999_999_94, 1.0];

    fn offsets(n: usize) -> [u64; 6] {
        let last = u64::MAX - n.max(1) as u64 + 1;
        [0, 1, 3, 6, (1 << 34) - 5, last]
    }

    #[test]
    fn masks_follow_the_word_rule() {
        for ctx in contexts() {
            for n in SIZES {
                for p in PS {
                    for offset in offsets(n) {
                        let seed = 0x5eed_0000 + n as u64;
                        let mut got = vec![0xAA; mask_len(n)];
                        mask(&ctx, n, p, Stream::new(seed, offset), &mut got).unwrap();
                        assert_eq!(
                            got,
                            reference_mask(n, p, seed, offset),
                            "{ctx:?} n {n} p {p} offset {offset}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_keep_threshold_is_inclusive() {
        // p = k / 2^24 for the top 24 bits k of a word keeps that word; the next float up drops
        // it.
        let ctx = contexts().pop().unwrap();
        for (seed, word) in [(1u64, 0u64), (2, 5), (3, 1 << 33)] {
            let k = stream_word(seed, word) >> 8;
            let p = k as f32 / 16_777_216.0;
            for (p, kept) in [(p, 1), (f32::from_bits(p.to_bits() + 1), 0)] {
                let mut m = [0u8];
                mask(&ctx, 1, p, Stream::new(seed, word), &mut m).unwrap();
                assert_eq!(m[0], kept, "seed {seed} word {word} p {p}");
            }
        }
    }

    #[test]
    fn forward_and_backward_follow_the_mask() {
        for ctx in contexts() {
            for n in SIZES {
                for p in [0.0, 0.3, 1.0] {
                    for offset in offsets(n) {
                        let seed = 42;
                        let x = data(n, 7);
                        let want_mask = reference_mask(n, p, seed, offset);
                        let scale = (1.0 / (1.0 - f64::from(p))) as f32;
                        let want: Vec<f32> = (0..n)
                            .map(|i| {
                                if want_mask[i / 8] >> (i % 8) & 1 == 1 {
                                    x[i] * scale
                                } else {
                                    0.0
                                }
                            })
                            .collect();
                        let mut y = vec![1.5; n];
                        let mut m = vec![0x55; mask_len(n)];
                        let io = InOut::separate(&x, &mut y).unwrap();
                        forward(&ctx, io, p, Stream::new(seed, offset), Some(&mut m)).unwrap();
                        assert!(same_bits(&y, &want), "{ctx:?} n {n} p {p} offset {offset}");
                        assert_eq!(m, want_mask);
                        let mut in_place = x.clone();
                        forward(
                            &ctx,
                            InOut::InPlace(&mut in_place),
                            p,
                            Stream::new(seed, offset),
                            None,
                        )
                        .unwrap();
                        assert!(same_bits(&in_place, &want));
                        // Backward on dy = x: the same factors.
                        for given in [Some(&m[..]), None] {
                            let mut dx = vec![2.5; n];
                            let io = InOut::separate(&x, &mut dx).unwrap();
                            backward(&ctx, io, p, Stream::new(seed, offset), given).unwrap();
                            assert!(same_bits(&dx, &want), "backward, mask {}", given.is_some());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn alpha_dropout_follows_its_formula() {
        for ctx in contexts() {
            for n in [0, 5, 64, 1001, 40_000] {
                for p in [0.0, 0.1, 0.5, 1.0] {
                    let (seed, offset) = (9, 11);
                    let x = data(n, 3);
                    let alpha = -1.758_099_340_847_376_6_f64;
                    let pd = f64::from(p);
                    let (a, b) = if p == 1.0 {
                        (0.0, 0.0)
                    } else {
                        let a = ((1.0 - pd) * (1.0 + pd * alpha * alpha)).powf(-0.5);
                        (a as f32, (-a * alpha * pd) as f32)
                    };
                    let kept: Vec<bool> =
                        (0..n).map(|i| keeps(seed, offset + i as u64, p)).collect();
                    let want: Vec<f32> = (0..n)
                        .map(|i| {
                            if p == 1.0 {
                                0.0
                            } else {
                                let xp = if kept[i] { x[i] } else { alpha as f32 };
                                xp * a + b
                            }
                        })
                        .collect();
                    let mut y = vec![0.0; n];
                    let mut m = vec![0; mask_len(n)];
                    let io = InOut::separate(&x, &mut y).unwrap();
                    alpha_forward(&ctx, io, p, Stream::new(seed, offset), Some(&mut m)).unwrap();
                    assert!(same_bits(&y, &want), "{ctx:?} n {n} p {p}");
                    let want_dx: Vec<f32> = (0..n)
                        .map(|i| if kept[i] { x[i] * a } else { 0.0 })
                        .collect();
                    for given in [Some(&m[..]), None] {
                        let mut dx = vec![0.0; n];
                        let io = InOut::separate(&x, &mut dx).unwrap();
                        alpha_backward(&ctx, io, p, Stream::new(seed, offset), given).unwrap();
                        assert!(same_bits(&dx, &want_dx), "{ctx:?} n {n} p {p}");
                    }
                }
            }
        }
    }

    #[test]
    fn negative_zero_p_is_zero() {
        let ctx = Context::new(1).unwrap();
        let x = [
            -0.0f32,
            0.0,
            1.5,
            -2.0,
            f32::NAN,
            f32::INFINITY,
            -1e-40,
            3.0,
            -0.0,
        ];
        let n = x.len();
        for op in 0..6 {
            let mut outputs = Vec::new();
            for p in [0.0f32, -0.0] {
                let mut y = vec![9.0f32; n];
                let mut m = vec![0u8; mask_len(n)];
                let io = InOut::separate(&x, &mut y).unwrap();
                match op {
                    0 => forward(&ctx, io, p, Stream::new(1, 2), Some(&mut m)).unwrap(),
                    1 => backward(&ctx, io, p, Stream::new(1, 2), None).unwrap(),
                    2 => alpha_forward(&ctx, io, p, Stream::new(1, 2), Some(&mut m)).unwrap(),
                    3 => alpha_backward(&ctx, io, p, Stream::new(1, 2), None).unwrap(),
                    4 => gaussian_forward(&ctx, io, p, Stream::new(1, 2)).unwrap(),
                    _ => uniform_forward(&ctx, io, p, Stream::new(1, 2)).unwrap(),
                }
                outputs.push((y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), m));
            }
            assert_eq!(outputs[0], outputs[1], "op {op}");
        }
    }

    #[test]
    fn uniform_dropout_follows_its_formula() {
        for ctx in contexts() {
            for n in [0, 3, 64, 999, 40_000] {
                for beta in [0.0, 0.25, 1.0, 3.0] {
                    for offset in [0, 1, 2, 3, 1 << 40] {
                        let seed = 77;
                        let x = data(n, 5);
                        let want: Vec<f32> = (0..n)
                            .map(|i| {
                                let r = stream_word(seed, offset + i as u64);
                                let u = (r >> 8) as f32 / 16_777_216.0;
                                x[i] * (1.0 + beta * (2.0 * u - 1.0))
                            })
                            .collect();
                        let mut y = vec![0.0; n];
                        let io = InOut::separate(&x, &mut y).unwrap();
                        uniform_forward(&ctx, io, beta, Stream::new(seed, offset)).unwrap();
                        assert!(
                            same_bits(&y, &want),
                            "{ctx:?} n {n} beta {beta} offset {offset}"
                        );
                        let mut dx = x.clone();
                        uniform_backward(
                            &ctx,
                            InOut::InPlace(&mut dx),
                            beta,
                            Stream::new(seed, offset),
                        )
                        .unwrap();
                        assert!(same_bits(&dx, &want));
                    }
                }
            }
        }
    }

    fn gaussian_reference(p: f32, seed: u64, element: u64) -> f64 {
        let r0 = stream_word(seed, 2 * element);
        let r1 = stream_word(seed, 2 * element + 1);
        let u1 = (f64::from(r0 >> 8) + 1.0) / 16_777_216.0;
        let u2 = f64::from(r1 >> 8) / 16_777_216.0;
        let p = f64::from(p);
        1.0 + (p / (1.0 - p)).sqrt()
            * (-2.0 * u1.ln()).sqrt()
            * (2.0 * std::f64::consts::PI * u2).cos()
    }

    #[test]
    fn gaussian_factors_are_accurate_and_the_same_on_every_isa() {
        let n = 100_003;
        let x = vec![1.0f32; n];
        let mut first: Option<Vec<f32>> = None;
        for ctx in contexts() {
            for p in [0.0, 0.1, 0.5, 0.9] {
                for offset in [0u64, 1, 7, (1 << 62) + 1] {
                    let seed = 1234;
                    let mut y = vec![0.0; n];
                    let io = InOut::separate(&x, &mut y).unwrap();
                    gaussian_forward(&ctx, io, p, Stream::new(seed, offset)).unwrap();
                    let sigma = (f64::from(p) / (1.0 - f64::from(p))).sqrt();
                    for (i, &e) in y.iter().enumerate() {
                        let want = gaussian_reference(p, seed, offset + i as u64);
                        // A few float ulps of each factor of the noise term.
                        let tolerance = 4e-7 * (1.0 + 6.0 * sigma);
                        assert!(
                            (f64::from(e) - want).abs() <= tolerance,
                            "{ctx:?} p {p} offset {offset} element {i}: {e} vs {want}"
                        );
                    }
                    if p == 0.5 && offset == 7 {
                        match &first {
                            None => first = Some(y),
                            Some(f) => assert!(same_bits(f, &y), "{ctx:?}"),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_cosine_and_logarithm_hold_over_their_whole_ranges() {
        // Every 2^-24 step near the ends and a dense sweep in between, through the kernel with
        // x = 1 and p = 0.5 (sigma = 1): e - 1 = sqrt(-2 ln u1) cos(2 pi u2).
        let ctx = Context::new(1).unwrap();
        let n = 1 << 16;
        for seed in [1u64, 2, 3] {
            let x = vec![1.0f32; n];
            let mut y = vec![0.0; n];
            gaussian_forward(
                &ctx,
                InOut::separate(&x, &mut y).unwrap(),
                0.5,
                Stream::new(seed, 0),
            )
            .unwrap();
            let worst: f64 = y
                .iter()
                .enumerate()
                .map(|(i, &e)| (f64::from(e) - gaussian_reference(0.5, seed, i as u64)).abs())
                .fold(0.0, f64::max);
            eprintln!("worst {worst}");
            assert!(worst < 3e-6, "seed {seed}: worst error {worst}");
        }
    }

    #[test]
    fn a_tensor_cut_anywhere_gives_the_same_result() {
        let ctx = Context::new(2).unwrap();
        let n = 70_000;
        let x = data(n, 9);
        let (seed, offset) = (5, 1000);
        for cut in [1usize, 3, 8, 13, 32_768, 32_771, 69_999] {
            let run = |y: &mut [f32], m: &mut [u8], parts: &[(usize, usize)], op: u8| {
                for &(a, b) in parts {
                    let io = InOut::separate(&x[a..b], &mut y[a..b]).unwrap();
                    let o = offset + a as u64;
                    match op {
                        0 => {
                            let mut part_mask = vec![0; mask_len(b - a)];
                            forward(&ctx, io, 0.3, Stream::new(seed, o), Some(&mut part_mask))
                                .unwrap();
                            if a % 8 == 0 {
                                m[a / 8..a / 8 + part_mask.len()].copy_from_slice(&part_mask);
                            }
                        }
                        1 => alpha_forward(&ctx, io, 0.3, Stream::new(seed, o), None).unwrap(),
                        2 => gaussian_forward(&ctx, io, 0.3, Stream::new(seed, o)).unwrap(),
                        _ => uniform_forward(&ctx, io, 0.5, Stream::new(seed, o)).unwrap(),
                    }
                }
            };
            for op in 0..4 {
                let (mut whole, mut pieces) = (vec![0.0; n], vec![0.0; n]);
                let (mut m_whole, mut m_pieces) = (vec![0; mask_len(n)], vec![0; mask_len(n)]);
                run(&mut whole, &mut m_whole, &[(0, n)], op);
                run(&mut pieces, &mut m_pieces, &[(0, cut), (cut, n)], op);
                assert!(same_bits(&whole, &pieces), "op {op} cut {cut}");
                if op == 0 && cut % 8 == 0 {
                    assert_eq!(m_whole, m_pieces);
                }
            }
        }
    }

    #[test]
    fn large_calls_give_what_their_pieces_give() {
        // Calls whose input and output take more than the caches of their threads hold (37.7 MB
        // here, against a last-level cache of up to 32 MiB and L2 caches of up to 1 MiB) stream
        // their output (after a head that aligns it); the pieces, being smaller, do not. Output
        // one float past an aligned address.
        let ctx = Context::new(2).unwrap();
        let n = (1 << 22) + (1 << 19) + 77;
        let cut = (1 << 21) + 8;
        let x = data(n, 4);
        let (seed, offset) = (8, 3);
        let mut whole_buffer = vec![0f32; n + 1];
        let mut pieces = vec![0f32; n];
        for op in 0..5 {
            let whole = &mut whole_buffer[1..];
            let mut whole_mask = vec![0u8; mask_len(n)];
            let mut pieces_mask = vec![0u8; mask_len(n)];
            let run = |x: &[f32], y: &mut [f32], o: u64, m: &mut [u8]| {
                let io = InOut::separate(x, y).unwrap();
                match op {
                    0 => forward(&ctx, io, 0.25, Stream::new(seed, o), Some(m)).unwrap(),
                    1 => backward(&ctx, io, 0.25, Stream::new(seed, o), None).unwrap(),
                    2 => alpha_forward(&ctx, io, 0.25, Stream::new(seed, o), None).unwrap(),
                    3 => gaussian_forward(&ctx, io, 0.25, Stream::new(seed, o)).unwrap(),
                    _ => uniform_forward(&ctx, io, 0.25, Stream::new(seed, o)).unwrap(),
                }
            };
            run(&x, whole, offset, &mut whole_mask);
            let (first, second) = pieces.split_at_mut(cut);
            let (m_first, m_second) = pieces_mask.split_at_mut(mask_len(cut));
            run(&x[..cut], first, offset, m_first);
            run(&x[cut..], second, offset + cut as u64, m_second);
            assert!(same_bits(whole, &pieces), "op {op}");
            if op == 0 {
                assert_eq!(whole_mask, reference_mask(n, 0.25, seed, offset));
            }
            // Backward from the mask, streamed, gives the forward's values on dy = x.
            if op == 0 {
                let mut dx = vec![0f32; n + 1];
                let io = InOut::separate(&x, &mut dx[1..]).unwrap();
                backward(&ctx, io, 0.25, Stream::new(seed, offset), Some(&whole_mask)).unwrap();
                assert!(same_bits(&dx[1..], whole));
            }
        }
    }

    #[test]
    fn large_channel_calls_drop_whole_maps() {
        let ctx = Context::new(2).unwrap();
        for shape in [
            Shape::new(2, 3, 700_001, Layout::Ncs),
            Shape::new(4, 2048, 520, Layout::Nsc),
        ] {
            let n = shape.elements().unwrap();
            let x = data(n, 2);
            let mut buffer = vec![0f32; n + 1];
            let mut m = vec![0u8; mask_len(shape.batch * shape.channels)];
            let io = InOut::separate(&x, &mut buffer[1..]).unwrap();
            channel_forward(&ctx, shape, io, 0.5, Stream::new(1, 2), Some(&mut m)).unwrap();
            let (c, s) = (shape.channels, shape.spatial);
            for (i, (&y, &x)) in buffer[1..].iter().zip(&x).enumerate() {
                let pair = match shape.layout {
                    Layout::Ncs => i / s,
                    Layout::Nsc => i / (s * c) * c + i % c,
                };
                let kept = keeps(1, 2 + pair as u64, 0.5);
                let want = if kept { x * 2.0 } else { 0.0 };
                assert_eq!(y.to_bits(), want.to_bits(), "{shape:?} element {i}");
            }
        }
    }

    #[test]
    fn channel_dropout_drops_whole_maps() {
        for ctx in contexts() {
            for (batch, channels, spatial) in [(2, 3, 5), (3, 17, 1), (4, 9, 40), (2, 5, 4000)] {
                for layout in [Layout::Ncs, Layout::Nsc] {
                    for p in [0.0, 0.4, 1.0] {
                        let shape = Shape::new(batch, channels, spatial, layout);
                        let n = batch * channels * spatial;
                        let (seed, offset) = (3, 5);
                        let x = data(n, 1);
                        let scale = (1.0 / (1.0 - f64::from(p))) as f32;
                        let want: Vec<f32> = (0..n)
                            .map(|i| {
                                let (b, c) = match layout {
                                    Layout::Ncs => {
                                        (i / (channels * spatial), i / spatial % channels)
                                    }
                                    Layout::Nsc => (i / (channels * spatial), i % channels),
                                };
                                let pair = (b * channels + c) as u64;
                                if keeps(seed, offset + pair, p) {
                                    x[i] * scale
                                } else {
                                    0.0
                                }
                            })
                            .collect();
                        let mut y = vec![0.0; n];
                        let mut m = vec![0; mask_len(batch * channels)];
                        let io = InOut::separate(&x, &mut y).unwrap();
                        channel_forward(
                            &ctx,
                            shape,
                            io,
                            p,
                            Stream::new(seed, offset),
                            Some(&mut m),
                        )
                        .unwrap();
                        assert!(same_bits(&y, &want), "{ctx:?} {shape:?} p {p}");
                        assert_eq!(m, reference_mask(batch * channels, p, seed, offset));
                        for given in [Some(&m[..]), None] {
                            let mut dx = x.clone();
                            let io = InOut::InPlace(&mut dx);
                            channel_backward(&ctx, shape, io, p, Stream::new(seed, offset), given)
                                .unwrap();
                            assert!(same_bits(&dx, &want), "{ctx:?} {shape:?} p {p}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn errors_come_before_any_write() {
        let ctx = Context::new(1).unwrap();
        let x = [1.0f32; 16];
        let mut y = [7.0f32; 16];
        let mut m = [9u8; 2];
        let kind = |r: Result<()>| r.unwrap_err().kind();
        for p in [f32::NAN, -0.1, 1.1, f32::INFINITY] {
            let io = InOut::separate(&x, &mut y).unwrap();
            assert_eq!(
                kind(forward(&ctx, io, p, Stream::new(0, 0), Some(&mut m))),
                ErrorKind::BadArgument
            );
        }
        let io = InOut::separate(&x, &mut y).unwrap();
        assert_eq!(
            kind(gaussian_forward(&ctx, io, 1.0, Stream::new(0, 0))),
            ErrorKind::BadArgument
        );
        for beta in [-1.0, f32::NAN, f32::INFINITY] {
            let io = InOut::separate(&x, &mut y).unwrap();
            assert_eq!(
                kind(uniform_forward(&ctx, io, beta, Stream::new(0, 0))),
                ErrorKind::BadArgument
            );
        }
        // The last word: offset + n - 1 (one word each), 2 (offset + n) - 1 (two words).
        let io = InOut::separate(&x, &mut y).unwrap();
        assert_eq!(
            kind(forward(&ctx, io, 0.5, Stream::new(0, u64::MAX - 14), None)),
            ErrorKind::Overflow
        );
        let io = InOut::separate(&x, &mut y).unwrap();
        assert!(forward(&ctx, io, 0.5, Stream::new(0, u64::MAX - 15), None).is_ok());
        let io = InOut::separate(&x, &mut y).unwrap();
        assert_eq!(
            kind(gaussian_forward(
                &ctx,
                io,
                0.5,
                Stream::new(0, (1 << 63) - 15)
            )),
            ErrorKind::Overflow
        );
        let io = InOut::separate(&x, &mut y).unwrap();
        assert!(gaussian_forward(&ctx, io, 0.5, Stream::new(0, (1 << 63) - 16)).is_ok());
        // Overflow comes before a bad p, a bad mask length before a bad p.
        y = [7.0; 16];
        let io = InOut::separate(&x, &mut y).unwrap();
        assert_eq!(
            kind(forward(&ctx, io, f32::NAN, Stream::new(0, u64::MAX), None)),
            ErrorKind::Overflow
        );
        let io = InOut::separate(&x, &mut y).unwrap();
        let mut short = [0u8; 1];
        assert_eq!(
            kind(forward(&ctx, io, 2.0, Stream::new(0, 0), Some(&mut short))),
            ErrorKind::BadShape
        );
        assert_eq!(y, [7.0; 16]);
        assert_eq!(m, [9; 2]);
        // n = 0 reads no word: any offset is fine.
        let io = InOut::<f32>::separate(&[], &mut []).unwrap();
        assert!(forward(&ctx, io, 0.5, Stream::new(0, u64::MAX), None).is_ok());
    }
}
