//! Batch norm on bf16 and f16 data: every twin's outputs are the f32 function's outputs on the
//! widened input, rounded once to the type (nearest even), and its statistics and parameter
//! gradients are bitwise the f32 function's. Safe API on every supported ISA, 1 and 3 threads,
//! both layouts, in place and out of place; the C twins through the C ABI, with their error
//! contract (NULL, misaligned, overlapping, nothing written on error).

// The C functions: built with the default `capi` feature.
#![cfg(feature = "capi")]

mod common;

use common::check::{
    BN_FUSE_RELU, BN_RUNNING_VAR_BIASED, activation, moments_c, moments_of, training_params,
};
use common::check::{assert_bits, assert_bits64, ctx};
use common::data::Gen;
use common::half::{Half, Nan, assert_rounded, widen};
use common::reference::index;
use normkit::batchnorm::{self, Affine, RunningStats, SavedStats, TrainingParams};
use normkit::ffi::nk_status::{self, *};
use normkit::ffi::*;
use normkit::{BackwardIo, Context, InOut, Isa, Layout, Shape, bf16, f16};
use std::ptr::null_mut;

/// Data `offset + scale * N(0, 1)` in the type; with `specials`, NaN and infinities in channel
/// 0, and subnormals of the type, -0.0 and values near its largest in the last channel.
fn data<H: Half>(g: &mut Gen, shape: &Shape, offset: f64, scale: f64, specials: bool) -> Vec<H> {
    let n = shape.batch * shape.channels * shape.spatial;
    let mut v: Vec<H> = (0..n)
        .map(|_| H::round((offset + scale * g.normal()) as f32))
        .collect();
    if specials && n > 0 {
        let mut put = |c: usize, h: H, g: &mut Gen| {
            let i = index(shape, g.below(shape.batch), c, g.below(shape.spatial));
            v[i] = h;
        };
        for h in [
            H::round(f32::NAN),
            H::round(f32::INFINITY),
            H::round(f32::NEG_INFINITY),
        ] {
            put(0, h, g);
        }
        let last = shape.channels - 1;
        for h in [
            H::from_bits(1),
            H::from_bits(0x8003),
            H::round(-0.0),
            H::round(H::BIG),
            H::round(-H::BIG),
            H::round(H::BIG * 0.99),
        ] {
            put(last, h, g);
        }
    }
    v
}

/// Per-channel gamma in [0.5, 2], the last channel's 3e4 (its outputs overflow f16), and with
/// three channels or more, channel 1's 1e38 (outputs beyond f32, and the f64 path).
fn gamma(g: &mut Gen, c: usize) -> Vec<f32> {
    let mut v = g.uniforms(c, 0.5, 2.0);
    if c > 1 {
        v[c - 1] = 3e4;
    }
    if c > 2 {
        v[1] = 1e38;
    }
    v
}

fn shapes() -> Vec<Shape> {
    let mut v = Vec::new();
    for layout in [Layout::Ncs, Layout::Nsc] {
        for (b, c, s) in [
            (3, 1, 7),
            (5, 3, 1),
            (2, 5, 13),
            (1, 9, 17),
            (4, 7, 1200),
            (1, 2, (1 << 18) + 3),
        ] {
            v.push(Shape::new(b, c, s, layout));
        }
    }
    v
}

/// Runs `f(shape, isa, threads, seed)` for every shape, ISA and 1 and 3 threads.
fn each_case(mut f: impl FnMut(&Context, Shape, u64)) {
    for (k, shape) in shapes().into_iter().enumerate() {
        for isa in Isa::supported() {
            for threads in [1, 3] {
                f(&ctx(threads, isa), shape, k as u64);
            }
        }
    }
}

