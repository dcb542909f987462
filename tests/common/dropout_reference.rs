//! A plain reference of the dropout family of the C contract: the Philox4x32-10 block function
//! written from its published description (Salmon, Moraes, Dror and Shaw, "Parallel random
//! numbers: as easy as 1, 2, 3", SC'11), the contract's word stream, bit-packed masks, and every
//! dropout variant with its backward.
//!
//! Everything here is scalar and written for clarity: one element at a time, formulas exactly as
//! the contract states them, values in `f64`. Where the contract fixes a float result exactly
//! (one product of two floats, a select), the reference gives that exact float; where the library
//! may round differently (alpha dropout's affine map, the Gaussian and uniform noise), it gives
//! the `f64` value and the tests allow float rounding.

/// Philox4x32 round multipliers and key increments (the "Weyl" constants).
pub const PHILOX_M0: u32 = 0xD251_1F53;
pub const PHILOX_M1: u32 = 0xCD9E_8D57;
pub const PHILOX_W0: u32 = 0x9E37_79B9;
pub const PHILOX_W1: u32 = 0xBB67_AE85;

/// The high and low 32-bit halves of the 64-bit product `a * b`.
fn mul_hi_lo(a: u32, b: u32) -> (u32, u32) {
    let product = u64::from(a) * u64::from(b);
    ((product >> 32) as u32, product as u32)
}

/// Philox4x32 with `rounds` rounds: each round multiplies words 0 and 2 by the two multipliers,
/// and builds the new block from the products' halves, words 1 and 3 and the round key; the key
/// grows by the Weyl constants between rounds.
pub fn philox4x32(rounds: u32, counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut x = counter;
    let mut k = key;
    for round in 0..rounds {
        if round > 0 {
            k[0] = k[0].wrapping_add(PHILOX_W0);
            k[1] = k[1].wrapping_add(PHILOX_W1);
        }
        let (hi0, lo0) = mul_hi_lo(PHILOX_M0, x[0]);
        let (hi1, lo1) = mul_hi_lo(PHILOX_M1, x[2]);
        x = [hi1 ^ x[1] ^ k[0], lo1, hi0 ^ x[3] ^ k[1], lo0];
    }
    x
}

/// Philox4x32-10, the generator of the contract.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    philox4x32(10, counter, key)
}

/// Published known answers of Philox4x32-10 (Random123's `kat_vectors`): counter, key, output.
pub const PHILOX4X32_10_KAT: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
    (
        [0, 0, 0, 0],
        [0, 0],
        [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8],
    ),
    (
        [0xffff_ffff; 4],
        [0xffff_ffff; 2],
        [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd],
    ),
    (
        [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
        [0xa409_3822, 0x299f_31d0],
        [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1],
    ),
];

