//! The AVX-512 backend: `__m512`, sixteen lanes, with mask registers for partial vectors.
//!
//! SAFETY (whole file): these methods use AVX-512F intrinsics. They are only instantiated by
//! `simd::dispatch` inside a `#[target_feature(enable = "avx512f,...")]` function, which it calls
//! only for a `SupportedIsa` checked at run time, so the instructions exist on the CPU. Every
//! memory access is bounded by a slice length checked first.

use super::{F32Vec, F64Vec, U32Vec};
use std::arch::x86_64::*;

#[derive(Clone, Copy)]
pub(crate) struct Vector(__m512);

/// A mask of the first `n` lanes (`n < 16`).
#[inline(always)]
fn first_lanes(n: usize) -> __mmask16 {
    debug_assert!(n < 16);
    ((1u32 << n) - 1) as __mmask16
}

/// `vcvtneps2bf16`: each lane rounded to bf16, to nearest even, subnormal inputs read as 0.
///
/// # Safety
/// The CPU must have AVX512_BF16 (and the caller AVX-512F, for the `zmm` register). Inline
/// assembly because the intrinsic would need the feature enabled for the whole backend, whose
/// code must also run on AVX-512 CPUs without it. (`#[inline]`, as the intrinsics are: it is
/// inlined into the backend's functions, which enable AVX-512F.)
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn convert_ne_bf16(v: __m512) -> __m256i {
    let out: __m256i;
    // SAFETY: register-only instruction, present per the caller's contract; touches no
    // memory, stack or flags.
    unsafe {
        std::arch::asm!(
            "vcvtneps2bf16 {out}, {v}",
            v = in(zmm_reg) v,
            out = lateout(ymm_reg) out,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    out
}

/// Eight `f64` lanes.
#[derive(Clone, Copy)]
pub(crate) struct Wide(__m512d);

impl F64Vec for Wide {
    const LANES: usize = 8;

    #[inline(always)]
    fn splat(value: f64) -> Self {
        // SAFETY: see the file header.
        Wide(unsafe { _mm512_set1_pd(value) })
    }

    #[inline(always)]
    fn load(src: &[f64]) -> Self {
        assert!(src.len() >= 8);
        // SAFETY: src holds at least 8 doubles; unaligned load.
        Wide(unsafe { _mm512_loadu_pd(src.as_ptr()) })
    }

    #[inline(always)]
    fn store(self, dst: &mut [f64]) {
        assert!(dst.len() >= 8);
        // SAFETY: dst holds at least 8 doubles; unaligned store.
        unsafe { _mm512_storeu_pd(dst.as_mut_ptr(), self.0) }
    }

    #[inline(always)]
    fn add(self, rhs: Self) -> Self {
        // SAFETY: see the file header.
        Wide(unsafe { _mm512_add_pd(self.0, rhs.0) })
    }

    #[inline(always)]
    fn mul(self, rhs: Self) -> Self {
        // SAFETY: see the file header.
        Wide(unsafe { _mm512_mul_pd(self.0, rhs.0) })
    }

    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        // SAFETY: see the file header.
        Wide(unsafe { _mm512_fmadd_pd(self.0, a.0, b.0) })
    }
}

impl F32Vec for Vector {
    const LANES: usize = 16;

    #[inline(always)]
    fn run_apart<K: super::Kernel>(kernel: K) -> K::Output {
        // SAFETY: see the file header: this is reached only inside code that `dispatch` runs
        // for a CPU with the features `apart_avx512` is compiled for.
        unsafe { super::apart_avx512(kernel) }
    }

    #[inline(always)]
    fn splat(value: f32) -> Self {
        // SAFETY: see the file header.
        Vector(unsafe { _mm512_set1_ps(value) })
    }

    #[inline(always)]
    fn load(src: &[f32]) -> Self {
        assert!(src.len() >= 16);
        // SAFETY: src holds at least 16 floats; unaligned load.
        Vector(unsafe { _mm512_loadu_ps(src.as_ptr()) })
    }

    #[inline(always)]
    fn store(self, dst: &mut [f32]) {
        assert!(dst.len() >= 16);
        // SAFETY: dst holds at least 16 floats; unaligned store.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), self.0) }
    }

    #[inline(always)]
    fn load_partial(src: &[f32], fill: f32) -> Self {
        assert!(src.len() < 16);
        // SAFETY: the mask enables only the first src.len() lanes; masked-off lanes are neither
        // read nor able to fault, and take `fill`.
        Vector(unsafe {
            _mm512_mask_loadu_ps(_mm512_set1_ps(fill), first_lanes(src.len()), src.as_ptr())
        })
    }

    #[inline(always)]
    fn store_partial(self, dst: &mut [f32]) {
        assert!(dst.len() < 16);
        // SAFETY: only the first dst.len() lanes are written.
        unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr(), first_lanes(dst.len()), self.0) }
    }

    #[inline(always)]
    fn store_stream(self, dst: &mut [f32]) {
        assert!(dst.len() >= 16 && (dst.as_ptr() as usize).is_multiple_of(64));
        // SAFETY: dst holds at least 16 floats and is 64-byte aligned, as vmovntps requires.
        unsafe { _mm512_stream_ps(dst.as_mut_ptr(), self.0) }
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
        Vector(unsafe { _mm512_add_ps(self.0, rhs.0) })
    }

    #[inline(always)]
    fn sub(self, rhs: Self) -> Self {
        // SAFETY: see the file header.
        Vector(unsafe { _mm512_sub_ps(self.0, rhs.0) })
    }

    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        // SAFETY: see the file header.
        Vector(unsafe { _mm512_fmadd_ps(self.0, a.0, b.0) })
    }

    #[inline(always)]
    fn relu(self) -> Self {
        // SAFETY: see the file header. vmaxps(a, b) is `a > b ? a : b`, so max(0, v) keeps NaN
        // and -0.0 in v.
        Vector(unsafe { _mm512_max_ps(_mm512_setzero_ps(), self.0) })
    }

    type U = Words;
    type D = Wide;
    type H = __m256i;

    #[inline(always)]
    fn load_h(src: &[u16]) -> __m256i {
        assert!(src.len() >= 16);
        // SAFETY: src holds at least 16 u16 (32 bytes); unaligned load.
        unsafe { _mm256_loadu_si256(src.as_ptr().cast()) }
    }

    #[inline(always)]
    fn load_h_partial(src: &[u16]) -> __m256i {
        assert!(src.len() < 16);
        // SAFETY: the mask enables only the first src.len() lanes; masked-off lanes are neither
        // read nor able to fault, and are 0 (AVX-512 BW + VL).
        unsafe { _mm256_maskz_loadu_epi16(first_lanes(src.len()), src.as_ptr().cast()) }
    }

    #[inline(always)]
    fn store_h(h: __m256i, dst: &mut [u16]) {
        assert!(dst.len() >= 16);
        // SAFETY: dst holds at least 16 u16 (32 bytes); unaligned store.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), h) }
    }

    #[inline(always)]
    fn store_h_partial(h: __m256i, dst: &mut [u16]) {
        assert!(dst.len() < 16);
        // SAFETY: only the first dst.len() lanes are written (AVX-512 BW + VL).
        unsafe { _mm256_mask_storeu_epi16(dst.as_mut_ptr().cast(), first_lanes(dst.len()), h) }
    }

    #[inline(always)]
    fn store_h_stream(h: __m256i, dst: &mut [u16]) {
        assert!(dst.len() >= 16 && (dst.as_ptr() as usize).is_multiple_of(32));
        // SAFETY: dst holds at least 32 bytes and is 32-byte aligned, as vmovntdq requires.
        unsafe { _mm256_stream_si256(dst.as_mut_ptr().cast(), h) }
    }

    #[inline(always)]
    fn h_to_words(h: __m256i) -> Words {
        // SAFETY: see the file header; register-only operations.
        Words(unsafe { _mm512_cvtepu16_epi32(h) })
    }

    #[inline(always)]
    fn words_to_h(w: Words) -> __m256i {
        // SAFETY: see the file header; vpmovdw truncates each lane to its low 16 bits.
        unsafe { _mm512_cvtepi32_epi16(w.0) }
    }

    #[inline(always)]
    fn from_bf16(h: __m256i) -> Self {
        // The bits of `element::bf16_to_f32` (each bf16 the upper half of its lane, the lower
        // half 0) from one word permute with a zeroing mask, where the generic version
        // zero-extends and shifts: one instruction per vector instead of two.
        // SAFETY: see the file header (the word permute is AVX-512BW); register-only
        // operations. The indices read only the 16 words of `h`, never the undefined upper
        // half of the widened register.
        unsafe {
            // Word 2j + 1 of the result is word j of `h`; the even words are zeroed.
            let index = _mm512_setr_epi32(
                0x0000_0000,
                0x0001_0000,
                0x0002_0000,
                0x0003_0000,
                0x0004_0000,
                0x0005_0000,
                0x0006_0000,
                0x0007_0000,
                0x0008_0000,
                0x0009_0000,
                0x000A_0000,
                0x000B_0000,
                0x000C_0000,
                0x000D_0000,
                0x000E_0000,
                0x000F_0000,
            );
            let words =
                _mm512_maskz_permutexvar_epi16(0xAAAA_AAAA, index, _mm512_castsi256_si512(h));
            Vector(_mm512_castsi512_ps(words))
        }
    }

    #[inline(always)]
    fn from_f16(h: __m256i) -> Self {
        // SAFETY: see the file header (AVX-512F has the 16-lane F16C conversions).
        Vector(unsafe { _mm512_cvtph_ps(h) })
    }

    #[inline(always)]
    fn to_f16(self) -> __m256i {
        // SAFETY: see the file header. Round to nearest even.
        unsafe { _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(self.0) }
    }

    #[inline(always)]
    fn to_bf16(self) -> __m256i {
        // Where the CPU has AVX512_BF16 and no lane is NaN or subnormal, one `vcvtneps2bf16`:
        // it rounds to nearest even like `element::f32_to_bf16` but reads subnormal inputs as
        // zero, so vectors holding a subnormal, or a NaN (whose bits the exact path defines),
        // take the exact integer rounding below: rare in real data. Same bits either way.
        // The feature test reads the standard library's cache of CPUID (one load, inlined).
        // SAFETY: see the file header (fpclass is AVX-512DQ); the instruction runs only where
        // the CPU reports AVX512_BF16.
        unsafe {
            // fpclass 0xA1: quiet NaN, subnormal or signaling NaN.
            if std::arch::is_x86_feature_detected!("avx512bf16")
                && _mm512_fpclass_ps_mask::<0xA1>(self.0) == 0
            {
                return convert_ne_bf16(self.0);
            }
        }
        // The bits of `element::f32_to_bf16` in 32-bit lanes (non-NaN: `bits + 0x7FFF + odd`,
        // NaN: `bits | 0x0040_0000`, whose upper halves are the rounded and the quiet bf16),
        // NaN lanes picked by a mask register and the upper halves gathered by one word
        // permute, instead of the generic version's mask through a general register, shift and
        // two-uop narrowing: half the instructions per vector.
        // SAFETY: see the file header (fpclass is AVX-512DQ, the word permute AVX-512BW, both
        // enabled with AVX-512F by dispatch); register-only operations. Non-NaN lanes add at
        // most 0x8000 to at most 0xFF80_0000, so no lane wraps.
        unsafe {
            let bits = _mm512_castps_si512(self.0);
            let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
            let rounded = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7FFF)), odd);
            let quiet = _mm512_or_si512(bits, _mm512_set1_epi32(0x0040_0000));
            // fpclass 0x81: quiet or signaling NaN.
            let nan = _mm512_fpclass_ps_mask::<0x81>(self.0);
            let words = _mm512_mask_mov_epi32(rounded, nan, quiet);
            // Word j of the result is word 2j + 1 of `words` (the upper half of lane j).
            let upper = _mm512_setr_epi32(
                0x0003_0001,
                0x0007_0005,
                0x000B_0009,
                0x000F_000D,
                0x0013_0011,
                0x0017_0015,
                0x001B_0019,
                0x001F_001D,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            );
            _mm512_castsi512_si256(_mm512_permutexvar_epi16(upper, words))
        }
    }

    #[inline(always)]
    fn widen(self) -> (Wide, Wide) {
        // SAFETY: see the file header; register-only operations.
        unsafe {
            let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(self.0)));
            (
                Wide(_mm512_cvtps_pd(_mm512_castps512_ps256(self.0))),
                Wide(_mm512_cvtps_pd(high)),
            )
        }
    }

    #[inline(always)]
    fn mul(self, rhs: Self) -> Self {
        // SAFETY: see the file header.
        Vector(unsafe { _mm512_mul_ps(self.0, rhs.0) })
    }

    #[inline(always)]
    fn div(self, rhs: Self) -> Self {
        // SAFETY: see the file header.
        Vector(unsafe { _mm512_div_ps(self.0, rhs.0) })
    }

    #[inline(always)]
    fn sqrt(self) -> Self {
        // SAFETY: see the file header.
        Vector(unsafe { _mm512_sqrt_ps(self.0) })
    }

    #[inline(always)]
    fn to_bits(self) -> Words {
        // SAFETY: see the file header.
        Words(unsafe { _mm512_castps_si512(self.0) })
    }

    #[inline(always)]
    fn from_bits(bits: Words) -> Self {
        // SAFETY: see the file header.
        Vector(unsafe { _mm512_castsi512_ps(bits.0) })
    }

    #[inline(always)]
    fn from_i32(v: Words) -> Self {
        // SAFETY: see the file header.
        Vector(unsafe { _mm512_cvtepi32_ps(v.0) })
    }

    #[inline(always)]
    fn select_bits(bits: u32, if_set: Self, if_clear: Self) -> Self {
        // SAFETY: see the file header. The bits are the lane mask.
        Vector(unsafe { _mm512_mask_blend_ps(bits as __mmask16, if_clear.0, if_set.0) })
    }

    #[inline(always)]
    fn round_even(self) -> Self {
        // SAFETY: see the file header. Immediate 0x08: nearest even, no exceptions, 0 fraction
        // bits kept.
        Vector(unsafe { _mm512_roundscale_ps::<0x08>(self.0) })
    }

    #[inline(always)]
    fn write_i8(self, dst: &mut [i8]) {
        assert!(dst.len() <= 16);
        // SAFETY: see the file header. The lanes are integers, so the conversion is exact in
        // any rounding mode; vpmovsdb narrows with signed saturation and the masked form
        // writes only the first dst.len() bytes.
        unsafe {
            let words = _mm512_cvtps_epi32(self.0);
            _mm512_mask_cvtsepi32_storeu_epi8(
                dst.as_mut_ptr().cast(),
                ((1u32 << dst.len()) - 1) as __mmask16,
                words,
            )
        }
    }
}