fn training<H: Half>() {
    each_case(|cx, shape, seed| {
        for specials in [false, true] {
            let mut g = Gen::new(seed * 2 + u64::from(specials));
            let xh: Vec<H> = data(&mut g, &shape, 1000.0, 3.0, specials);
            let xw = widen(&xh);
            let c = shape.channels;
            let ga = gamma(&mut g, c);
            let be = g.normals(c, 0.0, 1.0);
            let affine = Affine {
                gamma: Some(&ga),
                beta: Some(&be),
            };
            let rm0 = g.normals(c, 0.0, 1.0);
            let rv0 = g.uniforms(c, 0.5, 2.0);
            for flags in [0, BN_RUNNING_VAR_BIASED] {
                let params = training_params(1e-5, 0.1, flags);
                let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
                let (mut sm, mut si) = (vec![0.0; c], vec![0.0; c]);
                let mut y = vec![0.0; xw.len()];
                batchnorm::forward_training(
                    cx,
                    shape,
                    InOut::separate(&xw, &mut y).unwrap(),
                    affine,
                    params,
                    Some(RunningStats {
                        mean: &mut rm,
                        var: &mut rv,
                    }),
                    SavedStats {
                        mean: Some(&mut sm),
                        invstd: Some(&mut si),
                    },
                )
                .unwrap();
                for in_place in [false, true] {
                    let (mut hrm, mut hrv) = (rm0.clone(), rv0.clone());
                    let (mut hsm, mut hsi) = (vec![0.0; c], vec![0.0; c]);
                    let mut yh = xh.clone();
                    let mut out = vec![H::round(7.0); xh.len()];
                    let io = if in_place {
                        InOut::InPlace(&mut yh)
                    } else {
                        InOut::separate(&xh, &mut out).unwrap()
                    };
                    batchnorm::forward_training(
                        cx,
                        shape,
                        io,
                        affine,
                        params,
                        Some(RunningStats {
                            mean: &mut hrm,
                            var: &mut hrv,
                        }),
                        SavedStats {
                            mean: Some(&mut hsm),
                            invstd: Some(&mut hsi),
                        },
                    )
                    .unwrap();
                    let got = if in_place { &yh } else { &out };
                    let what = format!("training {shape:?} {:?} in place {in_place}", cx.isa());
                    assert_rounded(got, &y, Nan::Any, &what);
                    assert_bits(&hrm, &rm, &what);
                    assert_bits(&hrv, &rv, &what);
                    assert_bits(&hsm, &sm, &what);
                    assert_bits(&hsi, &si, &what);
                }
            }

            // Moments, then the forward from them (this shard's count).
            let (mut m, mut m2) = (vec![0.0; c], vec![0.0; c]);
            moments_c(cx, shape, &xw, &mut m, &mut m2).unwrap();
            let (mut hm, mut hm2) = (vec![1.0; c], vec![1.0; c]);
            moments_c(cx, shape, &xh, &mut hm, &mut hm2).unwrap();
            let what = format!("moments {shape:?} {:?}", cx.isa());
            assert_bits64(&hm, &m, &what);
            assert_bits64(&hm2, &m2, &what);
            let count = (shape.batch * shape.spatial) as u64;
            let params = TrainingParams::default();
            let (mut sm, mut si) = (vec![0.0; c], vec![0.0; c]);
            let mut y = vec![0.0; xw.len()];
            batchnorm::forward_from_moments(
                cx,
                shape,
                InOut::separate(&xw, &mut y).unwrap(),
                affine,
                &moments_of(count, &m, &m2),
                params,
                None,
                SavedStats {
                    mean: Some(&mut sm),
                    invstd: Some(&mut si),
                },
            )
            .unwrap();
            for in_place in [false, true] {
                let (mut hsm, mut hsi) = (vec![0.0; c], vec![0.0; c]);
                let mut yh = xh.clone();
                let mut out = vec![H::round(7.0); xh.len()];
                let io = if in_place {
                    InOut::InPlace(&mut yh)
                } else {
                    InOut::separate(&xh, &mut out).unwrap()
                };
                batchnorm::forward_from_moments(
                    cx,
                    shape,
                    io,
                    affine,
                    &moments_of(count, &m, &m2),
                    params,
                    None,
                    SavedStats {
                        mean: Some(&mut hsm),
                        invstd: Some(&mut hsi),
                    },
                )
                .unwrap();
                let got = if in_place { &yh } else { &out };
                let what = format!("from moments {shape:?} {:?} in place {in_place}", cx.isa());
                assert_rounded(got, &y, Nan::Any, &what);
                assert_bits(&hsm, &sm, &what);
                assert_bits(&hsi, &si, &what);
            }
        }
    });
}

