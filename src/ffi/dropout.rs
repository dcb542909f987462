//! C entry points of the dropout family: checks, then the safe API of `ops::dropout`.

use super::library::{context, nk_context, nk_shape};
use super::{
    Regions, call, in_out, nk_bf16, nk_f16, nk_status, optional, optional_mut, require, slice_mut,
};
use crate::ops::dropout::{
    self, Stream, check_beta, check_channel, check_elementwise, check_p, check_p_gaussian,
    check_words, mask_len,
};
use crate::{Context, Element, InOut};

/// Philox4x32-10 (Salmon et al., SC'11; Random123): `out` = the block of `counter[4]` under
/// `key[2]`. The word `w` of the dropout stream of `seed` is `out[w & 3]` for counter
/// `{lo32(w >> 2), hi32(w >> 2), 0, 0}` and key `{lo32(seed), hi32(seed)}`. A pure function with
/// no status: it does nothing if a pointer is NULL and never sets the last error message. The
/// pointers need no alignment; `out` may overlap the inputs.
///
/// # Safety
/// `counter` and `out` are valid for 4 `uint32_t`, `key` for 2.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_philox4x32_10(counter: *const u32, key: *const u32, out: *mut u32) {
    if counter.is_null() || key.is_null() || out.is_null() {
        return;
    }
    // SAFETY: the caller's promise on extents; unaligned accesses are fine for any pointer.
    unsafe {
        let c = [0, 1, 2, 3].map(|i| counter.add(i).read_unaligned());
        let k = [0, 1].map(|i| key.add(i).read_unaligned());
        let r = dropout::philox4x32_10(c, k);
        for (i, word) in r.into_iter().enumerate() {
            out.add(i).write_unaligned(word);
        }
    }
}

/// The keep mask of `n` elements: bit `i` (bit `i & 7` of byte `i >> 3`) is 1 iff
/// `(r >> 8) >= ceil(p * 2^24)` for the word `r` at index `offset + i` of the stream of `seed`;
/// unused high bits of the last byte are 0.
/// - mask: ceil(n / 8) bytes, required (NULL when n == 0).
/// - p in [0, 1] (-0.0 counts as 0; NaN: NK_ERR_BAD_ARGUMENT). NK_ERR_OVERFLOW if the last word
///   index, offset + n - 1, exceeds 2^64 - 1 (n == 0 reads no word).
///
/// # Safety
/// `mask` is valid for ceil(n / 8) bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_dropout_mask(
    ctx: *mut nk_context,
    n: usize,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *mut u8,
) -> nk_status {
    call(|| {
        require("mask", mask, n)?;
        // A mask of any n fits in memory (n / 8 bytes): only the word index can overflow.
        check_words(n, offset, 1)?;
        check_p(p)?;
        let bytes = mask_len(n);
        Regions::default().output("mask", mask, bytes).check()?;
        // SAFETY: pointer checked above; the extent is the caller's promise.
        unsafe {
            dropout::mask(
                context(ctx),
                n,
                p,
                Stream::new(seed, offset),
                slice_mut(mask, bytes),
            )
        }
    })
}

