//! Batch norm through the safe API, against the float64 reference of `common::reference`:
//! every operation, both layouts, every ISA this CPU has, one and several threads, odd and
//! large shapes, large mean offsets, NaN and infinity; plus the properties the contract promises
//! (training = moments + forward from moments bit for bit, thread-count independence bit for bit,
//! in place = out of place bit for bit, sharded statistics merge to the whole batch's).

// The C functions: built with the default `capi` feature.
#![cfg(feature = "capi")]

mod common;

use common::prop::config;

use common::check::{assert_bits, assert_bits64, close, ctx, parallel_runners};

use common::arena::SENTINEL;
use common::check::{
    BN_FUSE_RELU, BN_RUNNING_VAR_BIASED, activation, merge_c, moments_of, training_params,
};
use common::data::Gen;
use common::reference as r;
use normkit::batchnorm::{self, Affine, RunningStats, SavedStats, TrainingParams};
use normkit::{Context, ErrorKind, InOut, Isa, Layout, Shape};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Tolerances, each derived from the accuracy bound of the statistics (docs/accuracy.md):
// every statistic is summed in f64 from terms `d = x - K` rounded once in f32 (squares and
// products exact in f64), so with sigma the channel's spread (population standard deviation)
// the mean is within sqrt(18) * 2^-24 * sigma and M2 within 2 * sqrt(18) * 2^-24 relative,
// plus f64 rounding (a few 2^-53 per value, relative to the terms). The reference is a
// corrected two-pass in f64, exact to f64 rounding of the spread.

/// One rounding to f32, relative.
const U: f64 = 1.0 / (1u64 << 24) as f64;
/// Mean error allowed, relative to the channel's spread: sqrt(18) = 4.24 roundings, plus f64.
const TOL_MEAN: f64 = 4.5 * U;
/// M2 (and variance) error allowed, relative: 2 * sqrt(18) = 8.5 roundings, plus f64.
const TOL_VAR: f64 = 9.0 * U;
/// Training output error allowed, relative to `|gamma| * (1 + |xhat|) + |beta|`: the mean's
/// error times invstd (at most TOL_MEAN |gamma|), invstd's (half of TOL_VAR, times |gamma
/// xhat|), and the roundings of `gamma * invstd`, `x - m_hi`, the offset and the fused
/// multiply-add (one each): 7.5 roundings.
const TOL_Y: f64 = 8.0 * U;
/// Inference output error allowed, relative to `|gamma * xhat| + |beta|`: three f32 roundings
/// (`x - mean`, `gamma * invstd`, the fused multiply-add) and some slack.
const TOL_INFERENCE: f64 = 1e-6;
/// The contract's accuracy on `10000 + N(0, 1)`: 1e-4 required, 1e-5 the target.
const TOL_OFFSET: f64 = 1e-5;
/// One f32 rounding.
const F32_EPS: f64 = U;

fn isas() -> Vec<Isa> {
    let v = Isa::supported();
    assert!(v.contains(&Isa::Portable));
    v
}

// ---------------------------------------------------------------------------------------------
// Test cases: a small description (what proptest prints and shrinks) and the data built from it.

#[derive(Clone, Debug)]
struct Spec {
    batch: usize,
    channels: usize,
    spatial: usize,
    layout: Layout,
    seed: u64,
    /// Values are `offset + scale * N(0, 1)`, with a per-channel shift and spread around these.
    offset: f64,
    scale: f64,
    gamma: bool,
    beta: bool,
    eps: f32,
    momentum: f32,
    biased: bool,
    running: bool,
    save: bool,
    /// The first value of every channel replaced by `offset + spike * scale`: an outlier where
    /// a one-pass algorithm takes its shift.
    spike: Option<f64>,
}

#[derive(Clone, Debug)]
struct Case {
    shape: Shape,
    x: Vec<f32>,
    gamma: Option<Vec<f32>>,
    beta: Option<Vec<f32>>,
    eps: f32,
    momentum: f32,
    flags: u32,
    running: Option<(Vec<f32>, Vec<f32>)>,
    save: bool,
}

/// Values of the tensor `shape`: channel `c` is `offset_c + scale_c * N(0, 1)` with
/// `offset_c = offset + scale * U(-3, 3)` and `scale_c = scale * U(1/4, 4)`.
fn tensor(g: &mut Gen, shape: &Shape, offset: f64, scale: f64) -> Vec<f32> {
    let per_channel: Vec<(f64, f64)> = (0..shape.channels)
        .map(|_| {
            (
                offset + scale * g.range(-3.0, 3.0),
                scale * g.range(0.25, 4.0),
            )
        })
        .collect();
    let mut x = vec![0f32; r::elements(shape)];
    for n in 0..shape.batch {
        for (c, &(o, s)) in per_channel.iter().enumerate() {
            for sp in 0..shape.spatial {
                x[r::index(shape, n, c, sp)] = (o + s * g.normal()) as f32;
            }
        }
    }
    x
}

impl Case {
    fn new(s: &Spec) -> Case {
        let mut g = Gen::new(s.seed);
        let shape = Shape::new(s.batch, s.channels, s.spatial, s.layout);
        let mut x = tensor(&mut g, &shape, s.offset, s.scale);
        if let Some(spike) = s.spike.filter(|_| s.batch * s.spatial > 0) {
            for c in 0..s.channels {
                x[r::index(&shape, 0, c, 0)] = (s.offset + spike * s.scale) as f32;
            }
        }
        let c = s.channels;
        let gamma = s.gamma.then(|| g.uniforms(c, -2.0, 2.0));
        let beta = s.beta.then(|| g.uniforms(c, -1.0, 1.0));
        let running = s
            .running
            .then(|| (g.normals(c, 0.0, 1.0), g.uniforms(c, 0.5, 2.0)));
        Case {
            shape,
            x,
            gamma,
            beta,
            eps: s.eps,
            momentum: s.momentum,
            flags: if s.biased { BN_RUNNING_VAR_BIASED } else { 0 },
            running,
            save: s.save,
        }
    }

    fn affine(&self) -> Affine<'_> {
        Affine {
            gamma: self.gamma.as_deref(),
            beta: self.beta.as_deref(),
        }
    }

    fn params(&self) -> TrainingParams {
        training_params(self.eps, self.momentum, self.flags)
    }

    fn running_ref(&self) -> Option<(&[f32], &[f32])> {
        self.running
            .as_ref()
            .map(|(m, v)| (m.as_slice(), v.as_slice()))
    }

    fn reference(&self) -> Result<r::Training, r::Rejected> {
        r::forward_training(
            &self.shape,
            &self.x,
            self.gamma.as_deref(),
            self.beta.as_deref(),
            self.eps,
            self.momentum,
            self.flags,
            self.running_ref(),
        )
    }
}

/// The outputs of a training forward (or a forward from moments).
#[derive(Clone, Debug)]
struct TrainOut {
    y: Vec<f32>,
    running: Option<(Vec<f32>, Vec<f32>)>,
    save_mean: Option<Vec<f32>>,
    save_invstd: Option<Vec<f32>>,
}

impl TrainOut {
    fn before(case: &Case, x: &[f32], in_place: bool) -> TrainOut {
        let c = case.shape.channels;
        TrainOut {
            y: if in_place {
                x.to_vec()
            } else {
                vec![SENTINEL; x.len()]
            },
            running: case.running.clone(),
            save_mean: case.save.then(|| vec![SENTINEL; c]),
            save_invstd: case.save.then(|| vec![SENTINEL; c]),
        }
    }

    fn state(&mut self) -> (Option<RunningStats<'_>>, SavedStats<'_>) {
        (
            self.running
                .as_mut()
                .map(|(mean, var)| RunningStats { mean, var }),
            SavedStats {
                mean: self.save_mean.as_deref_mut(),
                invstd: self.save_invstd.as_deref_mut(),
            },
        )
    }

    #[track_caller]
    fn assert_bits(&self, other: &TrainOut, what: &str) {
        assert_bits(&self.y, &other.y, &format!("{what}: y"));
        match (&self.running, &other.running) {
            (Some((m1, v1)), Some((m2, v2))) => {
                assert_bits(m1, m2, &format!("{what}: running mean"));
                assert_bits(v1, v2, &format!("{what}: running var"));
            }
            (None, None) => {}
            _ => panic!("{what}: running statistics present on one side only"),
        }
        let empty = Vec::new();
        let pairs = [
            (&self.save_mean, &other.save_mean, "save_mean"),
            (&self.save_invstd, &other.save_invstd, "save_invstd"),
        ];
        for (a, b, name) in pairs {
            assert_eq!(a.is_some(), b.is_some(), "{what}: {name} presence");
            let (a, b) = (a.as_ref().unwrap_or(&empty), b.as_ref().unwrap_or(&empty));
            assert_bits(a, b, &format!("{what}: {name}"));
        }
    }

    /// Every output unchanged from `before` (after an error).
    #[track_caller]
    fn assert_untouched(&self, case: &Case, x: &[f32], in_place: bool, what: &str) {
        self.assert_bits(
            &TrainOut::before(case, x, in_place),
            &format!("{what}: written on error"),
        );
    }
}

