//! The element types of data tensors (`f32`, `bf16`, `f16`) and how vectors of `f32` lanes are
//! loaded from and stored to them: widening exactly, narrowing to nearest-even once.
//!
//! Kernels are written against [`F32Vec::read`] / [`F32Vec::write`] and friends with the
//! element type a type parameter, so each kernel exists once for every type. A backend supplies
//! only the movement of 16-bit lanes (`F32Vec::H`) and, where the ISA has them, conversion
//! instructions (F16C); the integer conversions below serve every other case.

use super::{F32Vec, U32Vec};
use half::slice::HalfFloatSliceExt;
pub use half::{bf16, f16};

mod private {
    /// Implemented only for `f32`, `bf16` and `f16`: how vectors move to and from them.
    pub trait Sealed: Copy + Send + Sync + 'static + std::fmt::Debug + PartialEq {
        /// Size in bytes.
        const BYTES: usize;
        /// Exact widening to `f32`.
        fn to_f32(self) -> f32;
        /// Rounding to nearest, ties to even (NaN stays NaN, quiet; overflow gives infinity).
        fn from_f32(v: f32) -> Self;
        /// The first `LANES` elements of `src`, widened.
        fn load<V: crate::simd::F32Vec>(src: &[Self]) -> V;
        /// `src.len() < LANES` elements widened; the other lanes hold `fill`.
        fn load_partial<V: crate::simd::F32Vec>(src: &[Self], fill: f32) -> V;
        /// Rounds and stores into the first `LANES` elements of `dst`.
        fn store<V: crate::simd::F32Vec>(v: V, dst: &mut [Self]);
        /// Rounds and stores the first `dst.len() < LANES` lanes.
        fn store_partial<V: crate::simd::F32Vec>(v: V, dst: &mut [Self]);
        /// [`Sealed::store`] with a streaming store; `dst` aligned to `LANES * BYTES` bytes.
        fn store_stream<V: crate::simd::F32Vec>(v: V, dst: &mut [Self]);
        /// Rounds and stores into all of `dst` (at most `LANES` elements; streaming if `STREAM`,
        /// then `dst` is a whole aligned vector), and returns the rounded lanes widened again
        /// (what a read of `dst` would give), rounding once.
        fn store_round<V: crate::simd::F32Vec, const STREAM: bool>(v: V, dst: &mut [Self]) -> V;
        /// The slice as typed row data.
        fn data(s: &[Self]) -> crate::io::RowData<'_>;
        /// The slice as typed writable row data.
        fn data_mut(s: &mut [Self]) -> crate::io::RowDataMut<'_>;
    }
}

/// The element type of a data tensor: `f32`, [`bf16`] or [`f16`](struct@f16).
///
/// Inputs are widened to `f32` exactly; the math is the `f32` function's; each output element
/// is that `f32` result rounded once to the type, to nearest, ties to even.
pub trait Element: private::Sealed {}

impl Element for f32 {}
impl Element for bf16 {}
impl Element for f16 {}

pub(crate) use private::Sealed as ElementIo;

impl private::Sealed for f32 {
    const BYTES: usize = 4;

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn load<V: F32Vec>(src: &[Self]) -> V {
        V::load(src)
    }
    #[inline(always)]
    fn load_partial<V: F32Vec>(src: &[Self], fill: f32) -> V {
        V::load_partial(src, fill)
    }
    #[inline(always)]
    fn store<V: F32Vec>(v: V, dst: &mut [Self]) {
        v.store(dst)
    }
    #[inline(always)]
    fn store_partial<V: F32Vec>(v: V, dst: &mut [Self]) {
        v.store_partial(dst)
    }
    #[inline(always)]
    fn store_stream<V: F32Vec>(v: V, dst: &mut [Self]) {
        v.store_stream(dst)
    }
    #[inline(always)]
    fn store_round<V: F32Vec, const STREAM: bool>(v: V, dst: &mut [Self]) -> V {
        if dst.len() < V::LANES {
            v.store_partial(dst)
        } else if STREAM {
            v.store_stream(dst)
        } else {
            v.store(dst)
        }
        v
    }
    fn data(s: &[Self]) -> crate::io::RowData<'_> {
        s.into()
    }
    fn data_mut(s: &mut [Self]) -> crate::io::RowDataMut<'_> {
        s.into()
    }
}