fn inference<H: Half>() {
    each_case(|cx, shape, seed| {
        let mut g = Gen::new(100 + seed);
        let xh: Vec<H> = data(&mut g, &shape, -500.0, 20.0, true);
        let xw = widen(&xh);
        let c = shape.channels;
        let ga = gamma(&mut g, c);
        let be = g.normals(c, 0.0, 1.0);
        let mean = g.normals(c, -500.0, 5.0);
        let var = g.uniforms(c, 100.0, 900.0);
        for (flags, affine) in [
            (
                0,
                Affine {
                    gamma: Some(&ga),
                    beta: Some(&be),
                },
            ),
            (BN_FUSE_RELU, Affine::default()),
            (
                BN_FUSE_RELU,
                Affine {
                    gamma: Some(&ga),
                    beta: None,
                },
            ),
        ] {
            let mut y = vec![0.0; xw.len()];
            let io = InOut::separate(&xw, &mut y).unwrap();
            batchnorm::forward_inference(
                cx,
                shape,
                io,
                affine,
                &mean,
                &var,
                1e-3,
                activation(flags),
            )
            .unwrap();
            for in_place in [false, true] {
                let mut yh = xh.clone();
                let mut out = vec![H::round(7.0); xh.len()];
                let io = if in_place {
                    InOut::InPlace(&mut yh)
                } else {
                    InOut::separate(&xh, &mut out).unwrap()
                };
                batchnorm::forward_inference(
                    cx,
                    shape,
                    io,
                    affine,
                    &mean,
                    &var,
                    1e-3,
                    activation(flags),
                )
                .unwrap();
                let got = if in_place { &yh } else { &out };
                let what = format!("inference {shape:?} {:?} flags {flags}", cx.isa());
                assert_rounded(got, &y, Nan::Any, &what);
            }
        }
    });
}

