//! Dropout kernels: keep masks, inverted and alpha dropout (from a mask or from the stream),
//! and the multiplicative-noise variants (Gaussian, uniform).
//!
//! Every kernel works on a part of a call that starts at element `first` of the call and
//! reads the words of the stream from `offset + first` on (see [`super::philox`]). One vector
//! Philox evaluation gives the blocks of `LANES` consecutive counters, that is `4 * LANES`
//! consecutive words; a part whose first word is not a multiple of 4 takes its elements across
//! two such batches (`shift` words into the first). So a part gives the same values as the
//! same elements of one call over the whole tensor.
//!
//! Keep decisions travel as bits, LSB first, exactly as in the packed masks: a group of
//! `4 * LANES` elements is one `u64` of keep bits, whether it comes from the stream, from a
//! mask, or is constant. Forward, backward, with or without mask therefore agree by
//! construction.

use super::philox::BlockStream;
use crate::io::RowIo;
use crate::simd::{F32Vec, Kernel, U32Vec};

/// `SPREAD[m]` has bit `4k` set for each bit `k` of `m`.
const SPREAD: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut m = 0;
    while m < 256 {
        let mut k = 0;
        while k < 8 {
            if m & (1 << k) != 0 {
                table[m] |= 1 << (4 * k);
            }
            k += 1;
        }
        m += 1;
    }
    table
};

/// Bit `k` of `m` moved to bit `4k`, for the `LANES` low bits of `m`.
#[inline(always)]
fn spread<U: U32Vec>(m: u32) -> u64 {
    let low = u64::from(SPREAD[(m & 0xff) as usize]);
    if U::LANES <= 8 {
        low
    } else {
        low | u64::from(SPREAD[((m >> 8) & 0xff) as usize]) << 32
    }
}

/// The keep rule of a drop probability `p`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Keep {
    /// `p = 0`: every element is kept (no word needs to be read).
    All,
    /// `p = 1`: every element is dropped.
    None,
    /// Keep iff the word is at least this (`ceil(p * 2^24) << 8`, so that the test is
    /// `(r >> 8) >= ceil(p * 2^24)`).
    AtLeast(u32),
}

impl Keep {
    /// The rule of `p` in [0, 1] (checked by the caller; -0.0 is 0).
    pub(crate) fn new(p: f32) -> Keep {
        if p <= 0.0 {
            Keep::All
        } else if p >= 1.0 {
            Keep::None
        } else {
            // p * 2^24 is exact; p < 1 gives at most 2^24 - 1, so the shift cannot overflow.
            let t = (f64::from(p) * 16_777_216.0).ceil() as u32;
            Keep::AtLeast(t << 8)
        }
    }
}

/// Bits of `4 * LANES` consecutive elements at a time.
trait BitSource {
    fn next(&mut self) -> u64;
}

/// Keep bits drawn from the stream.
struct KeepStream<U> {
    blocks: BlockStream<U>,
    threshold: U,
    /// Words of the first batch before the first element (0 to 3).
    shift: u32,
    /// Bits of the last batch not yet returned, at the bottom.
    carry: u64,
}

impl<U: U32Vec> KeepStream<U> {
    #[inline(always)]
    fn new(seed: u64, first_word: u64, threshold: u32) -> Self {
        let mut stream = KeepStream {
            blocks: BlockStream::new(seed, first_word >> 2),
            threshold: U::splat(threshold),
            shift: (first_word & 3) as u32,
            carry: 0,
        };
        if stream.shift != 0 {
            stream.carry = stream.batch() >> stream.shift;
        }
        stream
    }

    /// Keep bits of the `4 * LANES` words of the next `LANES` blocks, in word order.
    #[inline(always)]
    fn batch(&mut self) -> u64 {
        let [w0, w1, w2, w3] = self.blocks.next();
        let t = self.threshold;
        spread::<U>(w0.ge_bits(t))
            | spread::<U>(w1.ge_bits(t)) << 1
            | spread::<U>(w2.ge_bits(t)) << 2
            | spread::<U>(w3.ge_bits(t)) << 3
    }
}

