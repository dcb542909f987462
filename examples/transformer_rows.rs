//! Row norms as a transformer block calls them, from Rust: the residual add fused into RMS
//! norm on bf16 activations (the sum stored for the next residual), then layer norm of strided
//! rows with an int8 output and one scale per row for an int8 GEMM.
//!
//! cargo run --release --example transformer_rows

use normkit::layernorm;
use normkit::layernorm::{RowNormIo, Rows, RowsMut};
use normkit::rmsnorm;
use normkit::{Context, bf16};

fn main() -> normkit::Result<()> {
    let ctx = Context::global();
    let (rows, cols) = (4, 64);
    let hidden: Vec<bf16> = (0..rows * cols)
        .map(|i| bf16::from_f32((i % 13) as f32 - 6.0))
        .collect();
    let attention: Vec<bf16> = (0..rows * cols)
        .map(|i| bf16::from_f32(((i * 7) % 5) as f32 * 0.25))
        .collect();
    let gamma = vec![1.0f32; cols];

    // sum = hidden + attention (rounded to bf16, kept as the next residual); y = rms_norm(sum).
    let mut sum = vec![bf16::from_f32(0.0); rows * cols];
    let mut y = vec![bf16::from_f32(0.0); rows * cols];
    let mut inv_rms = vec![0.0f32; rows];
    rmsnorm::forward_rows(
        ctx,
        rows,
        cols,
        RowNormIo::new(Rows::packed(&hidden[..]), RowsMut::packed(&mut y[..]))
            .residual(Rows::packed(&attention[..]))
            .sum(RowsMut::packed(&mut sum[..])),
        Some(&gamma),
        1e-6,
        Some(&mut inv_rms),
    )?;
    println!("row 0: sum {:?}..., y {:?}...", &sum[..3], &y[..3]);
    println!("1 / rms per row: {inv_rms:?}");
    // Each row of y has a mean square of 1 (to bf16 rounding).
    for r in 0..rows {
        let ms: f32 = y[r * cols..(r + 1) * cols]
            .iter()
            .map(|v| v.to_f32() * v.to_f32())
            .sum::<f32>()
            / cols as f32;
        assert!((ms - 1.0).abs() < 0.02, "row {r}: mean square {ms}");
    }

    // Layer norm of every other row of a wider buffer (stride 2 * cols), quantized to int8.
    let wide: Vec<f32> = (0..2 * rows * cols).map(|i| (i % 29) as f32).collect();
    let mut q = vec![0i8; rows * cols];
    let mut scale = vec![0.0f32; rows];
    layernorm::forward_rows(
        ctx,
        rows,
        cols,
        RowNormIo::new(Rows::new(&wide[..], 2 * cols), RowsMut::packed(&mut q[..]))
            .y_scale(&mut scale),
        layernorm::Affine::default(),
        1e-5,
        layernorm::SavedStats::default(),
    )?;
    println!("int8 row 0: {:?}..., scale {}", &q[..8], scale[0]);
    assert!(q.iter().any(|&v| v == 127 || v == -127));
    Ok(())
}
