//! The bf16 and f16 twins of the dropout family (API.md, "Half-precision data: bf16 and f16"):
//! every twin, through its C function (`nk_*_bf16`, `nk_*_f16`) and through the safe generic API,
//! gives bitwise `E::from_f32` of what the float function gives on the widened input, on the same
//! context, with bitwise the float function's masks. Sizes with odd tails (1 to 300,007 elements,
//! and calls large enough to stream their output), offsets deep in the Philox stream and at its
//! end, in place and out of place, every ISA of this CPU, 1 and 3 threads;
//! inputs with NaN (signaling ones too), infinities, signed zeros, subnormals of the type, values
//! at the f16 overflow (65504, 65520, and 52416, which dropout scales by 1.25 to the tie 65520)
//! and outputs that are ties. Then the twins' error contract: NULL, odd addresses, overlap counted
//! in 2-byte elements, the contract's precedence, and nothing written on error.

// The C functions: built with the default `capi` feature.
#![cfg(feature = "capi")]

mod common;

use common::check::{c_shape, ctx, isa_value};
use common::data::Gen;
use common::half::{Half, Nan, assert_rounded_from, bits, widen};
use normkit::dropout::Stream;
use normkit::ffi::nk_status::*;
use normkit::ffi::*;
use normkit::{Context, Element, InOut, Isa, Layout, Shape, bf16, dropout as d, f16};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ptr::null_mut;

// ---------------------------------------------------------------------------------------------
// The operations and the twins of each type.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Dropout,
    Alpha,
    Gaussian,
    Uniform,
    Channel,
}

impl Op {
    /// Whether the operation writes (forward) and reads (backward) a mask.
    fn masked(self) -> bool {
        matches!(self, Op::Dropout | Op::Alpha | Op::Channel)
    }
}

/// The dropout twins of a half type.
trait DropoutTwins: Half {
    /// Subnormals of the type and signaling NaNs, as bits.
    const SPECIAL_BITS: [u16; 6];

    /// The C twin of `op` (forward, or backward) of this type: `n` elements, or `shape` for
    /// channel dropout; `mask` is the forward's output or the backward's input (may be NULL).
    ///
    /// # Safety
    /// As the C function's.
    #[allow(clippy::too_many_arguments)]
    unsafe fn c_call(
        op: Op,
        backward: bool,
        ctx: *mut nk_context,
        n: usize,
        shape: nk_shape,
        x: *const Self,
        y: *mut Self,
        param: f32,
        seed: u64,
        offset: u64,
        mask: *mut u8,
    ) -> nk_status;
}

macro_rules! twins {
    ($t:ty, $c:ty, $special:expr,
     [$df:ident, $db:ident, $af:ident, $ab:ident, $gf:ident, $gb:ident, $uf:ident, $ub:ident,
      $cf:ident, $cb:ident]) => {
        impl DropoutTwins for $t {
            const SPECIAL_BITS: [u16; 6] = $special;
            unsafe fn c_call(
                op: Op,
                backward: bool,
                ctx: *mut nk_context,
                n: usize,
                shape: nk_shape,
                x: *const Self,
                y: *mut Self,
                param: f32,
                seed: u64,
                offset: u64,
                mask: *mut u8,
            ) -> nk_status {
                let (x, y) = (x.cast::<$c>(), y.cast::<$c>());
                let (s, o, m) = (seed, offset, mask);
                // SAFETY: the caller's promise.
                unsafe {
                    match (op, backward) {
                        (Op::Dropout, false) => $df(ctx, n, x, y, param, s, o, m),
                        (Op::Dropout, true) => $db(ctx, n, x, y, param, s, o, m),
                        (Op::Alpha, false) => $af(ctx, n, x, y, param, s, o, m),
                        (Op::Alpha, true) => $ab(ctx, n, x, y, param, s, o, m),
                        (Op::Gaussian, false) => $gf(ctx, n, x, y, param, s, o),
                        (Op::Gaussian, true) => $gb(ctx, n, x, y, param, s, o),
                        (Op::Uniform, false) => $uf(ctx, n, x, y, param, s, o),
                        (Op::Uniform, true) => $ub(ctx, n, x, y, param, s, o),
                        (Op::Channel, false) => $cf(ctx, shape, x, y, param, s, o, m),
                        (Op::Channel, true) => $cb(ctx, shape, x, y, param, s, o, m),
                    }
                }
            }
        }
    };
}