/// The checks shared by the elementwise dropout functions: NULL data pointers, sizes and the
/// word range, then the scalar (`check`), then alignment and overlap with the optional mask
/// (alignment to the element type `E`, overlap in bytes).
fn check_elementwise_call<E>(
    n: usize,
    offset: u64,
    words_per_element: u64,
    (x, x_name): (*const E, &'static str),
    (y, y_name): (*mut E, &'static str),
    mask: (*const u8, bool),
    check: impl FnOnce() -> crate::Result<()>,
) -> crate::Result<()> {
    require(x_name, x, n)?;
    require(y_name, y, n)?;
    check_elementwise(n, offset, words_per_element)?;
    check()?;
    let mut regions = Regions::default();
    regions
        .input(x_name, x, n)
        .output_replacing(y_name, y, n, x_name);
    let (mask, writes) = mask;
    if writes {
        regions.output("mask", mask as *mut u8, mask_len(n));
    } else {
        regions.input("mask", mask, mask_len(n));
    }
    regions.check()
}

/// The arguments every elementwise dropout entry point shares; data of element type `E`.
#[derive(Clone, Copy)]
struct Elementwise<E> {
    ctx: *mut nk_context,
    n: usize,
    /// `x` of a forward, `dy` of a backward, with its name for messages.
    input: (*const E, &'static str),
    /// `y` of a forward, `dx` of a backward.
    output: (*mut E, &'static str),
    /// `p`, or `beta` of uniform dropout.
    scalar: f32,
    seed: u64,
    offset: u64,
}

/// A keep-or-drop forward of the safe API (writes an optional mask).
type KeepForward<E> =
    fn(&Context, InOut<'_, E>, f32, Stream, Option<&mut [u8]>) -> crate::Result<()>;
/// A keep-or-drop backward of the safe API (reads an optional mask).
type KeepBackward<E> = fn(&Context, InOut<'_, E>, f32, Stream, Option<&[u8]>) -> crate::Result<()>;
/// A multiplicative-noise pass of the safe API (no mask).
type Noise<E> = fn(&Context, InOut<'_, E>, f32, Stream) -> crate::Result<()>;

impl<E: Element> Elementwise<E> {
    fn new(
        ctx: *mut nk_context,
        n: usize,
        input: (*const E, &'static str),
        output: (*mut E, &'static str),
        scalar: f32,
        seed: u64,
        offset: u64,
    ) -> Self {
        Elementwise {
            ctx,
            n,
            input,
            output,
            scalar,
            seed,
            offset,
        }
    }

    /// `op` after the checks of a keep-or-drop forward: `mask` is an optional output.
    ///
    /// # Safety
    /// `input`, `output`: n elements; `mask`: NULL or ceil(n / 8) bytes.
    unsafe fn keep_forward(self, op: KeepForward<E>, mask: *mut u8) -> nk_status {
        let c = self;
        call(|| {
            c.check(1, (mask, true), || check_p(c.scalar))?;
            // SAFETY: pointers checked above; extents are the caller's promise.
            let (ctx, io, mask) = unsafe {
                (
                    context(c.ctx),
                    c.in_out(),
                    optional_mut(mask, mask_len(c.n)),
                )
            };
            op(ctx, io, c.scalar, Stream::new(c.seed, c.offset), mask)
        })
    }

    /// `op` after the checks of a keep-or-drop backward: `mask` is an optional input.
    ///
    /// # Safety
    /// `input`, `output`: n elements; `mask`: NULL or ceil(n / 8) bytes.
    unsafe fn keep_backward(self, op: KeepBackward<E>, mask: *const u8) -> nk_status {
        let c = self;
        call(|| {
            c.check(1, (mask, false), || check_p(c.scalar))?;
            // SAFETY: pointers checked above; extents are the caller's promise.
            let (ctx, io, mask) =
                unsafe { (context(c.ctx), c.in_out(), optional(mask, mask_len(c.n))) };
            op(ctx, io, c.scalar, Stream::new(c.seed, c.offset), mask)
        })
    }

    /// `op` after the checks of a noise pass reading `words_per_element` words per element,
    /// with `check` for its scalar.
    ///
    /// # Safety
    /// `input`, `output`: n elements.
    unsafe fn noise(
        self,
        op: Noise<E>,
        words_per_element: u64,
        check: fn(f32) -> crate::Result<()>,
    ) -> nk_status {
        let c = self;
        call(|| {
            c.check(words_per_element, (std::ptr::null(), false), || {
                check(c.scalar)
            })?;
            // SAFETY: pointers checked above; extents are the caller's promise.
            let (ctx, io) = unsafe { (context(c.ctx), c.in_out()) };
            op(ctx, io, c.scalar, Stream::new(c.seed, c.offset))
        })
    }

    /// [`check_elementwise_call`] of these arguments.
    fn check(
        &self,
        words_per_element: u64,
        mask: (*const u8, bool),
        scalar: impl FnOnce() -> crate::Result<()>,
    ) -> crate::Result<()> {
        let (input, output) = (self.input, self.output);
        check_elementwise_call(
            self.n,
            self.offset,
            words_per_element,
            input,
            output,
            mask,
            scalar,
        )
    }

    /// The data as a safe [`InOut`].
    ///
    /// # Safety
    /// Checked by [`Self::check`]; `input` and `output` valid for `n` elements.
    unsafe fn in_out<'a>(&self) -> InOut<'a, E> {
        // SAFETY: the caller's promise.
        unsafe { in_out(self.input.0, self.output.0, self.n) }
    }
}

/// `nk_dropout_forward` on data of element type `E`.
///
/// # Safety
/// `x`, `y`: n elements of `E`; `mask`: NULL or ceil(n / 8) bytes.
#[allow(clippy::too_many_arguments)] // the C signature, fixed by the contract
unsafe fn dropout_forward<E: Element>(
    ctx: *mut nk_context,
    n: usize,
    x: *const E,
    y: *mut E,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *mut u8,
) -> nk_status {
    let call = Elementwise::new(ctx, n, (x, "x"), (y, "y"), p, seed, offset);
    // SAFETY: the caller's promise on extents, as documented above.
    unsafe { call.keep_forward(dropout::forward::<E>, mask) }
}

/// Inverted dropout: element `i` is kept iff `(r >> 8) >= ceil(p * 2^24)` for the word `r` at
/// index `offset + i` of the stream of `seed`. Kept elements `y = x * (float)(1.0 / (1.0 - p))`,
/// dropped ones exactly `+0.0` (a select: NaN and infinity do not leak); p == 1 gives +0.0
/// everywhere. DropConnect is this call on a weight buffer.
/// - x, y: n floats (NULL when n == 0); `y == x` is in place.
/// - mask: optional output, ceil(n / 8) bytes, receives the keep mask (as nk_dropout_mask); it
///   must not overlap x or y.
/// - p in [0, 1] (-0.0 counts as 0). NK_ERR_OVERFLOW if offset + n - 1 exceeds 2^64 - 1.
///
/// # Safety
/// `x`, `y`: n floats; `mask`: NULL or ceil(n / 8) bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_dropout_forward(
    ctx: *mut nk_context,
    n: usize,
    x: *const f32,
    y: *mut f32,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *mut u8,
) -> nk_status {
    // SAFETY: the caller's promise, as documented above.
    unsafe { dropout_forward(ctx, n, x, y, p, seed, offset, mask) }
}

/// `nk_dropout_forward` on bf16 data (bfloat16): `x` is widened to float exactly, each element of
/// `y` is the float function's result rounded once to nearest even; masks and every other argument
/// as there. `x` and `y` need 2-byte alignment; overlap is checked in bytes.
///
/// # Safety
/// `x`, `y`: n `nk_bf16`; `mask`: NULL or ceil(n / 8) bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_dropout_forward_bf16(
    ctx: *mut nk_context,
    n: usize,
    x: *const nk_bf16,
    y: *mut nk_bf16,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *mut u8,
) -> nk_status {
    // SAFETY: `nk_bf16` has the layout of `crate::bf16` (one `uint16_t`); the rest is the
    // caller's promise, as documented above.
    unsafe {
        dropout_forward(
            ctx,
            n,
            x.cast::<crate::bf16>(),
            y.cast::<crate::bf16>(),
            p,
            seed,
            offset,
            mask,
        )
    }
}

/// `nk_dropout_forward` on f16 data (IEEE binary16): `x` is widened to float exactly, each element
/// of `y` is the float function's result rounded once to nearest even; masks and every other
/// argument as there. `x` and `y` need 2-byte alignment; overlap is checked in bytes.
///
/// # Safety
/// `x`, `y`: n `nk_f16`; `mask`: NULL or ceil(n / 8) bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_dropout_forward_f16(
    ctx: *mut nk_context,
    n: usize,
    x: *const nk_f16,
    y: *mut nk_f16,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *mut u8,
) -> nk_status {
    // SAFETY: `nk_f16` has the layout of `crate::f16` (one `uint16_t`); the rest is the
    // caller's promise, as documented above.
    unsafe {
        dropout_forward(
            ctx,
            n,
            x.cast::<crate::f16>(),
            y.cast::<crate::f16>(),
            p,
            seed,
            offset,
            mask,
        )
    }
}

/// `nk_dropout_backward` on data of element type `E`.
///
/// # Safety
/// `dy`, `dx`: n elements of `E`; `mask`: NULL or ceil(n / 8) bytes.
#[allow(clippy::too_many_arguments)] // the C signature, fixed by the contract
unsafe fn dropout_backward<E: Element>(
    ctx: *mut nk_context,
    n: usize,
    dy: *const E,
    dx: *mut E,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *const u8,
) -> nk_status {
    let call = Elementwise::new(ctx, n, (dy, "dy"), (dx, "dx"), p, seed, offset);
    // SAFETY: the caller's promise on extents, as documented above.
    unsafe { call.keep_backward(dropout::backward::<E>, mask) }
}

/// Backward of `nk_dropout_forward`: `dx = dy * (float)(1.0 / (1.0 - p))` where the forward kept
/// the element, exactly `+0.0` where it dropped it. The decisions come from `mask` (optional
/// input, ceil(n / 8) bytes: the forward's mask) or, when it is NULL, are made again from
/// `(seed, offset)`; with p == 1 every element is dropped whatever the mask says.
/// - dy, dx: n floats (NULL when n == 0); dx is required; `dx == dy` is in place. mask must not
///   overlap dx.
/// - p and the word range as for `nk_dropout_forward`.
///
/// # Safety
/// `dy`, `dx`: n floats; `mask`: NULL or ceil(n / 8) bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_dropout_backward(
    ctx: *mut nk_context,
    n: usize,
    dy: *const f32,
    dx: *mut f32,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *const u8,
) -> nk_status {
    // SAFETY: the caller's promise, as documented above.
    unsafe { dropout_backward(ctx, n, dy, dx, p, seed, offset, mask) }
}

/// `nk_dropout_backward` on bf16 data (bfloat16): `dy` is widened to float exactly, each element of
/// `dx` is the float function's result rounded once to nearest even; masks and every other argument
/// as there. `dy` and `dx` need 2-byte alignment; overlap is checked in bytes.
///
/// # Safety
/// `dy`, `dx`: n `nk_bf16`; `mask`: NULL or ceil(n / 8) bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_dropout_backward_bf16(
    ctx: *mut nk_context,
    n: usize,
    dy: *const nk_bf16,
    dx: *mut nk_bf16,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *const u8,
) -> nk_status {
    // SAFETY: `nk_bf16` has the layout of `crate::bf16` (one `uint16_t`); the rest is the
    // caller's promise, as documented above.
    unsafe {
        dropout_backward(
            ctx,
            n,
            dy.cast::<crate::bf16>(),
            dx.cast::<crate::bf16>(),
            p,
            seed,
            offset,
            mask,
        )
    }
}

/// `nk_dropout_backward` on f16 data (IEEE binary16): `dy` is widened to float exactly, each
/// element of `dx` is the float function's result rounded once to nearest even; masks and every
/// other argument as there. `dy` and `dx` need 2-byte alignment; overlap is checked in bytes.
///
/// # Safety
/// `dy`, `dx`: n `nk_f16`; `mask`: NULL or ceil(n / 8) bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_dropout_backward_f16(
    ctx: *mut nk_context,
    n: usize,
    dy: *const nk_f16,
    dx: *mut nk_f16,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *const u8,
) -> nk_status {
    // SAFETY: `nk_f16` has the layout of `crate::f16` (one `uint16_t`); the rest is the
    // caller's promise, as documented above.
    unsafe {
        dropout_backward(
            ctx,
            n,
            dy.cast::<crate::f16>(),
            dx.cast::<crate::f16>(),
            p,
            seed,
            offset,
            mask,
        )
    }
}

/// The checks of a channel dropout call, data of element type `E`; returns (elements, pairs).
fn check_channel_call<E>(
    shape: &nk_shape,
    offset: u64,
    (x, x_name): (*const E, &'static str),
    (y, y_name): (*mut E, &'static str),
    mask: (*const u8, bool),
    p: f32,
) -> crate::Result<(crate::Shape, usize, usize)> {
    let data = usize::from(!shape.is_empty());
    require(x_name, x, data)?;
    require(y_name, y, data)?;
    let (elements, pairs) = check_channel(&shape.sizes(), offset)?;
    check_p(p)?;
    let checked = shape.to_shape()?;
    let mut regions = Regions::default();
    regions
        .input(x_name, x, elements)
        .output_replacing(y_name, y, elements, x_name);
    let (mask, writes) = mask;
    if writes {
        regions.output("mask", mask as *mut u8, mask_len(pairs));
    } else {
        regions.input("mask", mask, mask_len(pairs));
    }
    regions.check()?;
    Ok((checked, elements, pairs))
}

/// `nk_channel_dropout_forward` on data of element type `E`.
///
/// # Safety
/// `x`, `y`: batch * channels * spatial elements of `E`; `mask`: NULL or ceil(batch * channels / 8)
/// bytes.
#[allow(clippy::too_many_arguments)] // the C signature, fixed by the contract
unsafe fn channel_dropout_forward<E: Element>(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const E,
    y: *mut E,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *mut u8,
) -> nk_status {
    call(|| {
        let (checked, elements, pairs) =
            check_channel_call(&shape, offset, (x, "x"), (y, "y"), (mask, true), p)?;
        // SAFETY: pointers checked above; extents are the caller's promise.
        unsafe {
            dropout::channel_forward::<E>(
                context(ctx),
                checked,
                in_out(x, y, elements),
                p,
                Stream::new(seed, offset),
                optional_mut(mask, mask_len(pairs)),
            )
        }
    })
}

/// Channel (spatial) dropout: one keep decision per (n, c) pair, from the word at index
/// `offset + n * channels + c` (kept iff `(r >> 8) >= ceil(p * 2^24)`), applied to the pair's
/// whole spatial map: kept elements `y = x * (float)(1.0 / (1.0 - p))`, dropped ones `+0.0`.
/// Both layouts.
/// - x, y: batch*channels*spatial floats (NULL when the tensor is empty); `y == x` is in place.
/// - mask: optional output, batch*channels bits in ceil(batch*channels / 8) bytes; it must not
///   overlap x or y.
/// - p in [0, 1]. NK_ERR_OVERFLOW if offset + batch*channels - 1 exceeds 2^64 - 1. A shape
///   without elements reads no word and writes nothing, not even the mask.
///
/// # Safety
/// `x`, `y`: batch * channels * spatial floats; `mask`: NULL or ceil(batch * channels / 8)
/// bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_channel_dropout_forward(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const f32,
    y: *mut f32,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *mut u8,
) -> nk_status {
    // SAFETY: the caller's promise, as documented above.
    unsafe { channel_dropout_forward(ctx, shape, x, y, p, seed, offset, mask) }
}

/// `nk_channel_dropout_forward` on bf16 data (bfloat16): `x` is widened to float exactly, each
/// element of `y` is the float function's result rounded once to nearest even; masks and every
/// other argument as there. `x` and `y` need 2-byte alignment; overlap is checked in bytes.
///
/// # Safety
/// `x`, `y`: batch * channels * spatial `nk_bf16`; `mask`: NULL or ceil(batch * channels / 8)
/// bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_channel_dropout_forward_bf16(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const nk_bf16,
    y: *mut nk_bf16,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *mut u8,
) -> nk_status {
    // SAFETY: `nk_bf16` has the layout of `crate::bf16` (one `uint16_t`); the rest is the
    // caller's promise, as documented above.
    unsafe {
        channel_dropout_forward(
            ctx,
            shape,
            x.cast::<crate::bf16>(),
            y.cast::<crate::bf16>(),
            p,
            seed,
            offset,
            mask,
        )
    }
}

/// `nk_channel_dropout_forward` on f16 data (IEEE binary16): `x` is widened to float exactly, each
/// element of `y` is the float function's result rounded once to nearest even; masks and every
/// other argument as there. `x` and `y` need 2-byte alignment; overlap is checked in bytes.
///
/// # Safety
/// `x`, `y`: batch * channels * spatial `nk_f16`; `mask`: NULL or ceil(batch * channels / 8)
/// bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_channel_dropout_forward_f16(
    ctx: *mut nk_context,
    shape: nk_shape,
    x: *const nk_f16,
    y: *mut nk_f16,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *mut u8,
) -> nk_status {
    // SAFETY: `nk_f16` has the layout of `crate::f16` (one `uint16_t`); the rest is the
    // caller's promise, as documented above.
    unsafe {
        channel_dropout_forward(
            ctx,
            shape,
            x.cast::<crate::f16>(),
            y.cast::<crate::f16>(),
            p,
            seed,
            offset,
            mask,
        )
    }
}

/// `nk_channel_dropout_backward` on data of element type `E`.
///
/// # Safety
/// As `nk_channel_dropout_forward`.
#[allow(clippy::too_many_arguments)] // the C signature, fixed by the contract
unsafe fn channel_dropout_backward<E: Element>(
    ctx: *mut nk_context,
    shape: nk_shape,
    dy: *const E,
    dx: *mut E,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *const u8,
) -> nk_status {
    call(|| {
        let (checked, elements, pairs) =
            check_channel_call(&shape, offset, (dy, "dy"), (dx, "dx"), (mask, false), p)?;
        // SAFETY: pointers checked above; extents are the caller's promise.
        unsafe {
            dropout::channel_backward::<E>(
                context(ctx),
                checked,
                in_out(dy, dx, elements),
                p,
                Stream::new(seed, offset),
                optional(mask, mask_len(pairs)),
            )
        }
    })
}

/// Backward of `nk_channel_dropout_forward`: `dx = dy * (float)(1.0 / (1.0 - p))` on the maps of
/// kept pairs, `+0.0` on those of dropped ones. The decisions come from `mask` (optional input,
/// ceil(batch*channels / 8) bytes) or, when it is NULL, are made again from `(seed, offset)`;
/// with p == 1 every pair is dropped whatever the mask says.
/// - dy, dx: batch*channels*spatial floats (NULL when the tensor is empty); dx is required;
///   `dx == dy` is in place. mask must not overlap dx.
/// - p, the word range and shapes without elements as for `nk_channel_dropout_forward`.
///
/// # Safety
/// As `nk_channel_dropout_forward`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_channel_dropout_backward(
    ctx: *mut nk_context,
    shape: nk_shape,
    dy: *const f32,
    dx: *mut f32,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *const u8,
) -> nk_status {
    // SAFETY: the caller's promise, as documented above.
    unsafe { channel_dropout_backward(ctx, shape, dy, dx, p, seed, offset, mask) }
}

/// `nk_channel_dropout_backward` on bf16 data (bfloat16): `dy` is widened to float exactly, each
/// element of `dx` is the float function's result rounded once to nearest even; masks and every
/// other argument as there. `dy` and `dx` need 2-byte alignment; overlap is checked in bytes.
///
/// # Safety
/// As `nk_channel_dropout_forward_bf16`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_channel_dropout_backward_bf16(
    ctx: *mut nk_context,
    shape: nk_shape,
    dy: *const nk_bf16,
    dx: *mut nk_bf16,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *const u8,
) -> nk_status {
    // SAFETY: `nk_bf16` has the layout of `crate::bf16` (one `uint16_t`); the rest is the
    // caller's promise, as documented above.
    unsafe {
        channel_dropout_backward(
            ctx,
            shape,
            dy.cast::<crate::bf16>(),
            dx.cast::<crate::bf16>(),
            p,
            seed,
            offset,
            mask,
        )
    }
}

