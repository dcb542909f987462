//! Row norms as transformer blocks call them: the fused residual add with the sum written, the
//! int8 output and the strided in-place QK-norm, each next to what an engine does without them
//! and to a plain copy of the same bytes, in alternating rounds in one process.
//!
//! Run (2 threads, best ISA; prints a markdown table):
//!
//! ```text
//! cargo bench --bench rows
//! cargo bench --bench rows -- --threads 1 --rounds 21 --target-ms 40 --filter rms
//! ```
//!
//! Traffic is the minimal one of each call (every input read once, every output written
//! once; 1 GB = 10^9 bytes). `copy` copies the same number of bytes (half read, half written)
//! on the same number of threads, so `vs copy` (copy time / time) is 1.00 at copy speed.
//! `unfused` is the engine's sequence without the fused call: an add pass (in f32, rounded to
//! the sum's type) and then the plain normalization of the stored sum; `vs unfused` is its
//! time over the fused call's.

use normkit::batchnorm::{Affine, SavedStats};
use normkit::layernorm::{RowNormIo, Rows, RowsMut};
use normkit::{Context, InOut, bf16, layernorm, rmsnorm};
use rayon::prelude::*;
mod rounds;

use rounds::{Options, values};
use std::hint::black_box;

fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

/// One variant: its label, its bytes moved per call, and one call.
type Variant<'a> = (&'static str, f64, Box<dyn FnMut() + 'a>);

/// Runs the variants in alternating rounds and prints a row each. Variant 0 is the fused
/// call, an `"unfused"` variant (if any) its comparison, the last one the copy.
fn measure(o: &Options, name: &str, variants: &mut [Variant<'_>]) {
    let med = o.medians(
        &mut variants
            .iter_mut()
            .map(|v| v.2.as_mut() as &mut dyn FnMut())
            .collect::<Vec<_>>(),
    );
    let last = variants.len() - 1;
    let copy_rate = variants[last].1 / med[last];
    let unfused = variants.iter().position(|v| v.0 == "unfused");
    for (v, (label, bytes, _)) in variants.iter().enumerate() {
        let rate = bytes / med[v];
        let vs_unfused = match unfused {
            Some(u) if v == 0 => format!("{:.2}", med[u] / med[0]),
            _ => String::new(),
        };
        println!(
            "| {name} | {label} | {:.3} | {:.1} | {:.2} | {vs_unfused} |",
            med[v] * 1e3,
            rate / 1e9,
            rate / copy_rate,
        );
    }
}

/// A copy of `bytes` bytes (half read, half written), split over the pool's threads.
fn copy_variant<'a>(pool: &'a rayon::ThreadPool, bytes: usize, threads: usize) -> Variant<'a> {
    let n = bytes / 2 / 4;
    let src: Vec<u32> = (0..n as u32).collect();
    let mut dst = vec![0u32; n];
    let part = n.div_ceil(threads);
    (
        "copy",
        (2 * n * 4) as f64,
        Box::new(move || {
            pool.install(|| {
                dst.par_chunks_mut(part)
                    .zip(src.par_chunks(part))
                    .for_each(|(d, s)| d.copy_from_slice(black_box(s)))
            })
        }),
    )
}

/// `sum = bf16(x + residual)` in f32, as an engine's add pass does.
fn add_pass(pool: &rayon::ThreadPool, x: &[bf16], r: &[bf16], sum: &mut [bf16], threads: usize) {
    let part = x.len().div_ceil(threads * 8);
    pool.install(|| {
        sum.par_chunks_mut(part)
            .zip(x.par_chunks(part).zip(r.par_chunks(part)))
            .for_each(|(s, (x, r))| {
                for ((s, x), r) in s.iter_mut().zip(x).zip(r) {
                    *s = bf16::from_f32(x.to_f32() + r.to_f32());
                }
            })
    });
}