fn backward<H: Half>() {
    each_case(|cx, shape, seed| {
        for specials in [false, true] {
            let mut g = Gen::new(200 + seed * 2 + u64::from(specials));
            let xh: Vec<H> = data(&mut g, &shape, 300.0, 2.0, specials);
            let dyh: Vec<H> = data(&mut g, &shape, 0.5, 1.0, specials);
            let (xw, dyw) = (widen(&xh), widen(&dyh));
            let c = shape.channels;
            let ga = gamma(&mut g, c);
            // Saved statistics of the widened data.
            let (mut sm, mut si) = (vec![0.0; c], vec![0.0; c]);
            let mut y = vec![0.0; xw.len()];
            batchnorm::forward_training(
                cx,
                shape,
                InOut::separate(&xw, &mut y).unwrap(),
                Affine::default(),
                TrainingParams::default(),
                None,
                SavedStats {
                    mean: Some(&mut sm),
                    invstd: Some(&mut si),
                },
            )
            .unwrap();
            let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
            let mut dx = vec![0.0; xw.len()];
            let io = BackwardIo::WithDx(InOut::separate(&dyw, &mut dx).unwrap());
            let gm = Some(&ga[..]);
            batchnorm::backward(
                cx,
                shape,
                &xw,
                io,
                gm,
                &sm,
                &si,
                Some(&mut dg),
                Some(&mut db),
            )
            .unwrap();
            for mode in 0..3 {
                let (mut hdg, mut hdb) = (vec![1.0; c], vec![1.0; c]);
                let mut dxh = dyh.clone();
                let mut out = vec![H::round(7.0); xh.len()];
                let io = match mode {
                    0 => BackwardIo::WithDx(InOut::separate(&dyh, &mut out).unwrap()),
                    1 => BackwardIo::WithDx(InOut::InPlace(&mut dxh)),
                    _ => BackwardIo::DyOnly(&dyh),
                };
                batchnorm::backward(
                    cx,
                    shape,
                    &xh,
                    io,
                    gm,
                    &sm,
                    &si,
                    Some(&mut hdg),
                    Some(&mut hdb),
                )
                .unwrap();
                let what = format!("backward {shape:?} {:?} mode {mode}", cx.isa());
                match mode {
                    0 => assert_rounded(&out, &dx, Nan::Any, &what),
                    1 => assert_rounded(&dxh, &dx, Nan::Any, &what),
                    _ => {}
                }
                assert_bits(&hdg, &dg, &what);
                assert_bits(&hdb, &db, &what);
            }

            // Reduce, then apply with a larger global count.
            let (mut s1, mut s2) = (vec![0.0; c], vec![0.0; c]);
            batchnorm::backward_reduce(cx, shape, &xw, &dyw, &sm, &si, &mut s1, &mut s2).unwrap();
            let (mut h1, mut h2) = (vec![1.0; c], vec![1.0; c]);
            batchnorm::backward_reduce(cx, shape, &xh, &dyh, &sm, &si, &mut h1, &mut h2).unwrap();
            let what = format!("backward_reduce {shape:?} {:?}", cx.isa());
            assert_bits64(&h1, &s1, &what);
            assert_bits64(&h2, &s2, &what);
            let count = (shape.batch * shape.spatial) as u64 * 3;
            let mut dx = vec![0.0; xw.len()];
            let io = InOut::separate(&dyw, &mut dx).unwrap();
            batchnorm::backward_apply(cx, shape, &xw, io, gm, &sm, &si, count, &s1, &s2).unwrap();
            for in_place in [false, true] {
                let mut dxh = dyh.clone();
                let mut out = vec![H::round(7.0); xh.len()];
                let io = if in_place {
                    InOut::InPlace(&mut dxh)
                } else {
                    InOut::separate(&dyh, &mut out).unwrap()
                };
                batchnorm::backward_apply(cx, shape, &xh, io, gm, &sm, &si, count, &s1, &s2)
                    .unwrap();
                let got = if in_place { &dxh } else { &out };
                let what = format!(
                    "backward_apply {shape:?} {:?} in place {in_place}",
                    cx.isa()
                );
                assert_rounded(got, &dx, Nan::Any, &what);
            }
        }
    });
}

#[test]
fn bf16_training_and_moments_are_the_f32_results_rounded() {
    training::<bf16>();
}

#[test]
fn f16_training_and_moments_are_the_f32_results_rounded() {
    training::<f16>();
}

#[test]
fn bf16_inference_is_the_f32_result_rounded() {
    inference::<bf16>();
}

#[test]
fn f16_inference_is_the_f32_result_rounded() {
    inference::<f16>();
}

#[test]
fn bf16_backward_is_the_f32_result_rounded() {
    backward::<bf16>();
}

#[test]
fn f16_backward_is_the_f32_result_rounded() {
    backward::<f16>();
}

/// The f16 rounding really happens: outputs beyond 65504 are infinite, and the f32 results
/// are not all representable (so a twin that skipped the rounding would fail above).
#[test]
fn f16_outputs_overflow_to_infinity() {
    let shape = Shape::new(4, 2, 5, Layout::Ncs);
    let x: Vec<f16> = (0..40).map(|i| f16::from_f32(i as f32 * 0.37)).collect();
    let mut y = vec![f16::ZERO; 40];
    let ga = [1e5f32, 1.0];
    let affine = Affine {
        gamma: Some(&ga),
        beta: None,
    };
    let io = InOut::separate(&x, &mut y).unwrap();
    let cx = ctx(1, Isa::supported()[0]);
    batchnorm::forward_training(&cx, shape, io, affine, TrainingParams::default(), None, {
        SavedStats::default()
    })
    .unwrap();
    assert!(y.iter().any(|v| v.to_f32() == f32::INFINITY));
    assert!(y.iter().any(|v| v.to_f32() == f32::NEG_INFINITY));
}

