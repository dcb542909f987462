//! Group and instance norm throughput, next to a plain copy of the same bytes.
//!
//! ```text
//! cargo bench --bench groupnorm
//! ```
//!
//! One criterion group per case, named `<op>_<layout>_<dims>[_g<groups>]` (`nchw`: layout NCS,
//! `nhwc`: NSC). In each group:
//!
//! - `copy/t1`: `y.copy_from_slice(&x)` on the calling thread, the reference throughput;
//! - `<op>/<isa>_t<threads>`: the operation on 1 and 2 threads, every ISA of the CPU.
//!
//! Forwards declare `2 * 4 * elements` bytes (read `x`, write `y`) and their copy moves `x`
//! into `y`; the backward declares `3 * 4 * elements` bytes (read `x` and `dy`, write `dx`) and
//! its copy moves the same bytes (`x` whole and half of `dy`, into two outputs). Every forward
//! writes its saved statistics; the backward computes `dx`, `dgamma` and `dbeta` from statistics
//! saved by one forward.

use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use normkit::groupnorm::{self, Affine, BackwardIo, SavedStats};
use normkit::{Context, InOut, Isa, Layout, Shape, instancenorm};
use std::hint::black_box;
use std::time::Duration;

const EPS: f32 = 1e-5;

/// SplitMix64 values in [-2, 2), so every run sees the same data.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Op {
    GroupForward,
    InstanceForward,
    GroupBackward,
}

struct Case {
    name: &'static str,
    op: Op,
    shape: Shape,
    groups: usize,
}

fn context(threads: usize, isa: Isa) -> Context {
    let ctx = Context::new(threads).expect("context");
    ctx.set_isa(Some(isa)).expect("supported ISA");
    ctx
}

fn bench_case(c: &mut Criterion, case: &Case) {
    let shape = case.shape;
    let elements = shape.batch * shape.channels * shape.spatial;
    let ch = shape.channels;
    let saves = shape.batch * case.groups;
    let x = values(elements, 1);
    let dy = values(elements, 2);
    let gamma = values(ch, 3);
    let beta = values(ch, 4);
    let mut y = vec![0f32; elements];
    let mut mean = vec![0f32; saves];
    let mut invstd = vec![0f32; saves];
    let mut dgamma = vec![0f32; ch];
    let mut dbeta = vec![0f32; ch];
    let backward = matches!(case.op, Op::GroupBackward);
    let streams = if backward { 3 } else { 2 };

    let mut group: BenchmarkGroup<'_, WallTime> = c.benchmark_group(case.name);
    group
        .throughput(Throughput::Bytes((streams * 4 * elements) as u64))
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    if backward {
        // The same bytes as the backward's three streams: 1.5 tensors read, 1.5 written.
        let half = elements / 2;
        let mut y2 = vec![0f32; half];
        group.bench_function(BenchmarkId::new("copy", "t1"), |b| {
            b.iter(|| {
                y.copy_from_slice(black_box(&x));
                y2.copy_from_slice(black_box(&dy[..half]));
            })
        });
    } else {
        group.bench_function(BenchmarkId::new("copy", "t1"), |b| {
            b.iter(|| y.copy_from_slice(black_box(&x)))
        });
    }
    // Saved statistics for the backward, from one forward.
    groupnorm::forward(
        &Context::new(1).unwrap(),
        shape,
        case.groups,
        InOut::separate(&x, &mut y).unwrap(),
        Affine {
            gamma: Some(&gamma),
            beta: Some(&beta),
        },
        EPS,
        SavedStats {
            mean: Some(&mut mean),
            invstd: Some(&mut invstd),
        },
    )
    .expect("forward");
    for isa in Isa::supported() {
        for threads in [1, 2] {
            let ctx = context(threads, isa);
            let id = format!("{isa:?}_t{threads}").to_lowercase();
            let affine = Affine {
                gamma: Some(&gamma),
                beta: Some(&beta),
            };
            match case.op {
                Op::GroupForward => {
                    group.bench_function(BenchmarkId::new("forward", &id), |b| {
                        b.iter(|| {
                            groupnorm::forward(
                                &ctx,
                                shape,
                                case.groups,
                                InOut::separate(black_box(&x), &mut y).unwrap(),
                                affine,
                                EPS,
                                SavedStats {
                                    mean: Some(&mut mean),
                                    invstd: Some(&mut invstd),
                                },
                            )
                            .unwrap()
                        })
                    });
                }
                Op::InstanceForward => {
                    group.bench_function(BenchmarkId::new("forward", &id), |b| {
                        b.iter(|| {
                            instancenorm::forward(
                                &ctx,
                                shape,
                                InOut::separate(black_box(&x), &mut y).unwrap(),
                                affine,
                                EPS,
                                SavedStats {
                                    mean: Some(&mut mean),
                                    invstd: Some(&mut invstd),
                                },
                            )
                            .unwrap()
                        })
                    });
                }
                Op::GroupBackward => {
                    group.bench_function(BenchmarkId::new("backward", &id), |b| {
                        b.iter(|| {
                            groupnorm::backward(
                                &ctx,
                                shape,
                                case.groups,
                                black_box(&x),
                                BackwardIo::WithDx(InOut::separate(&dy, &mut y).unwrap()),
                                Some(&gamma),
                                &mean,
                                &invstd,
                                Some(&mut dgamma),
                                Some(&mut dbeta),
                            )
                            .unwrap()
                        })
                    });
                }
            }
        }
    }
    group.finish();
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "gn_nchw_8x256x32x32_g32",
            op: Op::GroupForward,
            shape: Shape::new(8, 256, 32 * 32, Layout::Ncs),
            groups: 32,
        },
        Case {
            name: "gn_nhwc_8x256x32x32_g32",
            op: Op::GroupForward,
            shape: Shape::new(8, 256, 32 * 32, Layout::Nsc),
            groups: 32,
        },
        Case {
            name: "in_nchw_8x64x64x64",
            op: Op::InstanceForward,
            shape: Shape::new(8, 64, 64 * 64, Layout::Ncs),
            groups: 64,
        },
        Case {
            name: "in_nhwc_8x64x64x64",
            op: Op::InstanceForward,
            shape: Shape::new(8, 64, 64 * 64, Layout::Nsc),
            groups: 64,
        },
        Case {
            name: "gn_backward_nchw_8x256x32x32_g32",
            op: Op::GroupBackward,
            shape: Shape::new(8, 256, 32 * 32, Layout::Ncs),
            groups: 32,
        },
        Case {
            name: "gn_backward_nhwc_8x256x32x32_g32",
            op: Op::GroupBackward,
            shape: Shape::new(8, 256, 32 * 32, Layout::Nsc),
            groups: 32,
        },
    ]
}

fn groupnorm_benches(c: &mut Criterion) {
    for case in cases() {
        bench_case(c, &case);
    }
}

criterion_group!(benches, groupnorm_benches);
criterion_main!(benches);
