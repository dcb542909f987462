//! The portable backend: `wide::f32x8`, compiled for whatever the build target is (two SSE2
//! registers on baseline x86-64, two NEON registers on aarch64).

use super::{F32Vec, F64Vec, U32Vec};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{__m128i, _mm_mul_epu32, _mm_set1_epi32, _mm_srli_epi64};
use wide::{f32x8, f64x4, u32x8};

#[derive(Clone, Copy)]
pub(crate) struct Vector(f32x8);

/// Four `f64` lanes.
#[derive(Clone, Copy)]
pub(crate) struct Wide(f64x4);

impl F64Vec for Wide {
    const LANES: usize = 4;

    #[inline(always)]
    fn splat(value: f64) -> Self {
        Wide(f64x4::splat(value))
    }

    #[inline(always)]
    fn load(src: &[f64]) -> Self {
        let lanes: [f64; 4] = src[..4].try_into().unwrap();
        Wide(f64x4::new(lanes))
    }

    #[inline(always)]
    fn store(self, dst: &mut [f64]) {
        dst[..4].copy_from_slice(&self.0.to_array());
    }

    #[inline(always)]
    fn add(self, rhs: Self) -> Self {
        Wide(self.0 + rhs.0)
    }

    #[inline(always)]
    fn mul(self, rhs: Self) -> Self {
        Wide(self.0 * rhs.0)
    }

    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        Wide(self.0.mul_add(a.0, b.0))
    }
}

impl F32Vec for Vector {
    const LANES: usize = 8;

    #[inline(always)]
    fn run_apart<K: super::Kernel>(kernel: K) -> K::Output {
        super::apart::<Self, K>(kernel)
    }

    #[inline(always)]
    fn splat(value: f32) -> Self {
        Vector(f32x8::splat(value))
    }

    #[inline(always)]
    fn load(src: &[f32]) -> Self {
        let lanes: [f32; 8] = src[..8].try_into().unwrap();
        Vector(f32x8::new(lanes))
    }

    #[inline(always)]
    fn store(self, dst: &mut [f32]) {
        dst[..8].copy_from_slice(&self.0.to_array());
    }

    #[inline(always)]
    fn load_partial(src: &[f32], fill: f32) -> Self {
        let mut lanes = [fill; 8];
        lanes[..src.len()].copy_from_slice(src);
        Vector(f32x8::new(lanes))
    }

    #[inline(always)]
    fn store_partial(self, dst: &mut [f32]) {
        let n = dst.len();
        dst.copy_from_slice(&self.0.to_array()[..n]);
    }

    #[inline(always)]
    fn store_stream(self, dst: &mut [f32]) {
        self.store(dst);
    }

    #[inline(always)]
    fn fence_streams() {}

    #[inline(always)]
    fn prefetch<T>(_: *const T) {}

    #[inline(always)]
    fn add(self, rhs: Self) -> Self {
        Vector(self.0 + rhs.0)
    }

    #[inline(always)]
    fn sub(self, rhs: Self) -> Self {
        Vector(self.0 - rhs.0)
    }

    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        Vector(self.0.mul_add(a.0, b.0))
    }

    #[inline(always)]
    fn relu(self) -> Self {
        let zero = f32x8::splat(0.0);
        Vector(self.0.simd_lt(zero).select(zero, self.0))
    }

    type U = Words;
    type D = Wide;
    type H = [u16; 8];

    #[inline(always)]
    fn load_h(src: &[u16]) -> [u16; 8] {
        src[..8].try_into().unwrap()
    }

    #[inline(always)]
    fn load_h_partial(src: &[u16]) -> [u16; 8] {
        let mut lanes = [0; 8];
        lanes[..src.len()].copy_from_slice(src);
        lanes
    }

    #[inline(always)]
    fn store_h(h: [u16; 8], dst: &mut [u16]) {
        dst[..8].copy_from_slice(&h);
    }

    #[inline(always)]
    fn store_h_partial(h: [u16; 8], dst: &mut [u16]) {
        let n = dst.len();
        dst.copy_from_slice(&h[..n]);
    }

    #[inline(always)]
    fn store_h_stream(h: [u16; 8], dst: &mut [u16]) {
        Self::store_h(h, dst)
    }

    #[inline(always)]
    fn h_to_words(h: [u16; 8]) -> Words {
        Words(u32x8::new(h.map(u32::from)))
    }

    #[inline(always)]
    fn words_to_h(w: Words) -> [u16; 8] {
        w.0.to_array().map(|v| v as u16)
    }

    #[inline(always)]
    fn widen(self) -> (Wide, Wide) {
        let v = self.0.to_array();
        let half = |k: usize| Wide(f64x4::new(std::array::from_fn(|j| v[k + j] as f64)));
        (half(0), half(4))
    }

    #[inline(always)]
    fn mul(self, rhs: Self) -> Self {
        Vector(self.0 * rhs.0)
    }

    #[inline(always)]
    fn div(self, rhs: Self) -> Self {
        Vector(self.0 / rhs.0)
    }

    #[inline(always)]
    fn sqrt(self) -> Self {
        Vector(self.0.sqrt())
    }

    #[inline(always)]
    fn to_bits(self) -> Words {
        Words(self.0.to_bits())
    }

    #[inline(always)]
    fn from_bits(bits: Words) -> Self {
        Vector(f32x8::from_bits(bits.0))
    }

    #[inline(always)]
    fn from_i32(v: Words) -> Self {
        Vector(v.0.cast_signed().round_float())
    }

    #[inline(always)]
    fn select_bits(bits: u32, if_set: Self, if_clear: Self) -> Self {
        let lane_bit = u32x8::new([1, 2, 4, 8, 16, 32, 64, 128]);
        let mask = (u32x8::splat(bits) & lane_bit).simd_eq(lane_bit);
        Vector(f32x8::from_bits(
            mask.bitselect(if_set.0.to_bits(), if_clear.0.to_bits()),
        ))
    }
}

