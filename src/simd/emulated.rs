//! A plain scalar backend of `N` lanes, for tests: the written-out meaning of every trait
//! method. With `N = 16` and 32 registers it runs the kernels' code paths of AVX-512 (16-lane
//! groups, 64-bit keep words, two Philox vectors per step) on any CPU.
//!
//! In the unit tests every method stays out of line: the kernels are instantiated for 4, 8 and
//! 16 emulated lanes, and each lane loop is then compiled once instead of into every use (the
//! tests' data are small, so they run as fast). In the fuzzing build the methods are inlined:
//! there they run the fuzzed calls.

use super::{F32Vec, F64Vec, U32Vec};

#[derive(Clone, Copy, Debug)]
pub(crate) struct Emulated<const N: usize>([f32; N]);

#[derive(Clone, Copy, Debug)]
pub(crate) struct EmulatedWords<const N: usize>([u32; N]);

/// `N / 2` `f64` lanes (the first half of the array; the rest stay 0), the widening of
/// `Emulated<N>`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EmulatedWide<const N: usize>([f64; N]);

impl<const N: usize> F64Vec for EmulatedWide<N> {
    const LANES: usize = N / 2;

    #[cfg_attr(test, inline(never))]
    fn splat(value: f64) -> Self {
        let mut lanes = [0.0; N];
        lanes[..N / 2].fill(value);
        EmulatedWide(lanes)
    }

    #[cfg_attr(test, inline(never))]
    fn load(src: &[f64]) -> Self {
        let mut lanes = [0.0; N];
        lanes[..N / 2].copy_from_slice(&src[..N / 2]);
        EmulatedWide(lanes)
    }

    #[cfg_attr(test, inline(never))]
    fn store(self, dst: &mut [f64]) {
        dst[..N / 2].copy_from_slice(&self.0[..N / 2]);
    }

    #[cfg_attr(test, inline(never))]
    fn add(self, rhs: Self) -> Self {
        EmulatedWide(std::array::from_fn(|j| self.0[j] + rhs.0[j]))
    }

    #[cfg_attr(test, inline(never))]
    fn mul(self, rhs: Self) -> Self {
        EmulatedWide(std::array::from_fn(|j| self.0[j] * rhs.0[j]))
    }

    #[cfg_attr(test, inline(never))]
    fn mul_add(self, a: Self, b: Self) -> Self {
        EmulatedWide(std::array::from_fn(|j| self.0[j].mul_add(a.0[j], b.0[j])))
    }
}

impl<const N: usize> Emulated<N> {
    #[cfg_attr(test, inline(never))]
    fn map(self, f: impl Fn(f32) -> f32) -> Self {
        Emulated(self.0.map(f))
    }

    #[cfg_attr(test, inline(never))]
    fn zip_with(self, rhs: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        Emulated(std::array::from_fn(|j| f(self.0[j], rhs.0[j])))
    }
}

impl<const N: usize> EmulatedWords<N> {
    #[cfg_attr(test, inline(never))]
    fn map(self, f: impl Fn(u32) -> u32) -> Self {
        EmulatedWords(self.0.map(f))
    }

    #[cfg_attr(test, inline(never))]
    fn zip_with(self, rhs: Self, f: impl Fn(u32, u32) -> u32) -> Self {
        EmulatedWords(std::array::from_fn(|j| f(self.0[j], rhs.0[j])))
    }
}

impl<const N: usize> F32Vec for Emulated<N> {
    const LANES: usize = N;
    type U = EmulatedWords<N>;
    type D = EmulatedWide<N>;

    type H = [u16; N];

    #[inline(always)]
    fn run_apart<K: super::Kernel>(kernel: K) -> K::Output {
        super::apart::<Self, K>(kernel)
    }

    #[cfg_attr(test, inline(never))]
    fn load_h(src: &[u16]) -> [u16; N] {
        src[..N].try_into().unwrap()
    }

    #[cfg_attr(test, inline(never))]
    fn load_h_partial(src: &[u16]) -> [u16; N] {
        assert!(src.len() < N);
        let mut lanes = [0; N];
        lanes[..src.len()].copy_from_slice(src);
        lanes
    }

