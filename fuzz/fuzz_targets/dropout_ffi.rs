//! Drives the dropout C entry points (mask; inverted, channel in both layouts, alpha, Gaussian
//! and uniform dropout, forward and backward, with the mask given, returned or made again from
//! `(seed, offset)`) with arbitrary sizes, layouts (including values outside the enum),
//! probabilities and `beta` (NaN, inf, negative, above 1, -0.0), seeds, offsets near the end of
//! the word stream, NULL pointers, pointers misaligned by a few bytes, in place and overlapping
//! buffers.
//!
//! Asserts: no crash or sanitizer report; the status is exactly the contract's (error
//! precedence NULL, OVERFLOW, BAD_SHAPE, BAD_ARGUMENT, MISALIGNED, ALIAS); on error every byte
//! is unchanged; on success only output bytes changed, every mask bit equals a Philox4x32-10
//! computed here, kept elements are `x * scale` (alpha: `a * x + b`; Gaussian and uniform: the
//! noise factor recomputed in float64) and dropped ones exactly `+0.0`.
//!
//! Run: `cargo +nightly fuzz run dropout_ffi -- -max_total_time=60` (from `fuzz/`).
#![no_main]

mod common;

use common::*;
use libfuzzer_sys::fuzz_target;
use normkit::ffi::*;

const ALPHA_PRIME: f64 = -1.758_099_340_847_376_6;

/// Philox4x32-10 of `counter` under `key`, written from the paper's description.
fn philox(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(0x9E37_79B9);
            k[1] = k[1].wrapping_add(0xBB67_AE85);
        }
        let p0 = u64::from(0xD251_1F53u32) * u64::from(c[0]);
        let p1 = u64::from(0xCD9E_8D57u32) * u64::from(c[2]);
        let (hi0, lo0, hi1, lo1) = ((p0 >> 32) as u32, p0 as u32, (p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// Word `w` of the stream of `seed`.
fn word(seed: u64, w: u64) -> u32 {
    let block = w >> 2;
    philox(
        [block as u32, (block >> 32) as u32, 0, 0],
        [seed as u32, (seed >> 32) as u32],
    )[(w & 3) as usize]
}

fn kept(seed: u64, w: u64, p: f32) -> bool {
    let threshold = (f64::from(p) * 16_777_216.0).ceil() as u32;
    (word(seed, w) >> 8) >= threshold
}

fn bit(mask: &[u8], i: usize) -> bool {
    mask[i >> 3] >> (i & 7) & 1 == 1
}

fn mask_len(bits: usize) -> usize {
    bits.div_ceil(8)
}

fn same(got: f32, want: f32) -> bool {
    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan())
}

/// Offsets: small, or near the end of the stream.
fn offset_of(input: &mut Input<'_>) -> u64 {
    match input.byte() % 6 {
        0 => u64::MAX - u64::from(input.byte()),
        1 => u64::MAX / 2 - u64::from(input.byte()),
        2 => input.u64(),
        _ => u64::from(input.u32() % 1000),
    }
}

/// Whether the last word of `n` elements of `words` words each from `offset` is past 2^64 - 1.
fn words_overflow(n: usize, offset: u64, words: u64) -> bool {
    n > 0 && (u128::from(offset) + n as u128) * u128::from(words) - 1 > u128::from(u64::MAX)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let op = input.byte() % 11;
    let ctx = context(input.byte());
    let wild = input.byte();
    let seed = if input.bool() {
        u64::from(input.byte())
    } else {
        input.u64()
    };
    let offset = offset_of(&mut input);
    match op {
        0 => mask_call(&mut input, ctx, wild, seed, offset),
        1..=2 | 5..=10 => elementwise(&mut input, ctx, wild, seed, offset, op),
        _ => channel(&mut input, ctx, wild, seed, offset, op == 3),
    }
});

fn size_of(input: &mut Input<'_>) -> usize {
    match input.byte() % 8 {
        0 => 1 + usize::from(input.byte()) * 200,
        1 => 0,
        _ => input.size(100),
    }
}

fn mask_call(input: &mut Input<'_>, ctx: *mut nk_context, wild: u8, seed: u64, offset: u64) {
    let n = size_of(input);
    let mut a = Arena::default();
    let mask = a.output("mask", Kind::U8, mask_len(n));
    a.place(input, wild);
    a.build(input);
    let p = input.probability();
    let (null, misaligned, alias) = a.pointer_errors();
    let status = unsafe { nk_dropout_mask(ctx, n, p, seed, offset, a.ptr(mask)) };
    let expect = expected(
        null,
        words_overflow(n, offset, 1),
        false,
        !(0.0..=1.0).contains(&p),
        misaligned,
        alias,
    );
    if !check_status(&a, "dropout_mask", status, expect) {
        return;
    }
    check_mask(&a.now_u8(mask), n, |i| kept(seed, offset + i as u64, p));
}