/// `nk_channel_dropout_backward` on f16 data (IEEE binary16): `dy` is widened to float exactly,
/// each element of `dx` is the float function's result rounded once to nearest even; masks and
/// every other argument as there. `dy` and `dx` need 2-byte alignment; overlap is checked in bytes.
///
/// # Safety
/// As `nk_channel_dropout_forward_f16`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_channel_dropout_backward_f16(
    ctx: *mut nk_context,
    shape: nk_shape,
    dy: *const nk_f16,
    dx: *mut nk_f16,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *const u8,
) -> nk_status {
    // SAFETY: `nk_f16` has the layout of `crate::f16` (one `uint16_t`); the rest is the
    // caller's promise, as documented above.
    unsafe {
        channel_dropout_backward(
            ctx,
            shape,
            dy.cast::<crate::f16>(),
            dx.cast::<crate::f16>(),
            p,
            seed,
            offset,
            mask,
        )
    }
}

/// `nk_alpha_dropout_forward` on data of element type `E`.
///
/// # Safety
/// As `nk_dropout_forward`.
#[allow(clippy::too_many_arguments)] // the C signature, fixed by the contract
unsafe fn alpha_dropout_forward<E: Element>(
    ctx: *mut nk_context,
    n: usize,
    x: *const E,
    y: *mut E,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *mut u8,
) -> nk_status {
    let call = Elementwise::new(ctx, n, (x, "x"), (y, "y"), p, seed, offset);
    // SAFETY: the caller's promise on extents, as documented above.
    unsafe { call.keep_forward(dropout::alpha_forward::<E>, mask) }
}