twins!(
    bf16,
    nk_bf16,
    // Subnormals (smallest, largest, a negative one), signaling NaNs, the largest finite.
    [0x0001, 0x007F, 0x8035, 0x7F81, 0xFFA0, 0x7F7F],
    [
        nk_dropout_forward_bf16,
        nk_dropout_backward_bf16,
        nk_alpha_dropout_forward_bf16,
        nk_alpha_dropout_backward_bf16,
        nk_gaussian_dropout_forward_bf16,
        nk_gaussian_dropout_backward_bf16,
        nk_uniform_dropout_forward_bf16,
        nk_uniform_dropout_backward_bf16,
        nk_channel_dropout_forward_bf16,
        nk_channel_dropout_backward_bf16
    ]
);

twins!(
    f16,
    nk_f16,
    [0x0001, 0x03FF, 0x8203, 0x7C01, 0xFD00, 0x7BFF],
    [
        nk_dropout_forward_f16,
        nk_dropout_backward_f16,
        nk_alpha_dropout_forward_f16,
        nk_alpha_dropout_backward_f16,
        nk_gaussian_dropout_forward_f16,
        nk_gaussian_dropout_backward_f16,
        nk_uniform_dropout_forward_f16,
        nk_uniform_dropout_backward_f16,
        nk_channel_dropout_forward_f16,
        nk_channel_dropout_backward_f16
    ]
);

// ---------------------------------------------------------------------------------------------
// Contexts of the C API.

/// A context from `nk_context_create`, forced to an ISA; destroyed on drop.
struct CCtx(*mut nk_context);

impl Drop for CCtx {
    fn drop(&mut self) {
        // SAFETY: a context from nk_context_create.
        unsafe { nk_context_destroy(self.0) };
    }
}

thread_local! {
    static C_CONTEXTS: RefCell<HashMap<(usize, Isa), CCtx>> = RefCell::new(HashMap::new());
}

/// This test thread's C context of `threads` threads forced to `isa`.
fn c_ctx(threads: usize, isa: Isa) -> *mut nk_context {
    C_CONTEXTS.with(|m| {
        m.borrow_mut()
            .entry((threads, isa))
            .or_insert_with(|| {
                let mut ptr = null_mut();
                // SAFETY: a valid out pointer.
                let status = unsafe { nk_context_create(threads, &mut ptr) };
                assert_eq!(status, NK_OK, "nk_context_create({threads})");
                // SAFETY: a live context.
                let status = unsafe { nk_context_set_isa(ptr, isa_value(isa)) };
                assert_eq!(status, NK_OK, "nk_context_set_isa({isa:?})");
                CCtx(ptr)
            })
            .0
    })
}

// ---------------------------------------------------------------------------------------------
// One call: the float function, or a twin.

/// Which API calls a twin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    C,
    Safe,
}

/// The mask argument of a call.
#[derive(Clone, Copy, Debug)]
enum Mask<'a> {
    Null,
    /// A forward writes it (returned).
    Out,
    /// A backward reads it.
    In(&'a [u8]),
}

/// What a call computes: the operation, its direction and arguments.
#[derive(Clone, Copy, Debug)]
struct Case {
    op: Op,
    backward: bool,
    /// The tensor (elementwise operations: `1 x n x 1`).
    shape: Shape,
    /// `p`, or `beta` of uniform dropout.
    param: f32,
    seed: u64,
    offset: u64,
}

impl Case {
    fn n(&self) -> usize {
        self.shape.elements().unwrap()
    }

    fn mask_bytes(&self) -> usize {
        match self.op {
            Op::Channel => d::mask_len(self.shape.batch * self.shape.channels),
            _ => d::mask_len(self.n()),
        }
    }
}

