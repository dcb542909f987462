//! The portable backend: `wide::f32x8`, compiled for whatever the build target is (two SSE2
//! registers on baseline x86-64, two NEON registers on aarch64).

use super::F32Vec;
use wide::f32x8;

#[derive(Clone, Copy)]
pub(crate) struct Vector(f32x8);

impl F32Vec for Vector {
    const LANES: usize = 8;

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
    fn prefetch(_: *const f32) {}

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
}