/// Alpha dropout (SELU networks): keep decisions as for `nk_dropout_forward`; dropped elements
/// take alpha' = -1.7580993408473766, then `y = a * x' + b` with
/// `a = ((1 - p) * (1 + p * alpha'^2))^-1/2`, `b = -a * alpha' * p` (computed in double, rounded
/// to float; the product and the sum each rounded). p == 1 gives +0.0 everywhere.
/// - x, y: n floats (NULL when n == 0); `y == x` is in place.
/// - mask: optional output, ceil(n / 8) bytes, receives the keep mask; it must not overlap x or y.
/// - p in [0, 1]. NK_ERR_OVERFLOW if offset + n - 1 exceeds 2^64 - 1.
///
/// # Safety
/// As `nk_dropout_forward`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_alpha_dropout_forward(
    ctx: *mut nk_context,
    n: usize,
    x: *const f32,
    y: *mut f32,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *mut u8,
) -> nk_status {
    // SAFETY: the caller's promise, as documented above.
    unsafe { alpha_dropout_forward(ctx, n, x, y, p, seed, offset, mask) }
}

/// `nk_alpha_dropout_forward` on bf16 data (bfloat16): `x` is widened to float exactly, each
/// element of `y` is the float function's result rounded once to nearest even; masks and every
/// other argument as there. `x` and `y` need 2-byte alignment; overlap is checked in bytes.
///
/// # Safety
/// As `nk_dropout_forward_bf16`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_alpha_dropout_forward_bf16(
    ctx: *mut nk_context,
    n: usize,
    x: *const nk_bf16,
    y: *mut nk_bf16,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *mut u8,
) -> nk_status {
    // SAFETY: `nk_bf16` has the layout of `crate::bf16` (one `uint16_t`); the rest is the
    // caller's promise, as documented above.
    unsafe {
        alpha_dropout_forward(
            ctx,
            n,
            x.cast::<crate::bf16>(),
            y.cast::<crate::bf16>(),
            p,
            seed,
            offset,
            mask,
        )
    }
}