/// The lanes `0..n` set in a `select_bits` mask.
#[inline(always)]
fn first_bits(n: usize) -> u32 {
    (1u32 << n) - 1
}

/// Implements `Sealed` for a 16-bit type from its conversions between `V` and `V::H`.
macro_rules! half_element {
    ($t:ty, $widen:ident, $narrow:ident, $scalar_to:expr, $scalar_from:expr) => {
        impl private::Sealed for $t {
            const BYTES: usize = 2;

            #[inline(always)]
            fn to_f32(self) -> f32 {
                $scalar_to(self)
            }
            #[inline(always)]
            fn from_f32(v: f32) -> Self {
                $scalar_from(v)
            }
            #[inline(always)]
            fn load<V: F32Vec>(src: &[Self]) -> V {
                V::$widen(V::load_h(src.reinterpret_cast()))
            }
            #[inline(always)]
            fn load_partial<V: F32Vec>(src: &[Self], fill: f32) -> V {
                let v: V = V::$widen(V::load_h_partial(src.reinterpret_cast()));
                V::select_bits(first_bits(src.len()), v, V::splat(fill))
            }
            #[inline(always)]
            fn store<V: F32Vec>(v: V, dst: &mut [Self]) {
                V::store_h(v.$narrow(), dst.reinterpret_cast_mut())
            }
            #[inline(always)]
            fn store_partial<V: F32Vec>(v: V, dst: &mut [Self]) {
                V::store_h_partial(v.$narrow(), dst.reinterpret_cast_mut())
            }
            #[inline(always)]
            fn store_stream<V: F32Vec>(v: V, dst: &mut [Self]) {
                V::store_h_stream(v.$narrow(), dst.reinterpret_cast_mut())
            }
            #[inline(always)]
            fn store_round<V: F32Vec, const STREAM: bool>(v: V, dst: &mut [Self]) -> V {
                let h = v.$narrow();
                let d = dst.reinterpret_cast_mut();
                if d.len() < V::LANES {
                    V::store_h_partial(h, d)
                } else if STREAM {
                    V::store_h_stream(h, d)
                } else {
                    V::store_h(h, d)
                }
                V::$widen(h)
            }
            fn data(s: &[Self]) -> crate::io::RowData<'_> {
                s.into()
            }
            fn data_mut(s: &mut [Self]) -> crate::io::RowDataMut<'_> {
                s.into()
            }
        }
    };
}

half_element!(bf16, from_bf16, to_bf16, bf16::to_f32, bf16::from_f32);
half_element!(f16, from_f16, to_f16, f16::to_f32, f16::from_f32);

/// `x | m` for a constant `m`, from the operations every backend has.
#[inline(always)]
fn or_const<U: U32Vec>(x: U, m: u32) -> U {
    x.and(U::splat(!m)).xor(U::splat(m))
}

/// Lane `j` of `if_set` where bit `j` of `bits` is set, else of `if_clear`.
#[inline(always)]
fn select_words<V: F32Vec>(bits: u32, if_set: V::U, if_clear: V::U) -> V::U {
    V::select_bits(bits, V::from_bits(if_set), V::from_bits(if_clear)).to_bits()
}

/// bf16 bits (zero-extended to `u32` lanes) to `f32`: the upper half of the `f32` bits.
#[inline(always)]
pub(crate) fn bf16_to_f32<V: F32Vec>(words: V::U) -> V {
    V::from_bits(words.shl(16))
}

/// `f32` to bf16 bits in the low half of `u32` lanes: nearest, ties to even; NaN keeps its sign
/// and upper payload and becomes quiet.
#[inline(always)]
pub(crate) fn f32_to_bf16<V: F32Vec>(v: V) -> V::U {
    let bits = v.to_bits();
    let nan = bits
        .and(V::U::splat(0x7FFF_FFFF))
        .ge_bits(V::U::splat(0x7F80_0001));
    let odd = bits.shr(16).and(V::U::splat(1));
    let rounded = bits.add(V::U::splat(0x7FFF)).add(odd).shr(16);
    let quiet = or_const(bits.shr(16), 0x0040);
    select_words::<V>(nan, quiet, rounded)
}