// ---------------------------------------------------------------------------------------------
// The C twins.

const NCS: nk_layout_value = 0;
const NSC: nk_layout_value = 1;

fn c_shape(b: usize, c: usize, s: usize, layout: nk_layout_value) -> nk_shape {
    nk_shape {
        batch: b,
        channels: c,
        spatial: s,
        layout,
    }
}

/// Calls every C twin of type `H` (data pointers of type `C`, the same layout) on one shape and
/// compares it with the f32 C function on the widened data.
///
/// # Safety
/// `C` has the layout of `H`.
unsafe fn c_twins<H: Half, C: Copy>(
    shape: nk_shape,
    names: [unsafe fn(&mut CallArgs<C>) -> nk_status; 7],
    f32_names: [unsafe fn(&mut CallArgs<f32>) -> nk_status; 7],
) {
    let s = Shape::new(
        shape.batch,
        shape.channels,
        shape.spatial,
        if shape.layout == NCS {
            Layout::Ncs
        } else {
            Layout::Nsc
        },
    );
    let mut g = Gen::new(7);
    let xh: Vec<H> = data(&mut g, &s, 50.0, 3.0, true);
    let dyh: Vec<H> = data(&mut g, &s, 0.0, 1.0, false);
    let c = shape.channels;
    let mut a32 = CallArgs::<f32>::new(shape, widen(&xh), widen(&dyh), &mut g);
    let mut g = Gen::new(7);
    let _: Vec<H> = data(&mut g, &s, 50.0, 3.0, true);
    let _: Vec<H> = data(&mut g, &s, 0.0, 1.0, false);
    // SAFETY: C has the layout of H.
    let cast =
        |v: &[H]| -> Vec<C> { unsafe { v.iter().map(|h| std::mem::transmute_copy(h)).collect() } };
    let mut ah = CallArgs::<C>::new(shape, cast(&xh), cast(&dyh), &mut g);
    for (k, (fh, f32f)) in names.into_iter().zip(f32_names).enumerate() {
        for in_place in [false, true] {
            a32.reset(in_place);
            ah.reset(in_place);
            // SAFETY: the buffers have the extents of the shape.
            let (sh, s32) = unsafe { (fh(&mut ah), f32f(&mut a32)) };
            assert_eq!(sh, NK_OK, "function {k} ({})", H::NAME);
            assert_eq!(s32, NK_OK, "function {k} (f32)");
            let back = |v: &[C]| -> Vec<H> {
                // SAFETY: C has the layout of H.
                v.iter()
                    .map(|h| unsafe { std::mem::transmute_copy(h) })
                    .collect()
            };
            let what = format!("C function {k} in place {in_place}");
            let yh = back(if in_place { &ah.x } else { &ah.y });
            let y32 = if in_place { &a32.x } else { &a32.y };
            assert_rounded(&yh, y32, Nan::Any, &what);
            let dxh = back(if in_place { &ah.dy } else { &ah.dx });
            let dx32 = if in_place { &a32.dy } else { &a32.dx };
            assert_rounded(&dxh, dx32, Nan::Any, &what);
            for (p, q) in [
                (&ah.rm, &a32.rm),
                (&ah.rv, &a32.rv),
                (&ah.sm, &a32.sm),
                (&ah.si, &a32.si),
                (&ah.dg, &a32.dg),
                (&ah.db, &a32.db),
            ] {
                assert_bits(p, q, &what);
            }
            assert_bits64(&ah.m, &a32.m, &what);
            assert_bits64(&ah.m2, &a32.m2, &what);
            assert_eq!(ah.m.len(), c);
        }
    }
}

