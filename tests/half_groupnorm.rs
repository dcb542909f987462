//! Group norm and instance norm on bf16 and f16 data: the safe API and the C twins
//! (`nk_groupnorm_forward_bf16`, ...) against the f32 functions on the widened input. Outputs
//! must be bitwise the f32 results rounded once (nearest even); statistics and parameter
//! gradients bitwise the f32 ones.

// The C functions: built with the default `capi` feature.
#![cfg(feature = "capi")]

mod common;

use common::arena::SENTINEL;
use common::check::{assert_bits, c_shape, ctx, isa_value};
use common::data::Gen;
use common::half::{Half, Nan, assert_rounded, bits, narrow, widen};
use common::reference::index;
use normkit::ffi::nk_status::{self, *};
use normkit::ffi::*;
use normkit::groupnorm::{self, Affine, BackwardIo, SavedStats};
use normkit::{Context, Element, InOut, Isa, Layout, Shape, bf16, f16, instancenorm};
use std::ptr::{null, null_mut};

// ---------------------------------------------------------------------------------------------
// Cases.

#[derive(Clone, Debug)]
struct Case<H> {
    shape: Shape,
    groups: usize,
    /// The data in the half type, and widened.
    x: Vec<H>,
    xw: Vec<f32>,
    dy: Vec<H>,
    dyw: Vec<f32>,
    gamma: Option<Vec<f32>>,
    beta: Option<Vec<f32>>,
    eps: f32,
}

/// Group kinds: the values of one (n, group).
const KINDS: usize = 7;

impl<H: Half> Case<H> {
    /// `kinds`: whether groups get special contents (NaN, infinities, subnormals, values near
    /// the type's maximum, zeros of both signs), by `(n * groups + g + variant) % KINDS`.
    fn new(
        (batch, channels, spatial, groups): (usize, usize, usize, usize),
        layout: Layout,
        variant: usize,
        seed: u64,
    ) -> Case<H> {
        let mut g = Gen::new(seed);
        let shape = Shape::new(batch, channels, spatial, layout);
        let per_group = channels / groups;
        let n_el = batch * channels * spatial;
        let mut x = vec![0f32; n_el];
        let mut dy = g.normals(n_el, 0.3, 1.0);
        // f16 holds at most 65504: large offsets relative to the spread, within the range.
        let big = if H::NAME == "f16" { 3000.0 } else { 1.0e6 };
        for n in 0..batch {
            for gr in 0..groups {
                let kind = if variant == 0 {
                    0
                } else {
                    (n * groups + gr + variant) % KINDS
                };
                let offset = big * g.range(-1.0, 1.0);
                for ch in gr * per_group..(gr + 1) * per_group {
                    let sc = g.range(0.5, 8.0);
                    for sp in 0..spatial {
                        let i = index(&shape, n, ch, sp);
                        let k = ch * spatial + sp;
                        x[i] = match kind {
                            // Large offset, small spread.
                            0 => (offset + sc * g.normal()) as f32,
                            // One NaN.
                            1 if k == 0 => f32::NAN,
                            // One +inf, one -inf.
                            2 if k == 0 => f32::INFINITY,
                            3 if k == 0 => f32::NEG_INFINITY,
                            1..=3 => (sc * g.normal()) as f32,
                            // Subnormals of the type and zeros of both signs.
                            4 => match k % 4 {
                                0 => -0.0,
                                1 => H::MIN_SUBNORMAL * (1 + g.below(50)) as f32,
                                2 => -H::MIN_SUBNORMAL * (1 + g.below(50)) as f32,
                                _ => 0.0,
                            },
                            // Near the type's maximum, both signs; dy large too.
                            5 => {
                                dy[i] = (g.normal() * 3.0e4) as f32;
                                let m = H::MAX.min(65504.0);
                                if g.below(2) == 0 { m } else { -m * 0.97 }
                            }
                            // All -0.0 (variance 0), dy -0.0.
                            _ => {
                                dy[i] = -0.0;
                                -0.0
                            }
                        };
                    }
                }
            }
        }
        let x: Vec<H> = narrow(&x);
        let dy: Vec<H> = narrow(&dy);
        // gamma: ordinary values, a large one (overflows the type after normalization of values
        // near 65504 for f16; 1e38 for bf16), tiny ones (subnormal outputs).
        let gamma = (0..channels)
            .map(|c| match (c + variant) % 6 {
                0 => 1.0e5,
                1 => 1.0e-6,
                2 if H::NAME == "bf16" => 3.0e38,
                3 => 1.0e-39,
                _ => g.range(-2.0, 2.0) as f32,
            })
            .collect();
        let beta = g.uniforms(channels, -1.0, 1.0);
        Case {
            shape,
            groups,
            xw: widen(&x),
            x,
            dyw: widen(&dy),
            dy,
            gamma: (variant != 2).then_some(gamma),
            beta: (variant != 1).then_some(beta),
            eps: if variant == 2 { 0.0 } else { 1e-5 },
        }
    }