impl<U: U32Vec> BitSource for KeepStream<U> {
    #[inline(always)]
    fn next(&mut self) -> u64 {
        if self.shift == 0 {
            return self.batch();
        }
        let width = 4 * U::LANES as u32;
        let bits = self.batch();
        let out = self.carry | bits << (width - self.shift);
        self.carry = bits >> self.shift;
        if width < 64 {
            out & ((1 << width) - 1)
        } else {
            out
        }
    }
}

/// Bits read from a packed mask, `width` at a time from bit `bit` on; bits past the end of
/// the mask read as 0.
struct MaskBits<'a> {
    mask: &'a [u8],
    bit: usize,
    width: usize,
}

impl BitSource for MaskBits<'_> {
    #[inline(always)]
    fn next(&mut self) -> u64 {
        let (byte, shift) = (self.bit / 8, self.bit % 8);
        self.bit += self.width;
        let le: [u8; 16] = match self.mask.get(byte..byte + 16) {
            Some(bytes) => bytes.try_into().unwrap(),
            None => {
                let mut le = [0u8; 16];
                let rest = self.mask.get(byte..).unwrap_or(&[]);
                let n = rest.len().min(16);
                le[..n].copy_from_slice(&rest[..n]);
                le
            }
        };
        (u128::from_le_bytes(le) >> shift) as u64
    }
}

/// The same bits for every group.
struct ConstantBits(u64);

impl BitSource for ConstantBits {
    #[inline(always)]
    fn next(&mut self) -> u64 {
        self.0
    }
}

/// A map over groups of `VECTORS * LANES` elements: `next_group` prepares a group (drawing its
/// random values), `apply` maps its vectors.
trait GroupMap<V: F32Vec> {
    const VECTORS: usize;
    /// Prepares the next group, of which the first `elements` are real.
    fn next_group(&mut self, elements: usize);
    /// Output vector `v` of the current group from input vector `x`.
    fn apply(&self, v: usize, x: V) -> V;
}

/// Runs `map` over the elements of `io`, group by group.
#[inline(always)]
fn drive<V: F32Vec, M: GroupMap<V>>(io: &mut RowIo<'_>, map: &mut M) {
    let l = V::LANES;
    let w = M::VECTORS * l;
    match io {
        RowIo::Separate(x, y) => {
            let full = x.len() / w * w;
            let (x_body, x_tail) = x.split_at(full);
            let (y_body, y_tail) = y.split_at_mut(full);
            for (xs, ys) in x_body.chunks_exact(w).zip(y_body.chunks_exact_mut(w)) {
                map.next_group(w);
                for v in 0..M::VECTORS {
                    map.apply(v, V::load(&xs[v * l..])).store(&mut ys[v * l..]);
                }
            }
            if !x_tail.is_empty() {
                map.next_group(x_tail.len());
                for v in 0..M::VECTORS {
                    let start = v * l;
                    if start >= x_tail.len() {
                        break;
                    }
                    let end = (start + l).min(x_tail.len());
                    let (xs, ys) = (&x_tail[start..end], &mut y_tail[start..end]);
                    if end - start == l {
                        map.apply(v, V::load(xs)).store(ys);
                    } else {
                        map.apply(v, V::load_partial(xs, 0.0)).store_partial(ys);
                    }
                }
            }
        }
        RowIo::InPlace(b) => {
            let full = b.len() / w * w;
            let (body, tail) = b.split_at_mut(full);
            for bs in body.chunks_exact_mut(w) {
                map.next_group(w);
                for v in 0..M::VECTORS {
                    let s = &mut bs[v * l..];
                    map.apply(v, V::load(s)).store(s);
                }
            }
            if !tail.is_empty() {
                map.next_group(tail.len());
                for v in 0..M::VECTORS {
                    let start = v * l;
                    if start >= tail.len() {
                        break;
                    }
                    let end = (start + l).min(tail.len());
                    let s = &mut tail[start..end];
                    if end - start == l {
                        map.apply(v, V::load(s)).store(s);
                    } else {
                        map.apply(v, V::load_partial(s, 0.0)).store_partial(s);
                    }
                }
            }
        }
    }
}

