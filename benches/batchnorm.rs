//! Batch norm forward and backward throughput, next to a plain copy of the same bytes.
//!
//! Run and summarize:
//!
//! ```text
//! cargo bench --bench batchnorm && python3 benches/report.py
//! ```
//!
//! A criterion name filter selects part of it, e.g.
//! `cargo bench --bench batchnorm -- bn_nchw_1x64x1x1`.
//!
//! One criterion group per shape, named `bn_<layout>_<dims>` (`nchw`: layout NCS, `nhwc`: NSC,
//! `nc`: an (N, C) matrix, NCS with spatial 1). In each group:
//!
//! - `copy/t1`: `y.copy_from_slice(&x)` on the calling thread, the reference throughput;
//! - `copy/t2` (large shapes only): the same copy split in two halves on two scoped threads (it
//!   includes the cost of starting them, a few tens of microseconds);
//! - `inference/<isa>_t<threads>`: `batchnorm::forward_inference`;
//! - `training/<isa>_t<threads>`: `batchnorm::forward_training` with running and saved
//!   statistics, as an engine calls it;
//! - large shapes, best ISA on 2 threads: `moments/...` (the statistics pass alone; it only
//!   reads `x`, so its throughput counts `4 * elements` bytes) and `from_moments/...` (the
//!   normalization pass of training with given statistics), the two halves of a training forward;
//! - large shapes: `scale_loop/t1`, `y = x * s` in a plain loop compiled for the build target, an
//!   elementwise kernel with ordinary stores, next to the copy;
//! - for the tiny shape, `inference_c_null_ctx/<isa>_t<threads>`: the C entry point
//!   `nk_batchnorm_forward_inference` with a NULL context (the process-wide default: best ISA,
//!   all cores), and `training_biased_var`: a single value per channel has no unbiased variance,
//!   so the running variance there is the biased one (`BN_RUNNING_VAR_BIASED`).
//!
//! Every benchmark declares `2 * 4 * elements` bytes, the minimal traffic (read `x` once, write
//! `y` once), so that throughputs compare with the copy directly.
//!
//! `--drift` runs, instead of the criterion groups, the training forward on data that fails the
//! moments' conditioning test (see [`drift`]) next to ordinary data of the same shape, in
//! alternating rounds in one process (`benches/rounds`), and prints a markdown table:
//!
//! ```text
//! cargo bench --bench batchnorm -- --drift --threads 1 --isa avx512 --rounds 15
//! ```

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group};
use normkit::batchnorm::{self, Affine, BackwardIo, RunningStats, SavedStats, TrainingParams};
use normkit::ffi::{nk_batchnorm_forward_inference, nk_layout, nk_shape, nk_status};
use normkit::{Context, InOut, Isa, Layout, Shape};
use std::hint::black_box;
use std::time::Duration;
mod rounds;

const EPS: f32 = 1e-5;

/// A deterministic stream of pseudo-random numbers (SplitMix64), so every run sees the same data.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Two independent standard normal values (Box-Muller).
    fn normal_pair(&mut self) -> (f64, f64) {
        let r = (-2.0 * self.uniform().ln()).sqrt();
        let t = std::f64::consts::TAU * self.uniform();
        (r * t.cos(), r * t.sin())
    }

    /// `n` values of `offset + scale * N(0, 1)`.
    fn normals(&mut self, n: usize, offset: f64, scale: f64) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let (a, b) = self.normal_pair();
            out.push((offset + scale * a) as f32);
            out.push((offset + scale * b) as f32);
        }
        out.truncate(n);
        out
    }
}

/// One benchmarked shape and the timing budget of its group.
struct Case {
    /// Group name: `bn_<layout>_<dims>`.
    name: &'static str,
    shape: Shape,
    /// Large shapes also run on one thread and on every ISA, and get the two-thread copy.
    every_isa: bool,
    sample_size: usize,
    warm_up: Duration,
    measurement: Duration,
}