/// `f` applied to each 128-bit half of `v` (two SSE2 registers on baseline x86-64, where
/// `wide` itself has no vector form of the even-lane multiply). A closure is fine here: this
/// backend runs without `#[target_feature]`, and SSE2 is enabled everywhere on x86-64.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn on_halves(v: Words, f: impl Fn(__m128i) -> __m128i) -> Words {
    // SAFETY: u32x8 and [__m128i; 2] are both 32 bytes of plain integers; every bit pattern is
    // valid for each.
    let [a, b] = unsafe { std::mem::transmute::<u32x8, [__m128i; 2]>(v.0) };
    // SAFETY: as above.
    Words(unsafe { std::mem::transmute::<[__m128i; 2], u32x8>([f(a), f(b)]) })
}

/// Eight `u32` lanes (`wide::u32x8`).
#[derive(Clone, Copy)]
pub(crate) struct Words(u32x8);

impl U32Vec for Words {
    const REGISTERS: usize = 16;
    const LANES: usize = 8;

    #[inline(always)]
    fn splat(value: u32) -> Self {
        Words(u32x8::splat(value))
    }

    #[inline(always)]
    fn lane_index() -> Self {
        Words(u32x8::new([0, 1, 2, 3, 4, 5, 6, 7]))
    }

    #[inline(always)]
    fn load(src: &[u32]) -> Self {
        let lanes: [u32; 8] = src[..8].try_into().unwrap();
        Words(u32x8::new(lanes))
    }

    #[inline(always)]
    fn store(self, dst: &mut [u32]) {
        dst[..8].copy_from_slice(&self.0.to_array());
    }

    #[inline(always)]
    fn add(self, rhs: Self) -> Self {
        Words(self.0 + rhs.0)
    }

    #[inline(always)]
    fn sub(self, rhs: Self) -> Self {
        Words(self.0 - rhs.0)
    }

    #[inline(always)]
    fn and(self, rhs: Self) -> Self {
        Words(self.0 & rhs.0)
    }

    #[inline(always)]
    fn max(self, rhs: Self) -> Self {
        Words(self.0.max(rhs.0))
    }

    #[inline(always)]
    fn xor(self, rhs: Self) -> Self {
        Words(self.0 ^ rhs.0)
    }

    #[inline(always)]
    fn xor3(self, b: Self, c: Self) -> Self {
        Words(self.0 ^ (b.0 ^ c.0))
    }

    #[inline(always)]
    fn shl(self, n: u32) -> Self {
        Words(self.0.unbounded_shl_scalar(n))
    }

    #[inline(always)]
    fn shr(self, n: u32) -> Self {
        Words(self.0.unbounded_shr_scalar(n))
    }

    #[inline(always)]
    fn mul_even(self, m: u32) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: SSE2 is part of the x86-64 baseline.
            on_halves(self, |h| unsafe {
                _mm_mul_epu32(h, _mm_set1_epi32(m as i32))
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let a = self.0.to_array();
            let mut r = [0u32; 8];
            for i in 0..4 {
                let product = u64::from(a[2 * i]) * u64::from(m);
                r[2 * i] = product as u32;
                r[2 * i + 1] = (product >> 32) as u32;
            }
            Words(u32x8::new(r))
        }
    }

    #[inline(always)]
    fn odd_to_even(self) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: SSE2 is part of the x86-64 baseline.
            on_halves(self, |h| unsafe { _mm_srli_epi64::<32>(h) })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let a = self.0.to_array();
            Words(u32x8::new([a[1], 0, a[3], 0, a[5], 0, a[7], 0]))
        }
    }

    #[inline(always)]
    fn even_pairs(self, odd: Self) -> Self {
        let (a, b) = (self.0.to_array(), odd.0.to_array());
        Words(u32x8::new([a[0], b[0], a[2], b[2], a[4], b[4], a[6], b[6]]))
    }

    #[inline(always)]
    fn ge_bits(self, rhs: Self) -> u32 {
        self.0.simd_ge(rhs.0).to_bitmask()
    }

    #[inline(always)]
    fn zip(self, rhs: Self) -> (Self, Self) {
        (
            Words(self.0.unpack_lo(rhs.0)),
            Words(self.0.unpack_hi(rhs.0)),
        )
    }

    #[inline(always)]
    fn lanes_from(self, next: Self, start: usize) -> Self {
        let mut both = [0u32; 16];
        both[..8].copy_from_slice(&self.0.to_array());
        both[8..].copy_from_slice(&next.0.to_array());
        Self::load(&both[start..start + 8])
    }
}