fn check_mask(mask: &[u8], bits: usize, keep: impl Fn(usize) -> bool) {
    for i in 0..bits {
        assert_eq!(bit(mask, i), keep(i), "mask bit {i}");
    }
    if bits % 8 != 0 {
        assert_eq!(mask[bits / 8] >> (bits % 8), 0, "unused mask bits set");
    }
}

/// The elementwise calls: 1, 2 inverted dropout forward, backward; 5, 6 alpha; 7, 8 Gaussian;
/// 9, 10 uniform.
fn elementwise(
    input: &mut Input<'_>,
    ctx: *mut nk_context,
    wild: u8,
    seed: u64,
    offset: u64,
    op: u8,
) {
    let n = size_of(input);
    let forward = op % 2 == 1;
    let keeps = op <= 6;
    let mut a = Arena::default();
    let x = a.input(if forward { "x" } else { "dy" }, Kind::F32, n, Fill::Data);
    let given_mask = if keeps && !forward {
        a.opt_input("mask", Kind::U8, mask_len(n), Fill::Bytes)
    } else {
        usize::MAX
    };
    let y = a.output(if forward { "y" } else { "dx" }, Kind::F32, n);
    a.replaces(y, x);
    let out_mask = if keeps && forward {
        a.opt_output("mask", Kind::U8, mask_len(n))
    } else {
        usize::MAX
    };
    a.place(input, wild);
    a.build(input);
    let scalar = if op >= 9 {
        input.scalar(0.5)
    } else {
        input.probability()
    };
    let words = if op == 7 || op == 8 { 2 } else { 1 };
    let bad_argument = match op {
        7 | 8 => !(0.0..1.0).contains(&scalar),
        9 | 10 => bad_eps(scalar),
        _ => !(0.0..=1.0).contains(&scalar),
    };
    let (null, misaligned, alias) = a.pointer_errors();
    let (xp, yp) = (a.ptr::<f32>(x), a.ptr::<f32>(y));
    let status = unsafe {
        match op {
            1 => nk_dropout_forward(ctx, n, xp, yp, scalar, seed, offset, a.ptr(out_mask)),
            2 => nk_dropout_backward(ctx, n, xp, yp, scalar, seed, offset, a.ptr(given_mask)),
            5 => nk_alpha_dropout_forward(ctx, n, xp, yp, scalar, seed, offset, a.ptr(out_mask)),
            6 => nk_alpha_dropout_backward(ctx, n, xp, yp, scalar, seed, offset, a.ptr(given_mask)),
            7 => nk_gaussian_dropout_forward(ctx, n, xp, yp, scalar, seed, offset),
            8 => nk_gaussian_dropout_backward(ctx, n, xp, yp, scalar, seed, offset),
            9 => nk_uniform_dropout_forward(ctx, n, xp, yp, scalar, seed, offset),
            _ => nk_uniform_dropout_backward(ctx, n, xp, yp, scalar, seed, offset),
        }
    };
    let expect = expected(
        null,
        words_overflow(n, offset, words),
        false,
        bad_argument,
        misaligned,
        alias,
    );
    if !check_status(&a, "elementwise dropout", status, expect) {
        return;
    }
    let xs = a.before_f32(x);
    let ys = a.now_f32(y);
    // The keep decisions: from the given mask, or made again (and checked against the returned
    // mask).
    // With p = 1 everything is dropped whatever a given mask says.
    let decisions: Vec<bool> = if given_mask != usize::MAX && !a.is_null(given_mask) && scalar < 1.0
    {
        let m = a.before_u8(given_mask);
        (0..n).map(|i| bit(&m, i)).collect()
    } else {
        (0..n)
            .map(|i| keeps && kept(seed, offset + i as u64, scalar))
            .collect()
    };
    if out_mask != usize::MAX && !a.is_null(out_mask) {
        check_mask(&a.now_u8(out_mask), n, |i| decisions[i]);
    }
    let p = scalar;
    match op {
        1 | 2 => {
            let scale = (1.0 / (1.0 - f64::from(p))) as f32;
            for i in 0..n {
                let want = if decisions[i] { xs[i] * scale } else { 0.0 };
                assert!(
                    same(ys[i], want),
                    "dropout[{i}]: got {} want {want} (x {}, kept {})",
                    ys[i],
                    xs[i],
                    decisions[i]
                );
            }
        }
        5 | 6 => {
            let (av, bv) = if p >= 1.0 {
                (0.0, 0.0)
            } else {
                let pd = if p == 0.0 { 0.0 } else { f64::from(p) };
                let av = 1.0 / ((1.0 - pd) * (1.0 + pd * ALPHA_PRIME * ALPHA_PRIME)).sqrt();
                (av, -av * ALPHA_PRIME * pd)
            };
            for i in 0..n {
                let xv = f64::from(xs[i]);
                let (want, mag) = match (forward, decisions[i]) {
                    (true, true) => (av * xv + bv, (av * xv).abs() + bv.abs()),
                    (true, false) => (av * ALPHA_PRIME + bv, (av * ALPHA_PRIME).abs() + bv.abs()),
                    (false, true) => (av * xv, (av * xv).abs()),
                    (false, false) => (0.0, 0.0),
                };
                if p >= 1.0 || (!forward && !decisions[i]) {
                    assert!(
                        ys[i].to_bits() == 0,
                        "alpha dropout[{i}]: got {} want +0.0 (p {p}, forward {forward}, kept {}, x {})",
                        ys[i],
                        decisions[i],
                        xs[i]
                    );
                } else if xs[i].is_finite() {
                    assert_close("alpha dropout", i, f64::from(ys[i]), want, mag, 1e-6);
                }
            }
        }
        7 | 8 => {
            let sigma = (f64::from(p) / (1.0 - f64::from(p))).sqrt();
            for i in 0..n {
                let w = 2 * (offset + i as u64);
                let u1 = (f64::from(word(seed, w) >> 8) + 1.0) / 16_777_216.0;
                let u2 = f64::from(word(seed, w + 1) >> 8) / 16_777_216.0;
                let r = (-2.0 * u1.ln()).sqrt();
                let e = 1.0 + sigma * r * (2.0 * std::f64::consts::PI * u2).cos();
                let xv = f64::from(xs[i]);
                if xs[i].is_finite() {
                    assert_close(
                        "gaussian dropout",
                        i,
                        f64::from(ys[i]),
                        xv * e,
                        xv.abs() * (1.0 + sigma * r),
                        2e-5,
                    );
                }
            }
        }
        _ => {
            let beta = f64::from(p);
            for i in 0..n {
                let u = f64::from(word(seed, offset + i as u64) >> 8) / 16_777_216.0;
                let e = 1.0 + beta * (2.0 * u - 1.0);
                let xv = f64::from(xs[i]);
                if xs[i].is_finite() {
                    assert_close(
                        "uniform dropout",
                        i,
                        f64::from(ys[i]),
                        xv * e,
                        xv.abs() * (1.0 + beta),
                        1e-6,
                    );
                }
            }
        }
    }
}