/// The tensor and per-channel parameters of one case.
struct Data {
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
}

impl Data {
    fn new(shape: &Shape, seed: u64) -> Data {
        let elements = shape.batch * shape.channels * shape.spatial;
        let c = shape.channels;
        let mut rng = Rng(seed);
        let x = rng.normals(elements, 1.0, 1.0);
        let gamma = rng.normals(c, 1.0, 0.1);
        let beta = rng.normals(c, 0.0, 0.1);
        let mean = rng.normals(c, 1.0, 0.05);
        let var = rng
            .normals(c, 1.0, 0.1)
            .into_iter()
            .map(|v| v.abs() + 0.01)
            .collect();
        Data {
            x,
            gamma,
            beta,
            mean,
            var,
        }
    }

    fn affine(&self) -> Affine<'_> {
        Affine {
            gamma: Some(&self.gamma),
            beta: Some(&self.beta),
        }
    }
}

fn isa_name(isa: Isa) -> String {
    format!("{isa:?}").to_lowercase()
}

fn context(threads: usize, isa: Isa) -> Context {
    let ctx = Context::new(threads).expect("context");
    ctx.set_isa(Some(isa)).expect("a supported ISA");
    ctx
}

fn bench_copy(group: &mut BenchmarkGroup<'_, WallTime>, x: &[f32]) {
    let mut y = vec![0f32; x.len()];
    group.bench_function(BenchmarkId::new("copy", "t1"), |b| {
        b.iter(|| {
            y.copy_from_slice(black_box(x));
            black_box(&mut y);
        })
    });
}

fn bench_copy_two_threads(group: &mut BenchmarkGroup<'_, WallTime>, x: &[f32]) {
    let mut y = vec![0f32; x.len()];
    let half = x.len().div_ceil(2);
    group.bench_function(BenchmarkId::new("copy", "t2"), |b| {
        b.iter(|| {
            let (x0, x1) = black_box(x).split_at(half);
            let (y0, y1) = y.split_at_mut(half);
            std::thread::scope(|s| {
                s.spawn(|| y1.copy_from_slice(x1));
                y0.copy_from_slice(x0);
            });
            black_box(&mut y);
        })
    });
}

fn bench_inference(
    group: &mut BenchmarkGroup<'_, WallTime>,
    case: &Case,
    data: &Data,
    ctx: &Context,
    id: &str,
) {
    let mut y = vec![0f32; data.x.len()];
    let shape = case.shape;
    let run = |y: &mut [f32]| {
        batchnorm::forward_inference(
            ctx,
            shape,
            InOut::separate(black_box(&data.x), y).expect("lengths"),
            data.affine(),
            &data.mean,
            &data.var,
            EPS,
            batchnorm::Activation::Identity,
        )
    };
    run(&mut y).expect("batch norm inference");
    group.bench_function(BenchmarkId::new("inference", id), |b| {
        b.iter(|| {
            run(&mut y).unwrap();
            black_box(&mut y);
        })
    });
}

fn bench_training(
    group: &mut BenchmarkGroup<'_, WallTime>,
    case: &Case,
    data: &Data,
    ctx: &Context,
    id: &str,
) {
    let c = case.shape.channels;
    let mut y = vec![0f32; data.x.len()];
    let (mut running_mean, mut running_var) = (vec![0f32; c], vec![1f32; c]);
    let (mut save_mean, mut save_invstd) = (vec![0f32; c], vec![0f32; c]);
    let shape = case.shape;
    let count = shape.batch * shape.spatial;
    // One value per channel has no unbiased variance: track the biased one there.
    let (name, tracked) = if count < 2 {
        ("training_biased_var", batchnorm::RunningVar::Biased)
    } else {
        ("training", batchnorm::RunningVar::Unbiased)
    };
    let params = TrainingParams::new(EPS, 0.1).with_running_var(tracked);
    let mut run = |y: &mut [f32]| {
        batchnorm::forward_training(
            ctx,
            shape,
            InOut::separate(black_box(&data.x), y).expect("lengths"),
            data.affine(),
            params,
            Some(RunningStats {
                mean: &mut running_mean,
                var: &mut running_var,
            }),
            SavedStats {
                mean: Some(&mut save_mean),
                invstd: Some(&mut save_invstd),
            },
        )
    };
    run(&mut y).expect("batch norm training");
    group.bench_function(BenchmarkId::new(name, id), |b| {
        b.iter(|| {
            run(&mut y).unwrap();
            black_box(&mut y);
        })
    });
}