/// The buffers of one call of any batch-norm function.
struct CallArgs<T> {
    shape: nk_shape,
    x0: Vec<T>,
    dy0: Vec<T>,
    x: Vec<T>,
    y: Vec<T>,
    dy: Vec<T>,
    dx: Vec<T>,
    in_place: bool,
    /// Data pointers used instead of the buffers' (x, y, dy, dx), for the error tests.
    raw: Option<[*mut T; 4]>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
    rm: Vec<f32>,
    rv: Vec<f32>,
    sm: Vec<f32>,
    si: Vec<f32>,
    dg: Vec<f32>,
    db: Vec<f32>,
    m: Vec<f64>,
    m2: Vec<f64>,
}

impl<T: Copy> CallArgs<T> {
    fn new(shape: nk_shape, x: Vec<T>, dy: Vec<T>, g: &mut Gen) -> Self {
        let c = shape.channels;
        let mut gamma = g.uniforms(c, 0.5, 2.0);
        gamma[c - 1] = 3e4;
        CallArgs {
            shape,
            x0: x.clone(),
            dy0: dy.clone(),
            y: x.clone(),
            dx: dy.clone(),
            x,
            dy,
            in_place: false,
            raw: None,
            gamma,
            beta: g.normals(c, 0.0, 1.0),
            mean: g.normals(c, 50.0, 1.0),
            var: g.uniforms(c, 5.0, 15.0),
            rm: vec![0.0; c],
            rv: vec![1.0; c],
            sm: vec![0.0; c],
            si: vec![0.0; c],
            dg: vec![0.0; c],
            db: vec![0.0; c],
            m: vec![0.0; c],
            m2: vec![0.0; c],
        }
    }

    /// Fresh data; the saved statistics stay (the backward reads what the forward saved).
    fn reset(&mut self, in_place: bool) {
        self.x.clone_from(&self.x0);
        self.dy.clone_from(&self.dy0);
        self.y.clone_from(&self.x0);
        self.dx.clone_from(&self.dy0);
        self.in_place = in_place;
    }

    fn x_ptr(&mut self) -> *const T {
        match self.raw {
            Some(r) => r[0],
            None => self.x.as_mut_ptr(),
        }
    }

    fn dy_ptr(&mut self) -> *const T {
        match self.raw {
            Some(r) => r[2],
            None => self.dy.as_mut_ptr(),
        }
    }

    fn y_ptr(&mut self) -> *mut T {
        if let Some(r) = self.raw {
            r[1]
        } else if self.in_place {
            self.x.as_mut_ptr()
        } else {
            self.y.as_mut_ptr()
        }
    }

    fn dx_ptr(&mut self) -> *mut T {
        if let Some(r) = self.raw {
            r[3]
        } else if self.in_place {
            self.dy.as_mut_ptr()
        } else {
            self.dx.as_mut_ptr()
        }
    }
}