/// `nk_alpha_dropout_forward` on f16 data (IEEE binary16): `x` is widened to float exactly, each
/// element of `y` is the float function's result rounded once to nearest even; masks and every
/// other argument as there. `x` and `y` need 2-byte alignment; overlap is checked in bytes.
///
/// # Safety
/// As `nk_dropout_forward_f16`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_alpha_dropout_forward_f16(
    ctx: *mut nk_context,
    n: usize,
    x: *const nk_f16,
    y: *mut nk_f16,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *mut u8,
) -> nk_status {
    // SAFETY: `nk_f16` has the layout of `crate::f16` (one `uint16_t`); the rest is the
    // caller's promise, as documented above.
    unsafe {
        alpha_dropout_forward(
            ctx,
            n,
            x.cast::<crate::f16>(),
            y.cast::<crate::f16>(),
            p,
            seed,
            offset,
            mask,
        )
    }
}

/// `nk_alpha_dropout_backward` on data of element type `E`.
///
/// # Safety
/// As `nk_dropout_backward`.
#[allow(clippy::too_many_arguments)] // the C signature, fixed by the contract
unsafe fn alpha_dropout_backward<E: Element>(
    ctx: *mut nk_context,
    n: usize,
    dy: *const E,
    dx: *mut E,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *const u8,
) -> nk_status {
    let call = Elementwise::new(ctx, n, (dy, "dy"), (dx, "dx"), p, seed, offset);
    // SAFETY: the caller's promise on extents, as documented above.
    unsafe { call.keep_backward(dropout::alpha_backward::<E>, mask) }
}