/// The two halves of a training forward, for the large shapes: `moments` (the statistics pass,
/// which reads `x` only, so its throughput counts `4 * elements` bytes) and `from_moments` (the
/// normalization with given statistics and the running/saved statistics update).
fn bench_training_parts(
    group: &mut BenchmarkGroup<'_, WallTime>,
    case: &Case,
    data: &Data,
    ctx: &Context,
    id: &str,
) {
    let shape = case.shape;
    let c = shape.channels;
    let elements = data.x.len() as u64;
    let mut moments = vec![normkit::Moments::EMPTY; c];
    batchnorm::moments(ctx, shape, &data.x, &mut moments).expect("moments");
    group.throughput(Throughput::Bytes(4 * elements));
    group.bench_function(BenchmarkId::new("moments", id), |b| {
        b.iter(|| {
            batchnorm::moments(ctx, shape, black_box(&data.x), &mut moments).unwrap();
            black_box(&mut moments);
        })
    });
    group.throughput(Throughput::Bytes(2 * 4 * elements));

    let mut y = vec![0f32; data.x.len()];
    let (mut running_mean, mut running_var) = (vec![0f32; c], vec![1f32; c]);
    let (mut save_mean, mut save_invstd) = (vec![0f32; c], vec![0f32; c]);
    let mut run = |y: &mut [f32]| {
        batchnorm::forward_from_moments(
            ctx,
            shape,
            InOut::separate(black_box(&data.x), y).expect("lengths"),
            data.affine(),
            &moments,
            TrainingParams::default(),
            Some(RunningStats {
                mean: &mut running_mean,
                var: &mut running_var,
            }),
            SavedStats {
                mean: Some(&mut save_mean),
                invstd: Some(&mut save_invstd),
            },
        )
    };
    run(&mut y).expect("batch norm from moments");
    group.bench_function(BenchmarkId::new("from_moments", id), |b| {
        b.iter(|| {
            run(&mut y).unwrap();
            black_box(&mut y);
        })
    });
}

/// `y = x * s` in a plain loop the compiler vectorizes for the build target: an elementwise
/// kernel with ordinary stores, next to `copy` (whose `memcpy` may write without reading the
/// destination first).
fn bench_scale_loop(group: &mut BenchmarkGroup<'_, WallTime>, x: &[f32]) {
    let mut y = vec![0f32; x.len()];
    group.bench_function(BenchmarkId::new("scale_loop", "t1"), |b| {
        b.iter(|| {
            let s = black_box(1.0f32);
            for (y, &x) in y.iter_mut().zip(black_box(x)) {
                *y = x * s;
            }
            black_box(&mut y);
        })
    });
}

