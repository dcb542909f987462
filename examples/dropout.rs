//! Dropout from Rust: a forward that keeps its mask, a backward that makes the same decisions
//! again from the stream alone, and a tensor cut into two calls giving what one call gives.
//!
//! cargo run --release --example dropout

use normkit::dropout::{self, Stream};
use normkit::{Context, InOut};

fn main() -> normkit::Result<()> {
    let ctx = Context::global();
    let n = 10_000;
    let p = 0.25;
    let x: Vec<f32> = (0..n).map(|i| (i % 17) as f32).collect();
    // The stream of seed 42, from element 1000 on (e.g. this tensor's place in a larger one).
    let stream = Stream::new(42, 1000);

    let mut y = vec![0.0f32; n];
    let mut mask = vec![0u8; dropout::mask_len(n)];
    dropout::forward(
        ctx,
        InOut::separate(&x, &mut y)?,
        p,
        stream,
        Some(&mut mask),
    )?;
    let kept = mask.iter().map(|b| b.count_ones()).sum::<u32>();
    println!("kept {kept} of {n} (p = {p})");

    // The backward without the mask: the decisions come again from (seed, offset).
    let dy = vec![1.0f32; n];
    let mut dx = vec![0.0f32; n];
    dropout::backward(ctx, InOut::separate(&dy, &mut dx)?, p, stream, None)?;
    for i in 0..n {
        let keep = mask[i / 8] >> (i % 8) & 1 == 1;
        assert_eq!(dx[i], if keep { 1.0 / (1.0 - p) } else { 0.0 });
    }

    // Two calls over the halves, the second stream `half` elements on: the same output.
    let half = n / 2;
    let mut pieces = vec![0.0f32; n];
    let (first, second) = pieces.split_at_mut(half);
    dropout::forward(ctx, InOut::separate(&x[..half], first)?, p, stream, None)?;
    let later = stream.skip(half as u64).expect("offset fits");
    dropout::forward(ctx, InOut::separate(&x[half..], second)?, p, later, None)?;
    assert_eq!(pieces, y);
    println!("two calls give what one call gives");
    Ok(())
}