/// Backward of `nk_alpha_dropout_forward`: `dx = dy * a` where the forward kept the element,
/// exactly `+0.0` where it dropped it. The decisions come from `mask` (optional input,
/// ceil(n / 8) bytes) or, when it is NULL, are made again from `(seed, offset)`; with p == 1
/// every element is dropped whatever the mask says.
/// - dy, dx: n floats (NULL when n == 0); dx is required; `dx == dy` is in place. mask must not
///   overlap dx.
/// - p and the word range as for `nk_alpha_dropout_forward`.
///
/// # Safety
/// As `nk_dropout_backward`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_alpha_dropout_backward(
    ctx: *mut nk_context,
    n: usize,
    dy: *const f32,
    dx: *mut f32,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *const u8,
) -> nk_status {
    // SAFETY: the caller's promise, as documented above.
    unsafe { alpha_dropout_backward(ctx, n, dy, dx, p, seed, offset, mask) }
}

/// `nk_alpha_dropout_backward` on bf16 data (bfloat16): `dy` is widened to float exactly, each
/// element of `dx` is the float function's result rounded once to nearest even; masks and every
/// other argument as there. `dy` and `dx` need 2-byte alignment; overlap is checked in bytes.
///
/// # Safety
/// As `nk_dropout_backward_bf16`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_alpha_dropout_backward_bf16(
    ctx: *mut nk_context,
    n: usize,
    dy: *const nk_bf16,
    dx: *mut nk_bf16,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *const u8,
) -> nk_status {
    // SAFETY: `nk_bf16` has the layout of `crate::bf16` (one `uint16_t`); the rest is the
    // caller's promise, as documented above.
    unsafe {
        alpha_dropout_backward(
            ctx,
            n,
            dy.cast::<crate::bf16>(),
            dx.cast::<crate::bf16>(),
            p,
            seed,
            offset,
            mask,
        )
    }
}

/// `nk_alpha_dropout_backward` on f16 data (IEEE binary16): `dy` is widened to float exactly, each
/// element of `dx` is the float function's result rounded once to nearest even; masks and every
/// other argument as there. `dy` and `dx` need 2-byte alignment; overlap is checked in bytes.
///
/// # Safety
/// As `nk_dropout_backward_f16`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_alpha_dropout_backward_f16(
    ctx: *mut nk_context,
    n: usize,
    dy: *const nk_f16,
    dx: *mut nk_f16,
    p: f32,
    seed: u64,
    offset: u64,
    mask: *const u8,
) -> nk_status {
    // SAFETY: `nk_f16` has the layout of `crate::f16` (one `uint16_t`); the rest is the
    // caller's promise, as documented above.
    unsafe {
        alpha_dropout_backward(
            ctx,
            n,
            dy.cast::<crate::f16>(),
            dx.cast::<crate::f16>(),
            p,
            seed,
            offset,
            mask,
        )
    }
}

/// `nk_gaussian_dropout_forward` on data of element type `E`.
///
/// # Safety
/// `x`, `y`: n elements of `E`.
#[allow(clippy::too_many_arguments)] // the C signature, fixed by the contract
unsafe fn gaussian_dropout_forward<E: Element>(
    ctx: *mut nk_context,
    n: usize,
    x: *const E,
    y: *mut E,
    p: f32,
    seed: u64,
    offset: u64,
) -> nk_status {
    let call = Elementwise::new(ctx, n, (x, "x"), (y, "y"), p, seed, offset);
    // SAFETY: the caller's promise on extents, as documented above.
    unsafe { call.noise(dropout::gaussian_forward::<E>, 2, check_p_gaussian) }
}

/// Gaussian dropout: `y = x * e`, `e = 1 + sqrt(p / (1 - p)) * sqrt(-2 ln u1) * cos(2 pi u2)`,
/// `u1 = ((r0 >> 8) + 1) * 2^-24`, `u2 = (r1 >> 8) * 2^-24` from the words `r0`, `r1` at indices
/// `2 * (offset + i)` and `2 * (offset + i) + 1` of the stream of `seed`. The same bits on every
/// ISA (correctly rounded operations only, no FMA).
/// - x, y: n floats (NULL when n == 0); `y == x` is in place. No mask.
/// - p in [0, 1) (1 or NaN: NK_ERR_BAD_ARGUMENT). NK_ERR_OVERFLOW if offset + n exceeds 2^63 (the
///   last word index, 2 * (offset + n) - 1, past 2^64 - 1).
///
/// # Safety
/// `x`, `y`: n floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_gaussian_dropout_forward(
    ctx: *mut nk_context,
    n: usize,
    x: *const f32,
    y: *mut f32,
    p: f32,
    seed: u64,
    offset: u64,
) -> nk_status {
    // SAFETY: the caller's promise, as documented above.
    unsafe { gaussian_dropout_forward(ctx, n, x, y, p, seed, offset) }
}

/// `nk_gaussian_dropout_forward` on bf16 data (bfloat16): `x` is widened to float exactly, each
/// element of `y` is the float function's result rounded once to nearest even; every other argument
/// as there (no mask). `x` and `y` need 2-byte alignment; overlap is checked in bytes.
///
/// # Safety
/// `x`, `y`: n `nk_bf16`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_gaussian_dropout_forward_bf16(
    ctx: *mut nk_context,
    n: usize,
    x: *const nk_bf16,
    y: *mut nk_bf16,
    p: f32,
    seed: u64,
    offset: u64,
) -> nk_status {
    // SAFETY: `nk_bf16` has the layout of `crate::bf16` (one `uint16_t`); the rest is the
    // caller's promise, as documented above.
    unsafe {
        gaussian_dropout_forward(
            ctx,
            n,
            x.cast::<crate::bf16>(),
            y.cast::<crate::bf16>(),
            p,
            seed,
            offset,
        )
    }
}