    fn affine(&self) -> Affine<'_> {
        Affine {
            gamma: self.gamma.as_deref(),
            beta: self.beta.as_deref(),
        }
    }
}

struct Fwd<E> {
    y: Vec<E>,
    mean: Vec<f32>,
    invstd: Vec<f32>,
}

/// The forward (group norm, or instance norm when `instance`) of `x` on `ctx`.
#[allow(clippy::too_many_arguments)]
fn forward<E: Element + Copy>(
    ctx: &Context,
    case_shape: Shape,
    groups: usize,
    x: &[E],
    affine: Affine<'_>,
    eps: f32,
    in_place: bool,
    instance: bool,
    fill: E,
) -> Fwd<E> {
    let saves = case_shape.batch * groups;
    let mut y = if in_place {
        x.to_vec()
    } else {
        vec![fill; x.len()]
    };
    let mut mean = vec![SENTINEL; saves];
    let mut invstd = vec![SENTINEL; saves];
    let io = if in_place {
        InOut::InPlace(&mut y)
    } else {
        InOut::separate(x, &mut y).unwrap()
    };
    let saved = SavedStats {
        mean: Some(&mut mean),
        invstd: Some(&mut invstd),
    };
    if instance {
        instancenorm::forward(ctx, case_shape, io, affine, eps, saved)
    } else {
        groupnorm::forward(ctx, case_shape, groups, io, affine, eps, saved)
    }
    .expect("forward");
    Fwd { y, mean, invstd }
}

