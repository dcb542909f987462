//! Group and instance norm through the safe API and the C entry points, against the float64
//! reference of `common::group_reference`: both layouts, every ISA this CPU has, 1, 2, 3 and 8
//! threads (bitwise equal), odd shapes, groups = 1 and groups = C, large offsets; the backward
//! against the reference (itself checked by finite differences); in place = out of place bit
//! for bit; instance norm = group norm with groups = C bit for bit; and the error contract of
//! the three C functions (each status, precedence, nothing written, zero-element calls).

// The C functions: built with the default `capi` feature.
#![cfg(feature = "capi")]

mod common;

use common::prop::config;

use common::check::{assert_bits, close, ctx, parallel_runners};

use common::arena::{Arena, SENTINEL, read, shift, write};
use common::data::Gen;
use common::group_reference as gr;
use common::reference::index;
use normkit::ffi::nk_status::{self, *};
use normkit::ffi::*;
use normkit::groupnorm::{self, Affine, BackwardIo, SavedStats};
use normkit::{Context, ErrorKind, InOut, Isa, Layout, Shape, instancenorm};
use proptest::prelude::*;
use std::ptr::{null, null_mut};

// ---------------------------------------------------------------------------------------------
// Helpers.

// Forward tolerances, derived from the statistics' accuracy bound (docs/accuracy.md): a
// group's mean within sqrt(18) * 2^-24 of its spread, its variance within 2 * sqrt(18) * 2^-24
// relative.

/// Forward output error allowed, relative to `|gamma| * (1 + |xhat|) + |beta|`: the mean's
/// error (4.5 roundings of `|gamma|`), invstd's (4.5 of `|gamma * xhat|`) and one rounding each
/// of `gamma * invstd`, `x - m_hi`, the offset and the multiply-add.
const TOL_Y: f64 = 8.0 * F32_EPS;
/// Saved mean, relative to the group's spread: the bound, 4.24 roundings, plus f64 rounding.
const TOL_MEAN: f64 = 4.5 * F32_EPS;
/// Saved inverse spread, relative: half the variance's bound and one rounding to f32.
const TOL_INV: f64 = 5.5 * F32_EPS;
/// The contract's accuracy on `10000 + N(0, 1)`: the target 1e-5, absolute.
const TOL_OFFSET: f64 = 1e-5;
/// Backward error allowed, relative to the sum of the magnitudes of the terms.
const TOL_GRAD: f64 = 1e-5;
const F32_EPS: f64 = 1.0 / (1u64 << 24) as f64;

fn isas() -> Vec<Isa> {
    Isa::supported()
}

// ---------------------------------------------------------------------------------------------
// Cases.

#[derive(Clone, Debug)]
struct Spec {
    batch: usize,
    groups: usize,
    per_group: usize,
    spatial: usize,
    layout: Layout,
    seed: u64,
    offset: f64,
    scale: f64,
    gamma: bool,
    beta: bool,
    eps: f32,
}

#[derive(Clone, Debug)]
struct Case {
    shape: Shape,
    groups: usize,
    x: Vec<f32>,
    dy: Vec<f32>,
    gamma: Option<Vec<f32>>,
    beta: Option<Vec<f32>>,
    eps: f32,
}

impl Case {
    fn new(s: &Spec) -> Case {
        let mut g = Gen::new(s.seed);
        let c = s.groups * s.per_group;
        let shape = Shape::new(s.batch, c, s.spatial, s.layout);
        let mut x = vec![0f32; s.batch * c * s.spatial];
        // Each (n, c) gets its own offset and spread around the spec's.
        for n in 0..s.batch {
            for ch in 0..c {
                let o = s.offset + s.scale * g.range(-3.0, 3.0);
                let sc = s.scale * g.range(0.25, 4.0);
                for sp in 0..s.spatial {
                    x[index(&shape, n, ch, sp)] = (o + sc * g.normal()) as f32;
                }
            }
        }
        let dy = g.normals(x.len(), 0.3, 1.0);
        Case {
            shape,
            groups: s.groups,
            x,
            dy,
            gamma: s.gamma.then(|| g.uniforms(c, -2.0, 2.0)),
            beta: s.beta.then(|| g.uniforms(c, -1.0, 1.0)),
            eps: s.eps,
        }
    }

    fn affine(&self) -> Affine<'_> {
        Affine {
            gamma: self.gamma.as_deref(),
            beta: self.beta.as_deref(),
        }
    }

    fn saves(&self) -> usize {
        self.shape.batch * self.groups
    }
}

#[derive(Clone, Debug)]
struct FwdOut {
    y: Vec<f32>,
    mean: Vec<f32>,
    invstd: Vec<f32>,
}

impl FwdOut {
    #[track_caller]
    fn assert_bits(&self, other: &FwdOut, what: &str) {
        assert_bits(&self.y, &other.y, &format!("{what}: y"));
        assert_bits(&self.mean, &other.mean, &format!("{what}: save_mean"));
        assert_bits(&self.invstd, &other.invstd, &format!("{what}: save_invstd"));
    }
}

fn run_forward(ctx: &Context, case: &Case, in_place: bool, instance: bool) -> FwdOut {
    let mut y = if in_place {
        case.x.clone()
    } else {
        vec![SENTINEL; case.x.len()]
    };
    let mut mean = vec![SENTINEL; case.saves()];
    let mut invstd = vec![SENTINEL; case.saves()];
    let io = if in_place {
        InOut::InPlace(&mut y)
    } else {
        InOut::separate(&case.x, &mut y).unwrap()
    };
    let saved = SavedStats {
        mean: Some(&mut mean),
        invstd: Some(&mut invstd),
    };
    if instance {
        assert_eq!(case.groups, case.shape.channels);
        instancenorm::forward(ctx, case.shape, io, case.affine(), case.eps, saved)
    } else {
        groupnorm::forward(
            ctx,
            case.shape,
            case.groups,
            io,
            case.affine(),
            case.eps,
            saved,
        )
    }
    .expect("forward");
    FwdOut { y, mean, invstd }
}

#[derive(Clone, Debug)]
struct BwdOut {
    dx: Vec<f32>,
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
}

fn run_backward(ctx: &Context, case: &Case, saved: &FwdOut, in_place: bool) -> BwdOut {
    let c = case.shape.channels;
    let mut dx = if in_place {
        case.dy.clone()
    } else {
        vec![SENTINEL; case.dy.len()]
    };
    let mut dgamma = vec![SENTINEL; c];
    let mut dbeta = vec![SENTINEL; c];
    let grad = if in_place {
        BackwardIo::WithDx(InOut::InPlace(&mut dx))
    } else {
        BackwardIo::WithDx(InOut::separate(&case.dy, &mut dx).unwrap())
    };
    groupnorm::backward(
        ctx,
        case.shape,
        case.groups,
        &case.x,
        grad,
        case.gamma.as_deref(),
        &saved.mean,
        &saved.invstd,
        Some(&mut dgamma),
        Some(&mut dbeta),
    )
    .expect("backward");
    BwdOut { dx, dgamma, dbeta }
}

// ---------------------------------------------------------------------------------------------
// Comparisons.