/// f16 bits (zero-extended to `u32` lanes) to `f32`, exactly; NaN becomes quiet.
#[inline(always)]
pub(crate) fn f16_to_f32<V: F32Vec>(words: V::U) -> V {
    type U<V> = <V as F32Vec>::U;
    let sign = words.and(U::<V>::splat(0x8000)).shl(16);
    let magnitude = words.and(U::<V>::splat(0x7FFF));
    let shifted = magnitude.shl(13);
    // Normal and subnormal values: the f16 exponent bias is 112 below f32's, and the product
    // by 2^112 is exact (subnormal f16 become normal f32).
    let finite = V::from_bits(shifted).mul(V::splat(f32::from_bits((127 + 112) << 23)));
    // Infinities and NaN: all exponent bits set, NaN quiet.
    let special = or_const(shifted, 0x7F80_0000);
    let nan = magnitude.ge_bits(U::<V>::splat(0x7C01));
    let special = select_words::<V>(nan, or_const(special, 0x0040_0000), special);
    let special_lanes = magnitude.ge_bits(U::<V>::splat(0x7C00));
    let r = select_words::<V>(special_lanes, special, finite.to_bits());
    V::from_bits(r.xor(sign))
}

/// `f32` to f16 bits in the low half of `u32` lanes: nearest, ties to even; overflow gives
/// infinity, subnormals are kept, NaN keeps its sign and upper payload and becomes quiet.
#[inline(always)]
pub(crate) fn f32_to_f16<V: F32Vec>(v: V) -> V::U {
    type U<V> = <V as F32Vec>::U;
    let bits = v.to_bits();
    let sign = bits.and(U::<V>::splat(0x8000_0000));
    let a = bits.xor(sign);
    // At or beyond 65520 (the first value rounding to infinity is 2^16 - 2^4; the exponent
    // test below catches 2^16 and up, the normal path the rest), infinity and NaN.
    let big = a.ge_bits(U::<V>::splat((127 + 16) << 23));
    let nan = a.ge_bits(U::<V>::splat(0x7F80_0001));
    let inf = U::<V>::splat(0x7C00);
    let quiet = or_const(a.shr(13).and(U::<V>::splat(0x03FF)), 0x7E00);
    let over = select_words::<V>(nan, quiet, inf);
    // Below 2^-14 (f16 subnormals and zero): adding 0.5 puts the f16 subnormal's bits in the
    // low mantissa bits, rounded by the f32 addition to nearest even.
    let magic = U::<V>::splat(126 << 23);
    let small = V::from_bits(a)
        .add(V::from_bits(magic))
        .to_bits()
        .sub(magic);
    let tiny = !a.ge_bits(U::<V>::splat(113 << 23));
    // Normal: rebias the exponent and round the 13 dropped bits to nearest even.
    let odd = a.shr(13).and(U::<V>::splat(1));
    let normal = a
        .add(U::<V>::splat(((15u32).wrapping_sub(127)) << 23))
        .add(U::<V>::splat(0xFFF))
        .add(odd)
        .shr(13);
    let r = select_words::<V>(tiny, small, normal);
    let r = select_words::<V>(big, over, r);
    r.xor(sign.shr(16))
}

/// Scalar references, written from the definitions, for the tests.
#[cfg(test)]
pub(crate) mod reference {
    /// Exact value of f16 bits.
    pub fn f16_value(h: u16) -> f64 {
        let sign = if h >> 15 == 1 { -1.0 } else { 1.0 };
        let exp = (h >> 10) & 0x1F;
        let man = f64::from(h & 0x3FF);
        match exp {
            0 => sign * man * 2f64.powi(-24),
            31 if man == 0.0 => sign * f64::INFINITY,
            31 => f64::NAN,
            e => sign * (1.0 + man / 1024.0) * 2f64.powi(i32::from(e) - 15),
        }
    }