/// `nk_gaussian_dropout_forward` on f16 data (IEEE binary16): `x` is widened to float exactly, each
/// element of `y` is the float function's result rounded once to nearest even; every other argument
/// as there (no mask). `x` and `y` need 2-byte alignment; overlap is checked in bytes.
///
/// # Safety
/// `x`, `y`: n `nk_f16`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_gaussian_dropout_forward_f16(
    ctx: *mut nk_context,
    n: usize,
    x: *const nk_f16,
    y: *mut nk_f16,
    p: f32,
    seed: u64,
    offset: u64,
) -> nk_status {
    // SAFETY: `nk_f16` has the layout of `crate::f16` (one `uint16_t`); the rest is the
    // caller's promise, as documented above.
    unsafe {
        gaussian_dropout_forward(
            ctx,
            n,
            x.cast::<crate::f16>(),
            y.cast::<crate::f16>(),
            p,
            seed,
            offset,
        )
    }
}

/// `nk_gaussian_dropout_backward` on data of element type `E`.
///
/// # Safety
/// `dy`, `dx`: n elements of `E`.
#[allow(clippy::too_many_arguments)] // the C signature, fixed by the contract
unsafe fn gaussian_dropout_backward<E: Element>(
    ctx: *mut nk_context,
    n: usize,
    dy: *const E,
    dx: *mut E,
    p: f32,
    seed: u64,
    offset: u64,
) -> nk_status {
    let call = Elementwise::new(ctx, n, (dy, "dy"), (dx, "dx"), p, seed, offset);
    // SAFETY: the caller's promise on extents, as documented above.
    unsafe { call.noise(dropout::gaussian_backward::<E>, 2, check_p_gaussian) }
}

/// Backward of `nk_gaussian_dropout_forward`: `dx = dy * e`, the same factors from the same words.
/// - dy, dx: n floats (NULL when n == 0); dx is required; `dx == dy` is in place. No mask.
/// - p in [0, 1) and the word range as for `nk_gaussian_dropout_forward`.
///
/// # Safety
/// `dy`, `dx`: n floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_gaussian_dropout_backward(
    ctx: *mut nk_context,
    n: usize,
    dy: *const f32,
    dx: *mut f32,
    p: f32,
    seed: u64,
    offset: u64,
) -> nk_status {
    // SAFETY: the caller's promise, as documented above.
    unsafe { gaussian_dropout_backward(ctx, n, dy, dx, p, seed, offset) }
}

/// `nk_gaussian_dropout_backward` on bf16 data (bfloat16): `dy` is widened to float exactly, each
/// element of `dx` is the float function's result rounded once to nearest even; every other
/// argument as there (no mask). `dy` and `dx` need 2-byte alignment; overlap is checked in bytes.
///
/// # Safety
/// `dy`, `dx`: n `nk_bf16`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_gaussian_dropout_backward_bf16(
    ctx: *mut nk_context,
    n: usize,
    dy: *const nk_bf16,
    dx: *mut nk_bf16,
    p: f32,
    seed: u64,
    offset: u64,
) -> nk_status {
    // SAFETY: `nk_bf16` has the layout of `crate::bf16` (one `uint16_t`); the rest is the
    // caller's promise, as documented above.
    unsafe {
        gaussian_dropout_backward(
            ctx,
            n,
            dy.cast::<crate::bf16>(),
            dx.cast::<crate::bf16>(),
            p,
            seed,
            offset,
        )
    }
}

/// `nk_gaussian_dropout_backward` on f16 data (IEEE binary16): `dy` is widened to float exactly,
/// each element of `dx` is the float function's result rounded once to nearest even; every other
/// argument as there (no mask). `dy` and `dx` need 2-byte alignment; overlap is checked in bytes.
///
/// # Safety
/// `dy`, `dx`: n `nk_f16`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_gaussian_dropout_backward_f16(
    ctx: *mut nk_context,
    n: usize,
    dy: *const nk_f16,
    dx: *mut nk_f16,
    p: f32,
    seed: u64,
    offset: u64,
) -> nk_status {
    // SAFETY: `nk_f16` has the layout of `crate::f16` (one `uint16_t`); the rest is the
    // caller's promise, as documented above.
    unsafe {
        gaussian_dropout_backward(
            ctx,
            n,
            dy.cast::<crate::f16>(),
            dx.cast::<crate::f16>(),
            p,
            seed,
            offset,
        )
    }
}

/// `nk_uniform_dropout_forward` on data of element type `E`.
///
/// # Safety
/// `x`, `y`: n elements of `E`.
#[allow(clippy::too_many_arguments)] // the C signature, fixed by the contract
unsafe fn uniform_dropout_forward<E: Element>(
    ctx: *mut nk_context,
    n: usize,
    x: *const E,
    y: *mut E,
    beta: f32,
    seed: u64,
    offset: u64,
) -> nk_status {
    let call = Elementwise::new(ctx, n, (x, "x"), (y, "y"), beta, seed, offset);
    // SAFETY: the caller's promise on extents, as documented above.
    unsafe { call.noise(dropout::uniform_forward::<E>, 1, check_beta) }
}

/// Uniform dropout ("Uout", Li et al., CVPR 2019): `y = x * (1 + r)`, `r = beta * (2u - 1)`,
/// `u = (w >> 8) * 2^-24` for the word `w` at index `offset + i` of the stream of `seed`.
/// - x, y: n floats (NULL when n == 0); `y == x` is in place. No mask.
/// - beta finite and >= 0 (else NK_ERR_BAD_ARGUMENT). NK_ERR_OVERFLOW if offset + n - 1 exceeds
///   2^64 - 1.
///
/// # Safety
/// `x`, `y`: n floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_uniform_dropout_forward(
    ctx: *mut nk_context,
    n: usize,
    x: *const f32,
    y: *mut f32,
    beta: f32,
    seed: u64,
    offset: u64,
) -> nk_status {
    // SAFETY: the caller's promise, as documented above.
    unsafe { uniform_dropout_forward(ctx, n, x, y, beta, seed, offset) }
}

