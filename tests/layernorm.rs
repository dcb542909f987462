//! Layer norm, RMS norm and weight standardization through the safe API and the C entry points,
//! against the float64 reference of `common::layer_reference`: every ISA this CPU has, one and
//! several threads (bitwise equal), odd shapes, large offsets, NaN and infinity, long rows,
//! in place = out of place bit for bit, and the error contract of the C functions.

// The C functions: built with the default `capi` feature.
#![cfg(feature = "capi")]

mod common;

use common::prop::config;

use common::check::{assert_bits, close, ctx, parallel_runners};

use common::arena::{Arena, read, shift as byte_shift, write as fill};
use common::data::Gen;
use common::half::{Half, Nan, assert_rounded, narrow, widen};
use common::layer_reference as r;
use normkit::batchnorm::{Affine, SavedStats};
use normkit::ffi::nk_status::{self, *};
use normkit::ffi::*;
use normkit::layernorm::{self, BackwardIo};
use normkit::{Context, ErrorKind, InOut, Isa, bf16, rmsnorm};
use proptest::prelude::*;
use std::ptr::{null, null_mut};

// Forward tolerances, derived from the statistics' accuracy bound (docs/accuracy.md): the
// mean within sqrt(18) * 2^-24 of the row's spread, the variance within 2 * sqrt(18) * 2^-24
// relative (RMS norm's mean square within 8 * 2^-24).

/// One rounding to f32, relative.
const U: f64 = 1.0 / (1u64 << 24) as f64;
/// Output error allowed, relative to `|gamma| * (1 + |xhat|) + |beta|`: the mean's error (4.5
/// roundings of `|gamma|`), invstd's (4.5 of `|gamma * xhat|`) and one rounding each of invstd
/// to f32, `x - m_hi`, the product with it, the offset and the affine multiply-add.
const TOL_Y: f64 = 9.0 * U;
/// Saved mean, relative to the row's spread: the bound, 4.24 roundings, plus f64 rounding.
const TOL_STAT: f64 = 4.5 * U;
/// Saved inverse spread, relative: half the variance's bound and one rounding to f32.
const TOL_INV: f64 = 5.5 * U;
/// Gradient error allowed, relative to the size of the terms (see `Backward::dx_scale`).
const TOL_GRAD: f64 = 2e-5;
/// The contract's accuracy on `10000 + N(0, 1)`.
const TOL_OFFSET: f64 = 1e-5;

fn isas() -> Vec<Isa> {
    Isa::supported()
}

// ---------------------------------------------------------------------------------------------
// Cases.

#[derive(Clone, Debug)]
struct Case {
    rows: usize,
    cols: usize,
    x: Vec<f32>,
    dy: Vec<f32>,
    gamma: Option<Vec<f32>>,
    beta: Option<Vec<f32>>,
    eps: f32,
}

fn case(rows: usize, cols: usize, seed: u64, offset: f64, scale: f64, affine: bool) -> Case {
    let mut g = Gen::new(seed);
    let mut x = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        // Every row its own offset and spread around the given ones.
        let o = offset + scale * g.normal();
        let s = scale * g.range(0.5, 2.0);
        x.extend(g.normals(cols, o, s));
    }
    Case {
        rows,
        cols,
        dy: g.normals(rows * cols, 0.0, 1.0),
        gamma: affine.then(|| g.uniforms(cols, 0.5, 2.0)),
        beta: affine.then(|| g.uniforms(cols, -1.0, 1.0)),
        x,
        eps: 1e-5,
    }
}

struct Fwd {
    y: Vec<f32>,
    mean: Vec<f32>,
    inv: Vec<f32>,
}

fn run_forward(c: &Case, cx: &Context, centered: bool, in_place: bool) -> Fwd {
    let mut y = if in_place {
        c.x.clone()
    } else {
        vec![f32::NAN; c.x.len()]
    };
    let io = if in_place {
        InOut::InPlace(&mut y)
    } else {
        InOut::separate(&c.x, &mut y).unwrap()
    };
    let mut mean = vec![f32::NAN; c.rows];
    let mut inv = vec![f32::NAN; c.rows];
    if centered {
        layernorm::forward(
            cx,
            c.rows,
            c.cols,
            io,
            Affine {
                gamma: c.gamma.as_deref(),
                beta: c.beta.as_deref(),
            },
            c.eps,
            SavedStats {
                mean: Some(&mut mean),
                invstd: Some(&mut inv),
            },
        )
        .unwrap();
    } else {
        rmsnorm::forward(
            cx,
            c.rows,
            c.cols,
            io,
            c.gamma.as_deref(),
            c.eps,
            Some(&mut inv),
        )
        .unwrap();
    }
    Fwd { y, mean, inv }
}

struct Bwd {
    dx: Vec<f32>,
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
}

fn run_backward(c: &Case, f: &Fwd, cx: &Context, centered: bool, in_place: bool) -> Bwd {
    let mut dx = if in_place {
        c.dy.clone()
    } else {
        vec![f32::NAN; c.dy.len()]
    };
    let grad = if in_place {
        BackwardIo::WithDx(InOut::InPlace(&mut dx))
    } else {
        BackwardIo::WithDx(InOut::separate(&c.dy, &mut dx).unwrap())
    };
    let mut dgamma = vec![f32::NAN; c.cols];
    let mut dbeta = vec![f32::NAN; c.cols];
    if centered {
        layernorm::backward(
            cx,
            c.rows,
            c.cols,
            &c.x,
            grad,
            c.gamma.as_deref(),
            &f.mean,
            &f.inv,
            Some(&mut dgamma),
            Some(&mut dbeta),
        )
        .unwrap();
    } else {
        rmsnorm::backward(
            cx,
            c.rows,
            c.cols,
            &c.x,
            grad,
            c.gamma.as_deref(),
            &f.inv,
            Some(&mut dgamma),
        )
        .unwrap();
        dbeta.fill(0.0);
    }
    Bwd { dx, dgamma, dbeta }
}