    /// Rounds `x` (finite or infinite, not NaN) to the nearest of the values `candidates`
    /// (sorted, finite), ties to the one whose bits are even; beyond `max_finite` by at least
    /// half an ulp: infinity.
    fn nearest_even(x: f64, below: (f64, u16), above: (f64, u16)) -> u16 {
        let (d_lo, d_hi) = (x - below.0, above.0 - x);
        if d_lo < d_hi {
            below.1
        } else if d_hi < d_lo {
            above.1
        } else if below.1.is_multiple_of(2) {
            below.1
        } else {
            above.1
        }
    }

    /// f32 to f16 bits, from the exact values of the f16 grid.
    pub fn f32_to_f16(v: f32) -> u16 {
        let sign = if v.is_sign_negative() { 0x8000 } else { 0 };
        if v.is_nan() {
            let man = (v.to_bits() >> 13) & 0x3FF;
            return sign | 0x7E00 | man as u16;
        }
        let a = f64::from(v.abs());
        // Largest magnitude bits with value <= a, searching the 0x7C00 positive patterns.
        let (mut lo, mut hi) = (0u16, 0x7C00u16);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if f16_value(mid) <= a {
                lo = mid
            } else {
                hi = mid - 1
            }
        }
        let below = (f16_value(lo), lo);
        if below.0 == a {
            return sign | lo;
        }
        let above = if lo == 0x7BFF {
            // The midpoint to the next (65536 = 2^16) rounds to infinity.
            (65536.0, 0x7C00)
        } else {
            (f16_value(lo + 1), lo + 1)
        };
        sign | nearest_even(a, below, above)
    }

    /// f32 to bf16 bits, from the exact values of the bf16 grid.
    pub fn f32_to_bf16(v: f32) -> u16 {
        let bits = v.to_bits();
        if v.is_nan() {
            return ((bits >> 16) | 0x40) as u16;
        }
        let sign = (bits >> 16) as u16 & 0x8000;
        let a = f64::from(v.abs());
        let lo = ((bits & 0x7FFF_FFFF) >> 16) as u16;
        let value = |h: u16| f64::from(f32::from_bits(u32::from(h) << 16));
        let below = (value(lo), lo);
        if below.0 == a {
            return sign | lo;
        }
        let above = if lo == 0x7F7F {
            (2f64.powi(128), 0x7F80)
        } else {
            (value(lo + 1), lo + 1)
        };
        sign | nearest_even(a, below, above)
    }
}

#[cfg(test)]
mod tests {
    use super::reference as r;
    use super::*;
    use crate::simd::emulated::Emulated;

    /// Widening: every one of the 65,536 patterns of each type, through backend `V`, against
    /// the exact values (NaN: quiet, same sign, same upper payload).
    fn widening_is_exact<V: F32Vec>() {
        let l = V::LANES;
        let all: Vec<u16> = (0..=u16::MAX).collect();
        for chunk in all.chunks(l) {
            let f16s: Vec<f16> = chunk.iter().map(|&b| f16::from_bits(b)).collect();
            let bf16s: Vec<bf16> = chunk.iter().map(|&b| bf16::from_bits(b)).collect();
            let mut out = vec![0f32; l];
            V::read_lanes(&f16s, 0.0).store(&mut out);
            for (k, &h) in chunk.iter().enumerate() {
                let want = r::f16_value(h);
                let got = out[k];
                if want.is_nan() {
                    let q =
                        (u32::from(h & 0x8000) << 16) | 0x7FC0_0000 | (u32::from(h & 0x3FF) << 13);
                    assert_eq!(got.to_bits(), q, "f16 {h:#06x}");
                } else {
                    assert_eq!(f64::from(got), want, "f16 {h:#06x}");
                    assert_eq!(got.is_sign_negative(), h >> 15 == 1, "f16 {h:#06x} sign");
                }
                assert_eq!(
                    got.to_bits(),
                    f16::from_bits(h).to_f32().to_bits(),
                    "scalar f16 {h:#06x}"
                );
            }
            V::read_lanes(&bf16s, 0.0).store(&mut out);
            for (k, &h) in chunk.iter().enumerate() {
                let want = f32::from_bits(u32::from(h) << 16);
                assert_eq!(out[k].to_bits(), want.to_bits(), "bf16 {h:#06x}");
            }
        }
    }