macro_rules! c_functions {
    ($t:ty, $train:ident, $inf:ident, $mom:ident, $from:ident, $bw:ident, $red:ident, $app:ident) => {
        [
            |a: &mut CallArgs<$t>| unsafe {
                let y = a.y_ptr();
                $train(
                    null_mut(),
                    a.shape,
                    a.x_ptr(),
                    y,
                    a.gamma.as_ptr(),
                    a.beta.as_ptr(),
                    1e-5,
                    0.1,
                    0,
                    a.rm.as_mut_ptr(),
                    a.rv.as_mut_ptr(),
                    a.sm.as_mut_ptr(),
                    a.si.as_mut_ptr(),
                )
            },
            |a: &mut CallArgs<$t>| unsafe {
                let y = a.y_ptr();
                $inf(
                    null_mut(),
                    a.shape,
                    a.x_ptr(),
                    y,
                    a.gamma.as_ptr(),
                    a.beta.as_ptr(),
                    a.mean.as_ptr(),
                    a.var.as_ptr(),
                    1e-3,
                    NK_BN_FUSE_RELU,
                )
            },
            |a: &mut CallArgs<$t>| unsafe {
                $mom(
                    null_mut(),
                    a.shape,
                    a.x_ptr(),
                    a.m.as_mut_ptr(),
                    a.m2.as_mut_ptr(),
                )
            },
            |a: &mut CallArgs<$t>| unsafe {
                let y = a.y_ptr();
                let count = (a.shape.batch * a.shape.spatial) as u64 * 2;
                let m2: Vec<f64> = a.m2.iter().map(|v| v * 2.0 + 1.0).collect();
                $from(
                    null_mut(),
                    a.shape,
                    a.x_ptr(),
                    y,
                    a.gamma.as_ptr(),
                    a.beta.as_ptr(),
                    count,
                    a.m.as_ptr(),
                    m2.as_ptr(),
                    1e-5,
                    0.5,
                    NK_BN_RUNNING_VAR_BIASED,
                    a.rm.as_mut_ptr(),
                    a.rv.as_mut_ptr(),
                    a.sm.as_mut_ptr(),
                    a.si.as_mut_ptr(),
                )
            },
            |a: &mut CallArgs<$t>| unsafe {
                let dx = a.dx_ptr();
                $bw(
                    null_mut(),
                    a.shape,
                    a.x_ptr(),
                    a.dy_ptr(),
                    dx,
                    a.gamma.as_ptr(),
                    a.sm.as_ptr(),
                    a.si.as_ptr(),
                    a.dg.as_mut_ptr(),
                    a.db.as_mut_ptr(),
                )
            },
            |a: &mut CallArgs<$t>| unsafe {
                $red(
                    null_mut(),
                    a.shape,
                    a.x_ptr(),
                    a.dy_ptr(),
                    a.sm.as_ptr(),
                    a.si.as_ptr(),
                    a.m.as_mut_ptr(),
                    a.m2.as_mut_ptr(),
                )
            },
            |a: &mut CallArgs<$t>| unsafe {
                let dx = a.dx_ptr();
                let count = (a.shape.batch * a.shape.spatial) as u64 + 5;
                $app(
                    null_mut(),
                    a.shape,
                    a.x_ptr(),
                    a.dy_ptr(),
                    dx,
                    a.gamma.as_ptr(),
                    a.sm.as_ptr(),
                    a.si.as_ptr(),
                    count,
                    a.m.as_ptr(),
                    a.m2.as_ptr(),
                )
            },
        ]
    };
}

fn f32_functions() -> [unsafe fn(&mut CallArgs<f32>) -> nk_status; 7] {
    c_functions!(
        f32,
        nk_batchnorm_forward_training,
        nk_batchnorm_forward_inference,
        nk_moments,
        nk_batchnorm_forward_from_moments,
        nk_batchnorm_backward,
        nk_batchnorm_backward_reduce,
        nk_batchnorm_backward_apply
    )
}

fn bf16_functions() -> [unsafe fn(&mut CallArgs<nk_bf16>) -> nk_status; 7] {
    c_functions!(
        nk_bf16,
        nk_batchnorm_forward_training_bf16,
        nk_batchnorm_forward_inference_bf16,
        nk_moments_bf16,
        nk_batchnorm_forward_from_moments_bf16,
        nk_batchnorm_backward_bf16,
        nk_batchnorm_backward_reduce_bf16,
        nk_batchnorm_backward_apply_bf16
    )
}

fn f16_functions() -> [unsafe fn(&mut CallArgs<nk_f16>) -> nk_status; 7] {
    c_functions!(
        nk_f16,
        nk_batchnorm_forward_training_f16,
        nk_batchnorm_forward_inference_f16,
        nk_moments_f16,
        nk_batchnorm_forward_from_moments_f16,
        nk_batchnorm_backward_f16,
        nk_batchnorm_backward_reduce_f16,
        nk_batchnorm_backward_apply_f16
    )
}

