//! Dropout benchmarks: mask generation, inverted dropout forward with the mask out, backward
//! with the mask in and with the mask made again from (seed, offset), on 16M floats at
//! p = 0.1 and 0.5, at 1 and 2 threads, next to a copy of the same bytes in the same group.
//!
//! Run: `cargo bench --bench dropout` (criterion prints GB/s for the data passes, counting
//! x read + y written, and elements/s for mask generation).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use normkit::dropout::Stream;
use normkit::{Context, InOut, dropout};
use std::hint::black_box;
use std::time::Duration;

const N: usize = 1 << 24;
const SEED: u64 = 0x5eed;

fn bench(c: &mut Criterion) {
    let x: Vec<f32> = (0..N)
        .map(|i| ((i * 7919) % 1000) as f32 * 0.001 - 0.5)
        .collect();
    let mut y = vec![0f32; N];
    let mut mask = vec![0u8; dropout::mask_len(N)];
    let contexts: Vec<(usize, Context)> = [1, 2]
        .into_iter()
        .map(|t| (t, Context::new(t).expect("context")))
        .collect();
    for p in [0.1f32, 0.5] {
        let mut group = c.benchmark_group(format!("dropout_16M_p{p}"));
        group
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        group.throughput(Throughput::Bytes(8 * N as u64));
        group.bench_function(BenchmarkId::new("copy", "t1"), |b| {
            b.iter(|| y.copy_from_slice(black_box(&x)))
        });
        for (t, ctx) in &contexts {
            let id = format!("t{t}");
            group.throughput(Throughput::Elements(N as u64));
            group.bench_function(BenchmarkId::new("mask", &id), |b| {
                b.iter(|| dropout::mask(ctx, N, p, Stream::new(SEED, 0), &mut mask).unwrap())
            });
            group.throughput(Throughput::Bytes(8 * N as u64));
            group.bench_function(BenchmarkId::new("forward_mask_out", &id), |b| {
                b.iter(|| {
                    let io = InOut::separate(&x, &mut y).unwrap();
                    dropout::forward(ctx, io, p, Stream::new(SEED, 0), Some(&mut mask)).unwrap()
                })
            });
            group.bench_function(BenchmarkId::new("backward_mask_in", &id), |b| {
                b.iter(|| {
                    let io = InOut::separate(&x, &mut y).unwrap();
                    dropout::backward(ctx, io, p, Stream::new(SEED, 0), Some(&mask)).unwrap()
                })
            });
            group.bench_function(BenchmarkId::new("backward_regenerate", &id), |b| {
                b.iter(|| {
                    let io = InOut::separate(&x, &mut y).unwrap();
                    dropout::backward(ctx, io, p, Stream::new(SEED, 0), None).unwrap()
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
