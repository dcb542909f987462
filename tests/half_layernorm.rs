//! Layer norm and RMS norm on bf16 and f16 data, through the safe API and the C twins
//! (`nk_layernorm_forward_bf16`, ...): every output is bitwise the `f32` function's output on the
//! widened input, rounded once to the type (nearest even); saved statistics and parameter
//! gradients are bitwise those of the `f32` call. Every ISA this CPU has, 1 and 3 threads, in
//! place and out of place, odd shapes, shapes split over tasks, rows wide enough for the separate
//! column pass, streaming stores, and data with large offsets, NaN, infinities, subnormals of the
//! type, values near the f16 maximum that overflow after a big gamma, and -0.0. The C twins are
//! also checked for the error contract (misaligned, aliasing, NULL; nothing written on error).

// The C functions: built with the default `capi` feature.
#![cfg(feature = "capi")]

mod common;

use common::arena::Arena;
use common::check::ctx;
use common::data::Gen;
use common::half::{Half, Nan, assert_rounded, narrow, widen};
use normkit::batchnorm::{Affine, SavedStats};
use normkit::ffi::nk_status::{self, *};
use normkit::ffi::*;
use normkit::layernorm::{self, BackwardIo};
use normkit::{Context, Element, InOut, Isa, bf16, f16, rmsnorm};
use std::ptr::{null, null_mut};

/// `got` is `want` bit for bit, except that a NaN may be any NaN: which NaN an operation on
/// NaNs gives is not fixed (the compiler may swap the operands of an addition, and x86 returns
/// the first operand's NaN), so NaN payloads and signs can differ between the f32 and the 16-bit
/// instances of a kernel.
#[track_caller]
fn assert_same(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else {
            g.to_bits() == w.to_bits()
        };
        assert!(
            ok,
            "{what}: element {i} of {}: got {g:e}, want {w:e}",
            got.len()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Data.

/// `rows x cols` values of `E`: every row its own large offset and spread; with `special`, rows
/// of NaN, infinities, subnormals, values near the f16 maximum, -0.0, tiny values.
fn data<E: Half>(g: &mut Gen, rows: usize, cols: usize, special: bool) -> Vec<E> {
    let mut x = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let o = g.range(-3000.0, 3000.0);
        let s = g.range(0.5, 50.0);
        x.extend(narrow::<E>(&g.normals(cols, o, s)));
    }
    if !special || cols == 0 {
        return x;
    }
    let at = |r: usize, c: usize| r * cols + c.min(cols - 1);
    let kinds = 8;
    for r in 0..rows.min(kinds) {
        let row = &mut x[r * cols..(r + 1) * cols];
        match r {
            0 => row[0] = E::round(f32::NAN),
            1 => row[cols / 2] = E::round(f32::INFINITY),
            2 => row[cols - 1] = E::round(f32::NEG_INFINITY),
            3 => {
                // Subnormals of the type, both signs.
                for v in row.iter_mut() {
                    let b = 1 + g.below(E::MAX_SUBNORMAL as usize) as u16;
                    let sign = if g.below(2) == 1 { 0x8000 } else { 0 };
                    *v = E::from_bits(b | sign);
                }
            }
            4 => {
                // Near the f16 maximum: normalized with a big gamma, they overflow f16.
                for (j, v) in row.iter_mut().enumerate() {
                    *v = E::round([65504.0, -65504.0, 65000.0, -60000.0][j % 4]);
                }
            }
            5 => row.fill(E::round(-0.0)),
            6 => {
                // Tiny values: an inverse spread near the top of the range for bf16 (the f64
                // paths of the forward with eps = 0 and of the backward's dx).
                for v in row.iter_mut() {
                    *v = E::round((1e-20 * g.normal()) as f32);
                }
            }
            _ => {
                // Values near one with -0.0 among them.
                for v in row.iter_mut() {
                    *v = E::round(if g.below(3) == 0 {
                        -0.0
                    } else {
                        g.range(-2.0, 2.0) as f32
                    });
                }
            }
        }
    }
    // -0.0 scattered over the rest.
    for r in kinds.min(rows)..rows {
        x[at(r, g.below(cols))] = E::round(-0.0);
    }
    x
}

/// The output gradient: normal values, with `special` a NaN, an infinity, a subnormal and -0.0.
fn grad<E: Half>(g: &mut Gen, rows: usize, cols: usize, special: bool) -> Vec<E> {
    let mut dy: Vec<E> = narrow(&g.normals(rows * cols, 0.0, 1.0));
    if special && !dy.is_empty() {
        let n = dy.len();
        dy[n / 3] = E::round(-0.0);
        dy[n / 2] = E::from_bits(1);
        if rows > 8 {
            // Rows past the special rows of `data`: non-finite gradients in rows of finite x.
            dy[8 * cols] = E::round(f32::NAN);
            if rows > 9 {
                dy[9 * cols] = E::round(f32::INFINITY);
            }
        }
    }
    dy
}

/// Parameter variants: none; moderate gamma and beta; gamma only; a big gamma (f16 overflow);
/// a huge gamma (the backward's `dx` coefficients beyond f32).
fn params(g: &mut Gen, cols: usize, variant: usize) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    match variant {
        0 => (None, None),
        1 => (
            Some(g.uniforms(cols, 0.5, 2.0)),
            Some(g.uniforms(cols, -1.0, 1.0)),
        ),
        2 => (Some(g.uniforms(cols, -2.0, 2.0)), None),
        3 => (
            Some(g.uniforms(cols, 1e4, 1e5)),
            Some(g.uniforms(cols, -1.0, 1.0)),
        ),
        _ => (Some(g.uniforms(cols, 1e29, 1e30)), None),
    }
}
const PARAMS: usize = 5;