/// Where the keep decisions of a part come from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Decisions<'a> {
    /// The stream of `seed`, the part's first element reading word `first_word`.
    Stream {
        seed: u64,
        first_word: u64,
        keep: Keep,
    },
    /// A packed mask whose bit `first_bit` holds the part's first element.
    Mask { mask: &'a [u8], first_bit: usize },
}

/// What happens to a kept and to a dropped element.
#[derive(Clone, Copy, Debug)]
pub(crate) enum KeepMap {
    /// Kept: `x * scale`; dropped: `+0.0`. Inverted dropout and every backward.
    Scale(f32),
    /// Kept: `x * a + b` (a product and a sum, each rounded, on every ISA); dropped: the
    /// constant `dropped`. Alpha dropout.
    Affine { a: f32, b: f32, dropped: f32 },
}

/// Writes the keep bits of `elements` elements into `mask` (whose first byte holds the first
/// element) in groups of `4 * LANES`, clearing the bits past the last element.
#[inline(always)]
fn write_bits(mask: &mut [u8], group: usize, bits: u64, elements: usize, lanes: usize) {
    let at = group * lanes / 2;
    let width = 4 * lanes;
    if elements == width {
        mask[at..at + width / 8].copy_from_slice(&bits.to_le_bytes()[..width / 8]);
    } else {
        let bits = bits & ((1u64 << elements) - 1);
        let bytes = elements.div_ceil(8);
        mask[at..at + bytes].copy_from_slice(&bits.to_le_bytes()[..bytes]);
    }
}

/// The map of [`KeepKernel`]: bits from a source, optionally stored as a mask.
struct KeepGroups<'m, S, K> {
    source: S,
    op: K,
    mask_out: Option<&'m mut [u8]>,
    group: usize,
    bits: u64,
}

/// Kept and dropped values of one [`KeepMap`].
trait KeepOp<V: F32Vec> {
    fn kept(&self, x: V) -> V;
    fn dropped(&self, x: V) -> V;
}

struct ScaleOp<V> {
    scale: V,
}

impl<V: F32Vec> KeepOp<V> for ScaleOp<V> {
    #[inline(always)]
    fn kept(&self, x: V) -> V {
        x.mul(self.scale)
    }
    #[inline(always)]
    fn dropped(&self, _: V) -> V {
        V::splat(0.0)
    }
}

struct AffineOp<V> {
    a: V,
    b: V,
    dropped: V,
}

impl<V: F32Vec> KeepOp<V> for AffineOp<V> {
    #[inline(always)]
    fn kept(&self, x: V) -> V {
        x.mul(self.a).add(self.b)
    }
    #[inline(always)]
    fn dropped(&self, _: V) -> V {
        self.dropped
    }
}

impl<V: F32Vec, S: BitSource, K: KeepOp<V>> GroupMap<V> for KeepGroups<'_, S, K> {
    const VECTORS: usize = 4;

    #[inline(always)]
    fn next_group(&mut self, elements: usize) {
        self.bits = self.source.next();
        if let Some(mask) = self.mask_out.as_deref_mut() {
            write_bits(mask, self.group, self.bits, elements, V::LANES);
        }
        self.group += 1;
    }

    #[inline(always)]
    fn apply(&self, v: usize, x: V) -> V {
        let bits = (self.bits >> (v * V::LANES)) as u32;
        V::select_bits(bits, self.op.kept(x), self.op.dropped(x))
    }
}

/// Keep-or-drop over a contiguous part: inverted dropout, alpha dropout and their backward
/// passes, with the decisions from the stream or from a mask, and optionally stored as a mask
/// (`mask_out`, from the part's first element, `ceil(len / 8)` bytes).
pub(crate) struct KeepKernel<'a> {
    pub io: RowIo<'a>,
    pub decisions: Decisions<'a>,
    pub map: KeepMap,
    pub mask_out: Option<&'a mut [u8]>,
}

