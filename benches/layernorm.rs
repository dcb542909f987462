//! Layer norm, RMS norm and weight standardization throughput, next to a plain copy of the same bytes.
//!
//! Run:
//!
//! ```text
//! cargo bench --bench layernorm && python3 benches/report.py
//! ```
//!
//! One criterion group per case, named `<op>_<rows>x<cols>`:
//!
//! - `ln_fwd_8192x768`, `ln_fwd_2048x4096`, `rms_fwd_8192x4096`: forward with `gamma`, `beta`
//!   (RMS: `gamma`) and saved statistics, best ISA, on 1 and 2 threads;
//! - `ln_fwd_1x768`: the latency of one small row, on the calling thread, through the safe API
//!   and through the C entry point with a NULL (default) context;
//! - `ln_bwd_8192x768`: backward with `dx`, `dgamma` and `dbeta`.
//!
//! Each group also has `copy/t1` (`y.copy_from_slice(&x)`) and, for large shapes, `copy/t2`
//! (the copy in two halves on two scoped threads). Every benchmark declares `2 * 4 * elements`
//! bytes (read `x`, write `y` once), so that throughputs compare with the copy directly; the
//! backward moves `3 * 4 * elements` bytes (`x`, `dy`, `dx`), so its ratio to the copy is
//! `1.5 *` the throughput ratio reported.

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use normkit::batchnorm::{Affine, SavedStats};
use normkit::ffi::{nk_layernorm_forward, nk_status};
use normkit::layernorm::{self, BackwardIo};
use normkit::{Context, InOut, Isa, rmsnorm};
use std::hint::black_box;
use std::ptr::null_mut;
use std::time::Duration;

const EPS: f32 = 1e-5;

/// SplitMix64, so every run sees the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // A sum of uniforms: roughly normal, mean 1.
        let u = |s: u64| (s & 0xFFFF) as f32 / 65536.0;
        u(z) + u(z >> 16) + u(z >> 32) + u(z >> 48) - 1.0
    }

    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn context(threads: usize) -> Context {
    let ctx = Context::new(threads).expect("context");
    ctx.set_isa(Some(Isa::best())).expect("best ISA");
    ctx
}

fn bench_copy(group: &mut BenchmarkGroup<'_, WallTime>, x: &[f32], two: bool) {
    let mut y = vec![0f32; x.len()];
    group.bench_function(BenchmarkId::new("copy", "t1"), |b| {
        b.iter(|| {
            y.copy_from_slice(black_box(x));
            black_box(&mut y);
        })
    });
    if two {
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
}

fn group<'c>(
    c: &'c mut Criterion,
    name: &str,
    elements: usize,
    large: bool,
) -> BenchmarkGroup<'c, WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes((2 * 4 * elements) as u64));
    if large {
        g.sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
    } else {
        g.sample_size(50)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
    }
    g
}

fn forward(c: &mut Criterion, rows: usize, cols: usize, centered: bool) {
    let n = rows * cols;
    let large = n >= 1 << 20;
    let name = format!("{}_fwd_{rows}x{cols}", if centered { "ln" } else { "rms" });
    let mut rng = Rng(rows as u64 * 31 + cols as u64);
    let x = rng.values(n);
    let gamma = rng.values(cols);
    let beta = rng.values(cols);
    let mut y = vec![0f32; n];
    let mut mean = vec![0f32; rows];
    let mut inv = vec![0f32; rows];
    let mut g = group(c, &name, n, large);
    bench_copy(&mut g, &x, large);
    let threads: &[usize] = if large { &[1, 2] } else { &[1] };
    for &t in threads {
        let ctx = context(t);
        let id = format!("{}_t{t}", format!("{:?}", Isa::best()).to_lowercase());
        g.bench_function(BenchmarkId::new("forward", id), |b| {
            b.iter(|| {
                let io = InOut::separate(black_box(&x), &mut y).unwrap();
                if centered {
                    let affine = Affine {
                        gamma: Some(&gamma),
                        beta: Some(&beta),
                    };
                    let saved = SavedStats {
                        mean: Some(&mut mean),
                        invstd: Some(&mut inv),
                    };
                    layernorm::forward(&ctx, rows, cols, io, affine, EPS, saved).unwrap();
                } else {
                    rmsnorm::forward(&ctx, rows, cols, io, Some(&gamma), EPS, Some(&mut inv))
                        .unwrap();
                }
                black_box(&mut y);
            })
        });
    }
    if !large && centered {
        g.bench_function(BenchmarkId::new("forward_c_null_ctx", "default"), |b| {
            b.iter(|| {
                // SAFETY: every buffer has the extent the call needs.
                let s = unsafe {
                    nk_layernorm_forward(
                        null_mut(),
                        rows,
                        cols,
                        black_box(x.as_ptr()),
                        y.as_mut_ptr(),
                        gamma.as_ptr(),
                        beta.as_ptr(),
                        EPS,
                        mean.as_mut_ptr(),
                        inv.as_mut_ptr(),
                    )
                };
                assert_eq!(s, nk_status::NK_OK);
                black_box(&mut y);
            })
        });
    }
    g.finish();
}

fn backward(c: &mut Criterion, rows: usize, cols: usize) {
    let n = rows * cols;
    let mut rng = Rng(7);
    let x = rng.values(n);
    let dy = rng.values(n);
    let gamma = rng.values(cols);
    let (mut mean, mut inv) = (vec![0f32; rows], vec![0f32; rows]);
    let mut y = vec![0f32; n];
    let ctx = context(2);
    layernorm::forward(
        &ctx,
        rows,
        cols,
        InOut::separate(&x, &mut y).unwrap(),
        Affine::default(),
        EPS,
        SavedStats {
            mean: Some(&mut mean),
            invstd: Some(&mut inv),
        },
    )
    .unwrap();
    let mut dx = vec![0f32; n];
    let (mut dgamma, mut dbeta) = (vec![0f32; cols], vec![0f32; cols]);
    let mut g = group(c, &format!("ln_bwd_{rows}x{cols}"), n, true);
    bench_copy(&mut g, &x, true);
    for t in [1, 2] {
        let ctx = context(t);
        let id = format!("{}_t{t}", format!("{:?}", Isa::best()).to_lowercase());
        g.bench_function(BenchmarkId::new("backward", id), |b| {
            b.iter(|| {
                layernorm::backward(
                    &ctx,
                    rows,
                    cols,
                    black_box(&x),
                    BackwardIo::WithDx(InOut::separate(&dy, &mut dx).unwrap()),
                    Some(&gamma),
                    &mean,
                    &inv,
                    Some(&mut dgamma),
                    Some(&mut dbeta),
                )
                .unwrap();
                black_box(&mut dx);
            })
        });
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    forward(c, 1, 768, true);
    forward(c, 8192, 768, true);
    forward(c, 2048, 4096, true);
    forward(c, 8192, 4096, false);
    backward(c, 8192, 768);
}

criterion_group!(benches, bench);
criterion_main!(benches);
