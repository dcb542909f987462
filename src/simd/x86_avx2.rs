//! The AVX2+FMA backend: `__m256`, eight lanes.
//!
//! SAFETY (whole file): these methods use AVX/AVX2/FMA/F16C intrinsics. They are only instantiated
//! by `simd::dispatch` inside a `#[target_feature(enable = "avx2,fma,f16c")]` function, which it calls
//! only for a `SupportedIsa` checked at run time, so the instructions exist on the CPU. Every
//! memory access is bounded by a slice length checked first.

use super::{F32Vec, F64Vec, U32Vec};
use std::arch::x86_64::*;

#[derive(Clone, Copy)]
pub(crate) struct Vector(__m256);

/// Four `f64` lanes.
#[derive(Clone, Copy)]
pub(crate) struct Wide(__m256d);

impl F64Vec for Wide {
    const LANES: usize = 4;

    #[inline(always)]
    fn splat(value: f64) -> Self {
        // SAFETY: see the file header.
        Wide(unsafe { _mm256_set1_pd(value) })
    }

    #[inline(always)]
    fn load(src: &[f64]) -> Self {
        assert!(src.len() >= 4);
        // SAFETY: src holds at least 4 doubles; unaligned load.
        Wide(unsafe { _mm256_loadu_pd(src.as_ptr()) })
    }

    #[inline(always)]
    fn store(self, dst: &mut [f64]) {
        assert!(dst.len() >= 4);
        // SAFETY: dst holds at least 4 doubles; unaligned store.
        unsafe { _mm256_storeu_pd(dst.as_mut_ptr(), self.0) }
    }

    #[inline(always)]
    fn add(self, rhs: Self) -> Self {
        // SAFETY: see the file header.
        Wide(unsafe { _mm256_add_pd(self.0, rhs.0) })
    }

    #[inline(always)]
    fn mul(self, rhs: Self) -> Self {
        // SAFETY: see the file header.
        Wide(unsafe { _mm256_mul_pd(self.0, rhs.0) })
    }

    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        // SAFETY: see the file header.
        Wide(unsafe { _mm256_fmadd_pd(self.0, a.0, b.0) })
    }
}

/// A mask whose first `n` 32-bit lanes are all ones (`n < 8`).
#[inline(always)]
fn first_lanes(n: usize) -> __m256i {
    debug_assert!(n < 8);
    // SAFETY: see the file header; register-only operations.
    unsafe {
        let index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), index)
    }
}

impl F32Vec for Vector {
    const LANES: usize = 8;

    #[inline(always)]
    fn run_apart<K: super::Kernel>(kernel: K) -> K::Output {
        // SAFETY: see the file header: this is reached only inside code that `dispatch` runs
        // for a CPU with AVX2, FMA and F16C, the features `apart_avx2` is compiled for.
        unsafe { super::apart_avx2(kernel) }
    }

    #[inline(always)]
    fn splat(value: f32) -> Self {
        // SAFETY: see the file header.
        Vector(unsafe { _mm256_set1_ps(value) })
    }

    #[inline(always)]
    fn load(src: &[f32]) -> Self {
        assert!(src.len() >= 8);
        // SAFETY: src holds at least 8 floats; unaligned load.
        Vector(unsafe { _mm256_loadu_ps(src.as_ptr()) })
    }

    #[inline(always)]
    fn store(self, dst: &mut [f32]) {
        assert!(dst.len() >= 8);
        // SAFETY: dst holds at least 8 floats; unaligned store.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), self.0) }
    }

    #[inline(always)]
    fn load_partial(src: &[f32], fill: f32) -> Self {
        assert!(src.len() < 8);
        // SAFETY: the mask enables only the first src.len() lanes; a masked load does not touch
        // (and cannot fault on) memory of disabled lanes.
        unsafe {
            let mask = first_lanes(src.len());
            let loaded = _mm256_maskload_ps(src.as_ptr(), mask);
            Vector(_mm256_blendv_ps(
                _mm256_set1_ps(fill),
                loaded,
                _mm256_castsi256_ps(mask),
            ))
        }
    }

    #[inline(always)]
    fn store_partial(self, dst: &mut [f32]) {
        assert!(dst.len() < 8);
        // SAFETY: only the first dst.len() lanes are written.
        unsafe { _mm256_maskstore_ps(dst.as_mut_ptr(), first_lanes(dst.len()), self.0) }
    }