impl KeepKernel<'_> {
    #[inline(always)]
    fn with_op<V: F32Vec, K: KeepOp<V>>(mut self, op: K) {
        let mask_out = self.mask_out;
        let constant = |all: bool| ConstantBits(if all { u64::MAX } else { 0 });
        match self.decisions {
            Decisions::Stream {
                seed,
                first_word,
                keep,
            } => match keep {
                Keep::AtLeast(t) => drive(
                    &mut self.io,
                    &mut KeepGroups {
                        source: KeepStream::<V::U>::new(seed, first_word, t),
                        op,
                        mask_out,
                        group: 0,
                        bits: 0,
                    },
                ),
                _ => drive(
                    &mut self.io,
                    &mut KeepGroups {
                        source: constant(keep == Keep::All),
                        op,
                        mask_out,
                        group: 0,
                        bits: 0,
                    },
                ),
            },
            Decisions::Mask { mask, first_bit } => drive(
                &mut self.io,
                &mut KeepGroups {
                    source: MaskBits {
                        mask,
                        bit: first_bit,
                        width: 4 * V::LANES,
                    },
                    op,
                    mask_out,
                    group: 0,
                    bits: 0,
                },
            ),
        }
    }
}

impl Kernel for KeepKernel<'_> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(self) {
        match self.map {
            KeepMap::Scale(scale) => self.with_op(ScaleOp {
                scale: V::splat(scale),
            }),
            KeepMap::Affine { a, b, dropped } => self.with_op(AffineOp {
                a: V::splat(a),
                b: V::splat(b),
                dropped: V::splat(dropped),
            }),
        }
    }
}

/// How the rows of a channel dropout map to the bits of its (batch, channel) mask.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ChannelRows {
    /// Channels-first: row `r` is the spatial map of pair `r`, all of it kept or dropped.
    Maps,
    /// Channels innermost: row `r` holds the `channels` values of batch `r / spatial`, whose
    /// bits start at `(r / spatial) * channels`.
    Innermost { channels: usize, spatial: usize },
}

/// Channel dropout over whole rows of `row_len` elements, the first being row `first_row` of
/// the tensor: `x * scale` where the pair's bit of `mask` is 1, else `+0.0`.
pub(crate) struct ChannelKernel<'a> {
    pub io: RowIo<'a>,
    pub first_row: usize,
    pub row_len: usize,
    pub rows: ChannelRows,
    pub mask: &'a [u8],
    pub scale: f32,
}

impl Kernel for ChannelKernel<'_> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(mut self) {
        let rows = self.io.len() / self.row_len;
        for i in 0..rows {
            let r = self.first_row + i;
            let mut row = self.io.part(i * self.row_len..(i + 1) * self.row_len);
            let op = ScaleOp {
                scale: V::splat(self.scale),
            };
            match self.rows {
                ChannelRows::Maps => {
                    let kept = self.mask[r / 8] >> (r % 8) & 1 == 1;
                    drive(
                        &mut row,
                        &mut KeepGroups {
                            source: ConstantBits(if kept { u64::MAX } else { 0 }),
                            op,
                            mask_out: None,
                            group: 0,
                            bits: 0,
                        },
                    );
                }
                ChannelRows::Innermost { channels, spatial } => drive(
                    &mut row,
                    &mut KeepGroups {
                        source: MaskBits {
                            mask: self.mask,
                            bit: r / spatial * channels,
                            width: 4 * V::LANES,
                        },
                        op,
                        mask_out: None,
                        group: 0,
                        bits: 0,
                    },
                ),
            }
        }
    }
}

/// The keep mask of `elements` elements, from the stream, into `mask` (`ceil(elements / 8)`
/// bytes; bits past the last element are 0).
pub(crate) struct MaskKernel<'a> {
    pub mask: &'a mut [u8],
    pub elements: usize,
    pub seed: u64,
    pub first_word: u64,
    pub keep: Keep,
}

impl MaskKernel<'_> {
    #[inline(always)]
    fn fill<S: BitSource>(self, mut source: S, lanes: usize) {
        let width = 4 * lanes;
        let mut group = 0;
        let mut left = self.elements;
        while left > 0 {
            let n = left.min(width);
            write_bits(self.mask, group, source.next(), n, lanes);
            group += 1;
            left -= n;
        }
    }
}