fn run_training(ctx: &Context, case: &Case, in_place: bool) -> (normkit::Result<()>, TrainOut) {
    let mut out = TrainOut::before(case, &case.x, in_place);
    let mut y = std::mem::take(&mut out.y);
    let io = if in_place {
        InOut::InPlace(&mut y)
    } else {
        InOut::separate(&case.x, &mut y).unwrap()
    };
    let (running, saved) = out.state();
    let result = batchnorm::forward_training(
        ctx,
        case.shape,
        io,
        case.affine(),
        case.params(),
        running,
        saved,
    );
    out.y = y;
    (result, out)
}

fn run_moments(ctx: &Context, shape: Shape, x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let sentinel = normkit::Moments {
        count: u64::MAX,
        mean: f64::from(SENTINEL),
        m2: f64::from(SENTINEL),
    };
    let mut out = vec![sentinel; shape.channels];
    batchnorm::moments(ctx, shape, x, &mut out).expect("moments");
    let count = (shape.batch * shape.spatial) as u64;
    assert!(out.iter().all(|m| m.count == count), "moments' count");
    (
        out.iter().map(|m| m.mean).collect(),
        out.iter().map(|m| m.m2).collect(),
    )
}

#[allow(clippy::too_many_arguments)]
fn run_from_moments(
    ctx: &Context,
    case: &Case,
    shape: Shape,
    x: &[f32],
    count: u64,
    mean: &[f64],
    m2: &[f64],
    in_place: bool,
) -> (normkit::Result<()>, TrainOut) {
    let mut out = TrainOut::before(case, x, in_place);
    let mut y = std::mem::take(&mut out.y);
    let io = if in_place {
        InOut::InPlace(&mut y)
    } else {
        InOut::separate(x, &mut y).unwrap()
    };
    let (running, saved) = out.state();
    let result = batchnorm::forward_from_moments(
        ctx,
        shape,
        io,
        case.affine(),
        &moments_of(count, mean, m2),
        case.params(),
        running,
        saved,
    );
    out.y = y;
    (result, out)
}

// ---------------------------------------------------------------------------------------------
// Comparisons with the reference.

/// The allowed error of a training output element.
fn y_tol(case: &Case, c: usize, xhat: f64) -> f64 {
    let g = r::gamma_at(case.gamma.as_deref(), c).abs();
    let b = r::beta_at(case.beta.as_deref(), c).abs();
    TOL_Y * (g * (1.0 + xhat.abs()) + b)
}

/// The allowed error of a mean of a channel with variance `var`.
fn mean_tol(mean: f64, var: f64) -> f64 {
    TOL_MEAN * var.sqrt() + 4.0 * f64::EPSILON * mean.abs()
}

/// Checks a training forward's outputs against the reference. `x` and `shape` are the local
/// data (a shard, for a forward from moments); `scale` multiplies every tolerance.
#[track_caller]
fn check_training(
    case: &Case,
    shape: &Shape,
    out: &TrainOut,
    want: &r::Training,
    scale: f64,
    what: &str,
) {
    for n in 0..shape.batch {
        for c in 0..shape.channels {
            for s in 0..shape.spatial {
                let i = r::index(shape, n, c, s);
                let tol = scale * y_tol(case, c, want.xhat[i]);
                assert!(
                    close(out.y[i] as f64, want.y[i], tol),
                    "{what}: y[n={n}, c={c}, s={s}] = {} but the reference is {} (tol {tol:e})",
                    out.y[i],
                    want.y[i]
                );
            }
        }
    }
    for c in 0..shape.channels {
        check_state(case, out, want, c, scale, what);
    }
}

/// Checks the saved and running statistics of channel `c`.
#[track_caller]
fn check_state(case: &Case, out: &TrainOut, want: &r::Training, c: usize, scale: f64, what: &str) {
    let (mean, var) = (want.save_mean[c], want.var[c]);
    if let Some(sm) = &out.save_mean {
        let tol = scale * (mean_tol(mean, var) + F32_EPS * mean.abs());
        assert!(
            close(sm[c] as f64, mean, tol),
            "{what}: save_mean[{c}] = {} but the reference is {mean}",
            sm[c]
        );
    }
    if let Some(si) = &out.save_invstd {
        let want_si = want.save_invstd[c];
        // invstd = 1 / sqrt(var + eps): half the variance's error, then one f32 rounding.
        let tol = scale * (0.5 * TOL_VAR + F32_EPS + 4.0 * f64::EPSILON) * want_si.abs();
        assert!(
            close(si[c] as f64, want_si, tol),
            "{what}: save_invstd[{c}] = {} but the reference is {want_si}",
            si[c]
        );
    }
    match (&out.running, &want.running, &case.running) {
        (Some((rm, rv)), Some((wm, wv)), Some((om, ov))) => {
            let m = case.momentum as f64;
            // f32 rounding of the old value's share (none when momentum 1 replaces it).
            let old = |v: f32| {
                if m == 1.0 {
                    0.0
                } else {
                    (1.0 - m) * (v as f64).abs()
                }
            };
            let tol =
                scale * (m * mean_tol(mean, var) + 2.0 * F32_EPS * (wm[c].abs() + old(om[c])));
            assert!(
                close(rm[c] as f64, wm[c], tol),
                "{what}: running_mean[{c}] = {} but the reference is {}",
                rm[c],
                wm[c]
            );
            let tol =
                scale * (2.0 * m * TOL_VAR * var + 2.0 * F32_EPS * (wv[c].abs() + old(ov[c])));
            assert!(
                close(rv[c] as f64, wv[c], tol),
                "{what}: running_var[{c}] = {} but the reference is {}",
                rv[c],
                wv[c]
            );
        }
        (None, None, None) => {}
        _ => panic!("{what}: running statistics do not match the case"),
    }
}

