//! The AVX-512 backend: `__m512`, sixteen lanes, with mask registers for partial vectors.
//!
//! SAFETY (whole file): these methods use AVX-512F intrinsics. They are only instantiated by
//! `simd::dispatch` inside a `#[target_feature(enable = "avx512f,...")]` function, which it calls
//! only for a `SupportedIsa` checked at run time, so the instructions exist on the CPU. Every
//! memory access is bounded by a slice length checked first.

use super::F32Vec;
use std::arch::x86_64::*;

#[derive(Clone, Copy)]
pub(crate) struct Vector(__m512);

/// A mask of the first `n` lanes (`n < 16`).
#[inline(always)]
fn first_lanes(n: usize) -> __mmask16 {
    debug_assert!(n < 16);
    ((1u32 << n) - 1) as __mmask16
}

impl F32Vec for Vector {
    const LANES: usize = 16;

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
    fn prefetch(addr: *const f32) {
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
}