impl Kernel for MaskKernel<'_> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(self) {
        match self.keep {
            Keep::AtLeast(t) => {
                let source = KeepStream::<V::U>::new(self.seed, self.first_word, t);
                self.fill(source, V::LANES)
            }
            Keep::All => self.fill(ConstantBits(u64::MAX), V::LANES),
            Keep::None => self.fill(ConstantBits(0), V::LANES),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Multiplicative noise: y = x * factor, the factor drawn per element.

/// Element-ordered words of the stream, `4 * LANES` at a time.
struct WordStream<U> {
    blocks: BlockStream<U>,
    shift: usize,
    /// The previous batch, when `shift != 0`.
    previous: [U; 4],
}

/// The words of `LANES` blocks (lane `j` of word `i` = word `4j + i` from the first) in word
/// order: the first vector holds words `0 .. LANES`, and so on.
#[inline(always)]
fn word_order<U: U32Vec>(w: [U; 4]) -> [U; 4] {
    let (a_lo, a_hi) = w[0].zip(w[2]);
    let (b_lo, b_hi) = w[1].zip(w[3]);
    let (e0, e1) = a_lo.zip(b_lo);
    let (e2, e3) = a_hi.zip(b_hi);
    [e0, e1, e2, e3]
}

impl<U: U32Vec> WordStream<U> {
    #[inline(always)]
    fn new(seed: u64, first_word: u64) -> Self {
        let mut stream = WordStream {
            blocks: BlockStream::new(seed, first_word >> 2),
            shift: (first_word & 3) as usize,
            previous: [U::splat(0); 4],
        };
        if stream.shift != 0 {
            stream.previous = stream.batch();
        }
        stream
    }

    #[inline(always)]
    fn batch(&mut self) -> [U; 4] {
        word_order(self.blocks.next())
    }

    /// The words of the next `4 * LANES` elements, in element order.
    #[inline(always)]
    fn next(&mut self) -> [U; 4] {
        if self.shift == 0 {
            return self.batch();
        }
        let now = self.batch();
        let p = self.previous;
        let s = self.shift;
        self.previous = now;
        [
            p[0].lanes_from(p[1], s),
            p[1].lanes_from(p[2], s),
            p[2].lanes_from(p[3], s),
            p[3].lanes_from(now[0], s),
        ]
    }
}

/// `u = (r >> 8) * 2^-24` as `2u - 1`, exactly.
#[inline(always)]
fn centered<V: F32Vec>(r: V::U) -> V {
    V::from_i32(r.shr(8))
        .mul(V::splat(1.0 / 8_388_608.0))
        .sub(V::splat(1.0))
}

/// Uniform ("Uout") noise: `factor = 1 + beta * (2u - 1)`, one word per element.
struct UniformGroups<V: F32Vec> {
    words: WordStream<V::U>,
    beta: V,
    factors: [V; 4],
}

impl<V: F32Vec> GroupMap<V> for UniformGroups<V> {
    const VECTORS: usize = 4;

    #[inline(always)]
    fn next_group(&mut self, _: usize) {
        let words = self.words.next();
        let one = V::splat(1.0);
        for (f, w) in self.factors.iter_mut().zip(words) {
            *f = one.add(self.beta.mul(centered::<V>(w)));
        }
    }

    #[inline(always)]
    fn apply(&self, v: usize, x: V) -> V {
        x.mul(self.factors[v])
    }
}

/// `y = x * (1 + beta * (2u - 1))` over a contiguous part whose first element reads word
/// `first_word`. Forward and backward alike.
pub(crate) struct UniformKernel<'a> {
    pub io: RowIo<'a>,
    pub seed: u64,
    pub first_word: u64,
    pub beta: f32,
}

impl Kernel for UniformKernel<'_> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(mut self) {
        let mut map = UniformGroups::<V> {
            words: WordStream::new(self.seed, self.first_word),
            beta: V::splat(self.beta),
            factors: [V::splat(1.0); 4],
        };
        drive(&mut self.io, &mut map);
    }
}