/// Shapes: single elements, one column, one row, sizes not multiples of 8 or 16, more rows than
/// a block of column sums, rows split over several tasks (>= 2^15 elements), and rows wider than
/// the fused column sums (8192) split over tasks.
const SHAPES: [(usize, usize); 10] = [
    (1, 1),
    (9, 1),
    (1, 7),
    (1, 300),
    (10, 17),
    (11, 33),
    (70, 3),
    (3, 1000),
    (130, 257),
    (5, 8195),
];

/// The cases of (special data, eps): plain data; special data; special data with eps = 0 (the
/// forward's f64 path for rows whose inverse spread exceeds f32).
const DATA_CASES: [(bool, f32); 3] = [(false, 1e-5), (true, 1e-5), (true, 0.0)];

// ---------------------------------------------------------------------------------------------
// Forward.

/// The saved statistics and output of a forward.
struct FwdOut<E> {
    y: Vec<E>,
    mean: Vec<f32>,
    inv: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
fn forward<E: Element + Copy>(
    cx: &Context,
    centered: bool,
    (rows, cols): (usize, usize),
    x: &[E],
    in_place: bool,
    (gamma, beta): (Option<&[f32]>, Option<&[f32]>),
    eps: f32,
    zero: E,
) -> FwdOut<E> {
    let mut y = if in_place {
        x.to_vec()
    } else {
        vec![zero; x.len()]
    };
    let io = if in_place {
        InOut::InPlace(&mut y[..])
    } else {
        InOut::Separate { x, y: &mut y[..] }
    };
    let mut mean = vec![f32::from_bits(0x7FC0_1234); rows];
    let mut inv = vec![f32::from_bits(0x7FC0_4321); rows];
    if centered {
        layernorm::forward(
            cx,
            rows,
            cols,
            io,
            Affine { gamma, beta },
            eps,
            SavedStats {
                mean: Some(&mut mean),
                invstd: Some(&mut inv),
            },
        )
        .unwrap();
    } else {
        rmsnorm::forward(cx, rows, cols, io, gamma, eps, Some(&mut inv)).unwrap();
    }
    FwdOut { y, mean, inv }
}

fn check_forward<E: Half>(seed: u64) {
    let mut g = Gen::new(seed);
    for &(rows, cols) in &SHAPES {
        for &(special, eps) in &DATA_CASES {
            let x: Vec<E> = data(&mut g, rows, cols, special);
            let xw = widen(&x);
            for variant in 0..PARAMS {
                let (gamma, beta) = params(&mut g, cols, variant);
                for centered in [true, false] {
                    let beta = if centered { beta.as_deref() } else { None };
                    let aff = (gamma.as_deref(), beta);
                    for isa in Isa::supported() {
                        for threads in [1, 3] {
                            let cx = ctx(threads, isa);
                            let want =
                                forward(&cx, centered, (rows, cols), &xw, false, aff, eps, 0.0);
                            for in_place in [false, true] {
                                let what = format!(
                                    "{} forward {rows}x{cols} special={special} eps={eps} \
                                     params={variant} {isa:?} threads={threads} in_place={in_place}",
                                    if centered { "layer" } else { "rms" },
                                );
                                let got = forward(
                                    &cx,
                                    centered,
                                    (rows, cols),
                                    &x,
                                    in_place,
                                    aff,
                                    eps,
                                    E::round(0.0),
                                );
                                assert_rounded(&got.y, &want.y, Nan::Quiet, &what);
                                assert_same(&got.inv, &want.inv, &format!("{what}: inv"));
                                if centered {
                                    assert_same(&got.mean, &want.mean, &format!("{what}: mean"));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn bf16_forward_is_the_rounded_f32_forward() {
    check_forward::<bf16>(1);
}

#[test]
fn f16_forward_is_the_rounded_f32_forward() {
    check_forward::<f16>(2);
}

/// Outputs of calls whose tensors take more than the caches of their threads hold (with a
/// last-level cache of up to 32 MiB and L2 caches of up to 1 MiB, 18 million half-precision
/// elements in place) are written with streaming stores (whole vectors aligned, partial vectors
/// around them): still the rounded f32 output.
fn check_streaming<E: Half>(seed: u64) {
    let mut g = Gen::new(seed);
    let (rows, cols) = (4400, 4101);
    let x: Vec<E> = data(&mut g, rows, cols, true);
    let xw = widen(&x);
    let (gamma, beta) = params(&mut g, cols, 1);
    let aff = (gamma.as_deref(), beta.as_deref());
    let cx = ctx(3, Isa::best());
    for centered in [true, false] {
        let want = forward(&cx, centered, (rows, cols), &xw, false, aff, 1e-5, 0.0);
        for in_place in [false, true] {
            let got = forward(
                &cx,
                centered,
                (rows, cols),
                &x,
                in_place,
                aff,
                1e-5,
                E::round(0.0),
            );
            let what = format!("streaming forward centered={centered} in_place={in_place}");
            assert_rounded(&got.y, &want.y, Nan::Quiet, &what);
            assert_same(&got.inv, &want.inv, &what);
            assert_same(&got.mean, &want.mean, &what);
        }
    }
}

#[test]
fn streaming_forward_is_the_rounded_f32_forward() {
    check_streaming::<bf16>(3);
    check_streaming::<f16>(4);
}

// ---------------------------------------------------------------------------------------------
// Backward.

/// How the gradient is asked for.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// No `dx`, the parameter gradients only.
    SumsOnly,
    /// `dx` separate from `dy`, with the parameter gradients.
    Separate,
    /// `dx` over `dy`, without parameter gradients.
    InPlace,
    /// `dx` over `dy`, with the parameter gradients.
    InPlaceSums,
}
const MODES: [Mode; 4] = [
    Mode::SumsOnly,
    Mode::Separate,
    Mode::InPlace,
    Mode::InPlaceSums,
];

struct BwdOut<E> {
    dx: Vec<E>,
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
fn backward<E: Element + Copy>(
    cx: &Context,
    centered: bool,
    (rows, cols): (usize, usize),
    x: &[E],
    dy: &[E],
    mode: Mode,
    gamma: Option<&[f32]>,
    (mean, inv): (&[f32], &[f32]),
    zero: E,
) -> BwdOut<E> {
    let mut dx = match mode {
        Mode::InPlace | Mode::InPlaceSums => dy.to_vec(),
        _ => vec![zero; dy.len()],
    };
    let sums = !matches!(mode, Mode::InPlace);
    let mut dgamma = vec![f32::from_bits(0x7FC0_0001); cols];
    let mut dbeta = vec![f32::from_bits(0x7FC0_0002); cols];
    let grad = match mode {
        Mode::SumsOnly => BackwardIo::DyOnly(dy),
        Mode::Separate => BackwardIo::WithDx(InOut::Separate { x: dy, y: &mut dx }),
        Mode::InPlace | Mode::InPlaceSums => BackwardIo::WithDx(InOut::InPlace(&mut dx)),
    };
    let dg = sums.then_some(&mut dgamma[..]);
    if centered {
        let db = sums.then_some(&mut dbeta[..]);
        layernorm::backward(cx, rows, cols, x, grad, gamma, mean, inv, dg, db).unwrap();
    } else {
        rmsnorm::backward(cx, rows, cols, x, grad, gamma, inv, dg).unwrap();
    }
    BwdOut { dx, dgamma, dbeta }
}

fn check_backward<E: Half>(seed: u64) {
    let mut g = Gen::new(seed);
    for &(rows, cols) in &SHAPES {
        for &(special, eps) in &DATA_CASES {
            let x: Vec<E> = data(&mut g, rows, cols, special);
            let dy: Vec<E> = grad(&mut g, rows, cols, special);
            let (xw, dyw) = (widen(&x), widen(&dy));
            for variant in [0, 2, 3, 4] {
                let (gamma, _) = params(&mut g, cols, variant);
                let gamma = gamma.as_deref();
                for centered in [true, false] {
                    for isa in Isa::supported() {
                        for threads in [1, 3] {
                            let cx = ctx(threads, isa);
                            // The saved statistics of the f32 forward on the widened input (the
                            // twin's, as the forward test shows).
                            let f = forward(
                                &cx,
                                centered,
                                (rows, cols),
                                &xw,
                                false,
                                (None, None),
                                eps,
                                0.0,
                            );
                            let stats = (&f.mean[..], &f.inv[..]);
                            for mode in MODES {
                                let what = format!(
                                    "{} backward {rows}x{cols} special={special} eps={eps} \
                                     params={variant} {isa:?} threads={threads} {mode:?}",
                                    if centered { "layer" } else { "rms" },
                                );
                                let want = backward(
                                    &cx,
                                    centered,
                                    (rows, cols),
                                    &xw,
                                    &dyw,
                                    mode,
                                    gamma,
                                    stats,
                                    0.0,
                                );
                                let got = backward(
                                    &cx,
                                    centered,
                                    (rows, cols),
                                    &x,
                                    &dy,
                                    mode,
                                    gamma,
                                    stats,
                                    E::round(0.0),
                                );
                                if !matches!(mode, Mode::SumsOnly) {
                                    assert_rounded(&got.dx, &want.dx, Nan::Quiet, &what);
                                }
                                assert_same(&got.dgamma, &want.dgamma, &format!("{what}: dgamma"));
                                assert_same(&got.dbeta, &want.dbeta, &format!("{what}: dbeta"));
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn bf16_backward_is_the_rounded_f32_backward() {
    check_backward::<bf16>(5);
}

#[test]
fn f16_backward_is_the_rounded_f32_backward() {
    check_backward::<f16>(6);
}

/// The twins round: a bf16 output is not the f32 output's upper half (truncation), and an f16
/// output of a big gamma overflows to infinity. (So that the bitwise checks above are not
/// vacuous: they compare against rounded values that differ from truncated ones.)
#[test]
fn outputs_are_rounded_to_nearest_and_overflow_to_infinity() {
    let mut g = Gen::new(7);
    let (rows, cols) = (4, 301);
    let x: Vec<bf16> = data(&mut g, rows, cols, false);
    let cx = ctx(1, Isa::best());
    let want = forward(
        &cx,
        true,
        (rows, cols),
        &widen(&x),
        false,
        (None, None),
        1e-5,
        0.0,
    );
    let got = forward(
        &cx,
        true,
        (rows, cols),
        &x,
        false,
        (None, None),
        1e-5,
        bf16::round(0.0),
    );
    let truncated = got
        .y
        .iter()
        .zip(&want.y)
        .filter(|(g, w)| g.bits() != (w.to_bits() >> 16) as u16)
        .count();
    assert!(
        truncated > rows * cols / 10,
        "only {truncated} outputs differ from truncation"
    );

    let x: Vec<f16> = [65504.0f32, -65504.0, 0.0, 1.0].map(f16::round).to_vec();
    let gamma = [1e5f32; 4];
    let got = forward(
        &cx,
        false,
        (1, 4),
        &x,
        false,
        (Some(&gamma), None),
        1e-5,
        f16::round(0.0),
    );
    assert_eq!(got.y[0].wide(), f32::INFINITY);
    assert_eq!(got.y[1].wide(), f32::NEG_INFINITY);
    assert_eq!(got.y[2].bits(), 0);
}

// ---------------------------------------------------------------------------------------------
// The C twins.

/// One of the eight C twins.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Twin {
    LnForward,
    LnBackward,
    RmsForward,
    RmsBackward,
}
const TWINS: [Twin; 4] = [
    Twin::LnForward,
    Twin::LnBackward,
    Twin::RmsForward,
    Twin::RmsBackward,
];

/// Every argument of a twin; data pointers as bytes, cast to the type's struct at the call.
#[derive(Clone, Copy)]
struct Args {
    rows: usize,
    cols: usize,
    x: *mut u8,
    y: *mut u8,
    dy: *mut u8,
    dx: *mut u8,
    gamma: *mut f32,
    beta: *mut f32,
    eps: f32,
    mean: *mut f32,
    inv: *mut f32,
    dgamma: *mut f32,
    dbeta: *mut f32,
}

/// The C twins of one data type.
trait CTwins: Half {
    /// Calls `f`'s twin for this type.
    ///
    /// # Safety
    /// Valid pointers (or NULL / misplaced on purpose, inside memory the caller owns).
    unsafe fn call(f: Twin, a: Args) -> nk_status;
}

impl CTwins for bf16 {
    unsafe fn call(f: Twin, a: Args) -> nk_status {
        let c = |p: *mut u8| p.cast::<nk_bf16>();
        // SAFETY: forwarded.
        unsafe {
            match f {
                Twin::LnForward => nk_layernorm_forward_bf16(
                    null_mut(),
                    a.rows,
                    a.cols,
                    c(a.x),
                    c(a.y),
                    a.gamma,
                    a.beta,
                    a.eps,
                    a.mean,
                    a.inv,
                ),
                Twin::LnBackward => nk_layernorm_backward_bf16(
                    null_mut(),
                    a.rows,
                    a.cols,
                    c(a.x),
                    c(a.dy),
                    c(a.dx),
                    a.gamma,
                    a.mean,
                    a.inv,
                    a.dgamma,
                    a.dbeta,
                ),
                Twin::RmsForward => nk_rmsnorm_forward_bf16(
                    null_mut(),
                    a.rows,
                    a.cols,
                    c(a.x),
                    c(a.y),
                    a.gamma,
                    a.eps,
                    a.inv,
                ),
                Twin::RmsBackward => nk_rmsnorm_backward_bf16(
                    null_mut(),
                    a.rows,
                    a.cols,
                    c(a.x),
                    c(a.dy),
                    c(a.dx),
                    a.gamma,
                    a.inv,
                    a.dgamma,
                ),
            }
        }
    }
}

impl CTwins for f16 {
    unsafe fn call(f: Twin, a: Args) -> nk_status {
        let c = |p: *mut u8| p.cast::<nk_f16>();
        // SAFETY: forwarded.
        unsafe {
            match f {
                Twin::LnForward => nk_layernorm_forward_f16(
                    null_mut(),
                    a.rows,
                    a.cols,
                    c(a.x),
                    c(a.y),
                    a.gamma,
                    a.beta,
                    a.eps,
                    a.mean,
                    a.inv,
                ),
                Twin::LnBackward => nk_layernorm_backward_f16(
                    null_mut(),
                    a.rows,
                    a.cols,
                    c(a.x),
                    c(a.dy),
                    c(a.dx),
                    a.gamma,
                    a.mean,
                    a.inv,
                    a.dgamma,
                    a.dbeta,
                ),
                Twin::RmsForward => nk_rmsnorm_forward_f16(
                    null_mut(),
                    a.rows,
                    a.cols,
                    c(a.x),
                    c(a.y),
                    a.gamma,
                    a.eps,
                    a.inv,
                ),
                Twin::RmsBackward => nk_rmsnorm_backward_f16(
                    null_mut(),
                    a.rows,
                    a.cols,
                    c(a.x),
                    c(a.dy),
                    c(a.dx),
                    a.gamma,
                    a.inv,
                    a.dgamma,
                ),
            }
        }
    }
}

/// The `float` function of a twin, on f32 buffers (same argument layout).
///
/// # Safety
/// Valid pointers for the shape.
unsafe fn call_f32(f: Twin, a: Args) -> nk_status {
    let c = |p: *mut u8| p.cast::<f32>();
    // SAFETY: forwarded.
    unsafe {
        match f {
            Twin::LnForward => nk_layernorm_forward(
                null_mut(),
                a.rows,
                a.cols,
                c(a.x),
                c(a.y),
                a.gamma,
                a.beta,
                a.eps,
                a.mean,
                a.inv,
            ),
            Twin::LnBackward => nk_layernorm_backward(
                null_mut(),
                a.rows,
                a.cols,
                c(a.x),
                c(a.dy),
                c(a.dx),
                a.gamma,
                a.mean,
                a.inv,
                a.dgamma,
                a.dbeta,
            ),
            Twin::RmsForward => nk_rmsnorm_forward(
                null_mut(),
                a.rows,
                a.cols,
                c(a.x),
                c(a.y),
                a.gamma,
                a.eps,
                a.inv,
            ),
            Twin::RmsBackward => nk_rmsnorm_backward(
                null_mut(),
                a.rows,
                a.cols,
                c(a.x),
                c(a.dy),
                c(a.dx),
                a.gamma,
                a.inv,
                a.dgamma,
            ),
        }
    }
}

const R: usize = 5;
const C: usize = 37;
/// Bytes per buffer of the arena (room for `R * C` f32 values and a moved pointer).
const SLOT: usize = 1024;

/// Buffers of a C call: slots of an arena (see `common::arena`).
impl Arena {
    fn new_slots() -> Arena {
        Arena::new(11 * SLOT)
    }

    /// Slot `k`: its address, 64-byte aligned.
    fn slot(&mut self, k: usize) -> *mut u8 {
        assert!(k < 11);
        self.at(k * SLOT)
    }

    /// The arguments of a `R x C` call over the slots, `eps = 1e-5`.
    fn args(&mut self) -> Args {
        Args {
            rows: R,
            cols: C,
            x: self.slot(0),
            y: self.slot(1),
            dy: self.slot(2),
            dx: self.slot(3),
            gamma: self.slot(4).cast(),
            beta: self.slot(5).cast(),
            eps: 1e-5,
            mean: self.slot(6).cast(),
            inv: self.slot(7).cast(),
            dgamma: self.slot(8).cast(),
            dbeta: self.slot(9).cast(),
        }
    }
}

/// Writes `v` at `p`.
fn put<T: Copy>(p: *mut u8, v: &[T]) {
    // SAFETY: every use writes inside an arena slot or a vector of sufficient length.
    unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), p.cast::<T>(), v.len()) }
}

/// Reads `n` values at `p`.
fn get<T: Copy>(p: *const u8, n: usize) -> Vec<T> {
    // SAFETY: as `put`.
    unsafe { std::slice::from_raw_parts(p.cast::<T>(), n).to_vec() }
}

/// Each twin's results on the default context are those of the `float` function on the widened
/// input, rounded; out of place and in place.
fn check_c_results<E: CTwins>(seed: u64) {
    let mut g = Gen::new(seed);
    let n = R * C;
    let x: Vec<E> = data(&mut g, R, C, true);
    let dy: Vec<E> = grad(&mut g, R, C, true);
    let gamma = g.uniforms(C, 0.5, 2.0);
    let beta = g.uniforms(C, -1.0, 1.0);
    for f in TWINS {
        for in_place in [false, true] {
            // The float call on f32 buffers.
            let mut fa = Arena::new_slots();
            let a32 = fa.args();
            put(a32.x, &widen(&x));
            put(a32.dy, &widen(&dy));
            put(a32.gamma.cast(), &gamma);
            put(a32.beta.cast(), &beta);
            let mut stats = Arena::new_slots();
            // Saved statistics for the backward: the float forward's.
            // SAFETY: arena pointers of the shape.
            unsafe {
                let s = stats.args();
                let mut y = vec![0f32; n];
                let w = widen(&x);
                assert_eq!(
                    nk_layernorm_forward(
                        null_mut(),
                        R,
                        C,
                        w.as_ptr(),
                        y.as_mut_ptr(),
                        null(),
                        null(),
                        1e-5,
                        s.mean,
                        s.inv,
                    ),
                    NK_OK
                );
                if matches!(f, Twin::RmsBackward) {
                    assert_eq!(
                        nk_rmsnorm_forward(
                            null_mut(),
                            R,
                            C,
                            w.as_ptr(),
                            y.as_mut_ptr(),
                            null(),
                            1e-5,
                            s.inv
                        ),
                        NK_OK
                    );
                }
                if matches!(f, Twin::LnBackward | Twin::RmsBackward) {
                    put(a32.mean.cast(), &get::<f32>(s.mean.cast(), R));
                    put(a32.inv.cast(), &get::<f32>(s.inv.cast(), R));
                }
            }
            let mut ha = Arena::new_slots();
            let mut ah = ha.args();
            put(ah.x, &x);
            put(ah.dy, &dy);
            put(ah.gamma.cast(), &gamma);
            put(ah.beta.cast(), &beta);
            put(ah.mean.cast(), &get::<f32>(a32.mean.cast(), R));
            put(ah.inv.cast(), &get::<f32>(a32.inv.cast(), R));
            let mut a32 = a32;
            if in_place {
                a32.y = a32.x;
                a32.dx = a32.dy;
                ah.y = ah.x;
                ah.dx = ah.dy;
            }
            // SAFETY: arena pointers of the shape.
            unsafe {
                assert_eq!(call_f32(f, a32), NK_OK, "{f:?} float");
                assert_eq!(E::call(f, ah), NK_OK, "{f:?} {}", E::NAME);
            }
            let what = format!("C {f:?} in_place={in_place}");
            let (out32, outh) = match f {
                Twin::LnForward | Twin::RmsForward => (a32.y, ah.y),
                _ => (a32.dx, ah.dx),
            };
            assert_rounded(&get::<E>(outh, n), &get::<f32>(out32, n), Nan::Quiet, &what);
            for (p, q, len, name) in [
                (a32.mean, ah.mean, R, "mean"),
                (a32.inv, ah.inv, R, "inv"),
                (a32.dgamma, ah.dgamma, C, "dgamma"),
                (a32.dbeta, ah.dbeta, C, "dbeta"),
            ] {
                assert_same(
                    &get::<f32>(q.cast(), len),
                    &get::<f32>(p.cast(), len),
                    &format!("{what}: {name}"),
                );
            }
        }
    }
}

#[test]
fn c_twins_are_the_rounded_float_functions() {
    check_c_results::<bf16>(8);
    check_c_results::<f16>(9);
}

/// The error contract of the twins: NULL data, odd addresses, overlaps (output over an input,
/// `dx == x`), and precedence; no byte of any buffer written on error; then a good call works.
fn check_c_errors<E: CTwins>() {
    let mut arena = Arena::new_slots();
    let good = arena.args();
    let odd = |p: *mut u8| p.wrapping_add(1);
    let two = |p: *mut u8| p.wrapping_add(2);
    for f in TWINS {
        let forward = matches!(f, Twin::LnForward | Twin::RmsForward);
        let mut cases: Vec<(Args, nk_status, &str)> = Vec::new();
        let mut a = good;
        a.x = null_mut();
        cases.push((a, NK_ERR_NULL_POINTER, "NULL x"));
        let mut a = good;
        a.x = odd(a.x);
        cases.push((a, NK_ERR_MISALIGNED, "odd x"));
        if forward {
            let mut a = good;
            a.y = null_mut();
            cases.push((a, NK_ERR_NULL_POINTER, "NULL y"));
            let mut a = good;
            a.y = odd(a.y);
            cases.push((a, NK_ERR_MISALIGNED, "odd y"));
            let mut a = good;
            a.y = two(a.x);
            cases.push((a, NK_ERR_ALIAS, "y one element past x"));
            let mut a = good;
            a.x = null_mut();
            a.y = odd(a.y);
            cases.push((a, NK_ERR_NULL_POINTER, "NULL x before odd y"));
            let mut a = good;
            a.y = odd(a.x);
            cases.push((
                a,
                NK_ERR_MISALIGNED,
                "odd y overlapping x: misaligned first",
            ));
        } else {
            let mut a = good;
            a.dy = null_mut();
            cases.push((a, NK_ERR_NULL_POINTER, "NULL dy"));
            let mut a = good;
            a.dy = odd(a.dy);
            cases.push((a, NK_ERR_MISALIGNED, "odd dy"));
            let mut a = good;
            a.dx = odd(a.dx);
            cases.push((a, NK_ERR_MISALIGNED, "odd dx"));
            let mut a = good;
            a.dx = two(a.dy);
            cases.push((a, NK_ERR_ALIAS, "dx one element past dy"));
            let mut a = good;
            a.dx = a.x;
            cases.push((a, NK_ERR_ALIAS, "dx == x"));
            let mut a = good;
            a.inv = null_mut();
            cases.push((a, NK_ERR_NULL_POINTER, "NULL saved statistics"));
            let mut a = good;
            a.dgamma = a.gamma;
            cases.push((a, NK_ERR_ALIAS, "dgamma == gamma"));
        }
        let mut a = good;
        a.gamma = a.gamma.cast::<u8>().wrapping_add(2).cast();
        cases.push((a, NK_ERR_MISALIGNED, "gamma not 4-byte aligned"));
        let mut a = good;
        a.rows = usize::MAX / 2;
        a.x = null_mut();
        cases.push((a, NK_ERR_NULL_POINTER, "NULL x before overflow"));
        let mut a = good;
        a.rows = usize::MAX / 2;
        cases.push((a, NK_ERR_OVERFLOW, "overflow"));
        if forward {
            let mut a = good;
            a.eps = -1.0;
            a.x = odd(a.x);
            cases.push((a, NK_ERR_BAD_ARGUMENT, "bad eps before odd x"));
        }
        for (a, want, name) in cases {
            let before = arena.bytes();
            // SAFETY: arena pointers, misplaced or NULL on purpose.
            let got = unsafe { E::call(f, a) };
            assert_eq!(got, want, "{} {f:?}: {name}", E::NAME);
            assert!(
                arena.bytes() == before,
                "{} {f:?}: {name}: a byte changed on error",
                E::NAME
            );
        }
        // The good arguments work (garbage data, but the call is valid).
        // SAFETY: arena pointers of the shape.
        assert_eq!(
            unsafe { E::call(f, good) },
            NK_OK,
            "{} {f:?}: good call",
            E::NAME
        );
        // Empty calls accept NULL data.
        let mut a = good;
        a.rows = 0;
        (a.x, a.y, a.dy, a.dx) = (null_mut(), null_mut(), null_mut(), null_mut());
        // SAFETY: no data is read.
        assert_eq!(
            unsafe { E::call(f, a) },
            NK_OK,
            "{} {f:?}: no rows",
            E::NAME
        );
    }
}

#[test]
fn c_twins_keep_the_error_contract() {
    check_c_errors::<bf16>();
    check_c_errors::<f16>();
}