/// The Philox key of a seed: `{lo32(seed), hi32(seed)}`.
pub fn key_of(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

/// Word `w` of the stream of `seed`: `out[w & 3]` of Philox4x32-10 on the counter
/// `{lo32(w >> 2), hi32(w >> 2), 0, 0}`.
pub fn word(seed: u64, w: u64) -> u32 {
    let block = w >> 2;
    let out = philox4x32_10([block as u32, (block >> 32) as u32, 0, 0], key_of(seed));
    out[(w & 3) as usize]
}

/// `n` consecutive words from `first`, one Philox call per block of four (same values as
/// [`word`], faster for long runs). Indices wrap past 2^64 - 1 (callers never reach it).
pub fn words(seed: u64, first: u64, n: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(n);
    let mut cached: Option<(u64, [u32; 4])> = None;
    for i in 0..n as u64 {
        let w = first.wrapping_add(i);
        let block = w >> 2;
        let values = match cached {
            Some((b, v)) if b == block => v,
            _ => {
                let v = philox4x32_10([block as u32, (block >> 32) as u32, 0, 0], key_of(seed));
                cached = Some((block, v));
                v
            }
        };
        out.push(values[(w & 3) as usize]);
    }
    out
}

/// The uniform value of a word: `(r >> 8) * 2^-24`, in [0, 1).
pub fn uniform(r: u32) -> f64 {
    f64::from(r >> 8) / 16_777_216.0
}

/// `ceil(p * 2^24)`: a word keeps its element iff `(r >> 8)` is at least this.
pub fn threshold(p: f32) -> u64 {
    // p * 2^24 is exact in f64 (a float times a power of two), so the ceiling is exact.
    let t = (f64::from(p) * 16_777_216.0).ceil();
    assert!((0.0..=16_777_216.0).contains(&t), "p = {p} outside [0, 1]");
    t as u64
}

/// Whether a word keeps its element at drop probability `p`.
pub fn keeps(r: u32, p: f32) -> bool {
    u64::from(r >> 8) >= threshold(p)
}

/// Probability that an element is kept: the exact fraction of words that keep it.
pub fn keep_probability(p: f32) -> f64 {
    (16_777_216.0 - threshold(p) as f64) / 16_777_216.0
}

/// The keep decisions of elements `0..n` of a call with `(seed, offset)`: element `i` reads word
/// `offset + i`.
pub fn keep_decisions(n: usize, p: f32, seed: u64, offset: u64) -> Vec<bool> {
    words(seed, offset, n)
        .into_iter()
        .map(|r| keeps(r, p))
        .collect()
}

/// Bytes of a mask of `n` bits.
pub fn mask_bytes(n: usize) -> usize {
    n.div_ceil(8)
}

/// Packs decisions LSB first: element `i` is bit `i & 7` of byte `i >> 3`, 1 = kept; the unused
/// high bits of the last byte are 0.
pub fn pack(keep: &[bool]) -> Vec<u8> {
    let mut bytes = vec![0u8; mask_bytes(keep.len())];
    for (i, &k) in keep.iter().enumerate() {
        if k {
            bytes[i / 8] |= 1 << (i % 8);
        }
    }
    bytes
}

/// The first `n` decisions of a packed mask.
pub fn unpack(mask: &[u8], n: usize) -> Vec<bool> {
    (0..n).map(|i| mask[i / 8] >> (i % 8) & 1 == 1).collect()
}

/// The bit-packed mask of `nk_dropout_mask(n, p, seed, offset)`.
pub fn dropout_mask(n: usize, p: f32, seed: u64, offset: u64) -> Vec<u8> {
    pack(&keep_decisions(n, p, seed, offset))
}

/// The scale of kept elements of inverted dropout: `(float)(1.0 / (1.0 - p))`.
pub fn dropout_scale(p: f32) -> f32 {
    (1.0 / (1.0 - f64::from(p))) as f32
}

/// `x * scale` rounded once to float (what a float multiply gives), or `+0.0` if dropped.
fn select_scaled(x: f32, scale: f32, keep: bool) -> f32 {
    if keep {
        // The product of two floats is exact in f64; one rounding to f32 is the float product.
        (f64::from(x) * f64::from(scale)) as f32
    } else {
        0.0
    }
}

/// Inverted dropout applied with given decisions (forward on `x`, or backward on `dy`).
pub fn dropout_apply(x: &[f32], keep: &[bool], p: f32) -> Vec<f32> {
    assert_eq!(x.len(), keep.len());
    let scale = dropout_scale(p);
    x.iter()
        .zip(keep)
        .map(|(&v, &k)| select_scaled(v, scale, k))
        .collect()
}

/// `nk_dropout_forward`: the output and the decisions (the mask, unpacked).
pub fn dropout_forward(x: &[f32], p: f32, seed: u64, offset: u64) -> (Vec<f32>, Vec<bool>) {
    let keep = keep_decisions(x.len(), p, seed, offset);
    (dropout_apply(x, &keep, p), keep)
}

/// Element index of `(n, c, s)` in a tensor of `channels` x `spatial` per batch item.
pub fn layout_index(
    channels_last: bool,
    c_count: usize,
    s_count: usize,
    n: usize,
    c: usize,
    s: usize,
) -> usize {
    if channels_last {
        (n * s_count + s) * c_count + c
    } else {
        (n * c_count + c) * s_count + s
    }
}

/// Channel dropout: one decision per `(n, c)` pair, pair `n * C + c` reading word
/// `offset + n * C + c`; returns the per-pair decisions (the mask, unpacked).
pub fn channel_keep_decisions(
    batch: usize,
    channels: usize,
    p: f32,
    seed: u64,
    offset: u64,
) -> Vec<bool> {
    keep_decisions(batch * channels, p, seed, offset)
}

/// Channel dropout applied with given per-pair decisions, for either layout.
pub fn channel_apply(
    x: &[f32],
    batch: usize,
    channels: usize,
    spatial: usize,
    channels_last: bool,
    keep: &[bool],
    p: f32,
) -> Vec<f32> {
    assert_eq!(x.len(), batch * channels * spatial);
    assert_eq!(keep.len(), batch * channels);
    let scale = dropout_scale(p);
    let mut y = vec![f32::NAN; x.len()];
    for n in 0..batch {
        for c in 0..channels {
            for s in 0..spatial {
                let i = layout_index(channels_last, channels, spatial, n, c, s);
                y[i] = select_scaled(x[i], scale, keep[n * channels + c]);
            }
        }
    }
    y
}

/// The SELU saturation value a dropped element takes before the affine map of alpha dropout.
pub const ALPHA_PRIME: f64 = -1.758_099_340_847_376_6;

/// `(a, b)` of alpha dropout, computed in double and rounded to float.
pub fn alpha_coefficients(p: f32) -> (f32, f32) {
    let p = f64::from(p);
    let a = ((1.0 - p) * (1.0 + p * ALPHA_PRIME * ALPHA_PRIME)).powf(-0.5);
    let b = -a * ALPHA_PRIME * p;
    (a as f32, b as f32)
}

/// Alpha dropout forward with given decisions, in f64 from the float `a` and `b`: kept
/// `a * x + b`, dropped `a * alpha' + b`; `p = 1` gives all `+0.0`.
pub fn alpha_forward_apply(x: &[f32], keep: &[bool], p: f32) -> Vec<f64> {
    assert_eq!(x.len(), keep.len());
    if p == 1.0 {
        return vec![0.0; x.len()];
    }
    let (a, b) = alpha_coefficients(p);
    let (a, b) = (f64::from(a), f64::from(b));
    x.iter()
        .zip(keep)
        .map(|(&v, &k)| {
            let v = if k { f64::from(v) } else { ALPHA_PRIME };
            a * v + b
        })
        .collect()
}

/// Alpha dropout backward with given decisions: kept `a * dy` (one float product, exact),
/// dropped `+0.0`; `p = 1` gives all `+0.0`.
pub fn alpha_backward_apply(dy: &[f32], keep: &[bool], p: f32) -> Vec<f32> {
    assert_eq!(dy.len(), keep.len());
    if p == 1.0 {
        return vec![0.0; dy.len()];
    }
    let (a, _) = alpha_coefficients(p);
    dy.iter()
        .zip(keep)
        .map(|(&v, &k)| select_scaled(v, a, k))
        .collect()
}

/// One factor of Gaussian dropout and the Box-Muller radius it used, from the words
/// `r0 = 2 (offset + i)` and `r1 = 2 (offset + i) + 1`:
/// `e = 1 + sqrt(p / (1 - p)) * sqrt(-2 ln u1) * cos(2 pi u2)`.
pub fn gaussian_factor(r0: u32, r1: u32, p: f32) -> (f64, f64) {
    let u1 = (f64::from(r0 >> 8) + 1.0) / 16_777_216.0;
    let u2 = uniform(r1);
    let p = f64::from(p);
    let radius = (-2.0 * u1.ln()).sqrt();
    let sigma = (p / (1.0 - p)).sqrt();
    (
        1.0 + sigma * radius * (2.0 * std::f64::consts::PI * u2).cos(),
        radius,
    )
}

/// The factors of Gaussian dropout for elements `0..n` and their Box-Muller radii.
pub fn gaussian_factors(n: usize, p: f32, seed: u64, offset: u64) -> Vec<(f64, f64)> {
    if n == 0 {
        return Vec::new();
    }
    let first = offset.checked_mul(2).expect("two-word index within 2^64");
    let w = words(seed, first, 2 * n);
    (0..n)
        .map(|i| gaussian_factor(w[2 * i], w[2 * i + 1], p))
        .collect()
}

/// Bound on the float error of one Gaussian factor of the library: the float argument of the
/// cosine and the float logarithm, scaled by `sigma * radius`, plus the final roundings.
pub fn gaussian_factor_tolerance(p: f32, radius: f64) -> f64 {
    let p = f64::from(p);
    let sigma = (p / (1.0 - p)).sqrt();
    4e-6 * (1.0 + sigma * radius)
}

/// One factor of uniform dropout: `1 + beta * (2u - 1)`.
pub fn uniform_factor(r: u32, beta: f32) -> f64 {
    1.0 + f64::from(beta) * (2.0 * uniform(r) - 1.0)
}

/// The factors of uniform dropout for elements `0..n`.
pub fn uniform_factors(n: usize, beta: f32, seed: u64, offset: u64) -> Vec<f64> {
    words(seed, offset, n)
        .into_iter()
        .map(|r| uniform_factor(r, beta))
        .collect()
}

/// Bound on the float error of `x * factor` for uniform dropout: a few roundings of values of
/// size up to `|x| (1 + 2 beta)`.
pub fn uniform_tolerance(x: f32, beta: f32) -> f64 {
    8.0 * f64::from(f32::EPSILON) * f64::from(x).abs() * (1.0 + 2.0 * f64::from(beta))
}

/// The last word index a call reads, or `None` when it exceeds 2^64 - 1 (or the call reads no
/// word): `offset + n - 1` for one word per element, `2 (offset + n) - 1` for two.
pub fn last_word(n: u64, offset: u64, words_per_element: u64) -> Option<u64> {
    if n == 0 {
        return None;
    }
    let end = u128::from(offset) + u128::from(n);
    let last = end * u128::from(words_per_element) - 1;
    u64::try_from(last).ok()
}

/// Whether a call of `n` elements at `offset` overflows the word index (the contract's
/// `NK_ERR_OVERFLOW`).
pub fn word_index_overflows(n: u64, offset: u64, words_per_element: u64) -> bool {
    n > 0 && last_word(n, offset, words_per_element).is_none()
}
