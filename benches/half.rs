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
use normkit::dropout::Stream;
use normkit::{
    Context, Element, InOut, Layout, Shape, bf16, dropout, f16, groupnorm, layernorm, rmsnorm,
};
use rayon::prelude::*;
mod rounds;

use rounds::{Options, values};
use std::hint::black_box;

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
            Workload::BnInference(s) => batchnorm::forward_inference(
                ctx,
                s,
                io,
                affine,
                &p.mean,
                &p.var,
                1e-5,
                batchnorm::Activation::Identity,
            ),
            Workload::LayerNorm(r, c) => {
                layernorm::forward(ctx, r, c, io, affine, 1e-5, SavedStats::default())
            }
            Workload::RmsNorm(r, c) => rmsnorm::forward(ctx, r, c, io, Some(&p.gamma), 1e-5, None),
            Workload::GroupNorm(s, g) => {
                groupnorm::forward(ctx, s, g, io, affine, 1e-5, SavedStats::default())
            }
            Workload::Dropout(_) => dropout::forward(ctx, io, 0.1, Stream::new(42, 0), None),
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

/// A variant of a workload: its label, its element size in bytes, and one call.
type Variant<'a> = (&'static str, usize, Box<dyn FnMut() + 'a>);

fn main() {
    let o = Options::parse();
    let ctx = Context::new(o.threads).expect("context");
    let isa = o.isa;
    ctx.set_isa(Some(isa)).expect("an ISA this CPU runs");
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
        if !o.wants(case.name) {
            continue;
        }
        let w = case.what;
        let n = w.elements();
        let c = w.channels();
        let p = Params {
            gamma: values(c, 1, 1.0).iter().map(|v| 0.5 + v.abs()).collect(),
            beta: values(c, 2, 1.0),
            mean: values(c, 3, 1.0),
            var: values(c, 4, 1.0).iter().map(|v| 0.5 + v.abs()).collect(),
        };
        let x32 = values(n, 5, 1.0);
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
        let med = o.medians(
            &mut variants
                .iter_mut()
                .map(|v| v.2.as_mut() as &mut dyn FnMut())
                .collect::<Vec<_>>(),
        );
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