fn check_forward(c: &Case, f: &Fwd, centered: bool, tol: f64, what: &str) {
    // RMS norm has no beta.
    let beta = if centered { c.beta.as_deref() } else { None };
    let want = r::forward(
        c.rows,
        c.cols,
        &c.x,
        c.gamma.as_deref(),
        beta,
        c.eps,
        centered,
    );
    for row in 0..c.rows {
        let (m, s) = (want.mean[row], want.inv[row]);
        if centered {
            assert!(
                close(f.mean[row] as f64, m, TOL_STAT / s + m.abs() * U),
                "{what}: mean of row {row}: {} vs {m}",
                f.mean[row]
            );
        }
        assert!(
            close(f.inv[row] as f64, s, TOL_INV * s),
            "{what}: inv of row {row}: {} vs {s}",
            f.inv[row]
        );
        for j in 0..c.cols {
            let i = row * c.cols + j;
            let xhat = (c.x[i] as f64 - m) * s;
            let g = c.gamma.as_ref().map_or(1.0, |g| g[j] as f64);
            let b = beta.map_or(0.0, |b| b[j] as f64);
            let bound = tol * (g.abs() * (1.0 + xhat.abs()) + b.abs());
            assert!(
                close(f.y[i] as f64, want.y[i], bound),
                "{what}: y[{row}][{j}] = {} vs {}",
                f.y[i],
                want.y[i]
            );
        }
    }
}

fn check_backward(c: &Case, f: &Fwd, b: &Bwd, centered: bool, tol: f64, what: &str) {
    let mean: Vec<f64> = f.mean.iter().map(|&v| v as f64).collect();
    let inv: Vec<f64> = f.inv.iter().map(|&v| v as f64).collect();
    check_backward_with(c, (&mean, &inv), b, centered, tol, what);
}