/// The C entry point with a NULL context, as a C engine calls it.
fn bench_inference_c(group: &mut BenchmarkGroup<'_, WallTime>, case: &Case, data: &Data) {
    let mut y = vec![0f32; data.x.len()];
    let layout = match case.shape.layout {
        Layout::Ncs => nk_layout::NK_LAYOUT_NCS,
        Layout::Nsc => nk_layout::NK_LAYOUT_NSC,
        _ => unreachable!("a new layout this code does not know"),
    };
    let shape = nk_shape {
        batch: case.shape.batch,
        channels: case.shape.channels,
        spatial: case.shape.spatial,
        layout: layout as _,
    };
    let run = |y: &mut [f32]| {
        // SAFETY: x and y hold N*C*S floats, and the per-channel arrays C floats each.
        unsafe {
            nk_batchnorm_forward_inference(
                std::ptr::null_mut(),
                black_box(shape),
                black_box(data.x.as_ptr()),
                y.as_mut_ptr(),
                data.gamma.as_ptr(),
                data.beta.as_ptr(),
                data.mean.as_ptr(),
                data.var.as_ptr(),
                black_box(EPS),
                0,
            )
        }
    };
    assert_eq!(run(&mut y), nk_status::NK_OK);
    // The default context: the best ISA and one thread per logical core.
    let default = Context::global();
    let id = format!("{}_t{}", isa_name(default.isa()), default.threads());
    group.bench_function(BenchmarkId::new("inference_c_null_ctx", id), |b| {
        b.iter(|| {
            black_box(run(&mut y));
            black_box(&mut y);
        })
    });
}

fn bench_case(c: &mut Criterion, case: &Case, seed: u64) {
    let data = Data::new(&case.shape, seed);
    let bytes = 2 * 4 * data.x.len() as u64;
    let mut group = c.benchmark_group(case.name);
    group
        .throughput(Throughput::Bytes(bytes))
        .sample_size(case.sample_size)
        .warm_up_time(case.warm_up)
        .measurement_time(case.measurement);

    bench_copy(&mut group, &data.x);
    if case.every_isa {
        bench_copy_two_threads(&mut group, &data.x);
        bench_scale_loop(&mut group, &data.x);
    }

    let configs: Vec<(Isa, usize)> = if case.every_isa {
        Isa::supported()
            .into_iter()
            .flat_map(|isa| [(isa, 1), (isa, 2)])
            .collect()
    } else {
        vec![(Isa::best(), 2)]
    };
    for (isa, threads) in configs {
        let ctx = context(threads, isa);
        let id = format!("{}_t{threads}", isa_name(isa));
        bench_inference(&mut group, case, &data, &ctx, &id);
        bench_training(&mut group, case, &data, &ctx, &id);
        if case.every_isa && isa == Isa::best() && threads == 2 {
            bench_training_parts(&mut group, case, &data, &ctx, &id);
        }
    }
    if data.x.len() <= 1024 {
        bench_inference_c(&mut group, case, &data);
    }
    group.finish();
}

fn cases() -> Vec<Case> {
    let large = |name, shape| Case {
        name,
        shape,
        every_isa: true,
        sample_size: 30,
        warm_up: Duration::from_secs(2),
        measurement: Duration::from_secs(5),
    };
    let medium = |name, shape| Case {
        name,
        shape,
        every_isa: false,
        sample_size: 50,
        warm_up: Duration::from_secs(2),
        measurement: Duration::from_secs(5),
    };
    vec![
        large(
            "bn_nchw_32x64x56x56",
            Shape::new(32, 64, 56 * 56, Layout::Ncs),
        ),
        large(
            "bn_nhwc_32x64x56x56",
            Shape::new(32, 64, 56 * 56, Layout::Nsc),
        ),
        medium(
            "bn_nchw_8x2048x7x7",
            Shape::new(8, 2048, 7 * 7, Layout::Ncs),
        ),
        medium(
            "bn_nchw_1x64x112x112",
            Shape::new(1, 64, 112 * 112, Layout::Ncs),
        ),
        medium("bn_nc_4096x1024", Shape::new(4096, 1024, 1, Layout::Ncs)),
        Case {
            name: "bn_nchw_1x64x1x1",
            shape: Shape::new(1, 64, 1, Layout::Ncs),
            every_isa: false,
            sample_size: 100,
            warm_up: Duration::from_secs(1),
            measurement: Duration::from_secs(3),
        },
    ]
}

fn batchnorm_forward(c: &mut Criterion) {
    for (i, case) in cases().iter().enumerate() {
        bench_case(c, case, 0x5EED_0000 + i as u64);
    }
}

