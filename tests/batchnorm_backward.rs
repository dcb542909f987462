//! Batch norm backward, local and synchronous (`backward`, `backward_reduce`,
//! `backward_apply`), against the float64 reference of `common::backward_reference`: the
//! reference itself against finite differences; every ISA this CPU has, both layouts, odd
//! shapes, large offsets, one and several threads (bit for bit); reduce then apply equals the
//! local backward bit for bit; in place equals out of place; absent gamma equals ones; absent
//! outputs change nothing else; a batch split into shards gives the whole batch's gradients;
//! accuracy on channels of a million values far from zero; NaN propagation; and the error
//! contract of the three C functions (every status, precedence, nothing written on error).

// The C functions: built with the default `capi` feature.
#![cfg(feature = "capi")]

mod common;

use common::prop::config;

use common::check::{EXECUTORS, Runner, assert_bits, assert_bits64, ctx, merge_c, moments_c};
use std::ffi::CStr;

use common::arena::{Arena, read as get, shift, write as put};
use common::backward_reference as r;
use common::data::Gen;
use normkit::batchnorm::{self, BackwardIo, TrainingParams};
use normkit::ffi::nk_status::{self, *};
use normkit::ffi::*;
use normkit::{Context, ErrorKind, InOut, Isa, Layout, Shape};
use proptest::prelude::*;
use std::ptr::{null, null_mut};

// ---------------------------------------------------------------------------------------------
// Tolerances.
//
// Sums run in f32 lanes over at most 64 terms per lane before they are added into f64; `x -
// mean` is exact near the mean. So a sum is within a small multiple of 64 f32 roundings of the
// sum of its terms' magnitudes. The input gradient is `dy * a + (x - mean) * b + k` in f32, with
// a, b, k rounded from f64: a few f32 roundings of its terms' magnitudes, plus what the sums'
// errors bring.

/// Error of a sum, relative to the sum of its terms' magnitudes.
const TOL_SUM: f64 = 1e-5;
/// Error of an input gradient, relative to the magnitude of its terms.
const TOL_DX: f64 = 1e-5;

// ---------------------------------------------------------------------------------------------
// Cases.

#[derive(Clone, Debug)]
struct Case {
    shape: Shape,
    x: Vec<f32>,
    dy: Vec<f32>,
    gamma: Option<Vec<f32>>,
    save_mean: Vec<f32>,
    save_invstd: Vec<f32>,
}

impl Case {
    /// Values `offset + spread_c * N(0, 1)` per channel, `dy = bias + N(0, 1) * dy_scale`, and
    /// the statistics a forward saves (from the f64 reference, rounded to f32).
    fn new(shape: Shape, seed: u64, offset: f64, gamma: bool) -> Case {
        let mut g = Gen::new(seed);
        let n = shape.batch * shape.channels * shape.spatial;
        let c = shape.channels;
        let spreads: Vec<f64> = (0..c).map(|_| g.range(0.25, 4.0)).collect();
        let shifts: Vec<f64> = (0..c).map(|_| g.range(-2.0, 2.0)).collect();
        let mut x = vec![0f32; n];
        for b in 0..shape.batch {
            for ch in 0..c {
                for s in 0..shape.spatial {
                    x[r::index(&shape, b, ch, s)] =
                        (offset + shifts[ch] + spreads[ch] * g.normal()) as f32;
                }
            }
        }
        let bias = g.range(-1.0, 1.0);
        let dy_scale = g.range(0.5, 2.0);
        let dy = g.normals(n, bias, dy_scale);
        let gamma = gamma.then(|| g.normals(c, 1.0, 0.5));
        let ones = vec![1.0; c];
        let (_, mean, invstd) = if shape.batch * shape.spatial > 0 {
            r::forward(&shape, &r::wide(&x), &ones, &vec![0.0; c], 1e-5)
        } else {
            (vec![], vec![0.0; c], vec![1.0; c])
        };
        Case {
            shape,
            x,
            dy,
            gamma,
            save_mean: mean.iter().map(|&m| m as f32).collect(),
            save_invstd: invstd.iter().map(|&s| s as f32).collect(),
        }
    }

    fn gamma64(&self) -> Vec<f64> {
        match &self.gamma {
            Some(g) => r::wide(g),
            None => vec![1.0; self.shape.channels],
        }
    }

    fn count(&self) -> u64 {
        (self.shape.batch * self.shape.spatial) as u64
    }
}

/// Outputs of a local backward.
#[derive(Clone, Debug)]
struct Grads {
    dx: Vec<f32>,
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
}

fn run_backward(ctx: &Context, case: &Case) -> Grads {
    let c = case.shape.channels;
    let mut out = Grads {
        dx: vec![f32::NAN; case.x.len()],
        dgamma: vec![f32::NAN; c],
        dbeta: vec![f32::NAN; c],
    };
    batchnorm::backward(
        ctx,
        case.shape,
        &case.x,
        BackwardIo::WithDx(InOut::separate(&case.dy, &mut out.dx).unwrap()),
        case.gamma.as_deref(),
        &case.save_mean,
        &case.save_invstd,
        Some(&mut out.dgamma),
        Some(&mut out.dbeta),
    )
    .expect("backward");
    out
}

fn run_reduce(ctx: &Context, case: &Case) -> (Vec<f64>, Vec<f64>) {
    let c = case.shape.channels;
    let (mut a, mut b) = (vec![f64::NAN; c], vec![f64::NAN; c]);
    batchnorm::backward_reduce(
        ctx,
        case.shape,
        &case.x,
        &case.dy,
        &case.save_mean,
        &case.save_invstd,
        &mut a,
        &mut b,
    )
    .expect("reduce");
    (a, b)
}

fn run_apply(ctx: &Context, case: &Case, count: u64, sums: &(Vec<f64>, Vec<f64>)) -> Vec<f32> {
    let mut dx = vec![f32::NAN; case.x.len()];
    batchnorm::backward_apply(
        ctx,
        case.shape,
        &case.x,
        InOut::separate(&case.dy, &mut dx).unwrap(),
        case.gamma.as_deref(),
        &case.save_mean,
        &case.save_invstd,
        count,
        &sums.0,
        &sums.1,
    )
    .expect("apply");
    dx
}

/// The reference sums, and the sums of their terms' magnitudes (for tolerances).
struct RefSums {
    sum_dy: Vec<f64>,
    sum_dy_xhat: Vec<f64>,
    abs_dy: Vec<f64>,
    abs_dy_xhat: Vec<f64>,
}

fn ref_sums(case: &Case) -> RefSums {
    let (x, dy) = (r::wide(&case.x), r::wide(&case.dy));
    let (mean, invstd) = (r::wide(&case.save_mean), r::wide(&case.save_invstd));
    let (sum_dy, sum_dy_xhat) = r::reduce(&case.shape, &x, &dy, &mean, &invstd);
    let abs = |v: &[f64]| v.iter().map(|v| v.abs()).collect::<Vec<f64>>();
    let (abs_dy, abs_dy_xhat) = r::reduce(&case.shape, &x, &abs(&dy), &mean, &invstd);
    // |dy * xhat| summed: reduce with |dy| and |x - mean| (mirrored around the mean).
    let xm: Vec<f64> = (0..x.len())
        .map(|i| {
            let c = channel_of(&case.shape, i);
            mean[c] + (x[i] - mean[c]).abs()
        })
        .collect();
    let (_, abs_dy_xhat2) = r::reduce(&case.shape, &xm, &abs(&dy), &mean, &invstd);
    let _ = abs_dy_xhat;
    RefSums {
        sum_dy,
        sum_dy_xhat,
        abs_dy,
        abs_dy_xhat: abs_dy_xhat2.iter().map(|v| v.abs()).collect(),
    }
}