fn main() {
    let o = Options::parse();
    let ctx = Context::new(o.threads).expect("context");
    let isa = o.isa;
    ctx.set_isa(Some(isa)).expect("an ISA this CPU runs");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(o.threads)
        .build()
        .expect("copy pool");
    let t = o.threads;
    println!(
        "Row norms: {t} threads, ISA {isa:?}, {} alternating rounds of ~{} ms, medians\n",
        o.rounds, o.target_ms
    );
    println!("| workload | variant | median ms | GB/s | vs copy | vs unfused |");
    println!("|---|---|---:|---:|---:|---:|");

    // Fused add + RMS norm (LLM residual stream, bf16), and add + layer norm with bias
    // (ONNX Runtime's SkipLayerNormalization shape), the sum written.
    for (name, rows, cols, centered) in [
        ("add+rms (8192,4096) bf16", 8192, 4096, false),
        ("add+bias+ln (4096,768) bf16", 4096, 768, true),
    ] {
        if !o.wants(name) {
            continue;
        }
        let n = rows * cols;
        let x = to_bf16(&values(n, 1, 0.0));
        let r = to_bf16(&values(n, 2, 0.0));
        let gamma: Vec<f32> = values(cols, 3, 0.0).iter().map(|v| 1.0 + 0.1 * v).collect();
        let beta = values(cols, 4, 0.0);
        let bias = values(cols, 5, 0.0);
        let (mut sum, mut y) = (vec![bf16::ZERO; n], vec![bf16::ZERO; n]);
        let (mut sum2, mut y2) = (vec![bf16::ZERO; n], vec![bf16::ZERO; n]);
        let bytes = (4 * n * 2) as f64;
        let affine = |c: bool| Affine {
            gamma: Some(&gamma),
            beta: c.then_some(&beta[..]),
        };
        let mut variants: Vec<Variant<'_>> = vec![
            (
                "fused",
                bytes,
                Box::new(|| {
                    let mut io = RowNormIo::new(Rows::packed(&x[..]), RowsMut::packed(&mut y[..]))
                        .residual(Rows::packed(&r[..]))
                        .sum(RowsMut::packed(&mut sum[..]));
                    if centered {
                        io = io.bias(&bias);
                        layernorm::forward_rows(
                            &ctx,
                            rows,
                            cols,
                            io,
                            affine(true),
                            1e-5,
                            SavedStats::default(),
                        )
                    } else {
                        rmsnorm::forward_rows(&ctx, rows, cols, io, Some(&gamma), 1e-6, None)
                    }
                    .expect("fused")
                }),
            ),
            (
                "unfused",
                bytes + (n * 2) as f64,
                Box::new(|| {
                    add_pass(&pool, &x, &r, &mut sum2, t);
                    let io = InOut::separate(&sum2, &mut y2).expect("sizes");
                    if centered {
                        layernorm::forward(
                            &ctx,
                            rows,
                            cols,
                            io,
                            affine(true),
                            1e-5,
                            SavedStats::default(),
                        )
                    } else {
                        rmsnorm::forward(&ctx, rows, cols, io, Some(&gamma), 1e-6, None)
                    }
                    .expect("unfused")
                }),
            ),
            copy_variant(&pool, bytes as usize, t),
        ];
        measure(&o, name, &mut variants);
    }

    // RMS norm with int8 output and per-row scales, for an int8 GEMM.
    let name = "rms->i8 (8192,4096) f32";
    if o.wants(name) {
        let (rows, cols) = (8192, 4096);
        let n = rows * cols;
        let x = values(n, 6, 0.0);
        let gamma: Vec<f32> = values(cols, 7, 0.0).iter().map(|v| 1.0 + 0.1 * v).collect();
        let mut q = vec![0i8; n];
        let mut scale = vec![0f32; rows];
        let mut y = vec![0f32; n];
        let bytes = (n * 5 + rows * 4) as f64;
        let mut variants: Vec<Variant<'_>> = vec![
            (
                "fused",
                bytes,
                Box::new(|| {
                    let io = RowNormIo::new(Rows::packed(&x[..]), RowsMut::packed(&mut q[..]))
                        .y_scale(&mut scale);
                    rmsnorm::forward_rows(&ctx, rows, cols, io, Some(&gamma), 1e-6, None)
                        .expect("i8")
                }),
            ),
            (
                "f32 out",
                (n * 8) as f64,
                Box::new(|| {
                    let io = InOut::separate(&x, &mut y).expect("sizes");
                    rmsnorm::forward(&ctx, rows, cols, io, Some(&gamma), 1e-6, None).expect("f32")
                }),
            ),
            copy_variant(&pool, bytes as usize, t),
        ];
        measure(&o, name, &mut variants);
    }

    // QK-norm: RMS norm in place over the 32 heads of 128 of Q and of K within the rows of a
    // (4096, 3 * 4096) QKV buffer, one strided call per head.
    let name = "qk-norm in place (4096, 3*4096) bf16";
    if o.wants(name) {
        let (tokens, heads, dim) = (4096, 32, 128);
        let width = 3 * heads * dim;
        let mut qkv = to_bf16(&values(tokens * width, 8, 0.0));
        let gamma: Vec<f32> = values(dim, 9, 0.0).iter().map(|v| 1.0 + 0.1 * v).collect();
        let bytes = (2 * 2 * tokens * 2 * heads * dim) as f64;
        let mut variants: Vec<Variant<'_>> = vec![
            (
                "strided",
                bytes,
                Box::new(|| {
                    for h in 0..2 * heads {
                        let start = h * dim;
                        let io = RowNormIo::new(
                            RowsMut::new(&mut qkv[start..], width),
                            normkit::layernorm::RowTarget::X,
                        );
                        rmsnorm::forward_rows(&ctx, tokens, dim, io, Some(&gamma), 1e-6, None)
                            .expect("qk")
                    }
                }),
            ),
            copy_variant(&pool, bytes as usize, t),
        ];
        measure(&o, name, &mut variants);
    }
}