fn channel(
    input: &mut Input<'_>,
    ctx: *mut nk_context,
    wild: u8,
    seed: u64,
    offset: u64,
    forward: bool,
) {
    let (batch, channels, spatial) = (
        input.size(6),
        input.size(12),
        if input.byte() % 8 == 0 {
            usize::from(input.byte()) * 3
        } else {
            input.size(20)
        },
    );
    let layout = input.layout();
    let (n, pairs) = (batch * channels * spatial, batch * channels);
    let mut a = Arena::default();
    let x = a.input(if forward { "x" } else { "dy" }, Kind::F32, n, Fill::Data);
    let given_mask = if forward {
        usize::MAX
    } else {
        a.opt_input("mask", Kind::U8, mask_len(pairs), Fill::Bytes)
    };
    let y = a.output(if forward { "y" } else { "dx" }, Kind::F32, n);
    a.replaces(y, x);
    let out_mask = if forward {
        a.opt_output("mask", Kind::U8, mask_len(pairs))
    } else {
        usize::MAX
    };
    a.place(input, wild);
    a.build(input);
    let p = input.probability();
    let (null, misaligned, alias) = a.pointer_errors();
    let shape = nk_shape {
        batch,
        channels,
        spatial,
        layout,
    };
    let status = unsafe {
        if forward {
            nk_channel_dropout_forward(
                ctx,
                shape,
                a.ptr(x),
                a.ptr(y),
                p,
                seed,
                offset,
                a.ptr(out_mask),
            )
        } else {
            nk_channel_dropout_backward(
                ctx,
                shape,
                a.ptr(x),
                a.ptr(y),
                p,
                seed,
                offset,
                a.ptr(given_mask),
            )
        }
    };
    let overflow = n > 0 && words_overflow(pairs, offset, 1);
    let bad_argument = !(0.0..=1.0).contains(&p) || !(0..=1).contains(&layout);
    let expect = expected(null, overflow, false, bad_argument, misaligned, alias);
    if !check_status(&a, "channel dropout", status, expect) {
        return;
    }
    let decisions: Vec<bool> = if !forward && !a.is_null(given_mask) && p < 1.0 {
        let m = a.before_u8(given_mask);
        (0..pairs).map(|i| bit(&m, i)).collect()
    } else {
        (0..pairs)
            .map(|i| kept(seed, offset.wrapping_add(i as u64), p))
            .collect()
    };
    if forward && !a.is_null(out_mask) {
        if n == 0 {
            a.assert_unchanged("channel dropout without elements");
        } else {
            check_mask(&a.now_u8(out_mask), pairs, |i| decisions[i]);
        }
    }
    let (xs, ys) = (a.before_f32(x), a.now_f32(y));
    let scale = (1.0 / (1.0 - f64::from(p))) as f32;
    for b in 0..batch {
        for c in 0..channels {
            for s in 0..spatial {
                let i = index(layout, (batch, channels, spatial), b, c, s);
                let want = if decisions[b * channels + c] {
                    xs[i] * scale
                } else {
                    0.0
                };
                assert!(
                    same(ys[i], want),
                    "channel dropout ({b}, {c}, {s}): got {} want {want}",
                    ys[i]
                );
            }
        }
    }
}