/// Checks moments against the reference two-pass moments.
#[track_caller]
fn check_moments(mean: &[f64], m2: &[f64], want: &(Vec<f64>, Vec<f64>), count: u64, what: &str) {
    for c in 0..want.0.len() {
        let var = if count > 0 {
            want.1[c] / count as f64
        } else {
            0.0
        };
        assert!(
            close(mean[c], want.0[c], mean_tol(want.0[c], var)),
            "{what}: mean[{c}] = {} but the reference is {}",
            mean[c],
            want.0[c]
        );
        assert!(
            close(m2[c], want.1[c], TOL_VAR * want.1[c].abs()),
            "{what}: m2[{c}] = {} but the reference is {}",
            m2[c],
            want.1[c]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies.

fn layouts() -> impl Strategy<Value = Layout> {
    prop_oneof![Just(Layout::Ncs), Just(Layout::Nsc)]
}

/// (batch, channels, spatial) of ordinary sizes, with C = 1, spatial = 1 and batch = 1 often,
/// and counts that are rarely multiples of 16.
fn small_dims() -> impl Strategy<Value = (usize, usize, usize)> {
    prop_oneof![
        (1..=4usize, 1..=9usize, 1..=40usize),
        (1..=3usize, Just(1usize), 1..=600usize),
        (1..=70usize, 1..=40usize, Just(1usize)),
        (Just(1usize), 1..=20usize, 1..=300usize),
        (1..=6usize, 1..=48usize, 20..=300usize),
    ]
}

/// Shapes of at least a few tens of thousands of elements, so that contexts with several
/// threads split the work.
fn parallel_dims() -> impl Strategy<Value = (usize, usize, usize)> {
    prop_oneof![
        (2..=6usize, 1..=40usize, 1000..=4000usize),
        (2000..=9000usize, 3..=40usize, Just(1usize)),
        (1..=3usize, 1..=3usize, 20_000..=60_000usize),
    ]
}

/// (offset, scale) of the values.
fn value_ranges() -> impl Strategy<Value = (f64, f64)> {
    prop_oneof![
        Just((0.0, 1.0)),
        Just((3.0, 0.5)),
        Just((-50.0, 10.0)),
        Just((10000.0, 1.0)),
        Just((-10000.0, 1.0)),
        Just((10000.0, 0.01)),
        Just((0.0, 1000.0)),
        Just((0.0, 1e-3)),
        Just((5.0, 0.0)),
    ]
}

fn momenta() -> impl Strategy<Value = f32> {
    prop_oneof![Just(0.0f32), Just(0.1), Just(1.0), 0.0f32..=1.0]
}

fn epsilons() -> impl Strategy<Value = f32> {
    prop_oneof![Just(1e-5f32), Just(1e-3), Just(0.5), Just(0.0)]
}

fn specs(dims: impl Strategy<Value = (usize, usize, usize)>) -> impl Strategy<Value = Spec> {
    (
        dims,
        layouts(),
        any::<u64>(),
        value_ranges(),
        any::<(bool, bool)>(),
        epsilons(),
        momenta(),
        any::<(bool, bool, bool)>(),
        spikes(),
    )
        .prop_map(
            |(
                (batch, channels, spatial),
                layout,
                seed,
                (offset, scale),
                ab,
                eps,
                momentum,
                flags,
                spike,
            )| {
                Spec {
                    batch,
                    channels,
                    spatial,
                    layout,
                    seed,
                    offset,
                    scale,
                    gamma: ab.0,
                    beta: ab.1,
                    // eps = 0 with constant channels divides 0 by 0; keep that to its own test.
                    eps: if scale == 0.0 && eps == 0.0 {
                        1e-5
                    } else {
                        eps
                    },
                    momentum,
                    biased: flags.0,
                    running: flags.1,
                    save: flags.2,
                    spike,
                }
            },
        )
}

fn spikes() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        6 => Just(None),
        1 => Just(Some(30.0)),
        1 => Just(Some(-1000.0)),
    ]
}

// ---------------------------------------------------------------------------------------------
// Training forward.

/// Every check of one training case on one context: the reference (or the reference's
/// rejection, with nothing written), in place, and moments + forward from moments.
fn training_case(ctx: &Context, case: &Case, want: &Result<r::Training, r::Rejected>, what: &str) {
    let (result, out) = run_training(ctx, case, false);
    let want = match want {
        Err(rejected) => {
            let kind = result.expect_err("the contract rejects this call").kind();
            let expected = match rejected {
                r::Rejected::BadShape => ErrorKind::BadShape,
                r::Rejected::BadArgument => ErrorKind::BadArgument,
            };
            assert_eq!(kind, expected, "{what}: error kind");
            out.assert_untouched(case, &case.x, false, what);
            let (result, out) = run_training(ctx, case, true);
            assert_eq!(result.unwrap_err().kind(), expected, "{what}: in place");
            out.assert_untouched(case, &case.x, true, &format!("{what}, in place"));
            return;
        }
        Ok(want) => want,
    };
    result.unwrap_or_else(|e| panic!("{what}: {e}"));
    check_training(case, &case.shape, &out, want, 1.0, what);

    let (result, in_place) = run_training(ctx, case, true);
    result.unwrap();
    out.assert_bits(&in_place, &format!("{what}: in place vs out of place"));

    let (mean, m2) = run_moments(ctx, case.shape, &case.x);
    let count = r::count(&case.shape);
    let (result, split) =
        run_from_moments(ctx, case, case.shape, &case.x, count, &mean, &m2, false);
    result.unwrap();
    out.assert_bits(
        &split,
        &format!("{what}: training vs moments + from_moments"),
    );
}

proptest! {
    #![proptest_config(config(2048))]

    /// Training forward against the reference, in place, and as moments + forward from
    /// moments, for every ISA on 1 and 2 threads; ISAs agree with each other.
    #[test]
    fn training_forward(spec in specs(small_dims())) {
        check_training_spec(&spec);
    }
}

/// Training forward of one case against the reference, in place, and as moments + forward
/// from moments, for every ISA on 1 and 2 threads; ISAs agree with each other.
fn check_training_spec(spec: &Spec) {
    let case = Case::new(spec);
    let want = case.reference();
    let mut first: Option<(Isa, TrainOut)> = None;
    for isa in isas() {
        for threads in [1, 2] {
            let what = format!("{isa:?}, {threads} threads");
            training_case(&ctx(threads, isa), &case, &want, &what);
        }
        if let Ok(w) = &want {
            let (_, out) = run_training(&ctx(1, isa), &case, false);
            match &first {
                None => first = Some((isa, out)),
                Some((isa0, out0)) => {
                    // Both are within TOL of the reference, so within 2 TOL of each other;
                    // check it directly all the same.
                    let what = format!("{isa:?} vs {isa0:?}");
                    check_training(&case, &case.shape, &out, w, 1.0, &what);
                    for i in 0..out.y.len() {
                        let c = channel_of(&case.shape, i);
                        let tol = 2.0 * y_tol(&case, c, w.xhat[i]);
                        assert!(
                            close(out.y[i] as f64, out0.y[i] as f64, tol),
                            "{}: y[{}] {} vs {}",
                            what,
                            i,
                            out.y[i],
                            out0.y[i]
                        );
                    }
                }
            }
        }
    }
}

/// A case the property test once drew: 61 rows of 29 channels, so each channel's mean comes
/// from f32 lane sums of 61 terms each. Its mean is off by 1.1e-6 of the spread (about 17
/// ulp of the mean), within the bound of `mean_tol`, beyond a tolerance of one f32 rounding of
/// the spread.
#[test]
fn training_forward_61_rows() {
    check_training_spec(&Spec {
        batch: 61,
        channels: 29,
        spatial: 1,
        layout: Layout::Ncs,
        seed: 14169099249009075072,
        offset: 0.0,
        scale: 1000.0,
        gamma: false,
        beta: false,
        eps: 1e-5,
        momentum: 0.1,
        biased: false,
        running: true,
        save: true,
        spike: None,
    });
}

fn channel_of(shape: &Shape, i: usize) -> usize {
    match shape.layout {
        Layout::Ncs => (i / shape.spatial) % shape.channels,
        Layout::Nsc => i % shape.channels,
        _ => unreachable!("a new layout this code does not know"),
    }
}

// ---------------------------------------------------------------------------------------------
// Inference forward.

#[derive(Clone, Debug)]
struct InferenceCase {
    case: Case,
    mean: Vec<f32>,
    var: Vec<f32>,
    relu: bool,
}

fn inference_case(spec: &Spec, relu: bool) -> InferenceCase {
    let case = Case::new(spec);
    let mut g = Gen::new(spec.seed ^ 0x5EED);
    let c = spec.channels;
    // Statistics near the data's: mean within a few spreads of the offset, positive variance
    // (and sometimes 0, where eps > 0).
    let mean = g.normals(c, spec.offset, 2.0 * spec.scale.max(1e-3));
    let var = (0..c)
        .map(|_| {
            if case.eps > 0.0 && g.below(8) == 0 {
                0.0
            } else {
                (spec.scale.max(1e-3).powi(2) * g.range(0.1, 10.0)) as f32
            }
        })
        .collect();
    InferenceCase {
        case,
        mean,
        var,
        relu,
    }
}

fn run_inference(ctx: &Context, ic: &InferenceCase, in_place: bool) -> Vec<f32> {
    let c = &ic.case;
    let mut y = if in_place {
        c.x.clone()
    } else {
        vec![SENTINEL; c.x.len()]
    };
    let io = if in_place {
        InOut::InPlace(&mut y)
    } else {
        InOut::separate(&c.x, &mut y).unwrap()
    };
    let flags = if ic.relu { BN_FUSE_RELU } else { 0 };
    batchnorm::forward_inference(
        ctx,
        c.shape,
        io,
        c.affine(),
        &ic.mean,
        &ic.var,
        c.eps,
        activation(flags),
    )
    .expect("inference");
    y
}

#[track_caller]
fn check_inference(ic: &InferenceCase, y: &[f32], what: &str) {
    let c = &ic.case;
    let (want, xhat) = r::forward_inference(
        &c.shape,
        &c.x,
        c.gamma.as_deref(),
        c.beta.as_deref(),
        &ic.mean,
        &ic.var,
        c.eps,
        ic.relu,
    );
    for i in 0..want.len() {
        let ch = channel_of(&c.shape, i);
        let g = r::gamma_at(c.gamma.as_deref(), ch);
        let b = r::beta_at(c.beta.as_deref(), ch);
        let tol = TOL_INFERENCE * ((g * xhat[i]).abs() + b.abs()) + f64::from(f32::MIN_POSITIVE);
        assert!(
            close(y[i] as f64, want[i], tol),
            "{what}: y[{i}] (channel {ch}) = {} but the reference is {} (tol {tol:e})",
            y[i],
            want[i]
        );
        if ic.relu && !want[i].is_nan() {
            assert!(y[i] >= 0.0, "{what}: ReLU output {} < 0", y[i]);
        }
    }
}

proptest! {
    #![proptest_config(config(2048))]

    /// Inference forward, with and without ReLU, against the reference, in place, for every ISA
    /// on 1 and 2 threads.
    #[test]
    fn inference_forward(spec in specs(small_dims()), relu in any::<bool>()) {
        let ic = inference_case(&spec, relu);
        for isa in isas() {
            for threads in [1, 2] {
                let what = format!("{isa:?}, {threads} threads, relu {relu}");
                let ctx = ctx(threads, isa);
                let y = run_inference(&ctx, &ic, false);
                check_inference(&ic, &y, &what);
                let y_in_place = run_inference(&ctx, &ic, true);
                assert_bits(&y, &y_in_place, &format!("{what}: in place vs out of place"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Moments, merge, and synchronous batch norm over shards.

proptest! {
    #![proptest_config(config(1024))]

    /// Moments against the two-pass reference, for every ISA on 1 and 2 threads.
    #[test]
    fn moments_match_reference(spec in specs(small_dims())) {
        let case = Case::new(&spec);
        let want = r::moments(&case.shape, &case.x);
        for isa in isas() {
            for threads in [1, 2] {
                let (mean, m2) = run_moments(&ctx(threads, isa), case.shape, &case.x);
                let what = format!("{isa:?}, {threads} threads");
                check_moments(&mean, &m2, &want, r::count(&case.shape), &what);
            }
        }
    }

    /// `moments_merge` against Chan's formula of the reference, on arbitrary moments
    /// (including empty sides).
    #[test]
    fn merge_matches_reference(
        channels in 0..=40usize,
        seed in any::<u64>(),
        count_a in prop_oneof![Just(0u64), 1..=5u64, 1u64..=1u64 << 40],
        count_b in prop_oneof![Just(0u64), 1..=5u64, 1u64..=1u64 << 40],
    ) {
        let mut g = Gen::new(seed);
        let mut side = |count: u64| -> (Vec<f64>, Vec<f64>) {
            if count == 0 {
                return (vec![0.0; channels], vec![0.0; channels]);
            }
            let mean = (0..channels).map(|_| g.range(-1e4, 1e4)).collect();
            let m2 = (0..channels).map(|_| g.range(0.0, 10.0) * count as f64).collect();
            (mean, m2)
        };
        let (mean_a, m2_a) = side(count_a);
        let (mean_b, m2_b) = side(count_b);
        let want = r::merge(count_a, &mean_a, &m2_a, count_b, &mean_b, &m2_b);
        let (mut got_mean, mut got_m2) = (mean_a.clone(), m2_a.clone());
        let total = merge_c(
            count_a, &mut got_mean, &mut got_m2, count_b, &mean_b, &m2_b,
        ).unwrap();
        prop_assert_eq!(total, count_a + count_b);
        for c in 0..channels {
            // The same formula in f64: a few roundings apart at most.
            let scale = mean_a[c].abs().max(mean_b[c].abs());
            prop_assert!(close(got_mean[c], want.0[c], 8.0 * f64::EPSILON * scale),
                "mean[{}] {} vs {}", c, got_mean[c], want.0[c]);
            prop_assert!(close(got_m2[c], want.1[c], 8.0 * f64::EPSILON * want.1[c]),
                "m2[{}] {} vs {}", c, got_m2[c], want.1[c]);
        }
    }

    /// Synchronous batch norm: a batch cut into 2 to 4 shards along N (some may be empty);
    /// per-shard moments merged give the whole batch's moments, and each shard's forward from
    /// the merged moments gives the whole batch's training forward.
    #[test]
    fn sharded_batch_matches_whole(
        spec in specs(small_dims()),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 1..=3),
    ) {
        let case = Case::new(&spec);
        let (b, c, s) = (spec.batch, spec.channels, spec.spatial);
        let mut bounds: Vec<usize> = cuts.iter().map(|i| i.index(b + 1)).collect();
        bounds.push(0);
        bounds.push(b);
        bounds.sort();
        let want = case.reference();
        for isa in isas() {
            let ctx = ctx(2, isa);
            let whole_moments = run_moments(&ctx, case.shape, &case.x);
            let (result, whole) = run_training(&ctx, &case, false);
            let shards: Vec<(Shape, &[f32])> = bounds
                .windows(2)
                .map(|w| {
                    let shape = Shape::new(w[1] - w[0], c, s, spec.layout);
                    (shape, &case.x[w[0] * c * s..w[1] * c * s])
                })
                .collect();
            // Merge the shards' moments in order.
            let mut count = 0u64;
            let (mut mean, mut m2) = (vec![0.0; c], vec![0.0; c]);
            for (shape, x) in &shards {
                let (sm, sm2) = run_moments(&ctx, *shape, x);
                if shape.batch == 0 {
                    prop_assert!(sm.iter().chain(&sm2).all(|&v| v == 0.0),
                        "an empty shard's moments are zeros");
                }
                let want_merged = r::merge(count, &mean, &m2, r::count(shape), &sm, &sm2);
                let sides: Vec<f64> = (0..c).map(|ch| mean[ch].abs().max(sm[ch].abs())).collect();
                count = merge_c(count, &mut mean, &mut m2, r::count(shape), &sm, &sm2)
                    .unwrap();
                for ch in 0..c {
                    // The same formula in f64: a few roundings apart at most.
                    prop_assert!(close(mean[ch], want_merged.0[ch], 8.0 * f64::EPSILON * sides[ch]),
                        "merged mean[{}] {} vs {}", ch, mean[ch], want_merged.0[ch]);
                    prop_assert!(close(m2[ch], want_merged.1[ch], 8.0 * f64::EPSILON * want_merged.1[ch]),
                        "merged m2[{}] {} vs {}", ch, m2[ch], want_merged.1[ch]);
                }
            }
            prop_assert_eq!(count, r::count(&case.shape));
            let what = format!("{isa:?}, shards {bounds:?}");
            let ref_moments = r::moments(&case.shape, &case.x);
            check_moments(&mean, &m2, &ref_moments, count, &format!("{what}: merged"));
            // Merged and whole-batch moments are both within tolerance of the reference; check
            // them against each other too.
            for ch in 0..c {
                let var = ref_moments.1[ch] / count as f64;
                prop_assert!(close(mean[ch], whole_moments.0[ch], 2.0 * mean_tol(mean[ch], var)),
                    "{}: merged mean[{}] {} vs whole {}", what, ch, mean[ch], whole_moments.0[ch]);
                prop_assert!(close(m2[ch], whole_moments.1[ch], 2.0 * TOL_VAR * m2[ch].abs()),
                    "{}: merged m2[{}] {} vs whole {}", what, ch, m2[ch], whole_moments.1[ch]);
            }

            let want = match &want {
                Ok(w) => w,
                Err(_) => {
                    prop_assert!(result.is_err());
                    continue;
                }
            };
            result.unwrap();
            let mut first_state: Option<TrainOut> = None;
            let mut y = Vec::new();
            for (shape, x) in &shards {
                let (result, out) =
                    run_from_moments(&ctx, &case, *shape, x, count, &mean, &m2, false);
                result.unwrap_or_else(|e| panic!("{what}: shard {shape:?}: {e}"));
                y.extend_from_slice(&out.y);
                // Running and saved statistics depend on the merged moments alone: every shard,
                // even an empty one, writes the same.
                let state = TrainOut { y: Vec::new(), ..out };
                match &first_state {
                    None => first_state = Some(state),
                    Some(f) => f.assert_bits(&state, &format!("{what}: state of shard {shape:?}")),
                }
            }
            let sharded = TrainOut { y, ..first_state.unwrap() };
            check_training(&case, &case.shape, &sharded, want, 1.0, &format!("{what}: sharded"));
            check_training(&case, &case.shape, &whole, want, 1.0, &format!("{what}: whole"));
        }
    }

    /// Forward from given moments (not the data's own; a global count larger than the local
    /// shard) against the reference, for every ISA, in place too.
    #[test]
    fn from_moments_matches_reference(
        spec in specs(small_dims()),
        extra in prop_oneof![Just(0u64), 1..=1000u64, Just(1u64 << 40)],
        empty_local in any::<bool>(),
    ) {
        let mut case = Case::new(&spec);
        let local = if empty_local {
            Shape::new(0, spec.channels, spec.spatial, spec.layout)
        } else {
            case.shape
        };
        let x = if empty_local { Vec::new() } else { case.x.clone() };
        case.shape = local;
        let count = r::count(&Shape::new(spec.batch, 1, spec.spatial, spec.layout)) + extra;
        let mut g = Gen::new(spec.seed ^ 0xF00D);
        let mean: Vec<f64> = (0..spec.channels)
            .map(|_| spec.offset + spec.scale * g.range(-3.0, 3.0))
            .collect();
        let m2: Vec<f64> = (0..spec.channels)
            .map(|_| (spec.scale * spec.scale * g.range(0.1, 10.0)) * count as f64)
            .collect();
        let want = r::forward_from_moments(
            &local, &x, case.gamma.as_deref(), case.beta.as_deref(), count, &mean, &m2,
            case.eps, case.momentum, case.flags, case.running_ref(),
        );
        for isa in isas() {
            let ctx = ctx(2, isa);
            let what = format!("{isa:?}, count {count}");
            let (result, out) = run_from_moments(&ctx, &case, local, &x, count, &mean, &m2, false);
            let (result2, out2) = run_from_moments(&ctx, &case, local, &x, count, &mean, &m2, true);
            match &want {
                Ok(w) => {
                    result.unwrap();
                    result2.unwrap();
                    check_training(&case, &local, &out, w, 1.0, &what);
                    out.assert_bits(&out2, &format!("{what}: in place vs out of place"));
                }
                Err(_) => {
                    prop_assert!(result.is_err() && result2.is_err());
                    out.assert_untouched(&case, &x, false, &what);
                    out2.assert_untouched(&case, &x, true, &what);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fold.

proptest! {
    #![proptest_config(config(1024))]

    /// Folding into a preceding layer against the reference.
    #[test]
    fn fold_matches_reference(
        c_out in 0..=24usize,
        fan_in in 0..=70usize,
        seed in any::<u64>(),
        ab in any::<(bool, bool)>(),
        eps in epsilons(),
    ) {
        let mut g = Gen::new(seed);
        let weight = g.normals(c_out * fan_in, 0.0, 0.5);
        let bias = g.normals(c_out, 0.0, 1.0);
        let gamma = ab.0.then(|| g.uniforms(c_out, -2.0, 2.0));
        let beta = ab.1.then(|| g.uniforms(c_out, -1.0, 1.0));
        let mean = g.normals(c_out, 0.0, 3.0);
        let var = g.uniforms(c_out, 0.01, 4.0);
        let (want_w, want_b) = r::fold(
            c_out, fan_in, &weight, &bias, gamma.as_deref(), beta.as_deref(), &mean, &var, eps,
        );
        let (mut w, mut b) = (weight.clone(), bias.clone());
        batchnorm::fold(
            c_out, fan_in, &mut w, &mut b,
            Affine { gamma: gamma.as_deref(), beta: beta.as_deref() },
            &mean, &var, eps,
        ).unwrap();
        for o in 0..c_out {
            let k = r::gamma_at(gamma.as_deref(), o) / (var[o] as f64 + eps as f64).sqrt();
            for i in 0..fan_in {
                let j = o * fan_in + i;
                let tol = 4.0 * F32_EPS * want_w[j].abs();
                prop_assert!(close(w[j] as f64, want_w[j], tol),
                    "weight[{}][{}] {} vs {}", o, i, w[j], want_w[j]);
            }
            // Allow f32 rounding of each term of (b - mean) * k + beta.
            let terms = (bias[o] as f64 * k).abs() + (mean[o] as f64 * k).abs()
                + r::beta_at(beta.as_deref(), o).abs();
            let tol = 4.0 * F32_EPS * terms;
            prop_assert!(close(b[o] as f64, want_b[o], tol), "bias[{}] {} vs {}", o, b[o], want_b[o]);
        }
        // The folded layer computes layer-then-BN on an input vector.
        let input = g.normals(fan_in, 0.0, 1.0);
        for o in 0..c_out {
            let dot = |w: &[f32]| -> f64 {
                (0..fan_in).map(|i| w[o * fan_in + i] as f64 * input[i] as f64).sum()
            };
            let layer = dot(&weight) + bias[o] as f64;
            let bn = r::gamma_at(gamma.as_deref(), o) * (layer - mean[o] as f64)
                / (var[o] as f64 + eps as f64).sqrt()
                + r::beta_at(beta.as_deref(), o);
            let folded = dot(&w) + b[o] as f64;
            let k = r::gamma_at(gamma.as_deref(), o).abs() / (var[o] as f64 + eps as f64).sqrt();
            let scale = k * ((0..fan_in).map(|i| (weight[o * fan_in + i] * input[i]).abs() as f64)
                .sum::<f64>() + bias[o].abs() as f64 + mean[o].abs() as f64)
                + r::beta_at(beta.as_deref(), o).abs();
            prop_assert!(close(folded, bn, 8.0 * F32_EPS * scale), "output {}: {} vs {}", o, folded, bn);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Determinism across thread counts.

proptest! {
    #![proptest_config(config(64))]

    /// Every operation gives bitwise the same results on 1, 2, 3 and 8 threads, for every ISA,
    /// on shapes large enough to be split.
    #[test]
    fn thread_count_does_not_change_results(spec in specs(parallel_dims()), relu in any::<bool>()) {
        let ic = inference_case(&spec, relu);
        let case = &ic.case;
        let want = case.reference();
        for isa in isas() {
            let base_ctx = ctx(1, isa);
            let (res, base) = run_training(&base_ctx, case, false);
            prop_assert_eq!(res.is_ok(), want.is_ok());
            if let Ok(w) = &want {
                check_training(case, &case.shape, &base, w, 1.0, &format!("{isa:?}"));
            }
            let base_moments = run_moments(&base_ctx, case.shape, &case.x);
            let base_inference = run_inference(&base_ctx, &ic, false);
            check_inference(&ic, &base_inference, &format!("{isa:?}"));
            for runner in parallel_runners() {
                let what = format!("{isa:?}, {runner:?} vs 1 thread");
                let ctx = ctx(runner, isa);
                let (_, out) = run_training(&ctx, case, false);
                base.assert_bits(&out, &format!("{what}: training"));
                let (_, out) = run_training(&ctx, case, true);
                base.assert_bits(&out, &format!("{what}: training in place"));
                let (mean, m2) = run_moments(&ctx, case.shape, &case.x);
                assert_bits64(&mean, &base_moments.0, &format!("{what}: moments mean"));
                assert_bits64(&m2, &base_moments.1, &format!("{what}: moments m2"));
                let count = r::count(&case.shape);
                let (_, out) = run_from_moments(&ctx, case, case.shape, &case.x, count, &mean, &m2, false);
                base.assert_bits(&out, &format!("{what}: from moments"));
                let y = run_inference(&ctx, &ic, false);
                assert_bits(&y, &base_inference, &format!("{what}: inference"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed cases: shapes at the edges, channels larger than one chunk, large offsets, NaN and inf.

fn fixed_case(batch: usize, channels: usize, spatial: usize, layout: Layout, seed: u64) -> Case {
    Case::new(&Spec {
        batch,
        channels,
        spatial,
        layout,
        seed,
        offset: 1.5,
        scale: 2.0,
        gamma: true,
        beta: true,
        eps: 1e-5,
        momentum: 0.1,
        biased: false,
        running: batch * spatial >= 2,
        save: true,
        spike: None,
    })
}

/// Training (all checks), inference (with and without ReLU) and moments on one case, every ISA,
/// 1 and 2 threads (and 3 and 8 bitwise equal to 1 when `all_threads`).
fn everything(case: &Case, all_threads: bool) {
    let want = case.reference();
    let ic = |relu| InferenceCase {
        case: case.clone(),
        mean: (0..case.shape.channels).map(|c| 1.0 + c as f32).collect(),
        var: (0..case.shape.channels).map(|c| 0.5 + c as f32).collect(),
        relu,
    };
    let (plain, relu) = (ic(false), ic(true));
    let want_moments = r::moments(&case.shape, &case.x);
    for isa in isas() {
        let threads: &[usize] = if all_threads { &[1, 2, 3, 8] } else { &[1, 2] };
        let base = run_training(&ctx(1, isa), case, false).1;
        for &t in threads {
            let what = format!("{:?} {isa:?} {t} threads", case.shape);
            let ctx = ctx(t, isa);
            training_case(&ctx, case, &want, &what);
            base.assert_bits(
                &run_training(&ctx, case, false).1,
                &format!("{what}: vs 1 thread"),
            );
            for ic in [&plain, &relu] {
                let y = run_inference(&ctx, ic, false);
                check_inference(ic, &y, &what);
                assert_bits(&y, &run_inference(&ctx, ic, true), &what);
            }
            let (mean, m2) = run_moments(&ctx, case.shape, &case.x);
            check_moments(&mean, &m2, &want_moments, r::count(&case.shape), &what);
        }
    }
}

#[test]
fn edge_shapes() {
    let mut seed = 1;
    for layout in [Layout::Ncs, Layout::Nsc] {
        for (b, c, s) in [
            (1, 1, 1),
            (2, 1, 1),
            (1, 1, 2),
            (1, 7, 1),
            (1, 1, 15),
            (1, 1, 17),
            (3, 1, 33),
            (1, 33, 1),
            (17, 1, 1),
            (5, 3, 31),
            (2, 17, 9),
            (65, 15, 1),
            (1, 129, 3),
            (2, 300, 7),
            (4, 5, 2049),
            (3, 16, 16),
            (130, 16, 1),
            // Rows wider than the normalization's blocks of channels (1024): a whole block and
            // a partial one, then also a tail of channels past the last vector.
            (3, 1040, 5),
            (2, 1043, 3),
        ] {
            seed += 1;
            everything(&fixed_case(b, c, s, layout, seed), false);
        }
    }
}

/// Channels of more than 2^18 values, so that their statistics are taken in several chunks
/// (and, channels-first, not in the one-visit path), on every thread count.
#[test]
fn channels_larger_than_one_chunk() {
    let mut seed = 100;
    for (b, c, s, layout) in [
        (2, 3, 140_001, Layout::Ncs),
        (1, 1, 300_007, Layout::Ncs),
        (300_001, 2, 1, Layout::Ncs),
        (3, 2, 100_003, Layout::Nsc),
    ] {
        seed += 1;
        everything(&fixed_case(b, c, s, layout, seed), true);
    }
}

/// The contract's accuracy example: on `10000 + N(0, 1)` the normalized output is within 1e-5
/// of float64 (the contract requires 1e-4 and targets 1e-5).
#[test]
fn large_mean_offset_accuracy() {
    let mut worst = 0.0f64;
    for (b, c, s, layout) in [
        (8, 16, 1000, Layout::Ncs),
        (8, 16, 1000, Layout::Nsc),
        (4096, 3, 1, Layout::Ncs),
        (2, 1, 150_000, Layout::Ncs),
        (3, 37, 29, Layout::Nsc),
        (1, 5, 7, Layout::Ncs),
    ] {
        for offset in [10000.0, -10000.0] {
            let shape = Shape::new(b, c, s, layout);
            let x = common::data::normals(b as u64 * 31 + s as u64, b * c * s, offset, 1.0);
            let want = r::forward_training(&shape, &x, None, None, 1e-5, 0.1, 0, None).unwrap();
            for isa in isas() {
                let ctx = ctx(2, isa);
                let mut y = vec![SENTINEL; x.len()];
                batchnorm::forward_training(
                    &ctx,
                    shape,
                    InOut::separate(&x, &mut y).unwrap(),
                    Affine::default(),
                    TrainingParams::default(),
                    None,
                    SavedStats::default(),
                )
                .unwrap();
                let err = y
                    .iter()
                    .zip(&want.y)
                    .map(|(&g, &w)| (g as f64 - w).abs())
                    .fold(0.0, f64::max);
                assert!(
                    err <= TOL_OFFSET,
                    "{shape:?} offset {offset} {isa:?}: max error {err:e} > {TOL_OFFSET:e}"
                );
                worst = worst.max(err);
                // And the moments: the mean exact to the spread, not the offset.
                let (mean, m2) = run_moments(&ctx, shape, &x);
                let want_m = r::moments(&shape, &x);
                check_moments(&mean, &m2, &want_m, r::count(&shape), "offset moments");
            }
        }
    }
    eprintln!("largest error on 10000 + N(0, 1): {worst:e}");
}

/// NaN and infinities propagate without a crash: a channel holding one has NaN outputs, other
/// channels are unaffected.
#[test]
fn nan_and_inf_propagate() {
    for (b, c, s, layout) in [
        (3, 5, 37, Layout::Ncs),
        (3, 5, 37, Layout::Nsc),
        (40, 5, 1, Layout::Ncs),
        (2, 5, 3000, Layout::Ncs),
        (2, 5, 3000, Layout::Nsc),
        (1, 5, 140_000, Layout::Ncs),
    ] {
        non_finite_case(fixed_case(b, c, s, layout, 7));
    }
}

/// The checks of [`nan_and_inf_propagate`] on `case` (at least 5 channels), after placing, in
/// channel 1, a NaN in the middle; channel 2, +inf first; channel 3, -inf last; channel 4, +inf
/// and -inf. Channel 0 is clean.
fn non_finite_case(mut case: Case) {
    let shape = case.shape;
    let (b, c, s) = (shape.batch, shape.channels, shape.spatial);
    let last = b * s - 1;
    let (ns, ss) = (last / s, last % s);
    case.x[r::index(&shape, b / 2, 1, s / 2)] = f32::NAN;
    case.x[r::index(&shape, 0, 2, 0)] = f32::INFINITY;
    case.x[r::index(&shape, ns, 3, ss)] = f32::NEG_INFINITY;
    case.x[r::index(&shape, 0, 4, s - 1)] = f32::INFINITY;
    case.x[r::index(&shape, b - 1, 4, 0)] = f32::NEG_INFINITY;
    let want = case.reference().unwrap();
    let bad = [1, 2, 3, 4];
    for isa in isas() {
        for threads in [1, 2] {
            let what = format!("{shape:?} {isa:?} {threads} threads");
            let ctx = ctx(threads, isa);
            let (result, out) = run_training(&ctx, &case, false);
            result.unwrap();
            for i in 0..out.y.len() {
                let ch = channel_of(&shape, i);
                if bad.contains(&ch) {
                    assert!(
                        out.y[i].is_nan(),
                        "{what}: y[{i}] of channel {ch} is {}",
                        out.y[i]
                    );
                } else {
                    let tol = y_tol(&case, ch, want.xhat[i]);
                    assert!(close(out.y[i] as f64, want.y[i], tol), "{what}: y[{i}]");
                }
            }
            let (rm, rv) = out.running.as_ref().unwrap();
            let (sm, si) = (
                out.save_mean.as_ref().unwrap(),
                out.save_invstd.as_ref().unwrap(),
            );
            for ch in bad {
                assert!(!sm[ch].is_finite(), "{what}: save_mean[{ch}] = {}", sm[ch]);
                assert!(si[ch].is_nan(), "{what}: save_invstd[{ch}] = {}", si[ch]);
                assert!(
                    !rm[ch].is_finite(),
                    "{what}: running_mean[{ch}] = {}",
                    rm[ch]
                );
                assert!(rv[ch].is_nan(), "{what}: running_var[{ch}] = {}", rv[ch]);
            }
            check_state(
                &case,
                &out,
                &want,
                0,
                1.0,
                &format!("{what}: clean channel"),
            );
            // The same through moments + forward from moments, and in place.
            let (_, in_place) = run_training(&ctx, &case, true);
            out.assert_bits(&in_place, &format!("{what}: in place"));
            let (mean, m2) = run_moments(&ctx, shape, &case.x);
            let (_, split) = run_from_moments(
                &ctx,
                &case,
                shape,
                &case.x,
                r::count(&shape),
                &mean,
                &m2,
                false,
            );
            out.assert_bits(&split, &format!("{what}: moments + from_moments"));

            // Inference: only the non-finite elements themselves are affected.
            for relu in [false, true] {
                let ic = InferenceCase {
                    case: case.clone(),
                    mean: vec![0.5; c],
                    var: vec![2.0; c],
                    relu,
                };
                let y = run_inference(&ctx, &ic, false);
                check_inference(&ic, &y, &format!("{what}: inference"));
            }
        }
    }
}

/// How the mean of a channel drifts along its values in reduction order (`r = n * spatial + s`),
/// each value `level + N(0, 1)`.
#[derive(Clone, Copy, Debug)]
enum Drift {
    /// `level = 1000 * n + c`: a mean drifting along the batch.
    Ramp,
    /// `level = 0` for the channel's first value, 10000 for the others.
    FirstOff,
    /// `level = 0` for the first 64 values, 10000 for the others.
    TwoLevels,
}

/// `case` with its values replaced by drifting ones.
fn drifting(mut case: Case, drift: Drift, seed: u64) -> Case {
    let shape = case.shape;
    let mut g = Gen::new(seed);
    for n in 0..shape.batch {
        for c in 0..shape.channels {
            for s in 0..shape.spatial {
                let r = n * shape.spatial + s;
                let level = match drift {
                    Drift::Ramp => 1000.0 * n as f64 + c as f64,
                    Drift::FirstOff if r == 0 => 0.0,
                    Drift::TwoLevels if r < 64 => 0.0,
                    Drift::FirstOff | Drift::TwoLevels => 10000.0,
                };
                case.x[r::index(&shape, n, c, s)] = (level + g.normal()) as f32;
            }
        }
    }
    case
}

/// Channels whose mean drifts, so that the moments' block sums with an `f32` shift fail their
/// check and are summed again with `f64` shifts (`src/kernels/moments.rs`), against the float64
/// reference (training, inference, moments), every ISA, bitwise equal on 1, 2, 3 and 8 threads;
/// and with NaN and infinities in drifting channels.
///
/// Why the check fails (it fails when the shift lies more than sqrt(15) = 3.9 spreads from the
/// mean of the values summed with it, or the sums are not finite; the module's unit tests build
/// the same patterns and assert the failure on the sums themselves):
/// - `FirstOff`: a run's first block is shifted by its first value, 0, while the block's other
///   values lie at 10000: with `m` values in the block, 0 lies `sqrt(m - 1)` spreads from their
///   mean, beyond 3.9 from 17 values on (every case here has at least 65 values per channel,
///   one block of 64 rows channels-innermost);
/// - `TwoLevels`: channels-innermost, a chunk's first 64 rows are at 0 and its rest at 10000:
///   the rest is shifted by the first block's mean, 10000 of its spreads away (every
///   channels-innermost case here has more than 64 rows in its first chunk); channels-first, a
///   first block of `m > 1024` values has 64 at 0, which is more than 3.9 spreads from its mean
///   (`sqrt((m - 64) / 64)`);
/// - `Ramp`: channels-innermost, a chunk whose first block lies in one image and whose rest in
///   the next; channels-first, none (a run's first block lies within one image).
#[test]
fn drifting_channels() {
    let mut seed = 300;
    for (b, c, s, layout) in [
        (1, 1, 2049, Layout::Ncs),
        (3, 1, 700, Layout::Ncs),
        (5, 3, 333, Layout::Ncs),
        (67, 2, 1, Layout::Ncs),
        (131, 1, 1, Layout::Ncs),
        (1500, 3, 1, Layout::Ncs),
        (3, 5, 77, Layout::Nsc),
        (2, 33, 100, Layout::Nsc),
        (2, 301, 70, Layout::Nsc),
        (1, 1, 65, Layout::Nsc),
        // More than 2^18 values per channel: channels-first in chunks; channels-innermost in
        // five chunks of 65536 rows (with the ramp, the first block of the second ends image
        // 0 and its rest lies in image 1).
        (1, 2, 300_007, Layout::Ncs),
        (4, 2, 65_600, Layout::Nsc),
    ] {
        for drift in [Drift::Ramp, Drift::FirstOff, Drift::TwoLevels] {
            seed += 1;
            let case = drifting(fixed_case(b, c, s, layout, seed), drift, seed);
            everything(&case, true);
        }
    }
    for (b, s, layout) in [
        (3, 700, Layout::Ncs),
        (300, 1, Layout::Ncs),
        (3, 100, Layout::Nsc),
    ] {
        for drift in [Drift::Ramp, Drift::FirstOff, Drift::TwoLevels] {
            seed += 1;
            non_finite_case(drifting(fixed_case(b, 5, s, layout, seed), drift, seed));
        }
    }
}

/// Count rules and scalar checks of the safe API agree with the contract, and nothing is written
/// when a call is rejected.
#[test]
fn training_rejections() {
    let shapes = [
        (1, 3, 1),
        (1, 3, 2),
        (2, 3, 1),
        (0, 3, 4),
        (3, 3, 0),
        (2, 0, 2),
    ];
    for (b, c, s) in shapes {
        for layout in [Layout::Ncs, Layout::Nsc] {
            for running in [false, true] {
                // Unknown flag bits cannot be expressed in the safe API (typed options); the C
                // functions' rejection of them is in tests/ffi_contract.rs.
                for flags in [0, BN_RUNNING_VAR_BIASED] {
                    for eps in [1e-5, 0.0, -1e-5, f32::NAN, f32::INFINITY] {
                        for momentum in [0.0, 0.3, 1.0, -0.1, 1.5, f32::NAN] {
                            let mut case = fixed_case(b, c, s, layout, 3);
                            case.running = running.then(|| (vec![0.25; c], vec![1.5; c]));
                            case.flags = flags;
                            case.eps = eps;
                            case.momentum = momentum;
                            let what = format!(
                                "{:?} running {running} flags {flags:#x} eps {eps} momentum {momentum}",
                                case.shape
                            );
                            training_case(&ctx(1, Isa::Portable), &case, &case.reference(), &what);
                        }
                    }
                }
            }
        }
    }
}

/// `momentum = 1` replaces the running statistics, even non-finite ones; `momentum = 0` keeps
/// finite ones.
#[test]
fn momentum_extremes() {
    let mut case = fixed_case(4, 3, 5, Layout::Ncs, 11);
    for flags in [0, BN_RUNNING_VAR_BIASED] {
        case.flags = flags;
        case.momentum = 1.0;
        case.running = Some((
            vec![f32::NAN, f32::INFINITY, 3.0],
            vec![f32::NAN, 1.0, f32::NEG_INFINITY],
        ));
        let want = case.reference().unwrap();
        let (res, out) = run_training(&ctx(1, Isa::Portable), &case, false);
        res.unwrap();
        check_training(&case, &case.shape, &out, &want, 1.0, "momentum 1");
        let (rm, rv) = out.running.unwrap();
        assert!(
            rm.iter().chain(&rv).all(|v| v.is_finite()),
            "momentum 1 replaces non-finite running statistics: {rm:?} {rv:?}"
        );
        case.momentum = 0.0;
        case.running = Some((vec![1.0, -2.0, 3.0], vec![0.5, 1.0, 2.0]));
        let (res, out) = run_training(&ctx(1, Isa::Portable), &case, false);
        res.unwrap();
        assert_eq!(out.running, case.running, "momentum 0 keeps");
    }
}

/// Zero-element tensors: moments write zeros (the identity of the merge), training of an empty
/// channel count succeeds, inference writes nothing.
#[test]
fn empty_tensors() {
    for layout in [Layout::Ncs, Layout::Nsc] {
        for isa in isas() {
            let ctx = ctx(1, isa);
            let (mean, m2) = run_moments(&ctx, Shape::new(0, 4, 3, layout), &[]);
            assert_eq!((mean, m2), (vec![0.0; 4], vec![0.0; 4]));
            let (mean, m2) = run_moments(&ctx, Shape::new(5, 4, 0, layout), &[]);
            assert_eq!((mean, m2), (vec![0.0; 4], vec![0.0; 4]));
            // C = 0: nothing to compute, but a valid call.
            let case = fixed_case(3, 0, 4, layout, 5);
            let (res, _) = run_training(&ctx, &case, false);
            res.unwrap();
            let ic = InferenceCase {
                case: fixed_case(0, 3, 4, layout, 5),
                mean: vec![0.0; 3],
                var: vec![1.0; 3],
                relu: false,
            };
            assert!(run_inference(&ctx, &ic, false).is_empty());
        }
    }
}

/// Constant channels with eps = 0: the variance is exactly 0, so the normalized value is 0/0.
#[test]
fn constant_channel_with_zero_eps() {
    let shape = Shape::new(3, 2, 5, Layout::Ncs);
    let x = vec![4.25f32; 30];
    let mut y = vec![SENTINEL; 30];
    let mut save_invstd = vec![SENTINEL; 2];
    let mut save_mean = vec![SENTINEL; 2];
    batchnorm::forward_training(
        &ctx(1, Isa::Portable),
        shape,
        InOut::separate(&x, &mut y).unwrap(),
        Affine::default(),
        TrainingParams::new(0.0, 0.1),
        None,
        SavedStats {
            mean: Some(&mut save_mean),
            invstd: Some(&mut save_invstd),
        },
    )
    .unwrap();
    assert_eq!(save_mean, vec![4.25; 2]);
    assert_eq!(save_invstd, vec![f32::INFINITY; 2]);
    assert!(y.iter().all(|v| v.is_nan()), "0 * inf is NaN: {y:?}");
}

// ---------------------------------------------------------------------------------------------
// Hard cases for one-pass statistics.

/// Largest absolute error of a training forward (no affine) against the reference, the same
/// relative to `1 + |xhat|`, and the largest relative error of the moments' M2, over every ISA.
fn training_errors(shape: Shape, x: &[f32], eps: f32) -> (f64, f64, f64) {
    let want = r::forward_training(&shape, x, None, None, eps, 0.1, 0, None).unwrap();
    let want_m = r::moments(&shape, x);
    let worst = |acc: f64, e: f64| acc.max(if e.is_nan() { f64::INFINITY } else { e });
    let (mut abs_err, mut y_err, mut m2_err) = (0.0f64, 0.0f64, 0.0f64);
    for isa in isas() {
        let ctx = ctx(1, isa);
        let mut y = vec![SENTINEL; x.len()];
        batchnorm::forward_training(
            &ctx,
            shape,
            InOut::separate(x, &mut y).unwrap(),
            Affine::default(),
            TrainingParams::new(eps, 0.1),
            None,
            SavedStats::default(),
        )
        .unwrap();
        for ((&got, &w), &xhat) in y.iter().zip(&want.y).zip(&want.xhat) {
            let e = (got as f64 - w).abs();
            abs_err = worst(abs_err, e);
            y_err = worst(y_err, e / (1.0 + xhat.abs()));
        }
        let (_, m2) = run_moments(&ctx, shape, x);
        for (&got, &w) in m2.iter().zip(&want_m.1) {
            m2_err = worst(m2_err, (got - w).abs() / w);
        }
    }
    (abs_err, y_err, m2_err)
}

/// A channel whose first value is far from its mean (a spike at the start of `10000 + N(0, 1)`
/// data): shifted by that value, f32 sums of `x - shift` and of its square would cancel and the
/// variance lose most of its digits.
#[test]
fn first_value_far_from_the_mean() {
    for (b, c, s, layout) in [
        (1, 2, 2048, Layout::Ncs),
        (4, 2, 512, Layout::Ncs),
        (64, 3, 1, Layout::Nsc),
        (1, 1, 300_000, Layout::Ncs),
    ] {
        for spike in [30.0, 1000.0] {
            let shape = Shape::new(b, c, s, layout);
            let mut x = common::data::normals(5, b * c * s, 10000.0, 1.0);
            for ch in 0..c {
                x[r::index(&shape, 0, ch, 0)] = (10000.0 + spike) as f32;
            }
            let (abs_err, y_err, m2_err) = training_errors(shape, &x, 1e-5);
            assert!(
                y_err <= TOL_Y && m2_err <= TOL_VAR,
                "{shape:?}, first value 10000 + {spike}: output error {abs_err:e} \
                 ({y_err:e} x (1 + |xhat|)), M2 relative error {m2_err:e}"
            );
        }
    }
}

/// Values of spread ~1e19 or more: squared deviations summed in f32 would overflow, making M2
/// infinite and every output beta, while the values and their variance are finite.
#[test]
fn large_spread_does_not_overflow() {
    // +-2e19 alternating: mean 0, variance 4e38 (finite in f32 even), normalized values +-1.
    let alternating: Vec<f32> = (0..64)
        .map(|i| if i % 2 == 0 { 2e19 } else { -2e19 })
        .collect();
    let cases = [
        (Shape::new(1, 1, 64, Layout::Ncs), alternating.clone()),
        (Shape::new(64, 1, 1, Layout::Nsc), alternating),
        (
            Shape::new(4, 3, 50, Layout::Ncs),
            common::data::normals(5, 600, 0.0, 1e20),
        ),
        (
            Shape::new(4, 3, 50, Layout::Nsc),
            common::data::normals(5, 600, 0.0, 1e20),
        ),
    ];
    for (shape, x) in cases {
        let (abs_err, y_err, m2_err) = training_errors(shape, &x, 1e-5);
        assert!(
            y_err <= TOL_Y && m2_err <= TOL_VAR,
            "{shape:?}, spread 2e19 or more: output error {abs_err:e} ({y_err:e} x (1 + |xhat|)), \
             M2 relative error {m2_err:e}"
        );
    }
}

/// Values of spread ~1e-22 or less with eps = 0: squared deviations in f32 are subnormal or zero,
/// while the float64 variance is positive and the normalized values are ordinary; the moments
/// must notice and keep the variance.
#[test]
fn tiny_spread_with_zero_eps() {
    let alternating: Vec<f32> = (0..64)
        .map(|i| if i % 2 == 0 { 1e-24 } else { -1e-24 })
        .collect();
    let cases = [
        (Shape::new(1, 1, 64, Layout::Ncs), alternating.clone()),
        (Shape::new(64, 1, 1, Layout::Nsc), alternating),
        (
            Shape::new(4, 3, 50, Layout::Ncs),
            common::data::normals(5, 600, 0.0, 1e-22),
        ),
        (
            Shape::new(4, 3, 50, Layout::Nsc),
            common::data::normals(5, 600, 0.0, 1e-22),
        ),
    ];
    for (shape, x) in cases {
        let (abs_err, y_err, m2_err) = training_errors(shape, &x, 0.0);
        assert!(
            y_err <= TOL_Y && m2_err <= TOL_VAR,
            "{shape:?}, spread 1e-22 or less, eps 0: output error {abs_err:e} \
             ({y_err:e} x (1 + |xhat|)), M2 relative error {m2_err:e}"
        );
    }
}

/// Outputs whose call's tensors take more than the caches hold (with a last-level cache of up to
/// 32 MiB and L2 caches of up to 1 MiB, 9 million elements in place) are written with streaming
/// stores after a partial vector that aligns them; outputs at every alignment, separate and in
/// place, must match the reference and each other bitwise.
#[test]
fn large_outputs_at_every_alignment() {
    let shapes = [
        Shape::new(2, 3, 1_500_001, Layout::Ncs),
        Shape::new(3, 7, 430_003, Layout::Nsc),
        Shape::new(9_000_011, 1, 1, Layout::Ncs),
    ];
    for shape in shapes {
        let n = r::elements(&shape);
        let c = shape.channels;
        let x = common::data::normals(11, n, 3.0, 2.0);
        let gamma: Vec<f32> = (0..c).map(|i| 0.5 + i as f32).collect();
        let beta: Vec<f32> = (0..c).map(|i| i as f32 - 1.0).collect();
        let mean: Vec<f32> = (0..c).map(|i| 3.0 + 0.1 * i as f32).collect();
        let var: Vec<f32> = (0..c).map(|i| 4.0 + i as f32).collect();
        let affine = Affine {
            gamma: Some(&gamma),
            beta: Some(&beta),
        };
        let want_inf = r::forward_inference(
            &shape,
            &x,
            Some(&gamma),
            Some(&beta),
            &mean,
            &var,
            1e-5,
            true,
        )
        .0;
        let want_train =
            r::forward_training(&shape, &x, Some(&gamma), Some(&beta), 1e-5, 0.1, 0, None)
                .unwrap()
                .y;
        for isa in isas() {
            let ctx = ctx(2, isa);
            let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
            // The output starts 0..4 floats past a 64-byte boundary.
            for skew in 0..4 {
                let mut buf = vec![SENTINEL; n + 32];
                let start = (64 - (buf.as_ptr() as usize % 64)) / 4 % 16 + skew;
                let y = &mut buf[start..start + n];
                batchnorm::forward_inference(
                    &ctx,
                    shape,
                    InOut::separate(&x, y).unwrap(),
                    affine,
                    &mean,
                    &var,
                    1e-5,
                    batchnorm::Activation::Relu,
                )
                .unwrap();
                let inf = y.to_vec();
                y.copy_from_slice(&x);
                batchnorm::forward_training(
                    &ctx,
                    shape,
                    InOut::InPlace(y),
                    affine,
                    TrainingParams::default(),
                    None,
                    SavedStats::default(),
                )
                .unwrap();
                let train = y.to_vec();
                assert!(
                    buf[..start]
                        .iter()
                        .chain(&buf[start + n..])
                        .all(|v| v.to_bits() == SENTINEL.to_bits()),
                    "{shape:?} {isa:?}: wrote outside y"
                );
                match &first {
                    None => {
                        let worst = |got: &[f32], want: &[f64]| {
                            got.iter()
                                .zip(want)
                                .map(|(&g, &w)| (g as f64 - w).abs() / (1.0 + w.abs()))
                                .fold(0.0, f64::max)
                        };
                        assert!(
                            worst(&inf, &want_inf) < 1e-5,
                            "{shape:?} {isa:?}: inference off by {}",
                            worst(&inf, &want_inf)
                        );
                        assert!(
                            worst(&train, &want_train) < 1e-5,
                            "{shape:?} {isa:?}: training off by {}",
                            worst(&train, &want_train)
                        );
                        first = Some((inf, train));
                    }
                    Some((i0, t0)) => {
                        assert!(
                            i0.iter().zip(&inf).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{shape:?} {isa:?} skew {skew}: inference differs"
                        );
                        assert!(
                            t0.iter()
                                .zip(&train)
                                .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{shape:?} {isa:?} skew {skew}: training differs"
                        );
                    }
                }
            }
        }
    }
}

/// Channels whose `gamma * invstd` is beyond f32 (values near 5e-35 with a spread of 2e-36,
/// `eps = 0`, gamma 1e4: about 4e39) while every output is finite (fuzzing found NaN there):
/// training and inference, both layouts, every ISA, against f64. The other channel is
/// ordinary, so the f32 and f64 maps run in the same call.
#[test]
fn scale_beyond_f32_gives_finite_outputs() {
    let tiny = [
        -4.5515876e-35f32,
        -5.060286e-35,
        -5.060286e-35,
        -4.8e-35,
        -4.9e-35,
    ];
    for layout in [Layout::Ncs, Layout::Nsc] {
        for spatial in [1, 5] {
            let shape = Shape::new(5, 2, spatial, layout);
            let mut x = vec![0f32; 5 * 2 * spatial];
            for n in 0..5 {
                for s in 0..spatial {
                    x[r::index(&shape, n, 0, s)] = tiny[(n + s) % 5];
                    x[r::index(&shape, n, 1, s)] = (n * spatial + s) as f32 - 3.0;
                }
            }
            let gamma = [1e4f32, 2.0];
            let beta = [0.5f32, -1.0];
            let affine = Affine {
                gamma: Some(&gamma),
                beta: Some(&beta),
            };
            let params = TrainingParams::new(0.0, 0.1);
            let want =
                r::forward_training(&shape, &x, Some(&gamma), Some(&beta), 0.0, 0.1, 0, None)
                    .unwrap();
            for isa in isas() {
                let what = format!("{shape:?} {isa:?}");
                let mut y = vec![SENTINEL; x.len()];
                let (mut sm, mut si) = (vec![0f32; 2], vec![0f32; 2]);
                batchnorm::forward_training(
                    &ctx(2, isa),
                    shape,
                    InOut::separate(&x, &mut y).unwrap(),
                    affine,
                    params,
                    None,
                    SavedStats {
                        mean: Some(&mut sm),
                        invstd: Some(&mut si),
                    },
                )
                .unwrap();
                for (i, (&g, &w)) in y.iter().zip(&want.y).enumerate() {
                    let c = channel_of(&shape, i);
                    let tol = y_tol_of(gamma[c], beta[c], want.xhat[i]);
                    assert!(
                        close(g as f64, w, tol),
                        "{what}: training y[{i}] = {g}, want {w}"
                    );
                }
                // Inference with the saved statistics as running ones: var = 1 / invstd^2.
                let var: Vec<f32> = si
                    .iter()
                    .map(|&s| (1.0 / (s as f64 * s as f64)) as f32)
                    .collect();
                let mut y = vec![SENTINEL; x.len()];
                batchnorm::forward_inference(
                    &ctx(2, isa),
                    shape,
                    InOut::separate(&x, &mut y).unwrap(),
                    affine,
                    &sm,
                    &var,
                    0.0,
                    batchnorm::Activation::Identity,
                )
                .unwrap();
                for (i, &g) in y.iter().enumerate() {
                    let c = channel_of(&shape, i);
                    let s = gamma[c] as f64 / (var[c] as f64).sqrt();
                    let w = (x[i] as f64 - sm[c] as f64) * s + beta[c] as f64;
                    let tol = 1e-5 * ((x[i] as f64 - sm[c] as f64).abs() * s.abs() + 1.0);
                    assert!(
                        close(g as f64, w, tol),
                        "{what}: inference y[{i}] = {g}, want {w}"
                    );
                }
            }
        }
    }
}

fn y_tol_of(gamma: f32, beta: f32, xhat: f64) -> f64 {
    TOL_Y * ((gamma as f64).abs() * (1.0 + xhat.abs()) + (beta as f64).abs())
}