/// `nk_uniform_dropout_forward` on bf16 data (bfloat16): `x` is widened to float exactly, each
/// element of `y` is the float function's result rounded once to nearest even; every other argument
/// as there (no mask). `x` and `y` need 2-byte alignment; overlap is checked in bytes.
///
/// # Safety
/// `x`, `y`: n `nk_bf16`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_uniform_dropout_forward_bf16(
    ctx: *mut nk_context,
    n: usize,
    x: *const nk_bf16,
    y: *mut nk_bf16,
    beta: f32,
    seed: u64,
    offset: u64,
) -> nk_status {
    // SAFETY: `nk_bf16` has the layout of `crate::bf16` (one `uint16_t`); the rest is the
    // caller's promise, as documented above.
    unsafe {
        uniform_dropout_forward(
            ctx,
            n,
            x.cast::<crate::bf16>(),
            y.cast::<crate::bf16>(),
            beta,
            seed,
            offset,
        )
    }
}

/// `nk_uniform_dropout_forward` on f16 data (IEEE binary16): `x` is widened to float exactly, each
/// element of `y` is the float function's result rounded once to nearest even; every other argument
/// as there (no mask). `x` and `y` need 2-byte alignment; overlap is checked in bytes.
///
/// # Safety
/// `x`, `y`: n `nk_f16`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_uniform_dropout_forward_f16(
    ctx: *mut nk_context,
    n: usize,
    x: *const nk_f16,
    y: *mut nk_f16,
    beta: f32,
    seed: u64,
    offset: u64,
) -> nk_status {
    // SAFETY: `nk_f16` has the layout of `crate::f16` (one `uint16_t`); the rest is the
    // caller's promise, as documented above.
    unsafe {
        uniform_dropout_forward(
            ctx,
            n,
            x.cast::<crate::f16>(),
            y.cast::<crate::f16>(),
            beta,
            seed,
            offset,
        )
    }
}

/// `nk_uniform_dropout_backward` on data of element type `E`.
///
/// # Safety
/// `dy`, `dx`: n elements of `E`.
#[allow(clippy::too_many_arguments)] // the C signature, fixed by the contract
unsafe fn uniform_dropout_backward<E: Element>(
    ctx: *mut nk_context,
    n: usize,
    dy: *const E,
    dx: *mut E,
    beta: f32,
    seed: u64,
    offset: u64,
) -> nk_status {
    let call = Elementwise::new(ctx, n, (dy, "dy"), (dx, "dx"), beta, seed, offset);
    // SAFETY: the caller's promise on extents, as documented above.
    unsafe { call.noise(dropout::uniform_backward::<E>, 1, check_beta) }
}

/// Backward of `nk_uniform_dropout_forward`: `dx = dy * (1 + r)`, the same factors from the same
/// words.
/// - dy, dx: n floats (NULL when n == 0); dx is required; `dx == dy` is in place. No mask.
/// - beta and the word range as for `nk_uniform_dropout_forward`.
///
/// # Safety
/// `dy`, `dx`: n floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_uniform_dropout_backward(
    ctx: *mut nk_context,
    n: usize,
    dy: *const f32,
    dx: *mut f32,
    beta: f32,
    seed: u64,
    offset: u64,
) -> nk_status {
    // SAFETY: the caller's promise, as documented above.
    unsafe { uniform_dropout_backward(ctx, n, dy, dx, beta, seed, offset) }
}

/// `nk_uniform_dropout_backward` on bf16 data (bfloat16): `dy` is widened to float exactly, each
/// element of `dx` is the float function's result rounded once to nearest even; every other
/// argument as there (no mask). `dy` and `dx` need 2-byte alignment; overlap is checked in bytes.
///
/// # Safety
/// `dy`, `dx`: n `nk_bf16`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_uniform_dropout_backward_bf16(
    ctx: *mut nk_context,
    n: usize,
    dy: *const nk_bf16,
    dx: *mut nk_bf16,
    beta: f32,
    seed: u64,
    offset: u64,
) -> nk_status {
    // SAFETY: `nk_bf16` has the layout of `crate::bf16` (one `uint16_t`); the rest is the
    // caller's promise, as documented above.
    unsafe {
        uniform_dropout_backward(
            ctx,
            n,
            dy.cast::<crate::bf16>(),
            dx.cast::<crate::bf16>(),
            beta,
            seed,
            offset,
        )
    }
}

/// `nk_uniform_dropout_backward` on f16 data (IEEE binary16): `dy` is widened to float exactly,
/// each element of `dx` is the float function's result rounded once to nearest even; every other
/// argument as there (no mask). `dy` and `dx` need 2-byte alignment; overlap is checked in bytes.
///
/// # Safety
/// `dy`, `dx`: n `nk_f16`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nk_uniform_dropout_backward_f16(
    ctx: *mut nk_context,
    n: usize,
    dy: *const nk_f16,
    dx: *mut nk_f16,
    beta: f32,
    seed: u64,
    offset: u64,
) -> nk_status {
    // SAFETY: `nk_f16` has the layout of `crate::f16` (one `uint16_t`); the rest is the
    // caller's promise, as documented above.
    unsafe {
        uniform_dropout_backward(
            ctx,
            n,
            dy.cast::<crate::f16>(),
            dx.cast::<crate::f16>(),
            beta,
            seed,
            offset,
        )
    }
}