#[track_caller]
fn check_forward(case: &Case, out: &FwdOut, what: &str) {
    let want = gr::forward(
        &case.shape,
        case.groups,
        &case.x,
        case.gamma.as_deref(),
        case.beta.as_deref(),
        case.eps,
    );
    for (i, (&got, &w)) in out.y.iter().zip(&want.y).enumerate() {
        let c = channel_of(&case.shape, i);
        let g = case.gamma.as_ref().map_or(1.0, |v| v[c] as f64).abs();
        let b = case.beta.as_ref().map_or(0.0, |v| v[c] as f64).abs();
        let tol = TOL_Y * (g * (1.0 + want.xhat[i].abs()) + b);
        assert!(
            close(got as f64, w, tol),
            "{what}: y[{i}] = {got} but the reference is {w} (tol {tol:e})"
        );
    }
    for k in 0..case.saves() {
        let (m, v, s) = (want.mean[k], want.var[k], want.invstd[k]);
        let tol = TOL_MEAN * v.sqrt() + F32_EPS * m.abs();
        assert!(
            close(out.mean[k] as f64, m, tol),
            "{what}: save_mean[{k}] = {} but the reference is {m}",
            out.mean[k]
        );
        assert!(
            close(out.invstd[k] as f64, s, TOL_INV * s.abs()),
            "{what}: save_invstd[{k}] = {} but the reference is {s}",
            out.invstd[k]
        );
    }
}

fn channel_of(shape: &Shape, i: usize) -> usize {
    match shape.layout {
        Layout::Ncs => (i / shape.spatial) % shape.channels,
        Layout::Nsc => i % shape.channels,
        _ => unreachable!("a new layout this code does not know"),
    }
}

/// Checks a backward against the reference run on the same saved statistics; `tol` relative to
/// the magnitudes of the terms of each result.
#[track_caller]
fn check_backward(case: &Case, saved: &FwdOut, out: &BwdOut, tol: f64, what: &str) {
    let mean: Vec<f64> = saved.mean.iter().map(|&v| v as f64).collect();
    let invstd: Vec<f64> = saved.invstd.iter().map(|&v| v as f64).collect();
    check_backward_with(case, (&mean, &invstd), out, tol, what);
}