    #[inline(always)]
    fn store_stream(self, dst: &mut [f32]) {
        assert!(dst.len() >= 8 && (dst.as_ptr() as usize).is_multiple_of(32));
        // SAFETY: dst holds at least 8 floats and is 32-byte aligned, as vmovntps requires.
        unsafe { _mm256_stream_ps(dst.as_mut_ptr(), self.0) }
    }

    #[inline(always)]
    fn fence_streams() {
        // SAFETY: see the file header.
        unsafe { _mm_sfence() }
    }

    #[inline(always)]
    fn prefetch<T>(addr: *const T) {
        // SAFETY: a prefetch reads nothing architecturally and never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(addr.cast()) }
    }

    #[inline(always)]
    fn add(self, rhs: Self) -> Self {
        // SAFETY: see the file header.
        Vector(unsafe { _mm256_add_ps(self.0, rhs.0) })
    }

    #[inline(always)]
    fn sub(self, rhs: Self) -> Self {
        // SAFETY: see the file header.
        Vector(unsafe { _mm256_sub_ps(self.0, rhs.0) })
    }

    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        // SAFETY: see the file header.
        Vector(unsafe { _mm256_fmadd_ps(self.0, a.0, b.0) })
    }

    #[inline(always)]
    fn relu(self) -> Self {
        // SAFETY: see the file header. maxps(a, b) is `a > b ? a : b`, so max(0, v) keeps NaN
        // and -0.0 in v.
        Vector(unsafe { _mm256_max_ps(_mm256_setzero_ps(), self.0) })
    }

    type U = Words;
    type D = Wide;
    type H = __m128i;

    #[inline(always)]
    fn load_h(src: &[u16]) -> __m128i {
        assert!(src.len() >= 8);
        // SAFETY: src holds at least 8 u16 (16 bytes); unaligned load.
        unsafe { _mm_loadu_si128(src.as_ptr().cast()) }
    }

    #[inline(always)]
    fn load_h_partial(src: &[u16]) -> __m128i {
        let mut lanes = [0u16; 8];
        lanes[..src.len()].copy_from_slice(src);
        Self::load_h(&lanes)
    }

    #[inline(always)]
    fn store_h(h: __m128i, dst: &mut [u16]) {
        assert!(dst.len() >= 8);
        // SAFETY: dst holds at least 8 u16 (16 bytes); unaligned store.
        unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), h) }
    }

    #[inline(always)]
    fn store_h_partial(h: __m128i, dst: &mut [u16]) {
        let mut lanes = [0u16; 8];
        Self::store_h(h, &mut lanes);
        let n = dst.len();
        dst.copy_from_slice(&lanes[..n]);
    }

    #[inline(always)]
    fn store_h_stream(h: __m128i, dst: &mut [u16]) {
        assert!(dst.len() >= 8 && (dst.as_ptr() as usize).is_multiple_of(16));
        // SAFETY: dst holds at least 16 bytes and is 16-byte aligned, as movntdq requires.
        unsafe { _mm_stream_si128(dst.as_mut_ptr().cast(), h) }
    }

    #[inline(always)]
    fn h_to_words(h: __m128i) -> Words {
        // SAFETY: see the file header; register-only operations.
        Words(unsafe { _mm256_cvtepu16_epi32(h) })
    }

    #[inline(always)]
    fn words_to_h(w: Words) -> __m128i {
        // SAFETY: see the file header. Lanes hold values below 2^16, so the signed saturation
        // of packus keeps them; packus works within 128-bit halves, the permute joins them.
        unsafe {
            let w = _mm256_and_si256(w.0, _mm256_set1_epi32(0xFFFF));
            let packed = _mm256_packus_epi32(w, w);
            _mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b1000>(packed))
        }
    }

    #[inline(always)]
    fn to_bf16(self) -> __m128i {
        // The bits of `element::f32_to_bf16` with the NaN lanes picked by a vector compare
        // and blend (the generic version goes through a lane bitmask in a general register,
        // which AVX2 has no cheap way back from).
        // SAFETY: see the file header; register-only operations. Non-NaN lanes add at most
        // 0x8000 to at most 0xFF80_0000 (no wrap), so both candidates are below 2^16 and
        // packus (signed saturation to u16) keeps them; packus works within 128-bit halves,
        // the permute joins them.
        unsafe {
            let bits = _mm256_castps_si256(self.0);
            let upper = _mm256_srli_epi32::<16>(bits);
            let odd = _mm256_and_si256(upper, _mm256_set1_epi32(1));
            let biased = _mm256_add_epi32(bits, _mm256_set1_epi32(0x7FFF));
            let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(biased, odd));
            let quiet = _mm256_or_si256(upper, _mm256_set1_epi32(0x0040));
            let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(self.0, self.0));
            let words = _mm256_blendv_epi8(rounded, quiet, nan);
            let packed = _mm256_packus_epi32(words, words);
            _mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b1000>(packed))
        }
    }

    #[inline(always)]
    fn from_f16(h: __m128i) -> Self {
        // SAFETY: see the file header (the AVX2 level includes F16C).
        Vector(unsafe { _mm256_cvtph_ps(h) })
    }

    #[inline(always)]
    fn to_f16(self) -> __m128i {
        // SAFETY: see the file header (the AVX2 level includes F16C). Round to nearest even.
        unsafe { _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(self.0) }
    }

    #[inline(always)]
    fn widen(self) -> (Wide, Wide) {
        // SAFETY: see the file header; register-only operations.
        unsafe {
            (
                Wide(_mm256_cvtps_pd(_mm256_castps256_ps128(self.0))),
                Wide(_mm256_cvtps_pd(_mm256_extractf128_ps::<1>(self.0))),
            )
        }
    }

    #[inline(always)]
    fn mul(self, rhs: Self) -> Self {
        // SAFETY: see the file header.
        Vector(unsafe { _mm256_mul_ps(self.0, rhs.0) })
    }

    #[inline(always)]
    fn div(self, rhs: Self) -> Self {
        // SAFETY: see the file header.
        Vector(unsafe { _mm256_div_ps(self.0, rhs.0) })
    }

    #[inline(always)]
    fn sqrt(self) -> Self {
        // SAFETY: see the file header.
        Vector(unsafe { _mm256_sqrt_ps(self.0) })
    }

    #[inline(always)]
    fn to_bits(self) -> Words {
        // SAFETY: see the file header.
        Words(unsafe { _mm256_castps_si256(self.0) })
    }

    #[inline(always)]
    fn from_bits(bits: Words) -> Self {
        // SAFETY: see the file header.
        Vector(unsafe { _mm256_castsi256_ps(bits.0) })
    }

    #[inline(always)]
    fn from_i32(v: Words) -> Self {
        // SAFETY: see the file header.
        Vector(unsafe { _mm256_cvtepi32_ps(v.0) })
    }

    #[inline(always)]
    fn select_bits(bits: u32, if_set: Self, if_clear: Self) -> Self {
        // SAFETY: see the file header. Lane j shifts bit j into its sign bit, which is what
        // blendv reads.
        unsafe {
            let to_sign = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);
            let mask = _mm256_sllv_epi32(_mm256_set1_epi32(bits as i32), to_sign);
            Vector(_mm256_blendv_ps(
                if_clear.0,
                if_set.0,
                _mm256_castsi256_ps(mask),
            ))
        }
    }

    #[inline(always)]
    fn round_even(self) -> Self {
        // SAFETY: see the file header. Nearest even, no exceptions, whatever MXCSR says.
        Vector(unsafe {
            _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(self.0)
        })
    }

    #[inline(always)]
    fn write_i8(self, dst: &mut [i8]) {
        assert!(dst.len() <= 8);
        // SAFETY: see the file header; register-only operations, then an 8-byte store into
        // `dst` when it holds 8 bytes (a copy of the first bytes otherwise). The lanes are
        // integers, so the conversion is exact in any rounding mode; packs saturates (a no-op
        // on [-127, 127]).
        unsafe {
            let words = _mm256_cvtps_epi32(self.0);
            let halves = _mm_packs_epi32(
                _mm256_castsi256_si128(words),
                _mm256_extracti128_si256::<1>(words),
            );
            let bytes = _mm_packs_epi16(halves, halves);
            if dst.len() == 8 {
                _mm_storel_epi64(dst.as_mut_ptr().cast(), bytes);
            } else {
                let mut lanes = [0i8; 16];
                _mm_storeu_si128(lanes.as_mut_ptr().cast(), bytes);
                let n = dst.len();
                dst.copy_from_slice(&lanes[..n]);
            }
        }
    }
}