// ---------------------------------------------------------------------------------------------
// Backward.
//
// One group per layout, `bnbwd_<layout>_32x64x56x56`, each benchmark declaring the minimal
// traffic of a backward, `3 * 4 * elements` bytes (read `x` and `dy`, write `dx` once; the
// reduction alone reads `2 * 4 * elements`):
//
// - `three_streams/t1`, `/t2`: `dx = x + dy` in a plain loop, on one thread and split in two
//   halves on two scoped threads: one pass over the same bytes, the reference;
// - `copy/t1`: `y.copy_from_slice(&x)` of one tensor, as in the forward groups;
// - `backward/<isa>_t<threads>`: `batchnorm::backward` with `dx`, `dgamma` and `dbeta`;
// - best ISA on 2 threads: `backward_reduce` and `backward_apply`, its two passes.

/// `dx = x + dy`: reads two streams, writes one.
fn add_streams(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    for ((d, &a), &b) in dx.iter_mut().zip(x).zip(dy) {
        *d = a + b;
    }
}

fn bench_backward_case(c: &mut Criterion, name: &str, shape: Shape, seed: u64) {
    let n = shape.batch * shape.channels * shape.spatial;
    let ch = shape.channels;
    let mut rng = Rng(seed);
    let x = rng.normals(n, 1.0, 1.0);
    let dy = rng.normals(n, 0.0, 1.0);
    let gamma = rng.normals(ch, 1.0, 0.1);
    let mut moments = vec![normkit::Moments::EMPTY; ch];
    let ctx2 = context(2, Isa::best());
    batchnorm::moments(&ctx2, shape, &x, &mut moments).expect("moments");
    let count = (shape.batch * shape.spatial) as u64;
    let save_mean: Vec<f32> = moments.iter().map(|m| m.mean as f32).collect();
    let save_invstd: Vec<f32> = moments
        .iter()
        .map(|m| (1.0 / (m.m2 / count as f64 + EPS as f64).sqrt()) as f32)
        .collect();

    let mut group = c.benchmark_group(name);
    group
        .throughput(Throughput::Bytes(3 * 4 * n as u64))
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(4));

    let mut dx = vec![0f32; n];
    group.bench_function(BenchmarkId::new("three_streams", "t1"), |b| {
        b.iter(|| {
            add_streams(black_box(&x), black_box(&dy), &mut dx);
            black_box(&mut dx);
        })
    });
    let half = n.div_ceil(2);
    group.bench_function(BenchmarkId::new("three_streams", "t2"), |b| {
        b.iter(|| {
            let (x0, x1) = black_box(&x[..]).split_at(half);
            let (d0, d1) = black_box(&dy[..]).split_at(half);
            let (o0, o1) = dx.split_at_mut(half);
            std::thread::scope(|s| {
                s.spawn(|| add_streams(x1, d1, o1));
                add_streams(x0, d0, o0);
            });
            black_box(&mut dx);
        })
    });
    group.throughput(Throughput::Bytes(2 * 4 * n as u64));
    bench_copy(&mut group, &x);
    group.throughput(Throughput::Bytes(3 * 4 * n as u64));

    let (mut dgamma, mut dbeta) = (vec![0f32; ch], vec![0f32; ch]);
    for isa in Isa::supported() {
        for threads in [1, 2] {
            let ctx = context(threads, isa);
            let id = format!("{}_t{threads}", isa_name(isa));
            group.bench_function(BenchmarkId::new("backward", id), |b| {
                b.iter(|| {
                    batchnorm::backward(
                        &ctx,
                        shape,
                        black_box(&x),
                        BackwardIo::WithDx(InOut::separate(&dy, &mut dx).unwrap()),
                        Some(&gamma),
                        &save_mean,
                        &save_invstd,
                        Some(&mut dgamma),
                        Some(&mut dbeta),
                    )
                    .unwrap();
                    black_box(&mut dx);
                })
            });
        }
    }

    let id = format!("{}_t2", isa_name(Isa::best()));
    let (mut sum_dy, mut sum_dy_xhat) = (vec![0f64; ch], vec![0f64; ch]);
    group.throughput(Throughput::Bytes(2 * 4 * n as u64));
    group.bench_function(BenchmarkId::new("backward_reduce", &id), |b| {
        b.iter(|| {
            batchnorm::backward_reduce(
                &ctx2,
                shape,
                black_box(&x),
                black_box(&dy),
                &save_mean,
                &save_invstd,
                &mut sum_dy,
                &mut sum_dy_xhat,
            )
            .unwrap();
            black_box((&mut sum_dy, &mut sum_dy_xhat));
        })
    });
    group.throughput(Throughput::Bytes(3 * 4 * n as u64));
    group.bench_function(BenchmarkId::new("backward_apply", &id), |b| {
        b.iter(|| {
            batchnorm::backward_apply(
                &ctx2,
                shape,
                black_box(&x),
                InOut::separate(&dy, &mut dx).unwrap(),
                Some(&gamma),
                &save_mean,
                &save_invstd,
                count,
                &sum_dy,
                &sum_dy_xhat,
            )
            .unwrap();
            black_box(&mut dx);
        })
    });
    group.finish();
}

