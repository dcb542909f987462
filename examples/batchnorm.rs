//! Batch norm from Rust: a training step on an NCHW tensor (batch statistics, running
//! statistics, saved statistics), then inference with the running statistics and a fused ReLU.
//!
//! cargo run --release --example batchnorm

use normkit::batchnorm::{self, Activation, Affine, RunningStats, SavedStats, TrainingParams};
use normkit::{Context, InOut, Layout, Shape};

fn main() -> normkit::Result<()> {
    // Two threads of normkit's own pool (Context::global() shares one for the process).
    let ctx = Context::new(2)?;
    let shape = Shape::new(8, 3, 16 * 16, Layout::Ncs);
    let n = shape.elements()?;
    // Channel c holds values around 10 * (c + 1).
    let x: Vec<f32> = (0..n)
        .map(|i| {
            let c = (i / shape.spatial) % shape.channels;
            10.0 * (c + 1) as f32 + ((i * 7919) % 101) as f32 / 50.0 - 1.0
        })
        .collect();
    let gamma = [1.0f32, 0.5, 2.0];
    let beta = [0.0f32, 1.0, -1.0];
    let affine = Affine {
        gamma: Some(&gamma),
        beta: Some(&beta),
    };

    let mut y = vec![0.0f32; n];
    let (mut running_mean, mut running_var) = ([0.0f32; 3], [1.0f32; 3]);
    let (mut mean, mut invstd) = ([0.0f32; 3], [0.0f32; 3]);
    batchnorm::forward_training(
        &ctx,
        shape,
        InOut::separate(&x, &mut y)?,
        affine,
        TrainingParams::new(1e-5, 0.1),
        Some(RunningStats {
            mean: &mut running_mean,
            var: &mut running_var,
        }),
        SavedStats {
            mean: Some(&mut mean),
            invstd: Some(&mut invstd),
        },
    )?;
    println!("batch mean {mean:?}, invstd {invstd:?}");
    println!("running mean {running_mean:?}, running var {running_var:?}");
    // Channel 0 has gamma 1 and beta 0: its outputs have mean 0.
    let channel0: f64 = (0..shape.batch)
        .flat_map(|b| {
            let start = b * shape.channels * shape.spatial;
            y[start..start + shape.spatial].iter().map(|&v| v as f64)
        })
        .sum();
    assert!(channel0.abs() < 1e-2, "channel 0 sums to {channel0}");

    // Inference in place with the running statistics, ReLU fused.
    let mut z = x.clone();
    batchnorm::forward_inference(
        &ctx,
        shape,
        InOut::InPlace(&mut z),
        affine,
        &running_mean,
        &running_var,
        1e-5,
        Activation::Relu,
    )?;
    assert!(z.iter().all(|&v| v >= 0.0));
    println!("inference: first outputs {:?}", &z[..4]);

    // A call that cannot be made returns an error and writes nothing.
    let err = batchnorm::forward_inference(
        &ctx,
        shape,
        InOut::InPlace(&mut z[..n - 1]),
        affine,
        &running_mean,
        &running_var,
        1e-5,
        Activation::Identity,
    )
    .unwrap_err();
    println!("a short buffer: {err}");
    Ok(())
}