/// `ln(m * 2^-24)` for integer lanes `m` in [1, 2^24], to a few ulp.
///
/// `m = 2^e * (1 + f)` with `1 + f` in [sqrt(1/2), sqrt(2)); `ln(1 + f)` from
/// `s = f / (2 + f)`, `ln(1 + f) = 2 atanh(s) = f - f^2/2 + s (f^2/2 + R(s^2))`, where
/// `R(z) = 2z/3 + 2z^2/5 + 2z^3/7 + 2z^4/9` (the series of `2 atanh(s) - 2s`, divided by `s`,
/// truncated where `|s| <= 0.172` makes the rest below 1e-9 relative).
#[inline(always)]
fn ln_scaled<V: F32Vec>(m: V::U) -> V {
    const SQRT_HALF_BITS: u32 = 0x3f35_04f3;
    const ONE_BITS: u32 = 0x3f80_0000;
    // ln 2 in two parts: the first with few enough bits that e * LN2_HI is exact.
    const LN2_HI: f32 = 355.0 / 512.0;
    const LN2_LO: f32 = (std::f64::consts::LN_2 - 355.0 / 512.0) as f32;
    let bits = V::from_i32(m).to_bits();
    // Adding (1 - sqrt(1/2)) to the mantissa carries into the exponent exactly when the
    // mantissa is at least sqrt(2); the exponent field then gives e, and the mantissa, put back
    // over sqrt(1/2), is 1 + f.
    let moved = bits.add(V::U::splat(ONE_BITS - SQRT_HALF_BITS));
    let e = V::from_i32(moved.shr(23).sub(V::U::splat(127 + 24)));
    let mantissa = V::from_bits(
        moved
            .and(V::U::splat(0x007f_ffff))
            .add(V::U::splat(SQRT_HALF_BITS)),
    );
    let f = mantissa.sub(V::splat(1.0));
    let s = f.div(V::splat(2.0).add(f));
    let z = s.mul(s);
    let r = z.mul(V::splat(2.0 / 3.0).add(
        z.mul(V::splat(2.0 / 5.0).add(z.mul(V::splat(2.0 / 7.0).add(z.mul(V::splat(2.0 / 9.0)))))),
    ));
    let half_f2 = V::splat(0.5).mul(f).mul(f);
    let low = s.mul(half_f2.add(r)).add(e.mul(V::splat(LN2_LO)));
    e.mul(V::splat(LN2_HI)).add(f.sub(half_f2.sub(low)))
}

/// `c[0] + g * (c[1] + g * (...))`, by Horner's rule with separate products and sums.
#[inline(always)]
fn polynomial<V: F32Vec>(g: V, c: &[f32]) -> V {
    let mut acc = V::splat(c[c.len() - 1]);
    for &coefficient in c[..c.len() - 1].iter().rev() {
        acc = V::splat(coefficient).add(g.mul(acc));
    }
    acc
}

/// `cos(2 pi k 2^-24)` for integer lanes `k` in [0, 2^24), to a few ulp.
///
/// `k 2^-24 = q/4 + t` with integer `q` (0 to 4) and `|t| <= 1/8`, both exact; then
/// `cos(2 pi (q/4 + t))` is `cos(2 pi t)`, `-sin(2 pi t)`, `-cos`, `sin` for `q mod 4` = 0 to
/// 3, with Taylor polynomials in `t` (whose terms beyond the last kept are below 3e-9
/// relative for `|2 pi t| <= pi/4`).
#[inline(always)]
fn cos_turns<V: F32Vec>(k: V::U) -> V {
    const TAU: f64 = std::f64::consts::TAU;
    // Coefficients of t^n: (-1)^(n/2) (2 pi)^n / n! for the cosine (even n) and the sine
    // (odd n).
    const fn coefficient(n: i32) -> f32 {
        let mut c = 1.0f64;
        let mut i = 1;
        while i <= n {
            c *= TAU / i as f64;
            i += 1;
        }
        (if (n / 2) % 2 == 1 { -c } else { c }) as f32
    }
    const SIN: [f32; 5] = [
        coefficient(1),
        coefficient(3),
        coefficient(5),
        coefficient(7),
        coefficient(9),
    ];
    const COS: [f32; 5] = [
        coefficient(2),
        coefficient(4),
        coefficient(6),
        coefficient(8),
        coefficient(10),
    ];
    let q = k.add(V::U::splat(1 << 21)).shr(22);
    let t = V::from_i32(k.sub(q.shl(22))).mul(V::splat(1.0 / 16_777_216.0));
    let g = t.mul(t);
    let sin = t.mul(polynomial::<V>(g, &SIN));
    let cos = V::splat(1.0).add(g.mul(polynomial::<V>(g, &COS)));
    let odd = V::U::splat(0).sub(q.and(V::U::splat(1)));
    let (sin, cos) = (sin.to_bits(), cos.to_bits());
    let chosen = cos.xor(cos.xor(sin).and(odd));
    let sign = q.add(V::U::splat(1)).and(V::U::splat(2)).shl(30);
    V::from_bits(chosen.xor(sign))
}