struct Bwd<E> {
    dx: Vec<E>,
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
fn backward<E: Element + Copy>(
    ctx: &Context,
    shape: Shape,
    groups: usize,
    x: &[E],
    dy: &[E],
    gamma: Option<&[f32]>,
    saved: (&[f32], &[f32]),
    in_place: bool,
    fill: E,
) -> Bwd<E> {
    let c = shape.channels;
    let mut dx = if in_place {
        dy.to_vec()
    } else {
        vec![fill; dy.len()]
    };
    let mut dgamma = vec![SENTINEL; c];
    let mut dbeta = vec![SENTINEL; c];
    let grad = if in_place {
        BackwardIo::WithDx(InOut::InPlace(&mut dx))
    } else {
        BackwardIo::WithDx(InOut::separate(dy, &mut dx).unwrap())
    };
    groupnorm::backward(
        ctx,
        shape,
        groups,
        x,
        grad,
        gamma,
        saved.0,
        saved.1,
        Some(&mut dgamma),
        Some(&mut dbeta),
    )
    .expect("backward");
    Bwd { dx, dgamma, dbeta }
}

/// Every check of one case on one context: group norm forward and backward, instance norm
/// forward, in place and out of place, against the f32 functions on the widened data.
fn check_case<H: Half>(ctx: &Context, case: &Case<H>, what: &str) {
    let fill = H::round(SENTINEL);
    let (shape, groups) = (case.shape, case.groups);
    let f = forward(
        ctx,
        shape,
        groups,
        &case.xw,
        case.affine(),
        case.eps,
        false,
        false,
        SENTINEL,
    );
    let b = backward(
        ctx,
        shape,
        groups,
        &case.xw,
        &case.dyw,
        case.gamma.as_deref(),
        (&f.mean, &f.invstd),
        false,
        SENTINEL,
    );
    // Instance norm on the same data.
    let fi = forward(
        ctx,
        shape,
        shape.channels,
        &case.xw,
        case.affine(),
        case.eps,
        false,
        true,
        SENTINEL,
    );
    for in_place in [false, true] {
        let what = format!("{what}, in place {in_place}");
        let h = forward(
            ctx,
            shape,
            groups,
            &case.x,
            case.affine(),
            case.eps,
            in_place,
            false,
            fill,
        );
        assert_rounded(&h.y, &f.y, Nan::Quiet, &format!("{what}: groupnorm y"));
        assert_bits(&h.mean, &f.mean, &format!("{what}: groupnorm save_mean"));
        assert_bits(
            &h.invstd,
            &f.invstd,
            &format!("{what}: groupnorm save_invstd"),
        );
        let hb = backward(
            ctx,
            shape,
            groups,
            &case.x,
            &case.dy,
            case.gamma.as_deref(),
            (&f.mean, &f.invstd),
            in_place,
            fill,
        );
        assert_rounded(&hb.dx, &b.dx, Nan::Quiet, &format!("{what}: groupnorm dx"));
        assert_bits(&hb.dgamma, &b.dgamma, &format!("{what}: groupnorm dgamma"));
        assert_bits(&hb.dbeta, &b.dbeta, &format!("{what}: groupnorm dbeta"));
        let hi = forward(
            ctx,
            shape,
            shape.channels,
            &case.x,
            case.affine(),
            case.eps,
            in_place,
            true,
            fill,
        );
        assert_rounded(&hi.y, &fi.y, Nan::Quiet, &format!("{what}: instancenorm y"));
        assert_bits(
            &hi.mean,
            &fi.mean,
            &format!("{what}: instancenorm save_mean"),
        );
        assert_bits(
            &hi.invstd,
            &fi.invstd,
            &format!("{what}: instancenorm save_invstd"),
        );
    }
}

/// (batch, channels, spatial, groups).
const SHAPES: [(usize, usize, usize, usize); 7] = [
    // C = 1.
    (2, 1, 37, 1),
    // spatial = 1.
    (3, 6, 1, 3),
    // Sizes not multiples of 8 or 16.
    (2, 12, 23, 4),
    (3, 5, 17, 5),
    // Split over threads (>= 2^15 elements), channels-innermost rows of 40.
    (2, 40, 900, 8),
    (2, 24, 1400, 6),
    // A channels-first group larger than 2^18 values (chunked moments, second pass).
    (1, 2, 140_001, 1),
];

fn run_all<H: Half>() {
    for (si, &dims) in SHAPES.iter().enumerate() {
        let variants: &[usize] = if dims.0 * dims.1 * dims.2 > 100_000 {
            &[0, 4]
        } else {
            &[0, 1, 2, 3, 4, 5, 6]
        };
        for layout in [Layout::Ncs, Layout::Nsc] {
            for &variant in variants {
                let case = Case::<H>::new(
                    dims,
                    layout,
                    variant,
                    1000 + si as u64 * 31 + variant as u64,
                );
                for isa in Isa::supported() {
                    for threads in [1, 3] {
                        let what = format!(
                            "{} {dims:?} {layout:?} variant {variant} {isa:?} threads {threads}",
                            H::NAME
                        );
                        check_case(&ctx(threads, isa), &case, &what);
                    }
                }
            }
        }
    }
}

#[test]
fn bf16_matches_f32_on_widened_data() {
    run_all::<bf16>();
}

#[test]
fn f16_matches_f32_on_widened_data() {
    run_all::<f16>();
}

/// The special cases produce what they are meant to: overflow to infinity, subnormal outputs,
/// NaN (so that the comparisons above cover them).
#[test]
fn special_values_reach_the_outputs() {
    let case = Case::<f16>::new((2, 12, 23, 4), Layout::Ncs, 1, 7);
    let c = ctx(1, Isa::supported()[0]);
    let h = forward(
        &c,
        case.shape,
        case.groups,
        &case.x,
        case.affine(),
        case.eps,
        false,
        false,
        f16::from_f32(0.0),
    );
    let y = widen(&h.y);
    assert!(y.iter().any(|v| v.is_nan()), "NaN outputs");
    assert!(y.iter().any(|v| v.is_infinite()), "overflow to infinity");
    assert!(
        y.iter().any(|v| *v != 0.0 && v.abs() < 6.1e-5),
        "f16 subnormal outputs"
    );
    assert!(
        y.iter().any(|v| v.is_finite() && v.abs() > 1.0),
        "finite values"
    );
}

// ---------------------------------------------------------------------------------------------
// The C twins.

/// `nk_groupnorm_forward` of data of type `T`.
type GnForward<T> = unsafe extern "C" fn(
    *mut nk_context,
    nk_shape,
    usize,
    *const T,
    *mut T,
    *const f32,
    *const f32,
    f32,
    *mut f32,
    *mut f32,
) -> nk_status;

/// `nk_groupnorm_backward` of data of type `T`.
type GnBackward<T> = unsafe extern "C" fn(
    *mut nk_context,
    nk_shape,
    usize,
    *const T,
    *const T,
    *mut T,
    *const f32,
    *const f32,
    *const f32,
    *mut f32,
    *mut f32,
) -> nk_status;

/// `nk_instancenorm_forward` of data of type `T`.
type InForward<T> = unsafe extern "C" fn(
    *mut nk_context,
    nk_shape,
    *const T,
    *mut T,
    *const f32,
    *const f32,
    f32,
    *mut f32,
    *mut f32,
) -> nk_status;

/// The C struct of a half type and its group-norm and instance-norm twins.
trait GroupTwins: Half {
    type Ffi;
    const GN_FORWARD: GnForward<Self::Ffi>;
    const GN_BACKWARD: GnBackward<Self::Ffi>;
    const IN_FORWARD: InForward<Self::Ffi>;
}

impl GroupTwins for bf16 {
    type Ffi = nk_bf16;
    const GN_FORWARD: GnForward<nk_bf16> = nk_groupnorm_forward_bf16;
    const GN_BACKWARD: GnBackward<nk_bf16> = nk_groupnorm_backward_bf16;
    const IN_FORWARD: InForward<nk_bf16> = nk_instancenorm_forward_bf16;
}

impl GroupTwins for f16 {
    type Ffi = nk_f16;
    const GN_FORWARD: GnForward<nk_f16> = nk_groupnorm_forward_f16;
    const GN_BACKWARD: GnBackward<nk_f16> = nk_groupnorm_backward_f16;
    const IN_FORWARD: InForward<nk_f16> = nk_instancenorm_forward_f16;
}

/// A buffer of `n` half values starting at an odd address (inside a larger buffer).
struct Odd {
    buf: Vec<u16>,
}

impl Odd {
    fn new(n: usize) -> Odd {
        Odd {
            buf: vec![0x3c00; n + 2],
        }
    }
    fn ptr<T>(&mut self) -> *mut T {
        // SAFETY: one byte into a buffer of n + 2 values.
        unsafe { self.buf.as_mut_ptr().cast::<u8>().add(1).cast::<T>() }
    }
}

fn c_twins<H: GroupTwins>() {
    let isa = Isa::supported()[0];
    for layout in [Layout::Ncs, Layout::Nsc] {
        let case = Case::<H>::new((2, 12, 23, 4), layout, 3, 99);
        let c = ctx(3, isa);
        let (shape, groups, n) = (case.shape, case.groups, case.x.len());
        let cs = c_shape(shape);
        let ch = shape.channels;
        let gamma = case.gamma.clone().unwrap();
        let beta = case.beta.clone().unwrap();
        let mut raw: *mut nk_context = null_mut();
        // SAFETY (all calls): every pointer is valid for its extent; NULL where tested.
        unsafe {
            assert_eq!(nk_context_create(3, &mut raw), NK_OK);
            assert_eq!(
                nk_context_set_isa(raw, isa_value(isa)),
                NK_OK,
                "the context takes a supported ISA"
            );
            // References through the float C functions.
            let saves = shape.batch * groups;
            let (mut y32, mut m32, mut s32) = (vec![0f32; n], vec![0f32; saves], vec![0f32; saves]);
            let st = nk_groupnorm_forward(
                raw,
                cs,
                groups,
                case.xw.as_ptr(),
                y32.as_mut_ptr(),
                gamma.as_ptr(),
                beta.as_ptr(),
                case.eps,
                m32.as_mut_ptr(),
                s32.as_mut_ptr(),
            );
            assert_eq!(st, NK_OK);
            let (mut dx32, mut dg32, mut db32) = (vec![0f32; n], vec![0f32; ch], vec![0f32; ch]);
            let st = nk_groupnorm_backward(
                raw,
                cs,
                groups,
                case.xw.as_ptr(),
                case.dyw.as_ptr(),
                dx32.as_mut_ptr(),
                gamma.as_ptr(),
                m32.as_ptr(),
                s32.as_ptr(),
                dg32.as_mut_ptr(),
                db32.as_mut_ptr(),
            );
            assert_eq!(st, NK_OK);
            let isaves = shape.batch * ch;
            let (mut yi32, mut mi32, mut si32) =
                (vec![0f32; n], vec![0f32; isaves], vec![0f32; isaves]);
            let st = nk_instancenorm_forward(
                raw,
                cs,
                case.xw.as_ptr(),
                yi32.as_mut_ptr(),
                gamma.as_ptr(),
                beta.as_ptr(),
                case.eps,
                mi32.as_mut_ptr(),
                si32.as_mut_ptr(),
            );
            assert_eq!(st, NK_OK);
            // The safe API's f32 results are the C function's.
            let f = forward(
                &c,
                shape,
                groups,
                &case.xw,
                case.affine(),
                case.eps,
                false,
                false,
                0.0,
            );
            assert_bits(&f.y, &y32, "safe and C f32 forward");
            let what = format!("C {} {layout:?}", H::NAME);

            // Group norm forward: out of place, in place, and the errors.
            let xp = case.x.as_ptr().cast::<H::Ffi>();
            let fill = H::round(SENTINEL);
            let mut y = vec![fill; n];
            let (mut m, mut s) = (vec![SENTINEL; saves], vec![SENTINEL; saves]);
            let fwd = |x: *const H::Ffi, y: *mut H::Ffi, m: *mut f32, s: *mut f32| {
                (H::GN_FORWARD)(
                    raw,
                    cs,
                    groups,
                    x,
                    y,
                    gamma.as_ptr(),
                    beta.as_ptr(),
                    case.eps,
                    m,
                    s,
                )
            };
            assert_eq!(
                fwd(xp, y.as_mut_ptr().cast(), m.as_mut_ptr(), s.as_mut_ptr()),
                NK_OK
            );
            assert_rounded(&y, &y32, Nan::Quiet, &format!("{what}: groupnorm y"));
            assert_bits(&m, &m32, &format!("{what}: save_mean"));
            assert_bits(&s, &s32, &format!("{what}: save_invstd"));
            let mut yin = case.x.clone();
            let p = yin.as_mut_ptr().cast::<H::Ffi>();
            assert_eq!(fwd(p, p, null_mut(), null_mut()), NK_OK);
            assert_rounded(
                &yin,
                &y32,
                Nan::Quiet,
                &format!("{what}: groupnorm y in place"),
            );
            let (mut m, mut s) = (vec![SENTINEL; saves], vec![SENTINEL; saves]);
            let mut y = vec![fill; n];
            let before = bits(&y);
            let errors: [(nk_status, *const H::Ffi, *mut H::Ffi); 3] = [
                (NK_ERR_NULL_POINTER, null(), y.as_mut_ptr().cast()),
                (NK_ERR_NULL_POINTER, xp, null_mut()),
                (
                    NK_ERR_MISALIGNED,
                    xp.cast::<u8>().add(1).cast(),
                    y.as_mut_ptr().cast(),
                ),
            ];
            for (want, x, yp) in errors {
                assert_eq!(fwd(x, yp, m.as_mut_ptr(), s.as_mut_ptr()), want, "{what}");
            }
            let mut odd = Odd::new(n);
            assert_eq!(
                fwd(xp, odd.ptr(), m.as_mut_ptr(), s.as_mut_ptr()),
                NK_ERR_MISALIGNED,
                "{what}: odd y"
            );
            assert!(
                odd.buf.iter().all(|&b| b == 0x3c00),
                "{what}: nothing written"
            );
            // x and y overlapping but not equal.
            let mut both = case.x.clone();
            both.extend_from_slice(&case.x);
            let bp = both.as_mut_ptr();
            let snapshot = bits(&both);
            assert_eq!(
                fwd(bp.cast(), bp.add(1).cast(), m.as_mut_ptr(), s.as_mut_ptr()),
                NK_ERR_ALIAS,
                "{what}: overlap"
            );
            assert_eq!(bits(&both), snapshot, "{what}: nothing written on alias");
            assert_eq!(bits(&y), before, "{what}: nothing written");
            assert!(
                m.iter().chain(&s).all(|&v| v == SENTINEL),
                "{what}: no saves"
            );

            // Group norm backward.
            let dyp = case.dy.as_ptr().cast::<H::Ffi>();
            let mut dx = vec![fill; n];
            let (mut dg, mut db) = (vec![SENTINEL; ch], vec![SENTINEL; ch]);
            let bwd = |x: *const H::Ffi,
                       dy: *const H::Ffi,
                       dx: *mut H::Ffi,
                       dg: *mut f32,
                       db: *mut f32| {
                (H::GN_BACKWARD)(
                    raw,
                    cs,
                    groups,
                    x,
                    dy,
                    dx,
                    gamma.as_ptr(),
                    m32.as_ptr(),
                    s32.as_ptr(),
                    dg,
                    db,
                )
            };
            assert_eq!(
                bwd(
                    xp,
                    dyp,
                    dx.as_mut_ptr().cast(),
                    dg.as_mut_ptr(),
                    db.as_mut_ptr()
                ),
                NK_OK
            );
            assert_rounded(&dx, &dx32, Nan::Quiet, &format!("{what}: dx"));
            assert_bits(&dg, &dg32, &format!("{what}: dgamma"));
            assert_bits(&db, &db32, &format!("{what}: dbeta"));
            let mut dxin = case.dy.clone();
            let p = dxin.as_mut_ptr().cast::<H::Ffi>();
            assert_eq!(bwd(xp, p, p, null_mut(), null_mut()), NK_OK);
            assert_rounded(&dxin, &dx32, Nan::Quiet, &format!("{what}: dx in place"));
            let (mut dg, mut db) = (vec![SENTINEL; ch], vec![SENTINEL; ch]);
            let mut dx = vec![fill; n];
            let before = bits(&dx);
            let dxp = dx.as_mut_ptr().cast::<H::Ffi>();
            type Call<T> = (nk_status, *const T, *const T, *mut T);
            let errors: [Call<H::Ffi>; 4] = [
                (NK_ERR_NULL_POINTER, null(), dyp, dxp),
                (NK_ERR_NULL_POINTER, xp, null(), dxp),
                (NK_ERR_MISALIGNED, xp.cast::<u8>().add(1).cast(), dyp, dxp),
                (NK_ERR_MISALIGNED, xp, dyp.cast::<u8>().add(1).cast(), dxp),
            ];
            for (want, x, d, o) in errors {
                assert_eq!(
                    bwd(x, d, o, dg.as_mut_ptr(), db.as_mut_ptr()),
                    want,
                    "{what}"
                );
            }
            let mut odd = Odd::new(n);
            assert_eq!(
                bwd(xp, dyp, odd.ptr(), dg.as_mut_ptr(), db.as_mut_ptr()),
                NK_ERR_MISALIGNED,
                "{what}: odd dx"
            );
            assert!(
                odd.buf.iter().all(|&b| b == 0x3c00),
                "{what}: nothing written"
            );
            // dx overlapping dy (not equal), and dx == x.
            let mut both = case.dy.clone();
            both.extend_from_slice(&case.dy);
            let bp = both.as_mut_ptr();
            let snapshot = bits(&both);
            assert_eq!(
                bwd(
                    xp,
                    bp.cast(),
                    bp.add(1).cast(),
                    dg.as_mut_ptr(),
                    db.as_mut_ptr()
                ),
                NK_ERR_ALIAS,
                "{what}: dx overlapping dy"
            );
            assert_eq!(
                bwd(bp.cast(), dyp, bp.cast(), dg.as_mut_ptr(), db.as_mut_ptr()),
                NK_ERR_ALIAS,
                "{what}: dx == x"
            );
            assert_eq!(bits(&both), snapshot, "{what}: nothing written on alias");
            assert_eq!(bits(&dx), before, "{what}: nothing written");
            assert!(
                dg.iter().chain(&db).all(|&v| v == SENTINEL),
                "{what}: no grads"
            );

            // Instance norm forward.
            let mut y = vec![fill; n];
            let (mut m, mut s) = (vec![SENTINEL; isaves], vec![SENTINEL; isaves]);
            let ifwd = |x: *const H::Ffi, y: *mut H::Ffi, m: *mut f32, s: *mut f32| {
                (H::IN_FORWARD)(raw, cs, x, y, gamma.as_ptr(), beta.as_ptr(), case.eps, m, s)
            };
            assert_eq!(
                ifwd(xp, y.as_mut_ptr().cast(), m.as_mut_ptr(), s.as_mut_ptr()),
                NK_OK
            );
            assert_rounded(&y, &yi32, Nan::Quiet, &format!("{what}: instancenorm y"));
            assert_bits(&m, &mi32, &format!("{what}: instancenorm save_mean"));
            assert_bits(&s, &si32, &format!("{what}: instancenorm save_invstd"));
            let mut yin = case.x.clone();
            let p = yin.as_mut_ptr().cast::<H::Ffi>();
            assert_eq!(ifwd(p, p, null_mut(), null_mut()), NK_OK);
            assert_rounded(
                &yin,
                &yi32,
                Nan::Quiet,
                &format!("{what}: instancenorm y in place"),
            );
            let (mut m, mut s) = (vec![SENTINEL; isaves], vec![SENTINEL; isaves]);
            let mut y = vec![fill; n];
            let before = bits(&y);
            let errors: [(nk_status, *const H::Ffi, *mut H::Ffi); 3] = [
                (NK_ERR_NULL_POINTER, null(), y.as_mut_ptr().cast()),
                (NK_ERR_NULL_POINTER, xp, null_mut()),
                (
                    NK_ERR_MISALIGNED,
                    xp.cast::<u8>().add(1).cast(),
                    y.as_mut_ptr().cast(),
                ),
            ];
            for (want, x, yp) in errors {
                assert_eq!(ifwd(x, yp, m.as_mut_ptr(), s.as_mut_ptr()), want, "{what}");
            }
            let mut odd = Odd::new(n);
            assert_eq!(
                ifwd(xp, odd.ptr(), m.as_mut_ptr(), s.as_mut_ptr()),
                NK_ERR_MISALIGNED,
                "{what}: odd y"
            );
            assert!(
                odd.buf.iter().all(|&b| b == 0x3c00),
                "{what}: nothing written"
            );
            let mut both = case.x.clone();
            both.extend_from_slice(&case.x);
            let bp = both.as_mut_ptr();
            let snapshot = bits(&both);
            assert_eq!(
                ifwd(bp.add(1).cast(), bp.cast(), m.as_mut_ptr(), s.as_mut_ptr()),
                NK_ERR_ALIAS,
                "{what}: overlap"
            );
            assert_eq!(bits(&both), snapshot, "{what}: nothing written on alias");
            assert_eq!(bits(&y), before, "{what}: nothing written");
            assert!(
                m.iter().chain(&s).all(|&v| v == SENTINEL),
                "{what}: no saves"
            );
            // A NULL context is the default context; an empty call takes NULL data.
            let mut y = vec![fill; n];
            assert_eq!(
                (H::IN_FORWARD)(
                    null_mut(),
                    cs,
                    xp,
                    y.as_mut_ptr().cast(),
                    null(),
                    null(),
                    1e-5,
                    null_mut(),
                    null_mut(),
                ),
                NK_OK
            );
            let empty = nk_shape { batch: 0, ..cs };
            assert_eq!(
                (H::GN_FORWARD)(
                    null_mut(),
                    empty,
                    groups,
                    null(),
                    null_mut(),
                    null(),
                    null(),
                    1e-5,
                    null_mut(),
                    null_mut(),
                ),
                NK_OK
            );
            nk_context_destroy(raw);
        }
    }
}

#[test]
fn c_twins_bf16() {
    c_twins::<bf16>();
}

#[test]
fn c_twins_f16() {
    c_twins::<f16>();
}