/// `case` through the safe API on data of type `E`.
fn safe_call<E: Element>(
    ctx: &Context,
    case: &Case,
    io: InOut<'_, E>,
    mask_out: Option<&mut [u8]>,
    mask_in: Option<&[u8]>,
) -> normkit::Result<()> {
    let Case {
        shape,
        param: p,
        seed: s,
        offset: o,
        ..
    } = *case;
    match (case.op, case.backward) {
        (Op::Dropout, false) => d::forward(ctx, io, p, Stream::new(s, o), mask_out),
        (Op::Dropout, true) => d::backward(ctx, io, p, Stream::new(s, o), mask_in),
        (Op::Alpha, false) => d::alpha_forward(ctx, io, p, Stream::new(s, o), mask_out),
        (Op::Alpha, true) => d::alpha_backward(ctx, io, p, Stream::new(s, o), mask_in),
        (Op::Gaussian, false) => d::gaussian_forward(ctx, io, p, Stream::new(s, o)),
        (Op::Gaussian, true) => d::gaussian_backward(ctx, io, p, Stream::new(s, o)),
        (Op::Uniform, false) => d::uniform_forward(ctx, io, p, Stream::new(s, o)),
        (Op::Uniform, true) => d::uniform_backward(ctx, io, p, Stream::new(s, o)),
        (Op::Channel, false) => d::channel_forward(ctx, shape, io, p, Stream::new(s, o), mask_out),
        (Op::Channel, true) => d::channel_backward(ctx, shape, io, p, Stream::new(s, o), mask_in),
    }
}

/// The float function, out of place, through the safe API: its output and its mask.
fn run_f32(ctx: &Context, case: &Case, x: &[f32], mask: Mask<'_>) -> (Vec<f32>, Option<Vec<u8>>) {
    let mut y = vec![f32::from_bits(0x7FBA_DBAD); x.len()];
    let mut m = vec![0xA5u8; case.mask_bytes()];
    let (mask_out, mask_in) = match mask {
        Mask::Null => (None, None),
        Mask::Out => (Some(&mut m[..]), None),
        Mask::In(given) => (None, Some(given)),
    };
    safe_call(
        ctx,
        case,
        InOut::separate(x, &mut y).unwrap(),
        mask_out,
        mask_in,
    )
    .unwrap_or_else(|e| panic!("float function {case:?}: {e:?}"));
    (y, matches!(mask, Mask::Out).then_some(m))
}

/// The twin of type `T` through `api`, in place (`dst` holds `x` first) or out of place, into
/// `dst` (which the caller may place anywhere); returns the mask written.
#[allow(clippy::too_many_arguments)]
fn run_half_into<T: DropoutTwins>(
    api: Api,
    ctx: &Context,
    c_ctx: *mut nk_context,
    case: &Case,
    x: &[T],
    dst: &mut [T],
    in_place: bool,
    mask: Mask<'_>,
) -> Option<Vec<u8>> {
    let mut m = vec![0x5Au8; case.mask_bytes()];
    if in_place {
        dst.copy_from_slice(x);
    } else {
        dst.fill(T::from_bits(0x7E55));
    }
    match api {
        Api::Safe => {
            let (mask_out, mask_in) = match mask {
                Mask::Null => (None, None),
                Mask::Out => (Some(&mut m[..]), None),
                Mask::In(given) => (None, Some(given)),
            };
            let io = if in_place {
                InOut::InPlace(dst)
            } else {
                InOut::separate(x, dst).unwrap()
            };
            safe_call(ctx, case, io, mask_out, mask_in)
                .unwrap_or_else(|e| panic!("{} twin {case:?}: {e:?}", T::NAME));
        }
        Api::C => {
            let mask_ptr = match mask {
                Mask::Null => null_mut(),
                Mask::Out => m.as_mut_ptr(),
                Mask::In(given) => given.as_ptr().cast_mut(),
            };
            let y = dst.as_mut_ptr();
            let x_ptr = if in_place { y.cast_const() } else { x.as_ptr() };
            // SAFETY: buffers of the call's sizes; an input mask is only read.
            let status = unsafe {
                T::c_call(
                    case.op,
                    case.backward,
                    c_ctx,
                    case.n(),
                    c_shape(case.shape),
                    x_ptr,
                    y,
                    case.param,
                    case.seed,
                    case.offset,
                    mask_ptr,
                )
            };
            assert_eq!(status, NK_OK, "{} twin {case:?}: {}", T::NAME, last_error());
        }
    }
    matches!(mask, Mask::Out).then_some(m)
}

