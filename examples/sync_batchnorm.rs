//! Synchronous batch norm from Rust: each shard of a batch (on another process or device in a
//! real job) computes its moments; the moments are merged (an all-reduce would carry them);
//! every shard then normalizes with the global statistics. The result equals one training
//! forward over the whole batch, bit for bit.
//!
//! cargo run --release --example sync_batchnorm

use normkit::batchnorm::{self, Affine, SavedStats, TrainingParams};
use normkit::{Context, InOut, Layout, Moments, Shape};

fn main() -> normkit::Result<()> {
    let ctx = Context::new(1)?;
    let (channels, spatial) = (4, 49);
    let shard_batches = [3, 5];
    let total: usize = shard_batches.iter().sum();
    let whole_shape = Shape::new(total, channels, spatial, Layout::Ncs);
    let x: Vec<f32> = (0..whole_shape.elements()?)
        .map(|i| 1000.0 + ((i * 2654435761) % 1000) as f32 / 100.0)
        .collect();

    // Each shard's moments, merged in a fixed order.
    let mut merged = vec![Moments::EMPTY; channels];
    let mut start = 0;
    let mut shards = Vec::new();
    for &batch in &shard_batches {
        let shape = Shape::new(batch, channels, spatial, Layout::Ncs);
        let len = shape.elements()?;
        let mut local = vec![Moments::EMPTY; channels];
        batchnorm::moments(&ctx, shape, &x[start..start + len], &mut local)?;
        batchnorm::moments_merge(&mut merged, &local)?;
        shards.push((shape, start..start + len));
        start += len;
    }
    println!("global channel 0: {:?}", merged[0]);

    // Every shard normalizes with the merged moments.
    let mut y = vec![0.0f32; x.len()];
    for (shape, range) in shards {
        batchnorm::forward_from_moments(
            &ctx,
            shape,
            InOut::separate(&x[range.clone()], &mut y[range])?,
            Affine::default(),
            &merged,
            TrainingParams::default(),
            None,
            SavedStats::default(),
        )?;
    }

    // One call over the whole batch gives the same bits.
    let mut whole = vec![0.0f32; x.len()];
    batchnorm::forward_training(
        &ctx,
        whole_shape,
        InOut::separate(&x, &mut whole)?,
        Affine::default(),
        TrainingParams::default(),
        None,
        SavedStats::default(),
    )?;
    assert!(
        y.iter()
            .zip(&whole)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
    println!("sharded == whole batch, bit for bit");
    Ok(())
}