#[test]
fn c_twins_are_the_f32_functions_rounded() {
    for shape in [
        c_shape(3, 5, 7, NCS),
        c_shape(3, 5, 7, NSC),
        c_shape(2, 3, 6000, NCS),
        c_shape(37, 11, 90, NSC),
    ] {
        // SAFETY: nk_bf16 has the layout of bf16, nk_f16 of f16.
        unsafe {
            c_twins::<bf16, nk_bf16>(shape, bf16_functions(), f32_functions());
            c_twins::<f16, nk_f16>(shape, f16_functions(), f32_functions());
        }
    }
}

/// The error contract of every twin: NULL data, an odd data address, x and y (dy and dx)
/// overlapping by one element; nothing written on error.
#[test]
fn c_twins_keep_the_error_contract() {
    fn check<C: Copy + PartialEq + std::fmt::Debug>(
        functions: [unsafe fn(&mut CallArgs<C>) -> nk_status; 7],
        x: Vec<C>,
        what: &str,
    ) {
        let shape = c_shape(2, 3, 5, NCS);
        let n = x.len();
        for (k, f) in functions.into_iter().enumerate() {
            // Outputs: y for functions 0, 1, 3; dx for 4, 6. Inputs: x, and dy from 4 on.
            let has_y = matches!(k, 0 | 1 | 3);
            let has_dx = k == 4 || k == 6;
            for fault in ["null", "misaligned", "alias", "alias_dx"] {
                if fault == "alias" && !has_y || fault == "alias_dx" && !has_dx {
                    continue;
                }
                let mut g = Gen::new(1);
                let mut a = CallArgs::new(shape, x.clone(), x.clone(), &mut g);
                // x, y, dy, dx in one buffer (and one spare element), so that odd and
                // overlapping pointers stay inside it.
                let mut arena: Vec<C> = (0..4).flat_map(|_| x.iter().copied()).collect();
                arena.push(x[0]);
                let base = arena.as_mut_ptr();
                // SAFETY: every offset lies inside `arena`.
                let p = |i: usize| unsafe { base.add(i) };
                let mut raw = [p(0), p(n), p(2 * n), p(3 * n)];
                match fault {
                    "null" => raw[0] = null_mut(),
                    // SAFETY: one byte into the arena.
                    "misaligned" => raw[0] = unsafe { base.cast::<u8>().add(1).cast::<C>() },
                    "alias" => raw[1] = p(1),
                    _ => raw[3] = p(2 * n + 1),
                }
                a.raw = Some(raw);
                let before = (arena.clone(), a.rm.clone(), a.rv.clone(), a.sm.clone());
                let before2 = (
                    a.si.clone(),
                    a.dg.clone(),
                    a.db.clone(),
                    a.m.clone(),
                    a.m2.clone(),
                );
                // SAFETY: the pointers lie inside `arena` with room for the shape's extent.
                let status = unsafe { f(&mut a) };
                let want = match fault {
                    "null" => NK_ERR_NULL_POINTER,
                    "misaligned" => NK_ERR_MISALIGNED,
                    _ => NK_ERR_ALIAS,
                };
                assert_eq!(status, want, "{what} function {k} fault {fault}");
                let after = (arena.clone(), a.rm.clone(), a.rv.clone(), a.sm.clone());
                let after2 = (
                    a.si.clone(),
                    a.dg.clone(),
                    a.db.clone(),
                    a.m.clone(),
                    a.m2.clone(),
                );
                assert!(
                    before == after && before2 == after2,
                    "{what} function {k} fault {fault}: something was written"
                );
            }
        }
    }
    let xb: Vec<nk_bf16> = (0..30)
        .map(|i| nk_bf16 {
            bits: bf16::from_f32(i as f32).to_bits(),
        })
        .collect();
    let xf: Vec<nk_f16> = (0..30)
        .map(|i| nk_f16 {
            bits: f16::from_f32(i as f32).to_bits(),
        })
        .collect();
    check(bf16_functions(), xb, "bf16");
    check(f16_functions(), xf, "f16");
}