/// [`check_backward`] against the reference backward with the statistics `(mean, inv)`.
fn check_backward_with(
    c: &Case,
    (mean, inv): (&[f64], &[f64]),
    b: &Bwd,
    centered: bool,
    tol: f64,
    what: &str,
) {
    let want = r::backward(
        c.rows,
        c.cols,
        &c.x,
        &c.dy,
        c.gamma.as_deref(),
        mean,
        inv,
        centered,
    );
    for i in 0..c.x.len() {
        assert!(
            close(b.dx[i] as f64, want.dx[i], tol * want.dx_scale[i] + 1e-30),
            "{what}: dx[{i}] = {} vs {} (scale {})",
            b.dx[i],
            want.dx[i],
            want.dx_scale[i]
        );
    }
    for j in 0..c.cols {
        assert!(
            close(
                b.dgamma[j] as f64,
                want.dgamma[j],
                tol * want.dgamma_scale[j] + 1e-30
            ),
            "{what}: dgamma[{j}] = {} vs {}",
            b.dgamma[j],
            want.dgamma[j]
        );
        if centered {
            assert!(
                close(
                    b.dbeta[j] as f64,
                    want.dbeta[j],
                    tol * want.dbeta_scale[j] + 1e-30
                ),
                "{what}: dbeta[{j}] = {} vs {}",
                b.dbeta[j],
                want.dbeta[j]
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The reference against itself.

#[test]
fn reference_backward_matches_finite_differences() {
    for centered in [true, false] {
        for (rows, cols) in [(1, 1), (1, 2), (2, 3), (3, 7), (2, 16)] {
            let c = case(rows, cols, 11 + cols as u64, 0.5, 1.0, true);
            let eps = 1e-3;
            let x: Vec<f64> = c.x.iter().map(|&v| v as f64).collect();
            let dy: Vec<f64> = c.dy.iter().map(|&v| v as f64).collect();
            let gamma: Vec<f64> = c
                .gamma
                .as_ref()
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect();
            let beta: Vec<f64> = c.beta.as_ref().unwrap().iter().map(|&v| v as f64).collect();
            let f = r::forward(rows, cols, &c.x, c.gamma.as_deref(), None, eps, centered);
            let b = r::backward(
                rows,
                cols,
                &c.x,
                &c.dy,
                c.gamma.as_deref(),
                &f.mean,
                &f.inv,
                centered,
            );
            let h = 1e-6;
            let l = |x: &[f64], g: &[f64], be: &[f64]| {
                r::loss(rows, cols, x, &dy, g, be, eps as f64, centered)
            };
            for i in 0..x.len() {
                let (mut p, mut m) = (x.clone(), x.clone());
                p[i] += h;
                m[i] -= h;
                let fd = (l(&p, &gamma, &beta) - l(&m, &gamma, &beta)) / (2.0 * h);
                assert!(
                    (fd - b.dx[i]).abs() <= 1e-6 * (1.0 + fd.abs()),
                    "dx[{i}] {fd} vs {}",
                    b.dx[i]
                );
            }
            for j in 0..cols {
                let (mut p, mut m) = (gamma.clone(), gamma.clone());
                p[j] += h;
                m[j] -= h;
                let fd = (l(&x, &p, &beta) - l(&x, &m, &beta)) / (2.0 * h);
                assert!(
                    (fd - b.dgamma[j]).abs() <= 1e-6 * (1.0 + fd.abs()),
                    "dgamma[{j}]"
                );
                let (mut p, mut m) = (beta.clone(), beta.clone());
                p[j] += h;
                m[j] -= h;
                let fd = (l(&x, &gamma, &p) - l(&x, &gamma, &m)) / (2.0 * h);
                assert!(
                    (fd - b.dbeta[j]).abs() <= 1e-6 * (1.0 + fd.abs()),
                    "dbeta[{j}]"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Accuracy.

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn matches_reference(
        rows in prop_oneof![Just(1usize), 1usize..6],
        cols in prop_oneof![Just(1usize), 1usize..80, Just(768usize), 2040usize..2060, Just(5000usize)],
        seed in any::<u64>(),
        offset in prop_oneof![Just(0.0f64), -100.0f64..100.0, Just(1e4f64)],
        affine in any::<bool>(),
        centered in any::<bool>(),
    ) {
        let c = case(rows, cols, seed, offset, 1.0, affine);
        for isa in isas() {
            let cx = ctx(1, isa);
            let f = run_forward(&c, &cx, centered, false);
            // RMS norm of offset data: xhat is about 1 everywhere, the spread a small part.
            check_forward(&c, &f, centered, TOL_Y, &format!("{isa:?} {rows}x{cols}"));
            let b = run_backward(&c, &f, &cx, centered, false);
            check_backward(&c, &f, &b, centered, TOL_GRAD, &format!("{isa:?} {rows}x{cols}"));
        }
    }
}

/// Values far below 1 (subnormal floats) with eps = 0: the inverse spread (about 1e40) exceeds
/// the largest float, the normalized values (about 1) do not. Both norms, every ISA, in place and
/// not, rows mixing such values with ordinary ones.
#[test]
fn inverse_spread_beyond_f32_still_normalizes() {
    for isa in isas() {
        for cols in [1, 5, 8, 33, 300] {
            let mut g = Gen::new(cols as u64 + 7);
            let rows = 3;
            let mut x = g.normals(rows * cols, 0.0, 1.0);
            // Rows 0 and 2 tiny (around 1e-40), row 1 ordinary.
            for (i, v) in x.iter_mut().enumerate() {
                if i / cols != 1 {
                    *v *= 1e-40;
                }
            }
            let c = Case {
                rows,
                cols,
                dy: vec![0.0; x.len()],
                gamma: Some(g.uniforms(cols, 0.5, 2.0)),
                beta: Some(g.uniforms(cols, -1.0, 1.0)),
                x,
                eps: 0.0,
            };
            for centered in [true, false] {
                for in_place in [false, true] {
                    let f = run_forward(&c, &ctx(1, isa), centered, in_place);
                    let beta = if centered { c.beta.as_deref() } else { None };
                    let want =
                        r::forward(rows, cols, &c.x, c.gamma.as_deref(), beta, 0.0, centered);
                    for (i, (&got, &w)) in f.y.iter().zip(&want.y).enumerate() {
                        // A one-column layer norm with eps = 0 is 0/0 (NaN) in the reference.
                        let nan_expected = centered && cols == 1;
                        assert!(
                            (nan_expected && w.is_nan() && got.is_nan())
                                || (w.is_finite()
                                    && (got as f64 - w).abs() <= 1e-5 * (1.0 + w.abs())),
                            "{isa:?} cols {cols} centered {centered} in place {in_place}: \
                             y[{i}] = {got} vs {w}"
                        );
                    }
                }
            }
        }
    }
}

/// The backward from the statistics the forward saved for rows whose inverse spread exceeds the
/// largest float (values around 1e-39 with eps = 0, mixed with ordinary rows): the forward saves
/// `invstd = +inf` for them (and normalizes them in f64), and the backward gives the finite
/// gradient of that forward, against the f64 reference computed from x (the ordinary rows from
/// their saved statistics, as elsewhere). Both norms, every ISA; one block of rows, fused column
/// sums over several tasks, and rows wider than 8192 (the separate column-sum pass); dx with the
/// sums, the sums alone (dy only), in place; the same bits on every runner and through C; the
/// bf16 twin.
#[test]
fn saved_inverse_spread_beyond_f32_gives_finite_gradients() {
    for (rows, cols) in [(5, 37), (200, 300), (3, 10_000)] {
        let mut g = Gen::new(rows as u64 * 7 + cols as u64);
        let mut c = case(rows, cols, 31 + cols as u64, 0.5, 1.0, true);
        c.eps = 0.0;
        // Every row but 1, 4, 7, ... tiny: an inverse spread near 1e39, and dy small enough
        // that dx (near invstd * dy) stays finite.
        let tiny = |row: usize| row % 3 != 1;
        for (i, (v, d)) in c.x.iter_mut().zip(&mut c.dy).enumerate() {
            if tiny(i / cols) {
                *v = (1e-39 * g.normal()) as f32;
                *d *= 1e-3;
            }
        }
        for centered in [true, false] {
            let norm = if centered { "layer" } else { "rms" };
            // The f64 statistics of the rows, from x.
            let exact = r::forward(rows, cols, &c.x, None, None, 0.0, centered);
            for isa in isas() {
                let what = format!("{norm} {isa:?} {rows}x{cols}");
                let cx = ctx(1, isa);
                let f = run_forward(&c, &cx, centered, false);
                // The forward's contract: such a row saves +inf, its y is finite.
                for row in 0..rows {
                    let inv = f.inv[row];
                    if tiny(row) {
                        assert!(exact.inv[row] > f32::MAX as f64 && exact.inv[row] < 1e50);
                        assert_eq!(inv, f32::INFINITY, "{what}: saved inv of row {row}");
                    } else {
                        assert!(inv.is_finite(), "{what}: saved inv of row {row}");
                    }
                }
                assert!(f.y.iter().all(|v| v.is_finite()), "{what}: y");
                let (mean, inv): (Vec<f64>, Vec<f64>) = (0..rows)
                    .map(|row| {
                        if tiny(row) {
                            (exact.mean[row], exact.inv[row])
                        } else {
                            (f.mean[row] as f64, f.inv[row] as f64)
                        }
                    })
                    .unzip();
                let b = run_backward(&c, &f, &cx, centered, false);
                for (name, v) in [("dx", &b.dx), ("dgamma", &b.dgamma), ("dbeta", &b.dbeta)] {
                    if let Some(i) = v.iter().position(|v| !v.is_finite()) {
                        panic!("{what}: {name}[{i}] = {} is not finite", v[i]);
                    }
                }
                check_backward_with(&c, (&mean, &inv), &b, centered, TOL_GRAD, &what);
                // The sums alone, from dy only.
                let mut dg = vec![f32::NAN; cols];
                let mut db = vec![f32::NAN; cols];
                if centered {
                    layernorm::backward(
                        &cx,
                        rows,
                        cols,
                        &c.x,
                        BackwardIo::DyOnly(&c.dy),
                        c.gamma.as_deref(),
                        &f.mean,
                        &f.inv,
                        Some(&mut dg),
                        Some(&mut db),
                    )
                    .unwrap();
                    assert_bits(&db, &b.dbeta, &format!("{what}: dbeta from dy only"));
                } else {
                    rmsnorm::backward(
                        &cx,
                        rows,
                        cols,
                        &c.x,
                        BackwardIo::DyOnly(&c.dy),
                        c.gamma.as_deref(),
                        &f.inv,
                        Some(&mut dg),
                    )
                    .unwrap();
                }
                assert_bits(&dg, &b.dgamma, &format!("{what}: dgamma from dy only"));
                let p = run_backward(&c, &f, &cx, centered, true);
                assert_bits(&p.dx, &b.dx, &format!("{what}: dx in place"));
                assert_bits(&p.dgamma, &b.dgamma, &format!("{what}: dgamma in place"));
                for runner in parallel_runners() {
                    let w = format!("{what} {runner:?}");
                    let q = run_backward(&c, &f, &ctx(runner, isa), centered, false);
                    assert_bits(&q.dx, &b.dx, &w);
                    assert_bits(&q.dgamma, &b.dgamma, &w);
                    assert_bits(&q.dbeta, &b.dbeta, &w);
                }
                check_bf16_twin(&c, &cx, centered, &tiny, &what);
            }
            // Through C (the global context): the safe API's bits.
            let cx = Context::global();
            let f = run_forward(&c, cx, centered, false);
            let b = run_backward(&c, &f, cx, centered, false);
            let (mut x, mut dy, mut gamma) = (c.x.clone(), c.dy.clone(), c.gamma.clone().unwrap());
            let (mut mean, mut inv) = (f.mean.clone(), f.inv.clone());
            let mut dx = vec![f32::NAN; rows * cols];
            let (mut dgamma, mut dbeta) = (vec![f32::NAN; cols], vec![f32::NAN; cols]);
            let a = Args {
                rows,
                cols,
                x: x.as_mut_ptr(),
                y: null_mut(),
                dy: dy.as_mut_ptr(),
                dx: dx.as_mut_ptr(),
                gamma: gamma.as_mut_ptr(),
                beta: null_mut(),
                eps: 0.0,
                mean: mean.as_mut_ptr(),
                inv: inv.as_mut_ptr(),
                dgamma: dgamma.as_mut_ptr(),
                dbeta: if centered {
                    dbeta.as_mut_ptr()
                } else {
                    null_mut()
                },
            };
            let fun = if centered {
                Fun::LnBackward
            } else {
                Fun::RmsBackward
            };
            assert_eq!(call(fun, a), NK_OK);
            assert_bits(&dx, &b.dx, &format!("{norm} {rows}x{cols}: C dx"));
            assert_bits(
                &dgamma,
                &b.dgamma,
                &format!("{norm} {rows}x{cols}: C dgamma"),
            );
            if centered {
                assert_bits(&dbeta, &b.dbeta, &format!("{norm} {rows}x{cols}: C dbeta"));
            }
        }
    }
}

/// The bf16 backward (bf16 holds values near 1e-39 too) from the saved statistics of the f32
/// forward on the widened data, with rows whose saved inverse spread is `+inf`: finite, and the
/// f32 backward on the widened data rounded once (the one generic path).
fn check_bf16_twin(
    c: &Case,
    cx: &Context,
    centered: bool,
    tiny: &dyn Fn(usize) -> bool,
    what: &str,
) {
    let (x, dy): (Vec<bf16>, Vec<bf16>) = (narrow(&c.x), narrow(&c.dy));
    let wide = Case {
        x: widen(&x),
        dy: widen(&dy),
        ..c.clone()
    };
    let f = run_forward(&wide, cx, centered, false);
    for row in (0..c.rows).filter(|&row| tiny(row)) {
        assert_eq!(
            f.inv[row],
            f32::INFINITY,
            "{what} bf16: saved inv of row {row}"
        );
    }
    let want = run_backward(&wide, &f, cx, centered, false);
    let mut dx = vec![bf16::round(f32::NAN); dy.len()];
    let (mut dgamma, mut dbeta) = (vec![f32::NAN; c.cols], vec![0.0; c.cols]);
    let grad = BackwardIo::WithDx(InOut::Separate { x: &dy, y: &mut dx });
    let gamma = c.gamma.as_deref();
    if centered {
        let (dg, db) = (Some(&mut dgamma[..]), Some(&mut dbeta[..]));
        layernorm::backward(cx, c.rows, c.cols, &x, grad, gamma, &f.mean, &f.inv, dg, db)
    } else {
        rmsnorm::backward(
            cx,
            c.rows,
            c.cols,
            &x,
            grad,
            gamma,
            &f.inv,
            Some(&mut dgamma),
        )
    }
    .unwrap();
    assert!(widen(&dx).iter().all(|v| v.is_finite()), "{what} bf16: dx");
    assert_rounded(&dx, &want.dx, Nan::Any, &format!("{what} bf16: dx"));
    assert_bits(&dgamma, &want.dgamma, &format!("{what} bf16: dgamma"));
    assert_bits(&dbeta, &want.dbeta, &format!("{what} bf16: dbeta"));
}

#[test]
fn offset_data_is_normalized_to_1e5() {
    for isa in isas() {
        for cols in [7, 768, 4096, 100_003] {
            let mut g = Gen::new(cols as u64);
            let rows = 3;
            let x = g.normals(rows * cols, 10000.0, 1.0);
            let c = Case {
                rows,
                cols,
                dy: vec![0.0; x.len()],
                x,
                gamma: None,
                beta: None,
                eps: 0.0,
            };
            let f = run_forward(&c, &ctx(1, isa), true, false);
            let want = r::forward(rows, cols, &c.x, None, None, 0.0, true);
            let worst =
                f.y.iter()
                    .zip(&want.y)
                    .map(|(&a, &b)| (a as f64 - b).abs())
                    .fold(0.0, f64::max);
            assert!(worst <= TOL_OFFSET, "{isa:?} cols {cols}: {worst}");
        }
    }
}

#[test]
fn long_rows_gradients_within_1e4() {
    for centered in [true, false] {
        for (rows, cols) in [(2, 1 << 20), (1 << 16, 16), (3, 10_000), (600, 8000)] {
            let c = case(rows, cols, 5, 3.0, 2.0, true);
            let cx = ctx(2, Isa::best());
            let f = run_forward(&c, &cx, centered, false);
            check_forward(&c, &f, centered, TOL_Y, "long");
            let b = run_backward(&c, &f, &cx, centered, false);
            check_backward(&c, &f, &b, centered, TOL_GRAD, "long");
            // Plain relative error of the sums, against the f64 reference.
            let mean: Vec<f64> = f.mean.iter().map(|&v| v as f64).collect();
            let inv: Vec<f64> = f.inv.iter().map(|&v| v as f64).collect();
            let want = r::backward(
                rows,
                cols,
                &c.x,
                &c.dy,
                c.gamma.as_deref(),
                &mean,
                &inv,
                centered,
            );
            for j in 0..cols {
                let rel =
                    |got: f32, want: f64, scale: f64| (got as f64 - want).abs() / scale.max(1e-30);
                assert!(rel(b.dgamma[j], want.dgamma[j], want.dgamma_scale[j]) <= 1e-5);
            }
        }
    }
}

#[test]
fn nan_and_inf_stay_in_their_row() {
    for centered in [true, false] {
        for isa in isas() {
            let mut c = case(5, 37, 3, 1.0, 1.0, true);
            c.x[37 + 5] = f32::NAN;
            c.x[3 * 37 + 36] = f32::INFINITY;
            let f = run_forward(&c, &ctx(1, isa), centered, false);
            check_forward(&c, &f, centered, TOL_Y, "nan/inf");
            for row in [0, 2, 4] {
                assert!(f.y[row * 37..(row + 1) * 37].iter().all(|v| v.is_finite()));
            }
            assert!(f.y[37..74].iter().all(|v| v.is_nan()));
            let b = run_backward(&c, &f, &ctx(1, isa), centered, false);
            for row in [0, 2, 4] {
                assert!(b.dx[row * 37..(row + 1) * 37].iter().all(|v| v.is_finite()));
            }
        }
    }
}

#[test]
fn weight_standardize_matches_reference() {
    for isa in isas() {
        for (c_out, fan_in) in [(1, 1), (3, 9), (64, 27), (5, 1000)] {
            let c = case(c_out, fan_in, 9, 0.1, 0.05, false);
            let cx = ctx(1, isa);
            let mut w = vec![f32::NAN; c.x.len()];
            layernorm::weight_standardize(
                &cx,
                c_out,
                fan_in,
                InOut::separate(&c.x, &mut w).unwrap(),
                1e-5,
            )
            .unwrap();
            let want = r::forward(c_out, fan_in, &c.x, None, None, 1e-5, true);
            for (i, (&g, &e)) in w.iter().zip(&want.y).enumerate() {
                assert!(
                    close(g as f64, e, TOL_Y * (1.0 + e.abs())),
                    "w[{i}] {g} vs {e}"
                );
            }
            let mut inplace = c.x.clone();
            layernorm::weight_standardize(&cx, c_out, fan_in, InOut::InPlace(&mut inplace), 1e-5)
                .unwrap();
            assert_bits(&w, &inplace, "weight standardization in place");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Determinism and in place.

#[test]
fn thread_counts_and_in_place_give_the_same_bits() {
    // Fused column sums in one wave and in several (600 x 8000), the separate column pass
    // (more than 8192 columns), one long row, tiny rows.
    let shapes = [
        (300, 777),
        (5000, 7),
        (40, 10_000),
        (1, 100_000),
        (3000, 64),
        (129, 300),
        (600, 8000),
    ];
    for centered in [true, false] {
        for (rows, cols) in shapes {
            let c = case(rows, cols, 21, 2.0, 1.5, true);
            for isa in isas() {
                let base = run_forward(&c, &ctx(1, isa), centered, false);
                let bb = run_backward(&c, &base, &ctx(1, isa), centered, false);
                for runner in parallel_runners() {
                    let what = format!("{isa:?} {rows}x{cols} {runner:?}");
                    let f = run_forward(&c, &ctx(runner, isa), centered, false);
                    assert_bits(&f.y, &base.y, &what);
                    assert_bits(&f.inv, &base.inv, &what);
                    if centered {
                        assert_bits(&f.mean, &base.mean, &what);
                    }
                    let b = run_backward(&c, &base, &ctx(runner, isa), centered, false);
                    assert_bits(&b.dx, &bb.dx, &what);
                    assert_bits(&b.dgamma, &bb.dgamma, &what);
                    assert_bits(&b.dbeta, &bb.dbeta, &what);
                }
                let f = run_forward(&c, &ctx(2, isa), centered, true);
                assert_bits(&f.y, &base.y, "forward in place");
                let b = run_backward(&c, &base, &ctx(2, isa), centered, true);
                assert_bits(&b.dx, &bb.dx, "backward in place");
                assert_bits(&b.dgamma, &bb.dgamma, "backward in place");
            }
        }
    }
}

#[test]
fn optional_outputs_do_not_change_the_others() {
    for centered in [true, false] {
        for (rows, cols) in [(3, 50), (200, 300), (9, 9000)] {
            let c = case(rows, cols, 4, 0.0, 1.0, true);
            let cx = ctx(2, Isa::best());
            let f = run_forward(&c, &cx, centered, false);
            let full = run_backward(&c, &f, &cx, centered, false);
            // dx alone, and sums alone.
            let mut dx = vec![0f32; c.x.len()];
            let mut dg = vec![0f32; cols];
            if centered {
                layernorm::backward(
                    &cx,
                    rows,
                    cols,
                    &c.x,
                    BackwardIo::WithDx(InOut::separate(&c.dy, &mut dx).unwrap()),
                    c.gamma.as_deref(),
                    &f.mean,
                    &f.inv,
                    None,
                    None,
                )
                .unwrap();
                layernorm::backward(
                    &cx,
                    rows,
                    cols,
                    &c.x,
                    BackwardIo::DyOnly(&c.dy),
                    c.gamma.as_deref(),
                    &f.mean,
                    &f.inv,
                    Some(&mut dg),
                    None,
                )
                .unwrap();
            } else {
                rmsnorm::backward(
                    &cx,
                    rows,
                    cols,
                    &c.x,
                    BackwardIo::WithDx(InOut::separate(&c.dy, &mut dx).unwrap()),
                    c.gamma.as_deref(),
                    &f.inv,
                    None,
                )
                .unwrap();
                rmsnorm::backward(
                    &cx,
                    rows,
                    cols,
                    &c.x,
                    BackwardIo::DyOnly(&c.dy),
                    c.gamma.as_deref(),
                    &f.inv,
                    Some(&mut dg),
                )
                .unwrap();
            }
            assert_bits(&dx, &full.dx, "dx alone");
            assert_bits(&dg, &full.dgamma, "dgamma alone");
            // Forward without saves.
            let mut y = vec![0f32; c.x.len()];
            if centered {
                layernorm::forward(
                    &cx,
                    rows,
                    cols,
                    InOut::separate(&c.x, &mut y).unwrap(),
                    Affine {
                        gamma: c.gamma.as_deref(),
                        beta: c.beta.as_deref(),
                    },
                    c.eps,
                    SavedStats::default(),
                )
                .unwrap();
            } else {
                rmsnorm::forward(
                    &cx,
                    rows,
                    cols,
                    InOut::separate(&c.x, &mut y).unwrap(),
                    c.gamma.as_deref(),
                    c.eps,
                    None,
                )
                .unwrap();
            }
            assert_bits(&y, &f.y, "forward without saves");
        }
    }
}

#[test]
fn safe_api_rejects_bad_lengths_and_eps() {
    let cx = ctx(1, Isa::Portable);
    let x = vec![1.0f32; 6];
    let mut y = vec![0.0f32; 6];
    let e = layernorm::forward(
        &cx,
        2,
        3,
        InOut::separate(&x, &mut y).unwrap(),
        Affine::default(),
        -1.0,
        SavedStats::default(),
    );
    assert_eq!(e.unwrap_err().kind(), ErrorKind::BadArgument);
    let e = layernorm::forward(
        &cx,
        2,
        4,
        InOut::separate(&x, &mut y).unwrap(),
        Affine::default(),
        1.0,
        SavedStats::default(),
    );
    assert_eq!(e.unwrap_err().kind(), ErrorKind::BadShape);
    let e = rmsnorm::forward(
        &cx,
        usize::MAX,
        3,
        InOut::separate(&x, &mut y).unwrap(),
        None,
        1.0,
        None,
    );
    assert_eq!(e.unwrap_err().kind(), ErrorKind::Overflow);
    let g = [1.0f32; 2];
    let e = rmsnorm::forward(
        &cx,
        2,
        3,
        InOut::separate(&x, &mut y).unwrap(),
        Some(&g),
        1.0,
        None,
    );
    assert_eq!(e.unwrap_err().kind(), ErrorKind::BadShape);
    assert!(y.iter().all(|&v| v == 0.0));
}

// ---------------------------------------------------------------------------------------------
// The C entry points: error contract, nothing written on error, zero-element calls.

const R: usize = 3;
const C: usize = 5;

struct Fx {
    arena: Arena,
    x: *mut f32,
    y: *mut f32,
    dy: *mut f32,
    dx: *mut f32,
    gamma: *mut f32,
    beta: *mut f32,
    mean: *mut f32,
    inv: *mut f32,
    dgamma: *mut f32,
    dbeta: *mut f32,
}

impl Fx {
    fn new() -> Fx {
        let mut a = Arena::new(8192);
        let mut g = Gen::new(1);
        let fx = Fx {
            x: a.alloc(R * C),
            y: a.alloc(R * C),
            dy: a.alloc(R * C),
            dx: a.alloc(R * C),
            gamma: a.alloc(C),
            beta: a.alloc(C),
            mean: a.alloc(R),
            inv: a.alloc(R),
            dgamma: a.alloc(C),
            dbeta: a.alloc(C),
            arena: a,
        };
        fill(fx.x, &g.normals(R * C, 1.0, 1.0));
        fill(fx.dy, &g.normals(R * C, 0.0, 1.0));
        fill(fx.gamma, &g.uniforms(C, 0.5, 2.0));
        fill(fx.beta, &g.uniforms(C, -1.0, 1.0));
        fill(fx.mean, &g.normals(R, 1.0, 0.1));
        fill(fx.inv, &g.uniforms(R, 0.5, 2.0));
        fx
    }
}

/// Every argument of every C function, so that one field at a time can be made wrong.
#[derive(Clone, Copy)]
struct Args {
    rows: usize,
    cols: usize,
    x: *mut f32,
    y: *mut f32,
    dy: *mut f32,
    dx: *mut f32,
    gamma: *mut f32,
    beta: *mut f32,
    eps: f32,
    mean: *mut f32,
    inv: *mut f32,
    dgamma: *mut f32,
    dbeta: *mut f32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fun {
    LnForward,
    LnBackward,
    RmsForward,
    RmsBackward,
    Standardize,
}

const FUNS: [Fun; 5] = [
    Fun::LnForward,
    Fun::LnBackward,
    Fun::RmsForward,
    Fun::RmsBackward,
    Fun::Standardize,
];

fn call(f: Fun, a: Args) -> nk_status {
    // SAFETY: arena pointers (possibly moved inside the arena, or NULL on purpose).
    unsafe {
        match f {
            Fun::LnForward => nk_layernorm_forward(
                null_mut(),
                a.rows,
                a.cols,
                a.x,
                a.y,
                a.gamma,
                a.beta,
                a.eps,
                a.mean,
                a.inv,
            ),
            Fun::LnBackward => nk_layernorm_backward(
                null_mut(),
                a.rows,
                a.cols,
                a.x,
                a.dy,
                a.dx,
                a.gamma,
                a.mean,
                a.inv,
                a.dgamma,
                a.dbeta,
            ),
            Fun::RmsForward => {
                nk_rmsnorm_forward(null_mut(), a.rows, a.cols, a.x, a.y, a.gamma, a.eps, a.inv)
            }
            Fun::RmsBackward => nk_rmsnorm_backward(
                null_mut(),
                a.rows,
                a.cols,
                a.x,
                a.dy,
                a.dx,
                a.gamma,
                a.inv,
                a.dgamma,
            ),
            Fun::Standardize => nk_weight_standardize(null_mut(), a.rows, a.cols, a.x, a.y, a.eps),
        }
    }
}

fn args(fx: &Fx) -> Args {
    Args {
        rows: R,
        cols: C,
        x: fx.x,
        y: fx.y,
        dy: fx.dy,
        dx: fx.dx,
        gamma: fx.gamma,
        beta: fx.beta,
        eps: 1e-5,
        mean: fx.mean,
        inv: fx.inv,
        dgamma: fx.dgamma,
        dbeta: fx.dbeta,
    }
}

/// Calls `f` with `a`, expects `want`, and checks that no byte of the arena changed.
#[track_caller]
fn expect_error(fx: &Fx, f: Fun, a: Args, want: nk_status, what: &str) {
    let before = fx.arena.bytes();
    let got = call(f, a);
    assert_eq!(got, want, "{f:?}: {what}");
    assert!(
        fx.arena.bytes() == before,
        "{f:?}: {what}: a buffer was written"
    );
    // SAFETY: never NULL.
    let msg = unsafe { std::ffi::CStr::from_ptr(nk_last_error_message()) };
    assert!(!msg.to_bytes().is_empty(), "{f:?}: {what}: no message");
}

fn is_backward(f: Fun) -> bool {
    matches!(f, Fun::LnBackward | Fun::RmsBackward)
}

#[test]
fn c_functions_return_each_status_and_write_nothing_on_error() {
    for f in FUNS {
        let fx = Fx::new();
        let ok = args(&fx);
        let huge = usize::MAX / 4;
        // NULL pointers.
        expect_error(
            &fx,
            f,
            Args {
                x: null_mut(),
                ..ok
            },
            NK_ERR_NULL_POINTER,
            "x NULL",
        );
        if is_backward(f) {
            expect_error(
                &fx,
                f,
                Args {
                    dy: null_mut(),
                    ..ok
                },
                NK_ERR_NULL_POINTER,
                "dy NULL",
            );
            expect_error(
                &fx,
                f,
                Args {
                    inv: null_mut(),
                    ..ok
                },
                NK_ERR_NULL_POINTER,
                "inv NULL",
            );
            if f == Fun::LnBackward {
                expect_error(
                    &fx,
                    f,
                    Args {
                        mean: null_mut(),
                        ..ok
                    },
                    NK_ERR_NULL_POINTER,
                    "mean NULL",
                );
            }
        } else {
            expect_error(
                &fx,
                f,
                Args {
                    y: null_mut(),
                    ..ok
                },
                NK_ERR_NULL_POINTER,
                "y NULL",
            );
        }
        // Overflow, and NULL before it.
        expect_error(
            &fx,
            f,
            Args { rows: huge, ..ok },
            NK_ERR_OVERFLOW,
            "rows overflow",
        );
        expect_error(
            &fx,
            f,
            Args { cols: huge, ..ok },
            NK_ERR_OVERFLOW,
            "cols overflow",
        );
        expect_error(
            &fx,
            f,
            Args {
                rows: huge,
                x: null_mut(),
                ..ok
            },
            NK_ERR_NULL_POINTER,
            "NULL before overflow",
        );
        if !is_backward(f) {
            // eps, after overflow and NULL.
            for eps in [-1.0, f32::NAN, f32::INFINITY, -0.5e-30] {
                expect_error(&fx, f, Args { eps, ..ok }, NK_ERR_BAD_ARGUMENT, "bad eps");
            }
            expect_error(
                &fx,
                f,
                Args {
                    eps: -1.0,
                    rows: huge,
                    ..ok
                },
                NK_ERR_OVERFLOW,
                "overflow before eps",
            );
            expect_error(
                &fx,
                f,
                Args {
                    eps: -1.0,
                    y: byte_shift(fx.y, 1),
                    ..ok
                },
                NK_ERR_BAD_ARGUMENT,
                "eps before misaligned",
            );
            expect_error(
                &fx,
                f,
                Args {
                    eps: -1.0,
                    rows: 0,
                    x: null_mut(),
                    y: null_mut(),
                    ..ok
                },
                NK_ERR_BAD_ARGUMENT,
                "eps checked on empty calls",
            );
        }
        // Misaligned, then alias.
        expect_error(
            &fx,
            f,
            Args {
                x: byte_shift(fx.x, 2),
                ..ok
            },
            NK_ERR_MISALIGNED,
            "x misaligned",
        );
        if f != Fun::Standardize {
            expect_error(
                &fx,
                f,
                Args {
                    gamma: byte_shift(fx.gamma, 1),
                    ..ok
                },
                NK_ERR_MISALIGNED,
                "gamma misaligned",
            );
            expect_error(
                &fx,
                f,
                Args {
                    inv: byte_shift(fx.inv, 3),
                    ..ok
                },
                NK_ERR_MISALIGNED,
                "inv misaligned",
            );
        }
        if is_backward(f) {
            expect_error(&fx, f, Args { dx: fx.x, ..ok }, NK_ERR_ALIAS, "dx == x");
            expect_error(
                &fx,
                f,
                Args {
                    dx: byte_shift(fx.dy, 4),
                    ..ok
                },
                NK_ERR_ALIAS,
                "dx overlaps dy",
            );
            expect_error(
                &fx,
                f,
                Args {
                    dgamma: byte_shift(fx.dx, 8),
                    ..ok
                },
                NK_ERR_ALIAS,
                "dgamma overlaps dx",
            );
            expect_error(
                &fx,
                f,
                Args {
                    dgamma: fx.gamma,
                    ..ok
                },
                NK_ERR_ALIAS,
                "dgamma == gamma",
            );
            expect_error(
                &fx,
                f,
                Args {
                    dx: byte_shift(fx.x, 4),
                    dgamma: byte_shift(fx.gamma, 1),
                    ..ok
                },
                NK_ERR_MISALIGNED,
                "misaligned before alias",
            );
            if f == Fun::LnBackward {
                expect_error(
                    &fx,
                    f,
                    Args {
                        dbeta: fx.dgamma,
                        ..ok
                    },
                    NK_ERR_ALIAS,
                    "dbeta == dgamma",
                );
            }
        } else {
            expect_error(
                &fx,
                f,
                Args {
                    y: byte_shift(fx.x, 4),
                    ..ok
                },
                NK_ERR_ALIAS,
                "y overlaps x",
            );
            if f != Fun::Standardize {
                expect_error(
                    &fx,
                    f,
                    Args {
                        inv: byte_shift(fx.y, 8),
                        ..ok
                    },
                    NK_ERR_ALIAS,
                    "save overlaps y",
                );
                expect_error(
                    &fx,
                    f,
                    Args { inv: fx.x, ..ok },
                    NK_ERR_ALIAS,
                    "save overlaps x",
                );
            }
            if f == Fun::LnForward {
                expect_error(
                    &fx,
                    f,
                    Args { mean: fx.inv, ..ok },
                    NK_ERR_ALIAS,
                    "save_mean == save_invstd",
                );
            }
        }
        // And a valid call succeeds.
        assert_eq!(call(f, ok), NK_OK, "{f:?}: valid call");
    }
}

#[test]
fn c_functions_accept_empty_calls_and_optional_pointers() {
    for f in FUNS {
        let fx = Fx::new();
        let ok = args(&fx);
        let none = Args {
            x: null_mut(),
            y: null_mut(),
            dy: null_mut(),
            dx: null_mut(),
            gamma: null_mut(),
            beta: null_mut(),
            dgamma: null_mut(),
            dbeta: null_mut(),
            ..ok
        };
        // rows = 0: no data, no statistics; dgamma and dbeta (given) become zeros.
        let before = fx.arena.bytes();
        assert_eq!(
            call(
                f,
                Args {
                    rows: 0,
                    mean: null_mut(),
                    inv: null_mut(),
                    ..none
                }
            ),
            NK_OK,
            "{f:?}"
        );
        assert!(fx.arena.bytes() == before);
        assert_eq!(call(f, Args { rows: 0, ..ok }), NK_OK);
        if is_backward(f) {
            assert_eq!(read(fx.dgamma, C), vec![0.0; C]);
            if f == Fun::LnBackward {
                assert_eq!(read(fx.dbeta, C), vec![0.0; C]);
            }
        }
        // cols = 0: nothing written at all, saved statistics included.
        let before = fx.arena.bytes();
        assert_eq!(call(f, Args { cols: 0, ..none }), NK_OK, "{f:?} cols 0");
        assert_eq!(call(f, Args { cols: 0, ..ok }), NK_OK, "{f:?} cols 0");
        assert!(fx.arena.bytes() == before, "{f:?}: cols 0 wrote");
        // Every optional pointer NULL.
        let minimal = Args {
            gamma: null_mut(),
            beta: null_mut(),
            dgamma: null_mut(),
            dbeta: null_mut(),
            ..ok
        };
        let minimal = if is_backward(f) {
            minimal
        } else {
            Args {
                mean: null_mut(),
                inv: null_mut(),
                ..minimal
            }
        };
        assert_eq!(call(f, minimal), NK_OK, "{f:?} optional NULL");
        if is_backward(f) {
            assert_eq!(
                call(
                    f,
                    Args {
                        dx: null_mut(),
                        ..minimal
                    }
                ),
                NK_OK
            );
        }
    }
    let _ = null::<f32>();
}

#[test]
fn c_functions_match_the_safe_api() {
    let fx = Fx::new();
    let a = args(&fx);
    let c = Case {
        rows: R,
        cols: C,
        x: read(fx.x, R * C),
        dy: read(fx.dy, R * C),
        gamma: Some(read(fx.gamma, C)),
        beta: Some(read(fx.beta, C)),
        eps: 1e-5,
    };
    let cx = Context::global();
    for centered in [true, false] {
        let f = run_forward(&c, cx, centered, false);
        let b = run_backward(&c, &f, cx, centered, false);
        if centered {
            assert_eq!(call(Fun::LnForward, a), NK_OK);
            assert_bits(&read(fx.mean, R), &f.mean, "C mean");
        } else {
            assert_eq!(call(Fun::RmsForward, a), NK_OK);
        }
        assert_bits(&read(fx.y, R * C), &f.y, "C y");
        assert_bits(&read(fx.inv, R), &f.inv, "C inv");
        let fun = if centered {
            Fun::LnBackward
        } else {
            Fun::RmsBackward
        };
        assert_eq!(call(fun, a), NK_OK);
        assert_bits(&read(fx.dx, R * C), &b.dx, "C dx");
        assert_bits(&read(fx.dgamma, C), &b.dgamma, "C dgamma");
        if centered {
            assert_bits(&read(fx.dbeta, C), &b.dbeta, "C dbeta");
        }
        // In place through C.
        fill(fx.y, &c.x);
        let fun = if centered {
            Fun::LnForward
        } else {
            Fun::RmsForward
        };
        assert_eq!(call(fun, Args { x: fx.y, ..a }), NK_OK);
        assert_bits(&read(fx.y, R * C), &f.y, "C in place");
    }
}

/// The exact input gradient of one row in f64: `inv * (g - mean(g) - xhat * mean(g * xhat))`
/// (`mean(g)` left out for RMS norm), `g = dy * gamma`, `xhat = (x - mean) * inv`.
fn row_dx(x: &[f32], dy: &[f32], gamma: &[f32], mean: Option<f32>, inv: f32) -> Vec<f64> {
    let n = x.len() as f64;
    let (m, s) = (mean.map_or(0.0, |m| m as f64), inv as f64);
    let g: Vec<f64> = dy
        .iter()
        .zip(gamma)
        .map(|(&d, &w)| d as f64 * w as f64)
        .collect();
    let xhat: Vec<f64> = x.iter().map(|&v| (v as f64 - m) * s).collect();
    let mg = if mean.is_some() {
        g.iter().sum::<f64>() / n
    } else {
        0.0
    };
    let mgx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / n;
    g.iter()
        .zip(&xhat)
        .map(|(gi, xi)| s * (gi - mg - xi * mgx))
        .collect()
}

/// Rows whose `dx` coefficients do not fit f32 while every exact `dx` is finite: an inverse
/// spread near 5e14 with a value near 5e14 makes `invstd^2 * mean(g * xhat)` about 1e73 (and
/// `mean(g * xhat)` about 5e43), and a value near 1e-44 multiplies it back to about 2e29. Also
/// a subnormal `xhat`, whose rounding in f32 lost 4e-4 of the row sum (both found by fuzzing).
/// Every ISA, RMS and layer norm, in place and not, against f64.
#[test]
fn coefficients_beyond_f32_give_finite_gradients() {
    let cases: [([f32; 2], [f32; 2], f32); 2] = [
        (
            [1.4e-44, -4.7464405e14],
            [1.4e-44, -4.7464405e14],
            4.733985e14,
        ),
        ([3.589e-42, -1.416609e14], [-1.8582107e14, 0.0], 5e-2),
    ];
    for (x, dy, inv) in cases {
        for isa in Isa::supported() {
            let ctx = ctx(2, isa);
            for layer in [false, true] {
                let gamma = [1.0f32; 2];
                let mean = layer.then_some(0.0f32);
                let want = row_dx(&x, &dy, &gamma, mean, inv);
                for in_place in [false, true] {
                    let mut dx = if in_place { dy.to_vec() } else { vec![0f32; 2] };
                    let grad = if in_place {
                        BackwardIo::WithDx(InOut::InPlace(&mut dx))
                    } else {
                        BackwardIo::WithDx(InOut::separate(&dy, &mut dx).unwrap())
                    };
                    if layer {
                        layernorm::backward(&ctx, 1, 2, &x, grad, None, &[0.0], &[inv], None, None)
                    } else {
                        rmsnorm::backward(&ctx, 1, 2, &x, grad, None, &[inv], None)
                    }
                    .unwrap();
                    for (j, (&got, &w)) in dx.iter().zip(&want).enumerate() {
                        if !w.is_finite() || w.abs() > f32::MAX as f64 {
                            continue;
                        }
                        assert!(
                            (got as f64 - w).abs() <= 1e-5 * w.abs(),
                            "{isa:?} layer {layer} in place {in_place}: dx[{j}] = {got}, want {w}"
                        );
                    }
                }
            }
        }
    }
}