    #[cfg_attr(test, inline(never))]
    fn store_h(h: [u16; N], dst: &mut [u16]) {
        dst[..N].copy_from_slice(&h);
    }

    #[cfg_attr(test, inline(never))]
    fn store_h_partial(h: [u16; N], dst: &mut [u16]) {
        assert!(dst.len() < N);
        let n = dst.len();
        dst.copy_from_slice(&h[..n]);
    }

    #[cfg_attr(test, inline(never))]
    fn store_h_stream(h: [u16; N], dst: &mut [u16]) {
        assert!((dst.as_ptr() as usize).is_multiple_of(2 * N));
        Self::store_h(h, dst)
    }

    #[cfg_attr(test, inline(never))]
    fn h_to_words(h: [u16; N]) -> EmulatedWords<N> {
        EmulatedWords(h.map(u32::from))
    }

    #[cfg_attr(test, inline(never))]
    fn words_to_h(w: EmulatedWords<N>) -> [u16; N] {
        w.0.map(|v| v as u16)
    }

    #[cfg_attr(test, inline(never))]
    fn widen(self) -> (Self::D, Self::D) {
        let half = |k: usize| {
            EmulatedWide(std::array::from_fn(|j| {
                if j < N / 2 { self.0[k + j] as f64 } else { 0.0 }
            }))
        };
        (half(0), half(N / 2))
    }

    #[cfg_attr(test, inline(never))]
    fn splat(value: f32) -> Self {
        Emulated([value; N])
    }

    #[cfg_attr(test, inline(never))]
    fn load(src: &[f32]) -> Self {
        Emulated(src[..N].try_into().unwrap())
    }

    #[cfg_attr(test, inline(never))]
    fn store(self, dst: &mut [f32]) {
        dst[..N].copy_from_slice(&self.0);
    }

    #[cfg_attr(test, inline(never))]
    fn load_partial(src: &[f32], fill: f32) -> Self {
        assert!(src.len() < N);
        let mut lanes = [fill; N];
        lanes[..src.len()].copy_from_slice(src);
        Emulated(lanes)
    }

    #[cfg_attr(test, inline(never))]
    fn store_partial(self, dst: &mut [f32]) {
        assert!(dst.len() < N);
        let n = dst.len();
        dst.copy_from_slice(&self.0[..n]);
    }

    #[cfg_attr(test, inline(never))]
    fn store_stream(self, dst: &mut [f32]) {
        assert!((dst.as_ptr() as usize).is_multiple_of(N * 4));
        self.store(dst);
    }

    #[cfg_attr(test, inline(never))]
    fn fence_streams() {}

    #[cfg_attr(test, inline(never))]
    fn prefetch<T>(_: *const T) {}

    #[cfg_attr(test, inline(never))]
    fn add(self, rhs: Self) -> Self {
        self.zip_with(rhs, |a, b| a + b)
    }

    #[cfg_attr(test, inline(never))]
    fn sub(self, rhs: Self) -> Self {
        self.zip_with(rhs, |a, b| a - b)
    }

    #[cfg_attr(test, inline(never))]
    fn mul_add(self, a: Self, b: Self) -> Self {
        Emulated(std::array::from_fn(|j| self.0[j].mul_add(a.0[j], b.0[j])))
    }

    #[cfg_attr(test, inline(never))]
    fn relu(self) -> Self {
        self.map(|v| if 0.0 > v { 0.0 } else { v })
    }

    #[cfg_attr(test, inline(never))]
    fn mul(self, rhs: Self) -> Self {
        self.zip_with(rhs, |a, b| a * b)
    }

    #[cfg_attr(test, inline(never))]
    fn div(self, rhs: Self) -> Self {
        self.zip_with(rhs, |a, b| a / b)
    }

    #[cfg_attr(test, inline(never))]
    fn sqrt(self) -> Self {
        self.map(f32::sqrt)
    }

    #[cfg_attr(test, inline(never))]
    fn to_bits(self) -> EmulatedWords<N> {
        EmulatedWords(self.0.map(f32::to_bits))
    }

    #[cfg_attr(test, inline(never))]
    fn from_bits(bits: EmulatedWords<N>) -> Self {
        Emulated(bits.0.map(f32::from_bits))
    }