fn channel_of(shape: &Shape, i: usize) -> usize {
    match shape.layout {
        Layout::Ncs => (i / shape.spatial) % shape.channels,
        Layout::Nsc => i % shape.channels,
        _ => unreachable!("a new layout this code does not know"),
    }
}

#[track_caller]
fn check_sums(got_dy: &[f64], got_dy_xhat: &[f64], want: &RefSums, what: &str) {
    for c in 0..want.sum_dy.len() {
        let tol = TOL_SUM * want.abs_dy[c] + 1e-30;
        assert!(
            (got_dy[c] - want.sum_dy[c]).abs() <= tol,
            "{what}: sum_dy[{c}] = {} want {} (tol {tol})",
            got_dy[c],
            want.sum_dy[c]
        );
        let tol = TOL_SUM * want.abs_dy_xhat[c] + 1e-30;
        assert!(
            (got_dy_xhat[c] - want.sum_dy_xhat[c]).abs() <= tol,
            "{what}: sum_dy_xhat[{c}] = {} want {} (tol {tol})",
            got_dy_xhat[c],
            want.sum_dy_xhat[c]
        );
    }
}

/// Checks `dx` against the reference with the global `count` and sums `sums`.
#[track_caller]
fn check_dx(case: &Case, dx: &[f32], count: u64, sums: &RefSums, what: &str) {
    let (x, dy) = (r::wide(&case.x), r::wide(&case.dy));
    let (mean, invstd) = (r::wide(&case.save_mean), r::wide(&case.save_invstd));
    let gamma = case.gamma64();
    let n = count as f64;
    let want = r::apply(
        &case.shape,
        &x,
        &dy,
        &gamma,
        &mean,
        &invstd,
        n,
        &sums.sum_dy,
        &sums.sum_dy_xhat,
    );
    for i in 0..x.len() {
        let c = channel_of(&case.shape, i);
        let scale = (gamma[c] * invstd[c]).abs();
        let xhat = ((x[i] - mean[c]) * invstd[c]).abs();
        let terms = dy[i].abs()
            + sums.abs_dy[c] / n
            + xhat * sums.abs_dy_xhat[c] / n
            + (sums.sum_dy[c] / n).abs()
            + xhat * (sums.sum_dy_xhat[c] / n).abs();
        let tol = TOL_DX * scale * terms + 1e-30;
        assert!(
            (dx[i] as f64 - want[i]).abs() <= tol,
            "{what}: dx[{i}] = {} want {} (tol {tol})",
            dx[i],
            want[i]
        );
    }
}