/// [`check_backward`] against the reference run on the statistics `(mean, invstd)`.
#[track_caller]
fn check_backward_with(
    case: &Case,
    (mean, invstd): (&[f64], &[f64]),
    out: &BwdOut,
    tol: f64,
    what: &str,
) {
    let (shape, groups) = (&case.shape, case.groups);
    let want = gr::backward(
        shape,
        groups,
        &case.x,
        &case.dy,
        case.gamma.as_deref(),
        mean,
        invstd,
    );
    let ga = |c: usize| case.gamma.as_ref().map_or(1.0, |v| v[c] as f64);
    let c = shape.channels;
    let (mut abs_dg, mut abs_db) = (vec![0.0; c], vec![0.0; c]);
    for n in 0..shape.batch {
        for g in 0..groups {
            let k = n * groups + g;
            let members = gr::group_indices(shape, groups, n, g);
            let count = members.len() as f64;
            let xhat = |i: usize| (case.x[i] as f64 - mean[k]) * invstd[k];
            let mean_abs_g: f64 = members
                .iter()
                .map(|&(ch, i)| (case.dy[i] as f64 * ga(ch)).abs())
                .sum::<f64>()
                / count;
            let mean_abs_gx: f64 = members
                .iter()
                .map(|&(ch, i)| (case.dy[i] as f64 * ga(ch) * xhat(i)).abs())
                .sum::<f64>()
                / count;
            for &(ch, i) in &members {
                let g_i = (case.dy[i] as f64 * ga(ch)).abs();
                let scale = invstd[k] * (g_i + mean_abs_g + xhat(i).abs() * mean_abs_gx);
                let t = tol * scale + 1e-30;
                assert!(
                    close(out.dx[i] as f64, want.dx[i], t),
                    "{what}: dx[{i}] = {} but the reference is {} (tol {t:e})",
                    out.dx[i],
                    want.dx[i]
                );
                abs_dg[ch] += (case.dy[i] as f64 * xhat(i)).abs();
                abs_db[ch] += (case.dy[i] as f64).abs();
            }
        }
    }
    for ch in 0..c {
        let t = tol * abs_dg[ch] + 1e-30;
        assert!(
            close(
                out.dgamma[ch] as f64,
                want.dgamma[ch],
                t + F32_EPS * want.dgamma[ch].abs()
            ),
            "{what}: dgamma[{ch}] = {} but the reference is {}",
            out.dgamma[ch],
            want.dgamma[ch]
        );
        let t = tol * abs_db[ch] + 1e-30;
        assert!(
            close(
                out.dbeta[ch] as f64,
                want.dbeta[ch],
                t + F32_EPS * want.dbeta[ch].abs()
            ),
            "{what}: dbeta[{ch}] = {} but the reference is {}",
            out.dbeta[ch],
            want.dbeta[ch]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies.

fn layouts() -> impl Strategy<Value = Layout> {
    prop_oneof![Just(Layout::Ncs), Just(Layout::Nsc)]
}

/// (batch, groups, channels per group, spatial): groups = 1, groups = C (per-group 1), C = 1,
/// spatial = 1, odd sizes.
fn small_dims() -> impl Strategy<Value = (usize, usize, usize, usize)> {
    prop_oneof![
        (1..=3usize, 1..=4usize, 1..=5usize, 1..=40usize),
        (1..=3usize, Just(1usize), 1..=9usize, 1..=70usize),
        (1..=3usize, 1..=20usize, Just(1usize), 1..=70usize),
        (1..=3usize, Just(1usize), Just(1usize), 1..=300usize),
        (1..=40usize, 1..=8usize, 1..=6usize, Just(1usize)),
        (1..=2usize, 1..=6usize, 1..=24usize, 9..=100usize),
    ]
}

/// Shapes large enough for several threads to split the work.
fn parallel_dims() -> impl Strategy<Value = (usize, usize, usize, usize)> {
    prop_oneof![
        (1..=3usize, 1..=8usize, 1..=8usize, 1000..=3000usize),
        (600..=3000usize, 1..=8usize, 1..=8usize, Just(1usize)),
        (1..=2usize, 1..=2usize, 1..=2usize, 20_000..=40_000usize),
    ]
}

fn value_ranges() -> impl Strategy<Value = (f64, f64)> {
    prop_oneof![
        Just((0.0, 1.0)),
        Just((3.0, 0.5)),
        Just((10000.0, 1.0)),
        Just((-10000.0, 1.0)),
        Just((0.0, 1000.0)),
        Just((0.0, 1e-3)),
    ]
}

fn specs(dims: impl Strategy<Value = (usize, usize, usize, usize)>) -> impl Strategy<Value = Spec> {
    (
        dims,
        layouts(),
        any::<u64>(),
        value_ranges(),
        any::<(bool, bool)>(),
        prop_oneof![Just(1e-5f32), Just(1e-3), Just(0.5)],
    )
        .prop_map(
            |((batch, groups, per_group, spatial), layout, seed, (offset, scale), ab, eps)| Spec {
                batch,
                groups,
                per_group,
                spatial,
                layout,
                seed,
                offset,
                scale,
                gamma: ab.0,
                beta: ab.1,
                eps,
            },
        )
}

// ---------------------------------------------------------------------------------------------
// Forward and backward against the reference.

proptest! {
    #![proptest_config(config(512))]

    /// Forward and backward against the reference on every ISA and on 1 and 2 threads, in place
    /// bitwise equal to out of place; instance norm equals group norm with groups = C bitwise.
    #[test]
    fn against_reference(spec in specs(small_dims())) {
        let case = Case::new(&spec);
        for isa in isas() {
            let mut first: Option<(FwdOut, BwdOut)> = None;
            for threads in [1, 2] {
                let what = format!("{isa:?}, {threads} threads");
                let ctx = ctx(threads, isa);
                let out = run_forward(&ctx, &case, false, false);
                check_forward(&case, &out, &what);
                out.assert_bits(&run_forward(&ctx, &case, true, false), &format!("{what}: in place"));
                if case.groups == case.shape.channels {
                    out.assert_bits(&run_forward(&ctx, &case, false, true), &format!("{what}: instance norm"));
                    out.assert_bits(&run_forward(&ctx, &case, true, true), &format!("{what}: instance norm in place"));
                }
                let grads = run_backward(&ctx, &case, &out, false);
                check_backward(&case, &out, &grads, TOL_GRAD, &what);
                let in_place = run_backward(&ctx, &case, &out, true);
                assert_bits(&grads.dx, &in_place.dx, &format!("{what}: dx in place"));
                assert_bits(&grads.dgamma, &in_place.dgamma, &format!("{what}: dgamma in place"));
                assert_bits(&grads.dbeta, &in_place.dbeta, &format!("{what}: dbeta in place"));
                match &first {
                    None => first = Some((out, grads)),
                    Some((o, g)) => {
                        o.assert_bits(&out, &format!("{what} vs 1 thread"));
                        assert_bits(&g.dx, &grads.dx, &format!("{what}: dx vs 1 thread"));
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config(24))]

    /// Shapes that several threads split: 1, 2, 3 and 8 threads give the same bits, forward and
    /// backward, and agree with the reference.
    #[test]
    fn thread_counts_agree(spec in specs(parallel_dims())) {
        let case = Case::new(&spec);
        for isa in isas() {
            let base = run_forward(&ctx(1, isa), &case, false, false);
            check_forward(&case, &base, &format!("{isa:?}"));
            let grads = run_backward(&ctx(1, isa), &case, &base, false);
            check_backward(&case, &base, &grads, TOL_GRAD, &format!("{isa:?}"));
            for runner in parallel_runners() {
                let what = format!("{isa:?}, {runner:?}");
                let ctx = ctx(runner, isa);
                let out = run_forward(&ctx, &case, false, false);
                base.assert_bits(&out, &what);
                let g = run_backward(&ctx, &case, &base, false);
                assert_bits(&grads.dx, &g.dx, &format!("{what}: dx"));
                assert_bits(&grads.dgamma, &g.dgamma, &format!("{what}: dgamma"));
                assert_bits(&grads.dbeta, &g.dbeta, &format!("{what}: dbeta"));
            }
        }
    }
}

/// `10000 + N(0, 1)` normalizes to within 1e-5 of float64, both layouts, every ISA, group norm
/// and instance norm, on shapes with large groups (several statistics chunks) and small ones.
#[test]
fn large_offset_accuracy() {
    let shapes = [
        (2, 8, 4, 1500),
        (3, 6, 6, 64),
        (1, 4, 1, 300_000),
        (64, 4, 8, 1),
    ];
    for (batch, groups, per_group, spatial) in shapes {
        for layout in [Layout::Ncs, Layout::Nsc] {
            let c = groups * per_group;
            let shape = Shape::new(batch, c, spatial, layout);
            let x = common::data::normals(7, batch * c * spatial, 10000.0, 1.0);
            for (g, instance) in [(groups, false), (c, true)] {
                let want = gr::forward(&shape, g, &x, None, None, 1e-5);
                for isa in isas() {
                    let case = Case {
                        shape,
                        groups: g,
                        x: x.clone(),
                        dy: Vec::new(),
                        gamma: None,
                        beta: None,
                        eps: 1e-5,
                    };
                    let out = run_forward(&ctx(2, isa), &case, false, instance);
                    let worst = out
                        .y
                        .iter()
                        .zip(&want.y)
                        .map(|(&a, &b)| (a as f64 - b).abs())
                        .fold(0.0, f64::max);
                    assert!(
                        worst <= TOL_OFFSET,
                        "{shape:?}, groups {g}, {isa:?}: worst error {worst:e}"
                    );
                }
            }
        }
    }
}

/// BackwardIo on large groups (about 2^18 values each) agree with the reference to 1e-4
/// relative, with values far from zero.
#[test]
fn large_group_gradients() {
    for layout in [Layout::Ncs, Layout::Nsc] {
        let spec = Spec {
            batch: 2,
            groups: 2,
            per_group: 4,
            spatial: 65536,
            layout,
            seed: 11,
            offset: 100.0,
            scale: 2.0,
            gamma: true,
            beta: true,
            eps: 1e-5,
        };
        let mut case = Case::new(&spec);
        // dy correlated with x, so that the sums are large.
        for (d, &x) in case.dy.iter_mut().zip(&case.x) {
            *d += 0.05 * (x - 100.0);
        }
        for isa in isas() {
            let ctx = ctx(2, isa);
            let out = run_forward(&ctx, &case, false, false);
            let grads = run_backward(&ctx, &case, &out, false);
            check_backward(&case, &out, &grads, 1e-5, &format!("{layout:?} {isa:?}"));
            let mean: Vec<f64> = out.mean.iter().map(|&v| v as f64).collect();
            let invstd: Vec<f64> = out.invstd.iter().map(|&v| v as f64).collect();
            let want = gr::backward(
                &case.shape,
                case.groups,
                &case.x,
                &case.dy,
                case.gamma.as_deref(),
                &mean,
                &invstd,
            );
            for c in 0..case.shape.channels {
                for (got, w, name) in [
                    (grads.dgamma[c], want.dgamma[c], "dgamma"),
                    (grads.dbeta[c], want.dbeta[c], "dbeta"),
                ] {
                    let rel = (got as f64 - w).abs() / w.abs();
                    assert!(rel <= 1e-4, "{layout:?} {isa:?}: {name}[{c}] {got} vs {w}");
                }
            }
        }
    }
}

/// A group whose gamma and inverse spread are near the top of the f32 range: `gamma *
/// invstd` (about 1e35) fits f32, but the coefficient of `x - mean` (`invstd^2 * mean(g *
/// xhat)`, about 1e45) does not, while every exact gradient (about 1e35) is finite. The other
/// groups are ordinary. Every ISA, both layouts, in place, several threads (bit for bit).
#[test]
fn coefficients_beyond_f32_give_finite_gradients() {
    for (batch, groups, per_group, spatial) in [(2, 2, 3, 5), (3, 3, 7, 1), (1, 2, 17, 16)] {
        for layout in [Layout::Ncs, Layout::Nsc] {
            let spec = Spec {
                batch,
                groups,
                per_group,
                spatial,
                layout,
                seed: (batch * groups + spatial) as u64,
                offset: 0.0,
                scale: 1e-10,
                gamma: true,
                beta: false,
                eps: 1e-30,
            };
            let mut case = Case::new(&spec);
            case.gamma.as_mut().unwrap()[0] = 1e25;
            let what = format!("{:?}", case.shape);
            for isa in isas() {
                let out = run_forward(&ctx(1, isa), &case, false, false);
                let grads = run_backward(&ctx(1, isa), &case, &out, false);
                assert!(
                    grads.dx.iter().all(|v| v.is_finite()),
                    "{what} {isa:?}: {:?}",
                    grads.dx
                );
                check_backward(&case, &out, &grads, TOL_GRAD, &format!("{what} {isa:?}"));
                let in_place = run_backward(&ctx(3, isa), &case, &out, true);
                assert_bits(&in_place.dx, &grads.dx, &format!("{what} {isa:?} in place"));
            }
        }
    }
}

/// The backward from the statistics the forward saved for groups whose inverse spread exceeds
/// the largest float (values around 1e-39 with eps = 0, mixed with ordinary groups): the
/// forward saves `invstd = +inf` for them (and normalizes them in f64), and the backward gives
/// the finite gradient of that forward, against the f64 reference computed from x (the
/// ordinary groups from their saved statistics, as elsewhere). Both layouts; channels-first
/// groups of one visit and of several chunks (more than 2^18 values), spatial 1; every ISA; in
/// place and every runner bit for bit.
#[test]
fn saved_inverse_spread_beyond_f32_gives_finite_gradients() {
    for (batch, groups, per_group, spatial, layout) in [
        (3, 3, 2, 37, Layout::Ncs),
        (3, 3, 2, 37, Layout::Nsc),
        (3, 2, 4, 1, Layout::Ncs),
        (2, 2, 3, 5, Layout::Nsc),
        (1, 2, 1, 300_000, Layout::Ncs),
    ] {
        let spec = Spec {
            batch,
            groups,
            per_group,
            spatial,
            layout,
            seed: (batch * groups * per_group + spatial) as u64,
            offset: 0.5,
            scale: 1.0,
            gamma: true,
            beta: true,
            eps: 0.0,
        };
        let mut case = Case::new(&spec);
        let shape = case.shape;
        let mut g = Gen::new(spec.seed + 1);
        // Every group but 1, 4, 7, ... (index n * groups + g) tiny: an inverse spread near
        // 1e39, and dy small enough that dx (near invstd * dy) stays finite.
        let tiny = |k: usize| k % 3 != 1;
        for n in 0..batch {
            for grp in 0..groups {
                if tiny(n * groups + grp) {
                    for (_, i) in gr::group_indices(&shape, groups, n, grp) {
                        case.x[i] = (1e-39 * g.normal()) as f32;
                        case.dy[i] *= 1e-3;
                    }
                }
            }
        }
        // The f64 statistics of the groups, from x.
        let exact = gr::forward(&shape, groups, &case.x, None, None, 0.0);
        for isa in isas() {
            let what = format!("{shape:?} groups {groups} {isa:?}");
            let out = run_forward(&ctx(1, isa), &case, false, false);
            // The forward's contract: such a group saves +inf, its y is finite.
            for k in 0..case.saves() {
                if tiny(k) {
                    assert!(exact.invstd[k] > f32::MAX as f64 && exact.invstd[k] < 1e50);
                    assert_eq!(out.invstd[k], f32::INFINITY, "{what}: saved invstd {k}");
                } else {
                    assert!(out.invstd[k].is_finite(), "{what}: saved invstd {k}");
                }
            }
            assert!(out.y.iter().all(|v| v.is_finite()), "{what}: y");
            let (mean, invstd): (Vec<f64>, Vec<f64>) = (0..case.saves())
                .map(|k| {
                    if tiny(k) {
                        (exact.mean[k], exact.invstd[k])
                    } else {
                        (out.mean[k] as f64, out.invstd[k] as f64)
                    }
                })
                .unzip();
            let grads = run_backward(&ctx(1, isa), &case, &out, false);
            for (name, v) in [
                ("dx", &grads.dx),
                ("dgamma", &grads.dgamma),
                ("dbeta", &grads.dbeta),
            ] {
                if let Some(i) = v.iter().position(|v| !v.is_finite()) {
                    panic!("{what}: {name}[{i}] = {} is not finite", v[i]);
                }
            }
            check_backward_with(&case, (&mean, &invstd), &grads, TOL_GRAD, &what);
            let in_place = run_backward(&ctx(2, isa), &case, &out, true);
            assert_bits(&in_place.dx, &grads.dx, &format!("{what} in place"));
            for runner in parallel_runners() {
                let w = format!("{what} {runner:?}");
                let other = run_backward(&ctx(runner, isa), &case, &out, false);
                assert_bits(&other.dx, &grads.dx, &w);
                assert_bits(&other.dgamma, &grads.dgamma, &w);
                assert_bits(&other.dbeta, &grads.dbeta, &w);
            }
        }
    }
}

/// Groups whose `gamma * invstd` is beyond f32 while every output is finite (fuzzing found NaN
/// there: a group of a subnormal and zeros with `eps = 0` has `invstd` near 2.5e43): group and
/// instance norm forward, both layouts, fused and two-pass shapes, every ISA, against f64. The
/// other groups are ordinary, so the f32 and f64 maps run in the same call.
#[test]
fn scale_beyond_f32_gives_finite_outputs() {
    let tiny = [8.4e-44f32, 0.0, 0.0, 1.4e-45, 0.0, 2.8e-44, 0.0];
    for (batch, groups, per_group, spatial) in [(3, 3, 1, 3), (2, 2, 3, 5), (1, 2, 17, 16)] {
        for layout in [Layout::Ncs, Layout::Nsc] {
            let channels = groups * per_group;
            let shape = Shape::new(batch, channels, spatial, layout);
            let mut x = vec![0f32; batch * channels * spatial];
            for n in 0..batch {
                for c in 0..channels {
                    for s in 0..spatial {
                        // Group 0 is tiny, the others ordinary.
                        x[index(&shape, n, c, s)] = if c < per_group {
                            tiny[(n + c + s) % tiny.len()]
                        } else {
                            (n * 7 + c * 3 + s) as f32 * 0.25 - 2.0
                        };
                    }
                }
            }
            let gamma: Vec<f32> = (0..channels).map(|c| -2.0 + c as f32 * 0.5).collect();
            let beta: Vec<f32> = (0..channels).map(|c| 0.25 - c as f32).collect();
            let affine = Affine {
                gamma: Some(&gamma),
                beta: Some(&beta),
            };
            let want = gr::forward(&shape, groups, &x, Some(&gamma), Some(&beta), 0.0);
            for isa in isas() {
                for instance in [false, true] {
                    if instance && per_group != 1 {
                        continue;
                    }
                    let what = format!("{shape:?} groups {groups} {isa:?} instance {instance}");
                    let mut y = vec![f32::NAN; x.len()];
                    let io = InOut::separate(&x, &mut y).unwrap();
                    let saved = SavedStats::default();
                    if instance {
                        instancenorm::forward(&ctx(2, isa), shape, io, affine, 0.0, saved)
                    } else {
                        groupnorm::forward(&ctx(2, isa), shape, groups, io, affine, 0.0, saved)
                    }
                    .unwrap();
                    for (i, (&g, &w)) in y.iter().zip(&want.y).enumerate() {
                        let c = channel_of(&shape, i);
                        let tol = 1e-5 * (want.xhat[i].abs() * (gamma[c] as f64).abs() + 1.0);
                        assert!(
                            g.is_finite() && close(g as f64, w, tol),
                            "{what}: y[{i}] = {g}, want {w}"
                        );
                    }
                }
            }
        }
    }
}

/// The reference backward agrees with central finite differences of the reference forward.
#[test]
fn reference_backward_matches_finite_differences() {
    for (batch, groups, per, spatial, layout) in [
        (2, 2, 3, 4, Layout::Ncs),
        (2, 3, 2, 5, Layout::Nsc),
        (1, 1, 1, 6, Layout::Ncs),
        (3, 4, 1, 3, Layout::Nsc),
    ] {
        let c = groups * per;
        let shape = Shape::new(batch, c, spatial, layout);
        let mut g = Gen::new(5);
        let len = batch * c * spatial;
        let x = g.normals(len, 0.5, 1.5);
        let w = g.normals(len, 0.0, 1.0);
        let gamma = g.uniforms(c, 0.5, 2.0);
        let beta = g.uniforms(c, -1.0, 1.0);
        let eps = 1e-3f32;
        let fwd = gr::forward(&shape, groups, &x, Some(&gamma), Some(&beta), eps);
        let bwd = gr::backward(&shape, groups, &x, &w, Some(&gamma), &fwd.mean, &fwd.invstd);
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let (g64, b64): (Vec<f64>, Vec<f64>) = (
            gamma.iter().map(|&v| v as f64).collect(),
            beta.iter().map(|&v| v as f64).collect(),
        );
        let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
        let loss = |x: &[f64], ga: &[f64], be: &[f64]| {
            gr::loss(&shape, groups, x, ga, be, eps as f64, &w64)
        };
        let h = 1e-5;
        for i in 0..len {
            let (mut p, mut m) = (x64.clone(), x64.clone());
            p[i] += h;
            m[i] -= h;
            let fd = (loss(&p, &g64, &b64) - loss(&m, &g64, &b64)) / (2.0 * h);
            assert!(
                (fd - bwd.dx[i]).abs() <= 1e-6 * (1.0 + fd.abs()),
                "dx[{i}]: {fd} vs {}",
                bwd.dx[i]
            );
        }
        for ch in 0..c {
            let (mut p, mut m) = (g64.clone(), g64.clone());
            p[ch] += h;
            m[ch] -= h;
            let fd = (loss(&x64, &p, &b64) - loss(&x64, &m, &b64)) / (2.0 * h);
            assert!(
                (fd - bwd.dgamma[ch]).abs() <= 1e-6 * (1.0 + fd.abs()),
                "dgamma[{ch}]"
            );
            let (mut p, mut m) = (b64.clone(), b64.clone());
            p[ch] += h;
            m[ch] -= h;
            let fd = (loss(&x64, &g64, &p) - loss(&x64, &g64, &m)) / (2.0 * h);
            assert!(
                (fd - bwd.dbeta[ch]).abs() <= 1e-6 * (1.0 + fd.abs()),
                "dbeta[{ch}]"
            );
        }
    }
}

/// NaN and infinity in a group make that group's outputs NaN and leave the other groups alone.
#[test]
fn special_values_stay_in_their_group() {
    for layout in [Layout::Ncs, Layout::Nsc] {
        for bad in [f32::NAN, f32::INFINITY] {
            let spec = Spec {
                batch: 2,
                groups: 2,
                per_group: 3,
                spatial: 50,
                layout,
                seed: 3,
                offset: 0.0,
                scale: 1.0,
                gamma: false,
                beta: false,
                eps: 1e-5,
            };
            let mut case = Case::new(&spec);
            case.x[index(&case.shape, 1, 4, 7)] = bad;
            for isa in isas() {
                let out = run_forward(&ctx(1, isa), &case, false, false);
                for n in 0..2 {
                    for c in 0..6 {
                        for s in 0..50 {
                            let y = out.y[index(&case.shape, n, c, s)];
                            if n == 1 && c >= 3 {
                                assert!(y.is_nan(), "{layout:?} {isa:?}: ({n},{c},{s}) = {y}");
                            } else {
                                assert!(y.is_finite(), "{layout:?} {isa:?}: ({n},{c},{s}) = {y}");
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Spatial = 1 instance norm: each value is its own mean, so y = beta; the saved mean is x.
#[test]
fn instance_norm_single_value() {
    let shape = Shape::new(3, 5, 1, Layout::Ncs);
    let x: Vec<f32> = (0..15).map(|i| i as f32 * 1.5 - 4.0).collect();
    let beta: Vec<f32> = (0..5).map(|i| i as f32 * 0.25).collect();
    let gamma = vec![2.0f32; 5];
    let mut y = vec![0.0; 15];
    let (mut m, mut s) = (vec![0.0; 15], vec![0.0; 15]);
    instancenorm::forward(
        &Context::new(1).unwrap(),
        shape,
        InOut::separate(&x, &mut y).unwrap(),
        Affine {
            gamma: Some(&gamma),
            beta: Some(&beta),
        },
        1e-5,
        SavedStats {
            mean: Some(&mut m),
            invstd: Some(&mut s),
        },
    )
    .unwrap();
    for i in 0..15 {
        assert_eq!(y[i], beta[i % 5]);
        assert_eq!(m[i], x[i]);
    }
}

// ---------------------------------------------------------------------------------------------
// Errors of the safe API: kinds, and nothing written.

#[test]
fn safe_api_errors_write_nothing() {
    let ctx = Context::new(1).unwrap();
    let shape = Shape::new(2, 6, 5, Layout::Ncs);
    let x = common::data::normals(1, 60, 0.0, 1.0);
    let forward = |shape: Shape, groups: usize, eps: f32, saves: usize| {
        let mut y = vec![SENTINEL; x.len()];
        let mut m = vec![SENTINEL; saves];
        let result = groupnorm::forward(
            &ctx,
            shape,
            groups,
            InOut::separate(&x, &mut y).unwrap(),
            Affine::default(),
            eps,
            SavedStats {
                mean: Some(&mut m),
                invstd: None,
            },
        );
        assert!(
            y.iter().chain(&m).all(|v| *v == SENTINEL),
            "written on error"
        );
        result.map_err(|e| e.kind())
    };
    assert_eq!(forward(shape, 0, 1e-5, 0), Err(ErrorKind::BadShape));
    assert_eq!(forward(shape, 4, 1e-5, 8), Err(ErrorKind::BadShape));
    assert_eq!(forward(shape, 12, 1e-5, 24), Err(ErrorKind::BadShape));
    assert_eq!(forward(shape, 3, -1.0, 6), Err(ErrorKind::BadArgument));
    assert_eq!(forward(shape, 3, f32::NAN, 6), Err(ErrorKind::BadArgument));
    assert_eq!(
        forward(shape, 3, f32::INFINITY, 6),
        Err(ErrorKind::BadArgument)
    );
    assert_eq!(forward(shape, 3, 1e-5, 5), Err(ErrorKind::BadShape));
    assert_eq!(forward(shape, 0, -1.0, 0), Err(ErrorKind::BadShape));
    // Empty groups: spatial 0 with batch > 0 (the data is empty, so x has 0 elements here).
    let empty = Shape::new(2, 6, 0, Layout::Ncs);
    let mut m = vec![SENTINEL; 6];
    let result = groupnorm::forward(
        &ctx,
        empty,
        3,
        InOut::<f32>::separate(&[], &mut []).unwrap(),
        Affine::default(),
        1e-5,
        SavedStats {
            mean: Some(&mut m),
            invstd: None,
        },
    );
    assert_eq!(result.unwrap_err().kind(), ErrorKind::BadShape);
    assert!(m.iter().all(|v| *v == SENTINEL));
    // Backward: wrong saves length, bad groups; nothing written.
    let mut dx = vec![SENTINEL; 60];
    let mut dg = vec![SENTINEL; 6];
    let saves = [1.0f32; 6];
    for (groups, saves_len, kind) in [(4, 8, ErrorKind::BadShape), (3, 5, ErrorKind::BadShape)] {
        let r = groupnorm::backward(
            &ctx,
            shape,
            groups,
            &x,
            BackwardIo::WithDx(InOut::separate(&x, &mut dx).unwrap()),
            None,
            &saves[..saves_len.min(6)],
            &saves[..saves_len.min(6)],
            Some(&mut dg),
            None,
        );
        assert_eq!(r.unwrap_err().kind(), kind);
        assert!(dx.iter().chain(&dg).all(|v| *v == SENTINEL));
    }
}

/// Backward over empty data writes zeros to dgamma and dbeta (the identity of the sums), even
/// with saved statistics that would make NaN.
#[test]
fn backward_over_no_values_writes_zeros() {
    let ctx = Context::new(1).unwrap();
    let shape = Shape::new(2, 4, 0, Layout::Nsc);
    let saves = [f32::INFINITY, f32::NAN, 1.0, 2.0];
    let (mut dg, mut db) = (vec![SENTINEL; 4], vec![SENTINEL; 4]);
    groupnorm::backward(
        &ctx,
        shape,
        2,
        &[],
        BackwardIo::<f32>::DyOnly(&[]),
        None,
        &saves,
        &saves,
        Some(&mut dg),
        Some(&mut db),
    )
    .unwrap();
    assert!(dg.iter().chain(&db).all(|v| v.to_bits() == 0));
}

// ---------------------------------------------------------------------------------------------
// The C entry points: results equal the safe API's, and the error contract.

const B: usize = 2;
const C: usize = 6;
const S: usize = 5;
const G: usize = 3;
const N: usize = B * C * S;

struct Fx {
    arena: Arena,
    x: *mut f32,
    y: *mut f32,
    dy: *mut f32,
    gamma: *mut f32,
    beta: *mut f32,
    mean: *mut f32,
    invstd: *mut f32,
    dgamma: *mut f32,
    dbeta: *mut f32,
}

impl Fx {
    fn new() -> Fx {
        let mut arena = Arena::new(16384);
        let fx = Fx {
            x: arena.alloc(N),
            y: arena.alloc(N),
            dy: arena.alloc(N),
            gamma: arena.alloc(C),
            beta: arena.alloc(C),
            mean: arena.alloc(B * C),
            invstd: arena.alloc(B * C),
            dgamma: arena.alloc(C),
            dbeta: arena.alloc(C),
            arena,
        };
        let mut g = Gen::new(4);
        write(fx.x, &g.normals(N, 1.0, 2.0));
        write(fx.dy, &g.normals(N, 0.0, 1.0));
        write(fx.gamma, &g.uniforms(C, 0.5, 2.0));
        write(fx.beta, &g.uniforms(C, -1.0, 1.0));
        write(fx.mean, &g.normals(B * C, 1.0, 0.1));
        write(fx.invstd, &g.uniforms(B * C, 0.4, 0.6));
        fx
    }
}

fn shape(layout: i32) -> nk_shape {
    nk_shape {
        batch: B,
        channels: C,
        spatial: S,
        layout,
    }
}

#[derive(Clone, Copy)]
struct Fwd {
    shape: nk_shape,
    groups: usize,
    x: *const f32,
    y: *mut f32,
    gamma: *const f32,
    beta: *const f32,
    eps: f32,
    mean: *mut f32,
    invstd: *mut f32,
    /// Call nk_instancenorm_forward (groups ignored).
    instance: bool,
}

impl Fwd {
    fn new(fx: &Fx, instance: bool) -> Fwd {
        Fwd {
            shape: shape(0),
            groups: G,
            x: fx.x,
            y: fx.y,
            gamma: fx.gamma,
            beta: fx.beta,
            eps: 1e-5,
            mean: fx.mean,
            invstd: fx.invstd,
            instance,
        }
    }

    fn call(&self) -> nk_status {
        // SAFETY: NULL or arena pointers with room for their extents.
        unsafe {
            if self.instance {
                nk_instancenorm_forward(
                    null_mut(),
                    self.shape,
                    self.x,
                    self.y,
                    self.gamma,
                    self.beta,
                    self.eps,
                    self.mean,
                    self.invstd,
                )
            } else {
                nk_groupnorm_forward(
                    null_mut(),
                    self.shape,
                    self.groups,
                    self.x,
                    self.y,
                    self.gamma,
                    self.beta,
                    self.eps,
                    self.mean,
                    self.invstd,
                )
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Bwd {
    shape: nk_shape,
    groups: usize,
    x: *const f32,
    dy: *const f32,
    dx: *mut f32,
    gamma: *const f32,
    mean: *const f32,
    invstd: *const f32,
    dgamma: *mut f32,
    dbeta: *mut f32,
}

impl Bwd {
    fn new(fx: &Fx) -> Bwd {
        Bwd {
            shape: shape(0),
            groups: G,
            x: fx.x,
            dy: fx.dy,
            dx: fx.y,
            gamma: fx.gamma,
            mean: fx.mean,
            invstd: fx.invstd,
            dgamma: fx.dgamma,
            dbeta: fx.dbeta,
        }
    }

    fn call(&self) -> nk_status {
        // SAFETY: NULL or arena pointers with room for their extents.
        unsafe {
            nk_groupnorm_backward(
                null_mut(),
                self.shape,
                self.groups,
                self.x,
                self.dy,
                self.dx,
                self.gamma,
                self.mean,
                self.invstd,
                self.dgamma,
                self.dbeta,
            )
        }
    }
}

/// Runs each case on a fresh fixture: the expected status, and after an error the whole arena
/// unchanged.
#[track_caller]
fn run_cases<T>(name: &str, make: fn(&Fx) -> T, call: fn(&T) -> nk_status, cases: &[CallCase<T>]) {
    let mut failures = Vec::new();
    for (what, expected, mutate) in cases {
        let fx = Fx::new();
        let mut t = make(&fx);
        mutate(&fx, &mut t);
        let before = fx.arena.bytes();
        let got = call(&t);
        if got != *expected {
            failures.push(format!("{name}: {what}: {got:?}, expected {expected:?}"));
        } else if got != NK_OK && before != fx.arena.bytes() {
            failures.push(format!("{name}: {what}: {got:?} but the buffers changed"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A variation of the fixture's valid call and the status the contract gives it.
type CallCase<T> = (&'static str, nk_status, fn(&Fx, &mut T));
type FwdCase = CallCase<Fwd>;
type BwdCase = CallCase<Bwd>;

#[test]
fn forward_statuses_and_precedence() {
    let cases: &[FwdCase] = &[
        ("valid", NK_OK, |_, _| {}),
        ("NSC", NK_OK, |_, t| t.shape.layout = 1),
        ("groups 1", NK_OK, |_, t| t.groups = 1),
        ("groups C", NK_OK, |_, t| t.groups = C),
        ("no gamma, beta, saves", NK_OK, |_, t| {
            (t.gamma, t.beta) = (null(), null());
            (t.mean, t.invstd) = (null_mut(), null_mut());
        }),
        ("in place", NK_OK, |fx, t| t.y = fx.x),
        ("eps 0", NK_OK, |_, t| t.eps = 0.0),
        ("x NULL", NK_ERR_NULL_POINTER, |_, t| t.x = null()),
        ("y NULL", NK_ERR_NULL_POINTER, |_, t| t.y = null_mut()),
        ("y NULL + groups 0", NK_ERR_NULL_POINTER, |_, t| {
            t.y = null_mut();
            t.groups = 0;
        }),
        ("elements overflow", NK_ERR_OVERFLOW, |_, t| {
            t.shape.batch = 1 << 40;
            t.shape.spatial = 1 << 40;
        }),
        ("saves overflow", NK_ERR_OVERFLOW, |_, t| {
            t.shape.batch = 1 << 40;
            t.shape.spatial = 0;
            t.groups = 1 << 40;
        }),
        ("overflow + groups 0", NK_ERR_OVERFLOW, |_, t| {
            t.shape.batch = 1 << 40;
            t.shape.spatial = 1 << 40;
            t.groups = 0;
        }),
        ("groups 0", NK_ERR_BAD_SHAPE, |_, t| t.groups = 0),
        ("groups 4 of 6", NK_ERR_BAD_SHAPE, |_, t| t.groups = 4),
        ("groups 12 of 6", NK_ERR_BAD_SHAPE, |_, t| t.groups = 12),
        ("spatial 0 (empty groups)", NK_ERR_BAD_SHAPE, |_, t| {
            t.shape.spatial = 0
        }),
        ("bad groups + bad eps", NK_ERR_BAD_SHAPE, |_, t| {
            t.groups = 5;
            t.eps = f32::NAN;
        }),
        ("bad groups + bad layout", NK_ERR_BAD_SHAPE, |_, t| {
            t.groups = 5;
            t.shape.layout = 7;
        }),
        ("eps < 0", NK_ERR_BAD_ARGUMENT, |_, t| t.eps = -1.0),
        ("eps inf", NK_ERR_BAD_ARGUMENT, |_, t| t.eps = f32::INFINITY),
        ("eps NaN", NK_ERR_BAD_ARGUMENT, |_, t| t.eps = f32::NAN),
        ("layout 2", NK_ERR_BAD_ARGUMENT, |_, t| t.shape.layout = 2),
        ("bad eps + misaligned x", NK_ERR_BAD_ARGUMENT, |_, t| {
            t.eps = -1.0;
            t.x = shift(t.x.cast_mut(), 1);
        }),
        ("x misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.x = shift(t.x.cast_mut(), 2)
        }),
        ("y misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.y = shift(t.y, 1)
        }),
        ("gamma misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.gamma = shift(t.gamma.cast_mut(), 3)
        }),
        ("save_invstd misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.invstd = shift(t.invstd, 1)
        }),
        ("misaligned y overlapping x", NK_ERR_MISALIGNED, |fx, t| {
            t.y = shift(fx.x, 2)
        }),
        ("y = x + 1 element", NK_ERR_ALIAS, |fx, t| {
            t.y = shift(fx.x, 4)
        }),
        ("beta inside y", NK_ERR_ALIAS, |fx, t| {
            t.beta = shift(fx.y, 8)
        }),
        ("save_mean == save_invstd", NK_ERR_ALIAS, |fx, t| {
            t.invstd = fx.mean
        }),
        ("save_mean inside x", NK_ERR_ALIAS, |fx, t| {
            t.mean = shift(fx.x, 16)
        }),
        ("save_mean == gamma", NK_ERR_ALIAS, |fx, t| {
            t.mean = fx.gamma
        }),
    ];
    run_cases(
        "nk_groupnorm_forward",
        |fx| Fwd::new(fx, false),
        Fwd::call,
        cases,
    );
}

#[test]
fn instancenorm_statuses_and_precedence() {
    let cases: &[FwdCase] = &[
        ("valid", NK_OK, |_, _| {}),
        ("NSC, in place", NK_OK, |fx, t| {
            t.shape.layout = 1;
            t.y = fx.x;
        }),
        ("spatial 1", NK_OK, |_, t| t.shape.spatial = 1),
        ("C 0 (no groups), NULL data", NK_OK, |_, t| {
            t.shape.channels = 0;
            (t.x, t.y) = (null(), null_mut());
        }),
        ("x NULL", NK_ERR_NULL_POINTER, |_, t| t.x = null()),
        ("x NULL + overflow", NK_ERR_NULL_POINTER, |_, t| {
            t.x = null();
            t.shape.batch = 1 << 40;
            t.shape.spatial = 1 << 40;
        }),
        ("overflow", NK_ERR_OVERFLOW, |_, t| {
            t.shape.batch = 1 << 40;
            t.shape.spatial = 1 << 40;
        }),
        ("spatial 0", NK_ERR_BAD_SHAPE, |_, t| t.shape.spatial = 0),
        ("spatial 0 + bad eps", NK_ERR_BAD_SHAPE, |_, t| {
            t.shape.spatial = 0;
            t.eps = -1.0;
        }),
        ("eps NaN", NK_ERR_BAD_ARGUMENT, |_, t| t.eps = f32::NAN),
        ("layout -1", NK_ERR_BAD_ARGUMENT, |_, t| t.shape.layout = -1),
        ("save_mean misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.mean = shift(t.mean, 2)
        }),
        ("y = x - 1 element", NK_ERR_ALIAS, |fx, t| {
            t.y = shift(fx.x, -4)
        }),
        ("save_invstd overlaps save_mean", NK_ERR_ALIAS, |fx, t| {
            t.invstd = shift(fx.mean, 4)
        }),
    ];
    run_cases(
        "nk_instancenorm_forward",
        |fx| Fwd::new(fx, true),
        Fwd::call,
        cases,
    );
}

#[test]
fn backward_statuses_and_precedence() {
    let cases: &[BwdCase] = &[
        ("valid", NK_OK, |_, _| {}),
        ("NSC", NK_OK, |_, t| t.shape.layout = 1),
        ("no dx, dgamma, dbeta, gamma", NK_OK, |_, t| {
            (t.dx, t.dgamma, t.dbeta, t.gamma) = (null_mut(), null_mut(), null_mut(), null());
        }),
        ("in place dx == dy", NK_OK, |fx, t| t.dx = fx.dy),
        ("spatial 0: zeros, NULL data", NK_OK, |_, t| {
            t.shape.spatial = 0;
            (t.x, t.dy, t.dx) = (null(), null(), null_mut());
        }),
        ("x NULL", NK_ERR_NULL_POINTER, |_, t| t.x = null()),
        ("dy NULL", NK_ERR_NULL_POINTER, |_, t| t.dy = null()),
        ("save_mean NULL", NK_ERR_NULL_POINTER, |_, t| {
            t.mean = null()
        }),
        ("save_invstd NULL", NK_ERR_NULL_POINTER, |_, t| {
            t.invstd = null()
        }),
        ("save_mean NULL, spatial 0", NK_ERR_NULL_POINTER, |_, t| {
            t.shape.spatial = 0;
            t.mean = null();
        }),
        ("save_mean NULL + overflow", NK_ERR_NULL_POINTER, |_, t| {
            t.mean = null();
            t.shape.batch = 1 << 40;
            t.shape.spatial = 1 << 40;
        }),
        ("overflow", NK_ERR_OVERFLOW, |_, t| {
            t.shape.batch = 1 << 40;
            t.shape.spatial = 1 << 40;
        }),
        ("groups 0", NK_ERR_BAD_SHAPE, |_, t| t.groups = 0),
        ("groups 4", NK_ERR_BAD_SHAPE, |_, t| t.groups = 4),
        ("groups 4 + layout 9", NK_ERR_BAD_SHAPE, |_, t| {
            t.groups = 4;
            t.shape.layout = 9;
        }),
        ("layout 9", NK_ERR_BAD_ARGUMENT, |_, t| t.shape.layout = 9),
        ("layout 9 + misaligned dx", NK_ERR_BAD_ARGUMENT, |_, t| {
            t.shape.layout = 9;
            t.dx = shift(t.dx, 1);
        }),
        ("dy misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.dy = shift(t.dy.cast_mut(), 1)
        }),
        ("dgamma misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.dgamma = shift(t.dgamma, 2)
        }),
        ("save_invstd misaligned", NK_ERR_MISALIGNED, |_, t| {
            t.invstd = shift(t.invstd.cast_mut(), 3)
        }),
        ("dx == x", NK_ERR_ALIAS, |fx, t| t.dx = fx.x),
        ("dx = dy + 1 element", NK_ERR_ALIAS, |fx, t| {
            t.dx = shift(fx.dy, 4)
        }),
        ("dgamma == dbeta", NK_ERR_ALIAS, |fx, t| t.dbeta = fx.dgamma),
        ("dgamma == gamma", NK_ERR_ALIAS, |fx, t| t.dgamma = fx.gamma),
        ("dbeta inside save_mean", NK_ERR_ALIAS, |fx, t| {
            t.dbeta = shift(fx.mean, 4)
        }),
        ("dgamma inside dx", NK_ERR_ALIAS, |fx, t| {
            t.dgamma = shift(fx.y, 8)
        }),
        ("x == dy (two inputs)", NK_OK, |fx, t| t.dy = fx.x),
    ];
    run_cases("nk_groupnorm_backward", Bwd::new, Bwd::call, cases);
}

/// Zero-element calls with NULL data succeed and write only what the contract says: nothing
/// for the forwards, zeros to dgamma and dbeta for the backward.
#[test]
fn zero_element_calls() {
    let mut dg = [SENTINEL; C];
    let mut db = [SENTINEL; C];
    let zero_batch = nk_shape {
        batch: 0,
        ..shape(0)
    };
    // SAFETY: NULL data with zero elements; dgamma and dbeta hold C floats.
    unsafe {
        assert_eq!(
            nk_groupnorm_forward(
                null_mut(),
                zero_batch,
                G,
                null(),
                null_mut(),
                null(),
                null(),
                1e-5,
                null_mut(),
                null_mut()
            ),
            NK_OK
        );
        assert_eq!(
            nk_instancenorm_forward(
                null_mut(),
                zero_batch,
                null(),
                null_mut(),
                null(),
                null(),
                1e-5,
                null_mut(),
                null_mut()
            ),
            NK_OK
        );
        assert_eq!(
            nk_groupnorm_forward(
                null_mut(),
                zero_batch,
                G,
                null(),
                null_mut(),
                null(),
                null(),
                -1.0,
                null_mut(),
                null_mut()
            ),
            NK_ERR_BAD_ARGUMENT
        );
        assert_eq!(
            nk_groupnorm_forward(
                null_mut(),
                zero_batch,
                4,
                null(),
                null_mut(),
                null(),
                null(),
                1e-5,
                null_mut(),
                null_mut()
            ),
            NK_ERR_BAD_SHAPE
        );
        assert_eq!(
            nk_groupnorm_backward(
                null_mut(),
                zero_batch,
                G,
                null(),
                null(),
                null_mut(),
                null(),
                null(),
                null(),
                dg.as_mut_ptr(),
                db.as_mut_ptr()
            ),
            NK_OK
        );
    }
    assert!(dg.iter().chain(&db).all(|v| v.to_bits() == 0));
}

/// The C functions give bitwise what the safe API gives.
#[test]
fn c_entry_points_match_safe_api() {
    for layout in [0, 1] {
        let fx = Fx::new();
        let mut f = Fwd::new(&fx, false);
        f.shape.layout = layout;
        assert_eq!(f.call(), NK_OK);
        let (y, mean, invstd) = (read(fx.y, N), read(fx.mean, B * G), read(fx.invstd, B * G));
        let case = Case {
            shape: Shape::new(
                B,
                C,
                S,
                if layout == 0 {
                    Layout::Ncs
                } else {
                    Layout::Nsc
                },
            ),
            groups: G,
            x: read(fx.x, N),
            dy: read(fx.dy, N),
            gamma: Some(read(fx.gamma, C)),
            beta: Some(read(fx.beta, C)),
            eps: 1e-5,
        };
        let want = run_forward(Context::global(), &case, false, false);
        assert_bits(&y, &want.y, "y");
        assert_bits(&mean, &want.mean, "save_mean");
        assert_bits(&invstd, &want.invstd, "save_invstd");
        let mut b = Bwd::new(&fx);
        b.shape.layout = layout;
        assert_eq!(b.call(), NK_OK);
        let grads = run_backward(Context::global(), &case, &want, false);
        assert_bits(&read(fx.y, N), &grads.dx, "dx");
        assert_bits(&read(fx.dgamma, C), &grads.dgamma, "dgamma");
        assert_bits(&read(fx.dbeta, C), &grads.dbeta, "dbeta");
        // Instance norm through C equals group norm with groups = C.
        let mut i = Fwd::new(&fx, true);
        i.shape.layout = layout;
        assert_eq!(i.call(), NK_OK);
        let y_inst = read(fx.y, N);
        let mut g = Fwd::new(&fx, false);
        (g.shape.layout, g.groups) = (layout, C);
        assert_eq!(g.call(), NK_OK);
        assert_bits(&y_inst, &read(fx.y, N), "instance norm vs groups = C");
    }
}