    /// Narrowing: edge cases and a sweep of f32 patterns, through backend `V`, against the
    /// references; also stores of partial vectors.
    fn narrowing_rounds_to_nearest_even<V: F32Vec>() {
        let mut values: Vec<u32> = vec![
            0,
            0x8000_0000,
            0x7F80_0000,
            0xFF80_0000,
            0x7FC0_0000,
            0xFFC0_0001,
            0x7F80_0001,
            0x7FBF_FFFF,
            0xFF80_2001,
            0x7F7F_FFFF,
            0xFF7F_FFFF,
            0x0000_0001,
            0x8000_0001,
            0x007F_FFFF,
            0x0080_0000,
        ];
        for x in [
            65504.0f32,
            65519.99,
            65520.0,
            65535.0,
            65536.0,
            -65520.0,
            6.1035156e-5,
            6.097555e-5,
            5.9604645e-8,
            2.9802322e-8,
            2.9802326e-8,
            -2.9802322e-8,
            8.940697e-8,
            1.0 + 1.0 / 2048.0,
            1.0 + 3.0 / 2048.0,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            3.3895314e38,
            3.3961776e38,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
        ] {
            values.push(x.to_bits());
        }
        // A stride through all patterns that visits every exponent and many mantissa tails.
        let mut b = 0u32;
        while let Some(next) = b.checked_add(0x0001_2345) {
            values.push(b);
            values.push(b | 0x1000);
            values.push(b | 0x8000);
            values.push(b & !0xFFF | 0x1000);
            b = next;
        }
        let l = V::LANES;
        for chunk in values.chunks(l) {
            let x: Vec<f32> = chunk.iter().map(|&b| f32::from_bits(b)).collect();
            let v = V::read_lanes(&x, 0.0);
            let mut h16 = vec![f16::ZERO; chunk.len()];
            let mut b16 = vec![bf16::ZERO; chunk.len()];
            v.write_lanes(&mut h16);
            v.write_lanes(&mut b16);
            for (k, &xv) in x.iter().enumerate() {
                assert_eq!(
                    h16[k].to_bits(),
                    r::f32_to_f16(xv),
                    "f16 of {:#010x}",
                    chunk[k]
                );
                assert_eq!(
                    b16[k].to_bits(),
                    r::f32_to_bf16(xv),
                    "bf16 of {:#010x}",
                    chunk[k]
                );
                assert_eq!(
                    f16::from_f32(xv).to_bits(),
                    r::f32_to_f16(xv),
                    "scalar f16 {xv:e}"
                );
                assert_eq!(
                    bf16::from_f32(xv).to_bits(),
                    r::f32_to_bf16(xv),
                    "scalar bf16 {xv:e}"
                );
            }
        }
    }

    #[test]
    fn conversions_on_emulated_backends() {
        widening_is_exact::<Emulated<4>>();
        narrowing_rounds_to_nearest_even::<Emulated<4>>();
        widening_is_exact::<Emulated<16>>();
        narrowing_rounds_to_nearest_even::<Emulated<16>>();
    }

    #[test]
    fn conversions_on_every_supported_isa() {
        crate::simd::on_every_isa!(widening_is_exact);
        crate::simd::on_every_isa!(narrowing_rounds_to_nearest_even);
    }

    #[test]
    fn partial_loads_fill_and_stores_stop() {
        fn check<V: F32Vec>() {
            for n in 0..V::LANES {
                let src: Vec<bf16> = (0..n).map(|i| bf16::from_f32(i as f32 + 1.0)).collect();
                let v: V = bf16::load_partial(&src, -7.0);
                let mut out = vec![0f32; V::LANES];
                v.store(&mut out);
                for (j, &o) in out.iter().enumerate() {
                    assert_eq!(o, if j < n { j as f32 + 1.0 } else { -7.0 });
                }
                let mut dst = vec![f16::from_f32(9.0); V::LANES];
                f16::store_partial(v, &mut dst[..n]);
                for (j, &d) in dst.iter().enumerate() {
                    assert_eq!(d.to_f32(), if j < n { j as f32 + 1.0 } else { 9.0 });
                }
            }
        }
        check::<Emulated<4>>();
        check::<Emulated<16>>();
        crate::simd::on_every_isa!(check);
    }
}