/// The Gaussian factor `1 + sigma * sqrt(-2 ln u1) * cos(2 pi u2)` of words `r0`, `r1`, with
/// `u1 = ((r0 >> 8) + 1) 2^-24` and `u2 = (r1 >> 8) 2^-24`. Only products, sums, a quotient and
/// a square root, each correctly rounded, so every ISA gives the same bits.
#[inline(always)]
fn gaussian_factor<V: F32Vec>(r0: V::U, r1: V::U, sigma: V) -> V {
    let ln_u1 = ln_scaled::<V>(r0.shr(8).add(V::U::splat(1)));
    let radius = V::splat(-2.0).mul(ln_u1).sqrt();
    V::splat(1.0).add(sigma.mul(radius).mul(cos_turns::<V>(r1.shr(8))))
}

/// Gaussian factors in element order, `2 * LANES` at a time (two words per element).
struct GaussianGroups<V: F32Vec> {
    blocks: BlockStream<V::U>,
    shift: usize,
    sigma: V,
    previous: [V::U; 2],
    factors: [V; 2],
}

impl<V: F32Vec> GaussianGroups<V> {
    /// The factors of the `2 * LANES` elements of the next `LANES` blocks: each block holds
    /// two elements (words 0, 1 and words 2, 3).
    #[inline(always)]
    fn batch(&mut self) -> [V::U; 2] {
        let [w0, w1, w2, w3] = self.blocks.next();
        let even = gaussian_factor::<V>(w0, w1, self.sigma);
        let odd = gaussian_factor::<V>(w2, w3, self.sigma);
        let (first, second) = even.to_bits().zip(odd.to_bits());
        [first, second]
    }
}

impl<V: F32Vec> GroupMap<V> for GaussianGroups<V> {
    const VECTORS: usize = 2;

    #[inline(always)]
    fn next_group(&mut self, _: usize) {
        let now = self.batch();
        let bits = if self.shift == 0 {
            now
        } else {
            let p = self.previous;
            self.previous = now;
            [p[0].lanes_from(p[1], 1), p[1].lanes_from(now[0], 1)]
        };
        self.factors = [V::from_bits(bits[0]), V::from_bits(bits[1])];
    }

    #[inline(always)]
    fn apply(&self, v: usize, x: V) -> V {
        x.mul(self.factors[v])
    }
}

/// `y = x * e`, `e ~ N(1, sigma^2)` by Box-Muller over a contiguous part whose first element
/// is element `first_element` of the stream (reading words `2 * first_element` and
/// `2 * first_element + 1`). Forward and backward alike.
pub(crate) struct GaussianKernel<'a> {
    pub io: RowIo<'a>,
    pub seed: u64,
    pub first_element: u64,
    pub sigma: f32,
}

impl Kernel for GaussianKernel<'_> {
    type Output = ();
    #[inline(always)]
    fn run<V: F32Vec>(mut self) {
        let zero = V::U::splat(0);
        let mut map = GaussianGroups::<V> {
            blocks: BlockStream::new(self.seed, self.first_element >> 1),
            shift: (self.first_element & 1) as usize,
            sigma: V::splat(self.sigma),
            previous: [zero, zero],
            factors: [V::splat(1.0); 2],
        };
        if map.shift != 0 {
            map.previous = map.batch();
        }
        drive(&mut self.io, &mut map);
    }
}