/// Everything about one case: the reference, every ISA, in place, reduce + apply, absent
/// outputs and gamma.
fn check_case(case: &Case, threads: &[usize]) {
    let want = ref_sums(case);
    let count = case.count();
    let mut first: Option<Grads> = None;
    for isa in Isa::supported() {
        let what = format!("{:?} {:?}", case.shape, isa);
        let base = run_backward(&ctx(1, isa), case);
        let dgamma: Vec<f64> = r::wide(&base.dgamma);
        let dbeta: Vec<f64> = r::wide(&base.dbeta);
        // dgamma and dbeta are the f32 roundings of the sums.
        let round = |v: &[f64]| v.iter().map(|&v| (v as f32) as f64).collect::<Vec<_>>();
        let loose = RefSums {
            sum_dy: round(&want.sum_dy),
            sum_dy_xhat: round(&want.sum_dy_xhat),
            abs_dy: want.abs_dy.iter().map(|v| v * 2.0).collect(),
            abs_dy_xhat: want.abs_dy_xhat.iter().map(|v| v * 2.0).collect(),
        };
        check_sums(&dbeta, &dgamma, &loose, &format!("{what} dgamma/dbeta"));
        if count > 0 {
            check_dx(case, &base.dx, count, &want, &what);
        }

        let sums = run_reduce(&ctx(1, isa), case);
        check_sums(&sums.0, &sums.1, &want, &format!("{what} reduce"));
        let dgamma32: Vec<f32> = sums.1.iter().map(|&v| v as f32).collect();
        let dbeta32: Vec<f32> = sums.0.iter().map(|&v| v as f32).collect();
        assert_bits(
            &dgamma32,
            &base.dgamma,
            &format!("{what}: dgamma = f32(reduce)"),
        );
        assert_bits(
            &dbeta32,
            &base.dbeta,
            &format!("{what}: dbeta = f32(reduce)"),
        );
        if count > 0 {
            let dx = run_apply(&ctx(1, isa), case, count, &sums);
            assert_bits(&dx, &base.dx, &format!("{what}: reduce + apply = backward"));
        }

        for t in threads.iter().map(|&t| Runner::Own(t)).chain(EXECUTORS) {
            let other = run_backward(&ctx(t, isa), case);
            assert_bits(&other.dx, &base.dx, &format!("{what}: dx on {t:?}"));
            assert_bits(
                &other.dgamma,
                &base.dgamma,
                &format!("{what}: dgamma {t:?}"),
            );
            assert_bits(&other.dbeta, &base.dbeta, &format!("{what}: dbeta {t:?}"));
            let s = run_reduce(&ctx(t, isa), case);
            assert_bits64(&s.0, &sums.0, &format!("{what}: sum_dy on {t:?}"));
            assert_bits64(&s.1, &sums.1, &format!("{what}: sum_dy_xhat on {t:?}"));
        }

        // In place, dx over dy.
        let c2 = ctx(*threads.last().unwrap_or(&1), isa);
        let mut buf = case.dy.clone();
        let (mut dg, mut db) = (
            vec![0f32; case.shape.channels],
            vec![0f32; case.shape.channels],
        );
        batchnorm::backward(
            &c2,
            case.shape,
            &case.x,
            BackwardIo::WithDx(InOut::InPlace(&mut buf)),
            case.gamma.as_deref(),
            &case.save_mean,
            &case.save_invstd,
            Some(&mut dg),
            Some(&mut db),
        )
        .unwrap();
        assert_bits(&buf, &base.dx, &format!("{what}: in place"));
        assert_bits(&dg, &base.dgamma, &format!("{what}: in place dgamma"));
        let mut buf = case.dy.clone();
        batchnorm::backward_apply(
            &c2,
            case.shape,
            &case.x,
            InOut::InPlace(&mut buf),
            case.gamma.as_deref(),
            &case.save_mean,
            &case.save_invstd,
            count.max(1),
            &sums.0,
            &sums.1,
        )
        .unwrap();
        if count > 0 {
            assert_bits(&buf, &base.dx, &format!("{what}: apply in place"));
        }

        // Absent outputs: the others are unchanged.
        let mut dx = vec![0f32; case.x.len()];
        batchnorm::backward(
            &c2,
            case.shape,
            &case.x,
            BackwardIo::WithDx(InOut::separate(&case.dy, &mut dx).unwrap()),
            case.gamma.as_deref(),
            &case.save_mean,
            &case.save_invstd,
            None,
            None,
        )
        .unwrap();
        assert_bits(&dx, &base.dx, &format!("{what}: dx alone"));
        let mut dg = vec![0f32; case.shape.channels];
        batchnorm::backward(
            &c2,
            case.shape,
            &case.x,
            BackwardIo::DyOnly(&case.dy),
            case.gamma.as_deref(),
            &case.save_mean,
            &case.save_invstd,
            Some(&mut dg),
            None,
        )
        .unwrap();
        assert_bits(&dg, &base.dgamma, &format!("{what}: dgamma alone"));

        // Absent gamma is gamma = 1.
        if case.gamma.is_none() {
            let ones = Case {
                gamma: Some(vec![1.0; case.shape.channels]),
                ..case.clone()
            };
            let g = run_backward(&c2, &ones);
            assert_bits(&g.dx, &base.dx, &format!("{what}: gamma ones"));
        }

        // Across ISAs: within rounding of each other (each is checked against the reference).
        if first.is_none() {
            first = Some(base);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The reference against finite differences.

/// `L(x, gamma, beta) = sum(w * y)` of a training forward.
fn loss(shape: &Shape, x: &[f64], gamma: &[f64], beta: &[f64], w: &[f64]) -> f64 {
    let (y, _, _) = r::forward(shape, x, gamma, beta, 1e-3);
    y.iter().zip(w).map(|(y, w)| y * w).sum()
}

#[test]
fn reference_matches_finite_differences() {
    for (i, &(b, c, s, layout)) in [
        (2, 3, 5, Layout::Ncs),
        (3, 2, 4, Layout::Nsc),
        (1, 1, 3, Layout::Ncs),
        (4, 3, 1, Layout::Nsc),
    ]
    .iter()
    .enumerate()
    {
        let shape = Shape::new(b, c, s, layout);
        let mut g = Gen::new(100 + i as u64);
        let n = b * c * s;
        let x: Vec<f64> = (0..n).map(|_| 3.0 + 2.0 * g.normal()).collect();
        let w: Vec<f64> = (0..n).map(|_| g.normal()).collect();
        let gamma: Vec<f64> = (0..c).map(|_| g.range(0.5, 2.0)).collect();
        let beta: Vec<f64> = (0..c).map(|_| g.normal()).collect();
        let (_, mean, invstd) = r::forward(&shape, &x, &gamma, &beta, 1e-3);
        let (dx, dgamma, dbeta) = r::backward(&shape, &x, &w, &gamma, &mean, &invstd);
        let h = 1e-6;
        let fd = |f: &dyn Fn(f64) -> f64| (f(h) - f(-h)) / (2.0 * h);
        for j in 0..n {
            let num = fd(&|d| {
                let mut xp = x.clone();
                xp[j] += d;
                loss(&shape, &xp, &gamma, &beta, &w)
            });
            assert!(
                (num - dx[j]).abs() <= 1e-6 * (1.0 + num.abs()),
                "{shape:?}: dx[{j}] = {} finite difference {num}",
                dx[j]
            );
        }
        for ch in 0..c {
            let num = fd(&|d| {
                let mut gp = gamma.clone();
                gp[ch] += d;
                loss(&shape, &x, &gp, &beta, &w)
            });
            assert!((num - dgamma[ch]).abs() <= 1e-6 * (1.0 + num.abs()));
            let num = fd(&|d| {
                let mut bp = beta.clone();
                bp[ch] += d;
                loss(&shape, &x, &gamma, &bp, &w)
            });
            assert!((num - dbeta[ch]).abs() <= 1e-6 * (1.0 + num.abs()));
        }
        // The gradient with respect to x sums to zero in every channel (the mean is removed).
        for ch in 0..c {
            let sum: f64 = (0..n)
                .filter(|&i| channel_of(&shape, i) == ch)
                .map(|i| dx[i])
                .sum();
            assert!(sum.abs() < 1e-9, "{shape:?}: channel {ch} dx sums to {sum}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests over shapes.

fn layouts() -> impl Strategy<Value = Layout> {
    prop_oneof![Just(Layout::Ncs), Just(Layout::Nsc)]
}

fn small_dims() -> impl Strategy<Value = (usize, usize, usize)> {
    prop_oneof![
        (1..4usize, 1..4usize, 1..4usize),
        (1..6usize, 1..40usize, 1..40usize),
        (1..3usize, 1..70usize, 1..3usize),
        (1..3usize, 1..3usize, 1..300usize),
    ]
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn backward_matches_reference(
        (b, c, s) in small_dims(),
        layout in layouts(),
        seed in any::<u64>(),
        offset in prop_oneof![Just(0.0), Just(10000.0), -100.0..100.0f64],
        gamma in any::<bool>(),
    ) {
        let case = Case::new(Shape::new(b, c, s, layout), seed, offset, gamma);
        check_case(&case, &[2]);
    }

    #[test]
    fn sharded_batch_matches_whole(
        (b, c, s) in (2..9usize, 1..20usize, 1..30usize),
        layout in layouts(),
        seed in any::<u64>(),
        parts in prop_oneof![Just(2usize), Just(4usize)],
        offset in prop_oneof![Just(0.0), Just(10000.0)],
    ) {
        sharded(Shape::new(b, c, s, layout), seed, parts, offset);
    }
}

/// Splits a batch into `parts` shards (batch sizes as even as possible, some possibly empty):
/// forward moments merged across shards give the statistics, every shard's reduce is added up,
/// and every shard's apply with the global count gives the whole batch's gradient.
fn sharded(shape: Shape, seed: u64, parts: usize, offset: f64) {
    let ctx = ctx(1, Isa::best());
    let c = shape.channels;
    let whole = Case::new(shape, seed, offset, true);
    let per = shape.channels * shape.spatial;
    let bounds: Vec<usize> = (0..=parts).map(|k| k * shape.batch / parts).collect();
    let shard = |k: usize| -> Case {
        let (lo, hi) = (bounds[k], bounds[k + 1]);
        Case {
            shape: Shape::new(hi - lo, c, shape.spatial, shape.layout),
            x: whole.x[lo * per..hi * per].to_vec(),
            dy: whole.dy[lo * per..hi * per].to_vec(),
            ..whole.clone()
        }
    };
    // Forward statistics: moments of each shard, merged.
    let (mut mean, mut m2) = (vec![0f64; c], vec![0f64; c]);
    let mut count = 0u64;
    for k in 0..parts {
        let p = shard(k);
        let (mut pm, mut pm2) = (vec![0f64; c], vec![0f64; c]);
        moments_c(&ctx, p.shape, &p.x, &mut pm, &mut pm2).unwrap();
        count = merge_c(count, &mut mean, &mut m2, p.count(), &pm, &pm2).unwrap();
    }
    assert_eq!(count, whole.count());
    let save_mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    let save_invstd: Vec<f32> = m2
        .iter()
        .map(|&m2| (1.0 / (m2 / count as f64 + 1e-5).sqrt()) as f32)
        .collect();
    let whole = Case {
        save_mean: save_mean.clone(),
        save_invstd: save_invstd.clone(),
        ..whole.clone()
    };
    // The sums of the shards add up to the whole batch's.
    let (mut sum_dy, mut sum_dy_xhat) = (vec![0f64; c], vec![0f64; c]);
    for k in 0..parts {
        let p = Case {
            save_mean: save_mean.clone(),
            save_invstd: save_invstd.clone(),
            ..shard(k)
        };
        let (a, b) = run_reduce(&ctx, &p);
        for ch in 0..c {
            sum_dy[ch] += a[ch];
            sum_dy_xhat[ch] += b[ch];
        }
    }
    let want = ref_sums(&whole);
    check_sums(&sum_dy, &sum_dy_xhat, &want, "sharded sums");
    let local = run_backward(&ctx, &whole);
    let mut dx = Vec::new();
    for k in 0..parts {
        let p = Case {
            save_mean: save_mean.clone(),
            save_invstd: save_invstd.clone(),
            ..shard(k)
        };
        dx.extend(run_apply(
            &ctx,
            &p,
            count,
            &(sum_dy.clone(), sum_dy_xhat.clone()),
        ));
    }
    check_dx(&whole, &dx, count, &want, "sharded dx");
    check_dx(&whole, &local.dx, count, &want, "whole dx");
}

// ---------------------------------------------------------------------------------------------
// Fixed cases: thread counts on shapes large enough for the pool, several chunks per channel,
// accuracy, special values.

#[test]
fn thread_counts_are_bitwise_equal() {
    for (b, c, s, layout) in [
        (3, 5, 3001, Layout::Ncs),
        (7, 37, 203, Layout::Nsc),
        (5, 130, 61, Layout::Nsc),
        (3000, 17, 1, Layout::Ncs),
        (2, 64, 1000, Layout::Nsc),
        // Rows wider than dx's blocks of channels (1024): a whole block and a partial one,
        // then also a tail of channels past the last vector.
        (3, 1040, 5, Layout::Nsc),
        (2, 1043, 3, Layout::Nsc),
    ] {
        let case = Case::new(Shape::new(b, c, s, layout), (b * c * s) as u64, 1.0, true);
        check_case(&case, &[2, 3, 8]);
    }
}

#[test]
fn channels_of_several_chunks() {
    // More than 2^18 values per channel: chunks reduced separately, added in order.
    let case = Case::new(Shape::new(3, 2, 100_003, Layout::Ncs), 7, 10.0, true);
    check_case(&case, &[2, 3]);
    let case = Case::new(Shape::new(40_001, 3, 7, Layout::Nsc), 8, 10.0, false);
    check_case(&case, &[3]);
}

#[test]
fn edge_shapes() {
    for (b, c, s) in [
        (1, 1, 1),
        (1, 1, 2),
        (1, 2, 1),
        (2, 1, 1),
        (1, 7, 1),
        (1, 1, 17),
        (1, 33, 1),
        (3, 1, 9),
        (1, 65, 3),
        (2, 3, 16),
        (2, 16, 3),
    ] {
        for layout in [Layout::Ncs, Layout::Nsc] {
            for gamma in [false, true] {
                let case = Case::new(Shape::new(b, c, s, layout), (b + c + s) as u64, 5.0, gamma);
                check_case(&case, &[2]);
            }
        }
    }
}

/// A channel whose gamma and inverse spread are near the top of the f32 range: `gamma *
/// invstd` (about 1e35) still fits f32, but the coefficient of `x - mean` (`gamma * invstd^2 *
/// mean(dy * xhat)`, about 1e45) does not, while every exact gradient (about 1e35) is finite.
/// Values are scaled down so that `xhat` is of order one. The other channels are ordinary,
/// so both the f32 and the f64 path run in the same call; checked on every ISA, both layouts,
/// the fused, the unfused and the reduce + apply paths, in place, and on several threads.
#[test]
fn coefficients_beyond_f32_give_finite_gradients() {
    for (b, c, s) in [(3, 2, 37), (5, 19, 1), (2, 3, 200), (2, 17, 16)] {
        for layout in [Layout::Ncs, Layout::Nsc] {
            let shape = Shape::new(b, c, s, layout);
            let mut case = Case::new(shape, (b * c + s) as u64, 0.0, true);
            for v in case.x.iter_mut().chain(case.save_mean.iter_mut()) {
                *v *= 1e-10;
            }
            for v in case.save_invstd.iter_mut() {
                *v *= 1e10;
            }
            case.gamma.as_mut().unwrap()[0] = 1e25;
            check_case(&case, &[2, 3]);
            let dx = run_backward(&ctx(1, Isa::best()), &case).dx;
            assert!(dx.iter().all(|v| v.is_finite()), "{shape:?}: {dx:?}");
        }
    }
    // More than 2^18 values per channel: the unfused channels-first path.
    let mut case = Case::new(Shape::new(2, 2, 140_001, Layout::Ncs), 3, 0.0, true);
    for v in case.x.iter_mut().chain(case.save_mean.iter_mut()) {
        *v *= 1e-10;
    }
    for v in case.save_invstd.iter_mut() {
        *v *= 1e10;
    }
    case.gamma.as_mut().unwrap()[1] = 1e25;
    check_case(&case, &[2]);
}

/// Relative errors of the library's gradients against the reference on `case`:
/// `(sum_dy, sum_dy_xhat, dx)`, each the largest over channels or elements.
fn relative_errors(ctx: &Context, case: &Case) -> (f64, f64, f64) {
    let want = ref_sums(case);
    let (a, b) = run_reduce(ctx, case);
    let rel = |g: f64, w: f64| (g - w).abs() / w.abs();
    let e1 = (0..a.len())
        .map(|c| rel(a[c], want.sum_dy[c]))
        .fold(0.0, f64::max);
    let e2 = (0..a.len())
        .map(|c| rel(b[c], want.sum_dy_xhat[c]))
        .fold(0.0, f64::max);
    let g = run_backward(ctx, case);
    let (x, dy) = (r::wide(&case.x), r::wide(&case.dy));
    let (mean, invstd) = (r::wide(&case.save_mean), r::wide(&case.save_invstd));
    let (dx, _, _) = r::backward(&case.shape, &x, &dy, &case.gamma64(), &mean, &invstd);
    let scale = dx.iter().map(|v| v * v).sum::<f64>().sqrt() / (dx.len() as f64).sqrt();
    let e3 =
        g.dx.iter()
            .zip(&dx)
            .map(|(&got, &w)| (got as f64 - w).abs() / scale)
            .fold(0.0, f64::max);
    (e1, e2, e3)
}

#[test]
fn million_value_channels_far_from_zero() {
    // 10000 + N(0, 1) data, dy correlated with xhat so that neither sum cancels: each gradient
    // within 1e-4 relative of float64 (the contract's target for 1M-value reductions).
    for (b, c, s, layout) in [(1, 2, 1 << 20, Layout::Ncs), (1 << 19, 3, 2, Layout::Nsc)] {
        let shape = Shape::new(b, c, s, layout);
        let mut case = Case::new(shape, 42, 10000.0, true);
        let mut g = Gen::new(43);
        for i in 0..case.x.len() {
            let ch = channel_of(&shape, i);
            let xhat = (case.x[i] as f64 - case.save_mean[ch] as f64) * case.save_invstd[ch] as f64;
            case.dy[i] = (0.5 + 0.3 * xhat + g.normal()) as f32;
        }
        for isa in Isa::supported() {
            let (e1, e2, e3) = relative_errors(&ctx(2, isa), &case);
            assert!(
                e1 < 1e-4 && e2 < 1e-4 && e3 < 1e-4,
                "{shape:?} {isa:?}: relative errors sum_dy {e1:e}, sum_dy_xhat {e2:e}, dx {e3:e}"
            );
        }
    }
}

#[test]
fn nan_and_infinity_propagate() {
    let shape = Shape::new(2, 3, 5, Layout::Ncs);
    let mut case = Case::new(shape, 9, 0.0, true);
    // A NaN in dy of channel 1 and an infinity in x of channel 2.
    case.dy[r::index(&shape, 1, 1, 3)] = f32::NAN;
    case.x[r::index(&shape, 0, 2, 0)] = f32::INFINITY;
    for isa in Isa::supported() {
        let g = run_backward(&ctx(1, isa), &case);
        assert!(g.dbeta[0].is_finite() && g.dgamma[0].is_finite());
        assert!(g.dbeta[1].is_nan() && g.dgamma[1].is_nan());
        assert!(g.dbeta[2].is_finite() && !g.dgamma[2].is_finite());
        for i in 0..case.x.len() {
            let ch = channel_of(&shape, i);
            if ch == 0 {
                assert!(g.dx[i].is_finite());
            } else {
                assert!(!g.dx[i].is_finite(), "{isa:?}: dx[{i}] = {}", g.dx[i]);
            }
        }
    }
}

#[test]
fn empty_batches() {
    let ctx = ctx(1, Isa::best());
    for shape in [
        Shape::new(0, 3, 4, Layout::Ncs),
        Shape::new(2, 3, 0, Layout::Nsc),
        Shape::new(2, 0, 4, Layout::Ncs),
    ] {
        let c = shape.channels;
        let (mean, invstd) = (vec![0f32; c], vec![1f32; c]);
        let (mut dg, mut db) = (vec![7f32; c], vec![7f32; c]);
        batchnorm::backward(
            &ctx,
            shape,
            &[],
            BackwardIo::WithDx(InOut::<f32>::separate(&[], &mut []).unwrap()),
            None,
            &mean,
            &invstd,
            Some(&mut dg),
            Some(&mut db),
        )
        .unwrap();
        assert!(
            dg.iter()
                .chain(&db)
                .all(|&v| v == 0.0 && v.is_sign_positive())
        );
        let (mut a, mut b) = (vec![7f64; c], vec![7f64; c]);
        batchnorm::backward_reduce::<f32>(&ctx, shape, &[], &[], &mean, &invstd, &mut a, &mut b)
            .unwrap();
        assert!(a.iter().chain(&b).all(|&v| v == 0.0));
        // An empty shard of a larger batch applies nothing, with any count >= 1.
        batchnorm::backward_apply(
            &ctx,
            shape,
            &[],
            InOut::<f32>::separate(&[], &mut []).unwrap(),
            None,
            &mean,
            &invstd,
            10,
            &a,
            &b,
        )
        .unwrap();
    }
}

#[test]
fn safe_api_rejections() {
    let ctx = ctx(1, Isa::best());
    let case = Case::new(Shape::new(2, 3, 4, Layout::Nsc), 1, 0.0, true);
    let sums = run_reduce(&ctx, &case);
    let apply = |count: u64, sum_dy: &[f64]| {
        let mut dx = vec![0f32; case.x.len()];
        batchnorm::backward_apply(
            &ctx,
            case.shape,
            &case.x,
            InOut::separate(&case.dy, &mut dx).unwrap(),
            None,
            &case.save_mean,
            &case.save_invstd,
            count,
            sum_dy,
            &sums.1,
        )
        .map(|_| dx)
    };
    assert_eq!(apply(0, &sums.0).unwrap_err().kind(), ErrorKind::BadShape);
    assert_eq!(apply(7, &sums.0).unwrap_err().kind(), ErrorKind::BadShape);
    assert_eq!(
        apply(8, &sums.0[..2]).unwrap_err().kind(),
        ErrorKind::BadShape
    );
    assert!(apply(8, &sums.0).is_ok());
    assert!(apply(u64::MAX, &sums.0).is_ok());
    let (mut dg, mut db) = (vec![0f32; 2], vec![0f32; 3]);
    let e = batchnorm::backward(
        &ctx,
        case.shape,
        &case.x,
        BackwardIo::DyOnly(&case.dy),
        None,
        &case.save_mean,
        &case.save_invstd,
        Some(&mut dg),
        Some(&mut db),
    );
    assert_eq!(e.unwrap_err().kind(), ErrorKind::BadShape);
    let huge = Shape::new(usize::MAX / 2, 3, 4, Layout::Ncs);
    let e = batchnorm::backward_reduce::<f32>(
        &ctx,
        huge,
        &[],
        &[],
        &[0.0; 3],
        &[0.0; 3],
        &mut [0.0; 3],
        &mut [0.0; 3],
    );
    assert_eq!(e.unwrap_err().kind(), ErrorKind::Overflow);
    let _ = TrainingParams::default();
}

// ---------------------------------------------------------------------------------------------
// The C functions: results equal the safe API's, and the error contract.

fn last_error() -> String {
    // SAFETY: never NULL, NUL-terminated.
    unsafe { CStr::from_ptr(nk_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

const B: usize = 2;
const C: usize = 3;
const S: usize = 5;
const N: usize = B * C * S;

/// Valid arguments of the three functions, in an arena.
struct Fx {
    arena: Arena,
    x: *mut f32,
    dy: *mut f32,
    dx: *mut f32,
    gamma: *mut f32,
    save_mean: *mut f32,
    save_invstd: *mut f32,
    dgamma: *mut f32,
    dbeta: *mut f32,
    sum_dy: *mut f64,
    sum_dy_xhat: *mut f64,
    shape: nk_shape,
}

impl Fx {
    fn new(layout: nk_layout_value) -> Fx {
        let mut arena = Arena::new(4096);
        let fx = Fx {
            x: arena.alloc(N),
            dy: arena.alloc(N),
            dx: arena.alloc(N),
            gamma: arena.alloc(C),
            save_mean: arena.alloc(C),
            save_invstd: arena.alloc(C),
            dgamma: arena.alloc(C),
            dbeta: arena.alloc(C),
            sum_dy: arena.alloc(C),
            sum_dy_xhat: arena.alloc(C),
            shape: nk_shape {
                batch: B,
                channels: C,
                spatial: S,
                layout,
            },
            arena,
        };
        let shape = fx.layout_shape();
        let case = Case::new(shape, 77, 2.0, true);
        put(fx.x, &case.x);
        put(fx.dy, &case.dy);
        put(fx.gamma, case.gamma.as_ref().unwrap());
        put(fx.save_mean, &case.save_mean);
        put(fx.save_invstd, &case.save_invstd);
        fx
    }

    fn layout_shape(&self) -> Shape {
        let layout = if self.shape.layout == 0 {
            Layout::Ncs
        } else {
            Layout::Nsc
        };
        Shape::new(
            self.shape.batch,
            self.shape.channels,
            self.shape.spatial,
            layout,
        )
    }

    fn case(&self) -> Case {
        Case {
            shape: self.layout_shape(),
            x: get(self.x, N),
            dy: get(self.dy, N),
            gamma: Some(get(self.gamma, C)),
            save_mean: get(self.save_mean, C),
            save_invstd: get(self.save_invstd, C),
        }
    }
}

/// Arguments of `nk_batchnorm_backward`, changed one at a time by the error cases.
#[derive(Clone, Copy)]
struct BackwardArgs {
    shape: nk_shape,
    x: *const f32,
    dy: *const f32,
    dx: *mut f32,
    gamma: *const f32,
    save_mean: *const f32,
    save_invstd: *const f32,
    dgamma: *mut f32,
    dbeta: *mut f32,
}

impl BackwardArgs {
    fn of(fx: &Fx) -> Self {
        BackwardArgs {
            shape: fx.shape,
            x: fx.x,
            dy: fx.dy,
            dx: fx.dx,
            gamma: fx.gamma,
            save_mean: fx.save_mean,
            save_invstd: fx.save_invstd,
            dgamma: fx.dgamma,
            dbeta: fx.dbeta,
        }
    }

    fn call(self, ctx: *mut nk_context) -> nk_status {
        // SAFETY: arena pointers, valid for the fixture's extents (or deliberately bad ones the
        // function must reject before touching them).
        unsafe {
            nk_batchnorm_backward(
                ctx,
                self.shape,
                self.x,
                self.dy,
                self.dx,
                self.gamma,
                self.save_mean,
                self.save_invstd,
                self.dgamma,
                self.dbeta,
            )
        }
    }
}

#[derive(Clone, Copy)]
struct ReduceArgs {
    shape: nk_shape,
    x: *const f32,
    dy: *const f32,
    save_mean: *const f32,
    save_invstd: *const f32,
    sum_dy: *mut f64,
    sum_dy_xhat: *mut f64,
}

impl ReduceArgs {
    fn of(fx: &Fx) -> Self {
        ReduceArgs {
            shape: fx.shape,
            x: fx.x,
            dy: fx.dy,
            save_mean: fx.save_mean,
            save_invstd: fx.save_invstd,
            sum_dy: fx.sum_dy,
            sum_dy_xhat: fx.sum_dy_xhat,
        }
    }

    fn call(self, ctx: *mut nk_context) -> nk_status {
        // SAFETY: as BackwardArgs::call.
        unsafe {
            nk_batchnorm_backward_reduce(
                ctx,
                self.shape,
                self.x,
                self.dy,
                self.save_mean,
                self.save_invstd,
                self.sum_dy,
                self.sum_dy_xhat,
            )
        }
    }
}

#[derive(Clone, Copy)]
struct ApplyArgs {
    shape: nk_shape,
    x: *const f32,
    dy: *const f32,
    dx: *mut f32,
    gamma: *const f32,
    save_mean: *const f32,
    save_invstd: *const f32,
    count: u64,
    sum_dy: *const f64,
    sum_dy_xhat: *const f64,
}

impl ApplyArgs {
    fn of(fx: &Fx) -> Self {
        ApplyArgs {
            shape: fx.shape,
            x: fx.x,
            dy: fx.dy,
            dx: fx.dx,
            gamma: fx.gamma,
            save_mean: fx.save_mean,
            save_invstd: fx.save_invstd,
            count: (B * S) as u64,
            sum_dy: fx.sum_dy,
            sum_dy_xhat: fx.sum_dy_xhat,
        }
    }

    fn call(self, ctx: *mut nk_context) -> nk_status {
        // SAFETY: as BackwardArgs::call.
        unsafe {
            nk_batchnorm_backward_apply(
                ctx,
                self.shape,
                self.x,
                self.dy,
                self.dx,
                self.gamma,
                self.save_mean,
                self.save_invstd,
                self.count,
                self.sum_dy,
                self.sum_dy_xhat,
            )
        }
    }
}

/// Runs `call`, expects `want`, and checks that nothing in the arena changed and that the last
/// error message is set.
#[track_caller]
fn expect_error(fx: &Fx, want: nk_status, what: &str, call: impl FnOnce() -> nk_status) {
    let before = fx.arena.bytes();
    let got = call();
    assert_eq!(got, want, "{what}");
    assert!(fx.arena.bytes() == before, "{what}: the arena changed");
    assert!(!last_error().is_empty(), "{what}: no error message");
}

#[test]
fn c_functions_match_the_safe_api() {
    for layout in [0, 1] {
        let fx = Fx::new(layout);
        let case = fx.case();
        let ctx1 = ctx(1, Isa::best());
        let want = run_backward(&ctx1, &case);
        assert_eq!(BackwardArgs::of(&fx).call(null_mut()), NK_OK);
        assert_bits(&get(fx.dx, N), &want.dx, "C dx");
        assert_bits(&get(fx.dgamma, C), &want.dgamma, "C dgamma");
        assert_bits(&get(fx.dbeta, C), &want.dbeta, "C dbeta");
        assert_eq!(ReduceArgs::of(&fx).call(null_mut()), NK_OK);
        let sums = run_reduce(&ctx1, &case);
        assert_bits64(&get(fx.sum_dy, C), &sums.0, "C sum_dy");
        assert_bits64(&get(fx.sum_dy_xhat, C), &sums.1, "C sum_dy_xhat");
        put(fx.dx, &[0f32; N]);
        assert_eq!(ApplyArgs::of(&fx).call(null_mut()), NK_OK);
        assert_bits(&get(fx.dx, N), &want.dx, "C apply dx");
        // In place over dy, and optional pointers absent.
        let saved_dy = get(fx.dy, N);
        let a = BackwardArgs {
            dx: fx.dy,
            gamma: null(),
            dgamma: null_mut(),
            dbeta: null_mut(),
            ..BackwardArgs::of(&fx)
        };
        assert_eq!(a.call(null_mut()), NK_OK);
        let no_gamma = run_backward(
            &ctx1,
            &Case {
                gamma: None,
                ..case.clone()
            },
        );
        assert_bits(&get(fx.dy, N), &no_gamma.dx, "C in place, gamma NULL");
        put(fx.dy, &saved_dy);
        let a = BackwardArgs {
            dx: null_mut(),
            ..BackwardArgs::of(&fx)
        };
        put(fx.dgamma, &[0f32; C]);
        assert_eq!(a.call(null_mut()), NK_OK);
        assert_bits(&get(fx.dgamma, C), &want.dgamma, "C dgamma without dx");
    }
}

#[test]
fn c_error_contract() {
    let big = usize::MAX / 4;
    for layout in [0, 1] {
        let fx = Fx::new(layout);
        // Valid results first, so the arena holds outputs that an error must not change.
        assert_eq!(BackwardArgs::of(&fx).call(null_mut()), NK_OK);
        assert_eq!(ReduceArgs::of(&fx).call(null_mut()), NK_OK);
        let ok = BackwardArgs::of(&fx);
        let cases: Vec<(&str, nk_status, BackwardArgs)> = vec![
            (
                "x NULL",
                NK_ERR_NULL_POINTER,
                BackwardArgs { x: null(), ..ok },
            ),
            (
                "dy NULL",
                NK_ERR_NULL_POINTER,
                BackwardArgs { dy: null(), ..ok },
            ),
            (
                "save_mean NULL",
                NK_ERR_NULL_POINTER,
                BackwardArgs {
                    save_mean: null(),
                    ..ok
                },
            ),
            (
                "save_invstd NULL",
                NK_ERR_NULL_POINTER,
                BackwardArgs {
                    save_invstd: null(),
                    ..ok
                },
            ),
            (
                "NULL before overflow",
                NK_ERR_NULL_POINTER,
                BackwardArgs {
                    x: null(),
                    shape: nk_shape {
                        batch: big,
                        ..ok.shape
                    },
                    ..ok
                },
            ),
            (
                "overflow",
                NK_ERR_OVERFLOW,
                BackwardArgs {
                    shape: nk_shape {
                        batch: big,
                        ..ok.shape
                    },
                    ..ok
                },
            ),
            (
                "overflow before bad argument",
                NK_ERR_OVERFLOW,
                BackwardArgs {
                    shape: nk_shape {
                        spatial: big,
                        layout: 9,
                        ..ok.shape
                    },
                    ..ok
                },
            ),
            (
                "bad layout",
                NK_ERR_BAD_ARGUMENT,
                BackwardArgs {
                    shape: nk_shape {
                        layout: 2,
                        ..ok.shape
                    },
                    ..ok
                },
            ),
            (
                "bad layout before misaligned",
                NK_ERR_BAD_ARGUMENT,
                BackwardArgs {
                    shape: nk_shape {
                        layout: -1,
                        ..ok.shape
                    },
                    x: shift(fx.x, 1),
                    ..ok
                },
            ),
            (
                "x misaligned",
                NK_ERR_MISALIGNED,
                BackwardArgs {
                    x: shift(fx.x, 2),
                    ..ok
                },
            ),
            (
                "dgamma misaligned",
                NK_ERR_MISALIGNED,
                BackwardArgs {
                    dgamma: shift(fx.dgamma, 1),
                    ..ok
                },
            ),
            (
                "misaligned before alias",
                NK_ERR_MISALIGNED,
                BackwardArgs {
                    dx: fx.x,
                    gamma: shift(fx.gamma, 3),
                    ..ok
                },
            ),
            ("dx == x", NK_ERR_ALIAS, BackwardArgs { dx: fx.x, ..ok }),
            (
                "dx overlaps dy",
                NK_ERR_ALIAS,
                BackwardArgs {
                    dx: shift(fx.dy, 4),
                    ..ok
                },
            ),
            (
                "dgamma == dbeta",
                NK_ERR_ALIAS,
                BackwardArgs {
                    dbeta: fx.dgamma,
                    ..ok
                },
            ),
            (
                "dbeta inside dy",
                NK_ERR_ALIAS,
                BackwardArgs {
                    dbeta: fx.dy,
                    dx: null_mut(),
                    ..ok
                },
            ),
            (
                "dgamma inside save_mean",
                NK_ERR_ALIAS,
                BackwardArgs {
                    dgamma: fx.save_mean,
                    ..ok
                },
            ),
        ];
        for (what, want, args) in cases {
            expect_error(&fx, want, &format!("backward {layout}: {what}"), || {
                args.call(null_mut())
            });
        }

        let ok = ReduceArgs::of(&fx);
        let cases: Vec<(&str, nk_status, ReduceArgs)> = vec![
            (
                "x NULL",
                NK_ERR_NULL_POINTER,
                ReduceArgs { x: null(), ..ok },
            ),
            (
                "dy NULL",
                NK_ERR_NULL_POINTER,
                ReduceArgs { dy: null(), ..ok },
            ),
            (
                "save_mean NULL",
                NK_ERR_NULL_POINTER,
                ReduceArgs {
                    save_mean: null(),
                    ..ok
                },
            ),
            (
                "sum_dy NULL",
                NK_ERR_NULL_POINTER,
                ReduceArgs {
                    sum_dy: null_mut(),
                    ..ok
                },
            ),
            (
                "sum_dy_xhat NULL",
                NK_ERR_NULL_POINTER,
                ReduceArgs {
                    sum_dy_xhat: null_mut(),
                    ..ok
                },
            ),
            (
                "overflow",
                NK_ERR_OVERFLOW,
                ReduceArgs {
                    shape: nk_shape {
                        channels: big,
                        ..ok.shape
                    },
                    ..ok
                },
            ),
            (
                "bad layout",
                NK_ERR_BAD_ARGUMENT,
                ReduceArgs {
                    shape: nk_shape {
                        layout: 5,
                        ..ok.shape
                    },
                    ..ok
                },
            ),
            (
                "sum_dy misaligned",
                NK_ERR_MISALIGNED,
                ReduceArgs {
                    sum_dy: shift(fx.sum_dy, 4),
                    ..ok
                },
            ),
            (
                "sums overlap",
                NK_ERR_ALIAS,
                ReduceArgs {
                    sum_dy_xhat: shift(fx.sum_dy, 8),
                    ..ok
                },
            ),
            (
                "sum_dy over x",
                NK_ERR_ALIAS,
                ReduceArgs {
                    sum_dy: fx.x.cast(),
                    ..ok
                },
            ),
        ];
        for (what, want, args) in cases {
            expect_error(&fx, want, &format!("reduce {layout}: {what}"), || {
                args.call(null_mut())
            });
        }

        let ok = ApplyArgs::of(&fx);
        let cases: Vec<(&str, nk_status, ApplyArgs)> = vec![
            ("x NULL", NK_ERR_NULL_POINTER, ApplyArgs { x: null(), ..ok }),
            (
                "dy NULL",
                NK_ERR_NULL_POINTER,
                ApplyArgs { dy: null(), ..ok },
            ),
            (
                "dx NULL",
                NK_ERR_NULL_POINTER,
                ApplyArgs {
                    dx: null_mut(),
                    ..ok
                },
            ),
            (
                "save_invstd NULL",
                NK_ERR_NULL_POINTER,
                ApplyArgs {
                    save_invstd: null(),
                    ..ok
                },
            ),
            (
                "sum_dy NULL",
                NK_ERR_NULL_POINTER,
                ApplyArgs {
                    sum_dy: null(),
                    ..ok
                },
            ),
            (
                "sum_dy_xhat NULL",
                NK_ERR_NULL_POINTER,
                ApplyArgs {
                    sum_dy_xhat: null(),
                    ..ok
                },
            ),
            (
                "NULL before bad count",
                NK_ERR_NULL_POINTER,
                ApplyArgs {
                    dx: null_mut(),
                    count: 0,
                    ..ok
                },
            ),
            (
                "overflow before bad count",
                NK_ERR_OVERFLOW,
                ApplyArgs {
                    shape: nk_shape {
                        batch: big,
                        ..ok.shape
                    },
                    count: 0,
                    ..ok
                },
            ),
            ("count 0", NK_ERR_BAD_SHAPE, ApplyArgs { count: 0, ..ok }),
            (
                "count below the shard's",
                NK_ERR_BAD_SHAPE,
                ApplyArgs {
                    count: (B * S - 1) as u64,
                    ..ok
                },
            ),
            (
                "bad count before bad layout",
                NK_ERR_BAD_SHAPE,
                ApplyArgs {
                    count: 1,
                    shape: nk_shape {
                        layout: 3,
                        ..ok.shape
                    },
                    ..ok
                },
            ),
            (
                "bad layout",
                NK_ERR_BAD_ARGUMENT,
                ApplyArgs {
                    shape: nk_shape {
                        layout: 3,
                        ..ok.shape
                    },
                    ..ok
                },
            ),
            (
                "dx misaligned",
                NK_ERR_MISALIGNED,
                ApplyArgs {
                    dx: shift(fx.dx, 2),
                    ..ok
                },
            ),
            (
                "sum_dy_xhat misaligned",
                NK_ERR_MISALIGNED,
                ApplyArgs {
                    sum_dy_xhat: shift(fx.sum_dy_xhat, 4),
                    ..ok
                },
            ),
            ("dx == x", NK_ERR_ALIAS, ApplyArgs { dx: fx.x, ..ok }),
            (
                "dx overlaps dy",
                NK_ERR_ALIAS,
                ApplyArgs {
                    dx: shift(fx.dy, -4),
                    ..ok
                },
            ),
            (
                "dx over save_mean",
                NK_ERR_ALIAS,
                ApplyArgs {
                    dx: fx.save_mean,
                    ..ok
                },
            ),
            (
                "dx over sum_dy",
                NK_ERR_ALIAS,
                ApplyArgs {
                    dx: fx.sum_dy.cast(),
                    ..ok
                },
            ),
        ];
        for (what, want, args) in cases {
            expect_error(&fx, want, &format!("apply {layout}: {what}"), || {
                args.call(null_mut())
            });
        }
    }
}

#[test]
fn c_zero_elements_with_null_data() {
    let mut arena = Arena::new(1024);
    let (mean, invstd) = (arena.alloc::<f32>(C), arena.alloc::<f32>(C));
    let (dgamma, dbeta) = (arena.alloc::<f32>(C), arena.alloc::<f32>(C));
    let (sum_dy, sum_dy_xhat) = (arena.alloc::<f64>(C), arena.alloc::<f64>(C));
    for shape in [
        nk_shape {
            batch: 0,
            channels: C,
            spatial: S,
            layout: 0,
        },
        nk_shape {
            batch: B,
            channels: C,
            spatial: 0,
            layout: 1,
        },
    ] {
        put(dgamma, &[5.0; C]);
        put(dbeta, &[5.0; C]);
        put(sum_dy, &[5.0; C]);
        put(sum_dy_xhat, &[5.0; C]);
        let a = BackwardArgs {
            shape,
            x: null(),
            dy: null(),
            dx: null_mut(),
            gamma: null(),
            save_mean: mean,
            save_invstd: invstd,
            dgamma,
            dbeta,
        };
        assert_eq!(a.call(null_mut()), NK_OK);
        assert_eq!(get(dgamma, C), vec![0.0; C]);
        assert_eq!(get(dbeta, C), vec![0.0; C]);
        let a = ReduceArgs {
            shape,
            x: null(),
            dy: null(),
            save_mean: mean,
            save_invstd: invstd,
            sum_dy,
            sum_dy_xhat,
        };
        assert_eq!(a.call(null_mut()), NK_OK);
        assert_eq!(get(sum_dy, C), vec![0.0; C]);
        assert_eq!(get(sum_dy_xhat, C), vec![0.0; C]);
        let a = ApplyArgs {
            shape,
            x: null(),
            dy: null(),
            dx: null_mut(),
            gamma: null(),
            save_mean: mean,
            save_invstd: invstd,
            count: 10,
            sum_dy,
            sum_dy_xhat,
        };
        assert_eq!(a.call(null_mut()), NK_OK);
        // count 0 is rejected even for an empty shard.
        assert_eq!(
            ApplyArgs { count: 0, ..a }.call(null_mut()),
            NK_ERR_BAD_SHAPE
        );
        // Saved statistics are still required when there are channels.
        assert_eq!(
            ReduceArgs {
                save_mean: null(),
                ..a_reduce(shape, mean, invstd, sum_dy, sum_dy_xhat)
            }
            .call(null_mut()),
            NK_ERR_NULL_POINTER
        );
    }
    // No channels: every per-channel pointer may be NULL.
    let shape = nk_shape {
        batch: B,
        channels: 0,
        spatial: S,
        layout: 0,
    };
    let a = ApplyArgs {
        shape,
        x: null(),
        dy: null(),
        dx: null_mut(),
        gamma: null(),
        save_mean: null(),
        save_invstd: null(),
        count: 10,
        sum_dy: null(),
        sum_dy_xhat: null(),
    };
    assert_eq!(a.call(null_mut()), NK_OK);
}

fn a_reduce(
    shape: nk_shape,
    save_mean: *const f32,
    save_invstd: *const f32,
    sum_dy: *mut f64,
    sum_dy_xhat: *mut f64,
) -> ReduceArgs {
    ReduceArgs {
        shape,
        x: null(),
        dy: null(),
        save_mean,
        save_invstd,
        sum_dy,
        sum_dy_xhat,
    }
}

#[test]
fn c_functions_on_contexts() {
    // Every ISA through a C context with 3 threads: the same bits as the safe API.
    let shape = Shape::new(3, 7, 2000, Layout::Nsc);
    let case = Case::new(shape, 5, 1.0, true);
    for isa in Isa::supported() {
        let mut raw: *mut nk_context = null_mut();
        // SAFETY: a valid out pointer.
        assert_eq!(unsafe { nk_context_create(3, &mut raw) }, NK_OK);
        let isa_value = match isa {
            Isa::Portable => 1,
            Isa::Avx2 => 2,
            Isa::Avx512 => 3,
            Isa::Neon => 4,
            _ => unreachable!("a new ISA this code does not know"),
        };
        // SAFETY: a live context.
        assert_eq!(unsafe { nk_context_set_isa(raw, isa_value) }, NK_OK);
        let want = run_backward(&ctx(1, isa), &case);
        let mut dx = vec![0f32; case.x.len()];
        let (mut dg, mut db) = (vec![0f32; 7], vec![0f32; 7]);
        let s = nk_shape {
            batch: 3,
            channels: 7,
            spatial: 2000,
            layout: 1,
        };
        // SAFETY: buffers of the shape's extents.
        let st = unsafe {
            nk_batchnorm_backward(
                raw,
                s,
                case.x.as_ptr(),
                case.dy.as_ptr(),
                dx.as_mut_ptr(),
                case.gamma.as_ref().unwrap().as_ptr(),
                case.save_mean.as_ptr(),
                case.save_invstd.as_ptr(),
                dg.as_mut_ptr(),
                db.as_mut_ptr(),
            )
        };
        assert_eq!(st, NK_OK);
        assert_bits(&dx, &want.dx, "C context dx");
        assert_bits(&dg, &want.dgamma, "C context dgamma");
        // SAFETY: created above.
        unsafe { nk_context_destroy(raw) };
    }
}

#[test]
fn large_outputs_at_every_alignment() {
    // Outputs of calls whose tensors take more than the caches hold (with a last-level cache of
    // up to 32 MiB and L2 caches of up to 1 MiB, 4.5 million elements with dx over dy) are
    // streamed after a head that aligns them: every offset of dx within a vector gives the same
    // bits, as does in place, and matches the reference.
    for (b, c, s, layout) in [
        (2, 64, 36_865, Layout::Ncs),
        (73_729, 64, 1, Layout::Nsc),
        (4_611, 1_024, 1, Layout::Ncs),
        (90_000, 53, 1, Layout::Nsc),
    ] {
        let shape = Shape::new(b, c, s, layout);
        let case = Case::new(shape, (b + c) as u64, 3.0, true);
        let n = case.x.len();
        let want = ref_sums(&case);
        for isa in Isa::supported() {
            let ctx = ctx(2, isa);
            let base = run_backward(&ctx, &case);
            if isa == Isa::best() {
                check_dx(
                    &case,
                    &base.dx,
                    case.count(),
                    &want,
                    &format!("{shape:?} {isa:?}"),
                );
            }
            let mut buf = vec![0f32; n + 16];
            for offset in 1..16 {
                let dx = &mut buf[offset..offset + n];
                batchnorm::backward(
                    &ctx,
                    shape,
                    &case.x,
                    BackwardIo::WithDx(InOut::separate(&case.dy, dx).unwrap()),
                    case.gamma.as_deref(),
                    &case.save_mean,
                    &case.save_invstd,
                    None,
                    None,
                )
                .unwrap();
                assert_bits(
                    dx,
                    &base.dx,
                    &format!("{shape:?} {isa:?}: dx at offset {offset}"),
                );
            }
            let mut dy = vec![0f32; n + 3];
            dy[3..].copy_from_slice(&case.dy);
            batchnorm::backward(
                &ctx,
                shape,
                &case.x,
                BackwardIo::WithDx(InOut::InPlace(&mut dy[3..])),
                case.gamma.as_deref(),
                &case.save_mean,
                &case.save_invstd,
                None,
                None,
            )
            .unwrap();
            assert_bits(&dy[3..], &base.dx, &format!("{shape:?} {isa:?}: in place"));
        }
    }
}
