//! Drives the batch-norm C entry points with arbitrary sizes, layouts, flags, scalars, pointer
//! offsets and overlaps. Asserts: no crash; on error every buffer is byte-for-byte unchanged;
//! on success inference agrees with a float64 loop.
//!
//! Run: `cargo +nightly fuzz run batchnorm_ffi -- -max_total_time=60` (from the repository root).
#![no_main]

use libfuzzer_sys::fuzz_target;
use normkit::ffi::*;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn f32(&mut self) -> f32 {
        f32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let batch = (input.byte() % 5) as usize;
    let channels = (input.byte() % 9) as usize;
    let spatial = (input.byte() % 40) as usize;
    let layout = (input.byte() % 3) as i32;
    let flags = (input.byte() % 4) as u32;
    let eps = if input.byte() % 2 == 0 { 1e-5 } else { input.f32() };
    let momentum = if input.byte() % 2 == 0 { 0.1 } else { input.f32() };
    let y_shift = (input.byte() % 4) as usize; // 0: separate; 1: in place; 2: overlapping; 3: misaligned
    let training = input.byte() % 2 == 0;
    let n = batch * channels * spatial;

    let mut x_buf: Vec<f32> = (0..n + 4).map(|i| (i % 7) as f32 - 3.0 + input.f32().clamp(-1e3, 1e3)).collect();
    let mut y_buf = vec![f32::from_bits(0x7fc0_dead); n + 4];
    let stats: Vec<f32> = (0..4 * channels).map(|i| 0.5 + (i % 5) as f32).collect();
    let mut running = vec![0.25f32; 2 * channels];
    let (rm, rv) = running.split_at_mut(channels);

    let x = x_buf.as_mut_ptr();
    let y = match y_shift {
        0 => y_buf.as_mut_ptr(),
        1 => x,
        2 => unsafe { x.add(1) },
        _ => unsafe { (y_buf.as_mut_ptr() as *mut u8).add(2) as *mut f32 },
    };
    let before_x = x_buf.clone();
    let before_y = y_buf.clone();
    let before_rm = rm.to_vec();
    let before_rv = rv.to_vec();
    let shape = nk_shape { batch, channels, spatial, layout };
    let (gamma, beta, mean, var) = (
        stats.as_ptr(),
        unsafe { stats.as_ptr().add(channels) },
        unsafe { stats.as_ptr().add(2 * channels) },
        unsafe { stats.as_ptr().add(3 * channels) },
    );
    let status = unsafe {
        if training {
            nk_batchnorm_forward_training(
                std::ptr::null_mut(), shape, x, y, gamma, beta, eps, momentum, flags,
                rm.as_mut_ptr(), rv.as_mut_ptr(), std::ptr::null_mut(), std::ptr::null_mut(),
            )
        } else {
            nk_batchnorm_forward_inference(
                std::ptr::null_mut(), shape, x, y, gamma, beta, mean, var, eps, flags,
            )
        }
    };
    if status != nk_status::NK_OK {
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same(&x_buf, &before_x) && same(&y_buf, &before_y), "buffer changed on error");
        assert!(same(rm, &before_rm) && same(rv, &before_rv), "running stats changed on error");
        return;
    }
    assert!(y_shift <= 1, "overlap or misalignment accepted");
    if !training && layout == 0 {
        let out = if y_shift == 1 { &x_buf } else { &y_buf };
        for nn in 0..batch {
            for c in 0..channels {
                for s in 0..spatial {
                    let i = (nn * channels + c) * spatial + s;
                    let g = stats[c] as f64;
                    let b = stats[channels + c] as f64;
                    let m = stats[2 * channels + c] as f64;
                    let v = stats[3 * channels + c] as f64;
                    let mut r = (before_x[i] as f64 - m) / (v + eps as f64).sqrt() * g + b;
                    if flags & 2 != 0 && r < 0.0 {
                        r = 0.0;
                    }
                    let got = out[i] as f64;
                    assert!(
                        (got - r).abs() <= 1e-5 * (1.0 + r.abs()) || (got.is_nan() && r.is_nan()),
                        "inference differs: {got} vs {r}"
                    );
                }
            }
        }
    }
});
