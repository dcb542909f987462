//! bf16 and f16 next to f32: the time of each workload on each element type, and of a plain copy
//! of the same bytes, measured in alternating rounds in one process.
//!
//! Run (2 threads, best ISA; prints a markdown table):
//!
//! ```text
//! cargo bench --bench half
//! cargo bench --bench half -- --threads 1 --rounds 21 --target-ms 40 --filter ln_
//! ```
//!
//! Every round runs every variant of a workload once, in a rotating order, for about
//! `--target-ms` (a calibrated number of calls); the table gives the median time per call over
//! the rounds. Traffic is the minimal one: `x` read once and `y` written once, `2 * n * size`
//! bytes with `size` 4 for f32 and 2 for bf16 and f16 (1 GB = 10^9 bytes). `copy` is a copy of
//! exactly those bytes on the same number of threads (halves of the buffer, one per thread, on a
//! rayon pool), so `vs copy` (copy time / time) is 1.00 at copy speed. `vs f32` is the time of
//! the call over the f32 call's.

use normkit::batchnorm::{self, Affine, SavedStats, TrainingParams};
use normkit::{
    Context, Element, InOut, Isa, Layout, Shape, bf16, dropout, f16, groupnorm, layernorm, rmsnorm,
};
use rayon::prelude::*;
use std::hint::black_box;
use std::time::Instant;

/// One workload, run on data of any element type.
#[derive(Clone, Copy)]
enum Workload {
    BnTraining(Shape),
    BnInference(Shape),
    LayerNorm(usize, usize),
    RmsNorm(usize, usize),
    GroupNorm(Shape, usize),
    Dropout(usize),
}

struct Case {
    name: &'static str,
    what: Workload,
}

impl Workload {
    fn elements(self) -> usize {
        match self {
            Workload::BnTraining(s) | Workload::BnInference(s) | Workload::GroupNorm(s, _) => {
                s.batch * s.channels * s.spatial
            }
            Workload::LayerNorm(r, c) | Workload::RmsNorm(r, c) => r * c,
            Workload::Dropout(n) => n,
        }
    }

    fn channels(self) -> usize {
        match self {
            Workload::BnTraining(s) | Workload::BnInference(s) | Workload::GroupNorm(s, _) => {
                s.channels
            }
            Workload::LayerNorm(_, c) | Workload::RmsNorm(_, c) => c,
            Workload::Dropout(_) => 0,
        }
    }

    fn run<E: Element>(self, ctx: &Context, p: &Params, x: &[E], y: &mut [E]) {
        let io = InOut::separate(x, y).expect("sizes");
        let affine = Affine {
            gamma: Some(&p.gamma),
            beta: Some(&p.beta),
        };
        match self {
            Workload::BnTraining(s) => batchnorm::forward_training(
                ctx,
                s,
                io,
                affine,
                TrainingParams::default(),
                None,
                SavedStats::default(),
            ),
            Workload::BnInference(s) => {
                batchnorm::forward_inference(ctx, s, io, affine, &p.mean, &p.var, 1e-5, 0)
            }
            Workload::LayerNorm(r, c) => {
                layernorm::forward(ctx, r, c, io, affine, 1e-5, SavedStats::default())
            }
            Workload::RmsNorm(r, c) => rmsnorm::forward(ctx, r, c, io, Some(&p.gamma), 1e-5, None),
            Workload::GroupNorm(s, g) => {
                groupnorm::forward(ctx, s, g, io, affine, 1e-5, SavedStats::default())
            }
            Workload::Dropout(_) => dropout::forward(ctx, io, 0.1, 42, 0, None),
        }
        .expect("call");
    }
}

/// Per-channel parameters.
struct Params {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let image = |layout| Shape::new(32, 64, 56 * 56, layout);
    vec![
        Case {
            name: "bn_training_nchw_32x64x56x56",
            what: Workload::BnTraining(image(Layout::Ncs)),
        },
        Case {
            name: "bn_training_nhwc_32x64x56x56",
            what: Workload::BnTraining(image(Layout::Nsc)),
        },
        Case {
            name: "bn_inference_nchw_32x64x56x56",
            what: Workload::BnInference(image(Layout::Ncs)),
        },
        Case {
            name: "bn_inference_nhwc_32x64x56x56",
            what: Workload::BnInference(image(Layout::Nsc)),
        },
        Case {
            name: "ln_8192x768",
            what: Workload::LayerNorm(8192, 768),
        },
        Case {
            name: "ln_2048x4096",
            what: Workload::LayerNorm(2048, 4096),
        },
        Case {
            name: "rms_8192x4096",
            what: Workload::RmsNorm(8192, 4096),
        },
        Case {
            name: "gn_8x256x32x32_g32",
            what: Workload::GroupNorm(Shape::new(8, 256, 32 * 32, Layout::Ncs), 32),
        },
        Case {
            name: "dropout_16M_p0.1",
            what: Workload::Dropout(1 << 24),
        },
    ]
}

/// SplitMix64 values, roughly normal around 1, the same on every run.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = |v: u64| (v & 0xFFFF) as f32 / 65536.0;
            u(z) + u(z >> 16) + u(z >> 32) + u(z >> 48) - 1.0
        })
        .collect()
}