fn batchnorm_backward(c: &mut Criterion) {
    bench_backward_case(
        c,
        "bnbwd_nchw_32x64x56x56",
        Shape::new(32, 64, 56 * 56, Layout::Ncs),
        0xB0C0_0001,
    );
    bench_backward_case(
        c,
        "bnbwd_nhwc_32x64x56x56",
        Shape::new(32, 64, 56 * 56, Layout::Nsc),
        0xB0C0_0002,
    );
}

criterion_group!(benches, batchnorm_forward, batchnorm_backward);

fn main() {
    if std::env::args().any(|a| a == "--drift") {
        drift::run(&rounds::Options::parse());
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

/// Training forward on data whose shifted block sums fail the moments' conditioning test, so
/// that the moments recompute those blocks (`src/kernels/moments.rs`), next to ordinary data of
/// the same shape. Values along a channel are taken in its reduction order (`r = n * spatial +
/// s`); the noise is `rounds::values` (about N(0, 0.6)):
///
/// - `normal`: `1 + noise`;
/// - `ramp`: `1000 * n + noise`, a mean drifting along the batch. Channels-innermost, a
///   reduction chunk whose first block ends an image and whose rest lies in the next one fails
///   (2 chunks of 49 in NHWC 32x64x56x56); channels-first, no block does (only a run's first
///   block is checked for cancellation, and its first value lies within the block's spread);
/// - `spike`: `1 + noise`, and `10000` at every 64th value (`r % 64 == 0`, the first value of
///   every block and chunk): the first block of every run (channels-first: each channel's first
///   2048 values; channels-innermost: each chunk's first 64 rows) has its shift far from its
///   mean;
/// - `steps`: `1000 * ((r / 64) % 2) + noise`: channels-innermost chunks of 128 rows (the
///   (4096, 1024) matrix) have their first block at one level and the rest at the other, so
///   every chunk's rest fails;
/// - `nan`: `1 + noise` with a NaN every 997 values: sums that are not finite, in nearly every
///   channels-innermost chunk of every channel (channels-first stops at a channel's first NaN).
///
/// Every variant declares `2 * 4 * elements` bytes; `vs normal` is the time over `normal`'s.
mod drift {
    use super::{EPS, context, rounds};
    use normkit::batchnorm::{self, Affine, RunningStats, SavedStats, TrainingParams};
    use normkit::{InOut, Layout, Shape};
    use std::hint::black_box;

    const KINDS: [&str; 5] = ["normal", "ramp", "spike", "steps", "nan"];

    /// The tensor of `shape` with the values of `kind` (see the module documentation).
    fn data(shape: &Shape, kind: &str) -> Vec<f32> {
        let (n, c, s) = (shape.batch, shape.channels, shape.spatial);
        let noise = rounds::values(n * c * s, 7, 0.0);
        let mut x = vec![0f32; n * c * s];
        for b in 0..n {
            for ch in 0..c {
                for sp in 0..s {
                    let i = match shape.layout {
                        Layout::Ncs => (b * c + ch) * s + sp,
                        Layout::Nsc => (b * s + sp) * c + ch,
                        _ => unreachable!("a new layout"),
                    };
                    let r = b * s + sp;
                    let e = noise[i];
                    x[i] = match kind {
                        "normal" => 1.0 + e,
                        "ramp" => 1000.0 * b as f32 + e,
                        "spike" if r % 64 == 0 => 10_000.0,
                        "spike" => 1.0 + e,
                        "steps" => 1000.0 * ((r / 64) % 2) as f32 + e,
                        "nan" if i % 997 == 0 => f32::NAN,
                        "nan" => 1.0 + e,
                        _ => unreachable!("kind {kind}"),
                    };
                }
            }
        }
        x
    }

    pub fn run(o: &rounds::Options) {
        let ctx = context(o.threads, o.isa);
        println!(
            "Batch norm training on drifting data: {} threads, ISA {:?}, {} alternating rounds of ~{} ms, medians\n",
            o.threads, o.isa, o.rounds, o.target_ms
        );
        println!("| shape | data | median ms | GB/s | vs normal |");
        println!("|---|---|---:|---:|---:|");
        let shapes = [
            ("nchw 32x64x56x56", Shape::new(32, 64, 56 * 56, Layout::Ncs)),
            ("nhwc 32x64x56x56", Shape::new(32, 64, 56 * 56, Layout::Nsc)),
            ("nc 4096x1024", Shape::new(4096, 1024, 1, Layout::Ncs)),
            ("nchw 8x2048x7x7", Shape::new(8, 2048, 7 * 7, Layout::Ncs)),
        ];
        for (name, shape) in shapes {
            if !o.wants(name) {
                continue;
            }
            let c = shape.channels;
            let gamma = rounds::values(c, 1, 1.0);
            let beta = rounds::values(c, 2, 0.0);
            let inputs: Vec<Vec<f32>> = KINDS.iter().map(|k| data(&shape, k)).collect();
            let elements = inputs[0].len();
            let mut calls: Vec<Box<dyn FnMut() + '_>> = inputs
                .iter()
                .map(|x| {
                    let mut y = vec![0f32; elements];
                    let (mut rm, mut rv) = (vec![0f32; c], vec![1f32; c]);
                    let (mut sm, mut si) = (vec![0f32; c], vec![0f32; c]);
                    let (ctx, gamma, beta) = (&ctx, &gamma, &beta);
                    Box::new(move || {
                        batchnorm::forward_training(
                            ctx,
                            shape,
                            InOut::separate(black_box(x), &mut y).expect("lengths"),
                            Affine {
                                gamma: Some(gamma),
                                beta: Some(beta),
                            },
                            TrainingParams::new(EPS, 0.1),
                            Some(RunningStats {
                                mean: &mut rm,
                                var: &mut rv,
                            }),
                            SavedStats {
                                mean: Some(&mut sm),
                                invstd: Some(&mut si),
                            },
                        )
                        .expect("batch norm training");
                        black_box(&mut y);
                    }) as Box<dyn FnMut() + '_>
                })
                .collect();
            let med = o.medians(
                &mut calls
                    .iter_mut()
                    .map(|f| f.as_mut() as &mut dyn FnMut())
                    .collect::<Vec<_>>(),
            );
            let bytes = (2 * 4 * elements) as f64;
            for (k, kind) in KINDS.iter().enumerate() {
                println!(
                    "| {name} | {kind} | {:.3} | {:.1} | {:.2} |",
                    med[k] * 1e3,
                    bytes / med[k] / 1e9,
                    med[k] / med[0],
                );
            }
        }
    }
}