/// Eight `u32` lanes in a `__m256i`.
#[derive(Clone, Copy)]
pub(crate) struct Words(__m256i);

impl U32Vec for Words {
    const REGISTERS: usize = 16;
    const LANES: usize = 8;

    #[inline(always)]
    fn splat(value: u32) -> Self {
        // SAFETY: see the file header.
        Words(unsafe { _mm256_set1_epi32(value as i32) })
    }

    #[inline(always)]
    fn lane_index() -> Self {
        // SAFETY: see the file header.
        Words(unsafe { _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7) })
    }

    #[inline(always)]
    fn load(src: &[u32]) -> Self {
        assert!(src.len() >= 8);
        // SAFETY: src holds at least 8 words; unaligned load.
        Words(unsafe { _mm256_loadu_si256(src.as_ptr().cast()) })
    }

    #[inline(always)]
    fn store(self, dst: &mut [u32]) {
        assert!(dst.len() >= 8);
        // SAFETY: dst holds at least 8 words; unaligned store.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), self.0) }
    }

    #[inline(always)]
    fn add(self, rhs: Self) -> Self {
        // SAFETY: see the file header.
        Words(unsafe { _mm256_add_epi32(self.0, rhs.0) })
    }

    #[inline(always)]
    fn sub(self, rhs: Self) -> Self {
        // SAFETY: see the file header.
        Words(unsafe { _mm256_sub_epi32(self.0, rhs.0) })
    }

    #[inline(always)]
    fn and(self, rhs: Self) -> Self {
        // SAFETY: see the file header.
        Words(unsafe { _mm256_and_si256(self.0, rhs.0) })
    }

    #[inline(always)]
    fn max(self, rhs: Self) -> Self {
        // SAFETY: see the file header.
        Words(unsafe { _mm256_max_epu32(self.0, rhs.0) })
    }

    #[inline(always)]
    fn xor(self, rhs: Self) -> Self {
        // SAFETY: see the file header.
        Words(unsafe { _mm256_xor_si256(self.0, rhs.0) })
    }

    #[inline(always)]
    fn xor3(self, b: Self, c: Self) -> Self {
        self.xor(b.xor(c))
    }

    #[inline(always)]
    fn shl(self, n: u32) -> Self {
        // SAFETY: see the file header. A constant count becomes an immediate shift.
        Words(unsafe { _mm256_sll_epi32(self.0, _mm_cvtsi32_si128(n as i32)) })
    }

    #[inline(always)]
    fn shr(self, n: u32) -> Self {
        // SAFETY: see the file header. A constant count becomes an immediate shift.
        Words(unsafe { _mm256_srl_epi32(self.0, _mm_cvtsi32_si128(n as i32)) })
    }

    #[inline(always)]
    fn mul_even(self, m: u32) -> Self {
        // SAFETY: see the file header.
        Words(unsafe { _mm256_mul_epu32(self.0, _mm256_set1_epi32(m as i32)) })
    }

    #[inline(always)]
    fn odd_to_even(self) -> Self {
        // SAFETY: see the file header.
        Words(unsafe { _mm256_srli_epi64::<32>(self.0) })
    }

    #[inline(always)]
    fn even_pairs(self, odd: Self) -> Self {
        // SAFETY: see the file header.
        Words(unsafe { _mm256_blend_epi32::<0b1010_1010>(self.0, _mm256_slli_epi64::<32>(odd.0)) })
    }

    #[inline(always)]
    fn ge_bits(self, rhs: Self) -> u32 {
        // SAFETY: see the file header. a >= b (unsigned) iff max(a, b) == a.
        unsafe {
            let ge = _mm256_cmpeq_epi32(_mm256_max_epu32(self.0, rhs.0), self.0);
            _mm256_movemask_ps(_mm256_castsi256_ps(ge)) as u32
        }
    }

    #[inline(always)]
    fn zip(self, rhs: Self) -> (Self, Self) {
        // SAFETY: see the file header. unpack works within 128-bit halves; the two permutes
        // put the halves in order.
        unsafe {
            let lo = _mm256_unpacklo_epi32(self.0, rhs.0);
            let hi = _mm256_unpackhi_epi32(self.0, rhs.0);
            (
                Words(_mm256_permute2x128_si256::<0x20>(lo, hi)),
                Words(_mm256_permute2x128_si256::<0x31>(lo, hi)),
            )
        }
    }

    #[inline(always)]
    fn lanes_from(self, next: Self, start: usize) -> Self {
        debug_assert!(start < 8);
        // SAFETY: see the file header. vpermd reads the low 3 bits of each index.
        unsafe {
            let index = _mm256_add_epi32(
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                _mm256_set1_epi32(start as i32),
            );
            let from_self = _mm256_permutevar8x32_epi32(self.0, index);
            let from_next = _mm256_permutevar8x32_epi32(next.0, index);
            let in_next = _mm256_cmpgt_epi32(index, _mm256_set1_epi32(7));
            Words(_mm256_blendv_epi8(from_self, from_next, in_next))
        }
    }
}