struct Options {
    threads: usize,
    rounds: usize,
    target_ms: f64,
    filter: Option<String>,
}

fn options() -> Options {
    let mut o = Options {
        threads: 2,
        rounds: 15,
        target_ms: 25.0,
        filter: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned();
        match args[i].as_str() {
            "--threads" => o.threads = value.and_then(|v| v.parse().ok()).expect("--threads N"),
            "--rounds" => o.rounds = value.and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--target-ms" => o.target_ms = value.and_then(|v| v.parse().ok()).expect("--target-ms"),
            "--filter" => o.filter = value,
            // cargo bench passes --bench; ignore what is not ours.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

/// A variant of a workload: its label, its element size in bytes, and one call.
type Variant<'a> = (&'static str, usize, Box<dyn FnMut() + 'a>);

/// Seconds per call of `f`, over `reps` calls.
fn time(reps: usize, f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let o = options();
    let ctx = Context::new(o.threads).expect("context");
    let isa = Isa::best();
    ctx.set_isa(Some(isa)).expect("best ISA");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(o.threads)
        .build()
        .expect("copy pool");
    println!(
        "bf16 and f16 against f32: {} threads, ISA {isa:?}, {} alternating rounds of ~{} ms, medians\n",
        o.threads, o.rounds, o.target_ms
    );
    println!("| workload | type | median ms | GB/s | vs copy | vs f32 |");
    println!("|---|---|---:|---:|---:|---:|");
    for case in cases() {
        if let Some(f) = &o.filter
            && !case.name.contains(f.as_str())
        {
            continue;
        }
        let w = case.what;
        let n = w.elements();
        let c = w.channels();
        let p = Params {
            gamma: values(c, 1).iter().map(|v| 0.5 + v.abs()).collect(),
            beta: values(c, 2),
            mean: values(c, 3),
            var: values(c, 4).iter().map(|v| 0.5 + v.abs()).collect(),
        };
        let x32 = values(n, 5);
        let xb: Vec<bf16> = x32.iter().map(|&v| bf16::from_f32(v)).collect();
        let xh: Vec<f16> = x32.iter().map(|&v| f16::from_f32(v)).collect();
        let (mut y32, mut yb, mut yh) = (vec![0f32; n], vec![bf16::ZERO; n], vec![f16::ZERO; n]);
        let c32: Vec<u32> = x32.iter().map(|v| v.to_bits()).collect();
        let c16: Vec<u16> = xb.iter().map(|v| v.to_bits()).collect();
        let (mut d32, mut d16) = (vec![0u32; n], vec![0u16; n]);
        let half = n.div_ceil(o.threads);
        let mut variants: Vec<Variant<'_>> = vec![
            ("f32", 4, Box::new(|| w.run(&ctx, &p, &x32, &mut y32))),
            ("bf16", 2, Box::new(|| w.run(&ctx, &p, &xb, &mut yb))),
            ("f16", 2, Box::new(|| w.run(&ctx, &p, &xh, &mut yh))),
            (
                "copy 4-byte",
                4,
                Box::new(|| {
                    pool.install(|| {
                        d32.par_chunks_mut(half)
                            .zip(c32.par_chunks(half))
                            .for_each(|(d, s)| d.copy_from_slice(black_box(s)))
                    })
                }),
            ),
            (
                "copy 2-byte",
                2,
                Box::new(|| {
                    pool.install(|| {
                        d16.par_chunks_mut(half)
                            .zip(c16.par_chunks(half))
                            .for_each(|(d, s)| d.copy_from_slice(black_box(s)))
                    })
                }),
            ),
        ];
        // Calibrate: calls per measurement for about target_ms (after a warm-up call).
        let reps: Vec<usize> = variants
            .iter_mut()
            .map(|(_, _, f)| {
                f();
                let t = time(1, f.as_mut());
                ((o.target_ms / 1e3 / t).round() as usize).max(1)
            })
            .collect();
        let mut times = vec![Vec::new(); variants.len()];
        for round in 0..o.rounds {
            for k in 0..variants.len() {
                let v = (k + round) % variants.len();
                times[v].push(time(reps[v], variants[v].2.as_mut()));
            }
        }
        let med: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
        for (v, (name, size, _)) in variants.iter().enumerate().take(3) {
            let bytes = 2.0 * n as f64 * *size as f64;
            let copy = if *size == 4 { med[3] } else { med[4] };
            println!(
                "| {} | {name} | {:.3} | {:.1} | {:.2} | {:.2} |",
                case.name,
                med[v] * 1e3,
                bytes / med[v] / 1e9,
                copy / med[v],
                med[v] / med[0],
            );
        }
        for (v, label) in [(3, "copy f32 bytes"), (4, "copy 16-bit bytes")] {
            let size = if v == 3 { 4.0 } else { 2.0 };
            println!(
                "| {} | {label} | {:.3} | {:.1} | 1.00 | |",
                case.name,
                med[v] * 1e3,
                2.0 * n as f64 * size / med[v] / 1e9
            );
        }
    }
}