/// Sixteen `u32` lanes in a `__m512i`.
#[derive(Clone, Copy)]
pub(crate) struct Words(__m512i);

impl U32Vec for Words {
    const REGISTERS: usize = 32;
    const LANES: usize = 16;

    #[inline(always)]
    fn splat(value: u32) -> Self {
        // SAFETY: see the file header.
        Words(unsafe { _mm512_set1_epi32(value as i32) })
    }

    #[inline(always)]
    fn lane_index() -> Self {
        // SAFETY: see the file header.
        Words(unsafe { _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15) })
    }

    #[inline(always)]
    fn load(src: &[u32]) -> Self {
        assert!(src.len() >= 16);
        // SAFETY: src holds at least 16 words; unaligned load.
        Words(unsafe { _mm512_loadu_si512(src.as_ptr().cast()) })
    }

    #[inline(always)]
    fn store(self, dst: &mut [u32]) {
        assert!(dst.len() >= 16);
        // SAFETY: dst holds at least 16 words; unaligned store.
        unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), self.0) }
    }

    #[inline(always)]
    fn add(self, rhs: Self) -> Self {
        // SAFETY: see the file header.
        Words(unsafe { _mm512_add_epi32(self.0, rhs.0) })
    }

    #[inline(always)]
    fn sub(self, rhs: Self) -> Self {
        // SAFETY: see the file header.
        Words(unsafe { _mm512_sub_epi32(self.0, rhs.0) })
    }

    #[inline(always)]
    fn and(self, rhs: Self) -> Self {
        // SAFETY: see the file header.
        Words(unsafe { _mm512_and_si512(self.0, rhs.0) })
    }

    #[inline(always)]
    fn max(self, rhs: Self) -> Self {
        // SAFETY: see the file header.
        Words(unsafe { _mm512_max_epu32(self.0, rhs.0) })
    }

    #[inline(always)]
    fn xor(self, rhs: Self) -> Self {
        // SAFETY: see the file header.
        Words(unsafe { _mm512_xor_si512(self.0, rhs.0) })
    }

    #[inline(always)]
    fn xor3(self, b: Self, c: Self) -> Self {
        // SAFETY: see the file header. 0x96 is the truth table of a ^ b ^ c.
        Words(unsafe { _mm512_ternarylogic_epi32::<0x96>(self.0, b.0, c.0) })
    }

    #[inline(always)]
    fn shl(self, n: u32) -> Self {
        // SAFETY: see the file header. A constant count becomes an immediate shift.
        Words(unsafe { _mm512_sll_epi32(self.0, _mm_cvtsi32_si128(n as i32)) })
    }

    #[inline(always)]
    fn shr(self, n: u32) -> Self {
        // SAFETY: see the file header. A constant count becomes an immediate shift.
        Words(unsafe { _mm512_srl_epi32(self.0, _mm_cvtsi32_si128(n as i32)) })
    }

    #[inline(always)]
    fn mul_even(self, m: u32) -> Self {
        // SAFETY: see the file header.
        Words(unsafe { _mm512_mul_epu32(self.0, _mm512_set1_epi32(m as i32)) })
    }

    #[inline(always)]
    fn odd_to_even(self) -> Self {
        // SAFETY: see the file header.
        Words(unsafe { _mm512_srli_epi64::<32>(self.0) })
    }

    #[inline(always)]
    fn even_pairs(self, odd: Self) -> Self {
        // SAFETY: see the file header. The odd lanes take lane 2i of `odd` (shuffle 0xA0 copies
        // lanes 0 and 2 of each 128-bit block to lanes 1 and 3).
        Words(unsafe { _mm512_mask_shuffle_epi32::<0xA0>(self.0, 0xAAAA, odd.0) })
    }

    #[inline(always)]
    fn ge_bits(self, rhs: Self) -> u32 {
        // SAFETY: see the file header.
        u32::from(unsafe { _mm512_cmpge_epu32_mask(self.0, rhs.0) })
    }

    #[inline(always)]
    fn zip(self, rhs: Self) -> (Self, Self) {
        // SAFETY: see the file header. Index i < 16 picks lane i of self, 16 + i lane i of rhs.
        unsafe {
            let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
            let hi =
                _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
            (
                Words(_mm512_permutex2var_epi32(self.0, lo, rhs.0)),
                Words(_mm512_permutex2var_epi32(self.0, hi, rhs.0)),
            )
        }
    }

    #[inline(always)]
    fn lanes_from(self, next: Self, start: usize) -> Self {
        debug_assert!(start < 16);
        // SAFETY: see the file header. Index i < 16 picks lane i of self, 16 + i lane i of next.
        unsafe {
            let index = _mm512_add_epi32(Self::lane_index().0, _mm512_set1_epi32(start as i32));
            Words(_mm512_permutex2var_epi32(self.0, index, next.0))
        }
    }
}
