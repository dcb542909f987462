//! The AVX2+FMA backend: `__m256`, eight lanes.
//!
//! SAFETY (whole file): these methods use AVX/AVX2/FMA intrinsics. They are only instantiated by
//! `simd::dispatch` inside a `#[target_feature(enable = "avx2,fma")]` function, which it calls
//! only for a `SupportedIsa` checked at run time, so the instructions exist on the CPU. Every
//! memory access is bounded by a slice length checked first.

use super::F32Vec;
use std::arch::x86_64::*;

#[derive(Clone, Copy)]
pub(crate) struct Vector(__m256);

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
    fn prefetch(addr: *const f32) {
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
}