    #[cfg_attr(test, inline(never))]
    fn from_i32(v: EmulatedWords<N>) -> Self {
        Emulated(v.0.map(|w| w as i32 as f32))
    }

    #[cfg_attr(test, inline(never))]
    fn select_bits(bits: u32, if_set: Self, if_clear: Self) -> Self {
        Emulated(std::array::from_fn(|j| {
            if bits >> j & 1 == 1 {
                if_set.0[j]
            } else {
                if_clear.0[j]
            }
        }))
    }
}

impl<const N: usize> U32Vec for EmulatedWords<N> {
    const LANES: usize = N;
    const REGISTERS: usize = if N >= 16 { 32 } else { 16 };

    #[cfg_attr(test, inline(never))]
    fn splat(value: u32) -> Self {
        EmulatedWords([value; N])
    }

    #[cfg_attr(test, inline(never))]
    fn lane_index() -> Self {
        EmulatedWords(std::array::from_fn(|j| j as u32))
    }

    #[cfg_attr(test, inline(never))]
    fn load(src: &[u32]) -> Self {
        EmulatedWords(src[..N].try_into().unwrap())
    }

    #[cfg_attr(test, inline(never))]
    fn store(self, dst: &mut [u32]) {
        dst[..N].copy_from_slice(&self.0);
    }

    #[cfg_attr(test, inline(never))]
    fn add(self, rhs: Self) -> Self {
        self.zip_with(rhs, u32::wrapping_add)
    }

    #[cfg_attr(test, inline(never))]
    fn sub(self, rhs: Self) -> Self {
        self.zip_with(rhs, u32::wrapping_sub)
    }

    #[cfg_attr(test, inline(never))]
    fn and(self, rhs: Self) -> Self {
        self.zip_with(rhs, |a, b| a & b)
    }

    #[cfg_attr(test, inline(never))]
    fn max(self, rhs: Self) -> Self {
        self.zip_with(rhs, |a, b| a.max(b))
    }

    #[cfg_attr(test, inline(never))]
    fn xor(self, rhs: Self) -> Self {
        self.zip_with(rhs, |a, b| a ^ b)
    }

    #[cfg_attr(test, inline(never))]
    fn xor3(self, b: Self, c: Self) -> Self {
        self.xor(b).xor(c)
    }

    #[cfg_attr(test, inline(never))]
    fn shl(self, n: u32) -> Self {
        self.map(|w| w << n)
    }

    #[cfg_attr(test, inline(never))]
    fn shr(self, n: u32) -> Self {
        self.map(|w| w >> n)
    }

    #[cfg_attr(test, inline(never))]
    fn mul_even(self, m: u32) -> Self {
        EmulatedWords(std::array::from_fn(|j| {
            let product = u64::from(self.0[j & !1]) * u64::from(m);
            if j % 2 == 0 {
                product as u32
            } else {
                (product >> 32) as u32
            }
        }))
    }

    #[cfg_attr(test, inline(never))]
    fn odd_to_even(self) -> Self {
        EmulatedWords(std::array::from_fn(|j| {
            if j % 2 == 0 { self.0[j + 1] } else { 0 }
        }))
    }

    #[cfg_attr(test, inline(never))]
    fn even_pairs(self, odd: Self) -> Self {
        EmulatedWords(std::array::from_fn(|j| {
            if j % 2 == 0 { self.0[j] } else { odd.0[j - 1] }
        }))
    }

    #[cfg_attr(test, inline(never))]
    fn ge_bits(self, rhs: Self) -> u32 {
        (0..N).map(|j| u32::from(self.0[j] >= rhs.0[j]) << j).sum()
    }

    #[cfg_attr(test, inline(never))]
    fn zip(self, rhs: Self) -> (Self, Self) {
        let both: Vec<u32> = (0..N).flat_map(|j| [self.0[j], rhs.0[j]]).collect();
        (Self::load(&both), Self::load(&both[N..]))
    }

    #[cfg_attr(test, inline(never))]
    fn lanes_from(self, next: Self, start: usize) -> Self {
        assert!(start < N);
        let both: Vec<u32> = self.0.iter().chain(&next.0).copied().collect();
        Self::load(&both[start..])
    }
}