fn last_error() -> String {
    // SAFETY: a valid C string of this thread.
    unsafe { std::ffi::CStr::from_ptr(nk_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

/// Whether `v` lies exactly halfway between two neighbouring finite values of `T`.
fn is_tie<T: Half>(v: f32) -> bool {
    let r = T::round(v);
    let rv = r.wide();
    if !v.is_finite() || !rv.is_finite() || rv == 0.0 || rv == v {
        return false;
    }
    // The neighbour of r on v's side: one step up in magnitude if |v| > |r|, else down.
    let step: i32 = if v.abs() > rv.abs() { 1 } else { -1 };
    let other = T::from_bits((i32::from(r.bits()) + step) as u16).wide();
    if !other.is_finite() {
        return false;
    }
    let (v, rv, other) = (f64::from(v), f64::from(rv), f64::from(other));
    (v - rv).abs() == (other - v).abs()
}

// ---------------------------------------------------------------------------------------------
// Data and sweeps.

/// Normal data at several scales; one element in five a special value: NaN (signaling too),
/// infinities, signed zeros, subnormals of the type, values at the f16 overflow, the largest
/// finite value of the type.
fn inputs<T: DropoutTwins>(n: usize, seed: u64) -> Vec<T> {
    let specials: Vec<T> = [
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7FA0_1234),
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        65504.0,
        -65504.0,
        65520.0,
        52416.0,
        -52416.0,
        52384.0,
        52448.0,
        65519.0,
        3.3e38,
        -3.0e38,
        1.0 + 1.0 / 256.0,
    ]
    .iter()
    .map(|&v| T::round(v))
    .chain(T::SPECIAL_BITS.iter().map(|&b| T::from_bits(b)))
    .collect();
    let mut g = Gen::new(seed);
    (0..n)
        .map(|i| {
            if i % 5 == 1 {
                specials[(i / 5) % specials.len()]
            } else {
                let scale = [1.0, 300.0, 1e-3, 3e4][i % 4];
                T::round((g.normal() * scale) as f32)
            }
        })
        .collect()
}

/// The shapes of a sweep: elementwise operations `1 x n x 1` for n with odd tails; channel
/// dropout in both layouts with odd rows.
fn shapes(op: Op) -> Vec<Shape> {
    if op == Op::Channel {
        vec![
            Shape::new(1, 1, 1, Layout::Ncs),
            Shape::new(1, 7, 1, Layout::Nsc),
            Shape::new(3, 1, 11, Layout::Ncs),
            Shape::new(2, 5, 100, Layout::Nsc),
            Shape::new(7, 13, 3297, Layout::Ncs),
            Shape::new(3, 37, 2703, Layout::Nsc),
        ]
    } else {
        [1, 7, 33, 1000, 300_007]
            .map(|n| Shape::new(1, n, 1, Layout::Ncs))
            .to_vec()
    }
}

/// Offsets: small, deep in the stream, and the last the call can take.
fn offsets(op: Op, shape: Shape) -> [u64; 3] {
    let n = shape.elements().unwrap() as u64;
    let last = match op {
        Op::Gaussian => (1 << 63) - n,
        Op::Channel => u64::MAX - (shape.batch * shape.channels) as u64 + 1,
        _ => u64::MAX - n + 1,
    };
    [3, (1 << 40) + 5, last]
}

/// The operation's scalar: the main value for every size, more for the small ones.
fn params(op: Op, n: usize) -> Vec<f32> {
    let (main, more): (f32, &[f32]) = match op {
        Op::Gaussian => (0.2, &[0.0, 0.9]),
        Op::Uniform => (0.75, &[0.0, 3.0]),
        _ => (0.2, &[0.0, -0.0, 0.5, 1.0]),
    };
    let mut all = vec![main];
    if n <= 1000 {
        all.extend_from_slice(more);
    }
    all
}

/// Every twin of `op` for type `T` through `api` against the float function, over the sweep;
/// returns how many of the float outputs were ties of `T`.
fn sweep<T: DropoutTwins>(op: Op, api: Api) -> usize {
    let mut ties = 0;
    for isa in Isa::supported() {
        for threads in [1, 3] {
            let context = ctx(threads, isa);
            let cc = c_ctx(threads, isa);
            for (k, shape) in shapes(op).into_iter().enumerate() {
                let n = shape.elements().unwrap();
                let x = inputs::<T>(n, 100 + k as u64);
                let wide = widen(&x);
                let mut dst = vec![T::round(0.0); n];
                for offset in offsets(op, shape) {
                    for param in params(op, n) {
                        let forward = Case {
                            op,
                            backward: false,
                            shape,
                            param,
                            seed: 0x5EED ^ k as u64,
                            offset,
                        };
                        let what = |case: &Case, mask: &str, in_place: bool| {
                            format!(
                                "{} {api:?} {isa:?} {threads} thread(s) {case:?} mask {mask} \
                                 in place {in_place}",
                                T::NAME
                            )
                        };
                        let out = if op.masked() { Mask::Out } else { Mask::Null };
                        let (y32, m32) = run_f32(&context, &forward, &wide, out);
                        ties += y32.iter().filter(|&&v| is_tie::<T>(v)).count();
                        for in_place in [false, true] {
                            let m = run_half_into(
                                api, &context, cc, &forward, &x, &mut dst, in_place, out,
                            );
                            let w = what(&forward, "out", in_place);
                            assert_rounded_from(&dst, &y32, &wide, Nan::Exact, &w);
                            assert_eq!(m, m32, "{w}: mask");
                        }
                        // Backward (dy = x): made again, and from the forward's mask.
                        let backward = Case {
                            backward: true,
                            ..forward
                        };
                        let mut masks = vec![(Mask::Null, "NULL")];
                        if let Some(m) = &m32 {
                            masks.push((Mask::In(m), "in"));
                        }
                        for (mask, label) in masks {
                            let (dx32, _) = run_f32(&context, &backward, &wide, mask);
                            for in_place in [false, true] {
                                run_half_into(
                                    api, &context, cc, &backward, &x, &mut dst, in_place, mask,
                                );
                                let w = what(&backward, label, in_place);
                                assert_rounded_from(&dst, &dx32, &wide, Nan::Exact, &w);
                            }
                        }
                    }
                }
            }
        }
    }
    ties
}

fn sweep_both(op: Op, api: Api) {
    let ties_bf16 = sweep::<bf16>(op, api);
    let ties_f16 = sweep::<f16>(op, api);
    // Dropout and channel dropout scale by 1.25 (p = 0.2): x * 1.25 is a tie of the type for
    // one element value in four; the others make some too.
    if matches!(op, Op::Dropout | Op::Channel) {
        assert!(ties_bf16 > 100 && ties_f16 > 100, "{ties_bf16} {ties_f16}");
    }
}

#[test]
fn c_twins_of_dropout() {
    sweep_both(Op::Dropout, Api::C);
}

#[test]
fn c_twins_of_alpha_dropout() {
    sweep_both(Op::Alpha, Api::C);
}

#[test]
fn c_twins_of_gaussian_dropout() {
    sweep_both(Op::Gaussian, Api::C);
}

#[test]
fn c_twins_of_uniform_dropout() {
    sweep_both(Op::Uniform, Api::C);
}

#[test]
fn c_twins_of_channel_dropout() {
    sweep_both(Op::Channel, Api::C);
}

#[test]
fn safe_api_dropout_on_halves() {
    sweep_both(Op::Dropout, Api::Safe);
}

#[test]
fn safe_api_alpha_dropout_on_halves() {
    sweep_both(Op::Alpha, Api::Safe);
}

#[test]
fn safe_api_gaussian_dropout_on_halves() {
    sweep_both(Op::Gaussian, Api::Safe);
}

#[test]
fn safe_api_uniform_dropout_on_halves() {
    sweep_both(Op::Uniform, Api::Safe);
}

#[test]
fn safe_api_channel_dropout_on_halves() {
    sweep_both(Op::Channel, Api::Safe);
}

/// Calls whose tensors take more than the caches of their threads hold (with a last-level cache
/// of up to 32 MiB and L2 caches of up to 1 MiB, 18.9 million half-precision elements in place)
/// write their output with streaming stores after a head that aligns it to a whole
/// vector of the element type: with the output 2 bytes past an aligned address (and in place),
/// every ISA, 1 and 3 threads, each twin still gives the float function's output rounded.
fn large<T: DropoutTwins>() {
    let n = (1 << 24) + (1 << 21) + 77;
    let channel_shape = Shape::new(2, 3, 3_150_001, Layout::Ncs);
    let most = channel_shape.elements().unwrap();
    let x = inputs::<T>(most, 7);
    let wide = widen(&x);
    let mut buffer = vec![T::round(0.0); most + 64];
    let aligned = (64 - buffer.as_ptr() as usize % 64) % 64 / 2;
    let start = aligned + 1;
    for isa in Isa::supported() {
        for threads in [1, 3] {
            let context = ctx(threads, isa);
            let cc = c_ctx(threads, isa);
            for op in [
                Op::Dropout,
                Op::Alpha,
                Op::Gaussian,
                Op::Uniform,
                Op::Channel,
            ] {
                let shape = if op == Op::Channel {
                    channel_shape
                } else {
                    Shape::new(1, n, 1, Layout::Ncs)
                };
                let m = shape.elements().unwrap();
                let param = if op == Op::Uniform { 0.5 } else { 0.25 };
                for backward in [false, true] {
                    let case = Case {
                        op,
                        backward,
                        shape,
                        param,
                        seed: 77,
                        offset: 1 << 50,
                    };
                    let mask = if op.masked() && !backward {
                        Mask::Out
                    } else {
                        Mask::Null
                    };
                    let (y32, m32) = run_f32(&context, &case, &wide[..m], mask);
                    for (in_place, api) in [(false, Api::C), (true, Api::Safe)] {
                        let dst = &mut buffer[start..start + m];
                        let got =
                            run_half_into(api, &context, cc, &case, &x[..m], dst, in_place, mask);
                        let what = format!(
                            "{} {isa:?} {threads} thread(s) {case:?} in place {in_place}",
                            T::NAME
                        );
                        assert_rounded_from(dst, &y32, &wide[..m], Nan::Exact, &what);
                        assert_eq!(got, m32, "{what}: mask");
                    }
                }
            }
        }
    }
}

#[test]
fn large_bf16_calls_stream_the_rounded_output() {
    large::<bf16>();
}

#[test]
fn large_f16_calls_stream_the_rounded_output() {
    large::<f16>();
}

// ---------------------------------------------------------------------------------------------
// The error contract of the twins.

/// The statuses of the twins of `T` for NULL, odd, overlapping and adjacent data, in the
/// contract's order, with nothing written on error.
fn errors<T: DropoutTwins>() {
    let n = 8;
    let shape = Shape::new(1, n, 1, Layout::Ncs);
    let empty = Shape::new(0, n, 1, Layout::Ncs);
    let mut data: Vec<T> = (0..64).map(|i| T::round(i as f32 + 0.5)).collect();
    let mut raw = vec![0u16; 40];
    let mut mask = vec![0xA5u8; 8];
    for op in [
        Op::Dropout,
        Op::Alpha,
        Op::Gaussian,
        Op::Uniform,
        Op::Channel,
    ] {
        for backward in [false, true] {
            let (good, bad) = match op {
                Op::Uniform => (0.5, -1.0),
                Op::Gaussian => (0.5, 1.0),
                _ => (0.5, 2.0),
            };
            let base = data.as_mut_ptr();
            let odd = raw.as_mut_ptr().cast::<u8>().wrapping_add(1).cast::<T>();
            let odd_in_x = base.cast::<u8>().wrapping_add(1).cast::<T>();
            let no_mask = null_mut::<u8>();
            // The mask (an output of the forward, an input of the backward) of the failing calls.
            let m_arg = if op.masked() {
                mask.as_mut_ptr()
            } else {
                no_mask
            };
            // (x, y, elements of shape, p, mask, want, what)
            #[allow(clippy::type_complexity)]
            let cases: Vec<(*const T, *mut T, Shape, f32, *mut u8, nk_status, &str)> = vec![
                (
                    std::ptr::null(),
                    base,
                    shape,
                    good,
                    m_arg,
                    NK_ERR_NULL_POINTER,
                    "NULL x",
                ),
                (
                    base,
                    null_mut(),
                    shape,
                    good,
                    m_arg,
                    NK_ERR_NULL_POINTER,
                    "NULL y",
                ),
                (
                    std::ptr::null(),
                    base,
                    shape,
                    bad,
                    m_arg,
                    NK_ERR_NULL_POINTER,
                    "NULL, bad p",
                ),
                (odd, base, shape, good, m_arg, NK_ERR_MISALIGNED, "odd x"),
                (base, odd, shape, good, m_arg, NK_ERR_MISALIGNED, "odd y"),
                (
                    base,
                    odd,
                    shape,
                    bad,
                    m_arg,
                    NK_ERR_BAD_ARGUMENT,
                    "odd y, bad p",
                ),
                (
                    base,
                    base.wrapping_add(4),
                    shape,
                    good,
                    m_arg,
                    NK_ERR_ALIAS,
                    "y = x + 4",
                ),
                (
                    base,
                    base.wrapping_add(1),
                    shape,
                    good,
                    m_arg,
                    NK_ERR_ALIAS,
                    "y = x + 1",
                ),
                (
                    base.wrapping_add(7),
                    base,
                    shape,
                    good,
                    m_arg,
                    NK_ERR_ALIAS,
                    "x = y + 7",
                ),
                (
                    base,
                    odd_in_x,
                    shape,
                    good,
                    m_arg,
                    NK_ERR_MISALIGNED,
                    "odd y inside x",
                ),
            ];
            for (x, y, sh, p, m, want, what) in cases {
                let before = bits(&data);
                let raw_before = raw.clone();
                // SAFETY: every non-NULL pointer is valid for n elements (the odd one within
                // `raw`); a failing call writes nothing.
                let status = unsafe {
                    T::c_call(op, backward, null_mut(), n, c_shape(sh), x, y, p, 1, 2, m)
                };
                let label = format!("{} {op:?} backward {backward}: {what}", T::NAME);
                assert_eq!(status, want, "{label}: {}", last_error());
                assert!(bits(&data) == before, "{label}: data written");
                assert_eq!(raw, raw_before, "{label}: written");
                assert_eq!(mask, [0xA5; 8], "{label}: mask written");
            }
            // Overlap counts 2 bytes per element: y right after x is fine, y == x too.
            let ok_cases: [(*const T, *mut T, &str); 3] = [
                (base, base.wrapping_add(n), "y right after x"),
                (base.wrapping_add(n), base, "x right after y"),
                (base, base, "in place"),
            ];
            for (x, y, what) in ok_cases {
                // SAFETY: both within `data`.
                let status = unsafe {
                    T::c_call(
                        op,
                        backward,
                        null_mut(),
                        n,
                        c_shape(shape),
                        x,
                        y,
                        good,
                        1,
                        2,
                        no_mask,
                    )
                };
                assert_eq!(
                    status,
                    NK_OK,
                    "{} {op:?}: {what}: {}",
                    T::NAME,
                    last_error()
                );
            }
            // No data: NULL pointers are fine.
            let (n0, sh0) = if op == Op::Channel {
                (0, empty)
            } else {
                (0, shape)
            };
            // SAFETY: nothing is read or written.
            let status = unsafe {
                T::c_call(
                    op,
                    backward,
                    null_mut(),
                    n0,
                    c_shape(sh0),
                    std::ptr::null(),
                    null_mut(),
                    good,
                    1,
                    u64::MAX,
                    no_mask,
                )
            };
            assert_eq!(status, NK_OK, "{} {op:?}: no data", T::NAME);
            // A written mask that overlaps y.
            if op.masked() && !backward {
                let y = base.wrapping_add(16);
                let before = bits(&data);
                // SAFETY: within `data`; a failing call writes nothing.
                let status = unsafe {
                    T::c_call(
                        op,
                        false,
                        null_mut(),
                        n,
                        c_shape(shape),
                        base,
                        y,
                        good,
                        1,
                        2,
                        y.cast::<u8>().wrapping_add(3),
                    )
                };
                assert_eq!(status, NK_ERR_ALIAS, "{} {op:?}: mask inside y", T::NAME);
                assert!(bits(&data) == before);
            }
        }
    }
}

#[test]
fn bf16_twins_keep_the_error_contract() {
    errors::<bf16>();
}

#[test]
fn f16_twins_keep_the_error_contract() {
    errors::<f16>();
}
