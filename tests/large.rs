//! Tensors of more than 2^31 elements (8.6 GB of floats): element indices, channel offsets and
//! work splits beyond 32-bit range. Batch-norm inference runs in place on one such tensor per
//! layout; every output is compared with a float64 computation of the same element.
//!
//! Needs about 9 GB of free memory; where the machine has less, the test says so and returns.

use normkit::batchnorm::{self, Affine};
use normkit::{Context, InOut, Layout, Shape};

/// Elements per tensor: just over 2^31.
const ELEMENTS: usize = (1 << 31) + 12;

/// Free memory in bytes, from /proc/meminfo (None where it cannot be read).
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The input value of element `i`: a pattern that differs between neighbours and channels
/// (cheap to compute: the tensor is filled and checked with it).
fn value(i: usize) -> f32 {
    ((i.wrapping_mul(0x9E37_79B9) >> 21 & 2047) as f32 - 1023.0) * 0.25
}

#[test]
fn inference_on_more_than_two_to_the_31_elements() {
    let needed = (ELEMENTS * 4) as u64 + (1 << 30);
    match available_memory() {
        Some(free) if free >= needed => {}
        free => {
            eprintln!(
                "SKIPPED: a tensor of {ELEMENTS} floats needs {} GiB free, the machine has {}",
                needed >> 30,
                free.map_or("an unknown amount".into(), |f| format!("{} GiB", f >> 30))
            );
            return;
        }
    }
    let ctx = Context::new(0).expect("context");
    // NCS: 2 channels, each longer than 2^30 elements, so channel 1 lies entirely past 2^30
    // and its end past 2^31. NSC: 4 channels innermost, rows indexed past 2^31.
    let shapes = [
        Shape::new(1, 2, ELEMENTS / 2, Layout::Ncs),
        Shape::new(ELEMENTS / 4, 4, 1, Layout::Nsc),
    ];
    let mean = [1.5f32, -2.0, 0.25, 3.0];
    let var = [4.0f32, 0.5, 9.0, 1.0];
    let gamma = [1.0f32, 2.0, -0.5, 0.75];
    let beta = [0.0f32, 1.0, -3.0, 0.5];
    for shape in shapes {
        let channels = shape.channels;
        let mut data: Vec<f32> = (0..ELEMENTS).map(value).collect();
        let affine = Affine {
            gamma: Some(&gamma[..channels]),
            beta: Some(&beta[..channels]),
        };
        batchnorm::forward_inference(
            &ctx,
            shape,
            InOut::InPlace(&mut data),
            affine,
            &mean[..channels],
            &var[..channels],
            1e-5,
            normkit::batchnorm::Activation::Identity,
        )
        .expect("inference");
        let channel = |i: usize| match shape.layout {
            Layout::Ncs => i / (ELEMENTS / 2),
            Layout::Nsc => i % 4,
            _ => unreachable!("a new layout"),
        };
        // Every element near the 2^31 and 2^32-byte boundaries and the channel boundary, and
        // a stride through the rest.
        let mut checked = 0usize;
        let around = [0, ELEMENTS / 2, 1 << 29, 1 << 30, 1 << 31, ELEMENTS - 4096];
        let near = around
            .iter()
            .flat_map(|&c| c.saturating_sub(4096)..(c + 4096));
        for i in near.chain((0..ELEMENTS).step_by(4093)) {
            if i >= ELEMENTS {
                continue;
            }
            let c = channel(i);
            let invstd = 1.0 / (f64::from(var[c]) + 1e-5f32 as f64).sqrt();
            let want = f64::from(gamma[c]) * (f64::from(value(i)) - f64::from(mean[c])) * invstd
                + f64::from(beta[c]);
            let got = f64::from(data[i]);
            assert!(
                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{:?}: element {i} (channel {c}) is {got}, expected {want}",
                shape.layout
            );
            checked += 1;
        }
        assert!(checked > 500_000, "checked only {checked} elements");
    }
}
